//! Crashes, restarts and catch-up: the leader crashes during a stream of writes, every member
//! stops and restarts, every member crashes and restarts, and a follower that missed more
//! than the log keeps catches up from a snapshot.
//!
//! `Node::kill` is the in-process crash (tasks aborted, no final sync); real SIGKILL of a
//! process is covered by the process-level compat suite.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::RangeRequest;
use tonic::transport::Channel;

/// One acknowledged write: what a client was told succeeded.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
}

/// Sequential puts of `w/0000..` spread over `clients`; a failed put moves on to the next
/// member and tries again (bounded by `deadline`). Returns every acknowledged write, in order.
async fn write_stream(
    clients: Vec<KvClient<Channel>>,
    count: usize,
    progress: Arc<AtomicUsize>,
    deadline: Instant,
) -> Result<Vec<Ack>, String> {
    let mut acks = Vec::with_capacity(count);
    let mut failures = 0usize;
    for n in 0..count {
        let (key, value) = (format!("w/{n:04}"), format!("v{n}"));
        let mut attempt = 0;
        loop {
            let mut kv = clients[(n + attempt) % clients.len()].clone();
            match kv.put(put_req(&key, &value)).await {
                Ok(resp) => {
                    let revision = rev(&resp.into_inner());
                    acks.push(Ack {
                        key,
                        value,
                        revision,
                    });
                    progress.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(status) => {
                    failures += 1;
                    attempt += 1;
                    if Instant::now() > deadline {
                        return Err(format!(
                            "gave up on {key} after {attempt} attempts ({} acknowledged, last \
                             error {:?} {})",
                            acks.len(),
                            status.code(),
                            status.message()
                        ));
                    }
                    // Back off a little before trying the next member (not synchronisation:
                    // the loop is bounded by the deadline and the outcome is checked).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    tracing::info!(failures, "write stream finished");
    Ok(acks)
}

/// `(revision, key -> value)` of every key under `prefix`, read on member `i`.
async fn snapshot_of(
    cluster: &TestCluster,
    i: usize,
    prefix: &str,
    serializable: bool,
) -> (i64, BTreeMap<String, String>) {
    let req = RangeRequest {
        serializable,
        ..prefix_req(prefix)
    };
    let resp = get(&mut cluster.kv(i), req).await;
    (rev(&resp), pairs(&resp).into_iter().collect())
}

/// Waits until member `i`'s own store (a serializable read) holds exactly `want` under
/// `prefix` at revision `revision`.
async fn wait_caught_up(
    cluster: &TestCluster,
    i: usize,
    prefix: &str,
    want: &BTreeMap<String, String>,
    revision: i64,
) {
    eventually(
        &format!("m{i} to catch up to revision {revision}"),
        SETTLE_WAIT,
        async || {
            let mut kv = cluster.kv(i);
            let req = RangeRequest {
                serializable: true,
                ..prefix_req(prefix)
            };
            let resp = kv.range(req).await.map_err(|s| s.message().to_string())?;
            let resp = resp.into_inner();
            let got: BTreeMap<String, String> = pairs(&resp).into_iter().collect();
            if rev(&resp) == revision && got == *want {
                Ok(())
            } else {
                Err(format!(
                    "at revision {} with {} keys",
                    rev(&resp),
                    got.len()
                ))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_during_writes_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let old_leader = cluster.wait_for_leader().await;
    let old_leader_id = cluster.member_id(old_leader);

    tracing::info!("--- phase 1: a writer streams 300 puts over every member");
    let count = 300;
    let progress = Arc::new(AtomicUsize::new(0));
    let clients = (0..cluster.len()).map(|i| cluster.kv(i)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let writer = tokio::spawn(write_stream(clients, count, progress.clone(), deadline));
    eventually(
        "100 acknowledged writes",
        SETTLE_WAIT,
        async || match progress.load(Ordering::SeqCst) {
            n if n >= 100 => Ok(()),
            n => Err(format!("{n} acknowledged")),
        },
    )
    .await;

    tracing::info!("--- phase 2: crash the leader m{old_leader} mid-stream");
    cluster.kill(old_leader).await;
    let at_crash = progress.load(Ordering::SeqCst);
    assert!(
        at_crash < count,
        "the crash must land mid-stream ({at_crash} of {count})"
    );

    tracing::info!("--- phase 3: the survivors elect a new leader");
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    let status = cluster.node(new_leader).server.raft.status();
    assert_ne!(status.leader, Some(old_leader_id));

    tracing::info!("--- phase 4: the stream completes");
    let acks = tokio::time::timeout(Duration::from_secs(90), writer)
        .await
        .expect("writer finishes before its deadline")
        .expect("writer task")
        .unwrap_or_else(|e| panic!("writer: {e}"));
    assert_eq!(
        acks.len(),
        count,
        "the 2 survivors keep a quorum: every write lands"
    );
    assert!(
        acks.windows(2).all(|w| w[0].revision < w[1].revision),
        "sequential writes were acknowledged at rising revisions"
    );

    tracing::info!("--- phase 5: every acknowledged write is on every survivor");
    let want: BTreeMap<String, String> = acks
        .iter()
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect();
    let mut revisions = Vec::new();
    for i in cluster.running() {
        let (revision, got) = snapshot_of(&cluster, i, "w/", false).await;
        let missing: Vec<&Ack> = acks
            .iter()
            .filter(|a| got.get(&a.key) != Some(&a.value))
            .collect();
        assert!(
            missing.is_empty(),
            "m{i} lost acknowledged writes: {missing:?}"
        );
        assert_eq!(got.len(), count, "m{i} has no extra keys");
        revisions.push(revision);
    }
    let revision = revisions[0];
    assert!(
        revisions.iter().all(|r| *r == revision),
        "survivors at {revisions:?}"
    );
    assert!(revision >= acks[count - 1].revision);

    tracing::info!("--- phase 6: restart m{old_leader} on its old ports; it catches up");
    cluster.restart(old_leader).await;
    wait_caught_up(&cluster, old_leader, "w/", &want, revision).await;

    tracing::info!("--- phase 7: the restarted member serves writes and linearizable reads");
    cluster.wait_for_leader().await;
    let resp = put(&mut cluster.kv(old_leader), "after/restart", "ok").await;
    assert_eq!(rev(&resp), revision + 1);
    for i in cluster.running() {
        let read = get(&mut cluster.kv(i), range_req("after/restart", "")).await;
        assert_eq!(values(&read), ["ok"], "m{i}");
    }
    assert_same_hash(&cluster).await;
    cluster.shutdown().await;
}

/// Writes a mix of puts, a txn and deletes; returns the linearizable state afterwards.
async fn write_mixed(cluster: &TestCluster) -> (i64, BTreeMap<String, String>) {
    for n in 0..30 {
        let via = n % cluster.len();
        put(&mut cluster.kv(via), &format!("d/{n:02}"), &format!("v{n}")).await;
    }
    let mut kv = cluster.kv(0);
    ok(
        "txn",
        kv.txn(keel_api::etcdserverpb::TxnRequest {
            compare: vec![],
            success: vec![op_put("d/txn1", "a"), op_put("d/txn2", "b")],
            failure: vec![],
        })
        .await,
    );
    ok("delete", kv.delete_range(delete_req("d/00", "d/05")).await);
    put(&mut kv, "d/10", "overwritten").await;
    snapshot_of(cluster, 0, "d/", false).await
}

async fn assert_state_everywhere(
    cluster: &TestCluster,
    want: &BTreeMap<String, String>,
    revision: i64,
) {
    for i in cluster.running() {
        let (got_rev, got) = snapshot_of(cluster, i, "d/", false).await;
        assert_eq!(got, *want, "m{i} data after restart");
        assert_eq!(got_rev, revision, "m{i} revision after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_and_restart_of_three_members_keeps_data_and_revision() {
    let mut cluster = TestCluster::start(3, &[]).await;
    tracing::info!("--- phase 1: write");
    let (revision, want) = write_mixed(&cluster).await;
    assert_eq!(
        revision, 34,
        "30 puts, 1 txn, 1 delete, 1 put after revision 1"
    );

    tracing::info!("--- phase 2: stop every member");
    cluster.stop_all().await;

    tracing::info!("--- phase 3: start every member again with the same flags");
    cluster.restart_all().await;
    cluster.wait_for_leader().await;
    assert_state_everywhere(&cluster, &want, revision).await;

    tracing::info!("--- phase 4: the next write continues the revision sequence");
    let next = put(&mut cluster.kv(1), "d/next", "x").await;
    assert_eq!(rev(&next), revision + 1);
    assert_same_hash(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_restart_of_one_member_keeps_data_and_revision() {
    let mut cluster = TestCluster::start(1, &[]).await;
    tracing::info!("--- phase 1: write");
    let (revision, want) = write_mixed(&cluster).await;

    for round in 0..2 {
        tracing::info!("--- phase {}: stop and start again", round + 2);
        cluster.stop(0).await;
        cluster.restart(0).await;
        cluster.wait_for_leader().await;
        assert_state_everywhere(&cluster, &want, revision).await;
    }
    let next = put(&mut cluster.kv(0), "d/next", "x").await;
    assert_eq!(rev(&next), revision + 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_crashing_at_once_keeps_acknowledged_writes() {
    let mut cluster = TestCluster::start(3, &[]).await;
    tracing::info!("--- phase 1: write");
    let (revision, want) = write_mixed(&cluster).await;

    tracing::info!("--- phase 2: crash every member (no final sync)");
    cluster.kill_all().await;

    tracing::info!("--- phase 3: restart; the Raft log replays what the store had not synced");
    cluster.restart_all().await;
    cluster.wait_for_leader().await;
    assert_state_everywhere(&cluster, &want, revision).await;
    let next = put(&mut cluster.kv(2), "d/next", "x").await;
    assert_eq!(rev(&next), revision + 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_after_the_leader_compacted_its_log() {
    // A snapshot every 50 entries, and 50 entries kept behind it: 300 writes while the
    // follower is down leave its next entry purged, so only a snapshot can catch it up.
    let mut cluster = TestCluster::start(3, &["--snapshot-count", "50"]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let other = cluster.followers(leader)[1];

    tracing::info!("--- phase 1: 20 writes every member has");
    for n in 0..20 {
        put(&mut cluster.kv(n % 3), &format!("s/{n:04}"), "before").await;
    }
    let (_, before) = snapshot_of(&cluster, follower, "s/", false).await;
    assert_eq!(before.len(), 20, "m{follower} applied the first writes");

    tracing::info!("--- phase 2: stop follower m{follower}; 300 writes go on without it");
    cluster.stop(follower).await;
    for n in 20..320 {
        let via = if n % 2 == 0 { leader } else { other };
        put_retrying(&mut cluster.kv(via), &format!("s/{n:04}"), &format!("v{n}")).await;
    }
    ok(
        "overwrite a key the follower has",
        cluster.kv(leader).put(put_req("s/0000", "after")).await,
    );
    let (revision, want) = snapshot_of(&cluster, leader, "s/", false).await;
    assert_eq!(want.len(), 320);

    tracing::info!("--- phase 3: restart m{follower}; it catches up");
    cluster.restart(follower).await;
    wait_caught_up(&cluster, follower, "s/", &want, revision).await;
    let history = get(
        &mut cluster.kv(follower),
        RangeRequest {
            serializable: true,
            revision: revision - 1,
            ..range_req("s/0000", "")
        },
    )
    .await;
    assert_eq!(
        values(&history),
        ["before"],
        "the snapshot carries history, not just latest"
    );

    tracing::info!("--- phase 4: it then replicates normally and serves linearizable reads");
    for n in 0..10 {
        put(&mut cluster.kv(follower), &format!("s/after/{n}"), "x").await;
    }
    let (after_rev, after) = snapshot_of(&cluster, follower, "s/", false).await;
    assert_eq!(after.len(), 330);
    assert_eq!(after_rev, revision + 10);
    assert_same_hash(&cluster).await;
    cluster.shutdown().await;
}

/// A crashed process holds nothing: the next incarnation starts on the same data directory
/// at once. `Node::kill` must leave the member in that state when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_restarts_at_once_on_its_data_directory() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    put(&mut cluster.kv(follower), "k", "v").await;

    tracing::info!("--- phase 1: crash follower m{follower} and restart it in one attempt");
    cluster.kill(follower).await;
    cluster.restart_at_once(follower).await;
    let read = get(&mut cluster.kv(follower), range_req("k", "")).await;
    assert_eq!(values(&read), ["v"]);

    tracing::info!("--- phase 2: the same for the leader m{leader}");
    cluster.kill(leader).await;
    cluster.restart_at_once(leader).await;
    cluster.wait_for_leader().await;
    let read = get(&mut cluster.kv(leader), range_req("k", "")).await;
    assert_eq!(values(&read), ["v"]);
    cluster.shutdown().await;
}
