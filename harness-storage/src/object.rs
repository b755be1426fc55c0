use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use harness_core::{ArtifactKey, ArtifactMeta, ArtifactStore};
#[cfg(feature = "s3")]
use object_store::aws::AmazonS3Builder;
#[cfg(feature = "azure")]
use object_store::azure::MicrosoftAzureBuilder;
#[cfg(feature = "gcs")]
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::{Error, StoreOptions};

/// The builders of the remote stores, seen through the few methods harness uses (they share
/// the names but no trait).
#[cfg(feature = "cloud")]
trait RemoteBuilder: Sized {
    /// Sets an option by its object_store name (`endpoint`, `allow_http`, `timeout`, ...).
    fn set(self, key: &str, value: &str) -> Result<Self, object_store::Error>;
    /// An option's value, as set by the environment or an earlier [`RemoteBuilder::set`].
    #[cfg(test)]
    fn value(&self, key: &str) -> Option<String>;
    fn finish(self) -> Result<Arc<dyn ObjectStore>, object_store::Error>;
}

#[cfg(feature = "cloud")]
macro_rules! remote_builder {
    ($builder:ty) => {
        impl RemoteBuilder for $builder {
            fn set(self, key: &str, value: &str) -> Result<Self, object_store::Error> {
                Ok(self.with_config(key.parse()?, value))
            }
            #[cfg(test)]
            fn value(&self, key: &str) -> Option<String> {
                self.get_config_value(&key.parse().ok()?)
            }
            fn finish(self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
                Ok(Arc::new(self.build()?))
            }
        }
    };
}
#[cfg(feature = "s3")]
remote_builder!(AmazonS3Builder);
#[cfg(feature = "gcs")]
remote_builder!(GoogleCloudStorageBuilder);
#[cfg(feature = "azure")]
remote_builder!(MicrosoftAzureBuilder);

/// The client options harness sets where neither the environment nor the options do: a
/// store that does not answer fails within seconds, not object_store's minutes.
#[cfg(feature = "cloud")]
const CONNECT_TIMEOUT: &str = "connect_timeout";
#[cfg(feature = "cloud")]
const REQUEST_TIMEOUT: &str = "timeout";

/// Applies `options` over what `builder` already holds (the environment's settings), then
/// harness's timeouts where neither set one (`from_env` says whether the environment did).
/// Options are set one by one, never as a whole `ClientOptions`, which would replace the
/// environment's `*_ALLOW_HTTP`, proxy and certificate settings.
#[cfg(feature = "cloud")]
fn configure<B: RemoteBuilder>(
    mut builder: B,
    url: &str,
    options: &StoreOptions,
    from_env: impl Fn(&str) -> bool,
) -> Result<B, Error> {
    let bad_key = |key: &str, e: object_store::Error| Error::InvalidOption {
        url: url.into(),
        key: key.into(),
        reason: format!("not an option of this store ({e})"),
    };
    let request = format!(
        "{}ms",
        options
            .retry_timeout
            .max(std::time::Duration::from_secs(5))
            .as_millis()
    );
    for (key, value) in [(CONNECT_TIMEOUT, "5s"), (REQUEST_TIMEOUT, request.as_str())] {
        if !from_env(key) && !options.options.contains_key(key) {
            builder = builder.set(key, value).map_err(|e| bad_key(key, e))?;
        }
    }
    for (k, v) in &options.options {
        builder = builder.set(k, v).map_err(|e| bad_key(k, e))?;
    }
    Ok(builder)
}

/// Whether the environment sets the client option `key` for a store whose variables start
/// with `prefix` (`AWS_TIMEOUT` for `timeout`).
#[cfg(feature = "cloud")]
fn env_sets(prefix: &str, key: &str) -> bool {
    std::env::var_os(format!("{prefix}{}", key.to_ascii_uppercase())).is_some()
}

/// Builds an S3, GCS or Azure store for `base` (`scheme://bucket`): the environment first,
/// then `options`, with short retries. A store whose Cargo feature (`s3`, `gcs`, `azure`) was
/// left out is refused, naming the feature.
fn remote(
    scheme: &str,
    base: &str,
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn ObjectStore>, Error> {
    #[cfg(feature = "cloud")]
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: options.retries,
        retry_timeout: options.retry_timeout,
    };
    #[cfg(feature = "cloud")]
    let open_err = |source| Error::Open {
        url: url.into(),
        source,
    };
    match scheme {
        #[cfg(feature = "s3")]
        "s3" | "s3a" => {
            let b = AmazonS3Builder::from_env().with_url(base).with_retry(retry);
            configure(b, url, options, |k| env_sets("AWS_", k))?
                .finish()
                .map_err(open_err)
        }
        #[cfg(feature = "gcs")]
        "gs" => {
            let b = GoogleCloudStorageBuilder::from_env()
                .with_url(base)
                .with_retry(retry);
            configure(b, url, options, |k| env_sets("GOOGLE_", k))?
                .finish()
                .map_err(open_err)
        }
        #[cfg(feature = "azure")]
        "az" | "azure" | "abfs" | "abfss" => {
            let b = MicrosoftAzureBuilder::from_env()
                .with_url(base)
                .with_retry(retry);
            configure(b, url, options, |k| env_sets("AZURE_", k))?
                .finish()
                .map_err(open_err)
        }
        _ => {
            let _ = (base, options);
            let feature = match scheme {
                "s3" | "s3a" => "s3",
                "gs" => "gcs",
                _ => "azure",
            };
            Err(Error::NotBuiltIn {
                url: url.into(),
                feature,
            })
        }
    }
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
        crate::install_crypto_provider();
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

#[cfg(all(test, feature = "s3", feature = "gcs", feature = "azure"))]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> StoreOptions {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        StoreOptions::from_map("test://", &map).expect("options")
    }

    /// What `from_env` leaves in a builder survives harness's options and timeouts, for each
    /// of the three remote stores.
    fn keeps_environment<B: RemoteBuilder + Default>(from_env: B) {
        let b = from_env.set("allow_http", "true").expect("allow_http");
        let b = b.set("proxy_url", "http://127.0.0.1:3128").expect("proxy");
        let b = configure(b, "test://", &opts(&[("retry_timeout", "7s")]), |_| false)
            .expect("configure");
        assert_eq!(b.value("allow_http").as_deref(), Some("true"));
        assert_eq!(
            b.value("proxy_url").as_deref(),
            Some("http://127.0.0.1:3128")
        );
        assert_eq!(b.value("timeout").as_deref(), Some("7000ms"));
        assert_eq!(b.value("connect_timeout").as_deref(), Some("5s"));
        // A timeout from the environment or the options is the user's, not ours: the
        // builder keeps what it had.
        let b =
            configure(B::default(), "test://", &opts(&[]), |k| k == "timeout").expect("configure");
        assert_eq!(b.value("timeout"), B::default().value("timeout"));
        assert_ne!(b.value("timeout").as_deref(), Some("10000ms"));
        let b = configure(
            B::default(),
            "test://",
            &opts(&[("connect_timeout", "1s")]),
            |_| false,
        )
        .expect("configure");
        assert_eq!(b.value("connect_timeout").as_deref(), Some("1s"));
    }

    #[test]
    fn environment_settings_survive_for_s3_gcs_and_azure() {
        keeps_environment(AmazonS3Builder::default());
        keeps_environment(GoogleCloudStorageBuilder::default());
        keeps_environment(MicrosoftAzureBuilder::default());
    }

    #[test]
    fn an_unknown_option_names_its_key() {
        let e = configure(
            AmazonS3Builder::default(),
            "s3://b",
            &opts(&[("no_such_option", "1")]),
            |_| false,
        )
        .expect_err("refused");
        assert!(e.to_string().contains("no_such_option"), "{e}");
    }
}
