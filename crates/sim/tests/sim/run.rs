//! One simulation run: a 3-member keel cluster, clients, a nemesis; then the checks.

use std::cell::RefCell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use keel_raft::MemLogOptions;
use keel_sim::history::History;
use keel_sim::linearizability::{check, CheckOptions, Verdict};
use keel_sim::watch::{
    validate_watch, EventKind as WatchKind, WatchEvent, WatchResponse, WatchSpec,
};
use keel_storage::EventKind;

use crate::member::{run_member, FatalSlot, MemberDisks, MemberSpec, ServerSlot};
use crate::nemesis::{FaultKind, Nemesis, Targets};
use crate::watcher::{run_watcher, Streams, RANGE};
use crate::workload::{run_client, Recorded, WorkloadSpec};

const MEMBERS: usize = 3;
const CLIENTS: u64 = 3;
const BASE_LATENCY_MAX: Duration = Duration::from_millis(5);

/// What one run does.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub faults: &'static [FaultKind],
    /// Simulated time clients issue operations (faults are injected meanwhile).
    pub work: Duration,
    pub fsync_delay: Duration,
    /// Planted bug (a): the log acknowledges appends before their fsync.
    pub ack_before_fsync: bool,
    /// Planted bug (b): linearizable reads skip the ReadIndex barrier.
    pub stale_reads: bool,
    pub snapshot_count: u64,
}

/// What a run produced.
pub struct Outcome {
    pub seed: u64,
    pub scenario: String,
    pub history: History,
    /// `Ok` if linearizable and the members converged; otherwise what is wrong.
    pub verdict: Result<(), String>,
    pub faults_injected: usize,
    pub fault_log: Vec<String>,
    /// Digest of everything observable: history with results, fault log, final member state.
    pub digest: u64,
    pub final_state: Vec<String>,
    /// Events the watcher received (all streams).
    pub watch_events: usize,
}

impl Outcome {
    pub fn replay_command(&self) -> String {
        format!(
            "KEEL_SIM_SEED={} KEEL_SIM_SCENARIO={} cargo test -p keel-sim --test sim replay -- --ignored --nocapture",
            self.seed, self.scenario
        )
    }
}

fn member_ip(i: usize) -> IpAddr {
    // turmoil hands out 192.168.0.1, .2, ... in registration order; members register first.
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, (i + 1) as u8))
}

/// Runs one seed of a scenario to the end and checks it.
pub fn run(seed: u64, scenario: &Scenario) -> Outcome {
    keel_raft::seed_thread_rng(Some(seed));
    assert!(
        keel_raft::set_peer_dialer(crate::net::dial_peer),
        "another peer dialer is installed"
    );
    keel_server::planted::set_stale_reads(scenario.stale_reads);

    let settle = Duration::from_secs(30);
    let final_read_after = Duration::from_secs(3);
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(BASE_LATENCY_MAX)
        .simulation_duration(scenario.work + final_read_after + settle + Duration::from_secs(30));
    let mut sim = builder.build();

    let names: Vec<String> = (1..=MEMBERS).map(|i| format!("n{i}")).collect();
    let initial_cluster = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}=http://{}:{}", member_ip(i), crate::net::PEER_PORT))
        .collect::<Vec<_>>()
        .join(",");
    let options = MemLogOptions {
        fsync_delay: scenario.fsync_delay,
        ack_before_fsync: scenario.ack_before_fsync,
    };
    let mut slots: Vec<ServerSlot> = Vec::new();
    let mut fatal: Vec<FatalSlot> = Vec::new();
    let mut log_disks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let spec = MemberSpec {
            name: name.clone(),
            ip: member_ip(i),
            initial_cluster: initial_cluster.clone(),
            heartbeat_ms: 50,
            election_timeout_ms: 500,
            snapshot_count: scenario.snapshot_count,
        };
        let config = spec.config();
        let disks = MemberDisks::new(options);
        log_disks.push(disks.log.clone());
        let slot: ServerSlot = Rc::default();
        slots.push(slot.clone());
        let stopped: FatalSlot = Rc::default();
        fatal.push(stopped.clone());
        let ip = spec.ip;
        sim.host(name.as_str(), move || {
            run_member(
                config.clone(),
                ip,
                disks.clone(),
                slot.clone(),
                stopped.clone(),
            )
        });
        assert_eq!(sim.lookup(name.as_str()), ip, "turmoil assigned another IP");
    }

    let recorded: Recorded = Rc::new(RefCell::new(Vec::new()));
    let spec = WorkloadSpec {
        members: (0..MEMBERS).map(member_ip).collect(),
        work_end: scenario.work,
        final_read_after,
        op_timeout: Duration::from_secs(4),
        think: Duration::from_millis(20),
    };
    for c in 1..=CLIENTS {
        sim.client(
            format!("c{c}").as_str(),
            run_client(c, seed, spec.clone(), recorded.clone()),
        );
    }

    let streams: Streams = Rc::default();
    sim.client("w1", run_watcher(spec.clone(), streams.clone()));

    let mut nemesis = Nemesis::new(
        seed,
        scenario.faults,
        Targets {
            names: names.clone(),
            slots: slots.clone(),
            disks: log_disks,
            fatal,
        },
        scenario.work,
        BASE_LATENCY_MAX,
    );
    let sim_result = drive(
        &mut sim,
        &mut nemesis,
        &slots,
        scenario.work + final_read_after + settle,
    );
    let history = History::new(recorded.borrow().clone());
    let final_state = final_state(&slots);
    let mut verdict = sim_result.and_then(|()| converged(&final_state));
    if let Some(v) = &nemesis.violation {
        verdict = Err(v.clone());
    }
    if verdict.is_ok() {
        verdict = check_history(&history);
    }
    let mut watch_events = 0;
    if verdict.is_ok() {
        verdict = check_watches(&slots, &streams.borrow()).map(|n| watch_events = n);
    }
    let mut h = DefaultHasher::new();
    format!("{:?}", history.ops).hash(&mut h);
    nemesis.log.hash(&mut h);
    final_state.hash(&mut h);
    format!("{:?}", streams.borrow()).hash(&mut h);
    keel_server::planted::set_stale_reads(false);
    keel_raft::seed_thread_rng(None);
    Outcome {
        seed,
        scenario: scenario.name.to_string(),
        history,
        verdict,
        faults_injected: nemesis.injected,
        fault_log: nemesis.log,
        digest: h.finish(),
        final_state,
        watch_events,
    }
}

/// Steps the simulation with the nemesis until every client finished and the members agree,
/// or the deadline passes.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    nemesis: &mut Nemesis,
    slots: &[ServerSlot],
    deadline: Duration,
) -> Result<(), String> {
    loop {
        let clients_done = sim.step().map_err(|e| format!("simulation failed: {e}"))?;
        nemesis.tick(sim);
        if clients_done && converged(&final_state(slots)).is_ok() {
            return Ok(());
        }
        if sim.elapsed() > deadline {
            return Err(format!(
                "not finished after {deadline:?} of simulated time (clients done: {clients_done})"
            ));
        }
    }
}

/// Each member's applied index, revision and HashKV.
fn final_state(slots: &[ServerSlot]) -> Vec<String> {
    slots
        .iter()
        .enumerate()
        .map(|(i, slot)| match slot.borrow().as_ref() {
            None => format!("n{}: not running", i + 1),
            Some(server) => {
                let status = server.raft.status();
                match server.store.hash_kv(0) {
                    Ok(h) => format!(
                        "n{}: applied {} revision {} hash {:08x}",
                        i + 1,
                        status.applied_index,
                        h.revision,
                        h.hash
                    ),
                    Err(e) => format!("n{}: hash failed: {e}", i + 1),
                }
            }
        })
        .collect()
}

fn converged(state: &[String]) -> Result<(), String> {
    let tails: Vec<&str> = state
        .iter()
        .map(|s| s.split_once(": ").map_or(s.as_str(), |(_, t)| t))
        .collect();
    if tails.iter().all(|t| t.starts_with("applied ")) && tails.windows(2).all(|w| w[0] == w[1]) {
        Ok(())
    } else {
        Err(format!("members disagree: {state:?}"))
    }
}

fn check_history(history: &History) -> Result<(), String> {
    let options = CheckOptions {
        steps_max: 20_000_000,
        duration_max: Some(Duration::from_secs(60)),
        minimize: true,
    };
    let report = check(history, &options).map_err(|e| format!("malformed history: {e}"))?;
    match report.verdict {
        Verdict::Linearizable => Ok(()),
        Verdict::NotLinearizable(v) => {
            let ops: Vec<String> = v
                .ops
                .iter()
                .map(|&i| format!("  #{i}: {:?}", history.ops[i]))
                .collect();
            Err(format!(
                "not linearizable ({:?}): {}\n{}",
                v.check,
                v.detail,
                ops.join("\n")
            ))
        }
        Verdict::Unknown { key, limit } => Err(format!(
            "checker gave up on key {:?} ({limit:?})",
            String::from_utf8_lossy(&key)
        )),
    }
}

/// Every committed write in the watched range, read back from a member after the run.
fn committed_events(slots: &[ServerSlot]) -> Result<Vec<WatchEvent>, String> {
    let slot = slots[0].borrow();
    let server = slot.as_ref().ok_or("n1 is not running")?;
    let view = server.store.read().map_err(|e| e.to_string())?;
    let events = view
        .events(1, view.current_revision(), usize::MAX)
        .map_err(|e| e.to_string())?;
    Ok(events
        .into_iter()
        .filter(|e| e.kv.key.as_slice() >= RANGE.0 && e.kv.key.as_slice() < RANGE.1)
        .map(|e| {
            let delete = e.kind == EventKind::Delete;
            WatchEvent {
                kind: if delete {
                    WatchKind::Delete
                } else {
                    WatchKind::Put
                },
                value: if delete { Vec::new() } else { e.kv.value },
                key: e.kv.key,
                revision: e.kv.mod_revision,
            }
        })
        .collect())
}

/// Judges every watch stream against the committed history; returns the events delivered.
fn check_watches(
    slots: &[ServerSlot],
    streams: &[(WatchSpec, Vec<WatchResponse>)],
) -> Result<usize, String> {
    let committed = committed_events(slots)?;
    let mut delivered = 0;
    for (i, (spec, responses)) in streams.iter().enumerate() {
        if responses.is_empty() {
            continue;
        }
        let report = validate_watch(&committed, spec, responses).map_err(|v| {
            format!(
                "watch stream {i} (from revision {}): {v:?}",
                spec.start_revision
            )
        })?;
        delivered += report.events_delivered;
    }
    Ok(delivered)
}
