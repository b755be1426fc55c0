//! The runner: failure isolation, timeouts, retries, fail-fast, teardown, cancellation,
//! the journal and resume.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::testkit::MockStep;
use harness_core::*;

fn experiment(extra: &[&str]) -> Arc<Experiment> {
    let exp = Experiment::from_yaml_str(
        "name: t\nmodel: {name: m}\nconcurrency: [1, 2, 3, 4]\nbenchmark: {isl_osl: [[16, 4]]}\npolicy: {backoff: 1ms}\n",
        "t.yaml",
    )
    .expect("experiment")
    .with_overrides(extra)
    .expect("overrides");
    Arc::new(exp)
}

fn conc(cx: &StepContext) -> i64 {
    cx.cell()
        .and_then(|c| c.param("concurrency"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

fn context(exp: &Arc<Experiment>, store: Arc<dyn ArtifactStore>, run_id: &str) -> RunContext {
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new().expect("backend"));
    RunContext::new(
        run_id,
        exp.clone(),
        backend,
        store,
        CancellationToken::new(),
    )
    .expect("context")
}

async fn journal(store: &dyn ArtifactStore, layout: &RunLayout, cell: &str) -> JournalEntry {
    store
        .get_json(&layout.journal(&CellId::new(cell).expect("id")))
        .await
        .expect("journal entry")
}

/// Runs `pipeline` as a new run over the experiment's plan.
async fn run_new(pipeline: Pipeline, run: &RunContext, exp: &Experiment) -> RunReport {
    Runner::new(pipeline)
        .run(
            run,
            &exp.plan().expect("plan"),
            RunMode::New { input: None },
        )
        .await
        .expect("run")
}

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);
impl Reporter for Events {
    fn on_event(&self, e: &Event) {
        self.0.lock().expect("lock").push(e.clone());
    }
}

#[tokio::test]
async fn one_failing_cell_does_not_stop_the_sweep() {
    let exp = experiment(&[]);
    let store = Arc::new(MemoryStore::new());
    let run = context(&exp, store.clone(), "r1");
    let pipeline = Pipeline::builder()
        .per_cell(step_fn("measure", |cx| async move {
            match conc(&cx) {
                2 => Err(Error::failed("measure", "the server said no")),
                c => Ok(StepOutput::new().metric("conc", c as f64)),
            }
        }))
        .build()
        .expect("pipeline");
    let events = Arc::new(Events::default());
    let report = Runner::new(pipeline)
        .reporter(events.clone())
        .run(
            &run,
            &exp.plan().expect("plan"),
            RunMode::New {
                input: Some("name: t\n".into()),
            },
        )
        .await
        .expect("run");

    assert_eq!(report.status, RunStatus::Partial);
    assert_eq!(report.count(CellStatus::Succeeded), 3);
    assert_eq!(report.count(CellStatus::Failed), 1);
    let failed = &report.cells[1];
    assert_eq!(failed.cell.as_str(), "concurrency=2,isl=16,osl=4");
    let err = failed.error.as_ref().expect("error");
    assert_eq!(
        (err.step.as_str(), err.kind.as_str()),
        ("measure", "failed")
    );
    assert!(err.message.contains("the server said no"));

    // The journal and summaries say the same, and the input was kept.
    let layout = run.layout();
    assert_eq!(
        journal(store.as_ref(), layout, "concurrency=2,isl=16,osl=4")
            .await
            .status,
        CellStatus::Failed
    );
    assert_eq!(
        journal(store.as_ref(), layout, "concurrency=3,isl=16,osl=4")
            .await
            .status,
        CellStatus::Succeeded
    );
    let summary: CellSummary = store
        .get_json(&layout.cell_summary(&CellId::new("concurrency=4,isl=16,osl=4").expect("id")))
        .await
        .expect("summary");
    assert_eq!(summary.metrics.get("conc"), Some(&4.0));
    let rows: Vec<CellSummary> = store
        .get_json(&layout.summary())
        .await
        .expect("run summary");
    assert_eq!(rows.len(), 4);
    assert_eq!(
        store.get(&layout.experiment()).await.expect("input"),
        Bytes::from("name: t\n")
    );
    let manifest: Manifest = store.get_json(&layout.manifest()).await.expect("manifest");
    assert_eq!(manifest.status, RunStatus::Partial);
    assert_eq!(manifest.plan.len(), 4);
    assert_eq!(manifest.cells.get("failed"), Some(&1));

    // Events: run started first, finished last, one start and one finish per cell.
    let events = events.0.lock().expect("lock");
    assert!(matches!(
        events.first(),
        Some(Event::RunStarted { total_cells: 4, .. })
    ));
    assert!(matches!(
        events.last(),
        Some(Event::RunFinished {
            status: RunStatus::Partial,
            ..
        })
    ));
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::CellStarted { .. }))
        .count();
    let finished = events
        .iter()
        .filter(|e| matches!(e, Event::CellFinished { .. }))
        .count();
    assert_eq!((started, finished), (4, 4));
}

#[tokio::test]
async fn a_step_that_times_out_fails_its_cell_and_the_sweep_goes_on() {
    let exp = experiment(&[]);
    let store = Arc::new(MemoryStore::new());
    let run = context(&exp, store.clone(), "r1");
    let slow = step_fn("slow", |cx| async move {
        if conc(&cx) == 3 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(StepOutput::new())
    });
    let pipeline = Pipeline::builder()
        .add(
            Stage::Cell,
            Arc::new(slow),
            Some(Duration::from_millis(100)),
        )
        .build()
        .expect("pipeline");
    let report = run_new(pipeline, &run, &exp).await;
    let statuses: Vec<CellStatus> = report.cells.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            CellStatus::Succeeded,
            CellStatus::Succeeded,
            CellStatus::Failed,
            CellStatus::Succeeded
        ]
    );
    let err = report.cells[2].error.as_ref().expect("error");
    assert_eq!(err.kind, "timeout");
    assert!(
        err.message.contains("step `slow` timed out after 100ms"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn transient_errors_are_retried_and_others_are_not() {
    let exp = experiment(&["policy.retries=3"]);
    let store = Arc::new(MemoryStore::new());
    let run = context(&exp, store.clone(), "r1");
    let calls: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
    let c2 = calls.clone();
    let flaky = step_fn("flaky", move |cx| {
        let calls = c2.clone();
        async move {
            let c = conc(&cx);
            *calls.lock().expect("lock").entry(c).or_default() += 1;
            match (c, cx.attempt()) {
                // Cell 1 succeeds on its third attempt.
                (1, a) if a < 3 => Err(Error::transient("connect", "connection refused")),
                // Cell 2 fails for good at once.
                (2, _) => Err(Error::failed("request", "400 bad request")),
                // Cell 3 stays transient past the retry budget.
                (3, _) => Err(Error::transient("connect", "connection refused")),
                _ => Ok(StepOutput::new().metric("attempt", f64::from(cx.attempt()))),
            }
        }
    });
    let pipeline = Pipeline::builder()
        .per_cell(flaky)
        .build()
        .expect("pipeline");
    let report = run_new(pipeline, &run, &exp).await;
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls, BTreeMap::from([(1, 3), (2, 1), (3, 4), (4, 1)]));
    assert_eq!(report.cells[0].status, CellStatus::Succeeded);
    assert_eq!(report.cells[0].metrics.get("attempt"), Some(&3.0));
    assert_eq!(report.cells[1].status, CellStatus::Failed);
    assert_eq!(
        report.cells[2].error.as_ref().map(|e| e.kind.as_str()),
        Some("transient")
    );
}

#[tokio::test]
async fn fail_fast_stops_at_the_first_failed_cell_and_leaves_the_rest_pending() {
    let exp = experiment(&["policy.fail_fast=true"]);
    let store = Arc::new(MemoryStore::new());
    let run = context(&exp, store.clone(), "r1");
    let pipeline = Pipeline::builder()
        .per_cell(step_fn("s", |cx| async move {
            if conc(&cx) == 2 {
                Err(Error::failed("s", "boom"))
            } else {
                Ok(StepOutput::new())
            }
        }))
        .build()
        .expect("pipeline");
    let report = run_new(pipeline, &run, &exp).await;
    let statuses: Vec<(CellStatus, bool)> =
        report.cells.iter().map(|c| (c.status, c.ran)).collect();
    assert_eq!(
        statuses,
        [
            (CellStatus::Succeeded, true),
            (CellStatus::Failed, true),
            (CellStatus::Pending, false),
            (CellStatus::Pending, false)
        ]
    );
}

#[tokio::test]
async fn a_failed_setup_fails_every_cell_and_teardown_still_runs_once() {
    let exp = experiment(&[]);
    let store = Arc::new(MemoryStore::new());
    let run = context(&exp, store.clone(), "r1");

    let mut setup = MockStep::new();
    setup.expect_name().return_const("deploy".to_owned());
    setup
        .expect_run()
        .times(1)
        .returning(|_| Err(Error::failed("deploy", "image not found")));
    let mut cell = MockStep::new();
    cell.expect_name().return_const("bench".to_owned());
    cell.expect_run().times(0);
    let mut teardown = MockStep::new();
    teardown.expect_name().return_const("undeploy".to_owned());
    teardown.expect_run().times(1).returning(|cx| {
        assert!(!cx.cancel().is_cancelled(), "teardown gets a live token");
        Ok(StepOutput::new())
    });

    let pipeline = Pipeline::builder()
        .setup(setup)
        .per_cell(cell)
        .teardown(teardown)
        .build()
        .expect("pipeline");
    let report = run_new(pipeline, &run, &exp).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.count(CellStatus::Failed), 4);
    assert!(
        report
            .setup_error
            .as_deref()
            .is_some_and(|e| e.contains("image not found"))
    );
    assert!(
        report
            .cells
            .iter()
            .all(|c| c.error.as_ref().is_some_and(|e| e.step == "deploy"))
    );
}

#[tokio::test]
async fn a_teardown_failure_is_reported_and_the_next_teardown_step_still_runs() {
    let exp = experiment(&[]);
    let run = context(&exp, Arc::new(MemoryStore::new()), "r1");
    let ran = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::builder()
        .per_cell(step_fn("s", |_| async { Ok(StepOutput::new()) }))
        .teardown(step_fn("first", |_| async {
            Err(Error::failed("delete", "forbidden"))
        }))
        .teardown(counter_step("second", ran.clone()))
        .build()
        .expect("pipeline");
    let report = run_new(pipeline, &run, &exp).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(report.teardown_errors.len(), 1);
    assert!(report.teardown_errors[0].contains("forbidden"));
}

/// A step named `name` that adds one to `counter` each time it runs.
fn counter_step(name: &'static str, counter: Arc<AtomicU32>) -> impl Step {
    step_fn(name, move |_| {
        let c = counter.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(StepOutput::new())
        }
    })
}

/// A step that counts its runs per cell and cancels the run when it reaches `cancel_at`.
fn counting_step(counts: Arc<Mutex<BTreeMap<i64, u32>>>, cancel_at: Option<i64>) -> impl Step {
    step_fn("count", move |cx| {
        let counts = counts.clone();
        async move {
            let c = conc(&cx);
            *counts.lock().expect("lock").entry(c).or_default() += 1;
            if Some(c) == cancel_at {
                // Ctrl-C arrives while this cell runs; the step notices and stops.
                cx.cancel().cancel();
                cx.cancel().cancelled().await;
                return Err(Error::Cancelled {
                    what: "count".into(),
                });
            }
            Ok(StepOutput::new())
        }
    })
}

#[tokio::test]
async fn cancellation_runs_teardown_and_resume_reruns_only_unfinished_cells() {
    let exp = experiment(&[]);
    let store = Arc::new(MemoryStore::new());
    let counts: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
    let torn_down = Arc::new(AtomicU32::new(0));
    let pipeline = |cancel_at| {
        Pipeline::builder()
            .per_cell(counting_step(counts.clone(), cancel_at))
            .teardown(counter_step("undeploy", torn_down.clone()))
            .build()
            .expect("pipeline")
    };
    let plan = exp.plan().expect("plan");

    let run = context(&exp, store.clone(), "r1");
    let report = Runner::new(pipeline(Some(2)))
        .run(&run, &plan, RunMode::New { input: None })
        .await
        .expect("run");
    assert_eq!(report.status, RunStatus::Cancelled);
    let statuses: Vec<CellStatus> = report.cells.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            CellStatus::Succeeded,
            CellStatus::Cancelled,
            CellStatus::Pending,
            CellStatus::Pending
        ]
    );
    assert_eq!(
        torn_down.load(Ordering::SeqCst),
        1,
        "teardown ran after cancellation"
    );

    // Resume in a new process: a fresh context on the same store and run id.
    let run = context(&exp, store.clone(), "r1");
    let report = Runner::new(pipeline(None))
        .run(&run, &plan, RunMode::Resume)
        .await
        .expect("resume");
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(torn_down.load(Ordering::SeqCst), 2);
    // Cell 1 ran once in all; cell 2 twice (cancelled, then done); 3 and 4 once.
    assert_eq!(
        *counts.lock().expect("lock"),
        BTreeMap::from([(1, 1), (2, 2), (3, 1), (4, 1)])
    );
    assert!(!report.cells[0].ran, "the finished cell was not redone");
    let layout = run.layout();
    assert_eq!(
        journal(store.as_ref(), layout, "concurrency=1,isl=16,osl=4")
            .await
            .attempts,
        1
    );
    assert_eq!(
        journal(store.as_ref(), layout, "concurrency=2,isl=16,osl=4")
            .await
            .attempts,
        2
    );
    let manifest: Manifest = store.get_json(&layout.manifest()).await.expect("manifest");
    assert_eq!(manifest.sessions.len(), 2);
    assert_eq!(manifest.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_new_run_never_overwrites_another_and_resume_needs_an_existing_run() {
    let exp = experiment(&[]);
    let store = Arc::new(MemoryStore::new());
    let pipeline = || {
        Pipeline::builder()
            .per_cell(step_fn("s", |_| async { Ok(StepOutput::new()) }))
            .build()
            .expect("p")
    };
    let plan = exp.plan().expect("plan");
    let run = context(&exp, store.clone(), "r1");
    Runner::new(pipeline())
        .run(&run, &plan, RunMode::New { input: None })
        .await
        .expect("first");
    let err = Runner::new(pipeline())
        .run(&run, &plan, RunMode::New { input: None })
        .await
        .expect_err("second");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    let other = context(&exp, store.clone(), "r2");
    let err = Runner::new(pipeline())
        .run(&other, &plan, RunMode::Resume)
        .await
        .expect_err("missing");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    // A resume with a different plan is refused.
    let smaller = experiment(&["concurrency=[1]"]);
    let run = context(&smaller, store.clone(), "r1");
    let err = Runner::new(pipeline())
        .run(&run, &smaller.plan().expect("plan"), RunMode::Resume)
        .await
        .expect_err("plan differs");
    assert!(err.to_string().contains("plan differs"), "{err}");
}

/// A store whose writes of cell summaries fail while `broken` is set.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryStore,
    broken: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ArtifactStore for FlakyStore {
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) && key.as_str().contains("/cells/") {
            return Err(Error::transient("put", "503 slow down"));
        }
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &ArtifactKey) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &ArtifactKey) -> Result<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        "flaky://".into()
    }
}

#[tokio::test]
async fn a_cell_is_not_succeeded_until_its_results_are_stored() {
    let exp = experiment(&[]);
    let store = Arc::new(FlakyStore::default());
    store.broken.store(true, Ordering::SeqCst);
    let pipeline = || {
        Pipeline::builder()
            .per_cell(step_fn("s", |_| async { Ok(StepOutput::new()) }))
            .build()
            .expect("p")
    };
    let plan = exp.plan().expect("plan");
    let run = context(&exp, store.clone(), "r1");
    let report = Runner::new(pipeline())
        .run(&run, &plan, RunMode::New { input: None })
        .await
        .expect("run");
    assert_eq!(
        report.count(CellStatus::Succeeded),
        0,
        "no summary stored, so no success"
    );
    assert!(
        report
            .cells
            .iter()
            .all(|c| c.error.as_ref().is_some_and(|e| e.step == "store"))
    );
    assert!(!report.store_errors.is_empty());
    // Once the store works again, resume completes every cell.
    store.broken.store(false, Ordering::SeqCst);
    let report = Runner::new(pipeline())
        .run(&run, &plan, RunMode::Resume)
        .await
        .expect("resume");
    assert_eq!(report.count(CellStatus::Succeeded), 4);
}

#[tokio::test]
async fn steps_write_artifacts_into_their_own_folder_and_share_resources() {
    let exp = experiment(&["concurrency=[1]"]);
    let store = Arc::new(MemoryStore::new());
    let run = context(&exp, store.clone(), "r1");
    let pipeline = Pipeline::builder()
        .setup(step_fn("deploy", |cx| async move {
            cx.resources().insert(Endpoint::new("http://127.0.0.1:9")?);
            Ok(StepOutput::new())
        }))
        .per_cell(step_fn("probe", |cx| async move {
            let ep = cx
                .resources()
                .get::<Endpoint>()
                .ok_or_else(|| Error::failed("probe", "no endpoint"))?;
            let key = cx
                .artifacts()
                .put("seen.txt", Bytes::from(ep.base_url.clone()))
                .await?;
            // Keys that try to leave the folder are refused.
            assert!(cx.artifacts().put("../escape", Bytes::new()).await.is_err());
            Ok(StepOutput::new().artifact(key))
        }))
        .build()
        .expect("pipeline");
    let report = run_new(pipeline, &run, &exp).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let key =
        ArtifactKey::new("runs/t/r1/cells/concurrency=1,isl=16,osl=4/artifacts/probe/seen.txt")
            .expect("key");
    assert_eq!(
        store.get(&key).await.expect("artifact"),
        Bytes::from("http://127.0.0.1:9")
    );
}

#[test]
fn pipelines_refuse_duplicate_and_unsafe_step_names() {
    let ok = || step_fn("a", |_| async { Ok(StepOutput::new()) });
    let err = Pipeline::builder()
        .per_cell(ok())
        .per_cell(ok())
        .build()
        .expect_err("duplicate");
    assert!(err.to_string().contains("unique"), "{err}");
    // The same name in different stages is fine.
    Pipeline::builder()
        .setup(ok())
        .per_cell(ok())
        .build()
        .expect("stages differ");
    let err = Pipeline::builder()
        .per_cell(step_fn("../x", |_| async { Ok(StepOutput::new()) }))
        .build()
        .expect_err("unsafe");
    assert!(err.to_string().contains("../x"), "{err}");
}
