//! The report of a run: `summary.parquet`, charts (SVG and PNG), a self-contained
//! `report/index.html` and `report/report.md`; and [`ReportStep`], which writes them at the
//! end of every run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::journal::{JournalEntry, Manifest};
use harness_core::{
    ArtifactStore, ArtifactStoreExt, CellId, CellStatus, Experiment, RunLayout, Step, StepContext,
    StepOutput,
};

use crate::Error;
use crate::chart::{Chart, Series, pareto_front};
use crate::io::to_parquet;
use crate::stats::CellStats;
use crate::table::{CellRow, summary_batch};
use crate::telemetry::{ClientPoint, ServerSeries, client_timeline, server_timeline};

/// A stored run, read back for reports and comparisons.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunData {
    /// Its keys.
    pub layout: RunLayout,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its cells in plan order.
    pub rows: Vec<CellRow>,
    /// GPUs serving the model, when the experiment says.
    pub gpus: Option<u32>,
    /// GPUs of each treatment's deployment, when known.
    pub treatment_gpus: BTreeMap<String, u32>,
    /// The run's SLO searches (`search.json`), when it has any.
    pub search: Vec<harness_core::search::SearchOutcome>,
    /// The treatment these rows are restricted to ([`RunData::treatment_only`]).
    pub treatment: Option<String>,
    /// Each cell's time series, once [`RunData::load_timelines`] read them.
    pub timelines: Vec<CellTimeline>,
}

/// One cell's time series: the client's (from its records) and the server's (from its
/// `server_metrics.parquet`), for the report's charts.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CellTimeline {
    /// The cell.
    pub cell: String,
    /// The width of the client's buckets, in seconds.
    pub bucket_s: f64,
    /// The client's series.
    pub client: Vec<ClientPoint>,
    /// The server's series.
    pub server: Vec<ServerSeries>,
}

/// At most this many cells get time series charts in a report.
pub const MAX_TIMELINES: usize = 32;

/// The bucket of a cell's client series: 1 s, or a twentieth of a cell shorter than 20 s
/// (10 ms at least), so that a short cell still shows its shape.
fn bucket_for(duration_s: f64) -> f64 {
    if duration_s >= 20.0 || !duration_s.is_finite() {
        1.0
    } else {
        (duration_s / 20.0).max(0.01)
    }
}

fn status_word(s: CellStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The GPUs the deploy step recorded (`setup/artifacts/deploy/deployed.json`, written by
/// backends that know them, such as Kubernetes), when it did and they are more than 0.
async fn deployed_gpus(store: &dyn ArtifactStore, layout: &RunLayout, scope: &str) -> Option<u32> {
    let key = layout
        .step_artifacts(scope, "deploy")
        .and_then(|k| k.join("deployed.json"))
        .ok()?;
    let v: serde_json::Value = store.get_json(&key).await.ok()?;
    v.get("gpus")
        .and_then(serde_json::Value::as_u64)
        .and_then(|g| u32::try_from(g).ok())
        .filter(|g| *g > 0)
}

impl RunData {
    /// Reads run `layout` from `store`: the manifest, each cell's journal entry and
    /// statistics (`cells/<cell>/stats.json`), when present. GPUs come from
    /// `deployment.gpus`, else from what the deploy step recorded.
    ///
    /// # Errors
    /// When the manifest cannot be read, or a stored file cannot be decoded.
    pub async fn load(store: &dyn ArtifactStore, layout: RunLayout) -> Result<Self, Error> {
        let manifest: Manifest = store.get_json(&layout.manifest()).await?;
        let exp = Experiment::from_json(&manifest.experiment, "the stored experiment")?;
        let plan = exp.plan()?;
        // GPUs: as the experiment says, else as the deploy step recorded what it deployed.
        let gpus = match exp.deployment.gpus() {
            Some(g) => Some(g),
            None => deployed_gpus(store, &layout, "setup").await,
        };
        let mut treatment_gpus = BTreeMap::new();
        for name in exp.treatment_names() {
            let own = exp.treatment(name).ok().and_then(|t| t.deployment.gpus());
            let g = match own {
                Some(g) => Some(g),
                None => deployed_gpus(store, &layout, &format!("treatments/{name}/setup")).await,
            };
            if let Some(g) = g {
                treatment_gpus.insert(name.to_owned(), g);
            }
        }
        let search = match store.get_json(&layout.search()).await {
            Ok(s) => s,
            Err(harness_core::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut rows = Vec::with_capacity(plan.len());
        for cell in plan.cells() {
            let status = match store
                .get_json::<JournalEntry>(&layout.journal(&cell.id))
                .await
            {
                Ok(e) => e.status,
                Err(harness_core::Error::NotFound { .. }) => CellStatus::Pending,
                Err(e) => return Err(e.into()),
            };
            // Candidates an SLO search did not need are not part of the results.
            if status == CellStatus::Skipped {
                continue;
            }
            let stats = match store
                .get_json::<CellStats>(&layout.cell_stats(&cell.id))
                .await
            {
                Ok(s) => Some(s),
                Err(harness_core::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            rows.push(CellRow {
                cell: cell.id.to_string(),
                params: cell.params.clone(),
                status: status_word(status),
                stats,
            });
        }
        Ok(RunData {
            layout,
            manifest,
            rows,
            gpus,
            treatment_gpus,
            search,
            treatment: None,
            timelines: Vec::new(),
        })
    }

    /// Reads the time series of the run's first [`MAX_TIMELINES`] cells that have records:
    /// the client's from `records.parquet`, the server's from `server_metrics.parquet` when
    /// telemetry was scraped.
    ///
    /// # Errors
    /// When a stored table cannot be read or decoded.
    pub async fn load_timelines(&mut self, store: &dyn ArtifactStore) -> Result<(), Error> {
        let mut out = Vec::new();
        for row in &self.rows {
            if out.len() == MAX_TIMELINES {
                break;
            }
            let id = CellId::new(&row.cell)?;
            let records = match store.get(&self.layout.cell_records(&id)).await {
                Ok(b) => crate::table::records_from_batch(&crate::io::from_parquet(b)?)?,
                Err(harness_core::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let server = match store.get(&self.layout.cell_server_metrics(&id)).await {
                Ok(b) => server_timeline(&crate::io::from_parquet(b)?)?,
                Err(harness_core::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let end = records.iter().map(|r| r.end_ns).max().unwrap_or(0);
            let bucket_s = bucket_for(end as f64 / 1e9);
            out.push(CellTimeline {
                cell: row.cell.clone(),
                bucket_s,
                client: client_timeline(&records, bucket_s),
                server,
            });
        }
        self.timelines = out;
        Ok(())
    }

    /// `experiment/run-id`, and `@treatment` when restricted to one.
    pub fn label(&self) -> String {
        let at = self
            .treatment
            .as_ref()
            .map(|t| format!("@{t}"))
            .unwrap_or_default();
        format!(
            "{}/{}{at}",
            self.manifest.experiment_name, self.manifest.run_id
        )
    }

    /// The cells of treatment `name` alone, as if they were a run of their own: ids and
    /// parameters without `treatment=<name>`, so that they match another treatment's cells
    /// (of this run or another) in a comparison. `samples` (keyed by cell id) are re-keyed
    /// alike.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the run has no cell of that treatment.
    pub fn treatment_only<T>(
        mut self,
        name: &str,
        samples: BTreeMap<String, T>,
    ) -> Result<(Self, BTreeMap<String, T>), Error> {
        let prefix = format!("treatment={name},");
        let mut rekeyed = BTreeMap::new();
        for (id, v) in samples {
            if let Some(rest) = id.strip_prefix(&prefix) {
                rekeyed.insert(rest.to_owned(), v);
            }
        }
        self.rows.retain(|r| r.cell.starts_with(&prefix));
        if self.rows.is_empty() {
            return Err(Error::invalid(
                format!("{}@{name}", self.label()),
                "the run has no cell of this treatment",
            ));
        }
        for r in &mut self.rows {
            r.cell = r.cell[prefix.len()..].to_owned();
            r.params.retain(|(n, _)| n != "treatment");
        }
        self.gpus = self.treatment_gpus.get(name).copied().or(self.gpus);
        self.search.retain(|o| o.treatment.as_deref() == Some(name));
        self.treatment = Some(name.to_owned());
        Ok((self, rekeyed))
    }

    /// The summary table of the run, one row per cell.
    ///
    /// # Errors
    /// As [`summary_batch`].
    pub fn summary(&self) -> Result<arrow_array::RecordBatch, Error> {
        summary_batch(
            &self.manifest.run_id,
            &self.manifest.experiment_name,
            self.gpus,
            &self.rows,
        )
    }

    /// The load parameter the sweep varies: `concurrency`, or `request_rate`.
    pub fn load_axis(&self) -> &'static str {
        let has = |name: &str| {
            self.rows
                .iter()
                .any(|r| r.params.iter().any(|(n, _)| n == name))
        };
        if has("concurrency") || !has("request_rate") {
            "concurrency"
        } else {
            "request_rate"
        }
    }

    /// The GPUs serving `row`'s cell: its treatment's, else the run's.
    pub fn gpus_of(&self, row: &CellRow) -> Option<u32> {
        row.params
            .iter()
            .find(|(n, _)| n == "treatment")
            .and_then(|(_, t)| self.treatment_gpus.get(&t.to_string()).copied())
            .or(self.gpus)
    }

    /// The series of the sweep: cells grouped by everything but the load parameter
    /// (typically treatment and ISL/OSL), in first-seen order, each with its label. Repeated
    /// probes of an SLO search are left out (their value was probed already).
    pub fn series(&self) -> Vec<(String, Vec<&CellRow>)> {
        let axis = self.load_axis();
        let mut out: Vec<(String, Vec<&CellRow>)> = Vec::new();
        for row in self
            .rows
            .iter()
            .filter(|r| !r.params.iter().any(|(n, _)| n == "repeat"))
        {
            let label = row
                .params
                .iter()
                .filter(|(n, _)| n != axis)
                .map(|(n, v)| format!("{} {v}", n.to_uppercase()))
                .collect::<Vec<_>>()
                .join(" / ");
            let label = if label.is_empty() {
                "all cells".to_owned()
            } else {
                label
            };
            match out.iter_mut().find(|(l, _)| *l == label) {
                Some((_, rows)) => rows.push(row),
                None => out.push((label, vec![row])),
            }
        }
        out
    }
}

/// The x value of a cell: its load parameter.
pub(crate) fn x_of(row: &CellRow, axis: &str) -> Option<f64> {
    row.params
        .iter()
        .find(|(n, _)| n == axis)
        .and_then(|(_, v)| v.as_f64())
}

/// The charts of a run: TTFT, ITL and request latency (p50 solid, p99 dashed) and
/// throughput against the load, one colour per series; and the Pareto front of output
/// tokens/s per GPU (or per deployment, when the GPU count is unknown) against tokens/s per
/// user.
pub fn charts(run: &RunData) -> Vec<Chart> {
    let axis = run.load_axis();
    let x_label = if axis == "concurrency" {
        "concurrency"
    } else {
        "request rate (requests/s)"
    };
    let series = run.series();
    let mut out = Vec::new();
    for (metric, title, unit) in [
        ("ttft", "Time to first token", "ms"),
        ("itl", "Inter-token latency", "ms"),
        ("request_latency", "Request latency", "ms"),
    ] {
        let mut c = Chart::new(
            metric,
            format!("{title} (p50 solid, p99 dashed)"),
            x_label,
            unit,
        );
        c.log_x = axis == "concurrency";
        for (i, (label, rows)) in series.iter().enumerate() {
            for (stat, dashed) in [("p50", false), ("p99", true)] {
                let pts = points(rows, axis, |s| s.value(&format!("{metric}.{stat}")));
                let s = Series::line(format!("{label} {stat}"), pts, i);
                c.series.push(if dashed { s.dashed() } else { s });
            }
        }
        out.push(c);
    }
    let mut t = Chart::new(
        "throughput",
        "Output token throughput",
        x_label,
        "output tokens/s",
    );
    t.log_x = axis == "concurrency";
    for (i, (label, rows)) in series.iter().enumerate() {
        t.series.push(Series::line(
            label.clone(),
            points(rows, axis, |s| Some(s.output_token_throughput)),
            i,
        ));
    }
    out.push(t);

    let per = match (run.gpus, run.treatment_gpus.is_empty()) {
        (_, false) => "per GPU (each treatment's GPUs)".to_owned(),
        (Some(g), true) => format!("per GPU ({g} GPUs)"),
        (None, true) => "per deployment (GPU count unknown)".to_owned(),
    };
    let mut p = Chart::new(
        "pareto",
        format!("Output tokens/s {per} vs tokens/s per user"),
        "output tokens/s per user (p50)",
        format!("output tokens/s {}", per.split(" (").next().unwrap_or("")),
    );
    let mut all = Vec::new();
    for (i, (label, rows)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| {
                let s = r.stats.as_ref()?;
                let x = s.value("output_token_throughput_per_user.p50")?;
                let y = s.output_token_throughput / f64::from(run.gpus_of(r).unwrap_or(1).max(1));
                Some((x, y))
            })
            .collect();
        all.extend(pts.iter().copied());
        p.series
            .push(Series::line(label.clone(), pts, i).points_only());
    }
    p.series
        .push(Series::line("Pareto front", pareto_front(&all), 7).dashed());
    out.push(p);
    out.extend(turn_charts(run));
    out.retain(Chart::has_data);
    out
}

/// Most cells drawn in the by-turn charts (one line each).
const MAX_TURN_SERIES: usize = 8;

/// For cells of multi-turn sessions: TTFT (p50) by turn, and the prefix cache's hit rate
/// by turn where the server reports cached tokens; one line per cell.
fn turn_charts(run: &RunData) -> Vec<Chart> {
    let cells: Vec<(&CellRow, &CellStats)> = run
        .rows
        .iter()
        .filter_map(|r| {
            r.stats
                .as_ref()
                .filter(|s| !s.turns.is_empty())
                .map(|s| (r, s))
        })
        .take(MAX_TURN_SERIES)
        .collect();
    let mut ttft = Chart::new(
        "ttft-by-turn",
        "Time to first token by turn (p50)",
        "turn",
        "ms",
    );
    let mut hits = Chart::new(
        "prefix-cache-by-turn",
        "Prefix cache hit rate by turn",
        "turn",
        "cached / input tokens",
    );
    for (i, (row, s)) in cells.iter().enumerate() {
        let turn = |t: &crate::TurnStats| f64::from(t.turn);
        ttft.series.push(Series::line(
            row.cell.clone(),
            s.turns
                .iter()
                .filter(|t| t.ttft_p50_ms.is_finite())
                .map(|t| (turn(t), t.ttft_p50_ms))
                .collect(),
            i,
        ));
        hits.series.push(Series::line(
            row.cell.clone(),
            s.turns
                .iter()
                .filter_map(|t| Some((turn(t), t.prefix_cache_hit_rate?)))
                .collect(),
            i,
        ));
    }
    for c in [&mut ttft, &mut hits] {
        c.series.retain(|s| !s.points.is_empty());
    }
    vec![ttft, hits]
}

/// The charts of one cell's time series (`i`: its position, which names the files): requests
/// in flight and the server's running and waiting requests; completed requests and output
/// tokens per second, the client's and the server's; and the server's KV cache usage and GPU utilisation, in
/// percent, when it reports them.
pub fn timeline_charts(i: usize, t: &CellTimeline) -> Vec<Chart> {
    let x = "seconds since the cell started";
    let mid = t.bucket_s / 2.0;
    let client = |f: fn(&ClientPoint) -> f64| -> Vec<(f64, f64)> {
        t.client.iter().map(|p| (p.t_s + mid, f(p))).collect()
    };
    let server = |name: &str, scale: f64| -> Vec<(f64, f64)> {
        t.server
            .iter()
            .find(|s| s.quantity == name)
            .map(|s| s.points.iter().map(|(x, y)| (*x, y * scale)).collect())
            .unwrap_or_default()
    };
    let chart = |kind: &str, title: &str, unit: &str, series: Vec<Series>| {
        let mut c = Chart::new(
            format!("cell-{i}-{kind}"),
            format!("{}: {title}", t.cell),
            x,
            unit,
        );
        c.series = series;
        c
    };
    let load = chart(
        "requests",
        "requests",
        "requests",
        vec![
            Series::line("client: in flight", client(|p| p.in_flight), 0),
            Series::line("server: running", server("running", 1.0), 1),
            Series::line("server: waiting", server("waiting", 1.0), 3).dashed(),
        ],
    );
    let done = chart(
        "completions",
        "completed requests/s",
        "requests/s",
        vec![
            Series::line("client", client(|p| p.completions_per_s), 0),
            Series::line("server", server("requests", 1.0), 1),
        ],
    );
    let tokens = chart(
        "tokens",
        "output tokens/s",
        "tokens/s",
        vec![
            Series::line("client", client(|p| p.output_tokens_per_s), 0),
            Series::line("server: generated", server("generation_tokens", 1.0), 1),
        ],
    );
    let util = chart(
        "server",
        "server utilisation",
        "%",
        vec![
            Series::line("KV cache usage", server("kv_cache_usage", 100.0), 4),
            Series::line("GPU utilisation", server("gpu_util", 1.0), 5),
        ],
    );
    let mut out = vec![load, done, tokens, util];
    for c in &mut out {
        c.series.retain(|s| !s.points.is_empty());
    }
    out.retain(Chart::has_data);
    out
}

fn points(rows: &[&CellRow], axis: &str, f: impl Fn(&CellStats) -> Option<f64>) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((x_of(r, axis)?, f(r.stats.as_ref()?)?)))
        .collect()
}

/// The metric columns of result tables (the report's, the CLI's): metric, header.
pub const TABLE_COLUMNS: [(&str, &str); 10] = [
    ("requests", "requests"),
    ("errors", "errors"),
    ("request_throughput", "req/s"),
    ("output_token_throughput", "out tok/s"),
    ("ttft.p50", "TTFT p50 ms"),
    ("ttft.p99", "TTFT p99 ms"),
    ("itl.p50", "ITL p50 ms"),
    ("itl.p99", "ITL p99 ms"),
    ("request_latency.p50", "latency p50 ms"),
    ("output_token_throughput_per_user.p50", "tok/s/user p50"),
];

/// The server's columns of result tables, shown when a cell has them: metric, header.
pub const SERVER_COLUMNS: [(&str, &str); 6] = [
    ("server.running.mean", "server running"),
    ("server.waiting.mean", "server waiting"),
    ("server.kv_cache_usage.max", "KV cache max"),
    ("server.prefix_cache_hit_rate.mean", "prefix cache hits"),
    ("server.gpu_util.mean", "GPU util %"),
    ("server.energy_per_output_token_j", "J/out token"),
];

/// The workload's columns of result tables, shown when a cell has them: the prefix cache's
/// hit rate (from the server's usage) and, for sessions, TTFT by turn and session length.
pub const WORKLOAD_COLUMNS: [(&str, &str); 4] = [
    ("prefix_cache_hit_rate", "prefix cache hit rate"),
    ("ttft_first_turn.p50", "TTFT turn 1 p50 ms"),
    ("ttft_later_turns.p50", "TTFT turns 2+ p50 ms"),
    ("session_duration.p50", "session p50 ms"),
];

/// A number for a table: integers plain, others with 1 to 3 decimals.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn table_rows(run: &RunData) -> (Vec<String>, Vec<Vec<String>>) {
    let present = |(m, _): &&(&str, &str)| {
        run.rows
            .iter()
            .any(|r| r.stats.as_ref().and_then(|s| s.value(m)).is_some())
    };
    let columns: Vec<(&str, &str)> = TABLE_COLUMNS
        .iter()
        .chain(WORKLOAD_COLUMNS.iter().filter(present))
        .chain(SERVER_COLUMNS.iter().filter(present))
        .copied()
        .collect();
    let mut header = vec!["cell".to_owned(), "status".to_owned()];
    header.extend(columns.iter().map(|(_, h)| (*h).to_owned()));
    let rows = run
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![r.cell.clone(), r.status.clone()];
            row.extend(columns.iter().map(|(m, _)| {
                r.stats
                    .as_ref()
                    .and_then(|s| s.value(m))
                    .map_or_else(|| "-".to_owned(), format_value)
            }));
            row
        })
        .collect();
    (header, rows)
}

/// The treatments ranked by output tokens/s per GPU (per deployment when the GPUs are
/// unknown) at the best load of their SLO search: one row per search that found one.
pub fn ranking(run: &RunData) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "rank",
        "treatment",
        "series",
        "best load",
        "output tokens/s",
        "GPUs",
        "output tokens/s per GPU",
        "TTFT p99 ms",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut found: Vec<(f64, Vec<String>)> = Vec::new();
    for o in &run.search {
        let Some(best) = o.best else { continue };
        let probe = o
            .probes
            .iter()
            .find(|p| p.repeat == 1 && (p.value - best).abs() < 1e-9);
        let Some(row) = probe.and_then(|p| run.rows.iter().find(|r| r.cell == p.cell)) else {
            continue;
        };
        let Some(stats) = &row.stats else { continue };
        let gpus = run.gpus_of(row);
        let per = stats.output_token_throughput / f64::from(gpus.unwrap_or(1).max(1));
        found.push((
            per,
            vec![
                o.treatment.clone().unwrap_or_else(|| "-".into()),
                o.group.clone(),
                format!(
                    "{} {}",
                    o.axis_name(),
                    harness_core::config::values::format_number(best)
                ),
                format_value(stats.output_token_throughput),
                gpus.map_or_else(|| "unknown".into(), |g| g.to_string()),
                format_value(per),
                stats
                    .value("ttft.p99")
                    .map_or_else(|| "-".into(), format_value),
            ],
        ));
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    let rows = found
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut row))| {
            row.insert(0, (i + 1).to_string());
            row
        })
        .collect();
    (header, rows)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report's files, relative to the run's `report/` folder.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Report {
    /// `(relative path, bytes)`: `index.html`, `report.md`, `charts/<name>.svg|png`.
    pub files: Vec<(String, Bytes)>,
    /// Charts that could not be drawn, and why.
    pub warnings: Vec<String>,
}

/// Builds the report of `run`: a self-contained HTML page (tables and SVG charts inline,
/// opens from disk), a Markdown page, and every chart as SVG and PNG.
pub fn build_report(run: &RunData) -> Report {
    let mut report = Report::default();
    let mut svgs: Vec<(String, String)> = Vec::new();
    for chart in charts(run) {
        match (chart.svg(), chart.png()) {
            (Ok(svg), Ok(png)) => {
                report.files.push((
                    format!("charts/{}.svg", chart.name),
                    Bytes::from(svg.clone()),
                ));
                report
                    .files
                    .push((format!("charts/{}.png", chart.name), Bytes::from(png)));
                svgs.push((chart.name.clone(), svg));
            }
            (Err(e), _) | (_, Err(e)) => report.warnings.push(e.to_string()),
        }
    }
    // Each cell's time series: `(cell, [(chart name, svg)])`.
    let mut timelines: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (i, t) in run.timelines.iter().enumerate() {
        let mut names = Vec::new();
        for chart in timeline_charts(i, t) {
            match (chart.svg(), chart.png()) {
                (Ok(svg), Ok(png)) => {
                    report.files.push((
                        format!("charts/{}.svg", chart.name),
                        Bytes::from(svg.clone()),
                    ));
                    report
                        .files
                        .push((format!("charts/{}.png", chart.name), Bytes::from(png)));
                    names.push((chart.name.clone(), svg));
                }
                (Err(e), _) | (_, Err(e)) => report.warnings.push(e.to_string()),
            }
        }
        timelines.push((t.cell.clone(), names));
    }
    let m = &run.manifest;
    let (header, rows) = table_rows(run);
    let gpus = run.gpus.map_or_else(
        || "unknown (throughput is per deployment)".to_owned(),
        |g| g.to_string(),
    );
    let facts: Vec<(&str, String)> = vec![
        ("run", m.run_id.clone()),
        ("experiment", m.experiment_name.clone()),
        ("status", status_word_run(run)),
        ("created", m.created_at.clone()),
        ("harness", m.harness_version.clone()),
        (
            "host",
            format!(
                "{} ({}, {} CPUs{})",
                m.host.hostname,
                m.host.os,
                m.host.cpus,
                m.host
                    .cpu_model
                    .as_ref()
                    .map(|c| format!(", {c}"))
                    .unwrap_or_default()
            ),
        ),
        ("GPUs", gpus),
    ];

    // HTML
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>harness report: {title}</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222;background:#fff}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}\
         th{{background:#eef}}td:first-child,th:first-child{{text-align:left}}\
         .charts svg{{max-width:100%;height:auto;border:1px solid #ddd;margin:0.5em 0}}\
         </style></head><body><h1>harness report: {title}</h1><table>",
        title = escape(&run.label())
    );
    for (k, v) in &facts {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    h.push_str("</table>");
    let (rank_header, ranked) = ranking(run);
    if !ranked.is_empty() {
        h.push_str(
            "<h2>Treatments ranked</h2><p>By output tokens/s per GPU at the highest load \
             at which the SLO held.</p><table><tr>",
        );
        for c in &rank_header {
            let _ = write!(h, "<th>{}</th>", escape(c));
        }
        h.push_str("</tr>");
        for r in &ranked {
            h.push_str("<tr>");
            for c in r {
                let _ = write!(h, "<td>{}</td>", escape(c));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Cells</h2><table><tr>");
    for c in &header {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr>");
    for r in &rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{}</td>", escape(c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><h2>Charts</h2><div class=\"charts\">");
    for (_, svg) in &svgs {
        // The SVG documents carry an XML-free root element; inline them as they are.
        h.push_str(svg);
    }
    h.push_str("</div>");
    if !timelines.is_empty() {
        h.push_str(
            "<h2>Cell timelines</h2><p>The client's requests and tokens (from its records) \
             beside the server's metrics (scraped during the cell, within its measured window).</p>",
        );
        for (cell, names) in &timelines {
            let _ = write!(h, "<h3>{}</h3><div class=\"charts\">", escape(cell));
            for (_, svg) in names {
                h.push_str(svg);
            }
            h.push_str("</div>");
        }
    }
    h.push_str(
        "<p>Metric definitions follow aiperf; every statistic is in \
         <code>summary.parquet</code> beside this report.</p></body></html>\n",
    );
    report.files.push(("index.html".to_owned(), Bytes::from(h)));

    // Markdown
    let mut md = format!("# harness report: {}\n\n", run.label());
    for (k, v) in &facts {
        let _ = writeln!(md, "- **{k}**: {v}");
    }
    if !ranked.is_empty() {
        md.push_str(
            "\n## Treatments ranked\n\nBy output tokens/s per GPU at the highest load at which the SLO held.\n\n| ",
        );
        md.push_str(&rank_header.join(" | "));
        md.push_str(" |\n|");
        md.push_str(&"---|".repeat(rank_header.len()));
        md.push('\n');
        for r in &ranked {
            let _ = writeln!(md, "| {} |", r.join(" | "));
        }
    }
    md.push_str("\n## Cells\n\n| ");
    md.push_str(&header.join(" | "));
    md.push_str(" |\n|");
    md.push_str(&"---|".repeat(header.len()));
    md.push('\n');
    for r in &rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
    md.push_str("\n## Charts\n\n");
    for (name, _) in &svgs {
        let _ = writeln!(md, "![{name}](charts/{name}.png)\n");
    }
    if !timelines.is_empty() {
        md.push_str("## Cell timelines\n\n");
        for (cell, names) in &timelines {
            let _ = writeln!(md, "### {cell}\n");
            for (name, _) in names {
                let _ = writeln!(md, "![{name}](charts/{name}.png)\n");
            }
        }
    }
    report.files.push(("report.md".to_owned(), Bytes::from(md)));
    report
}

/// The run's status; while the run is still finishing (the report step runs at teardown,
/// before the manifest's last write) it is derived from the cells.
fn status_word_run(run: &RunData) -> String {
    use harness_core::RunStatus;
    let status = match run.manifest.status {
        RunStatus::Running => {
            let ok = run.rows.iter().filter(|r| r.status == "succeeded").count();
            match ok {
                n if n == run.rows.len() => RunStatus::Succeeded,
                0 => RunStatus::Failed,
                _ => RunStatus::Partial,
            }
        }
        other => other,
    };
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Written {
    /// The key of `index.html`.
    pub index: harness_core::ArtifactKey,
    /// How many files.
    pub files: usize,
    /// Charts that could not be drawn.
    pub warnings: Vec<String>,
}

/// Writes `summary.parquet` and the report of run `layout` into `store`.
///
/// # Errors
/// When the run cannot be read or a file cannot be written.
pub async fn write_report(store: &dyn ArtifactStore, layout: RunLayout) -> Result<Written, Error> {
    let mut run = RunData::load(store, layout.clone()).await?;
    run.load_timelines(store).await?;
    let summary = run.summary()?;
    store
        .put(&layout.summary_table(), to_parquet(&summary)?)
        .await?;
    let report = build_report(&run);
    for (rel, data) in &report.files {
        store.put(&layout.report(rel)?, data.clone()).await?;
    }
    Ok(Written {
        index: layout.report("index.html")?,
        files: report.files.len() + 1,
        warnings: report.warnings,
    })
}

/// The step that writes the run's `summary.parquet` and report at teardown (kind
/// `report`); the CLI adds it to every run.
#[derive(Debug, Clone, Default)]
pub struct ReportStep;

impl ReportStep {
    /// The step.
    pub fn new() -> Self {
        ReportStep
    }

    /// A factory for the step registry (kind `report`, no parameters; a teardown step).
    pub fn factory() -> harness_core::pipeline::StepFactory {
        Arc::new(|_spec, _source| Ok(Arc::new(ReportStep) as Arc<dyn Step>))
    }
}

#[async_trait]
impl Step for ReportStep {
    fn name(&self) -> &str {
        "report"
    }

    async fn run(&self, cx: &StepContext) -> harness_core::Result<StepOutput> {
        let run = cx.run();
        let written = write_report(run.store().as_ref(), run.layout().clone()).await?;
        let mut out = StepOutput::default();
        out.notes.extend(written.warnings);
        out.notes.push(format!("report: {}", written.index));
        Ok(out)
    }
}

/// The cells of `a` keyed by id, for lookups.
pub(crate) fn by_cell(run: &RunData) -> BTreeMap<&str, &CellRow> {
    run.rows.iter().map(|r| (r.cell.as_str(), r)).collect()
}
