//! `App::run`: an experiment run from a program as `harness run` runs it (deployment, every
//! cell, report, stored results, resume), with steps of the program's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::core::{
    ArtifactStoreExt, CellStatus, Error, Experiment, RunStatus, Step, StepOutput, step_fn,
};
use harness::{App, RunOptions};

const EXPERIMENT: &str = "
name: library-run
model: {name: harness-mock}
concurrency: [1, 2]
benchmark: {isl_osl: [[16, 4]]}
load: {requests: 4}
deployment: {mock: {ttft_ms: 1, itl_ms: 1}}
";

fn experiment() -> Experiment {
    Experiment::from_yaml_str(EXPERIMENT, "library-run.yaml").expect("experiment")
}

fn store_of(dir: &tempfile::TempDir) -> String {
    format!("file://{}", dir.path().display())
}

/// Without steps of its own, the run benchmarks each cell against the mock served in this
/// process, stores records and statistics, and writes the report.
#[tokio::test]
async fn a_library_run_benchmarks_every_cell_and_stores_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = App::default()
        .run(
            experiment(),
            RunOptions::new().store(store_of(&dir)).run_id("lib-1"),
        )
        .await
        .expect("run");
    assert_eq!(outcome.report.status, RunStatus::Succeeded);
    assert_eq!(outcome.report.cells.len(), 2);
    for cell in &outcome.report.cells {
        assert_eq!(cell.status, CellStatus::Succeeded, "{cell:?}");
        let ttft = cell.metrics.get("ttft.p50").copied().expect("ttft.p50");
        assert!(ttft > 0.0, "{ttft}");
        let records = outcome.run.layout().cell_records(&cell.cell);
        assert!(outcome.run.store().get(&records).await.is_ok(), "{records}");
    }
    let index = outcome.run.layout().report("index.html").expect("key");
    assert!(outcome.run.store().get(&index).await.is_ok());
    assert_eq!(outcome.run.run_id(), "lib-1");
    assert!(outcome.spool.is_none(), "a local store has no spool");
}

/// A program's own step replaces the default benchmark on every cell; a failing cell is
/// recorded and the sweep goes on; resuming the run re-runs only that cell.
#[tokio::test]
async fn own_cell_steps_run_and_a_resumed_run_repeats_only_failed_cells() {
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = Arc::new(AtomicUsize::new(0));
    let fail_once = Arc::new(AtomicUsize::new(1));
    let step = {
        let (calls, fail_once) = (calls.clone(), fail_once.clone());
        step_fn("probe", move |cx| {
            let (calls, fail_once) = (calls.clone(), fail_once.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let cell = cx.cell().map(|c| c.id.to_string()).unwrap_or_default();
                // The cell at concurrency 2 fails the first time it runs.
                if cell.contains("concurrency=2")
                    && fail_once
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    return Err(Error::failed("probe", "first attempt fails"));
                }
                Ok(StepOutput::new().metric("probe.ok", 1.0))
            }
        })
    };
    let step: Arc<dyn Step> = Arc::new(step);
    let options = || {
        RunOptions::new()
            .store(store_of(&dir))
            .run_id("lib-2")
            .cell_step(step.clone())
    };
    let mut exp = experiment();
    exp.policy.retries = 0;
    let first = App::default()
        .run(exp.clone(), options())
        .await
        .expect("first run");
    assert_eq!(first.report.status, RunStatus::Partial);
    let statuses: Vec<_> = first.report.cells.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [CellStatus::Succeeded, CellStatus::Failed]);
    assert!(
        !first.report.cells[0].metrics.contains_key("ttft.p50"),
        "the default benchmark must not run when the program gives cell steps"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let resumed = App::default()
        .run(exp, options().resume())
        .await
        .expect("resumed run");
    assert_eq!(resumed.report.status, RunStatus::Succeeded);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "only the failed cell runs again"
    );
    let ran: Vec<_> = resumed.report.cells.iter().map(|c| c.ran).collect();
    assert_eq!(ran, [false, true]);
    let summary: serde_json::Value = resumed
        .run
        .store()
        .get_json(&resumed.run.layout().manifest())
        .await
        .expect("manifest");
    assert_eq!(summary["run_id"], "lib-2");
}

/// Bad options are refused before anything is deployed, naming what is wrong.
#[tokio::test]
async fn bad_options_are_refused_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::default();
    let err = app
        .run(
            experiment(),
            RunOptions::new().store(store_of(&dir)).resume(),
        )
        .await
        .expect_err("resume needs a run id");
    assert!(err.to_string().contains("resume"), "{err}");
    let err = app
        .run(
            experiment(),
            RunOptions::new()
                .store(store_of(&dir))
                .only("concurrency=99,isl=16,osl=4"),
        )
        .await
        .expect_err("unknown cell");
    assert!(err.to_string().contains("concurrency=99"), "{err}");
    let err = app
        .run(experiment(), RunOptions::new().store("nope://x"))
        .await
        .expect_err("unknown store");
    assert!(err.to_string().contains("nope"), "{err}");
}

/// A backend of the program's own: the local one, counting what it launches.
#[derive(Debug)]
struct Counting {
    inner: harness::core::LocalBackend,
    launched: Arc<AtomicUsize>,
}

#[harness::core::async_trait]
impl harness::core::Backend for Counting {
    async fn launch(
        &self,
        spec: &harness::core::WorkloadSpec,
    ) -> harness::core::Result<harness::core::Workload> {
        self.launched.fetch_add(1, Ordering::SeqCst);
        self.inner.launch(spec).await
    }
    async fn status(
        &self,
        w: &harness::core::Workload,
    ) -> harness::core::Result<harness::core::WorkloadStatus> {
        self.inner.status(w).await
    }
    async fn logs(&self, w: &harness::core::Workload) -> harness::core::Result<bytes::Bytes> {
        self.inner.logs(w).await
    }
    async fn teardown(&self, w: &harness::core::Workload) -> harness::core::Result<()> {
        self.inner.teardown(w).await
    }
    fn name(&self) -> &str {
        "counting"
    }
}

/// `backend: {kind: counting}` runs the deployment on the backend the program registered;
/// a kind nobody registered is refused before anything runs, naming the kinds there are.
#[tokio::test]
async fn a_registered_backend_kind_runs_the_deployment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let launched = Arc::new(AtomicUsize::new(0));
    let counter = launched.clone();
    let factory: harness::BackendFactory = Arc::new(move |_exp, _run_id| {
        Ok(Arc::new(Counting {
            inner: harness::core::LocalBackend::new()?,
            launched: counter.clone(),
        }) as Arc<dyn harness::core::Backend>)
    });
    let app = App::builder()
        .backend_kind("counting", factory)
        .build()
        .expect("app");
    let yaml = "name: own-backend\nmodel: {name: m}\nconcurrency: [1]\n\
                benchmark: {isl_osl: [[8, 8]]}\nbackend: {kind: counting}\n\
                deployment: {command: [python3, -m, http.server, \"{port}\", --bind, 127.0.0.1], health: /}\n\
                policy: {ready_timeout: 30s}\n";
    let exp = Experiment::from_yaml_str(yaml, "own.yaml").expect("experiment");
    let ok: Arc<dyn Step> = Arc::new(step_fn("noop", |_| async { Ok(StepOutput::new()) }));
    let outcome = app
        .run(
            exp.clone(),
            RunOptions::new().store(store_of(&dir)).cell_step(ok),
        )
        .await
        .expect("run");
    assert_eq!(outcome.report.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(launched.load(Ordering::SeqCst), 1, "the server ran on it");

    let other = Experiment::from_yaml_str(&yaml.replace("counting", "nope"), "own.yaml")
        .expect("experiment");
    let err = app
        .run(other, RunOptions::new().store(store_of(&dir)))
        .await
        .expect_err("unknown kind");
    let text = err.to_string();
    assert!(
        text.contains("backend.kind") && text.contains("local, kubernetes, counting"),
        "{text}"
    );
    let err = App::builder()
        .backend_kind(
            "local",
            Arc::new(|_: &Experiment, _: &str| {
                Err(harness::core::Error::invalid("never", "called"))
            }),
        )
        .build()
        .expect_err("a built-in name");
    assert!(err.to_string().contains("built in"), "{err}");
}
