//! The etcd `KV` service: validate, propose or read, map errors. Thin by design.
//!
//! Owns: request-shape validation with etcd's errors (empty keys, size and txn limits,
//! duplicate keys) and the choice between a linearizable and a serializable read.
//! Must never: change state except through the proposer.

use std::collections::HashSet;
use std::sync::Arc;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::kv_server::Kv;
use keel_api::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use keel_api::keelpb::internal_request::Request as Command;
use keel_api::keelpb::internal_response::Response as Applied;
use tonic::{Request, Response, Status};

use super::check_size;
use crate::apply::range::{range, storage_error};
use crate::server::Server;

pub struct KvService {
    pub server: Arc<Server>,
}

type Reply<T> = Result<Response<T>, Status>;

impl KvService {
    async fn propose(&self, command: Command) -> Result<Applied, EtcdError> {
        self.server.proposer.propose(command).await
    }

    async fn read(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        if !req.serializable && !crate::planted::stale_reads() {
            self.server.proposer.read_barrier().await?;
        }
        let view = self.server.store.read().map_err(storage_error)?;
        let mut resp = range(&view, req)?;
        resp.header = self.server.header(view.current_revision());
        Ok(resp)
    }
}

fn wrong_response() -> Status {
    EtcdError::Unknown("etcdserver: unexpected apply response".into()).to_status()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Reply<RangeResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        check_key(&req.key)?;
        Ok(Response::new(self.read(&req).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Reply<PutResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        check_put(&req)?;
        match self.propose(Command::Put(req)).await? {
            Applied::Put(resp) => Ok(Response::new(PutResponse {
                header: self.server.complete(resp.header),
                ..resp
            })),
            _ => Err(wrong_response()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Reply<DeleteRangeResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        check_key(&req.key)?;
        match self.propose(Command::DeleteRange(req)).await? {
            Applied::DeleteRange(resp) => Ok(Response::new(DeleteRangeResponse {
                header: self.server.complete(resp.header),
                ..resp
            })),
            _ => Err(wrong_response()),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Reply<TxnResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        check_txn(&req, self.server.limits.max_txn_ops)?;
        match self.propose(Command::Txn(req)).await? {
            Applied::Txn(resp) => Ok(Response::new(TxnResponse {
                header: self.server.complete(resp.header),
                ..resp
            })),
            _ => Err(wrong_response()),
        }
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Reply<CompactionResponse> {
        let req = request.into_inner();
        match self.propose(Command::Compaction(req)).await? {
            Applied::Compaction(resp) => Ok(Response::new(CompactionResponse {
                header: self.server.complete(resp.header),
            })),
            _ => Err(wrong_response()),
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), EtcdError> {
    if key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

fn check_put(req: &PutRequest) -> Result<(), EtcdError> {
    check_key(&req.key)?;
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's txn checks: op counts per list, keys present, and no key written twice (or written
/// and deleted) in one branch, nested txns included.
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    if req.compare.len() > max_txn_ops
        || req.success.len() > max_txn_ops
        || req.failure.len() > max_txn_ops
    {
        return Err(EtcdError::TooManyOps);
    }
    for cmp in &req.compare {
        check_key(&cmp.key)?;
    }
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, max_txn_ops)?;
    }
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_key(&r.key),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_key(&r.key),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_txn_ops),
        None => Ok(()),
    }
}

/// A deleted range: `end` empty is the single key `start`; `[0]` is every key from `start`.
struct Interval<'a> {
    start: &'a [u8],
    end: &'a [u8],
}

impl Interval<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            [] => key == self.start,
            [0] => key >= self.start,
            end => key >= self.start && key < end,
        }
    }
}

/// Puts and deletes of one branch (nested txns' branches included), checked for overlap.
fn check_intervals(ops: &[RequestOp]) -> Result<(), EtcdError> {
    let (dels, puts) = collect_writes(ops)?;
    if puts.iter().any(|key| dels.iter().any(|d| d.contains(key))) {
        return Err(EtcdError::DuplicateKey);
    }
    Ok(())
}

fn collect_writes(ops: &[RequestOp]) -> Result<(Vec<Interval<'_>>, HashSet<&[u8]>), EtcdError> {
    let mut dels = Vec::new();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => dels.push(Interval {
                start: &d.key,
                end: &d.range_end,
            }),
            Some(request_op::Request::RequestPut(p)) if !puts.insert(&p.key) => {
                return Err(EtcdError::DuplicateKey);
            }
            Some(request_op::Request::RequestTxn(t)) => {
                // Only one of a nested txn's branches runs, so they may write the same key;
                // either may clash with this level's writes.
                let (mut sd, sp) = collect_writes(&t.success)?;
                let (fd, fp) = collect_writes(&t.failure)?;
                let nested: HashSet<&[u8]> = sp.union(&fp).copied().collect();
                if nested.iter().any(|k| puts.contains(k)) {
                    return Err(EtcdError::DuplicateKey);
                }
                puts.extend(nested);
                sd.extend(fd);
                dels.extend(sd);
            }
            _ => {}
        }
    }
    Ok((dels, puts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_and_put_inside_a_deleted_range_are_rejected() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", "\0"), put("zz")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        // The same key in different branches is fine; so is a put outside the deleted range.
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("c")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn nested_txn_writes_count_against_the_outer_branch() {
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn(
                vec![put("a")],
                vec![put("a")],
            ))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![put("a"), nested], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn op_count_limit_is_per_list_and_empty_keys_are_rejected() {
        let ops: Vec<RequestOp> = (0..3).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(ops.clone(), vec![]), 3), Ok(()));
        assert_eq!(
            check_txn(&txn(ops.clone(), vec![]), 2),
            Err(EtcdError::TooManyOps)
        );
        assert_eq!(
            check_txn(&txn(vec![put("")], vec![]), 128),
            Err(EtcdError::EmptyKey)
        );
    }
}
