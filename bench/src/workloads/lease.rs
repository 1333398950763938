//! `lease-put`: grant a lease, then put a key attached to it; one op = both calls.

use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use serde_json::Map;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::args::CommonArgs;
use crate::driver::{call, drive, key, Budget, Conns, OpError, Rng};
use crate::stats::Recorder;
use crate::workloads::kv::{put_request, Outcome};

pub async fn lease_put(
    args: &CommonArgs,
    conns: &Conns,
    budget: Arc<Budget>,
    ttl_s: i64,
) -> Outcome {
    let value: Arc<[u8]> = vec![b'v'; args.value_size].into();
    let (keys, prefix) = (args.keys.max(1), args.prefix.clone());
    let rec = drive(args.clients, |i| {
        let (budget, value, prefix) = (budget.clone(), value.clone(), prefix.clone());
        let mut kv = KvClient::new(conns.channel(i));
        let mut lease = LeaseClient::new(conns.channel(i));
        async move {
            let mut rng = Rng::new(i as u64 + 15_485_863);
            let mut rec = Recorder::new();
            while budget.next().await {
                let k = key(&prefix, "lease", rng.below(keys));
                let t0 = Instant::now();
                let r = async {
                    let id = grant(&mut lease, budget.timeout, ttl_s).await?;
                    call(budget.timeout, kv.put(put_request(k, &value, id)))
                        .await
                        .map(drop)
                }
                .await;
                budget.finish(&mut rec, t0, r).await;
            }
            rec
        }
    })
    .await;
    let mut extra = Map::new();
    extra.insert("lease_ttl_s".into(), ttl_s.into());
    (rec, extra)
}

/// Grants a lease with a server-chosen id.
pub async fn grant(
    lease: &mut LeaseClient<Channel>,
    timeout: Duration,
    ttl_s: i64,
) -> Result<i64, OpError> {
    let resp = call(
        timeout,
        lease.lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 }),
    )
    .await?;
    if resp.error.is_empty() {
        Ok(resp.id)
    } else {
        Err(OpError::new(format!("lease grant: {}", resp.error)))
    }
}

/// Revokes a lease, ignoring failures (used for cleanup only).
pub async fn revoke_quietly(lease: &mut LeaseClient<Channel>, timeout: Duration, id: i64) {
    if id != 0 {
        let _ = call(timeout, lease.lease_revoke(LeaseRevokeRequest { id })).await;
    }
}
