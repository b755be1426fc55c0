//! The [`Runner`]: executes a [`Pipeline`] over a [`Plan`], isolating failures, journaling
//! every cell, and always tearing down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::Stage;
use crate::error::{Error, Result};
use crate::event::{Event, Reporter};
use crate::journal::{
    CellError, CellStatus, CellSummary, FORMAT_VERSION, HostInfo, JournalEntry, Manifest,
    RunStatus, Session, StepRecord, secs, timestamp,
};
use crate::layer::{Layer, RetryLayer, TimeoutLayer, TraceLayer};
use crate::pipeline::Pipeline;
use crate::plan::{Cell, CellId, ParamValue, Plan};
use crate::search::{Probe, SearchOutcome, Verdict};
use crate::step::{RunContext, Step, StepContext, StepOutput};
use crate::store::{ArtifactStore, ArtifactStoreExt};

/// How long a step may take to stop after cancellation before the runner drops it.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Whether to start a new run or continue one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RunMode {
    /// A new run. `input` is the experiment file as given, stored as `experiment.yaml`.
    New {
        /// The input text, secrets redacted by the caller.
        input: Option<String>,
    },
    /// Continue a stored run: only cells that did not succeed run again.
    Resume,
}

/// What happened to one cell in this session.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CellReport {
    /// The cell.
    pub cell: CellId,
    /// How it stands.
    pub status: CellStatus,
    /// Whether it ran in this session (false: it succeeded earlier, or was never reached).
    pub ran: bool,
    /// Attempts over all sessions.
    pub attempts: u32,
    /// Duration of its last attempt.
    pub duration: Duration,
    /// Metrics of its steps.
    pub metrics: BTreeMap<String, f64>,
    /// Why it failed.
    pub error: Option<CellError>,
}

/// What a run session did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunReport {
    /// The run id.
    pub run_id: String,
    /// How it ended.
    pub status: RunStatus,
    /// Every cell of the plan, in order.
    pub cells: Vec<CellReport>,
    /// Setup failure, if any.
    pub setup_error: Option<String>,
    /// Teardown problems.
    pub teardown_errors: Vec<String>,
    /// Problems writing to the store.
    pub store_errors: Vec<String>,
    /// How long this session took.
    pub elapsed: Duration,
    /// The outcome of each SLO search of the run (empty without `search`).
    pub search: Vec<SearchOutcome>,
}

impl RunReport {
    /// Cells by status.
    pub fn count(&self, status: CellStatus) -> usize {
        self.cells.iter().filter(|c| c.status == status).count()
    }
}

/// Runs a pipeline over a plan.
///
/// * Setup steps run once; if one fails, every cell fails with that reason.
/// * Per-cell steps run in order for each cell, one cell at a time. A failing step fails
///   its cell; the sweep goes on unless the experiment's `policy.fail_fast` is set.
/// * Each step runs inside tracing, retry (transient errors) and timeout layers built
///   from the experiment's policy.
/// * Teardown steps always run, each on a fresh cancellation token with
///   `policy.teardown_timeout`, also after failure or cancellation.
/// * The journal (`journal/<cell>.json`) is written before and after each cell; a cell is
///   `succeeded` only after its `summary.json` is stored. [`RunMode::Resume`] reruns the
///   cells that are not.
///
/// ```
/// use std::sync::Arc;
/// use harness_core::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// let exp = Arc::new(Experiment::from_yaml_str(
///     "name: demo\nmodel: {name: m}\nconcurrency: [1, 2]\nbenchmark: {isl_osl: [[128, 16]]}\n",
///     "demo.yaml",
/// )?);
/// let pipeline = Pipeline::builder()
///     .per_cell(step_fn("measure", |cx| async move {
///         let c = cx.cell().and_then(|c| c.param("concurrency")).and_then(|v| v.as_f64());
///         Ok(StepOutput::new().metric("concurrency", c.unwrap_or(0.0)))
///     }))
///     .build()?;
/// let store: Arc<dyn ArtifactStore> = Arc::new(MemoryStore::new());
/// let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new()?);
/// let run = RunContext::new("run-1", exp.clone(), backend, store, Default::default())?;
/// let report = Runner::new(pipeline).run(&run, &exp.plan()?, RunMode::New { input: None }).await?;
/// assert_eq!(report.count(CellStatus::Succeeded), 2);
/// # Ok(()) }
/// ```
pub struct Runner {
    pipeline: Pipeline,
    reporters: Vec<Arc<dyn Reporter>>,
    only: Option<BTreeSet<CellId>>,
    treatments: Vec<TreatmentRun>,
}

/// One treatment's part of a run: its resolved experiment and its pipeline (deployment and
/// per-cell steps).
struct TreatmentRun {
    name: String,
    experiment: Arc<crate::config::Experiment>,
    pipeline: Pipeline,
}

/// A treatment's setup: not run yet, or run with its outcome.
enum SegmentSetup<'a> {
    /// Runs before the first cell that runs.
    Pending(&'a Pipeline),
    /// Ran (or is the run's own setup): the error that fails every cell, if any.
    Done(Option<CellError>),
}

/// What the cells of a run share while they run.
struct CellState<'a> {
    journal: &'a mut BTreeMap<CellId, JournalEntry>,
    reports: &'a mut BTreeMap<CellId, CellReport>,
    store_errors: &'a mut Vec<String>,
    searches: Vec<SearchOutcome>,
    stop: bool,
    total: usize,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("pipeline", &self.pipeline)
            .field("reporters", &self.reporters.len())
            .field(
                "treatments",
                &self.treatments.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Runner {
    /// A runner for `pipeline`.
    pub fn new(pipeline: Pipeline) -> Self {
        Runner {
            pipeline,
            reporters: Vec::new(),
            only: None,
            treatments: Vec::new(),
        }
    }

    /// Runs the cells of treatment `name` (those whose `treatment` parameter is `name`) with
    /// `pipeline`, as `experiment` (the treatment's resolved experiment): its setup steps
    /// (the deployment) run before its first cell that runs, its per-cell steps on each of
    /// its cells, its teardown steps after its last. The runner's own pipeline keeps the
    /// run's setup and teardown (the report). A treatment with nothing left to run is not
    /// deployed.
    #[must_use]
    pub fn treatment(
        mut self,
        name: impl Into<String>,
        experiment: Arc<crate::config::Experiment>,
        pipeline: Pipeline,
    ) -> Self {
        self.treatments.push(TreatmentRun {
            name: name.into(),
            experiment,
            pipeline,
        });
        self
    }

    /// Runs only these cells of the plan; the others keep their journal status, and the run
    /// stays `Running` while any cell is pending. For workflows that run one cell per task
    /// (an empty set only creates the run).
    #[must_use]
    pub fn only(mut self, cells: impl IntoIterator<Item = CellId>) -> Self {
        self.only = Some(cells.into_iter().collect());
        self
    }

    /// Adds a reporter.
    #[must_use]
    pub fn reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.reporters.push(reporter);
        self
    }

    fn emit(&self, event: Event) {
        for r in &self.reporters {
            r.on_event(&event);
        }
    }

    fn layered(&self, pipeline: &Pipeline, run: &RunContext, stage: Stage) -> Vec<Arc<dyn Step>> {
        let policy = &run.experiment().policy;
        pipeline
            .steps(stage)
            .iter()
            .map(|ps| {
                let timeout = ps.timeout.unwrap_or(match stage {
                    Stage::Teardown => policy.teardown_timeout.get(),
                    _ => policy.step_timeout.get(),
                });
                let mut step = TimeoutLayer::new(timeout).layer(ps.step.clone());
                if stage != Stage::Teardown {
                    step = RetryLayer::new(policy.retries, policy.backoff.get()).layer(step);
                }
                TraceLayer.layer(step)
            })
            .collect()
    }

    /// Runs one step, giving it [`CANCEL_GRACE`] to stop after cancellation.
    async fn invoke(
        &self,
        step: &Arc<dyn Step>,
        cx: &StepContext,
    ) -> (Result<StepOutput>, Duration) {
        let name = step.name().to_owned();
        let cell = cx.cell().map(|c| c.id.clone());
        self.emit(Event::StepStarted {
            stage: cx.stage(),
            cell: cell.clone(),
            step: name.clone(),
        });
        let start = Instant::now();
        let cancel = cx.cancel().clone();
        let result = tokio::select! {
            r = step.run(cx) => r,
            () = async { cancel.cancelled().await; tokio::time::sleep(CANCEL_GRACE).await } => {
                Err(Error::Cancelled { what: format!("step `{name}` (it did not stop within {CANCEL_GRACE:?})") })
            }
        };
        let result = match result {
            // A step that failed because the run was cancelled is reported as cancelled.
            Err(e) if cancel.is_cancelled() && !matches!(e, Error::Cancelled { .. }) => {
                Err(Error::Cancelled {
                    what: format!("step `{name}`: {e}"),
                })
            }
            other => other,
        };
        let elapsed = start.elapsed();
        self.emit(Event::StepFinished {
            stage: cx.stage(),
            cell,
            step: name,
            elapsed,
            error: result.as_ref().err().map(ToString::to_string),
        });
        (result, elapsed)
    }

    /// Runs the pipeline over `plan`.
    ///
    /// # Errors
    /// Only when the run cannot start: the run exists already (new) or does not (resume),
    /// or its manifest cannot be written or read. Failures after that are in the report.
    pub async fn run(&self, run: &RunContext, plan: &Plan, mode: RunMode) -> Result<RunReport> {
        let started = Instant::now();
        let store = run.store().clone();
        let layout = run.layout().clone();
        let (mut manifest, mut journal) = match mode {
            RunMode::New { input } => {
                let manifest = Manifest {
                    format: FORMAT_VERSION,
                    run_id: run.run_id().to_owned(),
                    experiment_name: run.experiment().name.to_string(),
                    harness_version: env!("CARGO_PKG_VERSION").to_owned(),
                    experiment: run.experiment().to_json(),
                    plan: plan.cells().iter().map(|c| c.id.clone()).collect(),
                    host: tokio::task::spawn_blocking(HostInfo::current)
                        .await
                        .map_err(|e| Error::failed_from("reading the host's description", e))?,
                    created_at: timestamp(SystemTime::now()),
                    status: RunStatus::Running,
                    sessions: vec![Session {
                        started_at: timestamp(SystemTime::now()),
                        finished_at: None,
                        status: None,
                    }],
                    cells: BTreeMap::new(),
                    cell_status: plan
                        .cells()
                        .iter()
                        .map(|c| (c.id.clone(), CellStatus::Pending))
                        .collect(),
                    finished_at: None,
                    provenance: run.provenance().clone(),
                    teardown_errors: Vec::new(),
                };
                let data = serde_json::to_vec_pretty(&manifest)
                    .map_err(|e| Error::failed_from("encoding the manifest", e))?;
                store
                    .put_if_absent(&layout.manifest(), Bytes::from(data))
                    .await?;
                if let Some(input) = input {
                    store.put(&layout.experiment(), Bytes::from(input)).await?;
                }
                if !self.treatments.is_empty() {
                    let resolved: Vec<serde_json::Value> = self
                        .treatments
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "name": t.name,
                                "deployment": t.experiment.resolved_deployment(),
                                "experiment": t.experiment.to_json(),
                            })
                        })
                        .collect();
                    store.put_json(&layout.treatments(), &resolved).await?;
                }
                let mut journal = BTreeMap::new();
                for cell in plan.cells() {
                    let entry = JournalEntry::pending(cell.id.clone());
                    store.put_json(&layout.journal(&cell.id), &entry).await?;
                    journal.insert(cell.id.clone(), entry);
                }
                (manifest, journal)
            }
            RunMode::Resume => {
                let mut manifest: Manifest = store.get_json(&layout.manifest()).await?;
                let planned: BTreeSet<&CellId> = manifest.plan.iter().collect();
                let now: BTreeSet<&CellId> = plan.cells().iter().map(|c| &c.id).collect();
                if planned != now {
                    return Err(Error::invalid(
                        format!("resume of run `{}`", run.run_id()),
                        "the plan differs from the stored run's plan; resume with the stored experiment",
                    ));
                }
                manifest.status = RunStatus::Running;
                manifest.sessions.push(Session {
                    started_at: timestamp(SystemTime::now()),
                    finished_at: None,
                    status: None,
                });
                store.put_json(&layout.manifest(), &manifest).await?;
                let mut journal = BTreeMap::new();
                for cell in plan.cells() {
                    let entry = match store
                        .get_json::<JournalEntry>(&layout.journal(&cell.id))
                        .await
                    {
                        Ok(e) => e,
                        Err(Error::NotFound { .. }) => JournalEntry::pending(cell.id.clone()),
                        Err(e) => return Err(e),
                    };
                    journal.insert(cell.id.clone(), entry);
                }
                (manifest, journal)
            }
        };
        let resumed = manifest.sessions.len() > 1;
        let already_done = journal.values().filter(|e| !e.status.needs_run()).count();
        self.emit(Event::RunStarted {
            run_id: run.run_id().to_owned(),
            experiment: run.experiment().name.to_string(),
            total_cells: plan.len(),
            already_done,
            resumed,
        });

        let mut store_errors = Vec::new();
        let mut reports: BTreeMap<CellId, CellReport> = BTreeMap::new();

        // Setup.
        self.emit(Event::StageStarted {
            stage: Stage::Setup,
        });
        let mut setup_error: Option<CellError> = None;
        for step in self.layered(&self.pipeline, run, Stage::Setup) {
            let cx = run.step(Stage::Setup, None, step.name())?;
            let (result, _) = self.invoke(&step, &cx).await;
            if let Err(e) = result {
                setup_error = Some(CellError {
                    step: step.name().to_owned(),
                    kind: e.kind().to_owned(),
                    message: format!("setup step `{}` failed: {e}", step.name()),
                });
                break;
            }
        }

        // Cells: the run's own, or each treatment's in turn with its deployment.
        self.emit(Event::StageStarted { stage: Stage::Cell });
        let mut state = CellState {
            journal: &mut journal,
            reports: &mut reports,
            store_errors: &mut store_errors,
            searches: Vec::new(),
            stop: false,
            total: plan.len(),
        };
        let mut teardown_errors = Vec::new();
        if self.treatments.is_empty() {
            let steps = self.layered(&self.pipeline, run, Stage::Cell);
            let cells: Vec<&Cell> = plan.cells().iter().collect();
            let mut setup = SegmentSetup::Done(setup_error.clone());
            self.run_cells(run, &cells, &steps, &mut setup, &mut state)
                .await;
        } else {
            for t in &self.treatments {
                let cells: Vec<&Cell> = plan
                    .cells()
                    .iter()
                    .filter(|c| {
                        c.param("treatment")
                            .is_some_and(|v| v.to_string() == t.name)
                    })
                    .collect();
                let trun = run.for_treatment(&t.name, t.experiment.clone());
                let steps = self.layered(&t.pipeline, &trun, Stage::Cell);
                let mut setup = match &setup_error {
                    Some(e) => SegmentSetup::Done(Some(e.clone())),
                    None => SegmentSetup::Pending(&t.pipeline),
                };
                self.run_cells(&trun, &cells, &steps, &mut setup, &mut state)
                    .await;
                if matches!(setup, SegmentSetup::Done(_)) && setup_error.is_none() {
                    // The treatment was deployed: take it down before the next one.
                    let down = trun.with_cancel(CancellationToken::new());
                    for step in self.layered(&t.pipeline, &down, Stage::Teardown) {
                        let cx = down.step(Stage::Teardown, None, step.name())?;
                        let (result, _) = self.invoke(&step, &cx).await;
                        if let Err(e) = result {
                            teardown_errors.push(format!(
                                "treatment `{}`: teardown step `{}`: {e}",
                                t.name,
                                step.name()
                            ));
                        }
                    }
                }
            }
        }
        let searches = std::mem::take(&mut state.searches);
        drop(state);

        // Stored before teardown, so the report step can rank the treatments.
        let searches = if run.experiment().search.is_some() {
            // Searches this session did not run (`only`) keep their stored outcome.
            let mut all: Vec<SearchOutcome> =
                store.get_json(&layout.search()).await.unwrap_or_default();
            all.retain(|old| {
                !searches
                    .iter()
                    .any(|new| new.treatment == old.treatment && new.group == old.group)
            });
            all.extend(searches);
            if let Err(e) = store.put_json(&layout.search(), &all).await {
                store_errors.push(format!("writing the search results: {e}"));
            }
            all
        } else {
            Vec::new()
        };

        // Teardown: always, each step on a fresh token and its own timeout.
        self.emit(Event::StageStarted {
            stage: Stage::Teardown,
        });
        let teardown_run = run.with_cancel(CancellationToken::new());
        for step in self.layered(&self.pipeline, &teardown_run, Stage::Teardown) {
            let cx = teardown_run.step(Stage::Teardown, None, step.name())?;
            let (result, _) = self.invoke(&step, &cx).await;
            if let Err(e) = result {
                teardown_errors.push(format!("teardown step `{}`: {e}", step.name()));
            }
        }

        // Run summary and manifest.
        let cells: Vec<CellReport> = plan
            .cells()
            .iter()
            .filter_map(|c| reports.remove(&c.id))
            .collect();
        let succeeded = cells.iter().filter(|c| c.status.is_ok()).count();
        let pending = cells
            .iter()
            .any(|c| matches!(c.status, CellStatus::Pending | CellStatus::Running));
        let status = if self.only.is_some() && pending {
            RunStatus::Running
        } else if succeeded == cells.len() {
            RunStatus::Succeeded
        } else if run.cancel().is_cancelled() {
            RunStatus::Cancelled
        } else if succeeded == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Partial
        };
        let mut summaries = Vec::with_capacity(cells.len());
        for c in &cells {
            if !matches!(
                c.status,
                CellStatus::Pending | CellStatus::Running | CellStatus::Skipped
            ) {
                match store
                    .get_json::<CellSummary>(&layout.cell_summary(&c.cell))
                    .await
                {
                    Ok(s) => summaries.push(s),
                    Err(e) => {
                        store_errors.push(format!("reading the summary of `{}`: {e}", c.cell))
                    }
                }
            }
        }
        if let Err(e) = store.put_json(&layout.summary(), &summaries).await {
            store_errors.push(format!("writing the run summary: {e}"));
        }

        manifest.status = status;
        manifest.cells = BTreeMap::new();
        for c in &cells {
            let key = serde_json::to_value(c.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *manifest.cells.entry(key).or_default() += 1;
        }
        manifest.cell_status = cells.iter().map(|c| (c.cell.clone(), c.status)).collect();
        manifest.teardown_errors = teardown_errors.clone();
        manifest.finished_at = Some(timestamp(SystemTime::now()));
        if let Some(s) = manifest.sessions.last_mut() {
            s.finished_at = manifest.finished_at.clone();
            s.status = Some(status);
        }
        if let Err(e) = store.put_json(&layout.manifest(), &manifest).await {
            store_errors.push(format!("writing the manifest: {e}"));
        }
        let elapsed = started.elapsed();
        self.emit(Event::RunFinished { status, elapsed });
        Ok(RunReport {
            run_id: run.run_id().to_owned(),
            status,
            cells,
            setup_error: setup_error.map(|e| e.message),
            teardown_errors,
            store_errors,
            elapsed,
            search: searches,
        })
    }

    /// Runs the setup of a treatment whose setup has not run; returns the error that fails
    /// every cell, if any.
    async fn ensure_setup(
        &self,
        run: &RunContext,
        setup: &mut SegmentSetup<'_>,
    ) -> Option<CellError> {
        if let SegmentSetup::Pending(pipeline) = setup {
            self.emit(Event::StageStarted {
                stage: Stage::Setup,
            });
            let mut error = None;
            for step in self.layered(pipeline, run, Stage::Setup) {
                let cx = match run.step(Stage::Setup, None, step.name()) {
                    Ok(cx) => cx,
                    Err(e) => {
                        error = Some(cell_error(step.name(), &e));
                        break;
                    }
                };
                let (result, _) = self.invoke(&step, &cx).await;
                if let Err(e) = result {
                    error = Some(CellError {
                        step: step.name().to_owned(),
                        kind: e.kind().to_owned(),
                        message: format!("setup step `{}` failed: {e}", step.name()),
                    });
                    break;
                }
            }
            *setup = SegmentSetup::Done(error);
        }
        match setup {
            SegmentSetup::Done(e) => e.clone(),
            SegmentSetup::Pending(_) => None,
        }
    }

    /// Runs `cells` (one treatment's, or the whole plan's): in order, or as the experiment's
    /// SLO search decides.
    async fn run_cells(
        &self,
        run: &RunContext,
        cells: &[&Cell],
        steps: &[Arc<dyn Step>],
        setup: &mut SegmentSetup<'_>,
        state: &mut CellState<'_>,
    ) {
        if let Some(spec) = &run.experiment().search {
            let axis = spec.axis.param();
            // Groups: the cells that differ only in the searched value (and `repeat`).
            let mut groups: Vec<(String, Vec<&Cell>)> = Vec::new();
            for cell in cells {
                let key = cell
                    .params
                    .iter()
                    .filter(|(k, _)| k != axis && k != "repeat" && k != "treatment")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, g)) => g.push(cell),
                    None => groups.push((key, vec![cell])),
                }
            }
            for (key, group) in groups {
                let selected = self
                    .only
                    .as_ref()
                    .is_none_or(|o| group.iter().any(|c| o.contains(&c.id)));
                if !selected {
                    for cell in group {
                        if let Some(entry) = state.journal.get(&cell.id) {
                            state
                                .reports
                                .insert(cell.id.clone(), report_of(entry, false, BTreeMap::new()));
                        }
                    }
                    continue;
                }
                let outcome = self
                    .search_group(run, spec, &key, &group, steps, setup, state)
                    .await;
                state.searches.push(outcome);
            }
            return;
        }
        for cell in cells {
            let Some(entry) = state.journal.get(&cell.id).cloned() else {
                continue;
            };
            if self.only.as_ref().is_some_and(|o| !o.contains(&cell.id)) {
                state
                    .reports
                    .insert(cell.id.clone(), report_of(&entry, false, BTreeMap::new()));
                continue;
            }
            if !entry.status.needs_run() {
                self.emit(Event::CellSkipped {
                    cell: cell.id.clone(),
                });
                state
                    .reports
                    .insert(cell.id.clone(), report_of(&entry, false, BTreeMap::new()));
                continue;
            }
            if state.stop || run.cancel().is_cancelled() {
                // Not reached: stays as it was in the journal, so resume runs it.
                state
                    .reports
                    .insert(cell.id.clone(), report_of(&entry, false, BTreeMap::new()));
                continue;
            }
            self.run_now(run, cell, entry, steps, setup, state).await;
        }
    }

    /// Runs `cell` now (its treatment's setup first, if that has not run), and records the
    /// outcome. Returns its status, metrics and error, and whether setup had failed.
    async fn run_now(
        &self,
        run: &RunContext,
        cell: &Cell,
        entry: JournalEntry,
        steps: &[Arc<dyn Step>],
        setup: &mut SegmentSetup<'_>,
        state: &mut CellState<'_>,
    ) -> (CellStatus, BTreeMap<String, f64>, Option<CellError>, bool) {
        let setup_error = self.ensure_setup(run, setup).await;
        let (entry, metrics) = self
            .run_cell(
                run,
                cell,
                entry,
                state.total,
                steps,
                setup_error.as_ref(),
                state.store_errors,
            )
            .await;
        if entry.status == CellStatus::Failed && run.experiment().policy.fail_fast {
            state.stop = true;
        }
        let outcome = (
            entry.status,
            metrics.clone(),
            entry.error.clone(),
            setup_error.is_some(),
        );
        state
            .reports
            .insert(cell.id.clone(), report_of(&entry, true, metrics));
        state.journal.insert(cell.id.clone(), entry);
        outcome
    }

    /// One SLO search: probes the cells the search asks for (a cell that succeeded in an
    /// earlier session is judged from its stored summary), marks the others skipped, and
    /// returns what it found.
    #[allow(clippy::too_many_arguments)]
    async fn search_group(
        &self,
        run: &RunContext,
        spec: &crate::config::Search,
        key: &str,
        group: &[&Cell],
        steps: &[Arc<dyn Step>],
        setup: &mut SegmentSetup<'_>,
        state: &mut CellState<'_>,
    ) -> SearchOutcome {
        let axis = spec.axis.param();
        let mut search = crate::search::Search::for_spec(spec);
        let candidates = search.candidates().to_vec();
        // The cell of each (candidate, repeat).
        let mut by_probe: BTreeMap<(usize, u32), &Cell> = BTreeMap::new();
        for cell in group {
            let Some(value) = cell.param(axis).and_then(ParamValue::as_f64) else {
                continue;
            };
            let repeat = cell
                .param("repeat")
                .and_then(ParamValue::as_i64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1);
            if let Some(i) = candidates
                .iter()
                .position(|c| (c - value).abs() <= 1e-9 * c.abs().max(1.0))
            {
                by_probe.insert((i, repeat), cell);
            }
        }
        let mut probes = Vec::new();
        let mut error = None;
        let mut probed: BTreeSet<CellId> = BTreeSet::new();
        while let Some((i, repeat)) = search.next() {
            let Some(cell) = by_probe.get(&(i, repeat)).copied() else {
                error = Some(format!("no cell for {axis}={}", candidates[i]));
                search.stop();
                break;
            };
            if state.stop || run.cancel().is_cancelled() {
                error = Some("the run was stopped".into());
                search.stop();
                break;
            }
            let Some(entry) = state.journal.get(&cell.id).cloned() else {
                error = Some(format!("`{}` has no journal entry", cell.id));
                search.stop();
                break;
            };
            probed.insert(cell.id.clone());
            // A probe that succeeded earlier is judged from its stored summary.
            let stored = if entry.status == CellStatus::Succeeded {
                run.store()
                    .get_json::<CellSummary>(&run.layout().cell_summary(&cell.id))
                    .await
                    .ok()
            } else {
                None
            };
            let (status, metrics, cell_err, setup_failed) = match stored {
                Some(summary) => {
                    self.emit(Event::CellSkipped {
                        cell: cell.id.clone(),
                    });
                    state.reports.insert(
                        cell.id.clone(),
                        report_of(&entry, false, summary.metrics.clone()),
                    );
                    (CellStatus::Succeeded, summary.metrics, None, false)
                }
                None => self.run_now(run, cell, entry, steps, setup, state).await,
            };
            let value = candidates[i];
            let slo_metrics = crate::search::slo_metrics(spec, &metrics);
            let probe = |verdict: Verdict| Probe {
                value,
                repeat,
                cell: cell.id.to_string(),
                verdict,
                metrics: slo_metrics.clone(),
            };
            let reason = |e: &Option<CellError>| {
                e.as_ref()
                    .map_or_else(|| "the cell failed".to_owned(), |e| e.message.clone())
            };
            match status {
                CellStatus::Succeeded => match crate::search::judge(spec, &metrics) {
                    Ok(verdict) => {
                        search.record(i, verdict == Verdict::Pass);
                        probes.push(probe(verdict));
                    }
                    Err(message) => {
                        probes.push(probe(Verdict::Fail {
                            reason: message.clone(),
                        }));
                        error = Some(message);
                        search.stop();
                        break;
                    }
                },
                CellStatus::Failed if !setup_failed => {
                    // Failing under the load: the SLO does not hold there.
                    search.record(i, false);
                    probes.push(probe(Verdict::Fail {
                        reason: reason(&cell_err),
                    }));
                }
                _ => {
                    let message = reason(&cell_err);
                    probes.push(probe(Verdict::Fail {
                        reason: message.clone(),
                    }));
                    error = Some(message);
                    search.stop();
                    break;
                }
            }
        }
        // The candidates the search did not need are skipped (a cell that succeeded in an
        // earlier session keeps its results).
        for cell in group {
            if probed.contains(&cell.id) {
                continue;
            }
            let Some(mut entry) = state.journal.get(&cell.id).cloned() else {
                continue;
            };
            if entry.status != CellStatus::Succeeded && entry.status != CellStatus::Skipped {
                entry.status = CellStatus::Skipped;
                if let Err(e) = run
                    .store()
                    .put_json(&run.layout().journal(&cell.id), &entry)
                    .await
                {
                    state
                        .store_errors
                        .push(format!("journal of `{}`: {e}", cell.id));
                }
            }
            state
                .reports
                .insert(cell.id.clone(), report_of(&entry, false, BTreeMap::new()));
            state.journal.insert(cell.id.clone(), entry);
        }
        let (best, first_fail, converged) = search.result();
        let treatment = group
            .first()
            .and_then(|c| c.param("treatment"))
            .map(ToString::to_string);
        SearchOutcome {
            treatment,
            group: key.to_owned(),
            axis: spec.axis,
            best,
            first_fail,
            converged: converged && error.is_none(),
            error,
            probes,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_cell(
        &self,
        run: &RunContext,
        cell: &Cell,
        mut entry: JournalEntry,
        total: usize,
        steps: &[Arc<dyn Step>],
        setup_error: Option<&CellError>,
        store_errors: &mut Vec<String>,
    ) -> (JournalEntry, BTreeMap<String, f64>) {
        let store = run.store();
        let layout = run.layout();
        let started = Instant::now();
        entry.attempts += 1;
        entry.status = CellStatus::Running;
        entry.started_at = Some(timestamp(SystemTime::now()));
        entry.finished_at = None;
        entry.duration_s = None;
        entry.error = None;
        self.emit(Event::CellStarted {
            cell: cell.id.clone(),
            index: cell.index,
            total,
        });
        if let Err(e) = store.put_json(&layout.journal(&cell.id), &entry).await {
            store_errors.push(format!("journal of `{}`: {e}", cell.id));
        }

        let shared = Arc::new(cell.clone());
        let mut records = Vec::with_capacity(steps.len());
        let mut metrics = BTreeMap::new();
        let mut notes = Vec::new();
        let mut error = setup_error.cloned();
        let mut cancelled = false;
        if error.is_none() {
            for step in steps {
                let name = step.name().to_owned();
                let cx = match run.step(Stage::Cell, Some(shared.clone()), &name) {
                    Ok(cx) => cx,
                    Err(e) => {
                        error = Some(cell_error(&name, &e));
                        break;
                    }
                };
                let (result, elapsed) = self.invoke(step, &cx).await;
                match result {
                    Ok(out) => {
                        metrics.extend(out.metrics.iter().map(|(k, v)| (k.clone(), *v)));
                        notes.extend(out.notes.iter().cloned());
                        records.push(StepRecord {
                            step: name,
                            duration_s: secs(elapsed),
                            output: Some(out),
                            error: None,
                        });
                    }
                    Err(e) => {
                        cancelled = matches!(e, Error::Cancelled { .. });
                        let ce = cell_error(&name, &e);
                        records.push(StepRecord {
                            step: name,
                            duration_s: secs(elapsed),
                            output: None,
                            error: Some(ce.clone()),
                        });
                        error = Some(ce);
                        break;
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        let mut status = match (&error, cancelled) {
            (None, _) => CellStatus::Succeeded,
            (Some(_), true) => CellStatus::Cancelled,
            (Some(_), false) => CellStatus::Failed,
        };
        let summary = CellSummary {
            format: FORMAT_VERSION,
            cell: cell.id.clone(),
            params: cell.params.clone(),
            status,
            attempts: entry.attempts,
            duration_s: secs(elapsed),
            metrics: metrics.clone(),
            notes,
            steps: records,
            error: error.clone(),
        };
        // The cell counts as succeeded only once its summary is stored.
        if let Err(e) = store
            .put_json(&layout.cell_summary(&cell.id), &summary)
            .await
        {
            store_errors.push(format!("summary of `{}`: {e}", cell.id));
            if status == CellStatus::Succeeded {
                status = CellStatus::Failed;
                error = Some(cell_error("store", &e));
            }
        }
        entry.status = status;
        entry.finished_at = Some(timestamp(SystemTime::now()));
        entry.duration_s = Some(secs(elapsed));
        entry.error = error.clone();
        if let Err(e) = store.put_json(&layout.journal(&cell.id), &entry).await {
            store_errors.push(format!("journal of `{}`: {e}", cell.id));
        }
        self.emit(Event::CellFinished {
            cell: cell.id.clone(),
            status,
            elapsed,
            error: error.map(|e| e.message),
        });
        (entry, metrics)
    }
}

fn cell_error(step: &str, e: &Error) -> CellError {
    CellError {
        step: step.to_owned(),
        kind: e.kind().to_owned(),
        message: e.to_string(),
    }
}

fn report_of(entry: &JournalEntry, ran: bool, metrics: BTreeMap<String, f64>) -> CellReport {
    CellReport {
        cell: entry.cell.clone(),
        status: entry.status,
        ran,
        attempts: entry.attempts,
        duration: Duration::from_secs_f64(entry.duration_s.unwrap_or_default().max(0.0)),
        metrics,
        error: entry.error.clone(),
    }
}

/// Reads the stored cell summaries of a run, in plan order, for reports of earlier runs.
///
/// # Errors
/// As [`ArtifactStore::get`].
pub async fn load_summaries(
    store: &dyn ArtifactStore,
    layout: &crate::store::RunLayout,
) -> Result<Vec<CellSummary>> {
    store.get_json(&layout.summary()).await
}
