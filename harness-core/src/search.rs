//! The SLO search: which probe comes next, and what the probes found.
//!
//! [`Search`] decides; the [`Runner`](crate::Runner) runs each probe as an ordinary cell and
//! records its verdict. The search starts at the lowest candidate, doubles until a probe
//! fails (or the highest candidate passes), then bisects between the best passing and the
//! first failing value. With `confirm`, the two values at the boundary are probed once more
//! before they are trusted, and a value whose two probes disagree a third time: a value's
//! verdict is the majority of its probes, so one noisy probe does not move the result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Search as SearchSpec, SearchAxis};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
#[non_exhaustive]
pub enum Verdict {
    /// Every limit held.
    Pass,
    /// A limit did not hold, or the cell failed under the load (`reason` says which).
    Fail {
        /// Why.
        reason: String,
    },
}

/// One probe of a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Probe {
    /// The axis value.
    pub value: f64,
    /// Which probe of this value it was: 1, then 2 (the confirmation) and 3 (a tie-break).
    pub repeat: u32,
    /// Its cell.
    pub cell: String,
    /// What it found.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The metrics the SLO names, as the probe measured them.
    pub metrics: BTreeMap<String, f64>,
}

/// The result of one search: one treatment and ISL/OSL pair (and user axes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SearchOutcome {
    /// The treatment, when the experiment has treatments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment: Option<String>,
    /// The other parameters of the probes' cells, e.g. `isl=128,osl=32`.
    pub group: String,
    /// The axis searched.
    pub axis: SearchAxis,
    /// The largest value at which the SLO held (`None`: not even at `min`).
    pub best: Option<f64>,
    /// The smallest value at which it did not (`None`: it held at `max`).
    pub first_fail: Option<f64>,
    /// Whether the gap between the two reached the search's precision within its probes.
    pub converged: bool,
    /// Why the search stopped early (the treatment's deployment failed, the run was
    /// cancelled, a probe did not report a metric the SLO names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The probes, in the order they ran.
    pub probes: Vec<Probe>,
}

impl SearchOutcome {
    /// The searched axis's name: `concurrency` or `request_rate`.
    pub fn axis_name(&self) -> &'static str {
        self.axis.param()
    }
}

/// The value of `name` among a probe's metrics. `goodput_fraction` is derived: `goodput`
/// (requests/s that met the experiment's per-request `slo`) over `request_throughput`.
fn metric(metrics: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    match (metrics.get(name), name) {
        (Some(v), _) => Some(*v),
        (None, "goodput_fraction") => {
            let all = *metrics.get("request_throughput")?;
            let good = *metrics.get("goodput")?;
            Some(if all > 0.0 { good / all } else { 0.0 })
        }
        _ => None,
    }
}

/// The verdict of an SLO on a probe's metrics: every named metric present and within its
/// limit. `Err` when a metric is missing (the cell's steps do not report it; `goodput` needs
/// the experiment's per-request `slo`).
///
/// # Errors
/// A message naming the missing metric.
pub fn judge(spec: &SearchSpec, metrics: &BTreeMap<String, f64>) -> Result<Verdict, String> {
    let mut misses = Vec::new();
    for (name, limit) in &spec.slo {
        let value = metric(metrics, name).ok_or_else(|| {
            format!("the probe's steps did not report `{name}`, which the SLO names")
        })?;
        if !limit.holds(value) {
            let op = if limit.is_lower() { "<" } else { ">" };
            misses.push(format!(
                "{name} {} {op} {}",
                crate::config::values::format_number(value),
                crate::config::values::format_number(limit.get())
            ));
        }
    }
    Ok(if misses.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail {
            reason: misses.join(", "),
        }
    })
}

/// The metrics of a probe that `spec`'s SLO names (derived ones included).
pub fn slo_metrics(spec: &SearchSpec, metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    spec.slo
        .keys()
        .filter_map(|k| metric(metrics, k).map(|v| (k.clone(), v)))
        .collect()
}

/// The most probes of one value: the first, the confirmation, and a tie-break.
pub const MAX_REPEATS: u32 = 3;

/// The decisions of one search over candidate values (ascending).
#[derive(Debug, Clone)]
pub struct Search {
    candidates: Vec<f64>,
    budget: usize,
    confirm: bool,
    /// Verdicts by candidate index: (passes, fails).
    seen: BTreeMap<usize, (u32, u32)>,
    used: usize,
    done: bool,
}

impl Search {
    /// A search over `candidates` (ascending, at least one) with at most `budget` probes.
    pub fn new(candidates: Vec<f64>, budget: usize, confirm: bool) -> Self {
        Search {
            candidates,
            budget: budget.max(1),
            confirm,
            seen: BTreeMap::new(),
            used: 0,
            done: false,
        }
    }

    /// A search for `spec`.
    pub fn for_spec(spec: &SearchSpec) -> Self {
        Search::new(
            spec.candidates(),
            spec.max_probes.get() as usize,
            spec.confirm,
        )
    }

    /// The candidate values.
    pub fn candidates(&self) -> &[f64] {
        &self.candidates
    }

    fn probes_of(&self, i: usize) -> u32 {
        self.seen.get(&i).map_or(0, |(p, f)| p + f)
    }

    /// The verdict of value `i` by the majority of its probes; `None` when it was not
    /// probed or its probes are split evenly.
    fn verdict(&self, i: usize) -> Option<bool> {
        let (p, f) = self.seen.get(&i).copied()?;
        (p != f).then_some(p > f)
    }

    /// The best passing index and the first failing one, from what was seen.
    fn bracket(&self) -> (Option<usize>, Option<usize>) {
        let hi = self
            .seen
            .keys()
            .copied()
            .find(|i| self.verdict(*i) == Some(false));
        let lo = self
            .seen
            .keys()
            .copied()
            .filter(|i| hi.is_none_or(|h| *i < h) && self.verdict(*i) == Some(true))
            .max();
        (lo, hi)
    }

    /// The next probe: a candidate index and which probe of that value it is (1 for the
    /// first, 2 for the confirmation, 3 for a tie-break); `None` when the search is over.
    pub fn next(&self) -> Option<(usize, u32)> {
        if self.done || self.used >= self.budget || self.candidates.is_empty() {
            return None;
        }
        // A value whose probes disagree is probed again before it counts.
        if let Some(i) = self
            .seen
            .keys()
            .copied()
            .find(|i| self.verdict(*i).is_none() && self.probes_of(*i) < MAX_REPEATS)
        {
            return Some((i, self.probes_of(i) + 1));
        }
        let last = self.candidates.len() - 1;
        let (lo, hi) = self.bracket();
        let Some(lo) = lo else {
            // Nothing passes yet: the lowest value first.
            return match self.probes_of(0) {
                0 => Some((0, 1)),
                // It failed: confirm that before concluding the SLO never holds.
                1 if self.confirm => Some((0, 2)),
                _ => None,
            };
        };
        let next = match hi {
            // Bracketing: double the best passing value.
            None if lo == last => None,
            None => {
                let want = self.candidates[lo] * 2.0;
                let i = self
                    .candidates
                    .iter()
                    .position(|v| *v >= want - 1e-9)
                    .unwrap_or(last)
                    .max(lo + 1);
                Some(i)
            }
            Some(hi) if hi > lo + 1 => Some(lo + (hi - lo) / 2),
            Some(_) => None,
        };
        if let Some(i) = next {
            return Some((i, self.probes_of(i) + 1));
        }
        // Converged (or the top passed): the values at the boundary are probed once more
        // before they are trusted, the best passing one first.
        if self.confirm {
            for i in [Some(lo), hi].into_iter().flatten() {
                if self.probes_of(i) == 1 {
                    return Some((i, 2));
                }
            }
        }
        None
    }

    /// Records a probe's verdict (`passed`) for candidate `index`.
    pub fn record(&mut self, index: usize, passed: bool) {
        self.used += 1;
        let entry = self.seen.entry(index).or_default();
        if passed {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Stops the search (an error, or cancellation).
    pub fn stop(&mut self) {
        self.done = true;
    }

    /// The best passing value, the first failing one, and whether the search converged
    /// (nothing left to probe within the budget).
    pub fn result(&self) -> (Option<f64>, Option<f64>, bool) {
        let (lo, hi) = self.bracket();
        let value = |i: Option<usize>| i.map(|i| self.candidates[i]);
        let converged = !self.done && self.next().is_none() && {
            match (lo, hi) {
                (Some(l), Some(h)) => h == l + 1,
                (Some(l), None) => l == self.candidates.len() - 1,
                (None, Some(0)) => true,
                _ => false,
            }
        };
        (value(lo), value(hi), converged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against an oracle and returns (best, first fail, probes used).
    fn run(
        n: usize,
        budget: usize,
        confirm: bool,
        mut oracle: impl FnMut(f64, u32) -> bool,
    ) -> (Option<f64>, Option<f64>, bool, usize) {
        let candidates: Vec<f64> = (1..=n).map(|v| v as f64).collect();
        let mut s = Search::new(candidates, budget, confirm);
        let mut probes = 0;
        while let Some((i, nth)) = s.next() {
            let v = s.candidates()[i];
            s.record(i, oracle(v, nth));
            probes += 1;
            assert!(probes <= budget, "the budget is kept");
        }
        let (best, fail, converged) = s.result();
        (best, fail, converged, probes)
    }

    #[test]
    fn a_capacity_is_found_exactly_for_every_capacity() {
        for capacity in 1..=64 {
            let (best, fail, converged, probes) = run(64, 20, true, |v, _| v <= capacity as f64);
            assert_eq!(best, Some(capacity as f64), "capacity {capacity}");
            let want_fail = (capacity < 64).then_some(capacity as f64 + 1.0);
            assert_eq!(fail, want_fail, "capacity {capacity}");
            assert!(converged, "capacity {capacity}");
            // Doubling and bisection: about 2 log2(64) probes, plus two confirmations.
            assert!(probes <= 15, "capacity {capacity}: {probes} probes");
        }
    }

    #[test]
    fn nothing_passes_when_the_lowest_value_fails() {
        let (best, fail, converged, probes) = run(64, 16, true, |_, _| false);
        assert_eq!((best, fail, converged, probes), (None, Some(1.0), true, 2));
    }

    #[test]
    fn a_lucky_pass_is_outvoted_and_the_search_goes_below() {
        // 16 passes once, by luck, and fails on its second and third probes; 15 holds.
        let (best, fail, converged, _) =
            run(64, 24, true, |v, nth| v <= 15.0 || (v == 16.0 && nth == 1));
        assert_eq!((best, fail), (Some(15.0), Some(16.0)));
        assert!(converged);
    }

    #[test]
    fn an_unlucky_fail_is_outvoted_and_the_search_goes_above() {
        // The capacity is 16, but the first probe of 16 fails (a noisy machine): its
        // confirmation and tie-break pass, and the search finds 16.
        let (best, fail, converged, _) =
            run(64, 24, true, |v, nth| v <= 16.0 && !(v == 16.0 && nth == 1));
        assert_eq!((best, fail), (Some(16.0), Some(17.0)));
        assert!(converged);
    }

    #[test]
    fn a_small_budget_stops_early_without_claiming_convergence() {
        let (best, fail, converged, probes) = run(1000, 4, false, |v, _| v <= 700.0);
        assert_eq!(probes, 4);
        assert!(!converged);
        assert_eq!(best, Some(8.0));
        assert_eq!(fail, None);
    }

    #[test]
    fn limits_hold_from_above_or_below_and_goodput_fraction_is_derived() {
        let spec: SearchSpec = serde_json::from_value(serde_json::json!({
            "axis": "concurrency", "min": 1, "max": 8,
            "slo": {"ttft.p99": "30ms", "goodput_fraction": ">= 0.9"}
        }))
        .expect("spec");
        let m = |ttft: f64, good: f64| {
            BTreeMap::from([
                ("ttft.p99".to_owned(), ttft),
                ("goodput".to_owned(), good),
                ("request_throughput".to_owned(), 10.0),
            ])
        };
        assert_eq!(judge(&spec, &m(25.0, 9.0)), Ok(Verdict::Pass));
        let Ok(Verdict::Fail { reason }) = judge(&spec, &m(31.0, 8.0)) else {
            panic!("fails");
        };
        assert_eq!(reason, "goodput_fraction 0.8 < 0.9, ttft.p99 31 > 30");
        let missing = BTreeMap::from([("ttft.p99".to_owned(), 1.0)]);
        let err = judge(&spec, &missing).expect_err("no goodput");
        assert!(err.contains("goodput_fraction"), "{err}");
        assert_eq!(slo_metrics(&spec, &m(25.0, 9.0))["goodput_fraction"], 0.9);
        // Stored and read back, the lower bound stays a lower bound.
        let back: SearchSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("json")).expect("spec");
        assert_eq!(back, spec);
    }

    #[test]
    fn the_top_passing_ends_the_search() {
        let (best, fail, converged, _) = run(10, 16, false, |_, _| true);
        assert_eq!((best, fail, converged), (Some(10.0), None, true));
    }
}
