//! The `harness` command line: its arguments and their dispatch. Each subcommand is a module
//! with its `Args` and `exec`; the wiring they share is in `crate::wiring` and
//! `crate::stores`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use harness_core::{Error, Experiment};

use crate::app::App;
use crate::exit::{EXIT_FAILED, EXIT_INVALID};
use crate::progress;

#[cfg(feature = "kubernetes")]
mod agent;
mod compare;
#[cfg(feature = "kubernetes")]
mod k8s;
mod ls;
mod mock;
#[cfg(feature = "kubernetes")]
mod operator;
mod push;
mod report;
mod run;
mod show;
mod validate;

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
    Validate(validate::Args),
    /// Run an experiment (or resume a run) and print a summary table.
    Run(run::Args),
    /// List the runs in a store: date, status, cells ok/failed, duration.
    Ls(ls::Args),
    /// Show a stored run: its manifest and summary table.
    Show(show::Args),
    /// Run a stored run's resolved experiment again, as a new run that records which run it
    /// reproduces.
    Reproduce(run::ReproduceArgs),
    /// Write a run's report: `summary.parquet`, charts, `report/index.html` and `report.md`
    /// (every run gets one at its end; this rebuilds it).
    Report(report::Args),
    /// Compare runs: matching cells side by side with deltas and bootstrap confidence
    /// intervals, overlay charts, and regression gates. The first run is the baseline.
    Compare(compare::Args),
    /// Copy a run to another store, verified; objects already there unchanged are skipped.
    Push(push::Args),
    /// Print a commented experiment with every section and its default.
    Init,
    /// Run one cell's steps against an endpoint and write the results into an existing
    /// run: what the in-cluster Job of a cell runs (the experiment comes from
    /// `$HARNESS_EXPERIMENT`, JSON, or `--experiment`).
    #[cfg(feature = "kubernetes")]
    Agent(agent::Args),
    /// Kubernetes: print the manifests of a run without our controller, or the CRD.
    #[cfg(feature = "kubernetes")]
    #[command(subcommand)]
    K8s(k8s::Command),
    /// Kubernetes: the controller of `DynamoBenchmark` resources: runs each new one and
    /// writes its progress and run id into `.status`.
    #[cfg(feature = "kubernetes")]
    Operator(operator::Args),
    /// Serve the mock OpenAI-compatible server (for demos, tests and client measurements).
    Mock(mock::Args),
}

/// How logs are written: the global flags.
#[derive(Debug, Clone, Copy)]
struct Logs {
    verbose: u8,
    format: LogFormat,
}

impl Logs {
    /// Logs on stderr, without a progress bar.
    fn plain(self) {
        init_tracing(self.verbose, self.format, None);
    }

    /// Logs with a progress bar on a terminal unless `no_progress`.
    fn with_progress(self, no_progress: bool) -> Arc<progress::ProgressReporter> {
        let show_progress = !no_progress && std::io::stderr().is_terminal();
        let progress = Arc::new(progress::ProgressReporter::new(!show_progress));
        let bar = show_progress.then(|| progress.bar().clone());
        init_tracing(self.verbose, self.format, bar);
        progress
    }
}

/// Runs the command line `cli` with `app`'s step kinds.
pub(crate) fn main(app: &App, cli: Cli) -> ExitCode {
    // The mock picks its own runtime (one thread by default).
    if let Command::Mock(args) = &cli.command {
        init_tracing(cli.verbose, cli.log_format, None);
        return match mock::exec(args) {
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

async fn dispatch(app: &App, cli: Cli) -> Result<ExitCode, Error> {
    let logs = Logs {
        verbose: cli.verbose,
        format: cli.log_format,
    };
    match cli.command {
        Command::Run(args) => return run::exec(app, args, logs).await,
        Command::Reproduce(args) => return run::reproduce(app, args, logs).await,
        Command::Init => print!("{}", harness_core::config::DEFAULT_EXPERIMENT),
        Command::Mock(_) => {} // served before the runtime starts
        command => {
            logs.plain();
            match command {
                Command::Validate(args) => validate::exec(app, &args)?,
                Command::Ls(args) => ls::exec(args).await?,
                Command::Show(args) => show::exec(args).await?,
                Command::Report(args) => report::exec(args).await?,
                Command::Compare(args) => return compare::exec(args).await,
                Command::Push(args) => push::exec(args).await?,
                #[cfg(feature = "kubernetes")]
                Command::Agent(args) => return agent::exec(app, args).await,
                #[cfg(feature = "kubernetes")]
                Command::K8s(command) => k8s::exec(command).await?,
                #[cfg(feature = "kubernetes")]
                Command::Operator(args) => operator::exec(app, args).await?,
                Command::Run(_) | Command::Reproduce(_) | Command::Init | Command::Mock(_) => {}
            }
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
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                // A cause whose message ends the line above was said already.
                let text = s.to_string();
                if !shown.ends_with(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
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
