//! The plain HTTP endpoints etcd serves on its client URLs beside gRPC (HTTP/1.1 or HTTP/2):
//! `/health`, `/livez`, `/readyz`, `/version`, and Prometheus `/metrics` under etcd's metric
//! names where a metric means the same thing, so existing dashboards, alerts and probes work.
//!
//! Owns: those handlers and the few counters only they read (leader changes seen, durable
//! store commit times). Must never: wait on a quorum longer than [`HEALTH_TIMEOUT`], or take
//! a lock that apply or the log writer holds across I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_raft::histogram::{DurationHistogram, HistogramSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::grpc::maintenance::ETCD_API_VERSION;
use crate::server::Server;

/// Longest a health or readiness check waits for its linearizable read.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints report beyond the server's own state.
#[derive(Debug, Default)]
pub struct Observed {
    /// Leaders this member has come to know of (etcd counts the first one too).
    pub leader_changes: AtomicU64,
    /// Durable commits of the store (etcd's backend commits).
    pub backend_commits: DurationHistogram,
}

/// Adds the HTTP endpoints to the client routes.
pub fn with_http(
    routes: tonic::service::Routes,
    server: Arc<Server>,
    observed: Arc<Observed>,
) -> tonic::service::Routes {
    let metrics = Arc::new(metrics_registry(server.clone(), observed));
    let (for_health, for_ready) = (server.clone(), server);
    let router = routes
        .into_axum_router()
        .route(
            "/health",
            get(move |RawQuery(query): RawQuery| async move {
                let serializable = query
                    .as_deref()
                    .is_some_and(|q| q.split('&').any(|p| p == "serializable=true"));
                health(&for_health, serializable).await
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move { readyz(&for_ready).await }),
        )
        .route("/version", get(version))
        .route("/metrics", get(move || async move { render(&metrics) }))
        .fallback(not_found);
    tonic::service::Routes::from(router)
}

/// An unknown path: gRPC's `Unimplemented` to a gRPC call (what tonic answers), and etcd's
/// 404 to anything else, so a probe pointed at a wrong path fails instead of passing.
async fn not_found(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// Why this member cannot serve a read now (the reason etcd's `/health` gives), if it cannot.
async fn unhealthy(server: &Server, serializable: bool) -> Option<String> {
    if server.raft.leadership().1.is_none() {
        return Some("RAFT NO LEADER".into());
    }
    if serializable {
        return server
            .store
            .read()
            .err()
            .map(|e| format!("RANGE ERROR:{e}"));
    }
    match tokio::time::timeout(HEALTH_TIMEOUT, server.proposer.read_barrier()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("RANGE ERROR:{e}")),
        Err(_) => Some("RANGE ERROR:etcdserver: request timed out".into()),
    }
}

/// etcd 3.5's `/health`: `{"health":"true","reason":""}`, or 503 with why not. A linearizable
/// read unless `?serializable=true`.
async fn health(server: &Server, serializable: bool) -> Response {
    let (status, healthy, reason) = match unhealthy(server, serializable).await {
        None => (StatusCode::OK, "true", String::new()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, "false", reason),
    };
    let body = json(&Health {
        health: healthy,
        reason: &reason,
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `/readyz`: `ok` when this member has a leader and serves a linearizable read.
async fn readyz(server: &Server) -> Response {
    match unhealthy(server, false).await {
        None => (StatusCode::OK, "ok").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]linearizable_read failed: {reason}\nreadyz check failed\n"),
        )
            .into_response(),
    }
}

async fn version() -> Response {
    let cluster = format!("{}.0", api_minor());
    let body = json(&Version {
        etcdserver: ETCD_API_VERSION,
        etcdcluster: &cluster,
    });
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The API version without its patch (`3.5`): etcd's cluster version (`/version` adds `.0`).
fn api_minor() -> &'static str {
    ETCD_API_VERSION
        .rsplit_once('.')
        .map_or(ETCD_API_VERSION, |(minor, _)| minor)
}

/// `/health`'s body (fields in etcd's order).
#[derive(serde::Serialize)]
struct Health<'a> {
    health: &'a str,
    reason: &'a str,
}

/// `/version`'s body.
#[derive(serde::Serialize)]
struct Version<'a> {
    etcdserver: &'a str,
    etcdcluster: &'a str,
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn metrics_registry(server: Arc<Server>, observed: Arc<Observed>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics { server, observed }));
    registry
}

/// Reads every metric from the member's state at scrape time.
#[derive(Debug)]
struct Metrics {
    server: Arc<Server>,
    observed: Arc<Observed>,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A gauge fixed at 1 whose one label carries the information (etcd's `*_version`, `_id`).
fn info(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: (&str, &str),
) -> std::fmt::Result {
    let labels = [(label.0.to_string(), label.1.to_string())];
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_family(&labels)?
        .encode_gauge(&1i64)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, f64>(&v, None)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_s, h.count, &h.buckets, None)
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let server = &self.server;
        let status = server.raft.status();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge(
            &mut e,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            flag(status.leader.is_some()),
        )?;
        gauge(
            &mut e,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            flag(status.is_leader),
        )?;
        counter(
            &mut e,
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            self.observed.leader_changes.load(Ordering::Relaxed) as f64,
        )?;
        info(
            &mut e,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            ("server_id", &format!("{:x}", server.member_id)),
        )?;
        info(
            &mut e,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            ("server_version", ETCD_API_VERSION),
        )?;
        info(
            &mut e,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            ("cluster_version", api_minor()),
        )?;
        gauge(
            &mut e,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            status.committed_index as f64,
        )?;
        gauge(
            &mut e,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            status.applied_index as f64,
        )?;
        let (pending, failed) = server.proposer.proposal_counts();
        gauge(
            &mut e,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            pending as f64,
        )?;
        counter(
            &mut e,
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            failed as f64,
        )?;
        if let Ok(view) = server.store.read() {
            gauge(
                &mut e,
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                view.current_revision() as f64,
            )?;
            gauge(
                &mut e,
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                view.compact_revision() as f64,
            )?;
        }
        if let Ok(bytes) = server.store.db_size_bytes() {
            gauge(
                &mut e,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                bytes as f64,
            )?;
        }
        if let Some(fsyncs) = server.raft.fsync_durations() {
            histogram(
                &mut e,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                &fsyncs.snapshot(),
            )?;
        }
        histogram(
            &mut e,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.observed.backend_commits.snapshot(),
        )?;
        process_metrics(&mut e)
    }
}

/// The Prometheus process metrics etcd's Go client exports, from `/proc/self` (Linux only;
/// elsewhere they are left out).
fn process_metrics(e: &mut DescriptorEncoder) -> std::fmt::Result {
    let Some(p) = ProcessStats::read() else {
        return Ok(());
    };
    counter(
        e,
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        p.cpu_s,
    )?;
    gauge(
        e,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        p.rss_bytes as f64,
    )?;
    gauge(
        e,
        "process_open_fds",
        "Number of open file descriptors.",
        p.open_fds as f64,
    )?;
    gauge(
        e,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_s,
    )
}

struct ProcessStats {
    cpu_s: f64,
    rss_bytes: u64,
    open_fds: usize,
    start_time_s: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (100 on every Linux keel runs on).
const CLOCK_TICKS_PER_S: f64 = 100.0;
const PAGE_BYTES: u64 = 4096;

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), from field 3 (state) on.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let cpu_s = (field(14)? + field(15)?) / CLOCK_TICKS_PER_S;
        let started_ticks = field(22)?;
        let rss_pages = field(24)? as u64;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(Self {
            cpu_s,
            rss_bytes: rss_pages * PAGE_BYTES,
            open_fds,
            start_time_s: now - uptime + started_ticks / CLOCK_TICKS_PER_S,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_version_is_the_api_minor() {
        assert_eq!(api_minor(), "3.5");
    }

    #[test]
    fn process_stats_read_this_process() {
        let p = ProcessStats::read().expect("linux /proc");
        assert!(p.rss_bytes > 0 && p.open_fds > 0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(p.start_time_s <= now + 1.0 && p.start_time_s > now - 86_400.0 * 365.0);
    }
}
