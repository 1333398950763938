//! Leases when the leader no longer leads but does not know it yet. keel reads no wall clock
//! for a correctness decision (docs/robustness.md, "Clocks"): lease expiry, elections and
//! request deadlines all run on the monotonic clock. What a member can still see is that clock
//! leaping ahead: a process stopped (SIGSTOP, a frozen VM, a long stall) and resumed finds
//! every timer overdue at once. Its lessor then sees leases "expired" that clients kept alive
//! through the new leader meanwhile, and must not revoke them (etcd 15247). The other stale
//! leader is one cut off from its peers: it must stop renewing leases that the majority side
//! will expire, or a client believes in a lease that is gone.
//!
//! Three real `keel` processes; every grant, keep-alive, attach and linearizable read of the
//! leased keys is recorded with its call and return time and judged by keel-sim's lease
//! validator: no key gone before its lease could have expired, none kept after the lease
//! must have expired, no keep-alive succeeding for a lease that is gone.
//! - `leader_stopped_past_a_lease_ttl_revokes_nothing_on_resume`: lease A (TTL 5 s) is kept
//!   alive every 300 ms through the followers; lease B (TTL 5 s) is never kept alive. The
//!   leader is stopped for 7 s (longer than both TTLs and the election timeout) and resumed;
//!   keep-alives of A go on for a while, then stop.
//! - `leader_cut_off_stops_renewing_leases`: lease A (TTL 5 s) is kept alive only through
//!   the leader, whose peer links are then cut for 12 s while the keep-alives go on.
//! - `write_lost_with_a_cut_off_leaders_log_answers_leader_changed`: a put the cut-off
//!   leader appended but could not commit is dropped when it takes the new leader's log.

mod common;
// The process harness (real `keel` processes, SIGSTOP/SIGCONT); this binary uses a part.
#[allow(dead_code)]
mod process;

use std::time::{Duration, Instant};

use common::{eventually, get, init_tracing, put_req, range_req, LEADER_WAIT};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest};
use keel_sim::lease::{validate_leases, LeaseBounds, LeaseObservation};
use process::cluster::ProcCluster;
use tonic::transport::{Channel, Endpoint};

const TTL_S: i64 = 5;
/// How long the leader stays stopped: longer than the TTL, so its clock jumps past A's expiry.
const PAUSE: Duration = Duration::from_secs(7);
/// Keep-alive and read cadence (the recorder's polling interval, not a synchroniser).
const ROUND: Duration = Duration::from_millis(300);
/// Every call is bounded by this; a call that runs out has an unknown outcome.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Keep-alives of A go on this long after the leader resumed.
const AFTER_RESUME: Duration = Duration::from_secs(3);
/// How long the leader is cut off from its peers: longer than TTL + election + grace.
const CUT: Duration = Duration::from_secs(12);
/// More than a member's whole log in these short runs.
const LOG_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Longest wait for both keys to go once nothing keeps them alive.
const EXPIRY_WAIT: Duration = Duration::from_secs(20);

/// Observations with times in nanoseconds since the recorder started.
struct Recorder {
    origin: Instant,
    observations: Vec<LeaseObservation>,
}

impl Recorder {
    fn ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    async fn grant(&mut self, lc: &mut LeaseClient<Channel>) -> i64 {
        let call_ns = self.ns();
        let req = LeaseGrantRequest { ttl: TTL_S, id: 0 };
        let call = tokio::time::timeout(CALL_TIMEOUT * 10, lc.lease_grant(req)).await;
        let resp = call.expect("grant in time").expect("grant").into_inner();
        self.observations.push(LeaseObservation::Grant {
            lease: resp.id,
            ttl_s: resp.ttl,
            call_ns,
            return_ns: Some(self.ns()),
        });
        resp.id
    }

    async fn attach(&mut self, kv: &mut KvClient<Channel>, lease: i64, key: &str) {
        let call_ns = self.ns();
        let req = PutRequest {
            lease,
            ..put_req(key, "leased")
        };
        let call = tokio::time::timeout(CALL_TIMEOUT * 10, kv.put(req)).await;
        call.expect("attach in time").expect("attach");
        self.observations.push(LeaseObservation::Attach {
            lease,
            key: key.as_bytes().to_vec(),
            call_ns,
            return_ns: self.ns(),
        });
    }

    /// One keep-alive round trip on a fresh stream; a failure or timeout is recorded as an
    /// unknown outcome.
    async fn keep_alive(&mut self, lc: &mut LeaseClient<Channel>, lease: i64) {
        let call_ns = self.ns();
        let round_trip = async {
            let req = LeaseKeepAliveRequest { id: lease };
            let mut stream = lc
                .lease_keep_alive(tokio_stream::once(req))
                .await
                .ok()?
                .into_inner();
            stream.message().await.ok().flatten().map(|r| r.ttl)
        };
        let ttl = tokio::time::timeout(CALL_TIMEOUT, round_trip)
            .await
            .ok()
            .flatten();
        self.observations.push(LeaseObservation::KeepAlive {
            lease,
            ttl_s: ttl.unwrap_or(0),
            call_ns,
            return_ns: ttl.map(|_| self.ns()),
        });
    }

    /// A linearizable read of `key`; a failed read is not recorded. Returns whether it is
    /// there, if the read succeeded.
    async fn read_key(&mut self, kv: &mut KvClient<Channel>, key: &str) -> Option<bool> {
        let call_ns = self.ns();
        let call = tokio::time::timeout(CALL_TIMEOUT, kv.range(range_req(key, ""))).await;
        let present = !call.ok()?.ok()?.into_inner().kvs.is_empty();
        self.observations.push(LeaseObservation::ReadKey {
            key: key.as_bytes().to_vec(),
            present,
            call_ns,
            return_ns: self.ns(),
        });
        Some(present)
    }
}

fn lease_client(cluster: &ProcCluster, i: usize) -> LeaseClient<Channel> {
    let channel = Endpoint::from_shared(cluster.client_url(i))
        .expect("url")
        .connect_timeout(CALL_TIMEOUT)
        .connect_lazy();
    LeaseClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_past_a_lease_ttl_revokes_nothing_on_resume() {
    init_tracing();
    let mut cluster = ProcCluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut leases: Vec<_> = followers
        .iter()
        .map(|&i| lease_client(&cluster, i))
        .collect();
    let mut kvs: Vec<_> = followers.iter().map(|&i| cluster.kv(i)).collect();
    let mut rec = Recorder {
        origin: Instant::now(),
        observations: Vec::new(),
    };

    tracing::info!("--- phase 1: leases A (kept alive) and B (not), a key on each");
    let a = rec.grant(&mut leases[0]).await;
    let b = rec.grant(&mut leases[0]).await;
    rec.attach(&mut kvs[0], a, "clock/a").await;
    rec.attach(&mut kvs[0], b, "clock/b").await;
    rec.keep_alive(&mut leases[0], a).await;

    tracing::info!("--- phase 2: stop leader m{leader} for {PAUSE:?}; keep A alive elsewhere");
    cluster.pause(leader);
    let paused_at_ns = rec.ns();
    let mut new_leader_seen_ns = None;
    let resume_at = Instant::now() + PAUSE;
    let keep_until = resume_at + AFTER_RESUME;
    let mut round = 0usize;
    let mut resumed = false;
    // Where the leader's log stood at the resume (a start attempt that found its port taken
    // and was retried may have logged an error before).
    let mut log_at_resume = 0;
    while Instant::now() < keep_until {
        let via = round % followers.len();
        round += 1;
        rec.keep_alive(&mut leases[via], a).await;
        rec.read_key(&mut kvs[via], "clock/a").await;
        rec.read_key(&mut kvs[via], "clock/b").await;
        let follower = followers[via];
        note_new_leader(
            &mut rec,
            &cluster,
            follower,
            leader,
            &mut new_leader_seen_ns,
        )
        .await;
        if !resumed && Instant::now() >= resume_at {
            tracing::info!("--- phase 3: resume m{leader}: its clock jumps {PAUSE:?} ahead");
            log_at_resume = cluster.log_tail(leader, LOG_BYTES_MAX).len();
            cluster.resume(leader);
            resumed = true;
        }
        // The recorder's cadence (not a synchroniser: every outcome is judged afterwards).
        tokio::time::sleep(ROUND).await;
    }
    assert!(resumed, "the leader was resumed");
    let new_leader_seen_ns = new_leader_seen_ns.expect("no new leader while the old one stopped");

    tracing::info!("--- phase 4: A's keep-alives stop; both keys must go");
    wait_gone(&mut rec, &mut kvs, &["clock/a", "clock/b"]).await;
    validate(&rec, new_leader_seen_ns - paused_at_ns);
    let log = cluster.log_tail(leader, LOG_BYTES_MAX);
    let since_resume = log.get(log_at_resume..).unwrap_or_default();
    let errors: Vec<&str> = since_resume
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .collect();
    assert!(
        errors.is_empty(),
        "the resumed leader logged errors: {errors:#?}"
    );
}

/// Reads `keys` (through `kvs` in turn) until every one is gone; panics after `EXPIRY_WAIT`.
async fn wait_gone(rec: &mut Recorder, kvs: &mut [KvClient<Channel>], keys: &[&str]) {
    let mut gone = vec![false; keys.len()];
    let mut round = 0;
    let what = format!("leased keys {keys:?} to go after the keep-alives stopped");
    eventually(&what, EXPIRY_WAIT, async || {
        let via = round % kvs.len();
        round += 1;
        for (i, key) in keys.iter().enumerate() {
            if rec.read_key(&mut kvs[via], key).await == Some(false) {
                gone[i] = true;
            }
        }
        if gone.iter().all(|g| *g) {
            Ok(())
        } else {
            Err(format!("gone: {gone:?}"))
        }
    })
    .await
}

/// Runs the lease validator over everything recorded. `election_ns`: how long the leader
/// change took as the recorder saw it. The new leader restarts each lease's clock from its
/// last checkpointed remaining TTL plus an election timeout (etcd's rule), so across the
/// change a key may outlive its TTL by the election, the checkpoint interval (1 s) and the
/// extension (1 s), on top of the usual grace.
fn validate(rec: &Recorder, election_ns: u64) {
    let defaults = LeaseBounds::default();
    let bounds = LeaseBounds {
        expiry_grace_ns: defaults.expiry_grace_ns + election_ns + 2_000_000_000,
        request_max_ns: CALL_TIMEOUT.as_nanos() as u64,
        ..defaults
    };
    if let Err(v) = validate_leases(&rec.observations, &bounds) {
        for (i, o) in rec.observations.iter().enumerate() {
            let involved = if v.observations.contains(&i) {
                "<=="
            } else {
                ""
            };
            tracing::error!("#{i} {o:?} {involved}");
        }
        panic!("{v}");
    }
    tracing::info!(
        observations = rec.observations.len(),
        election_ms = election_ns / 1_000_000,
        "leases valid"
    );
}

/// Records a `LeaderChange` the first time member `via` names a leader other than `old`.
async fn note_new_leader(
    rec: &mut Recorder,
    cluster: &ProcCluster,
    via: usize,
    old: usize,
    seen: &mut Option<u64>,
) {
    if seen.is_some() {
        return;
    }
    let status = cluster.status(via).await;
    let named = status.and_then(|s| cluster.index_of(s.leader));
    if named.is_some_and(|l| l != old) {
        let at_ns = rec.ns();
        *seen = Some(at_ns);
        rec.observations
            .push(LeaseObservation::LeaderChange { at_ns });
        tracing::info!(?named, "a new leader took over");
    }
}

/// A leader cut off from its peers keeps its `Leader` state in openraft (it only stops
/// accepting proposals once its quorum lease runs out) while the others elect a new leader.
/// A client that keeps its lease alive through it must stop being told the lease lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_stops_renewing_leases() {
    init_tracing();
    let mut cluster = ProcCluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut lc = lease_client(&cluster, leader);
    let mut kvs: Vec<_> = followers.iter().map(|&i| cluster.kv(i)).collect();
    let mut rec = Recorder {
        origin: Instant::now(),
        observations: Vec::new(),
    };

    tracing::info!("--- phase 1: lease A with a key, through leader m{leader}");
    let a = rec.grant(&mut lc).await;
    rec.attach(&mut cluster.kv(leader), a, "cut/a").await;
    rec.keep_alive(&mut lc, a).await;

    tracing::info!("--- phase 2: cut m{leader} off for {CUT:?}; keep A alive through it only");
    cluster.isolate(leader);
    let cut_at_ns = rec.ns();
    let mut new_leader_seen_ns = None;
    let heal_at = Instant::now() + CUT;
    let mut round = 0usize;
    while Instant::now() < heal_at {
        let via = round % followers.len();
        round += 1;
        rec.keep_alive(&mut lc, a).await;
        rec.read_key(&mut kvs[via], "cut/a").await;
        let follower = followers[via];
        note_new_leader(
            &mut rec,
            &cluster,
            follower,
            leader,
            &mut new_leader_seen_ns,
        )
        .await;
        // The recorder's cadence (not a synchroniser: every outcome is judged afterwards).
        tokio::time::sleep(ROUND).await;
    }
    let new_leader_seen_ns =
        new_leader_seen_ns.expect("no new leader while the old one was cut off");

    tracing::info!("--- phase 3: heal; A's keep-alives stop; its key must go");
    cluster.heal().await;
    wait_gone(&mut rec, &mut kvs, &["cut/a"]).await;
    validate(&rec, new_leader_seen_ns - cut_at_ns);
}

/// A put the cut-off leader appended (it still believes it leads) cannot commit: the others
/// elect a leader whose log replaces that entry once the links heal. The put's client must
/// hear etcd's "leader changed" (the outcome of a proposal lost to a leader change), not a
/// "server stopped" from a member that did not stop, and the put must not have happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_lost_with_a_cut_off_leaders_log_answers_leader_changed() {
    init_tracing();
    let mut cluster = ProcCluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");

    tracing::info!("--- phase 1: cut m{leader} off, then put through it");
    cluster.isolate(leader);
    let mut old = cluster.kv(leader);
    let lost = tokio::spawn(async move {
        tokio::time::timeout(LEADER_WAIT * 2, old.put(put_req("cut/lost", "v"))).await
    });

    tracing::info!("--- phase 2: the others elect a leader and write");
    let mut kv = cluster.kv(follower);
    eventually(
        "a put through the majority side",
        LEADER_WAIT,
        async || match tokio::time::timeout(CALL_TIMEOUT * 3, kv.put(put_req("cut/kept", "v")))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.to_string()),
            Err(_) => Err("put timed out".into()),
        },
    )
    .await;
    assert!(
        !lost.is_finished(),
        "the cut-off leader answered the put before the heal"
    );

    tracing::info!("--- phase 3: heal; the lost put is answered");
    cluster.heal().await;
    let answer = lost
        .await
        .expect("put task")
        .expect("the put is answered once the old leader takes the new log");
    let status = answer.expect_err("a put only the cut-off leader had cannot commit");
    assert_eq!(status.message(), "etcdserver: leader changed", "{status:?}");
    let read = get(&mut kv, range_req("cut/lost", "")).await;
    assert!(
        read.kvs.is_empty(),
        "the lost put is in the store: {read:?}"
    );
}
