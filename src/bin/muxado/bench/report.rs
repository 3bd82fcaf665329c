//! Output of `muxado bench`: the per-run lines (stderr, `--json`), the
//! console table with the goal check, and the `--out DIR` files
//! (results.json, results.md, SVG plots from [`super::plots`]).

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::goals::goals;
use super::json;
use super::plots;
use super::stats::{self, Figure, Row, Sample, Spread};
use crate::model::{Endpoint, Placement, Scenario, System};

/// /proc/loadavg's three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Where and how a run was made: written into every results file.
pub struct Meta {
    pub fields: Vec<(&'static str, String)>,
    /// "split", "shared" or "remote <addr>" per placement.
    pub placement: String,
    /// `--busy-poll` was on (the latency-mode goal applies).
    pub busy_poll: bool,
}

impl Meta {
    pub fn collect(
        repeat: usize,
        placements: &[Placement],
        remote: Option<&Endpoint>,
        duration: Duration,
        load_before: String,
    ) -> Meta {
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
        let placement = match remote {
            Some(addr) => format!("client CPU0, remote server {addr}"),
            None => placements
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join("; "),
        };
        let fields = vec![
            (
                "date",
                command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            ),
            ("commit", commit.unwrap_or_else(|| "unknown".into())),
            ("machine", format!("{cpus} CPU(s), {cpu}")),
            (
                "kernel",
                command_output("uname", &["-srm"]).unwrap_or_else(|| "unknown".into()),
            ),
            ("placement", placement.clone()),
            ("repeat", repeat.to_string()),
            ("duration_s", format!("{:.3}", duration.as_secs_f64())),
            ("load_before", load_before),
            ("load_after", loadavg()),
        ];
        Meta {
            fields,
            placement,
            busy_poll: false,
        }
    }
}

fn place(p: Placement, remote: Option<&Endpoint>) -> &'static str {
    if remote.is_some() {
        "remote"
    } else {
        p.short()
    }
}

/// One JSON object per run (`--json`, on stdout as the runs finish).
pub fn json_line(r: &Row, round: usize, s: &Sample, remote: Option<&Endpoint>) -> String {
    format!(
        "{{\"scenario\":{},\"system\":{},\"placement\":{},\"round\":{},\"streams\":{},\"msg_size\":{},\"seconds\":{:.3},\"gbit_s\":{:.3},\"ops_s\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"fairness\":{},\"cpu_s\":{:.3},\"bytes\":{},\"ops\":{}}}",
        json::str(r.case.scenario.name()),
        json::str(r.system.name()),
        json::str(place(r.placement, remote)),
        round + 1,
        r.case.streams,
        r.case.size,
        s.m.seconds,
        s.m.gbit_s(),
        s.m.ops_s(),
        json::num(s.m.quantile_us(0.5), 1),
        json::num(s.m.quantile_us(0.9), 1),
        json::num(s.m.quantile_us(0.99), 1),
        json::num(s.m.quantile_us(0.999), 1),
        json::num(s.m.fairness, 4),
        s.cpu_s,
        s.m.bytes,
        s.m.ops,
    )
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

/// The one-line result printed on stderr after each run.
pub fn summary(scenario: Scenario, s: &Sample) -> String {
    let lat = format!(
        "p50 {} µs, p99 {} µs",
        fmt_opt(s.m.quantile_us(0.5), 1),
        fmt_opt(s.m.quantile_us(0.99), 1)
    );
    match scenario {
        Scenario::Bulk => format!(
            "{:.2} Gbit/s, fairness {}, cpu {:.2} s",
            s.m.gbit_s(),
            fmt_opt(s.m.fairness, 3),
            s.cpu_s
        ),
        Scenario::Mixed => format!(
            "{:.2} Gbit/s beside rpc {lat}, cpu {:.2} s",
            s.m.gbit_s(),
            s.cpu_s
        ),
        _ => format!("{:.0} ops/s, {lat}, cpu {:.2} s", s.m.ops_s(), s.cpu_s),
    }
}

const HEADER: [&str; 12] = [
    "case",
    "system",
    "place",
    "Gbit/s",
    "ops/s",
    "p50 µs",
    "p99 µs",
    "fair",
    "cpu s",
    "× tcp-uring",
    "× tcp-best",
    "runs",
];

fn spread_cell(s: Option<Spread>, prec: usize) -> String {
    s.map_or("-".into(), |s| s.fmt(prec))
}

fn cells(rows: &[Row], r: &Row, remote: Option<&Endpoint>) -> [String; 12] {
    let f = |fig: Figure, prec| spread_cell(r.spread(fig), prec);
    let ok = r.ok_runs();
    [
        r.case.label(),
        r.system.name().to_string(),
        place(r.placement, remote).to_string(),
        f(stats::gbit_s, 2),
        f(stats::ops_s, 0),
        f(stats::p50, 1),
        f(stats::p99, 1),
        f(stats::fairness, 3),
        f(stats::cpu_s, 2),
        spread_cell(stats::ratio_to(rows, r, System::TcpUring), 2),
        spread_cell(stats::ratio_to_tcp_best(rows, r), 2),
        if ok == r.samples.len() {
            ok.to_string()
        } else {
            format!("{ok}/{} FAILED", r.samples.len())
        },
    ]
}

/// What differs between the systems and stays, named next to the table.
const NOTES: &[&str] = &[
    "figures: median (min–max) over the rounds; ratios are paired within a round, then summarised",
    "tcp-best: the best of tcp-uring, tcp-tokio and tcp-tokio-uring in the same round",
    "cpu s: user + system CPU time of the whole process (client and server) during the run",
    "windows: ours auto-tunes a stream to 4 MiB while it is alone on its session (beside another reading stream it stays at 256 KiB); ngrok-muxado (no auto-tuning) is given a fixed 4 MiB (1 MiB for bulk/64: 2 MiB and more stall its sessions); yamux auto-tunes (to 16 MiB) with no connection-wide bound",
    "sinks: muxado and tcp-uring count received bytes in place (read_with, multishot chunks); the tokio systems (muxado-tokio among them) copy into a (pooled) buffer, as AsyncRead offers nothing else",
    "plain-TCP systems carry each stream on its own connection (mixed: two connections)",
    "bulk senders: muxado and muxado-tokio hand their payload by reference (write_all_bytes with one shared Bytes; the frames go out vectored beside their headers, no user-space copy), as tcp-uring sends from its own buffer with no user-space copy; the other systems' APIs take &[u8] and copy it into their frame or socket buffers",
];

/// Named next to the table when it has `+tls` rows.
const TLS_NOTE: &str = "+tls: the system over TLS 1.3 (rustls on aws-lc-rs; one self-signed certificate and one rustls configuration for every end: the engine's sans-IO TlsStream for muxado+tls, tokio-rustls for the others), with the same windows and buffers as its plain row; the handshake is part of connecting, outside the measured time except in connect";

/// The notes for these rows.
fn notes(rows: &[Row]) -> impl Iterator<Item = &'static str> {
    let tls = rows.iter().any(|r| r.system.tls());
    NOTES.iter().copied().chain(tls.then_some(TLS_NOTE))
}

/// The summary table on stdout, then the goal check.
pub fn print_table(rows: &[Row], meta: &Meta, remote: Option<&Endpoint>) {
    let table: Vec<[String; 12]> = std::iter::once(HEADER.map(String::from))
        .chain(rows.iter().map(|r| cells(rows, r, remote)))
        .collect();
    let mut widths = [0usize; 12];
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &table {
        let mut s = String::new();
        for (i, (cell, &w)) in row.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i < 3 {
                let _ = write!(s, "{cell}{} ", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{cell} ", " ".repeat(pad));
            }
        }
        println!("{}", s.trim_end());
    }
    println!("placement: {}", meta.placement);
    for n in notes(rows) {
        println!("{n}");
    }
    let goals = goals(rows, meta.busy_poll);
    if !goals.is_empty() {
        println!();
        println!("goals (medians of ratios paired within a round):");
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

fn markdown(rows: &[Row], meta: &Meta, remote: Option<&Endpoint>) -> String {
    let mut md = String::from("# muxado bench results\n\n");
    for (k, v) in &meta.fields {
        let _ = writeln!(md, "- {k}: {v}");
    }
    for n in notes(rows) {
        let _ = writeln!(md, "- {n}");
    }
    md.push_str("- regenerate with `scripts/bench.sh`\n\n## Results\n\n");
    let _ = writeln!(md, "| {} |", HEADER.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        (0..HEADER.len())
            .map(|i| if i < 3 { " --- |" } else { " ---: |" })
            .collect::<String>()
    );
    for r in rows {
        let _ = writeln!(md, "| {} |", cells(rows, r, remote).join(" | "));
    }
    let goals = goals(rows, meta.busy_poll);
    if !goals.is_empty() {
        md.push_str("\n## Goals\n\n| case | goal | measured | |\n| --- | --- | --- | --- |\n");
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
    let failures: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| format!("{} {}: {e}", r.case.label(), r.system.name()))
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\n## Failed runs\n\n");
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

fn spread_json(s: Option<Spread>, prec: usize) -> String {
    match s {
        None => "null".into(),
        Some(s) => format!(
            "{{\"median\":{},\"min\":{},\"max\":{},\"n\":{}}}",
            json::num(Some(s.median), prec),
            json::num(Some(s.min), prec),
            json::num(Some(s.max), prec),
            s.n
        ),
    }
}

/// results.json: the metadata, every row with its spreads and its runs, and
/// the goals. `--baseline` reads it back.
fn results_json(rows: &[Row], meta: &Meta, remote: Option<&Endpoint>) -> String {
    let mut out = String::from("{\n  \"meta\": {");
    let fields: Vec<String> = meta
        .fields
        .iter()
        .map(|(k, v)| format!("{}:{}", json::str(k), json::str(v)))
        .collect();
    out.push_str(&fields.join(","));
    out.push_str("},\n  \"rows\": [\n");
    let figures: [(&str, Figure, usize); 8] = [
        ("gbit_s", stats::gbit_s, 3),
        ("ops_s", stats::ops_s, 1),
        ("p50_us", stats::p50, 1),
        ("p90_us", stats::p90, 1),
        ("p99_us", stats::p99, 1),
        ("p999_us", stats::p999, 1),
        ("fairness", stats::fairness, 4),
        ("cpu_s", stats::cpu_s, 3),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut o = format!(
                "    {{\"scenario\":{},\"system\":{},\"placement\":{},\"streams\":{},\"msg_size\":{},\"runs\":{},\"ok\":{}",
                json::str(r.case.scenario.name()),
                json::str(r.system.name()),
                json::str(place(r.placement, remote)),
                r.case.streams,
                r.case.size,
                r.samples.len(),
                r.ok_runs()
            );
            for (name, f, prec) in figures {
                let _ = write!(o, ",\"{name}\":{}", spread_json(r.spread(f), prec));
            }
            let _ = write!(
                o,
                ",\"x_tcp_uring\":{},\"x_tcp_best\":{},\"errors\":[{}],\"samples\":[{}]}}",
                spread_json(stats::ratio_to(rows, r, System::TcpUring), 3),
                spread_json(stats::ratio_to_tcp_best(rows, r), 3),
                r.errors.iter().map(|e| json::str(e)).collect::<Vec<_>>().join(","),
                r.samples
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s
                        .as_ref()
                        .map_or("null".into(), |s| json_line(r, i, s, remote)))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            o
        })
        .collect();
    out.push_str(&lines.join(",\n"));
    out.push_str("\n  ],\n  \"goals\": [\n");
    let goals: Vec<String> = goals(rows, meta.busy_poll)
        .iter()
        .map(|g| {
            format!(
                "    {{\"case\":{},\"goal\":{},\"measured\":{},\"met\":{}}}",
                json::str(&g.case),
                json::str(&g.what),
                json::str(&g.measured),
                g.met
            )
        })
        .collect();
    out.push_str(&goals.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

fn file_label(case: &str) -> String {
    case.replace('/', "-")
}

fn latency_cases(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| plots::has_latency(r)) {
        if !out.contains(&r.case.label()) {
            out.push(r.case.label());
        }
    }
    out
}

/// Writes results.json, results.md and the SVG plots into `dir`.
pub fn write_dir(
    dir: &Path,
    rows: &[Row],
    meta: &Meta,
    remote: Option<&Endpoint>,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), results_json(rows, meta, remote))?;
    std::fs::write(dir.join("results.md"), markdown(rows, meta, remote))?;
    std::fs::write(dir.join("throughput.svg"), plots::throughput_svg(rows))?;
    for case in latency_cases(rows) {
        let path = dir.join(format!("latency-{}.svg", file_label(&case)));
        std::fs::write(path, plots::latency_svg(rows, &case))?;
    }
    Ok(())
}
