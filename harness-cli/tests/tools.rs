//! Other tools as steps, through `harness run`: real aiperf (installed by
//! `scripts/test-deps.sh`) against the mock, compared with the built-in load generator on
//! the same settings; and a `command` step whose export is imported.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const CELL: &str = "concurrency=4,isl=128,osl=16";

/// An experiment against the mock (TTFT 50 ms, ITL 10 ms) with `steps`.
fn experiment(dir: &Path, name: &str, steps: &str) -> PathBuf {
    let tokenizer = repo().join("experiments/data/tokenizer/tokenizer.json");
    let body = format!(
        "name: {name}\n\
         model: {{name: harness-mock}}\n\
         concurrency: [4]\n\
         benchmark: {{isl_osl: [[128, 16]]}}\n\
         deployment: {{mock: {{ttft_ms: 50, itl_ms: 10}}}}\n\
         tokenizer: {{path: {}}}\n\
         load: {{requests: 40, warmup_requests: 4, ramp: 200ms, extra_body: {{ignore_eos: true}}}}\n\
         {steps}",
        tokenizer.display()
    );
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, body).expect("write");
    p
}

/// Runs the experiment and returns its run's folder.
fn run(dir: &Path, exp: &Path, name: &str) -> PathBuf {
    let out = harness(dir, &["run", exp.to_str().expect("path"), "--no-progress"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let runs = dir.join("harness-runs/runs").join(name);
    let mut ids: Vec<_> = std::fs::read_dir(&runs)
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(ids.len(), 1);
    ids.remove(0)
}

fn stats(run: &Path) -> serde_json::Value {
    let p = run.join("cells").join(CELL).join("stats.json");
    serde_json::from_slice(&std::fs::read(&p).expect("stats.json")).expect("json")
}

fn p50(stats: &serde_json::Value, dist: &str) -> f64 {
    let percentiles = stats["distributions"][dist]["percentiles"]
        .as_array()
        .unwrap_or_else(|| panic!("{dist} in {stats}"));
    percentiles
        .iter()
        .find(|p| p[0] == 50)
        .and_then(|p| p[1].as_f64())
        .expect("p50")
}

#[test]
fn aiperf_runs_a_cell_and_agrees_with_the_built_in_load_generator() {
    let aiperf = deps().join("aiperf/bin/aiperf");
    assert!(
        aiperf.is_file(),
        "{} is missing: run scripts/test-deps.sh",
        aiperf.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let steps = format!(
        "steps:\n  - kind: aiperf\n    program: {}\n    args: [--no-server-metrics]\n",
        aiperf.display()
    );
    let theirs = run(d, &experiment(d, "aiperf", &steps), "aiperf");
    let ours = run(d, &experiment(d, "native", ""), "native");

    let a = stats(&theirs);
    assert!(
        a["tool"].as_str().is_some_and(|t| t.starts_with("aiperf ")),
        "{}",
        a["tool"]
    );
    assert_eq!(a["requests"], 40, "aiperf's warmup is kept apart");
    assert_eq!(a["warmup_requests"], 4);
    assert_eq!(a["succeeded"], 40);
    assert_eq!(a["output_token_sources"]["usage"], 40);
    // aiperf's raw export is kept beside the imported records.
    let raw = theirs
        .join("cells")
        .join(CELL)
        .join("artifacts/aiperf/out/profile_export.jsonl");
    assert!(raw.is_file(), "{}", raw.display());
    assert!(
        theirs
            .join("cells")
            .join(CELL)
            .join("records.parquet")
            .is_file()
    );

    let b = stats(&ours);
    for dist in ["ttft", "itl"] {
        let (x, y) = (p50(&a, dist), p50(&b, dist));
        let rel = (x - y).abs() / y;
        println!(
            "{dist} p50: aiperf {x:.3} ms, harness {y:.3} ms ({:+.1}%)",
            rel * 100.0
        );
        assert!(rel < 0.08, "{dist} p50: aiperf {x} ms vs harness {y} ms");
    }
    // Both near the truth the mock was told (50 ms, 10 ms).
    assert!((p50(&a, "ttft") - 50.0).abs() < 10.0);
    assert!((p50(&a, "itl") - 10.0).abs() < 1.5);

    // `harness show` reads the imported run like any other.
    let id = theirs
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    let shown = harness(d, &["show", &id]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert!(
        text(&shown.stdout).contains(CELL),
        "{}",
        text(&shown.stdout)
    );
}

#[test]
fn a_command_steps_export_becomes_the_cells_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fixture = repo().join("harness-analytics/tests/fixtures/import/vllm-bench/result.json");
    let steps = format!(
        "steps:\n  - kind: command\n    name: vllm-bench\n    \
         run: [sh, -c, \"test {{model}} = harness-mock && cp {} {{out}}/result.json\"]\n    \
         results: {{import: vllm-bench, path: result.json}}\n",
        fixture.display()
    );
    let exp = experiment(d, "imported", &steps);
    let run = run(d, &exp, "imported");
    let s = stats(&run);
    assert_eq!(s["tool"], "vllm bench serve");
    assert_eq!(
        (s["requests"].as_u64(), s["succeeded"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(s["errors"]["disconnect"], 1);
    assert!((p50(&s, "ttft") - 51.0).abs() < 1e-9);
    let kept = run
        .join("cells")
        .join(CELL)
        .join("artifacts/vllm-bench/out/result.json");
    assert!(kept.is_file(), "the export itself is kept");
    let summary = harness(
        d,
        &[
            "show",
            run.file_name().expect("id").to_str().expect("id"),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&summary.stdout).expect("json");
    let m = &v["cells"][0]["metrics"];
    assert_eq!(m["reported.ttft.mean"], 51.0, "vLLM's own figure: {m}");
}

#[test]
fn bad_results_and_missing_exports_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let steps = "steps:\n  - kind: command\n    name: t\n    run: [\"true\"]\n    \
                 results: {import: locust}\n";
    let exp = experiment(d, "bad", steps);
    let out = harness(d, &["validate", exp.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("steps[0].results") && err.contains("genai-perf"),
        "{err}"
    );

    // The command writes nothing: the cell fails naming the missing export; the sweep
    // still ends with its report.
    let steps = "steps:\n  - kind: command\n    name: t\n    run: [\"true\"]\n    \
                 results: {import: aiperf}\n";
    let exp = experiment(d, "empty", steps);
    let out = harness(d, &["run", exp.to_str().expect("path"), "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("profile_export.jsonl") && all.contains("{out}"),
        "{all}"
    );
}

/// aiperf measures what the experiment says or refuses it: the dataset and the API key
/// reach it, and a built-in tokenizer it cannot use is a located error at load time.
#[test]
fn aiperf_gets_the_dataset_and_api_key_and_refuses_a_builtin_tokenizer() {
    let aiperf = deps().join("aiperf/bin/aiperf");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let steps = format!(
        "steps:\n  - kind: aiperf\n    program: {}\n    args: [--no-server-metrics]\n",
        aiperf.display()
    );

    // A tiktoken encoding: aiperf would count tokens with another tokenizer.
    let body = std::fs::read_to_string(experiment(d, "builtin", &steps)).expect("read");
    let tokenizer_line = body
        .lines()
        .find(|l| l.starts_with("tokenizer:"))
        .expect("tokenizer line")
        .to_owned();
    let builtin = body.replace(&tokenizer_line, "tokenizer: {name: cl100k_base}");
    let p = d.join("builtin.yaml");
    std::fs::write(&p, builtin).expect("write");
    let out = harness(d, &["validate", p.to_str().expect("path")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("builtin.yaml:9")
            && err.contains("steps[0].tokenizer")
            && err.contains("cl100k_base"),
        "{err}"
    );

    // A dataset and an API key from the environment.
    let data = d.join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"harness-dataset-prompt-one\", \"output_tokens\": 3}\n\
         {\"prompt\": \"harness-dataset-prompt-two\"}\n",
    )
    .expect("write");
    let body = std::fs::read_to_string(experiment(d, "data", &steps))
        .expect("read")
        .replace(
            "load: {requests: 40,",
            &format!(
                "load: {{api_key_env: BENCH_TEST_KEY, dataset: {}, requests: 40,",
                data.display()
            ),
        );
    let p = d.join("data.yaml");
    std::fs::write(&p, body).expect("write");
    let key = "sk-bench-test-key-5e1f0a";
    let out = harness_with_env(
        d,
        &["run", p.to_str().expect("path"), "--no-progress"],
        &[("BENCH_TEST_KEY", std::ffi::OsStr::new(key))],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let runs = d.join("harness-runs/runs/data");
    let run = std::fs::read_dir(&runs)
        .expect("runs")
        .next()
        .expect("a run")
        .expect("entry")
        .path();
    let out_dir = run.join("cells").join(CELL).join("artifacts/aiperf/out");
    // What aiperf sent: our prompts, with their output lengths, and the bearer key.
    let inputs = std::fs::read_to_string(out_dir.join("inputs.json")).unwrap_or_else(|e| {
        let listed: Vec<_> = std::fs::read_dir(&out_dir)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        panic!("inputs.json: {e}; {listed:?}")
    });
    assert!(
        inputs.contains("harness-dataset-prompt-one")
            && inputs.contains("harness-dataset-prompt-two"),
        "{inputs:.400}"
    );
    let a = stats(&run);
    assert_eq!(a["succeeded"], 40);
    // The first prompt asks for 3 tokens, the second for the cell's 16.
    let osl = &a["distributions"]["output_sequence_length"];
    assert_eq!(
        (osl["min"].as_f64(), osl["max"].as_f64()),
        (Some(3.0), Some(16.0)),
        "{osl}"
    );
    // The key reached aiperf but no stored object.
    for entry in walk(&run) {
        let bytes = std::fs::read(&entry).expect("read");
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the API key is in {}",
            entry.display()
        );
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
