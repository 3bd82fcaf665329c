//! Output of `muxado bench`: the console table, JSON lines, the goal check of
//! issue 5 and the `--out DIR` files (results.json, results.md, SVG plots).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::bench::{Row, Scenario, System, ALL_SYSTEMS};

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn json_num(v: Option<f64>, prec: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or("null".into(), |v| format!("{v:.prec$}"))
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `tcp-uring` row of the same case and placement.
fn base<'a>(rows: &'a [Row], r: &Row) -> Option<&'a Row> {
    find(rows, r, System::TcpUring)
}

fn find<'a>(rows: &'a [Row], r: &Row, system: System) -> Option<&'a Row> {
    rows.iter()
        .find(|b| b.system == system && b.case == r.case && b.placement == r.placement)
}

fn ratio(rows: &[Row], r: &Row) -> Option<f64> {
    base(rows, r).map(|b| r.headline() / b.headline())
}

/// One JSON object per result.
pub fn json_line(r: &Row) -> String {
    format!(
        "{{\"scenario\":{},\"system\":{},\"placement\":{},\"streams\":{},\"msg_size\":{},\"seconds\":{:.3},\"gbit_s\":{:.3},\"ops_s\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"fairness\":{},\"cpu_s\":{:.3},\"bytes\":{},\"ops\":{}}}",
        json_str(r.case.scenario.name()),
        json_str(r.system.name()),
        json_str(&r.placement),
        r.case.streams,
        r.case.size,
        r.m.seconds,
        r.gbit_s(),
        r.ops_s(),
        json_num(r.quantile_us(0.5), 1),
        json_num(r.quantile_us(0.9), 1),
        json_num(r.quantile_us(0.99), 1),
        json_num(r.quantile_us(0.999), 1),
        json_num(r.m.fairness, 4),
        r.cpu_s,
        r.m.bytes,
        r.m.ops,
    )
}

/// The one-line result printed on stderr after each case.
pub fn summary(r: &Row) -> String {
    match r.case.scenario {
        Scenario::Bulk => format!(
            "{:.2} Gbit/s, fairness {}, cpu {:.2} s",
            r.gbit_s(),
            fmt_opt(r.m.fairness, 3),
            r.cpu_s
        ),
        _ => format!(
            "{:.0} ops/s, p50 {} µs, p99 {} µs, cpu {:.2} s",
            r.ops_s(),
            fmt_opt(r.quantile_us(0.5), 1),
            fmt_opt(r.quantile_us(0.99), 1),
            r.cpu_s
        ),
    }
}

const HEADER: [&str; 12] = [
    "case",
    "system",
    "place",
    "Gbit/s",
    "ops/s",
    "p50 µs",
    "p90 µs",
    "p99 µs",
    "p99.9 µs",
    "fair",
    "cpu s",
    "× tcp-uring",
];

fn cells(rows: &[Row], r: &Row) -> [String; 12] {
    let q = |q| fmt_opt(r.quantile_us(q), 1);
    let place = if r.placement.starts_with("client CPU0 /") {
        "split".to_string()
    } else if r.placement.starts_with("client+server") {
        "shared".to_string()
    } else {
        "remote".to_string()
    };
    [
        r.case.label(),
        r.system.name().to_string(),
        place,
        format!("{:.2}", r.gbit_s()),
        format!("{:.0}", r.ops_s()),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        fmt_opt(r.m.fairness, 3),
        format!("{:.2}", r.cpu_s),
        fmt_opt(ratio(rows, r), 2),
    ]
}

/// The summary table on stdout, then the goal check.
pub fn print_table(rows: &[Row]) {
    let widths = [13, 15, 6, 7, 9, 8, 8, 8, 9, 6, 6, 11];
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(widths).enumerate() {
            if i < 3 {
                let _ = write!(s, "{cell:<w$} ");
            } else {
                let _ = write!(s, "{cell:>w$} ");
            }
        }
        println!("{}", s.trim_end());
    };
    line(&HEADER.map(String::from));
    for r in rows {
        line(&cells(rows, r));
    }
    if let Some(p) = rows.first().map(|r| &r.placement) {
        println!("placement: {p}; cpu s = CPU time of the whole process (both ends)");
    }
    let goals = goals(rows);
    if !goals.is_empty() {
        println!();
        println!("goals (issue 5, ratios within this run):");
        for g in goals {
            println!(
                "  {:<4} {:<12} {:<34} {}",
                if g.met { "met" } else { "MISS" },
                g.case,
                g.what,
                g.measured
            );
        }
    }
}

pub struct Goal {
    pub case: String,
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// Checks issue 5's goals on the rows present (per placement).
pub fn goals(rows: &[Row]) -> Vec<Goal> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.system == System::Muxado) {
        let label = r.case.label();
        let mut ratio_goal = |other: System, min: f64| {
            if let Some(o) = find(rows, r, other) {
                let v = r.headline() / o.headline();
                out.push(Goal {
                    case: label.clone(),
                    what: format!("≥ {min}× {}", other.name()),
                    measured: format!("{v:.2}×"),
                    met: v >= min,
                });
            }
        };
        match (r.case.scenario, r.case.streams) {
            (Scenario::Bulk, 1) => {
                ratio_goal(System::TcpUring, 0.9);
                ratio_goal(System::NgrokMuxado, 2.0);
                ratio_goal(System::Yamux, 3.0);
            }
            (Scenario::Bulk, 64) => {
                ratio_goal(System::TcpUring, 1.0);
                if let Some(f) = r.m.fairness {
                    out.push(Goal {
                        case: label.clone(),
                        what: "fairness ≥ 0.95".into(),
                        measured: format!("{f:.3}"),
                        met: f >= 0.95,
                    });
                }
            }
            (Scenario::Rpc, 1) => {
                if let Some(b) = find(rows, r, System::TcpUring) {
                    for (q, name, max) in [(0.5, "p50", 1.15), (0.99, "p99", 1.3)] {
                        if let (Some(a), Some(c)) = (r.quantile_us(q), b.quantile_us(q)) {
                            let v = a / c;
                            out.push(Goal {
                                case: label.clone(),
                                what: format!("{name} ≤ {max}× tcp-uring"),
                                measured: format!("{v:.2}× ({a:.1} vs {c:.1} µs)"),
                                met: v <= max,
                            });
                        }
                    }
                }
            }
            (Scenario::Rpc, 64 | 1024) => {
                ratio_goal(System::NgrokMuxado, 5.0);
                ratio_goal(System::TcpUring, 2.0);
            }
            (Scenario::Open, _) => ratio_goal(System::NgrokMuxado, 10.0),
            _ => {}
        }
    }
    out
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]).map(|c| {
        // The results being written under perf/ do not make the code dirty.
        let dirty = command_output(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!perf",
            ],
        )
        .is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c} (with uncommitted changes)")
        } else {
            c
        }
    });
    vec![
        (
            "date".into(),
            command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        ),
        ("commit".into(), commit.unwrap_or_else(|| "unknown".into())),
        (
            "machine".into(),
            format!(
                "{cpus} CPU(s), {cpu}; {}",
                command_output("uname", &["-srm"]).unwrap_or_default()
            ),
        ),
        ("load average after the run".into(), load),
    ]
}

fn markdown(rows: &[Row], failures: &[String]) -> String {
    let mut md = String::from("# muxado bench results\n\n");
    for (k, v) in machine() {
        let _ = writeln!(md, "- {k}: {v}");
    }
    if let Some(p) = rows.first().map(|r| &r.placement) {
        let _ = writeln!(
            md,
            "- placement: {p}, the same for every system (engine cores or tokio threads pinned)"
        );
    }
    md.push_str("- cpu s: user + system CPU time of the whole process (client and server) during the case\n");
    md.push_str("- regenerate with `scripts/bench.sh`\n\n## Results\n\n");
    let _ = writeln!(md, "| {} |", HEADER.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        HEADER
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 3 { " --- |" } else { " ---: |" })
            .collect::<String>()
    );
    for r in rows {
        let _ = writeln!(md, "| {} |", cells(rows, r).join(" | "));
    }
    let goals = goals(rows);
    if !goals.is_empty() {
        md.push_str(
            "\n## Goals (issue 5)\n\n| case | goal | measured | |\n| --- | --- | --- | --- |\n",
        );
        for g in goals {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                g.case,
                g.what,
                g.measured,
                if g.met { "met" } else { "**missed**" }
            );
        }
    }
    if !failures.is_empty() {
        md.push_str("\n## Failed cases\n\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md.push_str("\n## Plots\n\n![throughput](throughput.svg)\n\n");
    for case in latency_cases(rows) {
        let _ = writeln!(md, "![{case} latency](latency-{}.svg)\n", file_label(&case));
    }
    md
}

fn file_label(case: &str) -> String {
    case.replace('/', "-")
}

fn latency_cases(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r.m.latency.is_some()) {
        if !out.contains(&r.case.label()) {
            out.push(r.case.label());
        }
    }
    out
}

/// Writes results.json, results.md and the SVG plots into `dir`.
pub fn write_dir(dir: &Path, rows: &[Row], failures: &[String]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = rows.iter().map(json_line).collect::<Vec<_>>().join(",\n  ");
    std::fs::write(dir.join("results.json"), format!("[\n  {json}\n]\n"))?;
    std::fs::write(dir.join("results.md"), markdown(rows, failures))?;
    std::fs::write(dir.join("throughput.svg"), throughput_svg(rows))?;
    for case in latency_cases(rows) {
        let path = dir.join(format!("latency-{}.svg", file_label(&case)));
        std::fs::write(path, latency_svg(rows, &case))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hand-written SVG.

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
fn throughput_svg(rows: &[Row]) -> String {
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
            .and_then(|r| ratio(rows, r).map(|v| (v, r)))
    };
    let max = cases
        .iter()
        .flat_map(|c| systems.iter().filter_map(|&s| ratio_of(c, s).map(|v| v.0)))
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
            if let Some((v, r)) = ratio_of(case, s) {
                let x = gx + si as f64 * 14.0;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {:.2}× ({})</title></rect>",
                    y(v),
                    (v / max * ph).max(0.5),
                    color(s),
                    case,
                    s.name(),
                    v,
                    summary(r)
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
fn latency_svg(rows: &[Row], case: &str) -> String {
    const QS: [f64; 9] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999];
    let sel: Vec<&Row> = rows
        .iter()
        .filter(|r| r.case.label() == case && r.m.latency.is_some())
        .collect();
    let series: Vec<(System, Vec<(f64, f64)>)> = sel
        .iter()
        .map(|r| {
            let pts = QS
                .iter()
                .filter_map(|&q| r.quantile_us(q).map(|v| ((1.0 / (1.0 - q)).log10(), v)))
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
