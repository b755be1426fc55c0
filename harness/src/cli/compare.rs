//! `harness compare`: runs side by side, with gates.

use std::path::PathBuf;
use std::process::ExitCode;

use harness_core::Error;

use crate::catalog;
use crate::stores::{StoreArgs, open_plain_store};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Two or more run ids (or experiment/run-id); `RUN@TREATMENT` takes one treatment's
    /// cells, so treatments of one run compare like runs.
    #[arg(num_args = 2.., required = true)]
    runs: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// A metric to compare (repeatable), e.g. `ttft.p99`; default TTFT, ITL and latency
    /// p50/p99 and throughputs.
    #[arg(long = "metric", value_name = "METRIC")]
    metrics: Vec<String>,
    /// Exit 1 when a gate trips for any matching cell, e.g. `--fail-if "ttft.p99 > +5%"`;
    /// a relative or delta gate trips only when the change is significant.
    #[arg(long = "fail-if", value_name = "GATE")]
    gates: Vec<String>,
    /// Where to write the overlay charts and `compare.md` (default
    /// `./harness-compare/<baseline>-vs-<candidate>`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: Args) -> Result<ExitCode, Error> {
    let store = open_plain_store(&args.store, None)?;
    let compare = catalog::CompareArgs {
        runs: args.runs,
        metrics: args.metrics,
        gates: args.gates,
        out: args.out,
        json: args.json,
    };
    catalog::compare(store.as_ref(), &compare).await
}
