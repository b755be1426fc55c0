//! The operator (`kube::runtime` controller) on the stricter fake API server: a resource
//! runs once even when its status cannot be written, carries a finalizer and conditions,
//! resumes a run found `Running`, waits for a busy model, defaults to the Kubernetes
//! backend, and deleting it cancels its run and removes what the run left.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness_core::{CancellationToken, RunStatus};
use harness_k8s::operator::{FINALIZER, Operator, RunFn, RunRequest};
use harness_k8s::testkit::FakeApiServer;
use serde_json::{Value, json};

const API: &str = "apis/harness.dev/v1alpha1";

fn resource(name: &str, model: &str) -> Value {
    json!({
        "apiVersion": "harness.dev/v1alpha1", "kind": "DynamoBenchmark",
        "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}")},
        "spec": {"experiment": {
            "name": name, "model": {"name": model}, "concurrency": [1, 2],
            "benchmark": {"isl_osl": [[8, 8]]},
            "deployment": {"url": "http://m.bench.svc.cluster.local:8000"},
        }},
    })
}

fn get(fake: &FakeApiServer, name: &str) -> Option<Value> {
    fake.objects("dynamobenchmarks")
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
}

fn phase(fake: &FakeApiServer, name: &str) -> Option<String> {
    get(fake, name).and_then(|o| {
        o.pointer("/status/phase")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// Polls `cond` (the operator works in the background); panics with `what` and the
/// requests the server saw after a minute.
async fn until(fake: &FakeApiServer, what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = fake.requests();
    let last = &requests[requests.len().saturating_sub(30)..];
    panic!("timed out waiting for {what}; last requests: {last:#?}");
}

/// What a run was asked: experiment, run id, resume, `backend kind/namespace`, owned.
type Call = (String, String, bool, String, bool);

/// A run function that records its requests and ends when `release` is notified (or at
/// once when `hold` is false).
struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    release: Arc<tokio::sync::Notify>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            calls: Arc::default(),
            release: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn run_fn(&self, hold: bool) -> RunFn {
        let calls = self.calls.clone();
        let release = self.release.clone();
        Arc::new(move |req: RunRequest| {
            let calls = calls.clone();
            let release = release.clone();
            Box::pin(async move {
                calls.lock().expect("lock").push((
                    req.experiment.name.to_string(),
                    req.run_id.clone(),
                    req.resume,
                    format!(
                        "{:?}/{}",
                        req.experiment.backend.kind,
                        req.experiment.backend.namespace()
                    ),
                    req.owner.is_some(),
                ));
                if hold {
                    tokio::select! {
                        () = release.notified() => {}
                        () = req.cancel.cancelled() => return Ok(RunStatus::Cancelled),
                    }
                }
                Ok(RunStatus::Succeeded)
            })
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
}

fn start(fake: &FakeApiServer, run: RunFn) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let operator = Operator::new(fake.client(), "bench", run);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { operator.run(&c).await });
    (cancel, task)
}

/// The status cannot be written for a while (the API server answers 500): the operator
/// retries with backoff and starts the run once, after the `Running` patch succeeded. The
/// end is recorded with conditions and the observed generation; the resource carries the
/// finalizer. The experiment, which names no backend, runs on Kubernetes in the resource's
/// namespace, owned by the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_runs_once_even_when_its_status_cannot_be_written() {
    let fake = FakeApiServer::new();
    fake.insert(API, "dynamobenchmarks", resource("sweep", "llama"));
    fake.fail("PATCH", "/dynamobenchmarks/sweep/status", 500, 3);
    let rec = Recorder::new();
    let (cancel, task) = start(&fake, rec.run_fn(false));
    until(&fake, "Succeeded", || {
        phase(&fake, "sweep").as_deref() == Some("Succeeded")
    })
    .await;
    // More reconciles come (its own status changes); none starts a run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    task.await.expect("operator");
    let calls = rec.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(!calls[0].2, "a new run");
    assert_eq!(calls[0].3, "Kubernetes/bench");
    assert!(calls[0].4, "owned by the resource");
    let o = get(&fake, "sweep").expect("resource");
    assert_eq!(o["metadata"]["finalizers"], json!([FINALIZER]), "{o}");
    let s = &o["status"];
    assert_eq!(s["runId"], calls[0].1.as_str(), "{s}");
    assert_eq!(s["observedGeneration"], o["metadata"]["generation"], "{s}");
    let finished = s["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Finished"))
        .expect("a Finished condition");
    assert_eq!(
        (finished["status"].as_str(), finished["reason"].as_str()),
        (Some("True"), Some("Succeeded"))
    );
}

/// An operator that finds a resource `Running` with a run id (its predecessor stopped
/// mid-run) resumes that run instead of leaving it `Running` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_found_running_is_resumed() {
    let fake = FakeApiServer::new();
    let mut r = resource("sweep", "llama");
    r["metadata"]["finalizers"] = json!([FINALIZER]);
    r["status"] =
        json!({"phase": "Running", "runId": "op-1-abcd", "cellsTotal": 2, "cellsDone": 1});
    fake.insert(API, "dynamobenchmarks", r);
    let rec = Recorder::new();
    let (cancel, task) = start(&fake, rec.run_fn(false));
    until(&fake, "Succeeded", || {
        phase(&fake, "sweep").as_deref() == Some("Succeeded")
    })
    .await;
    cancel.cancel();
    task.await.expect("operator");
    let calls = rec.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].1.as_str(), calls[0].2), ("op-1-abcd", true));
}

/// Two resources benchmarking the same model do not run together: the second waits
/// (phase `Waiting`, reason `WaitingForModel`) and runs when the first is done. Another
/// model runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmarks_of_the_same_model_wait_for_each_other() {
    let fake = FakeApiServer::new();
    fake.insert(API, "dynamobenchmarks", resource("first", "llama"));
    let rec = Recorder::new();
    let (cancel, task) = start(&fake, rec.run_fn(true));
    until(&fake, "first running", || rec.calls().len() == 1).await;
    fake.insert(API, "dynamobenchmarks", resource("second", "llama"));
    fake.insert(API, "dynamobenchmarks", resource("other", "qwen"));
    until(&fake, "second waiting", || {
        phase(&fake, "second").as_deref() == Some("Waiting")
    })
    .await;
    until(&fake, "other running", || {
        rec.calls().iter().any(|c| c.0 == "other")
    })
    .await;
    let o = get(&fake, "second").expect("second");
    assert_eq!(
        o["status"]["conditions"][0]["reason"], "WaitingForModel",
        "{o}"
    );
    assert!(!rec.calls().iter().any(|c| c.0 == "second"));
    // The first (and the other) end; the second starts.
    rec.release.notify_waiters();
    until(&fake, "second running", || {
        rec.calls().iter().any(|c| c.0 == "second")
    })
    .await;
    rec.release.notify_waiters();
    until(&fake, "second done", || {
        rec.release.notify_waiters();
        phase(&fake, "second").as_deref() == Some("Succeeded")
    })
    .await;
    cancel.cancel();
    task.await.expect("operator");
    assert_eq!(phase(&fake, "first").as_deref(), Some("Succeeded"));
}

/// Deleting a running resource cancels its run and removes what is labelled with the run
/// (a Job left in the cluster), then the finalizer lets the resource go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_resource_cancels_its_run_and_cleans_up() {
    let fake = FakeApiServer::new();
    fake.insert(API, "dynamobenchmarks", resource("sweep", "llama"));
    let rec = Recorder::new();
    let (cancel, task) = start(&fake, rec.run_fn(true));
    until(&fake, "running", || rec.calls().len() == 1).await;
    let run_id = rec.calls()[0].1.clone();
    // Something the run created.
    fake.insert(
        "api/v1",
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "left", "namespace": "bench",
                            "labels": {"harness.dev/run": run_id}}}),
    );
    let api: kube::Api<harness_k8s::crd::DynamoBenchmark> =
        kube::Api::namespaced(fake.client(), "bench");
    api.delete("sweep", &Default::default())
        .await
        .expect("delete");
    // Terminating until the operator has cleaned up.
    until(&fake, "gone", || get(&fake, "sweep").is_none()).await;
    assert!(
        fake.objects("configmaps").is_empty(),
        "{:#?}",
        fake.objects("configmaps")
    );
    cancel.cancel();
    task.await.expect("operator");
}

/// An invalid experiment gets phase `Invalid`, the reason, and a condition; it never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_experiment_is_reported_and_never_run() {
    let fake = FakeApiServer::new();
    let mut r = resource("broken", "llama");
    r["spec"]["experiment"]["concurrency"] = json!([]);
    fake.insert(API, "dynamobenchmarks", r);
    // Manifests given as a file of the user's machine, which the operator cannot read.
    let mut r = resource("file", "qwen");
    r["spec"]["experiment"]["deployment"] = json!({"manifests": "graph.yaml"});
    fake.insert(API, "dynamobenchmarks", r);
    let rec = Recorder::new();
    let (cancel, task) = start(&fake, rec.run_fn(false));
    until(&fake, "Invalid", || {
        phase(&fake, "broken").as_deref() == Some("Invalid")
            && phase(&fake, "file").as_deref() == Some("Invalid")
    })
    .await;
    cancel.cancel();
    task.await.expect("operator");
    for (name, says) in [("broken", "concurrency"), ("file", "deployment.manifests")] {
        let o = get(&fake, name).expect("resource");
        assert!(
            o["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{o}"
        );
        assert_eq!(o["status"]["conditions"][0]["reason"], "Invalid");
    }
    assert!(rec.calls().is_empty());
}
