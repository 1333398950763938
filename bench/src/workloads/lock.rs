//! `lock`: N clients cycle acquire+release on M lock names, one lease per client.
//!
//! Two ways to lock, because clients use both: the `v3lock` Lock/Unlock service,
//! and (`--recipe`) the client-side recipe of etcd's `concurrency.Mutex` that
//! etcdctl and most Go clients run: a key `<name>/<lease hex>` created by txn,
//! then waiting for the deletion of the latest key created before it via watch.
//! One op is a full acquire+release cycle.

use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::{
    watch_request, Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use keel_api::mvccpb::event::EventType;
use keel_api::v3lockpb::lock_client::LockClient;
use keel_api::v3lockpb::{LockRequest, UnlockRequest};
use serde_json::Map;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::args::CommonArgs;
use crate::driver::{drive, prefix_end, Budget, Conns, OpError};
use crate::stats::Recorder;
use crate::workloads::kv::{put_request, Outcome};
use crate::workloads::lease::{grant, revoke_quietly};

struct LockClients {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    lock: LockClient<Channel>,
    watch: WatchClient<Channel>,
}

pub async fn lock(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    locks: usize,
    recipe: bool,
    ttl_s: i64,
) -> Outcome {
    let locks = locks.max(1);
    let prefix = args.prefix.clone();
    let rec = drive(args.clients, |i| {
        let (budget, prefix) = (budget.clone(), prefix.clone());
        let ch = conns.channel(i);
        let mut c = LockClients {
            kv: KvClient::new(ch.clone()),
            lease: LeaseClient::new(ch.clone()),
            lock: LockClient::new(ch.clone()),
            watch: WatchClient::new(ch),
        };
        async move {
            let name = format!("{prefix}lock/{:04}", i % locks).into_bytes();
            let mut rec = Recorder::new();
            let mut lease_id = 0i64;
            while budget.next().await {
                let t0 = Instant::now();
                let r = async {
                    if lease_id == 0 {
                        lease_id = grant(&mut c.lease, budget.timeout, ttl_s).await?;
                    }
                    let cycle = cycle(&mut c, &name, lease_id, recipe);
                    match tokio::time::timeout(budget.timeout, cycle).await {
                        Ok(r) => r,
                        Err(_) => Err(OpError::new(format!(
                            "lock cycle timeout after {:?}",
                            budget.timeout
                        ))),
                    }
                }
                .await;
                if r.is_err() && lease_id != 0 {
                    // Whatever the failed cycle left behind (a waiter or holder key)
                    // goes away with its lease, so other clients are not blocked.
                    revoke_quietly(&mut c.lease, budget.timeout, lease_id).await;
                    lease_id = 0;
                }
                budget.finish(&mut rec, t0, r).await;
            }
            revoke_quietly(&mut c.lease, budget.timeout, lease_id).await;
            rec
        }
    })
    .await;
    let mut extra = Map::new();
    extra.insert("locks".into(), locks.into());
    extra.insert(
        "mode".into(),
        (if recipe { "recipe" } else { "service" }).into(),
    );
    (rec, extra)
}

async fn cycle(c: &mut LockClients, name: &[u8], lease: i64, recipe: bool) -> Result<(), OpError> {
    if recipe {
        let my_key = recipe_lock(c, name, lease).await?;
        let del = DeleteRangeRequest {
            key: my_key,
            ..Default::default()
        };
        c.kv.delete_range(del)
            .await
            .map_err(OpError::from)
            .map(drop)
    } else {
        let req = LockRequest {
            name: name.to_vec(),
            lease,
        };
        let held = c.lock.lock(req).await.map_err(OpError::from)?.into_inner();
        let unlock = UnlockRequest { key: held.key };
        c.lock.unlock(unlock).await.map_err(OpError::from).map(drop)
    }
}

/// etcd `concurrency.Mutex.Lock`: returns the key that holds the lock.
async fn recipe_lock(c: &mut LockClients, name: &[u8], lease: i64) -> Result<Vec<u8>, OpError> {
    let mut pfx = name.to_vec();
    pfx.push(b'/');
    let my_key = [pfx.as_slice(), format!("{lease:x}").as_bytes()].concat();
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: my_key.clone(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![op(Request::RequestPut(put_request(
            my_key.clone(),
            b"",
            lease,
        )))],
        failure: vec![op(Request::RequestRange(RangeRequest {
            key: my_key.clone(),
            ..Default::default()
        }))],
    };
    let resp = c.kv.txn(txn).await.map_err(OpError::from)?.into_inner();
    let my_rev = if resp.succeeded {
        resp.header.map_or(0, |h| h.revision)
    } else {
        match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(r)) => r.kvs.first().map_or(0, |kv| kv.create_revision),
            _ => 0,
        }
    };
    if my_rev <= 0 {
        return Err(OpError::new(
            "lock recipe: could not determine own create revision",
        ));
    }
    wait_deletes(c, &pfx, my_rev).await?;
    Ok(my_key)
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// Waits until no key under `pfx` was created before `my_rev` (etcd `waitDeletes`).
/// Each round watches the newest older waiter for its deletion. The number of
/// rounds is bounded by the waiters ahead; the caller bounds the time.
async fn wait_deletes(c: &mut LockClients, pfx: &[u8], my_rev: i64) -> Result<(), OpError> {
    loop {
        let req = RangeRequest {
            key: pfx.to_vec(),
            range_end: prefix_end(pfx),
            limit: 1,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            max_create_revision: my_rev - 1,
            ..Default::default()
        };
        let resp = c.kv.range(req).await.map_err(OpError::from)?.into_inner();
        let Some(ahead) = resp.kvs.first() else {
            return Ok(());
        };
        let from_rev = resp.header.map_or(0, |h| h.revision) + 1;
        wait_delete(&mut c.watch, ahead.key.clone(), from_rev).await?;
    }
}

async fn wait_delete(
    watch: &mut WatchClient<Channel>,
    key: Vec<u8>,
    from_rev: i64,
) -> Result<(), OpError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key,
                start_revision: from_rev,
                ..Default::default()
            },
        )),
    };
    tx.send(create)
        .await
        .map_err(|_| OpError::new("watch request channel closed"))?;
    let mut stream = watch
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(OpError::from)?
        .into_inner();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(OpError::from)?;
        if msg.canceled {
            return Err(OpError::new(format!(
                "watch canceled: {}",
                msg.cancel_reason
            )));
        }
        if msg
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
    }
    // Keep `tx` alive until here: dropping it half-closes the stream.
    drop(tx);
    Err(OpError::new("watch stream ended before the delete"))
}

/// The per-client lease TTL for a lock run: at least the run length plus 30 s,
/// so a lease never expires (and drops a held lock) in the middle of the run.
/// Leases are revoked at the end, and on any failed cycle.
pub fn lock_lease_ttl_s(lease_ttl_s: i64, run_s: Option<f64>) -> i64 {
    let run = run_s.map_or(0, |s| Duration::from_secs_f64(s.max(0.0)).as_secs() as i64);
    lease_ttl_s.max(run + 30)
}
