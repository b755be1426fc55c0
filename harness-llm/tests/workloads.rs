//! Workloads end to end against the mock with its prefix cache: an experiment's `workload`
//! section runs through the benchmark step, and what the records say is checked against
//! what the workload and the cache make true.

use std::collections::{BTreeMap, BTreeSet};

use common::bench;
use harness_analytics::record::Record;
use harness_core::config::{MockDeployment, MockPrefixCache};
use harness_core::*;
use harness_llm::mock::MockServer;
use harness_llm::prompts::TokenCounter;
use harness_llm::workload::Trace;

mod common;

/// The mock with a prefix cache of `blocks` blocks of `block` tokens.
async fn mock(blocks: u32, block: u32) -> MockServer {
    let mut cfg = MockDeployment::default();
    cfg.ttft_ms = 2.0;
    cfg.itl_ms = 0.5;
    cfg.prefill_ms_per_token = 0.01;
    let mut cache = MockPrefixCache::new(std::num::NonZeroU32::new(blocks).expect("blocks"));
    cache.block_tokens = std::num::NonZeroU32::new(block).expect("block");
    cfg.prefix_cache = Some(cache);
    MockServer::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("mock")
}

fn shared_prefix_yaml(concurrency: u32, order: &str) -> String {
    format!(
        "name: prefix\nmodel: {{name: m}}\nconcurrency: [{concurrency}]\nbenchmark: {{isl_osl: [[40, 8]]}}\n\
         load: {{requests: 24, preflight: false}}\ntelemetry: {{enabled: false}}\n\
         workload: {{kind: shared_prefix, groups: 4, prompts_per_group: 6, prefix_tokens: 100, order: {order}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prefix_run_reports_exactly_the_hit_rate_the_cache_implies() {
    // A cache large enough for every prefix: each group's first request misses, every later
    // one finds the prefix's whole 16-token blocks (6 of them: 96 of its 100 tokens), in
    // whatever order the 4 clients' requests arrive.
    let server = mock(100_000, 16).await;
    let ran = bench(&server, &shared_prefix_yaml(4, "round_robin")).await;
    assert_eq!(ran.report.cells[0].status, CellStatus::Succeeded);
    let records = ran.records().await;
    assert_eq!(records.len(), 24);
    for r in &records {
        assert_eq!(r.input_tokens, 140, "prefix + question, exactly");
        assert!(
            r.cached_tokens == Some(0) || r.cached_tokens == Some(96),
            "{r:?}"
        );
    }
    let (n, g, hit) = (24u64, 4u64, 96u64);
    let expected = (n - g) * hit;
    let stats = ran.stats().await;
    assert_eq!(stats.cached_tokens, Some(expected));
    let rate = stats.prefix_cache_hit_rate.expect("a hit rate");
    assert!(
        (rate - expected as f64 / (n * 140) as f64).abs() < 1e-12,
        "{rate}"
    );
    assert_eq!(stats.value("prefix_cache_hit_rate"), Some(rate));
    server.shutdown().await;

    // A cache of 20 blocks, smaller than the 4 groups' requests (9 full blocks each):
    // round-robin evicts every prefix before its group comes back, so nothing hits.
    let server = mock(20, 16).await;
    let ran = bench(&server, &shared_prefix_yaml(1, "round_robin")).await;
    let stats = ran.stats().await;
    assert_eq!(stats.cached_tokens, Some(0));
    assert_eq!(stats.prefix_cache_hit_rate, Some(0.0));
    server.shutdown().await;

    // The same small cache with random order: a group that comes back within two requests
    // still finds its prefix, so some requests hit.
    let server = mock(20, 16).await;
    let ran = bench(&server, &shared_prefix_yaml(1, "random")).await;
    let stats = ran.stats().await;
    assert!(stats.cached_tokens.is_some_and(|c| c > 0), "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_the_server_s_replies_and_reuse_the_cache() {
    let server = mock(100_000, 16).await;
    let yaml = "name: sessions\nmodel: {name: m}\nconcurrency: [2]\nbenchmark: {isl_osl: [[32, 8]]}\n\
                load: {requests: 12, preflight: false}\ntelemetry: {enabled: false}\n\
                workload: {kind: sessions, turns: 3, think_time: 5ms}\n";
    let ran = bench(&server, yaml).await;
    assert_eq!(ran.report.cells[0].status, CellStatus::Succeeded);
    let records = ran.records().await;
    assert_eq!(records.len(), 12);
    let mut per_session: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        per_session
            .entry(r.session.expect("a session"))
            .or_default()
            .push(r);
    }
    assert_eq!(per_session.len(), 4);
    for turns in per_session.values() {
        let numbers: Vec<u32> = turns.iter().map(|r| r.turn.expect("turn")).collect();
        assert_eq!(numbers, [1, 2, 3]);
        // The history holds every user turn (32) and every reply (8 of the mock's words):
        // the server counts 32, 72 and 112 prompt tokens.
        let inputs: Vec<u64> = turns.iter().map(|r| r.input_tokens).collect();
        assert_eq!(inputs, [32, 72, 112]);
        // Turn 1 stored 2 blocks (40 words); turn 2 finds them and stores 5 (80 words),
        // which turn 3 finds.
        let cached: Vec<Option<u64>> = turns.iter().map(|r| r.cached_tokens).collect();
        assert_eq!(cached, [Some(0), Some(32), Some(80)]);
        // Turns follow each other: each starts after the last one's reply.
        for w in turns.windows(2) {
            assert!(w[1].start_ns >= w[0].end_ns);
        }
    }
    let stats = ran.stats().await;
    assert_eq!(stats.sessions, Some(4));
    assert_eq!(stats.turns.len(), 3);
    assert_eq!(stats.turns[1].prefix_cache_hit_rate, Some(32.0 / 72.0));
    assert_eq!(stats.turns[2].input_tokens_mean, 112.0);
    for name in ["ttft_first_turn", "ttft_later_turns", "session_duration"] {
        assert!(stats.distributions.contains_key(name), "{name}");
    }
    assert_eq!(stats.distributions["ttft_first_turn"].count, 4);
    assert_eq!(stats.distributions["ttft_later_turns"].count, 8);
    assert_eq!(stats.distributions["session_duration"].count, 4);

    // The report: the workload's columns in the cell table, TTFT and hits by turn charted.
    let report = ran.report().await;
    let text = |rel: &'static str| report.text(rel);
    let html = text("index.html").await;
    for needle in [
        "<th>prefix cache hit rate</th>",
        "<th>TTFT turn 1 p50 ms</th>",
        "<th>TTFT turns 2+ p50 ms</th>",
        "<th>session p50 ms</th>",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    let by_turn = text("charts/prefix-cache-by-turn.svg").await;
    assert!(by_turn.contains(ran.cell().as_str()), "one line per cell");
    assert!(text("report.md").await.contains("charts/ttft-by-turn.png"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_replayed_at_its_times_with_exact_lengths_and_shared_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.jsonl");
    let text = Trace::synthetic_jsonl(200, 100.0, 64, 7);
    std::fs::write(&path, &text).expect("trace");
    let trace = Trace::parse(&text, "trace", 64).expect("trace");
    let server = mock(100_000, 64).await;
    let yaml = format!(
        "name: trace\nmodel: {{name: m}}\nconcurrency: [64]\nbenchmark: {{isl_osl: [[1, 1]]}}\n\
         load: {{preflight: false}}\ntelemetry: {{enabled: false}}\n\
         workload: {{kind: trace, path: '{}', block_tokens: 64}}\n",
        path.display()
    );
    let ran = bench(&server, &yaml).await;
    assert_eq!(ran.report.cells[0].status, CellStatus::Succeeded);
    let records = ran.records().await;
    assert_eq!(records.len(), 200, "the whole trace");
    let first = trace.entries()[0].timestamp;
    let mut seen_first_ids: BTreeMap<u64, f64> = BTreeMap::new();
    let (mut misses, mut hits) = (0, 0);
    for (r, e) in records.iter().zip(trace.entries()) {
        assert_eq!(r.input_tokens, u64::from(e.input_length), "ISL exact");
        assert_eq!(r.output_tokens, u64::from(e.output_length));
        // Scheduled at the trace's time; never sent early.
        let due_ns = ((e.timestamp - first) * 1e6).round() as u64;
        let scheduled = r.scheduled_ns.expect("scheduled");
        assert!(scheduled.abs_diff(due_ns) <= 1, "{scheduled} vs {due_ns}");
        assert!(r.start_ns >= scheduled);
        // A first block no earlier request had: nothing cached (different ids differ). A
        // full first block that a request at least 5 ms earlier had: found (equal ids are
        // equal text).
        let id = e.hash_ids[0];
        let full = e.input_length > 64;
        match seen_first_ids.get(&id) {
            None => {
                assert_eq!(r.cached_tokens, Some(0), "{e:?}");
                misses += 1;
            }
            Some(t) if full && e.timestamp - t >= 5.0 => {
                assert!(r.cached_tokens.is_some_and(|c| c >= 64), "{e:?} {r:?}");
                hits += 1;
            }
            Some(_) => {}
        }
        if full {
            seen_first_ids.entry(id).or_insert(e.timestamp);
        } else {
            seen_first_ids.entry(id).or_insert(f64::INFINITY);
        }
    }
    assert!(
        misses > 50 && hits > 20,
        "{misses} misses, {hits} hits checked"
    );
    let stats = ran.stats().await;
    assert!(stats.prefix_cache_hit_rate.is_some_and(|h| h > 0.0));
    // The lag between the trace's time and the actual send is measured and reported.
    let lag = &stats.distributions["schedule_lag"];
    assert_eq!(lag.count, 200);
    assert!(lag.min >= 0.0);
    eprintln!(
        "trace replay: send lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        lag.stat("p50").unwrap_or_default(),
        lag.stat("p99").unwrap_or_default(),
        lag.max
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_from_a_file_are_replayed_as_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("conversations.jsonl");
    let lines = [
        r#"{"messages": [{"role": "system", "content": "You answer in one short sentence."}, {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris is the capital of France."}, {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}]}"#,
        r#"{"conversations": [{"from": "human", "value": "Name three colours."}, {"from": "gpt", "value": "Red, green and blue."}]}"#,
        r#"{"messages": [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two, three, four, five."}, {"role": "user", "content": "Now backwards."}]}"#,
    ];
    std::fs::write(&path, lines.join("\n")).expect("file");
    let server = mock(100_000, 4).await;
    let yaml = format!(
        "name: conv\nmodel: {{name: m, max_context: 4096}}\nconcurrency: [2]\nbenchmark: {{isl_osl: [[16, 3]]}}\n\
         load: {{preflight: false}}\ntelemetry: {{enabled: false}}\n\
         workload: {{kind: conversations, path: '{}'}}\n",
        path.display()
    );
    let ran = bench(&server, &yaml).await;
    assert_eq!(ran.report.cells[0].status, CellStatus::Succeeded);
    let records = ran.records().await;
    assert_eq!(records.len(), 5, "each conversation's user turns, once");
    let count = TokenCounter::new("cl100k_base").expect("encoding");
    // Output lengths: the file's replies, measured in tokens; the last turn of the third
    // conversation has none, so the cell's OSL (3).
    let mut by_session: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in &records {
        by_session
            .entry(r.session.expect("session"))
            .or_default()
            .push(r.output_tokens);
    }
    let want: BTreeSet<Vec<u64>> = [
        vec![
            count.count("Paris is the capital of France.") as u64,
            count.count("Rome.") as u64,
        ],
        vec![count.count("Red, green and blue.") as u64],
        vec![count.count("One, two, three, four, five.") as u64, 3],
    ]
    .into_iter()
    .collect();
    assert_eq!(by_session.into_values().collect::<BTreeSet<_>>(), want);
    // The second turn of the first conversation sends the system prompt, both user turns
    // and the server's reply (its words), not the file's reply.
    let second = records
        .iter()
        .find(|r| r.turn == Some(2) && r.output_tokens == count.count("Rome.") as u64)
        .expect("turn 2");
    let words = |s: &str| s.split_whitespace().count() as u64;
    let paris = count.count("Paris is the capital of France.") as u64;
    assert_eq!(
        second.input_tokens,
        words("You answer in one short sentence.")
            + words("What is the capital of France?")
            + paris
            + words("And of Italy?")
    );
    server.shutdown().await;
}

/// Two clients share a conversations file conversation by conversation, synthetic
/// sessions session by session, and a trace request by request at the trace's times:
/// together they send each once, as one client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_conversations_sessions_and_a_trace_item_by_item() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conversations = dir.path().join("conversations.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "Question {i}?"}}, {{"role": "assistant", "content": "Answer {i}."}}, {{"role": "user", "content": "And then?"}}]}}"#
            )
        })
        .collect();
    std::fs::write(&conversations, lines.join("\n")).expect("file");
    let trace = dir.path().join("trace.jsonl");
    // Every request starts with the same block: equal hash ids are equal text whichever
    // client sends them.
    let entries: String = (0..7)
        .map(|i| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": 32, \"output_length\": 2, \"hash_ids\": [7, {i}]}}\n",
                i * 10
            )
        })
        .collect();
    std::fs::write(&trace, entries).expect("trace");
    let server = mock(100_000, 4).await;
    for (workload, items, per_item) in [
        (
            format!(
                "{{kind: conversations, path: '{}'}}",
                conversations.display()
            ),
            5u64,
            2usize,
        ),
        (
            format!(
                "{{kind: trace, path: '{}', block_tokens: 16}}",
                trace.display()
            ),
            7,
            1,
        ),
        // 100 requests by default (four rounds of the cell's concurrency, at least 100):
        // 50 sessions of two turns.
        ("{kind: sessions, turns: 2}".to_string(), 50, 2),
    ] {
        let yaml = format!(
            "name: two\nmodel: {{name: m, max_context: 4096}}\nconcurrency: [2]\n\
             benchmark: {{isl_osl: [[16, 2]]}}\nload: {{preflight: false}}\n\
             telemetry: {{enabled: false}}\nworkload: {workload}\n"
        );
        let mut seen = Vec::new();
        for index in 0..2 {
            let ran = common::bench_as(&server, &yaml, Some(Shard { index, count: 2 })).await;
            assert_eq!(
                ran.report.cells[0].status,
                CellStatus::Succeeded,
                "{workload}"
            );
            let records = ran.shard_records(index).await;
            // A conversation's turns stay on one client; a trace's requests alternate.
            let items: BTreeSet<u64> = records
                .iter()
                .map(|r| r.session.unwrap_or(r.index))
                .collect();
            assert!(
                items.iter().all(|i| i % 2 == u64::from(index)),
                "client {index} of {workload}: {items:?}"
            );
            assert_eq!(records.len(), items.len() * per_item, "{workload}");
            if workload.contains("trace") && index == 1 {
                // Client 1 runs after client 0 here: its first request finds the common
                // block client 0 left in the cache.
                let first = records.iter().min_by_key(|r| r.index).expect("a request");
                assert!(first.cached_tokens.is_some_and(|c| c >= 16), "{first:?}");
            }
            seen.extend(items);
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..items).collect::<Vec<_>>(),
            "{workload}: each once"
        );
    }
    server.shutdown().await;
}

/// Two clients split a shared-prefix workload's requests: they send the cell's prompts
/// (the same prefixes, no question twice), so the cache hits exactly as for one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_send_one_client_s_shared_prefix_prompts() {
    let server = mock(100_000, 16).await;
    // Three groups: each client's requests visit all three, so prefixes of its own would
    // miss three times more.
    let yaml = "name: prefix\nmodel: {name: m}\nconcurrency: [4]\nbenchmark: {isl_osl: [[40, 8]]}\n\
                load: {requests: 24, preflight: false}\ntelemetry: {enabled: false}\n\
                workload: {kind: shared_prefix, groups: 3, prompts_per_group: 8, prefix_tokens: 100}\n";
    let mut records = Vec::new();
    for index in 0..2 {
        let ran = common::bench_as(&server, yaml, Some(Shard { index, count: 2 })).await;
        assert_eq!(ran.report.cells[0].status, CellStatus::Succeeded);
        records.extend(ran.shard_records(index).await);
    }
    assert_eq!(records.len(), 24, "the requests split between the clients");
    for r in &records {
        assert_eq!(r.input_tokens, 140);
        // A prompt sent twice would be found whole (136 tokens).
        assert!(
            r.cached_tokens == Some(0) || r.cached_tokens == Some(96),
            "{r:?}"
        );
    }
    let cached: u64 = records.iter().filter_map(|r| r.cached_tokens).sum();
    assert_eq!(
        cached,
        (24 - 3) * 96,
        "one miss per group, as for one client"
    );
    server.shutdown().await;
}

/// Clients of an open loop share the prompts' seed but draw their own arrivals: the same
/// draws would send their requests in bursts of one per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_draw_their_own_arrivals() {
    let server = mock(100_000, 16).await;
    let yaml = "name: open\nmodel: {name: m}\nconcurrency: [4]\nrequest_rate: [400]\n\
                benchmark: {isl_osl: [[16, 2]]}\nload: {requests: 20, preflight: false}\n\
                telemetry: {enabled: false}\n";
    let mut scheduled = Vec::new();
    for index in 0..2 {
        let ran = common::bench_as(&server, yaml, Some(Shard { index, count: 2 })).await;
        let records = ran.shard_records(index).await;
        assert_eq!(records.len(), 10);
        let times: Vec<u64> = records.iter().filter_map(|r| r.scheduled_ns).collect();
        assert_eq!(times.len(), 10, "every request has its arrival time");
        scheduled.push(times);
    }
    assert_ne!(scheduled[0], scheduled[1]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trace_fails_the_cell_naming_its_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"timestamp\": 10, \"input_length\": 8, \"output_length\": 2}\n\
         {\"timestamp\": 3, \"input_length\": 8, \"output_length\": 2}\n",
    )
    .expect("file");
    let server = mock(100, 16).await;
    let yaml = format!(
        "name: bad\nmodel: {{name: m}}\nconcurrency: [1]\nbenchmark: {{isl_osl: [[1, 1]]}}\n\
         load: {{preflight: false}}\ntelemetry: {{enabled: false}}\n\
         workload: {{kind: trace, path: '{}'}}\n",
        path.display()
    );
    let ran = bench(&server, &yaml).await;
    let cell = &ran.report.cells[0];
    assert_eq!(cell.status, CellStatus::Failed);
    let error = format!("{:?}", cell);
    assert!(
        error.contains(&format!("{}:2", path.display())) && error.contains("time order"),
        "{error}"
    );
    server.shutdown().await;
}
