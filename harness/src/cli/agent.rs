//! `harness agent`: what the in-cluster Job of a cell runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use harness_core::{Backend, CancellationToken, Error, Experiment, LocalBackend, RunContext};

use super::load;
use crate::app::App;
use crate::exit::EXIT_FAILED;
use crate::stores::{StoreArgs, open_plain_store};
use crate::wiring::{CellSteps, cell_steps};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The run id.
    #[arg(long)]
    run: String,
    /// The cell id, e.g. `concurrency=4,isl=128,osl=32`.
    #[arg(long)]
    cell: String,
    /// The model's endpoint (in-cluster URL).
    #[arg(long)]
    endpoint: String,
    /// The experiment file or JSON (default: `$HARNESS_EXPERIMENT`).
    #[arg(long)]
    experiment: Option<PathBuf>,
    /// Clients sharing the cell's load (an Indexed Job); this one is
    /// `$JOB_COMPLETION_INDEX`.
    #[arg(long)]
    clients: Option<u32>,
    /// The workload file, in place of the experiment's `workload.path` (the Job mounts it
    /// from its ConfigMap).
    #[arg(long)]
    workload_file: Option<PathBuf>,
    /// The attempt's token (from the controlling side): clients meet under it.
    #[arg(long, default_value = "0")]
    attempt: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// `harness agent`: one cell's steps, results into an existing run.
pub(super) async fn exec(app: &App, args: Args) -> Result<ExitCode, Error> {
    let shard = match args.clients.filter(|c| *c > 1) {
        Some(count) => {
            let index = std::env::var("JOB_COMPLETION_INDEX")
                .ok()
                .and_then(|i| i.parse::<u32>().ok())
                .filter(|i| *i < count)
                .ok_or_else(|| {
                    Error::invalid(
                        "--clients",
                        "needs $JOB_COMPLETION_INDEX (0 to clients-1), as an Indexed Job sets it",
                    )
                })?;
            Some(harness_core::Shard { index, count })
        }
        None => None,
    };
    let (run_id, cell_id) = (args.run.as_str(), args.cell.as_str());
    let exp = match args.experiment.as_deref() {
        Some(p) => load(p, &[])?.0,
        None => {
            let json = std::env::var("HARNESS_EXPERIMENT").map_err(|_| {
                Error::invalid("agent", "no --experiment and no $HARNESS_EXPERIMENT")
            })?;
            let v: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| Error::invalid("$HARNESS_EXPERIMENT", e.to_string()))?;
            Experiment::from_json(&v, "$HARNESS_EXPERIMENT")?
        }
    };
    let mut exp = exp;
    if let Some(p) = args.workload_file {
        exp.workload.path = Some(p);
    }
    let cell = find_cell(&exp, cell_id)?;
    let steps = cell_steps(app, &exp, "experiment", &CellSteps::default())?;
    let store = open_plain_store(&args.store, Some(&exp.storage))?;
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new()?);
    let run = RunContext::new(
        run_id,
        Arc::new(exp),
        backend,
        store,
        CancellationToken::new(),
    )?;
    let endpoint = harness_core::Endpoint::new(args.endpoint.as_str())?;
    let report =
        harness_k8s::run_agent(&run, Arc::new(cell), endpoint, &steps, shard, &args.attempt)
            .await?;
    for s in &report.steps {
        match &s.error {
            None => say!("{}: ok", s.step),
            Some(e) => say!("{}: FAILED: {e}", s.step),
        }
    }
    Ok(if report.steps.iter().any(|s| s.error.is_some()) {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The cell `id` of `exp`'s plan. A treatment's Job gets the treatment's resolved experiment
/// (which has no treatments) and the run's cell id (`treatment=<name>,...`): the cell is the
/// rest of the id, with the treatment put back first.
fn find_cell(exp: &Experiment, id: &str) -> Result<harness_core::Cell, Error> {
    let plan = exp.plan()?;
    if let Some(c) = plan.cells().iter().find(|c| c.id.as_str() == id) {
        return Ok(c.clone());
    }
    let treatment = exp.vars.iter().find(|(k, _)| k.as_str() == "treatment");
    if let (Some((_, name)), Some(rest)) = (
        treatment,
        id.strip_prefix("treatment=")
            .and_then(|r| r.split_once(',')),
    ) && rest.0 == name.as_str()
        && let Some(c) = plan.cells().iter().find(|c| c.id.as_str() == rest.1)
    {
        let mut params = vec![(
            "treatment".to_owned(),
            harness_core::ParamValue::Str(rest.0.to_owned()),
        )];
        params.extend(c.params.iter().cloned());
        return harness_core::Cell::new(c.index, params);
    }
    Err(Error::invalid(
        "--cell",
        format!("`{id}` is not a cell of the plan"),
    ))
}
