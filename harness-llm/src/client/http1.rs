//! The client side of one HTTP/1.1 connection, as lean as a load generator needs: write a
//! request, read the response head, then hand out the body's bytes as they arrive.
//!
//! hyper's client ran a dispatcher, a body channel and a buffer of `Bytes` per read; per
//! streamed token that cost more than parsing the token. Here a read lands in the
//! connection's one buffer and the body's bytes are lent straight out of it to the SSE parser.
//! Covered: `Content-Length`, chunked bodies (extensions and trailers skipped), bodies that
//! end with the connection, interim `1xx` responses, bodiless statuses, keep-alive by version
//! and `Connection`. Not needed by a client that only sends `POST`s with a known length:
//! pipelining, upgrades, `Expect`.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::rx::{RxTcp, Stamp};

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size line or trailer longer than this is refused.
const MAX_LINE: usize = 4 * 1024;
/// The buffer's starting size; it grows only for a long head.
const BUFFER: usize = 16 * 1024;
/// The most the buffer grows to: a head of the largest size, and room to read more.
const MAX_BUFFER: usize = MAX_HEAD + BUFFER;

/// What went wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server closed the connection before the response was complete.
    #[error("the connection closed before the response was complete")]
    Closed,
    /// The response is not valid HTTP/1.1.
    #[error("invalid HTTP response: {0}")]
    Invalid(String),
}

/// The transport: plain TCP or TLS over it. Both read through [`RxTcp`], so TLS records are
/// stamped with the arrival of the packets that carried them.
pub(crate) enum Stream {
    Plain(RxTcp),
    Tls(Box<tokio_rustls::client::TlsStream<RxTcp>>),
}

impl Stream {
    fn tcp(&self) -> &RxTcp {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => t.get_ref().0,
        }
    }
}

/// How the current response's body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    /// No body, or all of it has been read.
    Done,
    /// This many bytes are left.
    Length(u64),
    /// Chunked: the next thing is a chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes of the current chunk are left.
    ChunkData(u64),
    /// Chunked: the line break after a chunk's data.
    ChunkEnd,
    /// Chunked: trailer lines up to an empty one.
    Trailers,
    /// Until the server closes the connection.
    UntilClose,
}

/// One HTTP/1.1 connection. A request at a time: [`Conn::send`], [`Conn::head`], then
/// [`Conn::data`] until it returns `None`.
pub(crate) struct Conn {
    io: Stream,
    /// Received bytes; `buf[start..end]` are not consumed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    body: Body,
    /// The server keeps the connection open after this response.
    keep_alive: bool,
    /// Some byte of the current response has arrived.
    answered: bool,
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Self {
        Conn {
            io,
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
            body: Body::Done,
            keep_alive: false,
            answered: false,
        }
    }

    /// When the bytes of the last read reached the socket.
    pub(crate) fn stamp(&self) -> Stamp {
        self.io.tcp().stamp()
    }

    /// Whether the connection can carry another request: the last response was read to its
    /// end, the server did not ask to close, and has not closed since.
    pub(crate) fn reusable(&self) -> bool {
        self.keep_alive
            && self.body == Body::Done
            && self.start == self.end
            && !self.io.tcp().is_closed()
    }

    /// Whether any byte of the current response has arrived: a failure before that on a
    /// reused connection means the server had closed it, and the request can be retried.
    pub(crate) fn answered(&self) -> bool {
        self.answered
    }

    /// Writes a whole request.
    pub(crate) async fn send(&mut self, request: &[u8]) -> Result<(), Error> {
        self.answered = false;
        self.start = 0;
        self.end = 0;
        match &mut self.io {
            Stream::Plain(s) => write(s, request).await,
            Stream::Tls(s) => write(s.as_mut(), request).await,
        }
    }

    /// Reads the response head (past any `1xx`) and returns the status code.
    pub(crate) async fn head(&mut self) -> Result<u16, Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            let parsed = res
                .parse(&self.buf[self.start..self.end])
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let httparse::Status::Complete(len) = parsed else {
                if self.end - self.start >= MAX_HEAD {
                    return Err(Error::Invalid(format!("a head over {MAX_HEAD} bytes")));
                }
                if self.fill().await? == 0 {
                    return Err(Error::Closed);
                }
                continue;
            };
            let status = res.code.unwrap_or(0);
            let framing = framing(&res, status)?;
            self.start += len;
            if (100..200).contains(&status) {
                continue;
            }
            self.body = framing;
            self.keep_alive = framing != Body::UntilClose && keep_alive(&res);
            return Ok(status);
        }
    }

    /// The next bytes of the body as they arrive, lent from the connection's buffer, with
    /// the last read's receive stamp; `None` at its end.
    pub(crate) async fn data(&mut self) -> Result<Option<(&[u8], Stamp)>, Error> {
        loop {
            match self.body {
                Body::Done => return Ok(None),
                Body::Length(0) => self.body = Body::Done,
                Body::Length(left) | Body::ChunkData(left) => {
                    if self.start == self.end && self.fill().await? == 0 {
                        return Err(Error::Closed);
                    }
                    let n =
                        (self.end - self.start).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let from = self.start;
                    self.start += n;
                    let rest = left - n as u64;
                    self.body = match self.body {
                        Body::Length(_) => Body::Length(rest),
                        _ if rest == 0 => Body::ChunkEnd,
                        _ => Body::ChunkData(rest),
                    };
                    return Ok(Some((&self.buf[from..from + n], self.stamp())));
                }
                Body::UntilClose => {
                    if self.start == self.end && self.fill().await? == 0 {
                        self.body = Body::Done;
                        return Ok(None);
                    }
                    let from = self.start;
                    self.start = self.end;
                    return Ok(Some((&self.buf[from..self.end], self.stamp())));
                }
                Body::ChunkSize => {
                    let line = self.line().await?;
                    let hex = line
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "bad chunk size `{}`",
                                String::from_utf8_lossy(&line[..line.len().min(40)])
                            ))
                        })?;
                    self.body = if size == 0 {
                        Body::Trailers
                    } else {
                        Body::ChunkData(size)
                    };
                }
                Body::ChunkEnd => {
                    if !self.line().await?.is_empty() {
                        return Err(Error::Invalid("chunk data longer than its size".into()));
                    }
                    self.body = Body::ChunkSize;
                }
                Body::Trailers => {
                    if self.line().await?.is_empty() {
                        self.body = Body::Done;
                    }
                }
            }
        }
    }

    /// The rest of the body.
    pub(crate) async fn collect(&mut self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some((data, _)) = self.data().await? {
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    /// The next line (without its `\r\n` or `\n`), consumed; lent from the buffer.
    async fn line(&mut self) -> Result<&[u8], Error> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let from = self.start;
                self.start += i + 1;
                let line = &self.buf[from..from + i];
                return Ok(line.strip_suffix(b"\r").unwrap_or(line));
            }
            if self.end - self.start > MAX_LINE {
                return Err(Error::Invalid(format!("a line over {MAX_LINE} bytes")));
            }
            if self.fill().await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Reads more into the buffer: 0 when the server closed the connection.
    async fn fill(&mut self) -> Result<usize, Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < 1024 {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < 1024 && self.buf.len() < MAX_BUFFER {
                self.buf.resize((self.buf.len() * 2).min(MAX_BUFFER), 0);
            }
        }
        if self.end == self.buf.len() {
            // Unreachable by the callers' own limits; never read into no room (which reads 0,
            // as if the server had closed).
            return Err(Error::Invalid(format!(
                "over {MAX_BUFFER} bytes without a complete element"
            )));
        }
        let room = &mut self.buf[self.end..];
        let n = match &mut self.io {
            Stream::Plain(s) => s.read(room).await?,
            Stream::Tls(s) => s.read(room).await?,
        };
        if n > 0 {
            self.answered = true;
        }
        self.end += n;
        Ok(n)
    }
}

async fn write(io: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> Result<(), Error> {
    io.write_all(data).await?;
    io.flush().await?;
    Ok(())
}

/// How a response's body ends, from its status and headers.
fn framing(res: &httparse::Response<'_, '_>, status: u16) -> Result<Body, Error> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Body::Done);
    }
    let mut chunked = false;
    let mut length = None;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must come last; anything else in front of it is not decoded here.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Ok(Body::UntilClose);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "content-length `{}`",
                        String::from_utf8_lossy(h.value)
                    ))
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("two different content-lengths".into()));
            }
            length = Some(n);
        }
    }
    Ok(if chunked {
        Body::ChunkSize
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        Body::UntilClose
    })
}

/// Whether the server keeps the connection: HTTP/1.1 unless it says `close`, HTTP/1.0 only if
/// it says `keep-alive`.
fn keep_alive(res: &httparse::Response<'_, '_>) -> bool {
    let mut close = false;
    let mut keep = false;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if res.version == Some(0) {
        keep && !close
    } else {
        !close
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const REQUEST: &[u8] = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";

    /// A loopback server for one connection: for each response, it reads one request, then
    /// writes the response's pieces a few milliseconds apart (so the client meets every split),
    /// and closes after the last.
    async fn serve(responses: Vec<Vec<Vec<u8>>>) -> SocketAddr {
        serve_then(responses, false).await
    }

    /// As [`serve`]; with `linger`, the server keeps the connection open after the last
    /// response, until the client closes it.
    async fn serve_then(responses: Vec<Vec<Vec<u8>>>, linger: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            sock.set_nodelay(true).expect("nodelay");
            for pieces in responses {
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 1024];
                    match sock.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                for p in pieces {
                    sock.write_all(&p).await.expect("write");
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
            if linger {
                let _ = sock.read(&mut [0u8; 16]).await;
            }
        });
        addr
    }

    async fn connect(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Conn::new(Stream::Plain(RxTcp::new(tcp)))
    }

    /// Splits `text` at each `|`.
    fn pieces(text: &str) -> Vec<Vec<u8>> {
        text.split('|').map(|p| p.as_bytes().to_vec()).collect()
    }

    async fn exchange(conn: &mut Conn) -> Result<(u16, Vec<u8>), Error> {
        conn.send(REQUEST).await?;
        let status = conn.head().await?;
        Ok((status, conn.collect().await?))
    }

    #[tokio::test]
    async fn chunked_bodies_split_anywhere_then_the_connection_is_reused() {
        let addr = serve(vec![
            pieces(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r|\n5;ext=1\r\nhel|lo\r|\n\
                 6\r\n world\r\n0\r\nx-trailer: 1\r|\n\r\n",
            ),
            pieces("HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabc"),
            pieces("HTTP/1.1 204 No Content\r\n\r\n"),
        ])
        .await;
        let mut conn = connect(addr).await;
        assert_eq!(
            exchange(&mut conn).await.expect("first"),
            (200, b"hello world".to_vec())
        );
        assert!(conn.reusable());
        assert_eq!(
            exchange(&mut conn).await.expect("second"),
            (201, b"abc".to_vec())
        );
        assert!(conn.reusable());
        assert_eq!(exchange(&mut conn).await.expect("third"), (204, Vec::new()));
        // The server has closed since: an idle connection that is closed is not reused.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!conn.reusable());
    }

    #[tokio::test]
    async fn bodies_until_close_and_connections_that_say_close_are_not_reused() {
        for (response, body, reusable) in [
            ("HTTP/1.0 200 OK\r\n\r\nall| of it", "all of it", false),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                "ok",
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
                "ok",
                true,
            ),
        ] {
            // A body that ends with the connection needs the server to close it.
            let addr = serve_then(vec![pieces(response)], reusable).await;
            let mut conn = connect(addr).await;
            let got = exchange(&mut conn).await.expect(response);
            assert_eq!(got, (200, body.as_bytes().to_vec()), "{response}");
            assert_eq!(conn.reusable(), reusable, "{response}");
        }
    }

    #[tokio::test]
    async fn a_close_before_or_during_the_response_is_told_apart() {
        // Before any byte: `Closed`, unanswered (the client may retry).
        let addr = serve(vec![vec![]]).await;
        let mut conn = connect(addr).await;
        let e = exchange(&mut conn).await.expect_err("no answer");
        assert!(matches!(e, Error::Closed), "{e}");
        assert!(!conn.answered());

        // Mid-body: `Closed`, answered.
        let addr = serve(vec![pieces(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
        )])
        .await;
        let mut conn = connect(addr).await;
        let e = exchange(&mut conn).await.expect_err("cut");
        assert!(matches!(e, Error::Closed), "{e}");
        assert!(conn.answered());
    }

    #[tokio::test]
    async fn invalid_responses_are_refused_naming_the_problem() {
        for (response, says) in [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size `zz`",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+5\r\nhello\r\n",
                "bad chunk size `+5`",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n",
                "longer than its size",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "content-length `x`",
            ),
            ("SMTP ready\r\n\r\n", "invalid HTTP response"),
        ] {
            let addr = serve(vec![pieces(response)]).await;
            let mut conn = connect(addr).await;
            let e = exchange(&mut conn).await.expect_err(response);
            assert!(matches!(e, Error::Invalid(_)), "{response}: {e}");
            assert!(e.to_string().contains(says), "{response}: {e}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD + 10));
        let addr = serve(vec![vec![huge.into_bytes()]]).await;
        let mut conn = connect(addr).await;
        let e = exchange(&mut conn).await.expect_err("huge head");
        assert!(e.to_string().contains("a head over"), "{e}");
    }
}
