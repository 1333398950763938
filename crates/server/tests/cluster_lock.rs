//! The Lock (`v3lockpb`) and Election (`v3electionpb`) services on a three-member cluster,
//! through the public gRPC API: mutual exclusion under contention, fencing tokens, release
//! on lease expiry, abandoned waiters, immediate handover on Unlock, and the election's
//! campaign / proclaim / observe / resign / handover-on-lease-death cycle.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, get, ok, prefix_req, put_req, range_req, TestCluster};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
};
use keel_api::mvccpb::KeyValue;
use keel_api::v3electionpb::election_client::ElectionClient;
use keel_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ResignRequest,
};
use keel_api::v3lockpb::lock_client::LockClient;
use keel_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

/// Longest wait for one Lock/Campaign call that is expected to succeed (contention included).
const ACQUIRE_WAIT: Duration = Duration::from_secs(60);
/// Bound on every other single RPC.
const RPC_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a condition that should settle quickly (a key deletion, a stream reply).
const SETTLE_WAIT: Duration = Duration::from_secs(15);
/// TTL of leases kept alive for the whole test.
const KEPT_TTL_S: i64 = 10;
/// Keepalive cadence for kept leases (a third of their TTL).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);

/// A lazily connected channel to `url`, with no per-request timeout: calls that wait for a
/// lock are bounded by the caller's `tokio::time::timeout` instead.
fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("member url")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Lock, election, lease and KV clients to one member.
#[derive(Clone)]
struct Clients {
    url: String,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
}

impl Clients {
    fn to(url: String) -> Clients {
        let ch = channel(&url);
        Clients {
            url,
            lock: LockClient::new(ch.clone()),
            election: ElectionClient::new(ch.clone()),
            lease: LeaseClient::new(ch.clone()),
            kv: KvClient::new(ch),
        }
    }

    fn of(cluster: &TestCluster, i: usize) -> Clients {
        Clients::to(cluster.client_url(i))
    }

    async fn grant(&mut self, ttl: i64) -> i64 {
        let resp = bounded(
            "grant",
            self.lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }),
        )
        .await;
        assert_eq!(resp.ttl, ttl);
        resp.id
    }

    async fn lock(&mut self, name: &str, lease: i64) -> LockResponse {
        let req = LockRequest {
            name: name.into(),
            lease,
        };
        match tokio::time::timeout(ACQUIRE_WAIT, self.lock.lock(req)).await {
            Ok(result) => ok(&format!("lock {name}"), result),
            Err(_) => panic!("lock {name} (lease {lease:x}) not acquired in {ACQUIRE_WAIT:?}"),
        }
    }

    async fn unlock(&mut self, key: &[u8]) {
        let req = UnlockRequest { key: key.to_vec() };
        bounded("unlock", self.lock.unlock(req)).await;
    }

    /// The key `key` as stored now (linearizable), if present.
    async fn key(&mut self, key: &[u8]) -> Option<KeyValue> {
        let req = range_req(&common::text(key), "");
        bounded("get", self.kv.range(req)).await.kvs.pop()
    }

    /// Every key under `prefix`, as strings.
    async fn keys_under(&mut self, prefix: &str) -> Vec<String> {
        common::keys(&get(&mut self.kv, prefix_req(prefix)).await)
    }

    async fn campaign(&mut self, name: &str, lease: i64, value: &str) -> CampaignResponse {
        let req = CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        };
        match tokio::time::timeout(ACQUIRE_WAIT, self.election.campaign(req)).await {
            Ok(result) => ok(&format!("campaign {name} {value}"), result),
            Err(_) => panic!("campaign {name} {value} not won in {ACQUIRE_WAIT:?}"),
        }
    }

    async fn leader(&mut self, name: &str) -> Result<LeaderResponse, tonic::Status> {
        let req = LeaderRequest { name: name.into() };
        match tokio::time::timeout(RPC_WAIT, self.election.leader(req)).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => panic!("leader {name}: no answer in {RPC_WAIT:?}"),
        }
    }
}

/// Awaits one RPC under `RPC_WAIT` and unwraps it.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> T {
    match tokio::time::timeout(RPC_WAIT, call).await {
        Ok(result) => ok(what, result),
        Err(_) => panic!("{what}: no answer in {RPC_WAIT:?}"),
    }
}

/// Keeps one lease alive from a background task until dropped (reconnecting on failure).
struct KeepAlive(JoinHandle<()>);

impl KeepAlive {
    fn start(url: &str, id: i64) -> KeepAlive {
        let url = url.to_string();
        KeepAlive(tokio::spawn(async move {
            loop {
                let mut lease = LeaseClient::new(channel(&url));
                let (tx, rx) = mpsc::channel(4);
                if let Ok(resp) = lease.lease_keep_alive(ReceiverStream::new(rx)).await {
                    let mut responses = resp.into_inner();
                    loop {
                        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                            break;
                        }
                        let reply = tokio::time::timeout(RPC_WAIT, responses.message()).await;
                        match reply {
                            Ok(Ok(Some(r))) if r.ttl > 0 => {}
                            Ok(Ok(Some(_))) => return, // the lease is gone: nothing to keep
                            _ => break,
                        }
                        // The keepalive cadence, not a synchroniser.
                        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                    }
                }
                // Reconnect backoff (the task ends when the guard drops), not a synchroniser.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn header_revision(resp: &LockResponse) -> i64 {
    resp.header.as_ref().expect("lock response header").revision
}

/// Waits until the keys under `prefix` are exactly `want` (in any order).
async fn keys_become(c: &mut Clients, prefix: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let what = format!("keys under {prefix} to be {want:?}");
    eventually(&what, SETTLE_WAIT, async || {
        let got = c.keys_under(prefix).await;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

/// One critical section as its holder saw it.
#[derive(Debug, Clone, Copy)]
struct Section {
    task: usize,
    round: usize,
    token: i64,
    entered: Instant,
    left: Instant,
}

const CONTENDERS: usize = 8;
const ROUNDS: usize = 10;

/// One contender: `ROUNDS` times lock, read-modify-write `counter` without any guard, unlock.
async fn contend(mut c: Clients, task: usize, sections: Arc<Mutex<Vec<Section>>>) {
    let lease = c.grant(KEPT_TTL_S).await;
    let _keepalive = KeepAlive::start(&c.url, lease);
    for round in 0..ROUNDS {
        let held = c.lock("mx", lease).await;
        let entered = Instant::now();
        let token = header_revision(&held);
        let current = match c.key(b"counter").await {
            Some(kv) => common::text(&kv.value).parse::<u64>().expect("counter"),
            None => 0,
        };
        // Widens the window in which a second holder would lose an increment.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let next = (current + 1).to_string();
        bounded("put counter", c.kv.put(put_req("counter", &next))).await;
        let left = Instant::now();
        c.unlock(&held.key).await;
        sections.lock().expect("sections").push(Section {
            task,
            round,
            token,
            entered,
            left,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_concurrent_holders_under_contention() {
    let cluster = TestCluster::start(3, &[]).await;
    let started = Instant::now();

    tracing::info!("--- phase 1: 8 contenders x 10 rounds, spread over the 3 members");
    let sections = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|task| {
            let c = Clients::of(&cluster, task % cluster.len());
            tokio::spawn(contend(c, task, sections.clone()))
        })
        .collect();
    for task in tasks {
        task.await.expect("contender task");
    }
    let cycles = CONTENDERS * ROUNDS;
    tracing::info!(
        cycles,
        elapsed_ms = started.elapsed().as_millis(),
        "contention done"
    );

    tracing::info!("--- phase 2: no increment lost, no two critical sections overlap");
    let mut c = Clients::of(&cluster, 0);
    let counter = c.key(b"counter").await.expect("counter key");
    assert_eq!(common::text(&counter.value), cycles.to_string());
    let mut sections = sections.lock().expect("sections").clone();
    assert_eq!(sections.len(), cycles);
    sections.sort_by_key(|s| s.entered);
    for pair in sections.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.left <= b.entered,
            "critical sections overlap: task {} round {} and task {} round {}: {a:?} {b:?}",
            a.task,
            a.round,
            b.task,
            b.round
        );
        assert!(
            pair[0].token < pair[1].token,
            "fencing tokens must grow with each holder: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    keys_become(&mut c, "mx/", &[]).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_fencing_tokens_strictly_increase_and_equal_create_revision() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut a = Clients::of(&cluster, leader);
    let mut b = Clients::of(&cluster, follower);
    let lease_a = a.grant(KEPT_TTL_S * 3).await;
    let lease_b = b.grant(KEPT_TTL_S * 3).await;

    tracing::info!("--- phase 1: alternate holders, with unrelated writes in between");
    let mut tokens = Vec::new();
    for round in 0..6 {
        let (c, lease) = if round % 2 == 0 {
            (&mut a, lease_a)
        } else {
            (&mut b, lease_b)
        };
        let held = c.lock("fence", lease).await;
        let token = header_revision(&held);
        let key = c
            .key(&held.key)
            .await
            .expect("the lock key exists while held");
        assert_eq!(
            token, key.create_revision,
            "round {round}: the fencing token is the lock key's create revision"
        );
        assert_eq!(key.lease, lease, "round {round}: the key carries the lease");
        assert_eq!(
            common::text(&held.key),
            format!("fence/{lease:x}"),
            "etcd's key layout"
        );
        tokens.push(token);
        bounded("unrelated put", c.kv.put(put_req("noise", "x"))).await;
        c.unlock(&held.key).await;
        assert!(c.key(&held.key).await.is_none(), "unlock deletes the key");
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase: {tokens:?}"
    );

    tracing::info!("--- phase 2: a waiter's token exceeds the holder's");
    let first = a.lock("fence", lease_a).await;
    let mut waiter = b.clone();
    let second = tokio::spawn(async move { waiter.lock("fence", lease_b).await });
    keys_become(
        &mut a,
        "fence/",
        &[format!("fence/{lease_a:x}"), format!("fence/{lease_b:x}")],
    )
    .await;
    a.unlock(&first.key).await;
    let second = second.await.expect("waiter task");
    assert!(header_revision(&second) > header_revision(&first));
    let key = b.key(&second.key).await.expect("held");
    assert_eq!(header_revision(&second), key.create_revision);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_holder_whose_lease_expires_releases_the_lock() {
    const HOLDER_TTL_S: i64 = 2;
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut holder = Clients::of(&cluster, follower);
    let mut waiter = Clients::of(&cluster, leader);

    tracing::info!("--- phase 1: a holder with a 2 s lease and no keepalive takes the lock");
    let dying = holder.grant(HOLDER_TTL_S).await;
    let granted_at = Instant::now();
    let held = holder.lock("expiring", dying).await;
    let kept = waiter.grant(KEPT_TTL_S).await;
    let _keepalive = KeepAlive::start(&waiter.url, kept);

    tracing::info!("--- phase 2: a waiter gets the lock once the holder's lease expires");
    let got = waiter.lock("expiring", kept).await;
    let waited = granted_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "acquired {waited:?} after the holder's grant, before its {HOLDER_TTL_S} s lease expired"
    );
    assert!(
        waited <= Duration::from_secs(HOLDER_TTL_S as u64 + 5),
        "the lock was released only {waited:?} after the holder's grant"
    );
    assert!(header_revision(&got) > header_revision(&held));
    assert!(
        holder.key(&held.key).await.is_none(),
        "the dead key is gone"
    );
    let ttl = bounded(
        "ttl",
        holder.lease.lease_time_to_live(LeaseTimeToLiveRequest {
            id: dying,
            keys: true,
        }),
    )
    .await;
    assert_eq!(ttl.ttl, -1, "the expired lease");
    waiter.unlock(&got.key).await;
    drop(_keepalive);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_call_cancelled_while_waiting_leaves_no_waiter_key() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut holder = Clients::of(&cluster, leader);
    let mut quitter = Clients::of(&cluster, follower);
    let held_lease = holder.grant(KEPT_TTL_S * 6).await;
    let held = holder.lock("cancel", held_lease).await;
    let holder_key = vec![format!("cancel/{held_lease:x}")];

    tracing::info!("--- phase 1: a waiter gives up (client-side timeout) while queued");
    let quit_lease = quitter.grant(KEPT_TTL_S * 6).await;
    let req = LockRequest {
        name: "cancel".into(),
        lease: quit_lease,
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(500), quitter.lock.lock(req)).await;
    assert!(gave_up.is_err(), "the lock is held: {gave_up:?}");
    keys_become(&mut holder, "cancel/", &holder_key).await;

    tracing::info!("--- phase 2: waiters giving up at every point of the request");
    for attempt in 0..20u64 {
        // A lease of its own per attempt, so a key left behind names its attempt.
        let lease = quitter.grant(KEPT_TTL_S * 6).await;
        tracing::info!(
            attempt,
            lease = format!("{lease:x}"),
            "giving up after {attempt} ms"
        );
        let req = LockRequest {
            name: "cancel".into(),
            lease,
        };
        let patience = Duration::from_millis(attempt);
        let result = tokio::time::timeout(patience, quitter.lock.lock(req)).await;
        assert!(
            result.is_err(),
            "attempt {attempt}: acquired while held: {result:?}"
        );
    }
    keys_become(&mut holder, "cancel/", &holder_key).await;

    tracing::info!("--- phase 3: the next waiter is not blocked by an abandoned key");
    let next_lease = quitter.grant(KEPT_TTL_S * 6).await;
    let mut next = quitter.clone();
    let waiting = tokio::spawn(async move { next.lock("cancel", next_lease).await });
    keys_become(
        &mut holder,
        "cancel/",
        &[holder_key[0].clone(), format!("cancel/{next_lease:x}")],
    )
    .await;
    holder.unlock(&held.key).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the next waiter acquires right after the unlock")
        .expect("waiter task");
    assert_eq!(common::text(&got.key), format!("cancel/{next_lease:x}"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_hands_the_lock_to_the_next_waiter_at_once() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers(leader);
    let mut holder = Clients::of(&cluster, followers[0]);
    let waiter = Clients::of(&cluster, followers[1]);
    let holder_lease = holder.grant(KEPT_TTL_S * 6).await;

    for round in 0..5 {
        tracing::info!(
            round,
            "--- phase: hold, queue a waiter on another member, unlock"
        );
        let held = holder.lock("handover", holder_lease).await;
        let mut w = waiter.clone();
        let waiter_lease = w.grant(KEPT_TTL_S * 6).await;
        let waiting = tokio::spawn(async move {
            let resp = w.lock("handover", waiter_lease).await;
            (resp, Instant::now())
        });
        keys_become(
            &mut holder,
            "handover/",
            &[
                format!("handover/{holder_lease:x}"),
                format!("handover/{waiter_lease:x}"),
            ],
        )
        .await;
        assert!(!waiting.is_finished(), "round {round}: acquired while held");
        let unlocking = Instant::now();
        holder.unlock(&held.key).await;
        let (got, acquired_at) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter acquires after the unlock")
            .expect("waiter task");
        let handover = acquired_at.saturating_duration_since(unlocking);
        tracing::info!(round, handover_ms = handover.as_millis(), "handed over");
        // etcd 3.4 hands over on its 100 ms watch sync tick; keel on the apply itself.
        assert!(
            handover < Duration::from_millis(500),
            "round {round}: handover took {handover:?}"
        );
        assert!(header_revision(&got) > header_revision(&held));
        let mut w = waiter.clone();
        w.unlock(&got.key).await;
        bounded(
            "revoke",
            w.lease
                .lease_revoke(LeaseRevokeRequest { id: waiter_lease }),
        )
        .await;
    }
    cluster.shutdown().await;
}

// ---- election -------------------------------------------------------------------------------

/// The next Observe reply as (key, value), under a deadline.
async fn observed(stream: &mut Streaming<LeaderResponse>) -> (String, String) {
    let reply = tokio::time::timeout(SETTLE_WAIT, stream.message()).await;
    let resp = match reply {
        Ok(Ok(Some(r))) => r,
        other => panic!("no Observe reply: {other:?}"),
    };
    let kv = resp.kv.expect("observe kv");
    (common::text(&kv.key), common::text(&kv.value))
}

fn leader_value(resp: &LeaderResponse) -> (String, String) {
    let kv = resp.kv.as_ref().expect("leader kv");
    (common::text(&kv.key), common::text(&kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_observe_resign_and_handover_on_lease_death() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers(leader);
    let mut one = Clients::of(&cluster, leader);
    let two = Clients::of(&cluster, followers[0]);
    let mut watcher = Clients::of(&cluster, followers[1]);

    tracing::info!("--- phase 1: an empty election has no leader");
    let err = watcher.leader("e").await.expect_err("no leader yet");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "election: no leader")
    );
    let mut observe = watcher
        .election
        .observe(LeaderRequest { name: "e".into() })
        .await
        .expect("observe")
        .into_inner();

    tracing::info!("--- phase 2: the first campaigner leads at once, the second waits");
    let lease_one = one.grant(KEPT_TTL_S * 6).await;
    let first = one.campaign("e", lease_one, "v1").await;
    let first_key: LeaderKey = first.leader.clone().expect("leader key");
    assert_eq!(common::text(&first_key.key), format!("e/{lease_one:x}"));
    assert_eq!(first_key.lease, lease_one);
    assert_eq!(
        observed(&mut observe).await,
        (common::text(&first_key.key), "v1".into())
    );
    let mut c2 = two.clone();
    let lease_two = c2.grant(KEPT_TTL_S).await;
    let _keep_two = KeepAlive::start(&two.url, lease_two);
    let second = tokio::spawn(async move { c2.campaign("e", lease_two, "v2").await });
    keys_become(
        &mut watcher,
        "e/",
        &[format!("e/{lease_one:x}"), format!("e/{lease_two:x}")],
    )
    .await;
    let current = watcher.leader("e").await.expect("leader");
    assert_eq!(
        leader_value(&current),
        (format!("e/{lease_one:x}"), "v1".into())
    );

    tracing::info!("--- phase 3: Proclaim changes the leader's value; observers see it");
    bounded(
        "proclaim",
        one.election.proclaim(ProclaimRequest {
            leader: Some(first_key.clone()),
            value: "v1b".into(),
        }),
    )
    .await;
    assert_eq!(
        leader_value(&watcher.leader("e").await.expect("leader")),
        (format!("e/{lease_one:x}"), "v1b".into())
    );
    assert_eq!(
        observed(&mut observe).await,
        (format!("e/{lease_one:x}"), "v1b".into())
    );
    assert!(!second.is_finished(), "the second campaigner still waits");

    tracing::info!("--- phase 4: Resign hands leadership to the second campaigner");
    bounded(
        "resign",
        one.election.resign(ResignRequest {
            leader: Some(first_key.clone()),
        }),
    )
    .await;
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second campaigner leads after the resign")
        .expect("campaign task");
    let second_key = second.leader.clone().expect("leader key");
    assert_eq!(common::text(&second_key.key), format!("e/{lease_two:x}"));
    assert_eq!(
        observed(&mut observe).await,
        (format!("e/{lease_two:x}"), "v2".into())
    );

    tracing::info!("--- phase 5: a stale leader key can neither proclaim nor resign");
    let err = one
        .election
        .proclaim(ProclaimRequest {
            leader: Some(first_key.clone()),
            value: "stale".into(),
        })
        .await
        .expect_err("stale proclaim");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "election: not leader")
    );
    // etcd's Resign with a stale key succeeds and changes nothing.
    bounded(
        "stale resign",
        one.election.resign(ResignRequest {
            leader: Some(first_key.clone()),
        }),
    )
    .await;
    assert_eq!(
        leader_value(&watcher.leader("e").await.expect("leader")),
        (format!("e/{lease_two:x}"), "v2".into())
    );

    tracing::info!("--- phase 6: revoking the leader's lease elects the next campaigner");
    let mut c3 = one.clone();
    let lease_three = c3.grant(KEPT_TTL_S * 6).await;
    let third = tokio::spawn(async move { c3.campaign("e", lease_three, "v3").await });
    keys_become(
        &mut watcher,
        "e/",
        &[format!("e/{lease_two:x}"), format!("e/{lease_three:x}")],
    )
    .await;
    drop(_keep_two);
    bounded(
        "revoke",
        one.lease.lease_revoke(LeaseRevokeRequest { id: lease_two }),
    )
    .await;
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third campaigner leads after the leader's lease dies")
        .expect("campaign task");
    assert_eq!(
        common::text(&third.leader.expect("leader key").key),
        format!("e/{lease_three:x}")
    );
    assert_eq!(
        observed(&mut observe).await,
        (format!("e/{lease_three:x}"), "v3".into())
    );
    assert_eq!(
        leader_value(&watcher.leader("e").await.expect("leader")),
        (format!("e/{lease_three:x}"), "v3".into())
    );

    tracing::info!("--- phase 7: TimeToLive of a lease that never existed is -1, not an error");
    let ttl = bounded(
        "ttl",
        one.lease.lease_time_to_live(LeaseTimeToLiveRequest {
            id: 0x7eed_beef,
            keys: false,
        }),
    )
    .await;
    assert_eq!(ttl.ttl, -1);
    // Open streams hold up a graceful stop (see `graceful_stop_ends_*` below).
    drop(observe);
    cluster.shutdown().await;
}

// ---- graceful stop with coordination streams open -------------------------------------------

/// Longest a graceful stop of one idle member may take (a leader hand-over is not needed on a
/// single member; etcd ends its streams on stop).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Stops the only member under `STOP_WAIT`; panics if the stop does not finish. (Dropping the
/// timed-out stop future drops the member's task set, which aborts its tasks.)
async fn stop_within_deadline(cluster: &mut TestCluster, what: &str) {
    let stopped = tokio::time::timeout(STOP_WAIT, cluster.stop(0)).await;
    assert!(
        stopped.is_ok(),
        "a graceful stop did not finish within {STOP_WAIT:?} while {what} was open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_ends_an_open_observe_stream() {
    let mut cluster = TestCluster::start(1, &[]).await;
    let mut c = Clients::of(&cluster, 0);
    let lease = c.grant(KEPT_TTL_S * 6).await;
    c.campaign("stop-e", lease, "v").await;
    let mut observe = c
        .election
        .observe(LeaderRequest {
            name: "stop-e".into(),
        })
        .await
        .expect("observe")
        .into_inner();
    assert_eq!(observed(&mut observe).await.1, "v");
    stop_within_deadline(&mut cluster, "an Observe stream").await;
    let end = tokio::time::timeout(RPC_WAIT, observe.message()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ends: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_ends_an_open_lease_keepalive_stream() {
    let mut cluster = TestCluster::start(1, &[]).await;
    let mut c = Clients::of(&cluster, 0);
    let lease = c.grant(KEPT_TTL_S * 6).await;
    let (tx, rx) = mpsc::channel(4);
    let mut responses = c
        .lease
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    tx.send(LeaseKeepAliveRequest { id: lease })
        .await
        .expect("send");
    let reply = tokio::time::timeout(RPC_WAIT, responses.message()).await;
    assert!(
        matches!(reply, Ok(Ok(Some(_)))),
        "keepalive reply: {reply:?}"
    );
    stop_within_deadline(&mut cluster, "a LeaseKeepAlive stream").await;
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_ends_a_waiting_lock_call() {
    let mut cluster = TestCluster::start(1, &[]).await;
    let mut c = Clients::of(&cluster, 0);
    let holder = c.grant(KEPT_TTL_S * 6).await;
    let waiter = c.grant(KEPT_TTL_S * 6).await;
    c.lock("stop-l", holder).await;
    let mut w = c.clone();
    let waiting = tokio::spawn(async move {
        let req = LockRequest {
            name: "stop-l".into(),
            lease: waiter,
        };
        tokio::time::timeout(ACQUIRE_WAIT, w.lock.lock(req)).await
    });
    keys_become(
        &mut c,
        "stop-l/",
        &[format!("stop-l/{holder:x}"), format!("stop-l/{waiter:x}")],
    )
    .await;
    stop_within_deadline(&mut cluster, "a waiting Lock call").await;
    let answer = tokio::time::timeout(RPC_WAIT, waiting)
        .await
        .expect("the waiting call ends with the member")
        .expect("waiter task");
    assert!(
        matches!(answer, Ok(Err(_))),
        "a stopped member does not grant the lock: {answer:?}"
    );
}
