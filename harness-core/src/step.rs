//! Steps: the units a pipeline is made of.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{Experiment, Stage};
use crate::error::Result;
use crate::journal::Provenance;
use crate::plan::Cell;
use crate::redact::{RedactingStore, Secrets};
use crate::store::{ArtifactKey, ArtifactStore, RunLayout, ScopedStore};

/// One unit of work: deploy, wait, benchmark a cell, check, collect, tear down.
///
/// # Contract
/// * `name` is stable: it names the step in events, the journal and artifact keys, and must
///   be a single path segment (`A-Z a-z 0-9 . _ -`).
/// * `run` may be called many times (once per cell, again on retry) and concurrently for
///   different runs; keep per-call state in the context, not in `self`.
/// * `run` must stop soon after `cx.cancel()` fires and must not leave work behind: launch
///   processes through `cx.backend()` and tear them down, never spawn detached tasks.
/// * Return [`Error::Transient`](crate::Error::Transient) only for failures that a retry may
///   fix; the retry layer retries those and nothing else.
/// * Results that the cell's success depends on must be stored (through `cx.store()`)
///   before `run` returns `Ok`.
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait Step: Send + Sync + fmt::Debug {
    /// The stable name.
    fn name(&self) -> &str;
    /// Runs the step once.
    async fn run(&self, cx: &StepContext) -> Result<StepOutput>;
}

/// What a step reports: scalar metrics for the summary row, artifacts it wrote, notes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepOutput {
    /// Scalar metrics, e.g. `{"ttft.p50_ms": 51.2}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Keys of the artifacts it wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactKey>,
    /// Warnings and remarks for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl StepOutput {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metric.
    #[must_use]
    pub fn metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }

    /// Adds an artifact key.
    #[must_use]
    pub fn artifact(mut self, key: ArtifactKey) -> Self {
        self.artifacts.push(key);
        self
    }

    /// Adds a note.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// The same output without its metrics.
    #[must_use]
    pub fn clear_metrics(mut self) -> Self {
        self.metrics.clear();
        self
    }

    /// Adds everything `other` reports (its metrics win on equal names).
    #[must_use]
    pub fn merge(mut self, other: StepOutput) -> Self {
        self.metrics.extend(other.metrics);
        self.artifacts.extend(other.artifacts);
        self.notes.extend(other.notes);
        self
    }
}

/// Typed values shared by the steps of one run, e.g. the [`Endpoint`](crate::Endpoint) that
/// the deploy step found. Cloning shares the contents.
#[derive(Clone, Default)]
pub struct Resources {
    map: Arc<RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.map.read().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Resources").field("len", &n).finish()
    }
}

impl Resources {
    /// Stores `value`, replacing any earlier value of the same type.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&TypeId::of::<T>())
            .cloned()
            .and_then(|v| v.downcast::<T>().ok())
    }
}

/// What every step of one run shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    inner: Arc<RunShared>,
    provenance: Arc<Provenance>,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct RunShared {
    run_id: String,
    experiment: Arc<Experiment>,
    backend: Arc<dyn Backend>,
    store: Arc<dyn ArtifactStore>,
    layout: RunLayout,
    resources: Resources,
    /// The treatment this context runs, when the run has treatments.
    treatment: Option<String>,
}

/// Builds a [`RunContext`]; see [`RunContext::builder`].
#[derive(Debug)]
#[must_use]
pub struct RunContextBuilder {
    run_id: String,
    experiment: Arc<Experiment>,
    backend: Option<Arc<dyn Backend>>,
    store: Option<Arc<dyn ArtifactStore>>,
    cancel: CancellationToken,
    provenance: Option<Provenance>,
}

impl RunContextBuilder {
    /// Where workloads run (default: a [`LocalBackend`](crate::LocalBackend)).
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Where the run is stored (default: a [`MemoryStore`](crate::MemoryStore)).
    pub fn store(mut self, store: Arc<dyn ArtifactStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The token that cancels the run (default: a new one).
    pub fn cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Where the run came from, for its manifest.
    pub fn provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = Some(provenance);
        self
    }

    /// The context.
    ///
    /// # Errors
    /// As [`RunContext::new`], and when the default local backend cannot be made.
    pub fn build(self) -> Result<RunContext> {
        let backend: Arc<dyn Backend> = match self.backend {
            Some(b) => b,
            None => Arc::new(crate::LocalBackend::new()?),
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(crate::MemoryStore::new()));
        let run = RunContext::new(self.run_id, self.experiment, backend, store, self.cancel)?;
        Ok(match self.provenance {
            Some(p) => run.with_provenance(p),
            None => run,
        })
    }
}

impl RunContext {
    /// The context of run `run_id` of `experiment`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) when `run_id` is not one path
    /// segment.
    pub fn new(
        run_id: impl Into<String>,
        experiment: Arc<Experiment>,
        backend: Arc<dyn Backend>,
        store: Arc<dyn ArtifactStore>,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let run_id = run_id.into();
        let layout = RunLayout::new(experiment.name.as_str(), &run_id)?;
        // Secrets of the experiment and the environment never reach stored text.
        let secrets = Secrets::of_experiment(&experiment);
        let store: Arc<dyn ArtifactStore> = if secrets.is_empty() {
            store
        } else {
            Arc::new(RedactingStore::new(store, secrets))
        };
        Ok(RunContext {
            provenance: Arc::new(Provenance::default()),
            inner: Arc::new(RunShared {
                run_id,
                experiment,
                backend,
                store,
                layout,
                resources: Resources::default(),
                treatment: None,
            }),
            cancel,
        })
    }

    /// A builder with defaults: a [`LocalBackend`](crate::LocalBackend), a
    /// [`MemoryStore`](crate::MemoryStore) and a fresh cancellation token, each replaceable.
    ///
    /// ```
    /// # fn main() -> harness_core::Result<()> {
    /// use std::sync::Arc;
    /// use harness_core::{Experiment, MemoryStore, RunContext};
    /// let exp = Arc::new(Experiment::from_yaml_str(
    ///     "name: e\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n",
    ///     "e.yaml",
    /// )?);
    /// let run = RunContext::builder("r1", exp)
    ///     .store(Arc::new(MemoryStore::new()))
    ///     .build()?;
    /// assert_eq!(run.layout().root().as_str(), "runs/e/r1");
    /// # Ok(()) }
    /// ```
    pub fn builder(run_id: impl Into<String>, experiment: Arc<Experiment>) -> RunContextBuilder {
        RunContextBuilder {
            run_id: run_id.into(),
            experiment,
            backend: None,
            store: None,
            cancel: CancellationToken::new(),
            provenance: None,
        }
    }

    /// Records where the run came from in its manifest.
    pub fn with_provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = Arc::new(provenance);
        self
    }

    /// Where the run came from.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }
    /// The resolved experiment.
    pub fn experiment(&self) -> &Arc<Experiment> {
        &self.inner.experiment
    }
    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }
    /// The whole store.
    pub fn store(&self) -> &Arc<dyn ArtifactStore> {
        &self.inner.store
    }
    /// The keys of this run.
    pub fn layout(&self) -> &RunLayout {
        &self.inner.layout
    }
    /// Shared typed values.
    pub fn resources(&self) -> &Resources {
        &self.inner.resources
    }
    /// The treatment this context runs, when the run has treatments.
    pub fn treatment(&self) -> Option<&str> {
        self.inner.treatment.as_deref()
    }

    /// The run's cancellation token.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// This run as treatment `name` sees it: `experiment` (the treatment's resolved one)
    /// instead of the run's, resources of its own (its deployment's endpoint), and its setup
    /// and teardown artifacts under `treatments/<name>/`; the same id, backend, store and
    /// layout.
    #[must_use]
    pub fn for_treatment(&self, name: &str, experiment: Arc<Experiment>) -> Self {
        RunContext {
            inner: Arc::new(RunShared {
                run_id: self.inner.run_id.clone(),
                experiment,
                backend: self.inner.backend.clone(),
                store: self.inner.store.clone(),
                layout: self.inner.layout.clone(),
                resources: Resources::default(),
                treatment: Some(name.to_owned()),
            }),
            provenance: self.provenance.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// The same run with another cancellation token (teardown runs on a fresh one).
    #[must_use]
    pub fn with_cancel(&self, cancel: CancellationToken) -> Self {
        RunContext {
            inner: self.inner.clone(),
            provenance: self.provenance.clone(),
            cancel,
        }
    }

    /// The context for one invocation of step `step` in `stage`, for `cell` when per cell.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) when `step` is not a valid key
    /// segment.
    pub fn step(&self, stage: Stage, cell: Option<Arc<Cell>>, step: &str) -> Result<StepContext> {
        let mut scope = match (&cell, stage) {
            (Some(c), _) => format!("cells/{}", c.id),
            (None, Stage::Setup) => "setup".into(),
            (None, Stage::Teardown) => "teardown".into(),
            (None, Stage::Cell) => "run".into(),
        };
        if let (Some(t), None) = (&self.inner.treatment, &cell) {
            scope = format!("treatments/{t}/{scope}");
        }
        let prefix = self.inner.layout.step_artifacts(&scope, step)?;
        Ok(StepContext {
            run: self.clone(),
            stage,
            cell,
            step: step.to_owned(),
            artifacts: ScopedStore::new(self.inner.store.clone(), prefix),
            attempt: 1,
        })
    }
}

/// What one step invocation sees: the run, the cell, its own artifact folder, cancellation.
#[derive(Debug, Clone)]
pub struct StepContext {
    run: RunContext,
    stage: Stage,
    cell: Option<Arc<Cell>>,
    step: String,
    artifacts: ScopedStore,
    attempt: u32,
}

impl StepContext {
    /// The run this invocation belongs to.
    pub fn run(&self) -> &RunContext {
        &self.run
    }
    /// The stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }
    /// The cell, for per-cell steps.
    pub fn cell(&self) -> Option<&Arc<Cell>> {
        self.cell.as_ref()
    }
    /// The step's name.
    pub fn step_name(&self) -> &str {
        &self.step
    }
    /// The store, scoped to this step's artifact folder.
    pub fn artifacts(&self) -> &ScopedStore {
        &self.artifacts
    }
    /// The whole store.
    pub fn store(&self) -> &Arc<dyn ArtifactStore> {
        self.run.store()
    }
    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        self.run.backend()
    }
    /// Shared typed values.
    pub fn resources(&self) -> &Resources {
        self.run.resources()
    }
    /// Fires when the step must stop.
    pub fn cancel(&self) -> &CancellationToken {
        self.run.cancel()
    }
    /// The resolved experiment.
    pub fn experiment(&self) -> &Arc<Experiment> {
        self.run.experiment()
    }
    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// This context for attempt `n`.
    #[must_use]
    pub fn with_attempt(mut self, n: u32) -> Self {
        self.attempt = n;
        self
    }

    /// Replaces `{name}` in `template` by the cell's parameters, `{cell}` by its id, and
    /// `{run}` by the run id. Unknown names are left as they are.
    pub fn fill(&self, template: &str) -> String {
        let mut out = template.replace("{run}", self.run.run_id());
        if let Some(cell) = &self.cell {
            out = out.replace("{cell}", cell.id.as_str());
            for (k, v) in &cell.params {
                out = out.replace(&format!("{{{k}}}"), &v.to_string());
            }
        }
        out
    }
}

/// A step made from a closure; see [`step_fn`].
pub struct FnStep<F> {
    name: String,
    f: F,
}

impl<F> fmt::Debug for FnStep<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnStep").field("name", &self.name).finish()
    }
}

/// Makes a step from an async closure: `step_fn("noop", |_cx| async { Ok(StepOutput::new()) })`.
///
/// ```
/// use harness_core::{StepOutput, step_fn};
/// let step = step_fn("count-params", |cx| async move {
///     let n = cx.cell().map_or(0, |c| c.params.len());
///     Ok(StepOutput::new().metric("params", n as f64))
/// });
/// # let _ = step;
/// ```
pub fn step_fn<F, Fut>(name: impl Into<String>, f: F) -> FnStep<F>
where
    F: Fn(StepContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<StepOutput>> + Send,
{
    FnStep {
        name: name.into(),
        f,
    }
}

#[async_trait]
impl<F, Fut> Step for FnStep<F>
where
    F: Fn(StepContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<StepOutput>> + Send,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        (self.f)(cx.clone()).await
    }
}
