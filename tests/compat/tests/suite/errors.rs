//! Request validation errors: the exact gRPC code and message clients match on, and the
//! limits just below each one passing.

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use keel_compat::etcdctl::ctl;
use keel_compat::{
    current_revision, expect_grpc_error, for_each_server, grpc_error, Cluster, Transcript,
};

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const MIB: usize = 1024 * 1024;
const MAX_TXN_OPS: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_is_rejected() {
    for_each_server("empty_key_is_rejected", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;
        let put = c.put("", "v", None).await;
        t.record("put", expect_grpc_error(put, "InvalidArgument", EMPTY_KEY));
        let get = c.get("", None).await;
        t.record("get", expect_grpc_error(get, "InvalidArgument", EMPTY_KEY));
        let del = c.delete("", None).await;
        t.record(
            "delete",
            expect_grpc_error(del, "InvalidArgument", EMPTY_KEY),
        );
        let txn = Txn::new().and_then([TxnOp::put("", "v", None)]);
        t.record(
            "txn put",
            expect_grpc_error(c.txn(txn).await, "InvalidArgument", EMPTY_KEY),
        );
        let out = ctl(cluster, &["put", "", "v"]).await;
        assert_eq!(out.error_line(), format!("Error: {EMPTY_KEY}"));
        t.record("etcdctl put", out.error_line());
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limit() {
    for_each_server("request_size_limit", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;
        let one_mib = vec![b'a'; MIB];
        let put = c
            .put("big/1mib", one_mib.clone(), None)
            .await
            .expect("a 1 MiB value passes");
        assert_eq!(put.header().unwrap().revision() - base, 1);
        let r = c.get("big/1mib", None).await.unwrap();
        assert_eq!(r.kvs()[0].value().len(), MIB);
        t.record("1 MiB put", r.kvs()[0].value().len());
        // Just over the 1.5 MiB default --max-request-bytes, well under gRPC's own limit.
        let too_big = vec![b'b'; MIB + MIB / 2 + 1024];
        let put = c.put("big/over", too_big.clone(), None).await;
        t.record(
            "1.5 MiB+ put",
            expect_grpc_error(put, "InvalidArgument", TOO_LARGE),
        );
        let txn = Txn::new().and_then([TxnOp::put("big/txn", too_big, None)]);
        t.record(
            "1.5 MiB+ txn",
            expect_grpc_error(c.txn(txn).await, "InvalidArgument", TOO_LARGE),
        );
        // Two 768 KiB puts in one txn exceed the limit together.
        let half = vec![b'c'; 3 * MIB / 4];
        let txn = Txn::new().and_then([
            TxnOp::put("big/x", half.clone(), None),
            TxnOp::put("big/y", half, None),
        ]);
        t.record(
            "2x768 KiB txn",
            expect_grpc_error(c.txn(txn).await, "InvalidArgument", TOO_LARGE),
        );
        // Past max-request-bytes + 512 KiB (2 MiB) the gRPC layer itself refuses the message;
        // only the code is compared, its text is the gRPC library's own.
        let put = c.put("big/huge", vec![b'd'; 2 * MIB + 1024], None).await;
        let err = put.expect_err("a 2 MiB+ request fails");
        let (code, message) = grpc_error(&err);
        assert_eq!(code, "ResourceExhausted", "{message}");
        t.record("2 MiB+ put code", code);
        assert_eq!(
            current_revision(&mut c).await - base,
            1,
            "rejected writes leave no revision"
        );
        t
    })
    .await;
}

fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::put(format!("{prefix}{i:03}"), "v", None))
        .collect()
}

/// Phase 1: 128 operations pass, 129 fail (per branch and for compares).
async fn txn_operation_limits_phase_1(c: &mut Client, t: &mut Transcript) {
    eprintln!("--- phase 1: 128 operations pass, 129 fail (per branch and for compares)");
    let ok = c
        .txn(Txn::new().and_then(puts("ops/", MAX_TXN_OPS)))
        .await
        .expect("128 ops");
    assert_eq!(ok.op_responses().len(), MAX_TXN_OPS);
    let r = c
        .get(
            "ops/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), MAX_TXN_OPS as i64);
    let over = c
        .txn(Txn::new().and_then(puts("ops/", MAX_TXN_OPS + 1)))
        .await;
    t.record(
        "129 success ops",
        expect_grpc_error(over, "InvalidArgument", TOO_MANY_OPS),
    );
    let over = c
        .txn(Txn::new().or_else(puts("ops/", MAX_TXN_OPS + 1)))
        .await;
    t.record(
        "129 failure ops",
        expect_grpc_error(over, "InvalidArgument", TOO_MANY_OPS),
    );
    let compares: Vec<Compare> = (0..=MAX_TXN_OPS)
        .map(|i| Compare::version(format!("ops/{i:03}"), CompareOp::Greater, -1))
        .collect();
    let over = c.txn(Txn::new().when(compares)).await;
    t.record(
        "129 compares",
        expect_grpc_error(over, "InvalidArgument", TOO_MANY_OPS),
    );
    // The limit counts each branch on its own.
    let both = Txn::new()
        .when([Compare::version("ops/000", CompareOp::Equal, 1)])
        .and_then(puts("ops/", MAX_TXN_OPS))
        .or_else(puts("ops/", MAX_TXN_OPS));
    let resp = c.txn(both).await.expect("128 + 128 ops in two branches");
    assert!(resp.succeeded());
    t.record("128+128", resp.op_responses().len());
}

/// Phase 2: duplicate keys.
async fn txn_operation_limits_phase_2(c: &mut Client, base: i64, t: &mut Transcript) {
    eprintln!("--- phase 2: duplicate keys");
    let dup = Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]);
    t.record(
        "put twice",
        expect_grpc_error(c.txn(dup).await, "InvalidArgument", DUPLICATE_KEY),
    );
    let dup = Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::delete("dup", None)]);
    t.record(
        "put+delete",
        expect_grpc_error(c.txn(dup).await, "InvalidArgument", DUPLICATE_KEY),
    );
    let dup = Txn::new().and_then([
        TxnOp::put("dup/a", "1", None),
        TxnOp::delete("dup/", Some(DeleteOptions::new().with_prefix())),
    ]);
    t.record(
        "put+delete range",
        expect_grpc_error(c.txn(dup).await, "InvalidArgument", DUPLICATE_KEY),
    );
    // The same key in different branches, or deleted twice, or read and written, is fine.
    let ok = Txn::new()
        .and_then([TxnOp::put("dup", "s", None), TxnOp::get("dup", None)])
        .or_else([TxnOp::put("dup", "f", None)]);
    assert!(c
        .txn(ok)
        .await
        .expect("same key in both branches")
        .succeeded());
    let ok = Txn::new().and_then([TxnOp::delete("dup", None), TxnOp::delete("dup", None)]);
    let resp = c
        .txn(ok)
        .await
        .expect("deleting a key twice in one txn is allowed");
    t.record("delete twice", resp.op_responses().len());
    // Duplicates inside a nested txn are rejected too.
    let nested = Txn::new().and_then([
        TxnOp::put("dup/n", "1", None),
        TxnOp::txn(Txn::new().and_then([TxnOp::put("dup/n", "2", None)])),
    ]);
    t.record(
        "nested dup",
        expect_grpc_error(c.txn(nested).await, "InvalidArgument", DUPLICATE_KEY),
    );
    // One revision per accepted write txn (four); rejected txns create none.
    let delta = current_revision(c).await - base;
    assert_eq!(delta, 4);
    t.record("revision delta", delta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_operation_limits() {
    for_each_server("txn_operation_limits", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;
        txn_operation_limits_phase_1(&mut c, &mut t).await;
        txn_operation_limits_phase_2(&mut c, base, &mut t).await;

        t
    })
    .await;
}
