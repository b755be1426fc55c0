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
    /// experiment, and a Job that creates the run in the store and runs its cells one after
    /// another (`--argo`: an Argo Workflow, one task per step, the cells as a DAG).
    Render {
        /// The experiment file.
        experiment: PathBuf,
        /// Override a value: `--set backend.namespace=bench`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The model's in-cluster URL (default: `deployment.url`).
        #[arg(long)]
        endpoint: Option<String>,
        /// The run id to render for (default: a new one).
        #[arg(long)]
        run_id: Option<String>,
        /// Print an Argo Workflow (for a model already deployed at `deployment.url`).
        #[arg(long)]
        argo: bool,
        #[command(flatten)]
        store: StoreArgs,
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
            let (exp, _) = load(&experiment, &sets)?;
            if !exp.treatments.is_empty() {
                return Err(Error::invalid(
                    "treatments",
                    "`k8s render` prints the manifests of one deployment's cells; run an experiment with treatments with `harness run`, which deploys each in turn",
                ));
            }
            let url = store_url(&store, Some(&exp.storage));
            let run_id = run_id.unwrap_or_else(crate::session::new_run_id);
            let endpoint = match (endpoint, &exp.deployment) {
                (Some(e), _) => e,
                (None, harness_core::config::Deployment::Url { url, .. }) => url.clone(),
                (None, _) => {
                    return Err(Error::invalid(
                        "--endpoint",
                        "needed: the experiment's deployment has no URL",
                    ));
                }
            };
            let workload_file =
                match &exp.workload.path {
                    Some(p) => Some(tokio::fs::read_to_string(p).await.map_err(|e| {
                        Error::io(format!("reading workload.path {}", p.display()), e)
                    })?),
                    None => None,
                };
            let text = if argo {
                harness_k8s::render::argo_workflow(&exp, &run_id, &url)?
            } else {
                harness_k8s::render::manifests(
                    &exp,
                    &run_id,
                    &endpoint,
                    &url,
                    workload_file.as_deref(),
                )?
            };
            say!("{}", text.trim_end());
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
