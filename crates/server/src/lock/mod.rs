//! etcd's lock and election recipes (`v3lock`, `v3election`), run inside the member.
//!
//! Owns: the waiting part of both recipes: each waiter owns a key `<name>/<lease hex>`; the
//! waiter whose key has the lowest create revision holds the lock (or leads the election),
//! and every other waiter waits for the deletion of the key created just before its own.
//! Waiting uses the member's watch hub directly, so a handover costs one apply, not a poll
//! or a sync tick.
//! Must never: acquire on a stale read (every decision reads after a ReadIndex barrier), or
//! leave a waiter's key behind when its client gives up (see `KeyGuard`).

use std::sync::Arc;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse,
};
use keel_api::keelpb::internal_request::Request as Command;
use keel_api::keelpb::internal_response::Response as Applied;
use keel_api::mvccpb::KeyValue;
use keel_storage::EventKind;

use crate::apply::range::{range, storage_error};
use crate::server::Server;
use crate::watch::{CreateWatch, StreamHandle, WatchHub, WatchMessage};

/// The key a waiter owns: `<name>/<lease id in lower-case hex>`, as etcd's clients build it.
pub fn waiter_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The prefix shared by every waiter on `name`.
pub fn waiters_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

pub use keel_api::prefix_end;

fn unexpected() -> EtcdError {
    EtcdError::Unknown("etcdserver: unexpected apply response".into())
}

/// Runs a txn through Raft.
pub async fn txn(server: &Server, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
    match server.proposer.propose(Command::Txn(req)).await? {
        Applied::Txn(resp) => Ok(resp),
        _ => Err(unexpected()),
    }
}

/// A linearizable range read on this member.
pub async fn read(server: &Server, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
    server.proposer.read_barrier().await?;
    read_local(server, &req)
}

/// A range read of this member's store as it is now (no barrier).
pub fn read_local(server: &Server, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
    let view = server.store.read().map_err(storage_error)?;
    let mut resp = range(&view, req)?;
    resp.header = server.header(view.current_revision());
    Ok(resp)
}

pub fn create_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

pub fn op_put(req: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(req)),
    }
}

pub fn op_get(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

pub fn op_delete(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// Creates `key` (with `value`, attached to `lease`) unless it exists. Returns the key's
/// create revision, the txn's response, and whether this call created it.
pub async fn create_waiter_key(
    server: &Server,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, TxnResponse, bool), EtcdError> {
    let put = PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    };
    let resp = txn(
        server,
        TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![op_put(put)],
            failure: vec![op_get(key)],
        },
    )
    .await?;
    if resp.succeeded {
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        return Ok((revision, resp, true));
    }
    let existing = match resp.responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.create_revision),
        _ => None,
    };
    // The key can vanish between the compare and now only if its lease expired; etcd's
    // client reports that as an expired session.
    let revision = existing.ok_or(EtcdError::LockSessionExpired)?;
    Ok((revision, resp, false))
}

/// `create_waiter_key` that cannot be abandoned half-way: it runs in its own task, so if the
/// client gives up while the create is being replicated, the task still finishes and its
/// guard (dropped with the unread result) deletes the key.
pub async fn create_guarded(
    server: &Arc<Server>,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, TxnResponse, Option<KeyGuard>), EtcdError> {
    let (server, key, value) = (server.clone(), key.to_vec(), value.to_vec());
    let task = tokio::spawn(async move {
        let (revision, resp, created) = create_waiter_key(&server, &key, &value, lease).await?;
        Ok((revision, resp, created.then(|| KeyGuard::new(server, key))))
    });
    task.await
        .map_err(|e| EtcdError::Unknown(format!("etcdserver: {e}")))?
}

/// The oldest waiter on `prefix` (the lock holder, or the election leader).
pub async fn first_waiter(
    server: &Server,
    prefix: &[u8],
) -> Result<(Option<KeyValue>, i64), EtcdError> {
    let resp = read(
        server,
        RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            ..Default::default()
        },
    )
    .await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    Ok((resp.kvs.into_iter().next(), revision))
}

/// Waits until no key under `prefix` has a create revision below `my_revision`: each round
/// waits for the deletion of the newest older waiter (etcd's `waitDeletes`).
///
/// Reads are local, without a ReadIndex round: once this member has applied `my_revision`
/// (committed: the txn that created our key answered with it), every older waiter's key is
/// in its store, and a key that is gone locally is gone for good (a key created again gets a
/// newer create revision). A stale local view can only make us wait longer, never acquire
/// early. So a handover costs one apply, not a quorum round.
pub async fn wait_for_predecessors(
    server: &Server,
    hub: &Arc<WatchHub>,
    prefix: &[u8],
    my_revision: i64,
) -> Result<(), EtcdError> {
    hub.wait_published(my_revision).await?;
    let range_end = prefix_end(prefix);
    loop {
        // The waiters' create revisions come from the key index: a handover reads no value.
        let (predecessor, seen_at) = {
            let view = server.store.read().map_err(storage_error)?;
            let newest_older = view
                .created(prefix, &range_end)
                .into_iter()
                .filter(|(_, created)| *created < my_revision)
                .max_by_key(|(_, created)| *created);
            (newest_older, view.current_revision())
        };
        let Some((predecessor, _)) = predecessor else {
            return Ok(());
        };
        wait_for_change(hub, &predecessor, &[], seen_at, true).await?;
    }
}

/// The create revision of `key` in this member's store as it is now, if the key exists.
pub fn created_revision(server: &Server, key: &[u8]) -> Result<Option<i64>, EtcdError> {
    let view = server.store.read().map_err(storage_error)?;
    Ok(view.created(key, &[]).first().map(|(_, created)| *created))
}

/// Waits for a change to `[key, range_end)` after revision `seen_at` (only a deletion when
/// `deletes_only`). Returns early, without error, if the watch is cancelled (for example by
/// compaction): callers re-read and decide again.
pub async fn wait_for_change(
    hub: &Arc<WatchHub>,
    key: &[u8],
    range_end: &[u8],
    seen_at: i64,
    deletes_only: bool,
) -> Result<(), EtcdError> {
    let stream: StreamHandle = hub.open_stream();
    stream.create(&CreateWatch {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision: seen_at + 1,
        no_put: deletes_only,
        ..Default::default()
    });
    loop {
        while let Some(message) = stream.pop() {
            match message {
                WatchMessage::Events { events, .. } => {
                    if events
                        .iter()
                        .any(|e| !deletes_only || e.kind == EventKind::Delete)
                    {
                        return Ok(());
                    }
                }
                WatchMessage::Canceled { .. } | WatchMessage::Rejected { .. } => return Ok(()),
                WatchMessage::Created { .. } | WatchMessage::Progress { .. } => {}
            }
        }
        if !stream.catch_up() {
            stream.woken().await;
        }
    }
}

/// Deletes a waiter's key if its request is abandoned before it finished (the client
/// cancelled or disconnected), as etcd's clients do; otherwise the key would block every
/// later waiter until its lease expired.
pub struct KeyGuard {
    server: Option<Arc<Server>>,
    key: Vec<u8>,
}

impl KeyGuard {
    pub fn new(server: Arc<Server>, key: Vec<u8>) -> Self {
        Self {
            server: Some(server),
            key,
        }
    }

    /// The request finished; the key stays.
    pub fn keep(mut self) {
        self.server = None;
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let req = DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                if let Err(e) = server.proposer.propose(Command::DeleteRange(req)).await {
                    tracing::warn!(error = %e, "could not remove an abandoned waiter's key");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_keys_follow_etcd_clients() {
        assert_eq!(
            waiter_key(b"job", 0x694d_7a5c_11f0_2a0b),
            b"job/694d7a5c11f02a0b".to_vec()
        );
        assert_eq!(waiters_prefix(b"job"), b"job/".to_vec());
    }
}
