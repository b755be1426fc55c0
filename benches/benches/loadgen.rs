//! The load generator against the mock server: throughput, client CPU per request and peak
//! memory at several concurrencies; TTFT/ITL accuracy against injected delays; and wrk on the
//! same server as the ceiling, when `wrk` is installed.
//!
//! `cargo bench -p benches --bench loadgen` (about two minutes). The mock runs in its own
//! process on core 0 and this client on core 1 (`taskset`), each on one thread. Set
//! `LOADGEN_QUICK=1` for a short smoke run (what `cargo test --all-targets` does),
//! `LOADGEN_ONLY=throughput,accuracy,memory,telemetry,workloads,wrk` for some sections, `LOADGEN_CONCURRENCY=512`
//! (comma-separated) for some concurrencies of the first two, `LOADGEN_ROUNDS=N` for N
//! measured requests per client in the accuracy section (8), and `LOADGEN_DUMP=DIR`
//! to write each accuracy run's per-request timestamps to `DIR/acc<concurrency>.csv`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness_analytics::CellStats as BenchSummary;
use harness_core::CancellationToken;
use harness_core::config::Slo;
use harness_core::config::{EndpointType, MockDeployment};
use harness_llm::client::{Client, ClientConfig};
use harness_llm::load::{self, LoadSpec};
use harness_llm::prompts::PromptSynth;
use nix::sys::resource::{UsageWho, getrusage};

const ROLE: &str = "HARNESS_BENCH_ROLE";

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("mock") {
        serve_mock();
        return;
    }
    // Pin this client to core 1, once, when taskset exists and there are two cores.
    if std::env::var("HARNESS_BENCH_PINNED").is_err() && has("taskset") && cores() >= 2 {
        let exe = std::env::current_exe().expect("own path");
        let status = Command::new("taskset")
            .arg("-c")
            .arg("1")
            .arg(exe)
            .args(std::env::args().skip(1))
            .env("HARNESS_BENCH_PINNED", "1")
            .status()
            .expect("re-exec under taskset");
        std::process::exit(status.code().unwrap_or(1));
    }
    let quick = std::env::var("LOADGEN_QUICK").is_ok() || !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(quick));
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves the mock on one thread; prints the port; stops when stdin closes.
fn serve_mock() {
    let cfg: MockDeployment =
        serde_json::from_str(&std::env::var("MOCK_CONFIG").unwrap_or_default()).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr").port());
        let stdin_closed = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut s = String::new();
                let _ = std::io::stdin().read_line(&mut s);
            })
            .await;
        };
        harness_llm::mock::serve(cfg, listener, stdin_closed)
            .await
            .expect("serve");
    });
}

struct Mock {
    child: Child,
    port: u16,
}

impl Mock {
    fn start(cfg: &MockDeployment) -> Self {
        let exe = std::env::current_exe().expect("own path");
        // The client pinned itself to core 1 (so `cores()` now says 1 here): the mock gets
        // core 0. Until this was checked, the mock inherited core 1 and shared it.
        let mut cmd = if std::env::var("HARNESS_BENCH_PINNED").is_ok() {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let mut child = cmd
            .env(ROLE, "mock")
            .env("MOCK_CONFIG", serde_json::to_string(cfg).expect("json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the mock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        Mock {
            port: line.trim().parse().expect("port number"),
            child,
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_s() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// CPU seconds used so far by process `pid` (utime + stime from /proc, 100 ticks/s).
fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mb() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .expect("getrusage")
        .max_rss() as f64
        / 1024.0
}

fn client(port: u16, conc: u32) -> Client {
    Client::new(ClientConfig {
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        kind: EndpointType::Chat,
        model: "m".into(),
        stream: true,
        timeout: Duration::from_secs(120),
        api_key: None,
        extra_body: Default::default(),
        headers: Vec::new(),
        max_connections: conc as usize,
    })
    .expect("client")
}

/// The concurrencies to run: `LOADGEN_CONCURRENCY` (comma-separated) when set, else `default`.
fn concurrencies(default: &[u32]) -> Vec<u32> {
    match std::env::var("LOADGEN_CONCURRENCY") {
        Ok(list) => list
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// Whether `section` should run: all of them unless `LOADGEN_ONLY` lists some
/// (comma-separated: `throughput`, `accuracy`, `memory`, `telemetry`, `workloads`, `wrk`).
fn wanted(section: &str) -> bool {
    std::env::var("LOADGEN_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

async fn bench(quick: bool) {
    let synth = PromptSynth::new("cl100k_base").expect("encoding");
    let _ = synth.prompt(8, 0); // load the encoding before measuring
    if wanted("throughput") {
        throughput(&synth, quick).await;
    }
    if wanted("accuracy") {
        accuracy(&synth, quick).await;
    }
    if wanted("memory") {
        memory(&synth, quick).await;
    }
    if wanted("telemetry") {
        telemetry(&synth, quick).await;
    }
    if wanted("workloads") {
        workloads(&synth, quick).await;
    }
    if wanted("wrk") && has("wrk") && !quick {
        wrk(&synth);
    }
}

async fn throughput(synth: &PromptSynth, quick: bool) {
    println!("## Throughput: mock with zero delays, 64 output tokens, ISL 128, streamed\n");
    println!(
        "| concurrency | requests | req/s | client CPU ms/request | peak client RSS MB | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut cfg = MockDeployment::default();
    cfg.output_tokens = std::num::NonZeroU32::new(64);
    let mock = Mock::start(&cfg);
    for conc in concurrencies(&[1, 64, 256, 1024]) {
        let requests = if quick {
            u64::from(conc) * 2
        } else {
            (u64::from(conc) * 20).max(5000)
        };
        let c = client(mock.port, conc);
        // Warm the connection pool, then measure.
        let _ = load::run(
            &c,
            synth,
            &LoadSpec::closed(conc, u64::from(conc), 128, 64),
            &CancellationToken::new(),
        )
        .await;
        let (cpu0, t0) = (cpu_s(), Instant::now());
        let recs = load::run(
            &c,
            synth,
            &LoadSpec::closed(conc, requests, 128, 64),
            &CancellationToken::new(),
        )
        .await;
        let (cpu, wall) = (cpu_s() - cpu0, t0.elapsed().as_secs_f64());
        let errors = recs.iter().filter(|r| !r.ok()).count();
        println!(
            "| {conc} | {requests} | {:.0} | {:.3} | {:.0} | {errors} |",
            requests as f64 / wall,
            cpu * 1e3 / requests as f64,
            peak_rss_mb()
        );
    }
    drop(mock);
}

async fn accuracy(synth: &PromptSynth, quick: bool) {
    println!("\n## Accuracy: mock with TTFT 50 ms and ITL 10 ms, 32 output tokens\n");
    println!(
        "| concurrency | metric | p50 ms | p99 ms | p50 error ms | p99 error ms | true p50 / p99 ms | error vs true p50 / p99 ms | mock late p50 / p99 ms | client error per request p50 / p99 ms | mock intake p50 / p99 ms | mock CPU % | client CPU % |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut cfg = MockDeployment::default();
    cfg.ttft_ms = 50.0;
    cfg.itl_ms = 10.0;
    cfg.output_tokens = std::num::NonZeroU32::new(32);
    for conc in concurrencies(&[1, 64, 256, 512]) {
        let mock = Mock::start(&cfg);
        let rounds: u64 = std::env::var("LOADGEN_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(8);
        let requests = if quick {
            u64::from(conc).max(8)
        } else {
            (u64::from(conc) * rounds).max(64)
        };
        let c = client(mock.port, conc);
        // Two warmup rounds, recorded but left out of the stats: the first opens the
        // connections during the ramp; the second starts while the last clients are still in
        // their first request, and at 512 its first few dozen requests meet a mock that is
        // still catching up (see docs/PERFORMANCE.md). Measured: from each client's third.
        let mut spec = LoadSpec::closed(conc, requests + 2 * u64::from(conc), 128, 32);
        spec.warmup = 2 * u64::from(conc);
        // Clients start spread over one request's length (50 + 31 x 10 ms), so that arrivals
        // are steady rather than waves of `conc` requests at once.
        spec.ramp = Some(Duration::from_millis(360));
        let (m0, c0, t0) = (proc_cpu_s(mock.child.id()), cpu_s(), Instant::now());
        // The run's clock on CLOCK_MONOTONIC (load::run takes its own epoch a few
        // microseconds later), to compare its timestamps with the mock's request by request.
        let epoch_ns = harness_llm::mock::monotonic_ns(tokio::time::Instant::now());
        let recs = load::run(&c, synth, &spec, &CancellationToken::new()).await;
        let wall = t0.elapsed().as_secs_f64();
        let mock_pct = (proc_cpu_s(mock.child.id()) - m0) / wall * 100.0;
        let client_pct = (cpu_s() - c0) / wall * 100.0;
        if let Ok(dir) = std::env::var("LOADGEN_DUMP") {
            let mut out = String::from("index,start_ns,first_ns,end_ns,first_gap_ns\n");
            for r in &recs {
                out.push_str(&format!(
                    "{},{},{},{},{}\n",
                    r.index,
                    r.start_ns,
                    r.first_token_ns.unwrap_or(0),
                    r.end_ns,
                    r.chunk_gaps_ns.first().copied().unwrap_or(0)
                ));
            }
            std::fs::write(format!("{dir}/acc{conc}.csv"), out).expect("dump");
        }
        let s = BenchSummary::of(&recs, &Slo::default()).expect("stats");
        // The mock's own lateness (time past each token's due time when it left), so the
        // client's error can be told apart from the server's: for first tokens per measured
        // request, for later tokens over the whole run (`/v1/mock/lateness`).
        let metrics = mock_get(mock.port, "/v1/mock/lateness").await;
        let wire = per_request(synth, &spec, &recs, epoch_ns, mock.port).await;
        let pair = |d: &Option<harness_analytics::Distribution>| {
            d.as_ref().map_or(String::new(), |d| {
                format!(
                    "{:.3} / {:.3}",
                    d.p(50).unwrap_or(f64::NAN),
                    d.p(99).unwrap_or(f64::NAN)
                )
            })
        };
        for (name, truth) in [("ttft", 50.0), ("itl", 10.0)] {
            if let Some(d) = s.distributions.get(name) {
                let (p50, p99) = (d.p(50).unwrap_or(f64::NAN), d.p(99).unwrap_or(f64::NAN));
                let (late, read_delay, intake, truth_pair, vs_truth) = if name == "ttft" {
                    let vs = wire.true_ttft.as_ref().map_or(String::new(), |t| {
                        let e = |q| d.p(q).unwrap_or(f64::NAN) - t.p(q).unwrap_or(f64::NAN);
                        format!("{:+.3} / {:+.3}", e(50), e(99))
                    });
                    (
                        pair(&wire.first_late),
                        pair(&wire.read_delay),
                        pair(&wire.intake),
                        pair(&wire.true_ttft),
                        vs,
                    )
                } else {
                    let q = |q: &str| quantile(&metrics, "mock_token_lateness_seconds", q) * 1e3;
                    (
                        format!("{:.3} / {:.3}", q("0.50"), q("0.99")),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    )
                };
                println!(
                    "| {conc} | {name} | {p50:.3} | {p99:.3} | {:+.3} | {:+.3} | {truth_pair} | {vs_truth} | {late} | {read_delay} | {intake} | {mock_pct:.0} | {client_pct:.0} |",
                    p50 - truth,
                    p99 - truth,
                );
            }
        }
        assert_eq!(
            s.requests, s.succeeded,
            "errors in the accuracy run: {:?}",
            s.errors
        );
    }
}

/// The load generator's timing with the server's metrics scraped during the run, against
/// the same run without: the scraper's thread shares the client's core (both pinned to
/// core 1), so what it costs shows in the client's TTFT and CPU.
/// Trace replay's send lag, and what multi-turn sessions cost the client against
/// independent requests of the same size (the mock with a prefix cache, TTFT 20 ms, ITL 5 ms).
async fn workloads(synth: &PromptSynth, quick: bool) {
    use harness_llm::workload::{Sessions, Trace, Workload};
    println!("\n## Workloads (mock: TTFT 20 ms, ITL 5 ms, prefix cache)\n");
    let mut cfg = MockDeployment::default();
    cfg.ttft_ms = 20.0;
    cfg.itl_ms = 5.0;
    cfg.prefix_cache =
        std::num::NonZeroU32::new(1 << 20).map(harness_core::config::MockPrefixCache::new);
    let (n, rate) = if quick { (200, 100.0) } else { (4000, 400.0) };
    let trace = Trace::parse(&Trace::synthetic_jsonl(n, rate, 512, 1), "gen", 512).expect("trace");
    let mock = Mock::start(&cfg);
    let c = client(mock.port, 1024);
    let mut spec = LoadSpec::closed(1024, n as u64, 1, 1);
    spec.requests = None;
    spec.workload = Workload::Trace(std::sync::Arc::new(trace));
    let (c0, t0) = (cpu_s(), Instant::now());
    let recs = load::run(&c, synth, &spec, &CancellationToken::new()).await;
    let wall = t0.elapsed().as_secs_f64();
    let s = BenchSummary::of(&recs, &Slo::default()).expect("stats");
    assert_eq!(s.requests, s.succeeded, "errors: {:?}", s.errors);
    let lag = &s.distributions["schedule_lag"];
    println!(
        "Trace replay, {n} requests at {rate}/s (ISL up to 4096): send lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; prefix cache hit rate {:.3}; client CPU {:.0}%",
        lag.p(50).unwrap_or(f64::NAN),
        lag.p(99).unwrap_or(f64::NAN),
        lag.max,
        s.prefix_cache_hit_rate.unwrap_or(f64::NAN),
        (cpu_s() - c0) / wall * 100.0
    );
    drop(mock);

    println!("\n| workload | requests | client CPU µs/request | TTFT p50 ms |");
    println!("|---|---:|---:|---:|");
    let sessions = if quick { 16 } else { 256 };
    let turns = 5u32;
    // Independent prompts of the sessions' mean size (turn k sends 512 k + 32 (k - 1)
    // tokens), then the sessions themselves.
    for workload in ["independent", "sessions"] {
        let mock = Mock::start(&cfg);
        let c = client(mock.port, 64);
        let total = u64::from(sessions * turns);
        let mut spec = LoadSpec::closed(64, total, 512 * 3 + 32 * 2, 32);
        if workload == "sessions" {
            spec.isl = 512;
            spec.workload = Workload::Sessions(Sessions::new(turns));
        }
        let (c0, t0) = (cpu_s(), Instant::now());
        let recs = load::run(&c, synth, &spec, &CancellationToken::new()).await;
        let _ = t0;
        let s = BenchSummary::of(&recs, &Slo::default()).expect("stats");
        assert_eq!(s.requests, s.succeeded, "errors: {:?}", s.errors);
        println!(
            "| {workload} | {} | {:.0} | {:.2} |",
            s.requests,
            (cpu_s() - c0) / s.requests as f64 * 1e6,
            s.value("ttft.p50").unwrap_or(f64::NAN),
        );
    }
}

async fn telemetry(synth: &PromptSynth, quick: bool) {
    use harness_llm::telemetry::{ScrapeConfig, ScrapeTarget, Scraper};
    println!(
        "\n## Telemetry: scraping the mock's /metrics during the accuracy load (TTFT 50 ms, ITL 10 ms)\n"
    );
    println!(
        "| concurrency | scrape interval | scrapes | TTFT p50 / p99 ms | ITL p50 / p99 ms | client CPU % |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    let mut cfg = MockDeployment::default();
    cfg.ttft_ms = 50.0;
    cfg.itl_ms = 10.0;
    cfg.output_tokens = std::num::NonZeroU32::new(32);
    let conc = concurrencies(&[256])[0];
    for interval in [None, Some(1000), Some(100), Some(10)] {
        let mock = Mock::start(&cfg);
        let requests = if quick {
            u64::from(conc)
        } else {
            u64::from(conc) * 8
        };
        let c = client(mock.port, conc);
        let mut spec = LoadSpec::closed(conc, requests + 2 * u64::from(conc), 128, 32);
        spec.warmup = 2 * u64::from(conc);
        spec.ramp = Some(Duration::from_millis(360));
        let scraper = match interval {
            Some(ms) => {
                let target =
                    ScrapeTarget::new("mock", format!("http://127.0.0.1:{}/metrics", mock.port));
                let cfg = ScrapeConfig::new(vec![target], Duration::from_millis(ms));
                Some(Scraper::start(cfg).await.expect("scraper"))
            }
            None => None,
        };
        let (c0, t0) = (cpu_s(), Instant::now());
        let epoch = tokio::time::Instant::now();
        let recs = load::run_at(&c, synth, &spec, epoch, &CancellationToken::new()).await;
        let wall = t0.elapsed().as_secs_f64();
        let scrapes = match scraper {
            Some(s) => {
                let log = s.finish(epoch).await.expect("scrapes");
                log.targets.iter().map(|t| t.scrapes().len()).sum::<usize>()
            }
            None => 0,
        };
        let client_pct = (cpu_s() - c0) / wall * 100.0;
        let s = BenchSummary::of(&recs, &Slo::default()).expect("stats");
        let pair = |name: &str| {
            s.distributions.get(name).map_or(String::new(), |d| {
                format!(
                    "{:.3} / {:.3}",
                    d.p(50).unwrap_or(f64::NAN),
                    d.p(99).unwrap_or(f64::NAN)
                )
            })
        };
        println!(
            "| {conc} | {} | {scrapes} | {} | {} | {client_pct:.0} |",
            interval.map_or("off".to_owned(), |ms| format!("{ms} ms")),
            pair("ttft"),
            pair("itl"),
        );
        assert_eq!(s.requests, s.succeeded, "errors: {:?}", s.errors);
    }
    // Parsing a large exposition, as vLLM's with many label sets is: the scraper's cost per
    // scrape, off the client's runtime.
    let mut text = String::from("# TYPE vllm:e2e_request_latency_seconds histogram\n");
    for model in 0..200 {
        for le in ["0.1", "0.5", "1.0", "5.0", "+Inf"] {
            text.push_str(&format!(
                "vllm:e2e_request_latency_seconds_bucket{{le=\"{le}\",model_name=\"m{model}\",engine=\"0\"}} {model}\n"
            ));
        }
        text.push_str(&format!(
            "vllm:num_requests_running{{model_name=\"m{model}\",engine=\"0\"}} 3\n"
        ));
    }
    let text = text.repeat(if quick { 1 } else { 4 });
    let t0 = Instant::now();
    let rounds = 20;
    let mut samples = 0;
    for _ in 0..rounds {
        samples = harness_analytics::telemetry::expo::parse(&text)
            .samples
            .len();
    }
    println!(
        "\nParsing a {:.0} KB exposition of {samples} samples: {:.2} ms",
        text.len() as f64 / 1e3,
        t0.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
}

async fn memory(synth: &PromptSynth, quick: bool) {
    println!("\n## Memory: concurrency 1024, ISL 8192, 16 output tokens\n");
    let mut cfg = MockDeployment::default();
    cfg.output_tokens = std::num::NonZeroU32::new(16);
    let mock = Mock::start(&cfg);
    let c = client(mock.port, 1024);
    let requests = if quick { 1024 } else { 4096 };
    let recs = load::run(
        &c,
        synth,
        &LoadSpec::closed(1024, requests, 8192, 16),
        &CancellationToken::new(),
    )
    .await;
    println!(
        "{} requests, {} errors; peak client RSS {:.0} MB",
        recs.len(),
        recs.iter().filter(|r| !r.ok()).count(),
        peak_rss_mb()
    );
}

fn wrk(synth: &PromptSynth) {
    {
        println!(
            "\n## wrk on the same mock (zero delays, 64 output tokens, one wrk thread on core 1)\n"
        );
        let mut cfg = MockDeployment::default();
        cfg.output_tokens = std::num::NonZeroU32::new(64);
        let mock = Mock::start(&cfg);
        let prompt = synth.prompt(128, 1);
        let script = std::env::temp_dir().join("harness-wrk.lua");
        let body = serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 64, "stream": true, "stream_options": {"include_usage": true}
        });
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {}\n",
                serde_json::to_string(&body.to_string()).expect("lua string")
            ),
        )
        .expect("script");
        println!("| connections | req/s |");
        println!("|---:|---:|");
        for conc in [64, 256, 1024] {
            let out = Command::new("wrk")
                .args(["-t1", &format!("-c{conc}"), "-d10s", "-s"])
                .arg(&script)
                .arg(format!(
                    "http://127.0.0.1:{}/v1/chat/completions",
                    mock.port
                ))
                .output()
                .expect("wrk");
            let text = String::from_utf8_lossy(&out.stdout);
            let rps = text
                .lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .unwrap_or("Requests/sec: ?");
            println!(
                "| {conc} | {} |",
                rps.trim_start_matches("Requests/sec:").trim()
            );
        }
    }
}

/// The body of the mock's answer to `GET path`.
async fn mock_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the mock");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out.split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, body)| body.to_owned())
}

/// Request by request, from the mock's `/v1/mock/requests` (both clocks are
/// CLOCK_MONOTONIC): how long after the mock sent the first token the client stamped it
/// (the client's TTFT error against the wire), and how long after the client wrote the
/// request the mock's handler ran (the mock's intake queue), in ms, over the measured
/// requests.
async fn per_request(
    synth: &PromptSynth,
    spec: &LoadSpec,
    recs: &[harness_llm::client::Record],
    epoch_ns: Option<u64>,
    port: u16,
) -> Wire {
    let body: serde_json::Value =
        serde_json::from_str(&mock_get(port, "/v1/mock/requests").await).expect("timings");
    let mut seen = std::collections::HashMap::new();
    for r in body["requests"].as_array().into_iter().flatten() {
        if let (Some(k), Some(recv), Some(first)) = (
            r["key"].as_str(),
            r["received_ns"].as_u64(),
            r["first_token_ns"].as_u64(),
        ) {
            seen.insert(k.to_owned(), (recv, first));
        }
    }
    let (mut read_delay, mut intake, mut first_late, mut true_ttft) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // `first_token_sent_ns` is on CLOCK_MONOTONIC, to line requests up with other traces
    // (`perf sched record -k CLOCK_MONOTONIC`, for one).
    let mut dump =
        String::from("index,start_ns,client_read_delay_ms,mock_intake_ms,first_token_sent_ns\n");
    for r in recs.iter().filter(|r| !r.warmup && r.ok()) {
        let key = format!(
            "{:016x}",
            harness_llm::mock::prompt_key(&spec.request(synth, r.index).0)
        );
        if let (Some(epoch), Some(&(recv, first)), Some(got)) =
            (epoch_ns, seen.get(&key), r.first_token_ns)
        {
            read_delay.push(((epoch + got) as f64 - first as f64) / 1e6);
            intake.push((recv as f64 - (epoch + r.start_ns) as f64) / 1e6);
            first_late.push((first as f64 - recv as f64) / 1e6 - 50.0);
            true_ttft.push((first as f64 - (epoch + r.start_ns) as f64) / 1e6);
            dump.push_str(&format!(
                "{},{},{:.4},{:.4},{first}\n",
                r.index,
                r.start_ns,
                read_delay[read_delay.len() - 1],
                intake[intake.len() - 1]
            ));
        }
    }
    if let Ok(dir) = std::env::var("LOADGEN_DUMP") {
        let conc = spec.concurrency.unwrap_or(1);
        std::fs::write(format!("{dir}/wire{conc}.csv"), dump).expect("dump");
    }
    Wire {
        read_delay: harness_analytics::Distribution::of(&read_delay),
        intake: harness_analytics::Distribution::of(&intake),
        first_late: harness_analytics::Distribution::of(&first_late),
        true_ttft: harness_analytics::Distribution::of(&true_ttft),
    }
}

/// Per measured request, in milliseconds, from the mock's `/v1/mock/requests`.
struct Wire {
    /// The client's first-token timestamp minus the moment the mock sent that token.
    read_delay: Option<harness_analytics::Distribution>,
    /// The mock's handler start minus the client's write.
    intake: Option<harness_analytics::Distribution>,
    /// The mock's first token sent minus its due time (handler start + TTFT).
    first_late: Option<harness_analytics::Distribution>,
    /// The true TTFT: the mock's first token sent minus the client's write of the request.
    true_ttft: Option<harness_analytics::Distribution>,
}

/// A quantile line of a Prometheus summary, in seconds (NaN when missing).
fn quantile(metrics: &str, name: &str, q: &str) -> f64 {
    let prefix = format!("{name}{{quantile=\"{q}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
