//! `harness k8s`: print the CRD, or the manifests of a run without our controller.

use std::path::PathBuf;

use harness_core::Error;

use super::load;
use crate::stores::{StoreArgs, store_url};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the `DynamoBenchmark` CustomResourceDefinition (generated from the code).
    Crd,
    /// Print the manifests of an experiment's in-cluster run: RBAC, a ConfigMap with the
    /// experiment, and a Job that creates the run in the store, deploys
    /// `deployment.manifests` if any, and runs its cells one after another (`--argo`: an
    /// Argo Workflow, one task per step, the cells as a DAG).
    Render {
        /// The experiment file.
        experiment: PathBuf,
        /// Override a value: `--set backend.namespace=bench`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The model's in-cluster URL (default: `deployment.url`; with
        /// `deployment.manifests`, the deployed model's).
        #[arg(long)]
        endpoint: Option<String>,
        /// The run id to render for (default: a new one).
        #[arg(long)]
        run_id: Option<String>,
        /// Print an Argo Workflow: one task per step, the cells as a DAG, against
        /// `deployment.url` or `deployment.manifests` (deployed by its first task).
        #[arg(long)]
        argo: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Deploy an experiment's `deployment.manifests` for a run (labelled with it), wait until
    /// it is ready and print its endpoint; it stays up for the run's tasks, until
    /// `harness k8s cleanup --run ID` (a workflow's deploy task). A deployment that does not
    /// become ready is deleted. A `deployment.url` is printed as it is.
    Deploy {
        /// The experiment file.
        experiment: PathBuf,
        /// Override a value: `--set backend.namespace=bench`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The run the deployment belongs to.
        #[arg(long)]
        run_id: String,
        /// Also write the endpoint to this file (a workflow's output parameter).
        #[arg(long)]
        endpoint_file: Option<PathBuf>,
    },
    /// Delete whatever a run left in the cluster (Jobs, ConfigMaps, Deployments, Services,
    /// Dynamo graphs, pods: everything labelled `harness.dev/run=ID`) and wait until it is
    /// gone.
    Cleanup {
        /// The run id.
        #[arg(long)]
        run: String,
        /// The namespace (default: the client's).
        #[arg(long)]
        namespace: Option<String>,
    },
}

pub(super) async fn exec(command: Command) -> Result<(), Error> {
    match command {
        Command::Crd => {
            use kube::CustomResourceExt;
            let crd = harness_k8s::crd::DynamoBenchmark::crd();
            let v = serde_json::to_value(&crd).map_err(|e| Error::failed_from("CRD", e))?;
            say!("{}", harness_k8s::incluster::to_yaml(&[v])?.trim_end());
        }
        Command::Render {
            experiment,
            sets,
            endpoint,
            run_id,
            argo,
            store,
        } => {
            let (mut exp, _) = load(&experiment, &sets)?;
            if !exp.treatments.is_empty() {
                return Err(Error::invalid(
                    "treatments",
                    "`k8s render` prints the manifests of one deployment's cells; run an experiment with treatments with `harness run`, which deploys each in turn",
                ));
            }
            let url = store_url(&store, Some(&exp.storage));
            let run_id = run_id.unwrap_or_else(crate::session::new_run_id);
            // The pods cannot read this machine's files: the manifests go inline into the
            // experiment.
            if let harness_core::config::Deployment::Manifests { manifests, .. } =
                &mut exp.deployment
                && !manifests.contains('\n')
            {
                *manifests = tokio::fs::read_to_string(&*manifests).await.map_err(|e| {
                    Error::io(format!("reading deployment.manifests `{manifests}`"), e)
                })?;
            }
            if argo {
                let text = harness_k8s::render::argo_workflow(
                    &exp,
                    &run_id,
                    &url,
                    workload_file(&exp).await?.as_deref(),
                )?;
                say!("{}", text.trim_end());
                return Ok(());
            }
            // Without an endpoint, the rendered pod deploys the manifests itself.
            let endpoint = match (endpoint, &exp.deployment) {
                (Some(e), _) => Some(e),
                (None, harness_core::config::Deployment::Url { url, .. }) => Some(url.clone()),
                (None, harness_core::config::Deployment::Manifests { .. }) => None,
                (None, _) => {
                    return Err(Error::invalid(
                        "--endpoint",
                        "needed: the experiment's deployment is neither a URL nor manifests to deploy in the cluster",
                    ));
                }
            };
            let text = harness_k8s::render::manifests(
                &exp,
                &run_id,
                endpoint.as_deref(),
                &url,
                workload_file(&exp).await?.as_deref(),
            )?;
            say!("{}", text.trim_end());
        }
        Command::Deploy {
            experiment,
            sets,
            run_id,
            endpoint_file,
        } => {
            let (exp, _) = load(&experiment, &sets)?;
            let endpoint = deploy(exp, &run_id).await?;
            if let Some(path) = endpoint_file {
                tokio::fs::write(&path, &endpoint)
                    .await
                    .map_err(|e| Error::io(format!("writing `{}`", path.display()), e))?;
            }
            say!("{endpoint}");
        }
        Command::Cleanup { run, namespace } => {
            let client = crate::wiring::kube_client().await?;
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let backend = harness_k8s::K8sBackend::new(client, ns.as_str());
            let selector = format!(
                "harness.dev/run={}",
                harness_k8s::incluster::dns_label_of(&run)
            );
            let deleted = backend.cleanup(&selector).await?;
            if deleted.is_empty() {
                say!("nothing of run {run} in namespace {ns}");
            }
            for d in deleted {
                say!("deleted {d}");
            }
        }
    }
    Ok(())
}

/// Deploys `exp`'s manifests as part of run `run_id` and waits until they are ready; the
/// endpoint. What does not become ready is deleted.
async fn deploy(exp: harness_core::Experiment, run_id: &str) -> Result<String, Error> {
    use harness_core::config::{BackendKind, Deployment};
    use std::sync::Arc;
    match &exp.deployment {
        Deployment::Url { url, .. } => return Ok(exp.substitute(url)),
        Deployment::Manifests { .. } => {}
        _ => {
            return Err(Error::invalid(
                "deployment",
                "`k8s deploy` applies `deployment.manifests` in the cluster (or prints `deployment.url`)",
            ));
        }
    }
    if exp.backend.kind != BackendKind::Kubernetes {
        return Err(Error::invalid(
            "backend.kind",
            "`k8s deploy` deploys in a cluster: set `kubernetes`",
        ));
    }
    let backend =
        harness_k8s::K8sBackend::new(crate::wiring::kube_client().await?, exp.backend.namespace())
            .label(
                "harness.dev/run",
                harness_k8s::incluster::dns_label_of(run_id),
            )
            .fail_fast_grace(exp.backend.fail_fast_grace());
    let steps = harness_core::steps::DeploymentSteps::for_experiment(&exp, None)?;
    let run = harness_core::RunContext::new(
        run_id,
        Arc::new(exp),
        Arc::new(backend),
        Arc::new(harness_core::MemoryStore::new()),
        harness_core::CancellationToken::new(),
    )?;
    Ok(steps.deploy(&run).await?.base_url)
}

/// The content of the experiment's `workload.path`, when it has one.
async fn workload_file(exp: &harness_core::Experiment) -> Result<Option<String>, Error> {
    match &exp.workload.path {
        Some(p) => Ok(Some(tokio::fs::read_to_string(p).await.map_err(|e| {
            Error::io(format!("reading workload.path {}", p.display()), e)
        })?)),
        None => Ok(None),
    }
}
