//! The `harness` program as a library. [`App`] is the whole command line (run, resume,
//! validate, the catalog, reports, comparisons, the in-cluster agent, the operator, the mock
//! server) over a registry of step kinds; a downstream binary registers kinds of its own with
//! [`App::builder`] and gets everything else as `harness` has it. The `harness` binary itself
//! is `App::default().main()`.
//!
//! The workspace's crates are re-exported: [`core`] (steps, backends, the runner), [`llm`]
//! (the load generator, checks and tool steps), [`analytics`], [`storage`] and `k8s` (with
//! the default feature `kubernetes`, which also brings the Kubernetes backend, the agent, the
//! operator and `harness k8s`).

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
mod table;

pub use app::{App, AppBuilder};
pub use harness_analytics as analytics;
pub use harness_core as core;
#[cfg(feature = "kubernetes")]
pub use harness_k8s as k8s;
pub use harness_llm as llm;
pub use harness_storage as storage;
