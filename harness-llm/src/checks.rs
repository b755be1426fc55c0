//! Functional checks and accuracy checks of an OpenAI-compatible endpoint, as pipeline steps.
//!
//! * [`FunctionalStep`] (kind `functional`): `/v1/models` lists the model; chat and
//!   completions, streamed and not, return valid OpenAI shapes; `max_tokens` is honoured;
//!   `stop` works; an invalid request gets a 4xx, not a 5xx; N concurrent requests all
//!   succeed. The pass/fail table is stored as `functional.json`.
//! * [`AccuracyStep`] (kind `accuracy`): a JSON-lines dataset of prompts, expected answers
//!   and scorers (`exact`, `regex`, `numeric` with a tolerance, `choice` letter); accuracy
//!   with a 95% Wilson interval, per-item results in `accuracy.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::config::EndpointType;
use harness_core::pipeline::{StepFactory, StepSource};
use harness_core::{Endpoint, Error, Result, Step, StepContext, StepOutput};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
}

fn endpoint(cx: &StepContext, step: &str) -> Result<Arc<Endpoint>> {
    cx.resources()
        .get::<Endpoint>()
        .ok_or_else(|| Error::failed(step, "no endpoint: the deployment step did not report one"))
}

fn http(timeout: Duration) -> Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| Error::failed_from("http client", e))
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    body: &Value,
) -> std::result::Result<(u16, String), String> {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// The SSE `data:` payloads of a streamed body, without `[DONE]`; `Err` when it does not end
/// with `[DONE]` or a payload is not JSON.
fn sse_payloads(body: &str) -> std::result::Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        out.push(serde_json::from_str(data).map_err(|e| format!("a chunk is not JSON: {e}"))?);
    }
    if !done {
        return Err("the stream did not end with [DONE]".into());
    }
    Ok(out)
}

/// Runs the functional suite against `base` (e.g. `http://127.0.0.1:8000`) for `model`.
pub async fn functional_suite(
    base: &str,
    model: &str,
    kind: EndpointType,
    parallel: usize,
) -> Vec<CheckResult> {
    let Ok(c) = http(Duration::from_secs(60)) else {
        return vec![CheckResult {
            name: "client".into(),
            passed: false,
            detail: "cannot build an HTTP client".into(),
            duration_ms: 0.0,
        }];
    };
    let chat = format!("{base}/v1/chat/completions");
    let completions = format!("{base}/v1/completions");
    let msg = |text: &str| json!([{ "role": "user", "content": text }]);
    // The behaviour checks go to the experiment's API flavour.
    let completions_only = matches!(kind, EndpointType::Completions);
    let target = if completions_only {
        &completions
    } else {
        &chat
    };
    let ask = |text: &str, extra: Value| -> Value {
        let mut body = if completions_only {
            json!({"model": model, "prompt": text})
        } else {
            json!({"model": model, "messages": msg(text)})
        };
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
            b.extend(extra);
        }
        body
    };
    let mut out = Vec::new();
    macro_rules! check {
        ($name:expr, $body:expr) => {{
            let t0 = Instant::now();
            let r: std::result::Result<String, String> = async { $body }.await;
            out.push(CheckResult {
                name: $name.into(),
                passed: r.is_ok(),
                detail: r.unwrap_or_else(|e| e),
                duration_ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        }};
    }
    check!("models lists the model", {
        let r = c
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let text = r.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
        let ids: Vec<&str> = v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        if ids.contains(&model) {
            Ok(format!("{} models", ids.len()))
        } else {
            Err(format!("`{model}` not in {ids:?}"))
        }
    });
    // A completions-only server (a base model) is not asked for chat.
    if !completions_only {
        check!("chat, whole response", {
            let (st, text) = post(
                &c,
                &chat,
                &json!({"model": model, "messages": msg("Say hello."), "max_tokens": 8}),
            )
            .await?;
            let v: Value =
                serde_json::from_str(&text).map_err(|e| format!("HTTP {st}: not JSON: {e}"))?;
            let ok = st == 200
                && v["object"] == "chat.completion"
                && v["choices"][0]["message"]["content"].is_string()
                && v["usage"]["completion_tokens"].is_u64();
            if ok {
                Ok("chat.completion with content and usage".into())
            } else {
                Err(format!("HTTP {st}: {text:.200}"))
            }
        });
        check!("chat, streamed", {
            let (st, text) = post(&c, &chat, &json!({"model": model, "messages": msg("Say hello."), "max_tokens": 8, "stream": true})).await?;
            let chunks = sse_payloads(&text)?;
            let ok = st == 200
                && !chunks.is_empty()
                && chunks
                    .iter()
                    .all(|c| c["object"] == "chat.completion.chunk" && c["choices"].is_array());
            if ok {
                Ok(format!("{} chunks", chunks.len()))
            } else {
                Err(format!("HTTP {st}: {text:.200}"))
            }
        });
    }
    check!("completions, whole response", {
        let (st, text) = post(
            &c,
            &completions,
            &json!({"model": model, "prompt": "Once upon a time", "max_tokens": 8}),
        )
        .await?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("HTTP {st}: not JSON: {e}"))?;
        if st == 200 && v["object"] == "text_completion" && v["choices"][0]["text"].is_string() {
            Ok("text_completion with text".into())
        } else {
            Err(format!("HTTP {st}: {text:.200}"))
        }
    });
    check!("completions, streamed", {
        let (st, text) = post(
            &c,
            &completions,
            &json!({"model": model, "prompt": "Once upon a time", "max_tokens": 8, "stream": true}),
        )
        .await?;
        let chunks = sse_payloads(&text)?;
        if st == 200 && !chunks.is_empty() && chunks.iter().all(|c| c["choices"].is_array()) {
            Ok(format!("{} chunks", chunks.len()))
        } else {
            Err(format!("HTTP {st}: {text:.200}"))
        }
    });
    check!("max_tokens is honoured", {
        let body = ask("Count from one to one hundred.", json!({"max_tokens": 5}));
        let (st, text) = post(&c, target, &body).await?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("HTTP {st}: not JSON: {e}"))?;
        let n = v["usage"]["completion_tokens"]
            .as_u64()
            .ok_or("no usage.completion_tokens")?;
        if n <= 5 {
            Ok(format!("{n} tokens for max_tokens 5"))
        } else {
            Err(format!("{n} tokens for max_tokens 5"))
        }
    });
    check!("stop ends the output", {
        let body = ask(
            "Count from one to one hundred.",
            json!({"max_tokens": 16, "temperature": 0}),
        );
        let (_, text) = post(&c, target, &body).await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
        let content = reply_text(kind, &v).unwrap_or_default().to_owned();
        let word = content
            .split_whitespace()
            .nth(1)
            .or_else(|| content.split_whitespace().next())
            .ok_or("the reply is empty")?
            .to_owned();
        let mut stopped = body.clone();
        stopped["stop"] = json!([word]);
        let (st, text) = post(&c, target, &stopped).await?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("HTTP {st}: not JSON: {e}"))?;
        let again = reply_text(kind, &v).unwrap_or_default();
        let cut = again.len() < content.len() && !again.contains(word.as_str());
        if st == 200 && cut {
            Ok(format!(
                "stop `{word}`: {} -> {} chars",
                content.len(),
                again.len()
            ))
        } else {
            Err(format!("stop `{word}` ignored: {again:.120}"))
        }
    });
    check!("invalid request gets a 4xx", {
        let r = c
            .post(target)
            .header("content-type", "application/json")
            .body("{\"model\": ")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let st = r.status().as_u16();
        if (400..500).contains(&st) {
            Ok(format!("HTTP {st}"))
        } else {
            Err(format!("HTTP {st} for a truncated JSON body"))
        }
    });
    check!(format!("{parallel} concurrent requests succeed"), {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..parallel {
            let (c, target) = (c.clone(), target.clone());
            let body = ask(&format!("Request {i}."), json!({"max_tokens": 4}));
            set.spawn(async move { post(&c, &target, &body).await });
        }
        let mut failed = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok((200, _))) => {}
                Ok(Ok((st, body))) => failed.push(format!("HTTP {st}: {body:.80}")),
                Ok(Err(e)) => failed.push(e),
                Err(e) => failed.push(e.to_string()),
            }
        }
        if failed.is_empty() {
            Ok(format!("{parallel} of {parallel}"))
        } else {
            Err(format!("{} failed; first: {}", failed.len(), failed[0]))
        }
    });
    out
}

/// The `functional` step.
#[derive(Debug, Clone)]
pub struct FunctionalStep {
    name: String,
    parallel: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionalParams {
    #[serde(default = "default_parallel")]
    parallel: usize,
}

fn default_parallel() -> usize {
    16
}

impl Default for FunctionalStep {
    fn default() -> Self {
        Self::new()
    }
}

impl FunctionalStep {
    /// The step, named `functional`, with 16 concurrent requests in its last check.
    pub fn new() -> Self {
        FunctionalStep {
            name: "functional".into(),
            parallel: default_parallel(),
        }
    }

    /// Concurrent requests of the last check (clamped to 1..=1024).
    #[must_use]
    pub fn parallel(mut self, n: usize) -> Self {
        self.parallel = n.clamp(1, 1024);
        self
    }

    /// The factory for the step registry: kind `functional`; parameter `parallel`
    /// (concurrent requests of the last check, default 16, 1 to 1024).
    pub fn factory() -> StepFactory {
        Arc::new(|spec, source: &StepSource<'_>| {
            let p: FunctionalParams = source.params(spec)?;
            if !(1..=1024).contains(&p.parallel) {
                return Err(source.error("parallel", "expected 1 to 1024"));
            }
            Ok(Arc::new(FunctionalStep {
                name: spec.step_name().to_owned(),
                parallel: p.parallel,
            }) as Arc<dyn Step>)
        })
    }
}

#[async_trait]
impl Step for FunctionalStep {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let ep = endpoint(cx, &self.name)?;
        let exp = cx.experiment();
        let results = functional_suite(
            &ep.url(""),
            &exp.model.name,
            exp.endpoint_type,
            self.parallel,
        )
        .await;
        let failed: Vec<&CheckResult> = results.iter().filter(|r| !r.passed).collect();
        let json = serde_json::to_vec_pretty(&results)
            .map_err(|e| Error::failed_from("encoding the checks", e))?;
        let key = cx
            .artifacts()
            .put("functional.json", Bytes::from(json))
            .await?;
        if let Some(first) = failed.first() {
            return Err(Error::failed(
                format!("functional checks of {}", ep.url("")),
                format!(
                    "{} of {} failed; first: {}: {}",
                    failed.len(),
                    results.len(),
                    first.name,
                    first.detail
                ),
            ));
        }
        Ok(StepOutput::new()
            .artifact(key)
            .metric("functional.passed", results.len() as f64)
            .metric("functional.failed", 0.0))
    }
}

/// How an answer is scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scorer {
    /// The reply, trimmed, equals `expected` (case-insensitive).
    Exact,
    /// The reply matches the regular expression `expected` (the `regex` crate's syntax,
    /// case-insensitive, anywhere in the reply unless anchored); a pattern that does not
    /// compile is refused when the dataset is read.
    Regex,
    /// The first number in the reply is within `tolerance` of `expected`.
    Numeric,
    /// The option the reply chooses (see its parsing below: "answer: B", "(B)", or the first
    /// standalone capital A to E that is not the article "A") equals `expected`.
    Choice,
}

/// One dataset item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The prompt.
    pub prompt: String,
    /// The expected answer.
    pub expected: String,
    /// How to score.
    pub scorer: Scorer,
    /// For `numeric`: the largest accepted absolute difference.
    #[serde(default)]
    pub tolerance: f64,
}

impl Item {
    /// Whether `reply` is right.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for a bad regular expression or a non-numeric `expected`
    /// for `numeric`.
    pub fn score(&self, reply: &str) -> crate::Result<bool> {
        let reply = reply.trim();
        Ok(match self.scorer {
            Scorer::Exact => reply.eq_ignore_ascii_case(self.expected.trim()),
            Scorer::Regex => compile(&self.expected)?.is_match(reply),
            Scorer::Numeric => {
                let want: f64 = self.expected.trim().parse().map_err(|_| {
                    crate::Error::invalid(format!("expected `{}`", self.expected), "not a number")
                })?;
                first_number(reply).is_some_and(|got| (got - want).abs() <= self.tolerance)
            }
            Scorer::Choice => {
                first_choice(reply).is_some_and(|c| c.eq_ignore_ascii_case(self.expected.trim()))
            }
        })
    }
}

/// The text of a whole (not streamed) reply of the API flavour `kind`.
fn reply_text(kind: EndpointType, v: &Value) -> Option<&str> {
    match kind {
        EndpointType::Completions => v["choices"][0]["text"].as_str(),
        _ => v["choices"][0]["message"]["content"].as_str(),
    }
}

/// `pattern` compiled as a case-insensitive regular expression (the `regex` crate's
/// syntax), found anywhere in the reply unless anchored.
fn compile(pattern: &str) -> crate::Result<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| crate::Error::invalid("`expected`", format!("not a regular expression: {e}")))
}

fn first_number(s: &str) -> Option<f64> {
    let mut cur = String::new();
    for ch in s.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() || ch == '.' || (ch == '-' && cur.is_empty()) {
            cur.push(ch);
        } else if !cur.is_empty() {
            if let Ok(v) = cur.trim_end_matches('.').parse() {
                return Some(v);
            }
            cur.clear();
        }
    }
    None
}

/// The option letter (A to E) a reply chooses. An explicit form wins: "answer: B", "the
/// answer is (B)", "B)" or "(b)"; else the first standalone capital letter A to E, where an
/// "A" followed by a lower-case word is the article ("A good answer is B" chooses B). A
/// lone lower-case letter is not an option, so "a" the article never is.
fn first_choice(s: &str) -> Option<String> {
    static EXPLICIT: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let explicit = EXPLICIT.get_or_init(|| {
        regex::Regex::new(
            r"(?:(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?\s*\(?([A-E])\b\)?)|\(([A-Ea-e])\)|(?m:^\s*([A-E])\))",
        )
        .ok()
    });
    if let Some(c) = explicit
        .as_ref()
        .and_then(|re| re.captures(s))
        .and_then(|c| c.iter().skip(1).flatten().next())
    {
        return Some(c.as_str().to_uppercase());
    }
    let bytes = s.as_bytes();
    let standalone = |i: usize| {
        (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes.get(i + 1).is_none_or(|b| !b.is_ascii_alphanumeric())
    };
    (0..bytes.len())
        .filter(|&i| matches!(bytes[i], b'A'..=b'E') && standalone(i))
        .find(|&i| {
            // "A good one": the article, not option A.
            let article = bytes[i] == b'A'
                && bytes.get(i + 1) == Some(&b' ')
                && bytes.get(i + 2).is_some_and(u8::is_ascii_lowercase);
            !article
        })
        .map(|i| char::from(bytes[i]).to_string())
}

/// Reads a dataset (JSON lines of [`Item`]).
///
/// # Errors
/// A message naming the file and line.
pub fn load_items(path: &std::path::Path) -> std::result::Result<Vec<Item>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let item: Item =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        let at = |reason: String| format!("{}:{}: {reason}", path.display(), i + 1);
        match item.scorer {
            Scorer::Numeric if item.expected.trim().parse::<f64>().is_err() => {
                return Err(at("a numeric item needs a number as `expected`".into()));
            }
            Scorer::Regex => {
                compile(&item.expected).map_err(|e| at(e.to_string()))?;
            }
            Scorer::Choice
                if !matches!(
                    item.expected.trim(),
                    "A" | "B" | "C" | "D" | "E" | "a" | "b" | "c" | "d" | "e"
                ) =>
            {
                return Err(at(format!(
                    "a choice item needs a letter A to E as `expected`, not `{}`",
                    item.expected
                )));
            }
            _ => {}
        }
        out.push(item);
    }
    if out.is_empty() {
        return Err(format!("{}: no items", path.display()));
    }
    Ok(out)
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_963_984_540_054);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// The `accuracy` step.
#[derive(Debug, Clone)]
pub struct AccuracyStep {
    name: String,
    dataset: PathBuf,
    max_tokens: u32,
    concurrency: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccuracyParams {
    dataset: PathBuf,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

fn default_max_tokens() -> u32 {
    64
}
fn default_concurrency() -> usize {
    4
}

impl AccuracyStep {
    /// The step, named `accuracy`, scoring the JSON-lines `dataset` (read when it runs)
    /// with 64 output tokens per answer and 4 requests at a time.
    pub fn new(dataset: impl Into<PathBuf>) -> Self {
        AccuracyStep {
            name: "accuracy".into(),
            dataset: dataset.into(),
            max_tokens: default_max_tokens(),
            concurrency: default_concurrency(),
        }
    }

    /// Output tokens per answer (at least 1).
    #[must_use]
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n.max(1);
        self
    }

    /// Requests at a time (clamped to 1..=256).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, 256);
        self
    }

    /// The factory for the step registry: kind `accuracy`; parameters `dataset` (a JSON-lines
    /// file of `{prompt, expected, scorer, tolerance}`), `max_tokens` (64), `concurrency` (4).
    /// The dataset is read, and checked, when the experiment is loaded.
    pub fn factory() -> StepFactory {
        Arc::new(|spec, source: &StepSource<'_>| {
            let p: AccuracyParams = source.params(spec)?;
            load_items(&p.dataset).map_err(|e| source.error("dataset", e))?;
            if !(1..=256).contains(&p.concurrency) {
                return Err(source.error("concurrency", "expected 1 to 256"));
            }
            Ok(Arc::new(AccuracyStep {
                name: spec.step_name().to_owned(),
                dataset: p.dataset,
                max_tokens: p.max_tokens.max(1),
                concurrency: p.concurrency,
            }) as Arc<dyn Step>)
        })
    }
}

#[async_trait]
impl Step for AccuracyStep {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let ep = endpoint(cx, &self.name)?;
        let path = self.dataset.clone();
        let items = tokio::task::spawn_blocking(move || load_items(&path))
            .await
            .map_err(|e| Error::failed_from("reading the dataset", e))?
            .map_err(|e| Error::invalid("accuracy dataset", e))?;
        // The experiment's endpoint and API flavour, as the load generator uses them.
        let exp = cx.experiment();
        let target = Target::new(ep.url(""), &exp.model.name)
            .endpoint_type(exp.endpoint_type)
            .path(&exp.endpoint)
            .timeout(exp.load.request_timeout.get());
        let report = accuracy(&target, &items, self.max_tokens, self.concurrency).await?;
        let n = report.items.len();
        let (lo, hi) = report.ci95;
        let doc = json!({"endpoint": target.url(), "endpoint_type": target.kind, "items": n,
            "correct": report.correct, "errors": report.errors, "accuracy": report.accuracy,
            "ci95": [lo, hi], "results": report.items});
        let json = serde_json::to_vec_pretty(&doc)
            .map_err(|e| Error::failed_from("encoding accuracy", e))?;
        let key = cx
            .artifacts()
            .put("accuracy.json", Bytes::from(json))
            .await?;
        let mut out = StepOutput::new()
            .artifact(key)
            .metric("accuracy", report.accuracy)
            .metric("accuracy.ci95_low", lo)
            .metric("accuracy.ci95_high", hi)
            .metric("accuracy.items", n as f64)
            .metric("accuracy.request_errors", report.errors as f64);
        if report.errors > 0 {
            out = out.note(format!(
                "accuracy: {} of {n} requests failed and count as wrong",
                report.errors
            ));
        }
        Ok(out)
    }
}

/// Where checks send their requests, for test suites that call [`functional`] and
/// [`accuracy`] directly: the server's base URL, the model, the API path and flavour.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use harness_llm::checks::{Target, accuracy, functional, load_items};
/// let target = Target::new("http://127.0.0.1:8000", "my-model");
/// functional(&target, 4).await?.all_passed()?;
/// let items = load_items(std::path::Path::new("tests/data/accuracy.jsonl"))?;
/// accuracy(&target, &items, 32, 4).await?.at_least(0.75)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Target {
    base: String,
    model: String,
    path: String,
    kind: EndpointType,
    timeout: Duration,
}

impl Target {
    /// Chat completions of `model` at `base_url` (`http://host:port`), 60 s per request.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Target {
            base: base_url.into().trim_end_matches('/').to_owned(),
            model: model.into(),
            path: "/v1/chat/completions".into(),
            kind: EndpointType::Chat,
            timeout: Duration::from_secs(60),
        }
    }

    /// The API flavour; a `completions` target is asked for text completions only.
    #[must_use]
    pub fn endpoint_type(mut self, kind: EndpointType) -> Self {
        if kind == EndpointType::Completions && self.path == "/v1/chat/completions" {
            self.path = "/v1/completions".into();
        }
        self.kind = kind;
        self
    }

    /// The API path the accuracy questions go to (default: the flavour's usual one).
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The longest one request may take.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL the accuracy questions go to.
    pub fn url(&self) -> String {
        format!("{}{}", self.base, self.path)
    }
}

/// A check that did not hold, in words: which check, which item, what was expected and
/// what came back. Its `Debug` is the same text, so `.unwrap()` and a test returning
/// `Result` print it readably.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckFailure {
    message: String,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Debug for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CheckFailure {}

/// The outcome of [`functional`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionalReport {
    /// Every check, in order.
    pub checks: Vec<CheckResult>,
}

impl FunctionalReport {
    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// `Ok` when every check passed; else a failure naming each failed check and what it saw.
    ///
    /// # Errors
    /// [`CheckFailure`] listing the failed checks.
    pub fn all_passed(&self) -> std::result::Result<(), CheckFailure> {
        let failed: Vec<String> = self
            .failed()
            .map(|c| format!("  `{}`: {}", c.name, c.detail))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(CheckFailure {
            message: format!(
                "{} of {} functional checks failed:\n{}",
                failed.len(),
                self.checks.len(),
                failed.join("\n")
            ),
        })
    }
}

/// The functional checks of the OpenAI API against `target` (see [`FunctionalStep`]):
/// the model is listed, the flavour's whole and streamed shapes, `max_tokens`, `stop`, a
/// bad request gets a 4xx, `parallel` concurrent requests succeed.
///
/// # Errors
/// Only when no HTTP client can be built; failed checks are in the report.
pub async fn functional(target: &Target, parallel: usize) -> Result<FunctionalReport> {
    Ok(FunctionalReport {
        checks: functional_suite(&target.base, &target.model, target.kind, parallel.max(1)).await,
    })
}

/// One accuracy item's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemResult {
    /// Its position in the dataset, from 0.
    pub index: usize,
    /// The prompt.
    pub prompt: String,
    /// The expected answer.
    pub expected: String,
    /// How it was scored.
    pub scorer: Scorer,
    /// The model's reply (empty when the request failed).
    pub reply: String,
    /// Whether the reply was right.
    pub correct: bool,
    /// Why it could not be scored: the request failed, or the item could not be read.
    pub error: Option<String>,
}

/// The outcome of [`accuracy`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyReport {
    /// Every item, in dataset order.
    pub items: Vec<ItemResult>,
    /// Right answers.
    pub correct: usize,
    /// Requests that failed (counted as wrong).
    pub errors: usize,
    /// `correct / items`.
    pub accuracy: f64,
    /// The 95% Wilson interval of the accuracy.
    pub ci95: (f64, f64),
}

impl AccuracyReport {
    /// `Ok` when the accuracy is at least `min`; else a failure listing each wrong item with
    /// what was expected and what came back.
    ///
    /// # Errors
    /// [`CheckFailure`] naming the accuracy, the bound and the wrong items.
    pub fn at_least(&self, min: f64) -> std::result::Result<(), CheckFailure> {
        if self.accuracy >= min {
            return Ok(());
        }
        let wrong: Vec<String> = self
            .items
            .iter()
            .filter(|i| !i.correct)
            .map(|i| {
                let got = match &i.error {
                    Some(e) if i.reply.is_empty() => format!("no reply ({e})"),
                    _ => format!("{:?}", i.reply),
                };
                format!(
                    "  item {} ({:?}, {}): expected {:?}, got {got}",
                    i.index,
                    i.prompt.chars().take(60).collect::<String>(),
                    serde_json::to_value(&i.scorer)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    i.expected
                )
            })
            .collect();
        Err(CheckFailure {
            message: format!(
                "accuracy {:.3} ({} of {}) is below {min}; wrong items:\n{}",
                self.accuracy,
                self.correct,
                self.items.len(),
                wrong.join("\n")
            ),
        })
    }

    /// `Ok` when every item is right; see [`AccuracyReport::at_least`].
    ///
    /// # Errors
    /// As [`AccuracyReport::at_least`].
    pub fn all_correct(&self) -> std::result::Result<(), CheckFailure> {
        self.at_least(1.0)
    }
}

/// Asks `target` each item's prompt (greedy, at most `max_tokens`, `concurrency` at a time)
/// and scores the replies.
///
/// # Errors
/// Only when no HTTP client can be built; failed requests are wrong items in the report.
pub async fn accuracy(
    target: &Target,
    items: &[Item],
    max_tokens: u32,
    concurrency: usize,
) -> Result<AccuracyReport> {
    let c = http(target.timeout)?;
    let url = target.url();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, item) in items.iter().cloned().enumerate() {
        let (c, url, model, sem, kind) = (
            c.clone(),
            url.clone(),
            target.model.clone(),
            sem.clone(),
            target.kind,
        );
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let body = match kind {
                EndpointType::Completions => json!({"model": model, "prompt": item.prompt, "max_tokens": max_tokens, "temperature": 0}),
                _ => json!({"model": model, "messages": [{"role": "user", "content": item.prompt}], "max_tokens": max_tokens, "temperature": 0}),
            };
            let reply = match post(&c, &url, &body).await {
                Ok((200, text)) => serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| reply_text(kind, &v).map(str::to_owned))
                    .ok_or_else(|| format!("no content in {text:.120}")),
                Ok((st, text)) => Err(format!("HTTP {st}: {text:.120}")),
                Err(e) => Err(e),
            };
            (i, item, reply)
        });
    }
    let mut rows = Vec::with_capacity(items.len());
    let (mut correct, mut errors) = (0usize, 0usize);
    while let Some(joined) = set.join_next().await {
        let (index, item, reply) = joined.map_err(|e| Error::failed_from("accuracy request", e))?;
        let (ok, reply, error) = match reply {
            Ok(r) => match item.score(&r) {
                Ok(ok) => (ok, r, None),
                Err(e) => (false, r, Some(e.to_string())),
            },
            Err(e) => {
                errors += 1;
                (false, String::new(), Some(e))
            }
        };
        correct += usize::from(ok);
        rows.push(ItemResult {
            index,
            prompt: item.prompt,
            expected: item.expected,
            scorer: item.scorer,
            reply,
            correct: ok,
            error,
        });
    }
    rows.sort_by_key(|r| r.index);
    let n = rows.len();
    Ok(AccuracyReport {
        items: rows,
        correct,
        errors,
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        ci95: wilson(correct, n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(expected: &str, scorer: Scorer, tolerance: f64) -> Item {
        Item {
            prompt: "q".into(),
            expected: expected.into(),
            scorer,
            tolerance,
        }
    }

    #[test]
    fn scorers() {
        assert_eq!(
            item("Paris", Scorer::Exact, 0.0).score(" paris \n").ok(),
            Some(true)
        );
        assert_eq!(
            item("Paris", Scorer::Exact, 0.0).score("It is Paris").ok(),
            Some(false)
        );
        assert_eq!(
            item("^yes|^sure", Scorer::Regex, 0.0)
                .score("Sure thing")
                .ok(),
            Some(true)
        );
        // A real regular expression: classes, repetition, groups.
        let re = item(r"\b(?:forty[- ]two|42)\b", Scorer::Regex, 0.0);
        assert_eq!(re.score("It is Forty-two.").ok(), Some(true));
        assert_eq!(re.score("It is 420.").ok(), Some(false));
        assert_eq!(
            item("a+b", Scorer::Regex, 0.0).score("xaaab").ok(),
            Some(true)
        );
        assert!(item("(unclosed", Scorer::Regex, 0.0).score("x").is_err());
        assert_eq!(
            item("42", Scorer::Numeric, 0.0)
                .score("The answer is 42.")
                .ok(),
            Some(true)
        );
        assert_eq!(
            item("3.14", Scorer::Numeric, 0.01)
                .score("about 3.141")
                .ok(),
            Some(true)
        );
        assert_eq!(
            item("3.14", Scorer::Numeric, 0.0).score("3.2").ok(),
            Some(false)
        );
        assert_eq!(
            item("-7", Scorer::Numeric, 0.0).score("-7").ok(),
            Some(true)
        );
        assert_eq!(
            item("B", Scorer::Choice, 0.0)
                .score("The answer is (B) because")
                .ok(),
            Some(true)
        );
        assert_eq!(item("B", Scorer::Choice, 0.0).score("C").ok(), Some(false));
        // Tricky replies: articles, lower case, explicit forms, option lists.
        for (reply, chosen) in [
            ("a good answer is B", "B"),
            ("A good answer is B", "B"),
            ("A", "A"),
            ("A.", "A"),
            ("A) Paris", "A"),
            ("I think it's (c).", "C"),
            ("Answer: D", "D"),
            ("answer is E, clearly", "E"),
            ("Options A and C are wrong; the answer is B.", "B"),
            ("B is right, not A", "B"),
        ] {
            assert_eq!(
                first_choice(reply).as_deref(),
                Some(chosen),
                "`{reply}` chooses {chosen}"
            );
        }
        for reply in ["a cat", "I do not know", "e.g. nothing"] {
            assert_eq!(first_choice(reply), None, "`{reply}` chooses nothing");
        }
    }

    #[test]
    fn datasets_with_bad_patterns_or_answers_are_refused_at_their_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("items.jsonl");
        for (line, wants) in [
            (
                r#"{"prompt": "p", "expected": "(unclosed", "scorer": "regex"}"#,
                "regular expression",
            ),
            (
                r#"{"prompt": "p", "expected": "Z", "scorer": "choice"}"#,
                "letter A to E",
            ),
            (
                r#"{"prompt": "p", "expected": "many", "scorer": "numeric"}"#,
                "number",
            ),
        ] {
            let good = r#"{"prompt": "q", "expected": "yes", "scorer": "exact"}"#;
            std::fs::write(&path, format!("{good}\n{line}\n")).expect("write");
            let e = load_items(&path).expect_err("refused");
            assert!(e.contains("items.jsonl:2") && e.contains(wants), "{e}");
        }
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        // 8 of 10: the Wilson 95% interval is about [0.490, 0.943].
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(10, 10);
        assert!(hi > 0.999 && lo > 0.69, "{lo} {hi}");
    }
}
