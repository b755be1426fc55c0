//! `harness operator`: reconciles [`DynamoBenchmark`] resources by running their experiment
//! and writing per-cell progress and the run id into `.status`.
//!
//! A resource without a phase is picked up once: its experiment is checked (an invalid one
//! gets phase `Invalid` and the reason in `.status.message`), then run through the
//! [`Runs`] implementation the caller provides (the `harness` program's `App`, which runs it
//! as `harness run` does; a test may give a closure, [`RunFn`]). Events of the run update `.status` as they happen: `cellsDone`,
//! `cellsFailed`, `currentCell`; the end sets `Succeeded`, `PartiallyFailed` or `Failed`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use harness_core::{
    CancellationToken, CellStatus, Error, Event, Experiment, Reporter, Result, RunStatus,
};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::crd::{DynamoBenchmark, DynamoBenchmarkStatus};

/// What the operator asks the run function to do.
#[non_exhaustive]
pub struct RunRequest {
    /// The checked experiment.
    pub experiment: Experiment,
    /// The run id to use.
    pub run_id: String,
    /// The store URL from the resource, when it gives one.
    pub store: Option<String>,
    /// Receives the run's events (the operator turns them into status updates).
    pub reporter: Arc<dyn Reporter>,
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("experiment", &self.experiment.name)
            .field("run_id", &self.run_id)
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

/// The controller of [`DynamoBenchmark`] resources in one namespace.
pub struct Operator {
    api: Api<DynamoBenchmark>,
    run: Arc<dyn Runs>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").finish_non_exhaustive()
    }
}

/// Turns run events into status patches, in order, on a task of its own.
struct StatusReporter {
    tx: tokio::sync::mpsc::UnboundedSender<DynamoBenchmarkStatus>,
    status: Mutex<DynamoBenchmarkStatus>,
}

impl Reporter for StatusReporter {
    fn on_event(&self, event: &Event) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match event {
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
        let _ = self.tx.send(s.clone());
    }
}

fn run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("op-{}-{:04x}", now.as_secs(), now.subsec_nanos() & 0xffff)
}

impl Operator {
    /// An operator for `namespace` that runs experiments with `run`.
    pub fn new(client: kube::Client, namespace: &str, run: impl Runs) -> Self {
        Operator {
            api: Api::namespaced(client, namespace),
            run: Arc::new(run),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    async fn patch(api: &Api<DynamoBenchmark>, name: &str, status: &DynamoBenchmarkStatus) {
        let patch = json!({"status": status});
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(resource = name, error = %e, "could not update the status");
        }
    }

    /// Starts a run for every resource that has no phase yet; returns how many started.
    ///
    /// # Errors
    /// When the resources cannot be listed.
    pub async fn reconcile_once(&self) -> Result<usize> {
        let list = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::transient("listing DynamoBenchmarks", e))?;
        let mut started = 0;
        for res in list.items {
            let name = res.metadata.name.clone().unwrap_or_default();
            if res.status.as_ref().and_then(|s| s.phase.as_ref()).is_some() {
                continue;
            }
            let source = format!("DynamoBenchmark {name}");
            let schema = serde_json::to_value(&res)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::crd::check(&v))
                .map_err(|m| Error::invalid(&source, m));
            let exp = schema
                .and_then(|()| Experiment::from_json(&res.spec.experiment, &source))
                .and_then(|e| {
                    e.plan()?;
                    Ok(e)
                });
            let exp = match exp {
                Ok(e) => e,
                Err(e) => {
                    let status = DynamoBenchmarkStatus {
                        phase: Some("Invalid".into()),
                        message: Some(e.to_string()),
                        ..Default::default()
                    };
                    Self::patch(&self.api, &name, &status).await;
                    continue;
                }
            };
            let total = exp.plan().map(|p| p.len() as u32).unwrap_or(0);
            let id = run_id();
            let status = DynamoBenchmarkStatus {
                phase: Some("Running".into()),
                run_id: Some(id.clone()),
                cells_total: total,
                ..Default::default()
            };
            Self::patch(&self.api, &name, &status).await;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let reporter = Arc::new(StatusReporter {
                tx,
                status: Mutex::new(status.clone()),
            });
            let api = self.api.clone();
            let run = self.run.clone();
            let store = res.spec.store.clone();
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spawn(async move {
                    let updates = {
                        let (api, name) = (api.clone(), name.clone());
                        tokio::spawn(async move {
                            while let Some(s) = rx.recv().await {
                                Self::patch(&api, &name, &s).await;
                            }
                        })
                    };
                    let request = RunRequest {
                        experiment: exp,
                        run_id: id,
                        store,
                        reporter: reporter.clone(),
                    };
                    let result = run.run(request).await;
                    drop(reporter);
                    let _ = updates.await;
                    let (phase, message) = match result {
                        Ok(RunStatus::Succeeded) => ("Succeeded", None),
                        Ok(RunStatus::Partial) => ("PartiallyFailed", None),
                        Ok(other) => ("Failed", Some(format!("the run ended {other:?}"))),
                        Err(e) => ("Failed", Some(e.to_string())),
                    };
                    let patch = json!({"status": {"phase": phase, "message": message, "currentCell": null}});
                    if let Err(e) = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        tracing::warn!(resource = %name, error = %e, "could not record the end");
                    }
                });
            started += 1;
        }
        Ok(started)
    }

    /// Waits until every started run has ended and its status is written.
    pub async fn wait_idle(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }

    /// Reconciles every `interval` until `cancel`, then waits for the running runs.
    pub async fn run(&self, interval: Duration, cancel: &CancellationToken) {
        loop {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconcile failed; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        self.wait_idle().await;
    }
}
