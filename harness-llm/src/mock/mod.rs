//! A mock OpenAI-compatible server: configurable time to first token, inter-token latency,
//! output length and jitter, with injected faults (error statuses, dropped connections,
//! stalls, malformed chunks). For tests, demos, and measuring the client itself.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use harness_core::config::MockDeployment;
//! let mut cfg = MockDeployment::default();
//! cfg.ttft_ms = 50.0;
//! cfg.itl_ms = 10.0;
//! let server = harness_llm::mock::MockServer::start(cfg, "127.0.0.1:0".parse().unwrap()).await?;
//! println!("serving at {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed or not; a usage
//! chunk when `stream_options.include_usage` is set), `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text, cheap to scrape: requests, prompt and output tokens,
//! requests running and waiting for a slot, a TTFT histogram), `GET /v1/mock/lateness`
//! (the mock's own lateness as Prometheus summaries), `GET /v1/mock/requests`
//! (per streamed request, the first million: handler start and first token sent on
//! `CLOCK_MONOTONIC`, keyed by [`prompt_key`], so a client on the machine can check its
//! timestamps request by request).
//! Prompt tokens are counted as whitespace-separated words, which is exact for the prompts
//! harness synthesises. Faults are drawn per request from a
//! seeded hash of its sequence number.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use harness_core::config::MockDeployment;
use serde::Deserialize;
use tokio::time::Instant;

mod cache;
mod server;

pub use crate::clock::monotonic_ns;

/// The model name the mock reports when the request names none.
pub const MOCK_MODEL: &str = "harness-mock";

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    injected_errors: AtomicU64,
    injected_disconnects: AtomicU64,
    injected_stalls: AtomicU64,
    injected_malformed: AtomicU64,
    output_tokens: AtomicU64,
    /// Streamed responses under way.
    streams_running: AtomicU64,
    /// Prompt tokens of completed responses.
    prompt_tokens: AtomicU64,
    /// Requests being served: past the slot wait, until their response ends.
    serving: AtomicU64,
    /// Requests waiting for a slot.
    waiting: AtomicU64,
    /// Streamed requests' time to first token: counts per [`TTFT_BUCKETS`] bound (not
    /// cumulative), the last past every bound; and their sum in microseconds.
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len() + 1],
    ttft_sum_us: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found.
    prefix_queries: AtomicU64,
    prefix_hits: AtomicU64,
}

/// The upper bounds, in seconds, of the mock's TTFT histogram.
const TTFT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Adds one to a gauge of [`Counters`] while it lives: a request waiting for a slot, being
/// served, or a streamed response running (until its last chunk is sent, or the stream is
/// dropped because the client left or the connection was cut).
#[derive(Debug)]
struct Held(Arc<Shared>, fn(&Counters) -> &AtomicU64);

impl Held {
    fn new(shared: &Arc<Shared>, gauge: fn(&Counters) -> &AtomicU64) -> Self {
        gauge(&shared.counters).fetch_add(1, Ordering::Relaxed);
        Held(shared.clone(), gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.1)(&self.0.counters).fetch_sub(1, Ordering::Relaxed);
    }
}

/// How late tokens left after their due time, in microseconds (the mock's own scheduling
/// error), and when each streamed request was handled and answered: so a client's
/// measurement can be judged against what the server really did.
#[derive(Debug, Default)]
struct Lateness {
    first: Vec<u32>,
    rest: Vec<u32>,
    /// Per streamed request: its prompt's key, when its handler ran and when its first token
    /// left (`/v1/mock/requests`).
    requests: Vec<(u64, Instant, Instant)>,
}

/// At most this many lateness samples of each kind are kept (40 MB).
const MAX_LATENESS_SAMPLES: usize = 10_000_000;

/// At most this many per-request timings are kept (40 MB).
const MAX_REQUEST_TIMINGS: usize = 1_000_000;

#[derive(Debug)]
struct Shared {
    cfg: MockDeployment,
    counters: Counters,
    lateness: std::sync::Mutex<Lateness>,
    /// Prompt -> answer, from `cfg.answers`.
    answers: std::collections::HashMap<String, String>,
    /// Sub-millisecond sleeps for the token schedule.
    clock: crate::clock::Clock,
    /// Free serving slots (`cfg.slots`); a request holds one until its response ends.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The prefix cache (`cfg.prefix_cache`).
    cache: Option<std::sync::Mutex<cache::PrefixCache>>,
    /// When the model is served from (`cfg.model_ready_ms` after the start).
    model_ready: Instant,
}

impl Shared {
    /// Whether the model is served yet.
    fn model_ready(&self) -> bool {
        Instant::now() >= self.model_ready
    }
}

/// Reads the answers file of the mock's configuration (JSON lines of `prompt` and `answer`).
///
/// # Errors
/// A message naming the file and line.
pub fn load_answers(
    path: &std::path::Path,
) -> Result<std::collections::HashMap<String, String>, String> {
    #[derive(Deserialize)]
    struct Line {
        prompt: String,
        answer: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut out = std::collections::HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: Line =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        out.insert(l.prompt.trim().to_owned(), l.answer);
    }
    Ok(out)
}

/// A running mock server.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Binds `addr` (port 0 for a free one) and serves in a background task until
    /// [`MockServer::shutdown`] or drop.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(cfg: MockDeployment, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(cfg);
        let task = tokio::spawn(async move {
            let _ = self::server::serve(listener, app, async {
                let _ = rx.await;
            })
            .await;
        });
        Ok(MockServer {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server task; open streams are cut.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// An experiment's mock deployment served in this process: a setup step (`mock`) that starts a
/// [`MockServer`] on a free loopback port and shares its [`harness_core::Endpoint`], and a
/// teardown step (`mock-stop`) that stops it.
///
/// For tests and programs that run experiments as a library. `harness run` starts the mock
/// as a process of its own instead (`MockDeployment::command`), so that it does not share
/// the load generator's threads.
pub fn in_process_steps(cfg: MockDeployment) -> harness_core::steps::DeploymentSteps {
    use harness_core::{StepOutput, step_fn};
    let slot: Arc<tokio::sync::Mutex<Option<MockServer>>> = Arc::default();
    let (start_slot, stop_slot) = (slot.clone(), slot);
    let setup = step_fn("mock", move |cx| {
        let (cfg, slot) = (cfg.clone(), start_slot.clone());
        async move {
            let addr = SocketAddr::from(([127, 0, 0, 1], 0));
            let server = MockServer::start(cfg, addr)
                .await
                .map_err(|e| harness_core::Error::io("starting the mock server", e))?;
            let url = server.url();
            cx.resources()
                .insert(harness_core::Endpoint::new(url.as_str())?);
            *slot.lock().await = Some(server);
            Ok(StepOutput::new().note(format!("mock server in this process at {url}")))
        }
    });
    let teardown = step_fn("mock-stop", move |_cx| {
        let slot = stop_slot.clone();
        async move {
            if let Some(server) = slot.lock().await.take() {
                server.shutdown().await;
            }
            Ok(StepOutput::new())
        }
    });
    harness_core::steps::DeploymentSteps::new(Arc::new(setup), Some(Arc::new(teardown)))
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mock's routes. Streamed responses with delays are written by the mock's own
/// connection handling (`server.rs`), so this router is served only by it: on a listener of
/// your own, use [`serve`].
fn router(cfg: MockDeployment) -> Router {
    // A small file read once when the server is built.
    let answers = match &cfg.answers {
        Some(path) => load_answers(path).unwrap_or_else(|e| {
            tracing::warn!("mock answers ignored: {e}");
            Default::default()
        }),
        None => Default::default(),
    };
    let slots = cfg
        .slots
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.get() as usize)));
    let cache = cfg.prefix_cache.map(|c| {
        std::sync::Mutex::new(cache::PrefixCache::new(
            c.blocks.get() as usize,
            c.block_tokens.get() as usize,
        ))
    });
    let model_ready = Instant::now() + Duration::from_secs_f64(cfg.model_ready_ms.max(0.0) / 1e3);
    let shared = Arc::new(Shared {
        model_ready,
        slots,
        cache,
        cfg,
        counters: Counters::default(),
        lateness: std::sync::Mutex::new(Lateness::default()),
        answers,
        clock: crate::clock::Clock::default(),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/mock/lateness", get(lateness))
        .route("/v1/mock/requests", get(request_timings))
        .with_state(shared)
}

/// Serves the mock on `listener` until `shutdown` resolves (streams still open are then
/// cut); for `harness mock`. HTTP/1.1 only, keep-alive, no TLS.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    cfg: MockDeployment,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    self::server::serve(listener, router(cfg), shutdown).await
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    prompt: Option<serde_json::Value>,
    #[serde(default)]
    stop: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<serde_json::Value>,
}

/// Appends the words of a message's content (text, or a list of text parts).
fn push_words<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.extend(s.split_whitespace()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| push_words(i, out)),
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("text") {
                push_words(t, out);
            }
        }
        _ => {}
    }
}

fn words(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.split_whitespace().count() as u64,
        serde_json::Value::Array(items) => items.iter().map(words).sum(),
        serde_json::Value::Object(o) => o.get("text").map_or(0, words),
        _ => 0,
    }
}

/// SplitMix64: a fast, seeded, well-mixed hash of a counter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(seed: u64, a: u64, b: u64) -> f64 {
    (mix(seed ^ mix(a ^ mix(b))) >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    Error,
    Disconnect,
    Stall,
    Malformed,
}

fn fate(cfg: &MockDeployment, n: u64) -> Fate {
    let u = unit(cfg.seed, n, 0xFA7E);
    let mut edge = cfg.error_rate;
    if u < edge {
        return Fate::Error;
    }
    for (rate, fate) in [
        (cfg.disconnect_rate, Fate::Disconnect),
        (cfg.stall_rate, Fate::Stall),
        (cfg.malformed_rate, Fate::Malformed),
    ] {
        edge += rate;
        if u < edge {
            return fate;
        }
    }
    Fate::Ok
}

fn delay(cfg: &MockDeployment, ms: f64, n: u64, i: u64) -> Duration {
    let factor = if cfg.jitter > 0.0 {
        1.0 + cfg.jitter * (2.0 * unit(cfg.seed, n, i + 1) - 1.0)
    } else {
        1.0
    };
    Duration::from_secs_f64((ms * factor).max(0.0) / 1e3)
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "message": message, "type": "mock_error", "code": status.as_u16() } });
    (status, axum::Json(body)).into_response()
}

async fn chat(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    handle(s, body, true).await
}

async fn completions(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    handle(s, body, false).await
}

async fn handle(s: Arc<Shared>, body: Bytes, chat: bool) -> Response {
    let n = s.counters.requests.fetch_add(1, Ordering::Relaxed);
    if !s.model_ready() {
        return error_response(
            StatusCode::NOT_FOUND,
            "model not found: no worker serves it yet",
        );
    }
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            );
        }
    };
    let prompt_tokens = if chat {
        if req.messages.is_empty() {
            return error_response(StatusCode::BAD_REQUEST, "`messages` must not be empty");
        }
        req.messages
            .iter()
            .filter_map(|m| m.content.as_ref())
            .map(words)
            .sum()
    } else {
        match &req.prompt {
            Some(p) => words(p),
            None => return error_response(StatusCode::BAD_REQUEST, "`prompt` is required"),
        }
    };
    let cfg = &s.cfg;
    // The content: a known answer for a known prompt, else `tok` per token.
    let last = if chat {
        req.messages
            .last()
            .and_then(|m| m.content.as_ref())
            .and_then(|c| c.as_str())
    } else {
        req.prompt.as_ref().and_then(|p| p.as_str())
    };
    let answer: Option<Vec<String>> = last
        .and_then(|p| s.answers.get(p.trim()))
        .map(|a| a.split_inclusive(' ').map(str::to_owned).collect());
    let limit = cfg
        .output_tokens
        .map(|t| t.get())
        .or(req.max_completion_tokens)
        .or(req.max_tokens)
        .unwrap_or(16)
        .max(1);
    let mut tokens = answer
        .as_ref()
        .map_or(limit, |a| (a.len() as u32).clamp(1, limit));
    // `stop`: the mock's only word is `tok`, so a stop string found in it ends the response
    // before its first token.
    let stops: Vec<String> = match &req.stop {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let stopped = answer.is_none()
        && stops
            .iter()
            .any(|st| !st.is_empty() && "tok ".contains(st.as_str()));
    if stopped {
        tokens = 0;
    }
    let fate = fate(cfg, n);
    if fate == Fate::Error {
        s.counters.injected_errors.fetch_add(1, Ordering::Relaxed);
        let status =
            StatusCode::from_u16(cfg.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_response(status, "injected error");
    }
    // The prefix cache, on arrival: what it holds follows the arrival order alone.
    let cached = s.cache.as_ref().map(|cache| {
        let mut words: Vec<&str> = Vec::with_capacity(prompt_tokens as usize);
        if chat {
            for m in &req.messages {
                if let Some(c) = &m.content {
                    push_words(c, &mut words);
                }
            }
        } else if let Some(p) = &req.prompt {
            push_words(p, &mut words);
        }
        let reply: Box<dyn Iterator<Item = &str>> = match &answer {
            Some(a) => Box::new(a.iter().flat_map(|w| w.split_whitespace())),
            None => Box::new(std::iter::repeat_n("tok", tokens as usize)),
        };
        let hit = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serve(&words, reply);
        s.counters
            .prefix_queries
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        s.counters.prefix_hits.fetch_add(hit, Ordering::Relaxed);
        hit
    });
    // Prefill: every prompt token not found in the cache.
    let prefill = Duration::from_secs_f64(
        cfg.prefill_ms_per_token * prompt_tokens.saturating_sub(cached.unwrap_or(0)) as f64 / 1e3,
    );
    // A slot, in arrival order (tokio's semaphore is fair); the wait is part of the TTFT.
    let waiting = Held::new(&s, |c| &c.waiting);
    let slot = match &s.slots {
        Some(slots) => match slots.clone().acquire_owned().await {
            Ok(permit) => Some(permit),
            Err(_) => return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        },
        None => None,
    };
    drop(waiting);
    let serving = Held::new(&s, |c| &c.serving);
    let model = req.model.unwrap_or_else(|| MOCK_MODEL.to_owned());
    let id = format!("cmpl-mock-{n}");
    let mut usage = serde_json::json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": prompt_tokens + u64::from(tokens),
    });
    if let Some(c) = cached {
        usage["prompt_tokens_details"] = serde_json::json!({ "cached_tokens": c });
    }
    if !req.stream {
        let start = Instant::now();
        let total = prefill
            + delay(cfg, cfg.ttft_ms, n, 0)
            + delay(cfg, cfg.itl_ms, n, 1) * tokens.saturating_sub(1);
        s.clock.sleep_until(start + total).await;
        s.counters
            .output_tokens
            .fetch_add(u64::from(tokens), Ordering::Relaxed);
        s.counters
            .prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        s.counters.completed.fetch_add(1, Ordering::Relaxed);
        let text = match &answer {
            Some(words) => words.concat(),
            None => "tok ".repeat(tokens as usize),
        };
        let finish = if stopped || answer.is_some() {
            "stop"
        } else {
            "length"
        };
        let choice = if chat {
            serde_json::json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish })
        } else {
            serde_json::json!({ "index": 0, "text": text, "finish_reason": finish })
        };
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        let body = serde_json::json!({ "id": id, "object": object, "model": model, "choices": [choice], "usage": usage });
        drop(slot);
        drop(serving);
        return axum::Json(body).into_response();
    }
    match fate {
        Fate::Disconnect => s
            .counters
            .injected_disconnects
            .fetch_add(1, Ordering::Relaxed),
        Fate::Stall => s.counters.injected_stalls.fetch_add(1, Ordering::Relaxed),
        Fate::Malformed => s
            .counters
            .injected_malformed
            .fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let key = prompt_key(last.unwrap_or_default());
    // The streamed chunks are written from templates: the model name goes in escaped.
    let model = serde_json::to_string(&model)
        .ok()
        .and_then(|q| q.get(1..q.len() - 1).map(str::to_owned))
        .unwrap_or_default();
    let head = if chat {
        format!(
            r#"data: {{"id":"{id}","object":"chat.completion.chunk","model":"{model}","choices":[{{"index":0,"delta":{{"content":""#
        )
    } else {
        format!(
            r#"data: {{"id":"{id}","object":"text_completion","model":"{model}","choices":[{{"index":0,"text":""#
        )
    };
    let stream = TokenStream {
        serving: Some(serving),
        slot,
        prompt_tokens,
        running: Some(Held::new(&s, |c| &c.streams_running)),
        shared: s.clone(),
        n,
        chat,
        id,
        model,
        tokens,
        fate,
        usage: include_usage.then(|| usage.to_string()),
        start: Instant::now(),
        prefill,
        phase: Phase::Role,
        words: answer.map(Arc::new),
        head,
        key,
        scratch: Vec::new(),
    };
    let instant = fate == Fate::Ok && cfg.ttft_ms == 0.0 && cfg.itl_ms == 0.0 && prefill.is_zero();
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    let response = if instant {
        // Every token is ready at once: one write, as a real server's socket would carry.
        let all = stream.all_at_once();
        response.body(Body::from_stream(futures::stream::once(async move {
            Ok::<_, std::io::Error>(all)
        })))
    } else {
        // Written by the clock straight to the socket, each chunk at its due time.
        let shared = s.clone();
        response
            .extension(self::server::Takeover::new(move |sink| {
                let mut writer = Writer {
                    stream,
                    sink: Some(sink),
                };
                if let Some(due) = crate::clock::Timed::fire(&mut writer) {
                    shared.clock.run_at(due, Box::new(writer));
                }
            }))
            .body(Body::empty())
    };
    response.unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// A streamed response on the clock: each run sends what is due and says when to come back.
struct Writer {
    stream: TokenStream,
    /// `None` once the response has ended.
    sink: Option<self::server::Sink>,
}

impl crate::clock::Timed for Writer {
    fn fire(&mut self) -> Option<Instant> {
        let sink = self.sink.as_mut()?;
        if sink.gone() {
            return None;
        }
        let next = self.stream.advance(sink);
        if let Next::At(due) = next {
            return Some(due);
        }
        let sink = self.sink.take()?;
        match next {
            Next::Finish => sink.finish(),
            Next::Cut => sink.cut(),
            Next::Stall => sink.stall(self.stream.running.take()),
            Next::At(_) => {}
        }
        None
    }
}

/// What a streamed response does after [`TokenStream::advance`].
enum Next {
    /// Runs again at this time.
    At(Instant),
    /// Ends with its last chunk.
    Finish,
    /// Closes the connection mid-response (an injected disconnect).
    Cut,
    /// Sends nothing more, leaving the client waiting (an injected stall).
    Stall,
}

struct TokenStream {
    /// Counts the request as being served until the response ends; dropped before the slot,
    /// so that the next request's count never overlaps this one's.
    serving: Option<Held>,
    /// The serving slot, freed when the response ends (`cfg.slots`).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The prompt's tokens, counted when the response completes.
    prompt_tokens: u64,
    /// Taken when a stalled stream hands its count to the connection, which keeps it until the
    /// client leaves.
    running: Option<Held>,
    shared: Arc<Shared>,
    n: u64,
    chat: bool,
    id: String,
    model: String,
    tokens: u32,
    fate: Fate,
    usage: Option<String>,
    start: Instant,
    /// The prompt's prefill time, before the first token.
    prefill: Duration,
    phase: Phase,
    /// The answer's pieces, one per token, instead of `tok`.
    words: Option<Arc<Vec<String>>>,
    /// Every content chunk up to its text, built once per response.
    head: String,
    /// [`prompt_key`] of the request's prompt.
    key: u64,
    /// Where each token's chunk is built, reused.
    scratch: Vec<u8>,
}

impl TokenStream {
    /// The whole stream as one buffer, for responses without delays.
    fn all_at_once(mut self) -> Bytes {
        let mut out = Vec::with_capacity(64 + self.tokens as usize * 160);
        if self.chat {
            out.extend_from_slice(&self.role_chunk());
        }
        for i in 1..=self.tokens {
            self.chunk(&mut out, i);
        }
        out.extend_from_slice(&self.usage_chunk());
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }

    fn role_chunk(&self) -> Bytes {
        Bytes::from(format!(
            "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"model\":\"{}\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n",
            self.id, self.model
        ))
    }

    /// Counts the response as completed and returns its usage chunk (empty without
    /// `include_usage`).
    fn usage_chunk(&mut self) -> Bytes {
        let c = &self.shared.counters;
        c.output_tokens
            .fetch_add(u64::from(self.tokens), Ordering::Relaxed);
        c.prompt_tokens
            .fetch_add(self.prompt_tokens, Ordering::Relaxed);
        c.completed.fetch_add(1, Ordering::Relaxed);
        match self.usage.take() {
            Some(usage) => Bytes::from(format!(
                "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"model\":\"{}\",\"choices\":[],\"usage\":{}}}\n\n",
                self.id, self.model, usage
            )),
            None => Bytes::new(),
        }
    }

    /// The text of content token `i` (1-based).
    fn piece(&self, i: u32) -> &str {
        match &self.words {
            Some(w) => w.get(i as usize - 1).map_or("", |s| s.as_str()),
            None => "tok ",
        }
    }

    /// Appends the chunk of content token `i` (1-based) to `out`.
    fn chunk(&self, out: &mut Vec<u8>, i: u32) {
        let content = self.piece(i);
        // Answers may hold quotes or backslashes; `tok ` needs no escaping.
        let escaped;
        let content = if self.words.is_some() {
            escaped = serde_json::to_string(content).unwrap_or_default();
            escaped
                .get(1..escaped.len().saturating_sub(1))
                .unwrap_or("")
        } else {
            content
        };
        let tail = if self.chat {
            "\"},\"finish_reason\":null}]}\n\n"
        } else {
            "\",\"finish_reason\":null}]}\n\n"
        };
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(content.as_bytes());
        out.extend_from_slice(tail.as_bytes());
    }

    /// When content token `i` (1-based) is due: TTFT, then one ITL per further token,
    /// from the request's start, so delays do not drift.
    fn due(&self, i: u32) -> Instant {
        let cfg = &self.shared.cfg;
        let mut at = self.start + self.prefill + delay(cfg, cfg.ttft_ms, self.n, 0);
        if cfg.itl_ms > 0.0 {
            if cfg.jitter > 0.0 {
                for k in 2..=i {
                    at += delay(cfg, cfg.itl_ms, self.n, u64::from(k));
                }
            } else {
                at += Duration::from_secs_f64(cfg.itl_ms / 1e3) * i.saturating_sub(1);
            }
        }
        at
    }

    /// Sends everything that is due now, then says what comes next.
    fn advance(&mut self, sink: &mut self::server::Sink) -> Next {
        let half = (self.tokens / 2).max(1);
        loop {
            match self.phase {
                Phase::Role => {
                    if self.chat {
                        sink.send(&self.role_chunk());
                    }
                    self.phase = self.after(0);
                }
                Phase::Token(i) => {
                    match self.fate {
                        // Never sends again; the client's timeout must end the request.
                        Fate::Stall if i == 2 => return Next::Stall,
                        Fate::Disconnect if i == half + 1 => {
                            // Pause so that the status line and the first tokens reach the
                            // client: the cut must come mid-stream, after a response has begun.
                            self.phase = Phase::Cut;
                            return Next::At(Instant::now() + Duration::from_millis(2));
                        }
                        Fate::Malformed if i == half + 1 => {
                            sink.send(b"data: {\"choices\": [{\"delta\": \n\n");
                            self.phase = self.after(i);
                            continue;
                        }
                        _ => {}
                    }
                    let due = self.due(i);
                    let now = Instant::now();
                    if due > now {
                        return Next::At(due);
                    }
                    let mut out = std::mem::take(&mut self.scratch);
                    out.clear();
                    self.chunk(&mut out, i);
                    sink.send(&out);
                    self.scratch = out;
                    self.record(i, due, now);
                    self.phase = self.after(i);
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    sink.send(&self.usage_chunk());
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    // The request is done before its last bytes leave: a client that sends
                    // its next one as soon as it reads them is never counted twice.
                    self.serving = None;
                    self.slot = None;
                    sink.send(b"data: [DONE]\n\n");
                    return Next::Finish;
                }
                Phase::Cut => {
                    self.phase = Phase::End;
                    return Next::Cut;
                }
                Phase::End => return Next::Finish,
            }
        }
    }

    /// The phase after content token `i` (0: after the role chunk).
    fn after(&self, i: u32) -> Phase {
        if i < self.tokens {
            Phase::Token(i + 1)
        } else {
            Phase::Usage
        }
    }

    /// Notes how late token `i` left, and for the first, the request's timing.
    fn record(&self, i: u32, due: Instant, sent: Instant) {
        if i == 1 {
            let ttft = sent.saturating_duration_since(self.start);
            let c = &self.shared.counters;
            let bucket = TTFT_BUCKETS
                .iter()
                .position(|b| ttft.as_secs_f64() <= *b)
                .unwrap_or(TTFT_BUCKETS.len());
            c.ttft_buckets[bucket].fetch_add(1, Ordering::Relaxed);
            c.ttft_sum_us.fetch_add(
                u64::try_from(ttft.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        let late = sent.saturating_duration_since(due).as_micros();
        let mut l = self
            .shared
            .lateness
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let v = if i == 1 { &mut l.first } else { &mut l.rest };
        if v.len() < MAX_LATENESS_SAMPLES {
            v.push(u32::try_from(late).unwrap_or(u32::MAX));
        }
        if i == 1 && l.requests.len() < MAX_REQUEST_TIMINGS {
            l.requests.push((self.key, self.start, sent));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Role,
    Token(u32),
    Usage,
    Done,
    /// An injected disconnect, after its pause.
    Cut,
    End,
}

/// The key under which `/v1/mock/requests` lists a request: a 64-bit FNV-1a hash of its
/// prompt (the last message's text, or the completion prompt), so a client can find its own
/// requests by the prompts it sent.
pub fn prompt_key(prompt: &str) -> u64 {
    prompt.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Per streamed request, when its handler ran and when its first token left, in nanoseconds
/// of the machine's monotonic clock (`CLOCK_MONOTONIC`, which every process on the machine
/// shares; `null` where it cannot be read): a client on the same machine can compare them
/// with its own timestamps request by request.
async fn request_timings(State(s): State<Arc<Shared>>) -> Response {
    let rows: Vec<serde_json::Value> = {
        let l = s.lateness.lock().unwrap_or_else(|e| e.into_inner());
        l.requests
            .iter()
            .map(|(key, received, first)| {
                serde_json::json!({
                    "key": format!("{key:016x}"),
                    "received_ns": crate::clock::monotonic_ns(*received),
                    "first_token_ns": crate::clock::monotonic_ns(*first),
                })
            })
            .collect()
    };
    axum::Json(serde_json::json!({ "clock": "CLOCK_MONOTONIC", "requests": rows })).into_response()
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    let data = if s.model_ready() {
        let id = s.cfg.model.as_deref().unwrap_or(MOCK_MODEL);
        serde_json::json!([{ "id": id, "object": "model", "owned_by": "harness" }])
    } else {
        serde_json::json!([])
    };
    axum::Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let c = &s.counters;
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "mock_requests_total",
            "counter",
            "Requests received.",
            &c.requests,
        ),
        (
            "mock_completed_total",
            "counter",
            "Responses completed.",
            &c.completed,
        ),
        (
            "mock_injected_errors_total",
            "counter",
            "Requests answered with an injected error status.",
            &c.injected_errors,
        ),
        (
            "mock_injected_disconnects_total",
            "counter",
            "Streams cut on purpose.",
            &c.injected_disconnects,
        ),
        (
            "mock_injected_stalls_total",
            "counter",
            "Streams stalled on purpose.",
            &c.injected_stalls,
        ),
        (
            "mock_injected_malformed_total",
            "counter",
            "Streams with a malformed chunk.",
            &c.injected_malformed,
        ),
        (
            "mock_output_tokens_total",
            "counter",
            "Output tokens of completed responses.",
            &c.output_tokens,
        ),
        (
            "mock_prompt_tokens_total",
            "counter",
            "Prompt tokens of completed responses.",
            &c.prompt_tokens,
        ),
        (
            "mock_prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            &c.prefix_queries,
        ),
        (
            "mock_prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            &c.prefix_hits,
        ),
        (
            "mock_streams_running",
            "gauge",
            "Streamed responses under way.",
            &c.streams_running,
        ),
        (
            "mock_requests_running",
            "gauge",
            "Requests being served (past the slot wait).",
            &c.serving,
        ),
        (
            "mock_requests_waiting",
            "gauge",
            "Requests waiting for a serving slot.",
            &c.waiting,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    let name = "mock_time_to_first_token_seconds";
    out.push_str(&format!(
        "# HELP {name} Time from a streamed request's arrival to its first token.\n# TYPE {name} histogram\n"
    ));
    let mut cumulative = 0;
    for (i, b) in c.ttft_buckets.iter().enumerate() {
        cumulative += b.load(Ordering::Relaxed);
        let le = TTFT_BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |v| v.to_string());
        out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
    }
    out.push_str(&format!(
        "{name}_sum {}\n{name}_count {cumulative}\n",
        c.ttft_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The mock's own scheduling error: how late first and later tokens left after their due
/// time, as Prometheus summaries (computed on each call, over every sample kept).
async fn lateness(State(s): State<Arc<Shared>>) -> Response {
    let mut out = String::new();
    let lateness = {
        let l = s.lateness.lock().unwrap_or_else(|e| e.into_inner());
        [
            (
                "mock_first_token_lateness_seconds",
                "How late first tokens left after their due time (the mock's own TTFT error).",
                l.first.clone(),
            ),
            (
                "mock_token_lateness_seconds",
                "How late later tokens left after their due time.",
                l.rest.clone(),
            ),
        ]
    };
    for (name, help, us) in lateness {
        let secs: Vec<f64> = us.iter().map(|v| f64::from(*v) / 1e6).collect();
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} summary\n"));
        if let Some(d) = harness_analytics::Distribution::of(&secs) {
            for q in [50u8, 90, 99] {
                out.push_str(&format!(
                    "{name}{{quantile=\"0.{q}\"}} {}\n",
                    d.p(q).unwrap_or(f64::NAN)
                ));
            }
            out.push_str(&format!("{name}_sum {}\n", d.mean * d.count as f64));
        }
        out.push_str(&format!("{name}_count {}\n", secs.len()));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
