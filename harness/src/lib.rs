//! The `harness` program as a library. [`App`] is the whole command line (run, resume,
//! validate, the catalog, reports, comparisons, the in-cluster agent, the operator, the mock
//! server) over a registry of step kinds; a downstream binary registers kinds of its own with
//! [`App::builder`] and gets everything else as `harness` has it. The `harness` binary itself
//! is `App::default().main()`.
//!
//! A program or a test suite runs an experiment the way `harness run` does, without the
//! terminal, with [`App::run`] and [`RunOptions`] (the store, the run id, resume, cells,
//! steps of its own, reporters, cancellation):
//!
//! ```no_run
//! # async fn demo() -> Result<(), harness::core::Error> {
//! use harness::{App, RunOptions};
//! use harness::core::{Experiment, RunStatus};
//!
//! let exp = Experiment::from_yaml_str(
//!     "name: smoke\nmodel: {name: m}\nconcurrency: [1, 4]\n\
//!      benchmark: {isl_osl: [[128, 32]]}\ndeployment: {mock: {ttft_ms: 5}}\n",
//!     "smoke.yaml",
//! )?;
//! let outcome = App::default()
//!     .run(exp, RunOptions::new().store("file:///tmp/harness-runs"))
//!     .await?;
//! assert_eq!(outcome.report.status, RunStatus::Succeeded);
//! # Ok(()) }
//! ```
//!
//! The workspace's crates are re-exported: [`core`] (steps, backends, the runner), [`llm`]
//! (the load generator, checks and tool steps), [`analytics`], [`storage`] and `k8s` (with
//! the default feature `kubernetes`, which also brings the Kubernetes backend, the agent, the
//! operator and `harness k8s`). The other default features, `s3`, `gcs`, `azure` (stores)
//! and `hf-tokenizers` (`tokenizer.json` files), can be left out too; what needs a missing
//! one is refused, naming it.

/// `println!` that ends the process quietly when stdout is closed (`harness ls | head`)
/// instead of panicking.
macro_rules! say {
    () => { $crate::cli::say_line(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::say_line(format_args!($($t)*)) };
}

mod app;
mod catalog;
mod check;
mod cli;
pub mod exit;
mod progress;
mod session;
mod stores;
mod table;
mod wiring;

pub use app::{App, AppBuilder, BackendFactory};
pub use harness_analytics as analytics;
pub use harness_core as core;
#[cfg(feature = "kubernetes")]
pub use harness_k8s as k8s;
pub use harness_llm as llm;
pub use harness_storage as storage;
pub use session::{PreparedRun, RunOptions, RunOutcome, SpoolOutcome};
