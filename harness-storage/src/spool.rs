//! Keeping a run going while its remote store is down: [`SpoolingStore`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::{ArtifactKey, ArtifactMeta, ArtifactStore, Error, Result};

/// How often writes try the remote store again while it is down.
const DEFAULT_PROBE_EVERY: Duration = Duration::from_secs(5);

/// A remote store with a local spool. While the remote answers, writes go to it. When it
/// fails with anything but a definite answer (not found, exists, bad input), the write goes
/// to the spool instead and succeeds there, so the run goes on; the remote is tried again
/// every few seconds. [`SpoolingStore::flush`] uploads what the spool holds, once each, and
/// removes it from the spool; the CLI calls it at the end of a run, and
/// `harness push` does it later.
///
/// Reads see the newest copy: the spooled one when there is one. A write that reaches the
/// remote removes an older spooled copy of the same key, so a flush never overwrites newer
/// data with older.
///
/// # Contract
/// A write returns `Ok` only once the object is durable in the remote or the spool.
#[derive(Debug)]
pub struct SpoolingStore {
    remote: Arc<dyn ArtifactStore>,
    spool: Arc<dyn ArtifactStore>,
    probe_every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the remote last failed, while it is considered down.
    down_since: Option<Instant>,
    /// When it was last tried while down.
    last_try: Option<Instant>,
    /// Keys whose newest copy is in the spool.
    spooled: BTreeSet<ArtifactKey>,
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
            state.spooled.insert(meta.key);
        }
        for meta in spool.list(&ArtifactKey::new("create-only")?).await? {
            if let Some(key) = meta.key.as_str().strip_prefix("create-only/") {
                state.create_only.insert(ArtifactKey::new(key)?);
            }
        }
        Ok(SpoolingStore {
            remote,
            spool,
            probe_every: DEFAULT_PROBE_EVERY,
            state: Mutex::new(state),
        })
    }

    /// How often to try the remote again while it is down (default 5 s).
    #[must_use]
    pub fn probe_every(mut self, every: Duration) -> Self {
        self.probe_every = every;
        self
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<dyn ArtifactStore> {
        &self.spool
    }

    /// How many objects wait in the spool.
    pub fn spooled(&self) -> usize {
        self.state().spooled.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether to try the remote now: always while it is up, every `probe_every` while down.
    fn try_remote(&self) -> bool {
        let mut st = self.state();
        match (st.down_since, st.last_try) {
            (None, _) => true,
            (Some(_), Some(t)) if t.elapsed() < self.probe_every => false,
            (Some(_), _) => {
                st.last_try = Some(Instant::now());
                true
            }
        }
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
        st.last_try = Some(Instant::now());
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

    /// Writes `data` to the spool in place of the remote.
    async fn to_spool(&self, key: &ArtifactKey, data: Bytes, create_only: bool) -> Result<()> {
        if create_only {
            let marker = ArtifactKey::new(format!("create-only/{key}"))?;
            self.spool.put(&marker, Bytes::new()).await?;
        }
        self.spool.put(key, data).await?;
        let mut st = self.state();
        st.spooled.insert(key.clone());
        if create_only {
            st.create_only.insert(key.clone());
        }
        Ok(())
    }

    /// Forgets the spooled copy of `key` (a newer one reached the remote, or it was uploaded).
    async fn unspool(&self, key: &ArtifactKey) -> Result<()> {
        let (spooled, create_only) = {
            let mut st = self.state();
            (st.spooled.remove(key), st.create_only.remove(key))
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

    /// Uploads every spooled object to the remote, once, and removes it from the spool.
    /// Stops at the first sign that the remote is still down.
    pub async fn flush(&self) -> FlushReport {
        let (keys, create_only) = {
            let st = self.state();
            (st.spooled.clone(), st.create_only.clone())
        };
        let mut report = FlushReport::default();
        let total = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            let data = match self.spool.get(&key).await {
                Ok(d) => d,
                Err(e) => {
                    report
                        .errors
                        .push(format!("reading `{key}` from the spool: {e}"));
                    continue;
                }
            };
            let len = data.len() as u64;
            let sent = if create_only.contains(&key) {
                match self.remote.put_if_absent(&key, data.clone()).await {
                    // Already there from an earlier, interrupted flush: fine if the same.
                    Err(Error::AlreadyExists { .. }) => match self.remote.get(&key).await {
                        Ok(there) if there == data => Ok(()),
                        Ok(_) => Err(Error::AlreadyExists {
                            what: format!("a different `{key}` in {}", self.remote.describe()),
                        }),
                        Err(e) => Err(e),
                    },
                    other => other,
                }
            } else {
                self.remote.put(&key, data).await
            };
            match sent {
                Ok(()) => {
                    self.mark_up();
                    if let Err(e) = self.unspool(&key).await {
                        report
                            .errors
                            .push(format!("removing `{key}` from the spool: {e}"));
                    }
                    report.uploaded += 1;
                    report.bytes += len;
                }
                Err(e) if is_outage(&e) => {
                    self.mark_down(&e);
                    report.errors.push(format!(
                        "{} is still not answering ({e}); {} objects stay in {}",
                        self.remote.describe(),
                        total - i,
                        self.spool.describe()
                    ));
                    break;
                }
                Err(e) => report.errors.push(format!("uploading `{key}`: {e}")),
            }
        }
        report.remaining = self.spooled();
        report
    }
}

#[async_trait]
impl ArtifactStore for SpoolingStore {
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        if self.try_remote() {
            match self.remote.put(key, data.clone()).await {
                Ok(()) => {
                    self.mark_up();
                    return self.unspool(key).await;
                }
                Err(e) if is_outage(&e) => self.mark_down(&e),
                Err(e) => return Err(e),
            }
        }
        self.to_spool(key, data, false).await
    }

    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        if self.state().spooled.contains(key) {
            return Err(Error::AlreadyExists {
                what: format!("`{key}` in {}", self.spool.describe()),
            });
        }
        if self.try_remote() {
            match self.remote.put_if_absent(key, data.clone()).await {
                Ok(()) => {
                    self.mark_up();
                    return Ok(());
                }
                Err(e) if is_outage(&e) => self.mark_down(&e),
                Err(e) => return Err(e),
            }
        }
        self.to_spool(key, data, true).await
    }

    async fn get(&self, key: &ArtifactKey) -> Result<Bytes> {
        if self.state().spooled.contains(key) {
            return self.spool.get(key).await;
        }
        self.remote.get(key).await
    }

    async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>> {
        let mut out = match self.remote.list(prefix).await {
            Ok(v) => v,
            Err(e) if is_outage(&e) => {
                self.mark_down(&e);
                tracing::warn!("listing `{prefix}` from the spool only: {e}");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let spooled = self.spool.list(prefix).await?;
        let newer: BTreeSet<&ArtifactKey> = spooled.iter().map(|m| &m.key).collect();
        out.retain(|m| !newer.contains(&m.key));
        out.extend(spooled);
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &ArtifactKey) -> Result<()> {
        self.unspool(key).await?;
        self.remote.delete(key).await
    }

    fn describe(&self) -> String {
        self.remote.describe()
    }
}
