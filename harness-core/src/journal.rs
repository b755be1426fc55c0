//! What the runner writes to the store: per-cell journal entries, cell summaries and the
//! run manifest. These are the files `--resume` reads back.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::plan::{CellId, ParamValue};
use crate::step::StepOutput;

/// The version of the journal, summary and manifest formats written by this crate.
pub const FORMAT_VERSION: u32 = 1;

/// A time as RFC 3339 text with milliseconds, e.g. `2026-11-28T14:12:00.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where a cell stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CellStatus {
    /// Not started.
    Pending,
    /// Started and not finished (or the process running it died).
    Running,
    /// Finished, its results stored.
    Succeeded,
    /// A step failed.
    Failed,
    /// Stopped by cancellation.
    Cancelled,
    /// Not needed: a candidate of an SLO search that the search did not probe.
    Skipped,
}

impl CellStatus {
    /// Whether `--resume` must run the cell again: anything but succeeded or skipped (a
    /// search decides again which of its candidates it needs).
    pub fn needs_run(self) -> bool {
        !matches!(self, CellStatus::Succeeded | CellStatus::Skipped)
    }

    /// Whether the cell is done as far as the run's status goes: succeeded, or not needed.
    pub fn is_ok(self) -> bool {
        matches!(self, CellStatus::Succeeded | CellStatus::Skipped)
    }
}

/// Why a cell failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CellError {
    /// The step that failed, or `setup` when the setup stage failed.
    pub step: String,
    /// The error kind ([`crate::Error::kind`]).
    pub kind: String,
    /// The message.
    pub message: String,
}

/// The journal entry of one cell: `journal/<cell>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JournalEntry {
    /// The format version.
    pub format: u32,
    /// The cell.
    pub cell: CellId,
    /// Where it stands.
    pub status: CellStatus,
    /// How many times it was started, over all sessions of the run.
    pub attempts: u32,
    /// When the last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the last attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How long the last attempt took, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CellError>,
}

impl JournalEntry {
    /// A pending entry.
    pub fn pending(cell: CellId) -> Self {
        JournalEntry {
            format: FORMAT_VERSION,
            cell,
            status: CellStatus::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            duration_s: None,
            error: None,
        }
    }
}

/// What one step of a cell reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepRecord {
    /// The step's name.
    pub step: String,
    /// How long it took, in seconds.
    pub duration_s: f64,
    /// Its output, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<StepOutput>,
    /// Its error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CellError>,
}

/// One cell's results: `cells/<cell>/summary.json`, and one row of the run summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CellSummary {
    /// The format version.
    pub format: u32,
    /// The cell.
    pub cell: CellId,
    /// Its parameters.
    pub params: Vec<(String, ParamValue)>,
    /// How it ended.
    pub status: CellStatus,
    /// Attempts over all sessions.
    pub attempts: u32,
    /// Duration of the last attempt, in seconds.
    pub duration_s: f64,
    /// All steps' metrics, merged (a later step's metric of the same name wins).
    pub metrics: BTreeMap<String, f64>,
    /// All steps' notes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Each step, in order.
    pub steps: Vec<StepRecord>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CellError>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// In progress, or the process running it died (resume it).
    Running,
    /// Every cell succeeded.
    Succeeded,
    /// Some cells succeeded, some did not.
    Partial,
    /// No cell succeeded.
    Failed,
    /// Stopped by Ctrl-C, SIGTERM or the caller; resume it to finish.
    Cancelled,
}

/// One session of a run: the first, and one per `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Session {
    /// When it started.
    pub started_at: String,
    /// When it ended; missing when it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostInfo {
    /// The host name.
    pub hostname: String,
    /// The operating system and architecture.
    pub os: String,
    /// The kernel release, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The CPU model, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    /// Physical memory in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl HostInfo {
    /// This machine. Reads `/proc` on Linux (small files; call it off the async workers).
    pub fn current() -> Self {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024);
        let kernel = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| u.release().to_str().map(str::to_owned));
        HostInfo {
            hostname,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            kernel,
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
        }
    }
}

/// Where a run came from: recorded in the manifest so it can be traced and reproduced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Provenance {
    /// The experiment file, as named on the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_file: Option<String>,
    /// The git commit of the repository holding the experiment file, if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitInfo>,
    /// The run this run reproduces (`harness reproduce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduces: Option<String>,
}

/// A git commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GitInfo {
    /// The commit id.
    pub commit: String,
    /// Whether the experiment file had uncommitted changes.
    pub dirty: bool,
}

impl GitInfo {
    /// The commit of the repository holding `file`, or `None` when it is in none (or git is
    /// not installed).
    pub async fn of_file(file: &std::path::Path) -> Option<GitInfo> {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or_else(|| std::path::Path::new("."));
        let name = file.file_name()?;
        let out = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .await
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let status = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["status", "--porcelain", "--"])
            .arg(name)
            .output()
            .await
            .ok()?;
        Some(GitInfo {
            commit,
            dirty: !status.stdout.is_empty(),
        })
    }
}

/// The run manifest: `manifest.json`. Everything needed to reproduce and resume the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// The format version.
    pub format: u32,
    /// The run id.
    pub run_id: String,
    /// The experiment's name.
    pub experiment_name: String,
    /// The harness version that made the run.
    pub harness_version: String,
    /// The resolved experiment, every default filled in.
    pub experiment: serde_json::Value,
    /// The cell ids in run order.
    pub plan: Vec<CellId>,
    /// Where it ran.
    pub host: HostInfo,
    /// When it was created.
    pub created_at: String,
    /// How it stands.
    pub status: RunStatus,
    /// Each session.
    pub sessions: Vec<Session>,
    /// Cells by status, at the end of the last session.
    #[serde(default)]
    pub cells: BTreeMap<String, usize>,
    /// Each cell's status at the end of the last session.
    #[serde(default)]
    pub cell_status: BTreeMap<CellId, CellStatus>,
    /// When the last session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Where the run came from.
    #[serde(default)]
    pub provenance: Provenance,
    /// Teardown problems of the last session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teardown_errors: Vec<String>,
}

/// A duration in seconds, for JSON.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
