//! Metric tables of harness: per-request records and per-cell statistics as versioned Arrow
//! schemas, parquet files, charts, reports and run comparison.
//!
//! * [`record::Record`]: one request as measured; every source of records produces these.
//! * [`schema`]: the two Arrow schemas (records, summary), with each metric's unit and
//!   formula in the field metadata, and the catalog of metric definitions.
//! * [`Distribution`] and [`CellStats`]: exact statistics, aiperf's definitions.
//! * [`table`] and [`io`]: records and summaries to and from Arrow batches and parquet.
//! * [`chart`], [`report`], [`compare`]: charts (SVG and PNG), the HTML and Markdown report
//!   of a run, and comparison of runs with regression gates.
//! * [`telemetry`]: server metrics scraped during a cell (`server_metrics.parquet`), what
//!   known servers' names mean, `server.*` summaries and cross-checks against the client.
//!
//! Column names and units (`records.parquet`, one row per request): `index`, `warmup`,
//! `start_ns`, `first_token_ns`, `last_token_ns`, `end_ns` and `chunk_gaps_ns` (nanoseconds,
//! monotonic, from the cell's epoch), `content_chunks`, `input_tokens`, `output_tokens`,
//! `output_token_source` (`usage`, `tokenizer` or `chunks`), `http_status`, `error_kind`,
//! `error_message`, and the per-request metrics `ttft_ms`, `request_latency_ms`, `itl_ms`.
//!
//! `summary.parquet`, one row per cell: `run_id`, `experiment`, `cell`, `status`, one column
//! per cell parameter (`concurrency`, `isl`, `osl`, `request_rate`, ...), `gpus`,
//! `output_token_source`, the scalars of [`schema::SCALARS`] (`requests`, `errors`,
//! `duration_s` in s, `request_throughput` in requests/s, `output_token_throughput` and
//! `total_token_throughput` in tokens/s, `goodput` in requests/s), `errors.<kind>`,
//! `output_token_throughput_per_gpu`, and for each distribution of [`schema::DISTRIBUTIONS`]
//! (`ttft`, `itl`, `inter_chunk_latency`, `request_latency` in ms;
//! `output_token_throughput_per_user` in tokens/s; `input_sequence_length`,
//! `output_sequence_length` in tokens) the columns `<name>.count`, `.min`, `.max`, `.mean`,
//! `.std`, `.p1`, `.p5`, `.p10`, `.p25`, `.p50`, `.p75`, `.p90`, `.p95`, `.p99`.
//!
//! ```
//! use harness_core::config::Slo;
//! use harness_analytics::{CellStats, record::{Record, TokenSource}};
//! let rec = Record::succeeded(0, 0, 20_000_000, 60_000_000, 5, TokenSource::Usage);
//! let stats = CellStats::of(&[rec], &Slo::default())?;
//! assert_eq!(stats.value("ttft.p50"), Some(20.0));
//! assert_eq!(stats.value("itl.p50"), Some(10.0));
//! # Ok::<(), harness_analytics::Error>(())
//! ```

pub mod chart;
pub mod compare;
mod dist;
pub mod import;
pub mod io;
pub mod record;
pub mod report;
pub mod schema;
mod stats;
pub mod table;
pub mod telemetry;

pub use dist::{Distribution, PERCENTILES, STATS, percentile_sorted};
pub use stats::{CellStats, TurnStats};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input that cannot be used: a table without a needed column, a bad gate.
    #[error("{what}: {reason}")]
    InvalidInput {
        /// What was wrong.
        what: String,
        /// Why.
        reason: String,
    },
    /// An Arrow error.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A parquet error.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Drawing a chart failed.
    #[error("chart `{chart}`: {reason}")]
    Chart {
        /// The chart.
        chart: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing the run failed.
    #[error(transparent)]
    Store(#[from] harness_core::Error),
    /// A statistics worker thread died (a bug); its statistics would be missing.
    #[error("computing statistics: a worker thread failed: {reason}")]
    Worker {
        /// The thread's panic message.
        reason: String,
    },
    /// Another tool's export could not be imported.
    #[error("{file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Import {
        /// The file.
        file: String,
        /// The line, from 1, where the format has lines.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for harness_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e) => e,
            Error::InvalidInput { what, reason } => harness_core::Error::invalid(what, reason),
            e @ Error::Import { .. } => harness_core::Error::invalid("import", e.to_string()),
            other => harness_core::Error::failed("analytics", other.to_string()),
        }
    }
}
