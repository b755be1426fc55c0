//! The mock's HTTP/1.1 handling, spoken to byte by byte over loopback: keep-alive and
//! pipelining, request bodies by length or chunked, `Expect: 100-continue`, `HEAD`, bad
//! requests, and a client that leaves in the middle of a stalled stream.

use std::time::Duration;

use harness_core::config::MockDeployment;
use harness_llm::mock::MockServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(f: impl FnOnce(&mut MockDeployment)) -> MockServer {
    let mut cfg = MockDeployment::default();
    f(&mut cfg);
    MockServer::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("mock starts")
}

/// Sends `bytes`, then reads until the server closes or `until` has been seen `times` times.
async fn exchange(tcp: &mut TcpStream, bytes: &[u8], until: &str, times: usize) -> String {
    tcp.write_all(bytes).await.expect("write");
    let (mut got, mut checked, mut seen) = (Vec::new(), 0usize, 0usize);
    let mut buf = [0u8; 65536];
    let pattern = until.as_bytes();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Count only the matches that end in what was just read.
            let from = checked.saturating_sub(pattern.len().saturating_sub(1));
            seen += got[from..]
                .windows(pattern.len())
                .filter(|w| *w == pattern)
                .count();
            checked = got.len();
            if seen >= times {
                break;
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server answers within 10 s");
    String::from_utf8_lossy(&got).into_owned()
}

async fn connect(server: &MockServer) -> TcpStream {
    TcpStream::connect(server.addr()).await.expect("connect")
}

/// True once the server has closed the connection (reads end) within 5 s.
async fn closed(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let server = start(|_| {}).await;
    let mut tcp = connect(&server).await;
    let got = exchange(
        &mut tcp,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 200 OK",
        2,
    )
    .await;
    // Both answered, the health check first; read the rest of the models body.
    let health = got.find("ok").expect("health body");
    let models = got.find("harness-mock").unwrap_or(usize::MAX);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(health < models, "{got}");
    assert!(got.contains("content-length: 2\r\n"), "{got}");
    // Still open for a third.
    let again = exchange(&mut tcp, b"GET /health HTTP/1.1\r\n\r\n", "\r\n\r\nok", 1).await;
    assert!(again.contains("\r\n\r\nok"), "{again}");
}

#[tokio::test]
async fn chunked_bodies_and_expect_continue_are_understood() {
    let server = start(|_| {}).await;
    let body = r#"{"messages":[{"role":"user","content":"one two three"}],"max_tokens":3}"#;
    let (a, b) = body.split_at(20);
    let mut tcp = connect(&server).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
    let cont = exchange(&mut tcp, head.as_bytes(), "\r\n\r\n", 1).await;
    assert_eq!(cont, "HTTP/1.1 100 Continue\r\n\r\n");
    let chunks = format!(
        "{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: y\r\n\r\n",
        a.len(),
        b.len()
    );
    let got = exchange(&mut tcp, chunks.as_bytes(), "}}", 1).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains(r#""content":"tok tok tok ""#), "{got}");
    assert!(got.contains(r#""prompt_tokens":3"#), "{got}");
}

#[tokio::test]
async fn a_streamed_response_is_chunked_and_ends_with_the_last_chunk() {
    let server = start(|c| c.itl_ms = 1.0).await;
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = connect(&server).await;
    let got = exchange(&mut tcp, req.as_bytes(), "\r\n0\r\n\r\n", 1).await;
    let (head, chunked) = got.split_once("\r\n\r\n").expect("head");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // De-chunk and check the events.
    let (mut rest, mut text) = (chunked, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n").expect("size line");
        let size = usize::from_str_radix(size, 16).expect("hex size");
        if size == 0 {
            break;
        }
        text.push_str(&after[..size]);
        assert_eq!(&after[size..size + 2], "\r\n");
        rest = &after[size + 2..];
    }
    assert_eq!(text.matches(r#""content":"tok ""#).count(), 4, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn head_close_and_http_1_0_are_honoured() {
    let server = start(|_| {}).await;
    let mut tcp = connect(&server).await;
    let got = exchange(&mut tcp, b"HEAD /health HTTP/1.1\r\n\r\n", "\r\n\r\n", 1).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && got.ends_with("\r\n\r\n"),
        "{got}"
    );
    let got = exchange(
        &mut tcp,
        b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        "\r\n\r\nok",
        1,
    )
    .await;
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(closed(&mut tcp).await, "closed after Connection: close");
    let mut tcp = connect(&server).await;
    let got = exchange(&mut tcp, b"GET /health HTTP/1.0\r\n\r\n", "\r\n\r\nok", 1).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(
        closed(&mut tcp).await,
        "HTTP/1.0 without keep-alive is closed"
    );
}

#[tokio::test]
async fn bad_requests_get_a_status_that_names_the_problem_and_a_close() {
    let server = start(|_| {}).await;
    for (request, status, says) in [
        (
            &b"NOT HTTP\r\n\r\n"[..],
            "400 Bad Request",
            "malformed request head",
        ),
        (
            b"POST /v1/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
            "400 Bad Request",
            "invalid content-length",
        ),
        (
            b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            "413 Payload Too Large",
            "request body of 99999999999 bytes",
        ),
        (
            b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "400 Bad Request",
            "invalid chunk size",
        ),
        (
            b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "400 Bad Request",
            "unsupported transfer-encoding",
        ),
    ] {
        let mut tcp = connect(&server).await;
        let got = exchange(&mut tcp, request, "\u{0}", 1).await;
        assert!(got.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{got}");
        assert!(got.contains(says), "{got}");
        assert!(got.contains("connection: close"), "{got}");
    }
    // A head that never ends is refused rather than buffered without bound.
    let mut tcp = connect(&server).await;
    let mut long = b"GET /health HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 70_000));
    let got = exchange(&mut tcp, &long, "\u{0}", 1).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    // The server still serves others.
    let mut tcp = connect(&server).await;
    let got = exchange(&mut tcp, b"GET /health HTTP/1.1\r\n\r\n", "\r\n\r\nok", 1).await;
    assert!(got.contains("\r\n\r\nok"), "{got}");
}

/// `mock_streams_running` from `/metrics`.
async fn streams_running(server: &MockServer) -> u64 {
    let mut tcp = connect(server).await;
    let got = exchange(
        &mut tcp,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        "\u{0}",
        1,
    )
    .await;
    got.lines()
        .find_map(|l| l.strip_prefix("mock_streams_running "))
        .and_then(|v| v.trim().parse().ok())
        .expect("mock_streams_running in /metrics")
}

#[tokio::test]
async fn a_client_leaving_a_stalled_stream_ends_it_on_the_server() {
    let server = start(|c| {
        c.stall_rate = 1.0;
        c.itl_ms = 1.0;
    })
    .await;
    let body = r#"{"prompt":"hi","max_tokens":8,"stream":true}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = connect(&server).await;
    // The first token comes, then the stall.
    let got = exchange(&mut tcp, req.as_bytes(), "tok ", 1).await;
    assert!(got.contains("tok "), "{got}");
    assert_eq!(streams_running(&server).await, 1);
    drop(tcp);
    let mut left = 1;
    for _ in 0..100 {
        left = streams_running(&server).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "the stalled stream outlived its client");
}

#[tokio::test]
async fn a_client_that_stops_reading_still_gets_every_token_in_order() {
    // About 13 MB of chunks, one every microsecond: far more than the socket buffers hold.
    let server = start(|c| {
        c.itl_ms = 0.001;
        c.output_tokens = std::num::NonZeroU32::new(100_000);
    })
    .await;
    let body = r#"{"prompt":"hi","stream":true}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = connect(&server).await;
    tcp.write_all(req.as_bytes()).await.expect("write");
    // Not reading while the server's side fills up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = exchange(&mut tcp, b"", "\r\n0\r\n\r\n", 1).await;
    assert!(
        got.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"),
        "ends {:?}",
        &got[got.len().saturating_sub(80)..]
    );
    assert_eq!(got.matches(r#""text":"tok ""#).count(), 100_000);
    // The connection is still good for another request.
    let again = exchange(&mut tcp, b"GET /health HTTP/1.1\r\n\r\n", "\r\n\r\nok", 1).await;
    assert!(again.contains("\r\n\r\nok"), "{again}");
}
