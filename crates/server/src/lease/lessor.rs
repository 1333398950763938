//! The lessor core: which leases are alive and when each expires, as the leader sees it.
//!
//! Owns: expiry deadlines, renewals, and what the leader replicates about time: how far the
//! lease clock moves (see `apply::lease`) and the remaining TTLs of renewed leases. Only the
//! primary (the leader's lessor) keeps deadlines; a follower's lessor is empty and learns
//! everything from the store when it is promoted.
//! Must never: read a clock (time is an argument) or do I/O.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::apply::lease::LeaseRecord;

#[derive(Clone, Copy, Debug)]
struct Live {
    ttl_s: i64,
    expiry: Instant,
}

#[derive(Debug, Default)]
pub struct Lessor {
    primary: bool,
    leases: HashMap<i64, Live>,
    /// `(expiry, id)` of every lease in `leases`: the expiry check reads only the leases that
    /// are due, not every live lease on each tick.
    by_expiry: BTreeSet<(Instant, i64)>,
    /// Leases renewed since their deadline was last replicated.
    renewed: HashSet<i64>,
    /// The time before this instant is in the replicated lease clock, or was left out of it
    /// because no lease was alive. `None` unless primary.
    clock_mark: Option<Instant>,
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

impl Lessor {
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Becomes primary: every stored lease expires after its remaining TTL on the lease clock
    /// (`clock_ms`, as stored) plus `extend` (etcd extends by an election timeout so clients
    /// have time to find the new leader before their leases expire).
    pub fn promote(
        &mut self,
        now: Instant,
        clock_ms: i64,
        records: &[(i64, LeaseRecord)],
        extend: Duration,
    ) {
        self.primary = true;
        self.renewed.clear();
        self.clock_mark = Some(now);
        self.leases.clear();
        self.by_expiry.clear();
        for (id, r) in records {
            let left = Duration::from_millis(r.remaining_ms(clock_ms) as u64);
            self.insert(*id, r.ttl_s, now + left + extend);
        }
    }

    /// Adds or replaces a lease, keeping `by_expiry` in step with `leases`.
    fn insert(&mut self, id: i64, ttl_s: i64, expiry: Instant) {
        if let Some(old) = self.leases.insert(id, Live { ttl_s, expiry }) {
            self.by_expiry.remove(&(old.expiry, id));
        }
        self.by_expiry.insert((expiry, id));
    }

    pub fn demote(&mut self) {
        self.primary = false;
        self.leases.clear();
        self.by_expiry.clear();
        self.renewed.clear();
        self.clock_mark = None;
    }

    /// A grant was applied.
    pub fn granted(&mut self, id: i64, ttl_s: i64, now: Instant) {
        if self.primary {
            if self.leases.is_empty() {
                // The clock did not count the time without leases; it starts again now.
                self.clock_mark = Some(now);
            }
            self.insert(id, ttl_s, now + secs(ttl_s));
        }
    }

    /// A revoke was applied.
    pub fn revoked(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.by_expiry.remove(&(old.expiry, id));
        }
        self.renewed.remove(&id);
    }

    /// A keepalive: restarts the lease's TTL. Returns the TTL, or `None` for an unknown or
    /// already expired lease.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let live = *self.leases.get(&id)?;
        if live.expiry <= now {
            return None;
        }
        self.insert(id, live.ttl_s, now + secs(live.ttl_s));
        self.renewed.insert(id);
        Some(live.ttl_s)
    }

    /// `(granted TTL, remaining whole seconds)` of a live lease.
    pub fn remaining_s(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let live = self.leases.get(&id)?;
        let left = live.expiry.saturating_duration_since(now);
        Some((live.ttl_s, left.as_secs() as i64))
    }

    /// Leases past their deadline, at most `max`, soonest first.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        self.by_expiry
            .iter()
            .take_while(|(expiry, _)| *expiry <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    /// How far to move the lease clock: the time since the last move, if any lease is alive
    /// (with none, the time is left out and nothing is proposed). `None` unless primary.
    pub fn clock_advance(&mut self, now: Instant) -> Option<u64> {
        let mark = self.clock_mark.as_mut()?;
        let elapsed = now.saturating_duration_since(*mark);
        *mark = now;
        (!self.leases.is_empty()).then_some(elapsed.as_millis() as u64)
    }

    /// The remaining TTLs of the leases renewed since the last call, rounded up so a checkpoint
    /// never shortens a lease. They count as replicated from here on; see [`Lessor::unsent`].
    pub fn checkpoints(&mut self, now: Instant) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .renewed
            .drain()
            .filter_map(|id| {
                let left = self.leases.get(&id)?.expiry.saturating_duration_since(now);
                Some((id, left.as_secs_f64().ceil() as i64))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Checkpoints that were not replicated: they go out again with the next ones.
    pub fn unsent(&mut self, ids: impl IntoIterator<Item = i64>) {
        let live: Vec<i64> = ids
            .into_iter()
            .filter(|id| self.leases.contains_key(id))
            .collect();
        self.renewed.extend(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ttl_s: i64, deadline_ms: i64) -> LeaseRecord {
        LeaseRecord { ttl_s, deadline_ms }
    }

    #[test]
    fn a_follower_tracks_nothing_and_a_promoted_leader_continues_from_checkpoints() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.granted(1, 30, t0);
        assert_eq!(l.remaining_s(1, t0), None, "followers keep no deadlines");
        // The lease's deadline is 20 s after the clock's current time.
        l.promote(
            t0,
            5_000,
            &[(1, record(30, 25_000))],
            Duration::from_secs(1),
        );
        assert_eq!(
            l.remaining_s(1, t0),
            Some((30, 21)),
            "remaining TTL, not the full TTL"
        );
        assert!(l.expired(t0 + Duration::from_secs(20), 10).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(21), 10), vec![1]);
        l.demote();
        assert_eq!(l.remaining_s(1, t0), None);
    }

    #[test]
    fn renew_restarts_the_ttl_but_not_for_expired_or_unknown_leases() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.promote(t0, 0, &[], Duration::ZERO);
        l.granted(7, 10, t0);
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(l.renew(7, t5), Some(10));
        assert_eq!(l.remaining_s(7, t5), Some((10, 10)));
        assert_eq!(
            l.renew(7, t5 + Duration::from_secs(10)),
            None,
            "expired leases stay expired"
        );
        assert_eq!(l.renew(8, t5), None);
        l.revoked(7);
        assert_eq!(l.remaining_s(7, t5), None);
    }

    #[test]
    fn expiry_is_soonest_first_and_bounded() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.promote(t0, 0, &[], Duration::ZERO);
        for (id, ttl) in [(1, 3), (2, 1), (3, 2)] {
            l.granted(id, ttl, t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.expired(later, 10), vec![2, 3, 1]);
        assert_eq!(l.expired(later, 2), vec![2, 3]);
    }

    #[test]
    fn renewed_regranted_and_revoked_leases_leave_no_stale_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Lessor::default();
        l.promote(t0, 0, &[], Duration::ZERO);
        for id in [1, 2, 3] {
            l.granted(id, 2, t0);
        }
        assert_eq!(l.renew(1, t0 + s), Some(2), "now due at 3 s");
        l.granted(2, 5, t0);
        l.revoked(3);
        assert!(
            l.expired(t0 + 5 * s / 2, 10).is_empty(),
            "no old deadline is due"
        );
        assert_eq!(l.expired(t0 + 3 * s, 10), vec![1]);
        assert_eq!(l.expired(t0 + 5 * s, 10), vec![1, 2]);
        l.demote();
        l.promote(t0, 0, &[(4, record(1, 1_000))], Duration::ZERO);
        assert_eq!(
            l.expired(t0 + 5 * s, 10),
            vec![4],
            "promotion starts afresh"
        );
    }

    #[test]
    fn only_renewed_leases_are_checkpointed_rounded_up_until_sent() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.promote(t0, 0, &[], Duration::ZERO);
        l.granted(1, 10, t0);
        l.granted(2, 10, t0);
        l.granted(3, 10, t0);
        let t1 = t0 + Duration::from_millis(1500);
        assert!(
            l.checkpoints(t1).is_empty(),
            "the grants hold the deadlines"
        );
        l.renew(1, t1);
        l.renew(3, t1);
        l.revoked(3);
        let t2 = t1 + Duration::from_millis(2500);
        assert_eq!(l.checkpoints(t2), vec![(1, 8)]);
        assert!(l.checkpoints(t2).is_empty(), "sent once");
        l.unsent([1, 3]);
        assert_eq!(
            l.checkpoints(t2),
            vec![(1, 8)],
            "a revoked lease is not resent"
        );
    }

    #[test]
    fn the_clock_moves_by_the_time_that_passed_while_leases_lived() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        assert_eq!(l.clock_advance(t0), None, "a follower moves no clock");
        l.promote(t0, 0, &[], Duration::ZERO);
        let s = Duration::from_secs(1);
        assert_eq!(l.clock_advance(t0 + s), None, "no lease, no time");
        l.granted(1, 10, t0 + 3 * s / 2);
        assert_eq!(l.clock_advance(t0 + 2 * s), Some(500), "from the grant on");
        assert_eq!(l.clock_advance(t0 + 3 * s), Some(1000));
        l.revoked(1);
        assert_eq!(l.clock_advance(t0 + 4 * s), None);
        l.demote();
        assert_eq!(l.clock_advance(t0 + 5 * s), None);
    }
}
