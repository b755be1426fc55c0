//! A functional test suite as a pipeline: the OpenAI API checks of `FunctionalStep`
//! (models listed, chat and completions streamed or not, `max_tokens`, `stop`, 4xx for bad
//! requests, concurrent requests) against a server, with the pass/fail table stored like
//! any cell's results. Exits 1 when a check fails, as a test suite would.
//!
//! `cargo run -p examples --example functional_pipeline`

use std::sync::Arc;

use harness::{App, RunOptions};
use harness_core::{ArtifactStoreExt, Experiment, Step};
use harness_llm::checks::FunctionalStep;

const EXPERIMENT: &str = "
name: functional-example
model: {name: harness-mock}
concurrency: [1]
benchmark: {isl_osl: [[16, 8]]}
deployment: {mock: {ttft_ms: 2, itl_ms: 1}}
";

#[tokio::main]
async fn main() -> Result<(), harness_core::BoxError> {
    let exp = Experiment::from_yaml_str(EXPERIMENT, "functional_pipeline")?;
    let step: Arc<dyn Step> = Arc::new(FunctionalStep::new().parallel(32));
    let dir = std::env::temp_dir().join("harness-example-functional");
    // Run it as `harness run` would (the mock deployment served in this process), with the
    // step on every cell instead of the default benchmark.
    let options = RunOptions::new()
        .store(format!("file://{}", dir.display()))
        .cell_step(step);
    let outcome = App::default().run(exp, options).await?;
    let (report, run) = (outcome.report, outcome.run);

    let cell = &report.cells[0];
    // The step stored its table as an artifact of the cell: read it back.
    let key = run
        .layout()
        .cell_artifact(&cell.cell, "functional", "functional.json")?;
    let checks: serde_json::Value = run.store().get_json(&key).await?;
    for c in checks.as_array().into_iter().flatten() {
        println!(
            "{:<5} {:<36} {}",
            if c["passed"] == true { "ok" } else { "FAIL" },
            c["name"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        );
    }
    println!("{:?}; stored under {}", cell.status, dir.display());
    if cell.error.is_some() {
        std::process::exit(1);
    }
    Ok(())
}
