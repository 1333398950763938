//! Every KV feature of etcd's API, driven through gRPC against a 1-member and a 3-member
//! cluster. On 3 members every request goes through a follower, so writes are forwarded to
//! the leader and linearizable reads take the ReadIndex round trip.
//!
//! Revisions are exact: a fresh store is at revision 1, the first write is revision 2, and
//! each write request (a whole txn included) adds one.

mod common;

use common::*;
use keel_api::etcdserverpb::compare::{CompareResult, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{
    response_op, CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
    TxnResponse,
};
use keel_api::mvccpb::KeyValue;
use tonic::transport::Channel;
use tonic::Code;

type Kv = KvClient<Channel>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_features_on_one_member() {
    let cluster = TestCluster::start(1, &[]).await;
    run_kv_features(&cluster, 0).await;
    check_headers(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_features_on_three_members_through_a_follower() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let via = cluster.followers(leader)[0];
    tracing::info!(leader, via, "requests go through a follower");
    run_kv_features(&cluster, via).await;
    check_headers(&cluster).await;
    check_members_agree(&cluster).await;
    cluster.shutdown().await;
}

async fn run_kv_features(cluster: &TestCluster, via: usize) {
    let mut kv = cluster.kv(via);
    tracing::info!("--- phase 1: put, get, prev_kv");
    put_and_get(&mut kv).await;
    tracing::info!("--- phase 2: ignore_value, ignore_lease and their errors");
    ignore_value_and_lease(&mut kv).await;
    tracing::info!("--- phase 3: ranges, limit, history");
    ranges(&mut kv).await;
    tracing::info!("--- phase 4: sort orders and targets");
    sorting(&mut kv).await;
    tracing::info!("--- phase 5: keys_only, count_only, revision filters, serializable");
    filters_and_serializable(&mut kv).await;
    tracing::info!("--- phase 6: deletes");
    deletes(&mut kv).await;
    tracing::info!("--- phase 7: txn compares on every target with every result");
    txn_compares(&mut kv).await;
    tracing::info!("--- phase 8: txn branches, nesting, one revision per txn");
    txn_branches(&mut kv).await;
    tracing::info!("--- phase 9: compaction, compacted and future revisions");
    compaction(&mut kv).await;
    tracing::info!("--- phase 10: delete everything");
    delete_all(&mut kv).await;
}

fn kv_of(resp: &keel_api::etcdserverpb::RangeResponse) -> &KeyValue {
    assert_eq!(resp.kvs.len(), 1, "exactly one kv in {resp:?}");
    &resp.kvs[0]
}

/// (key, value, create_revision, mod_revision, version)
fn shape(kv: &KeyValue) -> (String, String, i64, i64, i64) {
    (
        text(&kv.key),
        text(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
    )
}

fn row(k: &str, v: &str, create: i64, modr: i64, ver: i64) -> (String, String, i64, i64, i64) {
    (k.into(), v.into(), create, modr, ver)
}

async fn put_and_get(kv: &mut Kv) {
    let first = put(kv, "foo", "bar").await;
    assert_eq!(
        rev(&first),
        2,
        "the first write of a fresh store is revision 2"
    );
    assert_eq!(first.prev_kv, None, "no prev_kv unless asked");

    let second = ok(
        "put prev_kv",
        kv.put(PutRequest {
            prev_kv: true,
            ..put_req("foo", "baz")
        })
        .await,
    );
    assert_eq!(rev(&second), 3);
    let prev = second.prev_kv.expect("prev_kv requested");
    assert_eq!(shape(&prev), row("foo", "bar", 2, 2, 1));

    let fresh = ok(
        "put prev_kv on a new key",
        kv.put(PutRequest {
            prev_kv: true,
            ..put_req("fresh", "1")
        })
        .await,
    );
    assert_eq!(fresh.prev_kv, None, "a new key has no previous version");
    assert_eq!(rev(&fresh), 4);

    let got = get(kv, range_req("foo", "")).await;
    assert_eq!(shape(kv_of(&got)), row("foo", "baz", 2, 3, 2));
    assert_eq!((got.count, got.more, rev(&got)), (1, false, 4));

    let missing = get(kv, range_req("missing", "")).await;
    assert!(missing.kvs.is_empty());
    assert_eq!((missing.count, rev(&missing)), (0, 4));
}

async fn ignore_value_and_lease(kv: &mut Kv) {
    let kept = ok(
        "put ignore_value",
        kv.put(PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put_req("foo", "")
        })
        .await,
    );
    assert_eq!(rev(&kept), 5);
    assert_eq!(
        shape(&kept.prev_kv.expect("prev_kv")),
        row("foo", "baz", 2, 3, 2)
    );
    let got = get(kv, range_req("foo", "")).await;
    assert_eq!(
        shape(kv_of(&got)),
        row("foo", "baz", 2, 5, 3),
        "value kept, version bumped"
    );

    let cases: [(&str, PutRequest, Code, &str); 4] = [
        (
            "ignore_value with a value",
            PutRequest {
                ignore_value: true,
                ..put_req("foo", "x")
            },
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            "ignore_value on a missing key",
            PutRequest {
                ignore_value: true,
                ..put_req("nokey", "")
            },
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            "ignore_lease with a lease",
            PutRequest {
                ignore_lease: true,
                lease: 7,
                ..put_req("foo", "x")
            },
            Code::InvalidArgument,
            "etcdserver: lease is provided",
        ),
        (
            "put with a lease that does not exist",
            PutRequest {
                lease: 0x1234,
                ..put_req("foo", "x")
            },
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
    ];
    for (what, req, code, message) in cases {
        assert_etcd_error(what, kv.put(req).await, code, message);
    }
    let got = get(kv, range_req("foo", "")).await;
    assert_eq!(rev(&got), 5, "rejected puts write no revision");
    assert_eq!(shape(kv_of(&got)), row("foo", "baz", 2, 5, 3));
}

/// Leaves: foo(baz), fresh(1), r/a(mm, c6 m9 v2), r/b(yy, c7), r/c(aa, c8), r/d(kk, c10),
/// s(x, c11); current revision 11.
async fn ranges(kv: &mut Kv) {
    for (key, value, want) in [
        ("r/a", "zz", 6),
        ("r/b", "yy", 7),
        ("r/c", "aa", 8),
        ("r/a", "mm", 9),
        ("r/d", "kk", 10),
        ("s", "x", 11),
    ] {
        assert_eq!(rev(&put(kv, key, value).await), want, "put {key}");
    }
    let single = get(kv, range_req("r/b", "")).await;
    assert_eq!(keys(&single), ["r/b"]);
    let half_open = get(kv, range_req("r/a", "r/c")).await;
    assert_eq!(keys(&half_open), ["r/a", "r/b"], "range_end is exclusive");
    let prefix = get(kv, prefix_req("r/")).await;
    assert_eq!(keys(&prefix), ["r/a", "r/b", "r/c", "r/d"]);
    assert_eq!(values(&prefix), ["mm", "yy", "aa", "kk"]);
    assert_eq!(prefix.count, 4);
    let from_key = get(kv, range_req("r/c", "\0")).await;
    assert_eq!(
        keys(&from_key),
        ["r/c", "r/d", "s"],
        "range_end \\0 reads from key on"
    );
    let all = get(kv, range_req("\0", "\0")).await;
    assert_eq!(
        keys(&all),
        ["foo", "fresh", "r/a", "r/b", "r/c", "r/d", "s"]
    );

    let limited = get(
        kv,
        RangeRequest {
            limit: 2,
            ..prefix_req("r/")
        },
    )
    .await;
    assert_eq!(keys(&limited), ["r/a", "r/b"]);
    assert_eq!(
        (limited.more, limited.count),
        (true, 4),
        "more and the full count"
    );
    let exact = get(
        kv,
        RangeRequest {
            limit: 4,
            ..prefix_req("r/")
        },
    )
    .await;
    assert_eq!((exact.kvs.len(), exact.more, exact.count), (4, false, 4));

    tracing::info!("historical reads");
    let at = |revision: i64, req: RangeRequest| RangeRequest { revision, ..req };
    let old = get(kv, at(6, range_req("r/a", ""))).await;
    assert_eq!(shape(kv_of(&old)), row("r/a", "zz", 6, 6, 1));
    assert_eq!(
        rev(&old),
        11,
        "header carries the current revision, not the read one"
    );
    let still_old = get(kv, at(8, range_req("r/a", ""))).await;
    assert_eq!(shape(kv_of(&still_old)), row("r/a", "zz", 6, 6, 1));
    let new = get(kv, at(9, range_req("r/a", ""))).await;
    assert_eq!(shape(kv_of(&new)), row("r/a", "mm", 6, 9, 2));
    let prefix_then = get(kv, at(7, prefix_req("r/"))).await;
    assert_eq!(keys(&prefix_then), ["r/a", "r/b"]);
    assert_eq!(prefix_then.count, 2);
    let before = get(kv, at(9, range_req("r/d", ""))).await;
    assert!(before.kvs.is_empty(), "r/d did not exist at revision 9");
    let all_at_1 = get(kv, at(1, range_req("\0", "\0"))).await;
    assert!(all_at_1.kvs.is_empty(), "revision 1 is the empty store");
}

async fn sorting(kv: &mut Kv) {
    // r/a(mm, c6 m9 v2), r/b(yy, c7 m7 v1), r/c(aa, c8 m8 v1), r/d(kk, c10 m10 v1)
    let sorted = async |kv: &mut Kv, target: SortTarget, order: SortOrder, limit: i64| {
        let req = RangeRequest {
            sort_target: target as i32,
            sort_order: order as i32,
            limit,
            ..prefix_req("r/")
        };
        get(kv, req).await
    };
    use SortOrder::{Ascend, Descend};
    use SortTarget::{Create, Key, Mod, Value, Version};
    let cases: [(SortTarget, SortOrder, [&str; 4]); 9] = [
        (Key, Ascend, ["r/a", "r/b", "r/c", "r/d"]),
        (Key, Descend, ["r/d", "r/c", "r/b", "r/a"]),
        (Value, Ascend, ["r/c", "r/d", "r/a", "r/b"]),
        (Value, Descend, ["r/b", "r/a", "r/d", "r/c"]),
        (Create, Ascend, ["r/a", "r/b", "r/c", "r/d"]),
        (Create, Descend, ["r/d", "r/c", "r/b", "r/a"]),
        (Mod, Ascend, ["r/b", "r/c", "r/a", "r/d"]),
        (Mod, Descend, ["r/d", "r/a", "r/c", "r/b"]),
        // Only r/a has version 2; the order among the version-1 keys is not specified.
        (Version, Descend, ["r/a", "*", "*", "*"]),
    ];
    for (target, order, want) in cases {
        let got = keys(&sorted(kv, target, order, 0).await);
        let matches = got.len() == 4 && want.iter().zip(&got).all(|(w, g)| *w == "*" || w == g);
        assert!(
            matches,
            "sort by {target:?} {order:?}: got {got:?}, want {want:?}"
        );
    }
    let version_asc = sorted(kv, Version, Ascend, 0).await;
    assert_eq!(keys(&version_asc).last().map(String::as_str), Some("r/a"));

    let none_order = sorted(kv, Value, SortOrder::None, 0).await;
    assert_eq!(
        keys(&none_order),
        ["r/c", "r/d", "r/a", "r/b"],
        "a sort target without an order sorts ascending (etcd)"
    );
    let top_two = sorted(kv, Mod, Descend, 2).await;
    assert_eq!(keys(&top_two), ["r/d", "r/a"], "sort happens before limit");
    assert_eq!((top_two.more, top_two.count), (true, 4));
    let key_desc = sorted(kv, Key, Descend, 3).await;
    assert_eq!(keys(&key_desc), ["r/d", "r/c", "r/b"]);
    assert!(key_desc.more);
}

async fn filters_and_serializable(kv: &mut Kv) {
    let keys_only = get(
        kv,
        RangeRequest {
            keys_only: true,
            ..prefix_req("r/")
        },
    )
    .await;
    assert_eq!(keys(&keys_only), ["r/a", "r/b", "r/c", "r/d"]);
    assert!(
        keys_only.kvs.iter().all(|kv| kv.value.is_empty()),
        "keys_only drops values"
    );
    assert_eq!(
        keys_only.kvs[0].mod_revision, 9,
        "keys_only keeps revisions"
    );
    let count_only = get(
        kv,
        RangeRequest {
            count_only: true,
            ..prefix_req("r/")
        },
    )
    .await;
    assert!(count_only.kvs.is_empty());
    assert_eq!(count_only.count, 4);

    let filtered = async |kv: &mut Kv, f: fn(&mut RangeRequest)| {
        let mut req = prefix_req("r/");
        f(&mut req);
        keys(&get(kv, req).await)
    };
    assert_eq!(
        filtered(kv, |r| r.min_mod_revision = 8).await,
        ["r/a", "r/c", "r/d"]
    );
    assert_eq!(
        filtered(kv, |r| r.max_mod_revision = 8).await,
        ["r/b", "r/c"]
    );
    assert_eq!(
        filtered(kv, |r| r.min_create_revision = 7).await,
        ["r/b", "r/c", "r/d"]
    );
    assert_eq!(
        filtered(kv, |r| r.max_create_revision = 7).await,
        ["r/a", "r/b"]
    );
    assert_eq!(
        filtered(kv, |r| {
            r.min_mod_revision = 8;
            r.max_create_revision = 8;
        })
        .await,
        ["r/a", "r/c"]
    );
    let limited = get(
        kv,
        RangeRequest {
            min_mod_revision: 8,
            limit: 1,
            ..prefix_req("r/")
        },
    )
    .await;
    assert_eq!(keys(&limited), ["r/a"]);
    assert!(limited.more, "filters apply before limit");

    // The linearizable reads above made this member apply everything, so a serializable read
    // served from its own store must see the same state.
    let linear = get(kv, range_req("\0", "\0")).await;
    let local = get(
        kv,
        RangeRequest {
            serializable: true,
            ..range_req("\0", "\0")
        },
    )
    .await;
    assert_eq!(pairs(&local), pairs(&linear));
    assert_eq!(rev(&local), rev(&linear));
}

async fn deletes(kv: &mut Kv) {
    let one = ok(
        "delete r/b",
        kv.delete_range(DeleteRangeRequest {
            prev_kv: true,
            ..delete_req("r/b", "")
        })
        .await,
    );
    assert_eq!((one.deleted, rev(&one)), (1, 12));
    assert_eq!(one.prev_kvs.len(), 1);
    assert_eq!(shape(&one.prev_kvs[0]), row("r/b", "yy", 7, 7, 1));

    let none = ok(
        "delete missing",
        kv.delete_range(delete_req("r/zz", "")).await,
    );
    assert_eq!(none.deleted, 0);
    assert_eq!(rev(&none), 12, "deleting nothing writes no revision (etcd)");

    let range = ok(
        "delete [r/c, r/e)",
        kv.delete_range(delete_req("r/c", "r/e")).await,
    );
    assert_eq!((range.deleted, rev(&range)), (2, 13));
    assert!(range.prev_kvs.is_empty(), "no prev_kvs unless asked");
    assert_eq!(keys(&get(kv, prefix_req("r/")).await), ["r/a"]);

    let past = get(
        kv,
        RangeRequest {
            revision: 11,
            ..prefix_req("r/")
        },
    )
    .await;
    assert_eq!(
        keys(&past),
        ["r/a", "r/b", "r/c", "r/d"],
        "history survives deletes"
    );

    let again = put(kv, "r/b", "again").await;
    assert_eq!(rev(&again), 14);
    let got = get(kv, range_req("r/b", "")).await;
    assert_eq!(
        shape(kv_of(&got)),
        row("r/b", "again", 14, 14, 1),
        "a re-created key starts a new generation"
    );
}

async fn txn(kv: &mut Kv, req: TxnRequest) -> TxnResponse {
    ok("txn", kv.txn(req).await)
}

fn when(compares: Vec<keel_api::etcdserverpb::Compare>) -> TxnRequest {
    TxnRequest {
        compare: compares,
        success: vec![],
        failure: vec![],
    }
}

/// State here: foo(baz, c2 m5 v3, lease 0), revision 14.
async fn txn_compares(kv: &mut Kv) {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use TargetUnion::{CreateRevision, Lease, ModRevision, Value, Version};
    let v = |s: &str| Value(s.as_bytes().to_vec());
    let cases = [
        (Version(3), Equal, true),
        (Version(3), Greater, false),
        (Version(2), Greater, true),
        (Version(4), Less, true),
        (Version(3), Less, false),
        (Version(3), NotEqual, false),
        (Version(1), NotEqual, true),
        (CreateRevision(2), Equal, true),
        (CreateRevision(1), Greater, true),
        (CreateRevision(2), Less, false),
        (CreateRevision(9), NotEqual, true),
        (ModRevision(5), Equal, true),
        (ModRevision(5), Greater, false),
        (ModRevision(6), Less, true),
        (ModRevision(5), NotEqual, false),
        (v("baz"), Equal, true),
        (v("bar"), Greater, true),
        (v("bbb"), Less, true),
        (v("baz"), NotEqual, false),
        (v("ba"), Equal, false),
        (Lease(0), Equal, true),
        (Lease(0), Greater, false),
        (Lease(1), Less, true),
        (Lease(0), NotEqual, false),
    ];
    let before = rev(&get(kv, range_req("foo", "")).await);
    for (target, result, want) in cases {
        let what = format!("{target:?} {result:?}");
        let resp = txn(kv, when(vec![compare("foo", result, target)])).await;
        assert_eq!(resp.succeeded, want, "compare foo {what}");
        assert_eq!(
            rev(&resp),
            before,
            "a txn without writes writes no revision ({what})"
        );
    }

    tracing::info!("compares on a missing key and over a range");
    let missing = [
        (Version(0), Equal, true),
        (CreateRevision(0), Equal, true),
        (ModRevision(0), Equal, true),
        (Value(vec![]), Equal, false), // etcd: a value compare on no key fails
        (Value(vec![]), NotEqual, false),
    ];
    for (target, result, want) in missing {
        let resp = txn(kv, when(vec![compare("absent", result, target.clone())])).await;
        assert_eq!(resp.succeeded, want, "compare absent {target:?} {result:?}");
    }
    // Over [r/a, r/c): r/a(v2 m9), r/b(v1 m14).
    let over = |result, target| keel_api::etcdserverpb::Compare {
        range_end: b"r/c".to_vec(),
        ..compare("r/a", result, target)
    };
    for (cmp, want) in [
        (over(Greater, Version(0)), true),
        (over(Equal, Version(1)), false),
        (over(Less, ModRevision(15)), true),
        (over(Greater, ModRevision(9)), false),
        (over(NotEqual, v("zz")), true),
    ] {
        let what = format!("{cmp:?}");
        assert_eq!(txn(kv, when(vec![cmp])).await.succeeded, want, "{what}");
    }
    let both = txn(
        kv,
        when(vec![
            compare("foo", Equal, Version(3)),
            compare("r/b", Equal, v("nope")),
        ]),
    )
    .await;
    assert!(!both.succeeded, "every compare must hold");
    assert_eq!(rev(&both), before);
}

/// State here: revision 14.
async fn txn_branches(kv: &mut Kv) {
    use CompareResult::Equal;
    use TargetUnion::{CreateRevision, Version};
    let cas = |key: &str| TxnRequest {
        compare: vec![compare(key, Equal, CreateRevision(0))],
        success: vec![op_put(key, "created"), op_range(key, "")],
        failure: vec![op_range(key, "")],
    };
    let created = txn(kv, cas("t/lock")).await;
    assert!(created.succeeded);
    assert_eq!(rev(&created), 15);
    let Some(response_op::Response::ResponseRange(seen)) = &created.responses[1].response else {
        panic!("second response is a range: {created:?}");
    };
    assert_eq!(
        shape(kv_of(seen)),
        row("t/lock", "created", 15, 15, 1),
        "a range in a txn sees the txn's own earlier writes"
    );
    let lost = txn(kv, cas("t/lock")).await;
    assert!(!lost.succeeded, "create-if-absent fails the second time");
    assert_eq!(rev(&lost), 15, "the failure branch only read");
    assert!(matches!(
        lost.responses[..],
        [keel_api::etcdserverpb::ResponseOp {
            response: Some(response_op::Response::ResponseRange(_))
        }]
    ));

    tracing::info!("several writes, one revision");
    let multi = txn(
        kv,
        TxnRequest {
            compare: vec![],
            success: vec![
                op_put("t/1", "a"),
                op_put("t/2", "b"),
                op_delete("t/lock", ""),
                op_put("t/3", "c"),
            ],
            failure: vec![],
        },
    )
    .await;
    assert!(multi.succeeded, "no compares means success");
    assert_eq!(rev(&multi), 16, "one revision for the whole txn");
    let written = get(kv, prefix_req("t/")).await;
    assert_eq!(keys(&written), ["t/1", "t/2", "t/3"]);
    assert!(written.kvs.iter().all(|kv| kv.mod_revision == 16));
    let Some(response_op::Response::ResponseDeleteRange(d)) = &multi.responses[2].response else {
        panic!("third response is a delete: {multi:?}");
    };
    assert_eq!(d.deleted, 1);

    tracing::info!("failure branch writes");
    let failed = txn(
        kv,
        TxnRequest {
            compare: vec![compare("t/1", Equal, Version(9))],
            success: vec![op_put("t/never", "x")],
            failure: vec![op_put("t/else", "y")],
        },
    )
    .await;
    assert!(!failed.succeeded);
    assert_eq!(rev(&failed), 17);
    assert_eq!(
        keys(&get(kv, prefix_req("t/")).await),
        ["t/1", "t/2", "t/3", "t/else"]
    );

    tracing::info!("nested txn");
    let inner = TxnRequest {
        // Compares in nested txns see the state before the outer txn (etcd), so t/n1 is absent.
        compare: vec![compare("t/n1", Equal, Version(0))],
        success: vec![op_put("t/n2", "inner-success")],
        failure: vec![op_put("t/n3", "inner-failure")],
    };
    let nested = txn(
        kv,
        TxnRequest {
            compare: vec![compare("t/1", Equal, Version(1))],
            success: vec![op_put("t/n1", "outer"), op_txn(inner)],
            failure: vec![],
        },
    )
    .await;
    assert!(nested.succeeded);
    assert_eq!(
        rev(&nested),
        18,
        "a nested txn shares the outer txn's revision"
    );
    let Some(response_op::Response::ResponseTxn(inner_resp)) = &nested.responses[1].response else {
        panic!("second response is a txn: {nested:?}");
    };
    assert!(inner_resp.succeeded);
    assert_eq!(inner_resp.responses.len(), 1);
    let n = get(kv, range_req("t/n", "t/o")).await;
    assert_eq!(keys(&n), ["t/n1", "t/n2"]);
    assert!(n.kvs.iter().all(|kv| kv.mod_revision == 18));
}

/// State here: revision 18.
async fn compaction(kv: &mut Kv) {
    let compacted = ok(
        "compact 9",
        kv.compact(CompactionRequest {
            revision: 9,
            physical: false,
        })
        .await,
    );
    assert_eq!(rev(&compacted), 18, "compaction writes no revision");
    let at = |revision: i64| RangeRequest {
        revision,
        ..range_req("r/a", "")
    };
    assert_etcd_error(
        "range below the compacted revision",
        kv.range(at(8)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let at_compacted = get(kv, at(9)).await;
    assert_eq!(
        values(&at_compacted),
        ["mm"],
        "the compacted revision itself is readable"
    );
    assert_etcd_error(
        "range above the current revision",
        kv.range(at(19)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_etcd_error(
        "compact at the compacted revision again",
        kv.compact(CompactionRequest {
            revision: 9,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_etcd_error(
        "compact above the current revision",
        kv.compact(CompactionRequest {
            revision: 100,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    ok(
        "physical compaction",
        kv.compact(CompactionRequest {
            revision: 14,
            physical: true,
        })
        .await,
    );
    assert_etcd_error(
        "range below the new compacted revision",
        kv.range(at(13)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let latest = get(kv, range_req("\0", "\0")).await;
    assert_eq!(
        keys(&latest),
        ["foo", "fresh", "r/a", "r/b", "s", "t/1", "t/2", "t/3", "t/else", "t/n1", "t/n2"],
        "compaction keeps every live key"
    );
    assert_eq!(rev(&latest), 18);
    let still = get(kv, at(14)).await;
    assert_eq!(
        values(&still),
        ["mm"],
        "a key unchanged since before compaction survives it"
    );
}

async fn delete_all(kv: &mut Kv) {
    let all = ok(
        "delete everything",
        kv.delete_range(delete_req("\0", "\0")).await,
    );
    assert_eq!((all.deleted, rev(&all)), (11, 19));
    let empty = get(kv, range_req("\0", "\0")).await;
    assert!(empty.kvs.is_empty());
    assert_eq!((empty.count, rev(&empty)), (0, 19));
}

/// Every member answers with the same cluster id, its own member id, the current revision and
/// its Raft term.
async fn check_headers(cluster: &TestCluster) {
    tracing::info!("--- phase 11: response headers");
    let mut cluster_ids = Vec::new();
    for i in cluster.running() {
        let mut kv = cluster.kv(i);
        let written = put(&mut kv, &format!("h/{i}"), "x").await;
        let read = get(&mut kv, range_req("h/", "h0")).await;
        let term = cluster.node(i).server.raft.status().term;
        for (what, h) in [("put", written.header), ("range", read.header)] {
            let h = h.unwrap_or_else(|| panic!("m{i} {what}: no header"));
            assert_eq!(
                h.member_id,
                cluster.member_id(i),
                "m{i} {what}: answering member"
            );
            assert_eq!(h.raft_term, term, "m{i} {what}: raft term");
            assert_ne!(h.cluster_id, 0, "m{i} {what}: cluster id");
            cluster_ids.push(h.cluster_id);
        }
        assert_eq!(
            rev(&read),
            rev(&written),
            "m{i}: read sees its own write's revision"
        );
        assert_eq!(read.kvs.len(), i + 1 - cluster.running()[0]);
    }
    cluster_ids.dedup();
    assert_eq!(
        cluster_ids.len(),
        1,
        "one cluster id on every member: {cluster_ids:?}"
    );
}

/// After the workload every member holds the same data at the same revision.
async fn check_members_agree(cluster: &TestCluster) {
    tracing::info!("--- phase 12: members agree");
    let mut seen = Vec::new();
    for i in cluster.running() {
        let resp = get(&mut cluster.kv(i), range_req("\0", "\0")).await;
        seen.push((rev(&resp), pairs(&resp)));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "members differ: {seen:?}"
    );
}
