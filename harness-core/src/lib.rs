//! Step and backend authors depend on this crate only.
//!
//! `harness-core` holds the shapes every harness crate meets at: the [`Step`], [`Backend`]
//! and [`ArtifactStore`] traits; the [`Experiment`] file and its [`Plan`] of cells; the
//! [`Pipeline`] and the [`Runner`] that executes it with retries, timeouts, a journal for
//! `--resume`, and teardown that always runs; [`LocalBackend`] (child processes) and
//! [`MemoryStore`]. It depends on no other harness crate and on no HTTP, Kubernetes,
//! object-store or Arrow library.
//!
//! ```
//! use std::sync::Arc;
//! use harness_core::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> harness_core::Result<()> {
//! // The proposal's format, as is.
//! let exp = Experiment::from_yaml_str(r#"
//! name: quick
//! model: {name: my-model}
//! concurrency: [1, 4]
//! benchmark:
//!   isl_osl: [[128, 32], [512, 64]]
//! "#, "quick.yaml")?;
//! let plan = exp.plan()?;
//! assert_eq!(plan.cells()[0].id.as_str(), "concurrency=1,isl=128,osl=32");
//!
//! // A pipeline of one per-cell step, run against an in-memory store.
//! let pipeline = Pipeline::builder()
//!     .per_cell(step_fn("hello", |cx| async move {
//!         let id = cx.cell().map(|c| c.id.to_string()).unwrap_or_default();
//!         let key = cx.artifacts().put("hello.txt", id.into()).await?;
//!         Ok(StepOutput::new().artifact(key))
//!     }))
//!     .build()?;
//! let exp = Arc::new(exp);
//! let store = Arc::new(MemoryStore::new());
//! let run = RunContext::new("r1", exp.clone(), Arc::new(LocalBackend::new()?), store.clone(), Default::default())?;
//! let report = Runner::new(pipeline).run(&run, &plan, RunMode::New { input: None }).await?;
//! assert_eq!(report.status, RunStatus::Succeeded);
//! # Ok(()) }
//! ```
//!
#![doc = include_str!("guide.md")]

pub mod backend;
pub mod config;
mod error;
pub mod event;
pub mod journal;
pub mod layer;
mod local;
pub mod pipeline;
pub mod plan;
pub mod redact;
pub mod runner;
pub mod search;
pub mod step;
pub mod steps;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

/// The attribute that makes `async fn` in [`Step`] and [`Backend`] implementations work;
/// re-exported so step authors need no dependency of their own.
pub use async_trait::async_trait;
pub use backend::{
    Backend, BackendExt, Endpoint, Readiness, Shard, StartGate, TRANSIENT_RETRIES, Workload,
    WorkloadSpec, WorkloadStatus, start_instant,
};
pub use config::{ConfigError, Experiment, Stage, StepSpec};
pub use error::{BoxError, Error, Result};
pub use event::{Event, Reporter, TracingReporter};
pub use journal::{CellStatus, CellSummary, JournalEntry, Manifest, Provenance, RunStatus};
pub use local::LocalBackend;
pub use pipeline::{Pipeline, PipelineBuilder, StepRegistry};
pub use plan::{Cell, CellId, ParamValue, Plan};
pub use runner::{CellReport, RunMode, RunReport, Runner};
pub use step::{Resources, RunContext, RunContextBuilder, Step, StepContext, StepOutput, step_fn};
pub use store::{
    ArtifactKey, ArtifactMeta, ArtifactStore, ArtifactStoreExt, MemoryStore, RunLayout, ScopedStore,
};
pub use tokio_util::sync::CancellationToken;

/// The README's Rust blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
