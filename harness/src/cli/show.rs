//! `harness show`: one stored run.

use harness_core::Error;

use crate::catalog;
use crate::stores::{StoreArgs, open_plain_store};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The run id (or experiment/run-id).
    run: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Print the manifest and cell summaries as JSON.
    #[arg(long)]
    json: bool,
    /// Print every column of the summary table, not only those that fit the terminal.
    #[arg(long)]
    wide: bool,
}

pub(super) async fn exec(args: Args) -> Result<(), Error> {
    let store = open_plain_store(&args.store, None)?;
    catalog::show(store.as_ref(), &args.run, args.json, args.wide).await
}
