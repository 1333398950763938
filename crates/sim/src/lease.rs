//! The lease validator: keys attached to a lease disappear within a bound after the lease
//! could last have expired, and never before it could first have; remaining TTLs are never
//! longer than the refreshes allow, in particular not reset by a leader change. Owns those
//! time bounds; must never assume a request took effect at a particular instant inside its
//! call/return window.
//!
//! A refresh (grant or keep-alive) that returned at `[c, r]` set the expiry to `t + TTL` for
//! some `t` in `[c, r]`; one with an unknown outcome may have done so up to
//! `request_max_ns` after `c`, or never. So the lease cannot expire before
//! `max(c of known refreshes) + TTL` (a revoke may end it at its call), and must be gone by
//! `max(latest t) + TTL + expiry_grace_ns`, or when a revoke returned, or when a keep-alive
//! or time-to-live answered "not found".
//!
//! Assumes each key is attached to one lease once and removed only through its lease (the
//! workload's job; the KV checker covers explicit deletes).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseObservation {
    /// `LeaseGrant`; `return_ns` `None` = unknown outcome.
    Grant {
        lease: i64,
        ttl_s: i64,
        call_ns: u64,
        return_ns: Option<u64>,
    },
    /// One keep-alive round trip; `ttl_s` is what came back (0 or less = lease not found).
    /// Unknown outcome: `return_ns` `None`, `ttl_s` ignored.
    KeepAlive {
        lease: i64,
        ttl_s: i64,
        call_ns: u64,
        return_ns: Option<u64>,
    },
    /// `LeaseRevoke`; `return_ns` `None` = unknown outcome.
    Revoke {
        lease: i64,
        call_ns: u64,
        return_ns: Option<u64>,
    },
    /// A put of `key` with this lease that succeeded.
    Attach {
        lease: i64,
        key: Vec<u8>,
        call_ns: u64,
        return_ns: u64,
    },
    /// A linearizable read of `key`.
    ReadKey {
        key: Vec<u8>,
        present: bool,
        call_ns: u64,
        return_ns: u64,
    },
    /// `LeaseTimeToLive`; `remaining_s` below 0 = lease not found.
    TimeToLive {
        lease: i64,
        remaining_s: i64,
        call_ns: u64,
        return_ns: u64,
    },
    /// When the recorder saw a new leader.
    LeaderChange { at_ns: u64 },
}

#[derive(Clone, Debug)]
pub struct LeaseBounds {
    /// How long after its last possible expiry a lease's keys may survive: the lessor's
    /// check interval plus the time to commit the revoke.
    pub expiry_grace_ns: u64,
    /// Slack for TTL rounding to whole seconds and for clock reading.
    pub ttl_tolerance_ns: u64,
    /// How long after its call a request with an unknown outcome may still take effect.
    pub request_max_ns: u64,
}

impl Default for LeaseBounds {
    fn default() -> LeaseBounds {
        LeaseBounds {
            expiry_grace_ns: 2 * SECOND_NS,
            ttl_tolerance_ns: SECOND_NS,
            request_max_ns: 10 * SECOND_NS,
        }
    }
}

const SECOND_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// An attached key was gone before the lease could have expired.
    KeyGoneEarly,
    /// An attached key was still there after the lease must have expired.
    KeyOutlivedLease,
    /// The lease was reported not found before it could have expired.
    ExpiredEarly,
    /// A keep-alive succeeded after the lease must have expired.
    RevivedAfterExpiry,
    /// A remaining TTL longer than the refreshes allow.
    TtlTooLong,
    /// A remaining TTL that grew across a leader change without a refresh.
    TtlResetByLeaderChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseViolation {
    pub check: LeaseCheck,
    pub lease: i64,
    /// Indices of the observations involved.
    pub observations: Vec<usize>,
    pub detail: String,
}

impl fmt::Display for LeaseViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lease {} {:?} (observations {:?}): {}",
            self.lease, self.check, self.observations, self.detail
        )
    }
}

/// What is known about one lease.
struct Lease {
    id: i64,
    ttl_ns: u64,
    /// `(observation, call_ns, latest time it may have taken effect)` of grants and
    /// keep-alives that succeeded or may have.
    refreshes: Vec<(usize, u64, u64)>,
    earliest_expiry_ns: u64,
    /// When the lease was proven gone (revoke returned, not-found answers), if ever.
    gone_at_ns: Option<(usize, u64)>,
}

impl Lease {
    /// Latest possible expiry counting only refreshes called before `before_ns`,
    /// except `skip`.
    fn latest_expiry_ns(&self, before_ns: u64, skip: Option<usize>) -> u64 {
        let latest = self
            .refreshes
            .iter()
            .filter(|(i, call, _)| *call < before_ns && Some(*i) != skip);
        latest.map(|(_, _, t)| t + self.ttl_ns).max().unwrap_or(0)
    }

    fn gone_by_ns(&self, bounds: &LeaseBounds) -> u64 {
        let expired = self.latest_expiry_ns(u64::MAX, None) + bounds.expiry_grace_ns;
        self.gone_at_ns.map_or(expired, |(_, at)| at.min(expired))
    }
}

/// Validates lease observations (indices in violations refer to `observations`).
pub fn validate_leases(
    observations: &[LeaseObservation],
    bounds: &LeaseBounds,
) -> Result<(), LeaseViolation> {
    let leases = collect(observations, bounds);
    for lease in &leases {
        check_lease(lease, observations, bounds)?;
        check_ttl_across_leader_changes(lease, observations, bounds)?;
        check_ttls(lease, observations, bounds)?;
    }
    check_keys(&leases, observations, bounds)
}

fn collect(observations: &[LeaseObservation], bounds: &LeaseBounds) -> Vec<Lease> {
    let mut leases: Vec<Lease> = observations
        .iter()
        .filter_map(|o| match *o {
            LeaseObservation::Grant { lease, ttl_s, .. } => {
                let ttl_ns = u64::try_from(ttl_s).unwrap_or(0) * SECOND_NS;
                Some(Lease {
                    id: lease,
                    ttl_ns,
                    refreshes: Vec::new(),
                    earliest_expiry_ns: 0,
                    gone_at_ns: None,
                })
            }
            _ => None,
        })
        .collect();
    for lease in &mut leases {
        for (i, o) in observations.iter().enumerate() {
            if let Some(at) = note(lease, i, o, bounds) {
                if lease.gone_at_ns.is_none_or(|(_, g)| at < g) {
                    lease.gone_at_ns = Some((i, at));
                }
            }
        }
    }
    leases
}

/// Records a refresh; returns when the observation proves the lease gone.
fn note(lease: &mut Lease, i: usize, o: &LeaseObservation, bounds: &LeaseBounds) -> Option<u64> {
    match *o {
        LeaseObservation::Grant {
            lease: id,
            call_ns,
            return_ns,
            ..
        } if id == lease.id => {
            refresh(lease, i, call_ns, return_ns, bounds);
            None
        }
        LeaseObservation::KeepAlive {
            lease: id,
            ttl_s,
            call_ns,
            return_ns,
        } if id == lease.id => match return_ns {
            Some(r) if ttl_s <= 0 => Some(r),
            _ => {
                refresh(lease, i, call_ns, return_ns, bounds);
                None
            }
        },
        LeaseObservation::Revoke {
            lease: id,
            return_ns,
            ..
        } if id == lease.id => return_ns,
        LeaseObservation::TimeToLive {
            lease: id,
            remaining_s,
            return_ns,
            ..
        } if id == lease.id && remaining_s < 0 => Some(return_ns),
        _ => None,
    }
}

fn refresh(
    lease: &mut Lease,
    i: usize,
    call_ns: u64,
    return_ns: Option<u64>,
    bounds: &LeaseBounds,
) {
    let latest = return_ns.unwrap_or(call_ns + bounds.request_max_ns);
    lease.refreshes.push((i, call_ns, latest));
    if return_ns.is_some() {
        // It succeeded, so it took effect at or after its call.
        lease.earliest_expiry_ns = lease.earliest_expiry_ns.max(call_ns + lease.ttl_ns);
    }
}

/// Not-found answers before the earliest expiry; keep-alives that succeeded after the
/// lease must have been gone.
fn check_lease(
    lease: &Lease,
    observations: &[LeaseObservation],
    bounds: &LeaseBounds,
) -> Result<(), LeaseViolation> {
    let fail = |check, obs: Vec<usize>, detail: String| {
        Err(LeaseViolation {
            check,
            lease: lease.id,
            observations: obs,
            detail,
        })
    };
    let earliest = earliest_expiry(lease, observations);
    if let Some((i, at)) = lease.gone_at_ns {
        if at + bounds.ttl_tolerance_ns < earliest {
            return fail(
                LeaseCheck::ExpiredEarly,
                vec![i],
                format!("not found at {at} ns, cannot expire before {earliest} ns"),
            );
        }
    }
    for &(i, call_ns, _) in &lease.refreshes {
        let LeaseObservation::KeepAlive {
            return_ns: Some(r), ..
        } = observations[i]
        else {
            continue;
        };
        let alive_until = lease.latest_expiry_ns(r, Some(i)) + bounds.expiry_grace_ns;
        let revoked = lease.gone_at_ns.filter(|&(_, at)| at < call_ns);
        if call_ns > alive_until || revoked.is_some() {
            let detail = format!("keep-alive called at {call_ns} ns succeeded; the lease was gone by {alive_until} ns");
            return fail(LeaseCheck::RevivedAfterExpiry, vec![i], detail);
        }
    }
    Ok(())
}

/// The earliest possible expiry, lowered to the call of any revoke.
fn earliest_expiry(lease: &Lease, observations: &[LeaseObservation]) -> u64 {
    let revoke_call = observations.iter().filter_map(|o| match *o {
        LeaseObservation::Revoke {
            lease: id, call_ns, ..
        } if id == lease.id => Some(call_ns),
        _ => None,
    });
    revoke_call.fold(lease.earliest_expiry_ns, u64::min)
}

fn remaining_observations(
    lease: &Lease,
    observations: &[LeaseObservation],
) -> Vec<(usize, u64, u64, u64)> {
    let found = observations
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match *o {
            LeaseObservation::TimeToLive {
                lease: id,
                remaining_s,
                call_ns,
                return_ns,
            } if id == lease.id && remaining_s >= 0 => {
                Some((i, call_ns, return_ns, remaining_s as u64 * SECOND_NS))
            }
            _ => None,
        });
    found.collect()
}

/// A remaining TTL cannot exceed what the latest refresh called before it allows.
fn check_ttls(
    lease: &Lease,
    observations: &[LeaseObservation],
    bounds: &LeaseBounds,
) -> Result<(), LeaseViolation> {
    for (i, call_ns, return_ns, remaining_ns) in remaining_observations(lease, observations) {
        let allowed = lease
            .latest_expiry_ns(return_ns, None)
            .saturating_sub(call_ns)
            + bounds.ttl_tolerance_ns;
        if remaining_ns > allowed {
            let detail =
                format!("remaining {remaining_ns} ns, refreshes allow at most {allowed} ns");
            return Err(LeaseViolation {
                check: LeaseCheck::TtlTooLong,
                lease: lease.id,
                observations: vec![i],
                detail,
            });
        }
    }
    Ok(())
}

/// Two remaining-TTL readings with a leader change between them and no refresh that could
/// have landed between them: the second must have run down by the time that passed.
fn check_ttl_across_leader_changes(
    lease: &Lease,
    observations: &[LeaseObservation],
    bounds: &LeaseBounds,
) -> Result<(), LeaseViolation> {
    let changes: Vec<u64> = observations
        .iter()
        .filter_map(|o| {
            if let LeaseObservation::LeaderChange { at_ns } = o {
                Some(*at_ns)
            } else {
                None
            }
        })
        .collect();
    let readings = remaining_observations(lease, observations);
    for pair in readings.windows(2) {
        let ((i1, c1, r1, rem1), (i2, c2, r2, rem2)) = (pair[0], pair[1]);
        let leader_changed = changes.iter().any(|&at| r1 < at && at < c2);
        let refreshed = lease
            .refreshes
            .iter()
            .any(|&(_, call, latest)| call < r2 && latest > c1);
        let allowed = (rem1 + bounds.ttl_tolerance_ns).saturating_sub(c2.saturating_sub(r1));
        if leader_changed && !refreshed && rem2 > allowed {
            let detail = format!("remaining {rem1} ns before the leader change, {rem2} ns after (at most {allowed} ns)");
            let observations = vec![i1, i2];
            return Err(LeaseViolation {
                check: LeaseCheck::TtlResetByLeaderChange,
                lease: lease.id,
                observations,
                detail,
            });
        }
    }
    Ok(())
}

/// Reads of attached keys against the lease's life.
fn check_keys(
    leases: &[Lease],
    observations: &[LeaseObservation],
    bounds: &LeaseBounds,
) -> Result<(), LeaseViolation> {
    for (a, attach) in observations.iter().enumerate() {
        let LeaseObservation::Attach {
            lease: id,
            key: attached,
            return_ns: attached_ns,
            ..
        } = attach
        else {
            continue;
        };
        let Some(lease) = leases.iter().find(|l| l.id == *id) else {
            continue;
        };
        let earliest = earliest_expiry(lease, observations);
        let gone_by = lease.gone_by_ns(bounds);
        for (i, read) in observations.iter().enumerate() {
            let LeaseObservation::ReadKey {
                key,
                present,
                call_ns,
                return_ns,
            } = read
            else {
                continue;
            };
            if key != attached || *call_ns <= *attached_ns {
                continue;
            }
            let fail = |check, detail| {
                Err(LeaseViolation {
                    check,
                    lease: *id,
                    observations: vec![a, i],
                    detail,
                })
            };
            if !present && *return_ns + bounds.ttl_tolerance_ns < earliest {
                return fail(
                    LeaseCheck::KeyGoneEarly,
                    format!("gone at {return_ns} ns, lease lives until {earliest} ns"),
                );
            }
            if *present && *call_ns > gone_by {
                return fail(
                    LeaseCheck::KeyOutlivedLease,
                    format!("present at {call_ns} ns, lease gone by {gone_by} ns"),
                );
            }
        }
    }
    Ok(())
}
