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
//! start together (`--start-at`), each sending 1/N of the cell's load, and their records are
//! merged into one cell.

use std::sync::Arc;

use async_trait::async_trait;
use harness_core::config::BackendConfig;
use harness_core::{
    ArtifactStoreExt, BackendExt, Cell, Endpoint, Error, Experiment, Result, RunContext, Shard,
    Stage, Step, StepContext, StepOutput, WorkloadSpec,
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
/// `shard.count`, it first waits until every client is up (each leaves a marker in the
/// store), so their load starts together, and load steps send this client's part.
///
/// # Errors
/// When the report cannot be stored, or the other clients do not come up within
/// `policy.ready_timeout`; a failing step is reported in the report, not returned.
pub async fn run_agent(
    run: &RunContext,
    cell: Arc<Cell>,
    endpoint: Endpoint,
    steps: &[Arc<dyn Step>],
    shard: Option<Shard>,
) -> Result<AgentReport> {
    run.resources().insert(endpoint);
    if let Some(s) = shard {
        run.resources().insert(s);
        barrier(run, &cell, s).await?;
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

/// Waits until all `shard.count` clients of `cell` have left their marker.
async fn barrier(run: &RunContext, cell: &Cell, shard: Shard) -> Result<()> {
    let dir = run
        .layout()
        .cell_artifact(&cell.id, IN_CLUSTER, "clients")?;
    let mine = dir.join(&format!("{}.ready", shard.index))?;
    run.store()
        .put(&mine, bytes::Bytes::from_static(b"ready"))
        .await?;
    let deadline = tokio::time::Instant::now() + run.experiment().policy.ready_timeout.get();
    loop {
        let up = run.store().list(&dir).await?.len() as u32;
        if up >= shard.count {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline || run.cancel().is_cancelled() {
            return Err(Error::failed(
                format!("client {} of cell `{}`", shard.index, cell.id),
                format!("only {up} of {} clients came up", shard.count),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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

/// Seconds a cell's Job may wait to be scheduled, beyond the step's timeout.
const JOB_SCHEDULING_GRACE_S: u64 = 300;

/// Seconds a finished Job is kept for `kubectl logs` before Kubernetes deletes it.
const JOB_TTL_S: u64 = 3600;

/// The ConfigMap (resolved experiment) and the Job (`harness agent`) of one cell, as
/// Kubernetes objects; an Indexed Job of `backend.clients` pods when more than one.
pub fn cell_job_manifests(job: &CellJob<'_>) -> Vec<Value> {
    let b: &BackendConfig = &job.experiment.backend;
    let name = format!("harness-{}-c{}", dns_label(job.run_id, 40), job.cell.index);
    let labels = json!({
        "app.kubernetes.io/name": "harness",
        "app.kubernetes.io/component": "agent",
        "harness.dev/run": dns_label(job.run_id, 63),
        "harness.dev/cell-index": job.cell.index.to_string(),
    });
    let experiment = job.experiment.to_json().to_string();
    let clients = b.clients();
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
    ];
    if clients > 1 {
        command.push("--clients".into());
        command.push(clients.to_string());
    }
    let mut container = json!({
        "name": "agent",
        "image": b.image(),
        "command": command,
        "env": [{
            "name": "HARNESS_EXPERIMENT",
            "valueFrom": {"configMapKeyRef": {"name": name, "key": "experiment.json"}},
        }],
        "resources": {"requests": {"cpu": "2", "memory": "512Mi"}},
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
        // The image runs as a numeric non-root user (65532).
        "securityContext": {
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    if let Some(sa) = &b.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    // A Job outlives neither the step that waits for it (plus time to be scheduled) nor, once
    // finished, an hour: a controller that died leaves nothing running or behind for long.
    let deadline = job.experiment.policy.step_timeout.get().as_secs() + JOB_SCHEDULING_GRACE_S;
    let mut spec = json!({
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline,
        "ttlSecondsAfterFinished": JOB_TTL_S,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    });
    if clients > 1 {
        spec["completionMode"] = json!("Indexed");
        spec["completions"] = json!(clients);
        spec["parallelism"] = json!(clients);
    }
    vec![
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels},
            "data": {"experiment.json": experiment},
        }),
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }),
    ]
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
        let objects = cell_job_manifests(&CellJob {
            run_id: cx.run().run_id(),
            experiment: cx.experiment(),
            cell: &cell,
            endpoint: &endpoint.base_url,
            store_url: &self.store_url,
        });
        let spec = WorkloadSpec::manifests(format!("agent-{}", cell.index), to_yaml(&objects)?)
            .label("harness.dev/cell-index", cell.index.to_string());
        let backend = cx.backend();
        let workload = backend.launch(&spec).await?;
        let finished = backend.wait_finished(&workload, cx.cancel()).await;
        let log = backend.logs(&workload).await;
        let teardown = backend.teardown(&workload).await;
        let mut out = StepOutput::new();
        if let Ok(log) = log {
            out = out.artifact(cx.artifacts().put("agent.log", log).await?);
        }
        let clients = cx.experiment().backend.clients() as u32;
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
    // Clients started together (the barrier); order by start and number them again.
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
    /// controller enforcing it checks) and cannot outlive its step, or an hour once finished.
    #[test]
    fn a_cell_job_is_restricted_and_bounded_in_time() {
        let exp = Experiment::from_yaml_str(
            "name: j\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
             deployment: {url: \"http://m:8000\"}\nbackend: {kind: kubernetes}\n\
             policy: {step_timeout: 10m}\n",
            "j.yaml",
        )
        .expect("experiment");
        let plan = exp.plan().expect("plan");
        let objects = cell_job_manifests(&CellJob {
            run_id: "r",
            experiment: &exp,
            cell: &plan.cells()[0],
            endpoint: "http://m:8000",
            store_url: "s3://b",
        });
        let job = objects.iter().find(|o| o["kind"] == "Job").expect("a Job");
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 600 + 300);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for key in ["hostNetwork", "hostPID", "hostIPC", "volumes"] {
            assert!(pod.get(key).is_none(), "{key}");
        }
        for c in pod["containers"].as_array().expect("containers") {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
            assert!(
                sc.get("privileged").is_none() && c.get("ports").is_none(),
                "{c}"
            );
        }
    }
}
