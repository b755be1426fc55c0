//! Comparing runs: matching cells side by side with absolute and relative deltas, bootstrap
//! confidence intervals over per-request values, overlay charts, and regression gates such
//! as `ttft.p99 > +5%`.
//!
//! ```
//! use harness_analytics::compare::Gate;
//! let gate: Gate = "ttft.p99 > +5%".parse()?;
//! assert!(gate.trips(100.0, 106.0, Some(true)));
//! assert!(!gate.trips(100.0, 104.0, Some(true)));
//! // A change the bootstrap cannot tell from noise does not trip a gate.
//! assert!(!gate.trips(100.0, 106.0, Some(false)));
//! # Ok::<(), harness_analytics::Error>(())
//! ```

use std::collections::BTreeMap;
use std::str::FromStr;

use arrow_array::{Array, Float64Array};
use harness_core::ArtifactStore;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::Error;
use crate::chart::{Chart, Series};
use crate::io::from_parquet;
use crate::report::{RunData, by_cell, x_of};

/// Metrics compared when none are named.
pub const DEFAULT_METRICS: [&str; 8] = [
    "ttft.p50",
    "ttft.p99",
    "itl.p50",
    "itl.p99",
    "request_latency.p50",
    "request_latency.p99",
    "output_token_throughput",
    "request_throughput",
];

/// Bootstrap resamples per comparison.
const RESAMPLES: usize = 400;
/// At most this many per-request values per side enter the bootstrap (a random subset of
/// bigger cells; the interval gets wider, never narrower).
const MAX_SAMPLES: usize = 5000;

/// A comparison operator of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// What a gate's number means.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Threshold {
    /// `+5%`: the change relative to the baseline.
    Relative(f64),
    /// `+3` or `-3`: the change in the metric's unit.
    Delta(f64),
    /// `500`: the candidate's value itself.
    Value(f64),
}

/// A regression gate: `<metric> <op> <threshold>`, e.g. `ttft.p99 > +5%`,
/// `output_token_throughput < -10%`, `errors > 0`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Gate {
    /// The metric, e.g. `ttft.p99`.
    pub metric: String,
    /// The operator.
    pub op: Op,
    /// The threshold.
    pub threshold: Threshold,
    /// The gate as written.
    pub text: String,
}

impl FromStr for Gate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::invalid(
                format!("gate `{s}`"),
                format!("{why}; expected e.g. `ttft.p99 > +5%`, `itl.p50 > +2` or `errors > 0`"),
            )
        };
        let (metric, op, rest) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
            .iter()
            .find_map(|(t, op)| s.split_once(t).map(|(m, r)| (m.trim(), *op, r.trim())))
            .ok_or_else(|| bad("no operator (>, >=, <, <=)"))?;
        if metric.is_empty() || crate::schema::unit_of(metric).is_none() {
            return Err(bad(&format!("unknown metric `{metric}`")));
        }
        let number = |t: &str| {
            t.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("`{t}` is not a number")))
        };
        let threshold = if let Some(pct) = rest.strip_suffix('%') {
            Threshold::Relative(number(pct.trim())? / 100.0)
        } else if rest.starts_with('+') || rest.starts_with('-') {
            Threshold::Delta(number(rest)?)
        } else {
            Threshold::Value(number(rest)?)
        };
        Ok(Gate {
            metric: metric.to_owned(),
            op,
            threshold,
            text: s.trim().to_owned(),
        })
    }
}

impl Gate {
    /// Whether the gate trips for a change from `base` to `value`. A change the bootstrap
    /// found not significant (`Some(false)`) never trips a relative or delta gate.
    pub fn trips(&self, base: f64, value: f64, significant: Option<bool>) -> bool {
        let x = match self.threshold {
            Threshold::Relative(_) => {
                if base == 0.0 {
                    if value == 0.0 {
                        0.0
                    } else {
                        f64::INFINITY.copysign(value)
                    }
                } else {
                    (value - base) / base.abs()
                }
            }
            Threshold::Delta(_) => value - base,
            Threshold::Value(_) => value,
        };
        let t = match self.threshold {
            Threshold::Relative(t) | Threshold::Delta(t) | Threshold::Value(t) => t,
        };
        let crossed = match self.op {
            Op::Gt => x > t,
            Op::Ge => x >= t,
            Op::Lt => x < t,
            Op::Le => x <= t,
        };
        let noise = significant == Some(false) && !matches!(self.threshold, Threshold::Value(_));
        crossed && !noise
    }
}

/// One metric of one cell: baseline, candidate, change, and its 95% bootstrap interval.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricDelta {
    /// The metric.
    pub metric: String,
    /// The baseline's value.
    pub base: Option<f64>,
    /// The candidate's value.
    pub value: Option<f64>,
    /// The 95% confidence interval of `value - base`, from per-request values.
    pub ci: Option<(f64, f64)>,
}

impl MetricDelta {
    /// `value - base`.
    pub fn delta(&self) -> Option<f64> {
        Some(self.value? - self.base?)
    }
    /// `(value - base) / |base|`.
    pub fn relative(&self) -> Option<f64> {
        let base = self.base?;
        (base != 0.0).then(|| self.delta().map(|d| d / base.abs()))?
    }
    /// Whether the interval excludes zero; `None` without an interval.
    pub fn significant(&self) -> Option<bool> {
        self.ci.map(|(lo, hi)| lo > 0.0 || hi < 0.0)
    }
}

/// A cell present in the baseline and a candidate run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CellDelta {
    /// The cell id.
    pub cell: String,
    /// The candidate run (`experiment/run-id`).
    pub run: String,
    /// Each metric.
    pub metrics: Vec<MetricDelta>,
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Comparison {
    /// The baseline (the first run).
    pub baseline: String,
    /// The other runs.
    pub candidates: Vec<String>,
    /// Matching cells.
    pub cells: Vec<CellDelta>,
    /// Cells present in only some runs: `(run, cell)` for each run that has it while the
    /// baseline or the candidate lacks it.
    pub unmatched: Vec<(String, String)>,
    /// Gates that tripped, with the cell and values.
    pub tripped: Vec<String>,
}

/// Per-request values of one cell, for the bootstrap: successful, non-warmup requests.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Samples {
    /// By column: `ttft`, `itl`, `request_latency`, `output_token_throughput_per_user`.
    pub values: BTreeMap<String, Vec<f64>>,
}

/// Reads the per-request values of every cell of `run` from its `records.parquet` files.
/// Cells without records have no samples (their deltas get no interval).
///
/// # Errors
/// When a records file exists but cannot be read.
pub async fn load_samples(
    store: &dyn ArtifactStore,
    run: &RunData,
) -> Result<BTreeMap<String, Samples>, Error> {
    let mut out = BTreeMap::new();
    for (cell, _) in by_cell(run) {
        let id = harness_core::CellId::new(cell)?;
        let data = match store.get(&run.layout.cell_records(&id)).await {
            Ok(d) => d,
            Err(harness_core::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let batch = from_parquet(data)?;
        let col = |name: &str| -> Result<Vec<Option<f64>>, Error> {
            let warmup = batch
                .column_by_name("warmup")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::BooleanArray>())
                .ok_or_else(|| {
                    Error::invalid(format!("records of {cell}"), "no `warmup` column")
                })?;
            let error = batch.column_by_name("error_kind").ok_or_else(|| {
                Error::invalid(format!("records of {cell}"), "no `error_kind` column")
            })?;
            let v = batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                .ok_or_else(|| {
                    Error::invalid(format!("records of {cell}"), format!("no `{name}` column"))
                })?;
            Ok((0..batch.num_rows())
                .map(|i| {
                    (!warmup.value(i) && error.is_null(i) && v.is_valid(i)).then(|| v.value(i))
                })
                .collect())
        };
        let mut s = Samples::default();
        for (name, column) in [
            ("ttft", "ttft_ms"),
            ("itl", "itl_ms"),
            ("request_latency", "request_latency_ms"),
        ] {
            s.values.insert(
                name.to_owned(),
                col(column)?.into_iter().flatten().collect(),
            );
        }
        let per_user = s.values["itl"]
            .iter()
            .filter(|v| **v > 0.0)
            .map(|v| 1e3 / v)
            .collect();
        s.values
            .insert("output_token_throughput_per_user".to_owned(), per_user);
        out.insert(cell.to_owned(), s);
    }
    Ok(out)
}

/// A statistic (`mean` or `p<q>`) of `values`, reordering them.
fn stat_of(values: &mut [f64], stat: &str) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    if stat == "mean" {
        return Some(values.iter().sum::<f64>() / n as f64);
    }
    let q: f64 = stat.strip_prefix('p')?.parse().ok()?;
    let pos = q / 100.0 * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, a, right) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let a = *a;
    if pos == lo as f64 || right.is_empty() {
        return Some(a);
    }
    let b = right.iter().copied().fold(f64::INFINITY, f64::min);
    Some(a + (b - a) * (pos - lo as f64))
}

fn subsample(values: &[f64], rng: &mut SmallRng) -> Vec<f64> {
    if values.len() <= MAX_SAMPLES {
        return values.to_vec();
    }
    (0..MAX_SAMPLES)
        .map(|_| values[rng.random_range(0..values.len())])
        .collect()
}

/// The 95% bootstrap interval of `stat(b) - stat(a)`.
fn bootstrap(a: &[f64], b: &[f64], stat: &str, rng: &mut SmallRng) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (a, b) = (subsample(a, rng), subsample(b, rng));
    let mut ra = vec![0.0; a.len()];
    let mut rb = vec![0.0; b.len()];
    let mut diffs = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        for x in &mut ra {
            *x = a[rng.random_range(0..a.len())];
        }
        for x in &mut rb {
            *x = b[rng.random_range(0..b.len())];
        }
        diffs.push(stat_of(&mut rb, stat)? - stat_of(&mut ra, stat)?);
    }
    diffs.sort_unstable_by(f64::total_cmp);
    Some((
        crate::percentile_sorted(&diffs, 2.5),
        crate::percentile_sorted(&diffs, 97.5),
    ))
}

/// Compares `runs[1..]` with the baseline `runs[0]`, each with its per-request samples, on
/// `metrics` (and the gates' metrics), and evaluates `gates`. Seeded: the same inputs give
/// the same intervals.
pub fn compare(
    runs: &[(RunData, BTreeMap<String, Samples>)],
    metrics: &[String],
    gates: &[Gate],
    seed: u64,
) -> Comparison {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut names: Vec<String> = metrics.to_vec();
    for g in gates {
        if !names.contains(&g.metric) {
            names.push(g.metric.clone());
        }
    }
    let Some(((base, base_samples), others)) = runs.split_first() else {
        return Comparison {
            baseline: String::new(),
            candidates: Vec::new(),
            cells: Vec::new(),
            unmatched: Vec::new(),
            tripped: Vec::new(),
        };
    };
    let base_cells = by_cell(base);
    let mut cells = Vec::new();
    let mut unmatched = Vec::new();
    let mut tripped = Vec::new();
    for (run, samples) in others {
        let run_cells = by_cell(run);
        for (id, row) in &run_cells {
            let Some(brow) = base_cells.get(id) else {
                unmatched.push((run.label(), (*id).to_owned()));
                continue;
            };
            let mut deltas = Vec::new();
            for m in &names {
                let get = |r: &crate::table::CellRow| r.stats.as_ref().and_then(|s| s.value(m));
                let (dist, stat) = m.split_once('.').unwrap_or((m, ""));
                let ci = match (base_samples.get(*id), samples.get(*id)) {
                    (Some(a), Some(b)) if stat == "mean" || stat.starts_with('p') => {
                        match (a.values.get(dist), b.values.get(dist)) {
                            (Some(a), Some(b)) => bootstrap(a, b, stat, &mut rng),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let d = MetricDelta {
                    metric: m.clone(),
                    base: get(brow),
                    value: get(row),
                    ci,
                };
                for g in gates.iter().filter(|g| g.metric == *m) {
                    if let (Some(b), Some(v)) = (d.base, d.value)
                        && g.trips(b, v, d.significant())
                    {
                        tripped.push(format!(
                            "{}: cell {id} of {}: {} -> {} ({})",
                            g.text,
                            run.label(),
                            crate::report::format_value(b),
                            crate::report::format_value(v),
                            d.relative().map_or_else(
                                || "n/a".to_owned(),
                                |r| format!("{:+.1}%", r * 100.0)
                            )
                        ));
                    }
                }
                deltas.push(d);
            }
            cells.push(CellDelta {
                cell: (*id).to_owned(),
                run: run.label(),
                metrics: deltas,
            });
        }
        for id in base_cells.keys() {
            if !run_cells.contains_key(id) {
                unmatched.push((base.label(), (*id).to_owned()));
            }
        }
    }
    Comparison {
        baseline: base.label(),
        candidates: others.iter().map(|(r, _)| r.label()).collect(),
        cells,
        unmatched,
        tripped,
    }
}

/// Overlay charts: TTFT p50, ITL p50, request latency p50 and output throughput against the
/// load, one colour per run and one line per series of each run.
pub fn overlay_charts(runs: &[RunData]) -> Vec<Chart> {
    let mut out = Vec::new();
    for (metric, title, unit) in [
        ("ttft.p50", "TTFT p50", "ms"),
        ("itl.p50", "ITL p50", "ms"),
        ("request_latency.p50", "Request latency p50", "ms"),
        (
            "output_token_throughput",
            "Output token throughput",
            "tokens/s",
        ),
    ] {
        let axis = runs.first().map_or("concurrency", RunData::load_axis);
        let mut c = Chart::new(
            format!("compare-{}", metric.replace('.', "-")),
            format!("{title}: runs compared"),
            axis,
            unit,
        );
        c.log_x = axis == "concurrency";
        for (i, run) in runs.iter().enumerate() {
            for (label, rows) in run.series() {
                let pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter_map(|r| Some((x_of(r, axis)?, r.stats.as_ref()?.value(metric)?)))
                    .collect();
                let s = Series::line(format!("{} {label}", run.manifest.run_id), pts, i);
                c.series.push(if i == 0 { s } else { s.dashed() });
            }
        }
        if c.has_data() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_name_what_is_wrong() {
        let g: Gate = "itl.p50 > +5%".parse().expect("gate");
        assert_eq!(
            (g.metric.as_str(), g.op, g.threshold),
            ("itl.p50", Op::Gt, Threshold::Relative(0.05))
        );
        let g: Gate = "output_token_throughput <= -10%".parse().expect("gate");
        assert!(g.trips(1000.0, 850.0, None) && !g.trips(1000.0, 950.0, None));
        let g: Gate = "errors > 0".parse().expect("gate");
        assert!(
            g.trips(0.0, 1.0, Some(false)),
            "a value gate ignores significance"
        );
        let g: Gate = "server.kv_cache_usage.max > 0.9"
            .parse()
            .expect("a server gate");
        assert!(g.trips(0.5, 0.95, None));
        let g: Gate = "ttft.p99 >= +2".parse().expect("gate");
        assert!(g.trips(10.0, 12.0, None) && !g.trips(10.0, 11.0, None));
        for (bad, says) in [
            ("ttft.p99 +5%", "operator"),
            ("nonsense.p99 > +5%", "unknown metric"),
            ("server.running.p99 > 1", "unknown metric"),
            ("ttft.p99 > lots", "not a number"),
        ] {
            let e = bad.parse::<Gate>().expect_err(bad).to_string();
            assert!(e.contains(says) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn bootstrap_separates_shifted_samples_and_not_equal_ones() {
        let mut rng = SmallRng::seed_from_u64(7);
        let a: Vec<f64> = (0..2000).map(|i| 10.0 + (i % 100) as f64 * 0.01).collect();
        let b: Vec<f64> = a.iter().map(|v| v * 1.2).collect();
        let (lo, hi) = bootstrap(&a, &b, "p50", &mut rng).expect("ci");
        assert!(lo > 0.0 && hi > lo, "{lo}..{hi}");
        let (lo, hi) = bootstrap(&a, &a.clone(), "p50", &mut rng).expect("ci");
        assert!(lo <= 0.0 && hi >= 0.0, "{lo}..{hi}");
        let (lo, hi) = bootstrap(&a, &b, "mean", &mut rng).expect("ci");
        assert!(lo > 1.5 && hi < 2.5, "mean shift of about 2: {lo}..{hi}");
    }

    #[test]
    fn stat_of_matches_the_exact_percentile() {
        let mut v = vec![10.0, 2.0, 4.0, 1.0, 3.0];
        assert!((stat_of(&mut v, "p90").expect("p90") - 7.6).abs() < 1e-12);
        assert_eq!(stat_of(&mut v, "mean"), Some(4.0));
        assert_eq!(stat_of(&mut [], "p50"), None);
    }
}
