//! A custom step: implement `Step`, keep per-call state in the context, store an artifact,
//! report metrics, and honour cancellation. Runs a sweep against the in-memory store.
//!
//! `cargo run -p examples --example custom_step`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use harness_core::{
    ArtifactStore, Backend, CancellationToken, Error, Experiment, LocalBackend, MemoryStore,
    Pipeline, Result, RunContext, RunMode, Runner, Step, StepContext, StepOutput,
};

/// Pretends to measure something that grows with concurrency; a real step would call the
/// endpoint here.
#[derive(Debug)]
struct Sleepy {
    per_request: Duration,
}

#[async_trait]
impl Step for Sleepy {
    fn name(&self) -> &str {
        "sleepy"
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let conc = cx
            .cell()
            .and_then(|c| c.param("concurrency"))
            .and_then(|v| v.as_i64())
            .ok_or_else(|| Error::failed("sleepy", "the cell has no concurrency"))?;
        let wait = self.per_request * u32::try_from(conc).unwrap_or(u32::MAX);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cx.cancel().cancelled() => return Err(Error::Cancelled { what: "sleepy".into() }),
        }
        let note = format!("waited {wait:?} for concurrency {conc}\n");
        let key = cx.artifacts().put("note.txt", note.into()).await?;
        Ok(StepOutput::new()
            .metric("waited_ms", wait.as_secs_f64() * 1e3)
            .artifact(key))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let exp = Arc::new(Experiment::from_yaml_str(
        "name: custom\nmodel: {name: m}\nconcurrency: [1, 2, 4]\nbenchmark: {isl_osl: [[64, 8]]}\n",
        "inline.yaml",
    )?);
    let pipeline = Pipeline::builder()
        .per_cell(Sleepy {
            per_request: Duration::from_millis(5),
        })
        .build()?;
    let store = Arc::new(MemoryStore::new());
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new()?);
    let run = RunContext::new(
        "r1",
        exp.clone(),
        backend,
        store.clone(),
        CancellationToken::new(),
    )?;
    let report = Runner::new(pipeline)
        .run(&run, &exp.plan()?, RunMode::New { input: None })
        .await?;
    for cell in &report.cells {
        println!("{} -> {:?}", cell.cell, cell.metrics);
    }
    let stored = store.list(run.layout().root()).await?;
    println!("{} objects stored for the run", stored.len());
    Ok(())
}
