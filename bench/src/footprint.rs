//! `footprint`: load N keys with concurrent puts, then report every member's
//! resident memory and data-dir size. `first-read`: poll one endpoint until a
//! linearizable read succeeds, for restart-to-first-read timing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_api::etcdserverpb::kv_client::KvClient;
use serde_json::Value;
use tokio::time::Instant;

use crate::args::CommonArgs;
use crate::driver::{call, Budget, Conns};
use crate::procfs;
use crate::stats::{Recorder, RunResult};
use crate::workloads::kv;

pub struct FootprintSpec {
    pub count: u64,
    pub pids: Vec<u32>,
    pub data_dirs: Vec<PathBuf>,
    pub settle_s: f64,
}

/// Loads `count` distinct keys (each written once), waits `settle_s`, measures.
pub async fn footprint(args: &CommonArgs, conns: &Conns, spec: &FootprintSpec) -> RunResult {
    let args = CommonArgs {
        keys: spec.count,
        ..args.clone()
    };
    let budget = Arc::new(Budget::new(
        None,
        Some(spec.count),
        args.rate,
        kv::timeout(&args),
    ));
    let cpu_before = procfs::cpu_seconds_sum(&spec.pids);
    let (rec, _) = kv::put(&args, conns, budget.clone(), true).await;
    let elapsed = budget.start.elapsed();
    let cpu = cpu_before.and_then(|b| procfs::cpu_seconds_sum(&spec.pids).map(|a| a - b));
    tokio::time::sleep(Duration::from_secs_f64(spec.settle_s.max(0.0))).await;

    let rss: Vec<Value> = spec
        .pids
        .iter()
        .map(|p| procfs::rss_bytes(*p).map_or(Value::Null, Value::from))
        .collect();
    let rss_total: u64 = spec.pids.iter().filter_map(|p| procfs::rss_bytes(*p)).sum();
    let disk: Vec<u64> = spec
        .data_dirs
        .iter()
        .map(|d| procfs::dir_allocated_bytes(d))
        .collect();
    let case = args.case.clone().unwrap_or_else(|| "footprint".into());
    let mut r = RunResult::new("footprint", &case, &args.label, &rec, elapsed)
        .with("keys", spec.count)
        .with("value_size", args.value_size)
        .with("rss_bytes", rss)
        .with("rss_total_bytes", rss_total)
        .with("data_dir_bytes", disk.clone())
        .with("data_total_bytes", disk.iter().sum::<u64>());
    r.server_cpu_s = cpu.map(crate::stats::round3);
    r
}

pub struct FirstReadSpec {
    /// Measure from this wall-clock instant (e.g. just before the restart) instead of from now.
    pub since_unix_ns: Option<u128>,
    pub timeout_s: f64,
}

/// Polls with linearizable reads until one succeeds or the timeout passes.
pub async fn first_read(args: &CommonArgs, spec: &FirstReadSpec) -> RunResult {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let already =
        Duration::from_nanos(spec.since_unix_ns.map_or(0, |s| now_ns.saturating_sub(s)) as u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(spec.timeout_s.max(0.1));
    let case = args.case.clone().unwrap_or_else(|| "first-read".into());
    let mut rec = Recorder::new();
    let mut attempts = 0u64;
    let mut last_error = String::new();
    let per_try = Duration::from_millis(args.timeout_ms.min(1000));
    match Conns::new(&args.endpoints, 1, per_try) {
        Ok(conns) => {
            let mut kv = KvClient::new(conns.channel(0));
            while Instant::now() < deadline {
                attempts += 1;
                let req = kv::range_request(format!("{}probe", args.prefix).into_bytes(), false);
                match call(per_try, kv.range(req)).await {
                    Ok(_) => {
                        rec.record(already + start.elapsed());
                        break;
                    }
                    Err(e) => last_error = e.message,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if rec.ops() == 0 {
                rec.record_error(
                    format!(
                        "no linearizable read within {}s: {last_error}",
                        spec.timeout_s
                    ),
                    false,
                );
            }
        }
        Err(e) => rec.record_error(e, false),
    }
    let elapsed = already + start.elapsed();
    let mut r =
        RunResult::new("first-read", &case, &args.label, &rec, elapsed).with("attempts", attempts);
    (r.clients, r.conns) = (1, 1);
    r
}
