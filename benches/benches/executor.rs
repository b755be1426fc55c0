//! Executor overhead: a run of N cells with no-op steps against the in-memory store, so the
//! figure is the runner's own cost per cell (journal writes, summaries, layers, events).
//! Also parsing the proposal's experiment and expanding plans.
//!
//! `cargo bench -p benches --bench executor`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use harness_core::*;

fn experiment(cells: usize) -> Arc<Experiment> {
    let conc: Vec<String> = (1..=cells).map(|c| c.to_string()).collect();
    let yaml = format!(
        "name: bench\nmodel: {{name: m}}\nconcurrency: [{}]\nbenchmark: {{isl_osl: [[128, 16]]}}\n",
        conc.join(", ")
    );
    Arc::new(Experiment::from_yaml_str(&yaml, "bench.yaml").expect("experiment"))
}

fn noop(name: &'static str) -> impl Step {
    step_fn(name, |_| async { Ok(StepOutput::new().metric("x", 1.0)) })
}

fn executor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new().expect("backend"));
    let mut group = c.benchmark_group("executor");
    for cells in [10usize, 100, 1000] {
        let exp = experiment(cells);
        let plan = exp.plan().expect("plan");
        let pipeline = Pipeline::builder()
            .setup(noop("setup"))
            .per_cell(noop("a"))
            .per_cell(noop("b"))
            .per_cell(noop("c"))
            .teardown(noop("teardown"))
            .build()
            .expect("pipeline");
        let runner = Runner::new(pipeline);
        let counter = AtomicU64::new(0);
        group.throughput(Throughput::Elements(cells as u64));
        group.bench_with_input(
            BenchmarkId::new("noop_3_steps_per_cell", cells),
            &cells,
            |b, _| {
                b.to_async(&rt).iter(|| async {
                    let store: Arc<dyn ArtifactStore> = Arc::new(MemoryStore::new());
                    let id = format!("r{}", counter.fetch_add(1, Ordering::Relaxed));
                    let run = RunContext::new(
                        id,
                        exp.clone(),
                        backend.clone(),
                        store,
                        CancellationToken::new(),
                    )
                    .expect("context");
                    let report = runner
                        .run(&run, &plan, RunMode::New { input: None })
                        .await
                        .expect("run");
                    assert_eq!(report.status, RunStatus::Succeeded);
                });
            },
        );
    }
    group.finish();
}

fn config(c: &mut Criterion) {
    let proposal = include_str!("../../experiments/proposal.yaml");
    c.bench_function("config/parse_proposal", |b| {
        b.iter(|| Experiment::from_yaml_str(proposal, "proposal.yaml").expect("valid"))
    });
    let exp = experiment(1000);
    c.bench_function("plan/expand_1000_cells", |b| {
        b.iter(|| exp.plan().expect("plan"))
    });
}

criterion_group!(benches, executor, config);
criterion_main!(benches);
