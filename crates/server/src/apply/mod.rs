//! The apply chain: committed Raft entries in, MVCC writes and responses out.
//!
//! Owns: decoding `keelpb.InternalRequest`, dispatching each to its handler inside one MVCC
//! write batch per Raft apply batch, storing Raft's bookkeeping in the same batch, the
//! replicated member attributes, and telling the observer (watch hub, lessor) what changed.
//! Must never: read clocks or randomness, or do I/O outside the store: every member applies the
//! same entries to the same result.

pub mod lease;
pub mod range;
pub mod txn;

use std::io;
use std::sync::{Arc, Mutex};

use keel_api::error::{EtcdError, CODE_OK};
use keel_api::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use keel_api::keelpb::{
    internal_request, internal_response, InternalRequest, InternalResponse, MemberAttributes,
};
use keel_raft::Applier;
use keel_storage::{Event, Store, WriteBatch};
use prost::Message;

use self::lease::KnownLeases;
use self::range::storage_error;

const META_RAFT_STATE: &[u8] = b"raft/state";
const META_MEMBER_PREFIX: &[u8] = b"member/";

fn member_key(id: u64) -> Vec<u8> {
    let mut key = META_MEMBER_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// keel's state machine: the MVCC store plus the apply rules.
pub struct KvApplier {
    store: Arc<Store>,
    observer: Option<Arc<dyn ApplyObserver>>,
    /// Serialises apply against snapshot-taking so a snapshot's Raft state matches its data.
    apply_lock: Mutex<()>,
}

impl KvApplier {
    pub fn new(store: Arc<Store>, observer: Option<Arc<dyn ApplyObserver>>) -> Self {
        Self {
            store,
            observer,
            apply_lock: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.apply_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The published attributes (name, client URLs) of a member, if it has published them.
pub fn member_attributes(store: &Store, id: u64) -> Option<MemberAttributes> {
    let bytes = store.get_meta(&member_key(id)).ok()??;
    MemberAttributes::decode(bytes.as_slice()).ok()
}

/// What one committed apply batch changed, for the watch hub and the lessor.
#[derive(Debug, Default)]
pub struct Committed {
    /// Events per revision, in revision order.
    pub revisions: Vec<(i64, Vec<Event>)>,
    /// Leases granted and revoked, in order.
    pub leases: Vec<LeaseChange>,
    /// Put events carry no `prev_kv`: the observer wanted none when the batch began
    /// ([`ApplyObserver::wants_prev_kv`]). Delete events always carry it.
    pub put_prev_kv_omitted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl_s: i64 },
    Revoked { id: i64 },
}

/// Told about each apply batch after it is committed to the store (so whatever it reads from
/// the store already includes the batch). Runs on the apply path: must not block.
pub trait ApplyObserver: Send + Sync + 'static {
    /// Whether put events should carry the key's previous version. Asked once per batch, on
    /// the apply path; a batch applied without it says so in [`Committed`].
    fn wants_prev_kv(&self) -> bool;
    fn committed(&self, batch: &Committed);
    /// The whole store was replaced by a snapshot now at `current_revision`.
    fn restored(&self, current_revision: i64);
}

impl Applier for KvApplier {
    fn load_raft_state(&self) -> io::Result<Option<Vec<u8>>> {
        self.store.get_meta(META_RAFT_STATE).map_err(io_error)
    }

    fn apply(&self, payloads: &[Option<&[u8]>], raft_state: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let _guard = self.lock();
        let mut batch = self.store.write().map_err(io_error)?;
        let mut out = Committed::default();
        let carry_prev_kv = self.observer.as_ref().is_some_and(|o| o.wants_prev_kv());
        batch.put_events_carry_prev_kv(carry_prev_kv);
        out.put_prev_kv_omitted = !carry_prev_kv;
        let mut responses = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let response = match payload {
                None => Vec::new(),
                Some(bytes) => apply_one(&mut batch, &mut out, bytes)?.encode_to_vec(),
            };
            responses.push(response);
        }
        batch
            .put_meta(META_RAFT_STATE, raft_state)
            .map_err(io_error)?;
        keel_raft::crash_point!("apply::before_commit");
        // Not durable: the Raft log is. `sync` makes it durable before the log is purged.
        batch.commit(false).map_err(io_error)?;
        keel_raft::crash_point!("apply::after_commit");
        if let Some(observer) = &self.observer {
            observer.committed(&out);
        }
        Ok(responses)
    }

    fn sync(&self) -> io::Result<()> {
        self.store.sync().map_err(io_error)
    }

    fn snapshot(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let _guard = self.lock();
        let state = self
            .store
            .get_meta(META_RAFT_STATE)
            .map_err(io_error)?
            .unwrap_or_default();
        let mut dump = Vec::new();
        self.store.dump(&mut dump).map_err(io_error)?;
        Ok((state, dump))
    }

    fn restore(&self, dump: &[u8]) -> io::Result<()> {
        let _guard = self.lock();
        self.store.restore(&mut &dump[..]).map_err(io_error)?;
        self.store.sync().map_err(io_error)?;
        if let Some(observer) = &self.observer {
            observer.restored(self.store.current_revision().map_err(io_error)?);
        }
        Ok(())
    }
}

/// Applies one request. A request error becomes a response with `error` set; only storage
/// failures (which stop the member) are `Err`.
fn apply_one(
    batch: &mut WriteBatch,
    out: &mut Committed,
    bytes: &[u8],
) -> io::Result<InternalResponse> {
    use internal_request::Request as Req;
    use internal_response::Response as Resp;
    let req = InternalRequest::decode(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let result = match req.request {
        Some(Req::Put(r)) => KnownLeases::for_ids(batch, [r.lease].into())
            .and_then(|leases| in_txn(batch, out, leases, |t, leases| txn::put(t, leases, &r)))
            .map(|(resp, rev)| {
                Resp::Put(PutResponse {
                    header: header(rev),
                    ..resp
                })
            }),
        Some(Req::DeleteRange(r)) => in_txn(batch, out, KnownLeases::default(), |t, _| {
            txn::delete_range(t, &r)
        })
        .map(|(resp, rev)| {
            Resp::DeleteRange(DeleteRangeResponse {
                header: header(rev),
                ..resp
            })
        }),
        Some(Req::Txn(r)) => KnownLeases::for_ops(batch, r.success.iter().chain(&r.failure))
            .and_then(|leases| in_txn(batch, out, leases, |t, leases| txn::txn(t, leases, &r)))
            .map(|(mut resp, rev)| {
                stamp_headers(&mut resp, rev);
                Resp::Txn(resp)
            }),
        Some(Req::Compaction(r)) => batch
            .schedule_compaction(r.revision)
            .map_err(storage_error)
            .map(|()| {
                Resp::Compaction(CompactionResponse {
                    header: header(batch.current_revision()),
                })
            }),
        Some(Req::LeaseGrant(r)) => lease::grant(batch, &r).map(|resp| {
            out.leases.push(LeaseChange::Granted {
                id: r.id,
                ttl_s: r.ttl,
            });
            Resp::LeaseGrant(LeaseGrantResponse {
                header: header(batch.current_revision()),
                ..resp
            })
        }),
        Some(Req::LeaseRevoke(r)) => lease::revoke(batch, &r).map(|events| {
            let revision = batch.current_revision();
            if !events.is_empty() {
                out.revisions.push((revision, events));
            }
            out.leases.push(LeaseChange::Revoked { id: r.id });
            Resp::LeaseRevoke(LeaseRevokeResponse {
                header: header(revision),
            })
        }),
        Some(Req::LeaseCheckpoint(r)) => lease::checkpoint(batch, &r).map(|()| {
            Resp::LeaseCheckpoint(LeaseCheckpointResponse {
                header: header(batch.current_revision()),
            })
        }),
        Some(Req::LeaseClock(c)) => {
            lease::advance_clock(batch, c.advance_ms).map_err(io_error)?;
            return Ok(InternalResponse::default());
        }
        Some(Req::MemberAttributes(m)) => {
            batch
                .put_meta(&member_key(m.id), &m.encode_to_vec())
                .map_err(io_error)?;
            return Ok(InternalResponse::default());
        }
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "internal request without a request",
            ))
        }
    };
    Ok(match result {
        Ok(response) => InternalResponse {
            response: Some(response),
            error: CODE_OK,
        },
        Err(EtcdError::Unknown(msg)) => return Err(io::Error::other(msg)),
        Err(e) => InternalResponse {
            response: None,
            error: e.code(),
        },
    })
}

/// Runs `f` as one etcd transaction (one revision) and records its events. The handlers in `txn.rs` check a request completely before its
/// first write, so an error leaves the batch untouched. Returns `f`'s result and the store
/// revision after the transaction.
fn in_txn<T>(
    batch: &mut WriteBatch,
    out: &mut Committed,
    leases: KnownLeases,
    f: impl FnOnce(&mut keel_storage::TxnWriter<'_>, &KnownLeases) -> Result<T, EtcdError>,
) -> Result<(T, i64), EtcdError> {
    let mut txn = batch.begin_txn();
    let value = f(&mut txn, &leases)?;
    let outcome = txn.end();
    if !outcome.events.is_empty() {
        out.revisions.push((outcome.revision, outcome.events));
    }
    Ok((value, outcome.revision))
}

/// etcd gives every response inside a txn (nested ones too) a header holding only the txn's
/// revision.
fn stamp_headers(resp: &mut TxnResponse, revision: i64) {
    use keel_api::etcdserverpb::response_op::Response as Op;
    resp.header = header(revision);
    for op in &mut resp.responses {
        match &mut op.response {
            Some(Op::ResponseRange(r)) => r.header = header(revision),
            Some(Op::ResponsePut(r)) => r.header = header(revision),
            Some(Op::ResponseDeleteRange(r)) => r.header = header(revision),
            Some(Op::ResponseTxn(t)) => stamp_headers(t, revision),
            None => {}
        }
    }
}

/// Apply knows only the revision; the answering member fills in the rest of the header.
fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}
