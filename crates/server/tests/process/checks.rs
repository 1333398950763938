//! What a finished process-nemesis run must satisfy besides linearizability.
//!
//! Owns: reading the store's own record of every write back (version by version), checking
//! it against what the clients sent and were told, checking the watch segments against it,
//! and comparing `HashKV` across members at one revision.
//! Must never: change the cluster (reads only) or wait without a deadline.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::{HashKvRequest, HashKvResponse, RangeRequest};
use keel_sim::history::{History, OpKind};
use keel_sim::watch::{validate_watch, WatchEvent, WatchSpec, WatchViolation};
use tonic::transport::Channel;

use super::cluster::ProcCluster;
use super::workload::{Segment, KEYS, PREFIX};
use crate::common::{eventually, get, range_req, rev};

/// Longest wait for every member to apply the final revision.
const CONVERGE_WAIT: Duration = Duration::from_secs(60);

/// Every committed write to the keys, in revision order, read back version by version
/// (nothing is compacted) from the member behind `kv`, which must have applied
/// `final_revision`.
pub async fn committed_events(kv: &mut KvClient<Channel>, final_revision: i64) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    for key in KEYS {
        let latest = RangeRequest {
            revision: final_revision,
            serializable: true,
            ..range_req(key, "")
        };
        let mut kv_at = get(kv, latest).await.kvs.pop();
        while let Some(version) = kv_at {
            events.push(WatchEvent::put(
                &version.key,
                &version.value,
                version.mod_revision,
            ));
            kv_at = if version.version == 1 {
                None
            } else {
                // A past revision never changes, so a serializable read is exact.
                let older = RangeRequest {
                    revision: version.mod_revision - 1,
                    serializable: true,
                    ..range_req(key, "")
                };
                Some(
                    get(kv, older)
                        .await
                        .kvs
                        .pop()
                        .expect("older version exists"),
                )
            };
        }
    }
    events.sort_by_key(|e| e.revision);
    events
}

/// Every write the store holds was sent by a client, once; every acknowledged write is there
/// with the revision it was acknowledged with; the writes fill revisions 2..=final.
pub fn check_store_against_clients(history: &History, committed: &[WatchEvent], final_rev: i64) {
    let revisions: Vec<i64> = committed.iter().map(|e| e.revision).collect();
    let expected: Vec<i64> = (2..=final_rev).collect();
    assert_eq!(revisions, expected, "one write per revision, no gaps");
    let stored: HashMap<(&[u8], &[u8]), i64> = committed
        .iter()
        .map(|e| ((e.key.as_slice(), e.value.as_slice()), e.revision))
        .collect();
    assert_eq!(stored.len(), committed.len(), "every value stored once");
    let mut sent = HashSet::new();
    for op in &history.ops {
        let (key, value, acked) = match &op.kind {
            OpKind::Put { key, value, result } => (key, value, result.map(|r| r.revision)),
            OpKind::Cas {
                key,
                new_value,
                result,
                ..
            } => (
                key,
                new_value,
                result.filter(|r| r.succeeded).map(|r| r.revision),
            ),
            _ => continue,
        };
        sent.insert((key.as_slice(), value.as_slice()));
        if let Some(revision) = acked {
            let found = stored.get(&(key.as_slice(), value.as_slice()));
            assert_eq!(
                found,
                Some(&revision),
                "acknowledged write {op:?} is stored"
            );
        }
    }
    for e in committed {
        let what = (e.key.as_slice(), e.value.as_slice());
        assert!(sent.contains(&what), "stored {e:?}, which no client sent");
    }
}

/// Validates every segment against the committed history, then that together they
/// delivered all of it, each event once.
pub fn check_watch(
    segments: &[Segment],
    committed: &[WatchEvent],
) -> Result<usize, WatchViolation> {
    let mut delivered: Vec<WatchEvent> = Vec::new();
    for segment in segments {
        let spec = WatchSpec::prefix(PREFIX.as_bytes(), segment.start_revision);
        let report = validate_watch(committed, &spec, &segment.responses)?;
        tracing::debug!(
            member = segment.member,
            start = segment.start_revision,
            events = report.events_delivered,
            "watch segment valid"
        );
        delivered.extend(segment.responses.iter().flat_map(|r| r.events.clone()));
    }
    assert_eq!(
        delivered, committed,
        "the watch segments together delivered the whole committed history, in order, once"
    );
    Ok(delivered.len())
}

/// Waits until every member reports exactly `revision` as its current revision (nothing
/// writes after the final read), so all have applied the same history.
pub async fn wait_converged(cluster: &ProcCluster, revision: i64) {
    let what = format!("members to converge on revision {revision}");
    eventually(&what, CONVERGE_WAIT, async || {
        let mut seen = Vec::new();
        for i in 0..cluster.len() {
            let r = cluster
                .status(i)
                .await
                .and_then(|s| s.header)
                .map(|h| h.revision);
            seen.push(r);
        }
        if seen.iter().all(|r| *r == Some(revision)) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await
}

/// `HashKV` of every member at `revision`; panics unless all agree.
pub async fn assert_hash_kv_agrees(cluster: &ProcCluster, revision: i64) -> u32 {
    let mut hashes: Vec<(u32, i64, i64)> = Vec::new();
    for i in 0..cluster.len() {
        let resp: HashKvResponse = cluster
            .maintenance(i)
            .hash_kv(HashKvRequest { revision })
            .await
            .unwrap_or_else(|s| panic!("HashKV on m{i}: {:?}: {}", s.code(), s.message()))
            .into_inner();
        let header_revision = resp.header.as_ref().map_or(0, |h| h.revision);
        tracing::info!(member = i, hash = resp.hash, header_revision, "HashKV");
        hashes.push((resp.hash, resp.compact_revision, header_revision));
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members disagree on HashKV at revision {revision}: {hashes:?}"
    );
    hashes[0].0
}

/// The header revision of a linearizable read of every key, and the read's `(call, return,
/// response)` for the history.
pub async fn final_read(
    cluster: &ProcCluster,
    leader: usize,
    origin: Instant,
) -> (u64, u64, keel_api::etcdserverpb::RangeResponse) {
    let kv = cluster.kv(leader);
    eventually("the final read", CONVERGE_WAIT, async || {
        let call_ns = super::workload::ns_since(origin);
        let resp = kv
            .clone()
            .range(crate::common::prefix_req(PREFIX))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        tracing::info!(revision = rev(&resp), "final read");
        Ok((call_ns, super::workload::ns_since(origin), resp))
    })
    .await
}

/// What [`resolve_unknown_writes`] did.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Unknown writes the store holds: given their stored revision.
    pub took_effect: usize,
    /// Unknown writes the store does not hold: they never took effect and are left out.
    pub never_applied: usize,
}

/// Settles every write of unknown outcome from the store's own record, as etcd's robustness
/// suite does with its watch history: a write whose (key, unique value) the store holds took
/// effect at that revision, and completed by `return_bound_ns` (the final read, which saw
/// it); a write the store does not hold never took effect (a CAS whose compare failed has no
/// effect either) and is left out. This is sound only after `check_store_against_clients`
/// has shown the record complete and consistent with every acknowledged write; the reads in
/// the history still have to agree with it, so a write that was seen and later lost shows up
/// as a read of a value nobody wrote. Without it, the search over hundreds of pending
/// unknown writes per key does not finish on a 10-minute history.
pub fn resolve_unknown_writes(
    history: &History,
    committed: &[WatchEvent],
    return_bound_ns: u64,
) -> (History, Resolved) {
    use keel_sim::history::{CasOk, Op};
    let stored: HashMap<(&[u8], &[u8]), i64> = committed
        .iter()
        .map(|e| ((e.key.as_slice(), e.value.as_slice()), e.revision))
        .collect();
    let mut resolved = Resolved::default();
    let mut ops = Vec::with_capacity(history.ops.len());
    for op in &history.ops {
        if op.return_ns.is_some() {
            ops.push(op.clone());
            continue;
        }
        let (client, call_ns) = (op.client, op.call_ns);
        let settled = match &op.kind {
            OpKind::Put { key, value, .. } => stored
                .get(&(key.as_slice(), value.as_slice()))
                .map(|&rev| Op::put(client, call_ns, return_bound_ns, key, value, rev)),
            OpKind::Cas {
                key,
                expect,
                new_value,
                ..
            } => stored
                .get(&(key.as_slice(), new_value.as_slice()))
                .map(|&rev| {
                    let ok = CasOk {
                        succeeded: true,
                        revision: rev,
                    };
                    Op::cas(
                        client,
                        call_ns,
                        return_bound_ns,
                        key,
                        expect.clone(),
                        new_value,
                        ok,
                    )
                }),
            // Reads of unknown outcome are never recorded; deletes are not generated.
            _ => Some(op.clone()),
        };
        match settled {
            Some(op) => {
                resolved.took_effect += 1;
                ops.push(op);
            }
            None => resolved.never_applied += 1,
        }
    }
    (History::new(ops), resolved)
}
