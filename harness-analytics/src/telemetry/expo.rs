//! The Prometheus text exposition format (version 0.0.4, which OpenMetrics text also
//! parses as), read line by line: a malformed line is skipped with its line number, and the
//! rest of the exposition is kept.
//!
//! Metric names may hold colons (`vllm:num_requests_running`, `llamacpp:tokens_predicted_total`),
//! label values may hold commas, braces and escaped quotes, and each sample keeps its own label
//! set, so two series of one histogram stay apart.

use std::collections::HashMap;

/// The type a `# TYPE` line gives a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (reset to 0 when the server restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket{le=...}`), `_sum` and `_count`.
    Histogram,
    /// Quantiles (`{quantile=...}`), `_sum` and `_count`.
    Summary,
    /// No `# TYPE` line (read as a gauge).
    Untyped,
}

impl MetricKind {
    /// The name in the exposition format and in `server_metrics.parquet`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
            MetricKind::Untyped => "untyped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "histogram" => MetricKind::Histogram,
            "summary" => MetricKind::Summary,
            "untyped" | "unknown" => MetricKind::Untyped,
            _ => return None,
        })
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name as written (`vllm:e2e_request_latency_seconds_bucket`).
    pub name: String,
    /// Its labels, sorted by name, values unescaped.
    pub labels: Vec<(String, String)>,
    /// Its value (`NaN` and `±Inf` included).
    pub value: f64,
    /// The kind of its family (`_bucket`, `_sum` and `_count` of a histogram are
    /// [`MetricKind::Histogram`]).
    pub kind: MetricKind,
}

impl Sample {
    /// Whether the value only goes up between resets: counters, and the buckets, sums and
    /// counts of histograms and summaries. Such samples are stored as rates.
    pub fn is_cumulative(&self) -> bool {
        is_cumulative(self.kind, &self.labels)
    }
}

/// Whether a sample of `kind` with `labels` only goes up between resets (a summary's
/// quantiles do not; its sum and count do).
pub(crate) fn is_cumulative(kind: MetricKind, labels: &[(String, String)]) -> bool {
    match kind {
        MetricKind::Counter | MetricKind::Histogram => true,
        MetricKind::Summary => !labels.iter().any(|(k, _)| k == "quantile"),
        MetricKind::Gauge | MetricKind::Untyped => false,
    }
}

/// A malformed line, skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// At most this many malformed lines are described; the others are counted.
pub const MAX_LINE_ERRORS: usize = 10;

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// The samples, in the order written.
    pub samples: Vec<Sample>,
    /// The first [`MAX_LINE_ERRORS`] malformed lines.
    pub errors: Vec<LineError>,
    /// How many lines were malformed in all.
    pub malformed: usize,
}

/// Parses a text exposition. Never fails: malformed lines are skipped and reported in
/// [`Exposition::errors`].
///
/// ```
/// use harness_analytics::telemetry::expo::{parse, MetricKind};
/// let text = "# TYPE vllm:num_requests_running gauge\n\
///             vllm:num_requests_running{model_name=\"a,b\"} 3\n\
///             bad line\n";
/// let e = parse(text);
/// assert_eq!(e.samples.len(), 1);
/// assert_eq!(e.samples[0].labels, vec![("model_name".to_owned(), "a,b".to_owned())]);
/// assert_eq!(e.samples[0].kind, MetricKind::Gauge);
/// assert_eq!(e.errors[0].line, 3);
/// ```
pub fn parse(text: &str) -> Exposition {
    let mut types: HashMap<String, MetricKind> = HashMap::new();
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let result = if let Some(comment) = line.strip_prefix('#') {
            type_line(comment).map(|t| {
                if let Some((name, kind)) = t {
                    types.insert(name.to_owned(), kind);
                }
            })
        } else {
            sample_line(line).map(|(name, labels, value)| {
                let kind = kind_of(&types, name);
                // OpenMetrics' creation timestamps are not values of the series.
                if kind != MetricKind::Untyped && name.ends_with("_created") {
                    return;
                }
                out.samples.push(Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                    kind,
                });
            })
        };
        if let Err(message) = result {
            out.malformed += 1;
            if out.errors.len() < MAX_LINE_ERRORS {
                out.errors.push(LineError {
                    line: i + 1,
                    message,
                });
            }
        }
    }
    out
}

/// The kind of sample `name`: its own `# TYPE`, else its family's (`x_bucket` of histogram
/// `x`, `x_total` of counter `x`), else untyped.
fn kind_of(types: &HashMap<String, MetricKind>, name: &str) -> MetricKind {
    if let Some(k) = types.get(name) {
        return *k;
    }
    for suffix in ["_bucket", "_sum", "_count", "_total", "_created"] {
        if let Some(k) = name.strip_suffix(suffix).and_then(|base| types.get(base)) {
            return *k;
        }
    }
    MetricKind::Untyped
}

/// A comment: `Some((name, kind))` for a `# TYPE` line, `None` for any other comment.
fn type_line(comment: &str) -> Result<Option<(&str, MetricKind)>, String> {
    let mut words = comment.split_whitespace();
    if words.next() != Some("TYPE") {
        return Ok(None);
    }
    let name = words.next().ok_or("`# TYPE` without a metric name")?;
    if !valid_name(name) {
        return Err(format!("`# TYPE` of an invalid metric name `{name}`"));
    }
    let word = words.next().ok_or("`# TYPE` without a type")?;
    let kind = MetricKind::parse(word).ok_or_else(|| format!("unknown metric type `{word}`"))?;
    Ok(Some((name, kind)))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

type Labels = Vec<(String, String)>;

/// `name{labels} value [timestamp]`.
fn sample_line(line: &str) -> Result<(&str, Labels, f64), String> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    if !valid_name(name) {
        return Err(format!(
            "expected a metric name, found `{}`",
            truncate(line, 40)
        ));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut words = rest.split_whitespace();
    let word = words
        .next()
        .ok_or_else(|| format!("`{name}` has no value"))?;
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("`{name}`: expected a space before the value"));
    }
    let value = number(word).ok_or_else(|| format!("`{name}`: `{word}` is not a number"))?;
    if let Some(ts) = words.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("`{name}`: `{ts}` is not a timestamp"));
    }
    if let Some(extra) = words.next() {
        return Err(format!("`{name}`: unexpected `{extra}` after the value"));
    }
    labels.sort();
    if labels.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(format!("`{name}` repeats a label"));
    }
    Ok((name, labels, value))
}

/// The labels after `{`, up to the closing `}`; returns them and the text after it.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated label set")?;
        let key = &s[..end];
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at `{}`", truncate(s, 20)));
        }
        s = s[end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("label `{key}`: expected `=`"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label `{key}`: expected a quoted value"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("label `{key}`: unterminated value")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("label `{key}`: unterminated value")),
            }
        };
        labels.push((key.to_owned(), value));
        s = s[close + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "label `{key}`: expected `,` or `}}` after its value"
            ));
        }
    }
}

/// Labels as `server_metrics.parquet` stores them: `name="value"` pairs, comma-separated,
/// values escaped as in the exposition format.
pub fn format_labels(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// Labels written by [`format_labels`], read back (sorted).
///
/// # Errors
/// What is malformed.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let (mut labels, rest) =
        label_set(&format!("{text}}}")).map(|(l, rest)| (l, rest.to_owned()))?;
    if !rest.trim().is_empty() {
        return Err(format!("unexpected `{rest}` after the labels"));
    }
    labels.sort();
    Ok(labels)
}

/// A sample value: a float, or `NaN`, `+Inf`, `-Inf`.
fn number(word: &str) -> Option<f64> {
    match word {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        w => w.parse().ok(),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colons_commas_escapes_and_each_label_set_survive() {
        let text = r#"
# HELP vllm:e2e_request_latency_seconds Histogram of e2e latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="m"} 2
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 3
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="other"} 7
vllm:e2e_request_latency_seconds_sum{model_name="m"} 1.25
vllm:e2e_request_latency_seconds_count{model_name="m"} 3
# TYPE odd gauge
odd{path="a,b}c",quote="say \"hi\"\\n", } 1.5e3 1700000000000
# TYPE c counter
c_total NaN
c_created 1700000000
plain -Inf
"#;
        let e = parse(text);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        assert_eq!(e.samples.len(), 8);
        let b = &e.samples[1];
        assert_eq!(b.name, "vllm:e2e_request_latency_seconds_bucket");
        assert_eq!(b.kind, MetricKind::Histogram);
        assert_eq!(
            b.labels,
            vec![
                ("le".into(), "+Inf".into()),
                ("model_name".into(), "m".into())
            ]
        );
        assert_eq!(e.samples[2].value, 7.0, "two label sets stay two samples");
        assert!(e.samples[4].is_cumulative());
        let odd = &e.samples[5];
        assert_eq!(odd.value, 1500.0);
        assert_eq!(
            odd.labels,
            vec![
                ("path".into(), "a,b}c".into()),
                ("quote".into(), "say \"hi\"\\n".into())
            ]
        );
        assert!(!odd.is_cumulative());
        assert_eq!(e.samples[6].kind, MetricKind::Counter);
        assert!(e.samples[6].value.is_nan());
        assert_eq!(e.samples[7].name, "plain");
        assert_eq!(e.samples[7].kind, MetricKind::Untyped);
        assert_eq!(e.samples[7].value, f64::NEG_INFINITY);
    }

    #[test]
    fn malformed_lines_are_located_and_the_rest_is_kept() {
        let text = "ok 1\n9bad 1\nnovalue\nx{a=\"1\" 2\nx{a=1} 2\nx 1 2 3\nx{a=\"1\",a=\"2\"} 1\n# TYPE y histo\nx abc\ngood{a=\"b\"} 2\n";
        let e = parse(text);
        assert_eq!(
            e.samples
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["ok", "good"]
        );
        let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(e.malformed, 8);
        assert!(
            e.errors[7]
                .to_string()
                .contains("line 9: `x`: `abc` is not a number"),
            "{}",
            e.errors[7]
        );
    }

    #[test]
    fn labels_round_trip_through_their_stored_form() {
        let labels = vec![
            ("a".to_owned(), "x,y}\"z\\".to_owned()),
            ("b".to_owned(), "line\nbreak".to_owned()),
        ];
        let text = format_labels(&labels);
        assert_eq!(text, r#"a="x,y}\"z\\",b="line\nbreak""#);
        assert_eq!(parse_labels(&text).expect("parses"), labels);
        assert_eq!(parse_labels("").expect("empty"), Vec::new());
        assert!(parse_labels("a=1").is_err());
    }

    #[test]
    fn errors_past_the_limit_are_counted_not_kept() {
        let text = "bad\n".repeat(25);
        let e = parse(&text);
        assert_eq!(e.errors.len(), MAX_LINE_ERRORS);
        assert_eq!(e.malformed, 25);
    }
}
