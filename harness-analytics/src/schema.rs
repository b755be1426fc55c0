//! The versioned Arrow schemas of harness's metric tables, and the catalog of metrics.
//!
//! Two tables:
//! * **records** (`cells/<cell>/records.parquet`): one row per request; see
//!   [`records_schema`].
//! * **summary** (`summary.parquet` of a run): one row per cell, with the cell's parameters
//!   and every statistic; see [`summary_schema`].
//!
//! Every metric column carries field metadata: `unit` (`ms`, `tokens`, `tokens/s`,
//! `requests/s`, `s`, `count`), `formula` (the definition's id, listed in [`DISTRIBUTIONS`]
//! and [`SCALARS`]), and for token counts `token_source` (the column that says where counts
//! came from). The schema's name and version are in the schema metadata (and so in the
//! parquet file's key-value metadata): `harness.schema` and `harness.schema_version`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// The version of both schemas. It changes when a column is renamed, removed or changes
/// type; adding a column keeps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Metadata key of the schema's name (`records` or `summary`).
pub const META_SCHEMA: &str = "harness.schema";
/// Metadata key of the schema version.
pub const META_VERSION: &str = "harness.schema_version";

/// One metric: its column name, unit, formula id and definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricDef {
    /// The column name (for a distribution, the prefix of `<name>.<stat>`).
    pub name: &'static str,
    /// The unit.
    pub unit: &'static str,
    /// The formula id.
    pub formula: &'static str,
    /// The definition, as aiperf defines it.
    pub definition: &'static str,
}

const fn def(
    name: &'static str,
    unit: &'static str,
    formula: &'static str,
    definition: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        unit,
        formula,
        definition,
    }
}

/// The per-request distributions; each becomes `<name>.count`, `.min`, `.max`, `.mean`,
/// `.std`, `.p1` ... `.p99` in the summary. Over successful, non-warmup requests.
pub const DISTRIBUTIONS: [MetricDef; 12] = [
    def(
        "ttft",
        "ms",
        "ttft",
        "time to first token: first content chunk - request start",
    ),
    def(
        "itl",
        "ms",
        "itl.per_request_mean",
        "inter-token latency: (last content chunk - first content chunk) / (output tokens - 1), per request with at least 2 output tokens",
    ),
    def(
        "inter_chunk_latency",
        "ms",
        "inter_chunk_latency.all_gaps",
        "every gap between consecutive content chunks, over all requests",
    ),
    def(
        "request_latency",
        "ms",
        "request_latency",
        "last content chunk - request start",
    ),
    def(
        "output_token_throughput_per_user",
        "tokens/s",
        "per_user_tps.inverse_itl",
        "1 / ITL, per request",
    ),
    def(
        "input_sequence_length",
        "tokens",
        "isl",
        "input tokens per request: the server's usage when reported, else the prompt's count",
    ),
    def(
        "output_sequence_length",
        "tokens",
        "osl",
        "output tokens per request, from the source in `output_token_source`",
    ),
    def(
        "schedule_lag",
        "ms",
        "schedule_lag",
        "open loop only: request start - its scheduled arrival time (the client's own queueing: a concurrency cap, or a client that fell behind)",
    ),
    def(
        "ttft_from_schedule",
        "ms",
        "ttft.from_schedule",
        "open loop only: first content chunk - scheduled arrival time (TTFT as a user arriving on schedule sees it, the client's queueing included)",
    ),
    def(
        "ttft_first_turn",
        "ms",
        "ttft.turn_1",
        "sessions only: TTFT of each session's first turn (nothing of it can be cached yet)",
    ),
    def(
        "ttft_later_turns",
        "ms",
        "ttft.turn_2_on",
        "sessions only: TTFT of turns 2 and later, whose history the server may have cached",
    ),
    def(
        "session_duration",
        "ms",
        "session_duration",
        "sessions only: last response end - first request start of each session whose requests all succeeded, think times included",
    ),
];

/// The per-cell scalar metrics.
pub const SCALARS: [MetricDef; 13] = [
    def(
        "requests",
        "count",
        "requests.measured",
        "requests sent after warmup",
    ),
    def(
        "succeeded",
        "count",
        "requests.succeeded",
        "measured requests without error",
    ),
    def(
        "errors",
        "count",
        "requests.failed",
        "measured requests with an error (by kind in `errors.<kind>`)",
    ),
    def(
        "warmup_requests",
        "count",
        "requests.warmup",
        "warmup requests: kept in the records, left out of every statistic",
    ),
    def(
        "duration_s",
        "s",
        "benchmark_duration",
        "last response end - first request start, over measured requests",
    ),
    def(
        "request_throughput",
        "requests/s",
        "request_throughput",
        "successful requests / benchmark duration",
    ),
    def(
        "output_token_throughput",
        "tokens/s",
        "output_token_throughput",
        "output tokens of successful requests / benchmark duration",
    ),
    def(
        "total_token_throughput",
        "tokens/s",
        "total_token_throughput",
        "input + output tokens of successful requests / benchmark duration",
    ),
    def(
        "goodput",
        "requests/s",
        "goodput",
        "successful requests meeting every SLO set / benchmark duration",
    ),
    def(
        "retried",
        "count",
        "requests.retried",
        "measured requests sent twice because the pooled keep-alive connection they were written to had been closed by the server",
    ),
    def(
        "cached_tokens",
        "tokens",
        "cached_tokens.sum",
        "input tokens served from the server's prefix cache (usage.prompt_tokens_details.cached_tokens), over successful measured requests that report them",
    ),
    def(
        "prefix_cache_hit_rate",
        "fraction",
        "cached_tokens / input_tokens",
        "cached input tokens / input tokens, over successful measured requests whose usage reports cached tokens",
    ),
    def(
        "sessions",
        "count",
        "sessions.measured",
        "multi-turn sessions with a measured request",
    ),
];

/// The unit of a metric name such as `ttft.p99`, `request_throughput`, `errors.timeout` or
/// `server.kv_cache_usage.max`.
pub fn unit_of(metric: &str) -> Option<&'static str> {
    if let Some(name) = metric.strip_prefix("server.") {
        return crate::telemetry::server_unit(name);
    }
    let (base, stat) = metric.split_once('.').unwrap_or((metric, ""));
    if let Some(d) = DISTRIBUTIONS.iter().find(|d| d.name == base) {
        return Some(if stat == "count" { "count" } else { d.unit });
    }
    if base == "errors" {
        return Some("count");
    }
    SCALARS.iter().find(|d| d.name == metric).map(|d| d.unit)
}

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn metric_field(name: &str, dt: DataType, nullable: bool, unit: &str, formula: &str) -> Field {
    let mut m = meta(&[("unit", unit), ("formula", formula)]);
    if unit == "tokens" || unit == "tokens/s" {
        m.insert("token_source".into(), "output_token_source".into());
    }
    Field::new(name, dt, nullable).with_metadata(m)
}

fn schema_meta(kind: &str) -> HashMap<String, String> {
    meta(&[
        (META_SCHEMA, kind),
        (META_VERSION, &SCHEMA_VERSION.to_string()),
    ])
}

/// The per-request schema. Raw timestamps are nanoseconds on a monotonic clock, relative to
/// the cell's epoch; `ttft_ms`, `request_latency_ms` and `itl_ms` are the per-request metric
/// values that every statistic is computed from.
pub fn records_schema() -> SchemaRef {
    use DataType::*;
    let ns = |name: &str, nullable: bool| {
        Field::new(name, UInt64, nullable).with_metadata(meta(&[("unit", "ns")]))
    };
    let gaps_item = Field::new_list_field(UInt64, false);
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("index", UInt64, false),
            Field::new("warmup", Boolean, false),
            ns("start_ns", false),
            ns("first_token_ns", true),
            ns("last_token_ns", true),
            ns("end_ns", false),
            Field::new("chunk_gaps_ns", List(Arc::new(gaps_item)), false)
                .with_metadata(meta(&[("unit", "ns")])),
            Field::new("content_chunks", UInt32, false),
            metric_field("input_tokens", UInt64, false, "tokens", "isl"),
            metric_field("output_tokens", UInt64, false, "tokens", "osl"),
            Field::new("output_token_source", Utf8, false),
            Field::new("http_status", UInt16, true),
            Field::new("error_kind", Utf8, true),
            Field::new("error_message", Utf8, true),
            metric_field("ttft_ms", Float64, true, "ms", "ttft"),
            metric_field("request_latency_ms", Float64, true, "ms", "request_latency"),
            metric_field("itl_ms", Float64, true, "ms", "itl.per_request_mean"),
            ns("scheduled_ns", true),
            Field::new("retried", Boolean, false),
            metric_field("cached_tokens", UInt64, true, "tokens", "cached_tokens"),
            Field::new("session", UInt64, true),
            Field::new("turn", UInt32, true),
        ],
        schema_meta("records"),
    ))
}

/// A cell parameter's column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamType {
    /// A number (concurrency, ISL, OSL, request rate).
    Number,
    /// Text.
    Text,
}

/// The per-cell summary schema for cells with parameters `params` (e.g. `concurrency`,
/// `isl`, `osl`): identity columns, the parameters, then every metric, and last the
/// server's metrics `server` (`server.running.mean`, ...) that some cell has.
pub fn summary_schema(params: &[(String, ParamType)], server: &[String]) -> SchemaRef {
    use DataType::*;
    let mut fields = vec![
        Field::new("run_id", Utf8, false),
        Field::new("experiment", Utf8, false),
        Field::new("cell", Utf8, false),
        Field::new("status", Utf8, false),
    ];
    for (name, ty) in params {
        let dt = match ty {
            ParamType::Number => Float64,
            ParamType::Text => Utf8,
        };
        fields.push(Field::new(name, dt, true).with_metadata(meta(&[("role", "parameter")])));
    }
    fields.push(
        Field::new("gpus", UInt32, true)
            .with_metadata(meta(&[("unit", "count"), ("formula", "deployment.gpus")])),
    );
    fields.push(Field::new("output_token_source", Utf8, true));
    for s in SCALARS {
        let dt = if s.unit == "count" { UInt64 } else { Float64 };
        fields.push(metric_field(s.name, dt, true, s.unit, s.formula));
    }
    for k in crate::record::ErrorKind::ALL {
        let name = format!("errors.{}", k.as_str());
        fields.push(metric_field(
            &name,
            UInt64,
            true,
            "count",
            "requests.failed_by_kind",
        ));
    }
    fields.push(metric_field(
        "output_token_throughput_per_gpu",
        Float64,
        true,
        "tokens/s",
        "output_token_throughput / gpus",
    ));
    for d in DISTRIBUTIONS {
        for stat in crate::dist::STATS {
            let unit = if stat == "count" { "count" } else { d.unit };
            let mut f = metric_field(
                &format!("{}.{stat}", d.name),
                Float64,
                true,
                unit,
                d.formula,
            );
            let mut m = f.metadata().clone();
            m.insert("stat".to_owned(), stat.to_owned());
            f = f.with_metadata(m);
            fields.push(f);
        }
    }
    for name in server {
        fields.push(metric_field(
            name,
            Float64,
            true,
            unit_of(name).unwrap_or("unknown"),
            "server telemetry over the measured window",
        ));
    }
    Arc::new(Schema::new_with_metadata(fields, schema_meta("summary")))
}
