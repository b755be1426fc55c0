//! A run whose model is deployed from Kubernetes manifests (`deployment: {manifests}`),
//! through the runner and `K8sBackend` on the fake API server: the cells see the in-cluster
//! endpoint; a crash-looping model fails the run within seconds with the pod's reason; and
//! teardown removes everything labelled with the run either way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness_core::steps::DeploymentSteps;
use harness_core::{
    Endpoint, Experiment, MemoryStore, Pipeline, RunStatus, StepOutput, step_fn, testkit::run_new,
};
use harness_k8s::K8sBackend;
use harness_k8s::testkit::{FakeApiServer, PodScript};

/// The experiment, with `tests/fixtures/vllm.yaml` as its inline manifests.
fn vllm_experiment() -> String {
    let manifests: String = include_str!("fixtures/vllm.yaml")
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "name: k8s-deploy\n\
         model: {{name: llama}}\n\
         concurrency: [1, 4]\n\
         benchmark: {{isl_osl: [[128, 32]]}}\n\
         backend: {{kind: kubernetes, namespace: bench}}\n\
         deployment:\n  manifests: |\n{manifests}"
    )
}

/// Runs the experiment on `fake` as run `run`; returns the report, the endpoints the cells
/// saw, and the stored `deployed.json`.
async fn run_on(
    fake: &FakeApiServer,
    run: &str,
) -> (
    harness_core::RunReport,
    Vec<String>,
    Option<serde_json::Value>,
) {
    let exp =
        Arc::new(Experiment::from_yaml_str(&vllm_experiment(), "k8s.yaml").expect("experiment"));
    // No grace period: a crash loop fails the workload at once (the readiness timeout is
    // far longer, so a failure that waited for it would not name the crash).
    let backend = Arc::new(
        K8sBackend::new(fake.client(), "bench")
            .label("harness.dev/run", run)
            .fail_fast_grace(Duration::ZERO),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(MemoryStore::new());
    let (report, ctx) = run_new(
        exp.clone(),
        pipeline(&exp, seen.clone()),
        backend,
        store.clone(),
    )
    .await;
    let seen = seen.lock().expect("lock").clone();
    let key = ctx
        .layout()
        .step_artifacts("setup", "deploy")
        .and_then(|k| k.join("deployed.json"))
        .expect("key");
    let deployed = harness_core::ArtifactStoreExt::get_json(store.as_ref(), &key)
        .await
        .ok();
    (report, seen, deployed)
}

/// A pipeline whose cells record the endpoint they were given.
fn pipeline(exp: &Experiment, seen: Arc<Mutex<Vec<String>>>) -> Pipeline {
    Pipeline::builder()
        .deployment(DeploymentSteps::for_experiment(exp, None).expect("deployment steps"))
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
    let fake = FakeApiServer::new();
    let (report, seen, deployed) = run_on(&fake, "r1").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    // What was deployed is kept with the run: one replica of 2 GPUs.
    let deployed = deployed.expect("deployed.json");
    assert_eq!(deployed["gpus"], 2, "{deployed}");
    assert_eq!(
        deployed["objects"][0]["images"][0],
        "vllm/vllm-openai:v0.11.0"
    );
    assert_eq!(
        seen, ["http://vllm.bench.svc.cluster.local:8000"; 2],
        "both cells got the Service's cluster DNS"
    );
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

#[tokio::test]
async fn a_crash_looping_model_fails_the_run_fast_with_the_pods_reason() {
    let fake = FakeApiServer::new();
    fake.on_pod(|_| PodScript::CrashLoop {
        logs: "torch.OutOfMemoryError: CUDA out of memory\n".into(),
    });
    let (report, seen, _) = run_on(&fake, "r2").await;
    assert_ne!(report.status, RunStatus::Succeeded);
    let why = report.setup_error.clone().unwrap_or_default();
    assert!(
        why.contains("CrashLoopBackOff") && why.contains("CUDA out of memory"),
        "{why}"
    );
    assert!(seen.is_empty(), "no cell ran");
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

#[test]
fn manifests_need_the_kubernetes_backend() {
    let local = vllm_experiment().replace("backend: {kind: kubernetes, namespace: bench}\n", "");
    let e = Experiment::from_yaml_str(&local, "k8s.yaml").expect_err("local backend");
    assert!(
        e.to_string().contains("deployment.manifests") && e.to_string().contains("kubernetes"),
        "{e}"
    );
}

/// A third-party tool's container as a per-cell step: `kind: command` with an `image` runs
/// as a Job next to the model, with the cell's parameters in its arguments, and its log is
/// kept.
#[tokio::test]
async fn a_command_step_with_an_image_runs_as_a_job_in_the_cluster() {
    let yaml = "name: tool\nmodel: {name: llama}\nconcurrency: [8]\nbenchmark: {isl_osl: [[128, 32]]}\n\
                backend: {kind: kubernetes, namespace: bench}\n\
                deployment: {url: http://llama-frontend.bench.svc.cluster.local:8000}\n\
                steps:\n  - kind: command\n    name: genai-perf\n    image: nvcr.io/nvidia/tritonserver:25.01-py3-sdk\n    \
                run: [genai-perf, profile, -m, llama, --concurrency, \"{concurrency}\", --url, \"{endpoint}\"]\n";
    let exp = Arc::new(Experiment::from_yaml_str(yaml, "tool.yaml").expect("experiment"));
    let fake = FakeApiServer::new();
    fake.on_pod(|pod| PodScript::Run {
        logs: format!(
            "ran {}\n",
            pod.pointer("/spec/containers/0/command")
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
        exit: Some(0),
    });
    let backend = Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r3"));
    let mut builder = Pipeline::builder();
    // The URL deployment's readiness probe cannot reach a cluster DNS name from here:
    // share the endpoint directly.
    builder = builder.setup(step_fn("endpoint", |cx| async move {
        cx.resources().insert(Endpoint::new(
            "http://llama-frontend.bench.svc.cluster.local:8000",
        )?);
        Ok(StepOutput::new())
    }));
    let built = harness_core::StepRegistry::with_builtins()
        .build_into(&exp, "tool.yaml", builder)
        .expect("steps")
        .build()
        .expect("pipeline");
    let store = Arc::new(MemoryStore::new());
    let (report, run) = run_new(exp.clone(), built, backend, store.clone()).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let posted: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/"))
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let key = run
        .layout()
        .cell_artifact(&report.cells[0].cell, "genai-perf", "output.log")
        .expect("key");
    let log = String::from_utf8_lossy(
        &harness_core::ArtifactStore::get(store.as_ref(), &key)
            .await
            .expect("log"),
    )
    .into_owned();
    assert!(
        log.contains("\"--concurrency\",\"8\"")
            && log.contains("http://llama-frontend.bench.svc.cluster.local:8000"),
        "{log}"
    );
    assert!(fake.all_objects().is_empty());
}

/// Treatments on Kubernetes: each treatment's manifests, with its variables substituted, are
/// applied before its cells and deleted before the next treatment's; the cells of each see
/// only their own deployment; what each deployed is kept under `treatments/<name>/`.
#[tokio::test]
async fn treatments_apply_and_delete_their_manifests_in_turn() {
    let manifests: String = include_str!("fixtures/vllm.yaml")
        .replace("nvidia.com/gpu: 2", "nvidia.com/gpu: \"{gpus}\"")
        .replace(
            "image: vllm/vllm-openai:v0.11.0",
            "image: \"vllm/vllm-openai:{tag}\"",
        )
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    assert!(manifests.contains("{gpus}") && manifests.contains("{tag}"));
    let yaml = format!(
        "name: k8s-treatments\nmodel: {{name: llama}}\nconcurrency: [1, 4]\n\
         benchmark: {{isl_osl: [[128, 32]]}}\nbackend: {{kind: kubernetes, namespace: bench}}\n\
         vars: {{tag: v0.11.0}}\n\
         treatments:\n  tp1: {{vars: {{gpus: 1}}}}\n  tp2: {{vars: {{gpus: 2, tag: v0.12.0}}}}\n\
         deployment:\n  manifests: |\n{manifests}"
    );
    let exp = Arc::new(Experiment::from_yaml_str(&yaml, "k8s.yaml").expect("experiment"));
    let fake = FakeApiServer::new();
    let backend = Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "rt"));
    // Per cell: the treatment, and the images and GPU limits of the Deployments then live.
    type Seen = Vec<(String, Vec<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut runner = harness_core::Runner::new(Pipeline::builder().build().expect("empty"));
    for name in exp.treatment_names() {
        let t = Arc::new(exp.treatment(name).expect("treatment"));
        let (seen, fake) = (seen.clone(), fake.clone());
        let probe = step_fn("probe", move |cx| {
            let (seen, fake) = (seen.clone(), fake.clone());
            async move {
                let live: Vec<String> = fake
                    .all_objects()
                    .iter()
                    .filter(|o| o["kind"] == "Deployment")
                    .map(|o| {
                        let c = &o["spec"]["template"]["spec"]["containers"][0];
                        format!(
                            "{} gpus={}",
                            c["image"].as_str().unwrap_or_default(),
                            c["resources"]["limits"]["nvidia.com/gpu"]
                        )
                    })
                    .collect();
                let treatment = cx.run().treatment().unwrap_or_default().to_owned();
                seen.lock().expect("lock").push((treatment, live));
                Ok(StepOutput::new())
            }
        });
        let pipeline = Pipeline::builder()
            .deployment(DeploymentSteps::for_experiment(&t, None).expect("deployment"))
            .per_cell(probe)
            .build()
            .expect("pipeline");
        runner = runner.treatment(name, t, pipeline);
    }
    let store = Arc::new(MemoryStore::new());
    let run = harness_core::RunContext::new(
        "rt",
        exp.clone(),
        backend,
        store.clone(),
        harness_core::CancellationToken::new(),
    )
    .expect("run");
    let report = runner
        .run(
            &run,
            &exp.plan().expect("plan"),
            harness_core::RunMode::New { input: None },
        )
        .await
        .expect("report");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let seen = seen.lock().expect("lock").clone();
    let one = |t: &str, live: &str| (t.to_owned(), vec![live.to_owned()]);
    assert_eq!(
        seen,
        [
            one("tp1", "vllm/vllm-openai:v0.11.0 gpus=\"1\""),
            one("tp1", "vllm/vllm-openai:v0.11.0 gpus=\"1\""),
            one("tp2", "vllm/vllm-openai:v0.12.0 gpus=\"2\""),
            one("tp2", "vllm/vllm-openai:v0.12.0 gpus=\"2\""),
        ]
    );
    for (name, gpus) in [("tp1", 1), ("tp2", 2)] {
        let key = run
            .layout()
            .step_artifacts(&format!("treatments/{name}/setup"), "deploy")
            .and_then(|k| k.join("deployed.json"))
            .expect("key");
        let deployed: serde_json::Value =
            harness_core::ArtifactStoreExt::get_json(store.as_ref(), &key)
                .await
                .expect("deployed.json");
        assert_eq!(deployed["gpus"], gpus, "{name}: {deployed}");
    }
    assert!(fake.all_objects().is_empty(), "{:#?}", fake.all_objects());
}

/// A cell's Job that outlives the step timeout is deleted when the step is dropped, and the
/// next attempt's Job and ConfigMap (here: the cell run again at once) have names of their
/// own, as the last attempt's may still be terminating.
#[tokio::test]
async fn a_timed_out_cell_deletes_its_job_and_the_retry_does_not_collide() {
    let fake = FakeApiServer::new();
    // The agents never finish.
    fake.on_pod(|_| PodScript::Run {
        logs: "sending load\n".into(),
        exit: None,
    });
    let exp = Arc::new(
        Experiment::from_yaml_str(
            "name: slow\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
             deployment: {url: \"http://m.bench.svc.cluster.local:8000\"}\n\
             backend: {kind: kubernetes, namespace: bench, image: harness:test}\n\
             policy: {step_timeout: 1s}\n",
            "slow.yaml",
        )
        .expect("experiment"),
    );
    let backend = Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", "r1"));
    let pipeline = || {
        Pipeline::builder()
            .setup(step_fn("endpoint", |cx| async move {
                cx.resources()
                    .insert(Endpoint::new("http://m.bench.svc.cluster.local:8000")?);
                Ok(StepOutput::new())
            }))
            .per_cell(harness_k8s::InClusterStep::new("s3://results"))
            .build()
            .expect("pipeline")
    };
    for _ in 0..2 {
        let store = Arc::new(MemoryStore::new());
        let (report, _) = run_new(exp.clone(), pipeline(), backend.clone(), store).await;
        assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    }
    let jobs: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/"))
        .map(|r| r.split('?').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(jobs.len(), 2, "two attempts: {jobs:?}");
    assert_ne!(jobs[0], jobs[1], "each attempt has its own Job");
    // The dropped steps' guards delete the Jobs in the background.
    for _ in 0..200 {
        if fake.objects("jobs").is_empty() && fake.objects("configmaps").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fake.objects("jobs").is_empty(),
        "{:#?}",
        fake.objects("jobs")
    );
    assert!(fake.objects("configmaps").is_empty());
}
