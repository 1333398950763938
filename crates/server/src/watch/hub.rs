//! The hub's state and everything that changes it under the hub lock: publishing applied
//! revisions to synced watchers, creating and cancelling watches, demotion of slow watchers,
//! joining caught-up watchers, and progress notifications.
//!
//! Must never: read the store or await while holding the lock (catch-up reads happen in
//! `catchup.rs`, between two short lock sections).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_api::error::EtcdError;
use keel_storage::{Event, EventKind, StorageError, Store};

use super::index::{KeyRange, SyncedIndex, WatcherKey};
use super::outbox::Outbox;
use super::{CreateWatch, WatchConfig, WatchMessage, DUPLICATE_WATCH_ID, INVALID_WATCH_ID};

/// Hub-wide identity of one client stream.
pub(crate) type StreamKey = u64;

/// All watchers of one member. Share it as `Arc<WatchHub>` between apply (which calls
/// [`WatchHub::publish`]) and the Watch service (which opens one [`StreamHandle`] per
/// gRPC stream).
pub struct WatchHub {
    pub(crate) store: Arc<Store>,
    config: WatchConfig,
    state: Mutex<HubState>,
    /// Set once by [`WatchHub::shutdown`]; every stream ends when it flips.
    closed: tokio::sync::watch::Sender<bool>,
    /// The last published revision, for [`WatchHub::wait_published`].
    published: tokio::sync::watch::Sender<i64>,
    /// Watchers created with `prev_kv` (the same counter as `HubState::prev_kv_watchers`),
    /// read by apply without the hub lock.
    prev_kv_watchers: Arc<AtomicUsize>,
}

/// Counts for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    pub streams: usize,
    pub watchers: usize,
    pub synced: usize,
    pub unsynced: usize,
    /// The last revision [`WatchHub::publish`] delivered.
    pub last_published: i64,
}

pub(crate) struct HubState {
    /// Every revision up to this one has been offered to synced watchers, and the store
    /// holds it (apply publishes after its commit).
    pub(crate) last_published: i64,
    next_key: u64,
    pub(crate) watchers: HashMap<WatcherKey, Watcher>,
    synced: SyncedIndex,
    pub(crate) streams: HashMap<StreamKey, StreamState>,
    /// Streams with a progress request not answered yet (some watcher was unsynced).
    progress_waiting: HashSet<StreamKey>,
    /// How many of `watchers` asked for `prev_kv`; changed only with `watchers`.
    prev_kv_watchers: Arc<AtomicUsize>,
}

pub(crate) struct Watcher {
    pub(crate) stream: StreamKey,
    /// The client-visible watch ID (unique per stream).
    pub(crate) id: i64,
    pub(crate) range: KeyRange,
    /// As requested; 0 = "from now". Progress is withheld until it is reached (etcd).
    start_revision: i64,
    /// The oldest revision this watcher still has to be offered. Exact while unsynced; for a
    /// synced watcher only a lower bound (it is offered every published revision >= it).
    pub(crate) next_rev: i64,
    pub(crate) synced: bool,
    no_put: bool,
    no_delete: bool,
    pub(crate) prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Events were queued since the last progress tick (etcd then skips one notification).
    pub(crate) events_since_tick: bool,
}

impl Watcher {
    /// Whether the filters let `event` through (the key range is checked by the caller).
    pub(crate) fn wants(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }

    pub(crate) fn events_message(&self, revision: i64, events: Vec<Arc<Event>>) -> WatchMessage {
        WatchMessage::Events {
            watch_id: self.id,
            revision,
            events,
            prev_kv: self.prev_kv,
            fragment: self.fragment,
        }
    }
}

/// What a watch ID of a stream refers to.
enum Slot {
    Active(WatcherKey),
    /// Ended by the server (compaction); like etcd, the ID stays taken until the client
    /// cancels it, and that cancel is answered.
    Ended,
}

pub(crate) struct StreamState {
    pub(crate) outbox: Arc<Outbox>,
    ids: HashMap<i64, Slot>,
    next_auto_id: i64,
    pub(crate) unsynced: BTreeSet<WatcherKey>,
    progress_requested: bool,
}

impl StreamState {
    /// etcd: auto IDs count up from 0 per stream, skipping IDs the client chose.
    fn allocate_id(&mut self) -> i64 {
        while self.ids.contains_key(&self.next_auto_id) {
            self.next_auto_id += 1;
        }
        let id = self.next_auto_id;
        self.next_auto_id += 1;
        id
    }
}

impl WatchHub {
    /// A hub whose watchers start after the store's current revision. Build it before
    /// apply first publishes (a revision published twice is ignored; a gap sends every
    /// synced watcher through catch-up, so neither loses an event).
    pub fn new(store: Arc<Store>, config: WatchConfig) -> Result<Arc<WatchHub>, StorageError> {
        let last_published = store.current_revision()?;
        let prev_kv_watchers = Arc::new(AtomicUsize::new(0));
        Ok(Arc::new(WatchHub {
            store,
            config,
            state: Mutex::new(HubState {
                last_published,
                next_key: 0,
                watchers: HashMap::new(),
                synced: SyncedIndex::default(),
                streams: HashMap::new(),
                progress_waiting: HashSet::new(),
                prev_kv_watchers: prev_kv_watchers.clone(),
            }),
            closed: tokio::sync::watch::Sender::new(false),
            published: tokio::sync::watch::Sender::new(last_published),
            prev_kv_watchers,
        }))
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every mutation keeps the state consistent step by step (no multi-step invariant
        // is left half done across a panic point), so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some watcher asked for `prev_kv`, so that apply should read the previous
    /// version of every put for its event. Only a hint: a batch that began without it is
    /// published with `put_prev_kv_omitted`, and its `prev_kv` watchers read it from history.
    pub fn has_prev_kv_watchers(&self) -> bool {
        self.prev_kv_watchers.load(Ordering::Relaxed) > 0
    }

    /// Called by apply after each committed batch: one entry per revision that changed, in
    /// ascending order, each revision's events in order. Never blocks on a consumer: a
    /// synced watcher whose stream buffer is full is demoted to catch-up.
    /// `put_prev_kv_omitted`: the put events carry no `prev_kv` (see
    /// [`WatchHub::has_prev_kv_watchers`]); a synced `prev_kv` watcher that matches one goes
    /// through catch-up, which reads history with `prev_kv`.
    pub fn publish(&self, revisions: &[(i64, Vec<Event>)], put_prev_kv_omitted: bool) {
        let mut state = self.lock();
        for (revision, events) in revisions {
            state.publish_revision(*revision, events, put_prev_kv_omitted);
        }
        state.answer_waiting_progress();
        self.published.send_replace(state.last_published);
    }

    /// Waits until this member has applied and published `revision` (or the hub shuts down,
    /// which is an error: the member is stopping).
    pub async fn wait_published(&self, revision: i64) -> Result<(), EtcdError> {
        let mut published = self.published.subscribe();
        let mut closed = self.closed.subscribe();
        tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => Err(EtcdError::Stopped),
            r = published.wait_for(|p| *p >= revision) => r.map(|_| ()).map_err(|_| EtcdError::Stopped),
        }
    }

    /// Called after the store was replaced by a snapshot whose current revision is
    /// `current_revision`: history between the last published revision and it was never
    /// published, so every synced watcher goes through catch-up (or is cancelled with the
    /// compact revision if the snapshot compacted it away).
    pub fn restored(&self, current_revision: i64) {
        let mut state = self.lock();
        state.demote_all_synced();
        if current_revision < state.last_published {
            tracing::warn!(
                current_revision,
                last_published = state.last_published,
                "watch hub: store restored to an older revision"
            );
        }
        state.last_published = state.last_published.max(current_revision);
        self.published.send_replace(state.last_published);
    }

    /// Ends every stream (the member is stopping): each gRPC stream finishes with etcd's
    /// "server stopped" so that clients resume elsewhere, and graceful server shutdown is
    /// not held up by open watch streams. Streams opened afterwards end at once.
    pub fn shutdown(&self) {
        self.closed.send_replace(true);
    }

    pub fn is_shut_down(&self) -> bool {
        *self.closed.borrow()
    }

    /// Opens the watcher set of one client stream. Dropping the handle removes its watchers.
    pub fn open_stream(self: &Arc<Self>) -> StreamHandle {
        let outbox = Arc::new(Outbox::new(
            self.config.stream_buffer_messages_max,
            self.config.stream_buffer_bytes_max,
        ));
        let mut state = self.lock();
        let key = state.next_key;
        state.next_key += 1;
        state.streams.insert(
            key,
            StreamState {
                outbox: outbox.clone(),
                ids: HashMap::new(),
                next_auto_id: 0,
                unsynced: BTreeSet::new(),
                progress_requested: false,
            },
        );
        StreamHandle {
            hub: self.clone(),
            key,
            outbox,
        }
    }

    pub fn stats(&self) -> HubStats {
        let state = self.lock();
        let synced = state.watchers.values().filter(|w| w.synced).count();
        HubStats {
            streams: state.streams.len(),
            watchers: state.watchers.len(),
            synced,
            unsynced: state.watchers.len() - synced,
            last_published: state.last_published,
        }
    }
}

impl HubState {
    fn publish_revision(&mut self, revision: i64, events: &[Event], put_prev_kv_omitted: bool) {
        if revision <= self.last_published {
            tracing::debug!(
                revision,
                last_published = self.last_published,
                "watch hub: revision published twice; ignored"
            );
            return;
        }
        if revision != self.last_published + 1 {
            tracing::warn!(
                revision,
                last_published = self.last_published,
                "watch hub: revisions skipped by publish; synced watchers catch up from the store"
            );
            self.demote_all_synced();
        }
        self.last_published = revision;
        // Per watcher, the matching events of this revision in order; each event is shared,
        // not copied, between watchers.
        let mut batches: HashMap<WatcherKey, Vec<Arc<Event>>> = HashMap::new();
        for event in events {
            let mut shared: Option<Arc<Event>> = None;
            self.synced.for_each_match(&event.kv.key, |watcher| {
                let event = shared.get_or_insert_with(|| Arc::new(event.clone()));
                batches.entry(watcher).or_default().push(event.clone());
            });
        }
        for (watcher, events) in batches {
            self.offer_synced(watcher, revision, events, put_prev_kv_omitted);
        }
    }

    /// Queues one revision's events for a synced watcher, or demotes it if its stream is full.
    fn offer_synced(
        &mut self,
        key: WatcherKey,
        revision: i64,
        events: Vec<Arc<Event>>,
        put_prev_kv_omitted: bool,
    ) {
        let Some(watcher) = self.watchers.get_mut(&key) else {
            return;
        };
        if revision < watcher.next_rev {
            return; // created with a future start revision
        }
        let events: Vec<Arc<Event>> = events.into_iter().filter(|e| watcher.wants(e)).collect();
        if events.is_empty() {
            return;
        }
        if put_prev_kv_omitted && watcher.prev_kv && events.iter().any(|e| e.kind == EventKind::Put)
        {
            // Apply began this batch before the watcher existed; history has the prev_kv.
            self.demote(key, revision);
            return;
        }
        let Some(stream) = self.streams.get(&watcher.stream) else {
            return;
        };
        match stream
            .outbox
            .try_push(watcher.events_message(revision, events))
        {
            Ok(()) => {
                watcher.next_rev = revision + 1;
                watcher.events_since_tick = true;
            }
            Err(_) => {
                tracing::debug!(watch_id = watcher.id, revision, "slow watcher demoted");
                self.demote(key, revision);
            }
        }
    }

    /// Moves a synced watcher to catch-up from `next_rev`.
    fn demote(&mut self, key: WatcherKey, next_rev: i64) {
        let Some(watcher) = self.watchers.get_mut(&key) else {
            return;
        };
        if !watcher.synced {
            return;
        }
        watcher.synced = false;
        watcher.next_rev = next_rev;
        self.synced.remove(key, &watcher.range);
        if let Some(stream) = self.streams.get_mut(&watcher.stream) {
            stream.unsynced.insert(key);
            stream.outbox.wake();
        }
    }

    fn demote_all_synced(&mut self) {
        let floor = self.last_published + 1;
        let synced: Vec<(WatcherKey, i64)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(k, w)| (*k, w.next_rev.max(floor)))
            .collect();
        for (key, next_rev) in synced {
            self.demote(key, next_rev);
        }
    }

    /// Moves a caught-up watcher into the synced set. Only correct when its `next_rev` is
    /// past `last_published` (checked by the caller under the same lock as publish).
    pub(crate) fn join(&mut self, key: WatcherKey) {
        let Some(watcher) = self.watchers.get_mut(&key) else {
            return;
        };
        debug_assert!(watcher.next_rev > self.last_published);
        watcher.synced = true;
        self.synced.insert(key, &watcher.range);
        if let Some(stream) = self.streams.get_mut(&watcher.stream) {
            stream.unsynced.remove(&key);
        }
    }

    /// Removes a watcher from the hub (not from its stream's ID table).
    fn remove_watcher(&mut self, key: WatcherKey) -> Option<Watcher> {
        let watcher = self.watchers.remove(&key)?;
        if watcher.prev_kv {
            self.prev_kv_watchers.fetch_sub(1, Ordering::Relaxed);
        }
        if watcher.synced {
            self.synced.remove(key, &watcher.range);
        } else if let Some(stream) = self.streams.get_mut(&watcher.stream) {
            stream.unsynced.remove(&key);
        }
        Some(watcher)
    }

    /// Ends a watcher from the server side: its last message is this cancel.
    pub(crate) fn end_watcher(&mut self, key: WatcherKey, compact_revision: i64, reason: String) {
        let Some(watcher) = self.remove_watcher(key) else {
            return;
        };
        let revision = self.last_published;
        if let Some(stream) = self.streams.get_mut(&watcher.stream) {
            stream.ids.insert(watcher.id, Slot::Ended);
            stream.outbox.push(WatchMessage::Canceled {
                watch_id: watcher.id,
                revision,
                compact_revision,
                reason,
            });
        }
        self.answer_progress_if_ready(watcher.stream);
    }

    /// etcd's rule: a stream's progress may be reported only when every watcher on it is
    /// synced and past its requested start revision.
    fn progress_ready(&self, stream: &StreamState) -> bool {
        stream.unsynced.is_empty()
            && stream.ids.values().all(|slot| match slot {
                Slot::Active(key) => self
                    .watchers
                    .get(key)
                    .is_none_or(|w| w.start_revision <= self.last_published),
                Slot::Ended => true,
            })
    }

    /// Answers a pending stream-wide progress request if the stream is ready. The answer
    /// follows every event up to `last_published` in the stream's FIFO.
    pub(crate) fn answer_progress_if_ready(&mut self, key: StreamKey) {
        let Some(stream) = self.streams.get(&key) else {
            self.progress_waiting.remove(&key);
            return;
        };
        if !stream.progress_requested || !self.progress_ready(stream) {
            return;
        }
        let revision = self.last_published;
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.progress_requested = false;
            stream.outbox.push(WatchMessage::Progress {
                watch_id: INVALID_WATCH_ID,
                revision,
            });
        }
        self.progress_waiting.remove(&key);
    }

    fn answer_waiting_progress(&mut self) {
        if self.progress_waiting.is_empty() {
            return;
        }
        let waiting: Vec<StreamKey> = self.progress_waiting.iter().copied().collect();
        for key in waiting {
            self.answer_progress_if_ready(key);
        }
    }
}

/// The watches of one client stream, and its output buffer. The gRPC layer feeds requests
/// in ([`create`](Self::create), [`cancel`](Self::cancel), ...) and drains
/// [`pop`](Self::pop), calling [`catch_up`](Self::catch_up) whenever the buffer is empty.
pub struct StreamHandle {
    pub(crate) hub: Arc<WatchHub>,
    pub(crate) key: StreamKey,
    pub(crate) outbox: Arc<Outbox>,
}

impl StreamHandle {
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Handles a create request: queues exactly one `Created` (or `Rejected`) message,
    /// before any event of the new watch.
    pub fn create(&self, request: &CreateWatch) {
        let mut guard = self.hub.lock();
        let state = &mut *guard;
        let revision = state.last_published;
        let reject = |reason: String| {
            self.outbox
                .push(WatchMessage::Rejected { revision, reason })
        };
        if request.start_revision < 0 {
            return reject(EtcdError::Compacted.to_string());
        }
        let range = match KeyRange::from_request(&request.key, &request.range_end) {
            Ok(range) => range,
            Err(reason) => return reject(reason.to_string()),
        };
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return;
        };
        let watch_id = match request.watch_id {
            0 => stream.allocate_id(),
            id if stream.ids.contains_key(&id) => return reject(DUPLICATE_WATCH_ID.to_string()),
            id => id,
        };
        let key = state.next_key;
        state.next_key += 1;
        stream.ids.insert(watch_id, Slot::Active(key));
        self.outbox
            .push(WatchMessage::Created { watch_id, revision });
        // etcd: "from now" and future start revisions are synced at once; a past start
        // revision (even one already compacted: catch-up reports that) catches up first.
        let from_now = request.start_revision == 0;
        let synced = from_now || request.start_revision > revision;
        if request.prev_kv {
            state.prev_kv_watchers.fetch_add(1, Ordering::Relaxed);
        }
        state.watchers.insert(
            key,
            Watcher {
                stream: self.key,
                id: watch_id,
                range,
                start_revision: request.start_revision,
                next_rev: if from_now {
                    revision + 1
                } else {
                    request.start_revision
                },
                synced: false,
                no_put: request.no_put,
                no_delete: request.no_delete,
                prev_kv: request.prev_kv,
                fragment: request.fragment,
                progress_notify: request.progress_notify,
                events_since_tick: false,
            },
        );
        if synced {
            state.join(key);
        } else {
            stream.unsynced.insert(key);
            self.outbox.wake();
        }
    }

    /// Handles a cancel request: the watch gets no message after this `Canceled`. Like
    /// etcd, an ID the stream never had is not answered.
    pub fn cancel(&self, watch_id: i64) {
        let mut state = self.hub.lock();
        let revision = state.last_published;
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return;
        };
        match stream.ids.remove(&watch_id) {
            None => return,
            Some(Slot::Active(key)) => {
                state.remove_watcher(key);
            }
            Some(Slot::Ended) => {}
        }
        self.outbox.push(WatchMessage::Canceled {
            watch_id,
            revision,
            compact_revision: 0,
            reason: String::new(),
        });
        state.answer_progress_if_ready(self.key);
    }

    /// Handles a stream-wide progress request: answered (watch ID -1, the last published
    /// revision) at once if every watcher of the stream is synced, otherwise as soon as they
    /// all are. Several requests while waiting get one answer.
    pub fn request_progress(&self) {
        let mut state = self.hub.lock();
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return;
        };
        stream.progress_requested = true;
        state.progress_waiting.insert(self.key);
        state.answer_progress_if_ready(self.key);
    }

    /// The periodic `progress_notify` tick: every synced watcher that asked for it and had no
    /// events since the previous tick gets an empty message with the last published revision.
    pub fn progress_tick(&self) {
        let mut guard = self.hub.lock();
        let state = &mut *guard;
        let revision = state.last_published;
        let Some(stream) = state.streams.get(&self.key) else {
            return;
        };
        for slot in stream.ids.values() {
            let Slot::Active(key) = slot else { continue };
            let Some(watcher) = state.watchers.get_mut(key) else {
                continue;
            };
            let idle = !std::mem::take(&mut watcher.events_since_tick);
            if watcher.progress_notify
                && idle
                && watcher.synced
                && watcher.start_revision <= revision
            {
                // A full buffer means messages are flowing; skipping one notice is harmless.
                let _ = self.outbox.try_push(WatchMessage::Progress {
                    watch_id: watcher.id,
                    revision,
                });
            }
        }
    }

    /// The next message for the client, if any.
    pub fn pop(&self) -> Option<WatchMessage> {
        self.outbox.pop()
    }

    /// Messages waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.outbox.len()
    }

    /// Whether the buffer is below its limits; the gRPC layer stops reading requests while
    /// it is not, which bounds the control messages a client can pile up.
    pub fn has_room(&self) -> bool {
        self.outbox.has_room()
    }

    /// Ready when there may be something new to pop or catch up (once per wake; a wake
    /// before the poll counts).
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.outbox.poll_woken(cx)
    }

    /// Resolves when there may be something new to pop or catch up (a wake before the call
    /// counts).
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await
    }

    /// Wakes whoever polls [`poll_woken`](Self::poll_woken) (the stream's state changed
    /// outside the hub).
    pub fn wake(&self) {
        self.outbox.wake()
    }

    /// Resolves once the buffer had no room and a pop made some.
    pub async fn room(&self) {
        self.outbox.room().await
    }

    /// Resolves once the hub is shut down.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.hub.closed.subscribe();
        async move {
            // An error means the hub is gone, which also ends the stream.
            let _ = closed.wait_for(|c| *c).await;
        }
    }

    /// Watches of this stream that can still produce messages.
    pub fn active_watchers(&self) -> usize {
        let state = self.hub.lock();
        state.streams.get(&self.key).map_or(0, |s| {
            s.ids
                .values()
                .filter(|slot| matches!(slot, Slot::Active(_)))
                .count()
        })
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        let Some(stream) = state.streams.remove(&self.key) else {
            return;
        };
        for slot in stream.ids.values() {
            if let Slot::Active(key) = slot {
                state.remove_watcher(*key);
            }
        }
        state.progress_waiting.remove(&self.key);
    }
}
