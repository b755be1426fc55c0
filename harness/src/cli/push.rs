//! `harness push`: copy a run to another store.

use harness_core::Error;

use crate::catalog;
use crate::stores::{StoreArgs, open_plain_store};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The run id (or experiment/run-id).
    run: String,
    /// The destination store URL.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Options of the destination store: `--to-opt endpoint=http://...`.
    #[arg(long = "to-opt", value_name = "KEY=VALUE")]
    to_opts: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

pub(super) async fn exec(args: Args) -> Result<(), Error> {
    let from = open_plain_store(&args.store, None)?;
    let to = StoreArgs {
        store: Some(args.to),
        store_opts: args.to_opts,
    };
    let to = open_plain_store(&to, None)?;
    catalog::push(from.as_ref(), to.as_ref(), &args.run).await
}
