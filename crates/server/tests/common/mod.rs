//! In-process cluster harness for keel-server's integration tests.
//!
//! Owns: starting N keel members in one process on ephemeral loopback ports (every listener
//! is bound to port 0 first and its port read back, so there are no port races), their
//! temporary data directories, crash (`kill`), graceful stop and restart on the same ports,
//! gRPC clients to each member, and deadline-bounded polling.
//! Must never: sleep as a way to synchronise (every wait polls a condition under a deadline)
//! or use a fixed port.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod exact_writer;
pub mod watch_streams;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_api::etcdserverpb::cluster_client::ClusterClient;
use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, TxnRequest,
};
use keel_server::{Config, Listeners, Node, WrapBackend};
use keel_storage::{Backend, FaultPlan, FaultyBackend};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// Raft timings for tests: short enough for quick failover, long enough for a loaded
/// 2-core machine not to flap.
pub const HEARTBEAT_MS: &str = "100";
pub const ELECTION_TIMEOUT_MS: &str = "1000";
/// Longest wait for a leader (several election rounds at the timings above).
pub const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for a member to catch up or for a condition to settle.
pub const SETTLE_WAIT: Duration = Duration::from_secs(30);
/// Every RPC a test sends is bounded by this, so no test hangs on a dead member.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two probes of a polled condition (the polling cadence, not a synchroniser).
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Largest response a test client accepts (values up to the 1.5 MiB request limit and more).
const CLIENT_DECODE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Logs to the test's captured output; `RUST_LOG` overrides the default filter.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=error,h2=warn,hyper=warn,tower=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Polls `probe` until it returns `Ok`, at most until `timeout` has passed; panics with
/// `what` and the last failure otherwise. Each probe is itself bounded by the deadline.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left.max(POLL_INTERVAL), probe()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => e,
            Err(_) => "probe did not finish before the deadline".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Binds `127.0.0.1:port`, retrying while the old socket of a stopped member still holds it.
async fn bind_port(port: u16) -> TcpListener {
    eventually(
        &format!("127.0.0.1:{port} to be free"),
        SETTLE_WAIT,
        async || {
            TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// One member of a test cluster: its configuration and ports stay fixed across restarts.
pub struct TestMember {
    pub name: String,
    pub config: Config,
    pub client_port: u16,
    pub peer_port: u16,
    pub member_id: u64,
    /// Wraps the member's store engine at every start (fault injection), if set.
    pub wrap_backend: Option<WrapBackend>,
    node: Option<Node>,
    channel: Channel,
}

impl TestMember {
    async fn start(&mut self, listeners: Listeners) {
        let node = Node::start_with(&self.config, listeners, self.wrap_backend.clone())
            .await
            .unwrap_or_else(|e| panic!("member {} failed to start: {e}", self.name));
        assert_eq!(
            node.client_addrs.len(),
            1,
            "{}: one client listener",
            self.name
        );
        assert_eq!(node.client_addrs[0].port(), self.client_port);
        assert_eq!(node.peer_addrs[0].port(), self.peer_port);
        self.member_id = node.server.member_id;
        self.node = Some(node);
    }
}

impl TestMember {
    /// Starts this member again on its old ports and data directory, retrying (under a
    /// deadline) while its previous incarnation still holds the data files.
    async fn start_again(&self) -> Node {
        let started = Instant::now();
        let what = format!("{} to start on its old ports and data directory", self.name);
        let node = eventually(&what, SETTLE_WAIT, async || {
            let listeners = Listeners {
                client: vec![bind_port(self.client_port).await],
                peer: vec![bind_port(self.peer_port).await],
            };
            match Node::start_with(&self.config, listeners, self.wrap_backend.clone()).await {
                Ok(node) => Ok(node),
                Err(e) if e.to_string().contains("already open") => Err(e.to_string()),
                Err(e) => panic!("{} failed to restart: {e}", self.name),
            }
        })
        .await;
        let waited_ms = started.elapsed().as_millis();
        tracing::info!(member = %self.name, waited_ms, "restarted");
        node
    }
}

/// N keel members in this process, each with its own data directory under one temp dir.
pub struct TestCluster {
    pub members: Vec<TestMember>,
    // Dropped last: removes every member's data directory.
    dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `size` founding members with etcd-style flags plus `extra_args` (for example
    /// `["--snapshot-count", "50"]`), and waits until they agree on a leader.
    pub async fn start(size: usize, extra_args: &[&str]) -> TestCluster {
        Self::start_with_backends(vec![None; size], extra_args).await
    }

    /// [`TestCluster::start`] with one member per entry of `wraps`, each member's store
    /// engine passed through its wrapper (for example a fault-injecting engine).
    pub async fn start_with_backends(
        wraps: Vec<Option<WrapBackend>>,
        extra_args: &[&str],
    ) -> TestCluster {
        let size = wraps.len();
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut client = Vec::new();
        let mut peer = Vec::new();
        for _ in 0..size {
            client.push(TcpListener::bind("127.0.0.1:0").await.expect("bind client"));
            peer.push(TcpListener::bind("127.0.0.1:0").await.expect("bind peer"));
        }
        let port = |l: &TcpListener| l.local_addr().expect("local addr").port();
        let initial_cluster = peer
            .iter()
            .enumerate()
            .map(|(i, l)| format!("m{i}={}", url(port(l))))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, wrap_backend) in wraps.into_iter().enumerate() {
            let (client_port, peer_port) = (port(&client[i]), port(&peer[i]));
            let name = format!("m{i}");
            let data_dir = dir.path().join(&name);
            let mut args: Vec<String> = [
                "keel",
                "--name",
                &name,
                "--data-dir",
                data_dir.to_str().expect("utf-8 temp path"),
                "--listen-client-urls",
                &url(client_port),
                "--advertise-client-urls",
                &url(client_port),
                "--listen-peer-urls",
                &url(peer_port),
                "--initial-advertise-peer-urls",
                &url(peer_port),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                HEARTBEAT_MS,
                "--election-timeout",
                ELECTION_TIMEOUT_MS,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra_args.iter().map(|s| s.to_string()));
            let config = Config::try_parse_from(args).expect("test flags parse");
            members.push(TestMember {
                name,
                config,
                client_port,
                peer_port,
                member_id: 0,
                wrap_backend,
                node: None,
                channel: channel(client_port),
            });
        }
        let mut cluster = TestCluster { members, dir };
        let starts = cluster
            .members
            .iter_mut()
            .zip(client.into_iter().zip(peer))
            .map(|(m, (c, p))| {
                m.start(Listeners {
                    client: vec![c],
                    peer: vec![p],
                })
            });
        futures::future::join_all(starts).await;
        cluster.wait_for_leader().await;
        cluster
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].node.is_some()
    }

    /// Indexes of the members currently running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    pub fn node(&self, i: usize) -> &Node {
        self.members[i]
            .node
            .as_ref()
            .unwrap_or_else(|| panic!("member m{i} is not running"))
    }

    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].member_id
    }

    pub fn index_of(&self, member_id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.member_id == member_id)
    }

    pub fn client_url(&self, i: usize) -> String {
        url(self.members[i].client_port)
    }

    pub fn peer_url(&self, i: usize) -> String {
        url(self.members[i].peer_port)
    }

    /// Member `i`'s client channel (gRPC on its client URL).
    pub fn channel(&self, i: usize) -> Channel {
        self.members[i].channel.clone()
    }

    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.members[i].channel.clone())
            .max_decoding_message_size(CLIENT_DECODE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_DECODE_BYTES_MAX)
    }

    pub fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.members[i].channel.clone())
    }

    pub fn cluster_client(&self, i: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.members[i].channel.clone())
    }

    /// Waits until every running member names the same leader, which is running, considers
    /// itself leader, and shares its term. Returns the leader's index.
    pub async fn wait_for_leader(&self) -> usize {
        eventually("one agreed leader", LEADER_WAIT, async || {
            self.agreed_leader()
        })
        .await
    }

    fn agreed_leader(&self) -> Result<usize, String> {
        let statuses: Vec<_> = self
            .running()
            .into_iter()
            .map(|i| (i, self.node(i).server.raft.status()))
            .collect();
        let leaders: Vec<usize> = statuses
            .iter()
            .filter(|(_, s)| s.is_leader)
            .map(|(i, _)| *i)
            .collect();
        let [leader] = leaders[..] else {
            return Err(format!("members claiming leadership: {leaders:?}"));
        };
        let id = self.member_id(leader);
        let term = statuses
            .iter()
            .find(|(i, _)| *i == leader)
            .map_or(0, |(_, s)| s.term);
        for (i, s) in &statuses {
            if s.leader != Some(id) || s.term != term {
                return Err(format!(
                    "m{i} sees leader {:?} term {} (m{leader} is leader, term {term})",
                    s.leader, s.term
                ));
            }
        }
        Ok(leader)
    }

    /// Running members other than `leader`.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        self.running()
            .into_iter()
            .filter(|&i| i != leader)
            .collect()
    }

    /// Crashes member `i` (no final sync, tasks aborted).
    pub async fn kill(&mut self, i: usize) {
        let node = self.members[i].node.take().expect("kill a running member");
        node.kill().await;
        tracing::info!(member = i, "killed");
    }

    /// Stops member `i` gracefully.
    pub async fn stop(&mut self, i: usize) {
        let node = self.members[i].node.take().expect("stop a running member");
        node.stop().await;
        tracing::info!(member = i, "stopped");
    }

    /// Stops every running member, all at once.
    pub async fn stop_all(&mut self) {
        let nodes: Vec<Node> = self
            .members
            .iter_mut()
            .filter_map(|m| m.node.take())
            .collect();
        futures::future::join_all(nodes.into_iter().map(Node::stop)).await;
    }

    /// Crashes every running member, all at once.
    pub async fn kill_all(&mut self) {
        let nodes: Vec<Node> = self
            .members
            .iter_mut()
            .filter_map(|m| m.node.take())
            .collect();
        futures::future::join_all(nodes.into_iter().map(Node::kill)).await;
    }

    /// Restarts member `i` with its old flags, data directory and ports, in one attempt:
    /// panics if the member cannot start right away (as a crashed process could).
    pub async fn restart_at_once(&mut self, i: usize) {
        assert!(!self.is_running(i), "m{i} is already running");
        let m = &mut self.members[i];
        let listeners = Listeners {
            client: vec![bind_port(m.client_port).await],
            peer: vec![bind_port(m.peer_port).await],
        };
        m.start(listeners).await;
        tracing::info!(member = i, "restarted");
    }

    /// Restarts member `i` with its old flags, data directory and ports. While the previous
    /// incarnation still holds its data files ("Database already open"), retries under a
    /// deadline and logs how long that took; `restart_at_once` is the strict variant.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.is_running(i), "m{i} is already running");
        let node = self.members[i].start_again().await;
        self.members[i].node = Some(node);
    }

    /// Restarts every stopped member, all at once (a majority must come up together).
    pub async fn restart_all(&mut self) {
        let down: Vec<usize> = (0..self.len()).filter(|&i| !self.is_running(i)).collect();
        let starts = down.iter().map(|&i| self.members[i].start_again());
        let nodes = futures::future::join_all(starts).await;
        for (i, node) in down.into_iter().zip(nodes) {
            self.members[i].node = Some(node);
        }
    }

    /// Stops every member gracefully, then removes the data directories.
    pub async fn shutdown(mut self) {
        self.stop_all().await;
        drop(self.dir);
    }
}

/// Three members, each store engine behind its own (unarmed) fault plan.
pub async fn faulty_cluster() -> (TestCluster, Vec<Arc<FaultPlan>>) {
    let plans: Vec<Arc<FaultPlan>> = (0..3).map(|_| FaultPlan::new()).collect();
    let wraps = plans
        .iter()
        .map(|plan| {
            let plan = plan.clone();
            let wrap: WrapBackend = Arc::new(move |engine: Arc<dyn Backend>| {
                Arc::new(FaultyBackend::new(engine, plan.clone())) as Arc<dyn Backend>
            });
            Some(wrap)
        })
        .collect();
    (TestCluster::start_with_backends(wraps, &[]).await, plans)
}

fn channel(port: u16) -> Channel {
    Endpoint::from_shared(url(port))
        .expect("loopback URL")
        .connect_timeout(Duration::from_secs(1))
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
}

// ---- request builders and assertions -------------------------------------------------------

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs.iter().map(|kv| text(&kv.key)).collect()
}

pub fn values(resp: &RangeResponse) -> Vec<String> {
    resp.kvs.iter().map(|kv| text(&kv.value)).collect()
}

/// `(key, value)` pairs of a range response.
pub fn pairs(resp: &RangeResponse) -> Vec<(String, String)> {
    resp.kvs
        .iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect()
}

pub fn range_req(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

/// Every key starting with `prefix` (etcd's prefix range end: last byte plus one).
pub fn prefix_req(prefix: &str) -> RangeRequest {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.last_mut().expect("non-empty prefix");
    *last += 1;
    RangeRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    }
}

pub fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn delete_req(key: &str, range_end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

pub fn compare(key: &str, result: CompareResult, target: TargetUnion) -> Compare {
    let kind = match target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: kind as i32,
        key: key.into(),
        range_end: Vec::new(),
        target_union: Some(target),
    }
}

pub fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put_req(key, value))),
    }
}

pub fn op_range(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range_req(key, range_end))),
    }
}

pub fn op_delete(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(delete_req(
            key, range_end,
        ))),
    }
}

pub fn op_txn(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(txn)),
    }
}

/// Unwraps an RPC result, naming the call on failure.
pub fn ok<T>(what: &str, result: Result<Response<T>, Status>) -> T {
    match result {
        Ok(resp) => resp.into_inner(),
        Err(s) => panic!("{what}: unexpected error {:?}: {}", s.code(), s.message()),
    }
}

/// Asserts an RPC failed with exactly etcd's status code and message.
pub fn assert_etcd_error<T: Debug>(
    what: &str,
    result: Result<Response<T>, Status>,
    code: Code,
    message: &str,
) {
    match result {
        Ok(resp) => panic!("{what}: expected {code:?} {message:?}, got {resp:?}"),
        Err(s) => {
            assert_eq!(
                (s.code(), s.message()),
                (code, message),
                "{what}: wrong error"
            );
        }
    }
}

/// Puts through `kv` and returns the response.
pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> PutResponse {
    ok(&format!("put {key}"), kv.put(put_req(key, value)).await)
}

/// Puts through `kv`, retrying (under a deadline) only the errors etcd clients retry: no
/// leader, leader changed, timed out, member unreachable. For bulk writes whose exact revision
/// does not matter; a retried put may have been applied twice (same key, same value).
pub async fn put_retrying(kv: &mut KvClient<Channel>, key: &str, value: &str) -> PutResponse {
    put_req_retrying(kv, put_req(key, value)).await
}

/// [`put_retrying`] for any put request.
pub async fn put_req_retrying(kv: &mut KvClient<Channel>, req: PutRequest) -> PutResponse {
    let key = String::from_utf8_lossy(&req.key).into_owned();
    let what = format!("put {key}");
    eventually(&what, LEADER_WAIT, async || {
        match kv.put(req.clone()).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(s) if is_retryable(&s) => {
                tracing::warn!(key = %key, code = ?s.code(), message = s.message(), "retrying put");
                Err(format!("{:?}: {}", s.code(), s.message()))
            }
            Err(s) => panic!("{what}: unexpected error {:?}: {}", s.code(), s.message()),
        }
    })
    .await
}

/// Errors that say "not now", not "never": a client retries them.
pub fn is_retryable(s: &Status) -> bool {
    s.code() == Code::Unavailable
        || s.code() == Code::DeadlineExceeded
        || [
            "etcdserver: no leader",
            "etcdserver: leader changed",
            "etcdserver: request timed out",
        ]
        .contains(&s.message())
}

/// A linearizable read of `req` through `kv`.
pub async fn get(kv: &mut KvClient<Channel>, req: RangeRequest) -> RangeResponse {
    let what = format!("range {:?}", text(&req.key));
    ok(&what, kv.range(req).await)
}

/// The header revision of a response that must have one.
pub fn rev<H: HasHeader>(resp: &H) -> i64 {
    resp.header_revision()
}

/// Response types with an etcd header.
pub trait HasHeader {
    fn header_revision(&self) -> i64;
}

macro_rules! has_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn header_revision(&self) -> i64 {
                self.header.as_ref().expect("response header").revision
            }
        }
    )*};
}

has_header!(
    keel_api::etcdserverpb::RangeResponse,
    keel_api::etcdserverpb::PutResponse,
    keel_api::etcdserverpb::DeleteRangeResponse,
    keel_api::etcdserverpb::TxnResponse,
    keel_api::etcdserverpb::CompactionResponse
);

/// keel-sim's view of one watch response, for its watch validator.
pub fn to_sim(r: &keel_api::etcdserverpb::WatchResponse) -> keel_sim::watch::WatchResponse {
    let events = r
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            match keel_api::mvccpb::event::EventType::try_from(e.r#type) {
                Ok(keel_api::mvccpb::event::EventType::Delete) => {
                    keel_sim::watch::WatchEvent::delete(&kv.key, kv.mod_revision)
                }
                _ => keel_sim::watch::WatchEvent::put(&kv.key, &kv.value, kv.mod_revision),
            }
        })
        .collect();
    keel_sim::watch::WatchResponse {
        header_revision: r.header.as_ref().map_or(0, |h| h.revision),
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        fragment: r.fragment,
        events,
    }
}

/// Every running member reports the same KV hash at the same revision (after a
/// linearizable read each, so all have applied the same entries).
pub async fn assert_same_hash(cluster: &TestCluster) {
    let mut hashes = Vec::new();
    for i in cluster.running() {
        get(&mut cluster.kv(i), range_req("\0", "\0")).await;
        let resp = ok(
            "hash_kv",
            cluster
                .maintenance(i)
                .hash_kv(keel_api::etcdserverpb::HashKvRequest { revision: 0 })
                .await,
        );
        let revision = resp.header.expect("hash header").revision;
        hashes.push((i, revision, resp.hash));
    }
    tracing::info!(?hashes, "HashKV");
    assert!(
        hashes
            .windows(2)
            .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
        "members disagree on the KV hash: {hashes:?}"
    );
}

/// Waits until every member serves `HashKV` at `revision` (it has applied that far), then
/// asserts they all agree.
pub async fn assert_hash_kv_agrees(cluster: &TestCluster, revision: i64) {
    let mut hashes = Vec::new();
    for i in 0..cluster.len() {
        let mut maintenance = cluster.maintenance(i);
        let what = format!("m{i} to serve HashKV at revision {revision}");
        let hash = eventually(&what, SETTLE_WAIT, async || {
            let req = keel_api::etcdserverpb::HashKvRequest { revision };
            match maintenance.hash_kv(req).await {
                Ok(resp) => Ok(resp.into_inner()),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            }
        })
        .await;
        let header_revision = hash.header.as_ref().map_or(0, |h| h.revision);
        tracing::info!(member = i, hash = hash.hash, header_revision, "HashKV");
        hashes.push((hash.hash, hash.compact_revision, header_revision));
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members disagree on HashKV at revision {revision}: {hashes:?}"
    );
}
