//! The streaming OpenAI client: one request in, one [`Record`] out, with monotonic
//! nanosecond timestamps taken as bytes arrive.

use std::sync::Arc;
use std::time::Duration;

use harness_core::config::EndpointType;
use tokio::time::Instant;

mod http1;
mod rx;
pub mod sse;

use self::http1::{Conn, Stream};
use self::rx::RxTcp;
use self::sse::SseParser;
use crate::openai::{self, Usage};

pub use harness_analytics::record::{ErrorKind, Record, TokenSource};

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

/// A pooled HTTP/1.1 client for one endpoint.
///
/// Each request owns its connection while it runs and reads it itself: no connection task,
/// no pool dispatcher in between, and the body's bytes go from the connection's buffer
/// straight to the SSE parser. The start timestamp is taken just before the request is
/// written. Tokens are timed by when they reached the socket: on Linux the kernel stamps each
/// packet as it arrives (`SO_TIMESTAMPNS`), so a client that is busy with other streams or
/// briefly descheduled still times them right; elsewhere, by the read that finds them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    /// Where to connect.
    host: String,
    port: u16,
    /// For `https`: the TLS set-up and the name the certificate must carry.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The request line and every header but the length, ready to write.
    head: Vec<u8>,
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

impl Client {
    /// A client with a connection pool sized for `cfg.max_connections`.
    ///
    /// # Errors
    /// When the URL, a header name or value, or the API key is not valid, or an `https` URL
    /// finds no trusted root certificates.
    pub fn new(cfg: ClientConfig) -> crate::Result<Self> {
        let bad_url =
            |reason: String| crate::Error::invalid(format!("the URL `{}`", cfg.url), reason);
        let uri: http::Uri = cfg.url.parse().map_err(|e| bad_url(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad_url("not http or https".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| bad_url("no host".into()))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = http::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| crate::Error::invalid(format!("header name `{k}`"), e.to_string()))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|e| crate::Error::invalid(format!("header `{k}`"), e.to_string()))?;
            headers.insert(name, value);
        }
        if let Some(key) = &cfg.api_key {
            let value = http::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| crate::Error::invalid("the API key", "not a valid header value"))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if !headers.contains_key(http::header::HOST) {
            // Host and port, never the URL's user information.
            let value = match authority.port() {
                Some(p) => format!("{}:{p}", authority.host()),
                None => authority.host().to_owned(),
            };
            let host = http::HeaderValue::from_str(&value)
                .map_err(|e| bad_url(format!("its host: {e}")))?;
            headers.insert(http::header::HOST, host);
        }
        headers
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static(concat!(
                "harness/",
                env!("CARGO_PKG_VERSION")
            )));
        // The length is the body's own; a configured one would be wrong.
        headers.remove(http::header::CONTENT_LENGTH);
        headers.remove(http::header::TRANSFER_ENCODING);
        let mut head = format!("POST {path} HTTP/1.1\r\n").into_bytes();
        for (name, value) in &headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let tls = if https {
            Some((tls_connector(&cfg.url)?, server_name(host, &cfg.url)?))
        } else {
            None
        };
        Ok(Client {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                port,
                tls,
                head,
                cfg,
                idle: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// An idle pooled connection, or a new one.
    /// A connection, and whether it came from the pool (`pooled` allows that).
    async fn connection(&self, pooled: bool) -> Result<(Conn, bool), String> {
        if pooled {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(c) = idle.pop() {
                if c.reusable() {
                    return Ok((c, true));
                }
            }
        }
        let inner = &self.inner;
        let failed = |e: std::io::Error| format!("connect to {}:{}: {e}", inner.host, inner.port);
        let tcp = tokio::net::TcpStream::connect((inner.host.as_str(), inner.port))
            .await
            .map_err(failed)?;
        // Requests are written whole; waiting to fill a segment would only delay them.
        tcp.set_nodelay(true).map_err(failed)?;
        let tcp = RxTcp::new(tcp);
        let io = match &inner.tls {
            None => Stream::Plain(tcp),
            Some((tls, name)) => Stream::Tls(Box::new(
                tls.connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", inner.host))?,
            )),
        };
        Ok((Conn::new(io), false))
    }

    /// Returns a connection whose last response was read to its end.
    fn release(&self, conn: Conn) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.inner.cfg.max_connections.max(1) {
            idle.push(conn);
        }
    }

    /// The request's bytes: the prepared head, the length, the body.
    fn request(&self, body: &[u8]) -> Vec<u8> {
        let head = &self.inner.head;
        let mut out = Vec::with_capacity(head.len() + body.len() + 32);
        out.extend_from_slice(head);
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out
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
    ) -> Record {
        let cfg = &self.inner.cfg;
        let body = openai::request_body(
            cfg.kind,
            &cfg.model,
            &prompt,
            max_tokens,
            cfg.stream,
            &cfg.extra_body,
        );
        drop(prompt);
        self.send_body(index, warmup, body, prompt_tokens, epoch, None)
            .await
    }

    /// Sends a chat history (the turns of a session) asking for `max_tokens`, and appends
    /// the reply's content to `reply`, so the next turn can carry it. `prompt_tokens` is the
    /// history's token count as the caller knows it (the server's usage replaces it).
    #[allow(clippy::too_many_arguments)]
    pub async fn send_history(
        &self,
        index: u64,
        warmup: bool,
        messages: &[openai::Message],
        prompt_tokens: u64,
        max_tokens: u32,
        epoch: Instant,
        reply: &mut String,
    ) -> Record {
        let cfg = &self.inner.cfg;
        let body = openai::history_body(
            cfg.kind,
            &cfg.model,
            messages,
            max_tokens,
            cfg.stream,
            &cfg.extra_body,
        );
        self.send_body(index, warmup, body, prompt_tokens, epoch, Some(reply))
            .await
    }

    /// Sends a request body; with `capture`, the reply's content is appended to it.
    async fn send_body(
        &self,
        index: u64,
        warmup: bool,
        body: Vec<u8>,
        prompt_tokens: u64,
        epoch: Instant,
        mut capture: Option<&mut String>,
    ) -> Record {
        let cfg = &self.inner.cfg;
        let ns = move || u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut rec = Record {
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
            scheduled_ns: None,
            retried: false,
            cached_tokens: None,
            session: None,
            turn: None,
        };
        let deadline = Instant::now() + cfg.timeout;
        let fail = |rec: &mut Record, kind: ErrorKind, msg: String| {
            rec.error = Some(kind);
            rec.error_message = Some(msg);
        };
        let timed_out = |rec: &mut Record| {
            fail(
                rec,
                ErrorKind::Timeout,
                format!("no response within {:?}", cfg.timeout),
            );
            rec.end_ns = ns();
        };
        let request = self.request(&body);
        drop(body);
        // A pooled keep-alive connection that the server closed just as it was reused fails
        // before any response byte: a client artifact, not a server failure. Retry once on a
        // new connection, with the clock restarted, and say so in the record. Never on a
        // fresh connection: there the failure is the server's, and a retry could post the
        // request twice.
        let mut retried = false;
        let (mut conn, status) = loop {
            let (mut conn, pooled) =
                match tokio::time::timeout_at(deadline, self.connection(!retried)).await {
                    Err(_) => {
                        timed_out(&mut rec);
                        return rec;
                    }
                    Ok(Err(msg)) => {
                        fail(&mut rec, ErrorKind::Connect, msg);
                        rec.end_ns = ns();
                        return rec;
                    }
                    Ok(Ok(conn)) => conn,
                };
            // The clock starts where the request is written.
            rec.start_ns = ns();
            let head = tokio::time::timeout_at(deadline, async {
                conn.send(&request).await?;
                conn.head().await
            })
            .await;
            match head {
                Err(_) => {
                    timed_out(&mut rec);
                    return rec;
                }
                Ok(Err(e)) if pooled && !retried && !conn.answered() && stale(&e) => {
                    retried = true;
                    rec.retried = true;
                }
                Ok(Err(e)) => {
                    let kind = match e {
                        http1::Error::Invalid(_) => ErrorKind::MalformedStream,
                        _ => ErrorKind::Disconnect,
                    };
                    fail(&mut rec, kind, e.to_string());
                    rec.end_ns = ns();
                    return rec;
                }
                Ok(Ok(status)) => break (conn, status),
            }
        };
        rec.http_status = Some(status);
        if !(200..300).contains(&status) {
            let text = match tokio::time::timeout_at(deadline, conn.collect()).await {
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
                format!("HTTP {status}: {message}"),
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
                    n = conn.data() => n,
                    () = &mut expiry => {
                        fail(
                            &mut rec,
                            ErrorKind::Timeout,
                            format!("the response did not finish within {:?}", cfg.timeout),
                        );
                        break;
                    }
                };
                let (bytes, stamp) = match next {
                    Ok(None) => {
                        complete = true;
                        break;
                    }
                    Ok(Some(got)) => got,
                    Err(e) => {
                        fail(&mut rec, body_error_kind(&e), e.to_string());
                        break;
                    }
                };
                // When these bytes reached the socket, not when this task got to them.
                let now = stamp
                    .at(ns())
                    .max(rec.last_token_ns.unwrap_or(rec.start_ns));
                let mut problem: Option<(ErrorKind, String)> = None;
                let fed = parser.feed_with(bytes, |data| {
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
                                if let Some(out) = capture.as_deref_mut() {
                                    // Parsed a second time, for its text: sessions only.
                                    let _ = openai::append_text(data, out);
                                }
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
            match tokio::time::timeout_at(deadline, conn.collect()).await {
                Err(_) => fail(
                    &mut rec,
                    ErrorKind::Timeout,
                    format!("the response did not finish within {:?}", cfg.timeout),
                ),
                Ok(Err(e)) => fail(&mut rec, body_error_kind(&e), e.to_string()),
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
                        if let (Some(out), Ok(text)) = (capture, std::str::from_utf8(&body)) {
                            let _ = openai::append_text(text, out);
                        }
                        let now = conn.stamp().at(ns()).max(rec.start_ns);
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
                rec.cached_tokens = u.cached_tokens;
            }
            None => rec.output_tokens = u64::from(rec.content_chunks),
        }
        rec
    }
}

/// Whether a request failed, before any response byte, the way a pooled connection that the
/// server had closed fails: the write or the read met a closed or reset connection.
fn stale(e: &http1::Error) -> bool {
    match e {
        http1::Error::Closed => true,
        http1::Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
        http1::Error::Invalid(_) => false,
    }
}

/// The kind of a failure while the body is read.
fn body_error_kind(e: &http1::Error) -> ErrorKind {
    match e {
        http1::Error::Invalid(_) => ErrorKind::MalformedStream,
        _ => ErrorKind::Disconnect,
    }
}

/// The TLS set-up for `https` URLs: the system's trusted roots, HTTP/1.1 by ALPN.
fn tls_connector(url: &str) -> crate::Result<tokio_rustls::TlsConnector> {
    let mut config = tls_config(url)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// An HTTP client for the other requests to the server (`/v1/models`, `/metrics`), which
/// trusts what the load's connections trust (the system's roots, `SSL_CERT_FILE`).
pub(crate) fn http_client(url: &str, timeout: Duration) -> crate::Result<reqwest::Client> {
    crate::install_crypto_provider();
    let builder = match tls_config(url) {
        Ok(config) => reqwest::Client::builder().use_preconfigured_tls(config),
        // Without trusted roots, plain HTTP still works.
        Err(_) if !url.starts_with("https://") => reqwest::Client::builder(),
        Err(e) => return Err(e),
    };
    builder
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| crate::Error::Tls {
            url: url.to_owned(),
            reason: "cannot build an HTTP client".into(),
            source: Some(e.into()),
        })
}

/// The system's trusted roots with ring, the safe protocol versions, no client certificate.
fn tls_config(url: &str) -> crate::Result<rustls::ClientConfig> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(crate::Error::Tls {
            url: url.to_owned(),
            reason: format!("no trusted root certificates: {why}"),
            source: None,
        });
    }
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::Error::Tls {
            url: url.to_owned(),
            reason: "no safe protocol version".into(),
            source: Some(e.into()),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The name an `https` server's certificate must carry: the URL's host.
fn server_name(host: &str, url: &str) -> crate::Result<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        crate::Error::invalid(
            format!("the URL `{url}`"),
            format!("`{host}` is not a valid TLS server name: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_head_carries_the_host_and_headers_but_no_user_information() {
        let c = Client::new(ClientConfig {
            url: "http://user:secret@127.0.0.1:9/v1/chat/completions?x=1".into(),
            kind: EndpointType::Chat,
            model: "m".into(),
            stream: true,
            timeout: Duration::from_secs(1),
            api_key: Some("k".into()),
            extra_body: Default::default(),
            headers: vec![
                ("x-team".into(), "bench".into()),
                ("content-length".into(), "7".into()),
            ],
            max_connections: 1,
        })
        .expect("client");
        let head = String::from_utf8(c.inner.head.clone()).expect("ascii");
        assert!(
            head.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        for line in [
            "host: 127.0.0.1:9\r\n",
            "authorization: Bearer k\r\n",
            "x-team: bench\r\n",
            "content-type: application/json\r\n",
        ] {
            assert!(head.contains(line), "{line:?} in {head}");
        }
        assert!(
            !head.contains("secret") && !head.contains("content-length"),
            "{head}"
        );
        let req = String::from_utf8(c.request(b"{}")).expect("ascii");
        assert!(req.ends_with("content-length: 2\r\n\r\n{}"), "{req}");
    }
}
