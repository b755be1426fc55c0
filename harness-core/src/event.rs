//! Events the runner emits, and the [`Reporter`] trait that receives them. The runner never
//! prints: progress bars, logs and journals are reporters.

use std::time::Duration;

use crate::config::Stage;
use crate::journal::{CellStatus, RunStatus};
use crate::plan::CellId;

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The run began (or resumed).
    RunStarted {
        /// The run id.
        run_id: String,
        /// The experiment's name.
        experiment: String,
        /// Cells in the plan.
        total_cells: usize,
        /// Cells that succeeded earlier and will be skipped (on resume).
        already_done: usize,
        /// Whether this continues an earlier run.
        resumed: bool,
    },
    /// A stage began.
    StageStarted {
        /// Which.
        stage: Stage,
    },
    /// A step began.
    StepStarted {
        /// The stage.
        stage: Stage,
        /// The cell, for per-cell steps.
        cell: Option<CellId>,
        /// The step's name.
        step: String,
    },
    /// A step ended.
    StepFinished {
        /// The stage.
        stage: Stage,
        /// The cell, for per-cell steps.
        cell: Option<CellId>,
        /// The step's name.
        step: String,
        /// How long it took.
        elapsed: Duration,
        /// The error, when it failed.
        error: Option<String>,
    },
    /// A cell began.
    CellStarted {
        /// Which.
        cell: CellId,
        /// Its position in the plan, from 0.
        index: usize,
        /// Cells in the plan.
        total: usize,
    },
    /// A cell ended.
    CellFinished {
        /// Which.
        cell: CellId,
        /// How it ended.
        status: CellStatus,
        /// How long it took.
        elapsed: Duration,
        /// The error, when it failed.
        error: Option<String>,
    },
    /// A cell was not run because it succeeded in an earlier session of this run.
    CellSkipped {
        /// Which.
        cell: CellId,
    },
    /// The run ended.
    RunFinished {
        /// How it ended.
        status: RunStatus,
        /// How long this session took.
        elapsed: Duration,
    },
}

/// Receives events. Called inline by the runner: keep it quick and never block.
pub trait Reporter: Send + Sync {
    /// Handles one event.
    fn on_event(&self, event: &Event);
}

/// A reporter that logs each event through `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingReporter;

impl Reporter for TracingReporter {
    fn on_event(&self, event: &Event) {
        match event {
            Event::RunStarted {
                run_id,
                experiment,
                total_cells,
                already_done,
                resumed,
            } => {
                tracing::info!(%run_id, %experiment, total_cells, already_done, resumed, "run started");
            }
            Event::StageStarted { stage } => tracing::debug!(?stage, "stage started"),
            Event::StepStarted { .. } => {}
            Event::StepFinished {
                step,
                cell,
                elapsed,
                error,
                ..
            } => {
                let cell = cell.as_ref().map_or("-", |c| c.as_str());
                match error {
                    Some(e) => tracing::warn!(%step, cell, ?elapsed, error = %e, "step failed"),
                    None => tracing::debug!(%step, cell, ?elapsed, "step done"),
                }
            }
            Event::CellStarted { cell, index, total } => {
                tracing::info!(cell = %cell, n = index + 1, total, "cell started");
            }
            Event::CellFinished {
                cell,
                status,
                elapsed,
                error,
            } => match error {
                Some(e) => {
                    tracing::warn!(cell = %cell, ?status, ?elapsed, error = %e, "cell finished")
                }
                None => tracing::info!(cell = %cell, ?status, ?elapsed, "cell finished"),
            },
            Event::CellSkipped { cell } => {
                tracing::info!(cell = %cell, "cell skipped: it succeeded earlier")
            }
            Event::RunFinished { status, elapsed } => {
                tracing::info!(?status, ?elapsed, "run finished")
            }
        }
    }
}
