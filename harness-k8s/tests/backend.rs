//! `K8sBackend` against the fake API server (a real `kube::Client` over
//! `tower_test::mock::pair`): the core conformance suite, fail-fast pod states, in-cluster
//! endpoints, labels, manifests and teardown.

use std::time::{Duration, Instant};

use harness_core::testkit::{BackendFixtures, backend_conformance};
use harness_core::{Backend, BackendExt, CancellationToken, Error, Readiness, WorkloadSpec};
use harness_k8s::testkit::{FakeApiServer, PodScript};
use harness_k8s::{K8sBackend, WORKLOAD_LABEL};
use serde_json::Value;

fn command_of(pod: &Value) -> String {
    pod.pointer("/spec/containers/0/command")
        .map(Value::to_string)
        .unwrap_or_default()
}

/// Crash-looping pods are those whose command exits 3; the rest run.
fn fake() -> FakeApiServer {
    let fake = FakeApiServer::new();
    fake.on_pod(|pod| {
        let cmd = command_of(pod);
        if cmd.contains("exit 3") {
            PodScript::CrashLoop {
                logs: "starting\ncrash-marker-42\n".into(),
            }
        } else {
            PodScript::Run {
                logs: "serving\n".into(),
                exit: pod.pointer("/metadata/labels/job-name").map(|_| 0),
            }
        }
    });
    fake
}

fn fixtures() -> BackendFixtures {
    let sh = |name: &str, script: &str| {
        WorkloadSpec::process(name, ["sh", "-c", script]).image("busybox:1.36")
    };
    BackendFixtures {
        server: WorkloadSpec::process("web", ["python3", "-m", "http.server", "{port}"])
            .image("python:3.12-slim")
            .serving(8000, Readiness::Http { path: "/".into() }),
        crashing: sh("crasher", "echo starting; echo crash-marker-42 >&2; exit 3")
            .serving(8000, Readiness::Tcp),
        crash_marker: "crash-marker-42".into(),
        job: sh("job", "echo done"),
        ready_timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn the_backend_conformance_suite_passes_against_the_fake_api_server() {
    let fake = fake();
    let backend = K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r1");
    backend_conformance(&backend, fixtures()).await;
    // Everything it created is gone.
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

#[tokio::test]
async fn a_served_image_is_a_deployment_and_service_with_an_in_cluster_endpoint() {
    let fake = fake();
    let backend = K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r1");
    let spec = fixtures().server.label("harness.dev/cell", "c1");
    let w = backend.launch(&spec).await.expect("launch");
    let ep = backend
        .wait_ready(&w, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("ready")
        .expect("endpoint");
    assert_eq!(
        ep.base_url,
        format!("http://{}.bench.svc.cluster.local:8000", w.id),
        "DNS of the Service, no port-forward"
    );
    let deps = fake.objects("deployments");
    let d = &deps[0];
    for labels in ["/metadata/labels", "/spec/template/metadata/labels"] {
        let l = d.pointer(labels).expect("labels");
        assert_eq!(l[WORKLOAD_LABEL], w.id.as_str());
        assert_eq!(l["harness.dev/run"], "r1");
        assert_eq!(l["harness.dev/cell"], "c1");
        assert_eq!(l["app.kubernetes.io/managed-by"], "harness");
    }
    assert_eq!(
        d.pointer("/spec/template/spec/containers/0/readinessProbe/httpGet/path"),
        Some(&Value::from("/"))
    );
    assert_eq!(fake.objects("services").len(), 1);
    let logs = backend.logs(&w).await.expect("logs");
    assert_eq!(String::from_utf8_lossy(&logs), "serving\n");
    backend.teardown(&w).await.expect("teardown");
    assert!(fake.all_objects().is_empty());
}

/// A vLLM-style Deployment whose pod crash-loops (or cannot start) fails within seconds
/// with the pod's reason, and teardown removes everything labelled with the run.
#[tokio::test]
async fn pods_that_cannot_recover_fail_the_workload_at_once_with_their_reason() {
    let manifests = include_str!("fixtures/vllm.yaml");
    for (script, expect) in [
        (
            PodScript::CrashLoop {
                logs: "CUDA out of memory\n".into(),
            },
            "CrashLoopBackOff",
        ),
        (PodScript::ImagePullBackOff, "ImagePullBackOff"),
        (PodScript::OomKilled, "OOMKilled"),
        (PodScript::Unschedulable, "Unschedulable"),
    ] {
        let fake = FakeApiServer::new();
        let s = script.clone();
        fake.on_pod(move |_| s.clone());
        let backend = K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r9");
        let spec = WorkloadSpec::manifests("vllm", manifests).serving(0, Readiness::Running);
        let w = backend.launch(&spec).await.expect("launch");
        assert_eq!(
            w.endpoint.as_ref().map(|e| e.base_url.as_str()),
            Some("http://vllm.bench.svc.cluster.local:8000")
        );
        let deployed = backend.deployed(&w);
        assert_eq!(deployed[0].object, "Deployment/vllm");
        assert_eq!(deployed[0].gpus, 2);
        assert_eq!(deployed[0].images, ["vllm/vllm-openai:v0.11.0"]);
        let start = Instant::now();
        let long = Duration::from_secs(600);
        match backend
            .wait_ready(&w, long, &CancellationToken::new())
            .await
        {
            Err(Error::Failed { reason, .. }) => {
                assert!(reason.contains(expect), "{expect}: {reason}");
                if expect == "CrashLoopBackOff" {
                    assert!(reason.contains("CUDA out of memory"), "{reason}");
                }
            }
            other => panic!("{expect}: expected a failure, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{expect}: fast");
        backend.teardown(&w).await.expect("teardown");
        let left: Vec<_> = fake
            .all_objects()
            .into_iter()
            .filter(|o| o.pointer("/metadata/labels/harness.dev~1run") == Some(&"r9".into()))
            .collect();
        assert!(left.is_empty(), "{expect}: {left:#?}");
    }
}

#[tokio::test]
async fn a_dynamo_graph_deployment_is_ready_when_its_operator_says_so() {
    let fake = fake();
    let backend = K8sBackend::new(fake.client(), "dynamo");
    let dgd = "\
apiVersion: nvidia.com/v1alpha1
kind: DynamoGraphDeployment
metadata: {name: llama}
spec:
  services:
    Frontend: {replicas: 1, extraPodSpec: {mainContainer: {image: nvcr.io/dynamo/vllm-runtime:0.6}}}
    VllmDecodeWorker:
      replicas: 2
      resources: {limits: {gpu: '1'}}
      extraPodSpec: {mainContainer: {image: nvcr.io/dynamo/vllm-runtime:0.6}}
";
    let spec = WorkloadSpec::manifests("llama", dgd).serving(0, Readiness::Running);
    let w = backend.launch(&spec).await.expect("launch");
    assert_eq!(
        w.endpoint.as_ref().map(|e| e.base_url.as_str()),
        Some("http://llama-frontend.dynamo.svc.cluster.local:8000")
    );
    backend
        .wait_ready(&w, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("ready");
    assert_eq!(fake.objects("dynamographdeployments").len(), 1);
    assert_eq!(backend.deployed(&w)[0].gpus, 1);
    backend.teardown(&w).await.expect("teardown");
    assert!(fake.objects("dynamographdeployments").is_empty());
}

#[tokio::test]
async fn bad_manifests_and_plain_processes_are_refused_before_anything_is_created() {
    let fake = fake();
    let backend = K8sBackend::new(fake.client(), "bench");
    let e = backend
        .launch(&WorkloadSpec::manifests(
            "x",
            "kind: Service\nmetadata: {name: a}\n",
        ))
        .await
        .expect_err("no apiVersion");
    assert!(e.to_string().contains("apiVersion"), "{e}");
    let e = backend
        .launch(&WorkloadSpec::manifests("x", "a: [unclosed\n"))
        .await
        .expect_err("bad YAML");
    assert!(e.to_string().contains("manifests of `x`"), "{e}");
    let e = backend
        .launch(&WorkloadSpec::process("p", ["echo"]))
        .await
        .expect_err("process");
    assert!(matches!(e, Error::NotSupported { .. }), "{e}");
    assert!(fake.all_objects().is_empty());
    assert!(
        fake.requests().iter().all(|r| !r.starts_with("POST")),
        "{:?}",
        fake.requests()
    );
}
