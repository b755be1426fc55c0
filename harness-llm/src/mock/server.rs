//! The mock's HTTP/1.1 connection handling: requests are parsed with `httparse`, answered by
//! the mock's axum [`Router`], and the response is written straight to the socket.
//!
//! hyper's server did this before; its dispatcher, write buffer and flush ran for every token
//! and cost the mock about a third of its user-space time at high concurrency. Here a body's
//! frames each become one chunk in one `write` (frames that are ready together share it). A
//! streamed response with delays goes further: its [`Takeover`] hands the socket to the mock's
//! clock, which writes each token when it is due, with no task woken per token.
//!
//! What it handles: keep-alive (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
//! `Connection: keep-alive`), pipelined requests, bodies by `Content-Length` or chunked,
//! `Expect: 100-continue`, `HEAD`. A malformed request gets a 400 (431 for an oversized head,
//! 413 for an oversized body) naming the problem, and the connection is closed. A client that
//! goes away mid-stream ends the response at once, even while it waits for its next token.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use futures::FutureExt as _;
use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HeaderName, HeaderValue, TRANSFER_ENCODING,
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower_service::Service;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body.
const MAX_BODY: usize = 64 << 20;
/// Most headers in a request.
const MAX_HEADERS: usize = 64;

/// Serves `app` on `listener` until `shutdown` completes. Connections still open then are cut
/// (also when the returned future is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Dropping the set aborts every connection task.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    // Tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds
                    // each one until the client acknowledges the last.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    connections.spawn(connection(Arc::new(tcp), app.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// One connection: requests in turn until the client closes, asks to, or misbehaves.
async fn connection(tcp: Arc<TcpStream>, mut app: Router) {
    let mut input = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        let request = match read_request(&tcp, &mut input).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(Incoming::Io(e)) => {
                tracing::debug!(error = %e, "connection read failed");
                return;
            }
            Err(Incoming::Bad(status, message)) => {
                let _ = write_all(&tcp, &plain(status, &message)).await;
                return;
            }
        };
        let (keep_alive, head_only) = (request.keep_alive, request.head_only);
        let response = match call(&mut app, request.request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        match respond(&tcp, response, keep_alive, head_only, &mut out, &mut input).await {
            Ok(()) if keep_alive => {}
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "response cut");
                return;
            }
        }
    }
}

async fn call(app: &mut Router, request: Request<Body>) -> Result<Response<Body>, Infallible> {
    std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(app, cx)).await?;
    app.call(request).await
}

/// Why no request could be read.
enum Incoming {
    Io(io::Error),
    /// Answer with this status and message, then close.
    Bad(StatusCode, String),
}

impl From<io::Error> for Incoming {
    fn from(e: io::Error) -> Self {
        Incoming::Io(e)
    }
}

struct Parsed {
    request: Request<Body>,
    keep_alive: bool,
    head_only: bool,
}

/// Reads one request; `None` when the client closed the connection (between requests or
/// mid-request).
async fn read_request(tcp: &TcpStream, input: &mut Vec<u8>) -> Result<Option<Parsed>, Incoming> {
    let (head_len, head) = loop {
        if !input.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(input) {
                Ok(httparse::Status::Complete(n)) => break (n, Head::of(&req)?),
                Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
                    return Err(Incoming::Bad(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        format!("request head longer than {MAX_HEAD} bytes"),
                    ));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(Incoming::Bad(
                        StatusCode::BAD_REQUEST,
                        format!("malformed request head: {e}"),
                    ));
                }
            }
        }
        if read_more(tcp, input).await? == 0 {
            return Ok(None);
        }
    };
    input.drain(..head_len);
    let needs_body = !matches!(head.body, BodyKind::Length(0));
    if head.expect_continue && needs_body && input.is_empty() {
        write_all(tcp, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let body = match head.body {
        BodyKind::Length(len) => {
            if !fill(tcp, input, len).await? {
                return Ok(None);
            }
            let body = Bytes::copy_from_slice(&input[..len]);
            input.drain(..len);
            body
        }
        BodyKind::Chunked => match dechunk(tcp, input).await? {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    let request = head
        .builder
        .header(CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .map_err(|e| Incoming::Bad(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))?;
    Ok(Some(Parsed {
        request,
        keep_alive: head.keep_alive,
        head_only: head.head_only,
    }))
}

enum BodyKind {
    Length(usize),
    Chunked,
}

/// What a request's line and headers say.
struct Head {
    /// The request so far, without its body.
    builder: http::request::Builder,
    keep_alive: bool,
    /// How the body is framed.
    body: BodyKind,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
    /// A `HEAD` request: the response goes without its body.
    head_only: bool,
}

impl Head {
    fn of(req: &httparse::Request<'_, '_>) -> Result<Head, Incoming> {
        let bad = |m: String| Incoming::Bad(StatusCode::BAD_REQUEST, m);
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| bad("invalid method".into()))?;
        let version = if req.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let head_only = method == Method::HEAD;
        let mut builder = Request::builder()
            .method(method)
            .uri(req.path.unwrap_or("/"))
            .version(version);
        let mut keep_alive = version == Version::HTTP_11;
        let (mut length, mut chunked, mut expect_continue) = (None, false, false);
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| bad(format!("invalid header name {:?}", h.name)))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| bad(format!("invalid value of header {}", h.name)))?;
            let text = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if name == CONTENT_LENGTH {
                let n: usize = text
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("invalid content-length {text:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting content-length headers".into()));
                }
                length = Some(n);
                continue;
            }
            if name == TRANSFER_ENCODING {
                if text.split(',').map(str::trim).next_back() != Some("chunked") {
                    return Err(bad(format!("unsupported transfer-encoding {text:?}")));
                }
                chunked = true;
                continue;
            }
            if name == CONNECTION {
                if text.split(',').any(|t| t.trim() == "close") {
                    keep_alive = false;
                } else if text.split(',').any(|t| t.trim() == "keep-alive") {
                    keep_alive = true;
                }
            }
            if name == EXPECT && text.trim() == "100-continue" {
                expect_continue = true;
            }
            builder = builder.header(name, value);
        }
        let body = match (chunked, length) {
            (true, Some(_)) => {
                return Err(bad("both content-length and transfer-encoding".into()));
            }
            (true, None) => BodyKind::Chunked,
            (false, Some(n)) if n > MAX_BODY => {
                return Err(Incoming::Bad(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body of {n} bytes; at most {MAX_BODY}"),
                ));
            }
            (false, n) => BodyKind::Length(n.unwrap_or(0)),
        };
        Ok(Head {
            builder,
            keep_alive,
            body,
            expect_continue,
            head_only,
        })
    }
}

/// Reads until `input` holds at least `len` bytes; false at end of stream.
async fn fill(tcp: &TcpStream, input: &mut Vec<u8>, len: usize) -> io::Result<bool> {
    while input.len() < len {
        if read_more(tcp, input).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A chunked request body; `None` at end of stream.
async fn dechunk(tcp: &TcpStream, input: &mut Vec<u8>) -> Result<Option<Bytes>, Incoming> {
    let mut body = Vec::new();
    loop {
        // The size line.
        let line_end = loop {
            if let Some(i) = memchr::memmem::find(input, b"\r\n") {
                break i;
            }
            if input.len() > MAX_HEAD {
                return Err(Incoming::Bad(
                    StatusCode::BAD_REQUEST,
                    "chunk size line too long".into(),
                ));
            }
            if read_more(tcp, input).await? == 0 {
                return Ok(None);
            }
        };
        let line = String::from_utf8_lossy(&input[..line_end]).into_owned();
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| {
            Incoming::Bad(
                StatusCode::BAD_REQUEST,
                format!("invalid chunk size {line:?}"),
            )
        })?;
        input.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, up to an empty line.
            loop {
                if let Some(i) = memchr::memmem::find(input, b"\r\n") {
                    input.drain(..i + 2);
                    if i == 0 {
                        return Ok(Some(Bytes::from(body)));
                    }
                    continue;
                }
                if read_more(tcp, input).await? == 0 {
                    return Ok(None);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Incoming::Bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY} bytes"),
            ));
        }
        if !fill(tcp, input, size + 2).await? {
            return Ok(None);
        }
        if &input[size..size + 2] != b"\r\n" {
            return Err(Incoming::Bad(
                StatusCode::BAD_REQUEST,
                "chunk not followed by CRLF".into(),
            ));
        }
        body.extend_from_slice(&input[..size]);
        input.drain(..size + 2);
    }
}

/// A short plain-text response that closes the connection.
fn plain(status: StatusCode, message: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        message.len()
    )
    .into_bytes()
}

/// Writes `response`: with a `Content-Length` when its body's size is known, else chunked,
/// one write per frame (or per run of frames that are ready together). Errors when the body
/// fails (the connection is then cut, as an injected disconnect wants) or the client left.
async fn respond(
    tcp: &Arc<TcpStream>,
    response: Response<Body>,
    keep_alive: bool,
    head_only: bool,
    out: &mut Vec<u8>,
    input: &mut Vec<u8>,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    out.clear();
    let status = parts.status;
    write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )?;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(start) = parts.extensions.get::<Takeover>().and_then(Takeover::take) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        write_all(tcp, out).await?;
        return taken_over(tcp, start, input).await;
    }
    if let Some(len) = http_body::Body::size_hint(&body).exact() {
        write!(out, "content-length: {len}\r\n\r\n")?;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(io::Error::other)?.into_data()
                && !head_only
            {
                out.extend_from_slice(&data);
            }
        }
        return write_all(tcp, out).await;
    }
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    loop {
        // Frames that are ready join the pending write; otherwise write, then wait.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    write_all(tcp, out).await?;
                    out.clear();
                }
                match next_frame(tcp, &mut body, input).await? {
                    Some(f) => f,
                    None => continue,
                }
            }
        };
        match frame {
            None => {
                out.extend_from_slice(b"0\r\n\r\n");
                return write_all(tcp, out).await;
            }
            Some(frame) => {
                if let Ok(data) = frame.map_err(io::Error::other)?.into_data()
                    && !head_only
                {
                    push_chunk(out, &data);
                }
            }
        }
    }
}

type Frame = Option<Result<http_body::Frame<Bytes>, axum::Error>>;

/// Waits for the body's next frame while watching the socket: an error when the client
/// closes, `None` when it sent more (a pipelined request, kept in `input`).
async fn next_frame(
    tcp: &TcpStream,
    body: &mut Body,
    input: &mut Vec<u8>,
) -> io::Result<Option<Frame>> {
    tokio::select! {
        biased;
        frame = body.frame() => Ok(Some(frame)),
        gone = client_gone(tcp, input) => gone.map(|()| None),
    }
}

/// Reads what the socket has into `input`; 0 at end of stream.
async fn read_more(tcp: &TcpStream, input: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        tcp.readable().await?;
        match tcp.try_read_buf(input) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

type Start = Box<dyn FnOnce(Sink) + Send>;

/// Put in a response's extensions, it takes the response body over: once the head is written
/// the connection hands its socket to `start` as a [`Sink`], and whatever `start` sets going
/// (the mock's token writer, run by its clock) writes the body straight to the socket, with
/// no task to wake per chunk. The connection meanwhile watches for the client leaving.
#[derive(Clone)]
pub(crate) struct Takeover(Arc<Mutex<Option<Start>>>);

impl Takeover {
    pub(crate) fn new(start: impl FnOnce(Sink) + Send + 'static) -> Self {
        Takeover(Arc::new(Mutex::new(Some(Box::new(start)))))
    }

    fn take(&self) -> Option<Start> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// How a taken-over body ended.
enum Outcome {
    /// Completely written, but for these bytes (the socket was full).
    Finished(Vec<u8>),
    /// Cut on purpose: close the connection.
    Cut,
    /// No more will be sent; this is kept (for its `Drop`) until the client leaves.
    Stalled(#[allow(dead_code)] Box<dyn Send>),
}

/// A taken-over response body: chunks written to the socket as they are sent.
pub(crate) struct Sink {
    tcp: Arc<TcpStream>,
    /// What the socket has not taken yet, chunk framing included; it goes first.
    pending: Vec<u8>,
    /// The socket failed.
    broken: bool,
    /// The client closed its side (set by the connection).
    left: Arc<AtomicBool>,
    done: Option<oneshot::Sender<Outcome>>,
}

impl Sink {
    /// The client left or the socket failed: nothing more will arrive.
    pub(crate) fn gone(&self) -> bool {
        self.broken || self.left.load(Ordering::Relaxed)
    }

    /// Sends `data` as one chunk of the body, in one write when the socket takes it. What it
    /// cannot take yet waits for the next send (or the end), so a client that stops reading
    /// delays its own stream only.
    pub(crate) fn send(&mut self, data: &[u8]) {
        if data.is_empty() || self.gone() {
            return;
        }
        push_chunk(&mut self.pending, data);
        self.flush();
    }

    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match self.tcp.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.broken = true;
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// Ends the body with its last chunk.
    pub(crate) fn finish(mut self) {
        if !self.gone() {
            self.pending.extend_from_slice(b"0\r\n\r\n");
            self.flush();
        }
        let rest = std::mem::take(&mut self.pending);
        self.end(Outcome::Finished(rest));
    }

    /// Ends the body abruptly: the connection is closed mid-response.
    pub(crate) fn cut(mut self) {
        self.end(Outcome::Cut);
    }

    /// Sends nothing more but keeps the response open, holding `keep` until the client
    /// leaves.
    pub(crate) fn stall(mut self, keep: impl Send + 'static) {
        self.end(Outcome::Stalled(Box::new(keep)));
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
    }
}

/// Appends `data` as one chunk of a chunked body (nothing for empty data, which would end
/// the body).
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in lower-case hexadecimal.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

/// Hands the socket to `start` and waits for the body to end, or for the client to leave.
async fn taken_over(tcp: &Arc<TcpStream>, start: Start, input: &mut Vec<u8>) -> io::Result<()> {
    let (done, mut ended) = oneshot::channel();
    let left = Arc::new(AtomicBool::new(false));
    start(Sink {
        tcp: tcp.clone(),
        pending: Vec::new(),
        broken: false,
        left: left.clone(),
        done: Some(done),
    });
    // Once the writer is done without finishing (stalled, or dropped), only the client's
    // leaving ends the response.
    let mut writing = true;
    let mut _kept = None;
    loop {
        tokio::select! {
            biased;
            outcome = &mut ended, if writing => match outcome {
                Ok(Outcome::Finished(rest)) => return write_all(tcp, &rest).await,
                Ok(Outcome::Cut) => return Err(io::Error::other("response cut")),
                Ok(Outcome::Stalled(keep)) => {
                    _kept = Some(keep);
                    writing = false;
                }
                Err(_) => writing = false,
            },
            gone = client_gone(tcp, input) => if let Err(e) = gone {
                left.store(true, Ordering::Relaxed);
                return Err(e);
            },
        }
    }
}

/// Waits until the socket is readable and reads what came: an error when the client closed
/// or the socket failed; a pipelined request is kept in `input` (up to a bound, past which
/// the socket is no longer read and this waits forever).
async fn client_gone(tcp: &TcpStream, input: &mut Vec<u8>) -> io::Result<()> {
    if input.len() >= MAX_HEAD + MAX_BODY {
        return std::future::pending().await;
    }
    tcp.readable().await?;
    match tcp.try_read_buf(input) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client closed the connection",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::push_hex;

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        for n in [0usize, 9, 10, 255, 4096, 0xabcdef, usize::MAX] {
            let mut out = b"x".to_vec();
            push_hex(&mut out, n);
            assert_eq!(out, format!("x{n:x}").into_bytes());
        }
    }
}
