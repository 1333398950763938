//! The HTTP endpoints on every member's client URL, over plain HTTP/1.1 as probes and
//! Prometheus use them: `/health`, `/livez`, `/readyz`, `/version` and `/metrics`, while the
//! cluster serves and after it lost its quorum.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::http::uri::PathAndQuery;

/// One `GET` over HTTP/1.1: `(status, body)`.
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        conn.read_to_string(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = raw.split_once("\r\n\r\n").ok_or("no header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(RPC_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {path} timed out"))?
}

/// Prometheus text exposition: sample (name with labels) -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics(cluster: &TestCluster, i: usize) -> BTreeMap<String, f64> {
    let (status, body) = http_get(cluster.members[i].client_port, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_and_metrics_are_served_over_http_on_every_member() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let mut kv = cluster.kv(leader);
    let mut revision = 0;
    for n in 0..5 {
        revision = rev(&put(&mut kv, &format!("http/{n}"), "v").await);
    }

    tracing::info!("--- phase 1: probes and /version on every member");
    for i in 0..cluster.len() {
        let port = cluster.members[i].client_port;
        let healthy = (200, r#"{"health":"true","reason":""}"#.to_string());
        assert_eq!(http_get(port, "/health").await, Ok(healthy.clone()));
        assert_eq!(
            http_get(port, "/health?serializable=true").await,
            Ok(healthy)
        );
        assert_eq!(http_get(port, "/livez").await, Ok((200, "ok".into())));
        assert_eq!(http_get(port, "/readyz").await, Ok((200, "ok".into())));
        assert_eq!(
            http_get(port, "/version").await,
            Ok((
                200,
                r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#.to_string()
            ))
        );
        let (status, _) = http_get(port, "/no-such-page").await.expect("GET");
        assert_eq!(status, 404, "a probe at a wrong path must fail");
    }
    // ...while a call to an unknown gRPC method still gets gRPC's answer.
    let mut grpc = tonic::client::Grpc::new(cluster.channel(leader));
    grpc.ready().await.expect("channel ready");
    let unknown = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            PathAndQuery::from_static("/etcdserverpb.NoSuch/Call"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    tracing::info!("--- phase 2: /metrics under etcd's names");
    let mut leaders = 0.0;
    for i in 0..cluster.len() {
        // Apply on followers may trail the leader's answer by a moment.
        let what = format!("m{i}'s metrics to show revision {revision}");
        let m = eventually(&what, SETTLE_WAIT, async || {
            let m = metrics(&cluster, i).await;
            match m.get("etcd_debugging_mvcc_current_revision") {
                Some(&r) if r == revision as f64 => Ok(m),
                other => Err(format!("current revision {other:?}")),
            }
        })
        .await;
        assert_eq!(m["etcd_server_has_leader"], 1.0);
        leaders += m["etcd_server_is_leader"];
        assert_eq!(m["etcd_server_is_leader"] == 1.0, i == leader);
        assert!(m["etcd_server_leader_changes_seen_total"] >= 1.0);
        let id = format!("etcd_server_id{{server_id=\"{:x}\"}}", cluster.member_id(i));
        assert_eq!(m.get(&id), Some(&1.0), "{id}");
        assert_eq!(
            m.get("etcd_server_version{server_version=\"3.5.0\"}"),
            Some(&1.0)
        );
        assert_eq!(m["etcd_debugging_mvcc_compact_revision"], -1.0);
        assert!(m["etcd_server_proposals_applied_total"] >= 6.0, "five puts");
        assert!(
            m["etcd_server_proposals_committed_total"] >= m["etcd_server_proposals_applied_total"]
        );
        assert!(m["etcd_mvcc_db_total_size_in_bytes"] > 0.0);
        let fsyncs = m["etcd_disk_wal_fsync_duration_seconds_count"];
        assert!(fsyncs >= 1.0, "every member fsyncs its log");
        assert_eq!(
            m["etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"],
            fsyncs
        );
        assert!(
            m["etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"] <= fsyncs,
            "buckets are cumulative"
        );
        assert!(m["process_resident_memory_bytes"] > 0.0);
        assert_eq!(
            m["etcd_server_proposals_pending"], 0.0,
            "every write answered"
        );
        assert_eq!(m["etcd_server_proposals_failed_total"], 0.0);
    }
    assert_eq!(leaders, 1.0, "exactly one member reports leading");

    tracing::info!("--- phase 3: quorum lost; m{leader} stays, the others stop");
    for i in cluster.followers(leader) {
        cluster.stop(i).await;
    }
    let port = cluster.members[leader].client_port;
    let unhealthy = eventually("/health to fail", SETTLE_WAIT, async || {
        match http_get(port, "/health").await? {
            (503, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        unhealthy.starts_with(r#"{"health":"false","reason":""#)
            && (unhealthy.contains("RAFT NO LEADER") || unhealthy.contains("RANGE ERROR")),
        "{unhealthy}"
    );
    let mut doomed = tonic::Request::new(put_req("http/after", "v"));
    doomed.set_timeout(Duration::from_secs(2));
    let err = cluster
        .kv(leader)
        .put(doomed)
        .await
        .expect_err("no quorum, no write");
    tracing::info!(error = %err, "the write without a quorum failed");
    // The member sees the failure when its own deadline fires, a moment after the client's.
    eventually("the failed write counted", SETTLE_WAIT, async || {
        let m = metrics(&cluster, leader).await;
        let counts = (
            m["etcd_server_proposals_failed_total"],
            m["etcd_server_proposals_pending"],
        );
        (counts == (1.0, 0.0))
            .then_some(())
            .ok_or(format!("{counts:?}"))
    })
    .await;
    let (status, body) = http_get(port, "/readyz").await.expect("GET /readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("[-]linearizable_read failed"), "{body}");
    assert_eq!(http_get(port, "/livez").await, Ok((200, "ok".into())));
    cluster.shutdown().await;
}
