//! `--baseline FILE.json`: compares this run with a saved results.json.
//!
//! A figure is flagged only when its change lies outside both runs' spread:
//! the new median outside the old min–max, and the old median outside the
//! new min–max. With one round per run every change is outside, so compare
//! runs made with `--repeat 3` or more.

use std::path::Path;

use super::json::{self, Value};
use super::stats::{self, Figure, Row, Spread};
use crate::model::Scenario;

/// One row of the saved file: its key and its figures.
pub struct BaseRow {
    key: (String, String, String, usize, usize),
    figures: Value,
}

/// Reads a results.json written by `--out`.
pub fn load(path: &Path) -> Result<Vec<BaseRow>, String> {
    const MAX: u64 = 64 << 20;
    let len = std::fs::metadata(path)
        .map_err(|e| format!("--baseline {}: {e}", path.display()))?
        .len();
    if len > MAX {
        return Err(format!("--baseline {}: larger than 64 MiB", path.display()));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--baseline {}: {e}", path.display()))?;
    let doc = json::parse(&text).map_err(|e| format!("--baseline {}: {e}", path.display()))?;
    let rows = doc.get("rows").and_then(Value::as_array).ok_or_else(|| {
        format!(
            "--baseline {}: no \"rows\" (not a results.json of --out)",
            path.display()
        )
    })?;
    rows.iter()
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
            let n = |k: &str| r.get(k).and_then(Value::as_f64).map(|v| v as usize);
            match (
                s("scenario"),
                s("system"),
                s("placement"),
                n("streams"),
                n("msg_size"),
            ) {
                (Some(a), Some(b), Some(c), Some(d), Some(e)) => Ok(BaseRow {
                    key: (a, b, c, d, e),
                    figures: r.clone(),
                }),
                _ => Err(format!(
                    "--baseline {}: a row lacks its key fields",
                    path.display()
                )),
            }
        })
        .collect()
}

fn spread_of(v: &Value, name: &str) -> Option<Spread> {
    let o = v.get(name)?;
    Some(Spread {
        median: o.get("median")?.as_f64()?,
        min: o.get("min")?.as_f64()?,
        max: o.get("max")?.as_f64()?,
        n: o.get("n")?.as_f64()? as usize,
    })
}

/// One compared figure.
pub struct Diff {
    pub what: String,
    pub old: Spread,
    pub new: Spread,
    pub regression: bool,
    pub improvement: bool,
}

/// Whether `new` is worse than `old` beyond both spreads (`higher`: higher is better).
fn beyond(old: &Spread, new: &Spread, higher: bool) -> (bool, bool) {
    let lower_out = new.median < old.min && old.median > new.max;
    let upper_out = new.median > old.max && old.median < new.min;
    if higher {
        (lower_out, upper_out)
    } else {
        (upper_out, lower_out)
    }
}

/// Compares the headline (higher is better) and, where measured, the p99
/// latency (lower is better) of every row found in both runs.
pub fn compare(base: &[BaseRow], rows: &[Row]) -> Vec<Diff> {
    let mut out = Vec::new();
    for r in rows {
        let place = r.placement.short();
        let Some(b) = base.iter().find(|b| {
            b.key.0 == r.case.scenario.name()
                && b.key.1 == r.system.name()
                && (b.key.2 == place || b.key.2 == "remote")
                && b.key.3 == r.case.streams
                && b.key.4 == r.case.size
        }) else {
            continue;
        };
        let head: (&str, Figure) = if r.case.scenario.is_bulk() {
            ("gbit_s", stats::gbit_s)
        } else {
            ("ops_s", stats::ops_s)
        };
        let mut checks = vec![(head.0, head.1, true)];
        if r.case.scenario != Scenario::Bulk {
            checks.push(("p99_us", stats::p99, false));
        }
        for (name, f, higher) in checks {
            if let (Some(old), Some(new)) = (spread_of(&b.figures, name), r.spread(f)) {
                let (regression, improvement) = beyond(&old, &new, higher);
                out.push(Diff {
                    what: format!("{} {} {name}", r.case.label(), r.system.name()),
                    old,
                    new,
                    regression,
                    improvement,
                });
            }
        }
    }
    out
}

/// Prints the flagged figures (and a count of the unchanged ones).
pub fn print(diffs: &[Diff]) {
    println!();
    println!("against the baseline (flagged only outside both runs' min–max):");
    let mut same = 0;
    for d in diffs {
        let tag = match (d.regression, d.improvement) {
            (true, _) => "REGRESSION",
            (_, true) => "better",
            _ => {
                same += 1;
                continue;
            }
        };
        println!(
            "  {tag:<10} {:<36} {} -> {} ({:+.1}%)",
            d.what,
            d.old.fmt(2),
            d.new.fmt(2),
            (d.new.median / d.old.median - 1.0) * 100.0
        );
    }
    println!("  {same} figure(s) within the spread");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(median: f64, min: f64, max: f64) -> Spread {
        Spread {
            median,
            min,
            max,
            n: 3,
        }
    }

    #[test]
    fn flags_only_outside_both_spreads() {
        // Overlapping spreads: no flag either way.
        assert_eq!(
            beyond(&s(10.0, 9.0, 11.0), &s(9.5, 8.0, 10.5), true),
            (false, false)
        );
        // Clearly lower throughput: a regression.
        assert_eq!(
            beyond(&s(10.0, 9.5, 10.5), &s(8.0, 7.5, 8.5), true),
            (true, false)
        );
        // The same drop in a latency (lower is better): an improvement.
        assert_eq!(
            beyond(&s(10.0, 9.5, 10.5), &s(8.0, 7.5, 8.5), false),
            (false, true)
        );
        // New median outside the old spread, but the old inside the new: no flag.
        assert_eq!(
            beyond(&s(10.0, 9.8, 10.2), &s(9.0, 5.0, 12.0), true),
            (false, false)
        );
    }
}
