//! The workload examples of `experiments/` run from the command line as a user runs them
//! (from the repository's root, where their data files are), each against the mock with its
//! prefix cache, and their results read back from the stored run.

mod common;

use std::path::{Path, PathBuf};

use common::{harness, repo, text};

/// Runs `experiments/<name>.yaml` with its results in `dir`; returns the stdout and every
/// cell's `stats.json` by cell id.
fn run_example(dir: &Path, name: &str) -> (String, Vec<(String, serde_json::Value)>) {
    let file = format!("experiments/{name}.yaml");
    let store = format!("storage.url=file://{}", dir.display());
    let out = harness(&repo(), &["run", &file, "--no-progress", "--set", &store]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{name}: {stdout}\n{stderr}");
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs").join(name))
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1);
    let mut cells = Vec::new();
    for e in std::fs::read_dir(runs[0].join("cells")).expect("cells") {
        let path = e.expect("cell").path();
        let stats: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.join("stats.json")).expect("stats.json"))
                .expect("json");
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        cells.push((id, stats));
    }
    cells.sort_by(|a, b| a.0.cmp(&b.0));
    (stdout, cells)
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn the_shared_prefix_example_shows_the_cache_size_at_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stdout, cells) = run_example(dir.path(), "shared-prefix");
    assert!(stdout.contains("cache hits"), "{stdout}");
    assert_eq!(cells.len(), 4);
    for (id, stats) in &cells {
        let rate = f(stats, "prefix_cache_hit_rate");
        if id.contains("cache-4096") {
            // 128 requests of 8 groups: each group's first misses, the other 120 find the
            // prefix's 64 whole blocks (1024 tokens) of their 1024 + 128.
            assert!(
                (rate - 120.0 * 1024.0 / (128.0 * 1152.0)).abs() < 1e-12,
                "{id}: {rate}"
            );
        } else {
            // Smaller than one prefix (64 blocks): each request evicts its own first
            // blocks, whatever order the requests arrive in.
            assert_eq!(rate, 0.0, "{id}");
        }
    }
}

#[test]
fn the_sessions_example_reports_turns_and_their_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stdout, cells) = run_example(dir.path(), "sessions");
    assert!(stdout.contains("TTFT turn 2+"), "{stdout}");
    for (id, stats) in &cells {
        assert_eq!(stats["sessions"], 16, "{id}");
        let turns = stats["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 5);
        for t in turns {
            // Turn k sends k user turns of 256 and k-1 replies of 64; the last turn's prompt
            // and reply (320 tokens a turn, whole 16-token blocks) are cached.
            let k = t["turn"].as_f64().expect("turn");
            assert_eq!(f(t, "input_tokens_mean"), k * 256.0 + (k - 1.0) * 64.0);
            let want = (k - 1.0) * 320.0 / (k * 256.0 + (k - 1.0) * 64.0);
            assert!((f(t, "prefix_cache_hit_rate") - want).abs() < 1e-12, "{t}");
        }
        assert_eq!(stats["distributions"]["session_duration"]["count"], 16);
    }
}

#[test]
fn the_trace_example_replays_the_sample_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, cells) = run_example(dir.path(), "trace-replay");
    let stats = &cells[0].1;
    assert_eq!(stats["requests"], 200);
    assert_eq!(stats["succeeded"], 200);
    let sample = std::fs::read_to_string(repo().join("experiments/data/mooncake-sample.jsonl"))
        .expect("sample");
    let input: u64 = sample
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("line")["input_length"]
                .as_u64()
                .expect("input_length")
        })
        .sum();
    let mean = f(&stats["distributions"]["input_sequence_length"], "mean");
    assert!(
        (mean - input as f64 / 200.0).abs() < 1e-9,
        "ISL exact: {mean}"
    );
    assert!(f(stats, "prefix_cache_hit_rate") > 0.0);
    assert_eq!(stats["distributions"]["schedule_lag"]["count"], 200);
}

#[test]
fn the_conversations_example_replays_each_conversation_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, cells) = run_example(dir.path(), "conversations");
    let stats = &cells[0].1;
    assert_eq!(stats["sessions"], 4);
    assert_eq!(stats["requests"], 3 + 2 + 2 + 2);
    assert!(f(stats, "prefix_cache_hit_rate") > 0.0);
}
