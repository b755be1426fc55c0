//! The library API end to end: load the quickstart experiment, start its mock server in this
//! process, benchmark every cell with `BenchmarkStep`, store the run in a local folder, and
//! print each cell's TTFT and throughput.
//!
//! `cargo run -p examples --example quickstart`

use std::sync::Arc;
use std::time::Duration;

use harness_core::config::Deployment;
use harness_core::steps::WaitReadyStep;
use harness_core::{
    Backend, CancellationToken, Endpoint, Experiment, LocalBackend, Pipeline, RunContext, RunMode,
    Runner,
};
use harness_llm::BenchmarkStep;
use harness_llm::mock::MockServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../experiments/quickstart.yaml"
    );
    // Fewer requests per cell than the file asks for, to keep the example short.
    let exp = Arc::new(Experiment::from_path(path)?.with_overrides(&["load.requests=16"])?);
    let Deployment::Mock(mock) = &exp.deployment else {
        return Err("the quickstart experiment deploys the mock server".into());
    };
    let server = MockServer::start(mock.clone(), "127.0.0.1:0".parse()?).await?;

    // Setup waits for the endpoint and shares it; every cell is benchmarked.
    let endpoint = Endpoint::new(server.url())?;
    let pipeline = Pipeline::builder()
        .setup(WaitReadyStep::new(
            endpoint,
            Some("/health".into()),
            Duration::from_secs(10),
        ))
        .per_cell(BenchmarkStep::new())
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
        .run(&run, &exp.plan()?, RunMode::New { input: None })
        .await?;
    server.shutdown().await;

    for cell in &report.cells {
        let m = |k: &str| cell.metrics.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "{:<32} {:?}  TTFT p50 {:6.2} ms  ITL p50 {:5.2} ms  {:8.1} output tok/s",
            cell.cell,
            cell.status,
            m("ttft.p50"),
            m("itl.p50"),
            m("output_token_throughput")
        );
    }
    println!(
        "{:?}; stored under {}/{}",
        report.status,
        dir.display(),
        run.layout().root()
    );
    Ok(())
}
