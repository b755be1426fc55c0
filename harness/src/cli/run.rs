//! `harness run` and `harness reproduce`: a sweep with progress, its table, and the exit
//! code that says how it went.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use harness_core::journal::Manifest;
use harness_core::{CancellationToken, Error, Experiment, LocalBackend, RunStatus};

use super::{Logs, load};
use crate::app::App;
use crate::exit::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SPOOLED};
use crate::stores::{StoreArgs, open_plain_store, store_url};
use crate::{RunOptions, RunOutcome, catalog, progress, table};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The experiment file (optional with --resume: the stored experiment is used).
    #[arg(required_unless_present = "resume")]
    experiment: Option<PathBuf>,
    /// Override a value: `--set policy.retries=0`, `--set concurrency=[1,2]`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue run RUN: only cells that did not succeed run again, with the stored
    /// experiment.
    #[arg(long, value_name = "RUN")]
    resume: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Do not draw progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Print every column of the summary table (attempts, time, all headline metrics,
    /// errors), not only those that fit the terminal.
    #[arg(long)]
    wide: bool,
    #[command(flatten)]
    workflow: WorkflowArgs,
}

/// The arguments of `harness reproduce`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReproduceArgs {
    /// The run id (or experiment/run-id).
    run: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Do not draw progress bars.
    #[arg(long)]
    no_progress: bool,
}

/// For workflows that run a sweep one task at a time (the rendered Argo Workflow).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct WorkflowArgs {
    /// The id of the new run (default: date, time and a random suffix).
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Only create the run (manifest and pending cells); tasks run the cells later.
    #[arg(long, conflicts_with = "only")]
    plan_only: bool,
    /// Run only this cell (repeatable); the run stays `running` until every cell ran.
    #[arg(long, value_name = "CELL")]
    only: Vec<String>,
    /// Run the cells' steps in this process, without deploying: the deployment is managed
    /// by the workflow, and the model is at `--endpoint` (default `deployment.url`).
    #[arg(long)]
    here: bool,
    /// The model's URL: it is deployed already (by the workflow), so the run waits for it
    /// instead of deploying, and leaves it up. With `--here`, the default is
    /// `deployment.url`.
    #[arg(long)]
    endpoint: Option<String>,
}

/// `harness run`: a new run of an experiment file, or `--resume` of a stored one.
pub(super) async fn exec(app: &App, args: Args, logs: Logs) -> Result<ExitCode, Error> {
    let view = View {
        progress: logs.with_progress(args.no_progress),
        wide: args.wide,
    };
    let (path, sets, resume) = (args.experiment.as_deref(), &args.sets[..], args.resume);
    let (store_args, workflow) = (&args.store, &args.workflow);
    if resume.is_some() && workflow.run_id.is_some() {
        return Err(Error::invalid(
            "--run-id",
            "names a new run; not with --resume",
        ));
    }
    let loaded = match path {
        Some(p) => Some(load(p, sets)?),
        None => None,
    };
    let storage = loaded
        .as_ref()
        .map(|(e, _)| e.storage.clone())
        .unwrap_or_default();
    let mut options = RunOptions::new();
    options.store = store_args.clone();
    for cell in &workflow.only {
        options = options.only(cell.clone());
    }
    if workflow.plan_only {
        options = options.plan_only();
    }
    if workflow.here {
        options = options.here(workflow.endpoint.clone());
    } else if let Some(url) = &workflow.endpoint {
        options = options.deployed_at(url.clone());
    }
    let partial_task = workflow.plan_only || !workflow.only.is_empty();
    let exp = match resume {
        Some(run) => {
            // The run is where the file (or --store, or the default) says; it stays there.
            options.store.store = Some(store_url(store_args, Some(&storage)));
            let store = open_plain_store(store_args, Some(&storage))?;
            let info = harness_storage::catalog::find_run(store.as_ref(), &run)
                .await
                .map_err(|e| match e {
                    Error::NotFound { what } => {
                        Error::invalid(format!("--resume {run}"), format!("no {what}"))
                    }
                    other => other,
                })?;
            let current = loaded.as_ref().map(|(e, _)| e);
            let label = format!("{} (stored manifest)", info.layout.manifest());
            let mut exp = stored_experiment(&info.manifest, &label, current)?;
            if let Some(current) = current {
                if current.name != exp.name {
                    return Err(Error::invalid(
                        format!("--resume {run}"),
                        format!(
                            "the run belongs to experiment `{}`, not `{}`",
                            exp.name, current.name
                        ),
                    ));
                }
                if *current != exp {
                    tracing::warn!(
                        "the experiment file differs from the one stored with run {run}; resuming with the stored one"
                    );
                }
            }
            if !sets.is_empty() && path.is_none() {
                exp = exp.with_overrides(sets)?;
            }
            options = options
                .run_id(info.manifest.run_id.clone())
                .resume()
                .provenance(info.manifest.provenance.clone());
            exp
        }
        None => {
            let (exp, input) =
                loaded.ok_or_else(|| Error::invalid("run", "no experiment file given"))?;
            let git = match path {
                Some(p) => harness_core::journal::GitInfo::of_file(p).await,
                None => None,
            };
            let mut provenance = harness_core::Provenance::default();
            provenance.experiment_file = path.map(|p| p.display().to_string());
            provenance.git = git;
            options = options.input(input).provenance(provenance);
            if let Some(id) = &workflow.run_id {
                options = options.run_id(id.clone());
            }
            exp
        }
    };
    execute(app, exp, options, view, partial_task).await
}

/// `harness reproduce`: the stored resolved experiment of a run, run again as a new run.
pub(super) async fn reproduce(
    app: &App,
    args: ReproduceArgs,
    logs: Logs,
) -> Result<ExitCode, Error> {
    let view = View {
        progress: logs.with_progress(args.no_progress),
        wide: false,
    };
    let (run, store_args) = (args.run.as_str(), &args.store);
    let plain = open_plain_store(store_args, None)?;
    let info = harness_storage::catalog::find_run(plain.as_ref(), run).await?;
    let label = format!("{} (stored manifest)", info.layout.manifest());
    let exp = stored_experiment(&info.manifest, &label, None)?;
    let input = match plain.get(&info.layout.experiment()).await {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    let mut provenance = info.manifest.provenance.clone();
    provenance.reproduces = Some(format!(
        "{}/{}",
        info.manifest.experiment_name, info.manifest.run_id
    ));
    eprintln!("reproducing run {} of `{}`", info.manifest.run_id, exp.name);
    // The new run goes where the command line says (or the default), not where the stored
    // experiment's `storage.url` points.
    let mut options = RunOptions::new().provenance(provenance);
    options.store = store_args.clone();
    options.store.store = Some(store_url(store_args, None));
    if let Some(input) = input {
        options = options.input(input);
    }
    execute(app, exp, options, view, false).await
}

/// Reads the stored experiment of a run, with secrets put back from `current` where it has
/// them; warns about those that stay redacted.
fn stored_experiment(
    manifest: &Manifest,
    label: &str,
    current: Option<&Experiment>,
) -> Result<Experiment, Error> {
    let mut json = manifest.experiment.clone();
    let current = current.map(Experiment::to_json).unwrap_or_default();
    let left = harness_core::redact::restore_redacted(&mut json, &current);
    for path in left {
        tracing::warn!(
            "`{path}` was redacted when the run was stored; give it again with --set {path}=... or take it from the environment"
        );
    }
    Experiment::from_json(&json, label)
}

/// How a run is shown: its progress, and the table at the end.
struct View {
    progress: Arc<progress::ProgressReporter>,
    /// Every column of the summary table.
    wide: bool,
}

/// Runs `exp` with `options` and prints its table; the exit code says how it went.
async fn execute(
    app: &App,
    exp: Experiment,
    options: RunOptions,
    view: View,
    partial_task: bool,
) -> Result<ExitCode, Error> {
    let View { progress, wide } = view;
    let program =
        std::env::current_exe().map_err(|e| Error::io("finding the harness binary", e))?;
    let cancel = CancellationToken::new();
    let store_arg = options
        .store
        .store
        .as_ref()
        .map(|u| format!(" --store {u}"))
        .unwrap_or_default();
    let options = options
        .mock_program(program)
        .cancel(cancel.clone())
        .reporter(progress.clone());
    let prepared = app.prepare(exp, options).await?;
    let (store, layout) = (
        prepared.store().clone(),
        prepared.context().layout().clone(),
    );
    let cells = prepared.plan().len();
    eprintln!(
        "run {} of `{}`: {cells} cells, stored in {}",
        prepared.context().run_id(),
        prepared.context().experiment().name,
        store.describe()
    );
    let signal = watch_signals(
        cancel,
        prepared.local_backend().clone(),
        progress.bar().clone(),
    );
    let outcome = prepared.execute().await;
    signal.abort();
    progress.finish();
    let RunOutcome { report, spool, .. } = outcome?;

    let summaries = harness_core::runner::load_summaries(store.as_ref(), &layout)
        .await
        .unwrap_or_default();
    let rows = table::report_rows(&report);
    say!("{}", table::cells_table(&rows, &summaries, wide));
    if !report.search.is_empty() {
        say!("SLO search:\n{}", table::search_table(&report.search));
    }
    for e in report
        .setup_error
        .iter()
        .chain(&report.teardown_errors)
        .chain(&report.store_errors)
    {
        eprintln!("warning: {e}");
    }
    let ok = report.count(harness_core::CellStatus::Succeeded);
    let skipped = report.count(harness_core::CellStatus::Skipped);
    let not_needed = if skipped > 0 {
        format!(" ({skipped} search candidates not needed)")
    } else {
        String::new()
    };
    say!(
        "run {} {:?}: {ok}/{} cells succeeded{not_needed} in {:.1}s; stored at {}/{}",
        report.run_id,
        report.status,
        cells - skipped,
        report.elapsed.as_secs_f64(),
        store.describe(),
        layout.root()
    );
    // Where to look next: the report the teardown step wrote, when it did.
    if let Ok(index) = layout.report("index.html")
        && store.get(&index).await.is_ok()
    {
        say!("report: {}", catalog::local_path(store.as_ref(), &index));
    }
    let mut left_in_spool = false;
    if let Some(spool) = spool {
        if spool.uploaded > 0 {
            say!(
                "uploaded {} objects from the spool to {} (the store did not answer for a while)",
                spool.uploaded,
                store.describe()
            );
        }
        for e in &spool.errors {
            eprintln!("warning: {e}");
        }
        if spool.remaining > 0 {
            left_in_spool = true;
            say!(
                "{} objects wait in the spool {}; upload them later with: harness push {} --store {} --to {}",
                spool.remaining,
                spool.location,
                report.run_id,
                spool.location,
                store.describe()
            );
        }
    }
    // A workflow task that runs some cells succeeds when they did; the run goes on.
    let ran_ok = report
        .cells
        .iter()
        .filter(|c| c.ran)
        .all(|c| c.status == harness_core::CellStatus::Succeeded)
        && report.setup_error.is_none();
    if report.status != RunStatus::Succeeded && !partial_task {
        say!(
            "resume with: harness run --resume {}{store_arg}",
            report.run_id
        );
    }
    Ok(match report.status {
        RunStatus::Cancelled => ExitCode::from(EXIT_INTERRUPTED),
        _ if left_in_spool => ExitCode::from(EXIT_SPOOLED),
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Running if partial_task && ran_ok => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_FAILED),
    })
}

/// First SIGINT or SIGTERM: cancel the run (teardown still runs). Second: kill every child
/// process group now and exit.
fn watch_signals(
    cancel: CancellationToken,
    backend: LocalBackend,
    bar: indicatif::ProgressBar,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot listen for SIGINT/SIGTERM");
            return;
        };
        let first = tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" };
        bar.suspend(|| {
            eprintln!("{first}: stopping after teardown; send it again to kill everything now");
        });
        cancel.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!("second signal: killing all child processes and exiting");
        backend.kill_all_now();
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    })
}
