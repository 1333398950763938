//! Faults the simulation injects, driven from the harness between simulation steps.
//!
//! One fault at a time: start one, let it last a random while, heal it, pause, start the next.
//! Every choice comes from the run's seed.

use std::time::Duration;

use keel_raft::MemLogDisk;

use crate::member::{FatalSlot, ServerSlot};
use crate::rng::SimRng;

/// What a scenario may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Cut the leader (or, with no leader known, a random member) off from the other members.
    IsolateLeader,
    /// Cut a random member off from the others (minority | majority).
    IsolateMember,
    /// Cut the link between two members; the third still reaches both.
    Bridge,
    /// Crash one member (its unsynced log tail and store commits are lost); restart on heal.
    CrashMember,
    /// Crash the leader and restart it quickly (often before the others elect a new leader).
    CrashLeader,
    /// Crash every member at once (power loss); restart all on heal.
    PowerLoss,
    /// Hold one member's links (messages queue up), then release them all at once.
    Delay,
    /// Raise the network's message latency (and its spread).
    SlowNetwork,
    /// Drop messages at random (a dropped TCP segment breaks its connection in turmoil).
    Lossy,
    /// One member's log disk gets slow: every fsync takes 50..400 ms longer.
    SlowDisk,
    /// One member's next log fsync fails. The member must stop itself (never carry on with
    /// writes it could not make durable); on heal it is crashed and restarted from what its
    /// disk holds.
    FsyncFailure,
}

pub const ALL_FAULTS: [FaultKind; 11] = [
    FaultKind::IsolateLeader,
    FaultKind::IsolateMember,
    FaultKind::Bridge,
    FaultKind::CrashMember,
    FaultKind::CrashLeader,
    FaultKind::PowerLoss,
    FaultKind::Delay,
    FaultKind::SlowNetwork,
    FaultKind::Lossy,
    FaultKind::SlowDisk,
    FaultKind::FsyncFailure,
];

enum Active {
    Cut(Vec<(String, String)>),
    Crashed(Vec<usize>),
    Held(Vec<(String, String)>),
    Latency,
    Loss,
    SlowDisk(usize),
    /// The member, and how many fsyncs its disk had failed before.
    FsyncFailure(usize, u64),
}

/// What the nemesis reaches of each member, by index: its host name, running server, log
/// disk and fatal-stop report.
pub struct Targets {
    pub names: Vec<String>,
    pub slots: Vec<ServerSlot>,
    pub disks: Vec<MemLogDisk>,
    pub fatal: Vec<FatalSlot>,
}

pub struct Nemesis {
    rng: SimRng,
    kinds: Vec<FaultKind>,
    names: Vec<String>,
    slots: Vec<ServerSlot>,
    disks: Vec<MemLogDisk>,
    fatal: Vec<FatalSlot>,
    next_at: Duration,
    active: Option<Active>,
    work_end: Duration,
    base_latency: Duration,
    /// What was injected, when: part of the run's trace.
    pub log: Vec<String>,
    pub injected: usize,
    /// A member that carried on after a failed fsync (the run then fails).
    pub violation: Option<String>,
}

impl Nemesis {
    pub fn new(
        seed: u64,
        kinds: &[FaultKind],
        members: Targets,
        work_end: Duration,
        base_latency: Duration,
    ) -> Self {
        let Targets {
            names,
            slots,
            disks,
            fatal,
        } = members;
        let mut rng = SimRng::new(seed ^ 0x006e_656d_6573_6973);
        let first = rng.millis(1_000, 2_000);
        Self {
            rng,
            kinds: kinds.to_vec(),
            names,
            slots,
            disks,
            fatal,
            next_at: first,
            active: None,
            work_end,
            base_latency,
            log: Vec::new(),
            injected: 0,
            violation: None,
        }
    }

    /// Called after every simulation step.
    pub fn tick(&mut self, sim: &mut turmoil::Sim<'_>) {
        let now = sim.elapsed();
        if now >= self.work_end {
            self.heal(sim, now);
            return;
        }
        if now < self.next_at || self.kinds.is_empty() {
            return;
        }
        if self.active.is_some() {
            self.heal(sim, now);
            self.next_at = now + self.rng.millis(300, 1_500);
        } else {
            let kind = self.kinds[self.rng.below(self.kinds.len() as u64) as usize];
            self.start(sim, kind, now);
            self.next_at = now
                + if kind == FaultKind::CrashLeader {
                    // Back before the others' election timeout (500..1000 ms) runs out.
                    self.rng.millis(50, 400)
                } else {
                    self.rng.millis(500, 3_000)
                };
        }
    }

    fn others(&self, i: usize) -> Vec<(String, String)> {
        (0..self.names.len())
            .filter(|j| *j != i)
            .map(|j| (self.names[i].clone(), self.names[j].clone()))
            .collect()
    }

    fn leader(&mut self) -> usize {
        let leader = self.slots.iter().position(|slot| {
            slot.borrow()
                .as_ref()
                .is_some_and(|s| s.raft.leadership().0)
        });
        leader.unwrap_or_else(|| self.rng.below(self.names.len() as u64) as usize)
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, kind: FaultKind, now: Duration) {
        let n = self.names.len() as u64;
        let active = match kind {
            FaultKind::IsolateLeader | FaultKind::IsolateMember => {
                let i = if kind == FaultKind::IsolateLeader {
                    self.leader()
                } else {
                    self.rng.below(n) as usize
                };
                let pairs = self.others(i);
                for (a, b) in &pairs {
                    sim.partition(a.as_str(), b.as_str());
                }
                Active::Cut(pairs)
            }
            FaultKind::Bridge => {
                let a = self.rng.below(n) as usize;
                let b = (a + 1 + self.rng.below(n - 1) as usize) % n as usize;
                let pair = (self.names[a].clone(), self.names[b].clone());
                sim.partition(pair.0.as_str(), pair.1.as_str());
                Active::Cut(vec![pair])
            }
            FaultKind::CrashMember | FaultKind::CrashLeader | FaultKind::PowerLoss => {
                let victims: Vec<usize> = match kind {
                    FaultKind::PowerLoss => (0..self.names.len()).collect(),
                    FaultKind::CrashLeader => vec![self.leader()],
                    _ => vec![self.rng.below(n) as usize],
                };
                for &i in &victims {
                    sim.crash(self.names[i].as_str());
                    *self.slots[i].borrow_mut() = None;
                }
                Active::Crashed(victims)
            }
            FaultKind::Delay => {
                let i = self.rng.below(n) as usize;
                let pairs = self.others(i);
                for (a, b) in &pairs {
                    sim.hold(a.as_str(), b.as_str());
                }
                Active::Held(pairs)
            }
            FaultKind::SlowNetwork => {
                let max = self.rng.millis(20, 150);
                sim.set_max_message_latency(max);
                Active::Latency
            }
            FaultKind::Lossy => {
                sim.set_fail_rate(0.002 * (1 + self.rng.below(5)) as f64);
                Active::Loss
            }
            FaultKind::SlowDisk => {
                let i = self.rng.below(n) as usize;
                self.disks[i].set_extra_fsync_delay(self.rng.millis(50, 400));
                Active::SlowDisk(i)
            }
            FaultKind::FsyncFailure => {
                let i = self.rng.below(n) as usize;
                let failed_before = self.disks[i].failed_fsyncs();
                self.disks[i].set_fail_next_fsync(true);
                Active::FsyncFailure(i, failed_before)
            }
        };
        self.injected += 1;
        self.log.push(format!(
            "{:>7}ms start {kind:?}{}",
            now.as_millis(),
            describe(&active)
        ));
        self.active = Some(active);
    }

    /// Ends the active fault, if any.
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        let Some(active) = self.active.take() else {
            return;
        };
        match &active {
            Active::Cut(pairs) => {
                for (a, b) in pairs {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
            Active::Crashed(victims) => {
                for &i in victims {
                    sim.bounce(self.names[i].as_str());
                }
            }
            Active::Held(pairs) => {
                for (a, b) in pairs {
                    sim.release(a.as_str(), b.as_str());
                }
            }
            Active::Latency => sim.set_max_message_latency(self.base_latency),
            Active::Loss => sim.set_fail_rate(0.0),
            Active::SlowDisk(i) => self.disks[*i].set_extra_fsync_delay(Duration::ZERO),
            Active::FsyncFailure(i, failed_before) => {
                let outcome = self.end_fsync_failure(sim, *i, *failed_before);
                self.log
                    .push(format!("{:>7}ms   n{}: {outcome}", now.as_millis(), i + 1));
            }
        }
        self.log.push(format!(
            "{:>7}ms heal{}",
            now.as_millis(),
            describe(&active)
        ));
    }

    /// Ends an fsync-failure fault on member `i`: if an fsync did fail, the member must have
    /// stopped itself; either way it is crashed and restarted from its durable state, as an
    /// operator would after replacing the disk. Returns what happened, for the fault log.
    fn end_fsync_failure(&mut self, sim: &mut turmoil::Sim<'_>, i: usize, before: u64) -> String {
        self.disks[i].set_fail_next_fsync(false);
        let failed = self.disks[i].failed_fsyncs() > before;
        let stopped = self.fatal[i].borrow().clone();
        let outcome = match (failed, &stopped) {
            (true, Some(reason)) => format!("fsync failed; member stopped ({reason})"),
            (true, None) => {
                let v = "an fsync failed and the member carried on".to_string();
                self.violation.get_or_insert(format!("n{}: {v}", i + 1));
                v
            }
            (false, _) => "no fsync happened while the fault was on".to_string(),
        };
        let name = self.names[i].clone();
        sim.crash(name.as_str());
        *self.slots[i].borrow_mut() = None;
        *self.fatal[i].borrow_mut() = None;
        sim.bounce(name.as_str());
        outcome
    }
}

fn describe(active: &Active) -> String {
    match active {
        Active::Cut(pairs) | Active::Held(pairs) => {
            pairs.iter().map(|(a, b)| format!(" {a}-{b}")).collect()
        }
        Active::Crashed(victims) => victims.iter().map(|i| format!(" n{}", i + 1)).collect(),
        Active::Latency | Active::Loss => String::new(),
        Active::SlowDisk(i) | Active::FsyncFailure(i, _) => format!(" n{}", i + 1),
    }
}
