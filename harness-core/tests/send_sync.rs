//! Public types and futures are `Send + Sync + 'static` where embedders need them to be:
//! these fail to compile otherwise.

#![allow(dead_code)]

use std::sync::Arc;

use harness_core::*;

fn send_sync_static<T: Send + Sync + 'static>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn public_types_are_send_sync_static() {
    send_sync_static::<Experiment>();
    send_sync_static::<Plan>();
    send_sync_static::<Cell>();
    send_sync_static::<Pipeline>();
    send_sync_static::<Runner>();
    send_sync_static::<RunContext>();
    send_sync_static::<StepContext>();
    send_sync_static::<StepOutput>();
    send_sync_static::<RunReport>();
    send_sync_static::<LocalBackend>();
    send_sync_static::<MemoryStore>();
    send_sync_static::<Error>();
    send_sync_static::<ConfigError>();
    send_sync_static::<Arc<dyn Step>>();
    send_sync_static::<Arc<dyn Backend>>();
    send_sync_static::<Arc<dyn ArtifactStore>>();
    send_sync_static::<StepRegistry>();
}

/// The runner's future can be spawned on a multi-threaded runtime.
fn runner_future_is_send(runner: &Runner, run: &RunContext, plan: &Plan) {
    let fut = runner.run(run, plan, RunMode::Resume);
    send(&fut);
}

fn backend_futures_are_send(backend: &LocalBackend, spec: &WorkloadSpec, w: &Workload) {
    send(&backend.launch(spec));
    send(&backend.status(w));
    send(&backend.teardown(w));
    let cancel = CancellationToken::new();
    send(&backend.wait_ready(w, std::time::Duration::from_secs(1), &cancel));
}
