//! Where runs keep their files: the [`ArtifactStore`] trait, validated keys, an in-memory
//! store, and the layout of one run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::CellId;

/// A validated relative key: `/`-separated segments, none empty, `.` or `..`, no `\`, no
/// control characters, at most 1024 bytes. Keys can never leave the store's root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactKey(String);

impl ArtifactKey {
    /// Validates a key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the key and the rule it breaks.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let bad = |reason: &str| Err(Error::invalid(format!("artifact key `{key}`"), reason));
        if key.is_empty() {
            return bad("it is empty");
        }
        if key.len() > 1024 {
            return bad("it is longer than 1024 bytes");
        }
        if key.starts_with('/') {
            return bad("it must be relative, not start with `/`");
        }
        if key.chars().any(|c| c.is_control() || c == '\\') {
            return bad("it holds a control character or `\\`");
        }
        for seg in key.split('/') {
            match seg {
                "" => return bad("it has an empty segment (`//` or a trailing `/`)"),
                "." | ".." => return bad("`.` and `..` segments are not allowed"),
                _ => {}
            }
        }
        Ok(ArtifactKey(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This key with `rel` (itself a valid relative key) appended.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `rel` is not a valid key.
    pub fn join(&self, rel: &str) -> Result<Self> {
        ArtifactKey::new(rel)?;
        ArtifactKey::new(format!("{}/{rel}", self.0))
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl TryFrom<String> for ArtifactKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        ArtifactKey::new(s)
    }
}

impl From<ArtifactKey> for String {
    fn from(k: ArtifactKey) -> String {
        k.0
    }
}

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a listing says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArtifactMeta {
    /// Its key.
    pub key: ArtifactKey,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, when the store knows.
    pub modified: Option<SystemTime>,
}

impl ArtifactMeta {
    /// A listing entry.
    pub fn new(key: ArtifactKey, size: u64, modified: Option<SystemTime>) -> Self {
        ArtifactMeta {
            key,
            size,
            modified,
        }
    }
}

/// A flat key-value store of files: a local folder, memory, or an object store.
///
/// # Contract
/// * `put` is atomic per key: a reader sees the old bytes or the new bytes, never a mix or a
///   partial object, also when the writer dies midway. It overwrites.
/// * `put_if_absent` writes only when the key does not exist, else fails with
///   [`Error::AlreadyExists`]; stores that cannot make this atomic check first, and say so.
/// * `get` of a missing key fails with [`Error::NotFound`].
/// * `list(prefix)` returns every object whose key is `prefix` or lies below `prefix/`,
///   sorted by key; a missing prefix lists nothing (no error).
/// * `delete` is idempotent: deleting a missing key succeeds.
/// * Errors worth retrying (a dropped connection, a 503) are [`Error::Transient`].
/// * All methods may be called concurrently from many tasks.
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait ArtifactStore: Send + Sync + fmt::Debug {
    /// Writes `data` under `key`, replacing what was there.
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()>;
    /// Writes `data` under `key` unless the key exists.
    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()>;
    /// Reads the object under `key`.
    async fn get(&self, key: &ArtifactKey) -> Result<Bytes>;
    /// Lists the objects at or below `prefix`, sorted by key.
    async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>>;
    /// Deletes the object under `key`, if any.
    async fn delete(&self, key: &ArtifactKey) -> Result<()>;
    /// A short description for logs, e.g. `file:///data/runs`.
    fn describe(&self) -> String;
}

/// Conveniences over any [`ArtifactStore`]; implemented for every store, never by hand.
#[async_trait]
pub trait ArtifactStoreExt: ArtifactStore {
    /// Writes `value` as pretty JSON.
    async fn put_json<T: Serialize + Sync>(&self, key: &ArtifactKey, value: &T) -> Result<()> {
        let data = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::failed_from(format!("encoding `{key}` as JSON"), e))?;
        self.put(key, Bytes::from(data)).await
    }

    /// Reads JSON from `key`.
    async fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &ArtifactKey) -> Result<T> {
        let data = self.get(key).await?;
        serde_json::from_slice(&data)
            .map_err(|e| Error::failed_from(format!("decoding `{key}` as JSON"), e))
    }

    /// Whether `key` exists.
    async fn exists(&self, key: &ArtifactKey) -> Result<bool> {
        match self.get(key).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<S: ArtifactStore + ?Sized> ArtifactStoreExt for S {}

/// A store in memory, for tests and dry runs. Cloning shares the contents.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Arc<RwLock<BTreeMap<ArtifactKey, (Bytes, SystemTime)>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<ArtifactKey, (Bytes, SystemTime)>> {
        // A poisoned lock only means a panic elsewhere mid-insert of a whole value; the map
        // itself is consistent, so keep going.
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn objects_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ArtifactKey, (Bytes, SystemTime)>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `key` is `prefix` or lies below it.
pub fn is_under(key: &ArtifactKey, prefix: &ArtifactKey) -> bool {
    key.as_str() == prefix.as_str()
        || key
            .as_str()
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
}

#[async_trait]
impl ArtifactStore for MemoryStore {
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        self.objects_mut()
            .insert(key.clone(), (data, SystemTime::now()));
        Ok(())
    }

    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        let mut objects = self.objects_mut();
        if objects.contains_key(key) {
            return Err(Error::AlreadyExists {
                what: format!("`{key}` in {}", self.describe()),
            });
        }
        objects.insert(key.clone(), (data, SystemTime::now()));
        Ok(())
    }

    async fn get(&self, key: &ArtifactKey) -> Result<Bytes> {
        self.objects()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| Error::NotFound {
                what: format!("`{key}` in {}", self.describe()),
            })
    }

    async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>> {
        Ok(self
            .objects()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.as_str().starts_with(prefix.as_str()))
            .filter(|(k, _)| is_under(k, prefix))
            .map(|(k, (b, t))| ArtifactMeta::new(k.clone(), b.len() as u64, Some(*t)))
            .collect())
    }

    async fn delete(&self, key: &ArtifactKey) -> Result<()> {
        self.objects_mut().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}

/// The keys of one run, as laid out in DESIGN.md:
///
/// ```text
/// runs/<experiment>/<run-id>/manifest.json
/// runs/<experiment>/<run-id>/experiment.yaml
/// runs/<experiment>/<run-id>/journal/<cell>.json
/// runs/<experiment>/<run-id>/cells/<cell>/summary.json
/// runs/<experiment>/<run-id>/cells/<cell>/records.parquet
/// runs/<experiment>/<run-id>/cells/<cell>/stats.json
/// runs/<experiment>/<run-id>/cells/<cell>/artifacts/<step>/...
/// runs/<experiment>/<run-id>/setup/artifacts/<step>/...
/// runs/<experiment>/<run-id>/teardown/artifacts/<step>/...
/// runs/<experiment>/<run-id>/summary.json
/// runs/<experiment>/<run-id>/summary.parquet
/// runs/<experiment>/<run-id>/report/index.html, report.md, charts/...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    root: ArtifactKey,
}

impl RunLayout {
    /// The layout of run `run_id` of experiment `experiment`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when either is not a single safe path segment.
    pub fn new(experiment: &str, run_id: &str) -> Result<Self> {
        for (what, s) in [("experiment name", experiment), ("run id", run_id)] {
            if s.contains('/') || s.is_empty() || s.starts_with('.') {
                return Err(Error::invalid(
                    format!("{what} `{s}`"),
                    "expected one path segment",
                ));
            }
        }
        Ok(RunLayout {
            root: ArtifactKey::new(format!("runs/{experiment}/{run_id}"))?,
        })
    }

    fn key(&self, rel: &str) -> ArtifactKey {
        // The parts were validated when the layout and the cell id were made.
        ArtifactKey(format!("{}/{rel}", self.root))
    }

    /// `runs/<experiment>/<run-id>`.
    pub fn root(&self) -> &ArtifactKey {
        &self.root
    }
    /// The manifest.
    pub fn manifest(&self) -> ArtifactKey {
        self.key("manifest.json")
    }
    /// The input experiment, as given.
    pub fn experiment(&self) -> ArtifactKey {
        self.key("experiment.yaml")
    }
    /// The journal folder.
    pub fn journal_dir(&self) -> ArtifactKey {
        self.key("journal")
    }
    /// A cell's journal entry.
    pub fn journal(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("journal/{cell}.json"))
    }
    /// A cell's folder.
    pub fn cell_dir(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("cells/{cell}"))
    }
    /// A cell's summary.
    pub fn cell_summary(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("cells/{cell}/summary.json"))
    }
    /// A cell's per-request records (`records.parquet`, harness-analytics' records schema).
    pub fn cell_records(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("cells/{cell}/records.parquet"))
    }
    /// The records of client `shard` of a cell run by several clients
    /// (`cells/<cell>/shards/<shard>.parquet`), merged into [`RunLayout::cell_records`].
    pub fn cell_shard_records(&self, cell: &CellId, shard: u32) -> ArtifactKey {
        self.key(&format!("cells/{cell}/shards/{shard}.parquet"))
    }
    /// A cell's full statistics (`stats.json`, harness-analytics' `CellStats`).
    pub fn cell_stats(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("cells/{cell}/stats.json"))
    }
    /// The server metrics scraped during a cell (`server_metrics.parquet`,
    /// harness-analytics' telemetry table).
    pub fn cell_server_metrics(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("cells/{cell}/server_metrics.parquet"))
    }
    /// The summary of a cell's telemetry: targets, gaps, cross-checks (`telemetry.json`).
    pub fn cell_telemetry(&self, cell: &CellId) -> ArtifactKey {
        self.key(&format!("cells/{cell}/telemetry.json"))
    }
    /// The run summary, one row per cell.
    pub fn summary(&self) -> ArtifactKey {
        self.key("summary.json")
    }
    /// Each treatment's resolved experiment and deployment (`treatments.json`).
    pub fn treatments(&self) -> ArtifactKey {
        self.key("treatments.json")
    }
    /// The results of the run's SLO searches (`search.json`).
    pub fn search(&self) -> ArtifactKey {
        self.key("search.json")
    }
    /// The run summary as a table (`summary.parquet`, one row per cell, every statistic).
    pub fn summary_table(&self) -> ArtifactKey {
        self.key("summary.parquet")
    }
    /// A file of the run's report (`report/index.html`, `report/charts/ttft.svg`, ...).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `rel` is not a valid relative key.
    pub fn report(&self, rel: &str) -> Result<ArtifactKey> {
        self.root.join(&format!("report/{rel}"))
    }
    /// The artifact `rel` that step `step` stored for `cell`
    /// (`cells/<cell>/artifacts/<step>/<rel>`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `step` or `rel` is not a valid relative key.
    pub fn cell_artifact(&self, cell: &CellId, step: &str, rel: &str) -> Result<ArtifactKey> {
        self.step_artifacts(&format!("cells/{cell}"), step)?
            .join(rel)
    }
    /// Where a step's artifacts go: under the cell, or under `setup`/`teardown`.
    pub fn step_artifacts(&self, scope: &str, step: &str) -> Result<ArtifactKey> {
        ArtifactKey::new(format!("{}/{scope}/artifacts/{step}", self.root))
    }
}

/// A store view that prefixes every key, handed to steps so they write only into their own
/// folder.
#[derive(Debug, Clone)]
pub struct ScopedStore {
    inner: Arc<dyn ArtifactStore>,
    prefix: ArtifactKey,
}

impl ScopedStore {
    /// A view of `inner` below `prefix`.
    pub fn new(inner: Arc<dyn ArtifactStore>, prefix: ArtifactKey) -> Self {
        ScopedStore { inner, prefix }
    }

    /// The prefix.
    pub fn prefix(&self) -> &ArtifactKey {
        &self.prefix
    }

    /// The full key of `rel`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `rel` is not a valid relative key.
    pub fn key(&self, rel: &str) -> Result<ArtifactKey> {
        self.prefix.join(rel)
    }

    /// Writes `data` at `rel`; returns the full key.
    ///
    /// # Errors
    /// As [`ArtifactStore::put`], or [`Error::InvalidInput`] for a bad `rel`.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<ArtifactKey> {
        let key = self.key(rel)?;
        self.inner.put(&key, data).await?;
        Ok(key)
    }

    /// Reads `rel`.
    ///
    /// # Errors
    /// As [`ArtifactStore::get`].
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        self.inner.get(&self.key(rel)?).await
    }
}
