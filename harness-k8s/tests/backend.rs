//! `K8sBackend` against the fake API server (a real `kube::Client` over
//! `tower_test::mock::pair`): the core conformance suite, fail-fast pod states, in-cluster
//! endpoints, labels, manifests and teardown.

use std::time::Duration;

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
    let backend = K8sBackend::new(fake.client(), "bench")
        .label("harness.dev/run", "r1")
        .fail_fast_grace(Duration::from_millis(300));
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
/// with the pod's reason once the grace period is over (zero here), and teardown removes
/// everything labelled with the run.
#[tokio::test]
async fn pods_that_cannot_recover_fail_the_workload_with_their_reason() {
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
        let backend = K8sBackend::new(fake.client(), "bench")
            .label("harness.dev/run", "r9")
            .fail_fast_grace(Duration::ZERO);
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
        backend.teardown(&w).await.expect("teardown");
        let left: Vec<_> = fake
            .all_objects()
            .into_iter()
            .filter(|o| o.pointer("/metadata/labels/harness.dev~1run") == Some(&"r9".into()))
            .collect();
        assert!(left.is_empty(), "{expect}: {left:#?}");
    }
}

/// A Dynamo graph: a frontend, two single-GPU decode workers and a two-node prefill worker
/// with four GPUs per node.
const DGD: &str = "\
apiVersion: nvidia.com/v1alpha1
kind: DynamoGraphDeployment
metadata: {name: llama}
spec:
  services:
    Frontend: {replicas: 1, componentType: frontend, extraPodSpec: {mainContainer: {image: nvcr.io/dynamo/vllm-runtime:0.6}}}
    VllmDecodeWorker:
      replicas: 2
      resources: {limits: {gpu: '1'}}
      extraPodSpec: {mainContainer: {image: nvcr.io/dynamo/vllm-runtime:0.6}}
    VllmPrefillWorker:
      replicas: 1
      multinode: {nodeCount: 2}
      resources: {limits: {gpu: '4'}}
      extraPodSpec: {mainContainer: {image: nvcr.io/dynamo/vllm-runtime:0.6}}
";

fn graph_pods(fake: &FakeApiServer) -> Vec<Value> {
    fake.objects("pods")
        .into_iter()
        .filter(|p| {
            p.pointer("/metadata/labels/nvidia.com~1dynamo-graph-deployment-name")
                == Some(&"llama".into())
        })
        .collect()
}

/// The graph is ready when Dynamo's operator says so; its GPUs are each service's replicas ×
/// nodes × GPUs; its logs are its pods' (found by Dynamo's labels, which do not carry
/// harness' own); teardown returns only when its GPU pods are gone.
#[tokio::test]
async fn a_dynamo_graph_is_ready_when_its_operator_says_so_and_torn_down_with_its_pods() {
    let fake = fake();
    let backend = K8sBackend::new(fake.client(), "dynamo");
    let spec = WorkloadSpec::manifests("llama", DGD).serving(0, Readiness::Running);
    let w = backend.launch(&spec).await.expect("launch");
    assert_eq!(
        w.endpoint.as_ref().map(|e| e.base_url.as_str()),
        Some("http://llama-frontend.dynamo.svc.cluster.local:8000")
    );
    backend
        .wait_ready(&w, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("ready");
    assert_eq!(
        graph_pods(&fake).len(),
        1 + 2 + 2,
        "pods per replica and node"
    );
    let details = backend.details(&w).await.expect("details");
    assert_eq!(details["gpus"], 2 + 2 * 4, "{details}");
    let logs = String::from_utf8_lossy(&backend.logs(&w).await.expect("logs")).into_owned();
    assert_eq!(logs.matches("==> pod llama-0-").count(), 5, "{logs}");
    backend.teardown(&w).await.expect("teardown");
    assert!(fake.objects("dynamographdeployments").is_empty());
    assert!(graph_pods(&fake).is_empty(), "{:#?}", graph_pods(&fake));
}

/// A graph whose decode workers crash-loop fails with the worker pod's reason and the tail
/// of its log, instead of waiting out the readiness timeout.
#[tokio::test]
async fn a_dynamo_graph_whose_workers_crash_fails_with_their_reason_and_log() {
    let fake = FakeApiServer::new();
    fake.on_pod(|pod| {
        if pod.pointer("/metadata/labels/nvidia.com~1dynamo-component")
            == Some(&"VllmDecodeWorker".into())
        {
            PodScript::CrashLoop {
                logs: "loading weights\nCUDA error: out of memory\n".into(),
            }
        } else {
            PodScript::Run {
                logs: "serving\n".into(),
                exit: None,
            }
        }
    });
    let backend = K8sBackend::new(fake.client(), "dynamo").fail_fast_grace(Duration::ZERO);
    let spec = WorkloadSpec::manifests("llama", DGD).serving(0, Readiness::Running);
    let w = backend.launch(&spec).await.expect("launch");
    let e = backend
        .wait_ready(&w, Duration::from_secs(120), &CancellationToken::new())
        .await
        .expect_err("crash loop");
    let Error::Failed { reason, .. } = &e else {
        panic!("a failure, not {e}");
    };
    assert!(reason.contains("llama-0-vllmdecodeworker-"), "{reason}");
    assert!(reason.contains("CrashLoopBackOff"), "{reason}");
    assert!(reason.contains("CUDA error: out of memory"), "{reason}");
    backend.teardown(&w).await.expect("teardown");
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

/// Objects left by a run that crashed (same names) are taken over by server-side apply,
/// not refused as existing; every write names harness' field manager.
#[tokio::test]
async fn leftovers_of_a_crashed_run_are_taken_over_by_server_side_apply() {
    let fake = fake();
    for o in harness_k8s::parse_manifests(include_str!("fixtures/vllm.yaml"), "old").expect("yaml")
    {
        let (api, plural) = if o["kind"] == "Service" {
            ("api/v1", "services")
        } else {
            ("apis/apps/v1", "deployments")
        };
        let mut o = o;
        o["metadata"]["namespace"] = "bench".into();
        o["metadata"]["labels"] = serde_json::json!({"harness.dev/run": "crashed"});
        fake.insert(api, plural, o);
    }
    let backend = K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r2");
    let spec = WorkloadSpec::manifests("vllm", include_str!("fixtures/vllm.yaml"))
        .serving(0, Readiness::Running);
    let w = backend
        .launch(&spec)
        .await
        .expect("a leftover is no conflict");
    let deps = fake.objects("deployments");
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["metadata"]["labels"]["harness.dev/run"], "r2");
    let writes: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH") || r.starts_with("POST"))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        writes.iter().all(|r| r.starts_with("PATCH")
            && r.contains("fieldManager=harness")
            && r.contains("force=true")),
        "{writes:?}"
    );
    backend
        .wait_ready(&w, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("ready");
    backend.teardown(&w).await.expect("teardown");
}

/// Plurals and scopes come from API discovery: a kind with an irregular plural is found, a
/// cluster-scoped kind is applied without a namespace, and a kind the cluster does not
/// serve is refused, naming it, before anything is applied.
#[tokio::test]
async fn kinds_come_from_discovery_and_unknown_kinds_are_refused_before_anything_is_applied() {
    let fake = fake();
    fake.install_crd("example.com", "v1", "Mouse", "mice", true);
    let backend = K8sBackend::new(fake.client(), "bench");
    let manifests = "\
apiVersion: example.com/v1
kind: Mouse
metadata: {name: jerry}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules: []
";
    let w = backend
        .launch(&WorkloadSpec::manifests("m", manifests))
        .await
        .expect("launch");
    assert_eq!(fake.objects("mice").len(), 1);
    let roles = fake.objects("clusterroles");
    assert_eq!(roles.len(), 1);
    assert!(
        roles[0].pointer("/metadata/namespace").is_none(),
        "{roles:?}"
    );
    backend.teardown(&w).await.expect("teardown");
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());

    let before = fake.requests().len();
    let e = backend
        .launch(&WorkloadSpec::manifests(
            "g",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\n",
        ))
        .await
        .expect_err("no Gateway CRD");
    assert!(
        e.to_string().contains("Gateway") && e.to_string().contains("CRD"),
        "{e}"
    );
    let writes: Vec<String> = fake.requests()[before..]
        .iter()
        .filter(|r| !r.starts_with("GET"))
        .cloned()
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}

/// A pod that cannot be scheduled yet (an autoscaler is adding a node) or pull its image for
/// a while is given the grace period; one that stays so longer fails the workload.
#[tokio::test]
async fn pods_get_a_grace_period_before_they_fail_the_workload() {
    for script in [
        PodScript::Unschedulable,
        PodScript::ImagePullBackOff,
        PodScript::CrashLoop {
            logs: "once\n".into(),
        },
    ] {
        let fake = FakeApiServer::new();
        let s = script.clone();
        fake.on_pod(move |_| PodScript::Until {
            steps: 8,
            first: Box::new(s.clone()),
            then: Box::new(PodScript::Run {
                logs: "serving\n".into(),
                exit: None,
            }),
        });
        let backend =
            K8sBackend::new(fake.client(), "bench").fail_fast_grace(Duration::from_secs(600));
        let spec = WorkloadSpec::manifests("vllm", include_str!("fixtures/vllm.yaml"))
            .serving(0, Readiness::Running);
        let w = backend.launch(&spec).await.expect("launch");
        backend
            .wait_ready(&w, Duration::from_secs(120), &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{script:?} recovers within the grace period: {e}"));
        backend.teardown(&w).await.expect("teardown");
    }
    let fake = FakeApiServer::new();
    fake.on_pod(|_| PodScript::Unschedulable);
    let backend =
        K8sBackend::new(fake.client(), "bench").fail_fast_grace(Duration::from_millis(500));
    let spec = WorkloadSpec::manifests("vllm", include_str!("fixtures/vllm.yaml"))
        .serving(0, Readiness::Running);
    let w = backend.launch(&spec).await.expect("launch");
    let e = backend
        .wait_ready(&w, Duration::from_secs(120), &CancellationToken::new())
        .await
        .expect_err("still unschedulable after the grace period");
    assert!(e.to_string().contains("Unschedulable for"), "{e}");
    backend.teardown(&w).await.expect("teardown");
}

/// Init containers are checked too, and a failing container's log is its own: a pod with a
/// sidecar needs the container named (the API server refuses otherwise).
#[tokio::test]
async fn init_containers_and_sidecars_are_checked_with_their_own_logs() {
    let two = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm}
spec:
  selector: {matchLabels: {app: vllm}}
  template:
    metadata: {labels: {app: vllm}}
    spec:
      initContainers: [{name: fetch-weights, image: busybox}]
      containers: [{name: vllm, image: vllm/vllm-openai:v0.11.0}, {name: metrics, image: exporter:1}]
";
    for (script, expect, marker) in [
        (
            PodScript::InitCrashLoop {
                logs: "403 Forbidden: gated repo\n".into(),
            },
            "init container fetch-weights",
            "403 Forbidden",
        ),
        (
            PodScript::CrashLoop {
                logs: "torch.OutOfMemoryError\n".into(),
            },
            "container vllm",
            "torch.OutOfMemoryError",
        ),
    ] {
        let fake = FakeApiServer::new();
        let s = script.clone();
        fake.on_pod(move |_| s.clone());
        let backend = K8sBackend::new(fake.client(), "bench").fail_fast_grace(Duration::ZERO);
        let w = backend
            .launch(&WorkloadSpec::manifests("vllm", two).serving(0, Readiness::Running))
            .await
            .expect("launch");
        let e = backend
            .wait_ready(&w, Duration::from_secs(120), &CancellationToken::new())
            .await
            .expect_err("fails");
        let text = e.to_string();
        assert!(text.contains(expect) && text.contains(marker), "{text}");
        let logs = String::from_utf8_lossy(&backend.logs(&w).await.expect("logs")).into_owned();
        for c in ["fetch-weights", "vllm", "metrics"] {
            assert!(logs.contains(&format!("container {c} <==")), "{c}: {logs}");
        }
        assert!(logs.contains(marker), "{logs}");
        backend.teardown(&w).await.expect("teardown");
    }
}

/// The API server answering 503 and 429 for a while does not fail a workload being waited
/// for.
#[tokio::test]
async fn transient_api_errors_while_waiting_are_retried() {
    let fake = fake();
    let backend = K8sBackend::new(fake.client(), "bench");
    let w = backend.launch(&fixtures().server).await.expect("launch");
    fake.fail("GET", "/deployments/", 503, 3);
    fake.fail("GET", "/pods", 429, 2);
    backend
        .wait_ready(&w, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("ready despite the errors");
    let job = backend.launch(&fixtures().job).await.expect("job");
    fake.fail("GET", "/jobs/", 500, 4);
    backend
        .wait_finished(&job, &CancellationToken::new())
        .await
        .expect("finished despite the errors");
    for w in [w, job] {
        backend.teardown(&w).await.expect("teardown");
    }
}

/// With an owner (the operator's DynamoBenchmark), every object carries an ownerReference,
/// so deleting the owner deletes them.
#[tokio::test]
async fn objects_carry_the_owner_reference_given() {
    let fake = fake();
    fake.insert(
        "apis/harness.dev/v1alpha1",
        "dynamobenchmarks",
        serde_json::json!({"apiVersion": "harness.dev/v1alpha1", "kind": "DynamoBenchmark",
            "metadata": {"name": "sweep", "namespace": "bench", "uid": "uid-sweep"},
            "spec": {"experiment": {}}}),
    );
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "harness.dev/v1alpha1".into(),
        kind: "DynamoBenchmark".into(),
        name: "sweep".into(),
        uid: "uid-sweep".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let backend = K8sBackend::new(fake.client(), "bench").owner(owner);
    let spec = WorkloadSpec::manifests("vllm", include_str!("fixtures/vllm.yaml"))
        .serving(0, Readiness::Running);
    backend.launch(&spec).await.expect("launch");
    for plural in ["deployments", "services"] {
        let o = &fake.objects(plural)[0];
        assert_eq!(
            o["metadata"]["ownerReferences"][0]["uid"], "uid-sweep",
            "{o}"
        );
    }
    let api: kube::Api<harness_k8s::crd::DynamoBenchmark> =
        kube::Api::namespaced(fake.client(), "bench");
    api.delete("sweep", &Default::default())
        .await
        .expect("delete the owner");
    assert!(fake.objects("deployments").is_empty() && fake.objects("services").is_empty());
}

/// `cleanup` removes whatever a run left behind, Dynamo graphs and their pods included.
#[tokio::test]
async fn cleanup_removes_everything_a_run_left() {
    let fake = fake();
    let crashed = K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r5");
    crashed
        .launch(&WorkloadSpec::manifests("llama", DGD).serving(0, Readiness::Running))
        .await
        .expect("graph");
    crashed.launch(&fixtures().server).await.expect("server");
    let other = K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r6");
    other
        .launch(&fixtures().server)
        .await
        .expect("another run's");
    // Let the controllers make pods.
    for _ in 0..4 {
        let _ = crashed.cleanup("harness.dev/run=nothing").await;
    }
    assert!(!graph_pods(&fake).is_empty());
    let fresh = K8sBackend::new(fake.client(), "bench");
    let deleted = fresh.cleanup("harness.dev/run=r5").await.expect("cleanup");
    assert!(
        deleted.iter().any(|d| d == "DynamoGraphDeployment/llama"),
        "{deleted:?}"
    );
    assert!(
        deleted.iter().any(|d| d.starts_with("Deployment/")),
        "{deleted:?}"
    );
    assert!(graph_pods(&fake).is_empty());
    let left: Vec<Value> = fake
        .all_objects()
        .into_iter()
        .filter(|o| o.pointer("/metadata/labels/harness.dev~1run") == Some(&"r5".into()))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
    assert_eq!(
        fake.objects("deployments").len(),
        1,
        "the other run's stays"
    );
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
