//! A run whose model is deployed from Kubernetes manifests (`deployment: {manifests}`),
//! through the runner and `K8sBackend` on the fake API server: the cells see the in-cluster
//! endpoint; a crash-looping model fails the run within seconds with the pod's reason; and
//! teardown removes everything labelled with the run either way.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness_core::steps::deployment_steps;
use harness_core::{
    Endpoint, Experiment, MemoryStore, Pipeline, RunStatus, StepOutput, step_fn, testkit::run_new,
};
use harness_k8s::K8sBackend;
use harness_k8s::testkit::{FakeApiServer, PodScript};

const VLLM: &str = "
name: k8s-deploy
model: {name: llama}
concurrency: [1, 4]
benchmark: {isl_osl: [[128, 32]]}
backend: {kind: kubernetes, namespace: bench}
deployment:
  gpus: 2
  manifests: |
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: vllm}
    spec:
      replicas: 1
      selector: {matchLabels: {app: vllm}}
      template:
        metadata: {labels: {app: vllm}}
        spec:
          containers:
            - name: vllm
              image: vllm/vllm-openai:v0.11.0
              resources: {limits: {nvidia.com/gpu: 2}}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: vllm}
    spec: {selector: {app: vllm}, ports: [{port: 8000}]}
";

/// A pipeline whose cells record the endpoint they were given.
fn pipeline(exp: &Experiment, seen: Arc<Mutex<Vec<String>>>) -> Pipeline {
    Pipeline::builder()
        .deployment(deployment_steps(exp).expect("deployment steps"))
        .per_cell(step_fn("probe", move |cx| {
            let seen = seen.clone();
            async move {
                let ep = cx.resources().get::<Endpoint>().expect("endpoint");
                seen.lock().expect("lock").push(ep.base_url.clone());
                Ok(StepOutput::new())
            }
        }))
        .build()
        .expect("pipeline")
}

#[tokio::test]
async fn a_model_deployed_from_manifests_serves_the_cells_in_cluster_and_is_removed() {
    let exp = Arc::new(Experiment::from_yaml_str(VLLM, "k8s.yaml").expect("experiment"));
    let fake = FakeApiServer::new();
    let backend = Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r1"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (report, _) = run_new(
        exp.clone(),
        pipeline(&exp, seen.clone()),
        backend,
        Arc::new(MemoryStore::new()),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        *seen.lock().expect("lock"),
        ["http://vllm.bench.svc.cluster.local:8000"; 2],
        "both cells got the Service's cluster DNS"
    );
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

#[tokio::test]
async fn a_crash_looping_model_fails_the_run_fast_with_the_pods_reason() {
    let exp = Arc::new(Experiment::from_yaml_str(VLLM, "k8s.yaml").expect("experiment"));
    let fake = FakeApiServer::new();
    fake.on_pod(|_| PodScript::CrashLoop {
        logs: "torch.OutOfMemoryError: CUDA out of memory\n".into(),
    });
    let backend = Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r2"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let (report, _) = run_new(
        exp.clone(),
        pipeline(&exp, seen.clone()),
        backend,
        Arc::new(MemoryStore::new()),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_ne!(report.status, RunStatus::Succeeded);
    let why = report.setup_error.clone().unwrap_or_default();
    assert!(
        why.contains("CrashLoopBackOff") && why.contains("CUDA out of memory"),
        "{why}"
    );
    assert!(seen.lock().expect("lock").is_empty(), "no cell ran");
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

#[test]
fn manifests_need_the_kubernetes_backend() {
    let local = VLLM.replace("backend: {kind: kubernetes, namespace: bench}\n", "");
    let e = Experiment::from_yaml_str(&local, "k8s.yaml").expect_err("local backend");
    assert!(
        e.to_string().contains("deployment.manifests") && e.to_string().contains("kubernetes"),
        "{e}"
    );
}
