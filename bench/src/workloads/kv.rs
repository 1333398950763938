//! Plain KV workloads: `put`, `range`, `mixed`, `txn-cas`, and the prefill that
//! writes a key space once before measuring. Only the etcd v3 KV service is used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::args::CommonArgs;
use crate::driver::{call, drive, key, Budget, Conns, OpError, Rng};
use crate::stats::Recorder;

/// Key space shared by put, range and mixed, so one prefill serves all three.
pub const KV_SPACE: &str = "kv";
const CAS_SPACE: &str = "cas";

/// What a workload hands back: merged latencies plus workload-specific numbers.
pub type Outcome = (Recorder, Map<String, Value>);

pub fn put_request(key: Vec<u8>, value: &[u8], lease: i64) -> PutRequest {
    PutRequest {
        key,
        value: value.to_vec(),
        lease,
        ..Default::default()
    }
}

pub fn range_request(key: Vec<u8>, serializable: bool) -> RangeRequest {
    RangeRequest {
        key,
        serializable,
        ..Default::default()
    }
}

/// Writes keys `0..count` of `space` once with `clients` concurrent writers.
/// Returns (keys written, errors). Bounded by `count` and the per-request timeout.
pub async fn prefill(args: &CommonArgs, conns: &Conns, space: &str, count: u64) -> (u64, u64) {
    let budget = Arc::new(Budget::new(None, Some(count), 0.0, timeout(args)));
    let rec = run_puts(args, conns, budget, space, true).await;
    (rec.ops(), rec.errors)
}

pub fn timeout(args: &CommonArgs) -> Duration {
    Duration::from_millis(args.timeout_ms)
}

/// `put`: random keys of the key space, or each key once in order (`sequential`).
pub async fn put(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    sequential: bool,
) -> Outcome {
    let rec = run_puts(args, conns, budget, KV_SPACE, sequential).await;
    (rec, Map::new())
}

async fn run_puts(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    space: &str,
    sequential: bool,
) -> Recorder {
    let value: Arc<[u8]> = vec![b'v'; args.value_size].into();
    let next_seq = Arc::new(AtomicU64::new(0));
    let (keys, prefix, space) = (args.keys.max(1), args.prefix.clone(), space.to_string());
    drive(args.clients, |i| {
        let (budget, value, next_seq) = (budget.clone(), value.clone(), next_seq.clone());
        let (prefix, space) = (prefix.clone(), space.clone());
        let mut kv = KvClient::new(conns.channel(i));
        async move {
            let mut rng = Rng::new(i as u64);
            let mut rec = Recorder::new();
            while budget.next().await {
                let idx = if sequential {
                    next_seq.fetch_add(1, Ordering::Relaxed) % keys
                } else {
                    rng.below(keys)
                };
                let req = put_request(key(&prefix, &space, idx), &value, 0);
                let t0 = Instant::now();
                let r = call(budget.timeout, kv.put(req)).await.map(drop);
                budget.finish(&mut rec, t0, r).await;
            }
            rec
        }
    })
    .await
}

/// `range`: single-key reads of random keys, linearizable or serializable.
pub async fn range(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    serializable: bool,
) -> Outcome {
    mixed(args, conns, budget, serializable, 1.0).await
}

/// `mixed`: each operation is a read with probability `read_ratio`, else a put.
pub async fn mixed(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    serializable: bool,
    read_ratio: f64,
) -> Outcome {
    let value: Arc<[u8]> = vec![b'v'; args.value_size].into();
    let reads = Arc::new(AtomicU64::new(0));
    let read_per_mille = (read_ratio.clamp(0.0, 1.0) * 1000.0).round() as u64;
    let (keys, prefix) = (args.keys.max(1), args.prefix.clone());
    let rec = drive(args.clients, |i| {
        let (budget, value, reads, prefix) =
            (budget.clone(), value.clone(), reads.clone(), prefix.clone());
        let mut kv = KvClient::new(conns.channel(i));
        async move {
            let mut rng = Rng::new(i as u64 + 7919);
            let mut rec = Recorder::new();
            while budget.next().await {
                let k = key(&prefix, KV_SPACE, rng.below(keys));
                let is_read = rng.below(1000) < read_per_mille;
                let t0 = Instant::now();
                let r = if is_read {
                    reads.fetch_add(1, Ordering::Relaxed);
                    call(budget.timeout, kv.range(range_request(k, serializable)))
                        .await
                        .map(drop)
                } else {
                    call(budget.timeout, kv.put(put_request(k, &value, 0)))
                        .await
                        .map(drop)
                };
                budget.finish(&mut rec, t0, r).await;
            }
            rec
        }
    })
    .await;
    let mut extra = Map::new();
    let reads = reads.load(Ordering::Relaxed);
    extra.insert(
        "consistency".into(),
        (if serializable { "s" } else { "l" }).into(),
    );
    if read_ratio < 1.0 {
        extra.insert("read_ratio".into(), read_ratio.into());
        extra.insert("reads".into(), reads.into());
    }
    (rec, extra)
}

/// `txn-cas`: read a key's mod_revision, then `Txn(If mod == rev, Then put)`.
/// A CAS that loses the race is a conflict, not an error; both count as ops.
pub async fn txn_cas(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    shared_keys: bool,
) -> Outcome {
    let value: Arc<[u8]> = vec![b'v'; args.value_size].into();
    let conflicts = Arc::new(AtomicU64::new(0));
    let clients = args.clients.max(1) as u64;
    let keys = args.keys.max(1);
    // Own keys: client i owns indices [i * per_client, (i + 1) * per_client).
    let per_client = (keys / clients).max(1);
    let prefix = args.prefix.clone();
    let rec = drive(args.clients, |i| {
        let (budget, value, conflicts, prefix) = (
            budget.clone(),
            value.clone(),
            conflicts.clone(),
            prefix.clone(),
        );
        let mut kv = KvClient::new(conns.channel(i));
        async move {
            let mut rng = Rng::new(i as u64 + 104_729);
            let mut rec = Recorder::new();
            while budget.next().await {
                let idx = if shared_keys {
                    rng.below(keys)
                } else {
                    i as u64 * per_client + rng.below(per_client)
                };
                let k = key(&prefix, CAS_SPACE, idx);
                let t0 = Instant::now();
                let r = cas_once(&mut kv, budget.timeout, k, &value).await;
                let r = r.map(|won| {
                    if !won {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                });
                budget.finish(&mut rec, t0, r).await;
            }
            rec
        }
    })
    .await;
    let mut extra = Map::new();
    extra.insert("shared_keys".into(), shared_keys.into());
    extra.insert("conflicts".into(), conflicts.load(Ordering::Relaxed).into());
    (rec, extra)
}

/// One compare-and-swap; Ok(true) if the txn's compare held.
async fn cas_once(
    kv: &mut KvClient<Channel>,
    timeout: Duration,
    k: Vec<u8>,
    value: &[u8],
) -> Result<bool, OpError> {
    let got = call(timeout, kv.range(range_request(k.clone(), false))).await?;
    let rev = got.kvs.first().map_or(0, |kv| kv.mod_revision);
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: k.clone(),
            target_union: Some(TargetUnion::ModRevision(rev)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(put_request(k, value, 0))),
        }],
        failure: vec![],
    };
    Ok(call(timeout, kv.txn(txn)).await?.succeeded)
}
