//! inference-perf: `per_request_lifecycle_metrics.json` (written with
//! `report.request_lifecycle.per_request: true`), a JSON array with one object per request,
//! and `summary_lifecycle_metrics.json` beside it for inference-perf's own figures. Tested
//! against exports of inference-perf 0.7.0.
//!
//! Field mapping (per request; times are seconds on inference-perf's monotonic clock):
//!
//! | harness | inference-perf |
//! |---|---|
//! | `start_ns`, `end_ns` | `start_time`, `end_time` |
//! | `first_token_ns`, `last_token_ns`, `chunk_gaps_ns` | the first and last of `info.response_metrics.chunk_times`, and their differences |
//! | `output_tokens` | `info.response_metrics.server_usage.completion_tokens` (`usage`), else `info.response_metrics.output_tokens` (its tokenizer) |
//! | `input_tokens` | `server_usage.prompt_tokens`, else `info.input_tokens` |
//! | `http_status`, `error_kind`, `error_message` | `error.error_type` (`HTTP Error 500` gives the status) and `error.error_msg` ([`super::classify`]) |
//!
//! inference-perf's `time_per_output_token` is harness' `itl`.

use std::path::Path;

use serde_json::Value;

use super::{Imported, Timeline, classify, err, locate, read_json, records_of, s_to_ns};
use crate::Error;
use crate::record::TokenSource;

pub(super) fn import(path: &Path) -> Result<Imported, Error> {
    let file = locate(path, &["per_request_lifecycle_metrics.json"])?;
    let v = read_json(&file)?;
    let requests = v.as_array().ok_or_else(|| {
        err(
            &file,
            None,
            "not a JSON array of requests: write it with report.request_lifecycle.per_request",
        )
    })?;
    let mut out = Imported {
        tool: "inference-perf".into(),
        files: vec![file.clone()],
        ..Imported::default()
    };
    out.records = records_of(&file, requests, timeline)?;
    let summary = file.with_file_name("summary_lifecycle_metrics.json");
    if summary.is_file() {
        let s = read_json(&summary)?;
        let latency = s.pointer("/successes/latency");
        for (theirs, ours) in [
            ("time_to_first_token", "ttft"),
            ("time_per_output_token", "itl"),
            ("request_latency", "request_latency"),
        ] {
            let Some(stats) = latency
                .and_then(|l| l.get(theirs))
                .and_then(Value::as_object)
            else {
                continue;
            };
            for (k, x) in stats {
                let Some(x) = x.as_f64() else { continue };
                let stat = match k.as_str() {
                    "median" => "p50".to_owned(),
                    "mean" | "min" | "max" => k.clone(),
                    p if crate::PERCENTILES.iter().any(|q| p == format!("p{q}")) => k.clone(),
                    _ => continue,
                };
                out.reported.insert(format!("{ours}.{stat}"), x * 1e3);
            }
        }
        let throughput = s.pointer("/successes/throughput");
        for (theirs, ours) in [
            ("requests_per_sec", "request_throughput"),
            ("output_tokens_per_sec", "output_token_throughput"),
            ("total_tokens_per_sec", "total_token_throughput"),
        ] {
            if let Some(x) = throughput
                .and_then(|t| t.get(theirs))
                .and_then(Value::as_f64)
            {
                out.reported.insert(ours.into(), x);
            }
        }
        out.files.push(summary);
    }
    Ok(out)
}

fn seconds(v: Option<&Value>, what: &str) -> Result<u64, String> {
    v.and_then(Value::as_f64)
        .and_then(s_to_ns)
        .ok_or_else(|| format!("no usable `{what}`"))
}

fn timeline(r: &Value) -> Result<Timeline, String> {
    let start = seconds(r.get("start_time"), "start_time")?;
    let end = seconds(r.get("end_time"), "end_time")?;
    let info = r.get("info").cloned().unwrap_or(Value::Null);
    let rm = info.get("response_metrics").cloned().unwrap_or(Value::Null);
    let chunks: Vec<u64> = match rm.get("chunk_times").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|t| seconds(Some(t), "chunk_times"))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let usage = rm.get("server_usage").filter(|u| !u.is_null());
    let (output_tokens, source) = match usage
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
    {
        Some(c) => (c, TokenSource::Usage),
        None => (
            rm.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
            TokenSource::Tokenizer,
        ),
    };
    let input_tokens = usage
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64)
        .or_else(|| info.get("input_tokens").and_then(Value::as_u64))
        .unwrap_or(0);
    let error = r.get("error").filter(|e| !e.is_null()).map(|e| {
        let kind = e
            .get("error_type")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let msg = e
            .get("error_msg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let status = kind
            .strip_prefix("HTTP Error ")
            .and_then(|s| s.trim().parse::<u16>().ok());
        (status, format!("{kind}: {msg}"))
    });
    if let Some(w) = chunks.windows(2).find(|w| w[1] < w[0]) {
        return Err(format!(
            "`chunk_times` out of order: {} s after {} s",
            w[1] as f64 / 1e9,
            w[0] as f64 / 1e9
        ));
    }
    let rel = |t: u64, what: &str| {
        t.checked_sub(start)
            .ok_or_else(|| format!("`{what}` is before the request's start"))
    };
    let first = chunks.first().map(|&t| rel(t, "chunk_times")).transpose()?;
    let last = chunks.last().map(|&t| rel(t, "chunk_times")).transpose()?;
    let end = rel(end, "end_time")?;
    Ok(Timeline {
        start_ns: start,
        ttft_ns: first,
        gaps_ns: chunks.windows(2).map(|w| w[1] - w[0]).collect(),
        // Without chunks (not streamed) the response ends the request.
        latency_ns: last.or_else(|| error.is_none().then_some(end)),
        end_ns: Some(end),
        input_tokens,
        output_tokens,
        source: Some(source),
        http_status: error.as_ref().and_then(|e| e.0),
        error: error.map(|(status, m)| (classify(status, &m), m)),
        ..Timeline::default()
    })
}
