//! The run catalog: list the runs in a store, find one by id, copy one to another store.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> harness_core::Result<()> {
//! use harness_core::MemoryStore;
//! let store = MemoryStore::new();
//! let runs = harness_storage::catalog::list_runs(&store, None).await?;
//! assert!(runs.is_empty());
//! # Ok(()) }
//! ```

use harness_core::journal::Manifest;
use harness_core::{
    ArtifactKey, ArtifactStore, ArtifactStoreExt, CellStatus, Error, Result, RunLayout, RunStatus,
};

/// One run, as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunInfo {
    /// Its keys.
    pub layout: RunLayout,
    /// Its manifest.
    pub manifest: Manifest,
}

impl RunInfo {
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.manifest.run_id
    }
    /// How it stands.
    pub fn status(&self) -> RunStatus {
        self.manifest.status
    }
    /// Cells that succeeded.
    pub fn succeeded(&self) -> usize {
        self.count(CellStatus::Succeeded)
    }
    /// Cells with `status`.
    pub fn count(&self, status: CellStatus) -> usize {
        self.manifest
            .cell_status
            .values()
            .filter(|s| **s == status)
            .count()
    }
    /// Wall time over all sessions, in seconds, when every session ended.
    pub fn duration_s(&self) -> Option<f64> {
        let mut total = 0.0;
        for s in &self.manifest.sessions {
            let start = humantime::parse_rfc3339(&s.started_at).ok()?;
            let end = humantime::parse_rfc3339(s.finished_at.as_deref()?).ok()?;
            total += end.duration_since(start).ok()?.as_secs_f64();
        }
        Some(total)
    }
}

/// The prefix that holds the runs of `experiment` (all runs when `None`).
fn runs_prefix(experiment: Option<&str>) -> Result<ArtifactKey> {
    match experiment {
        Some(e) => ArtifactKey::new(format!("runs/{e}")),
        None => ArtifactKey::new("runs"),
    }
}

/// `experiment/run-id` or `run-id`, split.
fn split_run(run: &str) -> (Option<&str>, &str) {
    match run.split_once('/') {
        Some((e, r)) => (Some(e), r),
        None => (None, run),
    }
}

/// The manifests under `prefix`, as `(layout, key)`, of run `id` when given.
async fn manifest_keys(
    store: &dyn ArtifactStore,
    prefix: &ArtifactKey,
    id: Option<&str>,
) -> Result<Vec<(RunLayout, ArtifactKey)>> {
    let mut out = Vec::new();
    for meta in store.list(prefix).await? {
        let parts: Vec<&str> = meta.key.as_str().split('/').collect();
        let [_, exp, run, "manifest.json"] = parts.as_slice() else {
            continue;
        };
        if id.is_none_or(|id| id == *run) {
            out.push((RunLayout::new(exp, run)?, meta.key));
        }
    }
    Ok(out)
}

/// The runs in `store`, oldest first; of one experiment when `experiment` is given. Runs
/// whose manifest cannot be read are skipped with a warning.
///
/// # Errors
/// When the store cannot be listed.
pub async fn list_runs(
    store: &dyn ArtifactStore,
    experiment: Option<&str>,
) -> Result<Vec<RunInfo>> {
    let mut out = Vec::new();
    for (layout, key) in manifest_keys(store, &runs_prefix(experiment)?, None).await? {
        match store.get_json::<Manifest>(&key).await {
            Ok(manifest) => out.push(RunInfo { layout, manifest }),
            Err(e) => tracing::warn!("skipping `{key}`: {e}"),
        }
    }
    out.sort_by(|a, b| {
        (a.manifest.created_at.as_str(), a.run_id())
            .cmp(&(b.manifest.created_at.as_str(), b.run_id()))
    });
    Ok(out)
}

/// The run `run` (a run id, or `experiment/run-id`) in `store`. Reads only that run's
/// manifest.
///
/// # Errors
/// [`Error::NotFound`] when there is none; [`Error::InvalidInput`] when the id is ambiguous.
pub async fn find_run(store: &dyn ArtifactStore, run: &str) -> Result<RunInfo> {
    let (experiment, id) = split_run(run);
    let mut found = manifest_keys(store, &runs_prefix(experiment)?, Some(id)).await?;
    match found.len() {
        0 => Err(Error::NotFound {
            what: format!("run `{run}` in {}", store.describe()),
        }),
        1 => {
            let (layout, key) = found.remove(0);
            let manifest = store.get_json(&key).await?;
            Ok(RunInfo { layout, manifest })
        }
        _ => Err(Error::invalid(
            format!("run `{run}`"),
            "several experiments have a run of this id; name it as experiment/run-id",
        )),
    }
}

/// The keys of run `run` (an id or `experiment/run-id`) in `store`, found without its
/// manifest (a spool may hold only part of a run).
///
/// # Errors
/// When the store cannot be listed, or [`Error::NotFound`] when nothing of the run is there.
pub async fn run_keys(store: &dyn ArtifactStore, run: &str) -> Result<Vec<ArtifactKey>> {
    let (experiment, id) = split_run(run);
    let keys: Vec<ArtifactKey> = store
        .list(&runs_prefix(experiment)?)
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.as_str().split('/').nth(2) == Some(id))
        .collect();
    if keys.is_empty() {
        return Err(Error::NotFound {
            what: format!("run `{run}` in {}", store.describe()),
        });
    }
    Ok(keys)
}

/// What [`copy_run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyReport {
    /// Objects written to the destination.
    pub copied: usize,
    /// Objects the destination already held, byte for byte.
    pub unchanged: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Copies run `run` from `from` to `to`, verified: every object is read back from `to` and
/// compared. Objects `to` already holds unchanged are not written again. The manifest goes
/// last, so a listing of `to` shows the run only once all of it is there.
///
/// # Errors
/// The first failure to read, write or verify; what was copied before stays.
pub async fn copy_run(
    from: &dyn ArtifactStore,
    to: &dyn ArtifactStore,
    run: &str,
) -> Result<CopyReport> {
    let mut keys = run_keys(from, run).await?;
    // Manifests last.
    keys.sort_by_key(|k| (k.file_name() == "manifest.json", k.clone()));
    let mut report = CopyReport::default();
    for key in keys {
        let data = from.get(&key).await?;
        match to.get(&key).await {
            Ok(there) if there == data => {
                report.unchanged += 1;
                continue;
            }
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        to.put(&key, data.clone()).await?;
        let back = to.get(&key).await?;
        if back != data {
            return Err(Error::failed(
                format!("verifying `{key}` in {}", to.describe()),
                format!(
                    "read back {} bytes that differ from the {} written",
                    back.len(),
                    data.len()
                ),
            ));
        }
        report.copied += 1;
        report.bytes += data.len() as u64;
    }
    Ok(report)
}
