//! Catch-up: bringing a stream's unsynced watchers from their `next_rev` to the last
//! published revision out of the store's history, then joining them to the synced set.
//!
//! One step = plan under the hub lock (which watchers, from which revision, up to which
//! published revision), read one bounded chunk of history without the lock, deliver under
//! the lock. A watcher joins the synced set only in that last lock section and only when its
//! `next_rev` is past `last_published`; publish takes the same lock, so every revision is
//! delivered exactly once: by catch-up if it is <= the revision read up to, by publish
//! otherwise.
//!
//! Must never: hold the hub lock during the store read, or read past the last published
//! revision (the store may already hold a revision publish has not offered yet).

use std::sync::Arc;

use keel_storage::{Event, StorageError, Store};

use super::hub::{HubState, StreamHandle, StreamKey};
use super::index::WatcherKey;

/// Which watchers one step serves and which history it reads.
struct Plan {
    /// Unsynced watchers of the stream with the `next_rev` seen when planning.
    group: Vec<(WatcherKey, i64)>,
    /// The last published revision when planning: the read's upper bound.
    target: i64,
    /// The smallest `next_rev` in `group`: the read's lower bound.
    from: i64,
    /// Whether a watcher of `group` asked for `prev_kv` (only then is it read).
    prev_kv: bool,
}

enum History {
    /// Events in `[plan.from, covered_end]`: every event of those revisions.
    Events {
        events: Vec<Arc<Event>>,
        covered_end: i64,
    },
    /// `plan.from` is at or below the store's compact revision.
    Compacted { compact_revision: i64 },
    /// The store failed; the affected watchers are cancelled with this reason.
    Failed(String),
}

impl StreamHandle {
    /// Runs one catch-up step for this stream's unsynced watchers. Returns whether it did
    /// anything (delivered, joined, cancelled, or stopped because the buffer filled up); the
    /// caller drains the buffer and calls again while it returns true.
    pub fn catch_up(&self) -> bool {
        let (joined, plan) = self.hub.lock().plan_catch_up(self.key);
        let Some(plan) = plan else {
            return joined;
        };
        let history = read_history(
            &self.hub.store,
            &plan,
            self.hub.config().catch_up_chunk_events_max,
        );
        self.hub.lock().deliver_catch_up(self.key, &plan, history) || joined
    }
}

impl HubState {
    /// Joins watchers with nothing left to read and plans a read for the rest.
    fn plan_catch_up(&mut self, stream: StreamKey) -> (bool, Option<Plan>) {
        let Some(state) = self.streams.get(&stream) else {
            return (false, None);
        };
        let target = self.last_published;
        let mut ready = Vec::new();
        let mut group = Vec::new();
        let mut prev_kv = false;
        for key in &state.unsynced {
            match self.watchers.get(key) {
                Some(w) if w.next_rev > target => ready.push(*key),
                Some(w) => {
                    group.push((*key, w.next_rev));
                    prev_kv |= w.prev_kv;
                }
                None => {}
            }
        }
        let joined = !ready.is_empty();
        for key in ready {
            self.join(key);
        }
        if joined {
            self.answer_progress_if_ready(stream);
        }
        let Some(from) = group.iter().map(|(_, next)| *next).min() else {
            return (joined, None);
        };
        (
            joined,
            Some(Plan {
                group,
                target,
                from,
                prev_kv,
            }),
        )
    }

    fn deliver_catch_up(&mut self, stream: StreamKey, plan: &Plan, history: History) -> bool {
        let acted = match history {
            History::Compacted { compact_revision } => {
                self.cancel_compacted(plan, compact_revision);
                true
            }
            History::Failed(reason) => {
                for (key, next_rev) in &plan.group {
                    if self.still_planned(*key, *next_rev) {
                        self.end_watcher(*key, 0, reason.clone());
                    }
                }
                true
            }
            History::Events {
                events,
                covered_end,
            } => self.deliver_events(plan, &events, covered_end),
        };
        self.answer_progress_if_ready(stream);
        acted
    }

    fn still_planned(&self, key: WatcherKey, next_rev: i64) -> bool {
        self.watchers
            .get(&key)
            .is_some_and(|w| !w.synced && w.next_rev == next_rev)
    }

    /// Cancels every planned watcher whose next revision is compacted. etcd reports its
    /// compact revision, from which etcd can still resume; keel's store keeps no complete
    /// history at the compact revision itself (a tombstone there is gone), so a watcher that
    /// needs exactly that revision is told `compact + 1`: a client resuming from the
    /// reported revision always succeeds and never loops.
    fn cancel_compacted(&mut self, plan: &Plan, compact_revision: i64) {
        for (key, next_rev) in &plan.group {
            if *next_rev > compact_revision || !self.still_planned(*key, *next_rev) {
                continue;
            }
            let reported = if *next_rev < compact_revision {
                compact_revision
            } else {
                compact_revision + 1
            };
            self.end_watcher(*key, reported, String::new());
        }
    }

    /// Delivers one chunk to every planned watcher it concerns; returns whether any acted.
    fn deliver_events(&mut self, plan: &Plan, events: &[Arc<Event>], covered_end: i64) -> bool {
        let mut acted = false;
        for (key, next_rev) in &plan.group {
            if !self.still_planned(*key, *next_rev) || *next_rev > covered_end {
                continue;
            }
            let Some(watcher) = self.watchers.get_mut(key) else {
                continue;
            };
            let mine: Vec<Arc<Event>> = events
                .iter()
                .filter(|e| {
                    let rev = e.kv.mod_revision;
                    rev >= *next_rev
                        && rev <= covered_end
                        && watcher.range.contains(&e.kv.key)
                        && watcher.wants(e)
                })
                .cloned()
                .collect();
            if !mine.is_empty() {
                let Some(state) = self.streams.get(&watcher.stream) else {
                    continue;
                };
                let message = watcher.events_message(covered_end, mine);
                if state.outbox.try_push(message).is_err() {
                    // Full: the stream drains its buffer and plans again from here.
                    return true;
                }
                watcher.events_since_tick = true;
            }
            watcher.next_rev = covered_end + 1;
            acted = true;
            if watcher.next_rev > self.last_published {
                self.join(*key);
            }
        }
        acted
    }
}

/// Reads one chunk of history for `plan`, without any hub lock held.
fn read_history(store: &Store, plan: &Plan, chunk_events_max: usize) -> History {
    let view = match store.read() {
        Ok(view) => view,
        Err(e) => return failed(e),
    };
    let compact_revision = view.compact_revision();
    if plan.from <= compact_revision {
        return History::Compacted { compact_revision };
    }
    // Publish follows the store commit, so the store holds every published revision; the
    // `min` only guards against a store restored behind the hub.
    let end = plan.target.min(view.current_revision());
    let read = if plan.prev_kv {
        view.events(plan.from, end, chunk_events_max)
    } else {
        view.events_without_prev_kv(plan.from, end, chunk_events_max)
    };
    match read {
        Ok(events) => {
            let truncated = chunk_events_max != 0 && events.len() >= chunk_events_max;
            let covered_end = match events.last() {
                Some(last) if truncated => last.kv.mod_revision,
                _ => end,
            };
            History::Events {
                events: events.into_iter().map(Arc::new).collect(),
                covered_end,
            }
        }
        Err(StorageError::Compacted) => History::Compacted { compact_revision },
        Err(e) => failed(e),
    }
}

fn failed(e: StorageError) -> History {
    tracing::error!(error = %e, "watch catch-up could not read history");
    History::Failed(format!("etcdserver: {e}"))
}
