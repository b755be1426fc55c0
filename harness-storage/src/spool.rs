//! Keeping a run going while its remote store is down: [`SpoolingStore`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::{ArtifactKey, ArtifactMeta, ArtifactStore, Error, Result};
use tokio::task::AbortHandle;

/// How often the remote store is probed while it is down.
const DEFAULT_PROBE_EVERY: Duration = Duration::from_secs(5);

/// A remote store with a local spool. While the remote answers, writes go to it. When it
/// fails with anything but a definite answer (not found, exists, bad input), the write goes
/// to the spool instead and succeeds there, so the run goes on. From then on the store is
/// known to be down: every write goes straight to the spool, without waiting on the remote,
/// and a background task probes the remote every few seconds. Once it answers, that task
/// uploads what the spool holds, and writes go to the remote again when the spool is empty.
/// [`SpoolingStore::flush`] uploads what is left at the end of a run; `harness push` does
/// it later.
///
/// Reads see the newest copy: the spooled one when there is one. A write that reaches the
/// remote removes an older spooled copy of the same key, so a flush never overwrites newer
/// data with older.
///
/// # Contract
/// A write returns `Ok` only once the object is durable in the remote or the spool. The
/// pace of writes does not depend on a remote known to be down: at most the write that
/// finds it down waits for the remote's timeout.
#[derive(Debug)]
pub struct SpoolingStore {
    inner: Arc<Inner>,
    /// The background probe while the remote is down.
    prober: Mutex<Option<AbortHandle>>,
}

#[derive(Debug)]
struct Inner {
    remote: Arc<dyn ArtifactStore>,
    spool: Arc<dyn ArtifactStore>,
    probe_every: Duration,
    state: Mutex<State>,
    /// Objects uploaded from the spool so far, by flushes and the background probe.
    uploaded: AtomicUsize,
    /// Held while an object goes into or out of the spool, so an upload never races a newer
    /// spooled copy of the same key.
    moving: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// When the remote last failed, while it is considered down.
    down_since: Option<Instant>,
    /// Keys whose newest copy is in the spool, with the generation of that copy.
    spooled: BTreeMap<ArtifactKey, u64>,
    /// The generation of the next spooled copy.
    generation: u64,
    /// Of those, the ones written with `put_if_absent`.
    create_only: BTreeSet<ArtifactKey>,
}

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Objects uploaded and removed from the spool.
    pub uploaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Objects still in the spool.
    pub remaining: usize,
    /// Why some could not be uploaded.
    pub errors: Vec<String>,
}

/// Whether an error says the store is unavailable (so the write should be spooled), rather
/// than giving a definite answer.
fn is_outage(e: &Error) -> bool {
    matches!(
        e,
        Error::Transient { .. } | Error::Timeout { .. } | Error::Failed { .. } | Error::Io { .. }
    )
}

impl SpoolingStore {
    /// A spooling view of `remote` that spools into `spool` (a local store). Objects left in
    /// the spool by an earlier process are found and flushed with the rest.
    ///
    /// # Errors
    /// When the spool cannot be listed.
    pub async fn new(
        remote: Arc<dyn ArtifactStore>,
        spool: Arc<dyn ArtifactStore>,
    ) -> Result<Self> {
        let mut state = State::default();
        for meta in spool.list(&ArtifactKey::new("runs")?).await? {
            state.spooled.insert(meta.key, 0);
        }
        for meta in spool.list(&ArtifactKey::new("create-only")?).await? {
            if let Some(key) = meta.key.as_str().strip_prefix("create-only/") {
                state.create_only.insert(ArtifactKey::new(key)?);
            }
        }
        Ok(SpoolingStore {
            inner: Arc::new(Inner {
                remote,
                spool,
                probe_every: DEFAULT_PROBE_EVERY,
                state: Mutex::new(state),
                moving: tokio::sync::Mutex::new(()),
                uploaded: AtomicUsize::new(0),
            }),
            prober: Mutex::new(None),
        })
    }

    /// How often to probe the remote while it is down (default 5 s). A builder step: call
    /// it on the new store, before the store is used.
    #[must_use]
    pub fn probe_every(mut self, every: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.probe_every = every;
        }
        self
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<dyn ArtifactStore> {
        &self.inner.spool
    }

    /// The remote store.
    pub fn remote(&self) -> &Arc<dyn ArtifactStore> {
        &self.inner.remote
    }

    /// How many objects wait in the spool.
    pub fn spooled(&self) -> usize {
        self.inner.state().spooled.len()
    }

    /// How many objects this store has uploaded from the spool so far, in the background
    /// and by [`SpoolingStore::flush`].
    pub fn uploaded(&self) -> usize {
        self.inner.uploaded.load(Ordering::Relaxed)
    }

    /// Whether the remote is known to be down (writes go to the spool).
    pub fn is_down(&self) -> bool {
        self.inner.is_down()
    }

    /// Marks the remote down after `e` and starts the background probe if it is not running.
    fn mark_down(&self, e: &Error) {
        self.inner.mark_down(e);
        let mut prober = self.prober.lock().unwrap_or_else(|e| e.into_inner());
        if prober.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let task = rt.spawn(async move {
            loop {
                tokio::time::sleep(inner.probe_every).await;
                if inner.recover().await {
                    return;
                }
            }
        });
        *prober = Some(task.abort_handle());
    }

    /// Uploads every spooled object to the remote, once, and removes it from the spool.
    /// Tries the remote even when it is known to be down; stops at the first sign that it
    /// still is.
    pub async fn flush(&self) -> FlushReport {
        let report = self.inner.flush().await;
        if report.remaining == 0 && report.errors.is_empty() {
            self.inner.mark_up();
        }
        report
    }
}

impl Drop for SpoolingStore {
    fn drop(&mut self) {
        if let Some(h) = self
            .prober
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_down(&self) -> bool {
        self.state().down_since.is_some()
    }

    fn mark_down(&self, e: &Error) {
        let mut st = self.state();
        if st.down_since.is_none() {
            tracing::warn!(
                remote = %self.remote.describe(),
                spool = %self.spool.describe(),
                "the store is not answering ({e}); results go to the local spool until it does"
            );
            st.down_since = Some(Instant::now());
        }
    }

    fn mark_up(&self) {
        let mut st = self.state();
        if let Some(since) = st.down_since.take() {
            tracing::info!(
                remote = %self.remote.describe(),
                "the store answers again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// One background probe: uploads the spool if the remote answers. True when the remote
    /// answered and the spool is empty, so writes go to the remote again.
    async fn recover(&self) -> bool {
        if self.state().spooled.is_empty() {
            // Nothing to upload: any definite answer shows the remote is back.
            let Ok(probe) = ArtifactKey::new(PROBE_KEY) else {
                return false;
            };
            if matches!(self.remote.get(&probe).await, Err(e) if is_outage(&e)) {
                return false;
            }
        }
        // Writes go on spooling meanwhile; a pass uploads what came since the last one.
        for _ in 0..MAX_PASSES {
            if !self.flush().await.errors.is_empty() {
                return false;
            }
            // Under the spool's lock, so no write lands in the spool between the check
            // and the switch.
            let _moving = self.moving.lock().await;
            if self.state().spooled.is_empty() {
                self.mark_up();
                return true;
            }
        }
        false
    }

    /// Writes `data` to the spool in place of the remote; false, writing nothing, when the
    /// remote came back meanwhile (the caller writes there).
    async fn to_spool(&self, key: &ArtifactKey, data: Bytes, create_only: bool) -> Result<bool> {
        let _moving = self.moving.lock().await;
        if !self.is_down() {
            return Ok(false);
        }
        if create_only {
            let marker = ArtifactKey::new(format!("create-only/{key}"))?;
            self.spool.put(&marker, Bytes::new()).await?;
        }
        self.spool.put(key, data).await?;
        let mut st = self.state();
        st.generation += 1;
        let generation = st.generation;
        st.spooled.insert(key.clone(), generation);
        if create_only {
            st.create_only.insert(key.clone());
        }
        Ok(true)
    }

    /// Forgets the spooled copy of `key` (a newer one reached the remote, or it was
    /// uploaded). The caller holds `moving`.
    async fn unspool_locked(&self, key: &ArtifactKey) -> Result<()> {
        let (spooled, create_only) = {
            let mut st = self.state();
            (st.spooled.remove(key).is_some(), st.create_only.remove(key))
        };
        if spooled {
            self.spool.delete(key).await?;
        }
        if create_only {
            self.spool
                .delete(&ArtifactKey::new(format!("create-only/{key}"))?)
                .await?;
        }
        Ok(())
    }

    async fn unspool(&self, key: &ArtifactKey) -> Result<()> {
        if !self.state().spooled.contains_key(key) {
            return Ok(());
        }
        let _moving = self.moving.lock().await;
        self.unspool_locked(key).await
    }

    /// Uploads one spooled object; `Ok(None)` when it was no longer spooled. The spool's
    /// lock is held only to read the copy and to remove it, never while the remote is
    /// waited on, so writes to the spool go on meanwhile. A copy spooled during the upload
    /// has a newer generation: it stays, and a later pass uploads it over this one.
    async fn upload(&self, key: &ArtifactKey) -> std::result::Result<Option<u64>, Upload> {
        let (data, generation, create_only) = {
            let _moving = self.moving.lock().await;
            let (generation, create_only) = {
                let st = self.state();
                let Some(generation) = st.spooled.get(key).copied() else {
                    return Ok(None);
                };
                (generation, st.create_only.contains(key))
            };
            let data = self.spool.get(key).await.map_err(Upload::Spool)?;
            (data, generation, create_only)
        };
        let len = data.len() as u64;
        if create_only {
            match self.remote.put_if_absent(key, data.clone()).await {
                // Already there from an earlier, interrupted flush: fine if the same.
                Err(Error::AlreadyExists { .. }) => match self.remote.get(key).await {
                    Ok(there) if there == data => {}
                    Ok(_) => {
                        return Err(Upload::Remote(Error::AlreadyExists {
                            what: format!("a different `{key}` in {}", self.remote.describe()),
                        }));
                    }
                    Err(e) => return Err(Upload::Remote(e)),
                },
                other => other.map_err(Upload::Remote)?,
            }
        } else {
            self.remote.put(key, data).await.map_err(Upload::Remote)?;
        }
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        let _moving = self.moving.lock().await;
        if self.state().spooled.get(key) != Some(&generation) {
            return Ok(Some(len));
        }
        self.unspool_locked(key).await.map_err(Upload::Spool)?;
        Ok(Some(len))
    }

    async fn flush(&self) -> FlushReport {
        let keys: Vec<ArtifactKey> = self.state().spooled.keys().cloned().collect();
        let mut report = FlushReport::default();
        let total = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            match self.upload(&key).await {
                Ok(Some(len)) => {
                    report.uploaded += 1;
                    report.bytes += len;
                }
                Ok(None) => {}
                Err(Upload::Remote(e)) if is_outage(&e) => {
                    self.mark_down(&e);
                    report.errors.push(format!(
                        "{} is still not answering ({e}); {} objects stay in {}",
                        self.remote.describe(),
                        total - i,
                        self.spool.describe()
                    ));
                    break;
                }
                Err(Upload::Remote(e)) => report.errors.push(format!("uploading `{key}`: {e}")),
                Err(Upload::Spool(e)) => report
                    .errors
                    .push(format!("moving `{key}` out of the spool: {e}")),
            }
        }
        report.remaining = self.state().spooled.len();
        report
    }
}

/// Why one object could not leave the spool.
enum Upload {
    /// The spool failed (reading the object or removing it).
    Spool(Error),
    /// The remote refused or did not answer.
    Remote(Error),
}

/// Upload passes of one recovery before it waits for the next probe.
const MAX_PASSES: usize = 16;

/// A key no run writes, read to see whether the remote answers.
const PROBE_KEY: &str = "harness-probe";

#[async_trait]
impl ArtifactStore for SpoolingStore {
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        // Twice at most: the remote may come back while the write waits for the spool.
        loop {
            if !self.inner.is_down() {
                match self.inner.remote.put(key, data.clone()).await {
                    Ok(()) => return self.inner.unspool(key).await,
                    Err(e) if is_outage(&e) => self.mark_down(&e),
                    Err(e) => return Err(e),
                }
            }
            if self.inner.to_spool(key, data.clone(), false).await? {
                return Ok(());
            }
        }
    }

    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        if self.inner.state().spooled.contains_key(key) {
            return Err(Error::AlreadyExists {
                what: format!("`{key}` in {}", self.inner.spool.describe()),
            });
        }
        loop {
            if !self.inner.is_down() {
                match self.inner.remote.put_if_absent(key, data.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) if is_outage(&e) => self.mark_down(&e),
                    Err(e) => return Err(e),
                }
            }
            if self.inner.to_spool(key, data.clone(), true).await? {
                return Ok(());
            }
        }
    }

    async fn get(&self, key: &ArtifactKey) -> Result<Bytes> {
        if self.inner.state().spooled.contains_key(key) {
            return self.inner.spool.get(key).await;
        }
        self.inner.remote.get(key).await
    }

    async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>> {
        let mut out = match self.inner.remote.list(prefix).await {
            Ok(v) => v,
            Err(e) if is_outage(&e) => {
                self.mark_down(&e);
                tracing::warn!("listing `{prefix}` from the spool only: {e}");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let spooled = self.inner.spool.list(prefix).await?;
        let newer: BTreeSet<&ArtifactKey> = spooled.iter().map(|m| &m.key).collect();
        out.retain(|m| !newer.contains(&m.key));
        out.extend(spooled);
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &ArtifactKey) -> Result<()> {
        self.inner.unspool(key).await?;
        self.inner.remote.delete(key).await
    }

    fn describe(&self) -> String {
        self.inner.remote.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A remote that hangs while frozen: every call waits out a timeout, as object_store's
    /// client does against a server that accepts and never answers.
    #[derive(Debug)]
    struct Hanging {
        inner: Arc<dyn ArtifactStore>,
        frozen: AtomicBool,
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    impl Hanging {
        async fn gate(&self, what: &str) -> Result<()> {
            if self.frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(TIMEOUT).await;
                return Err(Error::Timeout {
                    what: what.into(),
                    after: TIMEOUT,
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl ArtifactStore for Hanging {
        async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
            self.gate("put").await?;
            self.inner.put(key, data).await
        }
        async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
            self.gate("put_if_absent").await?;
            self.inner.put_if_absent(key, data).await
        }
        async fn get(&self, key: &ArtifactKey) -> Result<Bytes> {
            self.gate("get").await?;
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>> {
            self.gate("list").await?;
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &ArtifactKey) -> Result<()> {
            self.gate("delete").await?;
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            "hanging://".into()
        }
    }

    fn key(i: usize) -> ArtifactKey {
        ArtifactKey::new(format!("runs/e/r/cells/c{i}/summary.json")).expect("key")
    }

    /// Once the remote is known to be down, writes go to the spool without waiting on it,
    /// and the background probe uploads everything once it answers again, with no flush
    /// called.
    #[tokio::test(start_paused = true)]
    async fn a_hung_remote_costs_one_timeout_and_recovers_by_itself() {
        let remote = Arc::new(Hanging {
            inner: crate::open("memory://").expect("memory"),
            frozen: AtomicBool::new(false),
        });
        let spool = crate::open("memory://").expect("memory");
        let store = SpoolingStore::new(remote.clone(), spool.clone())
            .await
            .expect("store")
            .probe_every(Duration::from_secs(5));
        store.put(&key(0), "0".into()).await.expect("put");
        assert_eq!(store.spooled(), 0);

        remote.frozen.store(true, Ordering::SeqCst);
        let start = tokio::time::Instant::now();
        // A sweep that stores something every second.
        for i in 1..=20 {
            store
                .put(&key(i), i.to_string().into())
                .await
                .expect("spooled");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // One write waited for the timeout; the other nineteen went straight to the spool
        // (a retry per write would have cost ten seconds each).
        assert_eq!(start.elapsed(), TIMEOUT + Duration::from_secs(20));
        assert!(store.is_down());
        assert_eq!(store.spooled(), 20);
        assert_eq!(store.get(&key(7)).await.expect("read"), "7");

        remote.frozen.store(false, Ordering::SeqCst);
        // The probe runs every 5 s and may be waiting out a timeout of its own.
        tokio::time::sleep(TIMEOUT + Duration::from_secs(6)).await;
        assert!(!store.is_down(), "the probe found the remote back");
        assert_eq!(store.spooled(), 0, "the probe uploaded the spool");
        for i in 0..=20 {
            assert_eq!(
                remote.inner.get(&key(i)).await.expect("uploaded"),
                i.to_string()
            );
            assert!(spool.get(&key(i)).await.is_err(), "left in the spool");
        }
        // Writes go to the remote again.
        store.put(&key(21), "21".into()).await.expect("put");
        assert_eq!(store.spooled(), 0);
        assert_eq!(remote.inner.get(&key(21)).await.expect("there"), "21");
    }

    /// A write that lands in the spool while the probe uploads an older copy of the same
    /// key is not lost, and the remote ends with the newest copy.
    #[tokio::test(start_paused = true)]
    async fn the_newest_copy_wins_over_a_background_upload() {
        let remote = Arc::new(Hanging {
            inner: crate::open("memory://").expect("memory"),
            frozen: AtomicBool::new(true),
        });
        let spool = crate::open("memory://").expect("memory");
        let store = SpoolingStore::new(remote.clone(), spool)
            .await
            .expect("store")
            .probe_every(Duration::from_secs(5));
        store.put(&key(1), "old".into()).await.expect("spooled");
        remote.frozen.store(false, Ordering::SeqCst);
        // While down, a newer copy goes to the spool too, whatever the probe is doing.
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if store.is_down() {
                store.put(&key(1), "new".into()).await.expect("put");
            }
        }
        assert!(!store.is_down());
        assert_eq!(store.spooled(), 0);
        assert_eq!(remote.inner.get(&key(1)).await.expect("there"), "new");
    }
}
