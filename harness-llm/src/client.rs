//! The streaming OpenAI client: one request in, one [`RequestRecord`] out, with monotonic
//! nanosecond timestamps taken as bytes arrive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use harness_core::config::EndpointType;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;

use crate::openai::{self, Usage};
use crate::rx::{Arrival, RxConnector, RxStream};
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
///
/// Each request owns its connection while it runs and drives it itself: no connection task,
/// no pool dispatcher in between. The start timestamp is taken in the same poll that writes
/// the request. Tokens are timed by when they reached the socket: on Linux the kernel stamps
/// each packet as it arrives (`SO_TIMESTAMPNS`), so a client that is busy with other streams
/// or briefly descheduled still times them right; elsewhere, by the read that finds them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    connector: HttpsConnector<RxConnector>,
    /// The URL as parsed once: where to connect.
    uri: http::Uri,
    /// What goes on the request line (origin form).
    path: http::Uri,
    /// Host, content type, authorization and the experiment's headers.
    headers: http::HeaderMap,
    /// Idle keep-alive connections, most recently used last.
    idle: std::sync::Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.cfg.url)
            .field("max_connections", &self.inner.cfg.max_connections)
            .finish_non_exhaustive()
    }
}

type Io = MaybeHttpsStream<RxStream>;
type ReqBody = http_body_util::Full<bytes::Bytes>;

/// One HTTP/1.1 connection and its protocol state machine, polled by whoever uses it.
struct Conn {
    sender: http1::SendRequest<ReqBody>,
    /// `None` once the connection has closed. Dropping the finished state machine is what
    /// tells the sender and any request in flight that it is gone; kept, it would leave them
    /// waiting forever.
    driver: Option<http1::Connection<Io, ReqBody>>,
    /// When the bytes the connection read last reached the socket.
    arrival: Arrival,
}

impl Conn {
    /// Moves the connection's reads and writes along; call before polling what waits on it.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(d) = &mut self.driver
            && Pin::new(d).poll(cx).is_ready()
        {
            self.driver = None;
        }
    }

    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }

    /// Waits until the connection can take a request.
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await
    }

    /// Sends a request and waits for the response head.
    async fn send(
        &mut self,
        req: http::Request<ReqBody>,
    ) -> Result<http::Response<Incoming>, hyper::Error> {
        let mut response = std::pin::pin!(self.sender.send_request(req));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// The next data of `body`: `None` at its end.
    async fn next(&mut self, body: &mut Incoming) -> Option<Result<bytes::Bytes, hyper::Error>> {
        loop {
            let frame = std::future::poll_fn(|cx| {
                self.drive(cx);
                Pin::new(&mut *body).poll_frame(cx)
            })
            .await;
            match frame {
                None => return None,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Some(Ok(data));
                    } // trailers: skip
                }
            }
        }
    }

    /// The whole remaining body.
    async fn collect(&mut self, body: &mut Incoming) -> Result<Vec<u8>, hyper::Error> {
        let mut out = Vec::new();
        while let Some(data) = self.next(body).await {
            out.extend_from_slice(&data?);
        }
        Ok(out)
    }
}

impl Client {
    /// A client with a connection pool sized for `cfg.max_connections`.
    ///
    /// # Errors
    /// When the URL, a header name or value, or the API key is not valid, or an `https` URL
    /// finds no trusted root certificates.
    pub fn new(cfg: ClientConfig) -> Result<Self, String> {
        let uri: http::Uri = cfg
            .url
            .parse()
            .map_err(|e| format!("the URL `{}`: {e}", cfg.url))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("the URL `{}` is not http or https", cfg.url)),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the URL `{}` has no host", cfg.url))?
            .clone();
        let path: http::Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("the URL `{}`: {e}", cfg.url))?;
        let mut headers = http::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header name `{k}`: {e}"))?;
            let value = http::HeaderValue::from_str(v).map_err(|e| format!("header `{k}`: {e}"))?;
            headers.insert(name, value);
        }
        if let Some(key) = &cfg.api_key {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "the API key is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if !headers.contains_key(http::header::HOST) {
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("the URL's host: {e}"))?;
            headers.insert(http::header::HOST, host);
        }
        headers
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static(concat!(
                "harness/",
                env!("CARGO_PKG_VERSION")
            )));
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // The system's roots are read only for https; plain http needs none.
        let provider = rustls::crypto::ring::default_provider();
        let tls = if https {
            HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| format!("no trusted root certificates for `{}`: {e}", cfg.url))?
        } else {
            let config = rustls::ClientConfig::builder_with_provider(provider.into())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        };
        let connector = tls
            .https_or_http()
            .enable_http1()
            .wrap_connector(RxConnector(http));
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                connector,
                uri,
                path,
                headers,
                idle: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// An idle pooled connection, or a new one.
    async fn connection(&self, pooled: bool) -> Result<Conn, String> {
        if pooled {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(c) = idle.pop() {
                if c.is_open() {
                    return Ok(c);
                }
            }
        }
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| {
            tower_service::Service::<http::Uri>::poll_ready(&mut connector, cx)
        })
        .await
        .map_err(|e| error_chain(e.as_ref()))?;
        let io = tower_service::Service::call(&mut connector, self.inner.uri.clone())
            .await
            .map_err(|e| error_chain(e.as_ref()))?;
        let arrival = match &io {
            MaybeHttpsStream::Http(s) => s.arrival(),
            MaybeHttpsStream::Https(s) => s.inner().get_ref().0.inner().arrival(),
        };
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(Conn {
            sender,
            driver: Some(driver),
            arrival,
        })
    }

    /// Returns a connection whose last response was read to its end.
    fn release(&self, conn: Conn) {
        if !conn.is_open() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.inner.cfg.max_connections.max(1) {
            idle.push(conn);
        }
    }

    fn request(&self, body: &bytes::Bytes) -> http::Request<ReqBody> {
        let mut req = http::Request::new(http_body_util::Full::new(body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.inner.path.clone();
        *req.headers_mut() = self.inner.headers.clone();
        req
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
        let cfg = &self.inner.cfg;
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
        let timed_out = |rec: &mut RequestRecord| {
            fail(
                rec,
                ErrorKind::Timeout,
                format!("no response within {:?}", cfg.timeout),
            );
            rec.end_ns = ns();
        };
        // A pooled keep-alive connection that the server closed just as it was reused fails
        // before any response byte: a client artifact, not a server failure. Retry once on a
        // new connection, with the clock restarted.
        let mut retried = false;
        let (mut conn, response) = loop {
            let got = tokio::time::timeout_at(deadline, async {
                let mut conn = self.connection(!retried).await?;
                match conn.ready().await {
                    Ok(()) => Ok((conn, None)),
                    Err(e) => Ok((conn, Some(e))),
                }
            })
            .await;
            let mut conn = match got {
                Err(_) => {
                    timed_out(&mut rec);
                    return rec;
                }
                Ok(Err(msg)) => {
                    fail(&mut rec, ErrorKind::Connect, msg);
                    rec.end_ns = ns();
                    return rec;
                }
                Ok(Ok((_, Some(_)))) if !retried => {
                    retried = true;
                    continue;
                }
                Ok(Ok((_, Some(e)))) => {
                    fail(&mut rec, ErrorKind::Connect, error_chain(&e));
                    rec.end_ns = ns();
                    return rec;
                }
                Ok(Ok((conn, None))) => conn,
            };
            // The clock starts where the request is written: in this poll, on this task.
            rec.start_ns = ns();
            match tokio::time::timeout_at(deadline, conn.send(self.request(&body))).await {
                Err(_) => {
                    timed_out(&mut rec);
                    return rec;
                }
                Ok(Err(e)) if !retried && stale_connection(&e) => {
                    retried = true;
                }
                Ok(Err(e)) => {
                    let kind = if e.is_timeout() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Disconnect
                    };
                    fail(&mut rec, kind, error_chain(&e));
                    rec.end_ns = ns();
                    return rec;
                }
                Ok(Ok(r)) => break (conn, r),
            }
        };
        let (head, mut body) = response.into_parts();
        let status = head.status;
        rec.http_status = Some(status.as_u16());
        if !status.is_success() {
            let text = match tokio::time::timeout_at(deadline, conn.collect(&mut body)).await {
                Ok(Ok(bytes)) => {
                    self.release(conn);
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => String::new(),
            };
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
            // One timer for the whole body, not one per chunk.
            let expiry = tokio::time::sleep_until(deadline);
            tokio::pin!(expiry);
            let mut done = false;
            let mut complete = false;
            loop {
                let next = tokio::select! {
                    biased;
                    n = conn.next(&mut body) => n,
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
                    None => {
                        complete = true;
                        break;
                    }
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        fail(&mut rec, ErrorKind::Disconnect, error_chain(&e));
                        break;
                    }
                };
                // When these bytes reached the socket, not when this task got to them.
                let now = conn
                    .arrival
                    .at(ns())
                    .max(rec.last_token_ns.unwrap_or(rec.start_ns));
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
            if complete && rec.error.is_none() {
                self.release(conn);
            }
        } else {
            match tokio::time::timeout_at(deadline, conn.collect(&mut body)).await {
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
                        let now = conn.arrival.at(ns()).max(rec.start_ns);
                        rec.first_token_ns = Some(now);
                        rec.last_token_ns = Some(now);
                        rec.content_chunks = u32::from(info.text_bytes > 0);
                        usage = info.usage;
                        self.release(conn);
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
fn stale_connection(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled() || e.is_closed()
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
