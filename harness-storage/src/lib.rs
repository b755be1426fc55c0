//! Run storage for harness: an [`ArtifactStore`] over
//! [`object_store`](https://docs.rs/object_store), opened by URL, a local spool that keeps a
//! run going through an outage of its remote store, and the run catalog.
//!
//! | URL | store |
//! |---|---|
//! | `file://./harness-runs`, `./runs`, `/abs/path` | a local folder (relative to the working directory) |
//! | `memory://` | memory of this process |
//! | `s3://bucket/prefix` | Amazon S3, MinIO and other S3-compatible servers (`endpoint` option) |
//! | `gs://bucket/prefix` | Google Cloud Storage |
//! | `az://container/prefix` | Azure Blob Storage |
//!
//! Options come from the environment first (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as object_store
//! reads them) and then from [`StoreOptions`] (the experiment's `storage.options`), e.g.
//! `endpoint`, `region`, `allow_http`, `access_key_id`. Two options are harness's own:
//! `retries` (default 3) and `retry_timeout` (default `10s`): a store that does not answer
//! fails within seconds, not the minutes object_store waits by default. Credentials are
//! never logged and never part of [`ArtifactStore::describe`].
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

pub mod catalog;
mod object;
mod spool;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use harness_core::ArtifactStore;

pub use object::ObjectArtifactStore;
pub use spool::{FlushReport, SpoolingStore};

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
    /// The URL's scheme is not supported.
    #[error(
        "store URL `{url}`: the scheme `{scheme}` is not supported; use file://, memory://, s3://, gs:// or az://"
    )]
    Unsupported {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The store of this URL was left out of the build (a Cargo feature of this crate:
    /// `s3`, `gcs` or `azure`, all on by default).
    #[error(
        "store URL `{url}`: this program was built without harness-storage's `{feature}` feature"
    )]
    NotBuiltIn {
        /// The URL.
        url: String,
        /// The feature that brings its store.
        feature: &'static str,
    },
    /// An option is unknown or has a bad value.
    #[error("store `{url}`: option `{key}`: {reason}")]
    InvalidOption {
        /// The URL.
        url: String,
        /// The option's name (never its value: it may be a secret).
        key: String,
        /// Why.
        reason: String,
    },
    /// The store was opened but cannot be used: the probe of [`check`] failed (a bad
    /// option, missing credentials or permission, a missing bucket, nothing answering).
    #[error("`{url}` cannot be used: {cause}")]
    Unusable {
        /// The store, as described (never its options).
        url: String,
        /// What failed and why, down to the innermost cause.
        cause: String,
        /// The error.
        #[source]
        source: harness_core::Error,
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

/// How to open a store beyond its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// object_store options (`endpoint`, `region`, `allow_http`, `access_key_id`, ...); they
    /// override the environment.
    pub options: BTreeMap<String, String>,
    /// Retries of a failed request to a remote store.
    pub retries: usize,
    /// The longest a request, retries included, may take.
    pub retry_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            options: BTreeMap::new(),
            retries: 3,
            retry_timeout: Duration::from_secs(10),
        }
    }
}

impl StoreOptions {
    /// Options from a map such as the experiment's `storage.options`. The keys `retries`
    /// and `retry_timeout` (e.g. `5s`) are read here; the others go to object_store.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] when `retries` or `retry_timeout` cannot be read.
    pub fn from_map(url: &str, map: &BTreeMap<String, String>) -> Result<Self, Error> {
        let mut out = StoreOptions::default();
        let bad = |key: &str, reason: String| Error::InvalidOption {
            url: url.into(),
            key: key.into(),
            reason,
        };
        for (k, v) in map {
            match k.as_str() {
                "retries" => {
                    out.retries = v
                        .parse()
                        .map_err(|_| bad(k, format!("expected a count, found `{v}`")))?;
                }
                "retry_timeout" => {
                    out.retry_timeout = humantime::parse_duration(v)
                        .map_err(|e| bad(k, format!("expected a duration like `10s`: {e}")))?;
                }
                _ => {
                    out.options.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Opens a store by URL with default options; see the crate docs for the URLs.
///
/// # Errors
/// [`Error::InvalidUrl`], [`Error::Unsupported`], [`Error::InvalidOption`] or [`Error::Open`].
pub fn open(url: &str) -> Result<Arc<dyn ArtifactStore>, Error> {
    open_with(url, &StoreOptions::default())
}

/// Opens a store by URL with `options`.
///
/// # Errors
/// As [`open`].
pub fn open_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn ArtifactStore>, Error> {
    Ok(Arc::new(ObjectArtifactStore::open_with(url, options)?))
}

/// Checks that a run can use `store` before it starts: writes a small probe object under
/// `under` (the run's folder), reads it back, compares and deletes it. A store that fails
/// here is misconfigured or unreachable (a bad option, credentials, a missing bucket, no
/// permission); unlike an outage in the middle of a run, that is not something to spool
/// through.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = harness_storage::open("memory://")?;
/// let run = harness_core::ArtifactKey::new("runs/demo/r1")?;
/// harness_storage::check(store.as_ref(), &run).await?;
/// assert!(store.list(&run).await?.is_empty(), "the probe is gone");
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Unusable`], naming the store and the innermost cause.
pub async fn check(
    store: &dyn ArtifactStore,
    under: &harness_core::ArtifactKey,
) -> Result<(), Error> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let body = format!("harness store probe {nonce}");
    let unusable = |what: &str, source: harness_core::Error| {
        let mut cause = format!("{what}: {source}");
        let mut next = std::error::Error::source(&source);
        while let Some(e) = next {
            let text = e.to_string();
            if !cause.contains(&text) {
                cause.push_str(": ");
                cause.push_str(&text);
            }
            next = e.source();
        }
        Error::Unusable {
            url: store.describe(),
            cause,
            source,
        }
    };
    let key = harness_core::ArtifactKey::new(format!("{under}/.harness-probe-{nonce}"))
        .map_err(|e| unusable("naming the probe object", e))?;
    let what = format!("writing a probe object `{key}`");
    store.put(&key, body.clone().into()).await.map_err(|e| {
        let hint = if matches!(e, harness_core::Error::NotFound { .. }) {
            format!("{what} (does the bucket or container exist?)")
        } else {
            what.clone()
        };
        unusable(&hint, e)
    })?;
    let back = store
        .get(&key)
        .await
        .map_err(|e| unusable("reading the probe object back", e))?;
    if back != body.as_bytes() {
        return Err(unusable(
            "reading the probe object back",
            harness_core::Error::failed(
                format!("`{key}`"),
                "the store returned other bytes than were written",
            ),
        ));
    }
    store
        .delete(&key)
        .await
        .map_err(|e| unusable("deleting the probe object", e))?;
    Ok(())
}

/// Makes ring the process's default TLS crypto provider unless one is installed already.
/// The HTTP clients of the cloud stores (reqwest, built without a provider of its own so
/// that the workspace compiles one, not two) need it before they are built; opening a store
/// calls it, and so may a program that builds reqwest clients itself.
pub fn install_crypto_provider() {
    #[cfg(feature = "cloud")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // Err means another provider is the default already: fine, it is used.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
    }
}

/// Whether `url` names a remote store (s3, gs, az), whose outages the spool covers.
pub fn is_remote(url: &str) -> bool {
    matches!(
        url.split_once("://").map(|(s, _)| s),
        Some("s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss")
    )
}
