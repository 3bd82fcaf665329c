//! The goals the report checks (issues 5, 9 and 12), on ratios paired within a
//! round. A goal whose other side was not selected is not shown; a goal whose
//! side ran but failed is shown as missed, never left out.

use super::stats::{self, find, has_tcp, paired, Figure, Row, Spread};
use crate::model::{Scenario, System};

/// One goal of one case.
pub struct Goal {
    pub case: String,
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// What a goal compares, once its rows are found.
enum Check {
    /// The paired ratio's median must be at least this.
    AtLeast(f64),
    /// The paired ratio's median must be at most this.
    AtMost(f64),
}

fn judge(case: &str, what: String, ratio: Option<Spread>, check: Check) -> Goal {
    match ratio {
        None => Goal {
            case: case.to_string(),
            what,
            measured: "no result (a run failed)".into(),
            met: false,
        },
        Some(s) => Goal {
            case: case.to_string(),
            met: match check {
                Check::AtLeast(min) => s.median >= min,
                Check::AtMost(max) => s.median <= max,
            },
            what,
            measured: format!("{}×", s.fmt(2)),
        },
    }
}

/// Checks every goal that applies to the muxado rows present; `busy_poll`:
/// the engines ran in latency mode (`--busy-poll`), which has its own goal.
pub fn goals(rows: &[Row], busy_poll: bool) -> Vec<Goal> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.system == System::Muxado) {
        let label = r.case.label();
        let head = r.headline();
        let mut vs = |other: System, min: f64| {
            if let Some(o) = find(rows, r, other) {
                let what = format!("≥ {min}× {}", other.name());
                out.push(judge(
                    &label,
                    what,
                    paired(r, head, o, head),
                    Check::AtLeast(min),
                ));
            }
        };
        match (r.case.scenario, r.case.streams) {
            (Scenario::Bulk, 1) => {
                vs(System::TcpUring, 0.9);
                vs(System::NgrokMuxado, 2.0);
                vs(System::Yamux, 3.0);
            }
            (Scenario::Bulk, 64) => vs(System::TcpUring, 1.0),
            (Scenario::Rpc, 64 | 1024) => {
                vs(System::NgrokMuxado, 5.0);
                vs(System::TcpUring, 2.0);
            }
            (Scenario::Open, _) => vs(System::NgrokMuxado, 10.0),
            (Scenario::Connect, _) => vs(System::NgrokMuxado, 3.0),
            _ => {}
        }
        // Against tcp-best: the best plain-TCP system of each round.
        let best_goal = match (r.case.scenario, r.case.streams) {
            (Scenario::Bulk, 64) => Some(1.2),
            (Scenario::Bulk, 1) => Some(1.0),
            (Scenario::Rpc, 64) => Some(2.0),
            (Scenario::Connect, _) => Some(0.9),
            _ => None,
        };
        if let (Some(min), true) = (best_goal, has_tcp(rows, r)) {
            out.push(judge(
                &label,
                format!("≥ {min}× tcp-best"),
                stats::ratio_to_tcp_best(rows, r),
                Check::AtLeast(min),
            ));
        }
        if (r.case.scenario, r.case.streams) == (Scenario::Bulk, 64) {
            out.push(match r.spread(stats::fairness) {
                Some(f) => Goal {
                    case: label.clone(),
                    what: "fairness ≥ 0.95".into(),
                    measured: f.fmt(3),
                    met: f.median >= 0.95,
                },
                None => judge(&label, "fairness ≥ 0.95".into(), None, Check::AtLeast(0.95)),
            });
        }
        if (r.case.scenario, r.case.streams) == (Scenario::Rpc, 1) {
            if let Some(t) = find(rows, r, System::TcpUring) {
                for (f, name, max) in [
                    (stats::p50 as Figure, "p50", 1.15),
                    (stats::p99, "p99", 1.3),
                ] {
                    let what = format!("{name} ≤ {max}× tcp-uring");
                    out.push(judge(&label, what, paired(r, f, t, f), Check::AtMost(max)));
                }
            }
            // Latency mode: spinning instead of sleeping saves the cross-core
            // wake-up that a sleeping runtime such as tokio pays.
            if let (true, Some(t)) = (busy_poll, find(rows, r, System::TcpTokio)) {
                let p50 = stats::p50 as Figure;
                let what = "p50 ≤ 0.5× tcp-tokio (busy-poll)".to_string();
                out.push(judge(
                    &label,
                    what,
                    paired(r, p50, t, p50),
                    Check::AtMost(0.5),
                ));
            }
        }
        if r.case.scenario == Scenario::Mixed {
            mixed_goals(rows, r, &label, &mut out);
        }
    }
    tokio_goals(rows, &mut out);
    tls_goals(rows, &mut out);
    out
}

/// muxado over TLS on the engine (rustls sans-IO) against ngrok's crate over
/// tokio-rustls, with the same certificate and rustls configuration:
/// bulk/1 ≥ 1.3× (issue 9).
fn tls_goals(rows: &[Row], out: &mut Vec<Goal>) {
    for r in rows.iter().filter(|r| r.system == System::MuxadoTls) {
        let min = match (r.case.scenario, r.case.streams) {
            (Scenario::Bulk, 1) => 1.3,
            _ => continue,
        };
        let head = r.headline();
        if let Some(o) = find(rows, r, System::NgrokMuxadoTls) {
            out.push(judge(
                &r.case.label(),
                format!("muxado+tls ≥ {min}× {}", o.system.name()),
                paired(r, head, o, head),
                Check::AtLeast(min),
            ));
        }
    }
}

/// muxado-tokio (our core on the tokio driver) against the other muxado-like
/// systems on the same tokio runtimes: bulk/1 ≥ 1.5×, rpc/64 ≥ 3×, open ≥ 3×
/// ngrok-muxado and yamux (issue 9).
fn tokio_goals(rows: &[Row], out: &mut Vec<Goal>) {
    for r in rows.iter().filter(|r| r.system == System::MuxadoTokio) {
        let min = match (r.case.scenario, r.case.streams) {
            (Scenario::Bulk, 1) => 1.5,
            (Scenario::Rpc, 64) | (Scenario::Open, _) => 3.0,
            _ => continue,
        };
        let label = r.case.label();
        let head = r.headline();
        for other in [System::NgrokMuxado, System::Yamux] {
            if let Some(o) = find(rows, r, other) {
                out.push(judge(
                    &label,
                    format!("muxado-tokio ≥ {min}× {}", other.name()),
                    paired(r, head, o, head),
                    Check::AtLeast(min),
                ));
            }
        }
    }
}

/// mixed: muxado's rpc p99 beside a bulk stream ≤ 2× its p99 alone (rpc/1
/// of the same round) and ≤ 0.5× the p99 of ngrok-muxado and yamux here.
fn mixed_goals(rows: &[Row], r: &Row, label: &str, out: &mut Vec<Goal>) {
    let p99 = stats::p99 as Figure;
    let alone = rows.iter().find(|a| {
        a.system == System::Muxado
            && a.placement == r.placement
            && a.case.scenario == Scenario::Rpc
            && a.case.streams == 1
    });
    if let Some(a) = alone {
        let what = "rpc p99 ≤ 2× muxado's rpc/1 p99".to_string();
        out.push(judge(
            label,
            what,
            paired(r, p99, a, p99),
            Check::AtMost(2.0),
        ));
    }
    for other in [System::NgrokMuxado, System::Yamux] {
        if let Some(o) = find(rows, r, other) {
            let what = format!("rpc p99 ≤ 0.5× {}'s", other.name());
            out.push(judge(
                label,
                what,
                paired(r, p99, o, p99),
                Check::AtMost(0.5),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{new_histogram, Case, Measurement, Placement};
    use stats::Sample;

    fn row(system: System, gbit: Option<f64>) -> Row {
        let case = Case {
            scenario: Scenario::Bulk,
            streams: 1,
            size: 1000,
        };
        let mut r = Row::new(case, system, Placement::Split, 1);
        r.samples[0] = gbit.map(|g| Sample {
            m: Measurement {
                bytes: (g * 1e9 / 8.0) as u64,
                ops: 1,
                seconds: 1.0,
                latency: Some(new_histogram()),
                fairness: Some(1.0),
            },
            cpu_s: 0.0,
        });
        r
    }

    #[test]
    fn a_failed_peer_is_a_missed_goal() {
        let rows = vec![
            row(System::Muxado, Some(10.0)),
            row(System::TcpUring, Some(5.0)),
            row(System::NgrokMuxado, None),
        ];
        let g = goals(&rows, false);
        let vs_tcp = g.iter().find(|g| g.what == "≥ 0.9× tcp-uring").unwrap();
        assert!(vs_tcp.met, "{}", vs_tcp.measured);
        assert_eq!(vs_tcp.measured, "2.00×");
        let vs_ngrok = g.iter().find(|g| g.what == "≥ 2× ngrok-muxado").unwrap();
        assert!(!vs_ngrok.met);
        assert!(vs_ngrok.measured.contains("no result"));
        // yamux was not selected: its goal is not shown.
        assert!(!g.iter().any(|g| g.what.contains("yamux")));
        // tcp-best is tcp-uring here (the only plain-TCP row).
        let best = g.iter().find(|g| g.what == "≥ 1× tcp-best").unwrap();
        assert!(best.met);
    }

    #[test]
    fn the_tls_goal_compares_the_tls_rows() {
        let goal = "muxado+tls ≥ 1.3× ngrok-muxado+tls";
        let rows = vec![
            row(System::MuxadoTls, Some(6.5)),
            row(System::NgrokMuxadoTls, Some(5.0)),
            // The plain rows do not stand in for the TLS ones.
            row(System::NgrokMuxado, Some(100.0)),
        ];
        let g = goals(&rows, false);
        let tls = g.iter().find(|g| g.what == goal).expect("goal shown");
        assert!(tls.met, "{}", tls.measured);
        assert_eq!(tls.measured, "1.30×");
        let slow = vec![
            row(System::MuxadoTls, Some(6.0)),
            row(System::NgrokMuxadoTls, Some(5.0)),
        ];
        assert!(
            !goals(&slow, false)
                .iter()
                .find(|g| g.what == goal)
                .unwrap()
                .met
        );
        // Without the peer's TLS row the goal is not shown.
        let alone = vec![row(System::MuxadoTls, Some(6.0))];
        assert!(!goals(&alone, false).iter().any(|g| g.what == goal));
    }

    fn rpc1(system: System, p50_ns: u64) -> Row {
        let case = Case {
            scenario: Scenario::Rpc,
            streams: 1,
            size: 64,
        };
        let mut hist = new_histogram();
        hist.record(p50_ns).unwrap();
        let mut r = Row::new(case, system, Placement::Split, 1);
        r.samples[0] = Some(Sample {
            m: Measurement {
                bytes: 64,
                ops: 1,
                seconds: 1.0,
                latency: Some(hist),
                fairness: None,
            },
            cpu_s: 0.0,
        });
        r
    }

    #[test]
    fn the_latency_mode_goal_applies_only_with_busy_poll() {
        let rows = vec![rpc1(System::Muxado, 9_000), rpc1(System::TcpTokio, 50_000)];
        let name = "p50 ≤ 0.5× tcp-tokio (busy-poll)";
        assert!(!goals(&rows, false).iter().any(|g| g.what == name));
        let on = goals(&rows, true);
        let g = on.iter().find(|g| g.what == name).expect("goal shown");
        assert!(g.met, "{}", g.measured);
        let slow = vec![rpc1(System::Muxado, 40_000), rpc1(System::TcpTokio, 50_000)];
        let missed = goals(&slow, true);
        assert!(!missed.iter().find(|g| g.what == name).unwrap().met);
    }
}
