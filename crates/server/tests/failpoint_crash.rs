//! Crash tests with real `keel` processes: one member runs with a crash point set through
//! `FAILPOINTS` (the process aborts there, as at a power cut), the cluster keeps taking
//! writes, the crashed member restarts without the crash point, and then every acknowledged
//! write is on every member and all members report the same HashKV.
//!
//! Points covered: around the apply commit, around a physical compaction step, building a
//! snapshot and installing one (see `keel_raft::failpoints`). Build with
//! `cargo test -p keel-server --features failpoints --test failpoint_crash`.
//!
//! Writes are create-then-delete churn made exactly once ([`ExactWriter`]), so the test
//! knows every committed event and its revision. After the restart a watch on the crashed
//! member must deliver them (etcd 17247: a duplicated event after a crash around a
//! snapshot), and after a crash inside compaction at a tombstone revision the revision must
//! not go back and watches at and above the compact revision must behave (etcd 17780,
//! 19179).
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use std::sync::Mutex;

use common::exact_writer::ExactWriter;
use common::watch_streams::{open_stream, spawn_reader, wait_watchers, Collected};
use common::{eventually, init_tracing, pairs, range_req};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{
    CompactionRequest, HashKvRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest,
};
use keel_sim::watch::{validate_watch, WatchResponse, WatchSpec};
use tokio::sync::mpsc;
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
/// Every write's key starts with this; the writer's counter key too.
const PREFIX: &str = "key/";
/// Keys the churn writes to: few, so each has many versions for compaction to remove.
const KEYS: usize = 4;

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

/// Writes churn through members `via` until `crashed` reports the crash or `WRITES_MAX`
/// is reached, then `after` more.
async fn write_through_crash(
    cluster: &mut ProcCluster,
    via: &[usize],
    victim: usize,
    after: usize,
    writer: &mut ExactWriter,
) {
    let mut n = 0;
    while !cluster.has_exited(victim) && n < WRITES_MAX {
        write_one(cluster, via, writer).await;
        n += 1;
    }
    for _ in 0..after {
        write_one(cluster, via, writer).await;
    }
    tracing::info!(
        writes = writer.writes(),
        failures = writer.failures,
        "writes acknowledged"
    );
}

/// One churn write through the members `via` (the next one after every failure, as a
/// member or the leader may be crashing); returns its revision.
async fn write_one(cluster: &ProcCluster, via: &[usize], writer: &mut ExactWriter) -> i64 {
    let clients: Vec<_> = via.iter().map(|&i| cluster.kv(i)).collect();
    let write = writer.churn(PREFIX, KEYS, writer.writes());
    writer.write(&clients, write, WAIT).await
}

fn new_writer() -> ExactWriter {
    ExactWriter::new(&format!("{PREFIX}counter"))
}

fn prefix_watch(start_revision: i64) -> WatchCreateRequest {
    common::watch_streams::prefix_watch(PREFIX, start_revision)
}

/// Watches on member `i` from each of `starts` on one stream, opened as soon as the
/// member answers (it may still be replaying its log or installing a snapshot).
async fn watch_member(
    cluster: &ProcCluster,
    i: usize,
    starts: &[i64],
) -> (mpsc::Sender<WatchRequest>, std::sync::Arc<Mutex<Collected>>) {
    let mut maintenance = cluster.maintenance(i);
    eventually(&format!("m{i} to answer"), WAIT, async || {
        maintenance
            .status(StatusRequest {})
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    })
    .await;
    let creates = starts.iter().map(|&s| prefix_watch(s)).collect();
    let (tx, stream) = open_stream(url(cluster.members[i].client_port), creates).await;
    let collected = spawn_reader(stream);
    wait_watchers("watches created", WAIT, &collected, starts.len(), None).await;
    (tx, collected)
}

/// Waits until every watcher of `collected` delivered the writer's last revision (or was
/// cancelled), then validates each against the exact committed events; returns each
/// watcher's responses.
async fn check_watchers(
    collected: &Mutex<Collected>,
    starts: &[i64],
    writer: &ExactWriter,
) -> Vec<Vec<WatchResponse>> {
    let last = writer.last_revision();
    wait_watchers(
        "watches to drain",
        WAIT,
        collected,
        starts.len(),
        Some(last),
    )
    .await;
    let c = collected.lock().expect("collected");
    let mut all = Vec::new();
    for (i, responses) in c.demux.by_watcher.values().enumerate() {
        let spec = WatchSpec::prefix(PREFIX.as_bytes(), starts[i]);
        match validate_watch(&writer.events, &spec, responses) {
            Ok(report) => tracing::info!(start = starts[i], ?report, "watch valid"),
            Err(v) => panic!("watcher from revision {}: {v}", starts[i]),
        }
        all.push(responses.clone());
    }
    all
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
async fn assert_converged(cluster: &ProcCluster, acked: &BTreeMap<String, String>) -> i64 {
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
    revision
}

/// m0 runs with `point` set to crash after `skip` passes; writes go through m1 and m2 until
/// it crashes, and on; m0 restarts without the point; everything converges, and a watch
/// opened on m0 from revision 2 as soon as it answers (while it replays or catches up)
/// delivers every committed event once, in order (etcd 17247).
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
    let mut writer = new_writer();
    write_through_crash(&mut cluster, &[1, 2], 0, 20, &mut writer).await;
    let status = cluster.wait_exit(0).await;
    assert_aborted(status, point);

    tracing::info!("--- phase 3: restart m0 without crash points; watch it from revision 2");
    cluster.spawn(0, None);
    let (_tx, watch) = watch_member(&cluster, 0, &[2]).await;
    for _ in 0..10 {
        write_one(&cluster, &[0, 1, 2], &mut writer).await;
    }
    assert_converged(&cluster, &writer.live).await;
    check_watchers(&watch, &[2], &writer).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_log_fsync() {
    crash_during_writes("wal::before_fsync", 10, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_log_fsync() {
    crash_during_writes("wal::after_fsync", 10, &[]).await;
}

/// m0 is down while m1 and m2 take enough writes to purge their logs behind a snapshot;
/// m0 then starts with `point` set and must install a snapshot, crashing there. Restarted,
/// it installs one again with a watch from revision 2 already open on it, which must
/// deliver every committed event once, in order (etcd 17247).
async fn crash_during_snapshot_install(point: &str) {
    let mut cluster = ProcCluster::new(3, &["--snapshot-count", "20"]);
    tracing::info!("--- phase 1: m1 and m2 alone take writes past several snapshots");
    cluster.spawn(1, None);
    cluster.spawn(2, None);
    let mut writer = new_writer();
    for _ in 0..80 {
        write_one(&cluster, &[1, 2], &mut writer).await;
    }

    tracing::info!("--- phase 2: m0 starts with {point}=return and needs a snapshot");
    cluster.spawn(0, Some(&format!("{point}=return")));
    let status = cluster.wait_exit(0).await;
    assert_aborted(status, point);
    for _ in 80..100 {
        write_one(&cluster, &[1, 2], &mut writer).await;
    }

    tracing::info!("--- phase 3: restart m0 without crash points, watched from revision 2");
    cluster.spawn(0, None);
    let (_tx, watch) = watch_member(&cluster, 0, &[2]).await;
    for _ in 0..10 {
        write_one(&cluster, &[0, 1, 2], &mut writer).await;
    }
    assert_converged(&cluster, &writer.live).await;
    check_watchers(&watch, &[2], &writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_snapshot_install() {
    crash_during_snapshot_install("snapshot::before_install").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_snapshot_install() {
    crash_during_snapshot_install("snapshot::after_install").await;
}

/// Writes history whose newest revision is a tombstone and compacts at it; m0 crashes at
/// `point` of its physical compaction, restarts, finishes compacting and converges. Then
/// (etcd 17780) its revision never went back and its next write gets the last + 1; and
/// (etcd 19179, 18089) a watch at the compact revision is cancelled with keel's compact
/// revision + 1, while a watch at compact + 1 delivers every later event once, in order.
async fn crash_during_compaction(point: &str) {
    let mut cluster = ProcCluster::new(3, &[]);
    tracing::info!("--- phase 1: history on every member, m0 with {point}=return");
    cluster.spawn(0, Some(&format!("{point}=return")));
    cluster.spawn(1, None);
    cluster.spawn(2, None);
    let mut writer = new_writer();
    // 62: the churn's last delete round ends at 59, so two keys are live again.
    for _ in 0..62 {
        write_one(&cluster, &[1, 2], &mut writer).await;
    }
    // The newest revision holds nothing but a tombstone (no counter put beside it).
    let doomed = writer
        .live
        .keys()
        .find(|k| !k.ends_with("counter"))
        .expect("a live key")
        .clone();
    let clients = [cluster.kv(1), cluster.kv(2)];
    let compact_at = writer.delete_plain(&clients, &doomed, WAIT).await;

    tracing::info!("--- phase 2: compact at the tombstone {compact_at}; m0 crashes in its step");
    let mut kv = cluster.kv(1);
    eventually("compaction to be acknowledged", WAIT, async || {
        let req = CompactionRequest {
            revision: compact_at,
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
    for _ in 0..20 {
        write_one(&cluster, &[1, 2], &mut writer).await;
    }

    tracing::info!("--- phase 3: restart m0; its revision is not below the compaction");
    cluster.spawn(0, None);
    let mut kv = cluster.kv(0);
    let first = eventually("m0 to serve a read", WAIT, async || {
        let req = RangeRequest {
            serializable: true,
            ..range_req("\0", "\0")
        };
        let resp = kv.range(req).await.map_err(|s| s.message().to_string())?;
        Ok::<_, String>(resp.into_inner().header.map_or(0, |h| h.revision))
    })
    .await;
    assert!(
        first >= compact_at,
        "m0 came back at revision {first}, below the compact revision {compact_at}"
    );
    assert_eq!(
        assert_converged(&cluster, &writer.live).await,
        writer.last_revision()
    );
    let last = writer.last_revision();
    let next = write_one(&cluster, &[0], &mut writer).await;
    assert_eq!(next, last + 1, "the first write through m0 after its crash");

    tracing::info!("--- phase 4: watches on m0 at the compact revision and just above");
    let starts = [compact_at, compact_at + 1];
    let (_tx, watch) = watch_member(&cluster, 0, &starts).await;
    for _ in 0..5 {
        write_one(&cluster, &[0, 1, 2], &mut writer).await;
    }
    let responses = check_watchers(&watch, &starts, &writer).await;
    let cancel = responses[0].iter().find(|r| r.canceled);
    assert_eq!(
        cancel.map(|r| r.compact_revision),
        Some(compact_at + 1),
        "a watch at the compact revision is cancelled, naming compact + 1: {:?}",
        responses[0]
    );
    assert!(
        responses[1].iter().all(|r| !r.canceled),
        "the watch at compact + 1 must not be cancelled: {:?}",
        responses[1]
    );
    let old = RangeRequest {
        revision: compact_at - 1,
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
    let mut writer = new_writer();
    write_through_crash(&mut cluster, &[1, 2], 0, 20, &mut writer).await;
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
    assert_converged(&cluster, &writer.live).await;
}
