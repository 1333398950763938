//! Leases through the public gRPC API: expiry, keepalive, revoke, and a lease's remaining
//! TTL surviving a leader crash.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, get, init_tracing, prefix_req, put_req, TestCluster};
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

async fn lease_client(cluster: &TestCluster, i: usize) -> LeaseClient<Channel> {
    let channel = Endpoint::from_shared(cluster.client_url(i))
        .expect("url")
        .connect_lazy();
    LeaseClient::new(channel)
}

async fn grant(lc: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    let resp = lc
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(resp.id > 0, "server-chosen ids are positive");
    assert_eq!(resp.ttl, ttl);
    resp.id
}

async fn ttl_of(lc: &mut LeaseClient<Channel>, id: i64) -> (i64, Vec<Vec<u8>>) {
    let resp = lc
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    (resp.ttl, resp.keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_keepalive_and_revoke_on_one_member() {
    init_tracing();
    let cluster = TestCluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let mut lc = lease_client(&cluster, 0).await;
    let mut kv = cluster.kv(0);

    tracing::info!("--- phase 1: a put with an unknown lease is rejected");
    let err = kv
        .put(PutRequest {
            lease: 12345,
            ..put_req("x", "1")
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    tracing::info!("--- phase 2: keys attached to an expiring lease disappear after its TTL");
    let short = grant(&mut lc, 2).await;
    kv.put(PutRequest {
        lease: short,
        ..put_req("exp/a", "1")
    })
    .await
    .expect("put");
    kv.put(PutRequest {
        lease: short,
        ..put_req("exp/b", "2")
    })
    .await
    .expect("put");
    let (ttl, keys) = ttl_of(&mut lc, short).await;
    assert!((1..=2).contains(&ttl), "ttl {ttl}");
    assert_eq!(keys, vec![b"exp/a".to_vec(), b"exp/b".to_vec()]);
    let granted_at = Instant::now();
    eventually("expired keys are gone", WAIT, async || {
        let resp = get(&mut kv, prefix_req("exp/")).await;
        if resp.kvs.is_empty() {
            Ok(())
        } else {
            Err(format!("{} keys left", resp.kvs.len()))
        }
    })
    .await;
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1500),
        "expired too early"
    );
    assert_eq!(
        ttl_of(&mut lc, short).await.0,
        -1,
        "an expired lease reports TTL -1"
    );

    tracing::info!("--- phase 3: keepalive extends a lease past its TTL");
    let kept = grant(&mut lc, 2).await;
    kv.put(PutRequest {
        lease: kept,
        ..put_req("kept", "1")
    })
    .await
    .expect("put");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = lc
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    let until = Instant::now() + Duration::from_secs(4);
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < until {
        pace.tick().await;
        tx.send(LeaseKeepAliveRequest { id: kept })
            .await
            .expect("send");
        let resp = responses.message().await.expect("recv").expect("response");
        assert_eq!((resp.id, resp.ttl), (kept, 2));
    }
    assert_eq!(
        get(&mut kv, prefix_req("kept")).await.kvs.len(),
        1,
        "kept alive past its 2 s TTL"
    );
    tx.send(LeaseKeepAliveRequest { id: 999 })
        .await
        .expect("send");
    let resp = responses.message().await.expect("recv").expect("response");
    assert_eq!(resp.ttl, 0, "keepalive of an unknown lease answers TTL 0");
    drop(tx);
    assert!(
        responses.message().await.expect("clean end").is_none(),
        "half-close ends the stream"
    );

    tracing::info!("--- phase 4: revoke deletes every attached key in one revision");
    let long = grant(&mut lc, 60).await;
    for k in ["rev/a", "rev/b", "rev/c"] {
        kv.put(PutRequest {
            lease: long,
            ..put_req(k, "v")
        })
        .await
        .expect("put");
    }
    let before = get(&mut kv, prefix_req("rev/"))
        .await
        .header
        .expect("header")
        .revision;
    let revoked = lc
        .lease_revoke(LeaseRevokeRequest { id: long })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(
        revoked.header.expect("header").revision,
        before + 1,
        "one revision for all keys"
    );
    assert!(get(&mut kv, prefix_req("rev/")).await.kvs.is_empty());
    let err = lc
        .lease_revoke(LeaseRevokeRequest { id: long })
        .await
        .expect_err("revoked twice");
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    tracing::info!("--- phase 5: client-chosen ids, duplicates and the list");
    lc.lease_grant(LeaseGrantRequest { ttl: 60, id: 77 })
        .await
        .expect("grant 77");
    let err = lc
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 77 })
        .await
        .expect_err("duplicate id");
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let err = lc
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .expect_err("ttl too large");
    assert_eq!(err.message(), "etcdserver: too large lease TTL");
    let list = lc
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(list.leases.iter().any(|l| l.id == 77), "{list:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_survives_a_leader_crash() {
    init_tracing();
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];

    tracing::info!("--- phase 1: grant a 20 s lease through a follower and let 5 s pass");
    let mut lc = lease_client(&cluster, follower).await;
    let id = grant(&mut lc, 20).await;
    let granted_at = Instant::now();
    let mut kv = cluster.kv(follower);
    kv.put(PutRequest {
        lease: id,
        ..put_req("session", "alive")
    })
    .await
    .expect("put");
    eventually("5 s to pass", Duration::from_secs(10), async || {
        if granted_at.elapsed() >= Duration::from_secs(5) {
            Ok(())
        } else {
            Err("waiting".into())
        }
    })
    .await;

    tracing::info!("--- phase 2: crash the leader; a new leader continues the lease's clock");
    let left_at_kill = 20 - granted_at.elapsed().as_secs() as i64;
    cluster.kill(leader).await;
    let new_leader = cluster.wait_for_leader().await;
    let leader_back = Instant::now();
    let mut lc = lease_client(&cluster, new_leader).await;
    let ttl = eventually("the new leader to know the lease", WAIT, async || {
        let (ttl, _) = ttl_of(&mut lc, id).await;
        if ttl > 0 {
            Ok(ttl)
        } else {
            Err(format!("ttl {ttl}"))
        }
    })
    .await;
    // The new leader continues from the last checkpoint (at most 1 s stale, rounded up) plus
    // one election timeout; it cannot know how long the election took, so that adds on top.
    assert!(
        ttl <= left_at_kill + 3,
        "remaining {ttl} s, {left_at_kill} s left at the crash: TTL reset"
    );
    assert!(
        ttl >= left_at_kill - 4,
        "remaining {ttl} s, {left_at_kill} s left at the crash: expired early"
    );

    tracing::info!("--- phase 3: the lease still expires, on the new leader's clock");
    let mut kv = cluster.kv(new_leader);
    eventually("the key to expire", Duration::from_secs(25), async || {
        let resp = get(&mut kv, prefix_req("session")).await;
        if resp.kvs.is_empty() {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    let lived = granted_at.elapsed();
    assert!(
        lived >= Duration::from_secs(19),
        "lease lived only {lived:?}"
    );
    // Measured from the new leader, so the election's length does not count: the lease may
    // outlive what was left at the crash by the checkpoint's staleness and rounding (2 s), the
    // new leader's promotion (a ReadIndex round), its grace of one election timeout (1 s) and
    // the revoke; a reset would give it its full 20 s plus that grace again.
    let after_new_leader = leader_back.elapsed();
    assert!(
        after_new_leader <= Duration::from_secs(left_at_kill as u64 + 5),
        "lease lived {after_new_leader:?} after the new leader took over, {left_at_kill} s were left: TTL reset"
    );
    cluster.shutdown().await;
}
