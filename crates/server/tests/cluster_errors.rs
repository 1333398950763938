//! Bad requests get etcd's exact status code and message, and the member keeps serving.
//! Every limit is crossed from both sides: at the limit passes, one past it fails.
//!
//! On 3 members the requests go through a follower and then through the leader, so errors
//! decided during apply (on the leader) also travel back through forwarding intact.

mod common;

use common::*;
use keel_api::etcdserverpb::compare::{CompareResult, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{
    CompactionRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_api::v3electionpb::election_client::ElectionClient;
use keel_api::v3electionpb::{CampaignRequest, LeaderRequest};
use keel_api::v3lockpb::lock_client::LockClient;
use keel_api::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;
use tonic::Code;

type Kv = KvClient<Channel>;

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// etcd's defaults: `--max-request-bytes` 1.5 MiB, `--max-txn-ops` 128.
const DEFAULT_REQUEST_BYTES_MAX: usize = 1536 * 1024;
const DEFAULT_TXN_OPS_MAX: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_errors_on_one_member() {
    let cluster = TestCluster::start(1, &[]).await;
    let mut kv = cluster.kv(0);
    check_all_errors(&mut kv, DEFAULT_REQUEST_BYTES_MAX, DEFAULT_TXN_OPS_MAX).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_errors_through_follower_and_leader() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    for (role, i) in [("follower", follower), ("leader", leader)] {
        tracing::info!("=== through the {role} m{i}");
        let mut kv = cluster.kv(i);
        check_all_errors(&mut kv, DEFAULT_REQUEST_BYTES_MAX, DEFAULT_TXN_OPS_MAX).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_request_and_txn_limits_move_the_thresholds() {
    let cluster =
        TestCluster::start(1, &["--max-request-bytes", "4096", "--max-txn-ops", "4"]).await;
    let mut kv = cluster.kv(0);
    tracing::info!("--- phase 1: request size limit at 4096 bytes");
    check_request_size(&mut kv, 4096).await;
    tracing::info!("--- phase 2: txn op limit at 4");
    check_txn_ops(&mut kv, 4).await;
    tracing::info!("--- phase 3: a request that passes the default limits fails here");
    assert_etcd_error(
        "10 KiB value",
        kv.put(put_req("big", &"v".repeat(10 * 1024))).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    let five: Vec<RequestOp> = (0..5).map(|i| op_put(&format!("t{i}"), "v")).collect();
    assert_etcd_error(
        "5 ops",
        kv.txn(txn(vec![], five, vec![])).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    still_serving(&mut kv, "after custom limits").await;
    cluster.shutdown().await;
}

fn txn(
    compare: Vec<keel_api::etcdserverpb::Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// A write and a linearizable read still work, and see each other.
async fn still_serving(kv: &mut Kv, after: &str) {
    let key = format!("alive/{after}");
    let written = put(kv, &key, "yes").await;
    let read = get(kv, range_req(&key, "")).await;
    assert_eq!(values(&read), ["yes"], "member stopped serving {after}");
    assert_eq!(read.kvs[0].mod_revision, rev(&written));
}

async fn check_all_errors(kv: &mut Kv, request_bytes_max: usize, txn_ops_max: usize) {
    tracing::info!("--- phase 1: empty keys");
    check_empty_keys(kv).await;
    still_serving(kv, "empty keys").await;
    tracing::info!("--- phase 2: request size");
    check_request_size(kv, request_bytes_max).await;
    tracing::info!("--- phase 3: txn op count");
    check_txn_ops(kv, txn_ops_max).await;
    tracing::info!("--- phase 4: duplicate keys in a txn");
    check_duplicate_keys(kv).await;
    still_serving(kv, "duplicate keys").await;
    tracing::info!("--- phase 5: compacted and future revisions");
    check_revisions(kv).await;
    still_serving(kv, "revision errors").await;
}

async fn check_empty_keys(kv: &mut Kv) {
    let bad = Code::InvalidArgument;
    assert_etcd_error("range", kv.range(range_req("", "")).await, bad, EMPTY_KEY);
    assert_etcd_error(
        "range with only a range_end",
        kv.range(range_req("", "z")).await,
        bad,
        EMPTY_KEY,
    );
    assert_etcd_error("put", kv.put(put_req("", "v")).await, bad, EMPTY_KEY);
    assert_etcd_error(
        "delete",
        kv.delete_range(delete_req("", "")).await,
        bad,
        EMPTY_KEY,
    );
    let cases: [(&str, TxnRequest); 5] = [
        ("txn put", txn(vec![], vec![op_put("", "v")], vec![])),
        ("txn range", txn(vec![], vec![op_range("", "")], vec![])),
        ("txn delete", txn(vec![], vec![], vec![op_delete("", "")])),
        (
            "txn compare",
            txn(
                vec![compare("", CompareResult::Equal, TargetUnion::Version(0))],
                vec![],
                vec![],
            ),
        ),
        (
            "nested txn put",
            txn(
                vec![],
                vec![op_txn(txn(vec![], vec![op_put("", "v")], vec![]))],
                vec![],
            ),
        ),
    ];
    for (what, req) in cases {
        assert_etcd_error(what, kv.txn(req).await, bad, EMPTY_KEY);
    }
}

/// A value that makes a `PutRequest` for `key` exactly `bytes` long on the wire.
fn value_for_request_of(key: &str, bytes: usize) -> String {
    use prost::Message;
    let key_field_bytes = put_req(key, "").encoded_len();
    // The value field is one tag byte, a varint length (1 to 5 bytes) and the value itself.
    for varint_bytes in 1..=5 {
        let value = "x".repeat(bytes - key_field_bytes - 1 - varint_bytes);
        if put_req(key, &value).encoded_len() == bytes {
            return value;
        }
    }
    panic!("no value makes a {bytes}-byte put request");
}

async fn check_request_size(kv: &mut Kv, request_bytes_max: usize) {
    let at_limit = value_for_request_of("size/at", request_bytes_max);
    let written = ok(
        "put at the size limit",
        kv.put(put_req("size/at", &at_limit)).await,
    );
    let read = get(kv, range_req("size/at", "")).await;
    assert_eq!(
        read.kvs[0].value.len(),
        at_limit.len(),
        "value read back whole"
    );
    assert_eq!(read.kvs[0].mod_revision, rev(&written));

    let over = value_for_request_of("size/over", request_bytes_max + 1);
    assert_etcd_error(
        "put one byte over the size limit",
        kv.put(put_req("size/over", &over)).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    let big_key = "k".repeat(request_bytes_max + 1);
    assert_etcd_error(
        "range with an oversized key",
        kv.range(range_req(&big_key, "")).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    assert_etcd_error(
        "delete with an oversized key",
        kv.delete_range(delete_req(&big_key, "")).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    let half = "v".repeat(request_bytes_max / 2 + 1);
    assert_etcd_error(
        "txn whose ops add up past the limit",
        kv.txn(txn(
            vec![],
            vec![op_put("size/t1", &half), op_put("size/t2", &half)],
            vec![],
        ))
        .await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    for rejected in ["size/over", "size/t1", "size/t2"] {
        let read = get(kv, range_req(rejected, "")).await;
        assert!(read.kvs.is_empty(), "rejected request wrote {rejected}");
    }
    if request_bytes_max >= 1024 * 1024 + 1024 {
        let mib = "m".repeat(1024 * 1024);
        ok("put a 1 MiB value", kv.put(put_req("size/mib", &mib)).await);
        let read = get(kv, range_req("size/mib", "")).await;
        assert_eq!(read.kvs[0].value.len(), mib.len());
    }
    still_serving(kv, "request size errors").await;
}

async fn check_txn_ops(kv: &mut Kv, txn_ops_max: usize) {
    let puts = |n: usize, tag: &str| -> Vec<RequestOp> {
        (0..n)
            .map(|i| op_put(&format!("ops/{tag}/{i}"), "v"))
            .collect()
    };
    let full = ok(
        "txn at the op limit",
        kv.txn(txn(vec![], puts(txn_ops_max, "ok"), vec![])).await,
    );
    assert_eq!(full.responses.len(), txn_ops_max);
    let over = |what: &str| format!("{what} with {} ops", txn_ops_max + 1);
    assert_etcd_error(
        &over("success branch"),
        kv.txn(txn(vec![], puts(txn_ops_max + 1, "s"), vec![]))
            .await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_etcd_error(
        &over("failure branch"),
        kv.txn(txn(vec![], vec![], puts(txn_ops_max + 1, "f")))
            .await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let compares = (0..=txn_ops_max)
        .map(|i| {
            compare(
                &format!("c{i}"),
                CompareResult::Equal,
                TargetUnion::Version(0),
            )
        })
        .collect();
    assert_etcd_error(
        &over("compare list"),
        kv.txn(txn(compares, vec![], vec![])).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_etcd_error(
        &over("nested txn"),
        kv.txn(txn(
            vec![],
            vec![op_txn(txn(vec![], puts(txn_ops_max + 1, "n"), vec![]))],
            vec![],
        ))
        .await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let written = get(kv, range_req("ops/", "ops0")).await;
    assert_eq!(
        written.count as usize, txn_ops_max,
        "only the txn at the limit wrote"
    );
    still_serving(kv, "txn op errors").await;
}

async fn check_duplicate_keys(kv: &mut Kv) {
    let cases: [(&str, TxnRequest); 4] = [
        (
            "two puts of one key",
            txn(vec![], vec![op_put("d/a", "1"), op_put("d/a", "2")], vec![]),
        ),
        (
            "put inside a deleted range",
            txn(
                vec![],
                vec![op_delete("d/", "d0"), op_put("d/x", "1")],
                vec![],
            ),
        ),
        (
            "duplicate in the failure branch",
            txn(vec![], vec![], vec![op_put("d/b", "1"), op_put("d/b", "2")]),
        ),
        (
            "nested txn writes a key the outer txn writes",
            txn(
                vec![],
                vec![
                    op_put("d/c", "1"),
                    op_txn(txn(vec![], vec![op_put("d/c", "2")], vec![])),
                ],
                vec![],
            ),
        ),
    ];
    for (what, req) in cases {
        assert_etcd_error(
            what,
            kv.txn(req).await,
            Code::InvalidArgument,
            DUPLICATE_KEY,
        );
    }
    let fine = ok(
        "same key in different branches",
        kv.txn(txn(
            vec![],
            vec![op_put("d/a", "s")],
            vec![op_put("d/a", "f")],
        ))
        .await,
    );
    assert!(fine.succeeded);
    let delete_then_put_elsewhere = ok(
        "delete and put of different keys",
        kv.txn(txn(
            vec![],
            vec![op_delete("d/a", ""), op_put("d/b", "1")],
            vec![],
        ))
        .await,
    );
    assert!(delete_then_put_elsewhere.succeeded);
    let d = get(kv, range_req("d/", "d0")).await;
    assert_eq!(pairs(&d), [("d/b".to_string(), "1".to_string())]);
}

async fn check_revisions(kv: &mut Kv) {
    let first = put(kv, "rev/k", "1").await;
    put(kv, "rev/k", "2").await;
    let last = put(kv, "rev/k", "3").await;
    let (old, current) = (rev(&first), rev(&last));
    // Compact to the middle version; on the second pass through another member the store is
    // already compacted further, which is fine: we only need a revision below the compacted
    // one and one above the current one.
    let compact_to = current - 1;
    ok(
        "compact",
        kv.compact(CompactionRequest {
            revision: compact_to,
            physical: false,
        })
        .await,
    );
    let at = |revision: i64| RangeRequest {
        revision,
        ..range_req("rev/k", "")
    };
    assert_etcd_error(
        "range at a compacted revision",
        kv.range(at(old)).await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_etcd_error(
        "serializable range at a compacted revision",
        kv.range(RangeRequest {
            serializable: true,
            ..at(old)
        })
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_etcd_error(
        "range at a future revision",
        kv.range(at(current + 1000)).await,
        Code::OutOfRange,
        FUTURE,
    );
    assert_etcd_error(
        "txn range at a compacted revision",
        kv.txn(txn(
            vec![],
            vec![RequestOp {
                request: Some(keel_api::etcdserverpb::request_op::Request::RequestRange(
                    at(old),
                )),
            }],
            vec![],
        ))
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_etcd_error(
        "compact at the compacted revision",
        kv.compact(CompactionRequest {
            revision: compact_to,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_etcd_error(
        "compact at a future revision",
        kv.compact(CompactionRequest {
            revision: current + 1000,
            physical: true,
        })
        .await,
        Code::OutOfRange,
        FUTURE,
    );
    let ignore_missing = PutRequest {
        ignore_value: true,
        ..put_req("rev/missing", "")
    };
    assert_etcd_error(
        "ignore_value on a missing key (decided during apply)",
        kv.put(ignore_missing).await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    let now = get(kv, at(0)).await;
    assert_eq!(rev(&now), current, "failed requests wrote no revision");
}

/// The lock and election services refuse what etcd refuses: requests past the size limit
/// (etcd checks the size of every proposal, and its gRPC layer refuses bigger messages) and
/// an unlock of no key (etcd's Unlock deletes through its KV service, which wants a key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_requests_get_etcd_errors() {
    let cluster = TestCluster::start(1, &["--max-request-bytes", "4096"]).await;
    let ch = cluster.channel(0);
    let mut lock = LockClient::new(ch.clone());
    let mut election = ElectionClient::new(ch.clone());
    let lease = LeaseClient::new(ch)
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let big = vec![b'n'; 5000];
    let bad = Code::InvalidArgument;

    tracing::info!("--- phase 1: past --max-request-bytes");
    let name = big.clone();
    let held = lock.lock(LockRequest { name, lease }).await;
    assert_etcd_error("lock, name too large", held, bad, TOO_LARGE);
    let key = big.clone();
    let unlocked = lock.unlock(UnlockRequest { key }).await;
    assert_etcd_error("unlock, key too large", unlocked, bad, TOO_LARGE);
    let campaign = CampaignRequest {
        name: b"e".to_vec(),
        lease,
        value: big.clone(),
    };
    let won = election.campaign(campaign).await;
    assert_etcd_error("campaign, value too large", won, bad, TOO_LARGE);
    let name = big.clone();
    let leader = election.leader(LeaderRequest { name }).await;
    assert_etcd_error("leader, name too large", leader, bad, TOO_LARGE);

    tracing::info!("--- phase 2: past the gRPC message limit");
    let name = vec![b'n'; 4096 + 512 * 1024 + 1];
    let refused = lock
        .lock(LockRequest { name, lease })
        .await
        .expect_err("huge");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("grpc: received message larger than max"),
        "{refused:?}"
    );

    tracing::info!("--- phase 3: unlock of no key");
    let unlocked = lock.unlock(UnlockRequest { key: vec![] }).await;
    assert_etcd_error("unlock of no key", unlocked, bad, EMPTY_KEY);

    tracing::info!("--- phase 4: under the limit both work");
    let name = vec![b'n'; 1000];
    let held = lock.lock(LockRequest { name, lease }).await.expect("lock");
    let key = held.into_inner().key;
    lock.unlock(UnlockRequest { key }).await.expect("unlock");
    let campaign = CampaignRequest {
        name: b"e".to_vec(),
        lease,
        value: vec![b'v'; 1000],
    };
    election.campaign(campaign).await.expect("campaign");
    cluster.shutdown().await;
}
