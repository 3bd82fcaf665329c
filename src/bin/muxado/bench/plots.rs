//! The SVG plots of `--out DIR`, hand-written: throughput ratios to
//! tcp-uring (medians of the paired ratios) and latency percentile curves
//! (medians over the rounds).

use std::fmt::Write as _;

use super::stats::{self, Row, Spread};
use crate::model::{System, ALL_SYSTEMS};

/// The median over the rounds of `r`'s latency quantile `q`, in µs.
fn quantile_us(r: &Row, q: f64) -> Option<f64> {
    Spread::of(
        r.samples
            .iter()
            .flatten()
            .filter_map(|s| s.m.quantile_us(q)),
    )
    .map(|s| s.median)
}

/// Whether `r` measured latency.
pub fn has_latency(r: &Row) -> bool {
    r.samples.iter().flatten().any(|s| s.m.latency.is_some())
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

fn color(s: System) -> &'static str {
    let i = ALL_SYSTEMS.iter().position(|&x| x == s).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn svg_open(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    )
}

fn legend(svg: &mut String, systems: &[System], x: f64, y: f64) {
    for (i, s) in systems.iter().enumerate() {
        let yy = y + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            yy - 10.0,
            color(*s),
            x + 16.0,
            yy,
            s.name()
        );
    }
}

/// Grouped bars: each case's headline figure as a ratio to tcp-uring.
pub fn throughput_svg(rows: &[Row]) -> String {
    let mut cases: Vec<String> = Vec::new();
    let mut systems: Vec<System> = Vec::new();
    for r in rows {
        if !cases.contains(&r.case.label()) {
            cases.push(r.case.label());
        }
        if !systems.contains(&r.system) {
            systems.push(r.system);
        }
    }
    let ratio_of = |case: &str, s: System| {
        rows.iter()
            .find(|r| r.case.label() == case && r.system == s)
            .and_then(|r| stats::ratio_to(rows, r, System::TcpUring).map(|v| (v, r)))
    };
    let max = cases
        .iter()
        .flat_map(|c| {
            systems
                .iter()
                .filter_map(|&s| ratio_of(c, s).map(|v| v.0.median))
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let (left, top, ph) = (60.0, 40.0, 300.0);
    let group = (systems.len() as f64 * 14.0 + 20.0).max(90.0);
    let w = left + group * cases.len() as f64 + 170.0;
    let h = top + ph + 70.0;
    let mut svg = svg_open(
        w,
        h,
        "Throughput relative to tcp-uring (bulk: Gbit/s, others: ops/s; higher is better)",
    );
    let y = |v: f64| top + ph - v / max * ph;
    let step = if max > 8.0 {
        2.0
    } else if max > 3.0 {
        1.0
    } else {
        0.25
    };
    let mut t = 0.0;
    while t <= max {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{t}×</text>",
            x2 = w - 170.0,
            yy = y(t),
            tx = left - 4.0,
            ty = y(t) + 4.0
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
        x2 = w - 170.0,
        yy = y(1.0)
    );
    for (ci, case) in cases.iter().enumerate() {
        let gx = left + ci as f64 * group + 10.0;
        for (si, &s) in systems.iter().enumerate() {
            if let Some((ratio, _)) = ratio_of(case, s) {
                let v = ratio.median;
                let x = gx + si as f64 * 14.0;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}×</title></rect>",
                    y(v),
                    (v / max * ph).max(0.5),
                    color(s),
                    case,
                    s.name(),
                    ratio.fmt(2)
                );
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{case}</text>",
            gx + systems.len() as f64 * 7.0,
            top + ph + 18.0
        );
    }
    legend(&mut svg, &systems, w - 150.0, top + 20.0);
    svg.push_str("</svg>\n");
    svg
}

/// Latency percentile curves of one case, one line per system (log scales).
pub fn latency_svg(rows: &[Row], case: &str) -> String {
    const QS: [f64; 9] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999];
    let sel: Vec<&Row> = rows
        .iter()
        .filter(|r| r.case.label() == case && has_latency(r))
        .collect();
    let series: Vec<(System, Vec<(f64, f64)>)> = sel
        .iter()
        .map(|r| {
            let pts = QS
                .iter()
                .filter_map(|&q| quantile_us(r, q).map(|v| ((1.0 / (1.0 - q)).log10(), v)))
                .collect();
            (r.system, pts)
        })
        .collect();
    let (mut lo, mut hi) = (f64::MAX, 1.0f64);
    for (_, pts) in &series {
        for &(_, v) in pts {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    let lo = 10f64.powf(lo.max(0.1).log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    let (left, top, pw, ph) = (70.0, 40.0, 520.0, 320.0);
    let w = left + pw + 170.0;
    let h = top + ph + 60.0;
    let mut svg = svg_open(
        w,
        h,
        &format!("{case}: latency by percentile (µs, log scale)"),
    );
    let xmax = (1.0f64 / (1.0 - 0.9999)).log10();
    let x = |p: f64| left + (p - (2.0f64).log10()) / (xmax - (2.0f64).log10()) * pw;
    let y = |v: f64| top + ph - (v.log10() - lo.log10()) / (hi.log10() - lo.log10()) * ph;
    let mut d = lo;
    while d <= hi * 1.0001 {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{d}</text>",
            x2 = left + pw,
            yy = y(d),
            tx = left - 4.0,
            ty = y(d) + 4.0
        );
        d *= 10.0;
    }
    for (q, name) in [
        (0.5, "p50"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        let xx = x((1.0f64 / (1.0 - q)).log10());
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            top + ph,
            top + ph + 18.0
        );
    }
    for (s, pts) in &series {
        let path: Vec<String> = pts
            .iter()
            .map(|&(p, v)| format!("{:.1},{:.1}", x(p), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            color(*s),
            path.join(" "),
            s.name()
        );
    }
    let systems: Vec<System> = series.iter().map(|(s, _)| *s).collect();
    legend(&mut svg, &systems, left + pw + 20.0, top + 20.0);
    svg.push_str("</svg>\n");
    svg
}
