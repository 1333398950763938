//! Nemesis: a three-member cluster keeps a linearizable history while members crash and
//! restart under load.
//!
//! Four clients do random Get / Put / CAS (a `Txn` comparing `mod_revision`) on three keys
//! through the real gRPC API, each recording call and return times on one shared monotonic
//! clock; a nemesis crashes a random member (often the leader) every ~2 s and restarts it a
//! second later, never leaving more than one member down; a watcher watches the keys' prefix
//! from revision 1, resuming on another member from its last revision + 1 when its stream
//! breaks. Afterwards the recorded history goes through keel-sim's linearizability checker,
//! the watch stream through its watch validator against the store's own history (read back
//! version by version), and every member must report the same `HashKV` at the final revision.
//!
//! The run is not deterministic (real network, real clock); the seed printed at the start
//! only fixes the choices the test makes. `KEEL_NEMESIS_SEED=<n>` replays those choices.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use keel_api::etcdserverpb::compare::{CompareResult, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    RangeRequest, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse as PbWatchResponse,
};
use keel_sim::history::{CasExpect, CasOk, History, Op};
use keel_sim::linearizability::{self, CheckOptions, Verdict};
use keel_sim::watch::{validate_watch, WatchEvent, WatchResponse, WatchSpec, WatchViolation};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status, Streaming};

const MEMBERS: usize = 3;
const CLIENTS: usize = 4;
const KEYS: [&str; 3] = ["nemesis/a", "nemesis/b", "nemesis/c"];
const PREFIX: &str = "nemesis/";
/// How long the clients and the nemesis run.
const WORKLOAD: Duration = Duration::from_secs(15);
/// Operations per client at most, so a fast machine still yields a history the checker
/// decides quickly.
const OPS_PER_CLIENT_MAX: usize = 1_500;
/// Per-request bound: past it the outcome of a write is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed request before retrying on the next member (retry cadence).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The nemesis: time every member is up between two crashes, time the victim stays down.
const NEMESIS_UP: Duration = Duration::from_secs(1);
const NEMESIS_DOWN: Duration = Duration::from_secs(1);
const KILLS_MAX: usize = 8;
/// Longest silence on a watch stream before the watcher assumes it is dead and resumes on
/// another member (a crashed in-process member normally breaks its streams at once).
const WATCH_SILENCE_MAX: Duration = Duration::from_secs(5);
/// Slice the watcher waits for a response before re-checking whether it may stop.
const WATCH_RECV_SLICE: Duration = Duration::from_millis(200);
/// Longest wait for the watcher to reach the final revision once the workload is over.
const WATCH_CATCH_UP: Duration = Duration::from_secs(30);
/// Checker limits: the history must be decided, `Unknown` fails the test.
const CHECK_STEPS_MAX: u64 = 20_000_000;
const CHECK_DURATION_MAX: Duration = Duration::from_secs(60);
/// The client id of the final read recorded into the history.
const FINAL_READER: u64 = CLIENTS as u64;

/// SplitMix64: the test's only source of randomness, seeded once and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// An independent generator for one task.
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

fn seed() -> u64 {
    match std::env::var("KEEL_NEMESIS_SEED") {
        Ok(s) => s.parse().expect("KEEL_NEMESIS_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

/// Nanoseconds since the run's shared monotonic origin.
fn ns_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).expect("run shorter than 584 years")
}

// ---- clients ---------------------------------------------------------------------------------

/// What became of one request.
enum Outcome<T> {
    Done(T),
    /// The request certainly never reached a server (the connection was refused).
    NotSent(String),
    /// It may or may not have taken effect.
    Unknown(String),
}

/// Whether a failed call certainly never left this process: the connection to the member
/// could not be made, so no byte of the request was sent.
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

/// Sends one request under `OP_TIMEOUT`. Every server error counts as unknown: "no leader",
/// "leader changed", "request timed out" and transport errors can all follow a proposal.
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
struct ClientLog {
    ops: Vec<Op>,
    unknown: usize,
    not_sent: usize,
}

/// A client: random operations until `until` or `OPS_PER_CLIENT_MAX`, starting on member
/// `client % MEMBERS` and moving to the next member after any failure.
struct Client {
    id: u64,
    kvs: Vec<KvClient<Channel>>,
    target: usize,
    origin: Instant,
    rng: Rng,
    /// The last `mod_revision` this client saw per key (0 = absent): what its CAS expects.
    observed: HashMap<&'static str, i64>,
    seq: u64,
    log: ClientLog,
}

impl Client {
    async fn run(mut self, until: Instant) -> ClientLog {
        while Instant::now() < until && self.log.ops.len() < OPS_PER_CLIENT_MAX {
            let key = KEYS[self.rng.below(KEYS.len())];
            let failure = match self.rng.below(10) {
                0..=3 => self.get(key).await,
                4..=6 => self.put(key).await,
                _ => self.cas(key).await,
            };
            if let Some(why) = failure {
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
        let op = Op::cas(self.id, call_ns, return_ns, k, expect, v, result);
        self.log.ops.push(op);
        None
    }
}

// ---- nemesis ---------------------------------------------------------------------------------

/// What the nemesis did.
#[derive(Default, Debug)]
struct NemesisLog {
    kills: usize,
    leader_kills: usize,
}

/// The running member that believes it leads, if any.
fn current_leader(cluster: &TestCluster) -> Option<usize> {
    cluster
        .running()
        .into_iter()
        .find(|&i| cluster.node(i).server.raft.status().is_leader)
}

/// Every `NEMESIS_UP + NEMESIS_DOWN`, crashes one member (the leader half of the time) and
/// restarts it `NEMESIS_DOWN` later. A restart completes before the next crash, so at most
/// one member is ever down and the other two keep a quorum.
async fn nemesis(cluster: &mut TestCluster, mut rng: Rng, until: Instant) -> NemesisLog {
    let mut log = NemesisLog::default();
    while log.kills < KILLS_MAX && Instant::now() + NEMESIS_UP + NEMESIS_DOWN <= until {
        // Pacing of the fault schedule, not a synchroniser.
        tokio::time::sleep(NEMESIS_UP).await;
        let leader = current_leader(cluster);
        let victim = match leader {
            Some(l) if rng.below(2) == 0 => l,
            _ => rng.below(cluster.len()),
        };
        let is_leader = leader == Some(victim);
        tracing::info!("--- nemesis: kill m{victim} (leader: {is_leader})");
        cluster.kill(victim).await;
        log.kills += 1;
        log.leader_kills += usize::from(is_leader);
        tokio::time::sleep(NEMESIS_DOWN).await;
        tracing::info!("--- nemesis: restart m{victim}");
        cluster.restart(victim).await;
    }
    tracing::info!(?log, "--- nemesis: done");
    log
}

// ---- watcher ---------------------------------------------------------------------------------

/// One watch stream: the revision it started from and every response, `created` first.
struct Segment {
    member: usize,
    start_revision: i64,
    responses: Vec<WatchResponse>,
}

fn prefix_watch(start_revision: i64) -> WatchCreateRequest {
    common::watch_streams::prefix_watch(PREFIX, start_revision)
}

/// A watch stream on `url` from `start_revision`, with its `created` response.
async fn open_watch(
    url: &str,
    start_revision: i64,
) -> Result<
    (
        mpsc::Sender<WatchRequest>,
        Streaming<PbWatchResponse>,
        WatchResponse,
    ),
    String,
> {
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

/// Watches the prefix from revision 1 on `first`, resuming on the next member from the last
/// delivered revision + 1 whenever the stream breaks or stays silent too long, until it has
/// delivered the final revision (sent once the workload is over).
async fn watcher(
    urls: Vec<String>,
    first: usize,
    mut final_rx: watch::Receiver<Option<i64>>,
) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut member = first;
    let mut next = 1;
    let mut catch_up_deadline: Option<Instant> = None;
    loop {
        let what = format!("a watch from revision {next} on some member");
        let (_tx, mut stream, created) = eventually(&what, SETTLE_WAIT, async || {
            let opened = open_watch(&urls[member], next).await;
            if opened.is_err() {
                member = (member + 1) % urls.len();
            }
            opened
        })
        .await;
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
                    tracing::warn!(member, next, "watch stream silent; resuming elsewhere");
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
        tracing::info!(
            member,
            next,
            "--- watcher: stream broke; resume on the next member"
        );
        member = (member + 1) % urls.len();
    }
}

/// Validates every segment against the committed history, then that together they delivered
/// all of it, each event once.
fn check_watch(segments: &[Segment], committed: &[WatchEvent]) -> Result<(), WatchViolation> {
    let mut delivered: Vec<WatchEvent> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let spec = WatchSpec::prefix(PREFIX.as_bytes(), segment.start_revision);
        let report = validate_watch(committed, &spec, &segment.responses)?;
        tracing::info!(
            segment = i,
            member = segment.member,
            start = segment.start_revision,
            events = report.events_delivered,
            "watch segment valid"
        );
        delivered.extend(segment.responses.iter().flat_map(|r| r.events.clone()));
    }
    assert_eq!(
        delivered, committed,
        "the watch segments together delivered the whole committed history, in order, once"
    );
    Ok(())
}

// ---- the store's own record ------------------------------------------------------------------

/// Every committed write to the keys, in revision order, read back version by version
/// (nothing is compacted) from a member that has applied `final_revision`.
async fn committed_events(kv: &mut KvClient<Channel>, final_revision: i64) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    for key in KEYS {
        let latest = RangeRequest {
            revision: final_revision,
            ..range_req(key, "")
        };
        let mut kv_at = get(kv, latest).await.kvs.pop();
        while let Some(version) = kv_at {
            events.push(WatchEvent::put(
                &version.key,
                &version.value,
                version.mod_revision,
            ));
            kv_at = if version.version == 1 {
                None
            } else {
                // Serializable: the linearizable read above made this member apply through
                // `final_revision`, and a past revision never changes.
                let older = RangeRequest {
                    revision: version.mod_revision - 1,
                    serializable: true,
                    ..range_req(key, "")
                };
                Some(
                    get(kv, older)
                        .await
                        .kvs
                        .pop()
                        .expect("older version exists"),
                )
            };
        }
    }
    events.sort_by_key(|e| e.revision);
    events
}

/// Every write the store holds was sent by a client, once; every acknowledged write is
/// there with the revision it was acknowledged with; the writes fill revisions 2..=final.
fn check_store_against_clients(history: &History, committed: &[WatchEvent], final_rev: i64) {
    use keel_sim::history::OpKind;
    let revisions: Vec<i64> = committed.iter().map(|e| e.revision).collect();
    let expected: Vec<i64> = (2..=final_rev).collect();
    assert_eq!(revisions, expected, "one write per revision, no gaps");
    let stored: HashMap<(&[u8], &[u8]), i64> = committed
        .iter()
        .map(|e| ((e.key.as_slice(), e.value.as_slice()), e.revision))
        .collect();
    assert_eq!(stored.len(), committed.len(), "every value stored once");
    let mut sent = HashSet::new();
    for op in &history.ops {
        let (key, value, acked) = match &op.kind {
            OpKind::Put { key, value, result } => (key, value, result.map(|r| r.revision)),
            OpKind::Cas {
                key,
                new_value,
                result,
                ..
            } => (
                key,
                new_value,
                result.filter(|r| r.succeeded).map(|r| r.revision),
            ),
            _ => continue,
        };
        sent.insert((key.as_slice(), value.as_slice()));
        if let Some(revision) = acked {
            let found = stored.get(&(key.as_slice(), value.as_slice()));
            assert_eq!(
                found,
                Some(&revision),
                "acknowledged write {op:?} is stored"
            );
        }
    }
    for e in committed {
        let what = (e.key.as_slice(), e.value.as_slice());
        assert!(sent.contains(&what), "stored {e:?}, which no client sent");
    }
}

/// A linearizable read of every key through whichever member answers, recorded into the
/// history as the final reader's operations. Returns the header revision.
async fn final_read(cluster: &TestCluster, origin: Instant, history: &mut History) -> i64 {
    let leader = cluster.wait_for_leader().await;
    let mut kv = cluster.kv(leader);
    let (call_ns, resp, return_ns) =
        eventually("a final linearizable read", SETTLE_WAIT, async || {
            let call_ns = ns_since(origin);
            match kv.range(prefix_req(PREFIX)).await {
                Ok(resp) => Ok((call_ns, resp.into_inner(), ns_since(origin))),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            }
        })
        .await;
    let revision = rev(&resp);
    for key in KEYS {
        let kv = resp.kvs.iter().find(|kv| kv.key == key.as_bytes());
        let value = kv.map(|kv| kv.value.as_slice());
        let mod_revision = kv.map_or(0, |kv| kv.mod_revision);
        let (k, id) = (key.as_bytes(), FINAL_READER);
        history.push(Op::get(
            id,
            call_ns,
            return_ns,
            k,
            value,
            mod_revision,
            revision,
        ));
    }
    revision
}

/// Everything a run recorded.
struct Run {
    history: History,
    unknown: usize,
    not_sent: usize,
    nemesis: NemesisLog,
    final_revision: i64,
    segments: Vec<Segment>,
}

/// Phases 1 and 2: the clients, the nemesis and the watcher run; once the workload is over,
/// a final linearizable read fixes the final revision, which the watcher must then reach.
async fn run(cluster: &mut TestCluster, mut rng: Rng) -> Run {
    let origin = Instant::now();
    let until = origin + WORKLOAD;
    let kvs: Vec<KvClient<Channel>> = (0..cluster.len()).map(|i| cluster.kv(i)).collect();
    let urls: Vec<String> = (0..cluster.len()).map(|i| cluster.client_url(i)).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| Client {
            id: c as u64,
            kvs: kvs.clone(),
            target: c % MEMBERS,
            origin,
            rng: rng.fork(),
            observed: HashMap::new(),
            seq: 0,
            log: ClientLog::default(),
        })
        .collect();
    let (final_tx, final_rx) = watch::channel(None);
    let watcher = watcher(urls, rng.below(MEMBERS), final_rx);
    let nemesis_rng = rng.fork();
    let workload = async {
        let (logs, nemesis) = tokio::join!(
            futures::future::join_all(clients.into_iter().map(|c| c.run(until))),
            nemesis(cluster, nemesis_rng, until)
        );
        tracing::info!("--- phase 2: final read once a leader is agreed");
        let mut history = History::new(logs.iter().flat_map(|l| l.ops.clone()).collect());
        let final_revision = final_read(cluster, origin, &mut history).await;
        final_tx
            .send(Some(final_revision))
            .expect("the watcher listens");
        Run {
            history,
            unknown: logs.iter().map(|l| l.unknown).sum(),
            not_sent: logs.iter().map(|l| l.not_sent).sum(),
            nemesis,
            final_revision,
            segments: Vec::new(),
        }
    };
    let (mut run, segments) = tokio::join!(workload, watcher);
    run.segments = segments;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_kill_restart_keeps_history_linearizable() {
    let seed = seed();
    let mut cluster = TestCluster::start(MEMBERS, &[]).await;
    let started = Instant::now();
    tracing::info!(
        seed,
        "--- phase 1: clients, nemesis and watcher run for {WORKLOAD:?} \
         (replay the test's choices with KEEL_NEMESIS_SEED={seed})"
    );
    let run = run(&mut cluster, Rng(seed)).await;
    let (history, final_revision) = (&run.history, run.final_revision);

    tracing::info!("--- phase 3: check the history for linearizability");
    let options = CheckOptions {
        steps_max: CHECK_STEPS_MAX,
        duration_max: Some(CHECK_DURATION_MAX),
        minimize: true,
    };
    let check_started = Instant::now();
    let report = linearizability::check(history, &options).expect("a well-formed history");
    tracing::info!(
        ops = history.ops.len(),
        unknown = run.unknown,
        not_sent = run.not_sent,
        kills = run.nemesis.kills,
        leader_kills = run.nemesis.leader_kills,
        steps = report.steps,
        check_ms = check_started.elapsed().as_millis(),
        final_revision,
        watch_segments = run.segments.len(),
        "--- summary"
    );
    assert_eq!(
        report.verdict,
        Verdict::Linearizable,
        "history of {} ops (seed {seed}): {report:?}",
        history.ops.len()
    );
    assert!(run.nemesis.kills > 0, "the nemesis struck");

    tracing::info!("--- phase 4: the store's history matches the clients' and the watch stream");
    let leader = cluster.wait_for_leader().await;
    let committed = committed_events(&mut cluster.kv(leader), final_revision).await;
    check_store_against_clients(history, &committed, final_revision);
    if let Err(violation) = check_watch(&run.segments, &committed) {
        panic!("watch stream (seed {seed}): {violation}");
    }

    tracing::info!("--- phase 5: every member has the same HashKV at revision {final_revision}");
    assert_hash_kv_agrees(&cluster, final_revision).await;
    let runtime_ms = started.elapsed().as_millis();
    tracing::info!(runtime_ms, "--- done");
    cluster.shutdown().await;
}
