//! Compaction and `HashKV`.
//!
//! Owns: physically removing history below the compact revision in bounded steps, and the
//! deterministic history hash. Must never change a read result at or above the compact
//! revision, and never hash anything that depends on how far physical compaction got.
//!
//! Rule (etcd's): for each key, versions with main revision above the compact revision stay;
//! the newest version at or below it stays unless it is a tombstone; everything older goes.

use std::ops::Bound;

use super::encoding::{decode_record, record_hash_body, rev_index_key, split_version_key};
use super::read::read_revision;
use super::types::{KvHash, Revision};
use super::{load_revs, Store, META_COMPACT_CURSOR};
use crate::backend::{Direction, ReadTxn, Table};
use crate::error::Result;

/// Keys examined per step by [`Store::compact`].
pub const COMPACT_STEP_KEYS: usize = 1000;

/// What one compaction step removes and where the next one resumes.
struct StepPlan {
    doomed: Vec<(Vec<u8>, Revision)>,
    // Escaped key of the first key not yet examined (inclusive lower bound).
    resume_at: Option<Vec<u8>>,
}

struct Walk {
    key: Vec<u8>,
    kept_newest: bool,
    keys_seen: usize,
}

fn plan_step<R: ReadTxn + ?Sized>(
    txn: &R,
    cursor: &[u8],
    compact_main: i64,
    max_keys: usize,
) -> Result<StepPlan> {
    let mut plan = StepPlan {
        doomed: Vec::new(),
        resume_at: None,
    };
    let mut walk = Walk {
        key: Vec::new(),
        kept_newest: false,
        keys_seen: 0,
    };
    let bounds = (Bound::Included(cursor), Bound::Unbounded);
    txn.scan(Table::Kv, bounds, Direction::Forward, &mut |k, v| {
        let (escaped_key, rev) = split_version_key(k)?;
        if walk.keys_seen == 0 || escaped_key != walk.key.as_slice() {
            if walk.keys_seen == max_keys.max(1) {
                plan.resume_at = Some(escaped_key.to_vec());
                return Ok(false);
            }
            walk.key = escaped_key.to_vec();
            walk.kept_newest = false;
            walk.keys_seen += 1;
        }
        if rev.main > compact_main {
            return Ok(true);
        }
        // Newer versions of this key come first; the first one at or below the compact
        // revision is the one a read at that revision sees.
        let doomed = walk.kept_newest || decode_record(v)?.tombstone;
        walk.kept_newest = true;
        if doomed {
            plan.doomed.push((k.to_vec(), rev));
        }
        Ok(true)
    })?;
    Ok(plan)
}

impl Store {
    /// Compacts at `revision` (see [`super::WriteBatch::schedule_compaction`] for the errors)
    /// and finishes the physical work before returning. Commits are non-durable.
    pub fn compact(&self, revision: i64) -> Result<()> {
        let mut batch = self.write()?;
        batch.schedule_compaction(revision)?;
        batch.commit(false)?;
        while !self.compact_step(COMPACT_STEP_KEYS)? {}
        Ok(())
    }

    /// Whether a scheduled compaction still has physical work left.
    pub fn compaction_pending(&self) -> Result<bool> {
        let txn = self.backend.begin_read()?;
        Ok(txn.get(Table::Meta, META_COMPACT_CURSOR)?.is_some())
    }

    /// Runs one bounded step (at most `max_keys` keys) of the scheduled compaction in its
    /// own non-durable write transaction. Returns `true` when no compaction work is left.
    /// Safe to interleave with write batches and to repeat after a crash.
    pub fn compact_step(&self, max_keys: usize) -> Result<bool> {
        let mut txn = self.backend.begin_write()?;
        let Some(cursor) = txn.get(Table::Meta, META_COMPACT_CURSOR)? else {
            return Ok(true);
        };
        let revs = load_revs(&*txn)?;
        let plan = plan_step(&*txn, &cursor, revs.compacted, max_keys)?;
        for (key, rev) in &plan.doomed {
            txn.delete(Table::Kv, key)?;
            txn.delete(Table::Rev, &rev_index_key(*rev))?;
        }
        let done = match &plan.resume_at {
            Some(next) => {
                txn.put(Table::Meta, META_COMPACT_CURSOR, next)?;
                false
            }
            None => {
                txn.delete(Table::Meta, META_COMPACT_CURSOR)?;
                true
            }
        };
        txn.commit(false)?;
        Ok(done)
    }

    /// CRC32C over every key version with main revision in (compact revision, `revision`]
    /// (0 = current), in key order: stored key bytes (escaped key and revision) followed by
    /// the record's logical fields. Identical histories give identical hashes whatever the
    /// progress of physical compaction.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let view = self.read()?;
        let revs = view.revs;
        let at_main = read_revision(revision, revs)?;
        let mut hash = 0u32;
        view.txn.scan(
            Table::Kv,
            (Bound::Unbounded, Bound::Unbounded),
            Direction::Forward,
            &mut |k, v| {
                let (_, rev) = split_version_key(k)?;
                if rev.main > revs.compacted && rev.main <= at_main {
                    decode_record(v)?;
                    hash = crc32c::crc32c_append(hash, k);
                    hash = crc32c::crc32c_append(hash, record_hash_body(v));
                }
                Ok(true)
            },
        )?;
        Ok(KvHash {
            hash,
            compact_revision: revs.compacted,
            revision: at_main,
        })
    }
}
