//! Leases in the replicated state: grant, revoke (with the keys attached), the lease clock and
//! deadlines, and checkpoints of renewed leases. Which keys a lease holds is the store's key
//! index's business: it attaches a key to the lease of its newest version.
//!
//! Time: the leader's lessor replicates a lease clock (milliseconds, moved forward about once a
//! second by the time that passed on the leader). A lease record stores its deadline on that
//! clock: set at the grant, and again by a checkpoint after keepalives renewed it. A new leader
//! reads each lease's remaining TTL as its deadline minus the clock. Time passing costs one small
//! command per second, however many leases there are (checkpointing every lease every second
//! cost up to 12 commands of 1,024 lease updates per second with 12,000 leases, and stalled
//! apply for the writes queued behind them).
//!
//! Owns: the lease record encoding and the lease clock (caller metadata `lease_clock`), both
//! written in the apply batch.
//! Must never: decide expiry (the leader's lessor does, with a clock, and proposes a revoke).

use std::collections::HashSet;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::{
    request_op, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    RequestOp, TxnRequest,
};
use keel_storage::{Event, ReadView, StorageError, WriteBatch};

use super::range::storage_error;

/// Format 2 stores the deadline on the lease clock; format 1 stored the remaining TTL at the last
/// checkpoint, which a store from before the clock (clock 0) reads as the same deadline.
const RECORD_FORMAT: u8 = 2;
const RECORD_FORMAT_REMAINING: u8 = 1;
const META_LEASE_CLOCK: &[u8] = b"lease_clock";
/// etcd's largest lease TTL in seconds.
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;

/// A lease as stored: its granted TTL and its deadline on the lease clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ttl_s: i64,
    pub deadline_ms: i64,
}

impl LeaseRecord {
    pub fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = RECORD_FORMAT;
        out[1..9].copy_from_slice(&self.ttl_s.to_be_bytes());
        out[9..17].copy_from_slice(&self.deadline_ms.to_be_bytes());
        out
    }

    /// The TTL left at lease-clock time `clock_ms`, never negative.
    pub fn remaining_ms(&self, clock_ms: i64) -> i64 {
        self.deadline_ms.saturating_sub(clock_ms).max(0)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != 17 || ![RECORD_FORMAT, RECORD_FORMAT_REMAINING].contains(&bytes[0]) {
            return Err(StorageError::Corrupt(format!(
                "lease record of {} bytes",
                bytes.len()
            )));
        }
        let int = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let deadline_ms = match bytes[0] {
            RECORD_FORMAT_REMAINING => int(9).saturating_mul(1000),
            _ => int(9),
        };
        Ok(Self {
            ttl_s: int(1),
            deadline_ms,
        })
    }
}

/// The leases a write names that exist, looked up before its MVCC transaction (which
/// borrows the batch) starts.
#[derive(Default)]
pub struct KnownLeases(HashSet<i64>);

impl KnownLeases {
    /// Looks up every lease a put in `ops` names (nested txns included).
    pub fn for_ops<'a>(
        batch: &WriteBatch,
        ops: impl Iterator<Item = &'a RequestOp>,
    ) -> Result<Self, EtcdError> {
        let mut ids = HashSet::new();
        collect_ids(ops, &mut ids);
        Self::for_ids(batch, ids)
    }

    pub fn for_ids(batch: &WriteBatch, ids: HashSet<i64>) -> Result<Self, EtcdError> {
        let mut known = HashSet::new();
        for id in ids {
            if id != 0 && batch.get_lease(id).map_err(storage_error)?.is_some() {
                known.insert(id);
            }
        }
        Ok(Self(known))
    }

    pub fn contains(&self, id: i64) -> bool {
        self.0.contains(&id)
    }
}

fn collect_ids<'a>(ops: impl Iterator<Item = &'a RequestOp>, ids: &mut HashSet<i64>) {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                ids.insert(p.lease);
            }
            Some(request_op::Request::RequestTxn(t)) => txn_ids(t, ids),
            _ => {}
        }
    }
}

fn txn_ids(t: &TxnRequest, ids: &mut HashSet<i64>) {
    collect_ids(t.success.iter().chain(&t.failure), ids);
}

pub fn grant(
    batch: &mut WriteBatch,
    req: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, EtcdError> {
    if batch.get_lease(req.id).map_err(storage_error)?.is_some() {
        return Err(EtcdError::LeaseExist);
    }
    let record = LeaseRecord {
        ttl_s: req.ttl,
        deadline_ms: deadline(batch_clock(batch)?, req.ttl),
    };
    batch
        .put_lease(req.id, &record.encode())
        .map_err(storage_error)?;
    Ok(LeaseGrantResponse {
        header: None,
        id: req.id,
        ttl: req.ttl,
        error: String::new(),
    })
}

/// Revokes a lease: deletes every key attached to it in one revision. Returns that revision's
/// events (empty when no key was attached).
pub fn revoke(batch: &mut WriteBatch, req: &LeaseRevokeRequest) -> Result<Vec<Event>, EtcdError> {
    if batch.get_lease(req.id).map_err(storage_error)?.is_none() {
        return Err(EtcdError::LeaseNotFound);
    }
    let attached = batch.attached_keys(req.id);
    let mut events = Vec::new();
    if !attached.is_empty() {
        let mut txn = batch.begin_txn();
        for key in &attached {
            txn.delete_range(key, &[]).map_err(storage_error)?;
        }
        events = txn.end().events;
    }
    batch.delete_lease(req.id).map_err(storage_error)?;
    Ok(events)
}

/// The deadline of a TTL starting at lease-clock time `clock_ms`.
fn deadline(clock_ms: i64, ttl_s: i64) -> i64 {
    clock_ms.saturating_add(ttl_s.saturating_mul(1000))
}

fn lease_clock(stored: Result<Option<Vec<u8>>, StorageError>) -> Result<i64, EtcdError> {
    match stored.map_err(storage_error)? {
        None => Ok(0),
        Some(bytes) => bytes
            .try_into()
            .map(i64::from_be_bytes)
            .map_err(|b: Vec<u8>| {
                storage_error(StorageError::Corrupt(format!(
                    "lease clock of {} bytes",
                    b.len()
                )))
            }),
    }
}

fn batch_clock(batch: &WriteBatch) -> Result<i64, EtcdError> {
    lease_clock(batch.get_meta(META_LEASE_CLOCK))
}

/// The lease clock as of `view`, in milliseconds.
pub fn clock_ms(view: &ReadView) -> Result<i64, EtcdError> {
    lease_clock(view.get_meta(META_LEASE_CLOCK))
}

/// Moves the lease clock forward.
pub fn advance_clock(batch: &mut WriteBatch, advance_ms: u64) -> Result<(), EtcdError> {
    let now = batch_clock(batch)?;
    let advance = i64::try_from(advance_ms).unwrap_or(i64::MAX);
    batch
        .put_meta(META_LEASE_CLOCK, &now.saturating_add(advance).to_be_bytes())
        .map_err(storage_error)
}

/// Stores the remaining TTLs of renewed leases, as deadlines on the lease clock, so a new
/// leader continues from them.
pub fn checkpoint(batch: &mut WriteBatch, req: &LeaseCheckpointRequest) -> Result<(), EtcdError> {
    let clock = batch_clock(batch)?;
    for cp in &req.checkpoints {
        let Some(bytes) = batch.get_lease(cp.id).map_err(storage_error)? else {
            continue;
        };
        let mut record = LeaseRecord::decode(&bytes).map_err(storage_error)?;
        record.deadline_ms = deadline(clock, cp.remaining_ttl.clamp(0, record.ttl_s));
        batch
            .put_lease(cp.id, &record.encode())
            .map_err(storage_error)?;
    }
    Ok(())
}

/// Every stored lease with its record.
pub fn all_leases(view: &ReadView) -> Result<Vec<(i64, LeaseRecord)>, StorageError> {
    view.leases()?
        .into_iter()
        .map(|(id, bytes)| Ok((id, LeaseRecord::decode(&bytes)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let r = LeaseRecord {
            ttl_s: 30,
            deadline_ms: 12_345,
        };
        assert_eq!(LeaseRecord::decode(&r.encode()).expect("decode"), r);
        let mut before_the_clock = r.encode();
        before_the_clock[0] = RECORD_FORMAT_REMAINING;
        before_the_clock[9..17].copy_from_slice(&12i64.to_be_bytes());
        assert_eq!(
            LeaseRecord::decode(&before_the_clock)
                .expect("decode")
                .deadline_ms,
            12_000,
            "a remaining TTL from before the clock is a deadline on a clock at 0"
        );
        assert!(LeaseRecord::decode(&r.encode()[..16]).is_err());
        let mut bad = r.encode();
        bad[0] = 9;
        assert!(LeaseRecord::decode(&bad).is_err());
    }
}
