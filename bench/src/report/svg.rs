//! A self-contained SVG chart of a results file: per case, the throughput ratio
//! and the p50/p99 latency ratios, plus RSS/disk ratios of footprint runs, as bars from the 1.0 line on a log2 axis
//! (right of 1 = numerator higher). Cases without a ratio get a grey note.

use std::fmt::Write;

use super::{Ratio, Results};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 230.0;
const PLOT_X0: f64 = LABEL_W + 10.0;
const PLOT_W: f64 = 620.0;
/// The axis spans ratios 1/32 .. 32.
const LOG2_MAX: f64 = 5.0;
const ROW_H: f64 = 24.0;
const PANEL_HEAD: f64 = 56.0;

const GOOD: &str = "#2e8b57";
const BAD: &str = "#c0392b";
const P99_GOOD: &str = "#7fc8a0";
const P99_BAD: &str = "#e8958b";

fn x_of(ratio: f64) -> f64 {
    let l = ratio.max(1e-9).log2().clamp(-LOG2_MAX, LOG2_MAX);
    PLOT_X0 + PLOT_W / 2.0 + l / LOG2_MAX * (PLOT_W / 2.0)
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn chart(r: &Results) -> String {
    let cases: Vec<&Ratio> = r.ratios.iter().collect();
    let footprint: Vec<&Ratio> = r
        .ratios
        .iter()
        .filter(|x| x.workload == "footprint")
        .collect();
    let panel_h = |rows: usize| PANEL_HEAD + ROW_H * rows as f64 + 30.0;
    let footprint_h = if footprint.is_empty() {
        0.0
    } else {
        panel_h(footprint.len())
    };
    let height = 40.0 + 2.0 * panel_h(cases.len()) + footprint_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="10" y="24" font-size="16" font-weight="bold">{} / {} — profile {}, {}</text>
"#,
        escape(&r.numerator),
        escape(&r.denominator),
        escape(&r.profile),
        escape(&r.date)
    );
    let title_tput = format!(
        "Throughput ratio {}/{} (right is better)",
        r.numerator, r.denominator
    );
    panel(&mut s, 40.0, &title_tput, &cases, |x| {
        x.ops_ratio.map(|v| vec![("tput", v, true)])
    });
    let title_lat = format!(
        "Latency ratio {}/{}: p50 dark, p99 light (left is better)",
        r.numerator, r.denominator
    );
    panel(
        &mut s,
        40.0 + panel_h(cases.len()),
        &title_lat,
        &cases,
        |x| {
            let bars: Vec<_> = [("p50", x.p50_ratio), ("p99", x.p99_ratio)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v, false)))
                .collect();
            (!bars.is_empty()).then_some(bars)
        },
    );
    if !footprint.is_empty() {
        let title = format!(
            "Footprint ratio {}/{}: RSS dark, disk light (left is better)",
            r.numerator, r.denominator
        );
        panel(
            &mut s,
            40.0 + 2.0 * panel_h(cases.len()),
            &title,
            &footprint,
            |x| {
                let bars: Vec<_> = [("rss", x.rss_ratio), ("disk", x.disk_ratio)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v, false)))
                    .collect();
                (!bars.is_empty()).then_some(bars)
            },
        );
    }
    s.push_str("</svg>\n");
    s
}

type Bars = Vec<(&'static str, f64, bool)>;

/// One panel: axis, 1.0 line, one row per case. `bars` gives (class, ratio,
/// higher_is_better) for a case, or `None` when the case has no such ratio.
fn panel(
    s: &mut String,
    top: f64,
    title: &str,
    cases: &[&Ratio],
    bars: impl Fn(&Ratio) -> Option<Bars>,
) {
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 16.0,
        escape(title)
    );
    let axis_top = top + PANEL_HEAD - 10.0;
    let axis_bottom = axis_top + ROW_H * cases.len() as f64 + 10.0;
    for t in [-4i32, -2, 0, 2, 4] {
        let ratio = 2f64.powi(t);
        let x = x_of(ratio);
        let label = if t < 0 {
            format!("1/{}", 1 << -t)
        } else {
            format!("{}", 1 << t)
        };
        let (stroke, w) = if t == 0 { ("#333", 1.5) } else { ("#ccc", 1.0) };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{axis_top:.1}" x2="{x:.1}" y2="{axis_bottom:.1}" stroke="{stroke}" stroke-width="{w}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}×</text>"##,
            axis_top - 4.0
        );
    }
    let x1 = x_of(1.0);
    for (i, case) in cases.iter().enumerate() {
        let y = axis_top + 5.0 + ROW_H * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{LABEL_W}" y="{:.1}" text-anchor="end">{}</text>"#,
            y + ROW_H / 2.0 + 2.0,
            escape(&case.case)
        );
        let Some(bars) = bars(case) else {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#999" font-style="italic">{}</text>"##,
                x1 + 6.0,
                y + ROW_H / 2.0 + 2.0,
                escape(if case.status == "ok" {
                    "n/a"
                } else {
                    &case.status
                })
            );
            continue;
        };
        let bar_h = (ROW_H - 6.0) / bars.len() as f64;
        for (j, (class, ratio, higher_better)) in bars.iter().enumerate() {
            let xr = x_of(*ratio);
            let (bx, bw) = if xr >= x1 {
                (x1, xr - x1)
            } else {
                (xr, x1 - xr)
            };
            let good = (*ratio >= 1.0) == *higher_better;
            let fill = match (*class, good) {
                ("p99" | "disk", true) => P99_GOOD,
                ("p99" | "disk", false) => P99_BAD,
                (_, true) => GOOD,
                (_, false) => BAD,
            };
            let by = y + 3.0 + bar_h * j as f64;
            let _ = writeln!(
                s,
                r#"<rect class="bar {class}" data-case="{}" x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{} {class}: {ratio:.3}</title></rect>"#,
                escape(&case.case),
                bw.max(1.0),
                bar_h - 1.0,
                escape(&case.case)
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#333">{ratio:.2}</text>"##,
                PLOT_X0 + PLOT_W + 6.0,
                by + bar_h - 2.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    fn bars_with_class<'a>(
        doc: &'a roxmltree::Document,
        class: &str,
    ) -> Vec<roxmltree::Node<'a, 'a>> {
        doc.descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some(class))
            .collect()
    }

    #[test]
    fn svg_is_valid_xml_with_one_throughput_bar_per_comparable_case() {
        let r = sample();
        let svg = chart(&r);
        let doc = roxmltree::Document::parse(&svg).expect("chart must be well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let tput = bars_with_class(&doc, "bar tput");
        let comparable: Vec<&str> = r
            .ratios
            .iter()
            .filter(|x| x.ops_ratio.is_some())
            .map(|x| x.case.as_str())
            .collect();
        assert_eq!(comparable.len(), 2);
        let cases: Vec<&str> = tput
            .iter()
            .map(|n| n.attribute("data-case").unwrap())
            .collect();
        assert_eq!(cases, comparable);
        assert_eq!(bars_with_class(&doc, "bar p50").len(), 2);
        assert_eq!(bars_with_class(&doc, "bar p99").len(), 2);
        // The unsupported case is named, with its status instead of a bar.
        assert!(svg.contains(">lock/c16-m1<") && svg.contains(">unsupported<"));
    }

    #[test]
    fn bars_grow_right_above_one_and_left_below() {
        let r = sample();
        let doc_text = chart(&r);
        let doc = roxmltree::Document::parse(&doc_text).unwrap();
        let x1 = x_of(1.0);
        let tput = bars_with_class(&doc, "bar tput");
        let x: f64 = tput[0].attribute("x").unwrap().parse().unwrap();
        assert!((x - x1).abs() < 0.1, "put ratio 3 starts at the 1.0 line");
        let p50 = bars_with_class(&doc, "bar p50");
        let x: f64 = p50[0].attribute("x").unwrap().parse().unwrap();
        assert!(x < x1, "p50 ratio 0.4 extends left of 1.0");
    }

    #[test]
    fn footprint_runs_get_rss_and_disk_bars() {
        use super::super::{build, tests::run};
        let fp = |label: &str, rss: u64, disk: u64| {
            run("footprint", "footprint", label, 10, 1, "ok")
                .with("rss_total_bytes", rss)
                .with("data_total_bytes", disk)
        };
        let r = build(
            vec![fp("etcd", 400, 800), fp("keel", 100, 400)],
            "d",
            "short",
            "keel",
            "etcd",
            None,
        );
        assert_eq!(r.ratios[0].rss_ratio, Some(0.25));
        let svg = chart(&r);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(bars_with_class(&doc, "bar rss").len(), 1);
        assert_eq!(bars_with_class(&doc, "bar disk").len(), 1);
    }

    #[test]
    fn case_names_are_escaped() {
        let mut r = sample();
        r.ratios[0].case = "a<b&c".into();
        let svg = chart(&r);
        assert!(roxmltree::Document::parse(&svg).is_ok());
        assert!(svg.contains("a&lt;b&amp;c"));
    }
}
