//! A three-member cluster as etcdctl and etcd-client see it: member list, endpoint status
//! on every member, endpoint health, writes on one member read on the others, and the plain
//! HTTP endpoints (`/health`, `/version`, `/metrics`) every member serves.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_compat::etcdctl::ctl;
use keel_compat::{for_each_server, Cluster, Transcript};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MEMBERS: usize = 3;

/// Replaces every member's URLs and hex id in `text` with stable placeholders.
fn anonymize(cluster: &Cluster, ids: &BTreeMap<String, u64>, text: &str) -> String {
    let mut out = text.to_string();
    for m in cluster.members() {
        out = out.replace(&m.client_url(), &format!("<client {}>", m.name));
        out = out.replace(&m.peer_url(), &format!("<peer {}>", m.name));
        out = out.replace(&format!("{:x}", ids[&m.name]), &format!("<id {}>", m.name));
    }
    out
}

/// Member name -> id, from etcd-client's MemberList, after checking names and URLs
/// match the flags each member was started with.
async fn member_ids(cluster: &Cluster, t: &mut Transcript) -> BTreeMap<String, u64> {
    let mut c = cluster.client().await;
    let resp = c.member_list().await.expect("member list");
    let mut ids = BTreeMap::new();
    for m in resp.members() {
        let flags = cluster
            .members()
            .iter()
            .find(|f| f.name == m.name())
            .unwrap_or_else(|| panic!("unknown member name {:?}", m.name()));
        assert_eq!(
            m.peer_urls(),
            [flags.peer_url()],
            "peer URLs of {}",
            m.name()
        );
        assert_eq!(
            m.client_urls(),
            [flags.client_url()],
            "client URLs of {}",
            m.name()
        );
        assert!(!m.is_learner());
        assert_ne!(m.id(), 0);
        ids.insert(m.name().to_string(), m.id());
    }
    assert_eq!(ids.len(), MEMBERS, "member names must be unique: {ids:?}");
    let mut distinct: Vec<u64> = ids.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), MEMBERS, "member ids must be unique");
    t.record("members", ids.keys().collect::<Vec<_>>());
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_matches_flags() {
    for_each_server(
        "member_list_matches_flags",
        MEMBERS,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let ids = member_ids(cluster, &mut t).await;

            eprintln!("--- phase 1: etcdctl member list (simple)");
            let out = ctl(cluster, &["member", "list"]).await;
            let mut lines: Vec<String> = anonymize(cluster, &ids, out.ok())
                .lines()
                .map(String::from)
                .collect();
            lines.sort();
            let want: Vec<String> = (0..MEMBERS)
                .map(|i| format!("<id m{i}>, started, m{i}, <peer m{i}>, <client m{i}>, false"))
                .collect();
            assert_eq!(lines, want, "raw output:\n{}", out.stdout);
            t.record("simple", &lines);

            eprintln!("--- phase 2: etcdctl member list -w table");
            let out = ctl(cluster, &["member", "list", "-w", "table"]).await;
            let text = anonymize(cluster, &ids, out.ok());
            let mut rows: Vec<Vec<String>> = text
                .lines()
                .filter(|l| l.starts_with('|'))
                .map(|l| {
                    l.trim_matches('|')
                        .split('|')
                        .map(|c| c.trim().to_string())
                        .collect()
                })
                .collect();
            assert!(
                text.lines().next().is_some_and(|l| l.starts_with("+-")),
                "{text}"
            );
            let header = rows.remove(0);
            assert_eq!(
                header,
                [
                    "ID",
                    "STATUS",
                    "NAME",
                    "PEER ADDRS",
                    "CLIENT ADDRS",
                    "IS LEARNER"
                ]
            );
            rows.sort();
            for (i, row) in rows.iter().enumerate() {
                let name = format!("m{i}");
                assert_eq!(
                    row,
                    &[
                        format!("<id {name}>"),
                        "started".into(),
                        name.clone(),
                        format!("<peer {name}>"),
                        format!("<client {name}>"),
                        "false".into()
                    ]
                );
            }
            t.record("table", (&header, &rows));

            eprintln!("--- phase 3: etcdctl member list -w json");
            let json = ctl(cluster, &["member", "list", "-w", "json"]).await.json();
            let members = json["members"].as_array().expect("members array");
            assert_eq!(members.len(), MEMBERS);
            for m in members {
                let name = m["name"].as_str().expect("name");
                assert_eq!(m["ID"].as_u64(), Some(ids[name]), "{m}");
                assert_eq!(
                    m["clientURLs"][0].as_str(),
                    Some(
                        cluster
                            .members()
                            .iter()
                            .find(|f| f.name == name)
                            .unwrap()
                            .client_url()
                            .as_str()
                    )
                );
            }
            t
        },
    )
    .await;
}

/// Phase 4: endpoint health, with and without --cluster; every member healthy.
async fn endpoint_health(cluster: &Cluster, ids: &BTreeMap<String, u64>, t: &mut Transcript) {
    eprintln!("--- phase 4: endpoint health, with and without --cluster");
    for args in [
        &["endpoint", "health", "--cluster"][..],
        &["endpoint", "health"][..],
    ] {
        let out = ctl(cluster, args).await;
        assert_eq!(out.code, 0, "{out:?}");
        let text = anonymize(cluster, ids, &format!("{}{}", out.stdout, out.stderr));
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| l.split(": took = ").next().unwrap_or(l).to_string())
            .collect();
        lines.sort();
        let want: Vec<String> = (0..MEMBERS)
            .map(|i| format!("<client m{i}> is healthy: successfully committed proposal"))
            .collect();
        assert_eq!(lines, want, "raw: {out:?}");
        t.record(&args.join(" "), &lines);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_and_health() {
    for_each_server(
        "endpoint_status_and_health",
        MEMBERS,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let ids = member_ids(cluster, &mut t).await;

            eprintln!("--- phase 1: endpoint status -w json on every member");
            let json = ctl(cluster, &["endpoint", "status", "-w", "json"])
                .await
                .json();
            let statuses = json.as_array().expect("status array");
            assert_eq!(statuses.len(), MEMBERS);
            let mut leaders = Vec::new();
            let mut terms = Vec::new();
            let mut clusters = Vec::new();
            for s in statuses {
                let endpoint = s["Endpoint"].as_str().expect("Endpoint");
                let member = cluster
                    .members()
                    .iter()
                    .find(|m| m.client_url() == endpoint)
                    .expect("endpoint is a member");
                let st = &s["Status"];
                assert_eq!(
                    st["header"]["member_id"].as_u64(),
                    Some(ids[&member.name]),
                    "{s}"
                );
                leaders.push(st["leader"].as_u64().expect("leader"));
                terms.push(st["raftTerm"].as_u64().expect("raftTerm"));
                clusters.push(st["header"]["cluster_id"].as_u64().expect("cluster_id"));
                assert_eq!(st["header"]["raft_term"].as_u64(), st["raftTerm"].as_u64());
            }
            assert!(
                leaders.iter().all(|&l| l == leaders[0]),
                "one leader: {leaders:?}"
            );
            let self_leaders = statuses
                .iter()
                .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
                .count();
            assert_eq!(self_leaders, 1, "exactly one member reports itself leader");
            assert!(
                ids.values().any(|&id| id == leaders[0]),
                "leader is a member id"
            );
            assert!(
                terms.iter().all(|&x| x == terms[0] && x > 0),
                "same term: {terms:?}"
            );
            assert!(
                clusters.iter().all(|&x| x == clusters[0]),
                "same cluster: {clusters:?}"
            );
            let mut fields: Vec<&String> =
                statuses[0]["Status"].as_object().unwrap().keys().collect();
            fields.sort();
            t.record("status fields", &fields);

            eprintln!("--- phase 2: endpoint status (simple) marks exactly one leader");
            let out = ctl(cluster, &["endpoint", "status"]).await;
            let rows: Vec<Vec<String>> = out
                .ok()
                .lines()
                .map(|l| l.split(", ").map(str::to_string).collect())
                .collect();
            assert_eq!(rows.len(), MEMBERS, "{}", out.stdout);
            let leader_rows = rows.iter().filter(|r| r[4] == "true").count();
            assert_eq!(leader_rows, 1, "{}", out.stdout);
            for r in &rows {
                // endpoint, ID, version, db size, is leader, is learner, term, index, applied, errors
                assert_eq!(r.len(), 10, "{r:?}");
                assert_eq!(r[5], "false");
                assert_eq!(r[6], terms[0].to_string());
            }
            t.record("status leaders", leader_rows);

            eprintln!("--- phase 3: Status through etcd-client agrees");
            let leader = cluster.leader().await.expect("members agree on a leader");
            assert_eq!(ids[&cluster.member(leader).name], leaders[0]);

            endpoint_health(cluster, &ids, &mut t).await;
            t
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_visible_on_every_member() {
    for_each_server(
        "writes_visible_on_every_member",
        MEMBERS,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            for writer in 0..MEMBERS {
                let mut w = cluster.client_for(writer).await;
                let key = format!("w/{writer}");
                let put = w
                    .put(key.as_str(), format!("from m{writer}"), None)
                    .await
                    .expect("put");
                let rev = put.header().unwrap().revision();
                for reader in 0..MEMBERS {
                    let mut r = cluster.client_for(reader).await;
                    let got = r.get(key.as_str(), None).await.expect("linearizable get");
                    let kv = &got.kvs()[0];
                    assert_eq!(kv.value(), format!("from m{writer}").as_bytes());
                    assert_eq!(kv.mod_revision(), rev, "same revision on every member");
                    assert!(got.header().unwrap().revision() >= rev);
                }
                t.record("written and read everywhere", &key);
            }
            t
        },
    )
    .await;
}

/// One `GET` on a member's client URL over HTTP/1.1, as probes and Prometheus send it:
/// `(status, body)`.
async fn http_get(client_url: &str, path: &str) -> (u16, String) {
    let addr = client_url.trim_start_matches("http://").to_string();
    let exchange = async {
        let mut conn = TcpStream::connect(addr.as_str()).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {client_url} timed out"));
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, body.to_string())
}

/// The value of the sample named exactly `name` (labels included) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_version_and_metrics() {
    for_each_server(
        "http_health_version_and_metrics",
        MEMBERS,
        async |cluster: &mut Cluster| {
            let mut t = Transcript::new();
            let ids = member_ids(cluster, &mut t).await;
            cluster
                .client()
                .await
                .put("http/k", "v", None)
                .await
                .expect("put");
            let mut leaders = 0.0;
            for m in cluster.members() {
                let url = m.client_url();
                eprintln!("--- {}: /health, /version, /metrics", m.name);
                let (status, body) = http_get(&url, "/health").await;
                let health: serde_json::Value = serde_json::from_str(&body).expect("json");
                t.record("health", (status, health["health"].clone()));
                let (status, body) = http_get(&url, "/version").await;
                let version: serde_json::Value = serde_json::from_str(&body).expect("json");
                let mut keys: Vec<&String> = version.as_object().expect("object").keys().collect();
                keys.sort();
                t.record("version keys", (status, keys));

                let (status, text) = http_get(&url, "/metrics").await;
                t.record("metrics status", status);
                for name in [
                    "etcd_server_has_leader",
                    "etcd_server_is_leader",
                    "etcd_server_leader_changes_seen_total",
                    "etcd_server_proposals_committed_total",
                    "etcd_server_proposals_applied_total",
                    "etcd_server_proposals_pending",
                    "etcd_server_proposals_failed_total",
                    "etcd_debugging_mvcc_current_revision",
                    "etcd_debugging_mvcc_compact_revision",
                    "etcd_mvcc_db_total_size_in_bytes",
                    "etcd_disk_wal_fsync_duration_seconds_count",
                    "etcd_disk_backend_commit_duration_seconds_count",
                    "process_resident_memory_bytes",
                ] {
                    t.record(name, sample(&text, name).is_some());
                }
                t.record("has leader", sample(&text, "etcd_server_has_leader"));
                leaders += sample(&text, "etcd_server_is_leader").unwrap_or(0.0);
                let id = format!("etcd_server_id{{server_id=\"{:x}\"}}", ids[&m.name]);
                t.record("own server_id", sample(&text, &id));
            }
            t.record("members leading", leaders);
            t
        },
    )
    .await;
}
