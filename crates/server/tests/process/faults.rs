//! The nemesis of the process-level test: a seeded schedule of faults on real processes.
//!
//! Owns: choosing each fault and how long it lasts (from the seed), applying it through
//! `ProcCluster` (SIGKILL + restart, SIGSTOP/SIGCONT, link drops and delays), healing
//! everything after it and requiring a leader again before the next one (a liveness check:
//! a cluster that does not recover within `RECOVERY_WAIT` fails the test).
//! Must never: leave a fault in place when it returns.
//!
//! The seed fixes the sequence of fault kinds and durations; which member a fault hits also
//! depends on who leads at that moment, which the real run decides.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::cluster::ProcCluster;
use super::proxy::LinkMode;
use super::workload::Rng;

/// Time everything is healthy between two faults, so clients make progress.
const HEAL_MIN: Duration = Duration::from_millis(1500);
const HEAL_MAX: Duration = Duration::from_secs(4);
/// How long a fault lasts.
const FAULT_MIN: Duration = Duration::from_secs(1);
const FAULT_MAX: Duration = Duration::from_secs(5);
/// Longest a fault plus its heal can take; no new fault starts closer than this to the end.
const ROUND_MAX: Duration = Duration::from_secs(10);
/// Longest wait for an agreed leader once a fault is healed.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// Bounds of the delay a slow network adds to each chunk.
const DELAY_MIN: Duration = Duration::from_millis(20);
const DELAY_MAX: Duration = Duration::from_millis(300);
/// How often the others are asked for a new leader while the leader is away.
const FAILOVER_PROBE: Duration = Duration::from_millis(100);

/// The kinds of fault, each with its weight in the schedule.
const KINDS: [(&str, usize); 9] = [
    ("kill-leader", 3),
    ("kill-follower", 2),
    ("kill-majority", 1),
    ("pause-leader", 2),
    ("pause-follower", 1),
    ("isolate-leader", 3),
    ("isolate-follower", 1),
    ("bridge", 2),
    ("leader-one-way", 2),
];
/// A slow network, also scheduled (weight 2).
const DELAY_WEIGHT: usize = 2;

/// What the nemesis did.
#[derive(Debug, Default)]
pub struct NemesisLog {
    pub faults: BTreeMap<&'static str, usize>,
    /// Longest time from healing a fault to an agreed leader.
    pub recovery_ms_max: u128,
    /// For faults that take the leader away: how long the others took to agree on a new
    /// leader (`None`: not within the fault's duration).
    pub failovers_ms: Vec<(&'static str, Option<u128>)>,
}

impl NemesisLog {
    pub fn total(&self) -> usize {
        self.faults.values().sum()
    }
}

fn pick_kind(rng: &mut Rng) -> &'static str {
    let total: usize = KINDS.iter().map(|(_, w)| w).sum::<usize>() + DELAY_WEIGHT;
    let mut r = rng.below(total);
    for (kind, w) in KINDS {
        if r < w {
            return kind;
        }
        r -= w;
    }
    "delay"
}

/// A member other than `not`, at random.
fn other(rng: &mut Rng, n: usize, not: usize) -> usize {
    (not + 1 + rng.below(n - 1)) % n
}

/// Holds a fault that took `old` (the leader) away for `hold`, watching when the other
/// members agree on a new leader among themselves.
async fn hold_watching_failover(cluster: &ProcCluster, old: usize, hold: Duration) -> Option<u128> {
    let started = Instant::now();
    let mut failover = None;
    while started.elapsed() < hold {
        if failover.is_none() {
            let mut seen = Vec::new();
            for i in (0..cluster.len()).filter(|&i| i != old) {
                seen.push(
                    cluster
                        .status(i)
                        .await
                        .and_then(|s| cluster.index_of(s.leader)),
                );
            }
            if seen
                .iter()
                .all(|l| l.is_some_and(|l| l != old) && *l == seen[0])
            {
                failover = Some(started.elapsed().as_millis());
            }
        }
        // Probe cadence while the fault lasts, not a synchroniser.
        tokio::time::sleep(FAILOVER_PROBE.min(hold.saturating_sub(started.elapsed()))).await;
    }
    failover
}

/// Runs faults until `until`, one at a time, healing and waiting for a leader after each.
pub async fn nemesis(cluster: &mut ProcCluster, mut rng: Rng, until: Instant) -> NemesisLog {
    let mut log = NemesisLog::default();
    let n = cluster.len();
    while Instant::now() + ROUND_MAX <= until {
        // Pacing of the schedule (healthy time), not a synchroniser.
        tokio::time::sleep(rng.between(HEAL_MIN, HEAL_MAX)).await;
        let kind = pick_kind(&mut rng);
        let hold = rng.between(FAULT_MIN, FAULT_MAX);
        let leader = cluster
            .probable_leader()
            .await
            .unwrap_or_else(|| rng.below(n));
        let follower = other(&mut rng, n, leader);
        tracing::info!(
            kind,
            leader,
            follower,
            hold_ms = hold.as_millis(),
            "--- nemesis: fault"
        );
        // Set by faults that take the leader away: how long until the others agreed on another.
        let mut failover: Option<Option<u128>> = None;
        match kind {
            "kill-leader" | "kill-follower" | "kill-majority" => {
                let victims = match kind {
                    "kill-leader" => vec![leader],
                    "kill-follower" => vec![follower],
                    _ => vec![leader, follower],
                };
                for &v in &victims {
                    cluster.kill(v);
                }
                if kind == "kill-leader" {
                    failover = Some(hold_watching_failover(cluster, leader, hold).await);
                } else {
                    tokio::time::sleep(hold).await;
                }
                for &v in &victims {
                    cluster.restart(v).await;
                }
            }
            "pause-leader" | "pause-follower" => {
                let victim = if kind == "pause-leader" {
                    leader
                } else {
                    follower
                };
                cluster.pause(victim);
                if kind == "pause-leader" {
                    failover = Some(hold_watching_failover(cluster, leader, hold).await);
                } else {
                    tokio::time::sleep(hold).await;
                }
                cluster.resume(victim);
            }
            "isolate-leader" => {
                cluster.isolate(leader);
                failover = Some(hold_watching_failover(cluster, leader, hold).await);
            }
            "isolate-follower" => {
                cluster.isolate(follower);
                tokio::time::sleep(hold).await;
            }
            "bridge" => {
                // The leader and one follower cannot talk; the third member talks to both.
                cluster.cut(leader, follower);
                tokio::time::sleep(hold).await;
            }
            "leader-one-way" => {
                // The leader's own connections to its peers fail; theirs to it work.
                for j in (0..n).filter(|&j| j != leader) {
                    cluster.set_link(leader, j, LinkMode::Drop);
                }
                tokio::time::sleep(hold).await;
            }
            _ => {
                let delay = rng.between(DELAY_MIN, DELAY_MAX);
                tracing::info!(delay_ms = delay.as_millis(), "--- nemesis: slow network");
                cluster.set_all_links(LinkMode::Delay(delay));
                tokio::time::sleep(hold).await;
            }
        }
        *log.faults.entry(kind).or_default() += 1;
        if let Some(f) = failover {
            log.failovers_ms.push((kind, f));
        }
        cluster.heal().await;
        let healed = Instant::now();
        let leader = cluster.wait_for_leader(RECOVERY_WAIT).await;
        let recovery_ms = healed.elapsed().as_millis();
        log.recovery_ms_max = log.recovery_ms_max.max(recovery_ms);
        tracing::info!(kind, leader, recovery_ms, failover_ms = ?failover, "--- nemesis: healed");
    }
    tracing::info!(?log, "--- nemesis: done");
    log
}
