//! An in-cluster sweep through the fake Kubernetes API server: each cell runs as a Job whose
//! pod the fake runs as a local process (`harness agent`, the real binary), writing records
//! and statistics into the run's store; the controlling side is the same pipeline
//! `harness run` builds for `backend: {kind: kubernetes}`. The stored run is then read by
//! `harness show` and `harness report` like a local one.

mod common;

use std::sync::Arc;

use common::*;
use harness_core::{
    Backend, BackendExt, CancellationToken, Experiment, Pipeline, RunContext, RunMode, RunStatus,
    Runner,
};
use harness_k8s::operator::{Operator, RunFn, RunRequest};
use harness_k8s::testkit::{FakeApiServer, PodScript};
use harness_k8s::{InClusterStep, K8sBackend};
use serde_json::json;

/// `harness k8s render <exp> <args>` in `d`, which must succeed; its output.
fn render(d: &std::path::Path, exp: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["k8s", "render", exp.to_str().expect("path")];
    all.extend_from_slice(args);
    let out = harness(d, &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `actual` equals `tests/snapshots/<name>`; `HARNESS_UPDATE_SNAPSHOTS=1` rewrites it.
fn assert_snapshot(name: &str, actual: &str) {
    let snapshot = repo().join("harness-cli/tests/snapshots").join(name);
    if std::env::var_os("HARNESS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, actual).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&snapshot).expect("snapshot (HARNESS_UPDATE_SNAPSHOTS=1)");
    assert_eq!(
        actual, want,
        "{name} changed; HARNESS_UPDATE_SNAPSHOTS=1 to accept"
    );
}

/// A cluster whose Job pods run `harness agent` from this build.
fn cluster() -> FakeApiServer {
    let fake = FakeApiServer::new();
    fake.on_pod(|_| PodScript::Exec {
        program: Some(env!("CARGO_BIN_EXE_harness").into()),
    });
    fake
}

/// [`cluster`] whose pods labelled `app: model` serve (a model server), as those of
/// [`write_model_manifests`] are.
fn cluster_with_a_model() -> FakeApiServer {
    let fake = cluster();
    fake.on_pod(|pod| {
        if pod.pointer("/metadata/labels/app") == Some(&json!("model")) {
            PodScript::Run {
                logs: "serving\n".into(),
                exit: None,
            }
        } else {
            PodScript::Exec {
                program: Some(env!("CARGO_BIN_EXE_harness").into()),
            }
        }
    });
    fake
}

/// Writes `d/model.yaml`: a Deployment `model` (pods labelled `app: model`) and its Service
/// on port 8000.
fn write_model_manifests(d: &std::path::Path) {
    std::fs::write(
        d.join("model.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: model}\n\
         spec:\n  replicas: 1\n  selector: {matchLabels: {app: model}}\n\
         \x20 template:\n    metadata: {labels: {app: model}}\n\
         \x20   spec: {containers: [{name: server, image: vllm:test}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: model}\n\
         spec: {selector: {app: model}, ports: [{port: 8000}]}\n",
    )
    .expect("manifests");
}

/// Serves `fake` over HTTP and writes `d/kubeconfig` naming it (namespace `bench`), for the
/// harness binary's Kubernetes commands: the server (it stops when dropped) and the file.
async fn serve_with_kubeconfig(
    fake: &FakeApiServer,
    d: &std::path::Path,
) -> (harness_k8s::testkit::FakeHttp, std::path::PathBuf) {
    let http = fake.serve().await.expect("serve");
    let kubeconfig = d.join("kubeconfig");
    http.write_kubeconfig(&kubeconfig, "bench")
        .expect("kubeconfig");
    (http, kubeconfig)
}

/// Waits until workload `w` has finished; panics with its log when it failed.
async fn finish(backend: &K8sBackend, w: &harness_core::Workload) {
    let finished = backend.wait_finished(w, &CancellationToken::new()).await;
    let log = String::from_utf8_lossy(&backend.logs(w).await.expect("logs")).into_owned();
    finished.unwrap_or_else(|e| panic!("{e}: {log}"));
}

/// The cells of run `run_id` in the store at `store_url`, as `harness show --json` lists
/// them.
fn stored_cells(d: &std::path::Path, run_id: &str, store_url: &str) -> Vec<serde_json::Value> {
    let shown = harness(d, &["show", run_id, "--store", store_url, "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    v["cells"].as_array().expect("cells").clone()
}

/// The controlling side of an in-cluster run, as `harness run` builds it.
fn in_cluster_pipeline(exp: &Experiment, store_url: &str) -> Pipeline {
    let program = std::path::PathBuf::from(env!("CARGO_BIN_EXE_harness"));
    Pipeline::builder()
        .deployment(
            harness_core::steps::DeploymentSteps::for_experiment(exp, Some(&program))
                .expect("deployment"),
        )
        .per_cell(InClusterStep::new(store_url))
        .build()
        .expect("pipeline")
}

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The mock server as a process on a free port, killed when dropped.
struct Mock(std::process::Child);

impl Mock {
    fn start(ttft_ms: u32) -> (Mock, u16) {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["mock", "--port", &port.to_string(), "--itl-ms", "1"])
            .args(["--ttft-ms", &ttft_ms.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mock");
        (Mock(child), port)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_sweep_is_stored_and_read_like_a_local_run() {
    in_cluster_sweep(1).await;
}

/// Two client pods per cell (an Indexed Job): each sends half the load, the records merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_per_cell_share_the_load_and_their_records_merge() {
    in_cluster_sweep(2).await;
}

async fn in_cluster_sweep(clients: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(5);
    let yaml = format!(
        "name: incluster\n\
         model: {{name: harness-mock}}\n\
         concurrency: [1, 2]\n\
         benchmark: {{isl_osl: [[64, 8]]}}\n\
         deployment: {{url: http://127.0.0.1:{port}, health: /health}}\n\
         backend: {{kind: kubernetes, namespace: bench, image: harness:test, clients: {clients}}}\n\
         load: {{requests: 8}}\n"
    );
    let run_id = "20261128-000000-abcd";
    let (report, fake) = run_in_cluster(d, &yaml, run_id).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let store_url = format!("file://{}", d.join("runs").display());
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");

    // Each cell was a Job in the namespace; every one of them is gone after its cell.
    let posts: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/"))
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
    if clients > 1 {
        assert!(log.contains("==> pod"), "both pods' logs: {log}");
    }
    // The agent scraped the server it benchmarked, by the address it reached it at; with
    // several clients none does (each would count the others' load).
    assert_eq!(
        cell_dir.join("server_metrics.parquet").is_file(),
        clients == 1,
        "server telemetry from the agent"
    );
    if clients == 1 {
        // Its counts of the cell, from its scrape before the first request to the one after
        // the last, agree with the records.
        let t: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cell_dir.join("telemetry.json")).expect("telemetry.json"),
        )
        .expect("json");
        let checks = t["cross_checks"].as_array().cloned().unwrap_or_default();
        assert!(
            checks.len() == 3 && checks.iter().all(|c| c["agrees"] == true),
            "{t}"
        );
        assert_eq!(checks[0]["server"], 8.0, "{t}");
    }

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

/// An experiment of one cell at `concurrency` split between two client pods, against the
/// mock on `port`, whose pods first run `setup` (a shell script; `$JOB_COMPLETION_INDEX`
/// tells the client).
fn two_client_experiment(port: u16, concurrency: u32, setup: &str) -> String {
    format!(
        "name: gate\n\
         model: {{name: harness-mock}}\n\
         concurrency: [{concurrency}]\n\
         benchmark: {{isl_osl: [[32, 16]]}}\n\
         deployment: {{url: http://127.0.0.1:{port}, health: /health}}\n\
         backend: {{kind: kubernetes, namespace: bench, image: harness:test, clients: 2}}\n\
         load: {{requests: 40, warmup_requests: 0, preflight: false}}\n\
         policy: {{retries: 0}}\n\
         steps:\n\
         \x20 - kind: command\n\
         \x20   name: setup\n\
         \x20   run: [sh, -c, '{setup}']\n\
         \x20 - kind: benchmark\n"
    )
}

/// Runs `yaml` as `run_id` in a fake cluster whose pods run this build's `harness agent`,
/// stored under `d/runs`, as `harness run` does for an in-cluster experiment: the report,
/// and the cluster.
async fn run_in_cluster(
    d: &std::path::Path,
    yaml: &str,
    run_id: &str,
) -> (harness_core::RunReport, FakeApiServer) {
    let exp = Arc::new(Experiment::from_yaml_str(yaml, "exp.yaml").expect("experiment"));
    assert!(exp.backend.in_cluster());
    let fake = cluster();
    let backend: Arc<dyn Backend> =
        Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", run_id));
    let store_url = format!("file://{}", d.join("runs").display());
    let store = harness_storage::open(&store_url).expect("store");
    let run = RunContext::new(
        run_id,
        exp.clone(),
        backend,
        store,
        CancellationToken::new(),
    )
    .expect("run");
    let report = Runner::new(in_cluster_pipeline(&exp, &store_url))
        .run(
            &run,
            &exp.plan().expect("plan"),
            RunMode::New {
                input: Some(yaml.to_owned()),
            },
        )
        .await
        .expect("run");
    (report, fake)
}

/// [`run_in_cluster`] for an experiment `gate` of one cell: the report and the cell's folder.
async fn run_one_cell_in_cluster(
    d: &std::path::Path,
    yaml: &str,
) -> (harness_core::RunReport, std::path::PathBuf) {
    let run_id = "20261206-000000-gate";
    let (report, _) = run_in_cluster(d, yaml, run_id).await;
    assert_eq!(report.cells.len(), 1);
    let cell_dir = d
        .join("runs/runs/gate")
        .join(run_id)
        .join("cells")
        .join(report.cells[0].cell.as_str());
    (report, cell_dir)
}

/// Two clients, the second with a setup slower by 3 s (a step before its load): they start
/// together once both are ready, at a time the controlling side sets, so the merged records
/// span the window in which the server received the requests, and the throughput is the
/// real one. (When the clients met before their steps, the fast one was done before the
/// slow one began: the merged duration said 0.41 s of a real 3.4 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_start_together_after_a_slower_setup_and_merge_over_the_real_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(5);
    let yaml = two_client_experiment(
        port,
        2,
        r#"if [ "$JOB_COMPLETION_INDEX" = 1 ]; then sleep 3; fi"#,
    );
    let (report, cell_dir) = run_one_cell_in_cluster(d, &yaml).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let log = std::fs::read_to_string(cell_dir.join("artifacts/in-cluster/agent.log"))
        .expect("agent.log");
    assert!(
        log.contains("setup: ok") && log.contains("benchmark: ok"),
        "{log}"
    );
    // They met under this attempt's token, and were given a start.
    let meetings: Vec<_> = std::fs::read_dir(cell_dir.join("artifacts/in-cluster"))
        .expect("in-cluster artifacts")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("start").is_file())
        .collect();
    assert_eq!(meetings.len(), 1, "{log}");
    // Each left its wall-clock time when ready: the second 3 s after the first.
    let ready_s = |i: u32| {
        let t = std::fs::read_to_string(meetings[0].join(format!("{i}.ready"))).expect("marker");
        t.trim().parse::<f64>().expect("nanoseconds") / 1e9
    };
    assert!(ready_s(1) - ready_s(0) >= 2.9, "the slow setup ran");

    // When the server received the requests, on its own clock.
    let timings: serde_json::Value =
        serde_json::from_str(&http_get(port, "/v1/mock/requests")).expect("timings");
    let received: Vec<f64> = timings["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["received_ns"].as_f64())
        .collect();
    assert_eq!(received.len(), 40, "{timings}");
    let first = received.iter().copied().fold(f64::INFINITY, f64::min);
    let last = received.iter().copied().fold(0.0, f64::max);
    let server_span_s = (last - first) / 1e9;
    // One request at a time per client: the first two arrivals are one of each, so their
    // gap is how far apart the clients started (a figure for docs/PERFORMANCE.md).
    let mut sorted = received.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "start skew between the two clients, on the server's clock: {:.3} ms",
        (sorted[1] - sorted[0]) / 1e6
    );

    // The merged cell measures that window: at least the span of the arrivals (less a
    // quarter second for the clocks), at most it plus a second (the last responses).
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cell_dir.join("stats.json")).expect("stats.json"))
            .expect("json");
    let duration_s = stats["duration_s"].as_f64().expect("duration_s");
    assert!(
        duration_s >= server_span_s - 0.25 && duration_s <= server_span_s + 1.0,
        "merged duration {duration_s:.3} s, the server received the requests over {server_span_s:.3} s"
    );
    let throughput = stats["request_throughput"].as_f64().expect("throughput");
    assert!(
        throughput <= 40.0 / (server_span_s - 0.25).max(0.01),
        "{throughput:.1}/s over a real window of {server_span_s:.3} s"
    );
}

/// Synthetic sessions split between two client pods: each client sends whole sessions under
/// the cell's numbers, so the merged cell counts every session once and whole (with each
/// client numbering its own from 0 they merged into half as many, of four turns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_send_whole_sessions_that_merge_as_one_client_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(5);
    let yaml = two_client_experiment(port, 4, "true") + "workload: {kind: sessions, turns: 2}\n";
    let (report, cell_dir) = run_one_cell_in_cluster(d, &yaml).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cell_dir.join("stats.json")).expect("stats.json"))
            .expect("json");
    assert_eq!(stats["requests"], 40, "{stats}");
    assert_eq!(
        stats["sessions"], 20,
        "40 requests in sessions of 2: {stats}"
    );
    let bytes = std::fs::read(cell_dir.join("records.parquet")).expect("records");
    let batch = harness_analytics::io::from_parquet(bytes.into()).expect("parquet");
    let records = harness_analytics::table::records_from_batch(&batch).expect("records");
    let mut turns: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for r in &records {
        turns
            .entry(r.session.expect("a session"))
            .or_default()
            .push(r.turn.expect("a turn"));
    }
    assert_eq!(turns.len(), 20);
    for (session, mut t) in turns {
        t.sort_unstable();
        assert_eq!(t, [1, 2], "session {session}");
    }
}

/// With one slot for two clients, the second has no share of the load and never comes to
/// the start: its report counts as its arrival, so the first is not held up until
/// `policy.ready_timeout` (then failing) and sends all the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_share_of_the_load_does_not_hold_the_other_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mock, port) = Mock::start(5);
    let yaml = two_client_experiment(port, 1, "true").replace(
        "policy: {retries: 0}",
        "policy: {retries: 0, ready_timeout: 30s}",
    );
    let (report, _) = run_one_cell_in_cluster(dir.path(), &yaml).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.cells[0].metrics.get("requests"), Some(&40.0));
}

/// A client whose setup fails fails the cell, which names the client and the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_setup_fails_fails_the_cell_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mock, port) = Mock::start(5);
    let yaml = two_client_experiment(
        port,
        2,
        r#"if [ "$JOB_COMPLETION_INDEX" = 1 ]; then echo no GPU >&2; exit 3; fi"#,
    );
    let (report, _) = run_one_cell_in_cluster(dir.path(), &yaml).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.cells[0].error.clone().map(|e| e.message);
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("`setup` (client 1)") && e.contains("no GPU")),
        "the failed client and step: {error:?}"
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
    let yaml = render(d, &exp, &["--run-id", "r-1"]);
    let docs = harness_k8s::parse_manifests(&yaml, "render output").expect("valid manifests");
    let kinds: Vec<&str> = docs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    );
    let job = &docs[4];
    assert_eq!(job["metadata"]["namespace"], "bench");
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/x/harness:1");
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "s3-creds");
    // The experiment is a file from the ConfigMap, not an environment variable.
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/harness");
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        docs[3]["metadata"]["name"]
    );
    assert!(c.get("env").is_none(), "{c}");
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
            "run",
            "/etc/harness/experiment.json",
            "--run-id",
            "r-1",
            "--here",
            "--endpoint",
            "http://llama-frontend.bench.svc.cluster.local:8000",
            "--store",
            "s3://results/harness",
            "--no-progress"
        ]
    );
    // Snapshots of the whole output, plain and as an Argo Workflow, catch any other change.
    assert_snapshot("k8s-render.yaml", &yaml);
    assert_snapshot(
        "k8s-argo.yaml",
        &render(d, &exp, &["--run-id", "r-1", "--argo"]),
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

/// What `k8s render` prints, applied to a cluster, creates the run in the store and runs its
/// cells one after another: `harness ls` and `show` see it like a local run. The trace file
/// of the experiment travels in the ConfigMap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_applied_to_a_cluster_make_a_stored_run() {
    rendered_run(1).await;
}

/// The same with two clients per cell: the rendered Job runs the cells as Indexed Jobs of
/// two client pods (it reaches the API server as its service account), which share the
/// trace request by request: each cell sent the trace once, not once per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_with_two_clients_share_the_trace_between_them() {
    rendered_run(2).await;
}

async fn rendered_run(clients: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(1);
    let trace: String = (0..6)
        .map(|i| format!("{{\"timestamp\": {}, \"input_length\": 40, \"output_length\": 4, \"hash_ids\": [{i}]}}\n", i * 20))
        .collect();
    std::fs::write(d.join("trace.jsonl"), trace).expect("trace");
    let exp = d.join("rendered.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: rendered\nmodel: {{name: harness-mock}}\nconcurrency: [1, 2]\nbenchmark: {{isl_osl: [[40, 4]]}}\n\
             deployment: {{url: http://127.0.0.1:{port}, health: /health}}\n\
             backend: {{kind: kubernetes, namespace: bench, image: harness:test, node_selector: {{pool: cpu}},\n\
               clients: {clients}}}\n\
             workload: {{kind: trace, path: trace.jsonl, block_tokens: 40}}\n\
             load: {{preflight: false}}\n"
        ),
    )
    .expect("write");
    let store_url = format!("file://{}", d.join("runs").display());
    let yaml = render(d, &exp, &["--run-id", "r-rendered", "--store", &store_url]);
    let fake = cluster();
    // Pods reach the API server over HTTP.
    let _http = fake.serve().await.expect("serve");
    let backend = K8sBackend::new(fake.client(), "bench");
    let w = backend
        .launch(&harness_core::WorkloadSpec::manifests("rendered", &yaml))
        .await
        .expect("apply");
    let job = &fake.objects("jobs")[0];
    assert_eq!(
        job["spec"]["template"]["spec"]["nodeSelector"]["pool"],
        "cpu"
    );
    finish(&backend, &w).await;
    let cells = stored_cells(d, "r-rendered", &store_url);
    assert_eq!(cells.len(), 2, "{cells:?}");
    for c in &cells {
        assert_eq!(c["status"], "succeeded", "{c}");
        assert_eq!(c["metrics"]["requests"], 6.0, "the trace once: {c}");
    }
    // With two clients, each cell was a Job of its own (Indexed when it had two clients).
    let cell_jobs = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/harness-r-rendered-c")
        })
        .count();
    assert_eq!(cell_jobs, if clients > 1 { 2 } else { 0 });
    let listed = harness(d, &["ls", "--store", &store_url]);
    assert!(
        text(&listed.stdout).contains("r-rendered"),
        "{}",
        text(&listed.stdout)
    );
    backend.teardown(&w).await.expect("teardown");
}

/// An experiment that deploys its model (`deployment.manifests`, a file) rendered without
/// an endpoint: the rendered pod deploys the manifests as the rendered service account,
/// runs each cell as a Job next to the model, against `deployment.url` (what stands in
/// front of the model: the mock here, as this machine cannot resolve the cluster's Service
/// names), and deletes the model at the end; the run is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_deploy_the_model_measure_it_and_tear_it_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(1);
    write_model_manifests(d);
    let exp = d.join("deployed.yaml");
    std::fs::write(
        &exp,
        "name: deployed\nmodel: {name: harness-mock}\nconcurrency: [1, 2]\n\
         benchmark: {isl_osl: [[32, 4]]}\n\
         deployment: {manifests: model.yaml, url: 'http://127.0.0.1:{port}'}\n\
         backend: {kind: kubernetes, namespace: bench, image: harness:test}\n\
         load: {requests: 6, preflight: false}\n"
            .replace("{port}", &port.to_string()),
    )
    .expect("write");
    let store_url = format!("file://{}", d.join("runs").display());
    let yaml = render(d, &exp, &["--run-id", "r-deployed", "--store", &store_url]);
    let docs = harness_k8s::parse_manifests(&yaml, "render output").expect("yaml");
    let stored = docs[3]["data"]["experiment.json"].as_str().expect("data");
    assert!(stored.contains("kind: Deployment"), "inline: {stored}");
    let pod = &docs[4]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "harness");
    let args = pod["containers"][0]["command"].to_string();
    assert!(
        !args.contains("--endpoint") && !args.contains("--here"),
        "{args}"
    );

    let fake = cluster_with_a_model();
    let _http = fake.serve().await.expect("serve");
    let backend = K8sBackend::new(fake.client(), "bench");
    let w = backend
        .launch(&harness_core::WorkloadSpec::manifests("deployed", &yaml))
        .await
        .expect("apply");
    finish(&backend, &w).await;

    let cells = stored_cells(d, "r-deployed", &store_url);
    assert_eq!(cells.len(), 2, "{cells:?}");
    for c in &cells {
        assert_eq!(c["status"], "succeeded", "{c}");
        assert_eq!(c["metrics"]["requests"], 6.0, "{c}");
    }
    // The model was created labelled with the run, by the rendered service account's pod,
    // and is gone; each cell ran as a Job of its own.
    let requests = fake.requests();
    let created = |path: &str| {
        requests
            .iter()
            .any(|r| r.starts_with(&format!("PATCH {path}")))
    };
    assert!(
        created("/apis/apps/v1/namespaces/bench/deployments/model"),
        "{requests:#?}"
    );
    assert!(created("/api/v1/namespaces/bench/services/model"));
    assert!(fake.objects("deployments").is_empty(), "torn down");
    assert!(fake.objects("services").is_empty(), "torn down");
    let cell_jobs = requests
        .iter()
        .filter(|r| {
            r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/harness-r-deployed-c")
        })
        .count();
    assert_eq!(cell_jobs, 2, "{requests:#?}");
    backend.teardown(&w).await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reconciles_a_dynamo_benchmark_to_a_completed_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(2);
    let fake = cluster();
    let store_url = format!("file://{}", d.join("runs").display());
    let experiment = json!({
        "name": "operator",
        "model": {"name": "harness-mock"},
        "concurrency": [1, 2, 4],
        "benchmark": {"isl_osl": [[32, 4]]},
        "deployment": {"url": format!("http://127.0.0.1:{port}"), "health": "/health"},
        "backend": {"kind": "kubernetes", "namespace": "bench", "image": "harness:test"},
        "load": {"requests": 4},
    });
    let resource = |name: &str, experiment: serde_json::Value| {
        json!({
            "apiVersion": "harness.dev/v1alpha1", "kind": "DynamoBenchmark",
            "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}")},
            "spec": {"experiment": experiment, "store": store_url},
        })
    };
    fake.insert(
        "apis/harness.dev/v1alpha1",
        "dynamobenchmarks",
        resource("sweep", experiment),
    );
    // No concurrency or request rate: invalid, with the reason in the status.
    fake.insert(
        "apis/harness.dev/v1alpha1",
        "dynamobenchmarks",
        resource(
            "broken",
            json!({"name": "broken", "model": {"name": "m"}, "benchmark": {"isl_osl": [[8, 8]]}}),
        ),
    );

    // The run function: what `harness operator` does, on this fake cluster.
    let f = fake.clone();
    let run: RunFn = std::sync::Arc::new(move |req: RunRequest| {
        let f = f.clone();
        Box::pin(async move {
            let exp = Arc::new(req.experiment);
            let url = req.store.clone().expect("the resource names a store");
            let store = harness_storage::open(&url).expect("store");
            let backend: Arc<dyn Backend> =
                Arc::new(K8sBackend::new(f.client(), "bench").label("harness.dev/run", "op"));
            let run = RunContext::new(
                req.run_id,
                exp.clone(),
                backend,
                store,
                CancellationToken::new(),
            )?;
            let report = Runner::new(in_cluster_pipeline(&exp, &url))
                .reporter(req.reporter)
                .run(&run, &exp.plan()?, RunMode::New { input: None })
                .await?;
            Ok(report.status)
        })
    });
    let operator = Operator::new(fake.client(), "bench", run);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move { operator.run(&stop).await });

    let status = |name: &str| {
        fake.objects("dynamobenchmarks")
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .map(|o| o["status"].clone())
            .expect("resource")
    };
    let done = |name: &str| {
        status(name)["phase"]
            .as_str()
            .is_some_and(|p| p != "Running" && p != "Waiting")
    };
    for _ in 0..1200 {
        if done("sweep") && done("broken") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cancel.cancel();
    task.await.expect("operator");
    let s = status("sweep");
    assert_eq!(s["phase"], "Succeeded", "{s}");
    assert_eq!(
        (s["cellsTotal"].as_u64(), s["cellsDone"].as_u64()),
        (Some(3), Some(3)),
        "{s}"
    );
    assert_eq!(s["cellsFailed"], 0);
    let run_id = s["runId"].as_str().expect("run id").to_owned();
    // Progress was written as the cells finished, not only at the end.
    let patches = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.starts_with(
                "PATCH /apis/harness.dev/v1alpha1/namespaces/bench/dynamobenchmarks/sweep/status",
            )
        })
        .count();
    assert!(patches >= 5, "Running, 3 cells, the end: {patches}");
    let b = status("broken");
    assert_eq!(b["phase"], "Invalid", "{b}");
    assert!(
        b["message"]
            .as_str()
            .is_some_and(|m| m.contains("concurrency")),
        "{b}"
    );

    // The run is in the store like any other.
    let shown = harness(d, &["show", &run_id, "--store", &store_url, "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(v["cells"].as_array().map(Vec::len), Some(3));
}

#[test]
fn the_helm_chart_carries_the_generated_crd_and_the_same_rbac() {
    let out = harness(&repo(), &["k8s", "crd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let chart = repo().join("deploy/helm/harness");
    let crd = std::fs::read_to_string(chart.join("crds/dynamobenchmarks.harness.dev.yaml"))
        .expect("chart CRD");
    assert_eq!(
        text(&out.stdout).trim_end(),
        crd.trim_end(),
        "the chart's CRD differs from the code's: harness k8s crd > deploy/helm/harness/crds/dynamobenchmarks.harness.dev.yaml"
    );
    // The rules (the template's plain YAML part) are those `k8s render` prints.
    let role = std::fs::read_to_string(chart.join("templates/role.yaml")).expect("role");
    let rules = &role[role.find("rules:").expect("rules")..];
    let rules = &harness_k8s::parse_manifests(
        &format!("apiVersion: v1\nkind: Role\nmetadata: {{name: r}}\n{rules}"),
        "role.yaml",
    )
    .expect("rules yaml")[0];
    let rbac = harness_k8s::render::rbac("x");
    assert_eq!(
        rules["rules"], rbac[1]["rules"],
        "chart and `k8s render` grant the same"
    );
    let operator =
        std::fs::read_to_string(chart.join("templates/operator.yaml")).expect("operator");
    assert!(operator.contains(r#"command: ["harness", "operator", "--namespace""#));
    // One operator at a time: the old pod goes before the new one starts.
    assert!(operator.contains("type: Recreate"), "{operator}");
    // Every object is named and labelled through the helpers, so two releases in one
    // namespace do not collide, and carries the standard labels.
    let helpers = std::fs::read_to_string(chart.join("templates/_helpers.tpl")).expect("helpers");
    for label in [
        "helm.sh/chart",
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
    ] {
        assert!(helpers.contains(label), "{label}");
    }
    for t in [
        "operator.yaml",
        "role.yaml",
        "rolebinding.yaml",
        "serviceaccount.yaml",
    ] {
        let text = std::fs::read_to_string(chart.join("templates").join(t)).expect("template");
        assert!(text.contains(r#"include "harness.labels""#), "{t}");
        assert!(!text.contains("name: harness\n"), "{t}: a fixed name");
    }
    assert!(chart.join("templates/NOTES.txt").is_file());
}

/// The chart as helm renders it (helm 4, from `scripts/test-deps.sh`): it lints clean, and
/// two releases in one namespace, one with its values changed, pass the Kubernetes 1.33
/// schemas (strict), do not collide, carry the standard labels and run one operator at a
/// time under the `restricted` Pod Security Standard.
#[test]
fn the_helm_chart_renders_two_releases_that_pass_the_schemas_and_do_not_collide() {
    let helm = deps().join("helm/helm");
    assert!(
        helm.is_file(),
        "{} is missing: run scripts/test-deps.sh",
        helm.display()
    );
    let chart = repo().join("deploy/helm/harness");
    let lint = std::process::Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(&chart)
        .output()
        .expect("helm lint");
    assert!(lint.status.success(), "{}", text(&lint.stdout));
    let dir = tempfile::tempdir().expect("tempdir");
    let template = |release: &str, sets: &[&str]| {
        let mut cmd = std::process::Command::new(&helm);
        cmd.args(["template", release]).arg(&chart).args([
            "--namespace",
            "bench",
            "--include-crds",
        ]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("helm template");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let path = dir.path().join(format!("{release}.yaml"));
        std::fs::write(&path, &out.stdout).expect("write");
        (path, text(&out.stdout))
    };
    let (one_file, one) = template("one", &[]);
    let (two_file, two) = template(
        "two",
        &[
            "envSecret=s3-creds",
            "serviceAccount.create=false",
            "serviceAccount.name=bench-operator",
            "nodeSelector.pool=cpu",
            "imagePullSecrets[0].name=regcred",
            "image.tag=0.2.0",
        ],
    );
    let python = deps().join("k8s-schemas/bin/python");
    let out = std::process::Command::new(&python)
        .arg(repo().join("scripts/validate-manifests.py"))
        .args([&one_file, &two_file])
        .output()
        .expect("the validator runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let objects = |yaml: &str| harness_k8s::parse_manifests(yaml, "helm template").expect("yaml");
    let named = |objs: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        objs.iter()
            .filter(|o| o["kind"] != "CustomResourceDefinition")
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect()
    };
    let (one, two) = (objects(&one), objects(&two));
    assert!(
        named(&one).is_disjoint(&named(&two)),
        "{:?} and {:?} collide",
        named(&one),
        named(&two)
    );
    let kinds: Vec<&str> = one.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    for o in one
        .iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
    {
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/instance"], "one", "{o}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{o}");
        assert!(labels["helm.sh/chart"].is_string(), "{o}");
    }
    let deployment = |objs: &[serde_json::Value]| {
        objs.iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("the operator")
            .clone()
    };
    let d1 = deployment(&one);
    assert_eq!(d1["spec"]["strategy"]["type"], "Recreate");
    let pod = &d1["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["command"][1], "operator");
    // The second release's values reach its pod; it makes no service account of its own.
    let d2 = deployment(&two);
    let pod = &d2["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "bench-operator");
    assert_eq!(pod["nodeSelector"]["pool"], "cpu");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
    assert!(
        pod["containers"][0]["image"]
            .as_str()
            .is_some_and(|i| i.ends_with(":0.2.0")),
        "{pod}"
    );
    assert_eq!(
        pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "s3-creds"
    );
    assert!(!two.iter().any(|o| o["kind"] == "ServiceAccount"));
}

#[test]
fn the_crd_schema_accepts_the_example_and_rejects_broken_specs() {
    let text = std::fs::read_to_string(repo().join("deploy/examples/dynamobenchmark.yaml"))
        .expect("example");
    let example = harness_k8s::parse_manifests(&text, "example").expect("yaml")[0].clone();
    harness_k8s::crd::check(&example).expect("the example is valid");
    let typed: harness_k8s::crd::DynamoBenchmark =
        serde_json::from_value(example.clone()).expect("typed");
    let exp = Experiment::from_json(&typed.spec.experiment, "example").expect("experiment");
    assert_eq!(exp.plan().expect("plan").len(), 8);

    for (pointer, value, expect) in [
        (
            "/spec/experiment/model",
            json!(null),
            ".spec.experiment.model: must not be null",
        ),
        (
            "/spec/experiment/concurrency",
            json!([0, 8]),
            ".spec.experiment.concurrency[0]: 0 is below",
        ),
        (
            "/spec/experiment",
            json!("sweep.yaml"),
            ".spec.experiment: expected object",
        ),
        (
            "/spec/experiment/request_rate",
            json!([0.0]),
            ".spec.experiment.request_rate[0]: 0 is below",
        ),
    ] {
        let mut broken = example.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        broken.pointer_mut(parent).expect("parent")[key] = value;
        let e = harness_k8s::crd::check(&broken).expect_err(expect);
        assert!(e.starts_with(expect), "{expect}: {e}");
    }
    let mut no_spec = example.clone();
    no_spec.as_object_mut().expect("object").remove("spec");
    assert_eq!(
        harness_k8s::crd::check(&no_spec),
        Err(".spec: required".into())
    );
}

/// The rendered Argo Workflow, executed task by task on this machine in the order Argo
/// would (the commands exactly as rendered; the experiment file where the ConfigMap is
/// mounted): it produces a complete run that `harness show` and `report` read.
#[test]
fn the_argo_workflows_tasks_run_in_order_make_a_complete_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_mock, port) = Mock::start(2);
    let store_url = format!("file://{}", d.join("runs").display());
    let exp = d.join("argo.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: argo\nmodel: {{name: harness-mock}}\nconcurrency: [1, 2]\n\
             benchmark: {{isl_osl: [[32, 4]]}}\n\
             deployment: {{url: http://127.0.0.1:{port}, health: /health}}\n\
             backend: {{kind: kubernetes, namespace: bench, image: harness:test}}\n\
             load: {{requests: 4}}\nstorage: {{url: {store_url}}}\n"
        ),
    )
    .expect("write");
    let argo = render(d, &exp, &["--argo", "--run-id", "argo-1"]);
    let docs = harness_k8s::parse_manifests(&argo, "argo").expect("yaml");
    let kinds: Vec<&str> = docs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Workflow"
        ]
    );
    let (config, wf) = (&docs[3], &docs[4]);
    assert_eq!(wf["spec"]["onExit"], "finish");
    // Argo's executor may report task results; the workflow is bounded and collected.
    assert!(
        docs[1]["rules"].to_string().contains("workflowtaskresults"),
        "{}",
        docs[1]["rules"]
    );
    assert_eq!(
        wf["spec"]["serviceAccountName"],
        docs[0]["metadata"]["name"]
    );
    assert!(
        wf["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );
    assert_eq!(wf["spec"]["podGC"]["strategy"], "OnPodSuccess");
    assert!(wf["spec"]["ttlStrategy"]["secondsAfterSuccess"].is_u64());
    let template = |name: &str| argo_template(wf, name);
    let tasks = argo_tasks(wf);
    assert_eq!(tasks.len(), 3, "begin and one task per cell");
    assert_eq!(tasks[2]["depends"], "cell-0.Succeeded || cell-0.Failed");

    // The ConfigMap's experiment where the workflow mounts it.
    let mounted = d.join("experiment.json");
    std::fs::write(
        &mounted,
        config["data"]["experiment.json"].as_str().expect("data"),
    )
    .expect("write");
    let command =
        |t: &serde_json::Value, task: Option<&serde_json::Value>| argo_command(t, task, &mounted);
    let run = |args: Vec<String>| run_task(d, &args, &[]);
    run(command(&template("begin"), None));
    let shown = harness(d, &["show", "argo-1", "--store", &store_url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(
        v["manifest"]["status"], "running",
        "after begin: {}",
        v["manifest"]
    );
    for task in &tasks[1..] {
        // One client: the cell runs in the task's pod, against the model's URL.
        let args = command(&template("cell"), Some(task));
        assert!(args.contains(&"--here".to_owned()), "{args:?}");
        assert!(
            args.contains(&format!("http://127.0.0.1:{port}")),
            "{args:?}"
        );
        run(args);
    }
    run(command(&template("report"), None));
    // The cleanup task runs harness' own image, not a third party's.
    let cleanup = template("cleanup");
    assert_eq!(cleanup["container"]["image"], "harness:test");
    assert_eq!(
        command(&cleanup, None),
        ["k8s", "cleanup", "--run", "argo-1", "--namespace", "bench"]
    );

    let shown = harness(d, &["show", "argo-1", "--store", &store_url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(v["manifest"]["status"], "succeeded", "{}", v["manifest"]);
    let cells = v["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 2);
    assert!(
        cells.iter().all(|c| c["metrics"]["requests"] == 4.0),
        "{cells:?}"
    );
    assert!(d.join("runs/runs/argo/argo-1/report/index.html").is_file());

    // A model the workflow cannot reach nor deploy in the cluster is refused.
    let local = exp.with_extension("local.yaml");
    std::fs::write(
        &local,
        "name: argo\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[1, 1]]}\n\
         backend: {kind: kubernetes}\ndeployment: {command: [vllm, serve, m], port: 8000}\n",
    )
    .expect("write");
    let out = harness(
        d,
        &["k8s", "render", local.to_str().expect("path"), "--argo"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("deployment.url") && stderr.contains("deployment.manifests"),
        "{stderr}"
    );
}

/// The template `name` of Argo Workflow `wf`.
fn argo_template(wf: &serde_json::Value, name: &str) -> serde_json::Value {
    wf["spec"]["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("template {name}"))
        .clone()
}

/// The tasks of Argo Workflow `wf`'s DAG (`sweep`), in order.
fn argo_tasks(wf: &serde_json::Value) -> Vec<serde_json::Value> {
    argo_template(wf, "sweep")["dag"]["tasks"]
        .as_array()
        .expect("tasks")
        .clone()
}

/// The command of Argo template `t` as this build runs it: the experiment where the
/// ConfigMap's copy is (`mounted`), and `task`'s arguments filled in.
fn argo_command(
    t: &serde_json::Value,
    task: Option<&serde_json::Value>,
    mounted: &std::path::Path,
) -> Vec<String> {
    let params: Vec<(String, String)> = task
        .and_then(|t| t["arguments"]["parameters"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    t["container"]["command"]
        .as_array()
        .expect("command")
        .iter()
        .skip(1) // `harness`: this build runs them
        .filter_map(|a| a.as_str())
        .map(|a| {
            let mut a = a.replace(
                harness_k8s::render::EXPERIMENT_PATH,
                mounted.to_str().expect("path"),
            );
            for (name, value) in &params {
                a = a.replace(&format!("{{{{inputs.parameters.{name}}}}}"), value);
            }
            a
        })
        .collect()
}

/// Runs `harness args` in `d` with `env`, as a workflow's task does; it must succeed. Its
/// output.
fn run_task(d: &std::path::Path, args: &[String], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = harness_with_env(d, &refs, env);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The rendered Argo Workflow of a model it deploys itself (`deployment.manifests`, a file)
/// with two clients per cell, its tasks run in order by this build's binary against the
/// fake API server over HTTP (a kubeconfig names it): `deploy` applies the manifests
/// labelled with the run and hands their endpoint to the cells; each `cell` runs as an
/// Indexed Job of two client pods (their records merged); `cleanup` deletes the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argo_workflow_deploys_the_model_and_runs_several_clients_per_cell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_owned();
    let (_mock, port) = Mock::start(2);
    let fake = cluster_with_a_model();
    let (_http, kubeconfig) = serve_with_kubeconfig(&fake, &d).await;
    write_model_manifests(&d);
    let store_url = format!("file://{}", d.join("runs").display());
    let exp = d.join("argo.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: argo\nmodel: {{name: harness-mock}}\nconcurrency: [2]\n\
             benchmark: {{isl_osl: [[32, 4]]}}\n\
             deployment: {{manifests: {}}}\n\
             backend: {{kind: kubernetes, namespace: bench, image: harness:test, clients: 2}}\n\
             load: {{requests: 8}}\nstorage: {{url: {store_url}}}\n",
            d.join("model.yaml").display()
        ),
    )
    .expect("write");
    let argo = render(&d, &exp, &["--argo", "--run-id", "argo-2"]);
    let docs = harness_k8s::parse_manifests(&argo, "argo").expect("yaml");
    let (config, wf) = (&docs[3], &docs[4]);
    let template = |name: &str| argo_template(wf, name);
    let tasks = argo_tasks(wf);
    let names: Vec<&str> = tasks.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["begin", "deploy", "cell-0"]);
    assert_eq!(tasks[2]["depends"], "deploy");
    // The manifests travel inline in the ConfigMap's experiment.
    let mounted = d.join("experiment.json");
    let stored = config["data"]["experiment.json"].as_str().expect("data");
    assert!(stored.contains("kind: Deployment"), "{stored}");
    std::fs::write(&mounted, stored).expect("write");

    let (begin, deploy, cell, cleanup) = (
        argo_command(&template("begin"), None, &mounted),
        argo_command(&template("deploy"), Some(&tasks[1]), &mounted),
        template("cell"),
        argo_command(&template("cleanup"), None, &mounted),
    );
    let (workdir, kc) = (d.clone(), kubeconfig.clone());
    let deployed = tokio::task::spawn_blocking(move || {
        let env = [("KUBECONFIG", kc.as_os_str())];
        run_task(&workdir, &begin, &[]);
        // The deploy task's output parameter is read from the file it names.
        let deploy = deploy
            .into_iter()
            .map(|a| {
                a.replace(
                    "/tmp/endpoint",
                    workdir.join("endpoint").to_str().expect("path"),
                )
            })
            .collect::<Vec<_>>();
        run_task(&workdir, &deploy, &env);
        std::fs::read_to_string(workdir.join("endpoint")).expect("endpoint")
    })
    .await
    .expect("deploy");
    assert_eq!(deployed, "http://model.bench.svc.cluster.local:8000");
    let labelled = |kind: &str| {
        fake.objects(kind)
            .into_iter()
            .filter(|o| o.pointer("/metadata/labels/harness.dev~1run") == Some(&json!("argo-2")))
            .count()
    };
    assert_eq!(
        labelled("deployments"),
        1,
        "the model, labelled with the run"
    );
    assert_eq!(labelled("services"), 1);

    // The cell task creates and waits for its Indexed Job (not `--here`). This machine
    // cannot resolve the cluster's DNS: the Service's name stands for the mock here.
    let mut task = tasks[2].clone();
    task["arguments"]["parameters"][1]["value"] = json!(format!("http://127.0.0.1:{port}"));
    let args = argo_command(&cell, Some(&task), &mounted);
    assert!(!args.contains(&"--here".to_owned()), "{args:?}");
    let workdir = d.clone();
    tokio::task::spawn_blocking(move || {
        let env = [("KUBECONFIG", kubeconfig.as_os_str())];
        run_task(&workdir, &args, &env);
        run_task(&workdir, &cleanup, &env);
    })
    .await
    .expect("cell and cleanup");
    let jobs: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/"))
        .collect();
    assert_eq!(jobs.len(), 1, "one Job for the cell: {jobs:?}");
    assert_eq!(
        labelled("deployments") + labelled("services"),
        0,
        "cleaned up"
    );

    let shown = harness(&d, &["show", "argo-2", "--store", &store_url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    let cell = &v["cells"][0];
    assert_eq!(cell["metrics"]["requests"], 8.0, "{v}");
    assert_eq!(cell["metrics"]["clients"], 2.0, "{v}");
}

/// Treatments on a cluster with cells in Jobs: each treatment's Jobs get the treatment's
/// resolved experiment and the run's cell ids (`treatment=<name>,...`), measure the
/// treatment's own deployment, and write under the run's cell folders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn treatments_run_their_cells_in_cluster_against_their_own_deployment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_fast, fast) = Mock::start(2);
    let (_slow, slow) = Mock::start(40);
    let yaml = format!(
        "name: incluster-treatments\n\
         model: {{name: harness-mock}}\n\
         concurrency: [1]\n\
         benchmark: {{isl_osl: [[64, 8]]}}\n\
         deployment: {{url: http://127.0.0.1:{fast}, health: /health}}\n\
         backend: {{kind: kubernetes, namespace: bench, image: harness:test}}\n\
         load: {{requests: 4}}\n\
         treatments:\n  fast: {{}}\n  slow: {{deployment: {{url: http://127.0.0.1:{slow}}}}}\n"
    );
    let exp = Arc::new(Experiment::from_yaml_str(&yaml, "t.yaml").expect("experiment"));
    let fake = cluster();
    let run_id = "20261206-000000-abcd";
    let backend: Arc<dyn Backend> =
        Arc::new(K8sBackend::new(fake.client(), "bench").label("harness.dev/run", run_id));
    let store_url = format!("file://{}", d.join("runs").display());
    let store = harness_storage::open(&store_url).expect("store");
    let mut runner = Runner::new(Pipeline::builder().build().expect("empty"));
    for name in exp.treatment_names() {
        let t = Arc::new(exp.treatment(name).expect("treatment"));
        assert!(t.backend.in_cluster());
        let pipeline = in_cluster_pipeline(&t, &store_url);
        runner = runner.treatment(name, t, pipeline);
    }
    let run = RunContext::new(
        run_id,
        exp.clone(),
        backend,
        store,
        CancellationToken::new(),
    )
    .expect("run");
    let report = runner
        .run(
            &run,
            &exp.plan().expect("plan"),
            RunMode::New { input: None },
        )
        .await
        .expect("run");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let ttft = |id: &str| {
        report
            .cells
            .iter()
            .find(|c| c.cell.as_str() == id)
            .and_then(|c| c.metrics.get("ttft.p50").copied())
            .unwrap_or_else(|| panic!("{id}: {report:#?}"))
    };
    let (f, s) = (
        ttft("treatment=fast,concurrency=1,isl=64,osl=8"),
        ttft("treatment=slow,concurrency=1,isl=64,osl=8"),
    );
    assert!(f >= 2.0 && s >= 40.0 && f < s, "fast {f} ms, slow {s} ms");
    let records = d
        .join("runs/runs/incluster-treatments")
        .join(run_id)
        .join("cells/treatment=slow,concurrency=1,isl=64,osl=8/records.parquet");
    assert!(records.is_file(), "{}", records.display());
    assert!(fake.objects("jobs").is_empty() && fake.objects("configmaps").is_empty());
}

/// Everything harness renders for a cluster passes the Kubernetes 1.33 schemas, strictly
/// (an unknown field is an error), and the Argo Workflow passes Argo's own models:
/// `k8s render` (RBAC, ConfigMap, Job), `k8s render --argo`, `k8s crd`, and a cell's Job
/// with every scheduling field and several clients. A broken copy is refused, so the
/// validator is known to look.
#[test]
fn rendered_manifests_pass_the_kubernetes_and_argo_schemas() {
    let python = deps().join("k8s-schemas/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test-deps.sh",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let exp_file = d.join("k8s.yaml");
    let yaml = "name: render\nmodel: {name: llama}\nconcurrency: [1, 8]\nbenchmark: {isl_osl: [[128, 32]]}\n\
         deployment: {url: http://llama-frontend.bench.svc.cluster.local:8000}\n\
         backend: {kind: kubernetes, namespace: bench, image: ghcr.io/x/harness:1, env_secret: s3-creds,\n\
           clients: 2, service_account: bench-agent, image_pull_secrets: [regcred],\n\
           node_selector: {pool: gpu}, resources: {requests: {cpu: 4, memory: 2Gi}, limits: {memory: 2Gi}},\n\
           tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}],\n\
           affinity: {podAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 50,\n\
             podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: llama}}}}]}}}\n\
         storage: {url: s3://results/harness}\n";
    std::fs::write(&exp_file, yaml).expect("write");
    // The same, deploying its model: the workflow's deploy task hands on its endpoint.
    let deploying = d.join("deploying.yaml");
    std::fs::write(
        d.join("model.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: llama}\n\
         spec: {selector: {matchLabels: {app: llama}}, template: {metadata: {labels: {app: llama}},\n\
         \x20 spec: {containers: [{name: vllm, image: vllm/vllm-openai}]}}}\n",
    )
    .expect("write");
    std::fs::write(
        &deploying,
        yaml.replace(
            "deployment: {url: http://llama-frontend.bench.svc.cluster.local:8000}",
            "deployment: {manifests: model.yaml}",
        ),
    )
    .expect("write");
    let mut files = Vec::new();
    for (name, exp, args) in [
        ("render.yaml", &exp_file, vec!["--run-id", "r-1"]),
        // Several clients per cell, then one (the cell's steps in the task's pod).
        ("argo.yaml", &exp_file, vec!["--run-id", "r-1", "--argo"]),
        (
            "argo-one.yaml",
            &exp_file,
            vec!["--run-id", "r-1", "--argo", "--set", "backend.clients=1"],
        ),
        (
            "argo-deploy.yaml",
            &deploying,
            vec!["--run-id", "r-1", "--argo"],
        ),
    ] {
        std::fs::write(d.join(name), render(d, exp, &args)).expect("write");
        files.push(d.join(name));
    }
    assert!(
        std::fs::read_to_string(d.join("argo-deploy.yaml"))
            .expect("read")
            .contains("tasks.deploy.outputs.parameters.endpoint"),
        "the cells take the deploy task's endpoint"
    );
    let crd = harness(d, &["k8s", "crd"]);
    assert!(crd.status.success(), "{}", text(&crd.stderr));
    std::fs::write(d.join("crd.yaml"), &crd.stdout).expect("write");
    files.push(d.join("crd.yaml"));
    let exp = Experiment::from_yaml_str(yaml, "k8s.yaml").expect("experiment");
    let plan = exp.plan().expect("plan");
    let cell = harness_k8s::incluster::cell_job_manifests(&harness_k8s::incluster::CellJob {
        run_id: "r-1",
        experiment: &exp,
        cell: &plan.cells()[1],
        endpoint: "http://llama-frontend.bench.svc.cluster.local:8000",
        store_url: "s3://results/harness",
        attempt: "a1b2c3",
        workload_file: Some("{}\n"),
    })
    .expect("cell job");
    std::fs::write(
        d.join("cell.yaml"),
        harness_k8s::incluster::to_yaml(&cell).expect("yaml"),
    )
    .expect("write");
    files.push(d.join("cell.yaml"));
    let validate = |paths: &[std::path::PathBuf]| {
        std::process::Command::new(&python)
            .arg(repo().join("scripts/validate-manifests.py"))
            .args(paths)
            .output()
            .expect("the validator runs")
    };
    let out = validate(&files);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // A field the schema does not know, in the Job and in the Workflow, is refused.
    let broken = d.join("broken.yaml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(d.join("cell.yaml"))
            .expect("read")
            .replace("activeDeadlineSeconds", "activeDeadlineSecond")
            + "---\n"
            + &std::fs::read_to_string(d.join("argo.yaml"))
                .expect("read")
                .replace("serviceAccountName", "serviceAccount"),
    )
    .expect("write");
    let out = validate(&[broken]);
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("activeDeadlineSecond") && said.contains("serviceAccount"),
        "{said}"
    );
}

/// `harness operator`, the binary, on the fake API server over HTTP (a kubeconfig names it):
/// it runs a `DynamoBenchmark` as Jobs in the resource's namespace owned by the resource;
/// stopped by SIGTERM mid-run, it leaves the resource `Running`, and the next operator resumes
/// the same run to the end without redoing finished cells; deleting a resource mid-run
/// cancels it and removes what it left (the finalizer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_binary_resumes_after_sigterm_and_cleans_up_on_delete() {
    use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind};
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_owned();
    let (_mock, port) = Mock::start(20);
    let fake = cluster();
    let (_http, kubeconfig) = serve_with_kubeconfig(&fake, &d).await;
    let store_url = format!("file://{}", d.join("runs").display());
    // No backend: Jobs in the resource's namespace. Four cells of about a second each.
    let resource = |name: &str, uid: &str| {
        json!({
            "apiVersion": "harness.dev/v1alpha1", "kind": "DynamoBenchmark",
            "metadata": {"name": name, "namespace": "bench", "uid": uid},
            "spec": {"store": store_url, "experiment": {
                "name": name,
                "model": {"name": "harness-mock"},
                "concurrency": [1, 2, 3, 4],
                "benchmark": {"isl_osl": [[32, 8]]},
                "deployment": {"url": format!("http://127.0.0.1:{port}"), "health": "/health"},
                "load": {"requests": 40},
            }},
        })
    };
    let operator = |log: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["operator", "--namespace", "bench"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("HARNESS_LOG")
            .stdout(std::fs::File::create(d.join(format!("{log}.out"))).expect("log"))
            .stderr(std::fs::File::create(d.join(format!("{log}.err"))).expect("log"))
            .spawn()
            .expect("operator")
    };
    let status = |name: &str| {
        fake.objects("dynamobenchmarks")
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .map(|o| o["status"].clone())
    };
    let cells_done = |name: &str| {
        status(name)
            .and_then(|s| s["cellsDone"].as_u64())
            .unwrap_or(0)
    };
    let mut owned_jobs = 0;
    let mut first = operator("first");
    fake.insert(
        "apis/harness.dev/v1alpha1",
        "dynamobenchmarks",
        resource("sweep", "uid-sweep"),
    );
    owned_jobs += wait_until(&fake, "a cell done", || cells_done("sweep") >= 1).await;
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).expect("sigterm");
    let code = tokio::task::spawn_blocking(move || first.wait().expect("wait"))
        .await
        .expect("join");
    assert!(code.success(), "the operator stops cleanly: {code:?}");
    let stopped = status("sweep").expect("status");
    assert_eq!(stopped["phase"], "Running", "left to resume: {stopped}");
    let run_id = stopped["runId"].as_str().expect("run id").to_owned();
    let done_before = cells_done("sweep");
    assert!(done_before < 4, "stopped mid-run: {stopped}");

    let mut second = operator("second");
    owned_jobs += wait_until(&fake, "the run resumed to its end", || {
        status("sweep").is_some_and(|s| s["phase"] != "Running")
    })
    .await;
    let s = status("sweep").expect("status");
    assert_eq!(s["phase"], "Succeeded", "{s}");
    assert_eq!(s["runId"], run_id.as_str(), "the same run, resumed: {s}");
    assert_eq!(s["cellsDone"], 4, "{s}");
    assert!(owned_jobs > 0, "the Jobs are owned by the resource");
    let shown = harness(&d, &["show", &run_id, "--store", &store_url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    let cells = v["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 4, "{v}");
    assert!(cells.iter().all(|c| c["status"] == "succeeded"), "{v}");
    // Cells finished before the stop ran once: each Job name is a cell and an attempt.
    let jobs: std::collections::BTreeSet<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/"))
        .filter_map(|r| r.split('?').next().map(str::to_owned))
        .collect();
    assert!(
        jobs.len() as u64 <= 4 + 1,
        "at most the interrupted cell ran twice: {jobs:?}"
    );

    // Deleted mid-run: cancelled, cleaned up, and gone once the finalizer is removed.
    fake.insert(
        "apis/harness.dev/v1alpha1",
        "dynamobenchmarks",
        resource("doomed", "uid-doomed"),
    );
    wait_until(&fake, "the doomed run started", || {
        status("doomed").is_some_and(|s| s["phase"] == "Running")
            && !fake.objects("jobs").is_empty()
    })
    .await;
    let gvk = GroupVersionKind::gvk("harness.dev", "v1alpha1", "DynamoBenchmark");
    let (ar, _) = kube::discovery::pinned_kind(&fake.client(), &gvk)
        .await
        .expect("kind");
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client(), "bench", &ar);
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_until(&fake, "the doomed resource gone, its Jobs too", || {
        status("doomed").is_none() && fake.objects("jobs").is_empty()
    })
    .await;
    assert!(fake.objects("configmaps").is_empty(), "nothing left");
    kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).expect("sigterm");
    let code = tokio::task::spawn_blocking(move || second.wait().expect("wait"))
        .await
        .expect("join");
    assert!(code.success(), "{code:?}");
}

/// Polls `ready` every 50 ms for up to two minutes (panics past that, naming `what`); how
/// many Jobs owned by a `DynamoBenchmark` it saw meanwhile.
async fn wait_until(fake: &FakeApiServer, what: &str, ready: impl Fn() -> bool) -> usize {
    let mut owned = 0;
    for _ in 0..2400 {
        owned += fake
            .objects("jobs")
            .iter()
            .filter(|j| {
                j.pointer("/metadata/ownerReferences/0/kind") == Some(&json!("DynamoBenchmark"))
            })
            .count();
        if ready() {
            return owned;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting: {what}");
}

/// `harness k8s deploy` of a model whose pod crash-loops fails with the pod's reason and
/// its log, and deletes what it applied: a workflow's failed deploy task leaves no GPU pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_never_gets_ready_fails_with_the_reason_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_owned();
    let fake = FakeApiServer::new();
    fake.on_pod(|_| PodScript::CrashLoop {
        logs: "CUDA out of memory\n".into(),
    });
    let (_http, kubeconfig) = serve_with_kubeconfig(&fake, &d).await;
    std::fs::write(
        d.join("exp.yaml"),
        "name: oom\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
         backend: {kind: kubernetes, namespace: bench, fail_fast_grace: 1s}\n\
         deployment:\n  manifests: |\n    apiVersion: apps/v1\n    kind: Deployment\n\
         \x20   metadata: {name: model}\n\
         \x20   spec: {selector: {matchLabels: {app: model}}, template: {metadata: {labels: {app: model}},\n\
         \x20     spec: {containers: [{name: server, image: vllm:test}]}}}\n",
    )
    .expect("write");
    let out = tokio::task::spawn_blocking(move || {
        harness_with_env(
            &d,
            &["k8s", "deploy", "exp.yaml", "--run-id", "oom-1"],
            &[("KUBECONFIG", kubeconfig.as_os_str())],
        )
    })
    .await
    .expect("deploy");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("CrashLoopBackOff") && stderr.contains("CUDA out of memory"),
        "{stderr}"
    );
    assert!(fake.objects("deployments").is_empty(), "deleted");
    assert!(fake.objects("pods").is_empty(), "its pods too");
}
