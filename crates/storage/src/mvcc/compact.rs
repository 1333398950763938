//! Compaction and `HashKV`.
//!
//! Owns: physically removing history below the compact revision in bounded steps, and the
//! deterministic history hash. Must never change a read result at or above the compact
//! revision, and never hash anything that depends on how far physical compaction got.
//!
//! Rule (etcd's): for each key, versions with main revision above the compact revision stay;
//! the newest version at or below it stays unless it is a tombstone; everything older goes.

use std::ops::Bound;

use super::encoding::{decode_entry, parse_revision_key, revision_key};
use super::index::KeyIndex;
use super::read::read_revision;
use super::types::{KvHash, Revision};
use super::{load_revs, Store, META_COMPACT_CURSOR};
use crate::backend::{Direction, ReadTxn, Table};
use crate::error::Result;

/// Versions examined per compaction step; small so apply never waits long for the write lock.
pub const COMPACT_STEP_VERSIONS: usize = 1000;

/// What one compaction step removes and where the next one resumes.
struct StepPlan {
    doomed: Vec<(Vec<u8>, Revision)>,
    // Revision key of the first version not yet examined (inclusive lower bound).
    resume_at: Option<Vec<u8>>,
}

// Versions are stored in revision order: a step examines the next `max_versions` of them at
// or below the compact revision and asks the index whether a read there still needs each.
fn plan_step<R: ReadTxn + ?Sized>(
    txn: &R,
    index: &KeyIndex,
    cursor: &[u8],
    compact_main: i64,
    max_versions: usize,
) -> Result<StepPlan> {
    let mut plan = StepPlan {
        doomed: Vec::new(),
        resume_at: None,
    };
    let upper = revision_key(Revision {
        main: compact_main,
        sub: i64::MAX,
    });
    let mut seen = 0;
    let bounds = (Bound::Included(cursor), Bound::Included(&upper[..]));
    txn.scan(Table::Kv, bounds, Direction::Forward, &mut |k, v| {
        if seen == max_versions.max(1) {
            plan.resume_at = Some(k.to_vec());
            return Ok(false);
        }
        seen += 1;
        let rev = parse_revision_key(k)?;
        let (key, _) = decode_entry(v)?;
        if index.doomed(key, rev, compact_main) {
            plan.doomed.push((key.to_vec(), rev));
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
        while !self.compact_step(COMPACT_STEP_VERSIONS)? {}
        Ok(())
    }

    /// Whether a scheduled compaction still has physical work left.
    pub fn compaction_pending(&self) -> Result<bool> {
        let txn = self.backend.begin_read()?;
        Ok(txn.get(Table::Meta, META_COMPACT_CURSOR)?.is_some())
    }

    /// Runs one bounded step (at most `max_versions` versions) of the scheduled compaction
    /// in its own non-durable write transaction. Returns `true` when no compaction work is
    /// left. Safe to interleave with write batches and to repeat after a crash.
    pub fn compact_step(&self, max_versions: usize) -> Result<bool> {
        let mut txn = self.backend.begin_write()?;
        let Some(cursor) = txn.get(Table::Meta, META_COMPACT_CURSOR)? else {
            return Ok(true);
        };
        let revs = load_revs(&*txn)?;
        let index = self.index();
        let plan = plan_step(&*txn, &index.read(), &cursor, revs.compacted, max_versions)?;
        // Reads below the compact revision are refused from here on, so no read needs what
        // the index forgets, even if this step's commit fails.
        index.write().forget(&plan.doomed, revs.compacted);
        for (_, rev) in &plan.doomed {
            txn.delete(Table::Kv, &revision_key(*rev))?;
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
    /// (0 = current), in revision order: each stored entry's key (the revision) and value
    /// (the user key and version record). Identical histories give identical hashes
    /// whatever the progress of physical compaction.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let view = self.read()?;
        let revs = view.revs;
        let at_main = read_revision(revision, revs)?;
        let mut hash = 0u32;
        let lower = revision_key(Revision {
            main: revs.compacted + 1,
            sub: 0,
        });
        let upper = revision_key(Revision {
            main: at_main,
            sub: i64::MAX,
        });
        view.txn.scan(
            Table::Kv,
            (Bound::Included(&lower[..]), Bound::Included(&upper[..])),
            Direction::Forward,
            &mut |k, v| {
                decode_entry(v)?;
                hash = crc32c::crc32c_append(hash, k);
                hash = crc32c::crc32c_append(hash, v);
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
