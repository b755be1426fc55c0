//! `harness ls`: the runs in a store.

use harness_core::Error;

use crate::catalog;
use crate::stores::{StoreArgs, listed_store};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// The spool folder of a remote store, to mark runs whose results wait there (default
    /// `./harness-spool`, as `storage.spool`).
    #[arg(long, value_name = "DIR")]
    spool: Option<String>,
    /// Only runs of this experiment.
    #[arg(long)]
    experiment: Option<String>,
    /// Print JSON (one object per run) for scripts.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: Args) -> Result<(), Error> {
    let (store, spool) = listed_store(&args.store, args.spool).await?;
    catalog::ls(
        store.as_ref(),
        spool.as_deref(),
        args.experiment.as_deref(),
        args.json,
    )
    .await
}
