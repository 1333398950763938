//! Regression scenarios named after etcd correctness bugs (the table in docs/robustness.md),
//! run through the public gRPC API against in-process members, or against real `keel`
//! processes when a scenario must cut peer links while client streams stay open (15271).
//! Each would have caught its etcd bug had keel made the same mistake; the watch scenarios
//! check every watcher with keel-sim's watch validator against the exact list of writes the
//! test made.

mod common;
// The process harness (real `keel` processes, per-link proxies); this binary uses a part.
#[allow(dead_code)]
mod process;

use std::time::{Duration, Instant};

use common::exact_writer::ExactWriter;
use common::watch_streams::{open_stream, spawn_reader, wait_watchers, Demux};
use common::*;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    CompactionRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest,
};
use keel_sim::watch::{validate_watch, WatchEvent, WatchResponse, WatchSpec};
use process::cluster::ProcCluster;
use tonic::transport::Channel;

const PREFIX: &str = "bug/";
/// Longest a scenario's watchers may take to drain after the last write.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

fn prefix_create(start_revision: i64, prev_kv: bool, progress_notify: bool) -> WatchCreateRequest {
    let spec = WatchSpec::prefix(PREFIX.as_bytes(), start_revision);
    WatchCreateRequest {
        key: spec.key,
        range_end: spec.range_end,
        start_revision,
        prev_kv,
        progress_notify,
        ..Default::default()
    }
}

/// Sequential writes under `PREFIX` on a few keys: puts, and deletes when `with_deletes`
/// (every third write deletes a key that exists). Returns the exact event list.
async fn write_churn(
    kv: &mut KvClient<Channel>,
    writes: usize,
    with_deletes: bool,
) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    let mut live = [false; 3];
    for i in 0..writes {
        let k = i % live.len();
        let key = format!("{PREFIX}{k}");
        if with_deletes && i % 3 == 2 && live[k] {
            let resp = ok("delete", kv.delete_range(delete_req(&key, "")).await);
            assert_eq!(resp.deleted, 1);
            events.push(WatchEvent::delete(key.as_bytes(), rev(&resp)));
            live[k] = false;
        } else {
            let value = format!("v{i}");
            let resp = ok("put", kv.put(put_req(&key, &value)).await);
            events.push(WatchEvent::put(
                key.as_bytes(),
                value.as_bytes(),
                rev(&resp),
            ));
            live[k] = true;
        }
    }
    events
}

/// Compacts at the newest revision every `period` until `stop` flips; returns how many
/// compactions succeeded.
async fn compact_loop(
    mut kv: KvClient<Channel>,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let mut done = 0;
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return done,
            _ = ticker.tick() => {}
        }
        let Ok(resp) = kv.range(range_req(PREFIX, "")).await else {
            continue;
        };
        let revision = rev(&resp.into_inner());
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        if kv.compact(req).await.is_ok() {
            done += 1;
        }
    }
}

/// One member; `watchers` watchers on one stream from past revisions, read slowly while a
/// writer churns and a compactor compacts at the newest revision every 100 ms. Every
/// watcher must deliver exactly the start of its events, in order, and may stop only with
/// a cancel whose compact revision lies above everything it skipped.
async fn slow_watchers_under_compaction(watchers: usize, with_deletes: bool, prev_kv: bool) {
    let cluster = TestCluster::start(1, &[]).await;
    let mut kv = cluster.kv(0);
    // Some history first, so watchers start in the past and have to catch up.
    let mut committed = write_churn(&mut kv, 30, with_deletes).await;
    // Half start in the past (catching up from history), half at the current revision.
    let starts: Vec<i64> = (0..watchers)
        .map(|i| if i % 2 == 0 { 1 + (i as i64 % 30) } else { 0 })
        .collect();
    let creates = starts
        .iter()
        .map(|s| prefix_create(*s, prev_kv, false))
        .collect();
    let (_tx, mut stream) = open_stream(cluster.client_url(0), creates).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let compactor = tokio::spawn(compact_loop(
        cluster.kv(0),
        Duration::from_millis(100),
        stop_rx,
    ));
    let writer = {
        let mut kv = cluster.kv(0);
        tokio::spawn(async move { write_churn(&mut kv, 300, with_deletes).await })
    };
    let mut demux = Demux::default();
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut final_revision = i64::MAX;
    let mut writer = Some(writer);
    while !demux.done(watchers, final_revision) {
        assert!(Instant::now() < deadline, "watchers did not drain in time");
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            let more = writer.take().expect("writer").await.expect("writer task");
            final_revision = more.last().expect("writes").revision;
            committed.extend(more);
        }
        let message = tokio::time::timeout(RPC_TIMEOUT, stream.message()).await;
        let response = message
            .expect("a watch response in time")
            .expect("watch stream")
            .expect("stream open");
        demux.push(&response);
        // The slow consumer: while writes go on, take one message per millisecond.
        if writer.is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop_tx.send_replace(true);
    let compactions = compactor.await.expect("compactor");
    assert!(compactions > 0, "the scenario must compact while watching");
    let mut canceled = 0;
    for (i, (id, responses)) in demux.by_watcher.iter().enumerate() {
        let spec = WatchSpec::prefix(PREFIX.as_bytes(), starts[i]);
        if let Err(v) = validate_watch(&committed, &spec, responses) {
            panic!("watcher {id}: {v}");
        }
        canceled += usize::from(responses.iter().any(|r| r.canceled));
    }
    tracing::info!(watchers, canceled, compactions, "scenario done");
    assert!(
        canceled > 0,
        "no watcher fell behind a compaction: the scenario needs slower readers"
    );
    cluster.shutdown().await;
}

/// etcd 17529: watchers starved on a shared stream fell behind a compaction and silently
/// skipped events instead of being cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_17529_starved_stream_with_compaction() {
    init_tracing();
    slow_watchers_under_compaction(200, false, true).await;
}

/// etcd 18089: a watch lost the delete event at the compaction revision (the tombstone there
/// was compacted away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_18089_compact_on_delete_watch_reliable() {
    init_tracing();
    slow_watchers_under_compaction(200, true, true).await;
}

/// etcd 18667: a txn whose range read a compacted revision failed on the member serving the
/// client but applied on the others, so the members diverged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_18667_txn_range_at_compacted_revision_same_everywhere() {
    init_tracing();
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut kv = cluster.kv(leader);
    for i in 0..5 {
        put(&mut kv, &format!("{PREFIX}seed"), &format!("{i}")).await;
    }
    let compact_at = rev(&put(&mut kv, &format!("{PREFIX}seed"), "last").await);
    let req = CompactionRequest {
        revision: compact_at,
        physical: true,
    };
    ok("compact", kv.compact(req).await);
    for (via, key) in [(leader, "k-leader"), (follower, "k-follower")] {
        let key = format!("{PREFIX}{key}");
        let txn = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp {
                    request: Some(Op::RequestPut(put_req(&key, "must not exist"))),
                },
                RequestOp {
                    request: Some(Op::RequestRange(RangeRequest {
                        key: format!("{PREFIX}seed").into_bytes(),
                        revision: compact_at - 1,
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        };
        let result = cluster.kv(via).txn(txn).await;
        assert_etcd_error(
            "txn reading a compacted revision",
            result,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
    // A later write every member must apply, then each member's own (serializable) view.
    let marker = rev(&put(&mut kv, &format!("{PREFIX}marker"), "m").await);
    for i in 0..cluster.len() {
        let mut kv = cluster.kv(i);
        let what = format!("m{i} to apply revision {marker}");
        let resp = eventually(&what, SETTLE_WAIT, async || {
            let mut req = prefix_req(PREFIX);
            req.serializable = true;
            let resp = kv.range(req).await.map_err(|s| s.to_string())?.into_inner();
            if rev(&resp) >= marker {
                Ok(resp)
            } else {
                Err(format!("at revision {}", rev(&resp)))
            }
        })
        .await;
        let keys = keys(&resp);
        assert!(
            keys.iter().all(|k| !k.starts_with(&format!("{PREFIX}k-"))),
            "m{i} applied part of a failed txn: {keys:?}"
        );
    }
    assert_hash_kv_agrees(&cluster, marker).await;
    cluster.shutdown().await;
}

/// etcd 20221: a watch with a future start revision received older events or progress
/// notifications (seen by clients switching members). Here the watch sits on a follower,
/// asks for progress notifications and sends progress requests while the leader writes
/// past its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_20221_future_watch_across_members() {
    init_tracing();
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut kv = cluster.kv(leader);
    let now = rev(&put(&mut kv, &format!("{PREFIX}before"), "0").await);
    let start = now + 20;
    let (tx, mut stream) = open_stream(
        cluster.client_url(follower),
        vec![prefix_create(start, false, true)],
    )
    .await;
    let writer = tokio::spawn(async move {
        let mut events = Vec::new();
        for i in 0..40 {
            let key = format!("{PREFIX}{}", i % 4);
            let resp = put(&mut kv, &key, &format!("{i}")).await;
            events.push(WatchEvent::put(
                key.as_bytes(),
                format!("{i}").as_bytes(),
                rev(&resp),
            ));
            // Write pacing, so progress requests land between writes; not a synchroniser.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        events
    });
    let mut responses = Vec::new();
    let mut progress_tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut committed: Option<Vec<WatchEvent>> = None;
    let mut writer = Some(writer);
    loop {
        assert!(
            Instant::now() < deadline,
            "the watch did not reach the last write"
        );
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            committed = Some(writer.take().expect("writer").await.expect("writer task"));
        }
        if let Some(last) = committed.as_ref().and_then(|c| c.last()) {
            let reached = responses
                .iter()
                .any(|r: &WatchResponse| r.events.iter().any(|e| e.revision >= last.revision));
            if reached {
                break;
            }
        }
        tokio::select! {
            _ = progress_tick.tick() => {
                let req = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                tx.send(req).await.expect("progress request");
            }
            message = tokio::time::timeout(RPC_TIMEOUT, stream.message()) => {
                let r = message.expect("a response in time").expect("stream").expect("open");
                responses.push(to_sim(&r));
            }
        }
    }
    let committed = committed.expect("writes");
    for r in &responses[1..] {
        for e in &r.events {
            assert!(
                e.revision >= start,
                "event below the start revision {start}: {e:?}"
            );
        }
        if r.events.is_empty() && !r.canceled {
            assert!(
                r.header_revision >= start - 1,
                "progress at {} below the start revision {start}",
                r.header_revision
            );
        }
    }
    let spec = WatchSpec::prefix(PREFIX.as_bytes(), start);
    if let Err(v) = validate_watch(&committed, &spec, &responses) {
        panic!("{v}");
    }
    cluster.shutdown().await;
}

/// etcd 15220: a requested progress notification reported revision R before the stream had
/// delivered the events up to R. Watchers start in the past (catching up from history)
/// while progress requests arrive every 20 ms and a writer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_15220_progress_requests_under_catch_up() {
    init_tracing();
    let cluster = TestCluster::start(1, &[]).await;
    let mut kv = cluster.kv(0);
    let mut committed = write_churn(&mut kv, 200, true).await;
    let watchers = 10;
    let starts: Vec<i64> = (0..watchers).map(|i| 1 + 20 * i as i64).collect();
    let creates = starts
        .iter()
        .map(|s| prefix_create(*s, true, false))
        .collect();
    let (tx, mut stream) = open_stream(cluster.client_url(0), creates).await;
    let writer = {
        let mut kv = cluster.kv(0);
        tokio::spawn(async move { write_churn(&mut kv, 100, true).await })
    };
    let mut demux = Demux::default();
    let mut progress_tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut final_revision = i64::MAX;
    let mut writer = Some(writer);
    let mut progress_seen = 0;
    while !demux.done(watchers, final_revision) {
        assert!(Instant::now() < deadline, "watchers did not drain in time");
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            let more = writer.take().expect("writer").await.expect("writer task");
            final_revision = more.last().expect("writes").revision;
            committed.extend(more);
        }
        tokio::select! {
            _ = progress_tick.tick() => {
                let req = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                tx.send(req).await.expect("progress request");
            }
            message = tokio::time::timeout(RPC_TIMEOUT, stream.message()) => {
                let r = message.expect("a response in time").expect("stream").expect("open");
                progress_seen += usize::from(r.watch_id == -1);
                demux.push(&r);
            }
        }
    }
    assert!(progress_seen > 0, "no progress request was ever answered");
    for (i, responses) in demux.by_watcher.values().enumerate() {
        let spec = WatchSpec::prefix(PREFIX.as_bytes(), starts[i]);
        if let Err(v) = validate_watch(&committed, &spec, responses) {
            panic!("watcher {i}: {v}");
        }
    }
    cluster.shutdown().await;
}

/// Writes `count` churn writes through `clients`, exactly once each.
async fn exact_churn(writer: &mut ExactWriter, clients: &[KvClient<Channel>], count: usize) {
    for _ in 0..count {
        let write = writer.churn(PREFIX, 3, writer.writes());
        writer.write(clients, write, SETTLE_WAIT).await;
    }
}

/// Waits until member `i` of `cluster` has applied `revision` (a serializable read).
async fn wait_applied(cluster: &ProcCluster, i: usize, revision: i64) {
    let mut kv = cluster.kv(i);
    let what = format!("m{i} to apply revision {revision}");
    eventually(&what, SETTLE_WAIT, async || {
        let req = RangeRequest {
            serializable: true,
            ..range_req(PREFIX, "")
        };
        let resp = kv.range(req).await.map_err(|s| s.to_string())?.into_inner();
        match rev(&resp) {
            r if r >= revision => Ok(()),
            r => Err(format!("at revision {r}")),
        }
    })
    .await;
}

/// etcd 15271: after a partition, a member installed the leader's snapshot and its open
/// watches replayed events they had already delivered (the watch went back in time).
///
/// Three real processes, a snapshot every 50 entries (the leader keeps 50 behind it). A
/// follower holds watch streams (from now, from the past, from a future revision) while its
/// peer links are cut and 300 writes go on, so the leader's log moves past it; it is healed
/// while writes continue, must install a snapshot (its log says so), and every watcher,
/// including ones opened while it was cut off, must deliver exactly the committed events
/// from its start: ordered, unique, reliable, atomic (keel-sim's validator). Every write is
/// exactly-once ([`ExactWriter`]), so the truth is the list of acknowledged writes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_15271_watch_on_member_installing_snapshot() {
    init_tracing();
    let mut cluster = ProcCluster::start_with_args(3, &["--snapshot-count", "50"]).await;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (follower, other) = (others[0], others[1]);
    let majority = [cluster.kv(leader), cluster.kv(other)];
    let mut writer = ExactWriter::new(&format!("{PREFIX}counter"));

    tracing::info!("--- phase 1: 20 writes; watches on follower m{follower}");
    exact_churn(&mut writer, &majority, 20).await;
    let now = writer.last_revision();
    wait_applied(&cluster, follower, now).await;
    let starts_a = [0, 2, now + 150];
    let creates = starts_a.iter().map(|&s| prefix_create(s, true, false));
    let (_tx_a, stream_a) = open_stream(cluster.client_url(follower), creates.collect()).await;
    let stream_a = spawn_reader(stream_a);
    wait_watchers(
        "stream A created",
        DRAIN_WAIT,
        &stream_a,
        starts_a.len(),
        None,
    )
    .await;

    tracing::info!("--- phase 2: cut m{follower} off; watches opened on it while cut off");
    cluster.isolate(follower);
    let starts_b = [5, now + 40];
    let creates = starts_b.iter().map(|&s| prefix_create(s, false, false));
    let (_tx_b, stream_b) = open_stream(cluster.client_url(follower), creates.collect()).await;
    let stream_b = spawn_reader(stream_b);
    wait_watchers(
        "stream B created",
        DRAIN_WAIT,
        &stream_b,
        starts_b.len(),
        None,
    )
    .await;

    tracing::info!("--- phase 3: 300 writes without m{follower}: the leader purges its log");
    exact_churn(&mut writer, &majority, 300).await;

    tracing::info!("--- phase 4: heal while writing on, through every member");
    cluster.heal().await;
    let everyone: Vec<_> = (0..3).map(|i| cluster.kv(i)).collect();
    exact_churn(&mut writer, &everyone, 100).await;
    let last = writer.last_revision();
    wait_applied(&cluster, follower, last).await;
    let log = cluster.log_tail(follower, 256 * 1024 * 1024);
    assert!(
        log.contains("installed a snapshot from the leader"),
        "m{follower} caught up without installing a snapshot: the scenario lost its trigger"
    );

    tracing::info!("--- phase 5: every watcher delivers the exact committed history once");
    wait_watchers(
        "stream A to drain",
        DRAIN_WAIT,
        &stream_a,
        starts_a.len(),
        Some(last),
    )
    .await;
    wait_watchers(
        "stream B to drain",
        DRAIN_WAIT,
        &stream_b,
        starts_b.len(),
        Some(last),
    )
    .await;
    for (name, collected, starts) in [
        ("A", &stream_a, &starts_a[..]),
        ("B", &stream_b, &starts_b[..]),
    ] {
        let c = collected.lock().expect("collected");
        for (i, responses) in c.demux.by_watcher.values().enumerate() {
            let spec = WatchSpec::prefix(PREFIX.as_bytes(), starts[i]);
            match validate_watch(&writer.events, &spec, responses) {
                Ok(report) => tracing::info!(stream = name, start = starts[i], ?report, "valid"),
                Err(v) => panic!("stream {name}, watcher from {}: {v}", starts[i]),
            }
            assert!(
                !responses.iter().any(|r| r.canceled),
                "stream {name}, watcher from {} was cancelled (nothing is compacted)",
                starts[i]
            );
        }
    }
    tracing::info!(
        writes = writer.writes(),
        failures = writer.failures,
        "writes"
    );
    process::checks::assert_hash_kv_agrees(&cluster, last).await;
}
