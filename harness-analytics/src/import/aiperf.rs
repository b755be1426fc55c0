//! aiperf (`aiperf profile`): `profile_export.jsonl`, one request per line, and the
//! aggregate `profile_export_aiperf.json` beside it (tool version and aiperf's own
//! statistics). Tested against exports of aiperf 0.13.0.
//!
//! Field mapping (per line):
//!
//! | harness | aiperf |
//! |---|---|
//! | `start_ns` | `metadata.request_start_ns` |
//! | `end_ns` | `metadata.request_end_ns` |
//! | `first_token_ns` | start + `metrics.time_to_first_token` |
//! | `last_token_ns` | start + `metrics.request_latency` |
//! | `chunk_gaps_ns` | `metrics.inter_chunk_latency` (a list) |
//! | `input_tokens` | `metrics.usage_prompt_tokens`, else `metrics.input_sequence_length` |
//! | `output_tokens` | `metrics.output_sequence_length` (`usage` when it equals `usage_completion_tokens`, i.e. with `--use-server-token-count`; else aiperf's tokenizer) |
//! | `warmup` | `metadata.benchmark_phase == "warmup"` |
//! | `http_status`, `error_kind`, `error_message` | `error.code`, `error.type` and `error.message` ([`super::classify`]); `metadata.was_cancelled` is a timeout |

use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::{Imported, Timeline, classify, err, locate, ms_to_ns, num, read_json, report_stats};
use crate::Error;
use crate::record::{ErrorKind, TokenSource};

/// aiperf's distribution names and harness' names for them.
const DISTRIBUTIONS: [(&str, &str); 7] = [
    ("time_to_first_token", "ttft"),
    ("inter_token_latency", "itl"),
    ("inter_chunk_latency", "inter_chunk_latency"),
    ("request_latency", "request_latency"),
    (
        "output_token_throughput_per_user",
        "output_token_throughput_per_user",
    ),
    ("input_sequence_length", "input_sequence_length"),
    ("output_sequence_length", "output_sequence_length"),
];

/// aiperf's scalars (`avg` only) and harness' names.
const SCALARS: [(&str, &str); 4] = [
    ("request_throughput", "request_throughput"),
    ("output_token_throughput", "output_token_throughput"),
    ("total_token_throughput", "total_token_throughput"),
    ("benchmark_duration", "duration_s"),
];

pub(super) fn import(path: &Path) -> Result<Imported, Error> {
    let file = locate(path, &["profile_export.jsonl"])?;
    let mut out = Imported {
        tool: "aiperf".into(),
        ..Imported::default()
    };
    let reader = std::io::BufReader::new(
        std::fs::File::open(&file).map_err(|e| err(&file, None, e.to_string()))?,
    );
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| err(&file, Some(i + 1), e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| err(&file, Some(i + 1), e.to_string()))?;
        let t = timeline(&v)
            .and_then(Timeline::into_record)
            .map_err(|reason| err(&file, Some(i + 1), reason))?;
        out.records.push(t);
    }
    out.files.push(file.clone());
    if out.records.is_empty() {
        return Err(err(&file, None, "has no requests"));
    }
    let summary = file.with_file_name("profile_export_aiperf.json");
    if summary.is_file() {
        let s = read_json(&summary)?;
        if let Some(v) = s.get("aiperf_version").and_then(Value::as_str) {
            out.tool = format!("aiperf {v}");
        }
        for (theirs, ours) in DISTRIBUTIONS {
            if let Some(d) = s.get(theirs) {
                report_stats(&mut out.reported, ours, d);
            }
        }
        for (theirs, ours) in SCALARS {
            if let Some(x) = s.get(theirs).and_then(|d| num(d, "avg")) {
                out.reported.insert(ours.into(), x);
            }
        }
        out.files.push(summary);
    } else {
        out.notes.push(
            "profile_export_aiperf.json not found: aiperf's version and own statistics unknown"
                .into(),
        );
    }
    Ok(out)
}

/// A metric's value in milliseconds (aiperf writes `{value, unit}`).
fn metric_ms(metrics: &Value, name: &str) -> Option<f64> {
    let m = metrics.get(name)?;
    let scale = unit_scale_ms(m.get("unit").and_then(Value::as_str).unwrap_or("ms"));
    m.get("value").and_then(Value::as_f64).map(|v| v * scale)
}

fn unit_scale_ms(unit: &str) -> f64 {
    match unit {
        "ns" => 1e-6,
        "us" => 1e-3,
        "s" | "sec" => 1e3,
        _ => 1.0,
    }
}

fn count(metrics: &Value, name: &str) -> Option<u64> {
    metrics
        .get(name)
        .and_then(|m| m.get("value"))
        .and_then(Value::as_f64)
        .filter(|v| *v >= 0.0)
        .map(|v| v.round() as u64)
}

fn timeline(v: &Value) -> Result<Timeline, String> {
    let meta = v.get("metadata").ok_or("no `metadata`")?;
    let start = meta
        .get("request_start_ns")
        .and_then(Value::as_u64)
        .ok_or("no `metadata.request_start_ns`")?;
    let end = meta.get("request_end_ns").and_then(Value::as_u64);
    let metrics = v.get("metrics").cloned().unwrap_or(Value::Null);
    let gaps = match metrics.get("inter_chunk_latency") {
        Some(m) => {
            let scale = unit_scale_ms(m.get("unit").and_then(Value::as_str).unwrap_or("ms"));
            let values = match m.get("value") {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
                Some(x) => x.as_f64().into_iter().collect(),
                None => Vec::new(),
            };
            values
                .into_iter()
                .map(|g| ms_to_ns(g * scale).ok_or(format!("bad inter_chunk_latency {g}")))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => Vec::new(),
    };
    let usage_out = count(&metrics, "usage_completion_tokens");
    let osl = count(&metrics, "output_sequence_length");
    let (output_tokens, source) = match (osl, usage_out) {
        (Some(o), Some(u)) if o == u => (o, TokenSource::Usage),
        (Some(o), _) => (o, TokenSource::Tokenizer),
        (None, Some(u)) => (u, TokenSource::Usage),
        (None, None) => (0, TokenSource::Tokenizer),
    };
    let mut error = v.get("error").filter(|e| !e.is_null()).map(|e| {
        let code = e
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok());
        let kind_name = e.get("type").and_then(Value::as_str).unwrap_or("error");
        let message = e.get("message").and_then(Value::as_str).unwrap_or_default();
        let text = format!("{kind_name}: {message}");
        (code, classify(code, &text), text)
    });
    if error.is_none() && meta.get("was_cancelled").and_then(Value::as_bool) == Some(true) {
        error = Some((None, ErrorKind::Timeout, "cancelled by aiperf".into()));
    }
    let ms = |name: &str| {
        metric_ms(&metrics, name)
            .map(|x| ms_to_ns(x).ok_or(format!("bad {name} {x}")))
            .transpose()
    };
    Ok(Timeline {
        start_ns: start,
        ttft_ns: ms("time_to_first_token")?,
        gaps_ns: gaps,
        chunks: None,
        latency_ns: ms("request_latency")?,
        end_ns: end
            .map(|e| {
                e.checked_sub(start)
                    .ok_or("`request_end_ns` is before `request_start_ns`")
            })
            .transpose()?,
        input_tokens: count(&metrics, "usage_prompt_tokens")
            .or_else(|| count(&metrics, "input_sequence_length"))
            .unwrap_or(0),
        output_tokens,
        source: Some(source),
        warmup: meta.get("benchmark_phase").and_then(Value::as_str) == Some("warmup"),
        http_status: error.as_ref().and_then(|e| e.0),
        error: error.map(|(_, k, m)| (k, m)),
    })
}
