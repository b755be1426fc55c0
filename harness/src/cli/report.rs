//! `harness report`: rebuild a run's report.

use harness_core::Error;

use crate::catalog;
use crate::stores::{StoreArgs, open_plain_store};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The run id (or experiment/run-id).
    run: String,
    #[command(flatten)]
    store: StoreArgs,
}

pub(super) async fn exec(args: Args) -> Result<(), Error> {
    let store = open_plain_store(&args.store, None)?;
    catalog::report(store.as_ref(), &args.run).await
}
