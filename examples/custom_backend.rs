//! A custom backend: wrap `LocalBackend` so every workload runs under `nice`, keeping the
//! benchmark client's CPU ahead of the workloads'. Backends compose like tower services: hold
//! the inner one, change what you need, pass the rest through. Then prove it still keeps the
//! `Backend` contract with the shared conformance suite.
//!
//! `cargo run -p examples --example custom_backend`

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::testkit::{BackendFixtures, backend_conformance};
use harness_core::{
    Backend, LocalBackend, Readiness, Result, Workload, WorkloadSpec, WorkloadStatus,
};

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
    let sh = |name: &str, script: &str| WorkloadSpec::process(name, ["sh", "-c", script]);
    backend_conformance(
        &backend,
        BackendFixtures {
            server: WorkloadSpec::process(
                "web",
                [
                    "python3",
                    "-m",
                    "http.server",
                    "{port}",
                    "--bind",
                    "127.0.0.1",
                ],
            )
            .serving(0, Readiness::Http { path: "/".into() }),
            crashing: sh("crash", "echo gone >&2; exit 2").serving(0, Readiness::Tcp),
            crash_marker: "gone".into(),
            job: sh("job", "test \"$(nice)\" -ge 10"),
            ready_timeout: Duration::from_secs(30),
        },
    )
    .await;
    println!("`{}` passes the Backend conformance suite", backend.name());
    Ok(())
}
