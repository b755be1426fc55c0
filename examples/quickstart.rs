//! The library API end to end: load the quickstart experiment, build its pipeline (start the
//! local server, check each cell, stop the server), run it into a local folder, print the
//! cells.
//!
//! `cargo run -p examples --example quickstart`

use std::sync::Arc;

use harness_core::steps::deployment_steps;
use harness_core::{
    Backend, CancellationToken, Experiment, LocalBackend, Pipeline, RunContext, RunMode, Runner,
    Stage, StepOutput, TracingReporter, step_fn,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../experiments/quickstart.yaml"
    );
    let exp = Arc::new(Experiment::from_path(path)?);
    let plan = exp.plan()?;

    // Setup starts the deployment and waits until it answers; teardown always stops it.
    let deployment = deployment_steps(&exp)?;
    let mut builder = Pipeline::builder().add(Stage::Setup, deployment.setup, None);
    if let Some(teardown) = deployment.teardown {
        builder = builder.add(Stage::Teardown, teardown, None);
    }
    // One per-cell step: fetch `/` from the endpoint the deployment shared.
    let pipeline = builder
        .per_cell(step_fn("fetch", |cx| async move {
            let endpoint = cx
                .resources()
                .get::<harness_core::Endpoint>()
                .ok_or_else(|| harness_core::Error::failed("fetch", "no endpoint"))?;
            let status = harness_core::backend::http_get_status(&endpoint.url("/")).await?;
            Ok(StepOutput::new().metric("http_status", f64::from(status)))
        }))
        .build()?;

    let dir = std::env::temp_dir().join("harness-example-quickstart");
    let store = harness_storage::open(&format!("file://{}", dir.display()))?;
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new()?);
    let run_id = format!("example-{}", std::process::id());
    let run = RunContext::new(
        run_id,
        exp.clone(),
        backend,
        store,
        CancellationToken::new(),
    )?;
    let report = Runner::new(pipeline)
        .reporter(Arc::new(TracingReporter))
        .run(&run, &plan, RunMode::New { input: None })
        .await?;

    for cell in &report.cells {
        println!("{:<32} {:?} {:?}", cell.cell, cell.status, cell.metrics);
    }
    println!(
        "{:?}; stored under {}/{}",
        report.status,
        dir.display(),
        run.layout().root()
    );
    Ok(())
}
