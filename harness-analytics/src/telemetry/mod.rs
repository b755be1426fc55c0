//! Server telemetry: what the server and its GPUs reported during a cell, as scraped from
//! Prometheus endpoints, stored as a long-form table (`server_metrics.parquet`) and
//! summarised as `server.*` metrics of the cell.
//!
//! * [`expo`]: the text exposition format, parsed line by line.
//! * [`TargetLog`] and [`ScrapeLog`]: the scrapes of a cell, as a scraper records them.
//! * [`QUANTITIES`]: what known servers' metric names mean (vLLM, SGLang, TensorRT-LLM,
//!   Dynamo, llama.cpp, DCGM, the mock).
//! * [`summarise`]: the table clipped to the cell's measured window, the `server.*`
//!   summary, and the cross-checks of the server's counters against the client's records.
//! * [`client_timeline`] and [`server_timeline`]: per-second series for charts.
//!
//! `server_metrics.parquet` columns: `time_s` (seconds since the cell's epoch, the clock of
//! `records.parquet`), `target`, `metric` (the sample's name), `labels` (`name="value"`
//! pairs, sorted, comma-separated, escaped as in the exposition format), `kind`, `value` (a
//! gauge's value; for counters and the buckets, sums and counts of histograms, the rate per
//! second since the previous scrape), `delta` (their increase since the previous scrape)
//! and `interval_s` (the time since it). Rows are the scrapes within the measured window
//! (warmup left out); its bounds are in the schema's metadata (`harness.window_start_s`,
//! `harness.window_end_s`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{Float64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::record::Record;

mod catalog;
pub mod expo;
mod timeline;

pub use catalog::{Across, QUANTITIES, Quantity, QuantityKind, quantity, server_unit};
use expo::{Exposition, MetricKind};
pub use timeline::{ClientPoint, ServerSeries, client_timeline, server_timeline};

/// One series of a target: a sample name and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesKey {
    /// The sample's name.
    pub name: String,
    /// Its labels, sorted.
    pub labels: Vec<(String, String)>,
    /// Its family's kind.
    pub kind: MetricKind,
}

impl SeriesKey {
    fn cumulative(&self) -> bool {
        expo::is_cumulative(self.kind, &self.labels)
    }

    fn le(&self) -> Option<f64> {
        self.labels
            .iter()
            .find(|(k, _)| k == "le")
            .and_then(|(_, v)| match v.as_str() {
                "+Inf" | "Inf" => Some(f64::INFINITY),
                v => v.parse().ok(),
            })
    }
}

/// One scrape: its time (nanoseconds since the cell's epoch; before the load starts it is
/// negative) and the values of the target's series, or why it failed.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When the scrape's answer arrived.
    pub t_ns: i64,
    /// `(series, value)` pairs, series indexing [`TargetLog::series`]; or the failure.
    pub outcome: Result<Vec<(u32, f64)>, String>,
}

/// At most this many series are kept per target; more are dropped with a warning.
pub const MAX_SERIES: usize = 20_000;
/// At most this many values are kept per target (160 MB); later scrapes are gaps.
pub const MAX_POINTS: usize = 10_000_000;
const MAX_WARNINGS: usize = 20;

/// Everything scraped from one target during a cell.
#[derive(Debug, Clone)]
pub struct TargetLog {
    /// The target's name (`endpoint` for the deployment's own metrics).
    pub name: String,
    /// Its URL.
    pub url: String,
    series: Vec<SeriesKey>,
    index: HashMap<(String, Vec<(String, String)>), u32>,
    scrapes: Vec<Scrape>,
    warnings: Vec<String>,
    seen: HashSet<String>,
    points: usize,
}

impl TargetLog {
    /// An empty log of target `name` at `url`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        TargetLog {
            name: name.into(),
            url: url.into(),
            series: Vec::new(),
            index: HashMap::new(),
            scrapes: Vec::new(),
            warnings: Vec::new(),
            seen: HashSet::new(),
            points: 0,
        }
    }

    /// Records a successful scrape at `t_ns`: its samples, and its malformed lines as
    /// warnings (each once per cell).
    pub fn record(&mut self, t_ns: i64, expo: Exposition) {
        for e in &expo.errors {
            self.warn(format!("{}: {e}", self.url));
        }
        if expo.malformed > expo.errors.len() {
            self.warn(format!(
                "{}: {} malformed lines in one scrape, the first {} described",
                self.url,
                expo.malformed,
                expo.errors.len()
            ));
        }
        if self.points + expo.samples.len() > MAX_POINTS {
            self.gap(
                t_ns,
                format!("more than {MAX_POINTS} values kept for this cell; scraping stopped"),
            );
            return;
        }
        let mut values = Vec::with_capacity(expo.samples.len());
        let mut dropped = 0usize;
        for s in expo.samples {
            let key = (s.name, s.labels);
            let id = match self.index.get(&key) {
                Some(id) => *id,
                None if self.series.len() < MAX_SERIES => {
                    let id = self.series.len() as u32;
                    self.series.push(SeriesKey {
                        name: key.0.clone(),
                        labels: key.1.clone(),
                        kind: s.kind,
                    });
                    self.index.insert(key, id);
                    id
                }
                None => {
                    dropped += 1;
                    continue;
                }
            };
            values.push((id, s.value));
        }
        if dropped > 0 {
            self.warn(format!(
                "{}: more than {MAX_SERIES} series; the others are dropped",
                self.url
            ));
        }
        self.points += values.len();
        self.scrapes.push(Scrape {
            t_ns,
            outcome: Ok(values),
        });
    }

    /// Records a failed scrape at `t_ns`: a gap in the series.
    pub fn gap(&mut self, t_ns: i64, reason: impl Into<String>) {
        self.scrapes.push(Scrape {
            t_ns,
            outcome: Err(reason.into()),
        });
    }

    /// Adds a warning, once.
    pub fn warn(&mut self, message: String) {
        if self.warnings.len() < MAX_WARNINGS && self.seen.insert(message.clone()) {
            self.warnings.push(message);
        }
    }

    /// Moves every scrape's time by `by_ns` (a scraper that started before the cell's
    /// epoch counts from the epoch this way).
    pub fn shift_time(&mut self, by_ns: i64) {
        for s in &mut self.scrapes {
            s.t_ns = s.t_ns.saturating_add(by_ns);
        }
    }

    /// The scrapes, in time order.
    pub fn scrapes(&self) -> &[Scrape] {
        &self.scrapes
    }

    /// The series seen.
    pub fn series(&self) -> &[SeriesKey] {
        &self.series
    }

    /// The warnings.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Value rows: gauges as they are, cumulative series as increases since their previous
    /// successful scrape (a decrease is a restart: the increase is the new value). `keep`
    /// picks the series; `f` gets each row whose scrape is within `window` (all rows
    /// without one).
    fn rows(
        &self,
        window: Option<Window>,
        keep: impl Fn(&SeriesKey) -> bool,
        mut f: impl FnMut(Row),
    ) {
        let mut prev: Vec<Option<(i64, f64)>> = vec![None; self.series.len()];
        let wanted: Vec<bool> = self.series.iter().map(&keep).collect();
        let cumulative: Vec<bool> = self.series.iter().map(SeriesKey::cumulative).collect();
        for scrape in &self.scrapes {
            let Ok(values) = &scrape.outcome else {
                continue;
            };
            let inside = window.is_none_or(|w| w.contains(scrape.t_ns));
            for &(id, v) in values {
                let i = id as usize;
                if !wanted[i] || v.is_nan() {
                    continue;
                }
                if cumulative[i] {
                    let last = prev[i].replace((scrape.t_ns, v));
                    if let Some((t0, v0)) = last
                        && inside
                    {
                        let delta = if v >= v0 { v - v0 } else { v };
                        let span = (scrape.t_ns - t0) as f64 / 1e9;
                        f(Row {
                            t_ns: scrape.t_ns,
                            series: id,
                            value: if span > 0.0 { delta / span } else { 0.0 },
                            delta: Some(delta),
                            span_s: Some(span),
                        });
                    }
                } else if inside {
                    f(Row {
                        t_ns: scrape.t_ns,
                        series: id,
                        value: v,
                        delta: None,
                        span_s: None,
                    });
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Row {
    t_ns: i64,
    series: u32,
    value: f64,
    delta: Option<f64>,
    span_s: Option<f64>,
}

/// Everything scraped during a cell.
#[derive(Debug, Clone)]
pub struct ScrapeLog {
    /// The scrape interval.
    pub interval: Duration,
    /// One log per target.
    pub targets: Vec<TargetLog>,
}

/// A cell's measured window, in nanoseconds since its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first measured request's start.
    pub start_ns: i64,
    /// The last measured request's end.
    pub end_ns: i64,
}

impl Window {
    /// The window of `records`: from the first measured (not warmup) request's start to the
    /// last one's end; `None` without measured requests.
    pub fn of_records(records: &[Record]) -> Option<Window> {
        let measured = records.iter().filter(|r| !r.warmup);
        let start = measured.clone().map(|r| r.start_ns).min()?;
        let end = measured.map(|r| r.end_ns).max()?;
        Some(Window {
            start_ns: i64::try_from(start).ok()?,
            end_ns: i64::try_from(end).ok()?,
        })
    }

    fn contains(&self, t_ns: i64) -> bool {
        (self.start_ns..=self.end_ns).contains(&t_ns)
    }
}

/// What the client sent and got over the whole cell (warmup included): the figures a
/// server's counters are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCounts {
    /// Requests that succeeded.
    pub requests: u64,
    /// Their input tokens.
    pub prompt_tokens: u64,
    /// Their output tokens.
    pub output_tokens: u64,
    /// The last response's end, nanoseconds since the epoch.
    pub end_ns: i64,
}

impl ClientCounts {
    /// The counts of `records`.
    pub fn of_records(records: &[Record]) -> Self {
        let ok = records.iter().filter(|r| r.ok());
        ClientCounts {
            requests: ok.clone().count() as u64,
            prompt_tokens: ok.clone().map(|r| r.input_tokens).sum(),
            output_tokens: ok.map(|r| r.output_tokens).sum(),
            end_ns: records
                .iter()
                .map(|r| i64::try_from(r.end_ns).unwrap_or(i64::MAX))
                .max()
                .unwrap_or(0),
        }
    }

    fn of(&self, quantity: &str) -> Option<u64> {
        match quantity {
            "requests" => Some(self.requests),
            "prompt_tokens" => Some(self.prompt_tokens),
            "generation_tokens" => Some(self.output_tokens),
            _ => None,
        }
    }
}

/// The summary of a cell's telemetry, stored as `cells/<cell>/telemetry.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TelemetrySummary {
    /// The measured window's start, seconds since the cell's epoch.
    pub window_start_s: f64,
    /// Its end.
    pub window_end_s: f64,
    /// The scrape interval, in seconds.
    pub interval_s: f64,
    /// Each target.
    pub targets: Vec<TargetSummary>,
    /// `server.*` metrics (without the prefix): `running.mean`, `generation_tokens_per_s`,
    /// `ttft.p99`, ...
    pub server: BTreeMap<String, f64>,
    /// The server's counters against the client's records.
    pub cross_checks: Vec<CrossCheck>,
}

/// One target's part of a [`TelemetrySummary`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetSummary {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Scrapes tried.
    pub scrapes: usize,
    /// Scrapes that failed (gaps).
    pub failed: usize,
    /// The first failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
    /// Successful scrapes within the measured window: the `server.*` metrics come from
    /// these.
    #[serde(default)]
    pub in_window: usize,
    /// Series seen.
    pub series: usize,
    /// Known quantities found, with the metric names read for each.
    pub quantities: BTreeMap<String, Vec<String>>,
    /// Malformed lines and dropped series.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A server counter's increase over the whole cell against the client's count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CrossCheck {
    /// The quantity (`requests`, `prompt_tokens`, `generation_tokens`).
    pub quantity: String,
    /// The target.
    pub target: String,
    /// The server's metric names.
    pub source: Vec<String>,
    /// The server's increase, from the scrape before the first request to the one after
    /// the last response.
    pub server: f64,
    /// The client's count (succeeded requests, warmup included).
    pub client: f64,
    /// Whether they agree within the tolerance.
    pub agrees: bool,
}

impl TelemetrySummary {
    /// The cell's notes: cross-checks that disagree, targets with gaps, warnings.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.cross_checks.iter().filter(|c| !c.agrees) {
            out.push(format!(
                "server telemetry: {} ({}) counted {} {} over the cell where the client counted {}: \
                 another client may have sent load, or the server counts differently",
                c.target,
                c.source.join(" + "),
                crate::report::format_value(c.server),
                c.quantity.replace('_', " "),
                crate::report::format_value(c.client),
            ));
        }
        for t in &self.targets {
            if t.failed > 0 {
                out.push(format!(
                    "server telemetry: {} of {} scrapes of {} ({}) failed, the gaps are recorded; first: {}",
                    t.failed,
                    t.scrapes,
                    t.name,
                    t.url,
                    t.first_failure.as_deref().unwrap_or("?")
                ));
            }
            // A cell shorter than the interval has no scrape inside it, as expected; a longer
            // one without any means the scrapes took too long.
            let window = self.window_end_s - self.window_start_s;
            if t.in_window == 0 && t.failed == 0 && window >= 2.0 * self.interval_s {
                out.push(format!(
                    "server telemetry: no scrape of {} fell within the measured window ({window:.2} s), so there are no server.* metrics from it; its scrapes took longer than the interval",
                    t.name,
                ));
            }
            for w in &t.warnings {
                out.push(format!("server telemetry: {w}"));
            }
        }
        out
    }
}

/// The quantities of one target, computed from its rows.
struct Found {
    quantity: &'static Quantity,
    source: &'static [&'static str],
    /// Per scrape: the combined gauge value, or the counter's rate.
    points: Vec<(i64, f64)>,
    /// Counters: the sum of increases and of the intervals they span.
    delta: f64,
    span: f64,
    /// Histograms: the increase of each bucket (by `le`), of `_sum` and of `_count`.
    buckets: BTreeMap<OrdF64, f64>,
    sum: f64,
    count: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Every known quantity a target's series answer, from `rows` (which the caller produces
/// per target with [`TargetLog::rows`] or from a stored table).
/// Gauges read only rows up to `gauge_end_ns`.
fn find_quantities(series: &[SeriesKey], rows: &[Row], gauge_end_ns: i64) -> Vec<Found> {
    let mut out = Vec::new();
    for q in QUANTITIES {
        let Some(source) = q.source_in(series.iter().map(|s| s.name.as_str())) else {
            continue;
        };
        let matched: Vec<bool> = series
            .iter()
            .map(|s| source.iter().any(|src| q.matches(src, &s.name)))
            .collect();
        let mut f = Found {
            quantity: q,
            source,
            points: Vec::new(),
            delta: 0.0,
            span: 0.0,
            buckets: BTreeMap::new(),
            sum: 0.0,
            count: 0.0,
        };
        // Rows come grouped by scrape; combine the matched series of each scrape.
        let mut i = 0;
        while i < rows.len() {
            let t = rows[i].t_ns;
            let mut vals = Vec::new();
            let (mut delta, mut span) = (0.0, None::<f64>);
            while i < rows.len() && rows[i].t_ns == t {
                let r = rows[i];
                i += 1;
                if !matched[r.series as usize] {
                    continue;
                }
                let key = &series[r.series as usize];
                match q.kind {
                    QuantityKind::Gauge(_) => vals.push(r.value),
                    QuantityKind::Counter => {
                        delta += r.delta.unwrap_or(0.0);
                        if let Some(s) = r.span_s {
                            span = Some(span.map_or(s, |m| m.max(s)));
                        }
                    }
                    QuantityKind::Histogram => {
                        let d = r.delta.unwrap_or(0.0);
                        if key.name.ends_with("_bucket") {
                            if let Some(le) = key.le() {
                                *f.buckets.entry(OrdF64(le)).or_default() += d;
                            }
                        } else if key.name.ends_with("_sum") {
                            f.sum += d;
                        } else if key.name.ends_with("_count") {
                            f.count += d;
                        }
                    }
                }
            }
            match q.kind {
                QuantityKind::Gauge(across) if !vals.is_empty() && t <= gauge_end_ns => {
                    let v = match across {
                        Across::Sum => vals.iter().sum(),
                        Across::Mean => vals.iter().sum::<f64>() / vals.len() as f64,
                        Across::Max => vals.iter().copied().fold(f64::MIN, f64::max),
                    };
                    f.points.push((t, v));
                }
                QuantityKind::Counter => {
                    if let Some(s) = span.filter(|s| *s > 0.0) {
                        f.delta += delta;
                        f.span += s;
                        f.points.push((t, delta / s));
                    }
                }
                _ => {}
            }
        }
        out.push(f);
    }
    out
}

/// The `q`-quantile (0 to 1) of a histogram given as increases per upper bound, as
/// Prometheus' `histogram_quantile` computes it: linear within the bucket, the lower bound of
/// the first bucket 0, the `+Inf` bucket answered by the highest finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    // Buckets are cumulative: the last (`+Inf`) holds the total.
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = cum - lower.1;
            let frac = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, cum);
    }
    Some(lower.0)
}

/// The `server.*` metrics of a cell's quantities (without the prefix).
fn server_metrics(found: &[Found]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut gauges: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut counters: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for f in found {
        let name = f.quantity.name;
        match f.quantity.kind {
            QuantityKind::Gauge(_) => gauges
                .entry(name)
                .or_default()
                .extend(f.points.iter().map(|p| p.1)),
            QuantityKind::Counter => {
                let c = counters.entry(name).or_default();
                c.0 += f.delta;
                c.1 = c.1.max(f.span);
            }
            QuantityKind::Histogram => {
                let buckets: Vec<(f64, f64)> = f.buckets.iter().map(|(k, v)| (k.0, *v)).collect();
                for (stat, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                    if let Some(v) = histogram_quantile(q, &buckets) {
                        out.insert(format!("{name}.{stat}"), v * 1e3);
                    }
                }
                if f.count > 0.0 {
                    out.insert(format!("{name}.mean"), f.sum / f.count * 1e3);
                }
            }
        }
    }
    for (name, vals) in gauges.iter().filter(|(_, v)| !v.is_empty()) {
        out.insert(
            format!("{name}.mean"),
            vals.iter().sum::<f64>() / vals.len() as f64,
        );
        out.insert(
            format!("{name}.max"),
            vals.iter().copied().fold(f64::MIN, f64::max),
        );
    }
    for (name, (delta, span)) in &counters {
        if *span > 0.0 {
            out.insert(format!("{name}_per_s"), delta / span);
        }
    }
    // The hit rate from token counters where the server has them, else its own gauge.
    if let (Some((hits, _)), Some((queries, _))) = (
        counters.get("prefix_cache_hits"),
        counters.get("prefix_cache_queries"),
    ) && *queries > 0.0
    {
        out.remove("prefix_cache_hit_rate.max");
        out.insert("prefix_cache_hit_rate.mean".into(), hits / queries);
    }
    out
}

/// The table of a cell's telemetry, its summary and the cross-checks: see the module's
/// documentation for the table's columns. `tolerance` is the relative difference (0.01:
/// 1%) beyond which a server counter disagrees with the client's count.
///
/// # Errors
/// [`Error::Arrow`] when the table cannot be built.
pub fn summarise(
    log: &ScrapeLog,
    window: Window,
    client: &ClientCounts,
    tolerance: f64,
) -> Result<(TelemetrySummary, RecordBatch), Error> {
    let mut summary = TelemetrySummary {
        window_start_s: window.start_ns as f64 / 1e9,
        window_end_s: window.end_ns as f64 / 1e9,
        interval_s: log.interval.as_secs_f64(),
        ..Default::default()
    };
    let mut cols = Columns::default();
    let mut found = Vec::new();
    for target in &log.targets {
        // Counters and histograms count what happened up to the first scrape after the
        // window too: a server that counts a request when it ends (llama.cpp) reports the
        // window's last completions there. Gauges and the table keep to the window.
        // Without a scrape inside the window the bracket would be mostly time outside it.
        let inside = target
            .scrapes()
            .iter()
            .any(|s| s.outcome.is_ok() && window.contains(s.t_ns));
        let after = target
            .scrapes()
            .iter()
            .find(|s| inside && s.outcome.is_ok() && s.t_ns > window.end_ns)
            .map_or(window.end_ns, |s| s.t_ns);
        let bracket = Window {
            start_ns: window.start_ns,
            end_ns: after,
        };
        let mut rows = Vec::new();
        target.rows(
            Some(bracket),
            |_| true,
            |r| {
                if r.t_ns <= window.end_ns {
                    cols.push(target, &r);
                }
                rows.push(r);
            },
        );
        let mut f = find_quantities(target.series(), &rows, window.end_ns);
        drop(rows);
        let failures = target
            .scrapes()
            .iter()
            .filter_map(|s| s.outcome.as_ref().err());
        summary.targets.push(TargetSummary {
            name: target.name.clone(),
            url: target.url.clone(),
            scrapes: target.scrapes().len(),
            failed: failures.clone().count(),
            first_failure: failures.clone().next().cloned(),
            in_window: target
                .scrapes()
                .iter()
                .filter(|s| s.outcome.is_ok() && window.contains(s.t_ns))
                .count(),
            series: target.series().len(),
            quantities: f
                .iter()
                .map(|f| {
                    (
                        f.quantity.name.to_owned(),
                        f.source.iter().map(|s| (*s).to_owned()).collect(),
                    )
                })
                .collect(),
            warnings: target.warnings().to_vec(),
        });
        summary
            .cross_checks
            .extend(cross_checks(target, &f, client, tolerance));
        found.append(&mut f);
    }
    summary.server = server_metrics(&found);
    let batch = cols.finish(&summary)?;
    Ok((summary, batch))
}

/// Each counter with a client count, over the whole cell: only when a scrape came before
/// the first request and another after the last response.
fn cross_checks(
    target: &TargetLog,
    found: &[Found],
    client: &ClientCounts,
    tolerance: f64,
) -> Vec<CrossCheck> {
    let ok: Vec<&Scrape> = target
        .scrapes()
        .iter()
        .filter(|s| s.outcome.is_ok())
        .collect();
    let (Some(first), Some(last)) = (ok.first(), ok.last()) else {
        return Vec::new();
    };
    if first.t_ns > 0 || last.t_ns < client.end_ns {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in found {
        let Some(want) = client.of(f.quantity.name) else {
            continue;
        };
        let q = f.quantity;
        let source = f.source;
        let mut total = 0.0;
        target.rows(
            None,
            |s| source.iter().any(|src| q.matches(src, &s.name)),
            |r| total += r.delta.unwrap_or(0.0),
        );
        let want = want as f64;
        out.push(CrossCheck {
            quantity: q.name.to_owned(),
            target: target.name.clone(),
            source: source.iter().map(|s| (*s).to_owned()).collect(),
            server: total,
            client: want,
            agrees: (total - want).abs() <= tolerance * want.max(1.0),
        });
    }
    out
}

/// The columns of `server_metrics.parquet`, filled row by row.
#[derive(Default)]
struct Columns {
    time: Float64Builder,
    target: StringBuilder,
    metric: StringBuilder,
    labels: StringBuilder,
    kind: StringBuilder,
    value: Float64Builder,
    delta: Float64Builder,
    interval: Float64Builder,
}

impl Columns {
    fn push(&mut self, target: &TargetLog, r: &Row) {
        let key = &target.series()[r.series as usize];
        self.time.append_value(r.t_ns as f64 / 1e9);
        self.target.append_value(&target.name);
        self.metric.append_value(&key.name);
        self.labels.append_value(expo::format_labels(&key.labels));
        self.kind.append_value(key.kind.as_str());
        self.value.append_value(r.value);
        self.delta.append_option(r.delta);
        self.interval.append_option(r.span_s);
    }

    fn finish(mut self, summary: &TelemetrySummary) -> Result<RecordBatch, Error> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.target.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.delta.finish()),
            Arc::new(self.interval.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(schema(summary)), columns)?)
    }
}

/// The schema of `server_metrics.parquet`, with the window's bounds in its metadata.
fn schema(summary: &TelemetrySummary) -> Schema {
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let meta: HashMap<String, String> = [
        (crate::schema::META_SCHEMA, "server_metrics".to_owned()),
        (crate::schema::META_VERSION, "1".to_owned()),
        ("harness.window_start_s", summary.window_start_s.to_string()),
        ("harness.window_end_s", summary.window_end_s.to_string()),
        ("harness.interval_s", summary.interval_s.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Schema::new_with_metadata(
        vec![
            f("time_s", DataType::Float64, false),
            f("target", DataType::Utf8, false),
            f("metric", DataType::Utf8, false),
            f("labels", DataType::Utf8, false),
            f("kind", DataType::Utf8, false),
            f("value", DataType::Float64, false),
            f("delta", DataType::Float64, true),
            f("interval_s", DataType::Float64, true),
        ],
        meta,
    )
}

/// Per target, its series and rows read back from a `server_metrics.parquet` table; rows of
/// unknown metrics are left out.
fn rows_of_batch(batch: &RecordBatch) -> Result<Vec<TargetRows>, Error> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::invalid("server_metrics.parquet", format!("no `{name}` column")))
    };
    let strings = |name: &str| -> Result<StringArray, Error> {
        col(name)?
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| {
                Error::invalid("server_metrics.parquet", format!("`{name}` is not text"))
            })
    };
    let floats = |name: &str| -> Result<Float64Array, Error> {
        col(name)?
            .as_any()
            .downcast_ref::<Float64Array>()
            .cloned()
            .ok_or_else(|| {
                Error::invalid("server_metrics.parquet", format!("`{name}` is not a float"))
            })
    };
    let (time, target, metric, labels, kind) = (
        floats("time_s")?,
        strings("target")?,
        strings("metric")?,
        strings("labels")?,
        strings("kind")?,
    );
    let (value, delta, interval) = (floats("value")?, floats("delta")?, floats("interval_s")?);
    let known = |name: &str| {
        QUANTITIES.iter().any(|q| {
            q.sources
                .iter()
                .flat_map(|a| a.iter())
                .any(|s| q.matches(s, name))
        })
    };
    let mut targets: Vec<TargetRows> = Vec::new();
    for i in 0..batch.num_rows() {
        let name = metric.value(i);
        if !known(name) {
            continue;
        }
        let t = match targets.iter().position(|x| x.name == target.value(i)) {
            Some(t) => t,
            None => {
                targets.push(TargetRows {
                    name: target.value(i).to_owned(),
                    series: Vec::new(),
                    index: HashMap::new(),
                    rows: Vec::new(),
                });
                targets.len() - 1
            }
        };
        let TargetRows {
            series,
            index,
            rows,
            ..
        } = &mut targets[t];
        let key = (name.to_owned(), labels.value(i).to_owned());
        let id = match index.get(&key) {
            Some(id) => *id,
            None => {
                let parsed = expo::parse_labels(labels.value(i)).map_err(|e| {
                    Error::invalid("server_metrics.parquet", format!("row {i}: labels: {e}"))
                })?;
                let kind = match kind.value(i) {
                    "counter" => MetricKind::Counter,
                    "gauge" => MetricKind::Gauge,
                    "histogram" => MetricKind::Histogram,
                    "summary" => MetricKind::Summary,
                    _ => MetricKind::Untyped,
                };
                series.push(SeriesKey {
                    name: name.to_owned(),
                    labels: parsed,
                    kind,
                });
                let id = series.len() as u32 - 1;
                index.insert(key, id);
                id
            }
        };
        rows.push(Row {
            t_ns: (time.value(i) * 1e9).round() as i64,
            series: id,
            value: value.value(i),
            delta: (!delta.is_null(i)).then(|| delta.value(i)),
            span_s: (!interval.is_null(i)).then(|| interval.value(i)),
        });
    }
    Ok(targets)
}

/// One target's rows of a stored table.
struct TargetRows {
    name: String,
    series: Vec<SeriesKey>,
    index: HashMap<(String, String), u32>,
    rows: Vec<Row>,
}

#[cfg(test)]
mod tests;
