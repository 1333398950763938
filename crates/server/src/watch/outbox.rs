//! The bounded output buffer of one watch stream.
//!
//! Owns: the FIFO of [`WatchMessage`]s between the hub (producer, under the hub lock) and the
//! stream's response side (consumer, polled by the HTTP/2 stream), its message and byte
//! limits, waking the consumer, and waking the request reader when room frees up.
//! Must never: block a producer. `try_push` refuses when full (the hub then demotes the
//! watcher to catch-up); `push` (control messages: created, canceled, progress) always
//! succeeds, and the gRPC layer stops reading requests while the buffer is full, so control
//! messages stay bounded by the limit plus one request's worth.
//!
//! Lock order: the hub lock may be held while taking this one, never the reverse.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::Notify;

use super::WatchMessage;

pub(crate) struct Outbox {
    state: Mutex<Queue>,
    /// The consumer's waker, woken by a push, a demotion (catch-up work), a deferred answer
    /// or a change on the request side.
    consumer: AtomicWaker,
    /// A wake the consumer has not seen yet (one permit, like `Notify`).
    woken: AtomicBool,
    /// Wakes the request reader when a pop makes room in a full buffer.
    room: Notify,
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
            consumer: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            room: Notify::new(),
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
        self.wake();
        Ok(())
    }

    /// Queues a control message regardless of the limits.
    pub(crate) fn push(&self, message: WatchMessage) {
        let bytes = message.size_bytes();
        let mut queue = self.queue();
        queue.bytes += bytes;
        queue.messages.push_back((message, bytes));
        drop(queue);
        self.wake();
    }

    pub(crate) fn pop(&self) -> Option<WatchMessage> {
        let mut queue = self.queue();
        let was_full = !self.room_in(&queue);
        let (message, bytes) = queue.messages.pop_front()?;
        queue.bytes -= bytes;
        let room_made = was_full && self.room_in(&queue);
        drop(queue);
        if room_made {
            self.room.notify_one();
        }
        Some(message)
    }

    fn room_in(&self, queue: &Queue) -> bool {
        queue.messages.len() < self.messages_max && queue.bytes < self.bytes_max
    }

    pub(crate) fn len(&self) -> usize {
        self.queue().messages.len()
    }

    /// Whether the buffer is below its limits (the gRPC layer reads requests only then).
    pub(crate) fn has_room(&self) -> bool {
        self.room_in(&self.queue())
    }

    /// Wakes the consumer without a message (catch-up work appeared).
    pub(crate) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.consumer.wake();
    }

    /// Ready once after each push or wake since the last ready, including one that happened
    /// before this call, so a wake-up between a check and this poll is never lost.
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.consumer.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Resolves once a pop has made room in a full buffer (at once if one did since the last
    /// call).
    pub(crate) async fn room(&self) {
        self.room.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use futures::task::noop_waker_ref;
    use futures::FutureExt;

    use super::*;

    fn progress(revision: i64) -> WatchMessage {
        WatchMessage::Progress {
            watch_id: 0,
            revision,
        }
    }

    fn woken(outbox: &Outbox) -> bool {
        outbox
            .poll_woken(&mut Context::from_waker(noop_waker_ref()))
            .is_ready()
    }

    #[test]
    fn a_wake_before_the_poll_is_kept_once() {
        let outbox = Outbox::new(4, 1 << 20);
        assert!(!woken(&outbox), "nothing happened yet");
        outbox.push(progress(1));
        outbox.wake();
        assert!(woken(&outbox), "the push and wake before the poll count");
        assert!(!woken(&outbox), "once");
        assert!(outbox.try_push(progress(2)).is_ok());
        assert!(woken(&outbox));
    }

    #[test]
    fn a_pop_that_makes_room_in_a_full_buffer_wakes_the_reader() {
        let outbox = Outbox::new(2, 1 << 20);
        outbox.push(progress(1));
        assert!(outbox.has_room());
        assert!(outbox.pop().is_some(), "a pop with room to spare");
        assert!(outbox.room().now_or_never().is_none(), "no signal then");
        outbox.push(progress(2));
        outbox.push(progress(3));
        assert!(!outbox.has_room());
        assert!(outbox.try_push(progress(4)).is_err(), "full");
        assert!(outbox.room().now_or_never().is_none(), "still full");
        assert!(outbox.pop().is_some());
        assert!(outbox.has_room());
        assert!(outbox.room().now_or_never().is_some(), "room made");
    }
}
