//! etcd's write semantics: `Put`, `DeleteRange` and `Txn` (compares, branches, nesting), each
//! applied as one MVCC transaction, so a whole `Txn` gets exactly one revision.
//!
//! Owns: what each write request does to the store and what it answers.
//! Must never: read clocks, randomness or anything outside the store (apply is deterministic),
//! or validate request shapes (the gRPC layer rejects bad requests before they are proposed).

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use keel_storage::{KeyValue, RangeOptions, TxnWriter};

use super::lease::KnownLeases;
use super::range::{range, storage_error, to_pb, RangeSource};

type Result<T> = std::result::Result<T, EtcdError>;

fn get(txn: &TxnWriter<'_>, key: &[u8]) -> Result<Option<KeyValue>> {
    let found = txn
        .range(key, &[], RangeOptions::default())
        .map_err(storage_error)?;
    Ok(found.kvs.into_iter().next())
}

/// A put; checks (see `check_put`) come first so an error writes nothing.
pub fn put(txn: &mut TxnWriter<'_>, leases: &KnownLeases, req: &PutRequest) -> Result<PutResponse> {
    check_put(txn, leases, req)?;
    let (value, lease) = if req.ignore_value || req.ignore_lease {
        let prev = get(txn, &req.key)?.ok_or(EtcdError::KeyNotFound)?;
        let value = if req.ignore_value {
            prev.value
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease {
            prev.lease
        } else {
            req.lease
        };
        (value, lease)
    } else {
        (req.value.clone(), req.lease)
    };
    let prev_kv = if req.prev_kv {
        txn.put(&req.key, &value, lease)
            .map_err(storage_error)?
            .map(to_pb)
    } else {
        txn.put_without_prev(&req.key, &value, lease)
            .map_err(storage_error)?;
        None
    };
    Ok(PutResponse {
        header: None,
        prev_kv,
    })
}

pub fn delete_range(
    txn: &mut TxnWriter<'_>,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse> {
    let deleted = txn
        .delete_range(&req.key, &req.range_end)
        .map_err(storage_error)?;
    Ok(DeleteRangeResponse {
        header: None,
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv {
            deleted.into_iter().map(to_pb).collect()
        } else {
            Vec::new()
        },
    })
}

/// Runs a txn (compares, then one branch, nested txns recursively) inside `txn`.
///
/// Like etcd, every compare (nested ones included) is evaluated against the state before the
/// txn, and every operation of the chosen path is checked before the first write, so a txn
/// that fails leaves nothing behind.
pub fn txn(txn: &mut TxnWriter<'_>, leases: &KnownLeases, req: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    choose_path(txn, req, &mut path)?;
    check_path(txn, leases, req, &path, &mut 0)?;
    execute(txn, leases, req, &path, &mut 0)
}

/// Records, depth first, whether each (nested) txn on the taken path succeeds.
fn choose_path(txn: &TxnWriter<'_>, req: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut succeeded = true;
    for cmp in &req.compare {
        if !compare(txn, cmp)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    for op in branch(req, succeeded) {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            choose_path(txn, nested, path)?;
        }
    }
    Ok(())
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn check_path(
    txn: &TxnWriter<'_>,
    leases: &KnownLeases,
    req: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<()> {
    let succeeded = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    for op in branch(req, succeeded) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if r.revision > 0 => {
                let opts = RangeOptions {
                    revision: r.revision,
                    count_only: true,
                    ..Default::default()
                };
                txn.range(&r.key, &r.range_end, opts)
                    .map_err(storage_error)?;
            }
            Some(request_op::Request::RequestPut(r)) => check_put(txn, leases, r)?,
            Some(request_op::Request::RequestTxn(nested)) => {
                check_path(txn, leases, nested, path, at)?
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_put(txn: &TxnWriter<'_>, leases: &KnownLeases, req: &PutRequest) -> Result<()> {
    if (req.ignore_value || req.ignore_lease) && get(txn, &req.key)?.is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    if req.lease != 0 && !leases.contains(req.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

fn execute(
    txn: &mut TxnWriter<'_>,
    leases: &KnownLeases,
    req: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<TxnResponse> {
    let succeeded = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    let ops = branch(req, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(request_op(txn, leases, op, path, at)?);
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

fn request_op(
    txn: &mut TxnWriter<'_>,
    leases: &KnownLeases,
    op: &RequestOp,
    path: &[bool],
    at: &mut usize,
) -> Result<ResponseOp> {
    let response = match &op.request {
        Some(request_op::Request::RequestRange(r)) => {
            let src: &dyn RangeSource = txn;
            response_op::Response::ResponseRange(range(src, r)?)
        }
        Some(request_op::Request::RequestPut(r)) => {
            response_op::Response::ResponsePut(put(txn, leases, r)?)
        }
        Some(request_op::Request::RequestDeleteRange(r)) => {
            response_op::Response::ResponseDeleteRange(delete_range(txn, r)?)
        }
        Some(request_op::Request::RequestTxn(r)) => {
            response_op::Response::ResponseTxn(execute(txn, leases, r, path, at)?)
        }
        None => return Ok(ResponseOp { response: None }),
    };
    Ok(ResponseOp {
        response: Some(response),
    })
}

/// etcd: a compare holds when it holds for every key in its range; a range with no keys is
/// compared as one absent key (all numbers 0), except that a VALUE compare on it fails.
fn compare(txn: &TxnWriter<'_>, cmp: &Compare) -> Result<bool> {
    let found = txn
        .range(&cmp.key, &cmp.range_end, RangeOptions::default())
        .map_err(storage_error)?;
    if found.kvs.is_empty() {
        if cmp.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(cmp, &KeyValue::default()));
    }
    Ok(found.kvs.iter().all(|kv| compare_kv(cmp, kv)))
}

fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match (&cmp.target_union, CompareTarget::try_from(cmp.target)) {
        (Some(TargetUnion::Version(v)), Ok(CompareTarget::Version)) => kv.version.cmp(v),
        (Some(TargetUnion::CreateRevision(v)), Ok(CompareTarget::Create)) => {
            kv.create_revision.cmp(v)
        }
        (Some(TargetUnion::ModRevision(v)), Ok(CompareTarget::Mod)) => kv.mod_revision.cmp(v),
        (Some(TargetUnion::Value(v)), Ok(CompareTarget::Value)) => {
            kv.value.as_slice().cmp(v.as_slice())
        }
        (Some(TargetUnion::Lease(v)), Ok(CompareTarget::Lease)) => kv.lease.cmp(v),
        // A target without its value (or a mismatched pair) compares against the zero value,
        // as etcd's proto3 decoding does.
        (_, Ok(CompareTarget::Value)) => kv.value.as_slice().cmp(&[][..]),
        (_, Ok(CompareTarget::Version)) | (_, Err(_)) => kv.version.cmp(&0),
        (_, Ok(CompareTarget::Create)) => kv.create_revision.cmp(&0),
        (_, Ok(CompareTarget::Mod)) => kv.mod_revision.cmp(&0),
        (_, Ok(CompareTarget::Lease)) => kv.lease.cmp(&0),
    };
    match CompareResult::try_from(cmp.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Err(_) => false,
    }
}
