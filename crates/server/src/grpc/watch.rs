//! The etcd `Watch` service: one bidirectional stream per client, many watches on it.
//!
//! Owns: translating `WatchRequest`s into [`StreamHandle`] calls, and the stream's response
//! side ([`WatchResponses`]), which turns hub messages into `WatchResponse`s (headers, event
//! conversion, `prev_kv`, fragmentation) and runs catch-up whenever the client has taken
//! everything. Must never: decide watch semantics (the hub does), or read requests while the
//! stream's buffer is full (that is the backpressure bounding control messages).
//!
//! Two halves per stream: a task reads requests and ticks progress notifications; the
//! response side is the stream tonic sends from, polled by the HTTP/2 stream itself, so an
//! event costs one task wake per watch stream between the hub and the connection (a sender
//! task in between would add a second). The hub's stream buffer is the only queue: nothing
//! is converted before the connection can take it.
//!
//! Stream end: when the client disconnects or resets the stream, hyper drops the response
//! side, which ends the request task, and dropping the handle removes every watcher of the
//! stream from the hub. When the member stops ([`WatchHub::shutdown`]) every stream ends with
//! etcd's "server stopped" (Unavailable). Like etcd, a half-closed stream keeps delivering;
//! keel then ends it cleanly once no watch on it can produce anything more (all cancelled),
//! where etcd would leave it open.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use keel_api::error::EtcdError;
use keel_api::etcdserverpb::watch_create_request::FilterType;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::watch_server::Watch;
use keel_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use keel_api::mvccpb;
use keel_storage::{Event, EventKind};
use prost::Message;
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tonic::{Request, Response, Status, Streaming};

use crate::apply::range::to_pb;
use crate::server::Server;
use crate::watch::{CreateWatch, StreamHandle, WatchHub, WatchMessage, INVALID_WATCH_ID};

pub struct WatchService {
    pub server: Arc<Server>,
    pub hub: Arc<WatchHub>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let shared = Arc::new(Shared {
            handle: self.hub.open_stream(),
            requests: AtomicU8::new(READING),
        });
        let (gone, gone_seen) = oneshot::channel();
        tokio::spawn(serve_requests(
            shared.clone(),
            request.into_inner(),
            gone_seen,
        ));
        Ok(Response::new(WatchResponses {
            server: self.server.clone(),
            // etcd fragments above its request limit plus gRPC overhead.
            fragment_bytes_max: self.server.limits.grpc_message_bytes_max(),
            closed: Box::pin(shared.handle.closed()),
            shared,
            pending: VecDeque::new(),
            _gone: gone,
            ended: false,
        }))
    }
}

/// What the request side of a stream is doing (`Shared::requests`).
const READING: u8 = 0;
/// The client half-closed: no more requests, responses continue.
const HALF_CLOSED: u8 = 1;
/// Receiving failed (reset, broken connection): the stream ends.
const FAILED: u8 = 2;

/// What the two halves of one stream share.
struct Shared {
    handle: StreamHandle,
    requests: AtomicU8,
}

impl Shared {
    fn requests_ended(&self, how: u8) {
        self.requests.store(how, Ordering::Release);
        self.handle.wake();
    }
}

/// The response side of one watch stream (see the module doc).
pub struct WatchResponses {
    server: Arc<Server>,
    fragment_bytes_max: usize,
    shared: Arc<Shared>,
    /// The rest of a popped message's responses (fragments).
    pending: VecDeque<WatchResponse>,
    /// Resolves when the member stops.
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Dropped with the response side: tells the request task the stream is gone.
    _gone: oneshot::Sender<()>,
    ended: bool,
}

impl Stream for WatchResponses {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.closed.as_mut().poll(cx).is_ready() {
            // The member is stopping: tell the client so it resumes elsewhere.
            this.ended = true;
            return Poll::Ready(Some(Err(EtcdError::Stopped.to_status())));
        }
        let stream = &this.shared.handle;
        loop {
            if let Some(response) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(response)));
            }
            if let Some(message) = stream.pop() {
                let responses = to_responses(&this.server, message, this.fragment_bytes_max);
                this.pending.extend(responses);
                continue;
            }
            // Catch-up runs only when the client has taken everything: a slow reader paces
            // its own history reads and never fills memory.
            if stream.catch_up() {
                continue;
            }
            let finished = match this.shared.requests.load(Ordering::Acquire) {
                READING => false,
                // Half-closed and nothing can be sent any more.
                HALF_CLOSED => stream.active_watchers() == 0,
                _ => true,
            };
            if finished {
                this.ended = true;
                return Poll::Ready(None);
            }
            if stream.poll_woken(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// The request side of one stream: reads requests while the stream's buffer has room, and
/// ticks progress notifications, until the response side is gone.
async fn serve_requests(
    shared: Arc<Shared>,
    mut requests: Streaming<WatchRequest>,
    mut gone: oneshot::Receiver<()>,
) {
    let stream = &shared.handle;
    let period = stream.hub().config().progress_notify_interval;
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reading = true;
    loop {
        // Read once per turn: a publish can fill the buffer at any moment, and two reads
        // could disable both branches below until the next tick.
        let room = stream.has_room();
        // Biased: a gone stream first, then requests (so a busy stream still answers
        // creates and cancels), then ticks.
        tokio::select! {
            biased;
            _ = &mut gone => break,
            _ = stream.room(), if reading && !room => {}
            request = requests.message(), if reading && room => match request {
                Ok(Some(request)) => handle_request(stream, request),
                Ok(None) => {
                    reading = false;
                    shared.requests_ended(HALF_CLOSED);
                }
                Err(status) => {
                    tracing::debug!(%status, "watch stream receive failed");
                    shared.requests_ended(FAILED);
                    break;
                }
            },
            _ = ticker.tick() => stream.progress_tick(),
        }
    }
    // The last of `shared` to go drops the handle, which removes its watchers from the hub.
}

fn handle_request(stream: &StreamHandle, request: WatchRequest) {
    match request.request_union {
        Some(RequestUnion::CreateRequest(create)) => stream.create(&create_from_pb(create)),
        Some(RequestUnion::CancelRequest(cancel)) => stream.cancel(cancel.watch_id),
        Some(RequestUnion::ProgressRequest(_)) => stream.request_progress(),
        // etcd ignores a request without a body rather than ending the stream.
        None => tracing::debug!("empty watch request ignored"),
    }
}

fn create_from_pb(req: WatchCreateRequest) -> CreateWatch {
    let has = |f: FilterType| req.filters.contains(&(f as i32));
    CreateWatch {
        no_put: has(FilterType::Noput),
        no_delete: has(FilterType::Nodelete),
        key: req.key,
        range_end: req.range_end,
        start_revision: req.start_revision,
        watch_id: req.watch_id,
        prev_kv: req.prev_kv,
        progress_notify: req.progress_notify,
        fragment: req.fragment,
    }
}

/// One hub message as the responses the client sees (several when fragmented).
pub fn to_responses(
    server: &Server,
    message: WatchMessage,
    fragment_bytes_max: usize,
) -> Vec<WatchResponse> {
    let response = match message {
        WatchMessage::Created { watch_id, revision } => WatchResponse {
            header: server.header(revision),
            watch_id,
            created: true,
            ..Default::default()
        },
        WatchMessage::Rejected { revision, reason } => WatchResponse {
            header: server.header(revision),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        },
        WatchMessage::Canceled {
            watch_id,
            revision,
            compact_revision,
            reason,
        } => WatchResponse {
            header: server.header(revision),
            watch_id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        },
        WatchMessage::Progress { watch_id, revision } => WatchResponse {
            header: server.header(revision),
            watch_id,
            ..Default::default()
        },
        WatchMessage::Events {
            watch_id,
            revision,
            events,
            prev_kv,
            fragment,
        } => {
            let response = WatchResponse {
                header: server.header(revision),
                watch_id,
                events: events.iter().map(|e| event_to_pb(e, prev_kv)).collect(),
                ..Default::default()
            };
            if fragment {
                return fragments(response, fragment_bytes_max);
            }
            response
        }
    };
    vec![response]
}

fn event_to_pb(event: &Event, prev_kv: bool) -> mvccpb::Event {
    let kind = match event.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(to_pb(event.kv.clone())),
        prev_kv: if prev_kv {
            event.prev_kv.clone().map(to_pb)
        } else {
            None
        },
    }
}

/// etcd's `sendFragments`: a response of at least `bytes_max` with two or more events is
/// split into responses of fewer than `bytes_max` bytes (at least one event each), all but
/// the last marked `fragment`.
pub fn fragments(mut response: WatchResponse, bytes_max: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < bytes_max || response.events.len() < 2 {
        return vec![response];
    }
    let mut events = std::mem::take(&mut response.events).into_iter().peekable();
    let template = WatchResponse {
        fragment: true,
        ..response
    };
    let base_bytes = template.encoded_len();
    let mut out = Vec::new();
    while events.peek().is_some() {
        let mut part = template.clone();
        let mut bytes = base_bytes;
        while let Some(event) = events.peek() {
            let event_bytes = prost::encoding::message::encoded_len(11, event);
            if !part.events.is_empty() && bytes + event_bytes >= bytes_max {
                break;
            }
            bytes += event_bytes;
            part.events.extend(events.next());
        }
        part.fragment = events.peek().is_some();
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, value_bytes: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'v'; value_bytes],
                mod_revision: 7,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_large_responses_and_keep_small_ones() {
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| event(&format!("k{i}"), 1000)).collect(),
            ..Default::default()
        };
        assert_eq!(fragments(response.clone(), 1 << 20).len(), 1);
        let parts = fragments(response.clone(), 2500);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(
                part.fragment,
                i + 1 < parts.len(),
                "fragment flag of part {i}"
            );
            assert_eq!(part.watch_id, 3);
            assert!(part.encoded_len() < 2500 || part.events.len() == 1);
        }
        let rejoined: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, response.events);
        // One event too large for the limit still travels, unfragmented.
        let single = WatchResponse {
            events: vec![event("big", 5000)],
            ..Default::default()
        };
        assert_eq!(fragments(single, 100).len(), 1);
    }
}
