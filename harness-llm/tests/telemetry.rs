//! Server telemetry end to end: the benchmark step scrapes the mock's Prometheus metrics
//! (and other targets served here over loopback HTTP) during each cell, stores
//! `server_metrics.parquet` and `telemetry.json`, adds `server.*` metrics, and checks the
//! server's counters against its own records.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::bench;
use harness_core::config::MockDeployment;
use harness_core::*;
use harness_llm::mock::MockServer;

mod common;

async fn mock(slots: u32) -> MockServer {
    let mut cfg = MockDeployment::default();
    cfg.ttft_ms = 30.0;
    cfg.itl_ms = 5.0;
    cfg.slots = std::num::NonZeroU32::new(slots);
    // The model the experiments name.
    MockServer::start(cfg.serving("m"), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("mock")
}

/// Serves `body(n)` for the n-th scrape (from 0) on a free loopback port, as plain HTTP/1.1
/// without a length (the body ends with the connection): `Some((text, times))` writes `text`
/// `times` over; `None` closes the listener, so later scrapes are refused. Returns the URL
/// and the scrape count.
async fn target(
    body: impl Fn(usize) -> Option<(String, usize)> + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let Some((text, times)) = body(n) else {
                return; // the listener is dropped: connections are refused from now on
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\nconnection: close\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..times {
                    if conn.write_all(text.as_bytes()).await.is_err() {
                        return; // the scraper stopped reading
                    }
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    (url, count)
}

const CELL: &str =
    "name: tele\nmodel: {name: m}\nconcurrency: [8]\nbenchmark: {isl_osl: [[64, 16]]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_s_counters_agree_exactly_with_the_client() {
    let server = mock(4).await;
    let ran = bench(
        &server,
        &format!(
            "{CELL}load: {{requests: 48, warmup_requests: 8}}\ntelemetry: {{interval: 50ms}}\n"
        ),
    )
    .await;
    assert_eq!(ran.report.status, RunStatus::Succeeded, "{:?}", ran.report);
    let t = ran.telemetry().await;
    // Warmup and measured requests, each counted by the server when it completed.
    let checks: Vec<(&str, f64, f64, bool)> = t
        .cross_checks
        .iter()
        .map(|c| (c.quantity.as_str(), c.server, c.client, c.agrees))
        .collect();
    assert_eq!(
        checks,
        [
            ("requests", 56.0, 56.0, true),
            ("prompt_tokens", 56.0 * 64.0, 56.0 * 64.0, true),
            ("generation_tokens", 56.0 * 16.0, 56.0 * 16.0, true),
        ]
    );
    assert_eq!(t.targets.len(), 1);
    assert_eq!(t.targets[0].name, "endpoint");
    assert_eq!(t.targets[0].failed, 0);
    assert!(ran.notes().await.is_empty(), "{:?}", ran.notes().await);

    // Eight clients on four slots: four run, four wait, most of the window.
    let stats = ran.stats().await;
    let server_max = |name: &str| stats.value(&format!("server.{name}.max"));
    assert_eq!(server_max("running"), Some(4.0), "{:?}", stats.server);
    assert_eq!(server_max("waiting"), Some(4.0), "{:?}", stats.server);
    assert!(
        stats
            .value("server.generation_tokens_per_s")
            .is_some_and(|v| v > 0.0)
    );
    // The mock's TTFT histogram: at least its 30 ms, below what the client saw at p99.
    let ttft = stats.value("server.ttft.p50").expect("server ttft");
    assert!(ttft >= 25.0, "{ttft}");
    assert!(
        stats.value("server.ttft.p50").expect("p50") <= stats.value("ttft.p99").expect("client"),
        "the server's first token leaves before the client reads it"
    );

    // The table: rows inside the measured window only, its bounds stored with it.
    let bytes = ran
        .store
        .get(&ran.run.layout().cell_server_metrics(&ran.cell()))
        .await
        .expect("server_metrics.parquet");
    let batch = harness_analytics::io::from_parquet(bytes).expect("parquet");
    assert!(batch.num_rows() > 0);
    let meta = batch.schema().metadata().clone();
    let bound = |k: &str| meta[k].parse::<f64>().expect("bound");
    let (start, end) = (
        bound("harness.window_start_s"),
        bound("harness.window_end_s"),
    );
    assert!(start > 0.0, "warmup is left out of the window");
    assert_eq!((start, end), (t.window_start_s, t.window_end_s));
    let times = harness_analytics::table::float_column(&batch, "time_s");
    assert!(times.iter().flatten().all(|t| (start..=end).contains(t)));
    assert_eq!(
        t.targets[0].quantities["running"],
        ["mock_requests_running"],
        "{:?}",
        t.targets[0].quantities
    );
    // The report's server series come back from it.
    let series = harness_analytics::telemetry::server_timeline(&batch).expect("series");
    assert!(
        series
            .iter()
            .any(|s| s.quantity == "running" && !s.points.is_empty())
    );

    // The report: the server's columns in the cell table, the cell's time series charted.
    let report = ran.report().await;
    let text = |rel: &'static str| report.text(rel);
    let html = text("index.html").await;
    for needle in [
        "<th>server running</th>",
        "<th>server waiting</th>",
        "<h2>Cell timelines</h2>",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    let chart = text("charts/cell-0-requests.svg").await;
    for legend in ["client: in flight", "server: running", "server: waiting"] {
        assert!(chart.contains(legend), "{legend}");
    }
    assert!(
        text("charts/cell-0-tokens.svg")
            .await
            .contains("server: generated")
    );
    assert!(
        text("report.md")
            .await
            .contains("![cell-0-completions](charts/cell-0-completions.png)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_s_load_makes_the_counts_disagree() {
    let server = mock(64).await;
    let url = format!("{}/v1/completions", server.url());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    harness_llm::install_crypto_provider();
    let (stop2, http) = (stop.clone(), reqwest::Client::new());
    let other = tokio::spawn(async move {
        let mut sent = 0u32;
        while !stop2.load(Ordering::SeqCst) {
            let body = r#"{"model": "m", "prompt": "a b c", "max_tokens": 2}"#;
            let sent_ok = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .is_ok();
            if sent_ok {
                sent += 1;
            }
        }
        sent
    });
    let ran = bench(
        &server,
        &format!("{CELL}load: {{requests: 64}}\ntelemetry: {{interval: 50ms}}\n"),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let sent = other.await.expect("other client");
    assert!(sent > 0);
    assert_eq!(ran.report.status, RunStatus::Succeeded);
    let t = ran.telemetry().await;
    let requests = t
        .cross_checks
        .iter()
        .find(|c| c.quantity == "requests")
        .expect("a request check");
    assert!(
        !requests.agrees && requests.server > requests.client,
        "{requests:?}"
    );
    let notes = ran.notes().await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("another client may have sent load")),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_mid_cell_leaves_gaps_and_the_cell_succeeds() {
    let server = mock(8).await;
    let exposition = "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 80\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\"} 60\n\
                      # TYPE DCGM_FI_DEV_POWER_USAGE gauge\nDCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} 300\nDCGM_FI_DEV_POWER_USAGE{gpu=\"1\"} 200\n";
    // Answers four scrapes, then goes away.
    let (url, count) = target(move |n| (n < 4).then(|| (exposition.to_owned(), 1))).await;
    let ran = bench(
        &server,
        &format!(
            "{CELL}load: {{requests: 200}}\ntelemetry: {{interval: 50ms, targets: [{{name: dcgm, url: '{url}'}}]}}\n"
        ),
    )
    .await;
    assert_eq!(ran.report.status, RunStatus::Succeeded, "{:?}", ran.report);
    assert!(count.load(Ordering::SeqCst) >= 4);
    let t = ran.telemetry().await;
    let dcgm = t.targets.iter().find(|x| x.name == "dcgm").expect("dcgm");
    assert!(dcgm.failed > 0 && dcgm.failed < dcgm.scrapes, "{dcgm:?}");
    let notes = ran.notes().await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("scrapes of dcgm") && n.contains("failed, the gaps are recorded")),
        "{notes:?}"
    );
    // What it did answer is summarised: GPU utilisation averaged, power summed, energy.
    let stats = ran.stats().await;
    assert_eq!(
        dcgm.scrapes - dcgm.failed,
        4,
        "the baseline and three in the window"
    );
    assert_eq!(
        stats.value("server.gpu_util.mean"),
        Some(70.0),
        "{:?}",
        stats.server
    );
    assert_eq!(stats.value("server.gpu_power.max"), Some(500.0));
    let j = stats
        .value("server.energy_per_output_token_j")
        .expect("energy per token");
    assert!((j - 500.0 / stats.output_token_throughput).abs() < 1e-9);
    // The endpoint's own metrics were scraped all along.
    let endpoint = t
        .targets
        .iter()
        .find(|x| x.name == "endpoint")
        .expect("endpoint");
    assert_eq!(endpoint.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_malformed_expositions_are_bounded_and_located() {
    let server = mock(8).await;
    // 40 MB of valid lines, streamed without a length: the scraper stops reading at its limit.
    let (huge, _) = target(|_| {
        let chunk = "filler{a=\"xxxxxxxxxxxxxxxx\"} 1\n".repeat(32_000);
        Some((chunk, 40))
    })
    .await;
    let (bad, _) = target(|_| {
        Some((
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 50\nDCGM_FI_DEV_FB_USED{gpu=\"0\" 7\n"
                .to_owned(),
            1,
        ))
    })
    .await;
    let ran = bench(
        &server,
        &format!(
            "{CELL}load: {{requests: 64}}\ntelemetry: {{interval: 100ms, targets: [{{name: huge, url: '{huge}'}}, {{name: bad, url: '{bad}'}}]}}\n"
        ),
    )
    .await;
    assert_eq!(ran.report.status, RunStatus::Succeeded, "{:?}", ran.report);
    let t = ran.telemetry().await;
    let huge = t.targets.iter().find(|x| x.name == "huge").expect("huge");
    assert_eq!(huge.failed, huge.scrapes, "never read past the limit");
    assert!(
        huge.first_failure
            .as_deref()
            .is_some_and(|f| f.contains("larger than 16777216 bytes")),
        "{huge:?}"
    );
    let notes = ran.notes().await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("{bad}: line 3: label `gpu`"))),
        "{notes:?}"
    );
    // The good line of the malformed exposition is kept.
    let stats = ran.stats().await;
    assert_eq!(
        stats.value("server.gpu_util.mean"),
        Some(50.0),
        "{:?}",
        stats.server
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_off_or_no_metrics_endpoint_stores_nothing() {
    let server = mock(8).await;
    let ran = bench(
        &server,
        &format!("{CELL}load: {{requests: 8}}\ntelemetry: {{enabled: false}}\n"),
    )
    .await;
    assert_eq!(ran.report.status, RunStatus::Succeeded);
    assert!(
        ran.store
            .get(&ran.run.layout().cell_server_metrics(&ran.cell()))
            .await
            .is_err()
    );
    assert!(ran.stats().await.server.is_empty());
    // An endpoint without metrics there is left out quietly.
    let ran = bench(
        &server,
        &format!("{CELL}load: {{requests: 8}}\ntelemetry: {{metrics_path: /nothing-here}}\n"),
    )
    .await;
    assert_eq!(ran.report.status, RunStatus::Succeeded);
    assert!(ran.notes().await.is_empty(), "{:?}", ran.notes().await);
    assert!(ran.stats().await.server.is_empty());
}
