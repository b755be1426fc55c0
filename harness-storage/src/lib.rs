//! Run storage for harness: an [`ArtifactStore`] over
//! [`object_store`](https://docs.rs/object_store), opened by URL.
//!
//! Supported now: `file://` (a local folder; relative paths such as `file://./harness-runs`
//! are relative to the working directory; a plain path means the same) and `memory://`.
//! Remote stores (`s3://`, `gs://`, `az://`) are rejected with [`Error::Unsupported`] until
//! they land.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use harness_core::{ArtifactKey, ArtifactStore};
//! let dir = std::env::temp_dir().join(format!("harness-doc-{}", std::process::id()));
//! let store = harness_storage::open(&format!("file://{}", dir.display()))?;
//! let key = ArtifactKey::new("runs/demo/r1/hello.txt")?;
//! store.put(&key, "hi".into()).await?;
//! assert_eq!(store.get(&key).await?, "hi");
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use harness_core::{ArtifactKey, ArtifactMeta, ArtifactStore};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// The default store URL: a `harness-runs` folder in the working directory.
pub const DEFAULT_STORE_URL: &str = "file://./harness-runs";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be read.
    #[error("invalid store URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The URL's scheme is not supported (yet).
    #[error(
        "store URL `{url}`: the scheme `{scheme}` is not supported yet; use file:// or memory://"
    )]
    Unsupported {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The store could not be opened.
    #[error("opening store `{url}`: {source}")]
    Open {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
}

/// Opens a store by URL: `file://PATH`, a plain `PATH`, or `memory://`.
///
/// # Errors
/// [`Error::InvalidUrl`], [`Error::Unsupported`] or [`Error::Open`].
pub fn open(url: &str) -> Result<Arc<dyn ArtifactStore>, Error> {
    Ok(Arc::new(ObjectArtifactStore::open(url)?))
}

/// An [`ArtifactStore`] over any [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct ObjectArtifactStore {
    inner: Arc<dyn ObjectStore>,
    url: String,
    /// Local folders answer quickly and fail for good; remote stores may fail for a moment.
    remote: bool,
}

impl ObjectArtifactStore {
    /// Wraps `store`; `url` describes it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, url: impl Into<String>, remote: bool) -> Self {
        ObjectArtifactStore {
            inner: store,
            url: url.into(),
            remote,
        }
    }

    /// Opens a store by URL; see [`open`].
    ///
    /// # Errors
    /// As [`open`].
    pub fn open(url: &str) -> Result<Self, Error> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("file", url),
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(Error::InvalidUrl {
                        url: url.into(),
                        reason: "no folder given, e.g. file://./harness-runs".into(),
                    });
                }
                let dir = absolute(FsPath::new(rest)).map_err(|e| Error::InvalidUrl {
                    url: url.into(),
                    reason: e.to_string(),
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| Error::InvalidUrl {
                    url: url.into(),
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(
                    |source| Error::Open {
                        url: url.into(),
                        source,
                    },
                )?;
                Ok(Self::new(
                    Arc::new(fs),
                    format!("file://{}", dir.display()),
                    false,
                ))
            }
            "memory" => Ok(Self::new(
                Arc::new(object_store::memory::InMemory::new()),
                "memory://",
                false,
            )),
            "" => Err(Error::InvalidUrl {
                url: url.into(),
                reason: "missing scheme".into(),
            }),
            other => Err(Error::Unsupported {
                url: url.into(),
                scheme: other.into(),
            }),
        }
    }

    fn path(&self, key: &ArtifactKey) -> harness_core::Result<Path> {
        Path::parse(key.as_str()).map_err(|e| {
            harness_core::Error::invalid(format!("artifact key `{key}`"), e.to_string())
        })
    }

    fn map_err(&self, what: String, e: object_store::Error) -> harness_core::Error {
        match e {
            object_store::Error::NotFound { .. } => harness_core::Error::NotFound {
                what: format!("{what} in {}", self.url),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => harness_core::Error::AlreadyExists {
                what: format!("{what} in {}", self.url),
            },
            object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. } => harness_core::Error::NotSupported {
                what: format!("{what} in {}: {e}", self.url),
            },
            other if self.remote => {
                harness_core::Error::transient(format!("{what} in {}", self.url), other)
            }
            other => harness_core::Error::Failed {
                context: format!("{what} in {}", self.url),
                reason: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}

fn absolute(p: &FsPath) -> std::io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p.strip_prefix("./").unwrap_or(p)))
    }
}

#[async_trait]
impl ArtifactStore for ObjectArtifactStore {
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> harness_core::Result<()> {
        let path = self.path(key)?;
        self.inner
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(format!("writing `{key}`"), e))
    }

    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> harness_core::Result<()> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.inner
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(format!("creating `{key}`"), e))
    }

    async fn get(&self, key: &ArtifactKey) -> harness_core::Result<Bytes> {
        let path = self.path(key)?;
        let what = || format!("reading `{key}`");
        let result = self
            .inner
            .get(&path)
            .await
            .map_err(|e| self.map_err(what(), e))?;
        result.bytes().await.map_err(|e| self.map_err(what(), e))
    }

    async fn list(&self, prefix: &ArtifactKey) -> harness_core::Result<Vec<ArtifactMeta>> {
        let path = self.path(prefix)?;
        let what = || format!("listing `{prefix}`");
        let mut out: Vec<ArtifactMeta> = Vec::new();
        let mut stream = self.inner.list(Some(&path));
        while let Some(meta) = stream
            .try_next()
            .await
            .map_err(|e| self.map_err(what(), e))?
        {
            let key = ArtifactKey::new(meta.location.as_ref())?;
            if harness_core::store::is_under(&key, prefix) {
                out.push(ArtifactMeta::new(
                    key,
                    meta.size,
                    Some(meta.last_modified.into()),
                ));
            }
        }
        // The object at the prefix itself, if any, is not part of a prefix listing.
        if let Ok(meta) = self.inner.head(&path).await {
            out.push(ArtifactMeta::new(
                prefix.clone(),
                meta.size,
                Some(meta.last_modified.into()),
            ));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn delete(&self, key: &ArtifactKey) -> harness_core::Result<()> {
        let path = self.path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(format!("deleting `{key}`"), e)),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
