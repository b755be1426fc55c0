//! A custom backend: wrap `LocalBackend` so every workload runs under `nice`, keeping the
//! benchmark client's CPU ahead of the workloads'. Backends compose like tower services: hold
//! the inner one, change what you need, pass the rest through. Then prove it still keeps the
//! `Backend` contract with the shared conformance suite.
//!
//! `cargo run -p examples --example custom_backend`

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::testkit::{BackendFixtures, backend_conformance};
use harness_core::{Backend, LocalBackend, Result, Workload, WorkloadSpec, WorkloadStatus};

#[derive(Debug)]
struct Niced {
    inner: LocalBackend,
    niceness: i32,
}

#[async_trait]
impl Backend for Niced {
    async fn launch(&self, spec: &WorkloadSpec) -> Result<Workload> {
        let mut spec = spec.clone();
        let mut command = vec![
            "nice".to_owned(),
            "-n".to_owned(),
            self.niceness.to_string(),
        ];
        command.append(&mut spec.command);
        spec.command = command;
        self.inner.launch(&spec).await
    }
    async fn status(&self, w: &Workload) -> Result<WorkloadStatus> {
        self.inner.status(w).await
    }
    async fn logs(&self, w: &Workload) -> Result<Bytes> {
        self.inner.logs(w).await
    }
    async fn teardown(&self, w: &Workload) -> Result<()> {
        self.inner.teardown(w).await
    }
    fn name(&self) -> &str {
        "niced-local"
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let backend = Niced {
        inner: LocalBackend::new()?,
        niceness: 10,
    };
    // The standard fixtures, with a job that checks it really runs under `nice`.
    let job = WorkloadSpec::process("job", ["sh", "-c", "test \"$(nice)\" -ge 10"]);
    backend_conformance(
        &backend,
        BackendFixtures {
            job,
            ..BackendFixtures::local_processes()
        },
    )
    .await;
    println!("`{}` passes the Backend conformance suite", backend.name());
    Ok(())
}
