//! [`App`]: the whole `harness` program, with the step kinds of its builder.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use harness_core::pipeline::StepFactory;
use harness_core::{Backend, Error, Experiment, StepRegistry};

use crate::cli::Cli;

/// The `harness` program: every subcommand (`run`, `validate`, `ls`, `show`, `report`,
/// `compare`, `push`, `reproduce`, `agent`, `operator`, `k8s`, `mock`, `init`) over a
/// registry of step kinds, the built-ins and those of its [`AppBuilder`].
///
/// A downstream binary with a step kind of its own gets the whole command line, with
/// located errors for its parameters, progress, resume, reports and the catalog:
///
/// ```no_run
/// use std::process::ExitCode;
/// use std::sync::Arc;
/// use harness::core::pipeline::StepFactory;
/// use harness::core::{Step, StepOutput, step_fn};
///
/// fn main() -> ExitCode {
///     // `steps: [{kind: my-check}]`: a step that reports one metric.
///     let my_check: StepFactory = Arc::new(|spec, _source| {
///         let step = step_fn(spec.step_name(), |_| async {
///             Ok(StepOutput::new().metric("my.ok", 1.0))
///         });
///         Ok(Arc::new(step) as Arc<dyn Step>)
///     });
///     match harness::App::builder()
///         .step_kind("my-check", my_check)
///         .build()
///     {
///         Ok(app) => app.main(),
///         Err(e) => {
///             eprintln!("error: {e}");
///             ExitCode::from(harness::exit::EXIT_INVALID)
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct App {
    registry: StepRegistry,
    backends: BTreeMap<String, BackendFactory>,
    name: Option<String>,
}

/// Makes the backend of a run whose `backend.kind` names it, from the run's experiment and
/// run id; see [`AppBuilder::backend_kind`].
pub type BackendFactory =
    Arc<dyn Fn(&Experiment, &str) -> Result<Arc<dyn Backend>, Error> + Send + Sync>;

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("registry", &self.registry)
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("name", &self.name)
            .finish()
    }
}

/// Builds an [`App`]; see [`App::builder`].
#[derive(Clone)]
#[must_use]
pub struct AppBuilder {
    registry: StepRegistry,
    own: Vec<String>,
    backends: BTreeMap<String, BackendFactory>,
    name: Option<String>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("registry", &self.registry)
            .field("own", &self.own)
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("name", &self.name)
            .finish()
    }
}

impl App {
    /// A builder with the built-in step kinds registered: `command` (with result import),
    /// `http-check`, `benchmark`, `report`, `functional`, `accuracy` and `aiperf`.
    pub fn builder() -> AppBuilder {
        let mut r = StepRegistry::with_builtins();
        r.register("http-check", crate::check::HttpCheckStep::factory());
        r.register("benchmark", harness_llm::BenchmarkStep::factory());
        r.register("report", harness_analytics::report::ReportStep::factory());
        r.register("functional", harness_llm::checks::FunctionalStep::factory());
        r.register("accuracy", harness_llm::checks::AccuracyStep::factory());
        r.register("aiperf", harness_llm::tools::AiperfStep::factory());
        r.register(
            "command",
            harness_core::steps::CommandStep::factory_with_results(
                harness_llm::tools::ImportHook::factory(),
            ),
        );
        AppBuilder {
            registry: r,
            own: Vec::new(),
            backends: BTreeMap::new(),
            name: None,
        }
    }

    /// The step kinds an experiment's `steps` may name.
    pub fn registry(&self) -> &StepRegistry {
        &self.registry
    }

    /// The factory of a backend kind registered with [`AppBuilder::backend_kind`].
    pub(crate) fn backend_kind(&self, kind: &str) -> Option<&BackendFactory> {
        self.backends.get(kind)
    }

    /// The backend kinds an experiment may name: `local`, `kubernetes` and those registered.
    pub fn backend_kinds(&self) -> Vec<&str> {
        let mut out = vec!["local", "kubernetes"];
        out.extend(self.backends.keys().map(String::as_str));
        out
    }

    /// Runs the command line of this process and returns its exit code (see
    /// [`crate::exit`]).
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os())
    }

    /// Runs the command line `args` (the program's name first) and returns its exit code.
    pub fn main_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        // One TLS crypto provider for every HTTP client of the process, steps' included.
        harness_llm::install_crypto_provider();
        let mut command = Cli::command();
        if let Some(name) = &self.name {
            command = command.bin_name(name.clone());
        }
        let parsed = command
            .try_get_matches_from(args)
            .and_then(|m| Cli::from_arg_matches(&m));
        match parsed {
            Ok(cli) => crate::cli::main(&self, cli),
            // Help and version print and exit 0; usage errors exit 2.
            Err(e) => {
                let _ = e.print();
                ExitCode::from(if e.use_stderr() {
                    crate::exit::EXIT_INVALID
                } else {
                    crate::exit::EXIT_OK
                })
            }
        }
    }
}

impl Default for App {
    /// The program with the built-in step kinds only: what the `harness` binary runs.
    fn default() -> Self {
        App {
            registry: App::builder().registry,
            backends: BTreeMap::new(),
            name: None,
        }
    }
}

impl AppBuilder {
    /// Registers step kind `kind`, made by `factory` from a step's entry in an experiment
    /// (see [`StepFactory`]); a built-in kind of the same name is replaced.
    pub fn step_kind(mut self, kind: impl Into<String>, factory: StepFactory) -> Self {
        let kind = kind.into();
        self.own.push(kind.clone());
        self.registry.register(kind, factory);
        self
    }

    /// Registers backend kind `kind`: an experiment with `backend: {kind: <kind>}` runs its
    /// deployments and workloads on the backend `factory` makes for the run (from the
    /// experiment and the run id).
    pub fn backend_kind(mut self, kind: impl Into<String>, factory: BackendFactory) -> Self {
        self.backends.insert(kind.into(), factory);
        self
    }

    /// The program's name in help and usage messages (default `harness`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The app.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a kind's name is empty or not lower-case letters,
    /// digits and `-` (the form experiment files use), or a backend kind is `local` or
    /// `kubernetes`.
    pub fn build(self) -> Result<App, Error> {
        for kind in self.backends.keys() {
            if matches!(kind.as_str(), "local" | "kubernetes") {
                return Err(Error::invalid(
                    format!("backend kind `{kind}`"),
                    "is built in; give yours another name",
                ));
            }
        }
        for kind in self.own.iter().chain(self.backends.keys()) {
            let ok = !kind.is_empty()
                && kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Error::invalid(
                    format!("step kind `{kind}`"),
                    "use lower-case letters, digits and `-`",
                ));
            }
        }
        Ok(App {
            registry: self.registry,
            backends: self.backends,
            name: self.name,
        })
    }
}
