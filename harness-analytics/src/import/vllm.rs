//! `vllm bench serve --save-result --save-detailed`: one JSON object with per-request
//! arrays (the layout of `vllm/benchmarks/serve.py`). vLLM cannot be installed on the
//! machines harness is tested on, so the test fixture is written to that layout by hand.
//!
//! Field mapping (request `i`):
//!
//! | harness | vLLM |
//! |---|---|
//! | `start_ns` | `start_times[i]` (s) when present, else 0 (older versions do not save it; throughput then comes out wrong and a note says so) |
//! | `first_token_ns` | start + `ttfts[i]` (s) |
//! | `chunk_gaps_ns` | `itls[i]` (s) |
//! | `last_token_ns`, `end_ns` | first + sum of `itls[i]` |
//! | `input_tokens`, `output_tokens` | `input_lens[i]`, `output_lens[i]` (vLLM counts by usage when the server sends it, else by its tokenizer; the file does not say which: recorded as `tokenizer`) |
//! | `error_kind`, `error_message` | `errors[i]` when not empty ([`super::classify`]) |
//!
//! vLLM's TPOT is harness' `itl`; vLLM's ITL is harness' `inter_chunk_latency`; E2EL is
//! `request_latency`.

use std::path::Path;

use serde_json::Value;

use super::{Imported, Timeline, classify, err, locate, num, read_json, s_to_ns};
use crate::Error;
use crate::record::TokenSource;

/// vLLM's metric names and harness' names.
const METRICS: [(&str, &str); 4] = [
    ("ttft", "ttft"),
    ("tpot", "itl"),
    ("itl", "inter_chunk_latency"),
    ("e2el", "request_latency"),
];

pub(super) fn import(path: &Path) -> Result<Imported, Error> {
    let file = locate(path, &["result.json"])?;
    let v = read_json(&file)?;
    let array = |key: &str| v.get(key).and_then(Value::as_array);
    let ttfts = array("ttfts").ok_or_else(|| {
        err(
            &file,
            None,
            "no per-request `ttfts`: run `vllm bench serve` with --save-result --save-detailed",
        )
    })?;
    let n = ttfts.len();
    let field = |key: &str| -> Result<Option<&Vec<Value>>, Error> {
        match array(key) {
            Some(a) if a.len() != n => Err(err(
                &file,
                None,
                format!("`{key}` has {} entries, `ttfts` {n}", a.len()),
            )),
            other => Ok(other),
        }
    };
    let (inputs, outputs, itls, errors, starts) = (
        field("input_lens")?,
        field("output_lens")?,
        field("itls")?,
        field("errors")?,
        field("start_times")?,
    );
    let mut out = Imported {
        tool: "vllm bench serve".into(),
        files: vec![file.clone()],
        ..Imported::default()
    };
    if let Some(version) = v.get("vllm_version").and_then(Value::as_str) {
        out.tool = format!("vllm bench serve {version}");
    }
    let at = |a: Option<&Vec<Value>>, i: usize| a.and_then(|a| a.get(i)).cloned();
    let seconds = |x: Value, what: &str, i: usize| {
        x.as_f64()
            .and_then(s_to_ns)
            .ok_or_else(|| err(&file, None, format!("`{what}[{i}]` is not a time: {x}")))
    };
    for (i, ttft) in ttfts.iter().enumerate() {
        let message = at(errors, i)
            .and_then(|e| e.as_str().map(str::to_owned))
            .filter(|e| !e.is_empty());
        let gaps = match at(itls, i) {
            Some(Value::Array(g)) => g
                .iter()
                .enumerate()
                .map(|(j, x)| seconds(x.clone(), &format!("itls[{i}]"), j))
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let start = match at(starts, i) {
            Some(s) => seconds(s, "start_times", i)?,
            None => 0,
        };
        let ttft_ns = match (&message, ttft) {
            (None, t) => Some(seconds(t.clone(), "ttfts", i)?),
            (Some(_), _) => None,
        };
        let count = |a, i| at(a, i).and_then(|x| x.as_u64()).unwrap_or(0);
        out.records.push(
            Timeline {
                start_ns: start,
                ttft_ns,
                gaps_ns: if message.is_none() { gaps } else { Vec::new() },
                input_tokens: count(inputs, i),
                output_tokens: count(outputs, i),
                source: Some(TokenSource::Tokenizer),
                error: message.map(|m| (classify(None, &m), m)),
                ..Timeline::default()
            }
            .into_record()
            .map_err(|reason| err(&file, None, format!("request {i}: {reason}")))?,
        );
    }
    if n == 0 {
        return Err(err(&file, None, "has no requests"));
    }
    if starts.is_none() {
        out.notes.push(
            "no `start_times` (vLLM before they were saved): every request starts at 0, so \
             throughput and duration from these records are not meaningful; see reported"
                .into(),
        );
    }
    for (theirs, ours) in METRICS {
        for (stat, name) in [("mean", "mean"), ("median", "p50"), ("std", "std")] {
            if let Some(x) = num(&v, &format!("{stat}_{theirs}_ms")) {
                out.reported.insert(format!("{ours}.{name}"), x);
            }
        }
        for p in crate::PERCENTILES {
            if let Some(x) = num(&v, &format!("p{p}_{theirs}_ms")) {
                out.reported.insert(format!("{ours}.p{p}"), x);
            }
        }
    }
    for (theirs, ours) in [
        ("request_throughput", "request_throughput"),
        ("output_throughput", "output_token_throughput"),
        ("total_token_throughput", "total_token_throughput"),
        ("duration", "duration_s"),
    ] {
        if let Some(x) = num(&v, theirs) {
            out.reported.insert(ours.into(), x);
        }
    }
    Ok(out)
}
