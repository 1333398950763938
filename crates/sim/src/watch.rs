//! The watch-stream validator: what one watcher received, judged against the committed
//! history and etcd's documented watch guarantees. Owns the guarantee definitions; must
//! never guess the committed history (the caller supplies the truth, e.g. read back from a
//! member after the run).
//!
//! The guarantees (etcd API docs, "Watch streams"):
//! - **Ordered**: events are ordered by revision; within a revision, as the transaction wrote them.
//! - **Unique**: no event is delivered twice.
//! - **Reliable**: no event between the first and the last delivered is skipped.
//! - **Atomic**: the events of one revision come in one response, unless fragmented.
//! - **Resumable**: a watch from revision `R` starts exactly at the first event `>= R`.
//! - **Valid**: every event is a committed write in the watched range, with the committed
//!   content (etcd states this implicitly; a checker must say it).
//! - **Progress**: a progress notification at revision `R` comes only after every event
//!   `<= R` was delivered.
//! - **Protocol**: the response framing itself (created first, nothing after cancel, header
//!   revision not behind the events it carries, compaction only when events are gone).

use std::collections::HashMap;
use std::fmt;

use crate::history::Revision;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One event: a committed write as the watcher sees it. `revision` is the write's revision
/// (the key's `mod_revision`, or the delete's revision); `value` is empty for deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub revision: Revision,
}

impl WatchEvent {
    pub fn put(key: &[u8], value: &[u8], revision: Revision) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            key: key.to_vec(),
            value: value.to_vec(),
            revision,
        }
    }

    pub fn delete(key: &[u8], revision: Revision) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            key: key.to_vec(),
            value: Vec::new(),
            revision,
        }
    }
}

/// One `WatchResponse` as received. A progress notification is a response with no events
/// that is neither `created` nor `canceled`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    pub header_revision: Revision,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: Revision,
    pub fragment: bool,
    pub events: Vec<WatchEvent>,
}

impl WatchResponse {
    pub fn created(header_revision: Revision) -> WatchResponse {
        WatchResponse {
            header_revision,
            created: true,
            ..WatchResponse::default()
        }
    }

    pub fn events(header_revision: Revision, events: Vec<WatchEvent>) -> WatchResponse {
        WatchResponse {
            header_revision,
            events,
            ..WatchResponse::default()
        }
    }

    pub fn progress(header_revision: Revision) -> WatchResponse {
        WatchResponse {
            header_revision,
            ..WatchResponse::default()
        }
    }
}

/// What was watched, with etcd's range semantics: empty `range_end` = `key` alone,
/// `range_end == [0]` = every key `>= key`, otherwise `[key, range_end)`.
/// `start_revision` 0 = from the revision after the `created` response's header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: Revision,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchSpec {
    pub fn key(key: &[u8], start_revision: Revision) -> WatchSpec {
        WatchSpec {
            key: key.to_vec(),
            start_revision,
            ..WatchSpec::default()
        }
    }

    pub fn prefix(prefix: &[u8], start_revision: Revision) -> WatchSpec {
        let mut range_end = prefix.to_vec();
        while let Some(last) = range_end.pop() {
            if last < 0xff {
                range_end.push(last + 1);
                break;
            }
        }
        if range_end.is_empty() {
            range_end.push(0);
        }
        WatchSpec {
            key: prefix.to_vec(),
            range_end,
            start_revision,
            ..WatchSpec::default()
        }
    }

    fn watches(&self, event: &WatchEvent) -> bool {
        let in_range = match self.range_end.as_slice() {
            [] => event.key == self.key,
            [0] => event.key >= self.key,
            end => event.key >= self.key && event.key.as_slice() < end,
        };
        let filtered = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        in_range && !filtered
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    Ordered,
    Unique,
    Reliable,
    Atomic,
    Resumable,
    Valid,
    Progress,
    Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchViolation {
    pub guarantee: Guarantee,
    /// Index of the offending response, and of the event in it when there is one.
    pub response: usize,
    pub event: Option<usize>,
    pub detail: String,
}

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watch {:?} violated at response {}",
            self.guarantee, self.response
        )?;
        if let Some(event) = self.event {
            write!(f, " event {event}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a valid stream amounted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchReport {
    pub events_delivered: usize,
    /// Every event at or below this revision was delivered (by events or by progress).
    pub synced_through: Revision,
}

/// Validates one watcher's responses against `committed`, every committed write event of
/// the run in revision order (within a revision, in the order the transaction wrote them).
/// A stream may stop early (a watcher is free to go away); everything it did deliver must
/// be exactly the start of what it should have.
///
/// # Panics
/// If `committed` is not in revision order: that is a bug in the caller's ground truth.
pub fn validate_watch(
    committed: &[WatchEvent],
    spec: &WatchSpec,
    responses: &[WatchResponse],
) -> Result<WatchReport, WatchViolation> {
    assert!(
        committed.windows(2).all(|w| w[0].revision <= w[1].revision),
        "committed events out of revision order"
    );
    let Some(first) = responses.first().filter(|r| r.created) else {
        return Err(violation(
            Guarantee::Protocol,
            0,
            None,
            "the first response must be `created`".into(),
        ));
    };
    let start = if spec.start_revision > 0 {
        spec.start_revision
    } else {
        first.header_revision + 1
    };
    let expected: Vec<&WatchEvent> = committed
        .iter()
        .filter(|e| e.revision >= start && spec.watches(e))
        .collect();
    let mut stream = Stream {
        position: expected
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.revision, e.key.as_slice()), i))
            .collect(),
        expected,
        start,
        delivered: 0,
        last_revision: start - 1,
        synced_through: start - 1,
    };
    for (index, response) in responses.iter().enumerate().skip(1) {
        if responses[index - 1].canceled {
            return Err(violation(
                Guarantee::Protocol,
                index,
                None,
                "response after the watch was canceled".into(),
            ));
        }
        stream.response(index, response)?;
    }
    Ok(WatchReport {
        events_delivered: stream.delivered,
        synced_through: stream.synced_through,
    })
}

fn describe(e: &WatchEvent) -> String {
    format!(
        "{:?} {:?}@{}",
        e.kind,
        String::from_utf8_lossy(&e.key),
        e.revision
    )
}

fn violation(
    guarantee: Guarantee,
    response: usize,
    event: Option<usize>,
    detail: String,
) -> WatchViolation {
    WatchViolation {
        guarantee,
        response,
        event,
        detail,
    }
}

struct Stream<'a> {
    expected: Vec<&'a WatchEvent>,
    position: HashMap<(Revision, &'a [u8]), usize>,
    start: Revision,
    /// How many of `expected` were delivered: always a prefix.
    delivered: usize,
    last_revision: Revision,
    synced_through: Revision,
}

impl Stream<'_> {
    fn next_expected_revision(&self) -> Option<Revision> {
        self.expected.get(self.delivered).map(|e| e.revision)
    }

    fn response(&mut self, index: usize, r: &WatchResponse) -> Result<(), WatchViolation> {
        let fail = |g, detail: String| Err(violation(g, index, None, detail));
        if r.created {
            return fail(Guarantee::Protocol, "a second `created` response".into());
        }
        if r.compact_revision > 0 {
            return self.compacted(index, r);
        }
        if r.events.is_empty() {
            return if r.canceled {
                Ok(())
            } else {
                self.progress(index, r.header_revision)
            };
        }
        for (i, event) in r.events.iter().enumerate() {
            let later = &r.events[i + 1..];
            self.event(event, later)
                .map_err(|(g, detail)| violation(g, index, Some(i), detail))?;
        }
        if r.header_revision < self.last_revision {
            let detail = format!(
                "header revision {} is behind its events ({})",
                r.header_revision, self.last_revision
            );
            return fail(Guarantee::Protocol, detail);
        }
        if !r.fragment && self.next_expected_revision() == Some(self.last_revision) {
            let detail = format!(
                "revision {} continues in a later response without `fragment`",
                self.last_revision
            );
            return fail(Guarantee::Atomic, detail);
        }
        if !r.fragment {
            self.synced_through = self.synced_through.max(self.last_revision);
        }
        Ok(())
    }

    /// Takes one event; `later` (the rest of its response) tells a reordering from a gap.
    fn event(&mut self, e: &WatchEvent, later: &[WatchEvent]) -> Result<(), (Guarantee, String)> {
        let what = describe(e);
        if e.revision < self.last_revision {
            return Err((
                Guarantee::Ordered,
                format!("{what} after revision {}", self.last_revision),
            ));
        }
        let Some(&at) = self.position.get(&(e.revision, e.key.as_slice())) else {
            return Err(if e.revision < self.start {
                (
                    Guarantee::Resumable,
                    format!("{what} is before the start revision {}", self.start),
                )
            } else {
                (
                    Guarantee::Valid,
                    format!("{what} is not a committed write in the watched range"),
                )
            });
        };
        if at < self.delivered {
            return Err((Guarantee::Unique, format!("{what} delivered twice")));
        }
        if at > self.delivered {
            let missed_event = self.expected[self.delivered];
            let missed = describe(missed_event);
            let comes_later = later
                .iter()
                .any(|l| l.revision == missed_event.revision && l.key == missed_event.key);
            return Err(if missed_event.revision == e.revision || comes_later {
                (Guarantee::Ordered, format!("{what} before {missed}"))
            } else if self.delivered == 0 {
                (
                    Guarantee::Resumable,
                    format!("{what} is the first event, but the watch should start at {missed}"),
                )
            } else {
                (Guarantee::Reliable, format!("{what} skips {missed}"))
            });
        }
        let truth = self.expected[at];
        if truth.kind != e.kind || truth.value != e.value {
            return Err((
                Guarantee::Valid,
                format!("{what} differs from the committed {truth:?}"),
            ));
        }
        self.delivered += 1;
        self.last_revision = e.revision;
        Ok(())
    }

    fn progress(&mut self, index: usize, revision: Revision) -> Result<(), WatchViolation> {
        if let Some(next) = self
            .next_expected_revision()
            .filter(|&next| next <= revision)
        {
            let detail = format!(
                "progress at revision {revision} before the event at revision {next} was delivered"
            );
            return Err(violation(Guarantee::Progress, index, None, detail));
        }
        self.synced_through = self.synced_through.max(revision);
        Ok(())
    }

    fn compacted(&mut self, index: usize, r: &WatchResponse) -> Result<(), WatchViolation> {
        if !r.canceled {
            return Err(violation(
                Guarantee::Protocol,
                index,
                None,
                "compaction response without `canceled`".into(),
            ));
        }
        let wanted_from = self.last_revision + 1;
        if wanted_from >= r.compact_revision {
            let detail = format!(
                "compacted at {} although the watcher only needed revisions from {wanted_from}",
                r.compact_revision
            );
            return Err(violation(Guarantee::Reliable, index, None, detail));
        }
        Ok(())
    }
}
