//! A cluster of real `keel` processes on loopback, with a proxy on every peer link.
//!
//! Owns: choosing the members' ports (bound to port 0 and read back, then released for the
//! process to bind), one temp directory holding every member's data directory and log file,
//! the child processes (spawn, SIGKILL, SIGSTOP/SIGCONT, restart on the same ports and data)
//! and the per-link proxies (`proxy.rs`) that every member reaches its peers through.
//! Must never: signal a process it did not start, leave one running (dropping the cluster
//! kills and reaps every child), or wait without a deadline.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{StatusRequest, StatusResponse};
use rustix::process::{kill_process, Pid, Signal};
use tonic::transport::{Channel, Endpoint};

use super::proxy::{LinkMode, LinkProxy};
use crate::common::eventually;

/// Raft timings of the members (the in-process tests use the same).
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MS: u64 = 1000;
/// Longest wait for a (re)started process to answer on its client port.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Starts retried when the chosen port was taken in the meantime.
const START_ATTEMPTS_MAX: usize = 5;
/// Bound on one status probe (a paused member never answers).
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on every unary call through a member's channel, so no check hangs on a dead member.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Set to keep the temp dir (data and logs) even when the test passes.
const KEEP_ENV: &str = "KEEL_NEMESIS_KEEP";

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A loopback listener on a port free right now; the caller reads its port and releases it
/// for the member to bind (holding every one until all are chosen keeps them distinct).
fn port_holder() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0")
}

fn port_of(l: &std::net::TcpListener) -> u16 {
    l.local_addr().expect("local addr").port()
}

/// One member: ports, paths and the process, if running.
pub struct ProcMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub member_id: u64,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    channel: Channel,
}

/// Three (or N) `keel` processes and the proxies between them.
pub struct ProcCluster {
    pub members: Vec<ProcMember>,
    /// `(from, to)` -> the proxy `from` dials to reach `to`.
    links: BTreeMap<(usize, usize), LinkProxy>,
    initial_cluster: String,
    /// Flags every member gets after the harness's own (for example `--snapshot-count`).
    extra_args: Vec<String>,
    dir: Option<tempfile::TempDir>,
}

impl ProcCluster {
    /// Starts `size` members, each dialling its peers through its own proxies, and waits
    /// until they agree on a leader.
    pub async fn start(size: usize) -> ProcCluster {
        Self::start_with_args(size, &[]).await
    }

    /// [`ProcCluster::start`] with `extra_args` added to every member's flags.
    pub async fn start_with_args(size: usize, extra_args: &[&str]) -> ProcCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let holders: Vec<_> = (0..2 * size).map(|_| port_holder()).collect();
        let mut members = Vec::new();
        for i in 0..size {
            let client_port = port_of(&holders[2 * i]);
            let name = format!("m{i}");
            members.push(ProcMember {
                data_dir: dir.path().join(&name),
                log_path: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                peer_port: port_of(&holders[2 * i + 1]),
                member_id: 0,
                child: None,
                paused: false,
                channel: channel(client_port),
            });
        }
        let mut links = BTreeMap::new();
        for from in 0..size {
            for to in (0..size).filter(|&to| to != from) {
                let upstream: SocketAddr = ([127, 0, 0, 1], members[to].peer_port).into();
                links.insert((from, to), LinkProxy::start(upstream).await);
            }
        }
        // The proxies hold their own ports now; release the members' for them to bind.
        drop(holders);
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, url(m.peer_port)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = ProcCluster {
            members,
            links,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir: Some(dir),
        };
        tracing::info!(dir = %cluster.dir().display(), "data directories and logs");
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_ready(i).await;
        }
        cluster.wait_for_leader(READY_WAIT).await;
        cluster
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.as_ref().expect("temp dir").path().to_path_buf()
    }

    pub fn client_url(&self, i: usize) -> String {
        url(self.members[i].client_port)
    }

    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.members[i].channel.clone())
    }

    pub fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.members[i].channel.clone())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.members[i].paused
    }

    /// `KEEL_PEER_DIAL_MAP` for member `i`: each peer's URL -> the proxy of that link.
    fn dial_map(&self, i: usize) -> String {
        self.links
            .iter()
            .filter(|((from, _), _)| *from == i)
            .map(|((_, to), proxy)| format!("{}={}", url(self.members[*to].peer_port), proxy.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Spawns member `i`'s process, appending its output to its log file.
    fn spawn(&mut self, i: usize) {
        assert!(!self.is_running(i), "m{i} is already running");
        let dial_map = self.dial_map(i);
        let m = &self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .expect("open member log");
        let err_log = log.try_clone().expect("clone log handle");
        let mut args: Vec<String> = vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            url(m.client_port),
            "--advertise-client-urls".into(),
            url(m.client_port),
            "--listen-peer-urls".into(),
            url(m.peer_port),
            "--initial-advertise-peer-urls".into(),
            url(m.peer_port),
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            "process-nemesis".into(),
            "--heartbeat-interval".into(),
            HEARTBEAT_MS.to_string(),
            "--election-timeout".into(),
            ELECTION_TIMEOUT_MS.to_string(),
        ];
        args.extend(self.extra_args.iter().cloned());
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(&args)
            .env("KEEL_PEER_DIAL_MAP", dial_map)
            // Plain text logs (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .env(
                "KEEL_LOG",
                std::env::var("KEEL_LOG").unwrap_or_else(|_| "info,openraft=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .expect("spawn keel");
        tracing::info!(member = i, pid = child.id(), "spawned");
        let m = &mut self.members[i];
        m.child = Some(child);
        m.paused = false;
    }

    /// The last `bytes_max` bytes of member `i`'s log.
    pub fn log_tail(&self, i: usize, bytes_max: u64) -> String {
        let Ok(mut f) = File::open(&self.members[i].log_path) else {
            return String::new();
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes_max)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }

    /// Waits until member `i` answers `Status`; restarts it (bounded) if it exited because
    /// its port was taken between choosing and binding it; panics with its log otherwise.
    async fn wait_ready(&mut self, i: usize) {
        let mut attempts = 1;
        let what = format!("m{i} to answer Status");
        let id = eventually(&what, READY_WAIT, async || {
            if let Some(status) = self.status(i).await {
                return Ok(status.header.as_ref().map_or(0, |h| h.member_id));
            }
            let exited = self.members[i]
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait");
            if let Some(exit) = exited {
                self.members[i].child = None;
                let tail = self.log_tail(i, 4096);
                let port_taken = tail.contains("Address already in use");
                assert!(
                    port_taken && attempts < START_ATTEMPTS_MAX,
                    "m{i} exited during start ({exit}); log tail:\n{tail}"
                );
                attempts += 1;
                tracing::warn!(member = i, "port taken; starting again");
                self.spawn(i);
            }
            Err(format!("log tail:\n{}", self.log_tail(i, 4096)))
        })
        .await;
        self.members[i].member_id = id;
    }

    /// The `ERROR` lines at the end of every member's log (a member that stopped itself,
    /// for example on a full disk, says why there).
    pub fn error_lines(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            for line in self
                .log_tail(i, 64 * 1024)
                .lines()
                .filter(|l| l.contains(" ERROR "))
            {
                out.push_str(&format!("m{i}: {line}\n"));
            }
        }
        out
    }

    /// `Status` of member `i`, or `None` if it does not answer within `STATUS_TIMEOUT`.
    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        let mut maintenance = self.maintenance(i);
        let call = maintenance.status(StatusRequest {});
        match tokio::time::timeout(STATUS_TIMEOUT, call).await {
            Ok(Ok(resp)) => Some(resp.into_inner()),
            _ => None,
        }
    }

    pub fn index_of(&self, member_id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.member_id == member_id)
    }

    /// Members running and not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.is_running(i) && !self.is_paused(i))
            .collect()
    }

    /// The leader most live members name (ties: any), for choosing fault targets.
    pub async fn probable_leader(&self) -> Option<usize> {
        let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
        for i in self.live() {
            if let Some(l) = self.status(i).await.and_then(|s| self.index_of(s.leader)) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
    }

    /// `Ok(leader)` when every member is live, answers, and all name the same leader in the
    /// same term, the leader among them.
    async fn agreed_leader(&self) -> Result<usize, String> {
        let mut seen = Vec::new();
        for i in 0..self.len() {
            let s = self
                .status(i)
                .await
                .ok_or(format!("m{i} does not answer"))?;
            seen.push((s.leader, s.raft_term));
        }
        let (leader, term) = seen[0];
        if leader == 0 || seen.iter().any(|&s| s != (leader, term)) {
            return Err(format!("members see (leader, term) {seen:x?}"));
        }
        self.index_of(leader)
            .ok_or(format!("leader {leader:x} is no member"))
    }

    /// Waits until all members agree on a leader; panics after `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> usize {
        eventually("an agreed leader", timeout, async || {
            self.agreed_leader()
                .await
                .map_err(|e| format!("{e}; member errors:\n{}", self.error_lines()))
        })
        .await
    }

    fn signal(&self, i: usize, signal: Signal) {
        let child = self.members[i]
            .child
            .as_ref()
            .expect("signal a running member");
        let pid = Pid::from_child(child);
        kill_process(pid, signal).unwrap_or_else(|e| panic!("signal {signal:?} to m{i}: {e}"));
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, Signal::KILL);
        let mut child = self.members[i].child.take().expect("running");
        let status = child.wait().expect("reap killed member");
        self.members[i].paused = false;
        tracing::info!(member = i, %status, "killed");
    }

    /// Starts member `i` again on its ports and data directory, waiting until it answers.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i).await;
        tracing::info!(member = i, "restarted");
    }

    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::STOP);
        self.members[i].paused = true;
        tracing::info!(member = i, "paused (SIGSTOP)");
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::CONT);
        self.members[i].paused = false;
        tracing::info!(member = i, "resumed (SIGCONT)");
    }

    /// Sets the link `from -> to` (connections `from` opens to `to`).
    pub fn set_link(&self, from: usize, to: usize, mode: LinkMode) {
        self.links[&(from, to)].set(mode);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) {
        self.set_link(a, b, LinkMode::Drop);
        self.set_link(b, a, LinkMode::Drop);
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.len()).filter(|&j| j != i) {
            self.cut(i, j);
        }
    }

    /// Sets every link to `mode`.
    pub fn set_all_links(&self, mode: LinkMode) {
        for proxy in self.links.values() {
            proxy.set(mode);
        }
    }

    /// Every link passes, every paused member resumes, every stopped member restarts.
    pub async fn heal(&mut self) {
        self.set_all_links(LinkMode::Pass);
        for i in 0..self.len() {
            if self.is_paused(i) {
                self.resume(i);
            }
        }
        for i in 0..self.len() {
            if !self.is_running(i) {
                self.restart(i).await;
            }
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some(mut child) = m.child.take() {
                // SIGKILL ends a stopped process too; only our own children are signalled.
                let _ = child.kill();
                let _ = child.wait();
                tracing::debug!(member = i, "killed at teardown");
            }
        }
        let keep = std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some();
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!("process nemesis: kept data and logs in {}", path.display());
            }
        }
    }
}

fn channel(port: u16) -> Channel {
    Endpoint::from_shared(url(port))
        .expect("loopback URL")
        .connect_timeout(Duration::from_secs(1))
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
}
