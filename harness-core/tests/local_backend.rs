//! `LocalBackend` with real child processes: readiness, logs, teardown of whole process
//! groups, and the deploy and command steps driven by the runner.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness_core::steps::DeploymentSteps;
use harness_core::testkit::{BackendFixtures, backend_conformance, run_new};
use harness_core::*;

fn sh(name: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec::process(name, ["sh", "-c", script])
}

use harness_core::testkit::process_alive as alive;

async fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no pid file at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_dead(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn local_backend_passes_the_backend_conformance_suite() {
    let backend = LocalBackend::new().expect("backend");
    backend_conformance(&backend, BackendFixtures::local_processes()).await;
    assert_eq!(
        backend.live_workloads(),
        0,
        "everything launched was torn down"
    );
}

#[tokio::test]
async fn a_crash_reports_the_exit_code_and_the_output() {
    let backend = LocalBackend::new().expect("backend");
    let w = backend
        .launch(
            &sh("crasher", "echo out-line; echo err-line >&2; exit 7").serving(0, Readiness::Tcp),
        )
        .await
        .expect("launch");
    let err = backend
        .wait_ready(&w, Duration::from_secs(60), &CancellationToken::new())
        .await
        .expect_err("crashes");
    let text = err.to_string();
    assert!(text.contains("exited with code 7"), "{text}");
    assert!(
        text.contains("out-line") && text.contains("err-line"),
        "{text}"
    );
    backend.teardown(&w).await.expect("teardown");
}

#[tokio::test]
async fn a_missing_program_is_a_clear_launch_error() {
    let backend = LocalBackend::new().expect("backend");
    let err = backend
        .launch(&WorkloadSpec::process("x", ["/no/such/program-harness"]))
        .await
        .expect_err("no such program");
    assert!(
        err.to_string().contains("/no/such/program-harness"),
        "{err}"
    );
}

#[tokio::test]
async fn teardown_kills_the_whole_process_group_including_grandchildren() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("grandchild.pid");
    let backend = LocalBackend::new().expect("backend");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let w = backend
        .launch(&sh("parent", &script))
        .await
        .expect("launch");
    let grandchild = read_pid(&pidfile).await;
    assert!(alive(grandchild));
    backend.teardown(&w).await.expect("teardown");
    assert!(
        wait_dead(grandchild).await,
        "grandchild {grandchild} survived teardown"
    );
    backend.teardown(&w).await.expect("idempotent");
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("stubborn.pid");
    let backend = LocalBackend::new()
        .expect("backend")
        .with_grace_period(Duration::from_millis(300));
    let script = format!(
        "trap '' TERM; echo $$ > {}; while :; do sleep 1; done",
        pidfile.display()
    );
    let w = backend
        .launch(&sh("stubborn", &script))
        .await
        .expect("launch");
    let pid = read_pid(&pidfile).await;
    backend.teardown(&w).await.expect("teardown");
    assert!(
        wait_dead(pid).await,
        "a SIGTERM-ignoring child must be SIGKILLed"
    );
}

#[tokio::test]
async fn dropping_the_backend_kills_what_it_still_owns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("orphan.pid");
    let backend = LocalBackend::new().expect("backend");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    backend
        .launch(&sh("orphan", &script))
        .await
        .expect("launch");
    let grandchild = read_pid(&pidfile).await;
    drop(backend);
    assert!(
        wait_dead(grandchild).await,
        "dropping the backend must kill its process groups"
    );
}

#[tokio::test]
async fn logs_capture_stdout_and_stderr_of_a_running_workload() {
    let backend = LocalBackend::new().expect("backend");
    let w = backend
        .launch(&sh(
            "talker",
            "echo to-stdout; echo to-stderr >&2; sleep 300",
        ))
        .await
        .expect("launch");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = String::from_utf8_lossy(&backend.logs(&w).await.expect("logs")).into_owned();
        if log.contains("to-stdout") && log.contains("to-stderr") {
            break;
        }
        assert!(Instant::now() < deadline, "log so far: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend.teardown(&w).await.expect("teardown");
}

fn experiment(yaml_tail: &str) -> Arc<Experiment> {
    let yaml = format!(
        "name: local\nmodel: {{name: m}}\nconcurrency: [1, 2]\nbenchmark: {{isl_osl: [[8, 2]]}}\n{yaml_tail}"
    );
    Arc::new(Experiment::from_yaml_str(&yaml, "local.yaml").expect("experiment"))
}

async fn run_with(
    exp: &Arc<Experiment>,
    backend: LocalBackend,
    extra_cell_steps: Vec<Arc<dyn Step>>,
) -> (RunReport, MemoryStore) {
    let store = MemoryStore::new();
    let mut b = Pipeline::builder()
        .deployment(DeploymentSteps::for_experiment(exp, None).expect("deployment steps"));
    for s in extra_cell_steps {
        b = b.add(Stage::Cell, s, None);
    }
    let (report, _run) = run_new(
        exp.clone(),
        b.build().expect("pipeline"),
        Arc::new(backend),
        Arc::new(store.clone()),
    )
    .await;
    (report, store)
}

#[tokio::test]
async fn a_command_deployment_is_started_shared_with_steps_and_torn_down_with_its_log_kept() {
    let exp = experiment(
        "deployment:\n  command: [python3, -u, -m, http.server, '{port}', --bind, 127.0.0.1]\n  health: /\n",
    );
    let backend = LocalBackend::new().expect("backend");
    let probe: Arc<dyn Step> = Arc::new(step_fn("probe", |cx| async move {
        let ep = cx
            .resources()
            .get::<Endpoint>()
            .ok_or_else(|| Error::failed("probe", "no endpoint"))?;
        let status = harness_core::backend::http_get_status(&ep.url("/")).await?;
        Ok(StepOutput::new().metric("status", f64::from(status)))
    }));
    let (report, store) = run_with(&exp, backend.clone(), vec![probe]).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.cells[0].metrics.get("status"), Some(&200.0));
    assert_eq!(backend.live_workloads(), 0, "the deployment was torn down");
    let log = store
        .get(
            &ArtifactKey::new("runs/local/r1/teardown/artifacts/undeploy/workload.log")
                .expect("key"),
        )
        .await
        .expect("the deployment's log is kept");
    assert!(
        String::from_utf8_lossy(&log).contains("GET / HTTP/1.1"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_crashing_deployment_fails_every_cell_fast_with_its_reason() {
    let exp =
        experiment("deployment:\n  command: [sh, -c, 'echo CUDA out of memory >&2; exit 1']\n");
    let backend = LocalBackend::new().expect("backend");
    let start = Instant::now();
    let (report, _) = run_with(&exp, backend.clone(), vec![]).await;
    assert!(
        start.elapsed() < Duration::from_secs(300),
        "failed fast, not at the 10 min ready timeout"
    );
    assert_eq!(report.status, RunStatus::Failed);
    let setup = report.setup_error.expect("setup error");
    assert!(
        setup.contains("CUDA out of memory") && setup.contains("exited with code 1"),
        "{setup}"
    );
    assert_eq!(backend.live_workloads(), 0);
}

#[tokio::test]
async fn the_command_step_fills_cell_parameters_and_keeps_its_output() {
    let exp = experiment(
        "deployment: {command: [python3, -m, http.server, '{port}', --bind, 127.0.0.1]}\nsteps:\n  - kind: command\n    name: echo\n    run: [sh, -c, 'echo cell={cell} c={concurrency} isl={isl} ep={endpoint}; test {concurrency} -eq 1']\n",
    );
    let mut builder = Pipeline::builder();
    builder = StepRegistry::with_builtins()
        .build_into(&exp, "local.yaml", builder)
        .expect("steps");
    let step = builder.build().expect("pipeline").steps(Stage::Cell)[0]
        .step
        .clone();
    let backend = LocalBackend::new().expect("backend");
    let (report, store) = run_with(&exp, backend, vec![step]).await;
    assert_eq!(report.cells[0].status, CellStatus::Succeeded);
    assert_eq!(
        report.cells[1].status,
        CellStatus::Failed,
        "exit code 1 fails the cell"
    );
    assert!(
        report.cells[1]
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("exited with code 1"))
    );
    for (cell, c) in [
        ("concurrency=1,isl=8,osl=2", 1),
        ("concurrency=2,isl=8,osl=2", 2),
    ] {
        let key = ArtifactKey::new(format!(
            "runs/local/r1/cells/{cell}/artifacts/echo/output.log"
        ))
        .expect("key");
        let out =
            String::from_utf8_lossy(&store.get(&key).await.expect("output kept")).into_owned();
        assert!(
            out.starts_with(&format!("cell={cell} c={c} isl=8 ep=http://127.0.0.1:")),
            "{out}"
        );
    }
}
