//! Writing the results: figures from samples, markdown tables, and the brownout chart as an SVG any
//! browser shows (and GitHub renders), drawn by hand to need no plotting library.

use crate::loadgen::{quantile, Class, Sample};
use std::fmt::Write;
use std::time::Duration;

/// Success rate and latency quantiles of a set of samples.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub n: usize,
    pub success: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

pub fn figures<'a>(samples: impl Iterator<Item = &'a Sample>) -> Figures {
    let mut lat: Vec<Duration> = Vec::new();
    let mut ok = 0;
    for s in samples {
        lat.push(s.latency);
        if (200..400).contains(&s.status) {
            ok += 1;
        }
    }
    lat.sort();
    Figures {
        n: lat.len(),
        success: if lat.is_empty() {
            0.0
        } else {
            ok as f64 / lat.len() as f64
        },
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        p999: quantile(&lat, 0.999),
        max: lat.last().copied().unwrap_or_default(),
    }
}

pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

pub fn pct(v: f64) -> String {
    if (0.9995..1.0).contains(&v) {
        format!("{:.2}%", v * 100.0)
    } else {
        format!("{:.1}%", v * 100.0)
    }
}

/// Per second from `from`: (success rate, p99) of the samples due in that second.
pub fn per_second(
    samples: &[Sample],
    seconds: usize,
    class: Option<Class>,
) -> Vec<(f64, Duration)> {
    (0..seconds)
        .map(|s| {
            let lo = Duration::from_secs(s as u64);
            let hi = lo + Duration::from_secs(1);
            let f = figures(
                samples
                    .iter()
                    .filter(|x| x.due >= lo && x.due < hi && class.is_none_or(|c| x.class == c)),
            );
            (f.success, f.p99)
        })
        .collect()
}

const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];

/// Two panels, one line per series: success rate per second (top) and p99 per second on a log
/// scale (bottom). `fault_at` marks when the fault began.
pub fn chart(title: &str, series: &[(String, Vec<(f64, Duration)>)], fault_at: usize) -> String {
    let (w, h) = (900.0, 620.0);
    let (left, right) = (70.0, 170.0);
    let pw = w - left - right;
    let panel = |top: f64| (top, top + 220.0);
    let (t1, b1) = panel(50.0);
    let (t2, b2) = panel(330.0);
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2);
    let x = |i: usize| left + pw * i as f64 / (n - 1) as f64;
    let (lo_ms, hi_ms) = (0.1f64, 5000.0f64);
    let y_lat = |d: Duration| {
        let v = (d.as_secs_f64() * 1000.0).clamp(lo_ms, hi_ms);
        b2 - (b2 - t2) * (v.log10() - lo_ms.log10()) / (hi_ms.log10() - lo_ms.log10())
    };
    let y_ok = |r: f64| b1 - (b1 - t1) * r.clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="25" font-size="16" font-weight="bold">{title}</text>"#
    );
    for (top, bottom, label) in [
        (t1, b1, "success rate per second"),
        (t2, b2, "p99 latency per second (ms, log scale)"),
    ] {
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{}" fill="none" stroke="#999"/>"##,
            bottom - top
        );
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="{}" fill="#333">{label}</text>"##,
            top - 6.0
        );
    }
    for r in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_ok(r);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{:.0}%</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            r * 100.0
        );
    }
    for v in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let y = y_lat(Duration::from_secs_f64(v / 1000.0));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0
        );
    }
    for i in (0..n).step_by(5) {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{i}s</text>"#,
            x(i),
            b2 + 16.0
        );
    }
    let fx = x(fault_at);
    let _ = writeln!(
        s,
        r##"<line x1="{fx}" x2="{fx}" y1="{t1}" y2="{b2}" stroke="#666" stroke-dasharray="4 4"/><text x="{}" y="{}" fill="#666">fault</text>"##,
        fx + 4.0,
        t1 + 14.0
    );
    for (k, (name, points)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        // Earlier lines wider, so that one hidden under a later one still shows at its edges.
        let width = 2.0 + 1.5 * (series.len() - 1 - k) as f64;
        let line = |f: &dyn Fn(&(f64, Duration)) -> f64| {
            points
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{:.1},{:.1}", x(i), f(p)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#,
            line(&|p| y_ok(p.0))
        );
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#,
            line(&|p| y_lat(p.1))
        );
        let ly = t1 + 20.0 + 22.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            w - right + 15.0,
            w - right + 40.0,
            w - right + 46.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}
