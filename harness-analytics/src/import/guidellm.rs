//! guidellm (`guidellm run --output kind=json`): `benchmarks.json`, one benchmark per
//! strategy, each with its `requests.successful`, `requests.errored` and
//! `requests.incomplete`. A cell is one benchmark (a file with several, from a sweep, is
//! refused with their list). Tested against exports of guidellm 0.8.1.
//!
//! guidellm keeps the first and last token times and the number of token iterations, not
//! each gap, so imported records have no `chunk_gaps_ns` (the inter-chunk latency
//! distribution stays empty; ITL is exact). Field mapping (per request; times are
//! seconds since the epoch):
//!
//! | harness | guidellm |
//! |---|---|
//! | `start_ns`, `end_ns` | `request_start_time`, `request_end_time` |
//! | `first_token_ns`, `last_token_ns` | `info.timings.first_token_iteration`, `info.timings.last_token_iteration` |
//! | `content_chunks` | `info.timings.token_iterations` |
//! | `input_tokens`, `output_tokens` | `prompt_tokens`, `output_tokens` (usage when the server sends it, else guidellm's tokenizer; the file does not say: recorded as `tokenizer`) |
//! | error | `info.error` ([`super::classify`]; `HTTPStatusError(... '500 ...')` gives the status); incomplete requests are timeouts |
//!
//! guidellm's `inter_token_latency_ms` is harness' `itl`; its `time_per_output_token_ms`
//! divides the time to the last token, TTFT included, by the output tokens.

use std::path::Path;

use serde_json::Value;

use super::{Imported, Timeline, classify, err, locate, read_json, s_to_ns};
use crate::Error;
use crate::record::{ErrorKind, TokenSource};

pub(super) fn import(path: &Path) -> Result<Imported, Error> {
    let file = locate(path, &["benchmarks.json"])?;
    let v = read_json(&file)?;
    let benchmarks = v
        .get("benchmarks")
        .and_then(Value::as_array)
        .ok_or_else(|| err(&file, None, "no `benchmarks`: not a guidellm report"))?;
    let benchmark = match benchmarks.as_slice() {
        [one] => one,
        [] => return Err(err(&file, None, "has no benchmarks")),
        many => {
            let names: Vec<String> = many.iter().map(strategy).collect();
            return Err(err(
                &file,
                None,
                format!(
                    "holds {} benchmarks ({}); a cell imports one: run one strategy per cell",
                    many.len(),
                    names.join(", ")
                ),
            ));
        }
    };
    let version = v
        .pointer("/metadata/guidellm_version")
        .and_then(Value::as_str);
    let mut out = Imported {
        tool: version.map_or("guidellm".into(), |ver| format!("guidellm {ver}")),
        files: vec![file.clone()],
        ..Imported::default()
    };
    for (group, failure) in [
        ("successful", None),
        ("errored", Some(ErrorKind::ServerError)),
        ("incomplete", Some(ErrorKind::Timeout)),
    ] {
        let list = benchmark
            .pointer(&format!("/requests/{group}"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, r) in list.iter().enumerate() {
            let t = timeline(r, failure)
                .and_then(Timeline::into_record)
                .map_err(|reason| err(&file, None, format!("{group} request {i}: {reason}")))?;
            out.records.push(t);
        }
    }
    if out.records.is_empty() {
        return Err(err(&file, None, "the benchmark has no requests"));
    }
    out.notes
        .push("guidellm keeps no per-chunk gaps: inter-chunk latency is not available".into());
    let metrics = benchmark.get("metrics").cloned().unwrap_or(Value::Null);
    for (theirs, ours, scale) in [
        ("time_to_first_token_ms", "ttft", 1.0),
        ("inter_token_latency_ms", "itl", 1.0),
        ("request_latency", "request_latency", 1e3),
    ] {
        let Some(s) = metrics.pointer(&format!("/{theirs}/successful")) else {
            continue;
        };
        for (k, name) in [
            ("mean", "mean"),
            ("min", "min"),
            ("max", "max"),
            ("median", "p50"),
        ] {
            if let Some(x) = s.get(k).and_then(Value::as_f64) {
                out.reported.insert(format!("{ours}.{name}"), x * scale);
            }
        }
    }
    if let Some(x) = metrics
        .pointer("/requests_per_second/successful/mean")
        .and_then(Value::as_f64)
    {
        out.reported.insert("request_throughput".into(), x);
    }
    Ok(out)
}

fn strategy(b: &Value) -> String {
    let s = b
        .pointer("/config/strategy")
        .cloned()
        .unwrap_or(Value::Null);
    let kind = s.get("type_").and_then(Value::as_str).unwrap_or("?");
    match s.get("streams").or_else(|| s.get("rate")) {
        Some(x) => format!("{kind}@{x}"),
        None => kind.to_owned(),
    }
}

/// The HTTP status in httpx's `Server error '500 Internal Server Error' for url ...`.
fn status_in(message: &str) -> Option<u16> {
    let at = message.find(" error '")? + " error '".len();
    message.get(at..at + 3)?.parse().ok()
}

fn time(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_f64).and_then(s_to_ns)
}

fn timeline(r: &Value, failure: Option<ErrorKind>) -> Result<Timeline, String> {
    let timings = r.pointer("/info/timings").cloned().unwrap_or(Value::Null);
    let start = time(r.get("request_start_time"))
        .or_else(|| time(timings.get("request_start")))
        .ok_or("no `request_start_time`")?;
    let end = time(r.get("request_end_time")).or_else(|| time(timings.get("resolve_end")));
    let first = time(timings.get("first_token_iteration"));
    let last = time(timings.get("last_token_iteration"));
    let rel = |t: Option<u64>, what: &str| {
        t.map(|t| {
            t.checked_sub(start)
                .ok_or_else(|| format!("`{what}` is before the request's start"))
        })
        .transpose()
    };
    let (first, last, end) = (
        rel(first, "first_token_iteration")?,
        rel(last, "last_token_iteration")?,
        rel(end, "request_end_time")?,
    );
    let error = failure.map(|kind| {
        let msg = r
            .pointer("/info/error")
            .and_then(Value::as_str)
            .unwrap_or("no error message")
            .to_owned();
        let status = status_in(&msg);
        let kind = match kind {
            ErrorKind::Timeout => ErrorKind::Timeout,
            _ => classify(status, &msg),
        };
        (status, kind, msg)
    });
    let count = |key: &str| r.get(key).and_then(Value::as_u64).unwrap_or(0);
    let chunks = timings
        .get("token_iterations")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    Ok(Timeline {
        start_ns: start,
        ttft_ns: first,
        chunks: if error.is_none() { chunks } else { Some(0) },
        latency_ns: last.or(end),
        end_ns: end,
        input_tokens: count("prompt_tokens"),
        output_tokens: count("output_tokens"),
        source: Some(TokenSource::Tokenizer),
        http_status: error.as_ref().and_then(|e| e.0),
        error: error.map(|(_, k, m)| (k, m)),
        ..Timeline::default()
    })
}
