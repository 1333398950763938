//! The lessor core: which leases are alive and when each expires, as the leader sees it.
//!
//! Owns: expiry deadlines, renewals, and the remaining-TTL checkpoints the leader replicates.
//! Only the primary (the leader's lessor) keeps deadlines; a follower's lessor is empty and
//! learns everything from the store when it is promoted.
//! Must never: read a clock (time is an argument) or do I/O.

use std::collections::HashMap;
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
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

impl Lessor {
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Becomes primary: every stored lease expires after its checkpointed remaining TTL plus
    /// `extend` (etcd extends by an election timeout so clients have time to find the new
    /// leader before their leases expire).
    pub fn promote(&mut self, now: Instant, records: &[(i64, LeaseRecord)], extend: Duration) {
        self.primary = true;
        self.leases = records
            .iter()
            .map(|(id, r)| {
                (
                    *id,
                    Live {
                        ttl_s: r.ttl_s,
                        expiry: now + secs(r.remaining_s) + extend,
                    },
                )
            })
            .collect();
    }

    pub fn demote(&mut self) {
        self.primary = false;
        self.leases.clear();
    }

    /// A grant was applied.
    pub fn granted(&mut self, id: i64, ttl_s: i64, now: Instant) {
        if self.primary {
            self.leases.insert(
                id,
                Live {
                    ttl_s,
                    expiry: now + secs(ttl_s),
                },
            );
        }
    }

    /// A revoke was applied.
    pub fn revoked(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// A keepalive: restarts the lease's TTL. Returns the TTL, or `None` for an unknown or
    /// already expired lease.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let live = self.leases.get_mut(&id)?;
        if live.expiry <= now {
            return None;
        }
        live.expiry = now + secs(live.ttl_s);
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
        let mut due: Vec<(Instant, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(id, l)| (l.expiry, *id))
            .collect();
        due.sort_unstable();
        due.into_iter().take(max).map(|(_, id)| id).collect()
    }

    /// The remaining TTL of every lease, rounded up so a checkpoint never shortens a lease.
    pub fn checkpoints(&self, now: Instant) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .leases
            .iter()
            .map(|(id, l)| {
                let left = l.expiry.saturating_duration_since(now);
                (*id, left.as_secs_f64().ceil() as i64)
            })
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ttl_s: i64, remaining_s: i64) -> LeaseRecord {
        LeaseRecord { ttl_s, remaining_s }
    }

    #[test]
    fn a_follower_tracks_nothing_and_a_promoted_leader_continues_from_checkpoints() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.granted(1, 30, t0);
        assert_eq!(l.remaining_s(1, t0), None, "followers keep no deadlines");
        l.promote(t0, &[(1, record(30, 20))], Duration::from_secs(1));
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
        l.promote(t0, &[], Duration::ZERO);
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
        l.promote(t0, &[], Duration::ZERO);
        for (id, ttl) in [(1, 3), (2, 1), (3, 2)] {
            l.granted(id, ttl, t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.expired(later, 10), vec![2, 3, 1]);
        assert_eq!(l.expired(later, 2), vec![2, 3]);
    }

    #[test]
    fn checkpoints_round_remaining_up() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.promote(t0, &[], Duration::ZERO);
        l.granted(1, 10, t0);
        assert_eq!(
            l.checkpoints(t0 + Duration::from_millis(2500)),
            vec![(1, 8)]
        );
    }
}
