//! [`K8sBackend`]: workloads as Kubernetes objects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use harness_core::{
    Backend, Endpoint, Error, Readiness, Result, Workload, WorkloadSpec, WorkloadStatus,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch,
    PatchParams, PostParams,
};
use serde_json::{Value, json};

/// The label every object of a workload carries, with the workload's id.
pub const WORKLOAD_LABEL: &str = "harness.dev/workload";
/// The label that marks objects harness manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "harness");

/// The field manager of everything harness applies (server-side apply).
pub const FIELD_MANAGER: &str = "harness";

/// The label Dynamo's operator puts on the pods of a `DynamoGraphDeployment`.
pub const DYNAMO_GRAPH_LABEL: &str = "nvidia.com/dynamo-graph-deployment-name";

/// Kinds whose pod template gets the workload's labels too, so their pods are found.
const TEMPLATED: [&str; 4] = ["Deployment", "StatefulSet", "Job", "DaemonSet"];

/// Pod waiting reasons that never resolve by themselves: the workload fails at once.
const HOPELESS: [&str; 2] = ["InvalidImageName", "ErrImageNeverPull"];

/// Pod waiting reasons that may resolve (a registry comes back, a missing Secret is
/// created, a crash was a one-off): the workload fails when one lasts the grace period.
const TROUBLED: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Restarts after which a crash-looping container fails the workload without waiting out
/// the grace period.
const CRASH_RESTARTS: i32 = 5;

/// How long a pod may stay unschedulable, unable to pull its image or crash-looping before
/// the workload fails (autoscalers add nodes in minutes).
pub const DEFAULT_FAIL_FAST_GRACE: Duration = Duration::from_secs(180);

/// Log lines kept per container.
const LOG_TAIL_LINES: i64 = 2000;

/// Log lines of a failing container quoted in the failure.
const REASON_TAIL_LINES: i64 = 20;

/// How long teardown waits for what it deleted to be gone.
const TEARDOWN_WAIT: Duration = Duration::from_secs(300);

/// Runs workloads as Kubernetes objects in one namespace, through an injected
/// [`kube::Client`] (from a kubeconfig, in-cluster config, or a test's fake API server).
///
/// * A spec with `manifests` applies them (every YAML document) with server-side apply as
///   field manager [`FIELD_MANAGER`], so an object left by a crashed run is taken over, not
///   a conflict. Kinds are looked up through API discovery (their plural and scope); a kind
///   the cluster does not serve is refused before anything is applied. Objects are labelled
///   with the workload's id ([`WORKLOAD_LABEL`]), the spec's labels and the backend's; pod
///   templates are labelled too, and with [`K8sBackend::owner`] they carry an
///   ownerReference. A spec with an `image` becomes a Deployment and a Service when it
///   serves on a port, else a Job (no retries). A plain process is refused.
/// * Readiness: a Job has succeeded or failed; a Deployment or StatefulSet has its ready
///   replicas; any other object (a Dynamo `DynamoGraphDeployment`, ...) reports
///   `status.state: successful` or a `Ready` condition. The workload's pods (and a
///   `DynamoGraphDeployment`'s, found by [`DYNAMO_GRAPH_LABEL`]) are watched, init
///   containers included: a pod that stays unschedulable, cannot pull its image or
///   crash-loops for the grace period ([`K8sBackend::fail_fast_grace`]), crashed
///   five times, or has an invalid image fails the workload with the pod's
///   reason and the tail of that container's log.
/// * The endpoint is in-cluster DNS: `http://<service>.<namespace>.svc.cluster.local:<port>`
///   of the first Service applied (the spec's port when it gives one), or
///   `<name>-frontend:8000` for a `DynamoGraphDeployment`: load runs next to the model,
///   never through a port-forward.
/// * Logs are the tail of each container of the workload's pods. Teardown deletes every
///   object it created and everything labelled with the workload, in the background
///   propagation mode, waits until they and their pods are gone, and is idempotent.
#[derive(Clone)]
pub struct K8sBackend {
    client: kube::Client,
    namespace: String,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
    grace: Duration,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    launched: Mutex<BTreeMap<String, Launched>>,
    /// Kinds found through discovery, by `apiVersion/kind`.
    kinds: Mutex<BTreeMap<String, Kind>>,
    /// When each pod problem was first seen, by `pod/container/reason`.
    troubles: Mutex<BTreeMap<String, Instant>>,
}

/// A kind as the cluster serves it.
#[derive(Debug, Clone)]
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

#[derive(Debug, Clone)]
struct Launched {
    /// Applied objects, in order.
    objects: Vec<(Kind, String)>,
    /// The object whose state decides readiness.
    primary: (Kind, String),
    endpoint: Option<Endpoint>,
    inventory: Vec<Deployed>,
    /// Label selectors of the workload's pods.
    selectors: Vec<String>,
}

/// What a workload deployed, for the run's records (normalising per GPU needs the count).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Deployed {
    /// `kind/name`.
    pub object: String,
    /// Container images in its pod template (or spec, for custom resources).
    pub images: Vec<String>,
    /// GPUs requested per replica (`nvidia.com/gpu` and `amd.com/gpu` limits or requests);
    /// for a `DynamoGraphDeployment`, of the whole graph (each service's replicas × nodes ×
    /// GPUs).
    pub gpus: u64,
    /// Replicas, when the object has them.
    pub replicas: Option<u64>,
}

impl std::fmt::Debug for K8sBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sBackend")
            .field("namespace", &self.namespace)
            .field("labels", &self.labels)
            .field("grace", &self.grace)
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
            owner: None,
            grace: DEFAULT_FAIL_FAST_GRACE,
            inner: Arc::default(),
        }
    }

    /// Adds a label to every object this backend creates (e.g. `harness.dev/run=<id>`).
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Makes `owner` (an object in the backend's namespace, such as the operator's
    /// `DynamoBenchmark`) the owner of every namespaced object this backend creates, so
    /// deleting it deletes them.
    #[must_use]
    pub fn owner(mut self, owner: OwnerReference) -> Self {
        self.owner = Some(owner);
        self
    }

    /// How long a pod may stay unschedulable, unable to pull its image or crash-looping
    /// before its workload fails (default [`DEFAULT_FAIL_FAST_GRACE`]).
    #[must_use]
    pub fn fail_fast_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
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

    /// The kind `kind` of `api_version`, as the cluster serves it (API discovery, cached).
    async fn kind(&self, api_version: &str, kind: &str) -> Result<Option<Kind>> {
        let id = format!("{api_version}/{kind}");
        if let Some(k) = self
            .inner
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(Some(k.clone()));
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let found = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((ar, caps)) => Kind {
                ar,
                namespaced: caps.scope == kube::discovery::Scope::Namespaced,
            },
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(kube::Error::Discovery(_)) => return Ok(None),
            Err(e) => return Err(kube_error(&format!("looking up kind {id}"), e)),
        };
        self.inner
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, found.clone());
        Ok(Some(found))
    }

    /// The kind of manifest `o`, refused when the cluster does not serve it.
    async fn kind_of(&self, o: &Value) -> Result<Kind> {
        let (api_version, kind) = api_version_kind(o)?;
        self.kind(api_version, kind).await?.ok_or_else(|| {
            Error::invalid(
                format!("manifest `{kind}/{}`", name_of(o)),
                format!(
                    "the cluster does not serve kind `{kind}` of `{api_version}` (is its CRD installed?)"
                ),
            )
        })
    }

    fn api(&self, k: &Kind) -> Api<DynamicObject> {
        if k.namespaced {
            Api::namespaced_with(self.client.clone(), &self.namespace, &k.ar)
        } else {
            Api::all_with(self.client.clone(), &k.ar)
        }
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

    /// The pods matching any of `selectors`, once each.
    async fn pods_of(&self, selectors: &[String]) -> Result<Vec<Pod>> {
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        for s in selectors {
            let list = self
                .pods()
                .list(&ListParams::default().labels(s))
                .await
                .map_err(|e| kube_error("listing pods", e))?;
            for p in list.items {
                pods.insert(p.metadata.name.clone().unwrap_or_default(), p);
            }
        }
        Ok(pods.into_values().collect())
    }

    /// Whether a problem seen now has lasted the grace period (first sightings are noted).
    fn outlasted(&self, key: String) -> bool {
        let mut seen = self
            .inner
            .troubles
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.entry(key).or_insert_with(Instant::now).elapsed() >= self.grace
    }

    /// The first of `pods` that cannot become ready, as a failure reason.
    async fn pod_failure(&self, pods: &[Pod]) -> Option<String> {
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(status) = &pod.status else { continue };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let unschedulable = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
            if let Some(c) = unschedulable
                && self.outlasted(format!("{name}//Unschedulable"))
            {
                return Some(format!(
                    "pod {name}: Unschedulable for {:?}: {}",
                    self.grace,
                    c.message.clone().unwrap_or_default()
                ));
            }
            let containers = status
                .init_container_statuses
                .iter()
                .flatten()
                .map(|c| (c, "init container"))
                .chain(
                    status
                        .container_statuses
                        .iter()
                        .flatten()
                        .map(|c| (c, "container")),
                );
            for (cs, what) in containers {
                let Some(reason) = container_trouble(cs) else {
                    continue;
                };
                let key = format!("{name}/{}/{}", cs.name, reason.0);
                let fatal = HOPELESS.contains(&reason.0.as_str())
                    || (reason.0 == "OOMKilled" || reason.0 == "CrashLoopBackOff")
                        && cs.restart_count >= CRASH_RESTARTS;
                if !fatal && !self.outlasted(key) {
                    continue;
                }
                let tail = self.container_tail(&name, &cs.name).await;
                return Some(format!("pod {name} {what} {}: {}{tail}", cs.name, reason.1));
            }
        }
        None
    }

    /// The last lines of a container's log, as a suffix of a failure reason.
    async fn container_tail(&self, pod: &str, container: &str) -> String {
        let params = LogParams {
            container: Some(container.to_owned()),
            tail_lines: Some(REASON_TAIL_LINES),
            ..LogParams::default()
        };
        let mut text = match self.pods().logs(pod, &params).await {
            Ok(l) if !l.trim().is_empty() => l,
            _ => {
                // A crashed container's log is the previous attempt's.
                let previous = LogParams {
                    previous: true,
                    ..params
                };
                self.pods().logs(pod, &previous).await.unwrap_or_default()
            }
        };
        if text.trim().is_empty() {
            return String::new();
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        format!("; last log lines:\n{text}")
    }

    /// Deletes everything labelled `selector` among the usual kinds and `extra` ones.
    async fn delete_labelled(&self, selector: &str, extra: &[Kind]) -> Result<Vec<String>> {
        let lp = ListParams::default().labels(selector);
        let mut kinds: Vec<Kind> = Vec::new();
        for (api_version, kind) in [
            ("batch/v1", "Job"),
            ("nvidia.com/v1alpha1", "DynamoGraphDeployment"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "StatefulSet"),
            ("v1", "Service"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Pod"),
        ] {
            if let Some(k) = self.kind(api_version, kind).await? {
                kinds.push(k);
            }
        }
        for k in extra {
            if !kinds.iter().any(|x| x.ar == k.ar) {
                kinds.insert(0, k.clone());
            }
        }
        let mut deleted = Vec::new();
        for k in &kinds {
            let api = self.api(k);
            let items = match api.list(&lp).await {
                Ok(l) => l.items,
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(kube_error("listing for teardown", e)),
            };
            for o in items {
                let name = o.metadata.name.unwrap_or_default();
                delete_quietly(&api, &name).await?;
                deleted.push(format!("{}/{name}", k.ar.kind));
            }
        }
        Ok(deleted)
    }

    /// Waits until `objects` are gone (finalizers done) and no pod matches `selectors`.
    async fn wait_gone(
        &self,
        what: &str,
        objects: &[(Kind, String)],
        selectors: &[String],
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut left = Vec::new();
            for (k, name) in objects {
                match self.api(k).get_opt(name).await {
                    Ok(Some(_)) => left.push(format!("{}/{name}", k.ar.kind)),
                    Ok(None) => {}
                    Err(e) => return Err(kube_error("waiting for deletion", e)),
                }
            }
            for p in self.pods_of(selectors).await? {
                left.push(format!("Pod/{}", p.metadata.name.unwrap_or_default()));
            }
            if left.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= TEARDOWN_WAIT {
                return Err(Error::failed(
                    format!("tearing down `{what}`"),
                    format!("still there after {TEARDOWN_WAIT:?}: {}", left.join(", ")),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes whatever carries `selector` (e.g. `harness.dev/run=<id>`): the usual kinds
    /// and Dynamo graphs, and waits until they and their pods are gone; returns what it
    /// deleted, as `kind/name`. What `harness k8s cleanup --run ID` does after a crash.
    ///
    /// # Errors
    /// When the API server refuses, or something is still there after five minutes.
    pub async fn cleanup(&self, selector: &str) -> Result<Vec<String>> {
        let graphs: Vec<String> = match self
            .kind("nvidia.com/v1alpha1", "DynamoGraphDeployment")
            .await?
        {
            Some(k) => self
                .api(&k)
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| kube_error("listing Dynamo graphs", e))?
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .map(|n| format!("{DYNAMO_GRAPH_LABEL}={n}"))
                .collect(),
            None => Vec::new(),
        };
        let deleted = self.delete_labelled(selector, &[]).await?;
        let mut selectors = vec![selector.to_owned()];
        selectors.extend(graphs);
        self.wait_gone(selector, &[], &selectors).await?;
        Ok(deleted)
    }
}

/// A container's trouble, as (reason, description), when it has one.
fn container_trouble(cs: &ContainerStatus) -> Option<(String, String)> {
    let oom = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or(cs.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    if oom {
        return Some((
            "OOMKilled".into(),
            format!("OOMKilled ({} restarts)", cs.restart_count),
        ));
    }
    let w = cs.state.as_ref()?.waiting.as_ref()?;
    let reason = w.reason.clone()?;
    if !(TROUBLED.contains(&reason.as_str()) || HOPELESS.contains(&reason.as_str())) {
        return None;
    }
    Some((
        reason.clone(),
        format!(
            "{reason}: {} ({} restarts)",
            w.message.clone().unwrap_or_default(),
            cs.restart_count
        ),
    ))
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

/// The `apiVersion` and `kind` of a manifest.
fn api_version_kind(o: &Value) -> Result<(&str, &str)> {
    let api_version = o.get("apiVersion").and_then(Value::as_str);
    let kind = o.get("kind").and_then(Value::as_str);
    match (api_version, kind) {
        (Some(av), Some(kind)) if !av.is_empty() && !kind.is_empty() => Ok((av, kind)),
        _ => Err(Error::invalid(
            format!("manifest `{}`", name_of(o)),
            "needs apiVersion and kind",
        )),
    }
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
        api_version_kind(d)?;
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
    if o.get("kind").and_then(Value::as_str) == Some("DynamoGraphDeployment") {
        gpus = graph_gpus(o);
    }
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

/// The GPUs of a `DynamoGraphDeployment`: each service's replicas × nodes × GPUs.
fn graph_gpus(o: &Value) -> u64 {
    let count = |v: Option<&Value>| {
        v.and_then(|g| {
            g.as_u64()
                .or_else(|| g.as_str().and_then(|s| s.parse().ok()))
        })
    };
    o.pointer("/spec/services")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(_, s)| {
            let per_pod = ["limits", "requests"]
                .iter()
                .find_map(|side| count(s.pointer(&format!("/resources/{side}/gpu"))))
                .unwrap_or(0);
            let replicas = count(s.get("replicas")).unwrap_or(1);
            let nodes = count(s.pointer("/multinode/nodeCount")).unwrap_or(1);
            per_pod * replicas * nodes
        })
        .sum()
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
        let mut objects = self.objects(spec, &id)?;
        let endpoint = self.endpoint(spec, &objects)?;
        // Every kind is looked up before anything is applied.
        let mut kinds = Vec::with_capacity(objects.len());
        for o in &mut objects {
            let kind = self.kind_of(o).await?;
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                if kind.namespaced {
                    meta.insert("namespace".into(), json!(self.namespace));
                    if let Some(owner) = &self.owner {
                        meta.insert("ownerReferences".into(), json!([owner]));
                    }
                } else {
                    meta.remove("namespace");
                }
            }
            kinds.push(kind);
        }
        let mut applied: Vec<(Kind, String)> = Vec::new();
        for (o, kind) in objects.iter().zip(&kinds) {
            let obj: DynamicObject = serde_json::from_value(o.clone())
                .map_err(|e| Error::invalid(format!("manifest `{}`", name_of(o)), e.to_string()))?;
            let api = self.api(kind);
            let name = name_of(o);
            let res = if name.is_empty() {
                // generateName: only a create can name it.
                api.create(&PostParams::default(), &obj).await
            } else {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(&name, &params, &Patch::Apply(&obj)).await
            };
            match res {
                Ok(done) => {
                    let name = done.metadata.name.unwrap_or(name);
                    tracing::info!(kind = %kind.ar.kind, name = %name, namespace = %self.namespace, "applied");
                    applied.push((kind.clone(), name));
                }
                Err(e) => {
                    for (k, name) in applied.iter().rev() {
                        let _ = delete_quietly(&self.api(k), name).await;
                    }
                    return Err(kube_error(
                        &format!("applying {} {}", kind.ar.kind, name_of(o)),
                        e,
                    ));
                }
            }
        }
        let primary = objects
            .iter()
            .zip(&applied)
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
            .or_else(|| objects.iter().zip(&applied).next())
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Error::invalid(format!("`{}`", spec.name), "nothing to create"))?;
        let mut selectors = vec![format!("{WORKLOAD_LABEL}={id}")];
        selectors.extend(
            applied
                .iter()
                .filter(|(k, _)| k.ar.kind == "DynamoGraphDeployment")
                .map(|(_, name)| format!("{DYNAMO_GRAPH_LABEL}={name}")),
        );
        let inventory = objects.iter().map(inventory).collect();
        self.inner
            .launched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                Launched {
                    objects: applied,
                    primary,
                    endpoint: endpoint.clone(),
                    inventory,
                    selectors,
                },
            );
        Ok(Workload::new(id, spec.name.clone(), endpoint))
    }

    async fn status(&self, workload: &Workload) -> Result<WorkloadStatus> {
        let l = self.launched(&workload.id).ok_or_else(|| Error::NotFound {
            what: format!("workload `{}`", workload.id),
        })?;
        let (kind, name) = &l.primary;
        let obj = self
            .api(kind)
            .get(name)
            .await
            .map_err(|e| kube_error(&format!("reading {} {name}", kind.ar.kind), e))?;
        let value =
            serde_json::to_value(&obj).map_err(|e| Error::failed_from("reading the object", e))?;
        let state = object_state(&kind.ar.kind, &value, l.endpoint.clone());
        if matches!(state, WorkloadStatus::Pending) || kind.ar.kind == "Job" {
            let pods = self.pods_of(&l.selectors).await?;
            if let Some(reason) = self.pod_failure(&pods).await {
                return Ok(WorkloadStatus::Failed { reason });
            }
        }
        if let WorkloadStatus::Failed { reason } = state {
            let logs = self.logs(workload).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&logs);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(REASON_TAIL_LINES as usize)..].join("\n");
            return Ok(WorkloadStatus::Failed {
                reason: format!("{reason}; last log lines:\n{tail}"),
            });
        }
        Ok(state)
    }

    async fn logs(&self, workload: &Workload) -> Result<Bytes> {
        let selectors = match self.launched(&workload.id) {
            Some(l) => l.selectors,
            None => vec![format!("{WORKLOAD_LABEL}={}", workload.id)],
        };
        let pods = self.pods_of(&selectors).await?;
        let mut parts: Vec<(String, String)> = Vec::new();
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let spec = pod.spec.unwrap_or_default();
            let containers = spec
                .init_containers
                .unwrap_or_default()
                .into_iter()
                .chain(spec.containers)
                .map(|c| c.name);
            for container in containers {
                let params = LogParams {
                    container: Some(container.clone()),
                    tail_lines: Some(LOG_TAIL_LINES),
                    ..LogParams::default()
                };
                let text = match self.pods().logs(&name, &params).await {
                    Ok(t) => t,
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 400 => String::new(),
                    Err(e) => return Err(kube_error(&format!("logs of pod {name}"), e)),
                };
                parts.push((format!("pod {name} container {container}"), text));
            }
        }
        let mut out = String::new();
        let many = parts.len() > 1;
        for (what, text) in parts {
            if many {
                out.push_str(&format!("==> {what} <==\n"));
            }
            out.push_str(&text);
        }
        Ok(Bytes::from(out))
    }

    async fn teardown(&self, workload: &Workload) -> Result<()> {
        let (objects, selectors) = match self.launched(&workload.id) {
            Some(l) => (l.objects, l.selectors),
            None => (
                Vec::new(),
                vec![format!("{WORKLOAD_LABEL}={}", workload.id)],
            ),
        };
        for (k, name) in objects.iter().rev() {
            delete_quietly(&self.api(k), name).await?;
        }
        let kinds: Vec<Kind> = objects.iter().map(|(k, _)| k.clone()).collect();
        self.delete_labelled(&format!("{WORKLOAD_LABEL}={}", workload.id), &kinds)
            .await?;
        // Teardown returns when the workload is gone: its objects (finalizers done) and
        // every pod, GPU pods of a Dynamo graph included.
        self.wait_gone(&workload.id, &objects, &selectors).await
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
