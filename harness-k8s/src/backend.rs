//! [`K8sBackend`]: workloads as Kubernetes objects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::{
    Backend, Endpoint, Error, Readiness, Result, Workload, WorkloadSpec, WorkloadStatus,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams,
    PostParams,
};
use serde_json::{Value, json};

/// The label every object of a workload carries, with the workload's id.
pub const WORKLOAD_LABEL: &str = "harness.dev/workload";
/// The label that marks objects harness manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "harness");

/// Kinds whose pod template gets the workload's labels too, so their pods are found.
const TEMPLATED: [&str; 4] = ["Deployment", "StatefulSet", "Job", "DaemonSet"];

/// Pod waiting reasons that never resolve by themselves: the workload fails at once.
const TERMINAL_WAITING: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Runs workloads as Kubernetes objects in one namespace, through an injected
/// [`kube::Client`] (from a kubeconfig, in-cluster config, or a test's fake API server).
///
/// * A spec with `manifests` applies them (every YAML document), labelled with the
///   workload's id ([`WORKLOAD_LABEL`]), the spec's labels and the backend's; pod templates
///   are labelled too. A spec with an `image` becomes a Deployment and a Service when it
///   serves on a port, else a Job (no retries). A plain process is refused.
/// * Readiness: a Job has succeeded or failed; a Deployment or StatefulSet has its ready
///   replicas; any other object (a Dynamo `DynamoGraphDeployment`, ...) reports
///   `status.state: successful` or a `Ready` condition. Pods that can never become ready
///   (CrashLoopBackOff, ImagePullBackOff, OOMKilled, Unschedulable) fail the workload at once,
///   with the pod's reason and the tail of its log.
/// * The endpoint is in-cluster DNS: `http://<service>.<namespace>.svc.cluster.local:<port>`
///   of the first Service applied (the spec's port when it gives one), or
///   `<name>-frontend:8000` for a `DynamoGraphDeployment`: load runs next to the model,
///   never through a port-forward.
/// * Logs are the logs of the workload's pods. Teardown deletes every object it created and
///   everything labelled with the workload, in the background propagation mode, waits until
///   they are gone, and is idempotent.
#[derive(Clone)]
pub struct K8sBackend {
    client: kube::Client,
    namespace: String,
    labels: BTreeMap<String, String>,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    launched: Mutex<BTreeMap<String, Launched>>,
}

#[derive(Debug, Clone)]
struct Launched {
    /// Created objects, in creation order.
    objects: Vec<(ApiResource, String)>,
    /// The object whose state decides readiness.
    primary: (ApiResource, String),
    endpoint: Option<Endpoint>,
    inventory: Vec<Deployed>,
}

/// What a workload deployed, for the run's records (normalising per GPU needs the count).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Deployed {
    /// `kind/name`.
    pub object: String,
    /// Container images in its pod template (or spec, for custom resources).
    pub images: Vec<String>,
    /// GPUs requested per replica (`nvidia.com/gpu` and `amd.com/gpu` limits or requests).
    pub gpus: u64,
    /// Replicas, when the object has them.
    pub replicas: Option<u64>,
}

impl std::fmt::Debug for K8sBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sBackend")
            .field("namespace", &self.namespace)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl K8sBackend {
    /// A backend creating objects in `namespace` with `client`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        K8sBackend {
            client,
            namespace: namespace.into(),
            labels: BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())]),
            inner: Arc::default(),
        }
    }

    /// Adds a label to every object this backend creates (e.g. `harness.dev/run=<id>`).
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// What `workload` deployed: objects, images, GPUs per replica, replicas.
    pub fn deployed(&self, workload: &Workload) -> Vec<Deployed> {
        self.launched(&workload.id)
            .map(|l| l.inventory)
            .unwrap_or_default()
    }

    fn launched(&self, id: &str) -> Option<Launched> {
        self.inner
            .launched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, ar)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The objects for `spec`, labelled with `id`.
    fn objects(&self, spec: &WorkloadSpec, id: &str) -> Result<Vec<Value>> {
        let mut objects = match (&spec.manifests, &spec.image) {
            (Some(yaml), _) => parse_manifests(yaml, &spec.name)?,
            (None, Some(image)) => from_image(spec, image, id),
            (None, None) => {
                return Err(Error::NotSupported {
                    what: format!(
                        "`{}`: a local process on Kubernetes; give the workload an image or manifests",
                        spec.name
                    ),
                });
            }
        };
        let mut labels: BTreeMap<String, String> = self.labels.clone();
        labels.extend(spec.labels.clone());
        labels.insert(WORKLOAD_LABEL.into(), id.into());
        for o in &mut objects {
            add_labels(o, "/metadata", &labels);
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or_default();
            if TEMPLATED.contains(&kind) {
                add_labels(o, "/spec/template/metadata", &labels);
            }
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), json!(self.namespace));
            }
        }
        Ok(objects)
    }

    fn endpoint(&self, spec: &WorkloadSpec, objects: &[Value]) -> Result<Option<Endpoint>> {
        if spec.port.is_none() && spec.readiness == Readiness::Running {
            return Ok(None);
        }
        let service = objects
            .iter()
            .find(|o| o.get("kind").and_then(Value::as_str) == Some("Service"));
        let (name, port) = match service {
            Some(s) => (
                name_of(s),
                spec.port
                    .filter(|p| *p != 0)
                    .map(u64::from)
                    .or_else(|| s.pointer("/spec/ports/0/port").and_then(Value::as_u64)),
            ),
            None => match objects
                .iter()
                .find(|o| o.get("kind").and_then(Value::as_str) == Some("DynamoGraphDeployment"))
            {
                Some(d) => (format!("{}-frontend", name_of(d)), Some(8000)),
                None => return Ok(None),
            },
        };
        let port = port.unwrap_or(80);
        Endpoint::new(format!(
            "http://{name}.{}.svc.cluster.local:{port}",
            self.namespace
        ))
        .map(Some)
    }

    /// Pods of `id` that can never become ready, as a failure reason.
    async fn pod_failure(&self, id: &str) -> Result<Option<String>> {
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={id}")))
            .await
            .map_err(|e| kube_error("listing pods", e))?;
        for pod in pods.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(status) = pod.status else { continue };
            let unschedulable = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
            if let Some(c) = unschedulable {
                return Ok(Some(format!(
                    "pod {name}: Unschedulable: {}",
                    c.message.clone().unwrap_or_default()
                )));
            }
            for cs in status.container_statuses.iter().flatten() {
                let oom = cs
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .or(cs.state.as_ref().and_then(|s| s.terminated.as_ref()))
                    .filter(|t| t.reason.as_deref() == Some("OOMKilled"));
                let waiting = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .filter(|w| {
                        w.reason
                            .as_deref()
                            .is_some_and(|r| TERMINAL_WAITING.contains(&r))
                    });
                let reason = match (oom, waiting) {
                    (Some(_), _) => "OOMKilled".to_owned(),
                    (None, Some(w)) => format!(
                        "{}: {}",
                        w.reason.clone().unwrap_or_default(),
                        w.message.clone().unwrap_or_default()
                    ),
                    (None, None) => continue,
                };
                let tail = self.pod_log_tail(&name).await;
                return Ok(Some(format!(
                    "pod {name} container {}: {reason}{tail}",
                    cs.name
                )));
            }
        }
        Ok(None)
    }

    async fn pod_log_tail(&self, pod: &str) -> String {
        match self.pods().logs(pod, &LogParams::default()).await {
            Ok(l) if !l.trim().is_empty() => {
                let lines: Vec<&str> = l.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                format!("; last log lines:\n{tail}")
            }
            _ => String::new(),
        }
    }

    /// Deletes everything labelled with workload `id` among the usual kinds.
    async fn delete_labelled(&self, id: &str) -> Result<()> {
        let lp = ListParams::default().labels(&format!("{WORKLOAD_LABEL}={id}"));
        for (group, version, kind) in [
            ("batch", "v1", "Job"),
            ("apps", "v1", "Deployment"),
            ("apps", "v1", "StatefulSet"),
            ("", "v1", "Service"),
            ("", "v1", "ConfigMap"),
            ("", "v1", "Pod"),
        ] {
            let ar = resource(group, version, kind);
            let api = self.api(&ar);
            let items = match api.list(&lp).await {
                Ok(l) => l.items,
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(kube_error("listing for teardown", e)),
            };
            for o in items {
                let name = o.metadata.name.unwrap_or_default();
                delete_quietly(&api, &name).await?;
            }
        }
        Ok(())
    }
}

fn kube_error(what: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound {
            what: format!("{what}: {}", s.message),
        },
        kube::Error::Api(s) if s.code >= 500 || s.code == 429 => Error::transient(what, e),
        kube::Error::Api(_) => Error::failed_from(what, e),
        _ => Error::transient(what, e),
    }
}

async fn delete_quietly(api: &Api<DynamicObject>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_error(&format!("deleting {name}"), e)),
    }
}

/// The API resource of `group/version` `kind` (plural by the usual English rules).
pub(crate) fn resource(group: &str, version: &str, kind: &str) -> ApiResource {
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s') || lower.ends_with("ch") || lower.ends_with('x') {
        format!("{lower}es")
    } else if let Some(stem) = lower
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

fn resource_of(o: &Value) -> Result<ApiResource> {
    let api_version = o.get("apiVersion").and_then(Value::as_str);
    let kind = o.get("kind").and_then(Value::as_str);
    let (Some(av), Some(kind)) = (api_version, kind) else {
        return Err(Error::invalid(
            format!("manifest `{}`", name_of(o)),
            "needs apiVersion and kind",
        ));
    };
    let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
    Ok(resource(group, version, kind))
}

fn name_of(o: &Value) -> String {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn add_labels(o: &mut Value, at: &str, labels: &BTreeMap<String, String>) {
    let mut path = String::new();
    for part in at.trim_start_matches('/').split('/') {
        path.push('/');
        path.push_str(part);
        if o.pointer(&path).is_none_or(Value::is_null)
            && let Some(slot) = o.pointer_mut(path.rsplit_once('/').map_or("", |p| p.0))
        {
            slot[part] = json!({});
        }
    }
    if let Some(meta) = o.pointer_mut(at) {
        let l = &mut meta["labels"];
        if !l.is_object() {
            *l = json!({});
        }
        for (k, v) in labels {
            l[k] = json!(v);
        }
    }
}

/// Every YAML document of `yaml` (empty documents skipped); each needs a name.
pub fn parse_manifests(yaml: &str, what: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .map_err(|e| Error::invalid(format!("manifests of `{what}`"), e.to_string()))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.is_empty() {
        return Err(Error::invalid(
            format!("manifests of `{what}`"),
            "no objects",
        ));
    }
    for (i, d) in docs.iter().enumerate() {
        let generated = d
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .is_some_and(|g| !g.is_empty());
        if !d.is_object() || (name_of(d).is_empty() && !generated) {
            return Err(Error::invalid(
                format!("manifests of `{what}`, document {}", i + 1),
                "needs apiVersion, kind and metadata.name (or generateName)",
            ));
        }
        resource_of(d)?;
    }
    Ok(docs)
}

/// A Deployment and a Service (serving), or a Job, running `image`.
fn from_image(spec: &WorkloadSpec, image: &str, id: &str) -> Vec<Value> {
    let port = spec.port.filter(|p| *p != 0).unwrap_or(8000);
    let fill = |s: &str| s.replace("{port}", &port.to_string());
    let mut container = json!({
        "name": "main",
        "image": image,
        "env": spec.env.iter().map(|(k, v)| json!({"name": k, "value": fill(v)})).collect::<Vec<_>>(),
    });
    if !spec.command.is_empty() {
        container["command"] = json!(spec.command.iter().map(|c| fill(c)).collect::<Vec<_>>());
    }
    if spec.port.is_none() {
        return vec![json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": id},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            },
        })];
    }
    container["ports"] = json!([{"containerPort": port}]);
    match &spec.readiness {
        Readiness::Http { path } => {
            container["readinessProbe"] =
                json!({"httpGet": {"path": path, "port": port}, "periodSeconds": 2});
        }
        Readiness::Tcp => {
            container["readinessProbe"] = json!({"tcpSocket": {"port": port}, "periodSeconds": 2});
        }
        _ => {}
    }
    vec![
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": id},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {WORKLOAD_LABEL: id}},
                "template": {"spec": {"containers": [container]}},
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": id},
            "spec": {"selector": {WORKLOAD_LABEL: id}, "ports": [{"port": port, "targetPort": port}]},
        }),
    ]
}

/// Images, GPUs per replica and replicas of an object.
fn inventory(o: &Value) -> Deployed {
    let mut images = Vec::new();
    let mut gpus = 0;
    collect(o, &mut images, &mut gpus);
    images.sort();
    images.dedup();
    Deployed {
        object: format!(
            "{}/{}",
            o.get("kind").and_then(Value::as_str).unwrap_or("?"),
            name_of(o)
        ),
        images,
        gpus,
        replicas: o.pointer("/spec/replicas").and_then(Value::as_u64),
    }
}

/// Walks `v` for `image` strings and GPU resource limits (requests when no limits).
fn collect(v: &Value, images: &mut Vec<String>, gpus: &mut u64) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(i)) = m.get("image") {
                images.push(i.clone());
            }
            if let Some(r) = m.get("resources") {
                let side = r.get("limits").or_else(|| r.get("requests"));
                for key in ["nvidia.com/gpu", "amd.com/gpu", "gpu"] {
                    let n = side.and_then(|s| s.get(key)).and_then(|g| {
                        g.as_u64()
                            .or_else(|| g.as_str().and_then(|s| s.parse().ok()))
                    });
                    *gpus += n.unwrap_or(0);
                }
            }
            for (k, x) in m {
                if k != "resources" {
                    collect(x, images, gpus);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, images, gpus)),
        _ => {}
    }
}

/// Readiness of the primary object, from its status.
fn object_state(kind: &str, o: &Value, endpoint: Option<Endpoint>) -> WorkloadStatus {
    let cond = |t: &str| {
        o.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
            })
            .and_then(|c| c.get("status").and_then(Value::as_str))
            == Some("True")
    };
    let n = |p: &str| o.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    match kind {
        "Job" if n("/status/failed") > 0 || cond("Failed") => WorkloadStatus::Failed {
            reason: format!("job {} failed", name_of(o)),
        },
        "Job" if cond("Complete") => WorkloadStatus::Succeeded,
        "Job" => WorkloadStatus::Pending,
        "Deployment" | "StatefulSet" => {
            let want = o
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            if n("/status/readyReplicas") >= want {
                WorkloadStatus::Ready { endpoint }
            } else {
                WorkloadStatus::Pending
            }
        }
        "Pod" => match o.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => WorkloadStatus::Succeeded,
            Some("Failed") => WorkloadStatus::Failed {
                reason: format!("pod {} failed", name_of(o)),
            },
            _ if cond("Ready") => WorkloadStatus::Ready { endpoint },
            _ => WorkloadStatus::Pending,
        },
        _ => match o.pointer("/status/state").and_then(Value::as_str) {
            Some("failed") => WorkloadStatus::Failed {
                reason: format!(
                    "{kind} {}: state failed: {}",
                    name_of(o),
                    o.pointer("/status/conditions").cloned().unwrap_or_default()
                ),
            },
            Some("successful" | "ready" | "Ready") => WorkloadStatus::Ready { endpoint },
            _ if cond("Ready") => WorkloadStatus::Ready { endpoint },
            _ => WorkloadStatus::Pending,
        },
    }
}

#[async_trait]
impl Backend for K8sBackend {
    async fn launch(&self, spec: &WorkloadSpec) -> Result<Workload> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let id = format!(
            "{}-{n}{:05x}",
            crate::incluster::dns_label(&spec.name, 40),
            nanos & 0xfffff
        );
        let objects = self.objects(spec, &id)?;
        let endpoint = self.endpoint(spec, &objects)?;
        let mut created: Vec<(ApiResource, String)> = Vec::new();
        for o in &objects {
            let ar = resource_of(o)?;
            let obj: DynamicObject = serde_json::from_value(o.clone())
                .map_err(|e| Error::invalid(format!("manifest `{}`", name_of(o)), e.to_string()))?;
            let res = self.api(&ar).create(&PostParams::default(), &obj).await;
            let res = match res {
                Ok(created) => Ok(created.metadata.name.unwrap_or_else(|| name_of(o))),
                Err(e) => Err(e),
            };
            let name = match res {
                Ok(n) => n,
                Err(e) => {
                    for (ar, name) in created.iter().rev() {
                        let _ = delete_quietly(&self.api(ar), name).await;
                    }
                    return Err(kube_error(
                        &format!("creating {} {}", ar.kind, name_of(o)),
                        e,
                    ));
                }
            };
            tracing::info!(kind = %ar.kind, name = %name, namespace = %self.namespace, "created");
            created.push((ar, name));
        }
        let primary = objects
            .iter()
            .zip(&created)
            .find(|(o, _)| {
                !matches!(
                    o.get("kind").and_then(Value::as_str),
                    Some(
                        "Service"
                            | "ConfigMap"
                            | "Secret"
                            | "ServiceAccount"
                            | "Role"
                            | "RoleBinding"
                    )
                )
            })
            .or_else(|| objects.iter().zip(&created).next())
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Error::invalid(format!("`{}`", spec.name), "nothing to create"))?;
        let inventory = objects.iter().map(inventory).collect();
        self.inner
            .launched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                Launched {
                    objects: created,
                    primary,
                    endpoint: endpoint.clone(),
                    inventory,
                },
            );
        Ok(Workload::new(id, spec.name.clone(), endpoint))
    }

    async fn status(&self, workload: &Workload) -> Result<WorkloadStatus> {
        let l = self.launched(&workload.id).ok_or_else(|| Error::NotFound {
            what: format!("workload `{}`", workload.id),
        })?;
        let (ar, name) = &l.primary;
        let obj = self
            .api(ar)
            .get(name)
            .await
            .map_err(|e| kube_error(&format!("reading {} {name}", ar.kind), e))?;
        let value =
            serde_json::to_value(&obj).map_err(|e| Error::failed_from("reading the object", e))?;
        let state = object_state(&ar.kind, &value, l.endpoint.clone());
        if (matches!(state, WorkloadStatus::Pending) || ar.kind == "Job")
            && let Some(reason) = self.pod_failure(&workload.id).await?
        {
            return Ok(WorkloadStatus::Failed { reason });
        }
        if let WorkloadStatus::Failed { reason } = state {
            let logs = self.logs(workload).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&logs);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            return Ok(WorkloadStatus::Failed {
                reason: format!("{reason}; last log lines:\n{tail}"),
            });
        }
        Ok(state)
    }

    async fn logs(&self, workload: &Workload) -> Result<Bytes> {
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={}", workload.id)))
            .await
            .map_err(|e| kube_error("listing pods", e))?;
        let mut out = String::new();
        let many = pods.items.len() > 1;
        for pod in pods.items {
            let name = pod.metadata.name.unwrap_or_default();
            let text = match self.pods().logs(&name, &LogParams::default()).await {
                Ok(t) => t,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 400 => String::new(),
                Err(e) => return Err(kube_error(&format!("logs of pod {name}"), e)),
            };
            if many {
                out.push_str(&format!("==> pod {name} <==\n"));
            }
            out.push_str(&text);
        }
        Ok(Bytes::from(out))
    }

    async fn teardown(&self, workload: &Workload) -> Result<()> {
        if let Some(l) = self.launched(&workload.id) {
            for (ar, name) in l.objects.iter().rev() {
                delete_quietly(&self.api(ar), name).await?;
            }
        }
        self.delete_labelled(&workload.id).await?;
        // Wait until the pods are gone: teardown returns when the workload is.
        let lp = ListParams::default().labels(&format!("{WORKLOAD_LABEL}={}", workload.id));
        for _ in 0..300 {
            let left = self
                .pods()
                .list(&lp)
                .await
                .map_err(|e| kube_error("listing pods", e))?;
            if left.items.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(Error::failed(
            format!("tearing down `{}`", workload.id),
            "pods still exist after 60 s",
        ))
    }

    fn name(&self) -> &str {
        "kubernetes"
    }

    async fn details(&self, workload: &Workload) -> Result<serde_json::Value> {
        let objects = self.deployed(workload);
        let gpus: u64 = objects
            .iter()
            .map(|d| d.gpus * d.replicas.unwrap_or(1))
            .sum();
        Ok(json!({"namespace": self.namespace, "objects": objects, "gpus": gpus}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_the_api_servers_rules_for_common_kinds() {
        for (kind, plural) in [
            ("Job", "jobs"),
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("DynamoGraphDeployment", "dynamographdeployments"),
            ("Gateway", "gateways"),
        ] {
            assert_eq!(resource("g", "v1", kind).plural, plural);
        }
    }

    #[test]
    fn inventory_counts_images_and_gpus() {
        let d = inventory(&json!({
            "kind": "Deployment", "metadata": {"name": "vllm"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"image": "vllm/vllm-openai:v0.11", "resources": {"limits": {"nvidia.com/gpu": "4"}}},
                {"image": "sidecar:1"}
            ]}}}
        }));
        assert_eq!(d.object, "Deployment/vllm");
        assert_eq!(d.images, ["sidecar:1", "vllm/vllm-openai:v0.11"]);
        assert_eq!((d.gpus, d.replicas), (4, Some(2)));
    }

    #[test]
    fn manifests_without_names_or_kinds_are_refused() {
        let e = parse_manifests("apiVersion: v1\nkind: Service\nmetadata: {}\n", "x")
            .expect_err("no name");
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let e = parse_manifests("---\n", "x").expect_err("empty");
        assert!(e.to_string().contains("no objects"), "{e}");
        let ok = parse_manifests(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}\n",
            "x",
        )
        .expect("two documents");
        assert_eq!(ok.len(), 2);
    }
}
