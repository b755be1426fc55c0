//! Importers: other benchmark tools' per-request exports turned into [`Record`]s, so their
//! runs get the same statistics, tables, charts and comparisons as the built-in load
//! generator's.
//!
//! | format | file | per-request data |
//! |---|---|---|
//! | [`Format::Aiperf`] | `profile_export.jsonl` (+ `profile_export_aiperf.json`) | start/end ns, TTFT, every inter-chunk gap, token counts, errors |
//! | [`Format::GenaiPerf`] | `profile_export.json` (perf_analyzer's LLM export) | request and response timestamps, SSE payloads |
//! | [`Format::VllmBench`] | `vllm bench serve --save-result --save-detailed` JSON | TTFT, inter-token gaps, lengths, errors (start times when present) |
//! | [`Format::Guidellm`] | `benchmarks.json` | request timings and token counts per benchmark |
//! | [`Format::InferencePerf`] | lifecycle-metrics JSON (per-request) | start/end, chunk times, token counts |
//!
//! Statistics are never copied from the tool: they are recomputed from the records with
//! harness' definitions ([`crate::CellStats`]). What the tool reported itself is kept in
//! [`Imported::reported`] (names as in harness, e.g. `ttft.p50`) so the two can be
//! compared. The field mapping of each format is written at its function.
//!
//! ```no_run
//! use harness_analytics::import::{self, Format};
//! let imported = import::import(Format::Aiperf, "artifacts/my-run".as_ref())?;
//! println!("{} {} requests", imported.tool, imported.records.len());
//! # Ok::<(), harness_analytics::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Error;
use crate::record::{ErrorKind, Record, TokenSource};

mod aiperf;
mod genai_perf;
mod guidellm;
mod inference_perf;
mod vllm;

/// The formats harness can import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// aiperf's `profile_export.jsonl` (a directory holding it, or the file).
    Aiperf,
    /// genai-perf's (perf_analyzer's) `profile_export.json`.
    GenaiPerf,
    /// `vllm bench serve --save-result --save-detailed` JSON.
    VllmBench,
    /// guidellm's `benchmarks.json`.
    Guidellm,
    /// inference-perf's per-request lifecycle metrics JSON.
    InferencePerf,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 5] = [
        Format::Aiperf,
        Format::GenaiPerf,
        Format::VllmBench,
        Format::Guidellm,
        Format::InferencePerf,
    ];

    /// The name used in experiment files (`aiperf`, `genai-perf`, `vllm-bench`,
    /// `guidellm`, `inference-perf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Aiperf => "aiperf",
            Format::GenaiPerf => "genai-perf",
            Format::VllmBench => "vllm-bench",
            Format::Guidellm => "guidellm",
            Format::InferencePerf => "inference-perf",
        }
    }

    /// The format named `s`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] listing the known names.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|f| f.as_str()).collect();
                Error::invalid(
                    format!("import format `{s}`"),
                    format!("unknown; known: {}", known.join(", ")),
                )
            })
    }
}

/// What an import produced.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// The tool, with its version when the export names it: `aiperf 0.13.0`.
    pub tool: String,
    /// One record per request, sorted by start, times from the first start.
    pub records: Vec<Record>,
    /// The tool's own summary figures, in harness' metric names (`ttft.p50` in ms,
    /// `request_throughput`, ...), for cross-checks; never used for statistics.
    pub reported: BTreeMap<String, f64>,
    /// What the import could not carry over exactly.
    pub notes: Vec<String>,
    /// The files read.
    pub files: Vec<PathBuf>,
}

/// Imports `path` (a file, or a directory holding the format's usual file names).
///
/// # Errors
/// [`Error::Import`] naming the file, and the line where the format has lines, when the
/// file is missing, unreadable or not in the format.
pub fn import(format: Format, path: &Path) -> Result<Imported, Error> {
    let mut imported = match format {
        Format::Aiperf => aiperf::import(path)?,
        Format::GenaiPerf => genai_perf::import(path)?,
        Format::VllmBench => vllm::import(path)?,
        Format::Guidellm => guidellm::import(path)?,
        Format::InferencePerf => inference_perf::import(path)?,
    };
    rebase(&mut imported.records);
    Ok(imported)
}

/// Sorts records by start, numbers them, and makes times relative to the first start.
fn rebase(records: &mut [Record]) {
    records.sort_by_key(|r| r.start_ns);
    let epoch = records.iter().map(|r| r.start_ns).min().unwrap_or(0);
    for (i, r) in records.iter_mut().enumerate() {
        r.index = i as u64;
        r.start_ns -= epoch;
        r.end_ns = r.end_ns.saturating_sub(epoch);
        r.first_token_ns = r.first_token_ns.map(|t| t.saturating_sub(epoch));
        r.last_token_ns = r.last_token_ns.map(|t| t.saturating_sub(epoch));
    }
}

/// An import error about `file` (and `line`, from 1).
pub(crate) fn err(file: &Path, line: Option<usize>, reason: impl Into<String>) -> Error {
    Error::Import {
        file: file.display().to_string(),
        line,
        reason: reason.into(),
    }
}

/// `path` itself when it is a file, else `path/<name>` for the first name that exists.
pub(crate) fn locate(path: &Path, names: &[&str]) -> Result<PathBuf, Error> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(err(path, None, "does not exist"));
    }
    names
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| err(path, None, format!("holds none of {}", names.join(", "))))
}

/// One record per request of a JSON array, through `timeline`; an error names the request.
/// An empty list is refused.
pub(crate) fn records_of(
    file: &Path,
    requests: &[Value],
    timeline: impl Fn(&Value) -> Result<Timeline, String>,
) -> Result<Vec<Record>, Error> {
    let records = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            timeline(r)
                .and_then(Timeline::into_record)
                .map_err(|reason| err(file, None, format!("request {i}: {reason}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if records.is_empty() {
        return Err(err(file, None, "has no requests"));
    }
    Ok(records)
}

/// Reads and parses a whole JSON file; a syntax error names its line.
pub(crate) fn read_json(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read(path).map_err(|e| err(path, None, e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| err(path, Some(e.line()), e.to_string()))
}

/// Nanoseconds in `ms` milliseconds (negative and non-finite values are refused).
pub(crate) fn ms_to_ns(ms: f64) -> Option<u64> {
    (ms.is_finite() && ms >= 0.0).then(|| (ms * 1e6).round() as u64)
}

/// Nanoseconds in `s` seconds (negative and non-finite values are refused).
pub(crate) fn s_to_ns(s: f64) -> Option<u64> {
    (s.is_finite() && s >= 0.0).then(|| (s * 1e9).round() as u64)
}

/// One request's timeline as most tools describe it: absolute start, TTFT, the gaps
/// between content chunks, end-to-end latency; turned into a [`Record`].
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    pub start_ns: u64,
    pub ttft_ns: Option<u64>,
    pub gaps_ns: Vec<u64>,
    /// Content chunks, when the tool counts them but keeps no gaps.
    pub chunks: Option<u32>,
    /// Start to last content (streams) or to the response (non-streaming).
    pub latency_ns: Option<u64>,
    /// Start to the end of the response, when the tool gives it separately.
    pub end_ns: Option<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub source: Option<TokenSource>,
    pub warmup: bool,
    pub http_status: Option<u16>,
    pub error: Option<(ErrorKind, String)>,
}

impl Timeline {
    /// The record, or why the tool's times contradict each other (a latency shorter than
    /// the TTFT, an end before the last token, times past the clock's range): other tools'
    /// exports are input, and a subtraction of such times would wrap into huge numbers.
    pub(crate) fn into_record(self) -> Result<Record, String> {
        let ms = |ns: u64| ns as f64 / 1e6;
        let at = |offset: u64, what: &str| {
            self.start_ns
                .checked_add(offset)
                .ok_or_else(|| format!("{what} is past the clock's range"))
        };
        if let (Some(t), Some(l)) = (self.ttft_ns, self.latency_ns)
            && l < t
        {
            return Err(format!(
                "request latency {:.3} ms is shorter than its TTFT {:.3} ms",
                ms(l),
                ms(t)
            ));
        }
        let first = self.ttft_ns.map(|t| at(t, "the first token")).transpose()?;
        let last = match (self.latency_ns, first) {
            (Some(l), _) => Some(at(l, "the last token")?),
            (None, Some(f)) => Some(
                self.gaps_ns
                    .iter()
                    .try_fold(f, |acc, g| acc.checked_add(*g))
                    .ok_or("the chunk gaps add up past the clock's range")?,
            ),
            (None, None) => None,
        };
        let end = match self.end_ns {
            Some(e) => at(e, "the end")?,
            None => last.unwrap_or(self.start_ns),
        };
        if let Some(l) = last
            && end < l
        {
            return Err(format!(
                "the response ends {:.3} ms after the start, before its last token at {:.3} ms",
                ms(end - self.start_ns),
                ms(l - self.start_ns)
            ));
        }
        let ok = self.error.is_none();
        let content_chunks = match (self.chunks, first) {
            (Some(n), _) => n,
            (None, Some(_)) => self.gaps_ns.len() as u32 + 1,
            (None, None) => u32::from(ok && last.is_some()),
        };
        let (error, error_message) = match self.error {
            Some((k, m)) => (Some(k), Some(m)),
            None => (None, None),
        };
        Ok(Record {
            index: 0,
            warmup: self.warmup,
            start_ns: self.start_ns,
            first_token_ns: if ok { first.or(last) } else { first },
            last_token_ns: if ok { last } else { None },
            end_ns: end,
            chunk_gaps_ns: self.gaps_ns,
            content_chunks,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            output_token_source: self.source.unwrap_or(TokenSource::Tokenizer),
            http_status: self.http_status.or(ok.then_some(200)),
            error,
            error_message,
            scheduled_ns: None,
            retried: false,
            cached_tokens: None,
            session: None,
            turn: None,
        })
    }
}

/// The error kind of a failure described by a message (and an HTTP status when known):
/// status → `http_status`; timeouts; cut or incomplete payloads → `disconnect`; connection
/// failures; unparsable chunks → `malformed_stream`; anything else `server_error`.
pub(crate) fn classify(status: Option<u16>, message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if status.is_some_and(|s| !(200..300).contains(&s)) {
        ErrorKind::HttpStatus
    } else if m.contains("timeout") || m.contains("timed out") {
        ErrorKind::Timeout
    } else if m.contains("payload")
        || m.contains("peer closed")
        || m.contains("disconnect")
        || m.contains("incomplete")
        || m.contains("reset")
        || m.contains("transfer")
        || m.contains("eof")
    {
        ErrorKind::Disconnect
    } else if m.contains("connect") || m.contains("refused") {
        ErrorKind::Connect
    } else if m.contains("json") || m.contains("decode") || m.contains("malformed") {
        ErrorKind::MalformedStream
    } else {
        ErrorKind::ServerError
    }
}

/// The number at `v[key]`, when there is one.
pub(crate) fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Reads aiperf-style `{avg, p50, ..., std}` statistics of `value` into `reported` as
/// `<name>.<stat>` (avg becomes `mean`).
pub(crate) fn report_stats(reported: &mut BTreeMap<String, f64>, name: &str, value: &Value) {
    let Some(obj) = value.as_object() else { return };
    for (k, v) in obj {
        let Some(x) = v.as_f64() else { continue };
        let stat = match k.as_str() {
            "avg" | "mean" => "mean",
            "min" | "max" | "std" | "p1" | "p5" | "p10" | "p25" | "p50" | "p75" | "p90" | "p95"
            | "p99" => k.as_str(),
            "median" => "p50",
            _ => continue,
        };
        reported.insert(format!("{name}.{stat}"), x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_status_and_message() {
        assert_eq!(classify(Some(500), "boom"), ErrorKind::HttpStatus);
        assert_eq!(
            classify(
                None,
                "ClientPayloadError: Response payload is not completed"
            ),
            ErrorKind::Disconnect
        );
        assert_eq!(classify(None, "ReadTimeout"), ErrorKind::Timeout);
        assert_eq!(
            classify(None, "ClientConnectorError: Cannot connect to host"),
            ErrorKind::Connect
        );
        assert_eq!(classify(None, "Server disconnected"), ErrorKind::Disconnect);
        assert_eq!(
            classify(
                None,
                "RemoteProtocolError: peer closed connection (incomplete read)"
            ),
            ErrorKind::Disconnect
        );
        assert_eq!(
            classify(None, "JSONDecodeError"),
            ErrorKind::MalformedStream
        );
        assert_eq!(classify(None, "model overloaded"), ErrorKind::ServerError);
    }

    #[test]
    fn formats_round_trip_their_names_and_unknown_names_list_the_known() {
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()).ok(), Some(f));
        }
        let e = Format::parse("locust").expect_err("unknown");
        assert!(e.to_string().contains("genai-perf"), "{e}");
    }

    #[test]
    fn a_timeline_becomes_a_record_with_its_chunks() {
        let r = Timeline {
            start_ns: 1_000,
            ttft_ns: Some(50),
            gaps_ns: vec![10, 10, 10],
            latency_ns: Some(80),
            output_tokens: 4,
            source: Some(TokenSource::Usage),
            ..Timeline::default()
        }
        .into_record()
        .expect("record");
        assert_eq!(r.first_token_ns, Some(1_050));
        assert_eq!(r.last_token_ns, Some(1_080));
        assert_eq!(r.end_ns, 1_080);
        assert_eq!(r.content_chunks, 4);
        assert!(r.ok());
        let failed = Timeline {
            start_ns: 5,
            error: Some((ErrorKind::HttpStatus, "500".into())),
            http_status: Some(500),
            ..Timeline::default()
        }
        .into_record()
        .expect("record");
        assert_eq!(failed.error, Some(ErrorKind::HttpStatus));
        assert_eq!(failed.last_token_ns, None);
        assert_eq!(failed.content_chunks, 0);
    }

    #[test]
    fn contradictory_times_are_refused_not_wrapped() {
        let base = || Timeline {
            start_ns: 1_000,
            output_tokens: 2,
            ..Timeline::default()
        };
        let short = Timeline {
            ttft_ns: Some(80),
            latency_ns: Some(50),
            ..base()
        };
        let e = short.into_record().expect_err("latency under TTFT");
        assert!(e.contains("shorter than its TTFT"), "{e}");
        let early_end = Timeline {
            ttft_ns: Some(10),
            latency_ns: Some(50),
            end_ns: Some(20),
            ..base()
        };
        let e = early_end
            .into_record()
            .expect_err("end before the last token");
        assert!(e.contains("before its last token"), "{e}");
        let huge = Timeline {
            start_ns: u64::MAX - 5,
            ttft_ns: Some(10),
            ..base()
        };
        let e = huge.into_record().expect_err("overflow");
        assert!(e.contains("clock's range"), "{e}");
        let gaps = Timeline {
            ttft_ns: Some(10),
            gaps_ns: vec![u64::MAX, 1],
            ..base()
        };
        assert!(gaps.into_record().is_err());
    }
}
