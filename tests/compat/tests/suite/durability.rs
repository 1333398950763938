//! Acknowledged writes survive: a SIGKILLed leader mid-stream, a SIGKILLed single member,
//! and a full stop/start of every member on the same data directories.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use keel_compat::cluster::{connect, eventually, POLL_INTERVAL, READY_TIMEOUT};
use keel_compat::{current_revision, expect_grpc_error, for_each_server, Cluster, Kv, Transcript};
use tokio::sync::watch;

/// Sequential writes in the leader-kill test.
const TOTAL_WRITES: usize = 300;
/// Acked writes before the leader is killed.
const KILL_AFTER_WRITES: usize = 100;
/// Acked writes after the kill before the test stops waiting for progress.
const WRITES_AFTER_KILL: usize = 50;
/// Attempts for one write across endpoints before it counts as not acknowledged.
const MAX_ATTEMPTS_PER_WRITE: usize = 200;
/// Per-request timeout for the writer (a request to a dead member must not stall it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Overall bound on the writer.
const WRITER_TIMEOUT: Duration = Duration::from_secs(120);

fn key(i: usize) -> String {
    format!("dur/{i:04}")
}

fn value(i: usize) -> String {
    format!("v{i}")
}

/// Outcome of the writer: indexes acknowledged, and the number of failed/unknown attempts.
struct WriterReport {
    acked: Vec<usize>,
    failed_attempts: usize,
}

/// Puts `key(i) = value(i)` for i in 0..total, one at a time. A write that fails or times
/// out (outcome unknown) is retried on the next endpoint that is not `excluded`; only
/// acknowledged writes are counted. Puts are idempotent, so a retry of a write that did
/// apply is harmless. Reports each acknowledgement through `progress`.
async fn writer(
    endpoints: Vec<String>,
    excluded: watch::Receiver<Option<usize>>,
    progress: watch::Sender<usize>,
    total: usize,
) -> WriterReport {
    let deadline = Instant::now() + WRITER_TIMEOUT;
    let mut clients: Vec<Option<Client>> = endpoints.iter().map(|_| None).collect();
    let mut cursor = 0;
    let mut report = WriterReport {
        acked: Vec::new(),
        failed_attempts: 0,
    };
    for i in 0..total {
        for _attempt in 0..MAX_ATTEMPTS_PER_WRITE {
            if Instant::now() >= deadline {
                return report;
            }
            let target = cursor % endpoints.len();
            if *excluded.borrow() == Some(target) {
                cursor += 1;
                continue;
            }
            if clients[target].is_none() {
                clients[target] = connect(&[endpoints[target].clone()], REQUEST_TIMEOUT)
                    .await
                    .ok();
            }
            let Some(client) = clients[target].as_mut() else {
                cursor += 1;
                continue;
            };
            let put =
                tokio::time::timeout(REQUEST_TIMEOUT, client.put(key(i), value(i), None)).await;
            if let Ok(Ok(_)) = put {
                report.acked.push(i);
                progress.send_replace(report.acked.len());
                break;
            }
            // Failed or unknown: move to the next endpoint and back off briefly.
            report.failed_attempts += 1;
            clients[target] = None;
            cursor += 1;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    report
}

/// Waits until `rx` reports at least `count` acknowledged writes.
async fn wait_progress(rx: &mut watch::Receiver<usize>, count: usize, timeout: Duration) {
    let reached = matches!(
        tokio::time::timeout(timeout, rx.wait_for(|&n| n >= count)).await,
        Ok(Ok(_))
    );
    assert!(
        reached,
        "writer did not reach {count} acked writes within {timeout:?} (at {})",
        *rx.borrow()
    );
}

/// Every `dur/` key on member `index`, read with the given consistency.
async fn read_all(
    cluster: &Cluster,
    index: usize,
    serializable: bool,
) -> Result<BTreeMap<String, String>, String> {
    let mut c = connect(&[cluster.member(index).client_url()], REQUEST_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let mut opts = GetOptions::new().with_prefix();
    if serializable {
        opts = opts.with_serializable();
    }
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, c.get("dur/", Some(opts)))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into(),
                String::from_utf8_lossy(kv.value()).into(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_keeps_acked_writes() {
    for_each_server(
        "leader_sigkill_keeps_acked_writes",
        3,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            eprintln!("--- phase 1: find the leader, start the writer");
            let old_leader = cluster.wait_leader(READY_TIMEOUT).await;
            let (exclude_tx, exclude_rx) = watch::channel(None);
            let (progress_tx, mut progress_rx) = watch::channel(0);
            let task = tokio::spawn(writer(
                cluster.endpoints(),
                exclude_rx,
                progress_tx,
                TOTAL_WRITES,
            ));
            wait_progress(&mut progress_rx, KILL_AFTER_WRITES, Duration::from_secs(60)).await;

            eprintln!("--- phase 2: SIGKILL the leader m{old_leader} mid-stream");
            cluster.kill(old_leader);
            exclude_tx.send_replace(Some(old_leader));
            let at_kill = *progress_rx.borrow();
            wait_progress(
                &mut progress_rx,
                at_kill + WRITES_AFTER_KILL,
                Duration::from_secs(60),
            )
            .await;
            let new_leader = cluster.wait_leader(READY_TIMEOUT).await;
            assert_ne!(new_leader, old_leader);

            eprintln!("--- phase 3: writer finishes; every acked write is on every survivor");
            let report = tokio::time::timeout(WRITER_TIMEOUT + Duration::from_secs(10), task)
                .await
                .expect("writer finished")
                .expect("writer did not panic");
            eprintln!(
                "writer: {} acked, {} failed/unknown attempts",
                report.acked.len(),
                report.failed_attempts
            );
            assert_eq!(
                report.acked.len(),
                TOTAL_WRITES,
                "a live majority acknowledges every write"
            );
            for member in cluster.live_members() {
                let data = read_all(cluster, member, false)
                    .await
                    .expect("linearizable read on survivor");
                for &i in &report.acked {
                    assert_eq!(
                        data.get(&key(i)),
                        Some(&value(i)),
                        "acked write {i} on m{member}"
                    );
                }
                assert_eq!(data.len(), TOTAL_WRITES);
            }
            t.record(
                "acked writes readable on survivors",
                (report.acked.len(), cluster.live_members().len()),
            );

            eprintln!("--- phase 4: restart m{old_leader}; it catches up");
            cluster.restart(old_leader);
            let last = report.acked.last().copied().expect("some write acked");
            let what = format!("restarted m{old_leader} to catch up");
            let data = eventually(&what, READY_TIMEOUT, async || {
                cluster.assert_running();
                match read_all(cluster, old_leader, true).await {
                    Ok(data) if data.get(&key(last)) == Some(&value(last)) => Ok(data),
                    other => Err(format!("{:?}", other.map(|d| d.len()))),
                }
            })
            .await;
            assert_eq!(data.len(), TOTAL_WRITES);
            t.record("restarted member caught up", true);
            cluster.wait_leader(READY_TIMEOUT).await;
            t
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_sigkill_keeps_acked_writes() {
    for_each_server(
        "single_member_sigkill_keeps_acked_writes",
        1,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let mut c = cluster.client().await;
            let base = current_revision(&mut c).await;
            for i in 0..50 {
                c.put(key(i), value(i), None).await.expect("put");
            }
            let before = c
                .get("dur/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            let before = Kv::all(before.kvs(), base);
            drop(c);

            eprintln!("--- phase 2: SIGKILL right after the last ack, restart");
            cluster.kill(0);
            cluster.restart_all().await;
            let mut c = cluster.client().await;
            let after = c
                .get("dur/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(
                after.header().unwrap().revision() - base,
                50,
                "revision survives"
            );
            assert_eq!(Kv::all(after.kvs(), base), before);
            t.record(
                "after sigkill",
                (before.len(), after.header().unwrap().revision() - base),
            );
            t
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_data_and_revision() {
    for_each_server(
        "full_restart_keeps_data_and_revision",
        3,
        async |cluster: &mut Cluster| {
            const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
            let mut t = Transcript::new();
            eprintln!("--- phase 1: write, overwrite, delete, compact");
            let mut c = cluster.client().await;
            let base = current_revision(&mut c).await;
            for i in 0..40 {
                c.put(key(i % 20), value(i), None).await.expect("put");
            }
            c.delete(key(0), None).await.expect("delete");
            c.compact(base + 10, None).await.expect("compact");
            let rev = current_revision(&mut c).await;
            assert_eq!(rev - base, 41);
            let before = c
                .get("dur/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            let before = Kv::all(before.kvs(), base);
            assert_eq!(before.len(), 19);
            drop(c);

            eprintln!("--- phase 2: SIGTERM every member, start them again on the same data");
            cluster.stop_all().await;
            assert!(cluster.live_members().is_empty());
            cluster.restart_all().await;

            eprintln!("--- phase 3: data, revision and compaction intact on every member");
            for member in 0..cluster.members().len() {
                let mut c = cluster.client_for(member).await;
                let after = c
                    .get("dur/", Some(GetOptions::new().with_prefix()))
                    .await
                    .expect("get");
                assert_eq!(
                    after.header().unwrap().revision(),
                    rev,
                    "revision on m{member}"
                );
                assert_eq!(Kv::all(after.kvs(), base), before, "data on m{member}");
                let old = c
                    .get(key(1), Some(GetOptions::new().with_revision(base + 5)))
                    .await;
                expect_grpc_error(old, "OutOfRange", COMPACTED);
            }
            let mut c = cluster.client().await;
            let put = c
                .put("dur/next", "n", None)
                .await
                .expect("put after restart");
            assert_eq!(
                put.header().unwrap().revision(),
                rev + 1,
                "revisions continue"
            );
            t.record("after restart", (&before, rev - base));
            t
        },
    )
    .await;
}
