//! The samples of a bench run and their summaries: a figure's median with
//! min–max over the rounds, and ratios paired within a round.

use crate::model::{Case, Measurement, Placement, Scenario, System, TCP_SYSTEMS};

/// One run of one case of one system.
pub struct Sample {
    pub m: Measurement,
    /// CPU seconds (user + system) of the whole process, both ends.
    pub cpu_s: f64,
}

/// One line of the result table: a case of a system, all its rounds.
pub struct Row {
    pub case: Case,
    pub system: System,
    pub placement: Placement,
    /// By round; `None` where the run failed.
    pub samples: Vec<Option<Sample>>,
    pub errors: Vec<String>,
}

/// A figure over the rounds: median, min and max, and how many rounds had it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// The spread of `values` (non-finite ones dropped); `None` if empty.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// "median (min–max)", or just the median from one round.
    pub fn fmt(&self, prec: usize) -> String {
        if self.n > 1 {
            format!(
                "{:.prec$} ({:.prec$}–{:.prec$})",
                self.median, self.min, self.max
            )
        } else {
            format!("{:.prec$}", self.median)
        }
    }
}

/// A figure of one sample.
pub type Figure = fn(&Sample) -> Option<f64>;

pub fn gbit_s(s: &Sample) -> Option<f64> {
    Some(s.m.gbit_s())
}
pub fn ops_s(s: &Sample) -> Option<f64> {
    Some(s.m.ops_s())
}
pub fn p50(s: &Sample) -> Option<f64> {
    s.m.quantile_us(0.5)
}
pub fn p90(s: &Sample) -> Option<f64> {
    s.m.quantile_us(0.9)
}
pub fn p99(s: &Sample) -> Option<f64> {
    s.m.quantile_us(0.99)
}
pub fn p999(s: &Sample) -> Option<f64> {
    s.m.quantile_us(0.999)
}
pub fn fairness(s: &Sample) -> Option<f64> {
    s.m.fairness
}
pub fn cpu_s(s: &Sample) -> Option<f64> {
    Some(s.cpu_s)
}

/// The figure a throughput ratio is taken of: Gbit/s for bulk and mixed,
/// ops/s otherwise.
pub fn headline_of(scenario: Scenario) -> Figure {
    if scenario.is_bulk() {
        gbit_s
    } else {
        ops_s
    }
}

impl Row {
    pub fn new(case: Case, system: System, placement: Placement, rounds: usize) -> Row {
        Row {
            case,
            system,
            placement,
            samples: (0..rounds).map(|_| None).collect(),
            errors: Vec::new(),
        }
    }

    /// `f` of the sample of `round`, if that run succeeded.
    pub fn at(&self, round: usize, f: Figure) -> Option<f64> {
        self.samples.get(round)?.as_ref().and_then(f)
    }

    /// `f` over the rounds.
    pub fn spread(&self, f: Figure) -> Option<Spread> {
        Spread::of((0..self.samples.len()).filter_map(|r| self.at(r, f)))
    }

    pub fn headline(&self) -> Figure {
        headline_of(self.case.scenario)
    }

    /// Runs that succeeded.
    pub fn ok_runs(&self) -> usize {
        self.samples.iter().flatten().count()
    }
}

/// The row of `system` for the same case and placement as `r`.
pub fn find<'a>(rows: &'a [Row], r: &Row, system: System) -> Option<&'a Row> {
    rows.iter()
        .find(|b| b.system == system && b.case == r.case && b.placement == r.placement)
}

/// The plain-TCP rows for the same case and placement as `r`.
fn tcp_rows<'a>(rows: &'a [Row], r: &Row) -> Vec<&'a Row> {
    TCP_SYSTEMS
        .iter()
        .filter_map(|&s| find(rows, r, s))
        .collect()
}

/// "tcp-best" of a round: the best headline of the plain-TCP systems.
pub fn tcp_best_at(rows: &[Row], r: &Row, round: usize) -> Option<f64> {
    let f = r.headline();
    tcp_rows(rows, r)
        .iter()
        .filter_map(|t| t.at(round, f))
        .max_by(f64::total_cmp)
}

/// Whether any plain-TCP system ran for `r`'s case (so tcp-best exists).
pub fn has_tcp(rows: &[Row], r: &Row) -> bool {
    !tcp_rows(rows, r).is_empty()
}

/// `num(a) / den(b)`, paired within each round where both ran.
pub fn paired(a: &Row, fa: Figure, b: &Row, fb: Figure) -> Option<Spread> {
    let rounds = a.samples.len().min(b.samples.len());
    Spread::of((0..rounds).filter_map(|i| Some(a.at(i, fa)? / b.at(i, fb)?)))
}

/// The headline of `r` over that of `system` in the same round.
pub fn ratio_to(rows: &[Row], r: &Row, system: System) -> Option<Spread> {
    let f = r.headline();
    paired(r, f, find(rows, r, system)?, f)
}

/// The headline of `r` over tcp-best in the same round.
pub fn ratio_to_tcp_best(rows: &[Row], r: &Row) -> Option<Spread> {
    let f = r.headline();
    Spread::of((0..r.samples.len()).filter_map(|i| Some(r.at(i, f)? / tcp_best_at(rows, r, i)?)))
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of([f64::NAN]).is_none());
        assert_eq!(Spread::of([5.0]).unwrap().fmt(1), "5.0");
    }
}
