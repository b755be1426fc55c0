//! A sweep run by aiperf instead of harness' own load generator: `AiperfStep` maps each
//! cell (concurrency, ISL/OSL) to `aiperf profile` arguments, runs it through the local
//! backend and imports its per-request export, so the cells get harness' records,
//! statistics and reports, with "aiperf <version>" recorded as the tool.
//!
//! `AIPERF=/path/to/aiperf cargo run -p examples --example aiperf_sweep`
//! (`pip install aiperf`; `scripts/test-deps.sh` installs it into
//! `~/.cache/harness-test-deps/aiperf`). aiperf needs a Hugging Face tokenizer: this uses the
//! small one the repository ships in `experiments/data/tokenizer/`.

use std::sync::Arc;

use harness::{App, RunOptions};
use harness_core::{Experiment, Step};
use harness_llm::tools::{AiperfParams, AiperfStep};

#[tokio::main]
async fn main() -> Result<(), harness_core::BoxError> {
    let program = std::env::var("AIPERF").unwrap_or_else(|_| "aiperf".into());
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments/data");
    let yaml = format!(
        "name: aiperf-example\n\
         model: {{name: harness-mock}}\n\
         concurrency: [1, 8]\n\
         benchmark: {{isl_osl: [[128, 16]]}}\n\
         deployment: {{mock: {{ttft_ms: 20, itl_ms: 5}}}}\n\
         tokenizer: {{path: {data}/tokenizer/tokenizer.json}}\n\
         load: {{requests: 24, extra_body: {{ignore_eos: true}}}}\n"
    );
    let exp = Experiment::from_yaml_str(&yaml, "aiperf_sweep")?;
    let step = AiperfStep::new(AiperfParams {
        program: Some(program),
        args: vec!["--no-server-metrics".into()],
        ..AiperfParams::default()
    });
    let step: Arc<dyn Step> = Arc::new(step);
    let dir = std::env::temp_dir().join("harness-example-aiperf");
    // Run it as `harness run` would (the mock deployment served in this process), with the
    // step on every cell instead of the default benchmark.
    let options = RunOptions::new()
        .store(format!("file://{}", dir.display()))
        .cell_step(step);
    let outcome = App::default().run(exp, options).await?;
    let (report, _run) = (outcome.report, outcome.run);

    for cell in &report.cells {
        let m = |k: &str| cell.metrics.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "{:<32} {:?}  TTFT p50 {:6.2} ms (aiperf's own: {:6.2})  ITL p50 {:5.2} ms",
            cell.cell,
            cell.status,
            m("ttft.p50"),
            m("reported.ttft.p50"),
            m("itl.p50"),
        );
        if let Some(e) = &cell.error {
            return Err(format!("{}: {e:?}", cell.cell).into());
        }
    }
    println!("stored under {}", dir.display());
    Ok(())
}
