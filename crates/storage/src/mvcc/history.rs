//! Revision-ordered history for watch catch-up: the `Kv` table is ordered by revision.
//!
//! Owns: turning `[start, end]` revision windows into [`Event`]s with `prev_kv`. Must never
//! write.

use std::ops::Bound;

use super::encoding::{decode_entry, parse_revision_key, revision_key};
use super::index::SharedIndex;
use super::read::{kv_at, to_key_value};
use super::types::{Event, EventKind, KeyValue, Revision};
use super::Revs;
use crate::backend::{Direction, ReadTxn, Table};
use crate::error::{Result, StorageError};

/// See [`super::ReadView::events`].
pub(crate) fn events<R: ReadTxn + ?Sized>(
    txn: &R,
    index: &SharedIndex,
    revs: Revs,
    start_revision: i64,
    end_revision: i64,
    max_events: usize,
    with_prev_kv: bool,
) -> Result<Vec<Event>> {
    if start_revision <= revs.compacted {
        return Err(StorageError::Compacted);
    }
    let end_revision = end_revision.min(revs.current);
    if start_revision > end_revision {
        return Ok(Vec::new());
    }
    let lower = revision_key(Revision {
        main: start_revision,
        sub: 0,
    });
    let upper = revision_key(Revision {
        main: end_revision,
        sub: i64::MAX,
    });
    let mut events: Vec<Event> = Vec::new();
    let mut revisions: Vec<Revision> = Vec::new();
    txn.scan(
        Table::Kv,
        (Bound::Included(&lower), Bound::Included(&upper)),
        Direction::Forward,
        &mut |k, v| {
            let rev = parse_revision_key(k)?;
            // Never split a revision: watchers get each revision's events atomically.
            let full = max_events != 0 && events.len() >= max_events;
            if full && events.last().is_some_and(|e| e.kv.mod_revision != rev.main) {
                return Ok(false);
            }
            let (key, record) = decode_entry(v)?;
            revisions.push(rev);
            events.push(if record.tombstone {
                let kv = KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                };
                Event {
                    kind: EventKind::Delete,
                    kv,
                    prev_kv: None,
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: to_key_value(key, rev, &record, false),
                    prev_kv: None,
                }
            });
            Ok(true)
        },
    )?;
    if !with_prev_kv {
        return Ok(events);
    }
    let prev_revisions = {
        let index = index.read();
        // A compaction this snapshot predates may have forgotten versions it needs.
        index.check_history(start_revision)?;
        events
            .iter()
            .zip(&revisions)
            .map(|(event, rev)| {
                index
                    .before(&event.kv.key, *rev)
                    .filter(|v| !v.tombstone())
                    .map(|v| v.rev)
            })
            .collect::<Vec<_>>()
    };
    for (event, prev) in events.iter_mut().zip(prev_revisions) {
        if let Some(prev) = prev {
            event.prev_kv = Some(kv_at(txn, prev, false)?);
        }
    }
    Ok(events)
}
