//! Cells run inside the cluster: [`InClusterStep`] runs a cell's steps as a `batch/v1` Job
//! next to the model (`harness agent`), and [`run_agent`] is what that Job runs.
//!
//! The controlling side (`harness run` on a laptop or the operator) never sends load
//! itself: for each cell it creates a ConfigMap with the resolved experiment and a Job whose
//! container runs `harness agent --run <id> --cell <cell> --endpoint <in-cluster URL>
//! --store <url>`. The agent runs the cell's steps against the endpoint and writes records,
//! statistics and its report (`cells/<cell>/artifacts/in-cluster/agent.json`) to the run's
//! object store; the controlling side waits for the Job, keeps its log, and folds the
//! agent's metrics into the same run. With `backend.clients: N` the Job is Indexed: N pods
//! each send 1/N of the cell's load; once each has done its setup it says so in the store,
//! and the controlling side gives them one start time (on the pods' clocks), so their
//! records count from the same instant and merge into one cell over the real window.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use harness_core::config::BackendConfig;
use harness_core::{
    ArtifactKey, ArtifactStore, ArtifactStoreExt, BackendExt, Cell, Endpoint, Error, Experiment,
    Result, RunContext, Shard, Stage, StartGate, Step, StepContext, StepOutput, WorkloadSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The name of the step, and of the folder of its artifacts.
pub const IN_CLUSTER: &str = "in-cluster";

/// What the agent reports for one cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentReport {
    /// The client pod's index (Indexed Jobs), from 0.
    pub shard: u32,
    /// Each step that ran, in order.
    pub steps: Vec<AgentStep>,
}

/// One step's result in the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentStep {
    /// The step's name.
    pub step: String,
    /// What it reported, when it succeeded.
    pub output: Option<StepOutput>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The key of the agent's report of `shard` for `cell`.
fn report_key(run: &RunContext, cell: &Cell, shard: u32) -> Result<harness_core::ArtifactKey> {
    let name = if shard == 0 {
        "agent.json".to_owned()
    } else {
        format!("agent-{shard}.json")
    };
    run.layout().cell_artifact(&cell.id, IN_CLUSTER, &name)
}

/// Runs `steps` for `cell` against `endpoint`, as the Job's container does, and stores the
/// [`AgentReport`]. Stops at the first failing step. As client `shard.index` of
/// `shard.count`, load steps send this client's part, and start together with the other
/// clients: they arrive at a [`StartGate`] once their setup is done, which leaves a marker
/// (with this pod's wall-clock time) in the store under the attempt's token and waits for
/// the start time the controlling side writes there ([`InClusterStep`]). A retry has a new
/// token, so it meets again.
///
/// # Errors
/// When the report cannot be stored; a failing step (a client that found no common start
/// within `policy.ready_timeout` among them) is reported in the report, not returned.
pub async fn run_agent(
    run: &RunContext,
    cell: Arc<Cell>,
    endpoint: Endpoint,
    steps: &[Arc<dyn Step>],
    shard: Option<Shard>,
    attempt: &str,
) -> Result<AgentReport> {
    run.resources().insert(endpoint);
    if let Some(s) = shard {
        run.resources().insert(s);
        let gate = StoreGate {
            store: run.store().clone(),
            dir: clients_dir(run, &cell, attempt)?,
            index: s.index,
            timeout: run.experiment().policy.ready_timeout.get(),
        };
        run.resources().insert::<Arc<dyn StartGate>>(Arc::new(gate));
    }
    let index = shard.map_or(0, |s| s.index);
    let mut report = AgentReport {
        shard: index,
        steps: Vec::new(),
    };
    for step in steps {
        let cx = run.step(Stage::Cell, Some(cell.clone()), step.name())?;
        let span = tracing::info_span!("agent step", step = step.name(), cell = %cell.id);
        let _guard = span.enter();
        let result = step.run(&cx).await;
        let failed = result.is_err();
        report.steps.push(AgentStep {
            step: step.name().to_owned(),
            error: result.as_ref().err().map(ToString::to_string),
            output: result.ok(),
        });
        if failed {
            break;
        }
    }
    let key = report_key(run, &cell, index)?;
    run.store().put_json(&key, &report).await?;
    Ok(report)
}

/// Where the clients of `cell` in `attempt` meet: their markers and the start time.
fn clients_dir(run: &RunContext, cell: &Cell, attempt: &str) -> Result<ArtifactKey> {
    run.layout().cell_artifact(
        &cell.id,
        IN_CLUSTER,
        &format!("clients-{}", dns_label(attempt, 16)),
    )
}

/// The object under the clients' folder that holds their start time.
const START: &str = "start";

/// How long after the last client said it was ready the clients start: time for the
/// controlling side to see it and write the start, and for every client to read it.
const START_MARGIN: Duration = Duration::from_secs(2);

/// How often a client looks for the start time, and the controlling side for markers.
const GATE_POLL: Duration = Duration::from_millis(50);
const COORDINATE_POLL: Duration = Duration::from_millis(200);

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// A wall-clock time written by [`unix_ns`].
fn parse_unix_ns(bytes: &[u8], what: &str) -> Result<SystemTime> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
        .ok_or_else(|| Error::failed(what, "not a time in nanoseconds since 1970"))
}

/// The client side of the meeting: a marker `<index>.ready` holding this pod's time, then
/// the start time (`start`) the controlling side writes once every client is there.
#[derive(Debug)]
struct StoreGate {
    store: Arc<dyn ArtifactStore>,
    dir: ArtifactKey,
    index: u32,
    timeout: Duration,
}

#[async_trait]
impl StartGate for StoreGate {
    async fn arrive(&self, cancel: &harness_core::CancellationToken) -> Result<SystemTime> {
        let mine = self.dir.join(&format!("{}.ready", self.index))?;
        let now = unix_ns(SystemTime::now()).to_string();
        self.store.put(&mine, bytes::Bytes::from(now)).await?;
        let start = self.dir.join(START)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.store.get(&start).await {
                Ok(b) => return parse_unix_ns(&b, &format!("the clients' start ({start})")),
                Err(Error::NotFound { .. }) => {}
                // A store that fails now and then is asked again until the deadline.
                Err(e) => tracing::debug!(error = %e, "reading the clients' start"),
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    what: format!("client {} waiting for the others", self.index),
                });
            }
            if tokio::time::Instant::now() > deadline {
                let up = self.store.list(&self.dir).await.map_or(0, |l| l.len());
                return Err(Error::failed(
                    format!("client {}", self.index),
                    format!(
                        "no common start within policy.ready_timeout: {up} client(s) had said they were ready"
                    ),
                ));
            }
            tokio::time::sleep(GATE_POLL).await;
        }
    }
}

/// The controlling side of the meeting: once each of `clients` has either arrived at the
/// gate (its marker) or finished without it (its report: a step failed first, or it had no
/// share of the load), writes the start: [`START_MARGIN`] after the last marker's time, on
/// the pods' own clocks. Returns when it is written, or when no client needed one; a store
/// error is retried at the next look (the Job's end bounds the wait).
async fn coordinate(cx: &StepContext, cell: &Cell, dir: &ArtifactKey, clients: u32) {
    let mut ready = std::collections::BTreeMap::new();
    loop {
        match look(cx, cell, dir, clients, &mut ready).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::debug!(cell = %cell.id, error = %e, "looking for the clients"),
        }
        tokio::time::sleep(COORDINATE_POLL).await;
    }
}

/// One look of [`coordinate`] at the clients' folder: collects the markers into `ready` (by
/// client), and writes the start once every client is there; whether it is done.
async fn look(
    cx: &StepContext,
    cell: &Cell,
    dir: &ArtifactKey,
    clients: u32,
    ready: &mut std::collections::BTreeMap<u32, SystemTime>,
) -> Result<bool> {
    for meta in cx.store().list(dir).await? {
        let Some(index) = meta
            .key
            .as_str()
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".ready"))
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(slot) = ready.entry(index) {
            let bytes = cx.store().get(&meta.key).await?;
            slot.insert(parse_unix_ns(
                &bytes,
                &format!("client marker {}", meta.key),
            )?);
        }
    }
    for shard in 0..clients {
        let there = ready.contains_key(&shard)
            || cx
                .store()
                .exists(&report_key(cx.run(), cell, shard)?)
                .await?;
        if !there {
            return Ok(false);
        }
    }
    let Some(last) = ready.values().max() else {
        return Ok(true);
    };
    let at = *last + START_MARGIN;
    cx.store()
        .put(
            &dir.join(START)?,
            bytes::Bytes::from(unix_ns(at).to_string()),
        )
        .await?;
    tracing::info!(cell = %cell.id, clients = ready.len(), "the clients start together");
    Ok(true)
}

/// Everything one cell's Job needs.
#[derive(Debug, Clone)]
pub struct CellJob<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The resolved experiment (stored in the ConfigMap).
    pub experiment: &'a Experiment,
    /// The cell.
    pub cell: &'a Cell,
    /// The in-cluster endpoint of the model.
    pub endpoint: &'a str,
    /// The object store URL the agent writes to.
    pub store_url: &'a str,
    /// This attempt's token: the Job's and ConfigMap's names end with it and the clients meet
    /// under it, so a retry never collides with, or waits on, an earlier attempt.
    pub attempt: &'a str,
    /// The workload file (`workload.path`: a trace or conversations), shipped in the
    /// ConfigMap beside the experiment.
    pub workload_file: Option<&'a str>,
}

/// A DNS-1123 label from `s`: lower-case, other characters `-`, at most `max` long.
pub(crate) fn dns_label(s: &str, max: usize) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(max);
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() { "x".into() } else { out }
}

/// A fresh attempt token: 6 hex digits from the clock and a counter.
pub fn attempt_token() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:06x}", (nanos ^ n.wrapping_mul(0x9e37_79b9)) & 0xff_ffff)
}

/// Seconds a cell's Job may wait to be scheduled, beyond the step's timeout.
const JOB_SCHEDULING_GRACE_S: u64 = 300;

/// Seconds a finished Job is kept for `kubectl logs` before Kubernetes deletes it.
const JOB_TTL_S: u64 = 3600;

/// Where the agent's container mounts its ConfigMap.
pub const MOUNT: &str = "/etc/harness";

/// Where a Job's pod finds the experiment (in its ConfigMap, under [`MOUNT`]).
pub const EXPERIMENT_FILE: &str = "/etc/harness/experiment.json";

/// Where a Job's pod finds the experiment's workload file (a trace, conversations).
pub const WORKLOAD_FILE: &str = "/etc/harness/workload.jsonl";

/// What a ConfigMap holds at most (the API server's limit is 1 MiB, metadata included).
const CONFIGMAP_MAX: usize = 1_000_000;

/// The ConfigMap data of a Job: the experiment as `experiment.json` and, when it has one,
/// its workload file as `workload.jsonl` (the command points `workload.path` there:
/// [`WORKLOAD_FILE`]).
///
/// # Errors
/// When they do not fit in a ConfigMap.
pub(crate) fn configmap_data(
    experiment: &Experiment,
    workload_file: Option<&str>,
) -> Result<serde_json::Map<String, Value>> {
    let mut data = serde_json::Map::new();
    if let Some(content) = workload_file {
        data.insert("workload.jsonl".into(), json!(content));
    }
    data.insert(
        "experiment.json".into(),
        json!(experiment.to_json().to_string()),
    );
    let size: usize = data.values().filter_map(Value::as_str).map(str::len).sum();
    if size > CONFIGMAP_MAX {
        return Err(Error::invalid(
            "workload.path",
            format!(
                "the experiment and its workload file take {size} bytes; a ConfigMap holds about 1 MB: \
                 put the file in the image or a volume and give its path there"
            ),
        ));
    }
    Ok(data)
}

/// A ConfigMap `name` holding `data`, and a Job `name` of `pods` pods (Indexed when more than
/// one) whose `agent` container runs `command` from the harness image with the ConfigMap
/// mounted at [`MOUNT`]; scheduling and security from `backend`; its deadline is `steps`
/// step timeouts.
pub(crate) fn job_objects(
    experiment: &Experiment,
    name: &str,
    labels: &Value,
    data: serde_json::Map<String, Value>,
    command: Vec<String>,
    pods: u64,
    steps: u64,
) -> Vec<Value> {
    let b: &BackendConfig = &experiment.backend;
    let resources = b
        .resources
        .clone()
        .unwrap_or_else(|| json!({"requests": {"cpu": "2", "memory": "512Mi"}}));
    let mut container = json!({
        "name": "agent",
        "image": b.image(),
        "command": command,
        "volumeMounts": [{"name": "experiment", "mountPath": MOUNT, "readOnly": true}],
        "resources": resources,
        // The `restricted` Pod Security Standard: no escalation, no capabilities.
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(secret) = &b.env_secret {
        container["envFrom"] = json!([{"secretRef": {"name": secret}}]);
    }
    let mut pod = json!({
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "experiment", "configMap": {"name": name}}],
        // The image runs as a numeric non-root user (65532).
        "securityContext": {
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    if let Some(sa) = &b.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    if !b.image_pull_secrets.is_empty() {
        pod["imagePullSecrets"] = json!(
            b.image_pull_secrets
                .iter()
                .map(|s| json!({"name": s}))
                .collect::<Vec<_>>()
        );
    }
    if !b.node_selector.is_empty() {
        pod["nodeSelector"] = json!(b.node_selector);
    }
    if !b.tolerations.is_empty() {
        pod["tolerations"] = json!(b.tolerations);
    }
    if let Some(a) = &b.affinity {
        pod["affinity"] = a.clone();
    }
    // A Job outlives neither the steps it runs (plus time to be scheduled) nor, once finished,
    // an hour: a controller that died leaves nothing running or behind for long.
    let deadline =
        experiment.policy.step_timeout.get().as_secs() * steps.max(1) + JOB_SCHEDULING_GRACE_S;
    let mut spec = json!({
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline,
        "ttlSecondsAfterFinished": JOB_TTL_S,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    });
    if pods > 1 {
        spec["completionMode"] = json!("Indexed");
        spec["completions"] = json!(pods);
        spec["parallelism"] = json!(pods);
    }
    vec![
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels},
            "data": data,
        }),
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }),
    ]
}

/// The ConfigMap (the resolved experiment, and its workload file) and the Job
/// (`harness agent`) of one cell, as Kubernetes objects; an Indexed Job of
/// `backend.clients` pods when more than one. The experiment is a file mounted from the
/// ConfigMap (environment variables stop at 128 KiB); the pods' scheduling (resources,
/// node selector, tolerations, affinity, image pull secrets) comes from `backend`.
///
/// # Errors
/// When the experiment and its workload file do not fit in a ConfigMap.
pub fn cell_job_manifests(job: &CellJob<'_>) -> Result<Vec<Value>> {
    let name = format!(
        "harness-{}-c{}-{}",
        dns_label(job.run_id, 40),
        job.cell.index,
        dns_label(job.attempt, 8)
    );
    let labels = json!({
        "app.kubernetes.io/name": "harness",
        "app.kubernetes.io/component": "agent",
        "app.kubernetes.io/managed-by": "harness",
        "harness.dev/run": dns_label(job.run_id, 63),
        "harness.dev/cell-index": job.cell.index.to_string(),
    });
    let data = configmap_data(job.experiment, job.workload_file)?;
    let clients = job.experiment.backend.clients();
    let mut command = vec![
        "harness".to_owned(),
        "agent".into(),
        "--run".into(),
        job.run_id.into(),
        "--cell".into(),
        job.cell.id.to_string(),
        "--endpoint".into(),
        job.endpoint.into(),
        "--store".into(),
        job.store_url.into(),
        "--experiment".into(),
        EXPERIMENT_FILE.into(),
        "--attempt".into(),
        job.attempt.into(),
    ];
    if job.workload_file.is_some() {
        command.push("--workload-file".into());
        command.push(WORKLOAD_FILE.into());
    }
    if clients > 1 {
        command.push("--clients".into());
        command.push(clients.to_string());
    }
    Ok(job_objects(
        job.experiment,
        &name,
        &labels,
        data,
        command,
        clients,
        1,
    ))
}

/// Objects as one multi-document YAML text.
///
/// # Errors
/// When an object cannot be written as YAML.
pub fn to_yaml(objects: &[Value]) -> Result<String> {
    let docs = objects
        .iter()
        .map(|o| {
            serde_saphyr::to_string(o)
                .map_err(|e| Error::failed_from("writing manifests as YAML", e))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(docs.join("---\n"))
}

/// Runs the cell's steps in the cluster: a Job of `harness agent` per cell, through the
/// run's backend (a [`crate::K8sBackend`]); the agent's report is read back from the store
/// and its metrics, artifacts and notes become this step's. The Job's log is kept as
/// `agent.log`.
#[derive(Debug, Clone)]
pub struct InClusterStep {
    store_url: String,
}

impl InClusterStep {
    /// The step; the agent writes to `store_url` (the run's store, as the cluster reaches it).
    pub fn new(store_url: impl Into<String>) -> Self {
        InClusterStep {
            store_url: store_url.into(),
        }
    }
}

#[async_trait]
impl Step for InClusterStep {
    fn name(&self) -> &str {
        IN_CLUSTER
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let cell = cx
            .cell()
            .ok_or_else(|| Error::failed(IN_CLUSTER, "runs per cell only"))?
            .clone();
        let endpoint = cx.resources().get::<Endpoint>().ok_or_else(|| {
            Error::failed(
                IN_CLUSTER,
                "no endpoint: the deployment step did not report one",
            )
        })?;
        let exp = cx.experiment();
        let workload_file = match &exp.workload.path {
            Some(p) => Some(
                tokio::fs::read_to_string(p)
                    .await
                    .map_err(|e| Error::io(format!("reading workload.path {}", p.display()), e))?,
            ),
            None => None,
        };
        let attempt = attempt_token();
        let objects = cell_job_manifests(&CellJob {
            run_id: cx.run().run_id(),
            experiment: exp,
            cell: &cell,
            endpoint: &endpoint.base_url,
            store_url: &self.store_url,
            attempt: &attempt,
            workload_file: workload_file.as_deref(),
        })?;
        let clients = exp.backend.clients() as u32;
        // An earlier attempt's reports and records must not pass for this one's.
        let layout = cx.run().layout();
        for shard in 0..clients {
            for key in [
                report_key(cx.run(), &cell, shard)?,
                layout.cell_shard_records(&cell.id, shard),
            ] {
                match cx.store().delete(&key).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let spec = WorkloadSpec::manifests(format!("agent-{}", cell.index), to_yaml(&objects)?)
            .label("harness.dev/cell-index", cell.index.to_string());
        let backend = cx.backend();
        let workload = backend.launch(&spec).await?;
        // A step that times out is dropped mid-wait: the guard still deletes its Job.
        let mut guard = TeardownGuard {
            backend: Some(backend.clone()),
            workload: workload.clone(),
        };
        let wait = backend.wait_finished(&workload, cx.cancel());
        let finished = if clients > 1 {
            // Meanwhile, the clients are given their common start once they are all ready.
            tokio::pin!(wait);
            let dir = clients_dir(cx.run(), &cell, &attempt)?;
            tokio::select! {
                finished = &mut wait => finished,
                () = coordinate(cx, &cell, &dir, clients) => wait.await,
            }
        } else {
            wait.await
        };
        let log = backend.logs(&workload).await;
        let teardown = backend.teardown(&workload).await;
        guard.backend = None;
        let mut out = StepOutput::new();
        if let Ok(log) = log {
            out = out.artifact(cx.artifacts().put("agent.log", log).await?);
        }
        let mut reports = Vec::new();
        for shard in 0..clients {
            let key = report_key(cx.run(), &cell, shard)?;
            match cx.store().get_json::<AgentReport>(&key).await {
                Ok(r) => reports.push(r),
                Err(e) if finished.is_ok() => {
                    return Err(Error::failed(
                        format!("in-cluster cell `{}`", cell.id),
                        format!("the agent of client {shard} wrote no report: {e}"),
                    ));
                }
                Err(_) => {}
            }
        }
        for r in &reports {
            for s in &r.steps {
                if let Some(e) = &s.error {
                    return Err(Error::failed(
                        format!("in-cluster step `{}` (client {})", s.step, r.shard),
                        e.clone(),
                    ));
                }
                if let Some(o) = &s.output
                    && r.shard == 0
                {
                    out = out.merge(o.clone());
                }
            }
        }
        finished?;
        teardown?;
        if clients > 1 {
            out = merge_shards(cx, &cell, clients)
                .await?
                .merge(out.clear_metrics());
        }
        Ok(out)
    }
}

/// Tears a workload down when dropped before it was disarmed (`backend` taken).
struct TeardownGuard {
    backend: Option<Arc<dyn harness_core::Backend>>,
    workload: harness_core::Workload,
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        let (Some(backend), Ok(rt)) = (self.backend.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let workload = self.workload.clone();
        tracing::warn!(workload = %workload.id, "the step ended while its Job ran; deleting the Job");
        rt.spawn(async move {
            if let Err(e) = backend.teardown(&workload).await {
                tracing::warn!(workload = %workload.id, error = %e, "could not delete the Job");
            }
        });
    }
}

/// `s` as a DNS-1123 label (at most 63 characters), as used for the `harness.dev/run` label.
pub fn dns_label_of(s: &str) -> String {
    dns_label(s, 63)
}

/// Merges the records the clients of `cell` wrote as shards into the cell's records and
/// statistics, as if one client had sent all the load; returns the headline metrics.
async fn merge_shards(cx: &StepContext, cell: &Cell, clients: u32) -> Result<StepOutput> {
    let layout = cx.run().layout();
    let mut all = Vec::new();
    let mut found = 0;
    for i in 0..clients {
        let key = layout.cell_shard_records(&cell.id, i);
        let bytes = match cx.store().get(&key).await {
            Ok(b) => b,
            // A client without a share of the concurrency sent nothing.
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        found += 1;
        let records = tokio::task::spawn_blocking(move || {
            let batch = harness_analytics::io::from_parquet(bytes)?;
            harness_analytics::table::records_from_batch(&batch)
        })
        .await
        .map_err(|e| Error::failed_from("reading shard records", e))??;
        all.extend(records);
    }
    if found == 0 {
        return Err(Error::failed(
            format!("in-cluster cell `{}`", cell.id),
            "no client wrote records",
        ));
    }
    // The clients' records count from their common start; order by start, number again.
    all.sort_by_key(|r| r.start_ns);
    for (i, r) in all.iter_mut().enumerate() {
        r.index = i as u64;
    }
    let exp = cx.experiment();
    let slo = exp.slo.clone();
    let (stats, parquet) = tokio::task::spawn_blocking(move || {
        let batch = harness_analytics::table::records_batch(&all)?;
        let stats = harness_analytics::CellStats::of_batch(&batch, &slo)?;
        Ok::<_, harness_analytics::Error>((stats, harness_analytics::io::to_parquet(&batch)?))
    })
    .await
    .map_err(|e| Error::failed_from("merging shard records", e))??;
    let records_key = layout.cell_records(&cell.id);
    cx.store().put(&records_key, parquet).await?;
    let stats_key = layout.cell_stats(&cell.id);
    cx.store().put_json(&stats_key, &stats).await?;
    let mut out = StepOutput::new()
        .artifact(records_key)
        .artifact(stats_key)
        .note(format!(
            "{found} of {clients} clients sent load; their records are merged"
        ));
    for (k, v) in stats.headline_metrics() {
        out = out.metric(k, v);
    }
    Ok(out.metric("clients", f64::from(clients)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cell's Job meets the `restricted` Pod Security Standard (what an admission
    /// controller enforcing it checks), cannot outlive its step, or an hour once finished,
    /// and is scheduled as the experiment says.
    #[test]
    fn a_cell_job_is_restricted_bounded_in_time_and_scheduled_as_asked() {
        let exp = Experiment::from_yaml_str(
            "name: j\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
             deployment: {url: \"http://m:8000\"}\n\
             backend: {kind: kubernetes, image_pull_secrets: [regcred], node_selector: {pool: gpu},\n\
               tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}],\n\
               affinity: {podAffinity: {preferredDuringSchedulingIgnoredDuringExecution: []}},\n\
               resources: {requests: {cpu: 4, memory: 2Gi}, limits: {memory: 2Gi}}}\n\
             policy: {step_timeout: 10m}\n",
            "j.yaml",
        )
        .expect("experiment");
        let plan = exp.plan().expect("plan");
        let job = |attempt: &str, file: Option<&str>| {
            cell_job_manifests(&CellJob {
                run_id: "r",
                experiment: &exp,
                cell: &plan.cells()[0],
                endpoint: "http://m:8000",
                store_url: "s3://b",
                attempt,
                workload_file: file,
            })
        };
        let objects = job("a1", Some("{}\n")).expect("manifests");
        let job1 = objects.iter().find(|o| o["kind"] == "Job").expect("a Job");
        assert_eq!(job1["spec"]["activeDeadlineSeconds"], 600 + 300);
        assert_eq!(job1["spec"]["ttlSecondsAfterFinished"], 3600);
        let pod = &job1["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod.get(key).is_none(), "{key}");
        }
        // The only volume is the ConfigMap with the experiment and the workload file.
        assert_eq!(pod["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            pod["volumes"][0]["configMap"]["name"],
            job1["metadata"]["name"]
        );
        let cm = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap")
            .expect("ConfigMap");
        assert_eq!(cm["data"]["workload.jsonl"], "{}\n");
        assert!(cm["data"]["experiment.json"].is_string());
        for c in pod["containers"].as_array().expect("containers") {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
            assert!(
                sc.get("privileged").is_none() && c.get("ports").is_none(),
                "{c}"
            );
            assert_eq!(c["resources"]["requests"]["cpu"], 4);
            assert!(c["command"].to_string().contains(WORKLOAD_FILE), "{c}");
        }
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(pod["nodeSelector"], json!({"pool": "gpu"}));
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        assert!(pod["affinity"]["podAffinity"].is_object());
        // Another attempt has names of its own.
        let other = job("a2", None).expect("manifests");
        assert_ne!(other[1]["metadata"]["name"], job1["metadata"]["name"]);
        // A workload file too large for a ConfigMap is refused, naming the field.
        let big = "x".repeat(1_100_000);
        let e = job("a3", Some(&big)).expect_err("too large");
        assert!(e.to_string().contains("workload.path"), "{e}");
    }
}
