//! Reads at a revision: point lookups and etcd range semantics.
//!
//! Owns: mapping etcd `(key, range_end)` forms to key bounds, finding each key's version at
//! a revision through the key index (never walking history), fetching it by revision, and
//! revision checks. Must never write.

use std::ops::Bound;

use super::encoding::{decode_entry, revision_key, VersionRecord};
use super::index::{KeyIndex, SharedIndex, Version};
use super::types::{KeyValue, RangeOptions, RangeResult, Revision};
use super::Revs;
use crate::backend::{Direction, ReadTxn, Table};
use crate::error::{Result, StorageError};

/// The stored entry of the version at `rev`, which the index says exists.
pub(crate) fn entry_at<R: ReadTxn + ?Sized>(txn: &R, rev: Revision) -> Result<Vec<u8>> {
    txn.get(Table::Kv, &revision_key(rev))?
        .ok_or_else(|| StorageError::corrupt(format!("indexed revision {rev:?} is not stored")))
}

/// Builds the API view of a stored version.
pub(crate) fn to_key_value(
    key: &[u8],
    rev: Revision,
    record: &VersionRecord<'_>,
    keys_only: bool,
) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: record.create_revision,
        mod_revision: rev.main,
        version: record.version,
        value: if keys_only {
            Vec::new()
        } else {
            record.value.to_vec()
        },
        lease: record.lease,
    }
}

/// The API view of the stored version at `rev`.
pub(crate) fn kv_at<R: ReadTxn + ?Sized>(
    txn: &R,
    rev: Revision,
    keys_only: bool,
) -> Result<KeyValue> {
    let entry = entry_at(txn, rev)?;
    let (key, record) = decode_entry(&entry)?;
    Ok(to_key_value(key, rev, &record, keys_only))
}

/// Calls `visit(key, revision)` for every key of the etcd range `(key, range_end)` live at
/// `at_main`, in key order, until it returns `false`: `range_end` empty is `key` alone,
/// `[0]` is every key >= `key` (every key if `key` is also `[0]`), otherwise
/// `[key, range_end)`.
pub(crate) fn visit_live_at(
    index: &KeyIndex,
    key: &[u8],
    range_end: &[u8],
    at_main: i64,
    visit: &mut dyn FnMut(&[u8], &Version) -> bool,
) {
    let bounds = if range_end.is_empty() {
        if let Some(version) = index.visible(key, at_main).filter(|v| !v.tombstone()) {
            visit(key, &version);
        }
        return;
    } else if range_end == [0] {
        if key == [0] {
            (Bound::Unbounded, Bound::Unbounded)
        } else {
            (Bound::Included(key), Bound::Unbounded)
        }
    } else if range_end <= key {
        return;
    } else {
        (Bound::Included(key), Bound::Excluded(range_end))
    };
    index.visit_live(bounds, at_main, visit);
}

/// etcd's revision rules for a read: `requested > current` is `FutureRevision`, `<= 0`
/// means current, below the compact revision is `Compacted` (reading AT it is allowed).
pub(crate) fn read_revision(requested: i64, revs: Revs) -> Result<i64> {
    if requested > revs.current {
        return Err(StorageError::FutureRevision);
    }
    let at = if requested <= 0 {
        revs.current
    } else {
        requested
    };
    if at < revs.compacted {
        return Err(StorageError::Compacted);
    }
    Ok(at)
}

/// etcd range read against `txn` whose metadata is `revs`.
pub(crate) fn range<R: ReadTxn + ?Sized>(
    txn: &R,
    index: &SharedIndex,
    key: &[u8],
    range_end: &[u8],
    opts: RangeOptions,
    revs: Revs,
) -> Result<RangeResult> {
    let at_main = read_revision(opts.revision, revs)?;
    let limit = usize::try_from(opts.limit)
        .ok()
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let mut found = Vec::new();
    let mut count: i64 = 0;
    {
        let index = index.read();
        index.check_readable(at_main)?;
        visit_live_at(&index, key, range_end, at_main, &mut |_, v| {
            count += 1;
            if !opts.count_only && found.len() < limit {
                found.push(v.rev);
            }
            true
        });
    }
    let kvs = found
        .into_iter()
        .map(|rev| kv_at(txn, rev, opts.keys_only))
        .collect::<Result<Vec<_>>>()?;
    let more = !opts.count_only && count > kvs.len() as i64;
    Ok(RangeResult {
        kvs,
        count,
        more,
        revision: revs.current,
    })
}

/// Lease table keys are the lease id as big-endian i64.
pub(crate) fn leases<R: ReadTxn + ?Sized>(txn: &R) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut out = Vec::new();
    txn.scan(
        Table::Lease,
        (Bound::Unbounded, Bound::Unbounded),
        Direction::Forward,
        &mut |k, v| {
            let id = super::encoding::decode_i64(k, "lease id")?;
            out.push((id, v.to_vec()));
            Ok(true)
        },
    )?;
    Ok(out)
}
