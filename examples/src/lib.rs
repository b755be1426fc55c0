//! Runnable examples of the harness libraries; see README.md in this folder.
//!
//! [`run_against_mock`] is the wiring of `quickstart.rs` (the mock server in this process, a
//! local backend, a file store), folded into one function so that the other examples show
//! only the steps they are about.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness_core::config::Deployment;
use harness_core::steps::WaitReadyStep;
use harness_core::{
    Backend, BoxError, CancellationToken, Endpoint, Experiment, LocalBackend, Pipeline, RunContext,
    RunMode, RunReport, Runner, Stage, Step,
};
use harness_llm::mock::MockServer;

/// Runs `cell_steps` on every cell of `exp` against the mock server its `deployment.mock`
/// describes (started here, stopped at the end), storing the run under `dir`. Returns the
/// runner's report and the run, to read what the steps stored.
///
/// # Errors
/// When the experiment has no mock deployment, the server cannot start, or the run cannot
/// be stored.
pub async fn run_against_mock(
    exp: Arc<Experiment>,
    cell_steps: Vec<Arc<dyn Step>>,
    dir: &Path,
) -> Result<(RunReport, RunContext), BoxError> {
    let Deployment::Mock(mock) = &exp.deployment else {
        return Err("the experiment must deploy the mock server".into());
    };
    let server = MockServer::start(mock.clone(), "127.0.0.1:0".parse()?).await?;
    let mut builder = Pipeline::builder().setup(WaitReadyStep::new(
        Endpoint::new(server.url())?,
        Some("/health".into()),
        Duration::from_secs(10),
    ));
    for step in cell_steps {
        builder = builder.add(Stage::Cell, step, None);
    }
    let pipeline = builder.build()?;
    let store = harness_storage::open(&format!("file://{}", dir.display()))?;
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new()?);
    let run = RunContext::new(
        format!("example-{}", std::process::id()),
        exp.clone(),
        backend,
        store,
        CancellationToken::new(),
    )?;
    let report = Runner::new(pipeline)
        .run(&run, &exp.plan()?, RunMode::New { input: None })
        .await;
    server.shutdown().await;
    Ok((report?, run))
}
