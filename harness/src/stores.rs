//! The stores of runs: URL and options from flags over the experiment's `storage`, a spool
//! for remote stores, and the probe before a run starts.

use std::path::Path;
use std::sync::Arc;

use harness_core::{ArtifactStore, Error, RunContext};

/// Which store to use.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct StoreArgs {
    /// The store URL (overrides the experiment's `storage.url`); default
    /// `file://./harness-runs`. Also s3://bucket/prefix, gs://..., az://..., memory://.
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,
    /// A store option (overrides `storage.options`): `--store-opt endpoint=http://...`.
    /// Credentials are better passed through the environment (AWS_ACCESS_KEY_ID, ...).
    #[arg(long = "store-opt", value_name = "KEY=VALUE")]
    pub(crate) store_opts: Vec<String>,
}

/// The store options of `--store-opt` flags over those of the experiment.
fn store_options(
    args: &StoreArgs,
    url: &str,
    base: Option<&harness_core::config::Storage>,
) -> Result<harness_storage::StoreOptions, Error> {
    let mut map = base.map(|b| b.options.clone()).unwrap_or_default();
    for kv in &args.store_opts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--store-opt {kv}"), "expected KEY=VALUE"))?;
        map.insert(k.trim().to_owned(), v.to_owned());
    }
    harness_storage::StoreOptions::from_map(url, &map)
        .map_err(|e| Error::invalid("store", e.to_string()))
}

/// The store of `--store` (or the experiment's, or the default), without a spool: for the
/// catalog commands.
pub(crate) fn open_plain_store(
    args: &StoreArgs,
    storage: Option<&harness_core::config::Storage>,
) -> Result<Arc<dyn ArtifactStore>, Error> {
    let url = store_url(args, storage);
    let options = store_options(args, &url, storage)?;
    harness_storage::open_with(&url, &options).map_err(|e| Error::invalid("store", e.to_string()))
}

pub(crate) fn store_url(
    args: &StoreArgs,
    storage: Option<&harness_core::config::Storage>,
) -> String {
    args.store
        .clone()
        .or_else(|| storage.and_then(|s| s.url.clone()))
        .unwrap_or_else(|| harness_storage::DEFAULT_STORE_URL.to_owned())
}

/// The spool folder of a remote store: one per store, so a later flush sends objects where
/// they belong.
fn spool_url(storage: &harness_core::config::Storage, store: &dyn ArtifactStore) -> String {
    let slug: String = store
        .describe()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let base = storage.spool.as_deref().unwrap_or("./harness-spool");
    format!("{}/{slug}", base.trim_end_matches('/'))
}

/// The store `harness ls` lists: a remote one seen together with its spool when the spool
/// exists (runs whose objects wait there are listed, and say so).
pub(crate) async fn listed_store(
    args: &StoreArgs,
    spool: Option<String>,
) -> Result<(Arc<dyn ArtifactStore>, Option<Arc<dyn ArtifactStore>>), Error> {
    let store = open_plain_store(args, None)?;
    let mut storage = harness_core::config::Storage::default();
    storage.spool = spool;
    let folder = spool_url(&storage, store.as_ref());
    if !harness_storage::is_remote(&store_url(args, None)) || !Path::new(&folder).is_dir() {
        return Ok((store, None));
    }
    let spool =
        harness_storage::open(&folder).map_err(|e| Error::invalid("spool", e.to_string()))?;
    let spooling = harness_storage::SpoolingStore::new(store, spool.clone()).await?;
    Ok((Arc::new(spooling), Some(spool)))
}

/// Checks the store of a run before it starts (a probe object under the run's folder). A
/// store that fails now is misconfigured, not down: the run stops before anything is
/// deployed, as invalid input. Only a store that answered here counts as an outage later.
pub(crate) async fn check_store(
    store: &Arc<dyn ArtifactStore>,
    spool: Option<&harness_storage::SpoolingStore>,
    run: &RunContext,
) -> Result<(), Error> {
    let probed = spool.map_or(store, |s| s.remote());
    harness_storage::check(probed.as_ref(), run.layout().root())
        .await
        .map_err(|e| Error::invalid("store", e.to_string()))
}

/// The store a run writes to; a remote one gets a local spool for outages.
pub(crate) async fn open_run_store(
    args: &StoreArgs,
    storage: &harness_core::config::Storage,
) -> Result<
    (
        Arc<dyn ArtifactStore>,
        Option<Arc<harness_storage::SpoolingStore>>,
    ),
    Error,
> {
    let url = store_url(args, Some(storage));
    let store = open_plain_store(args, Some(storage))?;
    if !harness_storage::is_remote(&url) {
        return Ok((store, None));
    }
    let spool = harness_storage::open(&spool_url(storage, store.as_ref()))
        .map_err(|e| Error::invalid("storage.spool", e.to_string()))?;
    let spooling = Arc::new(harness_storage::SpoolingStore::new(store, spool).await?);
    if spooling.spooled() > 0 {
        eprintln!(
            "{} objects of earlier runs wait in the spool {}; they are uploaded at the end of this run",
            spooling.spooled(),
            spooling.spool().describe()
        );
    }
    Ok((spooling.clone(), Some(spooling)))
}
