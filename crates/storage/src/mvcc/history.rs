//! Revision-ordered history for watch catch-up, via the `Rev` index.
//!
//! Owns: turning `[start, end]` revision windows into [`Event`]s with `prev_kv`. Must never
//! write.

use std::ops::Bound;

use super::encoding::{
    decode_record, last_key, parse_rev_index_key, rev_index_key, split_version_key, unescape_key,
    version_key,
};
use super::read::{first_entry, to_key_value};
use super::types::{Event, EventKind, KeyValue, Revision};
use super::Revs;
use crate::backend::{Direction, ReadTxn, Table};
use crate::error::{Result, StorageError};

/// See [`super::ReadView::events`].
pub(crate) fn events<R: ReadTxn + ?Sized>(
    txn: &R,
    revs: Revs,
    start_revision: i64,
    end_revision: i64,
    max_events: usize,
) -> Result<Vec<Event>> {
    if start_revision <= revs.compacted {
        return Err(StorageError::Compacted);
    }
    let end_revision = end_revision.min(revs.current);
    if start_revision > end_revision {
        return Ok(Vec::new());
    }
    let lower = rev_index_key(Revision {
        main: start_revision,
        sub: 0,
    });
    let upper = rev_index_key(Revision {
        main: end_revision,
        sub: i64::MAX,
    });
    let mut index: Vec<(Revision, Vec<u8>)> = Vec::new();
    txn.scan(
        Table::Rev,
        (Bound::Included(&lower), Bound::Included(&upper)),
        Direction::Forward,
        &mut |k, v| {
            let rev = parse_rev_index_key(k)?;
            // Never split a revision: watchers get each revision's events atomically.
            let full = max_events != 0 && index.len() >= max_events;
            if full && index.last().is_some_and(|(last, _)| last.main != rev.main) {
                return Ok(false);
            }
            index.push((rev, v.to_vec()));
            Ok(true)
        },
    )?;
    index
        .iter()
        .map(|(rev, escaped_key)| event_at(txn, escaped_key, *rev))
        .collect()
}

fn event_at<R: ReadTxn + ?Sized>(txn: &R, escaped_key: &[u8], rev: Revision) -> Result<Event> {
    let stored = txn
        .get(Table::Kv, &version_key(escaped_key, rev))?
        .ok_or_else(|| StorageError::corrupt(format!("revision index points nowhere {rev:?}")))?;
    let record = decode_record(&stored)?;
    let prev_kv = prev_live(txn, escaped_key, rev)?;
    if record.tombstone {
        let kv = KeyValue {
            key: unescape_key(escaped_key)?,
            mod_revision: rev.main,
            ..KeyValue::default()
        };
        return Ok(Event {
            kind: EventKind::Delete,
            kv,
            prev_kv,
        });
    }
    Ok(Event {
        kind: EventKind::Put,
        kv: to_key_value(escaped_key, rev, &record, false)?,
        prev_kv,
    })
}

// The version just before `rev` of the same key: the next entry in key order, since a
// key's versions are stored newest first.
fn prev_live<R: ReadTxn + ?Sized>(
    txn: &R,
    escaped_key: &[u8],
    rev: Revision,
) -> Result<Option<KeyValue>> {
    let lower = version_key(escaped_key, rev);
    let upper = last_key(escaped_key);
    let Some((key, bytes)) = first_entry(
        txn,
        Table::Kv,
        Bound::Excluded(&lower),
        Bound::Included(&upper),
    )?
    else {
        return Ok(None);
    };
    let (_, prev_rev) = split_version_key(&key)?;
    let record = decode_record(&bytes)?;
    if record.tombstone {
        return Ok(None);
    }
    to_key_value(escaped_key, prev_rev, &record, false).map(Some)
}
