//! Put, get (ranges, prefixes, history, limits, sorting, projections) and delete, seen
//! through both etcdctl and etcd-client.

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
use keel_compat::etcdctl::{ctl, Output};
use keel_compat::runner::{decode_json_bytes, normalize_json};
use keel_compat::{current_revision, for_each_server, keys, Cluster, Kv, Transcript};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// etcdctl's JSON for `args`, with ids/terms replaced and revisions relative to `base`.
async fn ctl_json(cluster: &Cluster, args: &[&str], base: i64) -> serde_json::Value {
    let mut json = ctl(cluster, args).await.json();
    normalize_json(&mut json, base);
    decode_json_bytes(&mut json);
    json
}

/// Keys from etcdctl's simple `get` output (key line, value line, key line, ...).
fn simple_keys(out: &Output) -> Vec<String> {
    out.ok().lines().step_by(2).map(str::to_string).collect()
}

/// Phase 1: put and get one key.
async fn put_get_history_and_ranges_phase_1(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 1: put and get one key");
    assert_eq!(ctl(cluster, &["put", "foo", "bar"]).await.ok(), "OK\n");
    let r = c.get("foo", None).await.expect("get foo");
    let kvs = Kv::all(r.kvs(), base);
    assert_eq!(
        kvs,
        vec![Kv {
            key: "foo".into(),
            value: "bar".into(),
            create: 1,
            modified: 1,
            version: 1,
            lease: 0
        }]
    );
    assert_eq!((r.count(), r.more()), (1, false));
    assert_eq!(r.header().unwrap().revision() - base, 1);
    t.record("get foo", (&kvs, r.count(), r.more()));
    assert_eq!(ctl(cluster, &["get", "foo"]).await.ok(), "foo\nbar\n");
    assert_eq!(ctl(cluster, &["get", "nope"]).await.ok(), "");
    t.record(
        "get missing json",
        ctl_json(cluster, &["get", "nope", "-w", "json"], base).await,
    );
}

/// Phase 2: overwrite with prev-kv, read history.
async fn put_get_history_and_ranges_phase_2(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 2: overwrite with prev-kv, read history");
    let out = ctl(cluster, &["put", "--prev-kv", "foo", "baz"]).await;
    assert_eq!(out.ok(), "OK\nfoo\nbar\n");
    let put = c
        .put("foo", "qux", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put foo with prev kv");
    let prev = Kv::of(put.prev_key().expect("prev kv"), base);
    assert_eq!(
        (prev.value.as_str(), prev.version, prev.modified),
        ("baz", 2, 2)
    );
    assert_eq!(put.header().unwrap().revision() - base, 3);
    t.record("put prev kv", &prev);
    for (delta, want) in [(1, "bar"), (2, "baz"), (3, "qux")] {
        let rev = (base + delta).to_string();
        let out = ctl(cluster, &["get", "foo", "--rev", &rev]).await;
        assert_eq!(out.ok(), format!("foo\n{want}\n"));
        let r = c
            .get("foo", Some(GetOptions::new().with_revision(base + delta)))
            .await
            .expect("historical get");
        let kv = Kv::of(&r.kvs()[0], base);
        assert_eq!((kv.value.as_str(), kv.version), (want, delta));
        // The header carries the current revision, not the one asked for.
        assert_eq!(r.header().unwrap().revision() - base, 3);
        t.record("history", &kv);
    }
}

/// Phase 3: ranges, prefixes, from-key.
async fn put_get_history_and_ranges_phase_3(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 3: ranges, prefixes, from-key");
    for (k, v) in [
        ("r/a", "1"),
        ("r/b", "2"),
        ("r/c", "3"),
        ("r/d", "4"),
        ("r0", "x"),
        ("q", "y"),
    ] {
        assert_eq!(ctl(cluster, &["put", k, v]).await.ok(), "OK\n");
    }
    let out = ctl(cluster, &["get", "r/b", "r/d"]).await;
    assert_eq!(out.ok(), "r/b\n2\nr/c\n3\n");
    let out = ctl(cluster, &["get", "--prefix", "r/"]).await;
    assert_eq!(out.ok(), "r/a\n1\nr/b\n2\nr/c\n3\nr/d\n4\n");
    let out = ctl(cluster, &["get", "--from-key", "r/c"]).await;
    assert_eq!(out.ok(), "r/c\n3\nr/d\n4\nr0\nx\n");
    let out = ctl(cluster, &["get", "--prefix", "--keys-only", "r/"]).await;
    assert_eq!(out.ok(), "r/a\n\nr/b\n\nr/c\n\nr/d\n\n");
    let out = ctl(cluster, &["get", "--prefix", "--print-value-only", "r/"]).await;
    assert_eq!(out.ok(), "1\n2\n3\n4\n");
    let r = c
        .get("r/b", Some(GetOptions::new().with_range("r/d")))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["r/b", "r/c"]);
    let r = c
        .get("r/c", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["r/c", "r/d", "r0"]);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(
        keys(r.kvs()),
        ["foo", "q", "r/a", "r/b", "r/c", "r/d", "r0"]
    );
    t.record("all keys", Kv::all(r.kvs(), base));
    let r = c
        .get("r/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    t.record("keys only", Kv::all(r.kvs(), base));
    let r = c
        .get(
            "r/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 4);
}

/// Phase 4: limit, more, count.
async fn put_get_history_and_ranges_phase_4(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 4: limit, more, count");
    let json = ctl_json(
        cluster,
        &["get", "--prefix", "r/", "--limit", "2", "-w", "json"],
        base,
    )
    .await;
    assert_eq!(json["more"], serde_json::json!(true));
    assert_eq!(json["count"], serde_json::json!(4));
    assert_eq!(json["kvs"].as_array().map(Vec::len), Some(2));
    t.record("limit json", &json);
    let out = ctl(cluster, &["get", "--prefix", "r/", "--limit", "2"]).await;
    assert_eq!(out.ok(), "r/a\n1\nr/b\n2\n");
    let r = c
        .get("r/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(
        (keys(r.kvs()), r.count(), r.more()),
        (vec!["r/a".to_string(), "r/b".into()], 4, true)
    );
    let r = c
        .get("r/", Some(GetOptions::new().with_prefix().with_limit(4)))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count(), r.more()), (4, 4, false));
    let r = c
        .get(
            "r/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count(), r.more()), (0, 4, false));
    t.record("count only", (r.kvs().len(), r.count(), r.more()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_history_and_ranges() {
    for_each_server(
        "put_get_history_and_ranges",
        1,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let mut c = cluster.client().await;
            let base = current_revision(&mut c).await;
            put_get_history_and_ranges_phase_1(cluster, &mut c, base, &mut t).await;
            put_get_history_and_ranges_phase_2(cluster, &mut c, base, &mut t).await;
            put_get_history_and_ranges_phase_3(cluster, &mut c, base, &mut t).await;
            put_get_history_and_ranges_phase_4(cluster, &mut c, base, &mut t).await;

            t
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sort_orders() {
    for_each_server("get_sort_orders", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        // Final state: s/a create 1 mod 4 version 3 value "2"; s/c create 3 mod 3 version 1
        // value "3"; s/b create 5 mod 6 version 2 value "1": every target orders differently.
        for (k, v) in [
            ("s/a", "x"),
            ("s/a", "y"),
            ("s/c", "3"),
            ("s/a", "2"),
            ("s/b", "z"),
            ("s/b", "1"),
        ] {
            assert_eq!(ctl(cluster, &["put", k, v]).await.ok(), "OK\n");
        }
        let ascending = [
            ("KEY", SortTarget::Key, ["s/a", "s/b", "s/c"]),
            ("CREATE", SortTarget::Create, ["s/a", "s/c", "s/b"]),
            ("MODIFY", SortTarget::Mod, ["s/c", "s/a", "s/b"]),
            ("VERSION", SortTarget::Version, ["s/c", "s/b", "s/a"]),
            ("VALUE", SortTarget::Value, ["s/b", "s/a", "s/c"]),
        ];
        let mut c = cluster.client().await;
        for (name, target, asc) in ascending {
            let desc: Vec<&str> = asc.iter().rev().copied().collect();
            for (order, client_order, want) in [
                ("ASCEND", SortOrder::Ascend, asc.to_vec()),
                ("DESCEND", SortOrder::Descend, desc.clone()),
            ] {
                let sort = format!("--sort-by={name}");
                let ord = format!("--order={order}");
                let out = ctl(cluster, &["get", "--prefix", "s/", &sort, &ord]).await;
                assert_eq!(simple_keys(&out), want, "etcdctl sort {name} {order}");
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(target, client_order);
                let r = c.get("s/", Some(opts)).await.expect("sorted get");
                assert_eq!(keys(r.kvs()), want, "client sort {name} {order}");
                t.record(&format!("sort {name} {order}"), &want);
            }
            // A sort target without an order sorts ascending (etcdctl sends SortNone).
            let sort = format!("--sort-by={name}");
            let out = ctl(cluster, &["get", "--prefix", "s/", &sort]).await;
            assert_eq!(simple_keys(&out), asc, "etcdctl sort {name} without order");
            let opts = GetOptions::new()
                .with_prefix()
                .with_sort(target, SortOrder::None);
            let r = c.get("s/", Some(opts)).await.expect("sorted get");
            assert_eq!(
                keys(r.kvs()),
                asc,
                "client sort {name} with SortOrder::None"
            );
            t.record(&format!("sort {name} NONE"), keys(r.kvs()));
        }
        // Sorting applies before the limit: the first key by VALUE descending.
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Value, SortOrder::Descend)
            .with_limit(1);
        let r = c.get("s/", Some(opts)).await.unwrap();
        assert_eq!(
            (keys(r.kvs()), r.count(), r.more()),
            (vec!["s/c".to_string()], 3, true)
        );
        t.record("sort+limit", (keys(r.kvs()), r.count(), r.more()));
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_single_prefix_range_prev_kv() {
    for_each_server(
        "delete_single_prefix_range_prev_kv",
        1,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let mut c = cluster.client().await;
            let base = current_revision(&mut c).await;
            for (k, v) in [("d/a", "1"), ("d/b", "2"), ("d/c", "3"), ("e", "4")] {
                c.put(k, v, None).await.expect("put");
            }
            assert_eq!(current_revision(&mut c).await - base, 4);

            eprintln!("--- phase 1: single deletes through etcdctl");
            assert_eq!(ctl(cluster, &["del", "d/a"]).await.ok(), "1\n");
            assert_eq!(ctl(cluster, &["del", "d/a"]).await.ok(), "0\n");
            // Deleting nothing does not create a revision.
            assert_eq!(current_revision(&mut c).await - base, 5);
            assert_eq!(
                ctl(cluster, &["del", "--prev-kv", "d/b"]).await.ok(),
                "1\nd/b\n2\n"
            );
            let old = ctl(cluster, &["get", "d/a", "--rev", &(base + 4).to_string()]).await;
            assert_eq!(
                old.ok(),
                "d/a\n1\n",
                "a deleted key stays readable in history"
            );

            eprintln!("--- phase 2: prefix and range deletes through etcd-client");
            let d = c
                .delete(
                    "d/",
                    Some(DeleteOptions::new().with_prefix().with_prev_key()),
                )
                .await
                .expect("delete prefix");
            assert_eq!(d.deleted(), 1);
            let prev = Kv::all(d.prev_kvs(), base);
            assert_eq!(prev.len(), 1);
            assert_eq!((prev[0].key.as_str(), prev[0].value.as_str()), ("d/c", "3"));
            assert_eq!(d.header().unwrap().revision() - base, 7);
            t.record("prefix delete prev kvs", &prev);
            for k in ["x1", "x2", "x3"] {
                c.put(k, "v", None).await.unwrap();
            }
            let d = c
                .delete("x1", Some(DeleteOptions::new().with_range("x3")))
                .await
                .unwrap();
            assert_eq!(d.deleted(), 2);
            assert!(d.prev_kvs().is_empty(), "no prev kvs unless asked");
            let r = c
                .get("x", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(keys(r.kvs()), ["x3"]);
            t.record("range delete", (d.deleted(), keys(r.kvs())));

            eprintln!("--- phase 3: etcdctl prefix delete and a deleted key's re-creation");
            for k in ["p/1", "p/2", "p/3"] {
                c.put(k, "v", None).await.unwrap();
            }
            assert_eq!(ctl(cluster, &["del", "--prefix", "p/"]).await.ok(), "3\n");
            assert_eq!(ctl(cluster, &["del", "--prefix", "p/"]).await.ok(), "0\n");
            c.put("e", "again", None).await.unwrap();
            ctl(cluster, &["del", "e"]).await.ok();
            let put = c.put("e", "new", None).await.unwrap();
            let rev = put.header().unwrap().revision();
            let r = c.get("e", None).await.unwrap();
            let kv = Kv::of(&r.kvs()[0], base);
            // A re-created key starts again at version 1 with a fresh create revision.
            assert_eq!(
                (kv.version, kv.create, kv.modified),
                (1, rev - base, rev - base)
            );
            t.record("recreated", &kv);
            t.record(
                "final revision delta",
                current_revision(&mut c).await - base,
            );
            t
        },
    )
    .await;
}

/// Phase 1: compact through etcdctl.
async fn compaction_and_revision_errors_phase_1(cluster: &Cluster, base: i64, t: &mut Transcript) {
    eprintln!("--- phase 1: compact through etcdctl");
    let rev = |delta: i64| (base + delta).to_string();
    let out = ctl(cluster, &["compaction", &rev(3)]).await;
    assert_eq!(out.ok(), format!("compacted revision {}\n", rev(3)));
    let out = ctl(cluster, &["get", "c/k", "--rev", &rev(2)]).await;
    assert_eq!(out.error_line(), format!("Error: {COMPACTED}"));
    t.record("etcdctl get below compaction", out.error_line());
}

/// Phase 2: reads and compactions around the compacted revision.
async fn compaction_and_revision_errors_phase_2(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 2: reads and compactions around the compacted revision");
    let rev = |delta: i64| (base + delta).to_string();
    let below = c
        .get("c/k", Some(GetOptions::new().with_revision(base + 2)))
        .await;
    t.record(
        "get below",
        keel_compat::expect_grpc_error(below, "OutOfRange", COMPACTED),
    );
    // Reading exactly at the compacted revision is still allowed.
    let at = c
        .get("c/k", Some(GetOptions::new().with_revision(base + 3)))
        .await
        .unwrap();
    assert_eq!(Kv::of(&at.kvs()[0], base).value, "v3");
    let above = c
        .get("c/k", Some(GetOptions::new().with_revision(base + 4)))
        .await
        .unwrap();
    assert_eq!(Kv::of(&above.kvs()[0], base).value, "v4");
    t.record(
        "get at/above",
        (Kv::all(at.kvs(), base), Kv::all(above.kvs(), base)),
    );
    let again = c.compact(base + 3, None).await;
    t.record(
        "compact same",
        keel_compat::expect_grpc_error(again, "OutOfRange", COMPACTED),
    );
    let lower = c.compact(base + 2, None).await;
    t.record(
        "compact lower",
        keel_compat::expect_grpc_error(lower, "OutOfRange", COMPACTED),
    );
    let out = ctl(cluster, &["compaction", &rev(3)]).await;
    assert_eq!(out.error_line(), format!("Error: {COMPACTED}"));
    // A ranged read below the compaction fails the same way.
    let ranged = c
        .get(
            "c/",
            Some(GetOptions::new().with_prefix().with_revision(base + 1)),
        )
        .await;
    keel_compat::expect_grpc_error(ranged, "OutOfRange", COMPACTED);
}

/// Phase 3: future revisions.
async fn compaction_and_revision_errors_phase_3(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 3: future revisions");
    let rev = |delta: i64| (base + delta).to_string();
    let future = c
        .get("c/k", Some(GetOptions::new().with_revision(base + 100)))
        .await;
    t.record(
        "get future",
        keel_compat::expect_grpc_error(future, "OutOfRange", FUTURE),
    );
    let next = c
        .get("c/k", Some(GetOptions::new().with_revision(base + 6)))
        .await;
    keel_compat::expect_grpc_error(next, "OutOfRange", FUTURE);
    let out = ctl(cluster, &["get", "c/k", "--rev", &rev(100)]).await;
    assert_eq!(out.error_line(), format!("Error: {FUTURE}"));
    let compact_future = c.compact(base + 100, None).await;
    t.record(
        "compact future",
        keel_compat::expect_grpc_error(compact_future, "OutOfRange", FUTURE),
    );
}

/// Phase 4: physical compaction up to the current revision.
async fn compaction_and_revision_errors_phase_4(
    cluster: &Cluster,
    c: &mut Client,
    base: i64,
    t: &mut Transcript,
) {
    eprintln!("--- phase 4: physical compaction up to the current revision");
    let rev = |delta: i64| (base + delta).to_string();
    let out = ctl(cluster, &["compaction", "--physical", &rev(5)]).await;
    assert_eq!(out.ok(), format!("compacted revision {}\n", rev(5)));
    let r = c.get("c/k", None).await.unwrap();
    let kv = Kv::of(&r.kvs()[0], base);
    // Compaction keeps the latest version with its metadata and creates no revision.
    assert_eq!(
        (kv.value.as_str(), kv.version, kv.create, kv.modified),
        ("v5", 5, 1, 5)
    );
    assert_eq!(r.header().unwrap().revision() - base, 5);
    t.record("after compaction", &kv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_revision_errors() {
    for_each_server(
        "compaction_and_revision_errors",
        1,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let mut c = cluster.client().await;
            let base = current_revision(&mut c).await;
            for i in 1..=5 {
                c.put("c/k", format!("v{i}"), None).await.expect("put");
            }
            compaction_and_revision_errors_phase_1(cluster, base, &mut t).await;
            compaction_and_revision_errors_phase_2(cluster, &mut c, base, &mut t).await;
            compaction_and_revision_errors_phase_3(cluster, &mut c, base, &mut t).await;
            compaction_and_revision_errors_phase_4(cluster, &mut c, base, &mut t).await;
            t
        },
    )
    .await;
}
