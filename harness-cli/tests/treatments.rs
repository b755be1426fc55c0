//! Treatments and the SLO search from the command line: the README's example against the
//! mock (a known answer), and a real llama-server deployed once per treatment.

mod common;

use common::{deps, harness, repo, text};

/// The run id of a `harness run` output (`run <id> of ...` on stderr).
fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split_whitespace().next())
        .expect("run id")
        .to_owned()
}

/// `harness show --json` of a run, parsed.
fn show(dir: &std::path::Path, run: &str) -> serde_json::Value {
    let out = harness(dir, &["show", run, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The example of the README finds the mock's 4 and 16 slots, prints the search table, and
/// `show --json` reads the result back under `search`.
#[test]
fn the_readme_search_finds_4_and_16_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = repo().join("experiments/treatments-search.yaml");
    let out = harness(
        dir.path(),
        &["run", file.to_str().expect("path"), "--no-progress"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("SLO search:"), "{stdout}");
    let shown = show(dir.path(), &run_id(&stderr));
    let found: Vec<(String, f64, f64)> = shown["search"]
        .as_array()
        .expect("search")
        .iter()
        .map(|s| {
            (
                s["treatment"].as_str().unwrap_or_default().to_owned(),
                s["best"].as_f64().unwrap_or(f64::NAN),
                s["first_fail"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("slots-4".to_owned(), 4.0, 5.0),
            ("slots-16".to_owned(), 16.0, 17.0)
        ],
        "{}",
        shown["search"]
    );
    // Skipped candidates are not in the table.
    assert!(!stdout.contains("skipped"), "{stdout}");
}

/// Two treatments of a real llama-server (`--parallel 1` and `2`, one CPU thread each),
/// each deployed once from the command line with its `{parallel}` filled in, a short
/// concurrency search under a TTFT SLO, the report written, and `show --json` read back.
/// The found values depend on the machine, so the test checks the search's shape.
#[test]
fn a_search_over_two_llama_server_treatments() {
    let llama = deps().join("llama");
    let (server, model) = (
        llama.join("llama-server"),
        llama.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    assert!(
        server.exists() && model.exists(),
        "llama-server or the model is missing under {}: run scripts/test-deps.sh first",
        llama.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "name: llama-treatments\n\
         model: {{name: smollm2-135m, path: '{}'}}\n\
         benchmark: {{isl_osl: [[16, 8]]}}\n\
         deployment:\n  \
           command: ['{}', -m, '{{model}}', --host, 127.0.0.1, --port, '{{port}}', --parallel, '{{parallel}}', --threads, '1', --no-warmup]\n  \
           health: /health\n\
         treatments:\n  p1: {{vars: {{parallel: 1}}}}\n  p2: {{vars: {{parallel: 2}}}}\n\
         search: {{axis: concurrency, min: 1, max: 4, slo: {{ttft.p99: 2s}}, max_probes: 4}}\n\
         load: {{requests: 8, extra_body: {{ignore_eos: true}}, request_timeout: 2m}}\n\
         policy: {{ready_timeout: 2m}}\n",
        model.display(),
        server.display()
    );
    let file = dir.path().join("llama.yaml");
    std::fs::write(&file, yaml).expect("write");
    let out = harness(
        dir.path(),
        &["run", file.to_str().expect("path"), "--no-progress"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let run = run_id(&stderr);
    let shown = show(dir.path(), &run);
    let searches = shown["search"].as_array().expect("search");
    let treatments: Vec<&str> = searches
        .iter()
        .filter_map(|s| s["treatment"].as_str())
        .collect();
    assert_eq!(treatments, ["p1", "p2"]);
    let statuses = &shown["manifest"]["cell_status"];
    for s in searches {
        assert!(s["error"].is_null(), "{s}");
        let probes = s["probes"].as_array().expect("probes");
        assert!(!probes.is_empty() && probes.len() <= 4, "{s}");
        for p in probes {
            let cell = p["cell"].as_str().expect("cell");
            assert_eq!(statuses[cell], "succeeded", "{cell}");
            assert!(p["metrics"]["ttft.p99"].as_f64().is_some(), "{p}");
            // The verdict agrees with the measured value and the limit (2 s).
            let passed = p["verdict"] == "pass";
            let ttft = p["metrics"]["ttft.p99"].as_f64().unwrap_or(f64::NAN);
            assert_eq!(passed, ttft <= 2000.0, "{p}");
        }
        // The best value passed and the first failing one failed.
        if let Some(best) = s["best"].as_f64() {
            assert!(
                probes
                    .iter()
                    .any(|p| p["value"].as_f64() == Some(best) && p["verdict"] == "pass"),
                "{s}"
            );
        }
    }
    // Each treatment's resolved deployment is stored: its own `--parallel`, the model's path.
    let root = dir
        .path()
        .join("harness-runs/runs/llama-treatments")
        .join(&run);
    let resolved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("treatments.json")).expect("treatments.json"),
    )
    .expect("json");
    for (i, parallel) in ["1", "2"].iter().enumerate() {
        let command: Vec<&str> = resolved[i]["deployment"]["command"]
            .as_array()
            .expect("command")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let at = command
            .iter()
            .position(|a| *a == "--parallel")
            .expect("--parallel");
        assert_eq!(command[at + 1], *parallel, "{command:?}");
        assert!(
            command.contains(&model.to_str().expect("path")),
            "{command:?}"
        );
        assert!(
            command.contains(&"{port}"),
            "the port is the backend's: {command:?}"
        );
    }
    let report = root.join("report/index.html");
    assert!(report.exists(), "{}", report.display());
}
