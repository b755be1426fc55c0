//! The `harness` command line: its arguments, and every operation it dispatches to.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::{Parser, Subcommand, ValueEnum};
use harness_core::journal::Manifest;
use harness_core::{
    ArtifactStore, Backend, CancellationToken, Error, Experiment, LocalBackend, Pipeline,
    RunContext, RunMode, RunStatus, Runner, Stage, TracingReporter,
};

use crate::app::App;
use crate::exit::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_SPOOLED};
use crate::{catalog, progress, table};

/// Benchmark LLM inference deployments: one YAML experiment, a sweep of cells, stored runs.
#[derive(Debug, Parser)]
#[command(name = "harness", version)]
pub(crate) struct Cli {
    /// More log output: -v for debug, -vv for trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check an experiment file and print its plan of cells.
    Validate {
        /// The experiment file.
        experiment: PathBuf,
        /// Override a value: `--set policy.retries=0`, `--set concurrency=[1,2]`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print the resolved experiment and plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run an experiment (or resume a run) and print a summary table.
    Run {
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
    },
    /// List the runs in a store: date, status, cells ok/failed, duration.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// The spool folder of a remote store, to mark runs whose results wait there (default
        /// `./harness-spool`, as `storage.spool`).
        #[arg(long, value_name = "DIR")]
        spool: Option<String>,
        /// Only runs of this experiment.
        #[arg(long)]
        experiment: Option<String>,
        /// Print JSON (one object per run) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show a stored run: its manifest and summary table.
    Show {
        /// The run id (or experiment/run-id).
        run: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print the manifest and cell summaries as JSON.
        #[arg(long)]
        json: bool,
        /// Print every column of the summary table, not only those that fit the terminal.
        #[arg(long)]
        wide: bool,
    },
    /// Run a stored run's resolved experiment again, as a new run that records which run it
    /// reproduces.
    Reproduce {
        /// The run id (or experiment/run-id).
        run: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Do not draw progress bars.
        #[arg(long)]
        no_progress: bool,
    },
    /// Write a run's report: `summary.parquet`, charts, `report/index.html` and `report.md`
    /// (every run gets one at its end; this rebuilds it).
    Report {
        /// The run id (or experiment/run-id).
        run: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Compare runs: matching cells side by side with deltas and bootstrap confidence
    /// intervals, overlay charts, and regression gates. The first run is the baseline.
    Compare {
        /// Two or more run ids (or experiment/run-id).
        #[arg(num_args = 2.., required = true)]
        runs: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
        /// A metric to compare (repeatable), e.g. `ttft.p99`; default TTFT, ITL and latency
        /// p50/p99 and throughputs.
        #[arg(long = "metric", value_name = "METRIC")]
        metrics: Vec<String>,
        /// Exit 1 when a gate trips for any matching cell, e.g. `--fail-if "ttft.p99 > +5%"`;
        /// a relative or delta gate trips only when the change is significant.
        #[arg(long = "fail-if", value_name = "GATE")]
        gates: Vec<String>,
        /// Where to write the overlay charts and `compare.md` (default
        /// `./harness-compare/<baseline>-vs-<candidate>`).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a run to another store, verified; objects already there unchanged are skipped.
    Push {
        /// The run id (or experiment/run-id).
        run: String,
        /// The destination store URL.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Options of the destination store: `--to-opt endpoint=http://...`.
        #[arg(long = "to-opt", value_name = "KEY=VALUE")]
        to_opts: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a commented experiment with every section and its default.
    Init,
    /// Run one cell's steps against an endpoint and write the results into an existing
    /// run: what the in-cluster Job of a cell runs (the experiment comes from
    /// `$HARNESS_EXPERIMENT`, JSON, or `--experiment`).
    #[cfg(feature = "kubernetes")]
    Agent {
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
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Kubernetes: print the manifests of a run without our controller, or the CRD.
    #[cfg(feature = "kubernetes")]
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Kubernetes: the controller of `DynamoBenchmark` resources: runs each new one and
    /// writes its progress and run id into `.status`.
    #[cfg(feature = "kubernetes")]
    Operator {
        /// The namespace to watch (default: the client's).
        #[arg(long)]
        namespace: Option<String>,
        /// Seconds between looks for new resources.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
    /// Serve the mock OpenAI-compatible server (for demos, tests and client measurements).
    Mock(MockArgs),
}

#[cfg(feature = "kubernetes")]
#[derive(Debug, Subcommand)]
enum K8sCommand {
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

/// For workflows that run a sweep one task at a time (the rendered Argo Workflow).
#[derive(Debug, Clone, Default, clap::Args)]
struct WorkflowArgs {
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
    /// The model's URL, with `--here`.
    #[arg(long, requires = "here")]
    endpoint: Option<String>,
}

/// Which store to use.
#[derive(Debug, Clone, Default, clap::Args)]
struct StoreArgs {
    /// The store URL (overrides the experiment's `storage.url`); default
    /// `file://./harness-runs`. Also s3://bucket/prefix, gs://..., az://..., memory://.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// A store option (overrides `storage.options`): `--store-opt endpoint=http://...`.
    /// Credentials are better passed through the environment (AWS_ACCESS_KEY_ID, ...).
    #[arg(long = "store-opt", value_name = "KEY=VALUE")]
    store_opts: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct MockArgs {
    /// The address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: a free one, printed on start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Worker threads (1 serves from one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Time to first token, ms.
    #[arg(long)]
    ttft_ms: Option<f64>,
    /// Inter-token latency, ms.
    #[arg(long)]
    itl_ms: Option<f64>,
    /// Delay jitter, a fraction (0 to 1).
    #[arg(long)]
    jitter: Option<f64>,
    /// Output tokens per response (default: the request's max_tokens).
    #[arg(long)]
    output_tokens: Option<u32>,
    /// Fraction of requests answered with an error status.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fraction of streams cut halfway.
    #[arg(long)]
    disconnect_rate: Option<f64>,
    /// Fraction of streams that stall after the first token.
    #[arg(long)]
    stall_rate: Option<f64>,
    /// Fraction of streams with a malformed chunk.
    #[arg(long)]
    malformed_rate: Option<f64>,
    /// The whole configuration as JSON (the experiment's `deployment.mock` section); the
    /// flags above override it.
    #[arg(long)]
    config: Option<String>,
}

/// Runs the command line `cli` with `app`'s step kinds.
pub(crate) fn main(app: &App, cli: Cli) -> ExitCode {
    // The mock picks its own runtime (one thread by default).
    if let Command::Mock(args) = &cli.command {
        init_tracing(cli.verbose, cli.log_format, None);
        return match mock(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report_error(&e),
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    runtime.block_on(async_main(app, cli))
}

async fn async_main(app: &App, cli: Cli) -> ExitCode {
    match dispatch(app, cli).await {
        Ok(code) => code,
        Err(e) => report_error(&e),
    }
}

/// Sets up logging, with a progress bar on a terminal unless `no_progress`.
fn progress_reporter(
    no_progress: bool,
    verbose: u8,
    format: LogFormat,
) -> Arc<progress::ProgressReporter> {
    let show_progress = !no_progress && std::io::stderr().is_terminal();
    let progress = Arc::new(progress::ProgressReporter::new(!show_progress));
    let bar = show_progress.then(|| progress.bar().clone());
    init_tracing(verbose, format, bar);
    progress
}

async fn dispatch(app: &App, cli: Cli) -> Result<ExitCode, Error> {
    let (verbose, format) = (cli.verbose, cli.log_format);
    let plain_logs = || init_tracing(verbose, format, None);
    match cli.command {
        Command::Init => {
            print!("{}", harness_core::config::DEFAULT_EXPERIMENT);
        }
        Command::Mock(_) => {} // handled before the runtime starts
        #[cfg(feature = "kubernetes")]
        Command::Agent {
            run,
            cell,
            endpoint,
            experiment,
            clients,
            store,
        } => {
            plain_logs();
            let shard = match clients.filter(|c| *c > 1) {
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
            return agent(
                app,
                &run,
                &cell,
                &endpoint,
                experiment.as_deref(),
                shard,
                &store,
            )
            .await;
        }
        #[cfg(feature = "kubernetes")]
        Command::K8s(K8sCommand::Crd) => {
            use kube::CustomResourceExt;
            let crd = harness_k8s::crd::DynamoBenchmark::crd();
            let v = serde_json::to_value(&crd).map_err(|e| Error::failed("CRD", e.to_string()))?;
            say!("{}", harness_k8s::incluster::to_yaml(&[v])?.trim_end());
        }
        #[cfg(feature = "kubernetes")]
        Command::Operator {
            namespace,
            interval,
        } => {
            plain_logs();
            let client = kube_client().await?;
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let operator = harness_k8s::operator::Operator::new(client, &ns, app.clone());
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            eprintln!("operator: watching DynamoBenchmarks in namespace {ns}");
            operator
                .run(std::time::Duration::from_secs(interval.max(1)), &cancel)
                .await;
        }
        #[cfg(feature = "kubernetes")]
        Command::K8s(K8sCommand::Render {
            experiment,
            sets,
            endpoint,
            run_id,
            argo,
            store,
        }) => {
            plain_logs();
            let (exp, _) = load(&experiment, &sets)?;
            let url = store_url(&store, Some(&exp.storage));
            let run_id = run_id.unwrap_or_else(new_run_id);
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
        Command::Validate {
            experiment,
            sets,
            json,
        } => {
            plain_logs();
            validate(app, &experiment, &sets, json)?;
        }
        Command::Run {
            experiment,
            sets,
            resume,
            store,
            no_progress,
            wide,
            workflow,
        } => {
            let view = View {
                progress: progress_reporter(no_progress, verbose, format),
                wide,
            };
            return run(
                app,
                experiment.as_deref(),
                &sets,
                resume,
                &store,
                &workflow,
                view,
            )
            .await;
        }
        Command::Reproduce {
            run,
            store,
            no_progress,
        } => {
            let view = View {
                progress: progress_reporter(no_progress, verbose, format),
                wide: false,
            };
            return reproduce(app, &run, &store, view).await;
        }
        Command::Ls {
            store,
            spool,
            experiment,
            json,
        } => {
            plain_logs();
            let (store, spool) = listed_store(&store, spool).await?;
            catalog::ls(
                store.as_ref(),
                spool.as_deref(),
                experiment.as_deref(),
                json,
            )
            .await?;
        }
        Command::Show {
            run,
            store,
            json,
            wide,
        } => {
            plain_logs();
            let store = open_plain_store(&store, None)?;
            catalog::show(store.as_ref(), &run, json, wide).await?;
        }
        Command::Report { run, store } => {
            plain_logs();
            let store = open_plain_store(&store, None)?;
            catalog::report(store.as_ref(), &run).await?;
        }
        Command::Compare {
            runs,
            store,
            metrics,
            gates,
            out,
            json,
        } => {
            plain_logs();
            let store = open_plain_store(&store, None)?;
            let args = catalog::CompareArgs {
                runs,
                metrics,
                gates,
                out,
                json,
            };
            return catalog::compare(store.as_ref(), &args).await;
        }
        Command::Push {
            run,
            to,
            to_opts,
            store,
        } => {
            plain_logs();
            let from = open_plain_store(&store, None)?;
            let to_args = StoreArgs {
                store: Some(to),
                store_opts: to_opts,
            };
            let to = open_plain_store(&to_args, None)?;
            catalog::push(from.as_ref(), to.as_ref(), &run).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a line to stdout; ends the process quietly when stdout is closed.
pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

fn init_tracing(verbose: u8, format: LogFormat, bar: Option<indicatif::ProgressBar>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let default = match verbose {
        0 if bar.is_some() => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("HARNESS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let writer = match bar {
        Some(bar) => BoxMakeWriter::new(progress::BarWriter(bar)),
        None => BoxMakeWriter::new(std::io::stderr.with_max_level(tracing::Level::TRACE)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn report_error(e: &Error) -> ExitCode {
    match e {
        Error::Config(c) => {
            eprintln!("error: {c}");
            if let Some(snippet) = &c.snippet {
                // The snippet's first line repeats the message printed above.
                let body = snippet.split_once('\n').map_or("", |(_, rest)| rest);
                eprintln!("{body}");
            }
            ExitCode::from(EXIT_INVALID)
        }
        Error::InvalidInput { .. } => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
        _ => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn load(path: &Path, sets: &[String]) -> Result<(Experiment, String), Error> {
    let text =
        std::fs::read(path).map_err(|e| Error::io(format!("reading `{}`", path.display()), e))?;
    let exp =
        Experiment::from_yaml_bytes(&text, &path.display().to_string())?.with_overrides(sets)?;
    Ok((exp, String::from_utf8_lossy(&text).into_owned()))
}

/// Serves the mock until SIGINT or SIGTERM.
fn mock(args: &MockArgs) -> Result<(), Error> {
    use harness_core::config::MockDeployment;
    let mut cfg: MockDeployment = match &args.config {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| Error::invalid("--config", format!("not a mock configuration: {e}")))?,
        None => MockDeployment::default(),
    };
    let set = |slot: &mut f64, v: Option<f64>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut cfg.ttft_ms, args.ttft_ms);
    set(&mut cfg.itl_ms, args.itl_ms);
    set(&mut cfg.jitter, args.jitter);
    set(&mut cfg.error_rate, args.error_rate);
    set(&mut cfg.disconnect_rate, args.disconnect_rate);
    set(&mut cfg.stall_rate, args.stall_rate);
    set(&mut cfg.malformed_rate, args.malformed_rate);
    if let Some(n) = args.output_tokens {
        cfg.output_tokens = Some(
            std::num::NonZeroU32::new(n)
                .ok_or_else(|| Error::invalid("--output-tokens", "must be at least 1"))?,
        );
    }
    // Validate through the same rules as the experiment file.
    let json = serde_json::to_value(&cfg).map_err(|e| Error::invalid("mock", e.to_string()))?;
    let cfg: MockDeployment =
        serde_json::from_value(json).map_err(|e| Error::invalid("mock", e.to_string()))?;
    cfg.check().map_err(|e| Error::invalid("mock", e))?;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| Error::io("starting the runtime", e))?;
    runtime.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::io(format!("binding {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the address", e))?;
        say!(
            "mock OpenAI server on http://{local} (ttft {} ms, itl {} ms)",
            cfg.ttft_ms,
            cfg.itl_ms
        );
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            }
        };
        harness_llm::mock::serve(cfg, listener, shutdown)
            .await
            .map_err(|e| Error::io("serving", e))
    })
}

/// The pipeline for an experiment: deployment setup and teardown, the experiment's steps,
/// and the default per-cell step when the experiment names none.
/// The per-cell steps of an experiment: its own, or the load generator by default.
fn cell_steps(
    app: &App,
    exp: &Experiment,
    file: &str,
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
    if steps.is_empty() {
        steps.push(Arc::new(harness_llm::BenchmarkStep::new()));
    }
    Ok(steps)
}

/// The run's pipeline. On Kubernetes with `in_cluster`, each cell's steps run in a Job
/// (`harness agent`) that writes to `store_url`.
pub(crate) fn build_pipeline(
    app: &App,
    exp: &Experiment,
    file: &str,
    store_url: &str,
) -> Result<Pipeline, Error> {
    let program =
        std::env::current_exe().map_err(|e| Error::io("finding the harness binary", e))?;
    let mut builder = Pipeline::builder().deployment(harness_llm::deployment_steps(exp, &program)?);
    builder = app.registry().build_into(exp, file, builder)?;
    // Every run ends with its report, unless the experiment places the step itself.
    if !exp.steps.iter().any(|s| s.kind.as_str() == "report") {
        builder = builder.add(
            Stage::Teardown,
            Arc::new(harness_analytics::report::ReportStep::new()),
            None,
        );
    }
    let own_cell_steps = exp.steps.iter().any(|s| s.stage == Stage::Cell);
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

/// A Kubernetes client from the kubeconfig or the pod's service account.
/// The pipeline of an in-cluster run: the cell's steps run in the agent; here only the Job
/// that runs them, between the setup and teardown steps of `builder`.
#[cfg(feature = "kubernetes")]
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
    b.add(
        Stage::Cell,
        Arc::new(harness_k8s::InClusterStep::new(store_url)),
        None,
    )
    .build()
}

#[cfg(not(feature = "kubernetes"))]
fn in_cluster_pipeline(
    _builder: harness_core::PipelineBuilder,
    _store_url: &str,
) -> Result<Pipeline, Error> {
    Err(without_kubernetes("backend.in_cluster"))
}

/// The error for an experiment that needs Kubernetes in a program built without it.
#[cfg(not(feature = "kubernetes"))]
fn without_kubernetes(field: &str) -> Error {
    Error::invalid(
        field,
        "this program was built without Kubernetes support (the `harness` crate's `kubernetes` feature)",
    )
}

#[cfg(feature = "kubernetes")]
async fn kube_client() -> Result<kube::Client, Error> {
    kube::Client::try_default().await.map_err(|e| {
        Error::failed(
            "connecting to Kubernetes (kubeconfig or in-cluster)",
            e.to_string(),
        )
    })
}

/// The backend the experiment asks for.
async fn backend_for(
    exp: &Experiment,
    run_id: &str,
    store_url: &str,
    local: &LocalBackend,
) -> Result<Arc<dyn Backend>, Error> {
    Ok(match exp.backend.kind {
        #[cfg(not(feature = "kubernetes"))]
        harness_core::config::BackendKind::Kubernetes => {
            let _ = (run_id, store_url);
            return Err(without_kubernetes("backend.kind"));
        }
        #[cfg(feature = "kubernetes")]
        harness_core::config::BackendKind::Kubernetes => {
            if exp.backend.in_cluster() && !harness_storage::is_remote(store_url) {
                tracing::warn!(
                    "cells run in the cluster but the store {store_url} is local: the agents cannot reach it; use s3://, gs:// or az://"
                );
            }
            Arc::new(
                harness_k8s::K8sBackend::new(kube_client().await?, exp.backend.namespace()).label(
                    "harness.dev/run",
                    harness_k8s::incluster::dns_label_of(run_id),
                ),
            )
        }
        _ => Arc::new(local.clone()),
    })
}

/// How the operator runs a `DynamoBenchmark`: as `harness run` would, with the resource's
/// store, reporting to the operator.
#[cfg(feature = "kubernetes")]
impl harness_k8s::operator::Runs for App {
    fn run(
        &self,
        req: harness_k8s::operator::RunRequest,
    ) -> futures::future::BoxFuture<'static, Result<RunStatus, Error>> {
        let app = self.clone();
        Box::pin(async move {
            let args = StoreArgs {
                store: req.store.clone(),
                store_opts: Vec::new(),
            };
            let exp = Arc::new(req.experiment);
            let (store, spool) = open_run_store(&args, &exp.storage).await?;
            let url = store_url(&args, Some(&exp.storage));
            let pipeline = build_pipeline(&app, &exp, "DynamoBenchmark", &url)?;
            let local = LocalBackend::new()?;
            let backend = backend_for(&exp, &req.run_id, &url, &local).await?;
            let run = RunContext::new(
                req.run_id,
                exp.clone(),
                backend,
                store.clone(),
                CancellationToken::new(),
            )?;
            check_store(&store, spool.as_deref(), &run).await?;
            let report = Runner::new(pipeline)
                .reporter(req.reporter)
                .reporter(Arc::new(TracingReporter))
                .run(&run, &exp.plan()?, RunMode::New { input: None })
                .await?;
            if let Some(spool) = spool {
                let flushed = spool.flush().await;
                if flushed.remaining > 0 {
                    tracing::warn!(
                        remaining = flushed.remaining,
                        errors = ?flushed.errors,
                        "results wait in the spool; `harness push` uploads them"
                    );
                }
            }
            Ok(report.status)
        })
    }
}

/// A task's pipeline in a workflow (`--here`): the cells' own steps in this process against
/// the model at `endpoint` (default `deployment.url`), which the workflow deployed; no
/// deployment steps, no report (the workflow's last task writes it).
fn here_pipeline(
    app: &App,
    exp: &Experiment,
    file: &str,
    endpoint: Option<&str>,
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
    for step in cell_steps(app, exp, file)? {
        b = b.add(Stage::Cell, step, None);
    }
    b.build()
}

#[cfg(feature = "kubernetes")]
/// `harness agent`: one cell's steps, results into an existing run.
async fn agent(
    app: &App,
    run_id: &str,
    cell_id: &str,
    endpoint: &str,
    experiment: Option<&Path>,
    shard: Option<harness_core::Shard>,
    store_args: &StoreArgs,
) -> Result<ExitCode, Error> {
    let exp = match experiment {
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
    let plan = exp.plan()?;
    let cell = plan
        .cells()
        .iter()
        .find(|c| c.id.as_str() == cell_id)
        .cloned()
        .ok_or_else(|| {
            Error::invalid("--cell", format!("`{cell_id}` is not a cell of the plan"))
        })?;
    let steps = cell_steps(app, &exp, "experiment")?;
    let store = open_plain_store(store_args, Some(&exp.storage))?;
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new()?);
    let run = RunContext::new(
        run_id,
        Arc::new(exp),
        backend,
        store,
        CancellationToken::new(),
    )?;
    let endpoint = harness_core::Endpoint::new(endpoint)?;
    let report = harness_k8s::run_agent(&run, Arc::new(cell), endpoint, &steps, shard).await?;
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

fn validate(app: &App, path: &Path, sets: &[String], json: bool) -> Result<(), Error> {
    let (exp, _) = load(path, sets)?;
    let plan = exp.plan()?;
    let url = store_url(&StoreArgs::default(), Some(&exp.storage));
    build_pipeline(app, &exp, &path.display().to_string(), &url)?;
    if json {
        let out = serde_json::json!({
            "experiment": exp.to_json(),
            "cells": plan.cells().iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        });
        say!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    say!("{}: valid", path.display());
    say!("experiment `{}`: {} cells", exp.name, plan.len());
    for cell in plan.cells() {
        say!("  {:>4}  {}", cell.index + 1, cell.id);
    }
    Ok(())
}

fn new_run_id() -> String {
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

/// The store options of `--store-opt` flags over those of the experiment.
fn store_options(
    args: &StoreArgs,
    url: &str,
    base: Option<&harness_core::config::Storage>,
) -> Result<harness_storage::StoreOptions, Error> {
    let mut map = base.map(|b| b.options.clone()).unwrap_or_default();
    for kv in &args.store_opts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--store-opt {kv}"), "expected KEY=VALUE"))?;
        map.insert(k.trim().to_owned(), v.to_owned());
    }
    harness_storage::StoreOptions::from_map(url, &map)
        .map_err(|e| Error::invalid("store", e.to_string()))
}

/// The store of `--store` (or the experiment's, or the default), without a spool: for the
/// catalog commands.
fn open_plain_store(
    args: &StoreArgs,
    storage: Option<&harness_core::config::Storage>,
) -> Result<Arc<dyn ArtifactStore>, Error> {
    let url = store_url(args, storage);
    let options = store_options(args, &url, storage)?;
    harness_storage::open_with(&url, &options).map_err(|e| Error::invalid("store", e.to_string()))
}

fn store_url(args: &StoreArgs, storage: Option<&harness_core::config::Storage>) -> String {
    args.store
        .clone()
        .or_else(|| storage.and_then(|s| s.url.clone()))
        .unwrap_or_else(|| harness_storage::DEFAULT_STORE_URL.to_owned())
}

/// The spool folder of a remote store: one per store, so a later flush sends objects where
/// they belong.
fn spool_url(storage: &harness_core::config::Storage, store: &dyn ArtifactStore) -> String {
    let slug: String = store
        .describe()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let base = storage.spool.as_deref().unwrap_or("./harness-spool");
    format!("{}/{slug}", base.trim_end_matches('/'))
}

/// The store `harness ls` lists: a remote one seen together with its spool when the spool
/// exists (runs whose objects wait there are listed, and say so).
async fn listed_store(
    args: &StoreArgs,
    spool: Option<String>,
) -> Result<(Arc<dyn ArtifactStore>, Option<Arc<dyn ArtifactStore>>), Error> {
    let store = open_plain_store(args, None)?;
    let mut storage = harness_core::config::Storage::default();
    storage.spool = spool;
    let folder = spool_url(&storage, store.as_ref());
    if !harness_storage::is_remote(&store_url(args, None)) || !Path::new(&folder).is_dir() {
        return Ok((store, None));
    }
    let spool =
        harness_storage::open(&folder).map_err(|e| Error::invalid("spool", e.to_string()))?;
    let spooling = harness_storage::SpoolingStore::new(store, spool.clone()).await?;
    Ok((Arc::new(spooling), Some(spool)))
}

/// Checks the store of a run before it starts (a probe object under the run's folder). A
/// store that fails now is misconfigured, not down: the run stops before anything is
/// deployed, as invalid input. Only a store that answered here counts as an outage later.
async fn check_store(
    store: &Arc<dyn ArtifactStore>,
    spool: Option<&harness_storage::SpoolingStore>,
    run: &RunContext,
) -> Result<(), Error> {
    let probed = spool.map_or(store, |s| s.remote());
    harness_storage::check(probed.as_ref(), run.layout().root())
        .await
        .map_err(|e| Error::invalid("store", e.to_string()))
}

/// The store a run writes to; a remote one gets a local spool for outages.
async fn open_run_store(
    args: &StoreArgs,
    storage: &harness_core::config::Storage,
) -> Result<
    (
        Arc<dyn ArtifactStore>,
        Option<Arc<harness_storage::SpoolingStore>>,
    ),
    Error,
> {
    let url = store_url(args, Some(storage));
    let store = open_plain_store(args, Some(storage))?;
    if !harness_storage::is_remote(&url) {
        return Ok((store, None));
    }
    let spool = harness_storage::open(&spool_url(storage, store.as_ref()))
        .map_err(|e| Error::invalid("storage.spool", e.to_string()))?;
    let spooling = Arc::new(harness_storage::SpoolingStore::new(store, spool).await?);
    if spooling.spooled() > 0 {
        eprintln!(
            "{} objects of earlier runs wait in the spool {}; they are uploaded at the end of this run",
            spooling.spooled(),
            spooling.spool().describe()
        );
    }
    Ok((spooling.clone(), Some(spooling)))
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

async fn run(
    app: &App,
    path: Option<&Path>,
    sets: &[String],
    resume: Option<String>,
    store_args: &StoreArgs,
    workflow: &WorkflowArgs,
    view: View,
) -> Result<ExitCode, Error> {
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
    let (store, spool) = open_run_store(store_args, &storage).await?;
    let file = path.map(|p| p.display().to_string());
    let (exp, mode, run_id, provenance) = match resume {
        Some(run) => {
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
            let provenance = info.manifest.provenance.clone();
            (
                exp,
                RunMode::Resume,
                info.manifest.run_id.clone(),
                provenance,
            )
        }
        None => {
            let (exp, input) =
                loaded.ok_or_else(|| Error::invalid("run", "no experiment file given"))?;
            let git = match path {
                Some(p) => harness_core::journal::GitInfo::of_file(p).await,
                None => None,
            };
            let mut provenance = harness_core::Provenance::default();
            provenance.experiment_file = file;
            provenance.git = git;
            let run_id = workflow.run_id.clone().unwrap_or_else(new_run_id);
            (exp, RunMode::New { input: Some(input) }, run_id, provenance)
        }
    };
    let target = Target {
        app,
        store,
        spool,
        args: store_args,
        view,
        workflow,
    };
    execute(exp, mode, run_id, provenance, target).await
}

/// `harness reproduce`: the stored resolved experiment of a run, run again as a new run.
async fn reproduce(
    app: &App,
    run: &str,
    store_args: &StoreArgs,
    view: View,
) -> Result<ExitCode, Error> {
    let plain = open_plain_store(store_args, None)?;
    let info = harness_storage::catalog::find_run(plain.as_ref(), run).await?;
    let label = format!("{} (stored manifest)", info.layout.manifest());
    let exp = stored_experiment(&info.manifest, &label, None)?;
    let input = match plain.get(&info.layout.experiment()).await {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    let (store, spool) =
        open_run_store(store_args, &harness_core::config::Storage::default()).await?;
    let mut provenance = info.manifest.provenance.clone();
    provenance.reproduces = Some(format!(
        "{}/{}",
        info.manifest.experiment_name, info.manifest.run_id
    ));
    eprintln!("reproducing run {} of `{}`", info.manifest.run_id, exp.name);
    execute(
        exp,
        RunMode::New { input },
        new_run_id(),
        provenance,
        Target {
            app,
            store,
            spool,
            args: store_args,
            view,
            workflow: &WorkflowArgs::default(),
        },
    )
    .await
}

/// Where a run goes and how it is shown.
struct Target<'a> {
    app: &'a App,
    store: Arc<dyn ArtifactStore>,
    spool: Option<Arc<harness_storage::SpoolingStore>>,
    args: &'a StoreArgs,
    view: View,
    workflow: &'a WorkflowArgs,
}

/// How a run is shown: its progress, and the table at the end.
struct View {
    progress: Arc<progress::ProgressReporter>,
    /// Every column of the summary table.
    wide: bool,
}

/// Runs a prepared run and prints its table.
async fn execute(
    exp: Experiment,
    mode: RunMode,
    run_id: String,
    provenance: harness_core::Provenance,
    target: Target<'_>,
) -> Result<ExitCode, Error> {
    let Target {
        app,
        store,
        spool,
        args: store_args,
        view: View { progress, wide },
        workflow,
    } = target;
    let plan = exp.plan()?;
    let file = provenance
        .experiment_file
        .clone()
        .unwrap_or_else(|| "experiment".into());
    let url = store_url(store_args, Some(&exp.storage));
    let pipeline = if workflow.plan_only {
        Pipeline::builder().build()?
    } else if workflow.here {
        here_pipeline(app, &exp, &file, workflow.endpoint.as_deref())?
    } else {
        build_pipeline(app, &exp, &file, &url)?
    };
    let mut only = Vec::new();
    for id in &workflow.only {
        let cell = plan
            .cells()
            .iter()
            .find(|c| c.id.as_str() == id)
            .ok_or_else(|| Error::invalid(format!("--only {id}"), "not a cell of the plan"))?;
        only.push(cell.id.clone());
    }

    let local = LocalBackend::new()?;
    let backend: Arc<dyn Backend> = if workflow.here || workflow.plan_only {
        Arc::new(local.clone())
    } else {
        backend_for(&exp, &run_id, &url, &local).await?
    };
    let cancel = CancellationToken::new();
    let exp = Arc::new(exp);
    let run_cx = RunContext::new(
        run_id.clone(),
        exp.clone(),
        backend,
        store.clone(),
        cancel.clone(),
    )?
    .with_provenance(provenance);
    check_store(&store, spool.as_deref(), &run_cx).await?;
    let mut runner = Runner::new(pipeline)
        .reporter(progress.clone())
        .reporter(Arc::new(TracingReporter));
    if workflow.plan_only || !only.is_empty() {
        runner = runner.only(only);
    }

    eprintln!(
        "run {run_id} of `{}`: {} cells, stored in {}",
        exp.name,
        plan.len(),
        store.describe()
    );
    let signal = watch_signals(cancel.clone(), local.clone(), progress.bar().clone());
    let report = runner.run(&run_cx, &plan, mode).await;
    signal.abort();
    progress.finish();
    let report = report?;

    let summaries = harness_core::runner::load_summaries(store.as_ref(), run_cx.layout())
        .await
        .unwrap_or_default();
    let rows = table::report_rows(&report);
    say!("{}", table::cells_table(&rows, &summaries, wide));
    for e in report
        .setup_error
        .iter()
        .chain(&report.teardown_errors)
        .chain(&report.store_errors)
    {
        eprintln!("warning: {e}");
    }
    let ok = report.count(harness_core::CellStatus::Succeeded);
    say!(
        "run {} {:?}: {ok}/{} cells succeeded in {:.1}s; stored at {}/{}",
        report.run_id,
        report.status,
        plan.len(),
        report.elapsed.as_secs_f64(),
        store.describe(),
        run_cx.layout().root()
    );
    // Where to look next: the report the teardown step wrote, when it did.
    if let Ok(index) = run_cx.layout().report("index.html")
        && store.get(&index).await.is_ok()
    {
        say!("report: {}", catalog::local_path(store.as_ref(), &index));
    }
    let store_arg = store_args
        .store
        .as_ref()
        .map(|u| format!(" --store {u}"))
        .unwrap_or_default();
    let mut left_in_spool = false;
    if let Some(spool) = spool {
        let flushed = spool.flush().await;
        if spool.uploaded() > 0 {
            say!(
                "uploaded {} objects from the spool to {} (the store did not answer for a while)",
                spool.uploaded(),
                store.describe()
            );
        }
        for e in &flushed.errors {
            eprintln!("warning: {e}");
        }
        if flushed.remaining > 0 {
            left_in_spool = true;
            say!(
                "{} objects wait in the spool {}; upload them later with: harness push {} --store {} --to {}",
                flushed.remaining,
                spool.spool().describe(),
                report.run_id,
                spool.spool().describe(),
                store.describe()
            );
        }
    }
    // A workflow task that runs some cells succeeds when they did; the run goes on.
    let partial_task = workflow.plan_only || !workflow.only.is_empty();
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

#[cfg(all(test, not(feature = "kubernetes")))]
mod without_kubernetes_tests {
    use super::*;

    /// Built without the `kubernetes` feature, an experiment that needs a cluster is refused
    /// with a message that says why, naming the field.
    #[test]
    fn a_kubernetes_experiment_is_refused_naming_the_feature() {
        let exp = Experiment::from_yaml_str(
            "name: k\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
             deployment: {url: \"http://model:8000\"}\n\
             backend: {kind: kubernetes, in_cluster: true}\n",
            "k.yaml",
        )
        .expect("experiment");
        let err = build_pipeline(&App::default(), &exp, "k.yaml", "s3://b")
            .expect_err("no Kubernetes in this build");
        let text = err.to_string();
        assert!(
            text.contains("backend.in_cluster") && text.contains("`kubernetes` feature"),
            "{text}"
        );
    }
}
