//! `harness k8s`: print the CRD, or the manifests of a run without our controller.

use std::path::PathBuf;

use harness_core::Error;

use super::load;
use crate::stores::{StoreArgs, store_url};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the `DynamoBenchmark` CustomResourceDefinition (generated from the code).
    Crd,
    /// Print the manifests of an experiment's in-cluster run: RBAC, and a ConfigMap and a
    /// Job per cell (`--argo`: an Argo Workflow, one task per step, the cells as a DAG).
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
}

pub(super) fn exec(command: Command) -> Result<(), Error> {
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
            let text = if argo {
                harness_k8s::render::argo_workflow(&exp, &run_id, &url)?
            } else {
                harness_k8s::render::manifests(&exp, &run_id, &endpoint, &url)?
            };
            say!("{}", text.trim_end());
        }
    }
    Ok(())
}
