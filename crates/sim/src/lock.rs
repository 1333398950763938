//! The lock validator with fencing tokens. Owns what "safe" means for a lock whose holders
//! may outlive their lease: tokens (the lock key's create revision) grow with each new
//! holder, and a resource that rejects stale tokens never accepts writes out of token
//! order. Must never require mutual exclusion in time: with leases a paused holder can
//! still believe it holds the lock, which is exactly what fencing tokens make harmless.
//! (Release times therefore play no part here.)

use std::fmt;

use crate::history::Revision;

/// One successful `Lock` call: its window and the fencing token it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHold {
    pub client: u64,
    pub token: Revision,
    pub acquire_call_ns: u64,
    pub acquire_return_ns: u64,
}

/// A write the protected resource accepted, with the token it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceWrite {
    pub client: u64,
    pub token: Revision,
    pub accepted_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockCheck {
    /// Two holds got the same token.
    DuplicateToken,
    /// A hold acquired after another finished acquiring got a smaller token.
    TokenNotIncreasing,
    /// The resource accepted a smaller token after a larger one.
    StaleTokenAccepted,
    /// The resource accepted a token no hold of that client was given.
    UnknownToken,
    /// The resource accepted a token before the hold that carries it was even requested.
    WriteBeforeAcquire,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockViolation {
    pub check: LockCheck,
    /// Indices into the holds and writes passed in.
    pub holds: Vec<usize>,
    pub writes: Vec<usize>,
    pub detail: String,
}

impl fmt::Display for LockViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lock {:?} (holds {:?}, writes {:?}): {}",
            self.check, self.holds, self.writes, self.detail
        )
    }
}

fn violation(
    check: LockCheck,
    holds: Vec<usize>,
    writes: Vec<usize>,
    detail: String,
) -> Result<(), LockViolation> {
    Err(LockViolation {
        check,
        holds,
        writes,
        detail,
    })
}

/// Validates one lock's holds and one resource's accepted writes (in any order; writes are
/// ordered by `accepted_ns`, ties by position).
pub fn validate_lock(holds: &[LockHold], writes: &[ResourceWrite]) -> Result<(), LockViolation> {
    unique_tokens(holds)?;
    tokens_follow_real_time(holds)?;
    writes_carry_held_tokens(holds, writes)?;
    writes_in_token_order(writes)
}

fn unique_tokens(holds: &[LockHold]) -> Result<(), LockViolation> {
    let mut by_token: Vec<usize> = (0..holds.len()).collect();
    by_token.sort_by_key(|&i| (holds[i].token, i));
    match by_token
        .windows(2)
        .find(|w| holds[w[0]].token == holds[w[1]].token)
    {
        Some(w) => violation(
            LockCheck::DuplicateToken,
            w.to_vec(),
            vec![],
            format!("token {}", holds[w[0]].token),
        ),
        None => Ok(()),
    }
}

/// If `a` finished acquiring before `b` started, `a.token < b.token`: a sweep by call time
/// that admits holds by return time and keeps the largest admitted token.
fn tokens_follow_real_time(holds: &[LockHold]) -> Result<(), LockViolation> {
    let mut by_return: Vec<usize> = (0..holds.len()).collect();
    by_return.sort_by_key(|&i| (holds[i].acquire_return_ns, i));
    let mut by_call: Vec<usize> = (0..holds.len()).collect();
    by_call.sort_by_key(|&i| (holds[i].acquire_call_ns, i));
    let (mut admitted, mut max_before): (usize, Option<usize>) = (0, None);
    for b in by_call {
        while admitted < by_return.len()
            && holds[by_return[admitted]].acquire_return_ns < holds[b].acquire_call_ns
        {
            let a = by_return[admitted];
            if max_before.is_none_or(|m| holds[a].token > holds[m].token) {
                max_before = Some(a);
            }
            admitted += 1;
        }
        if let Some(a) = max_before.filter(|&a| holds[a].token >= holds[b].token) {
            let detail = format!(
                "token {} acquired before token {} was requested",
                holds[a].token, holds[b].token
            );
            return violation(LockCheck::TokenNotIncreasing, vec![a, b], vec![], detail);
        }
    }
    Ok(())
}

fn writes_carry_held_tokens(
    holds: &[LockHold],
    writes: &[ResourceWrite],
) -> Result<(), LockViolation> {
    for (w, write) in writes.iter().enumerate() {
        let Some(h) = holds
            .iter()
            .position(|h| h.token == write.token && h.client == write.client)
        else {
            let detail = format!(
                "client {} wrote with token {} it never held",
                write.client, write.token
            );
            return violation(LockCheck::UnknownToken, vec![], vec![w], detail);
        };
        if write.accepted_ns < holds[h].acquire_call_ns {
            let detail = format!(
                "accepted at {} ns, lock requested at {} ns",
                write.accepted_ns, holds[h].acquire_call_ns
            );
            return violation(LockCheck::WriteBeforeAcquire, vec![h], vec![w], detail);
        }
    }
    Ok(())
}

fn writes_in_token_order(writes: &[ResourceWrite]) -> Result<(), LockViolation> {
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&i| (writes[i].accepted_ns, i));
    let mut highest: Option<usize> = None;
    for w in order {
        if let Some(h) = highest.filter(|&h| writes[h].token > writes[w].token) {
            let detail = format!(
                "accepted token {} after token {}",
                writes[w].token, writes[h].token
            );
            return violation(LockCheck::StaleTokenAccepted, vec![], vec![h, w], detail);
        }
        highest = Some(w);
    }
    Ok(())
}
