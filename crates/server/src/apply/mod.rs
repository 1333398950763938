//! The apply chain: committed Raft entries in, MVCC writes and responses out.
//!
//! Owns: decoding `keelpb.InternalRequest`, dispatching each to its handler inside one MVCC
//! write batch per Raft apply batch, storing Raft's bookkeeping in the same batch, and the
//! replicated member attributes.
//! Must never: read clocks or randomness, or do I/O outside the store: every member applies the
//! same entries to the same result.

pub mod range;
pub mod txn;

use std::io;
use std::sync::{Arc, Mutex};

use keel_api::error::{EtcdError, CODE_OK};
use keel_api::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use keel_api::keelpb::{
    internal_request, internal_response, InternalRequest, InternalResponse, MemberAttributes,
};
use keel_raft::Applier;
use keel_storage::{Store, WriteBatch};
use prost::Message;

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
    /// Serialises apply against snapshot-taking so a snapshot's Raft state matches its data.
    apply_lock: Mutex<()>,
}

impl KvApplier {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
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

impl Applier for KvApplier {
    fn load_raft_state(&self) -> io::Result<Option<Vec<u8>>> {
        self.store.get_meta(META_RAFT_STATE).map_err(io_error)
    }

    fn apply(&self, payloads: &[Option<&[u8]>], raft_state: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let _guard = self.lock();
        let mut batch = self.store.write().map_err(io_error)?;
        let mut responses = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let response = match payload {
                None => Vec::new(),
                Some(bytes) => apply_one(&mut batch, bytes)?.encode_to_vec(),
            };
            responses.push(response);
        }
        batch
            .put_meta(META_RAFT_STATE, raft_state)
            .map_err(io_error)?;
        // Not durable: the Raft log is. `sync` makes it durable before the log is purged.
        batch.commit(false).map_err(io_error)?;
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
        self.store.sync().map_err(io_error)
    }
}

/// Applies one request. A request error becomes a response with `error` set; only storage
/// failures (which stop the member) are `Err`.
fn apply_one(batch: &mut WriteBatch, bytes: &[u8]) -> io::Result<InternalResponse> {
    let req = InternalRequest::decode(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let result = match req.request {
        Some(internal_request::Request::Put(r)) => {
            in_txn(batch, |t| txn::put(t, &r)).map(|(resp, rev)| {
                internal_response::Response::Put(PutResponse {
                    header: header(rev),
                    ..resp
                })
            })
        }
        Some(internal_request::Request::DeleteRange(r)) => {
            in_txn(batch, |t| txn::delete_range(t, &r)).map(|(resp, rev)| {
                internal_response::Response::DeleteRange(DeleteRangeResponse {
                    header: header(rev),
                    ..resp
                })
            })
        }
        Some(internal_request::Request::Txn(r)) => {
            in_txn(batch, |t| txn::txn(t, &r)).map(|(mut resp, rev)| {
                stamp_headers(&mut resp, rev);
                internal_response::Response::Txn(resp)
            })
        }
        Some(internal_request::Request::Compaction(r)) => batch
            .schedule_compaction(r.revision)
            .map(|()| {
                let header = header(batch.current_revision());
                internal_response::Response::Compaction(CompactionResponse { header })
            })
            .map_err(storage_error),
        Some(internal_request::Request::MemberAttributes(m)) => {
            batch
                .put_meta(&member_key(m.id), &m.encode_to_vec())
                .map_err(io_error)?;
            return Ok(InternalResponse::default());
        }
        Some(internal_request::Request::LeaseGrant(_))
        | Some(internal_request::Request::LeaseRevoke(_)) => {
            Err(EtcdError::Unimplemented("Lease".into()))
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

/// Runs `f` as one etcd transaction (one revision). The handlers in `txn.rs` check a request
/// completely before its first write, so an error leaves the batch untouched.
/// Returns `f`'s result and the store revision after the transaction.
fn in_txn<T>(
    batch: &mut WriteBatch,
    f: impl FnOnce(&mut keel_storage::TxnWriter<'_>) -> Result<T, EtcdError>,
) -> Result<(T, i64), EtcdError> {
    let mut txn = batch.begin_txn();
    let out = f(&mut txn)?;
    let outcome = txn.end();
    Ok((out, outcome.revision))
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
