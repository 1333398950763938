//! A member whose state-machine store fails a commit or a durable sync stops (it never
//! carries on: an fsync error is not retryable), the write that hit the fault is not
//! acknowledged by it, the other two members keep serving, no acknowledged write is lost,
//! and the failed member catches up again after a restart. Faults come from the storage
//! crate's fault-injecting engine, one plan per member.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_storage::{Fault, FaultSpec, Table};

/// Puts `count` keys `prefix/NNN` through member `via` (retrying what clients retry) and
/// records each acknowledged write.
async fn write_keys(
    cluster: &TestCluster,
    via: usize,
    prefix: &str,
    count: usize,
    acked: &mut BTreeMap<String, String>,
) {
    write_keys_with(cluster, via, prefix, count, acked, put_req).await
}

/// [`write_keys`] with the put request `request(key, value)` builds.
async fn write_keys_with(
    cluster: &TestCluster,
    via: usize,
    prefix: &str,
    count: usize,
    acked: &mut BTreeMap<String, String>,
    request: impl Fn(&str, &str) -> PutRequest,
) {
    let mut kv = cluster.kv(via);
    for n in 0..count {
        let (key, value) = (format!("{prefix}/{n:03}"), format!("v{n}"));
        put_req_retrying(&mut kv, request(&key, &value)).await;
        acked.insert(key, value);
    }
}

/// Every acknowledged write is there, read linearizably through member `i`.
async fn assert_acked_present(cluster: &TestCluster, i: usize, acked: &BTreeMap<String, String>) {
    let mut kv = cluster.kv(i);
    let what = format!("m{i} to serve every acknowledged write");
    eventually(&what, SETTLE_WAIT, async || {
        let resp = kv
            .range(range_req("\0", "\0"))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let got: BTreeMap<String, String> = pairs(&resp).into_iter().collect();
        match acked.iter().find(|(k, v)| got.get(*k) != Some(*v)) {
            None => Ok(()),
            Some((k, v)) => Err(format!("{k}={v} missing (got {:?})", got.get(k))),
        }
    })
    .await;
}

/// Waits for member `i` to stop on its own and checks it serves nothing any more.
async fn assert_member_stopped(cluster: &TestCluster, i: usize) -> String {
    let reason = tokio::time::timeout(SETTLE_WAIT, cluster.node(i).wait_fatal())
        .await
        .unwrap_or_else(|_| panic!("m{i} did not stop within {SETTLE_WAIT:?}"));
    tracing::info!(member = i, %reason, "member stopped on a fatal error");
    let mut kv = cluster.kv(i);
    let what = format!("m{i} to refuse requests");
    eventually(&what, SETTLE_WAIT, async || {
        let serializable = RangeRequest {
            serializable: true,
            ..range_req("\0", "\0")
        };
        match kv.range(serializable).await {
            Ok(_) => Err("stopped member still serves reads".to_string()),
            Err(_) => Ok(()),
        }
    })
    .await;
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_apply_commit_stops_the_leader_and_loses_no_acknowledged_write() {
    let (mut cluster, plans) = faulty_cluster().await;
    let leader = cluster.wait_for_leader().await;
    let mut acked = BTreeMap::new();

    tracing::info!("--- phase 1: acknowledged writes through the leader m{leader}");
    write_keys(&cluster, leader, "before", 20, &mut acked).await;

    tracing::info!("--- phase 2: the leader's next apply commit fails");
    plans[leader].arm(FaultSpec::once(Fault::CommitError));
    let hit = tokio::time::timeout(
        RPC_TIMEOUT + Duration::from_secs(1),
        cluster.kv(leader).put(put_req("hit", "unacknowledged")),
    )
    .await
    .expect("the write that hit the fault got no answer at all");
    match hit {
        Ok(resp) => panic!("the write that hit the fault was acknowledged: {resp:?}"),
        Err(s) => tracing::info!(code = ?s.code(), message = s.message(), "write refused"),
    }
    assert_eq!(plans[leader].fired(Fault::CommitError), 1);

    tracing::info!("--- phase 3: the leader stops instead of carrying on");
    let reason = assert_member_stopped(&cluster, leader).await;
    assert!(reason.contains("injected fault"), "{reason}");
    cluster.kill(leader).await;

    tracing::info!("--- phase 4: the other two elect a leader and keep serving");
    let survivor = cluster.wait_for_leader().await;
    assert_ne!(survivor, leader);
    write_keys(&cluster, survivor, "after", 20, &mut acked).await;
    for i in cluster.running() {
        assert_acked_present(&cluster, i, &acked).await;
    }
    assert_same_hash(&cluster).await;

    tracing::info!("--- phase 5: the failed member restarts (fault gone) and catches up");
    plans[leader].disarm_all();
    cluster.restart(leader).await;
    assert_acked_present(&cluster, leader, &acked).await;
    assert_same_hash(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_durable_sync_stops_a_follower_and_loses_no_acknowledged_write() {
    let (mut cluster, plans) = faulty_cluster().await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut acked = BTreeMap::new();

    tracing::info!("--- phase 1: acknowledged writes; then m{follower}'s next fsync fails");
    write_keys(&cluster, leader, "before", 20, &mut acked).await;
    plans[follower].arm(FaultSpec::once(Fault::SyncError));

    tracing::info!("--- phase 2: the periodic durable commit fails and the follower stops");
    let reason = assert_member_stopped(&cluster, follower).await;
    assert!(reason.contains("injected fault"), "{reason}");
    assert_eq!(plans[follower].fired(Fault::SyncError), 1);
    cluster.kill(follower).await;

    tracing::info!("--- phase 3: the other two keep serving");
    write_keys(&cluster, leader, "after", 20, &mut acked).await;
    for i in cluster.running() {
        assert_acked_present(&cluster, i, &acked).await;
    }
    assert_same_hash(&cluster).await;

    tracing::info!("--- phase 4: the failed member restarts (fault gone) and catches up");
    plans[follower].disarm_all();
    cluster.restart(follower).await;
    assert_acked_present(&cluster, follower, &acked).await;
    assert_same_hash(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_are_never_served_and_stop_the_member_that_applies_them() {
    let (mut cluster, plans) = faulty_cluster().await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut acked = BTreeMap::new();
    write_keys(&cluster, leader, "k", 10, &mut acked).await;
    assert_acked_present(&cluster, follower, &acked).await;

    tracing::info!("--- phase 1: every Kv read on m{follower} comes back with a bit flipped");
    plans[follower].arm(FaultSpec {
        table: Some(Table::Kv),
        times: u64::MAX,
        ..FaultSpec::once(Fault::FlipValueBit)
    });
    let serializable = RangeRequest {
        serializable: true,
        ..range_req("\0", "\0")
    };
    match cluster.kv(follower).range(serializable.clone()).await {
        Ok(resp) => panic!("corrupt data served: {:?}", pairs(&resp.into_inner())),
        Err(s) => {
            tracing::info!(code = ?s.code(), message = s.message(), "read refused");
            assert!(s.message().contains("corrupt"), "{}", s.message());
        }
    }
    assert!(plans[follower].fired(Fault::FlipValueBit) >= 1);

    tracing::info!("--- phase 2: the read path was at fault, not the data: reads work again");
    plans[follower].disarm_all();
    let resp = ok(
        "serializable range",
        cluster.kv(follower).range(serializable).await,
    );
    let got: BTreeMap<String, String> = pairs(&resp).into_iter().collect();
    assert_eq!(got, acked);

    tracing::info!("--- phase 3: apply on m{follower} reads a corrupt version: it stops");
    plans[follower].arm(FaultSpec {
        table: Some(Table::Kv),
        times: u64::MAX,
        ..FaultSpec::once(Fault::FlipValueBit)
    });
    // Overwrites asking for prev_kv make apply on every member read the previous versions.
    let with_prev_kv = |key: &str, value: &str| PutRequest {
        prev_kv: true,
        ..put_req(key, value)
    };
    write_keys_with(&cluster, leader, "k", 10, &mut acked, with_prev_kv).await;
    let reason = assert_member_stopped(&cluster, follower).await;
    assert!(reason.contains("corrupt"), "{reason}");
    cluster.kill(follower).await;

    tracing::info!("--- phase 4: restart without the fault; it catches up");
    plans[follower].disarm_all();
    cluster.restart(follower).await;
    for i in cluster.running() {
        assert_acked_present(&cluster, i, &acked).await;
    }
    assert_same_hash(&cluster).await;
    cluster.shutdown().await;
}
