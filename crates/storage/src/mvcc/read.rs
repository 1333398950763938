//! Reads at a revision: point lookups and etcd range semantics over the `Kv` layout.
//!
//! Owns: mapping etcd `(key, range_end)` forms to escaped key bounds, finding each key's
//! latest version at a revision with seeks (never walking history), and revision checks.
//! Must never write.

use std::ops::Bound;

use super::encoding::{
    decode_record, escaped, last_key, seek_key, split_version_key, unescape_key, VersionRecord,
};
use super::types::{KeyValue, RangeOptions, RangeResult, Revision};
use super::Revs;
use crate::backend::{Direction, ReadTxn, Table};
use crate::error::{Result, StorageError};

/// An owned table entry.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// The first entry of `table` within bounds, in key order.
pub(crate) fn first_entry<R: ReadTxn + ?Sized>(
    txn: &R,
    table: Table,
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
) -> Result<Option<Entry>> {
    let mut found = None;
    txn.scan(table, (lower, upper), Direction::Forward, &mut |k, v| {
        found = Some((k.to_vec(), v.to_vec()));
        Ok(false)
    })?;
    Ok(found)
}

/// The newest version of the key escaped as `escaped_key` with main revision <= `at_main`
/// (tombstones included), as (revision, stored record bytes).
pub(crate) fn version_at<R: ReadTxn + ?Sized>(
    txn: &R,
    escaped_key: &[u8],
    at_main: i64,
) -> Result<Option<(Revision, Vec<u8>)>> {
    let lower = seek_key(escaped_key, at_main);
    let upper = last_key(escaped_key);
    let Some((key, value)) = first_entry(
        txn,
        Table::Kv,
        Bound::Included(&lower),
        Bound::Included(&upper),
    )?
    else {
        return Ok(None);
    };
    let (_, rev) = split_version_key(&key)?;
    Ok(Some((rev, value)))
}

/// Builds the API view of a stored version.
pub(crate) fn to_key_value(
    escaped_key: &[u8],
    rev: Revision,
    record: &VersionRecord<'_>,
    keys_only: bool,
) -> Result<KeyValue> {
    Ok(KeyValue {
        key: unescape_key(escaped_key)?,
        create_revision: record.create_revision,
        mod_revision: rev.main,
        version: record.version,
        value: if keys_only {
            Vec::new()
        } else {
            record.value.to_vec()
        },
        lease: record.lease,
    })
}

/// The live version of `user_key` at `at_main`, if it exists there.
pub(crate) fn live_at<R: ReadTxn + ?Sized>(
    txn: &R,
    user_key: &[u8],
    at_main: i64,
) -> Result<Option<KeyValue>> {
    let escaped_key = escaped(user_key);
    let Some((rev, bytes)) = version_at(txn, &escaped_key, at_main)? else {
        return Ok(None);
    };
    let record = decode_record(&bytes)?;
    if record.tombstone {
        return Ok(None);
    }
    to_key_value(&escaped_key, rev, &record, false).map(Some)
}

/// Escaped-key bounds of an etcd `(key, range_end)` request.
enum KeySpan {
    Single(Vec<u8>),
    Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
    Empty,
}

fn key_span(key: &[u8], range_end: &[u8]) -> KeySpan {
    if range_end.is_empty() {
        return KeySpan::Single(escaped(key));
    }
    if range_end == [0] {
        if key == [0] {
            return KeySpan::Range(Bound::Unbounded, Bound::Unbounded);
        }
        return KeySpan::Range(Bound::Included(escaped(key)), Bound::Unbounded);
    }
    if range_end <= key {
        return KeySpan::Empty;
    }
    KeySpan::Range(
        Bound::Included(escaped(key)),
        Bound::Excluded(escaped(range_end)),
    )
}

/// Called with (escaped key, revision, record) of each live key; `Ok(false)` stops.
pub(crate) type LiveVisitor<'v> =
    dyn FnMut(&[u8], Revision, &VersionRecord<'_>) -> Result<bool> + 'v;

/// Visits, in ascending key order, the latest live version at `at_main` of every key in
/// the etcd range `(key, range_end)`. Costs one seek per key, two if it changed after
/// `at_main`.
pub(crate) fn visit_live_at<R: ReadTxn + ?Sized>(
    txn: &R,
    key: &[u8],
    range_end: &[u8],
    at_main: i64,
    visit: &mut LiveVisitor<'_>,
) -> Result<()> {
    let (mut lower, upper) = match key_span(key, range_end) {
        KeySpan::Empty => return Ok(()),
        KeySpan::Single(escaped_key) => {
            if let Some((rev, bytes)) = version_at(txn, &escaped_key, at_main)? {
                visit_if_live(&escaped_key, rev, &bytes, visit)?;
            }
            return Ok(());
        }
        KeySpan::Range(lower, upper) => (lower, upper),
    };
    loop {
        let Some((first_key, first_value)) =
            first_entry(txn, Table::Kv, as_ref(&lower), as_ref(&upper))?
        else {
            return Ok(());
        };
        let (escaped_key, newest) = split_version_key(&first_key)?;
        let found = if newest.main <= at_main {
            Some((newest, first_value))
        } else {
            version_at(txn, escaped_key, at_main)?
        };
        if let Some((rev, bytes)) = found {
            if !visit_if_live(escaped_key, rev, &bytes, visit)? {
                return Ok(());
            }
        }
        lower = Bound::Excluded(last_key(escaped_key));
    }
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn visit_if_live(
    escaped_key: &[u8],
    rev: Revision,
    bytes: &[u8],
    visit: &mut LiveVisitor<'_>,
) -> Result<bool> {
    let record = decode_record(bytes)?;
    if record.tombstone {
        return Ok(true);
    }
    visit(escaped_key, rev, &record)
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
    let mut kvs = Vec::new();
    let mut count: i64 = 0;
    visit_live_at(
        txn,
        key,
        range_end,
        at_main,
        &mut |escaped_key, rev, record| {
            count += 1;
            if !opts.count_only && kvs.len() < limit {
                kvs.push(to_key_value(escaped_key, rev, record, opts.keys_only)?);
            }
            Ok(true)
        },
    )?;
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

/// Every caller-metadata entry whose key starts with `prefix`, in key order.
pub(crate) fn meta_prefix<R: ReadTxn + ?Sized>(
    txn: &R,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    txn.scan(
        Table::AppMeta,
        (Bound::Included(prefix), Bound::Unbounded),
        Direction::Forward,
        &mut |k, v| {
            if !k.starts_with(prefix) {
                return Ok(false);
            }
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        },
    )?;
    Ok(out)
}
