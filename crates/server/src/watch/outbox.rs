//! The bounded output buffer of one watch stream.
//!
//! Owns: the FIFO of [`WatchMessage`]s between the hub (producer, under the hub lock) and the
//! stream's sender task (consumer), its message and byte limits, and waking the consumer.
//! Must never: block a producer. `try_push` refuses when full (the hub then demotes the
//! watcher to catch-up); `push` (control messages: created, canceled, progress) always
//! succeeds, and the gRPC layer stops reading requests while the buffer is full, so control
//! messages stay bounded by the limit plus one request's worth.
//!
//! Lock order: the hub lock may be held while taking this one, never the reverse.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::WatchMessage;

pub(crate) struct Outbox {
    state: Mutex<Queue>,
    /// Wakes the consumer: a push, a demotion (catch-up work) or a deferred answer.
    wake: Notify,
    messages_max: usize,
    bytes_max: usize,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<(WatchMessage, usize)>,
    bytes: usize,
}

impl Outbox {
    pub(crate) fn new(messages_max: usize, bytes_max: usize) -> Self {
        Self {
            state: Mutex::new(Queue::default()),
            wake: Notify::new(),
            messages_max: messages_max.max(1),
            bytes_max,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a consistent queue (every mutation is a
        // single push or pop), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `message` if the buffer has room (an empty buffer always has room, so one
    /// oversized revision still goes through). Gives the message back when full.
    pub(crate) fn try_push(&self, message: WatchMessage) -> Result<(), WatchMessage> {
        let bytes = message.size_bytes();
        let mut queue = self.queue();
        let full = queue.messages.len() >= self.messages_max
            || queue.bytes.saturating_add(bytes) > self.bytes_max;
        if full && !queue.messages.is_empty() {
            return Err(message);
        }
        queue.bytes += bytes;
        queue.messages.push_back((message, bytes));
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    /// Queues a control message regardless of the limits.
    pub(crate) fn push(&self, message: WatchMessage) {
        let bytes = message.size_bytes();
        let mut queue = self.queue();
        queue.bytes += bytes;
        queue.messages.push_back((message, bytes));
        drop(queue);
        self.wake.notify_one();
    }

    pub(crate) fn pop(&self) -> Option<WatchMessage> {
        let mut queue = self.queue();
        let (message, bytes) = queue.messages.pop_front()?;
        queue.bytes -= bytes;
        Some(message)
    }

    pub(crate) fn len(&self) -> usize {
        self.queue().messages.len()
    }

    /// Whether the buffer is below its limits (the gRPC layer reads requests only then).
    pub(crate) fn has_room(&self) -> bool {
        let queue = self.queue();
        queue.messages.len() < self.messages_max && queue.bytes < self.bytes_max
    }

    /// Wakes the consumer without a message (catch-up work appeared).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves after the next push or wake, or at once if one happened since the last
    /// call (`Notify` keeps one permit), so a wake-up between a check and this wait is
    /// never lost.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
