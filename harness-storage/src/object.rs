use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use harness_core::{ArtifactKey, ArtifactMeta, ArtifactStore};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use crate::{Error, StoreOptions};

/// Builds an S3, GCS or Azure store for `base` (`scheme://bucket`): the environment first,
/// then `options`, with short retries.
fn remote(
    scheme: &str,
    base: &str,
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn ObjectStore>, Error> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: options.retries,
        retry_timeout: options.retry_timeout,
    };
    let client = ClientOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(5))
        .with_timeout(options.retry_timeout.max(std::time::Duration::from_secs(5)));
    let bad_key = |key: &str, e: object_store::Error| Error::InvalidOption {
        url: url.into(),
        key: key.into(),
        reason: format!("not an option of this store ({e})"),
    };
    let open_err = |source| Error::Open {
        url: url.into(),
        source,
    };
    // The three builders share their method names but no trait.
    macro_rules! build {
        ($builder:ty) => {{
            let mut b = <$builder>::from_env()
                .with_url(base)
                .with_client_options(client)
                .with_retry(retry);
            for (k, v) in &options.options {
                b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, v);
            }
            Arc::new(b.build().map_err(open_err)?)
        }};
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => build!(AmazonS3Builder),
        "gs" => build!(GoogleCloudStorageBuilder),
        _ => build!(MicrosoftAzureBuilder),
    };
    Ok(store)
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

    /// Opens a store by URL with default options; see [`crate::open`].
    ///
    /// # Errors
    /// As [`crate::open`].
    pub fn open(url: &str) -> Result<Self, Error> {
        Self::open_with(url, &StoreOptions::default())
    }

    /// Opens a store by URL with `options`; see [`crate::open_with`].
    ///
    /// # Errors
    /// As [`crate::open`].
    pub fn open_with(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("file", url),
        };
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.into(),
            reason: reason.into(),
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(invalid("no folder given, e.g. file://./harness-runs"));
                }
                let dir = absolute(FsPath::new(rest)).map_err(|e| invalid(&e.to_string()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| invalid(&format!("cannot create {}: {e}", dir.display())))?;
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
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("no bucket given, e.g. s3://bucket/prefix"));
                }
                let prefix = prefix.trim_matches('/');
                let base = format!("{scheme}://{bucket}");
                let store = remote(scheme, &base, url, options)?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    store
                } else {
                    let path = Path::parse(prefix)
                        .map_err(|e| invalid(&format!("bad prefix `{prefix}`: {e}")))?;
                    Arc::new(PrefixStore::new(store, path))
                };
                // Never the options: they may hold credentials.
                let described = if prefix.is_empty() {
                    base
                } else {
                    format!("{base}/{prefix}")
                };
                Ok(Self::new(store, described, true))
            }
            "" => Err(invalid("missing scheme")),
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
