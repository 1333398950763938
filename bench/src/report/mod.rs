//! Turns the JSON lines of a side-by-side run into one results file
//! (`bench/results/<date>-<profile>.json`: every run plus keel/etcd ratios), a
//! markdown table and an SVG chart next to it. Pure data in, files out: it never
//! talks to a server, so everything here is unit-tested.

pub mod svg;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::{round3, RunResult};

/// The fsync ceiling of the disk the servers' data dirs were on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FsyncCeiling {
    /// `fio` or `keel-bench`.
    pub source: String,
    pub fsyncs_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// One system's numbers for one case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Side {
    pub status: String,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_total_bytes: Option<u64>,
}

/// numerator/denominator for one case. A ratio is `None` when either side did
/// not produce the number (unsupported, failed, missing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ratio {
    pub case: String,
    pub workload: String,
    /// `ok`, or why there is no comparison (`unsupported`, `failed`, `missing`).
    pub status: String,
    pub num: Option<Side>,
    pub den: Option<Side>,
    pub ops_ratio: Option<f64>,
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub cpu_per_op_ratio: Option<f64>,
    pub rss_ratio: Option<f64>,
    pub disk_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub date: String,
    pub profile: String,
    /// Label of the system in the numerator (keel) and denominator (etcd).
    pub numerator: String,
    pub denominator: String,
    #[serde(default)]
    pub fsync: Option<FsyncCeiling>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub runs: Vec<RunResult>,
    pub ratios: Vec<Ratio>,
}

/// Parses JSON lines, skipping (and returning) lines that are not a run.
pub fn parse_runs(text: &str) -> (Vec<RunResult>, Vec<String>) {
    let mut runs = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<RunResult>(line) {
            Ok(r) => runs.push(r),
            Err(e) => bad.push(format!("{e}: {line}")),
        }
    }
    (runs, bad)
}

/// Reads fio's `--output-format=json`: write IOPS of the first job is the
/// fdatasync rate (fio was run with `--fdatasync=1`).
pub fn parse_fio(json: &str) -> Option<FsyncCeiling> {
    let v: Value = serde_json::from_str(json).ok()?;
    let job = v.get("jobs")?.get(0)?;
    let iops = job.get("write")?.get("iops")?.as_f64()?;
    let p99_ns = job
        .pointer("/sync/lat_ns/percentile/99.000000")
        .and_then(Value::as_f64);
    Some(FsyncCeiling {
        source: "fio".into(),
        fsyncs_per_s: round3(iops),
        p99_ms: p99_ns.map(|ns| round3(ns / 1e6)),
    })
}

fn side(r: &RunResult) -> Side {
    let u64_extra = |k: &str| r.extra.get(k).and_then(Value::as_u64);
    Side {
        status: r.status.clone(),
        ops_per_s: r.ops_per_s,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        errors: r.errors,
        server_cpu_s: r.server_cpu_s,
        rss_total_bytes: u64_extra("rss_total_bytes"),
        data_total_bytes: u64_extra("data_total_bytes"),
    }
}

fn div(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0 && a >= 0.0).then(|| round3(a / b))
}

fn usable(s: &Side) -> bool {
    matches!(s.status.as_str(), "ok" | "errors")
}

/// Pairs runs by case (first occurrence per label wins) in first-seen case order.
pub fn ratios(runs: &[RunResult], num: &str, den: &str) -> Vec<Ratio> {
    let mut cases: Vec<(&str, &str)> = Vec::new();
    for r in runs {
        if (r.label == num || r.label == den) && !cases.iter().any(|(c, _)| *c == r.case) {
            cases.push((&r.case, &r.workload));
        }
    }
    let find = |case: &str, label: &str| {
        runs.iter()
            .find(|r| r.case == case && r.label == label)
            .map(side)
    };
    cases
        .into_iter()
        .map(|(case, workload)| ratio(case, workload, find(case, num), find(case, den)))
        .collect()
}

fn ratio(case: &str, workload: &str, num: Option<Side>, den: Option<Side>) -> Ratio {
    let status = match (&num, &den) {
        (Some(n), Some(d)) if usable(n) && usable(d) => "ok".to_string(),
        (Some(n), Some(d)) if !usable(n) => n.status.clone(),
        (Some(_), Some(d)) => format!("{} (baseline)", d.status),
        _ => "missing".to_string(),
    };
    let both = |f: fn(&Side) -> Option<f64>| match (&num, &den) {
        (Some(n), Some(d)) if status == "ok" => f(n).zip(f(d)).and_then(|(a, b)| div(a, b)),
        _ => None,
    };
    let is_latency_only = workload == "first-read";
    Ratio {
        case: case.to_string(),
        workload: workload.to_string(),
        ops_ratio: if is_latency_only {
            None
        } else {
            both(|s| Some(s.ops_per_s))
        },
        p50_ratio: both(|s| Some(s.p50_ms)),
        p99_ratio: both(|s| Some(s.p99_ms)),
        cpu_per_op_ratio: both(|s| {
            let ops = s.ops_per_s;
            s.server_cpu_s.filter(|_| ops > 0.0).map(|c| c / ops)
        }),
        rss_ratio: both(|s| s.rss_total_bytes.map(|b| b as f64)),
        disk_ratio: both(|s| s.data_total_bytes.map(|b| b as f64)),
        status,
        num,
        den,
    }
}

pub fn build(
    runs: Vec<RunResult>,
    date: &str,
    profile: &str,
    num: &str,
    den: &str,
    fsync: Option<FsyncCeiling>,
) -> Results {
    let ratios = ratios(&runs, num, den);
    Results {
        date: date.to_string(),
        profile: profile.to_string(),
        numerator: num.to_string(),
        denominator: den.to_string(),
        fsync,
        notes: Vec::new(),
        runs,
        ratios,
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2}"))
}

fn fmt_side(s: &Option<Side>, f: fn(&Side) -> f64) -> String {
    match s {
        Some(s) if usable(s) => format!("{:.1}", f(s)),
        Some(s) => s.status.clone(),
        None => "missing".into(),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("–".into(), |b| {
        format!("{:.1}", b as f64 / (1024.0 * 1024.0))
    })
}

/// The markdown report: the ratio table, footprint, and the fsync ceiling.
pub fn markdown(r: &Results) -> String {
    let (n, d) = (&r.numerator, &r.denominator);
    let mut s = format!("# {n} vs {d}: profile `{}`, {}\n\n", r.profile, r.date);
    s.push_str(&format!(
        "Every ratio is {n}/{d} from the same run on the same machine. Throughput ratio > 1 and latency ratio < 1 favour {n}.\n\n"
    ));
    s.push_str(&format!(
        "| case | {n} ops/s | {d} ops/s | ops/s ratio | p50 ms {n} / {d} | p50 ratio | p99 ms {n} / {d} | p99 ratio | cpu/op ratio | errors {n} / {d} | status |\n"
    ));
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for x in r
        .ratios
        .iter()
        .filter(|x| x.workload != "footprint" && x.workload != "first-read")
    {
        let errs = |s: &Option<Side>| s.as_ref().map_or("–".into(), |s| s.errors.to_string());
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} | {} / {} | {} | {} | {} / {} | {} |\n",
            x.case,
            fmt_side(&x.num, |s| s.ops_per_s),
            fmt_side(&x.den, |s| s.ops_per_s),
            fmt_opt(x.ops_ratio),
            fmt_side(&x.num, |s| s.p50_ms),
            fmt_side(&x.den, |s| s.p50_ms),
            fmt_opt(x.p50_ratio),
            fmt_side(&x.num, |s| s.p99_ms),
            fmt_side(&x.den, |s| s.p99_ms),
            fmt_opt(x.p99_ratio),
            fmt_opt(x.cpu_per_op_ratio),
            errs(&x.num),
            errs(&x.den),
            x.status
        ));
    }
    watch_section(&mut s, r);
    footprint_section(&mut s, r);
    ceiling_section(&mut s, r);
    for note in &r.notes {
        s.push_str(&format!("\n- {note}"));
    }
    s.push('\n');
    s
}

/// Watch events usually reach watchers before the put's own response, so the
/// ack-based percentiles above are often 0; these are from the put's send.
fn watch_section(s: &mut String, r: &Results) {
    let from_send = |case: &str, label: &str, k: &str| {
        r.runs
            .iter()
            .find(|x| x.case == case && x.label == label && x.workload == "watch")
            .and_then(|x| x.extra.get(k).and_then(Value::as_f64))
    };
    let cases: Vec<&Ratio> = r.ratios.iter().filter(|x| x.workload == "watch").collect();
    if cases.is_empty() {
        return;
    }
    let (n, d) = (&r.numerator, &r.denominator);
    s.push_str(&format!(
        "\n## Watch latency from the put's send\n\n| case | p50 ms {n} / {d} | p50 ratio | p99 ms {n} / {d} | p99 ratio |\n|---|---:|---:|---:|---:|\n"
    ));
    for x in cases {
        let cell = |label: &str, k: &str| {
            from_send(&x.case, label, k).map_or("–".into(), |v| format!("{v:.1}"))
        };
        let ratio = |k: &str| {
            fmt_opt(
                from_send(&x.case, n, k)
                    .zip(from_send(&x.case, d, k))
                    .and_then(|(a, b)| div(a, b)),
            )
        };
        s.push_str(&format!(
            "| {} | {} / {} | {} | {} / {} | {} |\n",
            x.case,
            cell(n, "from_send_p50_ms"),
            cell(d, "from_send_p50_ms"),
            ratio("from_send_p50_ms"),
            cell(n, "from_send_p99_ms"),
            cell(d, "from_send_p99_ms"),
            ratio("from_send_p99_ms"),
        ));
    }
}

fn footprint_section(s: &mut String, r: &Results) {
    let rows: Vec<&Ratio> = r
        .ratios
        .iter()
        .filter(|x| x.workload == "footprint" || x.workload == "first-read")
        .collect();
    if rows.is_empty() {
        return;
    }
    let (n, d) = (&r.numerator, &r.denominator);
    s.push_str(&format!("\n## Footprint and recovery\n\n| measure | {n} | {d} | ratio | status |\n|---|---:|---:|---:|---|\n"));
    for x in rows {
        if x.workload == "first-read" {
            s.push_str(&format!(
                "| {} (ms) | {} | {} | {} | {} |\n",
                x.case,
                fmt_side(&x.num, |s| s.p50_ms),
                fmt_side(&x.den, |s| s.p50_ms),
                fmt_opt(x.p50_ratio),
                x.status
            ));
            continue;
        }
        let get = |side: &Option<Side>, f: fn(&Side) -> Option<u64>| mib(side.as_ref().and_then(f));
        s.push_str(&format!(
            "| {} RSS, all members (MiB) | {} | {} | {} | {} |\n",
            x.case,
            get(&x.num, |s| s.rss_total_bytes),
            get(&x.den, |s| s.rss_total_bytes),
            fmt_opt(x.rss_ratio),
            x.status
        ));
        s.push_str(&format!(
            "| {} data dirs on disk (MiB) | {} | {} | {} | {} |\n",
            x.case,
            get(&x.num, |s| s.data_total_bytes),
            get(&x.den, |s| s.data_total_bytes),
            fmt_opt(x.disk_ratio),
            x.status
        ));
        s.push_str(&format!(
            "| {} load (ops/s) | {} | {} | {} | {} |\n",
            x.case,
            fmt_side(&x.num, |s| s.ops_per_s),
            fmt_side(&x.den, |s| s.ops_per_s),
            fmt_opt(x.ops_ratio),
            x.status
        ));
    }
}

fn ceiling_section(s: &mut String, r: &Results) {
    let Some(f) = &r.fsync else {
        return;
    };
    s.push_str(&format!(
        "\n## Physical ceiling\n\nDisk fsync rate ({}, 4 KiB writes + fdatasync): **{:.0}/s**{}. A member that fsyncs once per write caps near that; more puts/s than that needs group commit (writes per fsync below is the minimum average batch).\n\n| case | system | puts/s | writes per fsync needed |\n|---|---|---:|---:|\n",
        f.source,
        f.fsyncs_per_s,
        f.p99_ms.map_or(String::new(), |p| format!(", p99 {p:.2} ms"))
    ));
    for x in r.ratios.iter().filter(|x| x.workload == "put") {
        for (label, side) in [(&r.numerator, &x.num), (&r.denominator, &x.den)] {
            if let Some(sd) = side.as_ref().filter(|s| usable(s)) {
                let per = if f.fsyncs_per_s > 0.0 {
                    sd.ops_per_s / f.fsyncs_per_s
                } else {
                    0.0
                };
                s.push_str(&format!(
                    "| {} | {label} | {:.0} | {per:.2} |\n",
                    x.case, sd.ops_per_s
                ));
            }
        }
    }
}

/// Writes `<stem>.json`, `<stem>.md` and `<stem>.svg`; returns the markdown.
pub fn write_all(r: &Results, json_path: &Path) -> std::io::Result<String> {
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(json_path, json + "\n")?;
    regenerate(r, json_path)
}

/// Writes the markdown and SVG beside an existing results JSON.
pub fn regenerate(r: &Results, json_path: &Path) -> std::io::Result<String> {
    let md = markdown(r);
    std::fs::write(json_path.with_extension("md"), &md)?;
    std::fs::write(json_path.with_extension("svg"), svg::chart(r))?;
    Ok(md)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    pub fn run(
        workload: &str,
        case: &str,
        label: &str,
        ops: u64,
        latency_ms: u64,
        status: &str,
    ) -> RunResult {
        let mut rec = Recorder::new();
        for _ in 0..ops {
            rec.record(Duration::from_millis(latency_ms));
        }
        let mut r = RunResult::new(workload, case, label, &rec, Duration::from_secs(1));
        r.status = status.to_string();
        r.server_cpu_s = Some(ops as f64 / 1000.0);
        r
    }

    pub fn sample() -> Results {
        let runs = vec![
            run("put", "put/c16", "etcd", 100, 10, "ok"),
            run("put", "put/c16", "keel", 300, 4, "ok"),
            run("lock", "lock/c16-m1", "etcd", 50, 100, "ok"),
            run("lock", "lock/c16-m1", "keel", 0, 0, "unsupported"),
            run("range", "range-l/c256", "etcd", 200, 2, "ok"),
            run("range", "range-l/c256", "keel", 400, 1, "ok"),
        ];
        build(runs, "2026-11-30", "short", "keel", "etcd", None)
    }

    #[test]
    fn ratios_pair_by_case_and_mark_unsupported() {
        let r = sample();
        assert_eq!(r.ratios.len(), 3);
        let put = &r.ratios[0];
        assert_eq!(put.case, "put/c16");
        assert_eq!(put.ops_ratio, Some(3.0));
        assert_eq!(put.p50_ratio, Some(0.4));
        // cpu per op: (0.3/300) / (0.1/100) = 1.
        assert_eq!(put.cpu_per_op_ratio, Some(1.0));
        let lock = &r.ratios[1];
        assert_eq!(lock.status, "unsupported");
        assert_eq!(lock.ops_ratio, None);
    }

    #[test]
    fn missing_side_is_reported_not_dropped() {
        let runs = vec![run("put", "put/c1", "etcd", 10, 1, "ok")];
        let r = ratios(&runs, "keel", "etcd");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, "missing");
    }

    #[test]
    fn markdown_has_a_row_per_case_with_ratios() {
        let md = markdown(&sample());
        assert!(md.contains("| put/c16 | 300.0 | 100.0 | 3.00 |"), "{md}");
        assert!(
            md.contains("| lock/c16-m1 | unsupported | 50.0 | – |"),
            "{md}"
        );
    }

    #[test]
    fn watch_section_reports_latency_from_send() {
        let w = |label: &str, p99: f64| {
            run("watch", "watch/w1", label, 10, 1, "ok").with("from_send_p99_ms", p99)
        };
        let r = build(
            vec![w("etcd", 4.0), w("keel", 1.0)],
            "d",
            "short",
            "keel",
            "etcd",
            None,
        );
        let md = markdown(&r);
        assert!(
            md.contains("| watch/w1 | – / – | – | 1.0 / 4.0 | 0.25 |"),
            "{md}"
        );
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = sample();
        let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn parse_runs_skips_garbage_lines() {
        let good = run("put", "put/c1", "etcd", 1, 1, "ok").json_line();
        let (runs, bad) = parse_runs(&format!("{good}\nnot json\n\n{good}\n"));
        assert_eq!(runs.len(), 2);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn fio_json_gives_write_iops_as_fsync_rate() {
        let fio = r#"{"jobs":[{"write":{"iops":1234.5},"sync":{"lat_ns":{"percentile":{"99.000000":2500000}}}}]}"#;
        let f = parse_fio(fio).unwrap();
        assert_eq!(f.fsyncs_per_s, 1234.5);
        assert_eq!(f.p99_ms, Some(2.5));
        assert!(parse_fio("{}").is_none());
    }
}
