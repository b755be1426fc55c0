//! [`CellStats`]: a cell's statistics from its records, with aiperf's definitions (listed in
//! [`crate::schema::DISTRIBUTIONS`] and [`crate::schema::SCALARS`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, RecordBatch};
use harness_core::config::Slo;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::dist::Distribution;
use crate::record::Record;
use crate::table::{RecordColumns, records_batch};

/// The statistics of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CellStats {
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
    /// Measured requests re-sent once on a new connection because the pooled one had been
    /// closed by the server (see [`Record::retried`]).
    #[serde(default)]
    pub retried: u64,
    /// Where output token counts came from: successful requests by source.
    pub output_token_sources: BTreeMap<String, u64>,
    /// Distributions by name (see [`crate::schema::DISTRIBUTIONS`]).
    pub distributions: BTreeMap<String, Distribution>,
    /// The tool that measured the requests when it was not harness' load generator
    /// (`aiperf 0.13.0`); set by importers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The server's side of the cell over its measured window, from its scraped metrics
    /// (see [`crate::telemetry`]): `kv_cache_usage.max`, `running.mean`, `ttft.p99`, ...;
    /// read as metrics `server.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server: BTreeMap<String, f64>,
    /// Input tokens the server served from its prefix cache, summed over successful
    /// measured requests that report them; `None` when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// `cached_tokens` over the input tokens of the same requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_hit_rate: Option<f64>,
    /// Multi-turn sessions with a measured request (sessions and conversations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// Per turn of a session, from turn 1: TTFT and prefix-cache hits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnStats>,
}

/// One turn of the cell's sessions: turn `turn` of every session, over successful measured
/// requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TurnStats {
    /// The turn, from 1.
    pub turn: u32,
    /// Successful measured requests at this turn.
    pub requests: u64,
    /// Median TTFT, in ms.
    pub ttft_p50_ms: f64,
    /// Mean TTFT, in ms.
    pub ttft_mean_ms: f64,
    /// Mean input tokens (the history grows turn by turn).
    pub input_tokens_mean: f64,
    /// Cached over input tokens, where the server reports cached tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_hit_rate: Option<f64>,
}

/// What a cell's prefix-cache and session columns say.
#[derive(Default)]
struct Reuse {
    cached: Option<u64>,
    cached_input: u64,
    sessions: Option<u64>,
    turns: Vec<TurnStats>,
    first_turn_ttft: Vec<f64>,
    later_turn_ttft: Vec<f64>,
    session_ms: Vec<f64>,
}

impl Reuse {
    fn of(c: &RecordColumns<'_>, ok: &[bool]) -> Self {
        let mut out = Reuse::default();
        if let Some(cached) = c.cached_tokens {
            for (i, &ok) in ok.iter().enumerate() {
                if ok && cached.is_valid(i) {
                    *out.cached.get_or_insert(0) += cached.value(i);
                    out.cached_input += c.input_tokens.value(i);
                }
            }
        }
        let (Some(session), Some(turn)) = (c.session, c.turn) else {
            return out;
        };
        // Per turn: TTFTs, input tokens, cached and input tokens where reported.
        type Turn = (Vec<f64>, u64, u64, u64, bool);
        let mut turns: BTreeMap<u32, Turn> = BTreeMap::new();
        // Per session: first start, last end, and whether every request of it succeeded.
        let mut spans: BTreeMap<u64, (u64, u64, bool)> = BTreeMap::new();
        for (i, &ok) in ok.iter().enumerate() {
            if c.warmup.value(i) || session.is_null(i) || turn.is_null(i) {
                continue;
            }
            let span = spans.entry(session.value(i)).or_insert((u64::MAX, 0, true));
            span.0 = span.0.min(c.start_ns.value(i));
            span.1 = span.1.max(c.end_ns.value(i));
            span.2 &= ok;
            if !ok {
                continue;
            }
            let t = turns.entry(turn.value(i)).or_default();
            let input = c.input_tokens.value(i);
            t.1 += input;
            if let Some(cached) = c.cached_tokens.filter(|a| a.is_valid(i)) {
                t.2 += cached.value(i);
                t.3 += input;
                t.4 = true;
            }
            if c.ttft_ms.is_valid(i) {
                let v = c.ttft_ms.value(i);
                t.0.push(v);
                if turn.value(i) <= 1 {
                    out.first_turn_ttft.push(v);
                } else {
                    out.later_turn_ttft.push(v);
                }
            }
        }
        if spans.is_empty() {
            // Records of another workload: the columns are there, empty.
            return out;
        }
        out.sessions = Some(spans.len() as u64);
        out.session_ms = spans
            .values()
            .filter(|s| s.2)
            .map(|s| s.1.saturating_sub(s.0) as f64 / 1e6)
            .collect();
        for (turn, (ttft, input, cached, cached_input, reported)) in turns {
            let n = ttft.len();
            let d = Distribution::of(&ttft);
            out.turns.push(TurnStats {
                turn,
                requests: n as u64,
                ttft_p50_ms: d.as_ref().and_then(|d| d.stat("p50")).unwrap_or(f64::NAN),
                ttft_mean_ms: d.as_ref().and_then(|d| d.stat("mean")).unwrap_or(f64::NAN),
                input_tokens_mean: if n > 0 { input as f64 / n as f64 } else { 0.0 },
                prefix_cache_hit_rate: (reported && cached_input > 0)
                    .then(|| cached as f64 / cached_input as f64),
            });
        }
        out
    }
}

/// The counts of a cell: one pass over the rows.
struct Scalars {
    requests: u64,
    succeeded: u64,
    errors: BTreeMap<String, u64>,
    start: u64,
    end: u64,
    in_tokens: u64,
    out_tokens: u64,
    sources: BTreeMap<String, u64>,
    good: u64,
    retried: u64,
}

impl Scalars {
    fn of(c: &RecordColumns<'_>, ok: &[bool], slo: &Slo) -> Self {
        let mut out = Scalars {
            requests: 0,
            succeeded: 0,
            errors: BTreeMap::new(),
            start: u64::MAX,
            end: 0,
            in_tokens: 0,
            out_tokens: 0,
            sources: BTreeMap::new(),
            good: 0,
            retried: 0,
        };
        let (starts, ends) = (c.start_ns.values(), c.end_ns.values());
        let (ins, outs) = (c.input_tokens.values(), c.output_tokens.values());
        // Token sources come in long runs of one value: count runs, not rows.
        let mut run: Option<(&str, u64)> = None;
        let value = |a: &arrow_array::Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        let within =
            |limit: Option<f64>, v: Option<f64>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
        for (i, &ok) in ok.iter().enumerate() {
            if c.warmup.value(i) {
                continue;
            }
            out.requests += 1;
            out.retried += u64::from(c.retried.is_some_and(|r| r.value(i)));
            out.start = out.start.min(starts[i]);
            out.end = out.end.max(ends[i]);
            if !ok {
                *out.errors
                    .entry(c.error_kind.value(i).to_owned())
                    .or_insert(0) += 1;
                continue;
            }
            out.succeeded += 1;
            out.in_tokens += ins[i];
            out.out_tokens += outs[i];
            let src = c.source.value(i);
            run = match run {
                Some((s, k)) if s == src => Some((s, k + 1)),
                Some((s, k)) => {
                    *out.sources.entry(s.to_owned()).or_insert(0) += k;
                    Some((src, 1))
                }
                None => Some((src, 1)),
            };
            if slo.is_set() {
                // A request with one output token has no ITL; it meets an ITL objective.
                let itl_ok = slo
                    .itl_ms()
                    .is_none_or(|l| value(c.itl_ms, i).is_none_or(|x| x <= l));
                if itl_ok
                    && within(slo.ttft_ms(), value(c.ttft_ms, i))
                    && within(slo.request_latency_ms(), value(c.latency_ms, i))
                {
                    out.good += 1;
                }
            }
        }
        if let Some((s, k)) = run {
            *out.sources.entry(s.to_owned()).or_insert(0) += k;
        }
        out
    }
}

/// The sample of a per-request metric column: its successful, measured, non-null values.
/// Without warmup, errors or nulls that is the Arrow buffer itself (no copy).
fn float_sample<'a>(
    a: &'a arrow_array::Float64Array,
    ok: &[bool],
    all_ok: bool,
    ok_count: usize,
) -> Cow<'a, [f64]> {
    let vals = a.values();
    let n = ok.len();
    match a.nulls() {
        None if all_ok => Cow::Borrowed(&vals[..]),
        None => Cow::Owned(filtered(n, |i| ok[i], |i| vals[i], ok_count)),
        Some(nulls) => Cow::Owned(filtered(
            n,
            |i| ok[i] && nulls.is_valid(i),
            |i| vals[i],
            ok_count,
        )),
    }
}

/// The values `value(i)` of the rows `keep(i)`, into a vector sized for `expect` of them.
fn filtered(
    n: usize,
    keep: impl Fn(usize) -> bool,
    value: impl Fn(usize) -> f64,
    expect: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(expect);
    out.extend((0..n).filter(|&i| keep(i)).map(value));
    out
}

/// A worker thread's result, its panic as [`Error::Worker`].
fn joined<T>(result: std::thread::Result<T>) -> Result<T, Error> {
    result.map_err(|panic| Error::Worker {
        reason: panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
    })
}

/// Per measured request of an open loop (one with a scheduled time): its start minus its
/// scheduled time, in ms, plus `then` (e.g. its TTFT) when given. Over every measured
/// request for the lag alone (a failed request queued too), over successful ones with a
/// value of `then` otherwise.
fn lag_ms(
    c: &RecordColumns<'_>,
    ok: &[bool],
    then: Option<&arrow_array::Float64Array>,
) -> Vec<f64> {
    let Some(sched) = c.scheduled_ns else {
        return Vec::new();
    };
    let starts = c.start_ns.values();
    let mut out = Vec::new();
    for i in 0..ok.len() {
        if c.warmup.value(i) || sched.is_null(i) {
            continue;
        }
        // Signed: a start before its schedule would be a bug to show, not to hide.
        let lag = (starts[i] as f64 - sched.value(i) as f64) / 1e6;
        match then {
            None => out.push(lag),
            Some(col) if ok[i] && col.is_valid(i) => out.push(lag + col.value(i)),
            Some(_) => {}
        }
    }
    out
}

impl CellStats {
    /// Summarises `records`.
    ///
    /// # Errors
    /// Only if a batch cannot be built from them (more than 2^31 chunk gaps).
    pub fn of(records: &[Record], slo: &Slo) -> Result<Self, Error> {
        Self::of_batch(&records_batch(records)?, slo)
    }

    /// Summarises a batch in the records schema (from the load generator, an importer or a
    /// parquet file).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a column is missing or has another type.
    pub fn of_batch(batch: &RecordBatch, slo: &Slo) -> Result<Self, Error> {
        let c = RecordColumns::of(batch)?;
        let n = batch.num_rows();
        // Successful, measured requests: the rows every distribution is taken over.
        let ok: Vec<bool> = (0..n)
            .map(|i| !c.warmup.value(i) && c.error_kind.is_null(i))
            .collect();
        let ok_count = ok.iter().filter(|v| **v).count();
        let all_ok = ok_count == n;
        let ok = &ok;

        // The distributions' samples, each made by a job; without warmup, errors or nulls the
        // Arrow buffer itself is the sample (no copy).
        let floats = |a| float_sample(a, ok, all_ok, ok_count);
        let counts = |a: &arrow_array::UInt64Array| -> Cow<'_, [f64]> {
            let vals = a.values();
            Cow::Owned(filtered(n, |i| ok[i], |i| vals[i] as f64, ok_count))
        };
        type Job<'j> = (
            &'static str,
            Box<dyn Fn() -> Cow<'j, [f64]> + Send + Sync + 'j>,
        );
        let jobs: Vec<Job<'_>> = vec![
            ("ttft", Box::new(|| floats(c.ttft_ms))),
            ("itl", Box::new(|| floats(c.itl_ms))),
            ("request_latency", Box::new(|| floats(c.latency_ms))),
            (
                "output_token_throughput_per_user",
                Box::new(|| {
                    let itl = floats(c.itl_ms);
                    let mut v = Vec::with_capacity(itl.len());
                    v.extend(itl.iter().filter(|v| **v > 0.0).map(|v| 1e3 / v));
                    Cow::Owned(v)
                }),
            ),
            ("input_sequence_length", Box::new(|| counts(c.input_tokens))),
            (
                "output_sequence_length",
                Box::new(|| counts(c.output_tokens)),
            ),
            (
                "schedule_lag",
                Box::new(|| Cow::Owned(lag_ms(&c, ok, None))),
            ),
            (
                "ttft_from_schedule",
                Box::new(|| Cow::Owned(lag_ms(&c, ok, Some(c.ttft_ms)))),
            ),
            (
                "inter_chunk_latency",
                Box::new(|| {
                    let offsets = c.gaps.value_offsets();
                    let gaps = c.gaps.values().as_primitive::<UInt64Type>().values();
                    let ms = |g: &u64| *g as f64 / 1e6;
                    if all_ok {
                        return Cow::Owned(gaps.iter().map(ms).collect());
                    }
                    let mut v = Vec::with_capacity(gaps.len());
                    for i in (0..n).filter(|&i| ok[i]) {
                        let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
                        v.extend(gaps[a..b].iter().map(ms));
                    }
                    Cow::Owned(v)
                }),
            ),
        ];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, make)) = jobs.get(i) else {
                    return out;
                };
                if let Some(d) = Distribution::of(&make()) {
                    out.push(((*name).to_owned(), d));
                }
            }
        };
        let big = n >= 1 << 16;
        let (scalars, mut distributions, reuse) = std::thread::scope(|s| {
            // Large cells: a second thread starts on the distributions while this one does
            // the counts, then helps.
            let helper = big.then(|| s.spawn(work));
            let scalars = Scalars::of(&c, ok, slo);
            let reuse = Reuse::of(&c, ok);
            let mut distributions: BTreeMap<String, Distribution> = work().into_iter().collect();
            if let Some(h) = helper {
                // A panic there is a bug; the statistics it held must not go missing
                // silently.
                distributions.extend(joined(h.join())?);
            }
            Ok::<_, Error>((scalars, distributions, reuse))
        })?;
        for (name, sample) in [
            ("ttft_first_turn", &reuse.first_turn_ttft),
            ("ttft_later_turns", &reuse.later_turn_ttft),
            ("session_duration", &reuse.session_ms),
        ] {
            if let Some(d) = Distribution::of(sample) {
                distributions.insert(name.to_owned(), d);
            }
        }
        let Scalars {
            requests,
            succeeded,
            errors,
            start,
            end,
            in_tokens,
            out_tokens,
            sources,
            good,
            retried,
        } = scalars;
        let duration_s = if requests > 0 {
            end.saturating_sub(start) as f64 / 1e9
        } else {
            0.0
        };
        let per_s = |v: f64| {
            if duration_s > 0.0 {
                v / duration_s
            } else {
                0.0
            }
        };
        Ok(CellStats {
            requests,
            succeeded,
            errors,
            warmup_requests: (n as u64) - requests,
            duration_s,
            request_throughput: per_s(succeeded as f64),
            output_token_throughput: per_s(out_tokens as f64),
            total_token_throughput: per_s((out_tokens + in_tokens) as f64),
            goodput: slo.is_set().then(|| per_s(good as f64)),
            retried,
            output_token_sources: sources,
            distributions,
            tool: None,
            server: BTreeMap::new(),
            cached_tokens: reuse.cached,
            prefix_cache_hit_rate: reuse
                .cached
                .filter(|_| reuse.cached_input > 0)
                .map(|c| c as f64 / reuse.cached_input as f64),
            sessions: reuse.sessions,
            turns: reuse.turns,
        })
    }

    /// A metric by name: a scalar (`request_throughput`, `errors`, `errors.timeout`, ...),
    /// a distribution's statistic (`ttft.p99`, `itl.mean`, ...) or the server's
    /// (`server.kv_cache_usage.max`).
    pub fn value(&self, metric: &str) -> Option<f64> {
        match metric {
            "requests" => Some(self.requests as f64),
            "succeeded" => Some(self.succeeded as f64),
            "errors" => Some((self.requests - self.succeeded) as f64),
            "warmup_requests" => Some(self.warmup_requests as f64),
            "duration_s" => Some(self.duration_s),
            "request_throughput" => Some(self.request_throughput),
            "output_token_throughput" => Some(self.output_token_throughput),
            "total_token_throughput" => Some(self.total_token_throughput),
            "goodput" => self.goodput,
            "retried" => Some(self.retried as f64),
            "cached_tokens" => self.cached_tokens.map(|v| v as f64),
            "prefix_cache_hit_rate" => self.prefix_cache_hit_rate,
            "sessions" => self.sessions.map(|v| v as f64),
            other => {
                if let Some(name) = other.strip_prefix("server.") {
                    return self.server.get(name).copied();
                }
                let (base, stat) = other.split_once('.')?;
                if base == "errors" {
                    return Some(self.errors.get(stat).copied().unwrap_or(0) as f64);
                }
                self.distributions.get(base)?.stat(stat)
            }
        }
    }

    /// Every metric as `(name, value)`: the scalars, errors by kind, and every statistic of
    /// every distribution.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let names: Vec<&str> = self.distributions.keys().map(String::as_str).collect();
        self.metrics_of(&names, &crate::dist::STATS)
    }

    /// The metrics a cell's summary row carries: the scalars, errors by kind, p50, p99
    /// and mean of TTFT, ITL, request latency and tokens/s per user, and the server's
    /// metrics. Every statistic stays in the cell's `stats.json` and the run's
    /// `summary.parquet`.
    pub fn headline_metrics(&self) -> Vec<(String, f64)> {
        self.metrics_of(
            &[
                "ttft",
                "itl",
                "request_latency",
                "output_token_throughput_per_user",
                "ttft_first_turn",
                "ttft_later_turns",
                "session_duration",
            ],
            &["p50", "p99", "mean"],
        )
    }

    /// The scalars, errors by kind, and `stats` of the distributions `names`.
    fn metrics_of(&self, names: &[&str], stats: &[&str]) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = crate::schema::SCALARS
            .iter()
            .filter_map(|s| self.value(s.name).map(|v| (s.name.to_owned(), v)))
            .collect();
        for (kind, n) in &self.errors {
            out.push((format!("errors.{kind}"), *n as f64));
        }
        for name in names {
            for stat in stats {
                let metric = format!("{name}.{stat}");
                if let Some(v) = self.value(&metric) {
                    out.push((metric, v));
                }
            }
        }
        out.extend(self.server.iter().map(|(k, v)| (format!("server.{k}"), *v)));
        out
    }

    /// The source of most output token counts, or `mixed` when sources differ.
    pub fn main_token_source(&self) -> Option<String> {
        match self.output_token_sources.len() {
            0 => None,
            1 => self.output_token_sources.keys().next().cloned(),
            _ => Some("mixed".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_worker_is_an_error_naming_its_panic() {
        let result = std::thread::scope(|s| {
            s.spawn(|| -> Vec<(String, Distribution)> { panic!("sorting went wrong") })
                .join()
        });
        let e = joined(result).expect_err("a lost worker is an error");
        assert!(matches!(e, Error::Worker { .. }));
        assert!(e.to_string().contains("sorting went wrong"), "{e}");
        assert_eq!(joined(Ok(3)).expect("fine"), 3);
    }
}
