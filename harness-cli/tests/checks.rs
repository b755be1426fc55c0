//! One experiment mixing the load generator, the functional checks and an accuracy check,
//! run with `harness run`, stored, and shown by `harness show`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The shipped experiment, with its data paths made absolute.
fn experiment(dir: &Path) -> PathBuf {
    let data = repo().join("experiments/data");
    let body = std::fs::read_to_string(repo().join("experiments/checks.yaml"))
        .expect("experiments/checks.yaml")
        .replace("experiments/data", &data.display().to_string());
    let p = dir.join("checks.yaml");
    std::fs::write(&p, body).expect("write");
    p
}

/// The functional checks a cell stored (`artifacts/functional/functional.json`).
fn functional_checks(cell_artifacts: &Path) -> Vec<serde_json::Value> {
    let path = cell_artifacts.join("functional/functional.json");
    serde_json::from_slice(&std::fs::read(&path).expect("functional.json")).expect("json")
}

fn only_run(dir: &Path) -> String {
    let runs: Vec<_> = std::fs::read_dir(dir.join("harness-runs/runs/checks"))
        .expect("runs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1);
    runs[0].clone()
}

#[test]
fn benchmark_functional_and_accuracy_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let exp = experiment(d);
    let out = harness(d, &["run", exp.to_str().expect("path"), "--no-progress"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(
        table.contains("accuracy") && table.contains("checks ok"),
        "{table}"
    );

    let run = only_run(d);
    let shown = harness(d, &["show", &run, "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    let m = &v["cells"][0]["metrics"];
    // The mock answers 16 of the 20 items right (by construction of its lookup file).
    assert_eq!(m["accuracy"], 0.8, "{m}");
    assert_eq!(m["accuracy.items"], 20.0);
    let (lo, hi) = (
        m["accuracy.ci95_low"].as_f64().expect("lo"),
        m["accuracy.ci95_high"].as_f64().expect("hi"),
    );
    assert!(
        (lo - 0.584).abs() < 0.01 && (hi - 0.919).abs() < 0.01,
        "Wilson 16/20: {lo} {hi}"
    );
    assert_eq!(m["functional.passed"], 9.0);
    assert_eq!(
        m["requests"], 32.0,
        "the load generator ran in the same cell"
    );
    let steps: Vec<&str> = v["cells"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(steps, ["benchmark", "functional", "accuracy"]);

    let cell = d
        .join("harness-runs/runs/checks")
        .join(&run)
        .join("cells/concurrency=4,isl=128,osl=32/artifacts");
    let acc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cell.join("accuracy/accuracy.json")).expect("accuracy.json"),
    )
    .expect("json");
    let wrong: Vec<&str> = acc["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["correct"] == false)
        .filter_map(|r| r["reply"].as_str())
        .collect();
    assert_eq!(wrong.len(), 4, "{wrong:?}");
    assert!(
        wrong.contains(&"Milan") && wrong.contains(&"(C)"),
        "{wrong:?}"
    );
    let checks = functional_checks(&cell);
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");

    // `harness show` prints the table with the checks' columns.
    let shown = harness(d, &["show", &run]);
    let t = text(&shown.stdout);
    assert!(t.contains("0.800") && t.contains("checks ok"), "{t}");
}

#[test]
fn a_failing_functional_check_fails_its_cell_and_keeps_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The mock lists another model than the experiment's: the first check fails.
    let exp = experiment(d);
    let body = std::fs::read_to_string(&exp).expect("read").replace(
        "    itl_ms: 1\n",
        "    itl_ms: 1\n    model: some-other-model\n",
    );
    std::fs::write(&exp, body).expect("write");
    let out = harness(d, &["run", exp.to_str().expect("path"), "--no-progress"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("1 of 9 failed; first: models lists"),
        "{stdout}"
    );
    let run = only_run(d);
    let checks = d
        .join("harness-runs/runs/checks")
        .join(&run)
        .join("cells/concurrency=4,isl=128,osl=32/artifacts/functional/functional.json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checks).expect("stored")).expect("json");
    let failed: Vec<&str> = v
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["passed"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(failed, ["models lists the model"]);
}

#[test]
fn a_broken_accuracy_dataset_is_refused_before_the_run_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"q\", \"expected\": \"1\", \"scorer\": \"numeric\"}\n{\"prompt\": \"q\", \"expected\": \"x\", \"scorer\": \"nope\"}\n").expect("write");
    let body = std::fs::read_to_string(experiment(d))
        .expect("read")
        .replace(
            &repo()
                .join("experiments/data/accuracy.jsonl")
                .display()
                .to_string(),
            &bad.display().to_string(),
        );
    let exp = d.join("bad.yaml");
    std::fs::write(&exp, body).expect("write");
    let out = harness(d, &["validate", exp.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("steps[2].dataset"),
        "{err}"
    );
}

#[test]
fn accuracy_and_functional_checks_use_the_experiments_completions_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let exp = experiment(d);
    let out = harness(
        d,
        &[
            "run",
            exp.to_str().expect("path"),
            "--no-progress",
            "--set",
            "endpoint_type=completions",
            "--set",
            "endpoint=/v1/completions",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = only_run(d);
    let cell = d
        .join("harness-runs/runs/checks")
        .join(&run)
        .join("cells/concurrency=4,isl=128,osl=32/artifacts");
    // The same answers, asked as text completions.
    let shown = harness(d, &["show", &run, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(v["cells"][0]["metrics"]["accuracy"], 0.8);
    let acc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cell.join("accuracy/accuracy.json")).expect("accuracy.json"),
    )
    .expect("json");
    assert!(
        acc["endpoint"]
            .as_str()
            .is_some_and(|u| u.ends_with("/v1/completions")),
        "{}",
        acc["endpoint"]
    );
    assert_eq!(acc["endpoint_type"], "completions");
    let checks = functional_checks(&cell);
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("chat")),
        "a completions endpoint is not asked for chat: {names:?}"
    );
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
}
