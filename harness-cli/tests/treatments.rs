//! Treatments and the SLO search from the command line: the README's example against the
//! mock (a known answer), and a real llama-server deployed once per treatment.

mod common;

use common::{deps, harness, repo, text};

/// These runs measure latency against SLOs: one at a time, so that they do not load the
/// machine for each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
    let _one = serial();
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
    let _one = serial();
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

/// Treatments of one run compare like runs: `RUN@TREATMENT` takes one treatment's cells,
/// matched with the other's by the rest of their ids, with deltas and gates.
#[test]
fn treatments_of_one_run_compare_like_runs() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "name: two-speeds\nmodel: {name: m}\nconcurrency: [1, 2]\n\
                benchmark: {isl_osl: [[32, 8]]}\nload: {requests: 24}\n\
                deployment: {mock: {ttft_ms: 5, itl_ms: 1}}\n\
                treatments:\n  fast: {}\n  slow: {deployment: {mock: {ttft_ms: 40}}}\n";
    let file = dir.path().join("two.yaml");
    std::fs::write(&file, yaml).expect("write");
    let out = harness(
        dir.path(),
        &["run", file.to_str().expect("path"), "--no-progress"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = run_id(&text(&out.stderr));
    let (fast, slow) = (format!("{run}@fast"), format!("{run}@slow"));
    let out = harness(
        dir.path(),
        &[
            "compare",
            &fast,
            &slow,
            "--json",
            "--metric",
            "ttft.p50",
            "--fail-if",
            "ttft.p50 > +50%",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the gate trips: {}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["baseline"], format!("two-speeds/{run}@fast"));
    let cells = v["cells"].as_array().expect("cells");
    let ids: Vec<&str> = cells.iter().filter_map(|c| c["cell"].as_str()).collect();
    assert_eq!(
        ids,
        ["concurrency=1,isl=32,osl=8", "concurrency=2,isl=32,osl=8"]
    );
    for c in cells {
        let m = &c["metrics"][0];
        assert_eq!(m["metric"], "ttft.p50");
        let (base, value) = (
            m["base"].as_f64().expect("base"),
            m["value"].as_f64().expect("value"),
        );
        assert!(base >= 5.0 && value >= 40.0 && value > base, "{m}");
        assert_eq!(m["significant"], true, "{m}");
    }
    let err = harness(dir.path(), &["compare", &fast, &format!("{run}@nope")]);
    assert_eq!(err.status.code(), Some(2));
    assert!(
        text(&err.stderr).contains("no cell of this treatment"),
        "{}",
        text(&err.stderr)
    );
}
