//! Crash tests with real `keel` processes: one member runs with a crash point set through
//! `FAILPOINTS` (the process aborts there, as at a power cut), the cluster keeps taking
//! writes, the crashed member restarts without the crash point, and then every acknowledged
//! write is on every member and all members report the same HashKV.
//!
//! Points covered: around the apply commit, around a physical compaction step, building a
//! snapshot and installing one (see `keel_raft::failpoints`). Build with
//! `cargo test -p keel-server --features failpoints --test failpoint_crash`.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{eventually, init_tracing, is_retryable, pairs, put_req, range_req};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{CompactionRequest, HashKvRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// Raft timings: quick elections, yet no flapping on a loaded 2-core machine.
const HEARTBEAT_MS: &str = "100";
const ELECTION_TIMEOUT_MS: &str = "1000";
/// Longest wait for anything a test waits for (a leader, a crash, a catch-up).
const WAIT: Duration = Duration::from_secs(30);
/// Every RPC is bounded by this.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// The signal `std::process::abort` raises (SIGABRT on Linux).
const SIGABRT: i32 = 6;
/// Writes a scenario makes at most while waiting for the crash point to fire.
const WRITES_MAX: usize = 400;

/// One `keel` process slot: fixed name, ports and data directory across restarts.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    channel: Channel,
}

/// Three `keel` processes on loopback, their data under one temp dir. Dropping it kills
/// (SIGKILL, by the PID we started) and reaps every process still running.
struct ProcCluster {
    members: Vec<Member>,
    initial_cluster: String,
    extra_args: Vec<String>,
    _dir: tempfile::TempDir,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl ProcCluster {
    /// Picks ports (bound to port 0 and read back, then released for the processes to bind)
    /// without starting anything.
    fn new(size: usize, extra_args: &[&str]) -> ProcCluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let listeners: Vec<_> = (0..size * 2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local addr").port())
            .collect();
        drop(listeners);
        let members: Vec<Member> = (0..size)
            .map(|i| {
                let name = format!("m{i}");
                let client_port = ports[2 * i];
                Member {
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port,
                    peer_port: ports[2 * i + 1],
                    child: None,
                    channel: Endpoint::from_shared(url(client_port))
                        .expect("loopback URL")
                        .connect_timeout(Duration::from_secs(1))
                        .timeout(RPC_TIMEOUT)
                        .connect_lazy(),
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, url(m.peer_port)))
            .collect::<Vec<_>>()
            .join(",");
        ProcCluster {
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        }
    }

    /// Starts member `i`, with `failpoints` as its `FAILPOINTS` (or none).
    fn spawn(&mut self, i: usize, failpoints: Option<&str>) {
        let m = &self.members[i];
        assert!(m.child.is_none(), "{} already running", m.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("member log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &url(m.client_port)])
            .args(["--advertise-client-urls", &url(m.client_port)])
            .args(["--listen-peer-urls", &url(m.peer_port)])
            .args(["--initial-advertise-peer-urls", &url(m.peer_port)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", HEARTBEAT_MS])
            .args(["--election-timeout", ELECTION_TIMEOUT_MS])
            .args(&self.extra_args)
            .env("KEEL_LOG", "info,openraft=warn")
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if let Some(fp) = failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        let child = cmd.spawn().expect("spawn keel");
        tracing::info!(member = %m.name, pid = child.id(), ?failpoints, "started");
        self.members[i].child = Some(child);
    }

    /// Waits (bounded) until member `i` exits on its own, and returns how it exited.
    async fn wait_exit(&mut self, i: usize) -> ExitStatus {
        let m = &mut self.members[i];
        let child = m.child.as_mut().expect("a running member");
        let what = format!("{} to exit", m.name);
        let status = eventually(&what, WAIT, async || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        })
        .await;
        m.child = None;
        tracing::info!(member = %m.name, ?status, "exited");
        status
    }

    fn has_exited(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut() {
            None => true,
            Some(child) => !matches!(child.try_wait(), Ok(None)),
        }
    }

    fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.members[i].channel.clone())
    }

    fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.members[i].channel.clone())
    }

    /// Tail of every member's log, for a failing test's output.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} ({})\n{tail}\n", m.name, m.log.display()));
        }
        out
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("member logs:\n{}", self.log_tails());
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Puts `key=value` through the members `via` in turn until one acknowledges it. Every
/// error is retried (a member or the leader may be crashing); a retried put has the same
/// key and value, and the next put starts only after this one is acknowledged.
async fn put_acked(cluster: &ProcCluster, via: &[usize], key: &str, value: &str) {
    let mut clients: Vec<_> = via.iter().map(|&i| cluster.kv(i)).collect();
    let mut turn = 0;
    let what = format!("put {key} to be acknowledged");
    eventually(&what, WAIT, async || {
        turn += 1;
        let kv = &mut clients[turn % via.len()];
        kv.put(put_req(key, value)).await.map(|_| ()).map_err(|s| {
            if !is_retryable(&s) {
                tracing::info!(key, code = ?s.code(), message = s.message(), "retrying put");
            }
            format!("{:?}: {}", s.code(), s.message())
        })
    })
    .await;
}

/// Writes `prefix/NNN` keys through members `via` until `crashed` reports the crash or
/// `WRITES_MAX` is reached, then `after` more; returns every acknowledged write.
async fn write_through_crash(
    cluster: &mut ProcCluster,
    via: &[usize],
    victim: usize,
    after: usize,
    acked: &mut BTreeMap<String, String>,
) {
    let mut n = 0;
    while !cluster.has_exited(victim) && n < WRITES_MAX {
        write_one(cluster, via, n, acked).await;
        n += 1;
    }
    for _ in 0..after {
        write_one(cluster, via, n, acked).await;
        n += 1;
    }
    tracing::info!(writes = n, "writes acknowledged");
}

async fn write_one(
    cluster: &ProcCluster,
    via: &[usize],
    n: usize,
    acked: &mut BTreeMap<String, String>,
) {
    // A few keys written over and over, so compaction has old versions to remove.
    let (key, value) = (format!("key/{:02}", n % 16), format!("value-{n}"));
    put_acked(cluster, via, &key, &value).await;
    acked.insert(key, value);
}

/// Asserts the member crashed by aborting (the crash point fired), not some other way.
fn assert_aborted(status: ExitStatus, point: &str) {
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "expected an abort at {point}, got {status:?}"
    );
}

/// Every member serves every acknowledged write (latest values), and all report the same
/// HashKV at the same revision.
async fn assert_converged(cluster: &ProcCluster, acked: &BTreeMap<String, String>) {
    let mut revision = 0;
    for i in 0..cluster.members.len() {
        let mut kv = cluster.kv(i);
        let what = format!("m{i} to serve every acknowledged write");
        let got_revision = eventually(&what, WAIT, async || {
            let req = RangeRequest {
                serializable: true,
                ..range_req("\0", "\0")
            };
            let resp = kv
                .range(req)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            let got: BTreeMap<String, String> = pairs(&resp).into_iter().collect();
            if &got == acked {
                Ok(resp.header.map_or(0, |h| h.revision))
            } else {
                Err(format!("{} keys, want {}", got.len(), acked.len()))
            }
        })
        .await;
        revision = revision.max(got_revision);
    }
    let mut hashes = Vec::new();
    for i in 0..cluster.members.len() {
        let mut maintenance = cluster.maintenance(i);
        let what = format!("m{i} to serve HashKV at revision {revision}");
        let hash = eventually(&what, WAIT, async || {
            match maintenance.hash_kv(HashKvRequest { revision }).await {
                Ok(resp) => Ok(resp.into_inner()),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            }
        })
        .await;
        hashes.push((i, hash.hash, hash.compact_revision));
    }
    tracing::info!(revision, ?hashes, "HashKV");
    assert!(
        hashes
            .windows(2)
            .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
        "members disagree on HashKV at revision {revision}: {hashes:?}"
    );
}

/// m0 runs with `point` set to crash after `skip` passes; writes go through m1 and m2 until
/// it crashes, and on; m0 restarts without the point; everything converges.
async fn crash_during_writes(point: &str, skip: u32, extra_args: &[&str]) {
    let mut cluster = ProcCluster::new(3, extra_args);
    let failpoints = match skip {
        0 => format!("{point}=return"),
        _ => format!("{point}={skip}*off->return"),
    };
    tracing::info!("--- phase 1: start m0 with {failpoints}, m1 and m2 plain");
    cluster.spawn(0, Some(&failpoints));
    cluster.spawn(1, None);
    cluster.spawn(2, None);

    tracing::info!("--- phase 2: write through m1/m2 until m0 crashes at {point}, and on");
    let mut acked = BTreeMap::new();
    write_through_crash(&mut cluster, &[1, 2], 0, 20, &mut acked).await;
    let status = cluster.wait_exit(0).await;
    assert_aborted(status, point);

    tracing::info!("--- phase 3: restart m0 without crash points; everything converges");
    cluster.spawn(0, None);
    assert_converged(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_apply_commit() {
    crash_during_writes("apply::before_commit", 10, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_apply_commit() {
    crash_during_writes("apply::after_commit", 10, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_snapshot_build() {
    crash_during_writes("snapshot::before_build", 0, &["--snapshot-count", "20"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_snapshot_build() {
    crash_during_writes("snapshot::after_build", 0, &["--snapshot-count", "20"]).await;
}

/// m0 is down while m1 and m2 take enough writes to purge their logs behind a snapshot;
/// m0 then starts with `point` set and must install a snapshot, crashing there.
async fn crash_during_snapshot_install(point: &str) {
    let mut cluster = ProcCluster::new(3, &["--snapshot-count", "20"]);
    tracing::info!("--- phase 1: m1 and m2 alone take writes past several snapshots");
    cluster.spawn(1, None);
    cluster.spawn(2, None);
    let mut acked = BTreeMap::new();
    for n in 0..80 {
        write_one(&cluster, &[1, 2], n, &mut acked).await;
    }

    tracing::info!("--- phase 2: m0 starts with {point}=return and needs a snapshot");
    cluster.spawn(0, Some(&format!("{point}=return")));
    let status = cluster.wait_exit(0).await;
    assert_aborted(status, point);
    for n in 80..100 {
        write_one(&cluster, &[1, 2], n, &mut acked).await;
    }

    tracing::info!("--- phase 3: restart m0 without crash points; everything converges");
    cluster.spawn(0, None);
    assert_converged(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_snapshot_install() {
    crash_during_snapshot_install("snapshot::before_install").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_snapshot_install() {
    crash_during_snapshot_install("snapshot::after_install").await;
}

/// Writes history, compacts it away; m0 crashes at `point` of its physical compaction,
/// restarts, finishes compacting and converges.
async fn crash_during_compaction(point: &str) {
    let mut cluster = ProcCluster::new(3, &[]);
    tracing::info!("--- phase 1: history on every member, m0 with {point}=return");
    cluster.spawn(0, Some(&format!("{point}=return")));
    cluster.spawn(1, None);
    cluster.spawn(2, None);
    let mut acked = BTreeMap::new();
    for n in 0..60 {
        write_one(&cluster, &[1, 2], n, &mut acked).await;
    }

    tracing::info!("--- phase 2: compact; m0 crashes in its compaction step");
    let mut kv = cluster.kv(1);
    let revision = eventually("the current revision", WAIT, async || {
        let resp = kv.range(range_req("\0", "\0")).await;
        resp.map(|r| r.into_inner().header.map_or(0, |h| h.revision))
            .map_err(|s| s.message().to_string())
    })
    .await;
    eventually("compaction to be acknowledged", WAIT, async || {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        kv.compact(req)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    })
    .await;
    let status = cluster.wait_exit(0).await;
    assert_aborted(status, point);
    for n in 60..80 {
        write_one(&cluster, &[1, 2], n, &mut acked).await;
    }

    tracing::info!("--- phase 3: restart m0 without crash points; everything converges");
    cluster.spawn(0, None);
    assert_converged(&cluster, &acked).await;
    let mut kv = cluster.kv(0);
    let old = RangeRequest {
        revision: revision - 1,
        serializable: true,
        ..range_req("\0", "\0")
    };
    let err = kv.range(old).await.expect_err("read below the compaction");
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_compaction_step() {
    crash_during_compaction("compact::before_step").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_compaction_step() {
    crash_during_compaction("compact::after_step").await;
}

/// A panic at a crash point (not an abort) stops the member's Raft; the `keel` process must
/// then stop serving and exit with a failure code rather than linger half-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_apply_stops_the_process_with_a_failure_code() {
    let mut cluster = ProcCluster::new(3, &[]);
    tracing::info!("--- phase 1: m0 panics in its 10th apply");
    cluster.spawn(0, Some("apply::before_commit=10*off->panic"));
    cluster.spawn(1, None);
    cluster.spawn(2, None);
    let mut acked = BTreeMap::new();
    write_through_crash(&mut cluster, &[1, 2], 0, 20, &mut acked).await;
    let status = cluster.wait_exit(0).await;
    assert_eq!(
        status.code(),
        Some(1),
        "m0 should exit with 1, got {status:?}"
    );
    let log = std::fs::read_to_string(&cluster.members[0].log).expect("m0 log");
    assert!(
        log.contains("keel: stopped after a fatal error"),
        "m0 did not report its fatal stop:\n{}",
        cluster.log_tails()
    );

    tracing::info!("--- phase 2: restart m0; everything converges");
    cluster.spawn(0, None);
    assert_converged(&cluster, &acked).await;
}
