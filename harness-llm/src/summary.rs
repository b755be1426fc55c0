//! A cell's statistics from its records, with aiperf's definitions:
//! TTFT = first content chunk - start; request latency = last content chunk - start;
//! ITL = (latency - TTFT) / (output tokens - 1), for requests with at least two output
//! tokens; inter-chunk latency = every gap between content chunks; benchmark duration = last
//! response end - first request start, over measured (non-warmup) requests; throughputs count
//! successful requests only; per-user tokens/s = 1 / ITL.

use std::collections::BTreeMap;

use harness_analytics::Distribution;
use serde::{Deserialize, Serialize};

use crate::client::RequestRecord;

/// Service-level objectives for goodput, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SloLimits {
    /// Time to first token.
    pub ttft_s: Option<f64>,
    /// Inter-token latency.
    pub itl_s: Option<f64>,
    /// Request latency.
    pub latency_s: Option<f64>,
}

/// The statistics of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BenchSummary {
    /// Measured requests (warmup excluded).
    pub requests: u64,
    /// Of those, successful.
    pub succeeded: u64,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Warmup requests sent (kept in the records, not counted here).
    pub warmup_requests: u64,
    /// Last response end - first request start, in seconds.
    pub duration_s: f64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Output tokens of successful requests per second.
    pub output_token_throughput: f64,
    /// Input plus output tokens of successful requests per second.
    pub total_token_throughput: f64,
    /// Requests meeting every SLO set, per second (`None` without an SLO).
    pub goodput: Option<f64>,
    /// Where output token counts came from, by source.
    pub output_token_sources: BTreeMap<String, u64>,
    /// Distributions: `ttft_ms`, `itl_ms`, `inter_chunk_ms`, `request_latency_ms`,
    /// `per_user_tokens_per_s`, `isl`, `osl`.
    pub distributions: BTreeMap<String, Distribution>,
}

impl BenchSummary {
    /// Summarises `records`.
    pub fn of(records: &[RequestRecord], slo: &SloLimits) -> Self {
        let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
        let ok: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.ok()).collect();
        let mut errors = BTreeMap::new();
        for r in &measured {
            if let Some(kind) = r.error {
                *errors.entry(kind.as_str().to_owned()).or_insert(0) += 1;
            }
        }
        let start = measured.iter().map(|r| r.start_ns).min().unwrap_or(0);
        let end = measured.iter().map(|r| r.end_ns).max().unwrap_or(0);
        let duration_s = end.saturating_sub(start) as f64 / 1e9;
        let per_s = |v: f64| {
            if duration_s > 0.0 {
                v / duration_s
            } else {
                0.0
            }
        };
        let out_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let in_tokens: u64 = ok.iter().map(|r| r.input_tokens).sum();
        let mut sources = BTreeMap::new();
        for r in &ok {
            let s = serde_json::to_value(r.output_token_source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *sources.entry(s).or_insert(0) += 1;
        }
        let mut dist = BTreeMap::new();
        let mut put = |name: &str, mut values: Vec<f64>| {
            if let Some(d) = Distribution::of(&mut values) {
                dist.insert(name.to_owned(), d);
            }
        };
        put(
            "ttft_ms",
            ok.iter()
                .filter_map(|r| r.ttft_s())
                .map(|s| s * 1e3)
                .collect(),
        );
        put(
            "itl_ms",
            ok.iter()
                .filter_map(|r| r.itl_s())
                .map(|s| s * 1e3)
                .collect(),
        );
        put(
            "inter_chunk_ms",
            ok.iter()
                .flat_map(|r| r.chunk_gaps_ns.iter().map(|g| *g as f64 / 1e6))
                .collect(),
        );
        put(
            "request_latency_ms",
            ok.iter()
                .filter_map(|r| r.latency_s())
                .map(|s| s * 1e3)
                .collect(),
        );
        put(
            "per_user_tokens_per_s",
            ok.iter()
                .filter_map(|r| r.itl_s())
                .filter(|s| *s > 0.0)
                .map(|s| 1.0 / s)
                .collect(),
        );
        put("isl", ok.iter().map(|r| r.input_tokens as f64).collect());
        put("osl", ok.iter().map(|r| r.output_tokens as f64).collect());
        let goodput = (slo.ttft_s.is_some() || slo.itl_s.is_some() || slo.latency_s.is_some())
            .then(|| {
                let good = ok
                    .iter()
                    .filter(|r| {
                        let within = |limit: Option<f64>, v: Option<f64>| {
                            limit.is_none_or(|l| v.is_some_and(|v| v <= l))
                        };
                        // A request with one output token has no ITL; it meets an ITL objective.
                        let itl_ok = slo.itl_s.is_none_or(|l| r.itl_s().is_none_or(|v| v <= l));
                        within(slo.ttft_s, r.ttft_s())
                            && itl_ok
                            && within(slo.latency_s, r.latency_s())
                    })
                    .count();
                per_s(good as f64)
            });
        BenchSummary {
            requests: measured.len() as u64,
            succeeded: ok.len() as u64,
            errors,
            warmup_requests: (records.len() - measured.len()) as u64,
            duration_s,
            request_throughput: per_s(ok.len() as f64),
            output_token_throughput: per_s(out_tokens as f64),
            total_token_throughput: per_s((out_tokens + in_tokens) as f64),
            goodput,
            output_token_sources: sources,
            distributions: dist,
        }
    }

    /// Scalar metrics for the cell's summary row: counts, throughputs, and p50/p99/mean of
    /// the latency distributions (every percentile stays in `benchmark.json`).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = vec![
            ("requests".to_owned(), self.requests as f64),
            ("errors".to_owned(), (self.requests - self.succeeded) as f64),
            ("duration_s".to_owned(), self.duration_s),
            ("request_throughput".to_owned(), self.request_throughput),
            (
                "output_token_throughput".to_owned(),
                self.output_token_throughput,
            ),
        ];
        if let Some(g) = self.goodput {
            out.push(("goodput".to_owned(), g));
        }
        for (kind, n) in &self.errors {
            out.push((format!("errors.{kind}"), *n as f64));
        }
        for name in ["ttft_ms", "itl_ms", "request_latency_ms"] {
            if let Some(d) = self.distributions.get(name) {
                let base = name.trim_end_matches("_ms");
                out.push((format!("{base}.p50_ms"), d.p(50).unwrap_or(f64::NAN)));
                out.push((format!("{base}.p99_ms"), d.p(99).unwrap_or(f64::NAN)));
                out.push((format!("{base}.mean_ms"), d.mean));
            }
        }
        out
    }
}
