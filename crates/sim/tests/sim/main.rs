//! Deterministic simulation of keel (issue 4, item 1): real keel members — `keel_server::Node`
//! with openraft, apply, the MVCC store and the etcd gRPC services — over turmoil's simulated
//! network and clock, with clients recording a history for the linearizability checker while
//! a nemesis partitions, delays, drops, crashes and power-cycles members and slows or fails
//! one member's log fsyncs.
//!
//! A seed reproduces a run exactly. Commands (also in docs/architecture.md, "Simulation"):
//! - CI seed set: `cargo test -p keel-sim --test sim`
//! - replay one run: `KEEL_SIM_SEED=S KEEL_SIM_SCENARIO=mixed cargo test -p keel-sim --test sim
//!   replay -- --ignored --nocapture`
//! - soak: `KEEL_SIM_SEEDS=N [KEEL_SIM_SCENARIO=mixed] cargo test --release -p keel-sim --test
//!   sim soak -- --ignored --nocapture`

mod disk;
mod member;
mod nemesis;
mod net;
mod rng;
mod run;
mod watcher;
mod workload;

use std::time::Duration;

use nemesis::{FaultKind, ALL_FAULTS};
use run::{run, Outcome, Scenario};

/// Every fault, real code.
const MIXED: Scenario = Scenario {
    name: "mixed",
    faults: &ALL_FAULTS,
    work: Duration::from_secs(12),
    fsync_delay: Duration::from_millis(5),
    ack_before_fsync: false,
    stale_reads: false,
    snapshot_count: 300,
};

/// Crashes of one member and of the whole cluster (power loss), with a slow disk.
const POWER_LOSS: Scenario = Scenario {
    name: "power-loss",
    faults: &[FaultKind::PowerLoss, FaultKind::CrashMember],
    work: Duration::from_secs(10),
    fsync_delay: Duration::from_millis(20),
    ack_before_fsync: false,
    stale_reads: false,
    snapshot_count: 100_000,
};

/// Partitions that leave a member (often the leader) behind, and delayed links.
const PARTITIONS: Scenario = Scenario {
    name: "partitions",
    faults: &[
        FaultKind::IsolateLeader,
        FaultKind::IsolateMember,
        FaultKind::Bridge,
        FaultKind::Delay,
    ],
    work: Duration::from_secs(10),
    fsync_delay: Duration::from_millis(5),
    ack_before_fsync: false,
    stale_reads: false,
    snapshot_count: 100_000,
};

/// The leader crashes and comes back quickly, again and again.
const LEADER_RESTART: Scenario = Scenario {
    name: "leader-restart",
    faults: &[FaultKind::CrashLeader],
    work: Duration::from_secs(10),
    fsync_delay: Duration::from_millis(5),
    ack_before_fsync: false,
    stale_reads: false,
    snapshot_count: 100_000,
};

/// The fixed CI seed set (issue 4 item 6). A seed that once failed stays here as a regression
/// test where it still reproduces (`mixed` seed 1 caught a restarted leader serving stale read
/// indexes before the harness changed; `leader-restart` now guards that fix).
const CI_SEEDS_MIXED: [u64; 3] = [1, 2, 3];
const CI_SEEDS_FOCUSED: [u64; 2] = [1, 2];
/// Seeds the planted bugs are hunted with; each bug must be caught by at least one.
const CI_SEEDS_PLANTED: [u64; 3] = [1, 2, 3];

fn scenario(name: &str) -> Scenario {
    let planted = name.strip_suffix("+ack-before-fsync");
    let stale = name.strip_suffix("+stale-reads");
    let base = planted.or(stale).unwrap_or(name);
    let mut s = match base {
        "mixed" => MIXED,
        // Short enough to finish well within h2's 30 s (wall clock) reset-stream expiry even on
        // a loaded machine; see `a_seed_replays_exactly`.
        "mixed-short" => Scenario {
            name: "mixed-short",
            work: Duration::from_secs(6),
            ..MIXED
        },
        "power-loss" => POWER_LOSS,
        "partitions" => PARTITIONS,
        "leader-restart" => LEADER_RESTART,
        other => panic!(
            "unknown scenario {other:?} (mixed, power-loss, partitions; \
             suffix +ack-before-fsync or +stale-reads)"
        ),
    };
    s.ack_before_fsync = planted.is_some();
    s.stale_reads = stale.is_some();
    s
}

fn summary(o: &Outcome) -> String {
    format!(
        "seed {} scenario {}: {} ops, {} faults, {} watch events, digest {:016x}, {}",
        o.seed,
        o.scenario,
        o.history.ops.len(),
        o.faults_injected,
        o.watch_events,
        o.digest,
        match &o.verdict {
            Ok(()) => "linearizable, members agree".to_string(),
            Err(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
        }
    )
}

/// The report of a failed run: seed, what went wrong, the faults and the replay command.
fn failure_report(o: &Outcome) -> String {
    format!(
        "simulation failed: seed {} scenario {}\n{}\nfaults:\n{}\nfinal state: {:?}\nreplay: {}",
        o.seed,
        o.scenario,
        o.verdict.as_ref().err().map_or("", String::as_str),
        o.fault_log.join("\n"),
        o.final_state,
        o.replay_command()
    )
}

/// Runs one seed in the child process this test binary was started as (see [`isolated`]) and
/// prints the outcome for the parent. Does not fail on a bad verdict: the parent decides.
#[test]
#[ignore = "run by the other tests in a child process"]
fn child_run() {
    let Some(seed) = std::env::var("KEEL_SIM_SEED").ok() else {
        return;
    };
    let seed: u64 = seed.parse().expect("KEEL_SIM_SEED is a number");
    let name = std::env::var("KEEL_SIM_SCENARIO").unwrap_or_else(|_| "mixed".into());
    let o = run(seed, &scenario(&name));
    if o.verdict.is_err() {
        eprintln!("{}", failure_report(&o));
    }
    println!(
        "KEEL_SIM_OUTCOME ok={} digest={:016x} ops={} faults={} watch_events={}",
        o.verdict.is_ok(),
        o.digest,
        o.history.ops.len(),
        o.faults_injected,
        o.watch_events
    );
}

/// What a child process reported.
struct Isolated {
    seed: u64,
    scenario: String,
    /// `None` if the child died without reporting (a panic in a simulated member).
    ok: Option<bool>,
    digest: String,
    ops: usize,
    faults: usize,
    output: String,
}

impl Isolated {
    fn caught(&self) -> bool {
        self.ok != Some(true)
    }

    fn replay(&self) -> String {
        format!(
            "KEEL_SIM_SEED={} KEEL_SIM_SCENARIO={} cargo test -p keel-sim --test sim replay -- --ignored --nocapture",
            self.seed, self.scenario
        )
    }
}

/// Runs one seed in a fresh process. A run is reproducible from its seed in a fresh process;
/// a second run in the same process is not (process-global state such as tokio's task-id
/// counter outlives a run), so every run gets its own process, exactly as a replay does.
fn isolated(seed: u64, scenario: &str) -> Isolated {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "child_run",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEEL_SIM_SEED", seed.to_string())
        .env("KEEL_SIM_SCENARIO", scenario)
        .env_remove("KEEL_SIM_TRACE")
        .output()
        .expect("start the simulation child process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("KEEL_SIM_OUTCOME ").map(|(_, rest)| rest))
        .unwrap_or("");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let ok = match field("ok").as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    let result = Isolated {
        seed,
        scenario: scenario.to_string(),
        ok: if out.status.success() { ok } else { None },
        digest: field("digest"),
        ops: field("ops").parse().unwrap_or(0),
        faults: field("faults").parse().unwrap_or(0),
        output: format!("{stdout}\n{stderr}"),
    };
    eprintln!(
        "seed {seed} scenario {scenario}: {} ops, {} faults, digest {}, {}",
        result.ops,
        result.faults,
        result.digest,
        match result.ok {
            Some(true) => "linearizable, members agree",
            Some(false) => "FAILED (history or convergence)",
            None => "FAILED (the run died)",
        }
    );
    result
}

/// Fails the test with the child's report and the one command that replays the run.
fn expect_pass(r: &Isolated) {
    if r.caught() {
        let tail: Vec<&str> = r.output.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "simulation failed: seed {} scenario {}\n{}\nreplay: {}",
            r.seed,
            r.scenario,
            tail.join("\n"),
            r.replay()
        );
    }
    assert!(r.ops > 0, "seed {} recorded no operations", r.seed);
}

#[test]
fn ci_seeds_mixed_faults_real_code() {
    for seed in CI_SEEDS_MIXED {
        expect_pass(&isolated(seed, "mixed"));
    }
}

/// Regression guard for the restarted leader that served stale read indexes (openraft's
/// leader restore): with `enable_leader_restore` back on, seeds 1-4 of this scenario all fail.
#[test]
fn ci_seeds_leader_restart_real_code() {
    for seed in CI_SEEDS_FOCUSED {
        expect_pass(&isolated(seed, "leader-restart"));
    }
}

#[test]
fn ci_seeds_power_loss_and_partitions_real_code() {
    for seed in CI_SEEDS_FOCUSED {
        expect_pass(&isolated(seed, "power-loss"));
        expect_pass(&isolated(seed, "partitions"));
    }
}

/// Two runs of one seed, each in a fresh process, must be identical. The one source of
/// nondeterminism left is wall-clock time inside h2 (its reset-stream expiry uses
/// `std::time::Instant`, 30 s): a run that takes longer than that in real time (a heavily loaded
/// machine) can diverge, so this check uses a short run.
#[test]
fn a_seed_replays_exactly() {
    let a = isolated(7, "mixed-short");
    let b = isolated(7, "mixed-short");
    expect_pass(&a);
    assert!(a.faults > 0, "the run injected faults");
    assert_eq!(
        (a.digest.as_str(), a.ops),
        (b.digest.as_str(), b.ops),
        "two runs of one seed differ (digest covers the history with times and results, \
         the fault log and every member's final applied index, revision and HashKV)"
    );
    let other = isolated(8, "mixed-short");
    assert_ne!(a.digest, other.digest, "another seed gives another run");
}

/// Hunts a planted bug over the planted seed set; stops at the first seed that catches it.
fn hunt(scenario: &str) -> Option<Isolated> {
    CI_SEEDS_PLANTED
        .iter()
        .map(|&seed| isolated(seed, scenario))
        .find(Isolated::caught)
}

/// Planted bug (a): a log that acknowledges appends before fsync loses acknowledged writes in
/// a power loss.
#[test]
fn planted_ack_before_fsync_is_caught() {
    let caught = hunt("power-loss+ack-before-fsync")
        .expect("no planted seed caught a log that acknowledges appends before fsync");
    eprintln!(
        "caught by seed {}: replay with {}",
        caught.seed,
        caught.replay()
    );
    // The same seed without the bug passes: the failure is the bug's, not the seed's.
    expect_pass(&isolated(caught.seed, "power-loss"));
}

/// Planted bug (b): linearizable reads served from local state without the read barrier.
#[test]
fn planted_stale_follower_reads_are_caught() {
    let caught = hunt("partitions+stale-reads")
        .expect("no planted seed caught linearizable reads served without the read barrier");
    eprintln!(
        "caught by seed {}: replay with {}",
        caught.seed,
        caught.replay()
    );
    expect_pass(&isolated(caught.seed, "partitions"));
}

/// Replays one run in this process: `KEEL_SIM_SEED=S [KEEL_SIM_SCENARIO=name]`
/// (`KEEL_SIM_TRACE=1` prints every operation).
#[test]
#[ignore = "replay: set KEEL_SIM_SEED (and KEEL_SIM_SCENARIO)"]
fn replay() {
    let Ok(seed) = std::env::var("KEEL_SIM_SEED") else {
        eprintln!("replay: set KEEL_SIM_SEED (and KEEL_SIM_SCENARIO); nothing to replay");
        return;
    };
    let seed: u64 = seed.parse().expect("KEEL_SIM_SEED is a number");
    let name = std::env::var("KEEL_SIM_SCENARIO").unwrap_or_else(|_| "mixed".into());
    let o = run(seed, &scenario(&name));
    eprintln!("faults:\n{}", o.fault_log.join("\n"));
    eprintln!("final state: {:?}", o.final_state);
    eprintln!("{}", summary(&o));
    if o.verdict.is_err() {
        panic!("{}", failure_report(&o));
    }
}

/// Runs `KEEL_SIM_SEEDS=N` random seeds of `KEEL_SIM_SCENARIO` (default mixed),
/// each in its own process, and stops at the first failure.
#[test]
#[ignore = "soak: KEEL_SIM_SEEDS=N (release build recommended)"]
fn soak() {
    let Ok(n) = std::env::var("KEEL_SIM_SEEDS") else {
        eprintln!("soak: set KEEL_SIM_SEEDS=N to run N random seeds");
        return;
    };
    let n: u64 = n.parse().expect("KEEL_SIM_SEEDS is a number");
    let name = std::env::var("KEEL_SIM_SCENARIO").unwrap_or_else(|_| "mixed".into());
    // The soak's own seeds come from the wall clock; each run is still replayable by its seed.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (mut faults, mut ops) = (0, 0);
    for i in 0..n {
        let seed = rng::SimRng::new(base ^ i).next_u64() >> 1;
        let r = isolated(seed, &name);
        faults += r.faults;
        ops += r.ops;
        expect_pass(&r);
    }
    eprintln!("soak: {n} seeds of {name}, {faults} faults, {ops} operations, all linearizable");
}
