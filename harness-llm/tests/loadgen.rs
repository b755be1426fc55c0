//! The load generator against the mock server over loopback HTTP.

use std::sync::Arc;
use std::time::Duration;

use harness_analytics::CellStats as BenchSummary;
use harness_core::config::Slo;
use harness_core::config::{Arrival, EndpointType, MockDeployment};
use harness_core::*;
use harness_llm::client::{Client, ClientConfig, ErrorKind, TokenSource};
use harness_llm::load::{self, LoadSpec};
use harness_llm::mock::MockServer;
use harness_llm::prompts::PromptSynth;

mod common;

fn mock(f: impl FnOnce(&mut MockDeployment)) -> MockDeployment {
    let mut cfg = MockDeployment::default();
    f(&mut cfg);
    cfg
}

async fn start(cfg: MockDeployment) -> MockServer {
    MockServer::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("mock starts")
}

fn client(
    server: &MockServer,
    kind: EndpointType,
    stream: bool,
    timeout: Duration,
    conc: usize,
) -> Client {
    let path = harness_llm::openai::default_path(kind);
    client_at(
        format!("{}{path}", server.url()),
        kind,
        stream,
        timeout,
        conc,
    )
}

fn client_at(
    url: String,
    kind: EndpointType,
    stream: bool,
    timeout: Duration,
    conc: usize,
) -> Client {
    Client::new(config_at(url, kind, stream, timeout, conc)).expect("client")
}

fn config_at(
    url: String,
    kind: EndpointType,
    stream: bool,
    timeout: Duration,
    conc: usize,
) -> ClientConfig {
    ClientConfig {
        url,
        kind,
        model: "m".into(),
        stream,
        timeout,
        api_key: None,
        extra_body: Default::default(),
        headers: Vec::new(),
        max_connections: conc,
    }
}

/// A streaming chat client for the mock.
fn chat(server: &MockServer, timeout: Duration, conc: usize) -> Client {
    client(server, EndpointType::Chat, true, timeout, conc)
}

/// The body of the mock's answer to `GET path`.
async fn get_text(server: &MockServer, path: &str) -> String {
    harness_llm::install_crypto_provider();
    reqwest::get(format!("{}{path}", server.url()))
        .await
        .expect("get")
        .text()
        .await
        .expect("body")
}

/// Sends `spec` with a fresh synthesiser and cancellation token.
async fn run_load(c: &Client, spec: &LoadSpec) -> Vec<harness_llm::client::Record> {
    load::run(c, &synth(), spec, &CancellationToken::new()).await
}

fn synth() -> PromptSynth {
    PromptSynth::new("cl100k_base").expect("encoding")
}

async fn closed(
    server: &MockServer,
    conc: u32,
    requests: u64,
    isl: u32,
    osl: u32,
) -> (Vec<harness_llm::client::Record>, BenchSummary) {
    let c = chat(server, Duration::from_secs(30), conc as usize);
    let recs = run_load(&c, &LoadSpec::closed(conc, requests, isl, osl)).await;
    let summary = BenchSummary::of(&recs, &Slo::default()).expect("stats");
    (recs, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_the_injected_ttft_and_itl() {
    let server = start(mock(|m| {
        m.ttft_ms = 50.0;
        m.itl_ms = 10.0;
    }))
    .await;
    let (recs, s) = closed(&server, 16, 64, 128, 16).await;
    assert_eq!(recs.len(), 64);
    assert_eq!((s.requests, s.succeeded), (64, 64), "{:?}", s.errors);
    let p50 = |name: &str| s.distributions[name].p(50).expect("p50");
    // Correctness with generous bounds; the tight accuracy figures are in docs/PERFORMANCE.md.
    assert!(
        (48.0..80.0).contains(&p50("ttft")),
        "ttft p50 {}",
        p50("ttft")
    );
    assert!((9.5..14.0).contains(&p50("itl")), "itl p50 {}", p50("itl"));
    assert!(
        (9.5..14.0).contains(&p50("inter_chunk_latency")),
        "inter-chunk p50 {}",
        p50("inter_chunk_latency")
    );
    for r in &recs {
        assert_eq!(r.output_tokens, 16);
        assert_eq!(r.output_token_source, TokenSource::Usage);
        assert_eq!(
            r.input_tokens, 128,
            "the server's usage counts the prompt exactly"
        );
        assert_eq!(r.content_chunks, 16);
        assert_eq!(r.chunk_gaps_ns.len(), 15);
        let lat = r.latency_s().expect("latency");
        let expect = r.ttft_s().expect("ttft") + 15.0 * r.itl_s().expect("itl");
        assert!((lat - expect).abs() < 1e-6, "latency = ttft + (n-1) itl");
    }
    assert!(s.output_token_throughput > 0.0 && s.request_throughput > 0.0);
    assert_eq!(s.distributions["output_sequence_length"].p(50), Some(16.0));
    // The mock reports its own lateness: one first-token sample per request, one per
    // later token; the client's TTFT cannot be below the server's due time plus lateness p50
    // by more than the loopback hop.
    let metrics = get_text(&server, "/v1/mock/lateness").await;
    assert!(
        metrics.contains("mock_first_token_lateness_seconds_count 64\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mock_token_lateness_seconds_count 960\n"),
        "{metrics}"
    );
    let late_p50 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mock_first_token_lateness_seconds{quantile=\"0.50\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("first-token lateness p50");
    assert!((0.0..0.030).contains(&late_p50), "{late_p50}");
    assert!(
        p50("ttft") >= 50.0 + late_p50 * 1e3 - 1.0,
        "client TTFT below the server's"
    );
}

/// Tokens are timed by when they reached the socket, not by when the client got to them:
/// the client's thread is blocked while the first token arrives.
#[test]
fn tokens_are_timed_on_arrival_even_when_the_client_is_busy() {
    // The mock on a thread of its own, so blocking the client's thread does not stop it.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mock_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = start(mock(|m| {
                m.ttft_ms = 40.0;
                m.itl_ms = 300.0;
            }))
            .await;
            url_tx.send(server.url()).expect("send url");
            let _ = stop_rx.await;
            server.shutdown().await;
        });
    });
    let url = url_rx.recv().expect("mock url");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rec = rt.block_on(async {
        let c = client_at(
            format!("{url}/v1/chat/completions"),
            EndpointType::Chat,
            true,
            Duration::from_secs(10),
            1,
        );
        let epoch = tokio::time::Instant::now();
        let request =
            tokio::spawn(async move { c.send(0, false, "hello".into(), 1, 2, epoch).await });
        // Once the request is out, block this (the client's only) thread from 10 ms to
        // 250 ms: the first token, due at 40 ms, waits unread until then.
        tokio::time::sleep(Duration::from_millis(10)).await;
        std::thread::sleep(Duration::from_millis(240));
        request.await.expect("request task")
    });
    let _ = stop_tx.send(());
    mock_thread.join().expect("mock thread");
    assert!(rec.ok(), "{rec:?}");
    assert_eq!(rec.content_chunks, 2, "{rec:?}");
    let ttft_ms = rec.ttft_s().expect("ttft") * 1e3;
    // Read after the block: over 240 ms if timed at the read.
    assert!((39.0..150.0).contains(&ttft_ms), "ttft {ttft_ms} ms");
    // The second token came 300 ms after the first (about 90 ms after the read).
    let gap_ms = rec.chunk_gaps_ns[0] as f64 / 1e6;
    assert!((250.0..400.0).contains(&gap_ms), "gap {gap_ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_recorded_by_kind_and_throughput_counts_only_successes() {
    let server = start(mock(|m| {
        m.error_rate = 0.1;
        m.disconnect_rate = 0.1;
        m.seed = 7;
    }))
    .await;
    let (recs, s) = closed(&server, 16, 400, 32, 8).await;
    assert_eq!(recs.len(), 400, "every request is a record");
    let count = |k: ErrorKind| recs.iter().filter(|r| r.error == Some(k)).count() as u64;
    let (http, disc) = (count(ErrorKind::HttpStatus), count(ErrorKind::Disconnect));
    assert!(
        (15..80).contains(&http) && (15..80).contains(&disc),
        "http {http} disconnect {disc}"
    );
    assert_eq!(http + disc, 400 - s.succeeded, "no other failures");
    assert_eq!(s.errors.get("http_status"), Some(&http));
    assert_eq!(s.errors.get("disconnect"), Some(&disc));
    assert!(
        recs.iter()
            .filter(|r| r.error == Some(ErrorKind::HttpStatus))
            .all(|r| r.http_status == Some(500))
    );
    let implied = s.request_throughput * s.duration_s;
    assert!(
        (implied - s.succeeded as f64).abs() < 1e-6,
        "request throughput counts successes only"
    );
    let tokens = s.output_token_throughput * s.duration_s;
    assert!(
        (tokens - (s.succeeded * 8) as f64).abs() < 1e-6,
        "token throughput counts successes only"
    );
    // The mock's own counters agree.
    let metrics = get_text(&server, "/metrics").await;
    assert!(
        metrics.contains(&format!("mock_injected_errors_total {http}")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_does_not_hang_the_cell_past_the_request_timeout() {
    let server = start(mock(|m| m.stall_rate = 1.0)).await;
    let c = chat(&server, Duration::from_millis(300), 4);
    let recs = run_load(&c, &LoadSpec::closed(4, 8, 16, 8)).await;
    assert_eq!(recs.len(), 8);
    assert!(
        recs.iter().all(|r| r.error == Some(ErrorKind::Timeout)),
        "{recs:?}"
    );
    assert!(
        recs.iter().all(|r| r.first_token_ns.is_some()),
        "the first token came before the stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunks_are_malformed_stream_errors() {
    let server = start(mock(|m| m.malformed_rate = 1.0)).await;
    let (recs, s) = closed(&server, 4, 12, 16, 8).await;
    assert!(
        recs.iter()
            .all(|r| r.error == Some(ErrorKind::MalformedStream))
    );
    assert_eq!(s.errors.get("malformed_stream"), Some(&12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_responses_and_the_completions_endpoint_work() {
    let server = start(mock(|m| m.ttft_ms = 5.0)).await;
    for (kind, stream) in [
        (EndpointType::Completions, true),
        (EndpointType::Chat, false),
        (EndpointType::Completions, false),
    ] {
        let c = client(&server, kind, stream, Duration::from_secs(10), 2);
        let recs = run_load(&c, &LoadSpec::closed(2, 6, 64, 12)).await;
        assert!(
            recs.iter().all(|r| r.ok()),
            "{kind:?} stream={stream}: {recs:?}"
        );
        assert!(
            recs.iter()
                .all(|r| r.output_tokens == 12 && r.output_token_source == TokenSource::Usage)
        );
        if !stream {
            assert!(
                recs.iter().all(|r| r.ttft_s() == r.latency_s()),
                "unstreamed: TTFT is the whole latency"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_spaces_arrivals_at_the_rate_and_warmup_is_excluded() {
    let server = start(MockDeployment::default()).await;
    let c = chat(&server, Duration::from_secs(10), 8);
    let mut spec = LoadSpec::closed(8, 40, 16, 4);
    spec.rate = Some(100.0);
    spec.arrival = Arrival::Constant;
    spec.warmup = 5;
    let recs = run_load(&c, &spec).await;
    assert_eq!(recs.len(), 45);
    assert_eq!(recs.iter().filter(|r| r.warmup).count(), 5);
    assert!(
        recs[..5].iter().all(|r| r.warmup),
        "warmup requests come first"
    );
    let starts: Vec<u64> = recs.iter().map(|r| r.start_ns).collect();
    let span = (starts[44] - starts[0]) as f64 / 1e9;
    // 44 gaps of 10 ms; generous bounds, this checks the schedule, not the machine.
    assert!((0.3..3.0).contains(&span), "span {span}s");
    let s = BenchSummary::of(&recs, &Slo::default()).expect("stats");
    assert_eq!((s.requests, s.warmup_requests), (40, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_spreads_the_start_of_the_load() {
    // Closed loop: 4 clients over 400 ms. A first token takes 500 ms, so the first four
    // requests are one per client, in the order the clients started.
    let server = start(mock(|m| m.ttft_ms = 500.0)).await;
    let c = chat(&server, Duration::from_secs(10), 4);
    let mut spec = LoadSpec::closed(4, 4, 16, 1);
    spec.ramp = Some(Duration::from_millis(400));
    let recs = run_load(&c, &spec).await;
    assert!(recs.iter().all(|r| r.ok()), "{recs:?}");
    for (k, r) in recs.iter().enumerate() {
        assert!(
            r.start_ns >= k as u64 * 100_000_000,
            "client {k} started at {} ns, before its place in the ramp",
            r.start_ns
        );
    }

    // Open loop: constant arrivals at 200/s with the rate rising over 0.5 s. Request k is
    // due at sqrt(k / 200) s while the rate rises (k <= 50), then 5 ms apart; without the
    // ramp request 25 would go at 0.125 s instead of 0.354 s.
    let server = start(MockDeployment::default()).await;
    let c = chat(&server, Duration::from_secs(10), 64);
    let mut spec = LoadSpec::closed(64, 60, 16, 1);
    spec.rate = Some(200.0);
    spec.arrival = Arrival::Constant;
    spec.ramp = Some(Duration::from_millis(500));
    let recs = run_load(&c, &spec).await;
    assert_eq!(recs.len(), 60);
    for (k, r) in recs.iter().enumerate() {
        let due = if k <= 50 {
            (k as f64 / 200.0).sqrt()
        } else {
            0.5 + (k - 50) as f64 / 200.0
        };
        assert!(
            r.start_ns as f64 >= due * 1e9 - 1e3,
            "request {k} started at {} ns, due at {due} s",
            r.start_ns
        );
    }
}

#[tokio::test]
async fn a_closed_port_gives_connect_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = client_for(port);
    let recs = run_load(&c, &LoadSpec::closed(1, 3, 8, 2)).await;
    assert!(
        recs.iter().all(|r| r.error == Some(ErrorKind::Connect)),
        "{recs:?}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_lists_each_requests_timing_on_the_shared_clock() {
    let server = start(mock(|m| m.ttft_ms = 20.0)).await;
    let c = chat(&server, Duration::from_secs(10), 2);
    let epoch = tokio::time::Instant::now();
    let epoch_ns = harness_llm::mock::monotonic_ns(epoch).expect("CLOCK_MONOTONIC on Linux");
    let prompts = ["one two three", "four five six"];
    let mut recs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        recs.push(c.send(i as u64, false, (*p).into(), 3, 2, epoch).await);
    }
    let text = get_text(&server, "/v1/mock/requests").await;
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["clock"], "CLOCK_MONOTONIC");
    let listed = body["requests"].as_array().expect("requests");
    assert_eq!(listed.len(), 2, "{body}");
    for (p, rec) in prompts.iter().zip(&recs) {
        let key = format!("{:016x}", harness_llm::mock::prompt_key(p));
        let row = listed
            .iter()
            .find(|r| r["key"] == key.as_str())
            .unwrap_or_else(|| panic!("no entry for {p:?} in {body}"));
        let (recv, first) = (
            row["received_ns"].as_u64().expect("received"),
            row["first_token_ns"].as_u64().expect("first"),
        );
        // Causality on one clock: the request was written before the handler ran, the first
        // token left at least TTFT after that, and the client read it after it left.
        assert!(recv >= epoch_ns + rec.start_ns, "{row} {rec:?}");
        assert!(first >= recv + 20_000_000, "{row}");
        assert!(
            epoch_ns + rec.first_token_ns.expect("first token") >= first,
            "{row} {rec:?}"
        );
    }
}

#[tokio::test]
async fn https_goes_through_tls_and_bad_urls_are_refused() {
    // The mock speaks plain HTTP: a TLS handshake with it fails, as a connect error.
    let server = start(MockDeployment::default()).await;
    let url = format!("https://{}/v1/chat/completions", server.addr());
    let c = client_at(url, EndpointType::Chat, true, Duration::from_secs(5), 1);
    let recs = run_load(&c, &LoadSpec::closed(1, 2, 8, 2)).await;
    assert!(
        recs.iter().all(|r| r.error == Some(ErrorKind::Connect)),
        "{recs:?}"
    );
    for (url, says) in [
        ("ftp://127.0.0.1/v1", "not http or https"),
        ("http:///v1/chat/completions", "http:///v1/chat/completions"),
    ] {
        let cfg = config_at(
            url.into(),
            EndpointType::Chat,
            true,
            Duration::from_secs(1),
            1,
        );
        let e = Client::new(cfg).expect_err(url);
        assert!(e.to_string().contains(says), "{url}: {e}");
    }
}

/// The notes of `cell`'s stored summary.
async fn cell_notes(store: &MemoryStore, run: &RunContext, cell: &CellId) -> Vec<String> {
    let summary: CellSummary = store
        .get_json(&run.layout().cell_summary(cell))
        .await
        .expect("summary");
    summary.notes
}

/// Runs `BenchmarkStep` over an experiment against a mock with `cfg`, which serves the
/// experiment's model (as when harness starts it).
async fn bench_run(
    cfg: MockDeployment,
    yaml: &str,
) -> (RunReport, Arc<MemoryStore>, RunContext, MockServer) {
    let exp = harness_core::Experiment::from_yaml_str(yaml, "test.yaml").expect("experiment");
    let server = start(cfg.serving(exp.model.name.as_str())).await;
    let ran = common::bench(&server, yaml).await;
    (ran.report, ran.store, ran.run, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_step_stores_records_and_statistics_per_cell() {
    let (report, store, run, _server) = bench_run(
        mock(|m| {
            m.ttft_ms = 2.0;
            m.itl_ms = 1.0;
        }),
        "name: bench\nmodel: {name: m}\nconcurrency: [1, 4]\nbenchmark: {isl_osl: [[64, 8]]}\n\
         load: {requests: 12, warmup_requests: 2}\nslo: {ttft: 1s}\n",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    for cell in &report.cells {
        assert_eq!(cell.metrics.get("requests"), Some(&12.0));
        assert_eq!(cell.metrics.get("errors"), Some(&0.0));
        assert!(cell.metrics.get("ttft.p50").is_some_and(|v| *v > 0.0));
        assert!(cell.metrics.get("goodput").is_some_and(|v| *v > 0.0));
        let records = stored_records(&store, &run, &cell.cell).await;
        assert_eq!(records.len(), 14, "warmup records are kept");
        assert_eq!(records.iter().filter(|r| r.warmup).count(), 2);
        let summary: CellSummary = store
            .get_json(&run.layout().cell_summary(&cell.cell))
            .await
            .expect("summary");
        assert!(
            summary.notes.is_empty(),
            "the mock honours OSL and counts ISL exactly: {:?}",
            summary.notes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_warns_when_the_server_does_not_honour_osl() {
    let (report, store, run, _server) = bench_run(
        mock(|m| m.output_tokens = std::num::NonZeroU32::new(5)),
        "name: pre\nmodel: {name: m}\nconcurrency: [2]\nbenchmark: {isl_osl: [[32, 16]]}\nload: {requests: 4}\n",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let notes = cell_notes(&store, &run, &report.cells[0].cell).await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("returned 5 output tokens for OSL 16") && n.contains("ignore_eos")),
        "{notes:?}"
    );
    // Turned off, there is no warning and no preflight request.
    let (report, store, run, server) = bench_run(
        mock(|m| m.output_tokens = std::num::NonZeroU32::new(5)),
        "name: pre\nmodel: {name: m}\nconcurrency: [2]\nbenchmark: {isl_osl: [[32, 16]]}\nload: {requests: 4, preflight: false}\n",
    )
    .await;
    let summary: CellSummary = store
        .get_json(&run.layout().cell_summary(&report.cells[0].cell))
        .await
        .expect("summary");
    assert!(summary.notes.is_empty(), "{:?}", summary.notes);
    let metrics = get_text(&server, "/metrics").await;
    assert!(metrics.contains("mock_requests_total 4\n"), "{metrics}");
}

#[test]
fn preflight_flags_a_foreign_tokenizer_and_failures() {
    use harness_llm::client::{ErrorKind, Record, TokenSource};
    let rec = |input: u64, output: u64, error: Option<ErrorKind>| -> Record {
        serde_json::from_value(serde_json::json!({
            "index": 0, "warmup": false, "start_ns": 0, "first_token_ns": 1, "last_token_ns": 2, "end_ns": 3,
            "chunk_gaps_ns": [], "content_chunks": output, "input_tokens": input, "output_tokens": output,
            "output_token_source": TokenSource::Usage, "http_status": 200, "error": error, "error_message": null
        }))
        .expect("record")
    };
    let w = harness_llm::step::preflight_warnings(&[rec(140, 16, None)], 128, 16, "cl100k_base");
    assert!(w.is_empty(), "a chat template's few tokens are fine: {w:?}");
    let w = harness_llm::step::preflight_warnings(&[rec(300, 16, None)], 128, 16, "cl100k_base");
    assert!(w.iter().any(|w| w.contains("300 input tokens")), "{w:?}");
    let w = harness_llm::step::preflight_warnings(
        &[rec(128, 16, Some(ErrorKind::HttpStatus))],
        128,
        16,
        "cl100k_base",
    );
    assert!(
        w.iter().any(|w| w.contains("failed (http_status)")),
        "{w:?}"
    );
}

/// A server that reads each request fully, then drops the first `drop_first` connections
/// without answering and answers the rest with a one-token stream. With `linger`, a
/// connection stays open after its answer and is closed, unanswered, when its next request
/// arrives: a keep-alive connection the server gave up on just as the client reused it.
/// Returns its port and a counter of connections.
async fn flaky_server(
    drop_first: usize,
    linger: bool,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut answered = 0;
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(read) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                        let text = String::from_utf8_lossy(&buf);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    if n < drop_first || answered > 0 {
                        return; // closes without a response
                    }
                    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                    answered += 1;
                    if !linger {
                        return;
                    }
                }
            });
        }
    });
    (port, conns)
}

/// A streaming chat client for `127.0.0.1:port`, one connection.
fn client_for(port: u16) -> Client {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    client_at(url, EndpointType::Chat, true, Duration::from_secs(10), 1)
}

/// One request of a 4-token prompt asking for 1 token.
async fn send_one(port: u16) -> harness_llm::client::Record {
    let prompt = "a b c d".to_owned();
    client_for(port)
        .send(0, false, prompt, 4, 1, tokio::time::Instant::now())
        .await
}

#[tokio::test]
async fn a_server_closing_each_connection_after_its_response_costs_no_request() {
    // The server answers once per connection and closes it without saying so (as
    // llama.cpp's server does after a few requests): the pooled connection is found closed
    // when it is next taken, and the request goes out on a new one instead of waiting.
    let (port, conns) = flaky_server(0, false).await;
    let client = client_for(port);
    for i in 0..3 {
        let rec = client
            .send(
                i,
                false,
                "a b c d".into(),
                4,
                1,
                tokio::time::Instant::now(),
            )
            .await;
        assert!(rec.ok(), "request {i}: {rec:?}");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn only_a_reused_connection_closed_before_any_response_is_retried_and_it_is_recorded() {
    // The server closes the kept-alive connection when the second request arrives on it:
    // the request is sent again on a new connection, once, and the record says so.
    let (port, conns) = flaky_server(0, true).await;
    let client = client_for(port);
    let send = |i| {
        client.send(
            i,
            false,
            "a b c d".into(),
            4,
            1,
            tokio::time::Instant::now(),
        )
    };
    let first = send(0).await;
    assert!(first.ok() && !first.retried, "{first:?}");
    let second = send(1).await;
    assert!(second.ok(), "{second:?}");
    assert!(second.retried, "the re-sent request is marked: {second:?}");
    assert_eq!(
        (second.output_tokens, second.output_token_source),
        (1, TokenSource::Usage)
    );
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    let stats = BenchSummary::of(&[first, second], &Slo::default()).expect("stats");
    assert_eq!(stats.retried, 1);
    assert_eq!(stats.value("retried"), Some(1.0));

    // A fresh connection closed before any response is the server's failure: never sent
    // twice (it may have been acted on), recorded as a disconnect.
    let (port, conns) = flaky_server(usize::MAX, false).await;
    let rec = send_one(port).await;
    assert_eq!(rec.error, Some(ErrorKind::Disconnect), "{rec:?}");
    assert!(!rec.retried);
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the POST went out once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_records_each_arrivals_schedule_and_the_queueing_it_hides() {
    // 500 arrivals/s into one slot of a server that takes about 30 ms a request: by
    // construction, arrivals wait for the slot, so they start long after their schedule.
    let (report, store, run, _server) = bench_run(
        mock(|m| {
            m.ttft_ms = 20.0;
            m.itl_ms = 2.0;
        }),
        "name: lag\nmodel: {name: m}\nconcurrency: [1]\nrequest_rate: [500]\n\
         benchmark: {isl_osl: [[16, 4]]}\nload: {requests: 12, arrival: constant, preflight: false}\n",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    let cell = &report.cells[0];
    let records = stored_records(&store, &run, &cell.cell).await;
    assert_eq!(records.len(), 12);
    for (k, r) in records.iter().enumerate() {
        let scheduled = r.scheduled_ns.expect("an open loop schedules each request");
        // Constant arrivals 2 ms apart.
        let due = k as u64 * 2_000_000;
        assert!(
            scheduled.abs_diff(due) < 1_000,
            "request {k}: {scheduled} vs {due}"
        );
        assert!(
            r.start_ns >= scheduled,
            "request {k} started before its time"
        );
    }
    // The last arrival waited behind eleven requests of at least 26 ms each.
    let last = &records[11];
    let lag_ms = (last.start_ns - last.scheduled_ns.expect("scheduled")) as f64 / 1e6;
    assert!(lag_ms > 11.0 * 26.0 - 22.0, "lag {lag_ms} ms");
    let stats: BenchSummary = store
        .get_json(&run.layout().cell_stats(&cell.cell))
        .await
        .expect("stats");
    let lag_p99 = stats.value("schedule_lag.p99").expect("schedule_lag");
    assert!(lag_p99 > 1.0, "{lag_p99}");
    let ttft = stats.value("ttft.p50").expect("ttft");
    let intended = stats
        .value("ttft_from_schedule.p50")
        .expect("ttft_from_schedule");
    assert!(
        intended > ttft + 50.0,
        "TTFT from the schedule ({intended} ms) counts the wait that TTFT ({ttft} ms) hides"
    );
    let summary: CellSummary = store
        .get_json(&run.layout().cell_summary(&cell.cell))
        .await
        .expect("summary");
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("after their scheduled arrival")),
        "{:?}",
        summary.notes
    );

    // A closed loop has no schedule: no lag is made up.
    let (report, store, run, _server) = bench_run(
        mock(|m| m.ttft_ms = 1.0),
        "name: closed\nmodel: {name: m}\nconcurrency: [2]\nbenchmark: {isl_osl: [[16, 4]]}\n\
         load: {requests: 6, preflight: false}\n",
    )
    .await;
    let cell = &report.cells[0];
    let records = stored_records(&store, &run, &cell.cell).await;
    assert!(records.iter().all(|r| r.scheduled_ns.is_none()));
    let stats: BenchSummary = store
        .get_json(&run.layout().cell_stats(&cell.cell))
        .await
        .expect("stats");
    assert!(stats.value("schedule_lag.p99").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_step_builds_prompts_with_a_tokenizer_json_by_path() {
    // A word-level Hugging Face tokenizer, written by hand: every listed word is one token.
    let dir = tempfile::tempdir().expect("tempdir");
    let words = "the of and to in is was for that on with as by at from his her they this be \
                 are or an but not were which have had one all their there been has more when";
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for (i, w) in words.split_whitespace().enumerate() {
        vocab.insert(w.into(), (i + 1).into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_string()).expect("write");
    let (report, store, run, _server) = bench_run(
        mock(|m| m.output_tokens = None),
        &format!(
            "name: tok\nmodel: {{name: m}}\nconcurrency: [2]\nbenchmark: {{isl_osl: [[40, 4]]}}\n\
             load: {{requests: 4}}\ntokenizer: {{path: {}}}\n",
            path.display()
        ),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    let records = stored_records(&store, &run, &report.cells[0].cell).await;
    // The mock counts prompt words; the tokenizer made every word one token.
    assert!(records.iter().all(|r| r.input_tokens == 40), "{records:?}");
    let summary: CellSummary = store
        .get_json(&run.layout().cell_summary(&report.cells[0].cell))
        .await
        .expect("summary");
    assert!(summary.notes.is_empty(), "{:?}", summary.notes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isl_and_osl_spread_normally_around_the_cell_and_repeat_with_the_seed() {
    let server = start(mock(|m| m.output_tokens = None)).await;
    let c = chat(&server, Duration::from_secs(30), 8);
    let mut spec = LoadSpec::closed(8, 400, 64, 16);
    spec.isl_stddev = 16.0;
    spec.osl_stddev = 4.0;
    spec.seed = 11;
    let recs = run_load(&c, &spec).await;
    let stats = |f: fn(&harness_llm::client::Record) -> u64| {
        let v: Vec<f64> = recs.iter().map(|r| f(r) as f64).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        (mean, sd)
    };
    // The mock counts prompt words and returns max_tokens tokens: both follow the draws.
    let (isl_mean, isl_sd) = stats(|r| r.input_tokens);
    let (osl_mean, osl_sd) = stats(|r| r.output_tokens);
    assert!(
        (60.0..68.0).contains(&isl_mean) && (12.0..20.0).contains(&isl_sd),
        "{isl_mean} {isl_sd}"
    );
    assert!(
        (15.0..17.0).contains(&osl_mean) && (3.0..5.0).contains(&osl_sd),
        "{osl_mean} {osl_sd}"
    );
    assert!(
        recs.iter()
            .all(|r| r.ok() && r.input_tokens >= 1 && r.output_tokens >= 1)
    );
    let again = run_load(&c, &spec).await;
    let lens = |rs: &[harness_llm::client::Record]| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64, u64)> = rs
            .iter()
            .map(|r| (r.index, r.input_tokens, r.output_tokens))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, i, o)| (i, o)).collect()
    };
    assert_eq!(
        lens(&recs),
        lens(&again),
        "seeded: the same lengths per request index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_dataset_replaces_synthetic_prompts() {
    use harness_llm::load::Dataset;
    let text =
        "{\"prompt\": \"one two three\", \"output_tokens\": 2}\n\n{\"prompt\": \"a b c d e f\"}\n";
    let d = Dataset::parse(text, "prompts.jsonl").expect("dataset");
    assert_eq!(d.len(), 2);
    for (bad, says) in [
        (
            "{\"prompt\": \"x\"}\n{\"promt\": \"y\"}\n",
            "prompts.jsonl:2:",
        ),
        ("{\"prompt\": \"x\", \"output_tokens\": 0}\n", "at least 1"),
        ("\n\n", "no prompts"),
        ("not json\n", "prompts.jsonl:1:"),
    ] {
        let e = Dataset::parse(bad, "prompts.jsonl").expect_err(bad);
        assert!(e.to_string().contains(says), "{e}");
    }
    let server = start(mock(|m| m.output_tokens = None)).await;
    let c = chat(&server, Duration::from_secs(30), 2);
    let mut spec = LoadSpec::closed(1, 4, 999, 5);
    spec.dataset = Some(std::sync::Arc::new(d));
    let recs = run_load(&c, &spec).await;
    let got: Vec<(u64, u64)> = recs
        .iter()
        .map(|r| (r.input_tokens, r.output_tokens))
        .collect();
    // Lines in order, cycling; the cell's OSL (5) where a line names none.
    assert_eq!(got, vec![(3, 2), (6, 5), (3, 2), (6, 5)]);
}

/// The records a run stored for `cell`, read back from parquet.
async fn stored_records(
    store: &harness_core::MemoryStore,
    run: &harness_core::RunContext,
    cell: &harness_core::CellId,
) -> Vec<harness_llm::client::Record> {
    let data = store
        .get(&run.layout().cell_records(cell))
        .await
        .expect("records stored");
    let batch = harness_analytics::io::from_parquet(data).expect("parquet");
    harness_analytics::table::records_from_batch(&batch).expect("records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_answers_from_its_lookup_file_and_honours_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let answers = dir.path().join("answers.jsonl");
    std::fs::write(
        &answers,
        "{\"prompt\": \"2+2?\", \"answer\": \"It is \\\"4\\\".\"}\n",
    )
    .expect("write");
    let server = start(mock(|m| m.answers = Some(answers.clone()))).await;
    harness_llm::install_crypto_provider();
    let http = reqwest::Client::new();
    let ask = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", server.url());
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("send")
                .text()
                .await
                .expect("text")
        }
    };
    let whole: serde_json::Value = serde_json::from_str(
        &ask(serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}]})).await,
    )
    .expect("json");
    assert_eq!(whole["choices"][0]["message"]["content"], "It is \"4\".");
    // Streamed, the answer arrives as valid JSON chunks, quotes escaped.
    let streamed =
        ask(serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}], "stream": true}))
            .await;
    let mut content = String::new();
    for line in streamed.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line != "[DONE]" {
            let v: serde_json::Value = serde_json::from_str(line).expect("chunk is JSON");
            content.push_str(
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default(),
            );
        }
    }
    assert_eq!(content, "It is \"4\".");
    // Other prompts get `tok`; a stop string that occurs ends the output at once.
    let stopped: serde_json::Value = serde_json::from_str(
        &ask(serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stop": ["tok"]})).await,
    )
    .expect("json");
    assert_eq!(stopped["choices"][0]["message"]["content"], "");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
}

/// A server healthy before it serves the model (a frontend whose workers register it later,
/// refusing requests for it until then): the load waits until `/v1/models` lists the model,
/// so no request is refused and none is sent early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_waits_until_the_server_lists_the_model() {
    let (report, _store, _run, server) = bench_run(
        mock(|m| m.model_ready_ms = 1500.0),
        "name: late\nmodel: {name: m}\nconcurrency: [2]\nbenchmark: {isl_osl: [[32, 8]]}\n\
         load: {requests: 6, warmup_requests: 0}\n",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.cells[0].metrics.get("errors"), Some(&0.0));
    // The two preflight requests and the six of the load, all once the model was served.
    let metrics = get_text(&server, "/metrics").await;
    assert!(metrics.contains("mock_requests_total 8\n"), "{metrics}");
}

/// A model never listed within `policy.ready_timeout` fails the cell, naming the URL, the
/// model and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_never_listed_fails_the_cell_naming_it() {
    let (report, _store, _run, server) = bench_run(
        mock(|m| m.model_ready_ms = 600_000.0),
        "name: never\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[32, 8]]}\n\
         load: {requests: 2}\npolicy: {ready_timeout: 2s, retries: 0}\n",
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    let error = report.cells[0].error.clone().map(|e| e.message);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("/v1/models")
            && e.contains("`m`")
            && e.contains("policy.ready_timeout")
            && e.contains("lists no model")),
        "{error:?}"
    );
    let metrics = get_text(&server, "/metrics").await;
    assert!(
        metrics.contains("mock_requests_total 0\n"),
        "no request was sent: {metrics}"
    );
}

/// A server that lists other models only is not waited for; the cell's notes say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_listing_other_models_is_noted() {
    let (report, store, run, _server) = bench_run(
        mock(|m| m.model = Some("llama".into())),
        "name: other\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[32, 8]]}\n\
         load: {requests: 2}\n",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    let notes = cell_notes(&store, &run, &report.cells[0].cell).await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("lists [\"llama\"], not `m`")),
        "{notes:?}"
    );
}
