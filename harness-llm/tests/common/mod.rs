//! Helpers shared by the integration tests: run an experiment's cells with the benchmark
//! step against a server already running, and read back what they stored.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use harness_analytics::CellStats;
use harness_analytics::record::Record;
use harness_analytics::telemetry::TelemetrySummary;
use harness_core::steps::WaitReadyStep;
use harness_core::testkit::run_new;
use harness_core::*;
use harness_llm::mock::MockServer;

/// A finished run and the store it wrote to.
pub(crate) struct Ran {
    pub(crate) report: RunReport,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) run: RunContext,
}

impl Ran {
    /// The first cell.
    pub(crate) fn cell(&self) -> CellId {
        self.report.cells[0].cell.clone()
    }

    pub(crate) async fn telemetry(&self) -> TelemetrySummary {
        self.store
            .get_json(&self.run.layout().cell_telemetry(&self.cell()))
            .await
            .expect("telemetry.json")
    }

    pub(crate) async fn stats(&self) -> CellStats {
        self.store
            .get_json(&self.run.layout().cell_stats(&self.cell()))
            .await
            .expect("stats.json")
    }

    pub(crate) async fn notes(&self) -> Vec<String> {
        let s: CellSummary = self
            .store
            .get_json(&self.run.layout().cell_summary(&self.cell()))
            .await
            .expect("summary");
        s.notes
    }

    /// Writes the run's report and returns a reader of its files.
    pub(crate) async fn report(&self) -> ReportFiles {
        let layout = self.run.layout().clone();
        harness_analytics::report::write_report(self.store.as_ref(), layout.clone())
            .await
            .expect("report");
        ReportFiles {
            store: self.store.clone(),
            layout,
        }
    }

    pub(crate) async fn records(&self) -> Vec<Record> {
        self.records_at(&self.run.layout().cell_records(&self.cell()))
            .await
    }

    /// The records client `index` of several wrote for the first cell.
    pub(crate) async fn shard_records(&self, index: u32) -> Vec<Record> {
        self.records_at(&self.run.layout().cell_shard_records(&self.cell(), index))
            .await
    }

    async fn records_at(&self, key: &ArtifactKey) -> Vec<Record> {
        let bytes = self.store.get(key).await.expect("records");
        let batch = harness_analytics::io::from_parquet(bytes).expect("parquet");
        harness_analytics::table::records_from_batch(&batch).expect("records")
    }
}

/// The files of a written report.
pub(crate) struct ReportFiles {
    store: Arc<MemoryStore>,
    layout: RunLayout,
}

impl ReportFiles {
    /// A file of the report (`index.html`, `charts/x.svg`) as text.
    pub(crate) async fn text(&self, rel: &str) -> String {
        let key = self.layout.report(rel).expect("key");
        let bytes = self.store.get(&key).await.expect(rel);
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }
}

/// Runs `yaml`'s cells with the benchmark step against `server`, into a memory store.
pub(crate) async fn bench(server: &MockServer, yaml: &str) -> Ran {
    bench_as(server, yaml, None).await
}

/// [`bench`] as one of several clients of each cell (`shard`), as an agent pod runs:
/// its records are the cell's shard `shard.index`.
pub(crate) async fn bench_as(server: &MockServer, yaml: &str, shard: Option<Shard>) -> Ran {
    let exp = Arc::new(Experiment::from_yaml_str(yaml, "test.yaml").expect("experiment"));
    let endpoint = Endpoint::new(server.url()).expect("endpoint");
    let mut pipeline = Pipeline::builder().setup(WaitReadyStep::new(
        endpoint,
        Some("/health".into()),
        Duration::from_secs(10),
    ));
    if let Some(s) = shard {
        pipeline = pipeline.setup(step_fn("client", move |cx| async move {
            cx.resources().insert(s);
            Ok(StepOutput::new())
        }));
    }
    let pipeline = pipeline
        .per_cell(harness_llm::BenchmarkStep::new())
        .build()
        .expect("pipeline");
    let store = Arc::new(MemoryStore::new());
    let (report, run) = run_new(
        exp,
        pipeline,
        Arc::new(LocalBackend::new().expect("backend")),
        store.clone(),
    )
    .await;
    Ran { report, store, run }
}
