//! The `custom_harness` example end to end, as a downstream team would use its binary: a
//! sweep with its own step kind, killed mid-sweep, resumed, and read back with
//! `show --json`; and a located error for the kind's parameter.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The example's binary, built by cargo before this test.
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_custom_harness"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .env_remove("HARNESS_LOG")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("custom_harness runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An echo experiment: the mock answers `prompt` with itself after `ttft_ms`.
fn experiment(dir: &Path, prompt: &str, ttft_ms: u32) -> PathBuf {
    let answers = dir.join("answers.jsonl");
    std::fs::write(
        &answers,
        format!("{{\"prompt\": \"{prompt}\", \"answer\": \"{prompt}\"}}\n"),
    )
    .expect("write");
    let exp = dir.join("echo.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: echo\nmodel: {{name: harness-mock}}\nconcurrency: [1, 2, 3, 4, 5, 6]\n\
             benchmark: {{isl_osl: [[16, 8]]}}\n\
             deployment: {{mock: {{ttft_ms: {ttft_ms}, itl_ms: 1, answers: {}}}}}\n\
             steps:\n  - kind: echo-check\n    prompt: \"{prompt}\"\n",
            answers.display()
        ),
    )
    .expect("write");
    exp
}

#[test]
fn a_custom_step_kind_runs_is_killed_resumes_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Each cell waits 400 ms for its echo: time to kill the sweep after its first cell.
    let exp = experiment(d, "echo this back", 400);
    let mut child = Command::new(binary())
        .env_remove("HARNESS_LOG")
        .current_dir(d)
        .args(["run", exp.to_str().expect("path"), "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let runs = d.join("harness-runs/runs/echo");
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_dir = loop {
        let found = std::fs::read_dir(&runs).ok().and_then(|mut r| r.next());
        // The first cell counts as done once its journal entry says so.
        if let Some(Ok(entry)) = found
            && std::fs::read_to_string(entry.path().join("journal/concurrency=1,isl=16,osl=8.json"))
                .is_ok_and(|j| j.contains("\"succeeded\""))
        {
            break entry.path();
        }
        assert!(Instant::now() < deadline, "the first cell never finished");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let done = std::fs::read_dir(run_dir.join("journal"))
        .expect("journal")
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|j| j.contains("\"succeeded\"")))
        .count();
    assert!(
        done < 6,
        "the sweep was killed in the middle, not after it ended"
    );
    let id = run_dir
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    let first = run_dir.join("cells/concurrency=1,isl=16,osl=8/summary.json");
    let before = std::fs::read(&first).expect("summary");

    let resumed = run(d, &["run", "--resume", &id, "--no-progress"]);
    assert!(
        resumed.status.success(),
        "{}\n{}",
        text(&resumed.stdout),
        text(&resumed.stderr)
    );
    assert_eq!(
        std::fs::read(&first).expect("summary"),
        before,
        "the finished cell was not run again"
    );

    let shown = run(d, &["show", &id, "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    let cells = v["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 6);
    for c in cells {
        assert_eq!(c["status"], "succeeded", "{c}");
        assert_eq!(c["metrics"]["echo.ok"], 1.0, "{c}");
    }
    assert_eq!(v["manifest"]["status"], "succeeded");
}

#[test]
fn a_bad_parameter_of_the_custom_kind_is_a_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let exp = experiment(d, "x", 1);
    let body = std::fs::read_to_string(&exp)
        .expect("read")
        .replace("prompt: \"x\"", "prompt: \"  \"");
    std::fs::write(&exp, body).expect("write");
    let out = run(d, &["validate", exp.to_str().expect("path")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("echo.yaml:7") && err.contains("steps[0].prompt") && err.contains("is empty"),
        "{err}"
    );
    // An unknown parameter, as serde names it, at the step's line.
    let body = std::fs::read_to_string(&exp)
        .expect("read")
        .replace("prompt: \"  \"", "promt: \"x\"");
    std::fs::write(&exp, body).expect("write");
    let out = run(d, &["validate", exp.to_str().expect("path")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("promt") && err.contains("echo.yaml:7"),
        "{err}"
    );
}
