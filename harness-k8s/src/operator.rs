//! `harness operator`: the controller of [`DynamoBenchmark`] resources, on `kube::runtime`
//! (a `Controller` that watches them, with backoff on errors and requeues while it waits).
//!
//! * **Once.** A resource without a phase is checked (an invalid one gets phase `Invalid`
//!   and the reason), then marked `Running` with a new run id by a patch that carries the
//!   resource's `resourceVersion`: the run starts only when that patch succeeded, so a
//!   status that cannot be written, or a stale copy, never starts a second run. Every phase
//!   change is such a conflict-checked patch; progress (`cellsDone`, `currentCell`) is
//!   written as the run goes.
//! * **Resumed.** A resource found `Running` with a run id that this operator does not run
//!   (the operator restarted mid-run) resumes that run: its finished cells are kept.
//! * **One model at a time.** A resource whose experiment targets the model of a running one
//!   waits (phase `Waiting`, condition `Running=False`, reason `WaitingForModel`).
//! * **Finalizer.** Every resource carries [`FINALIZER`]; deleting it cancels its run (the
//!   run's teardown deletes what it deployed) and removes whatever is still labelled with the
//!   run, before the resource goes. What the run creates carries an ownerReference to it.
//! * **Status.** `phase`, `runId`, the cell counts, `conditions` (`Running`, `Finished`) and
//!   `observedGeneration`.
//! * An experiment that names no backend runs on Kubernetes in the resource's namespace.
//!
//! The runs themselves are made by the [`Runs`] implementation the caller provides (the
//! `harness` program's `App`, which runs an experiment as `harness run` does; a test may
//! give a closure, [`RunFn`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use harness_core::{
    CancellationToken, CellStatus, Error, Event, Experiment, Reporter, Result, RunStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, finalizer, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{DynamoBenchmark, DynamoBenchmarkStatus};

/// The finalizer the operator puts on every `DynamoBenchmark`.
pub const FINALIZER: &str = "harness.dev/run-cleanup";

/// How often a waiting resource looks again whether its model is free.
const WAIT_REQUEUE: Duration = Duration::from_secs(5);

/// What the operator asks the run function to do.
#[non_exhaustive]
pub struct RunRequest {
    /// The checked experiment (its backend defaulted to Kubernetes in the resource's
    /// namespace when it names none).
    pub experiment: Experiment,
    /// The run id to use.
    pub run_id: String,
    /// Whether the run exists already and is to be resumed (the operator restarted).
    pub resume: bool,
    /// The store URL from the resource, when it gives one.
    pub store: Option<String>,
    /// Receives the run's events (the operator turns them into status updates).
    pub reporter: Arc<dyn Reporter>,
    /// Cancelled when the resource is deleted or the operator stops.
    pub cancel: CancellationToken,
    /// The resource, as the owner of what the run creates (when the run creates objects in
    /// the resource's namespace: an owner in another namespace is not allowed).
    pub owner: Option<OwnerReference>,
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("experiment", &self.experiment.name)
            .field("run_id", &self.run_id)
            .field("resume", &self.resume)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Runs an experiment; returns how the run ended.
pub type RunFn = Arc<dyn Fn(RunRequest) -> BoxFuture<'static, Result<RunStatus>> + Send + Sync>;

/// What runs the operator's experiments: the program itself (`harness::App` implements it),
/// or a closure ([`RunFn`]).
pub trait Runs: Send + Sync + 'static {
    /// Runs the request's experiment with its run id, store and reporter; returns how the
    /// run ended.
    fn run(&self, request: RunRequest) -> BoxFuture<'static, Result<RunStatus>>;
}

impl Runs for RunFn {
    fn run(&self, request: RunRequest) -> BoxFuture<'static, Result<RunStatus>> {
        self(request)
    }
}

/// A run this operator is running.
struct Active {
    model: String,
    name: String,
    cancel: CancellationToken,
    done: tokio::sync::watch::Receiver<bool>,
}

/// What the reconciler shares.
struct Context {
    api: Api<DynamoBenchmark>,
    client: kube::Client,
    namespace: String,
    run: Arc<dyn Runs>,
    /// Runs by resource uid.
    active: Mutex<BTreeMap<String, Active>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    stopping: CancellationToken,
}

/// The controller of [`DynamoBenchmark`] resources in one namespace.
pub struct Operator {
    cx: Arc<Context>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("namespace", &self.cx.namespace)
            .finish_non_exhaustive()
    }
}

/// Turns run events into status patches, in order, on a task of its own.
struct StatusReporter {
    tx: tokio::sync::mpsc::UnboundedSender<Value>,
    status: Mutex<DynamoBenchmarkStatus>,
}

impl Reporter for StatusReporter {
    fn on_event(&self, event: &Event) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            // A resumed run counts its cells again: those done earlier are skipped (one
            // event each), and one cut short by the stop runs again.
            Event::RunStarted { .. } => {
                s.cells_done = 0;
                s.cells_failed = 0;
                s.current_cell = None;
            }
            Event::CellStarted { cell, .. } => s.current_cell = Some(cell.to_string()),
            Event::CellFinished { status, .. } => {
                s.cells_done += 1;
                if *status != CellStatus::Succeeded {
                    s.cells_failed += 1;
                }
                s.current_cell = None;
            }
            Event::CellSkipped { .. } => s.cells_done += 1,
            _ => return,
        }
        let _ = self.tx.send(json!({
            "cellsDone": s.cells_done,
            "cellsFailed": s.cells_failed,
            "currentCell": s.current_cell,
        }));
    }
}

fn run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("op-{}-{:04x}", now.as_secs(), now.subsec_nanos() & 0xffff)
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A status condition.
fn condition(kind: &str, status: bool, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
        "observedGeneration": generation,
    })
}

/// The experiment of `res`, its backend defaulted to Kubernetes in the resource's namespace.
fn experiment_of(res: &DynamoBenchmark, namespace: &str) -> Result<Experiment> {
    let name = res.name_any();
    let source = format!("DynamoBenchmark {name}");
    let whole = serde_json::to_value(res).map_err(|e| Error::invalid(&source, e.to_string()))?;
    crate::crd::check(&whole).map_err(|m| Error::invalid(&source, m))?;
    let mut spec = res.spec.experiment.clone();
    if let Some(obj) = spec.as_object_mut() {
        let backend = obj.entry("backend").or_insert_with(|| json!({}));
        if let Some(b) = backend.as_object_mut() {
            b.entry("kind").or_insert_with(|| json!("kubernetes"));
            if b.get("kind") == Some(&json!("kubernetes")) {
                b.entry("namespace").or_insert_with(|| json!(namespace));
            }
        }
    }
    let exp = Experiment::from_json(&spec, &source)?;
    exp.plan()?;
    // The operator's pod has no file of the user's: the manifests must be the YAML itself.
    if let harness_core::config::Deployment::Manifests { manifests, .. } = &exp.deployment
        && !manifests.contains('\n')
    {
        return Err(Error::invalid(
            format!("{source}: deployment.manifests"),
            format!(
                "`{manifests}` names a file, which the operator cannot read: give the YAML itself"
            ),
        ));
    }
    Ok(exp)
}

impl Context {
    /// Writes `status` (merged) if the resource is still at `resource_version`.
    async fn patch_checked(&self, name: &str, resource_version: &str, status: Value) -> Result<()> {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "status": status});
        self.api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| Error::transient(format!("updating the status of {name}"), e))
    }

    /// Writes `status` (merged) on the latest version, retrying on conflicts.
    async fn patch_latest(&self, name: &str, status: Value) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let current = match self.api.get_opt(name).await {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(()),
                Err(e) => {
                    last = Some(Error::transient(format!("reading {name}"), e));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let rv = current.resource_version().unwrap_or_default();
            match self.patch_checked(name, &rv, status.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| Error::failed(name, "the status could not be written")))
    }

    /// The name of a running resource that targets `model`, other than `uid`.
    fn model_busy(&self, model: &str, uid: &str) -> Option<String> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(u, a)| u.as_str() != uid && a.model == model)
            .map(|(_, a)| a.name.clone())
    }

    async fn apply(self: &Arc<Self>, res: Arc<DynamoBenchmark>) -> Result<Action> {
        let name = res.name_any();
        let uid = res.uid().unwrap_or_default();
        let generation = res.meta().generation.unwrap_or(1);
        let rv = res.resource_version().unwrap_or_default();
        let status = res.status.clone().unwrap_or_default();
        if self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&uid)
        {
            return Ok(Action::await_change());
        }
        match status.phase.as_deref() {
            Some("Succeeded" | "PartiallyFailed" | "Failed" | "Invalid") => {
                return Ok(Action::await_change());
            }
            Some("Running") if status.run_id.is_some() => {
                // Started by an operator that stopped: resume its run.
                let exp = match experiment_of(&res, &self.namespace) {
                    Ok(e) => e,
                    Err(e) => return self.invalid(&name, &rv, generation, &e).await,
                };
                let id = status.run_id.clone().unwrap_or_default();
                tracing::info!(resource = %name, run = %id, "resuming the run of a resource found running");
                self.start(&res, exp, id, true, status);
                return Ok(Action::await_change());
            }
            _ => {}
        }
        let exp = match experiment_of(&res, &self.namespace) {
            Ok(e) => e,
            Err(e) => return self.invalid(&name, &rv, generation, &e).await,
        };
        if let Some(other) = self.model_busy(exp.model.name.as_str(), &uid) {
            if status.phase.as_deref() != Some("Waiting") {
                let message = format!("model {} is being benchmarked by {other}", exp.model.name);
                self.patch_checked(
                    &name,
                    &rv,
                    json!({"phase": "Waiting", "observedGeneration": generation,
                           "conditions": [condition("Running", false, "WaitingForModel", &message, generation)]}),
                )
                .await?;
            }
            return Ok(Action::requeue(WAIT_REQUEUE));
        }
        let total = exp.plan().map(|p| p.len() as u32).unwrap_or(0);
        let id = run_id();
        // The run starts only once this conflict-checked patch is written: a failure or a
        // stale copy requeues, and never starts a second run.
        self.patch_checked(
            &name,
            &rv,
            json!({
                "phase": "Running", "runId": id, "cellsTotal": total, "cellsDone": 0,
                "cellsFailed": 0, "message": null, "observedGeneration": generation,
                "conditions": [condition("Running", true, "Started", &format!("run {id}"), generation)],
            }),
        )
        .await?;
        let status = DynamoBenchmarkStatus {
            phase: Some("Running".into()),
            run_id: Some(id.clone()),
            cells_total: total,
            ..Default::default()
        };
        self.start(&res, exp, id, false, status);
        Ok(Action::await_change())
    }

    async fn invalid(&self, name: &str, rv: &str, generation: i64, e: &Error) -> Result<Action> {
        self.patch_checked(
            name,
            rv,
            json!({"phase": "Invalid", "message": e.to_string(), "observedGeneration": generation,
                   "conditions": [condition("Finished", true, "Invalid", &e.to_string(), generation)]}),
        )
        .await?;
        Ok(Action::await_change())
    }

    /// Starts (or resumes) the run of `res` on a task of its own.
    fn start(
        self: &Arc<Self>,
        res: &DynamoBenchmark,
        exp: Experiment,
        id: String,
        resume: bool,
        status: DynamoBenchmarkStatus,
    ) {
        let name = res.name_any();
        let uid = res.uid().unwrap_or_default();
        let generation = res.meta().generation.unwrap_or(1);
        let cancel = self.stopping.child_token();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                uid.clone(),
                Active {
                    model: exp.model.name.to_string(),
                    name: name.clone(),
                    cancel: cancel.clone(),
                    done: done_rx,
                },
            );
        let owner = OwnerReference {
            api_version: "harness.dev/v1alpha1".into(),
            kind: "DynamoBenchmark".into(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let reporter = Arc::new(StatusReporter {
            tx,
            status: Mutex::new(status),
        });
        let owner = (exp.backend.namespace() == self.namespace).then_some(owner);
        let request = RunRequest {
            experiment: exp,
            run_id: id,
            resume,
            store: res.spec.store.clone(),
            reporter: reporter.clone(),
            cancel: cancel.clone(),
            owner,
        };
        let cx = self.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(async move {
                let updates = {
                    let (cx, name) = (cx.clone(), name.clone());
                    tokio::spawn(async move {
                        while let Some(s) = rx.recv().await {
                            let patch = json!({"status": s});
                            if let Err(e) = cx
                                .api
                                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                            {
                                tracing::warn!(resource = %name, error = %e, "could not write the progress");
                            }
                        }
                    })
                };
                let result = cx.run.run(request).await;
                drop(reporter);
                let _ = updates.await;
                let stopped = cx.stopping.is_cancelled();
                if !(stopped && cancel.is_cancelled()) {
                    let (phase, message, ok) = match &result {
                        Ok(RunStatus::Succeeded) => ("Succeeded", String::new(), true),
                        Ok(RunStatus::Partial) => {
                            ("PartiallyFailed", "some cells failed".to_owned(), true)
                        }
                        Ok(other) => ("Failed", format!("the run ended {other:?}"), false),
                        Err(e) => ("Failed", e.to_string(), false),
                    };
                    let status = json!({
                        "phase": phase,
                        "message": (!message.is_empty()).then_some(message.clone()),
                        "currentCell": null,
                        "observedGeneration": generation,
                        "conditions": [
                            condition("Running", false, phase, "", generation),
                            condition("Finished", ok, phase, &message, generation),
                        ],
                    });
                    if let Err(e) = cx.patch_latest(&name, status).await {
                        tracing::warn!(resource = %name, error = %e, "could not record the end");
                    }
                } else {
                    // The operator is stopping: the resource stays `Running` with its run id,
                    // and the next operator resumes it.
                    tracing::info!(resource = %name, "run interrupted by shutdown; it resumes on restart");
                }
                cx.active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uid);
                let _ = done_tx.send(true);
            });
    }

    /// The resource is being deleted: cancel its run, wait for its teardown, and remove what
    /// is still labelled with the run.
    async fn cleanup(&self, res: Arc<DynamoBenchmark>) -> Result<Action> {
        let uid = res.uid().unwrap_or_default();
        let active = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .map(|a| (a.cancel.clone(), a.done.clone()));
        if let Some((cancel, mut done)) = active {
            tracing::info!(resource = %res.name_any(), "deleted while running: cancelling its run");
            cancel.cancel();
            let _ = done.wait_for(|d| *d).await;
        }
        if let Some(id) = res.status.as_ref().and_then(|s| s.run_id.clone()) {
            let ns = self.experiment_namespace(&res);
            let backend = crate::K8sBackend::new(self.client.clone(), ns);
            let selector = format!("harness.dev/run={}", crate::incluster::dns_label_of(&id));
            backend.cleanup(&selector).await?;
        }
        Ok(Action::await_change())
    }

    fn experiment_namespace(&self, res: &DynamoBenchmark) -> String {
        res.spec
            .experiment
            .pointer("/backend/namespace")
            .and_then(Value::as_str)
            .unwrap_or(&self.namespace)
            .to_owned()
    }
}

async fn reconcile(
    res: Arc<DynamoBenchmark>,
    cx: Arc<Context>,
) -> std::result::Result<Action, finalizer::Error<Error>> {
    let api = cx.api.clone();
    finalizer::finalizer(&api, FINALIZER, res, |event| async {
        match event {
            finalizer::Event::Apply(res) => cx.apply(res).await,
            finalizer::Event::Cleanup(res) => cx.cleanup(res).await,
        }
    })
    .await
}

fn error_policy(
    res: Arc<DynamoBenchmark>,
    error: &finalizer::Error<Error>,
    _cx: Arc<Context>,
) -> Action {
    tracing::warn!(resource = %res.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

impl Operator {
    /// An operator for `namespace` that runs experiments with `run`.
    pub fn new(client: kube::Client, namespace: &str, run: impl Runs) -> Self {
        Operator {
            cx: Arc::new(Context {
                api: Api::namespaced(client.clone(), namespace),
                client,
                namespace: namespace.to_owned(),
                run: Arc::new(run),
                active: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(tokio::task::JoinSet::new()),
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// Watches and reconciles the resources until `cancel`; then cancels the runs still
    /// going (their teardown runs; their resources stay `Running`, so the next operator
    /// resumes them) and waits for them.
    pub async fn run(&self, cancel: &CancellationToken) {
        let stop = cancel.clone();
        let controller = Controller::new(self.cx.api.clone(), watcher::Config::default())
            .graceful_shutdown_on(async move { stop.cancelled().await });
        controller
            .run(reconcile, error_policy, self.cx.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "reconcile");
                }
            })
            .await;
        self.cx.stopping.cancel();
        self.wait_idle().await;
    }

    /// Waits until every started run has ended and its status is written.
    pub async fn wait_idle(&self) {
        let mut tasks =
            std::mem::take(&mut *self.cx.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}
