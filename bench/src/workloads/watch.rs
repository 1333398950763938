//! `watch`: W watchers on one prefix (each on its own stream, or all on one
//! stream), one writer putting under the prefix at a fixed rate. Latency is
//! from the writer's put acknowledgement to each watcher receiving the event;
//! an event that arrives before the ack counts as 0 (`events_before_ack`), and
//! the same events are also reported measured from the put's send (`from_send_*`).
//! Events a watcher never receives within the grace period count as errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use serde_json::Map;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::args::CommonArgs;
use crate::driver::{call, key, prefix_end, Budget, Conns, OpError};
use crate::stats::Recorder;
use crate::workloads::kv::{put_request, Outcome};

/// How long watchers may lag behind the writer's last ack before missing
/// events are declared lost.
const GRACE: Duration = Duration::from_secs(3);
/// Puts the writer may have outstanding at once; past this it falls behind
/// its schedule (and catches up later) instead of piling up requests.
const WRITES_IN_FLIGHT: usize = 64;

/// (revision, when received) for every event a stream saw.
type Seen = Vec<(i64, Instant)>;

pub struct WatchSpec {
    pub watchers: usize,
    pub one_stream: bool,
}

/// Returns the measured outcome and the writer's elapsed time.
pub async fn watch(
    args: &CommonArgs,
    conns: &Conns,
    spec: &WatchSpec,
    rate: f64,
) -> (Outcome, Duration) {
    let timeout = Duration::from_millis(args.timeout_ms);
    let watchers = spec.watchers.max(1);
    let pfx = format!("{}watch/", args.prefix).into_bytes();
    let per_stream = if spec.one_stream { watchers } else { 1 };
    let streams = watchers / per_stream;

    // Phase 1: open every stream and wait for all `created` confirmations.
    let (done_tx, done_rx) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let mut client = WatchClient::new(conns.channel(s));
        let (pfx, done_rx, received) = (pfx.clone(), done_rx.clone(), received.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let opened = open_stream(&mut client, &pfx, per_stream, timeout).await;
            let (tx, stream) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Seen::new();
                }
            };
            let _ = ready_tx.send(Ok(()));
            let seen = collect_events(stream, done_rx, &received).await;
            drop(tx);
            seen
        });
        tasks.push((task, ready_rx));
    }
    let mut rec = Recorder::new();
    let mut ready_watchers = 0u64;
    let mut tasks_ok = Vec::new();
    for (task, ready) in tasks {
        match ready.await {
            Ok(Ok(())) => {
                ready_watchers += per_stream as u64;
                tasks_ok.push(task);
            }
            Ok(Err(e)) => rec.record_error(e.message, e.unsupported),
            Err(_) => rec.record_error("watch stream task ended".into(), false),
        }
    }
    let mut extra = Map::new();
    extra.insert("watchers".into(), watchers.into());
    extra.insert("streams".into(), streams.into());
    extra.insert("put_rate".into(), rate.into());
    if rec.unsupported || ready_watchers == 0 {
        let _ = done_tx.send(true);
        return ((rec, extra), Duration::ZERO);
    }

    // Phase 2: the writer, open-loop at the fixed rate: each put starts at its
    // slot even if earlier ones are still in flight (up to WRITES_IN_FLIGHT), so
    // a slow put does not lower the event rate the watchers see.
    let budget = Budget::from_args(&CommonArgs {
        rate,
        ..args.clone()
    });
    let kv = KvClient::new(conns.channel(streams));
    let value: Arc<[u8]> = vec![b'v'; args.value_size].into();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
    let mut writes = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while budget.next().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let k = key(&String::from_utf8_lossy(&pfx), "k", n % args.keys.max(1));
        n += 1;
        let (mut kv, value) = (kv.clone(), value.clone());
        writes.spawn(async move {
            let sent = Instant::now();
            let r = call(timeout, kv.put(put_request(k, &value, 0))).await;
            drop(permit);
            r.map(|resp| (resp.header.map_or(0, |h| h.revision), sent, Instant::now()))
        });
    }
    let mut acks: HashMap<i64, Instant> = HashMap::new();
    let mut sends: HashMap<i64, Instant> = HashMap::new();
    while let Some(done) = writes.join_next().await {
        match done {
            Ok(Ok((rev, sent, acked))) => {
                acks.insert(rev, acked);
                sends.insert(rev, sent);
            }
            Ok(Err(e)) => rec.record_error(e.message, e.unsupported),
            Err(e) => rec.record_error(format!("writer task failed: {e}"), false),
        }
    }
    let elapsed = budget.start.elapsed();

    // Phase 3: give watchers the grace period to catch up, then stop them.
    let expected = acks.len() as u64 * ready_watchers;
    let grace_end = Instant::now() + GRACE;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = done_tx.send(true);
    let mut all = Seen::new();
    for t in tasks_ok {
        match t.await {
            Ok(seen) => all.extend(seen),
            Err(e) => rec.record_error(format!("watch task failed: {e}"), false),
        }
    }
    let (matched, before_ack) = record_latencies(&mut rec, &acks, &all);
    // The same events measured from when the put was sent: never negative, so it
    // stays meaningful when most events beat the put's own response.
    let mut from_send = Recorder::new();
    record_latencies(&mut from_send, &sends, &all);
    let s = from_send.summary();
    extra.insert("from_send_p50_ms".into(), s.p50_ms.into());
    extra.insert("from_send_p99_ms".into(), s.p99_ms.into());
    extra.insert("from_send_max_ms".into(), s.max_ms.into());
    let missing = expected.saturating_sub(matched);
    for _ in 0..missing {
        rec.record_error("watch event missing".into(), false);
    }
    extra.insert("puts".into(), acks.len().into());
    extra.insert("events_missing".into(), missing.into());
    extra.insert("events_before_ack".into(), before_ack.into());
    ((rec, extra), elapsed)
}

/// Records ack-to-receive latency for each received event whose put was
/// acknowledged; returns (events matched, events received before the ack).
pub fn record_latencies(
    rec: &mut Recorder,
    acks: &HashMap<i64, Instant>,
    seen: &[(i64, Instant)],
) -> (u64, u64) {
    let (mut matched, mut before) = (0, 0);
    for (rev, at) in seen {
        if let Some(ack) = acks.get(rev) {
            matched += 1;
            if at < ack {
                before += 1;
            }
            rec.record(at.saturating_duration_since(*ack));
        }
    }
    (matched, before)
}

type Opened = (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>);

async fn open_stream(
    client: &mut WatchClient<tonic::transport::Channel>,
    pfx: &[u8],
    watchers: usize,
    timeout: Duration,
) -> Result<Opened, OpError> {
    let (tx, rx) = mpsc::channel(watchers + 1);
    for _ in 0..watchers {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: pfx.to_vec(),
                    range_end: prefix_end(pfx),
                    ..Default::default()
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|_| OpError::new("watch request channel closed"))?;
    }
    let mut stream = call(timeout, client.watch(ReceiverStream::new(rx))).await?;
    let mut created = 0;
    let deadline = Instant::now() + timeout;
    while created < watchers {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| OpError::new("timeout waiting for watch created"))?
            .ok_or_else(|| OpError::new("watch stream closed before created"))?
            .map_err(OpError::from)?;
        if msg.canceled {
            return Err(OpError::new(format!(
                "watch canceled: {}",
                msg.cancel_reason
            )));
        }
        if msg.created {
            created += 1;
        }
    }
    Ok((tx, stream))
}

async fn collect_events(
    mut stream: Streaming<WatchResponse>,
    mut done: watch::Receiver<bool>,
    received: &AtomicU64,
) -> Seen {
    let mut seen = Seen::new();
    loop {
        tokio::select! {
            _ = done.changed() => return seen,
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else { return seen };
                let now = Instant::now();
                for ev in &msg.events {
                    if let Some(kv) = &ev.kv {
                        seen.push((kv.mod_revision, now));
                    }
                }
                received.fetch_add(msg.events.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_from_ack_and_early_events_count_as_zero() {
        let t0 = Instant::now();
        let acks = HashMap::from([(10, t0), (11, t0 + Duration::from_millis(5))]);
        let seen = vec![
            (10, t0 + Duration::from_millis(2)),
            (11, t0 + Duration::from_millis(4)), // before its ack
            (12, t0),                            // never acked: ignored
        ];
        let mut rec = Recorder::new();
        let (matched, before) = record_latencies(&mut rec, &acks, &seen);
        assert_eq!((matched, before), (2, 1));
        assert_eq!(rec.ops(), 2);
        assert!((rec.summary().max_ms - 2.0).abs() < 0.01);
    }
}
