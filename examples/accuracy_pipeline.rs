//! An accuracy check as a pipeline: `AccuracyStep` scores a JSON-lines dataset (prompt,
//! expected answer, scorer: exact, regex, numeric with tolerance, choice letter) against a
//! server and reports accuracy with its 95% Wilson interval. Here the server is the mock,
//! answering from a lookup file that is right on 16 of the 20 items, so the result is
//! known: 0.80 (0.58 to 0.92).
//!
//! `cargo run -p examples --example accuracy_pipeline`

use std::sync::Arc;

use harness::{App, RunOptions};
use harness_core::{Experiment, Step};
use harness_llm::checks::AccuracyStep;

#[tokio::main]
async fn main() -> Result<(), harness_core::BoxError> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments/data");
    let yaml = format!(
        "name: accuracy-example\n\
         model: {{name: harness-mock}}\n\
         concurrency: [1]\n\
         benchmark: {{isl_osl: [[16, 8]]}}\n\
         deployment: {{mock: {{ttft_ms: 1, itl_ms: 1, answers: {data}/accuracy-mock-answers.jsonl}}}}\n"
    );
    let exp = Experiment::from_yaml_str(&yaml, "accuracy_pipeline")?;
    let step = AccuracyStep::new(format!("{data}/accuracy.jsonl"))
        .max_tokens(32)
        .concurrency(8);
    let step: Arc<dyn Step> = Arc::new(step);
    let dir = std::env::temp_dir().join("harness-example-accuracy");
    // Run it as `harness run` would (the mock deployment served in this process), with the
    // step on every cell instead of the default benchmark.
    let options = RunOptions::new()
        .store(format!("file://{}", dir.display()))
        .cell_step(step);
    let outcome = App::default().run(exp, options).await?;
    let (report, _run) = (outcome.report, outcome.run);

    let cell = &report.cells[0];
    let m = |k: &str| cell.metrics.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "accuracy {:.2} on {} items (95% CI {:.2} to {:.2}); {:?}; stored under {}",
        m("accuracy"),
        m("accuracy.items"),
        m("accuracy.ci95_low"),
        m("accuracy.ci95_high"),
        cell.status,
        dir.display()
    );
    if (m("accuracy") - 0.8).abs() > 1e-9 {
        return Err(format!("expected 0.80, measured {}", m("accuracy")).into());
    }
    Ok(())
}
