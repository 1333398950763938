//! The watch hub: etcd's Watch semantics over keel's MVCC store.
//!
//! Owns: every watcher of this member, which of them are *synced* (at the last published
//! revision, fed directly by [`WatchHub::publish`]) and which are *unsynced* (catching up
//! from the store's history), the per-stream bounded output buffers, watch IDs, progress
//! notifications and compaction cancels. The gRPC layer (`grpc/watch.rs`) only translates
//! requests into [`StreamHandle`] calls and [`WatchMessage`]s into `WatchResponse`s.
//!
//! Guarantees (etcd's, see `ETCD-FACTS.md`): events of a watch are ordered, never
//! duplicated, never skipped, all events of one revision travel in one message, and a
//! watch can start at any revision above the compact revision. `created` precedes every
//! other message of a watch; `canceled` is its last.
//!
//! How (the invariants every change here must keep):
//! - `publish` runs on the apply path, after the store commit. It takes the hub lock
//!   briefly, does O(events x matching watchers) work and only `try_push`es into bounded
//!   per-stream buffers. It never waits, never reads the store.
//! - A synced watcher whose stream buffer is full is demoted to unsynced with `next_rev`
//!   set to the revision it missed; catch-up resumes it from the store.
//! - Catch-up reads history outside the lock (only up to the last published revision,
//!   which the store is guaranteed to contain), then under the lock delivers it and joins
//!   the watcher to the synced set iff nothing is left between its `next_rev` and the last
//!   published revision. Publish and join serialise on the same lock: no gap, no duplicate.
//! - Put events carry `prev_kv` only while some watcher asked for it (apply checks
//!   [`WatchHub::has_prev_kv_watchers`] once per batch). A batch published with
//!   `put_prev_kv_omitted` never reaches a `prev_kv` watcher through publish: a synced one
//!   that matches one of its puts is demoted at that revision, and catch-up reads `prev_kv`
//!   from history.
//!
//! Must never: block or do I/O in `publish`; hold the hub lock across a store read or an
//! await; let one stream's slow reader delay another stream or apply.

mod catchup;
mod hub;
mod index;
mod outbox;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use keel_storage::Event;

pub use hub::{HubStats, StreamHandle, WatchHub};

pub use keel_api::error::{
    WATCH_DUPLICATE_ID as DUPLICATE_WATCH_ID, WATCH_EMPTY_RANGE as EMPTY_WATCHER_RANGE,
};
/// The watch ID of responses that belong to no single watch: rejected creates and
/// stream-wide progress notifications (etcd's `clientv3.InvalidWatchID`).
pub const INVALID_WATCH_ID: i64 = -1;

/// Tunables of the hub, with their units. `Default` gives production values.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// How often a synced, idle watcher created with `progress_notify` gets an empty
    /// response carrying the current revision (etcd: 10 minutes).
    pub progress_notify_interval: Duration,
    /// Messages one stream may have queued before a synced watcher is demoted to catch-up.
    pub stream_buffer_messages_max: usize,
    /// Bytes (approximate event payload) one stream may have queued before demotion. A
    /// single message larger than this is still accepted into an empty buffer.
    pub stream_buffer_bytes_max: usize,
    /// Events read from the store per catch-up step (a revision is never split, so a step
    /// may return more).
    pub catch_up_chunk_events_max: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            progress_notify_interval: Duration::from_secs(10 * 60),
            stream_buffer_messages_max: 1024,
            stream_buffer_bytes_max: 8 * 1024 * 1024,
            catch_up_chunk_events_max: 512,
        }
    }
}

/// A create request, already decoded from the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateWatch {
    pub key: Vec<u8>,
    /// etcd's range forms: empty = `key` alone, `[0]` = every key >= `key`.
    pub range_end: Vec<u8>,
    /// First revision to report; 0 = after the current revision; negative is rejected.
    pub start_revision: i64,
    /// Client-chosen ID, 0 = let the stream choose.
    pub watch_id: i64,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// What a stream tells its client, in order. The gRPC layer adds headers (cluster, member,
/// term) around `revision` and converts events.
#[derive(Clone, Debug)]
pub enum WatchMessage {
    /// The answer to a create request; the watch reports revisions after `revision` (or
    /// from its start revision).
    Created { watch_id: i64, revision: i64 },
    /// A create request that made no watch: `created` and `canceled` with the reason, on
    /// watch ID -1 (etcd).
    Rejected { revision: i64, reason: String },
    /// Events of whole revisions, in order. `revision` is the revision the watch has been
    /// brought up to by this message (>= the last event's).
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Arc<Event>>,
        prev_kv: bool,
        fragment: bool,
    },
    /// The watch ended: on the client's request (`compact_revision` 0, `reason` empty),
    /// because its next revision was compacted (`compact_revision` = the oldest revision
    /// it could resume from), or because history could not be read (`reason`).
    Canceled {
        watch_id: i64,
        revision: i64,
        compact_revision: i64,
        reason: String,
    },
    /// No events: every event up to `revision` has been sent. `watch_id` is -1 for an
    /// answer to a stream-wide progress request.
    Progress { watch_id: i64, revision: i64 },
}

impl WatchMessage {
    /// Approximate bytes this message holds (what the stream buffer limit counts).
    pub(crate) fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 64;
        match self {
            WatchMessage::Events {
                events, prev_kv, ..
            } => {
                events
                    .iter()
                    .map(|e| {
                        let prev = match (&e.prev_kv, prev_kv) {
                            (Some(p), true) => p.key.len() + p.value.len(),
                            _ => 0,
                        };
                        e.kv.key.len() + e.kv.value.len() + prev + OVERHEAD_BYTES
                    })
                    .sum::<usize>()
                    + OVERHEAD_BYTES
            }
            WatchMessage::Rejected { reason, .. } | WatchMessage::Canceled { reason, .. } => {
                reason.len() + OVERHEAD_BYTES
            }
            _ => OVERHEAD_BYTES,
        }
    }
}
