//! How an experiment becomes a pipeline and a backend: the registry's steps, the deployment,
//! the report, and Kubernetes when asked for.

use std::sync::Arc;

use harness_core::{Backend, Error, Experiment, LocalBackend, Pipeline, Stage};

use crate::app::App;

/// The per-cell steps of an experiment: its own and `extra`, or the load generator by
/// default.
pub(crate) fn cell_steps(
    app: &App,
    exp: &Experiment,
    file: &str,
    extra: &CellSteps,
) -> Result<Vec<Arc<dyn harness_core::Step>>, Error> {
    let built = app
        .registry()
        .build_into(exp, file, Pipeline::builder())?
        .build()?;
    let mut steps: Vec<Arc<dyn harness_core::Step>> = built
        .steps(Stage::Cell)
        .iter()
        .map(|s| s.step.clone())
        .collect();
    steps.extend(extra.0.iter().cloned());
    if steps.is_empty() {
        steps.push(Arc::new(harness_llm::BenchmarkStep::new()));
    }
    Ok(steps)
}

/// Every run ends with its report, unless the experiment places the step itself.
fn with_report(
    builder: harness_core::PipelineBuilder,
    exp: &Experiment,
) -> harness_core::PipelineBuilder {
    if exp.steps.iter().any(|s| s.kind.as_str() == "report") {
        return builder;
    }
    builder.add(
        Stage::Teardown,
        Arc::new(harness_analytics::report::ReportStep::new()),
        None,
    )
}

/// How a `deployment: {mock: ...}` is served.
#[derive(Debug, Clone)]
pub(crate) enum MockServing {
    /// As `<program> mock`, a process of its own (an `App` binary): what `harness run` does.
    Process(std::path::PathBuf),
    /// In this process.
    InProcess,
}

/// Steps for every cell that a program adds to the experiment's own.
#[derive(Default)]
pub(crate) struct CellSteps(pub(crate) Vec<Arc<dyn harness_core::Step>>);

impl CellSteps {
    fn add_to(&self, mut builder: harness_core::PipelineBuilder) -> harness_core::PipelineBuilder {
        for step in &self.0 {
            builder = builder.add(Stage::Cell, step.clone(), None);
        }
        builder
    }
}

/// The run's pipeline: the deployment's steps, the experiment's, `extra`, the default
/// `benchmark` step when there are no per-cell steps, and the report. On Kubernetes with
/// `in_cluster`, each cell's steps run in a Job (`harness agent`) that writes to
/// `store_url`.
pub(crate) fn build_pipeline(
    app: &App,
    exp: &Experiment,
    file: &str,
    store_url: &str,
    mock: &MockServing,
    extra: &CellSteps,
) -> Result<Pipeline, Error> {
    let mut builder = Pipeline::builder().deployment(deployment_steps(exp, mock)?);
    builder = app.registry().build_into(exp, file, builder)?;
    builder = with_report(builder, exp);
    let own_cell_steps = exp.steps.iter().any(|s| s.stage == Stage::Cell) || !extra.0.is_empty();
    builder = extra.add_to(builder);
    if exp.backend.in_cluster() {
        return in_cluster_pipeline(builder, store_url);
    }
    // Without per-cell steps of its own, an experiment benchmarks each cell.
    if !own_cell_steps {
        builder = builder.add(
            Stage::Cell,
            Arc::new(harness_llm::BenchmarkStep::new()),
            None,
        );
    }
    builder.build()
}

/// The pipelines of a run: the run's own, and one per treatment (its resolved experiment
/// and its deployment and per-cell steps).
pub(crate) struct RunPipelines {
    pub(crate) main: Pipeline,
    pub(crate) treatments: Vec<(String, Arc<Experiment>, Pipeline)>,
}

/// The deployment steps of `exp`, the mock served as `mock` says.
fn deployment_steps(
    exp: &Experiment,
    mock: &MockServing,
) -> Result<harness_core::steps::DeploymentSteps, Error> {
    Ok(match (&exp.deployment, mock) {
        (harness_core::config::Deployment::Mock(cfg), MockServing::InProcess) => {
            harness_llm::mock::in_process_steps(cfg.clone().serving(exp.model.name.as_str()))
        }
        (_, MockServing::Process(program)) => {
            harness_core::steps::DeploymentSteps::for_experiment(exp, Some(program))?
        }
        (_, MockServing::InProcess) => {
            harness_core::steps::DeploymentSteps::for_experiment(exp, None)?
        }
    })
}

/// The pipelines of a run of `exp`. Without treatments, [`build_pipeline`]'s. With them,
/// the run keeps the experiment's own setup and teardown steps and the report, and each
/// treatment gets its deployment and the per-cell steps of its resolved experiment.
pub(crate) fn build_pipelines(
    app: &App,
    exp: &Experiment,
    file: &str,
    store_url: &str,
    mock: &MockServing,
    extra: &CellSteps,
) -> Result<RunPipelines, Error> {
    check_backend_kind(app, exp)?;
    if exp.treatments.is_empty() {
        return Ok(RunPipelines {
            main: build_pipeline(app, exp, file, store_url, mock, extra)?,
            treatments: Vec::new(),
        });
    }
    let built = app
        .registry()
        .build_into(exp, file, Pipeline::builder())?
        .build()?;
    let mut main = Pipeline::builder();
    for stage in [Stage::Setup, Stage::Teardown] {
        for s in built.steps(stage) {
            main = main.add(stage, s.step.clone(), s.timeout);
        }
    }
    main = with_report(main, exp);
    let mut treatments = Vec::new();
    for name in exp.treatment_names() {
        let texp = exp.treatment(name)?;
        let mut b = Pipeline::builder().deployment(deployment_steps(&texp, mock)?);
        if texp.backend.in_cluster() {
            // Each cell's steps run in a Job next to the treatment's deployment.
            b = b.add(Stage::Cell, in_cluster_step(store_url)?, None);
        } else {
            for step in cell_steps(app, &texp, file, extra)? {
                b = b.add(Stage::Cell, step, None);
            }
        }
        treatments.push((name.to_owned(), Arc::new(texp), b.build()?));
    }
    Ok(RunPipelines {
        main: main.build()?,
        treatments,
    })
}

/// The pipeline of an in-cluster run: the cell's steps run in the agent; here only the Job
/// that runs them, between the setup and teardown steps of `builder`.
fn in_cluster_pipeline(
    builder: harness_core::PipelineBuilder,
    store_url: &str,
) -> Result<Pipeline, Error> {
    let built = builder.build()?;
    let mut b = Pipeline::builder();
    for stage in [Stage::Setup, Stage::Teardown] {
        for s in built.steps(stage) {
            b = b.add(stage, s.step.clone(), s.timeout);
        }
    }
    b.add(Stage::Cell, in_cluster_step(store_url)?, None)
        .build()
}

/// The step that runs a cell's steps in a Job (`harness agent`) writing to `store_url`.
#[cfg(feature = "kubernetes")]
fn in_cluster_step(store_url: &str) -> Result<Arc<dyn harness_core::Step>, Error> {
    Ok(Arc::new(harness_k8s::InClusterStep::new(store_url)))
}

#[cfg(not(feature = "kubernetes"))]
fn in_cluster_step(_store_url: &str) -> Result<Arc<dyn harness_core::Step>, Error> {
    Err(without_kubernetes("backend.in_cluster"))
}

/// The error for an experiment that needs Kubernetes in a program built without it.
#[cfg(not(feature = "kubernetes"))]
pub(crate) fn without_kubernetes(field: &str) -> Error {
    Error::invalid(
        field,
        "this program was built without Kubernetes support (the `harness` crate's `kubernetes` feature)",
    )
}

/// A Kubernetes client from the kubeconfig or the pod's service account.
#[cfg(feature = "kubernetes")]
pub(crate) async fn kube_client() -> Result<kube::Client, Error> {
    kube::Client::try_default().await.map_err(|e| {
        Error::failed(
            "connecting to Kubernetes (kubeconfig or in-cluster)",
            e.to_string(),
        )
    })
}

/// Refuses a `backend.kind` that this program does not know.
pub(crate) fn check_backend_kind(app: &App, exp: &Experiment) -> Result<(), Error> {
    if let harness_core::config::BackendKind::Other(kind) = &exp.backend.kind
        && app.backend_kind(kind.as_str()).is_none()
    {
        return Err(Error::invalid(
            "backend.kind",
            format!(
                "`{kind}` is not a backend kind of this program; it knows {}",
                app.backend_kinds().join(", ")
            ),
        ));
    }
    Ok(())
}

/// The backend the experiment asks for.
pub(crate) async fn backend_for(
    app: &App,
    exp: &Experiment,
    run_id: &str,
    store_url: &str,
    local: &LocalBackend,
    owner: Option<crate::session::Owner>,
) -> Result<Arc<dyn Backend>, Error> {
    Ok(match &exp.backend.kind {
        harness_core::config::BackendKind::Other(kind) => {
            check_backend_kind(app, exp)?;
            let factory = app
                .backend_kind(kind.as_str())
                .ok_or_else(|| Error::invalid("backend.kind", format!("`{kind}`")))?;
            factory(exp, run_id)?
        }
        #[cfg(not(feature = "kubernetes"))]
        harness_core::config::BackendKind::Kubernetes => {
            let _ = (run_id, store_url, owner);
            return Err(without_kubernetes("backend.kind"));
        }
        #[cfg(feature = "kubernetes")]
        harness_core::config::BackendKind::Kubernetes => {
            if exp.backend.in_cluster() && !harness_storage::is_remote(store_url) {
                tracing::warn!(
                    "cells run in the cluster but the store {store_url} is local: the agents cannot reach it; use s3://, gs:// or az://"
                );
            }
            let backend =
                harness_k8s::K8sBackend::new(kube_client().await?, exp.backend.namespace())
                    .label(
                        "harness.dev/run",
                        harness_k8s::incluster::dns_label_of(run_id),
                    )
                    .fail_fast_grace(exp.backend.fail_fast_grace());
            Arc::new(match owner {
                Some(o) => backend.owner(o),
                None => backend,
            })
        }
        _ => Arc::new(local.clone()),
    })
}

/// A task's pipeline in a workflow (`--here`): the cells' own steps in this process against
/// the model at `endpoint` (default `deployment.url`), which the workflow deployed; no
/// deployment steps, no report (the workflow's last task writes it).
pub(crate) fn here_pipeline(
    app: &App,
    exp: &Experiment,
    file: &str,
    endpoint: Option<&str>,
    extra: &CellSteps,
) -> Result<Pipeline, Error> {
    let url = match (endpoint, &exp.deployment) {
        (Some(e), _) => e.to_owned(),
        (None, harness_core::config::Deployment::Url { url, .. }) => url.clone(),
        (None, _) => {
            return Err(Error::invalid(
                "--here",
                "needs --endpoint: the experiment's deployment has no URL",
            ));
        }
    };
    let mut b = Pipeline::builder().setup(harness_core::steps::WaitReadyStep::new(
        harness_core::Endpoint::new(url)?,
        None,
        exp.policy.ready_timeout.get(),
    ));
    for step in cell_steps(app, exp, file, extra)? {
        b = b.add(Stage::Cell, step, None);
    }
    b.build()
}

/// What a build without the default features refuses, and how it says so.
#[cfg(test)]
mod lean_build_tests {
    #[allow(unused_imports)]
    use super::*;

    /// Built without the `kubernetes` feature, an experiment that needs a cluster is refused
    /// with a message that says why, naming the field.
    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn a_kubernetes_experiment_is_refused_naming_the_feature() {
        let exp = Experiment::from_yaml_str(
            "name: k\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
             deployment: {url: \"http://model:8000\"}\n\
             backend: {kind: kubernetes, in_cluster: true}\n",
            "k.yaml",
        )
        .expect("experiment");
        let err = build_pipeline(
            &App::default(),
            &exp,
            "k.yaml",
            "s3://b",
            &MockServing::InProcess,
            &CellSteps::default(),
        )
        .expect_err("no Kubernetes in this build");
        let text = err.to_string();
        assert!(
            text.contains("backend.in_cluster") && text.contains("`kubernetes` feature"),
            "{text}"
        );
    }

    /// Without a cloud store's feature, its URL is refused naming the feature, not as an
    /// unknown scheme; local stores still open.
    #[cfg(not(any(feature = "s3", feature = "gcs", feature = "azure")))]
    #[test]
    fn a_store_left_out_is_refused_naming_its_feature() {
        for (url, feature) in [
            ("s3://bucket/runs", "`s3` feature"),
            ("gs://bucket", "`gcs` feature"),
            ("az://container", "`azure` feature"),
        ] {
            let err = harness_storage::open(url).expect_err(url).to_string();
            assert!(err.contains(feature) && err.contains(url), "{err}");
        }
        assert!(harness_storage::open("memory://").is_ok());
    }

    /// Without `hf-tokenizers`, a `tokenizer.json` is refused naming the feature and the
    /// way out; the built-in encodings still work.
    #[cfg(not(feature = "hf-tokenizers"))]
    #[test]
    fn a_tokenizer_file_is_refused_naming_the_feature() {
        let err = harness_llm::prompts::PromptSynth::from_file(std::path::Path::new("t.json"))
            .expect_err("no Hugging Face tokenizers in this build")
            .to_string();
        assert!(
            err.contains("`hf-tokenizers` feature") && err.contains("t.json"),
            "{err}"
        );
        assert!(harness_llm::prompts::PromptSynth::new("cl100k_base").is_ok());
    }
}
