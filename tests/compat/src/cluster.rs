//! Real server processes on loopback: a cluster of `keel` or `etcd` members started with
//! etcd's own flags, killed and restarted by the PIDs this harness spawned.
//!
//! Owns: ports, data directories, member logs, process lifetimes. Never touches a process
//! it did not start, and never waits by sleeping alone: every wait polls a condition under
//! a deadline.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

/// How long a cluster may take to elect a leader and serve a read.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout used by the harness's own probes.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Poll interval inside deadline loops.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Grace period after SIGTERM before the harness escalates to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each member's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Which server binary a cluster runs.
#[derive(Clone, Debug)]
pub enum Server {
    /// The keel binary at this path.
    Keel(PathBuf),
    /// `etcd` from PATH.
    Etcd,
}

impl Server {
    /// Short name for messages: "keel" or "etcd".
    pub fn name(&self) -> &'static str {
        match self {
            Server::Keel(_) => "keel",
            Server::Etcd => "etcd",
        }
    }

    fn program(&self) -> PathBuf {
        match self {
            Server::Keel(path) => path.clone(),
            Server::Etcd => PathBuf::from("etcd"),
        }
    }
}

/// One member: its fixed identity and, while running, its process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// The client URL, exactly as passed in `--advertise-client-urls`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL, exactly as passed in `--initial-advertise-peer-urls`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Whether this harness currently has a live process for the member.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A running cluster. Dropping it kills every process it started (also while
/// unwinding from a failed assertion, when it first prints each member's log tail)
/// and removes its temporary directory.
pub struct Cluster {
    server: Server,
    token: String,
    members: Vec<Member>,
    // Declared last so it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

/// Picks `count` distinct free loopback ports: binds them all at once (so none repeats),
/// then releases them for the server to take.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "compat-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Connects an etcd-client to the given endpoints with the harness's timeouts.
pub async fn connect(
    endpoints: &[String],
    timeout: Duration,
) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    Client::connect(endpoints, Some(options)).await
}

impl Cluster {
    /// Starts `members` processes of `server` and waits (deadline-bounded) until every
    /// member agrees on a leader and serves a linearizable read.
    pub async fn start(server: Server, members: usize) -> Cluster {
        assert!(members >= 1, "a cluster needs at least one member");
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-compat-{}-", server.name()))
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(members * 2);
        let members = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}")),
                log_path: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            server,
            token: unique_token(),
            members,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait_ready(READY_TIMEOUT).await;
        cluster
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    /// Client URLs of every member, running or not, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URLs of the members that are running now.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::client_url)
            .collect()
    }

    /// Indexes of running members.
    pub fn live_members(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// The exact `--initial-cluster` value.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command-line flags of member `index`: etcd's, plus fast election timing.
    pub fn flags(&self, index: usize) -> Vec<String> {
        let m = &self.members[index];
        let pairs = [
            ("--name", m.name.clone()),
            ("--data-dir", m.data_dir.display().to_string()),
            ("--listen-client-urls", m.client_url()),
            ("--advertise-client-urls", m.client_url()),
            ("--listen-peer-urls", m.peer_url()),
            ("--initial-advertise-peer-urls", m.peer_url()),
            ("--initial-cluster", self.initial_cluster()),
            // etcd expects "new" again when restarting on an existing data dir.
            ("--initial-cluster-state", "new".to_string()),
            ("--initial-cluster-token", self.token.clone()),
            ("--heartbeat-interval", "50".to_string()),
            ("--election-timeout", "500".to_string()),
        ];
        pairs
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect()
    }

    fn spawn(&mut self, index: usize) {
        assert!(
            self.members[index].child.is_none(),
            "member {index} is already running"
        );
        let flags = self.flags(index);
        let m = &mut self.members[index];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .expect("open member log");
        let log_err = log.try_clone().expect("clone log handle");
        let child = Command::new(self.server.program())
            .args(&flags)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {} for member {}: {e}",
                    self.server.program().display(),
                    m.name
                )
            });
        m.child = Some(child);
    }

    /// SIGKILLs member `index` (by the PID this harness started) and reaps it.
    pub fn kill(&mut self, index: usize) {
        let m = &mut self.members[index];
        let mut child = m.child.take().expect("kill: member is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERMs member `index` and waits for it to exit (SIGKILL after a grace period).
    pub async fn stop(&mut self, index: usize) {
        let m = &mut self.members[index];
        let mut child = m.child.take().expect("stop: member is not running");
        // `kill -TERM <pid>` keeps this crate free of unsafe libc calls. The PID is our child's
        // and stays so until the wait below reaps it.
        let pid = child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let mut exit = tokio::task::spawn_blocking(move || child.wait());
        if tokio::time::timeout(STOP_TIMEOUT, &mut exit).await.is_err() {
            eprintln!("member {} ignored SIGTERM; sending SIGKILL", m.name);
            let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
            let _ = exit.await;
        }
    }

    /// Starts member `index` again with the same flags and data directory. Does not wait.
    pub fn restart(&mut self, index: usize) {
        self.spawn(index);
    }

    /// Stops every running member with SIGTERM.
    pub async fn stop_all(&mut self) {
        for i in self.live_members() {
            self.stop(i).await;
        }
    }

    /// Starts every stopped member and waits until the cluster is ready.
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                self.spawn(i);
            }
        }
        self.wait_ready(READY_TIMEOUT).await;
    }

    /// A client for member `index` alone.
    pub async fn client_for(&self, index: usize) -> Client {
        connect(&[self.members[index].client_url()], Duration::from_secs(5))
            .await
            .expect("connect etcd-client")
    }

    /// A client balanced over every running member.
    pub async fn client(&self) -> Client {
        connect(&self.live_endpoints(), Duration::from_secs(5))
            .await
            .expect("connect etcd-client")
    }

    /// Status of member `index`: `(member_id, leader_id, raft_term)`.
    pub async fn status_of(&self, index: usize) -> Result<(u64, u64, u64), String> {
        let url = self.members[index].client_url();
        let mut client = connect(&[url], PROBE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let fut = client.status();
        let status = tokio::time::timeout(PROBE_TIMEOUT, fut)
            .await
            .map_err(|_| "status timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let header = status.header().ok_or("status without header")?;
        Ok((header.member_id(), status.leader(), status.raft_term()))
    }

    /// The index of the member every running member names as leader, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for i in self.live_members() {
            let (id, leader, _) = self.status_of(i).await.ok()?;
            ids.push((i, id));
            leaders.push(leader);
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|&l| l != first) {
            return None;
        }
        ids.iter().find(|(_, id)| *id == first).map(|(i, _)| *i)
    }

    /// Panics if a member this harness started has exited on its own.
    pub fn assert_running(&mut self) {
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    panic!(
                        "{} member {} exited on its own: {status}",
                        self.server.name(),
                        m.name
                    );
                }
            }
        }
    }

    /// Waits until every running member agrees on a running leader.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        let what = format!("{}: an agreed leader", self.server.name());
        eventually(&what, timeout, async || {
            self.assert_running();
            self.leader()
                .await
                .ok_or_else(|| format!("none among members {:?}", self.live_members()))
        })
        .await
    }

    /// Waits until a leader is agreed and every running member serves a linearizable get and
    /// lists every running member by name. A member announces its name once it runs (etcd's
    /// publish); until every member has applied that, `MemberList` shows it without a name.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.wait_leader(timeout).await;
        let live = self.live_members();
        let names: Vec<String> = live.iter().map(|&i| self.members[i].name.clone()).collect();
        for &i in &live {
            let what = format!("{}: member m{i} ready", self.server.name());
            let left = deadline.saturating_duration_since(Instant::now());
            eventually(&what, left, async || {
                self.assert_running();
                let probe = async {
                    let mut c = connect(&[self.members[i].client_url()], PROBE_TIMEOUT).await?;
                    c.get("compat/ready-probe", None).await?;
                    c.member_list().await
                };
                match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    Ok(Ok(list))
                        if names
                            .iter()
                            .all(|n| list.members().iter().any(|m| m.name() == *n)) =>
                    {
                        Ok(())
                    }
                    Ok(Ok(_)) => Err("does not list every member by name".to_string()),
                    Ok(Err(e)) => Err(format!("not serving reads: {e}")),
                    Err(_) => Err("read probe timed out".to_string()),
                }
            })
            .await;
        }
    }

    /// The temporary directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Prints the last lines of every member's log to stderr.
    pub fn print_log_tails(&self) {
        for m in &self.members {
            eprintln!(
                "----- {} {} log tail ({}) -----",
                self.server.name(),
                m.name,
                m.log_path.display()
            );
            eprintln!("{}", tail(&m.log_path, LOG_TAIL_LINES));
        }
    }
}

/// Polls `probe` every [`POLL_INTERVAL`] until it answers `Ok`, for at most `timeout`;
/// then panics with `what` and the probe's last error.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// The last `lines` lines of a file (reads at most the final 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    const MAX_TAIL_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return "<no log>".to_string();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            self.print_log_tails();
        }
    }
}
