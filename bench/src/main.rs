//! `keel-bench`: load generator and report tool for side-by-side runs of keel
//! and etcd. It speaks only the etcd v3 gRPC API, so the same binary measures
//! both. Each measuring subcommand prints exactly one JSON line on stdout (the
//! machine-readable result) and a human summary on stderr; request failures are
//! counted in the result, never a crash. See bench/README.md.

mod args;
mod driver;
mod footprint;
mod fsync;
mod pacer;
mod procfs;
mod report;
mod stats;
mod workloads;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Map;

use args::CommonArgs;
use driver::{Budget, Conns};
use stats::{round3, RunResult};
use workloads::{kv, lease, lock, watch};

#[derive(Parser)]
#[command(
    name = "keel-bench",
    version,
    about = "etcd v3 API benchmark driver (keel vs etcd)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Consistency {
    /// Linearizable (ReadIndex).
    L,
    /// Serializable (local, may be stale).
    S,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Streams {
    /// One gRPC stream per watcher.
    Separate,
    /// All watchers share one stream.
    One,
}

#[derive(Subcommand)]
enum Cmd {
    /// Puts of --value-size bytes to random keys (or each key once with --sequential).
    Put {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long)]
        sequential: bool,
    },
    /// Single-key reads of random keys.
    Range {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Compare-and-swap: read mod_revision, then txn(if mod == rev then put).
    TxnCas {
        #[command(flatten)]
        common: CommonArgs,
        /// All clients CAS the same --keys keys (contention) instead of their own.
        #[arg(long)]
        shared_keys: bool,
    },
    /// Grant a lease and put a key attached to it.
    LeasePut {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 60)]
        lease_ttl: i64,
    },
    /// Acquire+release cycles: --clients clients on --locks lock names.
    Lock {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1)]
        locks: usize,
        /// etcdctl-style locking (txn + watch on `<name>/<lease hex>`) instead of the Lock service.
        #[arg(long)]
        recipe: bool,
        /// Lease TTL per client; raised to outlive the run.
        #[arg(long, default_value_t = 60)]
        lease_ttl: i64,
    },
    /// W watchers on a prefix, one writer at --rate puts/s (100 if 0); put-ack to event latency.
    Watch {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, value_enum, default_value = "separate")]
        streams: Streams,
    },
    /// Reads and writes mixed (default 90% reads).
    Mixed {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        #[arg(long, default_value_t = 0.9)]
        read_ratio: f64,
    },
    /// Load --count keys with concurrent puts, then report RSS of --pids and size of --data-dirs.
    Footprint {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        #[arg(long, value_delimiter = ',')]
        data_dirs: Vec<PathBuf>,
        /// Wait this long after loading before measuring.
        #[arg(long, default_value_t = 2.0)]
        settle_s: f64,
    },
    /// Poll until a linearizable read succeeds; reports the time it took.
    FirstRead {
        #[command(flatten)]
        common: CommonArgs,
        /// Measure from this wall-clock time (`date +%s%N`) instead of from start.
        #[arg(long)]
        since_unix_ns: Option<u128>,
        #[arg(long, default_value_t = 60.0)]
        timeout_s: f64,
    },
    /// The disk's fdatasync rate: 4 KiB appends each followed by fdatasync.
    FsyncRate {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Build a results file (+ .md, .svg) from the JSON lines of a side-by-side run.
    Collect {
        /// File of JSON lines printed by the runs.
        #[arg(long)]
        runs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "short")]
        profile: String,
        #[arg(long, default_value = "")]
        date: String,
        #[arg(long, default_value = "keel")]
        numerator: String,
        #[arg(long, default_value = "etcd")]
        denominator: String,
        /// fio --output-format=json output of the fsync measurement.
        #[arg(long)]
        fio_json: Option<PathBuf>,
        /// JSON line of `keel-bench fsync-rate`, used when fio was not available.
        #[arg(long)]
        fsync_json: Option<PathBuf>,
        /// Free-text notes appended to the report (repeatable).
        #[arg(long)]
        note: Vec<String>,
    },
    /// Regenerate the markdown table and SVG chart beside a results JSON file.
    Report { json: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::FsyncRate {
            dir,
            seconds,
            label,
        } => emit(fsync::fsync_rate(&dir, seconds, &label)),
        Cmd::Collect {
            runs,
            out,
            profile,
            date,
            numerator,
            denominator,
            fio_json,
            fsync_json,
            note,
        } => collect(
            &runs,
            &out,
            &profile,
            &date,
            &numerator,
            &denominator,
            fio_json,
            fsync_json,
            note,
        ),
        Cmd::Report { json } => regenerate(&json),
        cmd => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(run_workload(cmd)),
                Err(e) => {
                    eprintln!("keel-bench: cannot start runtime: {e}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}

/// Prints the JSON line (stdout) and the human summary (stderr). Exit code 0
/// even with request errors: they are data; the caller reads `status`.
fn emit(r: RunResult) -> i32 {
    eprintln!("{}", r.human());
    println!("{}", r.json_line());
    0
}

fn default_case(cmd: &Cmd) -> (&'static str, String) {
    let c = |a: &CommonArgs| a.clients;
    match cmd {
        Cmd::Put { common, .. } => ("put", format!("put/c{}", c(common))),
        Cmd::Range {
            common,
            consistency,
        } => (
            "range",
            format!("range-{}/c{}", cons(*consistency), c(common)),
        ),
        Cmd::TxnCas {
            common,
            shared_keys,
        } => {
            let k = if *shared_keys { "shared" } else { "own" };
            ("txn-cas", format!("txn-cas-{k}/c{}", c(common)))
        }
        Cmd::LeasePut { common, .. } => ("lease-put", format!("lease-put/c{}", c(common))),
        Cmd::Lock {
            common,
            locks,
            recipe,
            ..
        } => {
            let name = if *recipe { "lock-recipe" } else { "lock" };
            (
                if *recipe { "lock-recipe" } else { "lock" },
                format!("{name}/c{}-m{locks}", c(common)),
            )
        }
        Cmd::Watch {
            watchers,
            streams,
            common,
        } => {
            let rate = if common.rate > 0.0 {
                common.rate
            } else {
                100.0
            };
            let s = match streams {
                Streams::Separate => "sep",
                Streams::One => "one",
            };
            ("watch", format!("watch/w{watchers}-r{rate}-{s}"))
        }
        Cmd::Mixed {
            common,
            consistency,
            ..
        } => (
            "mixed",
            format!("mixed-{}/c{}", cons(*consistency), c(common)),
        ),
        Cmd::Footprint { count, .. } => ("footprint", format!("footprint/n{count}")),
        _ => ("first-read", "first-read".into()),
    }
}

fn cons(c: Consistency) -> &'static str {
    match c {
        Consistency::L => "l",
        Consistency::S => "s",
    }
}

fn common_of(cmd: &Cmd) -> Option<&CommonArgs> {
    match cmd {
        Cmd::Put { common, .. }
        | Cmd::Range { common, .. }
        | Cmd::TxnCas { common, .. }
        | Cmd::LeasePut { common, .. }
        | Cmd::Lock { common, .. }
        | Cmd::Watch { common, .. }
        | Cmd::Mixed { common, .. }
        | Cmd::Footprint { common, .. }
        | Cmd::FirstRead { common, .. } => Some(common),
        _ => None,
    }
}

async fn run_workload(cmd: Cmd) -> i32 {
    let Some(common) = common_of(&cmd).cloned() else {
        return 2;
    };
    let (workload, auto_case) = default_case(&cmd);
    let case = common.case.clone().unwrap_or(auto_case);
    let clients = match &cmd {
        // Watchers are the clients of a watch run (and spread over connections like them).
        Cmd::Watch { watchers, .. } => *watchers,
        _ => common.clients,
    };
    let common = CommonArgs {
        case: Some(case.clone()),
        clients,
        ..common
    };
    if let Cmd::FirstRead {
        since_unix_ns,
        timeout_s,
        ..
    } = &cmd
    {
        let spec = footprint::FirstReadSpec {
            since_unix_ns: *since_unix_ns,
            timeout_s: *timeout_s,
        };
        return emit(footprint::first_read(&common, &spec).await);
    }
    let conns = match Conns::new(
        &common.endpoints,
        common.conns_effective(),
        kv::timeout(&common),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            return 2;
        }
    };
    let mut prefill_extra = Map::new();
    if common.prefill {
        let space = match cmd {
            Cmd::Put { .. } | Cmd::Range { .. } | Cmd::Mixed { .. } => kv::KV_SPACE,
            _ => "prefill",
        };
        let (written, errors) = kv::prefill(&common, &conns, space, common.keys).await;
        eprintln!(
            "[{}] {case}: prefilled {written} keys, {errors} errors",
            common.label
        );
        prefill_extra.insert("prefill_errors".into(), errors.into());
    }
    let mut r = measure(&cmd, &common, &conns, workload, &case).await;
    r.clients = common.clients as u64;
    r.conns = conns.len() as u64;
    r.extra.extend(prefill_extra);
    emit(r)
}

/// Runs the measured part, with server CPU read around it.
async fn measure(
    cmd: &Cmd,
    a: &CommonArgs,
    conns: &Conns,
    workload: &str,
    case: &str,
) -> RunResult {
    let cpu_before = procfs::cpu_seconds_sum(&a.server_pids);
    let budget = || Arc::new(Budget::from_args(a));
    let ((rec, extra), elapsed) = match cmd {
        Cmd::Footprint {
            count,
            pids,
            data_dirs,
            settle_s,
            ..
        } => {
            let spec = footprint::FootprintSpec {
                count: *count,
                pids: pids.clone(),
                data_dirs: data_dirs.clone(),
                settle_s: *settle_s,
            };
            return footprint::footprint(a, conns, &spec).await;
        }
        Cmd::Watch {
            watchers, streams, ..
        } => {
            let spec = watch::WatchSpec {
                watchers: *watchers,
                one_stream: matches!(streams, Streams::One),
            };
            let rate = if a.rate > 0.0 { a.rate } else { 100.0 };
            watch::watch(a, conns, &spec, rate).await
        }
        cmd => {
            let b = budget();
            let out = match cmd {
                Cmd::Put { sequential, .. } => kv::put(a, conns, b.clone(), *sequential).await,
                Cmd::Range { consistency, .. } => {
                    kv::range(a, conns, b.clone(), is_s(*consistency)).await
                }
                Cmd::Mixed {
                    consistency,
                    read_ratio,
                    ..
                } => kv::mixed(a, conns, b.clone(), is_s(*consistency), *read_ratio).await,
                Cmd::TxnCas { shared_keys, .. } => {
                    kv::txn_cas(a, conns, b.clone(), *shared_keys).await
                }
                Cmd::LeasePut { lease_ttl, .. } => {
                    lease::lease_put(a, conns, b.clone(), *lease_ttl).await
                }
                Cmd::Lock {
                    locks,
                    recipe,
                    lease_ttl,
                    ..
                } => {
                    let ttl = lock::lock_lease_ttl_s(*lease_ttl, a.duration_or_default());
                    lock::lock(a, conns, b.clone(), *locks, *recipe, ttl).await
                }
                _ => (stats::Recorder::new(), Map::new()),
            };
            (out, b.start.elapsed())
        }
    };
    let cpu =
        cpu_before.and_then(|b| procfs::cpu_seconds_sum(&a.server_pids).map(|x| round3(x - b)));
    let mut r = RunResult::new(workload, case, &a.label, &rec, elapsed);
    r.server_cpu_s = cpu;
    r.extra = extra;
    r.extra.insert("keys".into(), a.keys.into());
    r.extra.insert("value_size".into(), a.value_size.into());
    r.extra.insert("rate_limit".into(), a.rate.into());
    r
}

fn is_s(c: Consistency) -> bool {
    matches!(c, Consistency::S)
}

#[allow(clippy::too_many_arguments)]
fn collect(
    runs: &std::path::Path,
    out: &std::path::Path,
    profile: &str,
    date: &str,
    num: &str,
    den: &str,
    fio_json: Option<PathBuf>,
    fsync_json: Option<PathBuf>,
    notes: Vec<String>,
) -> i32 {
    let text = match std::fs::read_to_string(runs) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("keel-bench: read {}: {e}", runs.display());
            return 2;
        }
    };
    let (runs, bad) = report::parse_runs(&text);
    for b in &bad {
        eprintln!("keel-bench: skipping line that is not a run: {b}");
    }
    let fsync = fio_json
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| report::parse_fio(&t))
        .or_else(|| {
            let t = std::fs::read_to_string(fsync_json?).ok()?;
            let (r, _) = report::parse_runs(&t);
            let r = r.first()?;
            Some(report::FsyncCeiling {
                source: "keel-bench fsync-rate".into(),
                fsyncs_per_s: r.ops_per_s,
                p99_ms: Some(r.p99_ms),
            })
        });
    let mut results = report::build(runs, date, profile, num, den, fsync);
    results.notes = notes;
    match report::write_all(&results, out) {
        Ok(md) => {
            println!("{md}");
            0
        }
        Err(e) => {
            eprintln!("keel-bench: write {}: {e}", out.display());
            1
        }
    }
}

fn regenerate(json: &std::path::Path) -> i32 {
    let parsed = std::fs::read_to_string(json)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<report::Results>(&t).map_err(|e| e.to_string()));
    match parsed.and_then(|r| report::regenerate(&r, json).map_err(|e| e.to_string())) {
        Ok(md) => {
            println!("{md}");
            0
        }
        Err(e) => {
            eprintln!("keel-bench: {}: {e}", json.display());
            1
        }
    }
}
