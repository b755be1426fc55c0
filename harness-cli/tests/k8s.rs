//! An in-cluster sweep through the fake Kubernetes API server: each cell runs as a Job whose
//! pod the fake runs as a local process (`harness agent`, the real binary), writing records
//! and statistics into the run's store; the controlling side is the same pipeline
//! `harness run` builds for `backend: {kind: kubernetes}`. The stored run is then read by
//! `harness show` and `harness report` like a local one.

mod common;

use std::sync::Arc;

use common::*;
use harness_core::{
    Backend, CancellationToken, Experiment, Pipeline, RunContext, RunMode, RunStatus, Runner,
};
use harness_k8s::testkit::{FakeApiServer, PodScript};
use harness_k8s::{InClusterStep, K8sBackend};

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Mock(std::process::Child);
impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_sweep_is_stored_and_read_like_a_local_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = free_port();
    let _mock = Mock(
        std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args([
                "mock",
                "--port",
                &port.to_string(),
                "--ttft-ms",
                "5",
                "--itl-ms",
                "1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mock"),
    );
    let yaml = format!(
        "name: incluster\n\
         model: {{name: harness-mock}}\n\
         concurrency: [1, 2]\n\
         benchmark: {{isl_osl: [[64, 8]]}}\n\
         deployment: {{url: http://127.0.0.1:{port}, health: /health}}\n\
         backend: {{kind: kubernetes, namespace: bench, image: harness:test}}\n\
         load: {{requests: 8}}\n"
    );
    let exp = Arc::new(Experiment::from_yaml_str(&yaml, "incluster.yaml").expect("experiment"));
    assert!(exp.backend.in_cluster());

    // The cluster: Job pods run `harness agent` from this build.
    let fake = FakeApiServer::new();
    fake.on_pod(|_| PodScript::Exec {
        program: Some(env!("CARGO_BIN_EXE_harness").into()),
    });
    let run_id = "20261128-000000-abcd";
    let backend: Arc<dyn Backend> =
        Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", run_id));
    let store_url = format!("file://{}", d.join("runs").display());
    let store = harness_storage::open(&store_url).expect("store");
    let program = std::path::PathBuf::from(env!("CARGO_BIN_EXE_harness"));
    let pipeline = Pipeline::builder()
        .deployment(harness_llm::deployment_steps(&exp, &program).expect("deployment"))
        .per_cell(InClusterStep::new(&store_url))
        .build()
        .expect("pipeline");
    let run = RunContext::new(
        run_id,
        exp.clone(),
        backend,
        store,
        CancellationToken::new(),
    )
    .expect("run");
    let report = Runner::new(pipeline)
        .run(
            &run,
            &exp.plan().expect("plan"),
            RunMode::New { input: Some(yaml) },
        )
        .await
        .expect("run");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");

    // Each cell was a Job in the namespace; every one of them is gone after its cell.
    let posts: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /apis/batch/v1/namespaces/bench/jobs"))
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(fake.objects("jobs").is_empty() && fake.objects("configmaps").is_empty());
    for cell in &report.cells {
        assert_eq!(
            cell.metrics.get("requests"),
            Some(&8.0),
            "{:?}",
            cell.metrics
        );
        assert!(cell.metrics.get("ttft.p50").is_some_and(|t| *t >= 5.0));
    }
    let cell_dir = d
        .join("runs/runs/incluster")
        .join(run_id)
        .join("cells/concurrency=2,isl=64,osl=8");
    assert!(
        cell_dir.join("records.parquet").is_file(),
        "the agent wrote the records"
    );
    let log = std::fs::read_to_string(cell_dir.join("artifacts/in-cluster/agent.log"))
        .expect("agent.log");
    assert!(log.contains("benchmark: ok"), "{log}");

    // `harness show` and `harness report` read it like any run.
    let shown = harness(d, &["show", run_id, "--store", &store_url, "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(v["cells"].as_array().map(Vec::len), Some(2), "{v}");
    let rebuilt = harness(d, &["report", run_id, "--store", &store_url]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt.stderr));
    assert!(
        d.join("runs/runs/incluster")
            .join(run_id)
            .join("report/index.html")
            .is_file()
    );
}

#[test]
fn render_prints_rbac_and_a_configmap_and_job_per_cell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let exp = d.join("k8s.yaml");
    std::fs::write(
        &exp,
        "name: render\nmodel: {name: llama}\nconcurrency: [1, 8]\nbenchmark: {isl_osl: [[128, 32]]}\n\
         deployment: {url: http://llama-frontend.bench.svc.cluster.local:8000}\n\
         backend: {kind: kubernetes, namespace: bench, image: ghcr.io/x/harness:1, env_secret: s3-creds}\n\
         storage: {url: s3://results/harness}\n",
    )
    .expect("write");
    let out = harness(
        d,
        &[
            "k8s",
            "render",
            exp.to_str().expect("path"),
            "--run-id",
            "r-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let docs = harness_k8s::parse_manifests(&yaml, "render output").expect("valid manifests");
    let kinds: Vec<&str> = docs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Job",
            "ConfigMap",
            "Job"
        ]
    );
    let job = &docs[4];
    assert_eq!(job["metadata"]["namespace"], "bench");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/x/harness:1");
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "s3-creds");
    let cmd: Vec<&str> = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        cmd,
        [
            "harness",
            "agent",
            "--run",
            "r-1",
            "--cell",
            "concurrency=1,isl=128,osl=32",
            "--endpoint",
            "http://llama-frontend.bench.svc.cluster.local:8000",
            "--store",
            "s3://results/harness"
        ]
    );
    // A snapshot of the whole output catches any other change.
    let snapshot = repo().join("harness-cli/tests/snapshots/k8s-render.yaml");
    if std::env::var_os("HARNESS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &yaml).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&snapshot).expect("snapshot (HARNESS_UPDATE_SNAPSHOTS=1)");
    assert_eq!(
        yaml, want,
        "render output changed; HARNESS_UPDATE_SNAPSHOTS=1 to accept"
    );

    // A local backend has nothing to render in a cluster: the Kubernetes fields are refused.
    std::fs::write(
        &exp,
        "name: render\nmodel: {name: llama}\nconcurrency: [1]\nbenchmark: {isl_osl: [[128, 32]]}\nbackend: {namespace: bench}\n",
    )
    .expect("write");
    let out = harness(d, &["validate", exp.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("backend.namespace") && text(&out.stderr).contains("kubernetes"),
        "{}",
        text(&out.stderr)
    );
}
