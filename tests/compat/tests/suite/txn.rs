//! Transactions: etcdctl's interactive syntax on stdin, and every compare target and
//! operator through etcd-client, including a nested txn.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use keel_compat::etcdctl::{ctl, ctl_stdin};
use keel_compat::runner::{decode_json_bytes, normalize_json};
use keel_compat::{current_revision, for_each_server, keys, Cluster, Kv, Transcript};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_txn_both_branches() {
    for_each_server("etcdctl_txn_both_branches", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;
        assert_eq!(ctl(cluster, &["put", "t/k", "v1"]).await.ok(), "OK\n");
        let args = ["txn", "--interactive=false"];

        eprintln!("--- phase 1: compares hold, success branch runs");
        let input = "mod(\"t/k\") > \"0\"\nvalue(\"t/k\") = \"v1\"\n\nput t/k v2\nget t/k\n\nput t/other x\n\n";
        let out = ctl_stdin(cluster, &args, input).await;
        assert_eq!(out.ok(), "SUCCESS\n\nOK\n\nt/k\nv2\n");
        t.record("success", out.ok());

        eprintln!("--- phase 2: a compare fails, failure branch runs");
        let input = "value(\"t/k\") = \"nope\"\n\nput t/k v3\n\nput t/other y\nget t/other\ndel t/k\n\n";
        let out = ctl_stdin(cluster, &args, input).await;
        assert_eq!(out.ok(), "FAILURE\n\nOK\n\nt/other\ny\n\n1\n");
        t.record("failure", out.ok());
        assert_eq!(ctl(cluster, &["get", "t/k"]).await.ok(), "", "failure branch deleted t/k");
        assert_eq!(current_revision(&mut c).await - base, 3, "one revision per txn");

        eprintln!("--- phase 3: the other compare spellings, JSON output");
        let input = format!(
            "version(\"t/k\") = \"0\"\ncreate(\"t/other\") > \"0\"\nver(\"t/other\") = \"1\"\n\
             val(\"t/other\") < \"z\"\nc(\"t/other\") = \"{}\"\nm(\"t/other\") != \"{}\"\n\
             \nput --prev-kv t/other z\nget t/other\n\nput t/fail f\n\n",
            base + 3,
            base + 2
        );
        let mut json = ctl_stdin(cluster, &[&args[..], &["-w", "json"]].concat(), &input).await.json();
        normalize_json(&mut json, base);
        decode_json_bytes(&mut json);
        assert_eq!(json["succeeded"], serde_json::json!(true), "{json}");
        t.record("json", &json);
        let out = ctl(cluster, &["get", "t/other", "-w", "json"]).await;
        let mut json = out.json();
        normalize_json(&mut json, base);
        decode_json_bytes(&mut json);
        assert_eq!(json["kvs"][0]["version"], serde_json::json!(2));
        assert_eq!(json["kvs"][0]["value"], serde_json::json!("z"));
        t.record("t/other", &json);

        eprintln!("--- phase 4: compares only, no operations");
        let out = ctl_stdin(cluster, &args, "mod(\"t/other\") < \"1000000\"\n\n\n\n").await;
        assert_eq!(out.ok(), "SUCCESS\n");
        let out = ctl_stdin(cluster, &args, "mod(\"t/other\") = \"1\"\n\n\n\n").await;
        assert_eq!(out.ok(), "FAILURE\n");
        t
    })
    .await;
}

/// Runs a read-only txn with `compares` and returns whether it succeeded.
async fn holds(c: &mut etcd_client::Client, compares: Vec<Compare>) -> bool {
    let txn = Txn::new()
        .when(compares)
        .and_then([TxnOp::get("x/a", None)])
        .or_else([]);
    let resp = c.txn(txn).await.expect("txn");
    let ops = resp.op_responses();
    // Exactly the chosen branch's operations are answered.
    assert_eq!(ops.len(), usize::from(resp.succeeded()));
    resp.succeeded()
}

/// Each compare with whether it holds, after x/a=1 (base+1), x/a=2 (base+2), x/b=9 (base+3).
fn compare_cases(base: i64) -> Vec<(&'static str, Compare, bool)> {
    use CompareOp::{Equal as Eq, Greater as Gt, Less as Lt, NotEqual as Ne};
    let (b1, b2, b3) = (base + 1, base + 2, base + 3);
    let cases: Vec<(&str, Compare, bool)> = vec![
        ("version == 2", Compare::version("x/a", Eq, 2), true),
        ("version > 1", Compare::version("x/a", Gt, 1), true),
        ("version < 2", Compare::version("x/a", Lt, 2), false),
        ("version != 2", Compare::version("x/a", Ne, 2), false),
        (
            "create == b1",
            Compare::create_revision("x/a", Eq, b1),
            true,
        ),
        ("create < b2", Compare::create_revision("x/a", Lt, b2), true),
        (
            "create > b1",
            Compare::create_revision("x/a", Gt, b1),
            false,
        ),
        (
            "create != b1",
            Compare::create_revision("x/a", Ne, b1),
            false,
        ),
        ("mod == b2", Compare::mod_revision("x/a", Eq, b2), true),
        ("mod > b2", Compare::mod_revision("x/a", Gt, b2), false),
        ("mod < b3", Compare::mod_revision("x/a", Lt, b3), true),
        ("mod != b1", Compare::mod_revision("x/a", Ne, b1), true),
        ("value == 2", Compare::value("x/a", Eq, "2"), true),
        ("value > 1", Compare::value("x/a", Gt, "1"), true),
        ("value < 2", Compare::value("x/a", Lt, "2"), false),
        ("value != 2", Compare::value("x/a", Ne, "2"), false),
        (
            "value < 10 (bytewise)",
            Compare::value("x/a", Lt, "10"),
            false,
        ),
        ("lease == 0", Compare::lease("x/a", Eq, 0), true),
        ("lease != 0", Compare::lease("x/a", Ne, 0), false),
        ("lease > 0", Compare::lease("x/a", Gt, 0), false),
        ("lease < 1", Compare::lease("x/a", Lt, 1), true),
        (
            "missing version == 0",
            Compare::version("x/zz", Eq, 0),
            true,
        ),
        (
            "missing create == 0",
            Compare::create_revision("x/zz", Eq, 0),
            true,
        ),
        (
            "missing mod < 1",
            Compare::mod_revision("x/zz", Lt, 1),
            true,
        ),
        (
            "missing value == empty",
            Compare::value("x/zz", Eq, ""),
            false,
        ),
        ("missing value != x", Compare::value("x/zz", Ne, "x"), false),
        (
            "prefix version > 0",
            Compare::version("x/", Gt, 0).with_prefix(),
            true,
        ),
        (
            "prefix version == 1",
            Compare::version("x/", Eq, 1).with_prefix(),
            false,
        ),
        (
            "range mod < b3",
            Compare::mod_revision("x/a", Lt, b3).with_range("x/b"),
            true,
        ),
        (
            "range mod < b3 incl b",
            Compare::mod_revision("x/a", Lt, b3).with_range("x/c"),
            false,
        ),
    ];
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_txn_compares() {
    for_each_server("client_txn_compares", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;
        c.put("x/a", "1", None).await.unwrap(); // base+1: create
        c.put("x/a", "2", None).await.unwrap(); // base+2: version 2
        c.put("x/b", "9", None).await.unwrap(); // base+3
        let cases = compare_cases(base);
        for (name, cmp, want) in cases {
            let got = holds(&mut c, vec![cmp]).await;
            assert_eq!(got, want, "compare {name}");
            t.record(name, got);
        }
        let both = vec![
            Compare::version("x/a", CompareOp::Equal, 2),
            Compare::value("x/b", CompareOp::Equal, "9"),
        ];
        assert!(holds(&mut c, both).await, "all compares hold");
        let one_fails = vec![
            Compare::version("x/a", CompareOp::Equal, 2),
            Compare::value("x/b", CompareOp::Equal, "8"),
        ];
        assert!(!holds(&mut c, one_fails).await, "compares are ANDed");
        assert!(holds(&mut c, vec![]).await, "no compares: success");
        assert_eq!(
            current_revision(&mut c).await - base,
            3,
            "read-only txns create no revision"
        );
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_txn_writes_and_nested() {
    for_each_server(
        "client_txn_writes_and_nested",
        1,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let mut c = cluster.client().await;
            let base = current_revision(&mut c).await;
            c.put("x/a", "1", None).await.unwrap();
            c.put("x/b", "9", None).await.unwrap();

            eprintln!("--- phase 1: success branch with put, delete, get in one revision");
            let txn = Txn::new()
                .when([Compare::value("x/a", CompareOp::Equal, "1")])
                .and_then([
                    TxnOp::put("x/c", "c", None),
                    TxnOp::delete("x/b", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("x/", Some(GetOptions::new().with_prefix())),
                ])
                .or_else([TxnOp::put("x/fail", "f", None)]);
            let resp = c.txn(txn).await.expect("txn");
            assert!(resp.succeeded());
            assert_eq!(resp.header().unwrap().revision() - base, 3);
            let ops = resp.op_responses();
            assert_eq!(ops.len(), 3);
            match &ops[1] {
                TxnOpResponse::Delete(d) => {
                    assert_eq!(d.deleted(), 1);
                    t.record("txn delete prev", Kv::all(d.prev_kvs(), base));
                }
                other => panic!("expected a delete response, got {other:?}"),
            }
            match &ops[2] {
                // A later op in the txn sees the earlier ops' writes, all at one revision.
                TxnOpResponse::Get(g) => {
                    let kvs = Kv::all(g.kvs(), base);
                    assert_eq!(keys(g.kvs()), ["x/a", "x/c"]);
                    assert_eq!((kvs[1].create, kvs[1].modified), (3, 3));
                    t.record("txn get", &kvs);
                }
                other => panic!("expected a get response, got {other:?}"),
            }
            assert!(matches!(ops[0], TxnOpResponse::Put(_)));

            eprintln!("--- phase 2: failure branch");
            let txn = Txn::new()
                .when([Compare::value("x/a", CompareOp::Equal, "nope")])
                .and_then([TxnOp::put("x/z", "z", None)])
                .or_else([TxnOp::put("x/f", "f", None), TxnOp::get("x/f", None)]);
            let resp = c.txn(txn).await.expect("txn");
            assert!(!resp.succeeded());
            let ops = resp.op_responses();
            match &ops[1] {
                TxnOpResponse::Get(g) => t.record("failure get", Kv::all(g.kvs(), base)),
                other => panic!("expected a get response, got {other:?}"),
            }
            let r = c.get("x/z", None).await.unwrap();
            assert_eq!(r.count(), 0, "success branch must not run");
            assert_eq!(current_revision(&mut c).await - base, 4);

            eprintln!("--- phase 3: nested txn");
            let inner = Txn::new()
                .when([Compare::value("x/c", CompareOp::Equal, "c")])
                .and_then([TxnOp::put("x/n", "nested", None)])
                .or_else([TxnOp::put("x/n", "wrong", None)]);
            let outer = Txn::new()
                .when([Compare::version("x/f", CompareOp::Equal, 1)])
                .and_then([TxnOp::put("x/o", "outer", None), TxnOp::txn(inner)])
                .or_else([]);
            let resp = c.txn(outer).await.expect("nested txn");
            assert!(resp.succeeded());
            assert_eq!(resp.header().unwrap().revision() - base, 5);
            match &resp.op_responses()[1] {
                TxnOpResponse::Txn(inner) => {
                    assert!(inner.succeeded());
                    t.record("inner ops", inner.op_responses().len());
                }
                other => panic!("expected a txn response, got {other:?}"),
            }
            let r = c
                .get("x/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            let kvs = Kv::all(r.kvs(), base);
            t.record("final", &kvs);
            let n = kvs
                .iter()
                .find(|kv| kv.key == "x/n")
                .expect("nested put applied");
            assert_eq!((n.value.as_str(), n.modified), ("nested", 5));
            t
        },
    )
    .await;
}
