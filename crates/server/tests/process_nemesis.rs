//! Process nemesis: three real `keel` processes keep a linearizable history and end with
//! identical `HashKV` while a seeded nemesis SIGKILLs (and restarts) members, pauses them
//! with SIGSTOP/SIGCONT, partitions them (leader isolated, a follower isolated, a bridge,
//! the leader's outgoing links cut one way) and slows the network.
//!
//! Every member reaches each peer through a TCP proxy owned by this test (one per directed
//! link, named to the member in `KEEL_PEER_DIAL_MAP`), so a partition is a proxy that cuts
//! its connections. Five clients do random Get / Put / CAS on four keys through several
//! members (moving to the next member after any failure; errors and timeouts are unknown
//! outcomes); one watcher follows the key prefix from revision 1, resuming elsewhere from
//! its last revision + 1 when its stream breaks or goes silent. Between two faults the
//! cluster is healed and must agree on a leader within 30 s. Afterwards everything is
//! healed, a final linearizable read fixes the final revision, and:
//! - the store's own version history matches what clients sent and were acknowledged;
//! - the history passes keel-sim's linearizability checker (per key): raw, with unknown
//!   outcomes, under a small budget (it may stay undecided on long runs, never fail), then
//!   with each unknown write settled from the store's record (`resolve_unknown_writes`),
//!   which must be linearizable;
//! - the watch segments are valid (keel-sim's watch validator) and together deliver every
//!   committed event once;
//! - every member reaches the final revision and reports the same `HashKV` at it.
//!
//! Environment:
//! - `KEEL_NEMESIS_SECS` — workload length in seconds (default 40). The 10-minute soak:
//!   `KEEL_NEMESIS_SECS=600 cargo test -p keel-server --test process_nemesis -- --nocapture`
//! - `KEEL_NEMESIS_SEED` — replays the schedule (fault kinds, durations, client choices) of
//!   a printed seed; which member a fault hits also depends on who leads at the time.
//! - `KEEL_NEMESIS_KEEP=1` — keep the temp dir (data dirs, member logs `m<i>.log`, the
//!   recorded history `history.txt`); it is always kept when the test fails, and its path is
//!   printed.
//! - `KEEL_LOG` — the members' log filter (default `info,openraft=info`: elections, votes
//!   and restarts' recovered log state are what a divergence is analysed from).

mod common;
mod process;

use std::time::{Duration, Instant};

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_sim::history::{History, Op};
use keel_sim::linearizability::{self, CheckOptions, Verdict};
use process::checks::{
    assert_hash_kv_agrees, check_store_against_clients, check_watch, committed_events, final_read,
    resolve_unknown_writes, wait_converged,
};
use process::cluster::ProcCluster;
use process::faults::{nemesis, NemesisLog, RECOVERY_WAIT};
use process::workload::{watcher, Client, ClientLog, Rng, Segment, KEYS};
use tokio::sync::watch;
use tonic::transport::Channel;

const MEMBERS: usize = 3;
const CLIENTS: usize = 5;
const DEFAULT_SECS: u64 = 40;
/// Operations per client per second of workload at most, so the history stays checkable.
const OPS_PER_CLIENT_PER_SEC_MAX: usize = 40;
/// Budget for checking the history before unknown writes are settled: enough for a short
/// run; a long run's raw history may stay undecided (it is then checked settled only).
const RAW_CHECK: CheckOptions = CheckOptions {
    steps_max: 20_000_000,
    duration_max: Some(Duration::from_secs(20)),
    minimize: true,
};
/// Client id of the final read in the history.
const FINAL_READER: u64 = CLIENTS as u64;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{name} must be a u64, not {s:?}"))
    })
}

fn seed() -> u64 {
    env_u64("KEEL_NEMESIS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    })
}

/// Everything a run recorded.
struct Run {
    history: History,
    logs: Vec<ClientLog>,
    nemesis: NemesisLog,
    final_revision: i64,
    /// When the final read returned: every write that took effect did so before it.
    final_return_ns: u64,
    segments: Vec<Segment>,
}

/// Clients, nemesis and watcher run; then everything is healed and a final linearizable read
/// (recorded in the history) fixes the final revision, which the watcher must then reach.
async fn run(cluster: &mut ProcCluster, mut rng: Rng, workload: Duration) -> Run {
    let origin = Instant::now();
    let until = origin + workload;
    let kvs: Vec<KvClient<Channel>> = (0..cluster.len()).map(|i| cluster.kv(i)).collect();
    let urls: Vec<String> = (0..cluster.len()).map(|i| cluster.client_url(i)).collect();
    let ops_max = OPS_PER_CLIENT_PER_SEC_MAX * workload.as_secs().max(1) as usize;
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|c| Client::new(c as u64, kvs.clone(), origin, rng.fork(), ops_max))
        .collect();
    let (final_tx, final_rx) = watch::channel(None);
    let watcher = watcher(urls, rng.below(MEMBERS), final_rx);
    let nemesis_rng = rng.fork();
    let main = async {
        let (logs, nemesis) = tokio::join!(
            futures::future::join_all(clients.into_iter().map(|c| c.run(until))),
            nemesis(cluster, nemesis_rng, until)
        );
        tracing::info!("--- phase 3: heal everything; final read once a leader is agreed");
        cluster.heal().await;
        let leader = cluster.wait_for_leader(RECOVERY_WAIT).await;
        let (call_ns, return_ns, resp) = final_read(cluster, leader, origin).await;
        let final_revision = common::rev(&resp);
        let mut history = History::new(logs.iter().flat_map(|l| l.ops.clone()).collect());
        for key in KEYS {
            let kv = resp.kvs.iter().find(|kv| kv.key == key.as_bytes());
            let value = kv.map(|kv| kv.value.as_slice());
            let mod_revision = kv.map_or(0, |kv| kv.mod_revision);
            let k = key.as_bytes();
            let op = Op::get(
                FINAL_READER,
                call_ns,
                return_ns,
                k,
                value,
                mod_revision,
                final_revision,
            );
            history.push(op);
        }
        final_tx
            .send(Some(final_revision))
            .expect("the watcher listens");
        Run {
            history,
            logs,
            nemesis,
            final_revision,
            final_return_ns: return_ns,
            segments: Vec::new(),
        }
    };
    let (mut run, segments) = tokio::join!(main, watcher);
    run.segments = segments;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_nemesis_keeps_history_linearizable_and_hashes_equal() {
    common::init_tracing();
    let seed = seed();
    let workload = Duration::from_secs(env_u64("KEEL_NEMESIS_SECS").unwrap_or(DEFAULT_SECS));
    let started = Instant::now();
    tracing::info!(
        seed,
        "--- phase 1: start {MEMBERS} keel processes (replay: KEEL_NEMESIS_SEED={seed})"
    );
    let mut cluster = ProcCluster::start(MEMBERS).await;

    tracing::info!("--- phase 2: clients, nemesis and watcher run for {workload:?}");
    let run = run(&mut cluster, Rng(seed), workload).await;
    let (history, final_revision) = (&run.history, run.final_revision);
    // Kept with the member logs when the test fails: the evidence for analysing a finding.
    let dump: String = history.ops.iter().map(|op| format!("{op:?}\n")).collect();
    let dump_path = cluster.dir().join("history.txt");
    std::fs::write(&dump_path, dump).expect("write the history next to the member logs");

    tracing::info!("--- phase 4: every member reaches revision {final_revision}");
    wait_converged(&cluster, final_revision).await;

    tracing::info!("--- phase 5: the store's record matches what clients sent and were told");
    let committed = committed_events(&mut cluster.kv(0), final_revision).await;
    check_store_against_clients(history, &committed, final_revision);

    tracing::info!("--- phase 6: check the history for linearizability");
    let check_started = Instant::now();
    // The raw history first, under a small budget: it may be undecided, never wrong.
    let raw = linearizability::check(history, &RAW_CHECK).expect("a well-formed history");
    if let Verdict::NotLinearizable(violation) = &raw.verdict {
        panic!(
            "history of {} ops (seed {seed}): {violation}",
            history.ops.len()
        );
    }
    let (settled, resolved) = resolve_unknown_writes(history, &committed, run.final_return_ns);
    let options = CheckOptions {
        steps_max: 50_000_000 + 200_000 * workload.as_secs(),
        duration_max: Some(Duration::from_secs(60).max(workload / 2)),
        minimize: true,
    };
    let report = linearizability::check(&settled, &options).expect("a well-formed history");
    let sum = |f: fn(&ClientLog) -> usize| run.logs.iter().map(f).sum::<usize>();
    tracing::info!(
        seed,
        ops = history.ops.len(),
        ok = sum(|l| l.ok),
        unknown = sum(|l| l.unknown),
        not_sent = sum(|l| l.not_sent),
        unknown_took_effect = resolved.took_effect,
        unknown_never_applied = resolved.never_applied,
        faults = run.nemesis.total(),
        faults_by_kind = ?run.nemesis.faults,
        recovery_ms_max = run.nemesis.recovery_ms_max,
        failovers_ms = ?run.nemesis.failovers_ms,
        raw_verdict = ?raw.verdict,
        raw_steps = raw.steps,
        steps = report.steps,
        check_ms = check_started.elapsed().as_millis(),
        final_revision,
        watch_segments = run.segments.len(),
        "--- summary"
    );
    assert_eq!(
        report.verdict,
        Verdict::Linearizable,
        "history of {} ops, unknown writes settled from the store (seed {seed}): {report:?}",
        settled.ops.len()
    );
    assert!(run.nemesis.total() > 0, "the nemesis struck");

    tracing::info!("--- phase 7: the watch segments deliver the store's record");
    match check_watch(&run.segments, &committed) {
        Ok(events) => tracing::info!(events, segments = run.segments.len(), "watch valid"),
        Err(violation) => panic!("watch stream (seed {seed}): {violation}"),
    }

    tracing::info!("--- phase 8: every member has the same HashKV at revision {final_revision}");
    let hash = assert_hash_kv_agrees(&cluster, final_revision).await;
    tracing::info!(
        seed,
        hash,
        runtime_ms = started.elapsed().as_millis(),
        "--- done"
    );
}

/// The dial-map seam and the proxies do what the nemesis relies on: with the leader's links
/// cut, the other two elect a new leader (so no peer traffic bypasses the proxies), and with
/// every link delayed, a write waits at least for the delay there and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_traffic_goes_through_the_link_proxies() {
    common::init_tracing();
    let mut cluster = ProcCluster::start(MEMBERS).await;
    let old = cluster.wait_for_leader(RECOVERY_WAIT).await;

    tracing::info!("--- phase 1: cut m{old} (the leader) off; the others elect a new leader");
    cluster.isolate(old);
    let others: Vec<usize> = (0..MEMBERS).filter(|&i| i != old).collect();
    let new = common::eventually("a new leader behind the cut", RECOVERY_WAIT, async || {
        let mut seen = Vec::new();
        for &i in &others {
            let leader = cluster.status(i).await.map(|s| s.leader);
            seen.push(leader.and_then(|l| cluster.index_of(l)));
        }
        match seen[..] {
            [Some(a), Some(b)] if a == b && a != old => Ok(a),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await;
    tracing::info!(old, new, "new leader elected behind the cut");

    tracing::info!("--- phase 2: heal; one leader again");
    cluster.heal().await;
    let leader = cluster.wait_for_leader(RECOVERY_WAIT).await;
    let mut kv = cluster.kv(leader);
    common::put_retrying(&mut kv, "proxy/k", "fast").await;

    tracing::info!("--- phase 3: every link delayed {LINK_DELAY:?}; a write waits for it");
    cluster.set_all_links(process::proxy::LinkMode::Delay(LINK_DELAY));
    let started = Instant::now();
    common::put_retrying(&mut kv, "proxy/k", "slow").await;
    let took = started.elapsed();
    assert!(
        took >= 2 * LINK_DELAY,
        "a replicated write took {took:?} over links delayed {LINK_DELAY:?} each way"
    );
    cluster.heal().await;
    common::put_retrying(&mut kv, "proxy/k", "healed").await;
}

/// Delay of every link in `peer_traffic_goes_through_the_link_proxies`.
const LINK_DELAY: Duration = Duration::from_millis(300);

/// A malformed `KEEL_PEER_DIAL_MAP` stops `keel` at start, before it binds anything, with a
/// message naming the variable and the bad entry.
#[tokio::test]
async fn a_bad_peer_dial_map_stops_keel_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("member");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["--data-dir", data_dir.to_str().expect("utf-8 temp path")])
        // Port 0 everywhere: should the check regress, the member binds nothing fixed.
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .args(["--advertise-client-urls", "http://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .env("KEEL_PEER_DIAL_MAP", "http://127.0.0.1:2380=not-an-address")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A keel that keeps running despite the check is killed when the test gives up.
        .kill_on_drop(true)
        .spawn()
        .expect("spawn keel");
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("keel kept running with a malformed KEEL_PEER_DIAL_MAP")
        .expect("collect output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let status = output.status;
    assert!(!status.success(), "keel exited with {status}");
    assert!(
        stderr.contains("KEEL_PEER_DIAL_MAP entry") && stderr.contains("not-an-address"),
        "stderr names the variable and the bad entry: {stderr}"
    );
}
