//! Writes and linearizable reads through every member of a 3-member cluster: followers
//! forward writes to the leader, and a write acknowledged by any member is visible to a
//! linearizable read on every other member immediately afterwards (no polling), and on the
//! member that took it, to a serializable read too.

mod common;

use std::sync::Arc;

use common::*;
use keel_api::etcdserverpb::RangeRequest;
use keel_storage::{Fault, FaultSpec};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_linearizable_reads_work_through_every_member() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    tracing::info!("--- phase 1: each member takes writes (leader m{leader})");
    let mut last_rev = 1;
    for i in 0..cluster.len() {
        for n in 0..5 {
            let resp = put(
                &mut cluster.kv(i),
                &format!("via/m{i}/{n}"),
                &format!("{i}.{n}"),
            )
            .await;
            let h = resp.header.expect("put header");
            assert!(
                h.revision > last_rev,
                "revisions rise: {} after {last_rev}",
                h.revision
            );
            assert_eq!(h.member_id, cluster.member_id(i), "the answering member");
            last_rev = h.revision;
        }
    }
    assert_eq!(last_rev, 16, "15 writes after the empty store's revision 1");

    tracing::info!("--- phase 2: each member serves the same linearizable read");
    for i in 0..cluster.len() {
        let all = get(&mut cluster.kv(i), prefix_req("via/")).await;
        assert_eq!(all.count, 15, "m{i} sees every write");
        assert_eq!(rev(&all), last_rev, "m{i} is at the latest revision");
        for kv in &all.kvs {
            let key = text(&kv.key);
            let (m, n) = key["via/m".len()..].split_once('/').expect("key shape");
            assert_eq!(text(&kv.value), format!("{m}.{n}"));
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_by_one_member_is_read_by_every_other_at_once() {
    let cluster = TestCluster::start(3, &[]).await;
    tracing::info!("--- phase 1: write on one member, read right away on the others");
    let rounds = 30;
    for round in 0..rounds {
        let writer = round % cluster.len();
        let value = format!("round-{round}");
        let written = put(&mut cluster.kv(writer), "register", &value).await;
        for reader in (0..cluster.len()).filter(|&r| r != writer) {
            let read = get(&mut cluster.kv(reader), range_req("register", "")).await;
            let kv = read
                .kvs
                .first()
                .unwrap_or_else(|| panic!("m{reader}: no value"));
            assert_eq!(
                (text(&kv.value), kv.mod_revision),
                (value.clone(), rev(&written)),
                "round {round}: m{reader} missed the write acknowledged by m{writer}"
            );
            assert!(rev(&read) >= rev(&written));
        }
    }

    tracing::info!("--- phase 2: concurrent writers on every member, then reads everywhere");
    // Each member's writer puts its own keys; once all are acknowledged, every member must
    // return all of them, with the same revision, on a linearizable read.
    let writes_each = 20;
    let start = Arc::new(Barrier::new(cluster.len()));
    let mut tasks = Vec::new();
    for i in 0..cluster.len() {
        let mut kv = cluster.kv(i);
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut revs = Vec::new();
            for n in 0..writes_each {
                revs.push(rev(&put(&mut kv, &format!("c/{i}/{n:02}"), "v").await));
            }
            revs
        }));
    }
    let mut all_revs = Vec::new();
    for task in tasks {
        let revs = task.await.expect("writer task");
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions rise: {revs:?}"
        );
        all_revs.extend(revs);
    }
    all_revs.sort_unstable();
    all_revs.dedup();
    assert_eq!(
        all_revs.len(),
        cluster.len() * writes_each,
        "every write has its own revision"
    );
    let highest = *all_revs.last().expect("revisions");
    for i in 0..cluster.len() {
        let read = get(
            &mut cluster.kv(i),
            RangeRequest {
                count_only: true,
                ..prefix_req("c/")
            },
        )
        .await;
        assert_eq!(
            read.count as usize,
            cluster.len() * writes_each,
            "m{i} count"
        );
        assert_eq!(rev(&read), highest, "m{i} revision");
    }
    cluster.shutdown().await;
}

/// Values near the 1.5 MiB request limit replicate to followers within one client timeout,
/// whichever member takes the write. (A Raft append carrying such an entry must not be cut
/// off by a deadline shorter than it takes to send and persist it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_replicate_through_every_member() {
    let cluster = TestCluster::start(3, &[]).await;
    let value = "L".repeat(1024 * 1024 + 512 * 1024 - 64);
    for i in 0..cluster.len() {
        tracing::info!("--- phase {}: a 1.5 MiB put through m{i}", i + 1);
        let started = std::time::Instant::now();
        let key = format!("large/{i}");
        let written = ok(
            &format!("1.5 MiB put through m{i}"),
            cluster.kv(i).put(put_req(&key, &value)).await,
        );
        tracing::info!(elapsed_ms = started.elapsed().as_millis(), "acknowledged");
        for reader in 0..cluster.len() {
            let read = get(&mut cluster.kv(reader), range_req(&key, "")).await;
            assert_eq!(read.kvs.len(), 1, "m{reader} has {key}");
            assert_eq!(read.kvs[0].value.len(), value.len());
            assert_eq!(read.kvs[0].mod_revision, rev(&written));
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_answered_after_that_follower_applied_it() {
    let (cluster, plans) = faulty_cluster().await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    tracing::info!("--- phase 1: m{follower} applies late; it takes writes and reads them back");
    plans[follower].arm(FaultSpec::always(Fault::SlowCommit));
    let mut kv = cluster.kv(follower);
    for n in 0..3 {
        let (key, value) = (format!("ryw/{n}"), format!("v{n}"));
        put(&mut kv, &key, &value).await;
        // Serializable: the follower's own store as it is, with no ReadIndex to wait behind.
        let read = get(
            &mut kv,
            RangeRequest {
                serializable: true,
                ..range_req(&key, "")
            },
        )
        .await;
        assert_eq!(
            pairs(&read),
            vec![(key.clone(), value)],
            "m{follower} answered the put before it applied it"
        );
    }
    assert!(
        plans[follower].fired(Fault::SlowCommit) >= 3,
        "m{follower} applied late"
    );
    plans[follower].disarm_all();
    cluster.shutdown().await;
}
