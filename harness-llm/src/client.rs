//! The streaming OpenAI client: one request in, one [`RequestRecord`] out, with monotonic
//! nanosecond timestamps taken as bytes arrive.

use std::time::Duration;

use futures::StreamExt;
use harness_core::config::EndpointType;
use tokio::time::Instant;

use crate::openai::{self, Usage};
use crate::sse::SseParser;

pub use harness_analytics::record::{ErrorKind, Record as RequestRecord, TokenSource};

/// How to reach and call the endpoint.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The full URL, e.g. `http://127.0.0.1:8000/v1/chat/completions`.
    pub url: String,
    /// Chat or completions.
    pub kind: EndpointType,
    /// The model name to send.
    pub model: String,
    /// Streamed responses (the default) or whole ones.
    pub stream: bool,
    /// The longest one request may take, body included.
    pub timeout: Duration,
    /// Sent as a bearer token; never stored or logged.
    pub api_key: Option<String>,
    /// Extra top-level body fields (`ignore_eos`, `min_tokens`, ...).
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Connections to keep open: the concurrency.
    pub max_connections: usize,
}

/// A pooled HTTP client for one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Keeps no idle connections: each request on it opens a new one (for retries).
    fresh: reqwest::Client,
    cfg: std::sync::Arc<ClientConfig>,
}

impl Client {
    /// A client with a connection pool sized for `cfg.max_connections`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (bad header names or values, TLS setup).
    pub fn new(cfg: ClientConfig) -> Result<Self, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header name `{k}`: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header `{k}`: {e}"))?;
            headers.insert(name, value);
        }
        if let Some(key) = &cfg.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "the API key is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        let build = |idle: usize| {
            reqwest::Client::builder()
                .default_headers(headers.clone())
                .pool_max_idle_per_host(idle)
                .tcp_nodelay(true)
                .no_proxy()
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))
        };
        Ok(Client {
            http: build(cfg.max_connections.max(1))?,
            fresh: build(0)?,
            cfg: std::sync::Arc::new(cfg),
        })
    }

    /// Sends one request with `prompt` (of `prompt_tokens` tokens) asking for `max_tokens`.
    /// The prompt is dropped once the body is built, so only the body stays in memory while
    /// the request is in flight.
    pub async fn send(
        &self,
        index: u64,
        warmup: bool,
        prompt: String,
        prompt_tokens: u64,
        max_tokens: u32,
        epoch: Instant,
    ) -> RequestRecord {
        let cfg = &self.cfg;
        let body = bytes::Bytes::from(openai::request_body(
            cfg.kind,
            &cfg.model,
            &prompt,
            max_tokens,
            cfg.stream,
            &cfg.extra_body,
        ));
        drop(prompt);
        let ns = move || u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut rec = RequestRecord {
            index,
            warmup,
            start_ns: ns(),
            first_token_ns: None,
            last_token_ns: None,
            end_ns: 0,
            chunk_gaps_ns: Vec::new(),
            content_chunks: 0,
            input_tokens: prompt_tokens,
            output_tokens: 0,
            output_token_source: TokenSource::Chunks,
            http_status: None,
            error: None,
            error_message: None,
        };
        let deadline = Instant::now() + cfg.timeout;
        let fail = |rec: &mut RequestRecord, kind: ErrorKind, msg: String| {
            rec.error = Some(kind);
            rec.error_message = Some(msg);
        };
        // A pooled keep-alive connection that the server closed just as it was reused fails
        // before any response byte: a client artifact, not a server failure. Retry once on a
        // fresh connection, with the clock restarted.
        let mut retried = false;
        let response = loop {
            // The retry goes through the pool-less client: another pooled connection may be
            // closing too (several reach a server's keep-alive limit at once).
            let http = if retried { &self.fresh } else { &self.http };
            let request = http.post(&cfg.url).body(body.clone());
            match tokio::time::timeout_at(deadline, request.send()).await {
                Err(_) => {
                    fail(
                        &mut rec,
                        ErrorKind::Timeout,
                        format!("no response within {:?}", cfg.timeout),
                    );
                    rec.end_ns = ns();
                    return rec;
                }
                Ok(Err(e)) if !retried && stale_connection(&e) => {
                    retried = true;
                    rec.start_ns = ns();
                }
                Ok(Err(e)) => {
                    let kind = if e.is_connect() {
                        ErrorKind::Connect
                    } else if e.is_timeout() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Disconnect
                    };
                    fail(&mut rec, kind, error_chain(&e));
                    rec.end_ns = ns();
                    return rec;
                }
                Ok(Ok(r)) => break r,
            }
        };
        let status = response.status();
        rec.http_status = Some(status.as_u16());
        if !status.is_success() {
            let text = tokio::time::timeout_at(deadline, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let message = openai::parse_chunk(&text)
                .ok()
                .and_then(|c| c.error)
                .unwrap_or_else(|| text.chars().take(200).collect());
            fail(
                &mut rec,
                ErrorKind::HttpStatus,
                format!("HTTP {}: {message}", status.as_u16()),
            );
            rec.end_ns = ns();
            return rec;
        }
        let mut usage: Option<Usage> = None;
        if cfg.stream {
            let mut parser = SseParser::new();
            let mut stream = response.bytes_stream();
            // One timer for the whole body, not one per chunk.
            let expiry = tokio::time::sleep_until(deadline);
            tokio::pin!(expiry);
            let mut done = false;
            loop {
                let next = tokio::select! {
                    biased;
                    n = stream.next() => n,
                    () = &mut expiry => {
                        fail(
                            &mut rec,
                            ErrorKind::Timeout,
                            format!("the response did not finish within {:?}", cfg.timeout),
                        );
                        break;
                    }
                };
                let bytes = match next {
                    None => break,
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        fail(&mut rec, ErrorKind::Disconnect, error_chain(&e));
                        break;
                    }
                };
                let now = ns();
                let mut problem: Option<(ErrorKind, String)> = None;
                let fed = parser.feed_with(&bytes, |data| {
                    if problem.is_some() {
                        return;
                    }
                    if data == "[DONE]" {
                        done = true;
                        return;
                    }
                    match openai::parse_chunk(data) {
                        Err(e) => {
                            problem = Some((
                                ErrorKind::MalformedStream,
                                format!(
                                    "chunk is not JSON ({e}): {}",
                                    data.chars().take(80).collect::<String>()
                                ),
                            ));
                        }
                        Ok(info) => {
                            if let Some(msg) = info.error {
                                problem = Some((ErrorKind::ServerError, msg));
                                return;
                            }
                            if info.text_bytes > 0 {
                                match rec.last_token_ns {
                                    None => rec.first_token_ns = Some(now),
                                    Some(last) => rec.chunk_gaps_ns.push(now - last),
                                }
                                rec.last_token_ns = Some(now);
                                rec.content_chunks += 1;
                            }
                            if info.usage.is_some() {
                                usage = info.usage;
                            }
                        }
                    }
                });
                if let Err(e) = fed {
                    problem = Some((ErrorKind::MalformedStream, e.to_string()));
                }
                if let Some((kind, msg)) = problem {
                    fail(&mut rec, kind, msg);
                    break;
                }
            }
            if rec.error.is_none()
                && !done
                && (parser.has_partial_event() || rec.content_chunks == 0)
            {
                fail(
                    &mut rec,
                    ErrorKind::Disconnect,
                    "the stream ended before the response was complete".into(),
                );
            }
        } else {
            match tokio::time::timeout_at(deadline, response.bytes()).await {
                Err(_) => fail(
                    &mut rec,
                    ErrorKind::Timeout,
                    format!("the response did not finish within {:?}", cfg.timeout),
                ),
                Ok(Err(e)) => fail(&mut rec, ErrorKind::Disconnect, error_chain(&e)),
                Ok(Ok(body)) => match std::str::from_utf8(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|t| openai::parse_chunk(t).map_err(|e| e.to_string()))
                {
                    Err(e) => fail(
                        &mut rec,
                        ErrorKind::MalformedStream,
                        format!("the body is not a completion: {e}"),
                    ),
                    Ok(info) => {
                        let now = ns();
                        rec.first_token_ns = Some(now);
                        rec.last_token_ns = Some(now);
                        rec.content_chunks = u32::from(info.text_bytes > 0);
                        usage = info.usage;
                    }
                },
            }
        }
        rec.end_ns = ns();
        match usage {
            Some(u) => {
                rec.output_tokens = u.completion_tokens;
                rec.output_token_source = TokenSource::Usage;
                if u.prompt_tokens > 0 {
                    rec.input_tokens = u.prompt_tokens;
                }
            }
            None => rec.output_tokens = u64::from(rec.content_chunks),
        }
        rec
    }
}

/// Whether a send failed because the pooled connection was closed by the server before any
/// response byte arrived (hyper's "connection closed before message completed").
fn stale_connection(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        source = s.source();
    }
    false
}

/// An error with its causes, without the URL's query (which could hold secrets).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
