//! The `harness` binary end to end: validate, run, a failing cell, SIGINT/SIGTERM, and
//! `kill -9` followed by `--resume`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn harness() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.env_remove("HARNESS_LOG");
    cmd
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    harness()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("harness runs")
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

use harness_core::testkit::process_alive as alive;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("harness did not exit");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The only run folder of experiment `exp` under `dir/harness-runs`.
fn only_run(dir: &Path, exp: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("harness-runs/runs").join(exp))
        .expect("runs folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("json")
}

#[test]
fn validate_lists_the_33_cells_of_the_proposal() {
    let out = run_in(&repo(), &["validate", "experiments/proposal.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("experiment `blueprint-name`: 33 cells"),
        "{stdout}"
    );
    let ids: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("concurrency="))
        .collect();
    assert_eq!(ids.len(), 33);
    assert!(
        ids[0].ends_with("concurrency=1,isl=8192,osl=1024"),
        "{}",
        ids[0]
    );
    assert!(
        ids[32].ends_with("concurrency=1024,isl=1024,osl=8192"),
        "{}",
        ids[32]
    );
}

#[test]
fn validate_rejects_bad_input_with_exit_code_2_and_a_located_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(
        dir.path(),
        "bad.yaml",
        "name: t\nmodel: {name: m}\nconcurrency: [1, 0]\nbenchmark: {isl_osl: [[1, 1]]}\n",
    );
    let out = run_in(dir.path(), &["validate", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:") && err.contains("concurrency[1]"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A bad override, a missing file, and a bad step are all exit 2 or a clear error.
    let good = write(
        dir.path(),
        "good.yaml",
        "name: t\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[1, 1]]}\n",
    );
    let out = run_in(
        dir.path(),
        &["validate", "good.yaml", "--set", "policy.retries=99"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--set policy.retries=99"),
        "{}",
        text(&out.stderr)
    );
    let out = run_in(dir.path(), &["validate", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.yaml"));
    let _ = bad;
    let _ = good;
}

#[test]
fn init_prints_a_valid_default_experiment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(dir.path(), &["init"]);
    assert!(out.status.success());
    write(dir.path(), "default.yaml", &text(&out.stdout));
    let out = run_in(dir.path(), &["validate", "default.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn run_sweeps_the_quickstart_stores_the_run_and_prints_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = repo().join("experiments/quickstart.yaml");
    let out = run_in(dir.path(), &["run", exp.to_str().expect("path")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for id in [
        "concurrency=1,isl=128,osl=32",
        "concurrency=16,isl=512,osl=64",
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(id) && l.contains(" ok ")),
            "{id} ok in:\n{stdout}"
        );
    }
    assert!(stdout.contains("6/6 cells succeeded"), "{stdout}");
    assert!(
        stdout.contains("report: /") && stdout.contains("/report/index.html"),
        "the run says where its report is: {stdout}"
    );
    assert!(
        stdout.contains("TTFT p50") && stdout.contains("out tok/s"),
        "{stdout}"
    );
    assert!(!stderr.contains("WARN"), "{stderr}");
    let run = only_run(dir.path(), "quickstart");
    let manifest = json(&run.join("manifest.json"));
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["plan"].as_array().map(Vec::len), Some(6));
    assert_eq!(
        manifest["experiment"]["deployment"]["mock"]["ttft_ms"],
        20.0
    );
    // Every cell has its records and statistics; TTFT is near the mock's 20 ms (generous).
    for row in json(&run.join("summary.json")).as_array().expect("rows") {
        let cell = row["cell"].as_str().expect("cell");
        let records =
            std::fs::read(run.join("cells").join(cell).join("records.parquet")).expect("records");
        let batch = harness_analytics::io::from_parquet(records.into()).expect("parquet");
        assert_eq!(batch.num_rows(), 48, "{cell}");
        let ttft = row["metrics"]["ttft.p50"].as_f64().expect("ttft");
        assert!((19.0..200.0).contains(&ttft), "{cell}: ttft p50 {ttft}");
        assert_eq!(row["metrics"]["errors"], 0.0);
        let stats = json(&run.join("cells").join(cell).join("stats.json"));
        assert_eq!(stats["requests"], 48);
    }
    // The run's report and summary table.
    for f in [
        "summary.parquet",
        "report/index.html",
        "report/report.md",
        "report/charts/ttft.svg",
        "report/charts/pareto.png",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    assert!(run.join("experiment.yaml").exists());
    assert!(
        run.join("teardown/artifacts/undeploy/workload.log")
            .exists()
    );
    assert_eq!(
        json(&run.join("summary.json")).as_array().map(Vec::len),
        Some(6)
    );
}

#[test]
fn a_failing_cell_is_isolated_and_the_exit_code_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "exp.yaml",
        "name: iso\nmodel: {name: m}\nconcurrency: [1, 2, 4]\nbenchmark: {isl_osl: [[8, 2]]}\n\
         steps:\n  - kind: command\n    run: [sh, -c, 'test {concurrency} -ne 2 || { echo refusing >&2; exit 9; }']\n",
    );
    let out = run_in(
        dir.path(),
        &["run", "exp.yaml", "--store", "file://./elsewhere"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        dir.path().join("elsewhere/runs/iso").is_dir(),
        "--store is honoured"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("concurrency=2,") && l.contains("FAILED") && l.contains("code 9")),
        "{stdout}"
    );
    assert!(
        stdout.lines().filter(|l| l.contains(" ok ")).count() == 2,
        "{stdout}"
    );
    assert!(
        stdout.contains("resume with: harness run --resume")
            && stdout.contains("--store file://./elsewhere"),
        "the resume hint names the store: {stdout}"
    );
}

/// An experiment whose deployment and per-cell step record their pids and then block.
fn blocking_experiment(dir: &Path) -> PathBuf {
    let dep = dir.join("deployment.pid");
    let steps = dir.join("steps.pid");
    write(
        dir,
        "block.yaml",
        &format!(
            "name: block\nmodel: {{name: m}}\nconcurrency: [1, 2]\nbenchmark: {{isl_osl: [[8, 2]]}}\n\
             deployment:\n  command: [sh, -c, 'echo $$ > {dep}; exec python3 -m http.server {{port}} --bind 127.0.0.1']\n  health: /\n\
             steps:\n  - kind: command\n    name: block\n    run: [sh, -c, 'sleep 300 & echo $! >> {steps}; wait']\n",
            dep = dep.display(),
            steps = steps.display()
        ),
    )
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn sigint_or_sigterm_stops_the_run_runs_teardown_and_leaves_no_child_behind() {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let dir = tempfile::tempdir().expect("tempdir");
        let exp = blocking_experiment(dir.path());
        let mut child = harness()
            .current_dir(dir.path())
            .args(["run", exp.to_str().expect("path")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let steps = dir.path().join("steps.pid");
        wait_for("the first cell's step to start", || {
            !read_pids(&steps).is_empty()
        });
        let deployment = read_pids(&dir.path().join("deployment.pid"))[0];
        let step = read_pids(&steps)[0];
        assert!(alive(deployment) && alive(step));

        kill(Pid::from_raw(child.id() as i32), signal).expect("signal");
        let status = wait_exit(&mut child);
        let out = child.wait_with_output().expect("output");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(status.code(), Some(130), "{signal}: {stdout}\n{stderr}");
        assert!(stderr.contains(&format!("{signal}: stopping")), "{stderr}");
        wait_for("the deployment to be gone", || !alive(deployment));
        wait_for("the step's process to be gone", || !alive(step));
        assert_eq!(
            read_pids(&steps).len(),
            1,
            "{signal}: no further cell started"
        );

        let run = only_run(dir.path(), "block");
        assert_eq!(json(&run.join("manifest.json"))["status"], "cancelled");
        assert!(
            run.join("teardown/artifacts/undeploy/workload.log")
                .exists(),
            "teardown ran"
        );
        let journal = json(&run.join("journal/concurrency=1,isl=8,osl=2.json"));
        assert_eq!(journal["status"], "cancelled");
        assert!(stdout.contains("resume with:"), "{stdout}");
    }
}

#[test]
fn kill_9_then_resume_completes_the_remaining_cells_without_redoing_finished_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marks = dir.path().join("marks.txt");
    let gate = dir.path().join("gate");
    let deployments = dir.path().join("deployments.pid");
    // Cell 3 blocks until the gate file exists, so the kill lands while it runs.
    write(
        dir.path(),
        "resume.yaml",
        &format!(
            "name: resume\nmodel: {{name: m}}\nconcurrency: [1, 2, 3, 4]\nbenchmark: {{isl_osl: [[8, 2]]}}\n\
             deployment:\n  command: [sh, -c, 'echo $$ >> {deployments}; exec python3 -m http.server {{port}} --bind 127.0.0.1']\n  health: /\n\
             steps:\n  - kind: command\n    name: mark\n    run: [sh, -c, 'echo {{cell}} >> {marks}; if [ {{concurrency}} -eq 3 ]; then while [ ! -e {gate} ]; do sleep 0.05; done; fi']\n",
            marks = marks.display(),
            gate = gate.display(),
            deployments = deployments.display(),
        ),
    );
    let mut child = harness()
        .current_dir(dir.path())
        .args(["run", "resume.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = || {
        std::fs::read_to_string(&marks)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for("cell 3 to start", || lines() == 3);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill -9");
    wait_exit(&mut child);

    let run = only_run(dir.path(), "resume");
    let run_id = run
        .file_name()
        .and_then(|n| n.to_str())
        .expect("run id")
        .to_owned();
    assert_eq!(
        json(&run.join("manifest.json"))["status"],
        "running",
        "a killed run stays `running`"
    );
    assert_eq!(
        json(&run.join("journal/concurrency=3,isl=8,osl=2.json"))["status"],
        "running"
    );
    assert_eq!(
        json(&run.join("journal/concurrency=4,isl=8,osl=2.json"))["status"],
        "pending"
    );

    std::fs::write(&gate, "").expect("open the gate");
    let out = run_in(dir.path(), &["run", "resume.yaml", "--resume", &run_id]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let marks = std::fs::read_to_string(&marks).expect("marks");
    let count = |cell: &str| marks.lines().filter(|l| *l == cell).count();
    assert_eq!(
        count("concurrency=1,isl=8,osl=2"),
        1,
        "finished cells are not redone:\n{marks}"
    );
    assert_eq!(count("concurrency=2,isl=8,osl=2"), 1, "{marks}");
    assert_eq!(
        count("concurrency=3,isl=8,osl=2"),
        2,
        "the interrupted cell runs again:\n{marks}"
    );
    assert_eq!(count("concurrency=4,isl=8,osl=2"), 1, "{marks}");
    let manifest = json(&run.join("manifest.json"));
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["sessions"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        json(&run.join("journal/concurrency=1,isl=8,osl=2.json"))["attempts"],
        1
    );
    assert_eq!(
        json(&run.join("journal/concurrency=3,isl=8,osl=2.json"))["attempts"],
        2
    );

    // Resuming a run that does not exist is a clear input error.
    let out = run_in(
        dir.path(),
        &["run", "resume.yaml", "--resume", "no-such-run"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no run `no-such-run`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn harness_mock_serves_openai_streams_and_stops_on_sigterm() {
    let mut child = harness()
        .args([
            "mock",
            "--port",
            "0",
            "--ttft-ms",
            "1",
            "--output-tokens",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("banner");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("url")
        .to_owned();
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let body = r#"{"model":"m","messages":[{"role":"user","content":"a b c"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut stream, req.as_bytes()).expect("write");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        answer.matches("\"content\":\"tok \"").count(),
        3,
        "{answer}"
    );
    assert!(
        answer.contains("\"prompt_tokens\":3") && answer.contains("data: [DONE]"),
        "{answer}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("sigterm");
    assert!(wait_exit(&mut child).success());
    // Bad configurations are input errors.
    let out = harness()
        .args(["mock", "--error-rate", "1.5"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
