//! The clients and the watcher of the process nemesis, and the test's seeded randomness.
//!
//! Owns: random Get / Put / CAS operations on a small key set through the public gRPC API,
//! each recorded with call and return times on one shared monotonic clock (errors and
//! timeouts become unknown outcomes), and one prefix watch that resumes on another member
//! from its last delivered revision + 1 whenever its stream breaks or goes silent.
//! Must never: retry a write on its own (a retried write would hide an unknown outcome) or
//! wait without a deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::compare::{CompareResult, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse as PbWatchResponse,
};
use keel_api::mvccpb::event::EventType;
use keel_sim::history::{CasExpect, CasOk, Op};
use keel_sim::watch::{WatchEvent, WatchResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status, Streaming};

use crate::common::{compare, op_put, put_req, range_req, rev};

pub const KEYS: [&str; 4] = ["pn/a", "pn/b", "pn/c", "pn/d"];
pub const PREFIX: &str = "pn/";
/// Per-request bound: past it the outcome of a write is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed request before trying the next member (retry cadence).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Pause between two operations of one client: leaves the two cores to the members.
const THINK_TIME: Duration = Duration::from_millis(10);
/// Longest silence on a watch stream before the watcher resumes on another member (a
/// paused or cut-off member keeps the stream open but sends nothing).
const WATCH_SILENCE_MAX: Duration = Duration::from_secs(5);
/// Slice the watcher waits for a response before re-checking whether it may stop.
const WATCH_RECV_SLICE: Duration = Duration::from_millis(200);
/// Longest wait for the watcher to reach the final revision once the workload is over.
const WATCH_CATCH_UP: Duration = Duration::from_secs(60);
/// Longest the watcher keeps trying to open a stream somewhere before failing the test.
const WATCH_OPEN_WAIT: Duration = Duration::from_secs(120);

/// SplitMix64: the test's only source of randomness, seeded once and printed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A duration uniformly in `[min, max]`, whole milliseconds.
    pub fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = (max - min).as_millis() as u64;
        min + Duration::from_millis(self.next() % (span + 1))
    }

    /// An independent generator for one task.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

/// Nanoseconds since the run's shared monotonic origin.
pub fn ns_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).expect("run shorter than 584 years")
}

/// What became of one request.
enum Outcome<T> {
    Done(T),
    /// The request certainly never reached a server (the connection was refused).
    NotSent(String),
    /// It may or may not have taken effect.
    Unknown(String),
}

/// Whether a failed call certainly never left this process: no connection could be made.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        let refused = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused || e.to_string().contains("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Sends one request under `OP_TIMEOUT`; every server error counts as unknown ("no leader",
/// "leader changed", "request timed out" and transport errors can all follow a proposal).
async fn call<T>(
    request: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Outcome<T> {
    match tokio::time::timeout(OP_TIMEOUT, request).await {
        Ok(Ok(resp)) => Outcome::Done(resp.into_inner()),
        Ok(Err(s)) if never_sent(&s) => {
            Outcome::NotSent(format!("{:?}: {}", s.code(), s.message()))
        }
        Ok(Err(s)) => Outcome::Unknown(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Outcome::Unknown(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// One client's share of the history and what happened to it.
#[derive(Default)]
pub struct ClientLog {
    pub ops: Vec<Op>,
    /// Operations that completed with a result.
    pub ok: usize,
    pub unknown: usize,
    pub not_sent: usize,
}

/// A client: random operations until `until` or `ops_max`, starting on member
/// `id % members` and moving to the next member after any failure.
pub struct Client {
    pub id: u64,
    pub kvs: Vec<KvClient<Channel>>,
    pub target: usize,
    pub origin: Instant,
    pub rng: Rng,
    pub ops_max: usize,
    /// The last `mod_revision` this client saw per key (0 = absent): what its CAS expects.
    pub observed: HashMap<&'static str, i64>,
    pub seq: u64,
    pub log: ClientLog,
}

impl Client {
    pub fn new(
        id: u64,
        kvs: Vec<KvClient<Channel>>,
        origin: Instant,
        rng: Rng,
        ops_max: usize,
    ) -> Client {
        let target = id as usize % kvs.len();
        Client {
            id,
            kvs,
            target,
            origin,
            rng,
            ops_max,
            observed: HashMap::new(),
            seq: 0,
            log: ClientLog::default(),
        }
    }

    pub async fn run(mut self, until: Instant) -> ClientLog {
        while Instant::now() < until && self.log.ops.len() < self.ops_max {
            let key = KEYS[self.rng.below(KEYS.len())];
            let failure = match self.rng.below(10) {
                0..=3 => self.get(key).await,
                4..=6 => self.put(key).await,
                _ => self.cas(key).await,
            };
            match failure {
                None => {
                    self.log.ok += 1;
                    tokio::time::sleep(THINK_TIME).await;
                }
                Some(why) => {
                    tracing::debug!(
                        client = self.id,
                        target = self.target,
                        why,
                        "request failed"
                    );
                    self.target = (self.target + 1) % self.kvs.len();
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        self.log
    }

    fn value(&mut self) -> String {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq)
    }

    /// Counts a failed request; writes of unknown outcome go into the history.
    fn failed<T>(&mut self, outcome: Outcome<T>, unknown_write: Option<Op>) -> Option<String> {
        match outcome {
            Outcome::Done(_) => None,
            Outcome::NotSent(why) => {
                self.log.not_sent += 1;
                Some(why)
            }
            Outcome::Unknown(why) => {
                self.log.unknown += 1;
                self.log.ops.extend(unknown_write);
                Some(why)
            }
        }
    }

    async fn get(&mut self, key: &'static str) -> Option<String> {
        let call_ns = ns_since(self.origin);
        let outcome = call(self.kvs[self.target].range(range_req(key, ""))).await;
        let Outcome::Done(resp) = outcome else {
            // A read of unknown outcome changed nothing: it is dropped.
            return self.failed(outcome, None);
        };
        let return_ns = ns_since(self.origin);
        let kv = resp.kvs.first();
        let mod_revision = kv.map_or(0, |kv| kv.mod_revision);
        let value = kv.map(|kv| kv.value.as_slice());
        self.observed.insert(key, mod_revision);
        let op = Op::get(
            self.id,
            call_ns,
            return_ns,
            key.as_bytes(),
            value,
            mod_revision,
            rev(&resp),
        );
        self.log.ops.push(op);
        None
    }

    async fn put(&mut self, key: &'static str) -> Option<String> {
        let value = self.value();
        let call_ns = ns_since(self.origin);
        let outcome = call(self.kvs[self.target].put(put_req(key, &value))).await;
        let Outcome::Done(resp) = outcome else {
            let op = Op::put_unknown(self.id, call_ns, key.as_bytes(), value.as_bytes());
            return self.failed(outcome, Some(op));
        };
        let return_ns = ns_since(self.origin);
        let revision = rev(&resp);
        self.observed.insert(key, revision);
        let (k, v) = (key.as_bytes(), value.as_bytes());
        self.log
            .ops
            .push(Op::put(self.id, call_ns, return_ns, k, v, revision));
        None
    }

    /// `if mod_revision(key) == observed then put(key, new value)`.
    async fn cas(&mut self, key: &'static str) -> Option<String> {
        let value = self.value();
        let expected = self.observed.get(key).copied().unwrap_or(0);
        let txn = TxnRequest {
            compare: vec![compare(
                key,
                CompareResult::Equal,
                TargetUnion::ModRevision(expected),
            )],
            success: vec![op_put(key, &value)],
            failure: vec![],
        };
        let expect = CasExpect::ModRevision(expected);
        let (k, v) = (key.as_bytes(), value.as_bytes());
        let call_ns = ns_since(self.origin);
        let outcome = call(self.kvs[self.target].txn(txn)).await;
        let Outcome::Done(resp) = outcome else {
            let op = Op::cas_unknown(self.id, call_ns, k, expect, v);
            return self.failed(outcome, Some(op));
        };
        let return_ns = ns_since(self.origin);
        let revision = rev(&resp);
        if resp.succeeded {
            self.observed.insert(key, revision);
        }
        let result = CasOk {
            succeeded: resp.succeeded,
            revision,
        };
        self.log
            .ops
            .push(Op::cas(self.id, call_ns, return_ns, k, expect, v, result));
        None
    }
}

// ---- watcher ---------------------------------------------------------------------------------

/// One watch stream: where it ran, the revision it started from and every response,
/// `created` first.
pub struct Segment {
    pub member: usize,
    pub start_revision: i64,
    pub responses: Vec<WatchResponse>,
}

fn prefix_watch(start_revision: i64) -> WatchCreateRequest {
    crate::common::watch_streams::prefix_watch(PREFIX, start_revision)
}

fn to_sim(r: &PbWatchResponse) -> WatchResponse {
    let events = r
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            match EventType::try_from(e.r#type) {
                Ok(EventType::Delete) => WatchEvent::delete(&kv.key, kv.mod_revision),
                _ => WatchEvent::put(&kv.key, &kv.value, kv.mod_revision),
            }
        })
        .collect();
    WatchResponse {
        header_revision: r.header.as_ref().map_or(0, |h| h.revision),
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        fragment: r.fragment,
        events,
    }
}

type OpenWatch = (
    mpsc::Sender<WatchRequest>,
    Streaming<PbWatchResponse>,
    WatchResponse,
);

/// A watch stream on `url` from `start_revision`, with its `created` response.
async fn open_watch(url: &str, start_revision: i64) -> Result<OpenWatch, String> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    let create = RequestUnion::CreateRequest(prefix_watch(start_revision));
    tx.send(WatchRequest {
        request_union: Some(create),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut client = WatchClient::new(channel);
    let watch = client.watch(ReceiverStream::new(rx));
    let mut stream = tokio::time::timeout(OP_TIMEOUT, watch)
        .await
        .map_err(|_| "watch call timed out".to_string())?
        .map_err(|e| e.to_string())?
        .into_inner();
    match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(r))) if r.created && !r.canceled => Ok((tx, stream, to_sim(&r))),
        other => Err(format!("no created reply: {other:?}")),
    }
}

/// Opens a watch from `next`, trying each member in turn from `*member` (bounded).
async fn open_somewhere(urls: &[String], member: &mut usize, next: i64) -> OpenWatch {
    let deadline = Instant::now() + WATCH_OPEN_WAIT;
    loop {
        match open_watch(&urls[*member], next).await {
            Ok(opened) => return opened,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no member opened a watch from revision {next} within {WATCH_OPEN_WAIT:?}: {e}"
                );
                tracing::debug!(member = *member, error = e, "watch open failed");
                *member = (*member + 1) % urls.len();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Watches the prefix from revision 1, resuming on the next member from the last delivered
/// revision + 1 whenever the stream breaks or stays silent, until it has delivered the final
/// revision (sent once the workload is over).
pub async fn watcher(
    urls: Vec<String>,
    first: usize,
    mut final_rx: watch::Receiver<Option<i64>>,
) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut member = first;
    let mut next = 1;
    let mut catch_up_deadline: Option<Instant> = None;
    loop {
        let (_tx, mut stream, created) = open_somewhere(&urls, &mut member, next).await;
        tracing::info!(member, next, "--- watcher: stream opened");
        let mut segment = Segment {
            member,
            start_revision: next,
            responses: vec![created],
        };
        let mut last_heard = Instant::now();
        let done = loop {
            let final_rev = *final_rx.borrow_and_update();
            if final_rev.is_some_and(|f| next > f) {
                break true;
            }
            if final_rev.is_some() {
                let deadline = *catch_up_deadline.get_or_insert(Instant::now() + WATCH_CATCH_UP);
                assert!(
                    Instant::now() < deadline,
                    "the watcher did not reach revision {final_rev:?}; next {next}"
                );
            }
            match tokio::time::timeout(WATCH_RECV_SLICE, stream.message()).await {
                Err(_) if last_heard.elapsed() < WATCH_SILENCE_MAX => continue,
                Err(_) => {
                    tracing::info!(member, next, "watch stream silent; resuming elsewhere");
                    break false;
                }
                Ok(Ok(Some(r))) => {
                    last_heard = Instant::now();
                    let r = to_sim(&r);
                    if let Some(e) = r.events.last() {
                        next = next.max(e.revision + 1);
                    }
                    let canceled = r.canceled;
                    segment.responses.push(r);
                    if canceled {
                        break false;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => break false,
            }
        };
        segments.push(segment);
        if done {
            return segments;
        }
        member = (member + 1) % urls.len();
    }
}
