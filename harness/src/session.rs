//! Running an experiment from a program, as `harness run` does: [`App::run`], or
//! [`App::prepare`] then [`PreparedRun::execute`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use harness_core::{
    ArtifactStore, Backend, CancellationToken, CellId, Error, Experiment, LocalBackend, Pipeline,
    Plan, Provenance, Reporter, RunContext, RunMode, RunReport, Runner, Step, TracingReporter,
};
use harness_storage::SpoolingStore;

use crate::app::App;
use crate::stores::{StoreArgs, check_store, open_run_store, store_url};
use crate::wiring::{
    CellSteps, MockServing, RunPipelines, backend_for, build_pipelines, here_pipeline,
};

/// How to run an experiment with [`App::run`] or [`App::prepare`]: where results go, which
/// cells, extra steps, reporters, cancellation. The defaults are those of `harness run`,
/// except that a `deployment: {mock: ...}` is served in this process (see
/// [`RunOptions::mock_program`]).
///
/// ```
/// use harness::RunOptions;
/// let options = RunOptions::new()
///     .store("file:///tmp/harness-runs")
///     .run_id("nightly-42");
/// # let _ = options;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct RunOptions {
    pub(crate) store: StoreArgs,
    run_id: Option<String>,
    resume: bool,
    input: Option<String>,
    provenance: Provenance,
    only: Vec<String>,
    plan_only: bool,
    here: Option<Option<String>>,
    deployed_at: Option<String>,
    cell_steps: Vec<Arc<dyn Step>>,
    reporters: Vec<Arc<dyn Reporter>>,
    cancel: CancellationToken,
    mock_program: Option<PathBuf>,
    owner: Option<Owner>,
}

/// The owner of what a run creates in Kubernetes (an ownerReference).
#[cfg(feature = "kubernetes")]
pub(crate) type Owner = harness_k8s::OwnerReference;
/// Without Kubernetes there is nothing to own.
#[cfg(not(feature = "kubernetes"))]
pub(crate) type Owner = ();

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("store", &self.store.store)
            .field("run_id", &self.run_id)
            .field("resume", &self.resume)
            .field("only", &self.only)
            .field("plan_only", &self.plan_only)
            .field("here", &self.here)
            .field("deployed_at", &self.deployed_at)
            .field("cell_steps", &self.cell_steps.len())
            .field("reporters", &self.reporters.len())
            .field("mock_program", &self.mock_program)
            .finish_non_exhaustive()
    }
}

impl RunOptions {
    /// The defaults: the experiment's `storage.url` (else `file://./harness-runs`), a new run
    /// with a generated id, every cell.
    pub fn new() -> Self {
        RunOptions::default()
    }

    /// The store URL (over the experiment's `storage.url`).
    pub fn store(mut self, url: impl Into<String>) -> Self {
        self.store.store = Some(url.into());
        self
    }

    /// A store option (over the experiment's `storage.options`), e.g. `endpoint`.
    pub fn store_option(mut self, key: &str, value: &str) -> Self {
        self.store.store_opts.push(format!("{key}={value}"));
        self
    }

    /// The run's id (default: date, time and a random suffix).
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// Continue the stored run of [`RunOptions::run_id`]: cells that succeeded are kept,
    /// the others run again.
    pub fn resume(mut self) -> Self {
        self.resume = true;
        self
    }

    /// The experiment file's text, stored with a new run as `experiment.yaml`.
    pub fn input(mut self, text: impl Into<String>) -> Self {
        self.input = Some(text.into());
        self
    }

    /// Where the run came from, recorded in its manifest.
    pub fn provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = provenance;
        self
    }

    /// Run only this cell (repeatable); the run stays `running` until every cell ran.
    pub fn only(mut self, cell: impl Into<String>) -> Self {
        self.only.push(cell.into());
        self
    }

    /// Only create the run (manifest and pending cells); later runs with
    /// [`RunOptions::only`] run the cells.
    pub fn plan_only(mut self) -> Self {
        self.plan_only = true;
        self
    }

    /// Run the cells' steps in this process without deploying, against the model at
    /// `endpoint` (default `deployment.url`): a workflow manages the deployment.
    pub fn here(mut self, endpoint: Option<String>) -> Self {
        self.here = Some(endpoint);
        self
    }

    /// The model is deployed already, at `url` (by a workflow's deploy task): the run waits
    /// until it answers instead of deploying it, and leaves it up. The cells run as the
    /// experiment says (on Kubernetes, in-cluster Jobs), unlike [`RunOptions::here`]. The
    /// run's stored experiment keeps its own `deployment`.
    pub fn deployed_at(mut self, url: impl Into<String>) -> Self {
        self.deployed_at = Some(url.into());
        self
    }

    /// A step for every cell (repeatable), after the experiment's own per-cell steps. An
    /// experiment with per-cell steps (its own or these) does not get the default
    /// `benchmark` step.
    pub fn cell_step(mut self, step: Arc<dyn Step>) -> Self {
        self.cell_steps.push(step);
        self
    }

    /// A reporter of the run's events (repeatable), besides the tracing log.
    pub fn reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.reporters.push(reporter);
        self
    }

    /// The token that stops the run (teardown still runs); default a fresh one.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Serve `deployment: {mock: ...}` as `<program> mock`, a process of its own, as
    /// `harness run` does (the program is an [`App`] binary). Without it the mock is served
    /// in this process (`harness_llm::mock::in_process_steps`).
    pub fn mock_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.mock_program = Some(program.into());
        self
    }

    /// Makes `owner` (e.g. the operator's `DynamoBenchmark`) the owner of every object the
    /// run creates in Kubernetes, so deleting it deletes them.
    #[cfg(feature = "kubernetes")]
    pub fn kubernetes_owner(mut self, owner: harness_k8s::OwnerReference) -> Self {
        self.owner = Some(owner);
        self
    }
}

/// A run ready to start: stores opened and probed, pipeline and backend chosen.
pub struct PreparedRun {
    run: RunContext,
    plan: Plan,
    pipelines: RunPipelines,
    mode: RunMode,
    only: Option<Vec<CellId>>,
    spool: Option<Arc<SpoolingStore>>,
    reporters: Vec<Arc<dyn Reporter>>,
    local: LocalBackend,
}

impl std::fmt::Debug for PreparedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRun")
            .field("run_id", &self.run.run_id())
            .field("cells", &self.plan.len())
            .finish_non_exhaustive()
    }
}

/// How a run went.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The runner's report: status and every cell.
    pub report: RunReport,
    /// The run: its experiment, layout and store, to read what the steps stored.
    pub run: RunContext,
    /// For a remote store: what the spool held at the end.
    pub spool: Option<SpoolOutcome>,
}

/// What a remote store's spool did during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolOutcome {
    /// The spool folder.
    pub location: String,
    /// Objects uploaded from the spool after an outage.
    pub uploaded: usize,
    /// Objects still waiting there (`harness push` uploads them).
    pub remaining: usize,
    /// Why some could not be uploaded.
    pub errors: Vec<String>,
}

impl App {
    /// Runs `exp` as `harness run` does (deployment, every cell, teardown, the report),
    /// without a terminal: no progress bars, no table, no signal handling (cancel through
    /// [`RunOptions::cancel`]).
    ///
    /// # Errors
    /// Invalid input (the experiment, an option, a store that fails its probe) before
    /// anything is deployed; a failure of the store during the run. Failed cells are not
    /// errors: they are in the outcome's report.
    pub async fn run(&self, exp: Experiment, options: RunOptions) -> Result<RunOutcome, Error> {
        self.prepare(exp, options).await?.execute().await
    }

    /// Prepares a run of `exp`: opens and probes the store, builds the pipeline and the
    /// backend. [`PreparedRun::execute`] runs it.
    ///
    /// # Errors
    /// As [`App::run`], before anything is deployed.
    pub async fn prepare(
        &self,
        exp: Experiment,
        options: RunOptions,
    ) -> Result<PreparedRun, Error> {
        let RunOptions {
            store: store_args,
            run_id,
            resume,
            input,
            provenance,
            only,
            plan_only,
            here,
            deployed_at,
            cell_steps,
            reporters,
            cancel,
            mock_program,
            owner,
        } = options;
        let (store, spool) = open_run_store(&store_args, &exp.storage).await?;
        let url = store_url(&store_args, Some(&exp.storage));
        let plan = exp.plan()?;
        let file = provenance
            .experiment_file
            .clone()
            .unwrap_or_else(|| "experiment".into());
        let (run_id, mode) = match (resume, run_id) {
            (true, Some(id)) => (id, RunMode::Resume),
            (true, None) => {
                return Err(Error::invalid(
                    "resume",
                    "needs the id of the run to resume",
                ));
            }
            (false, id) => (id.unwrap_or_else(new_run_id), RunMode::New { input }),
        };
        let extra = CellSteps(cell_steps);
        let pipelines = if plan_only {
            RunPipelines {
                main: Pipeline::builder().build()?,
                treatments: Vec::new(),
            }
        } else if let Some(endpoint) = &here {
            if !exp.treatments.is_empty() {
                return Err(Error::invalid(
                    "--here",
                    "runs one deployment's cells; an experiment with treatments deploys each in turn",
                ));
            }
            RunPipelines {
                main: here_pipeline(self, &exp, &file, endpoint.as_deref(), &extra)?,
                treatments: Vec::new(),
            }
        } else {
            let mock = match mock_program {
                Some(p) => MockServing::Process(p),
                None => MockServing::InProcess,
            };
            match deployed_at {
                Some(at) => {
                    if !exp.treatments.is_empty() {
                        return Err(Error::invalid(
                            "--endpoint",
                            "names one deployment; an experiment with treatments deploys each in turn",
                        ));
                    }
                    // Waited for at `at`, not deployed; the stored experiment is the run's own.
                    let mut deployed = exp.clone();
                    deployed.deployment = harness_core::config::Deployment::Url {
                        url: at,
                        health: None,
                        gpus: exp.deployment.gpus(),
                    };
                    build_pipelines(self, &deployed, &file, &url, &mock, &extra)?
                }
                None => build_pipelines(self, &exp, &file, &url, &mock, &extra)?,
            }
        };
        let mut cells = Vec::new();
        for id in &only {
            // `treatment=<name>` selects every cell of a treatment.
            let of_treatment: Vec<_> = id
                .strip_prefix("treatment=")
                .filter(|t| exp.treatments.get(t).is_some())
                .map(|t| {
                    plan.cells()
                        .iter()
                        .filter(|c| c.param("treatment").is_some_and(|v| v.to_string() == t))
                        .map(|c| c.id.clone())
                        .collect()
                })
                .unwrap_or_default();
            if !of_treatment.is_empty() {
                cells.extend(of_treatment);
                continue;
            }
            let cell = plan
                .cells()
                .iter()
                .find(|c| c.id.as_str() == id)
                .ok_or_else(|| {
                    Error::invalid(
                        format!("--only {id}"),
                        "not a cell of the plan (nor `treatment=<name>` of a treatment)",
                    )
                })?;
            cells.push(cell.id.clone());
        }
        let local = LocalBackend::new()?;
        let backend: Arc<dyn Backend> = if here.is_some() || plan_only {
            Arc::new(local.clone())
        } else {
            backend_for(self, &exp, &run_id, &url, &local, owner).await?
        };
        let run = RunContext::new(run_id, Arc::new(exp), backend, store.clone(), cancel)?
            .with_provenance(provenance);
        check_store(&store, spool.as_deref(), &run).await?;
        Ok(PreparedRun {
            run,
            plan,
            pipelines,
            mode,
            only: (plan_only || !cells.is_empty()).then_some(cells),
            spool,
            reporters,
            local,
        })
    }
}

impl PreparedRun {
    /// The run: id, experiment, layout, store.
    pub fn context(&self) -> &RunContext {
        &self.run
    }

    /// The cells of the run.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The store the run writes to (through its spool for a remote store).
    pub fn store(&self) -> &Arc<dyn ArtifactStore> {
        self.run.store()
    }

    /// The local backend of the run's processes, to kill them all at once
    /// ([`LocalBackend::kill_all_now`]) when waiting for teardown is not an option.
    pub fn local_backend(&self) -> &LocalBackend {
        &self.local
    }

    /// Runs every cell (or those of [`RunOptions::only`]), then flushes the spool of a
    /// remote store.
    ///
    /// # Errors
    /// When the run's journal cannot be written or read back.
    pub async fn execute(self) -> Result<RunOutcome, Error> {
        let mut runner = Runner::new(self.pipelines.main).reporter(Arc::new(TracingReporter));
        for (name, exp, pipeline) in self.pipelines.treatments {
            runner = runner.treatment(name, exp, pipeline);
        }
        for r in self.reporters {
            runner = runner.reporter(r);
        }
        if let Some(cells) = self.only {
            runner = runner.only(cells);
        }
        let report = runner.run(&self.run, &self.plan, self.mode).await?;
        let spool = match self.spool {
            Some(spool) => {
                let flushed = spool.flush().await;
                Some(SpoolOutcome {
                    location: spool.spool().describe(),
                    uploaded: spool.uploaded(),
                    remaining: flushed.remaining,
                    errors: flushed.errors,
                })
            }
            None => None,
        };
        Ok(RunOutcome {
            report,
            run: self.run,
            spool,
        })
    }
}

/// A new run's id: `20261128-141200-3f2a` (UTC date and time, a random suffix).
pub(crate) fn new_run_id() -> String {
    let now = SystemTime::now();
    let text = humantime_like(now);
    let salt = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().rotate_left(16);
    format!("{text}-{:04x}", salt & 0xffff)
}

/// `20261128-141200` from a time, in UTC.
fn humantime_like(t: SystemTime) -> String {
    let s = harness_core::journal::timestamp(t); // 2026-11-28T14:12:00.123Z
    let digits: String = s.chars().take(19).filter(char::is_ascii_digit).collect();
    format!(
        "{}-{}",
        &digits[..8.min(digits.len())],
        &digits[8.min(digits.len())..]
    )
}
