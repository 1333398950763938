//! Leases in the replicated state: grant, revoke (with the keys attached), the lease clock and
//! deadlines, checkpoints of renewed leases, and the lease -> keys index that puts and deletes
//! keep up to date.
//!
//! Time: the leader's lessor replicates a lease clock (milliseconds, moved forward about once a
//! second by the time that passed on the leader). A lease record stores its deadline on that
//! clock: set at the grant, and again by a checkpoint after keepalives renewed it. A new leader
//! reads each lease's remaining TTL as its deadline minus the clock. Time passing costs one small
//! command per second, however many leases there are (checkpointing every lease every second
//! cost up to 12 commands of 1,024 lease updates per second with 12,000 leases, and stalled
//! apply for the writes queued behind them).
//!
//! Owns: the lease record encoding, the lease clock (caller metadata `lease_clock`) and the
//! attachment index (caller metadata `lease/<id BE>/<key>`), all written in the apply batch.
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
const ATTACH_PREFIX: &[u8] = b"lease/";
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

fn attach_prefix(id: i64) -> Vec<u8> {
    let mut key = ATTACH_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key.push(b'/');
    key
}

fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = attach_prefix(id);
    out.extend_from_slice(key);
    out
}

/// What a write did to leases, gathered inside an MVCC transaction (which borrows the batch)
/// and written to the batch after it ends.
#[derive(Default)]
pub struct LeaseEffects {
    /// Lease ids the request names that exist.
    pub known: HashSet<i64>,
    /// `(lease, key, attach?)` in order.
    pub changes: Vec<(i64, Vec<u8>, bool)>,
}

impl LeaseEffects {
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
        Ok(Self {
            known,
            changes: Vec::new(),
        })
    }

    /// Records that `key` moved from lease `old` to lease `new` (0 = none).
    pub fn moved(&mut self, key: &[u8], old: i64, new: i64) {
        if old == new {
            return;
        }
        if old != 0 {
            self.changes.push((old, key.to_vec(), false));
        }
        if new != 0 {
            self.changes.push((new, key.to_vec(), true));
        }
    }

    /// Writes the attachment changes into the batch.
    pub fn write(self, batch: &mut WriteBatch) -> Result<(), EtcdError> {
        for (id, key, attach) in self.changes {
            let meta = attach_key(id, &key);
            if attach {
                batch.put_meta(&meta, &[]).map_err(storage_error)?;
            } else {
                batch.delete_meta(&meta).map_err(storage_error)?;
            }
        }
        Ok(())
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
    let prefix = attach_prefix(req.id);
    let attached = batch.meta_prefix(&prefix).map_err(storage_error)?;
    let mut events = Vec::new();
    if !attached.is_empty() {
        let mut txn = batch.begin_txn();
        for (meta_key, _) in &attached {
            txn.delete_range(&meta_key[prefix.len()..], &[])
                .map_err(storage_error)?;
        }
        events = txn.end().events;
    }
    for (meta_key, _) in &attached {
        batch.delete_meta(meta_key).map_err(storage_error)?;
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

/// The keys attached to a lease, in key order.
pub fn attached_keys(view: &ReadView, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
    let prefix = attach_prefix(id);
    Ok(view
        .meta_prefix(&prefix)?
        .into_iter()
        .map(|(k, _)| k[prefix.len()..].to_vec())
        .collect())
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

    #[test]
    fn attachment_keys_of_one_lease_share_a_prefix_no_other_lease_has() {
        assert!(attach_key(1, b"k").starts_with(&attach_prefix(1)));
        assert!(!attach_key(256, b"k").starts_with(&attach_prefix(1)));
        assert!(!attach_prefix(1).starts_with(&attach_prefix(0x0100)));
    }
}
