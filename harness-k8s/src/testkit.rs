//! A fake Kubernetes API server for tests, behind a real [`kube::Client`]
//! (`tower_test::mock::pair`), so the client code under test is exercised as it is against
//! a cluster. It is strict where our code depends on the server's rules:
//!
//! * **Discovery**: `/api`, `/apis` and `/apis/<group>/<version>` list the kinds it serves
//!   (the built-in ones, harness' `DynamoBenchmark` and Dynamo's `DynamoGraphDeployment`;
//!   more with [`FakeApiServer::install_crd`]). A request for any other resource is `404`,
//!   as is a namespaced path for a cluster-scoped kind.
//! * **Optimistic concurrency**: every write gives the object a new `resourceVersion`; an
//!   update or merge patch that carries a stale one is `409 Conflict`.
//! * **The status subresource**: writes to an object keep its stored `.status`; writes to
//!   `/status` change only `.status`. `metadata.generation` counts changes of the rest.
//! * **Patches**: JSON merge, JSON patch (with `test`), and server-side apply
//!   (`fieldManager` required; fields owned by another manager with a different value are a
//!   `409` unless forced; fields a manager stops applying are removed). Strategic merge is
//!   refused for custom resources (`415`), as a real server does.
//! * **Deletion**: an object with finalizers gets a `deletionTimestamp` and stays
//!   (`Terminating`) until they are removed; new finalizers cannot be added then. Pods take
//!   [`FakeApiServer::terminate_after`] requests to go. Deleting an owner deletes what it
//!   owns (background propagation).
//! * **Watches** stay open and deliver `ADDED`, `MODIFIED` and `DELETED` events from the
//!   `resourceVersion` asked for, as changes happen.
//! * **Faults**: [`FakeApiServer::fail`] answers matching requests with `5xx` or `429`.
//! * **Pod logs** are per container: a pod with several containers needs `container=`
//!   (`400` otherwise); `tailLines` is honoured.
//!
//! It simulates the controllers a benchmark needs:
//!
//! * a Job gets a pod that runs its [`PodScript`] and the Job completes or fails with it;
//! * a Deployment or StatefulSet gets `replicas` pods and counts the ready ones;
//! * a `DynamoGraphDeployment` gets, like Dynamo's operator, `replicas × nodeCount` pods per
//!   service, labelled `nvidia.com/dynamo-graph-deployment-name` and
//!   `nvidia.com/dynamo-component` (not with the graph's own labels), a `<name>-frontend`
//!   Service, and `status.state: successful` with a `Ready` condition once every pod is ready;
//! * another installed custom resource is ready one step after it is created;
//! * a pod waits [`FakeApiServer::schedule_after`] requests to be scheduled, then its fate is
//!   decided by [`FakeApiServer::on_pod`]: run (and exit), crash-loop, image pull back-off,
//!   unschedulable, OOM-killed, a crash-looping init container, or one fate for a while and
//!   then another ([`PodScript::Until`]).
//!
//! Controllers advance one step per API request, so tests are deterministic and need no
//! sleeping beyond the client's own polling.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use harness_k8s::testkit::FakeApiServer;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! let fake = FakeApiServer::new();
//! let api: kube::Api<ConfigMap> = kube::Api::namespaced(fake.client(), "default");
//! let cm: ConfigMap = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}
//! })).unwrap();
//! let created = api.create(&Default::default(), &cm).await.unwrap();
//! assert_eq!(api.get("c").await.unwrap().data.unwrap()["k"], "v");
//! // An update from a stale copy is refused.
//! let mut stale = created.clone();
//! stale.metadata.resource_version = Some("0".into());
//! assert!(api.replace("c", &Default::default(), &stale).await.is_err());
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};

/// What a simulated pod does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodScript {
    /// Starts, becomes ready, prints `logs`; exits with `exit` (`None`: serves until deleted).
    Run {
        /// What it prints.
        logs: String,
        /// Its exit code, when it exits.
        exit: Option<i32>,
    },
    /// Starts, prints `logs`, exits 1 and is restarted over and over: `CrashLoopBackOff`.
    CrashLoop {
        /// What each attempt prints.
        logs: String,
    },
    /// Its image cannot be pulled: `ImagePullBackOff`.
    ImagePullBackOff,
    /// No node can take it: `PodScheduled=False`, reason `Unschedulable`.
    Unschedulable,
    /// Killed for using too much memory, then restarted: `OOMKilled`.
    OomKilled,
    /// Its first init container crash-loops (`Init:CrashLoopBackOff`), printing `logs`; the
    /// main containers wait in `PodInitializing`.
    InitCrashLoop {
        /// What each attempt of the init container prints.
        logs: String,
    },
    /// Behaves as `first` for `steps` requests after it is scheduled, then as `then` (an
    /// autoscaler adds a node, a registry comes back, a crash stops).
    Until {
        /// Requests during which `first` holds.
        steps: u32,
        /// The fate at first.
        first: Box<PodScript>,
        /// The fate after.
        then: Box<PodScript>,
    },
    /// Runs the container's command as a local process, as a kubelet would, with the
    /// container's environment (`value` and `valueFrom.configMapKeyRef` resolved from the
    /// stored ConfigMaps) and its ConfigMap volumes written to a folder of the pod's (paths
    /// under a mount, anywhere in the command's words, are mapped there); `program` replaces the command's
    /// first word (the image's binary, e.g. `harness`, by a local build). The pod is ready
    /// while it runs and ends with its exit status; its output is the pod's log. When the
    /// server is served over HTTP ([`FakeApiServer::serve`]), `KUBECONFIG` names it, with the
    /// pod's namespace, as a pod's service account finds its cluster.
    Exec {
        /// The local program for the command's first word.
        program: Option<std::path::PathBuf>,
    },
}

type PodRule = Arc<dyn Fn(&Value) -> PodScript + Send + Sync>;

/// Where an object lives: (`api/v1` or `apis/<group>/<version>`, plural, namespace (empty
/// when cluster-scoped), name).
type Key = (String, String, String, String);

/// The body of the fake's responses: whole, or a stream (watches).
type FakeBody = BoxBody<Bytes, Infallible>;

/// A [`FakeApiServer`] served over HTTP ([`FakeApiServer::serve`]).
#[derive(Debug, Clone)]
pub struct FakeHttp {
    url: String,
}

impl FakeHttp {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes a kubeconfig at `path` whose current context is this server, with
    /// `namespace` as its namespace (set `KUBECONFIG` to it for a program under test).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &std::path::Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, kubeconfig(&self.url, namespace))
    }
}

/// A kubeconfig whose current context is the server at `url`, in `namespace`.
fn kubeconfig(url: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
         users:\n- name: fake\n  user: {{}}\n\
         contexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: {namespace}}}\n"
    )
}

/// A kind the fake serves.
#[derive(Debug, Clone)]
struct Served {
    /// `api/v1` or `apis/<group>/<version>`.
    api: String,
    kind: String,
    plural: String,
    namespaced: bool,
}

/// An open watch.
struct Watcher {
    api: String,
    plural: String,
    ns: Option<String>,
    selector: String,
    tx: futures::channel::mpsc::UnboundedSender<Bytes>,
}

/// Requests to answer with an error.
struct Fault {
    method: Option<Method>,
    path: String,
    code: u16,
    left: u32,
}

struct State {
    objects: BTreeMap<Key, Value>,
    ages: BTreeMap<Key, u32>,
    /// Logs by (namespace, pod), then by container.
    logs: BTreeMap<(String, String), BTreeMap<String, String>>,
    next: u64,
    pod_rule: PodRule,
    requests: Vec<String>,
    procs: BTreeMap<Key, (std::process::Child, std::path::PathBuf)>,
    served: Vec<Served>,
    /// Every change, as (resourceVersion, key, event type, object), for watches.
    events: Vec<(u64, Key, &'static str, Value)>,
    watchers: Vec<Watcher>,
    faults: Vec<Fault>,
    /// Fields each manager set, by object: manager → JSON pointers of leaf values.
    managers: BTreeMap<Key, BTreeMap<String, BTreeSet<String>>>,
    /// Pods being deleted, with the requests left before they are gone.
    terminating: BTreeMap<Key, u32>,
    schedule_after: u32,
    terminate_after: u32,
    /// Where the server is served over HTTP ([`FakeApiServer::serve`]): pods run as local
    /// processes get a kubeconfig for it, as a pod finds its cluster's API server.
    url: Option<String>,
    /// This server's number in the process.
    id: u64,
}

impl Drop for State {
    fn drop(&mut self) {
        for (_, (mut child, dir)) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The fake API server; clones share it.
#[derive(Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").finish_non_exhaustive()
    }
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

/// The default fate of a pod: it runs; a Job's pod exits 0, a server's keeps serving.
fn default_rule(pod: &Value) -> PodScript {
    let job = pod.pointer("/metadata/labels/job-name").is_some();
    PodScript::Run {
        logs: format!(
            "{} started\n",
            pod.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("pod")
        ),
        exit: job.then_some(0),
    }
}

/// The built-in kinds: (api, kind, plural, namespaced).
const BUILT_IN: [(&str, &str, &str, bool); 20] = [
    ("api/v1", "Pod", "pods", true),
    ("api/v1", "Service", "services", true),
    ("api/v1", "ConfigMap", "configmaps", true),
    ("api/v1", "Secret", "secrets", true),
    ("api/v1", "ServiceAccount", "serviceaccounts", true),
    (
        "api/v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    ),
    ("api/v1", "Event", "events", true),
    ("api/v1", "Namespace", "namespaces", false),
    ("apis/apps/v1", "Deployment", "deployments", true),
    ("apis/apps/v1", "StatefulSet", "statefulsets", true),
    ("apis/apps/v1", "DaemonSet", "daemonsets", true),
    ("apis/apps/v1", "ReplicaSet", "replicasets", true),
    ("apis/batch/v1", "Job", "jobs", true),
    ("apis/rbac.authorization.k8s.io/v1", "Role", "roles", true),
    (
        "apis/rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    (
        "apis/rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "apis/rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    ("apis/coordination.k8s.io/v1", "Lease", "leases", true),
    (
        "apis/apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    ("apis/networking.k8s.io/v1", "Ingress", "ingresses", true),
];

/// Dynamo's pod labels.
const DGD_LABEL: &str = "nvidia.com/dynamo-graph-deployment-name";
const DGD_COMPONENT: &str = "nvidia.com/dynamo-component";
const DGD_COMPONENT_TYPE: &str = "nvidia.com/dynamo-component-type";

impl FakeApiServer {
    /// An empty cluster with harness' and Dynamo's CRDs installed, whose pods run (Job pods
    /// exit 0) two requests after they are created.
    pub fn new() -> Self {
        let mut served: Vec<Served> = BUILT_IN
            .iter()
            .map(|(api, kind, plural, namespaced)| Served {
                api: (*api).to_owned(),
                kind: (*kind).to_owned(),
                plural: (*plural).to_owned(),
                namespaced: *namespaced,
            })
            .collect();
        for (api, kind, plural) in [
            (
                "apis/harness.dev/v1alpha1",
                "DynamoBenchmark",
                "dynamobenchmarks",
            ),
            (
                "apis/nvidia.com/v1alpha1",
                "DynamoGraphDeployment",
                "dynamographdeployments",
            ),
        ] {
            served.push(Served {
                api: api.to_owned(),
                kind: kind.to_owned(),
                plural: plural.to_owned(),
                namespaced: true,
            });
        }
        FakeApiServer {
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                ages: BTreeMap::new(),
                logs: BTreeMap::new(),
                next: 1,
                pod_rule: Arc::new(default_rule),
                requests: Vec::new(),
                procs: BTreeMap::new(),
                served,
                events: Vec::new(),
                watchers: Vec::new(),
                faults: Vec::new(),
                managers: BTreeMap::new(),
                terminating: BTreeMap::new(),
                schedule_after: 2,
                terminate_after: 2,
                url: None,
                id: {
                    static NEXT: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                },
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides each pod's fate from the pod (its labels, image, command, ...).
    pub fn on_pod(&self, rule: impl Fn(&Value) -> PodScript + Send + Sync + 'static) {
        self.lock().pod_rule = Arc::new(rule);
    }

    /// Serves a custom resource `kind` (`plural`) of `group/version`, as installing its CRD
    /// does.
    pub fn install_crd(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
    ) {
        self.lock().served.push(Served {
            api: format!("apis/{group}/{version}"),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
        });
    }

    /// Stops serving `plural` (its CRD is not installed).
    pub fn uninstall_crd(&self, plural: &str) {
        self.lock().served.retain(|s| s.plural != plural);
    }

    /// Pods wait `steps` requests before they are scheduled (default 2).
    pub fn schedule_after(&self, steps: u32) {
        self.lock().schedule_after = steps;
    }

    /// Deleted pods take `steps` requests to go (default 2).
    pub fn terminate_after(&self, steps: u32) {
        self.lock().terminate_after = steps;
    }

    /// Answers the next `times` requests whose method is `method` (any when empty) and whose
    /// path contains `path` with status `code` (e.g. 500, 503, 429).
    pub fn fail(&self, method: &str, path: &str, code: u16, times: u32) {
        self.lock().faults.push(Fault {
            method: (!method.is_empty())
                .then(|| Method::from_bytes(method.as_bytes()).ok())
                .flatten(),
            path: path.to_owned(),
            code,
            left: times,
        });
    }

    /// A client for this server, with `default` as its default namespace. Must be called
    /// inside a tokio runtime: it spawns the task that answers the client.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let response = me.handle(&parts, &bytes);
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Serves this API server over HTTP on a free loopback port, for programs of their own
    /// (a binary under test) that find a cluster through a kubeconfig
    /// ([`FakeHttp::write_kubeconfig`]). It serves until the runtime ends. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn serve(&self) -> std::io::Result<FakeHttp> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        self.lock().url = Some(url.clone());
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(me.handle(&parts, &bytes))
                        }
                    });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!(error = %e, "fake API server connection");
                    }
                });
            }
        });
        Ok(FakeHttp { url })
    }

    /// Every stored object of resource `plural` (`pods`, `jobs`, `dynamographdeployments`),
    /// Terminating ones included.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.1 == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object stored, of any resource.
    pub fn all_objects(&self) -> Vec<Value> {
        self.lock().objects.values().cloned().collect()
    }

    /// The requests answered so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Stores `object` as if created by someone else (no controller age), status included.
    pub fn insert(&self, api: &str, plural: &str, mut object: Value) {
        let mut st = self.lock();
        let namespaced = st
            .served
            .iter()
            .find(|s| s.api == api && s.plural == plural)
            .is_none_or(|s| s.namespaced);
        let ns = if namespaced {
            str_at(&object, "/metadata/namespace").unwrap_or("default")
        } else {
            ""
        };
        let name = str_at(&object, "/metadata/name").unwrap_or_default();
        let key = (
            api.to_owned(),
            plural.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        );
        let n = st.next;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("uid")
                .or_insert_with(|| json!(format!("uid-{n}")));
            meta.entry("generation").or_insert_with(|| json!(1));
        }
        save(&mut st, key, object, "ADDED");
    }

    fn handle(&self, parts: &http::request::Parts, body: &[u8]) -> Response<FakeBody> {
        let mut st = self.lock();
        let path_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        st.requests.push(format!("{} {path_query}", parts.method));
        reconcile(&mut st);
        if let Some(code) = take_fault(&mut st, &parts.method, parts.uri.path()) {
            let reason = if code == 429 {
                "TooManyRequests"
            } else {
                "InternalError"
            };
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return status(code, reason, "injected by the test");
        }
        let query = parse_query(parts.uri.query().unwrap_or(""));
        if parts.method == Method::GET
            && let Some(r) = discovery(&st, parts.uri.path())
        {
            return r;
        }
        let Some(route) = Route::parse(parts.uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let Some(served) = st
            .served
            .iter()
            .find(|s| s.api == route.api && s.plural == route.plural)
            .cloned()
        else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        // A cluster-scoped kind has no namespaced path; a namespaced kind is read across
        // namespaces without one, and written only with one.
        match (&route.ns, served.namespaced) {
            (Some(_), false) => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            }
            (None, true) if !(parts.method == Method::GET && route.name.is_none()) => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            }
            _ => {}
        }
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let manager = query.get("fieldManager").cloned();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let method = &parts.method;
        match (method, route.name.as_deref(), route.sub.as_deref()) {
            (&Method::POST, None, None) => create(&mut st, &route, &served, body, manager),
            (&Method::GET, None, None)
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                watch(&mut st, &route, selector, query.get("resourceVersion"))
            }
            (&Method::GET, None, None) => {
                let items = list(&st, &route, &selector);
                json_ok(&json!({
                    "apiVersion": route.api_version(),
                    "kind": format!("{}List", served.kind),
                    "metadata": {"resourceVersion": (st.next - 1).to_string()},
                    "items": items,
                }))
            }
            (&Method::DELETE, None, None) => {
                let items = list(&st, &route, &selector);
                for o in &items {
                    let name = str_at(o, "/metadata/name").unwrap_or_default().to_owned();
                    delete(&mut st, &route.key(&name));
                }
                json_ok(&json!({"apiVersion": route.api_version(), "kind": "List", "items": items}))
            }
            (&Method::GET, Some(name), Some("log")) => pod_log(&st, &route, name, &query),
            (&Method::GET, Some(name), None | Some("status")) => {
                match st.objects.get(&route.key(name)) {
                    Some(o) => json_ok(o),
                    None => not_found(&route, name),
                }
            }
            (&Method::PATCH, Some(name), None | Some("status")) => {
                patch(&mut st, &route, &served, name, &content_type, body, &query)
            }
            (&Method::PUT, Some(name), None | Some("status")) => {
                let Ok(new) = serde_json::from_slice::<Value>(body) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
                };
                let key = route.key(name);
                let Some(old) = st.objects.get(&key).cloned() else {
                    return not_found(&route, name);
                };
                if let Some(rv) = str_at(&new, "/metadata/resourceVersion")
                    && Some(rv) != str_at(&old, "/metadata/resourceVersion")
                {
                    return conflict(&route, name);
                }
                let owned = (manager.unwrap_or_else(|| "unknown".into()), new.clone());
                write(&mut st, &key, old, new, route.sub.is_some(), Some(owned))
            }
            (&Method::DELETE, Some(name), None) => {
                let key = route.key(name);
                match delete(&mut st, &key) {
                    Some(o) => json_ok(&o),
                    None => not_found(&route, name),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not served by the fake",
            ),
        }
    }
}

/// The discovery documents: `/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`.
fn discovery(st: &State, path: &str) -> Option<Response<FakeBody>> {
    let path = path.trim_end_matches('/');
    if path == "/api" {
        return Some(json_ok(&json!({"kind": "APIVersions", "versions": ["v1"]})));
    }
    if path == "/apis" {
        let mut groups: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &st.served {
            if let Some(gv) = s.api.strip_prefix("apis/") {
                let (g, v) = gv.split_once('/').unwrap_or((gv, ""));
                groups.entry(g).or_insert(v);
            }
        }
        let groups: Vec<Value> = groups
            .iter()
            .map(|(g, v)| {
                let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                json!({"name": g, "versions": [gv], "preferredVersion": gv})
            })
            .collect();
        return Some(json_ok(
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        ));
    }
    let api = path.trim_start_matches('/');
    let depth = api.split('/').count();
    let is_group_version =
        (api.starts_with("api/") && depth == 2) || (api.starts_with("apis/") && depth == 3);
    if !is_group_version {
        return None;
    }
    let kinds: Vec<&Served> = st.served.iter().filter(|s| s.api == api).collect();
    if kinds.is_empty() {
        return Some(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources = Vec::new();
    for s in kinds {
        resources.push(
            json!({"name": s.plural, "singularName": s.kind.to_ascii_lowercase(),
            "namespaced": s.namespaced, "kind": s.kind, "verbs": verbs}),
        );
        resources.push(
            json!({"name": format!("{}/status", s.plural), "singularName": "",
            "namespaced": s.namespaced, "kind": s.kind, "verbs": ["get", "patch", "update"]}),
        );
        if s.plural == "pods" {
            resources.push(
                json!({"name": "pods/log", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get"]}),
            );
        }
    }
    let gv = api
        .strip_prefix("apis/")
        .or_else(|| api.strip_prefix("api/"))
        .unwrap_or(api);
    Some(json_ok(&json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
    })))
}

fn take_fault(st: &mut State, method: &Method, path: &str) -> Option<u16> {
    let f = st.faults.iter_mut().find(|f| {
        f.left > 0 && f.method.as_ref().is_none_or(|m| m == method) && path.contains(&f.path)
    })?;
    f.left -= 1;
    let code = f.code;
    st.faults.retain(|f| f.left > 0);
    Some(code)
}

/// A parsed resource path.
struct Route {
    api: String,
    /// `None`: a cluster-scoped path (or a namespaced kind across namespaces).
    ns: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (format!("api/{v}"), rest),
            ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
            _ => return None,
        };
        let (ns, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            _ => (None, rest),
        };
        let (plural, name, sub) = match rest {
            [p] => (*p, None, None),
            [p, n] => (*p, Some(*n), None),
            [p, n, s] => (*p, Some(*n), Some(*s)),
            _ => return None,
        };
        Some(Route {
            api,
            ns,
            plural: plural.to_owned(),
            name: name.map(str::to_owned),
            sub: sub.map(str::to_owned),
        })
    }

    fn key(&self, name: &str) -> Key {
        (
            self.api.clone(),
            self.plural.clone(),
            self.ns.clone().unwrap_or_default(),
            name.to_owned(),
        )
    }

    fn api_version(&self) -> String {
        self.api
            .strip_prefix("apis/")
            .or_else(|| self.api.strip_prefix("api/"))
            .unwrap_or(&self.api)
            .to_owned()
    }

    fn holds(&self, key: &Key) -> bool {
        key.0 == self.api && key.1 == self.plural && self.ns.as_ref().is_none_or(|ns| *ns == key.2)
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Whether `obj`'s labels match `selector` (`a=b,c!=d,e,!f`).
pub(crate) fn matches(obj: &Value, selector: &str) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            label(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.trim().strip_prefix('!') {
            label(k).is_none()
        } else {
            label(term.trim()).is_some()
        }
    })
}

fn list(st: &State, route: &Route, selector: &str) -> Vec<Value> {
    st.objects
        .iter()
        .filter(|(k, v)| route.holds(k) && matches(v, selector))
        .map(|(_, v)| v.clone())
        .collect()
}

fn respond(code: StatusCode, body: Vec<u8>) -> Response<FakeBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = code;
    r
}

fn json_ok(v: &Value) -> Response<FakeBody> {
    respond(StatusCode::OK, v.to_string().into_bytes())
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<FakeBody> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, body.to_string().into_bytes())
}

fn not_found(route: &Route, name: &str) -> Response<FakeBody> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", route.plural),
    )
}

fn conflict(route: &Route, name: &str) -> Response<FakeBody> {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            route.plural
        ),
    )
}

/// Stores `obj` under `key` with a new resourceVersion and tells the watches.
fn save(st: &mut State, key: Key, mut obj: Value, event: &'static str) {
    let rv = st.next;
    st.next += 1;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
    }
    st.ages.entry(key.clone()).or_insert(0);
    st.objects.insert(key.clone(), obj.clone());
    notify(st, rv, key, event, obj);
}

fn notify(st: &mut State, rv: u64, key: Key, event: &'static str, obj: Value) {
    let line = Bytes::from(json!({"type": event, "object": obj}).to_string() + "\n");
    st.watchers.retain(|w| {
        let hit = w.api == key.0
            && w.plural == key.1
            && w.ns.as_ref().is_none_or(|ns| *ns == key.2)
            && matches(&obj, &w.selector);
        !hit || w.tx.unbounded_send(line.clone()).is_ok()
    });
    st.events.push((rv, key, event, obj));
}

/// Replaces the status of `key` when it differs.
fn set_status(st: &mut State, key: &Key, status: Value) {
    let Some(obj) = st.objects.get(key) else {
        return;
    };
    if obj.get("status") == Some(&status) {
        return;
    }
    let mut obj = obj.clone();
    obj["status"] = status;
    save(st, key.clone(), obj, "MODIFIED");
}

/// Removes `key` for good.
fn remove(st: &mut State, key: &Key) -> Option<Value> {
    let obj = st.objects.remove(key)?;
    st.ages.remove(key);
    st.managers.remove(key);
    st.terminating.remove(key);
    if key.1 == "pods" {
        st.logs.remove(&(key.2.clone(), key.3.clone()));
        stop_proc(st, key);
    }
    let rv = st.next;
    st.next += 1;
    notify(st, rv, key.clone(), "DELETED", obj.clone());
    Some(obj)
}

fn stop_proc(st: &mut State, key: &Key) {
    if let Some((mut child, dir)) = st.procs.remove(key) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn now() -> String {
    "2026-01-01T00:00:00Z".to_owned()
}

/// Deletes `key` as the API server does: an object with finalizers, or a pod (graceful
/// termination), is marked Terminating; anything else goes, and what it owns is deleted
/// after it.
fn delete(st: &mut State, key: &Key) -> Option<Value> {
    let obj = st.objects.get(key)?.clone();
    let finalizers = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let result = if finalizers || key.1 == "pods" {
        if key.1 == "pods" {
            stop_proc(st, key);
            if !finalizers {
                let steps = st.terminate_after;
                st.terminating.entry(key.clone()).or_insert(steps);
            }
        }
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            let mut o = obj.clone();
            o["metadata"]["deletionTimestamp"] = json!(now());
            save(st, key.clone(), o.clone(), "MODIFIED");
            o
        } else {
            obj.clone()
        }
    } else {
        remove(st, key)?
    };
    if let Some(uid) = str_at(&obj, "/metadata/uid") {
        let owned: Vec<Key> = st
            .objects
            .iter()
            .filter(|(_, v)| {
                v.pointer("/metadata/deletionTimestamp").is_none()
                    && v.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| refs.iter().any(|r| str_at(r, "/uid") == Some(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !finalizers {
            for k in owned {
                delete(st, &k);
            }
        }
    }
    Some(result)
}

/// Leaf values of `v` as JSON pointers (arrays are atomic), skipping identity fields.
fn leaves(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                if at.is_empty() && (k == "apiVersion" || k == "kind" || k == "status") {
                    continue;
                }
                if at == "/metadata"
                    && !matches!(k.as_str(), "labels" | "annotations" | "finalizers")
                {
                    continue;
                }
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                leaves(x, &p, out);
            }
        }
        _ if !at.is_empty() => {
            out.insert(at.to_owned());
        }
        _ => {}
    }
}

/// Removes the value at `pointer`.
fn remove_at(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(m)) = v.pointer_mut(parent) {
        m.remove(&last);
    }
}

/// Records that `manager` set the leaves of `applied` in `key`.
fn own(st: &mut State, key: &Key, manager: &str, applied: &Value) {
    let mut mine = BTreeSet::new();
    leaves(applied, "", &mut mine);
    let owners = st.managers.entry(key.clone()).or_default();
    for (m, fields) in owners.iter_mut() {
        if m != manager {
            fields.retain(|f| !mine.contains(f));
        }
    }
    owners.entry(manager.to_owned()).or_default().extend(mine);
}

fn create(
    st: &mut State,
    route: &Route,
    served: &Served,
    body: &[u8],
    manager: Option<String>,
) -> Response<FakeBody> {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    if str_at(&obj, "/kind").is_some_and(|k| k != served.kind) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "the kind of the object ({}) does not match the resource ({})",
                str_at(&obj, "/kind").unwrap_or_default(),
                served.kind
            ),
        );
    }
    if let (Some(ns), Some(body_ns)) = (&route.ns, str_at(&obj, "/metadata/namespace"))
        && ns != body_ns
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let n = st.next;
    let name = match (
        str_at(&obj, "/metadata/name"),
        str_at(&obj, "/metadata/generateName"),
    ) {
        (Some(n), _) => n.to_owned(),
        (None, Some(prefix)) => format!("{prefix}{n:05x}"),
        (None, None) => {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value",
            );
        }
    };
    let key = route.key(&name);
    if st.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", route.plural),
        );
    }
    let obj = fresh(obj, route, served, &name, n);
    own(st, &key, manager.as_deref().unwrap_or("unknown"), &obj);
    save(st, key.clone(), obj, "ADDED");
    let stored = st.objects.get(&key).cloned().unwrap_or_default();
    let mut response = json_ok(&stored);
    *response.status_mut() = StatusCode::CREATED;
    response
}

/// A new object as stored: identity and bookkeeping set, no status.
fn fresh(mut obj: Value, route: &Route, served: &Served, name: &str, n: u64) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
        o.insert("apiVersion".into(), json!(route.api_version()));
        o.insert("kind".into(), json!(served.kind));
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), json!(name));
        if let Some(ns) = &route.ns {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("uid".into(), json!(format!("uid-{n}")));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.remove("deletionTimestamp");
    }
    obj
}

/// Stores `new` over `old`: the status alone (`status_only`, the `/status` subresource), or
/// everything but the status; generation, finalizer and deletion rules applied. `owned`:
/// the manager and the fields it set, recorded as its own.
fn write(
    st: &mut State,
    key: &Key,
    old: Value,
    mut new: Value,
    status_only: bool,
    owned: Option<(String, Value)>,
) -> Response<FakeBody> {
    let route_name = key.3.clone();
    if status_only {
        let mut o = old.clone();
        o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if o.get("status").is_some_and(Value::is_null)
            && let Some(m) = o.as_object_mut()
        {
            m.remove("status");
        }
        new = o;
    } else {
        // Identity and bookkeeping stay; the status is the subresource's.
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "name",
            "namespace",
        ] {
            match old.pointer(&format!("/metadata/{f}")) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(f);
                    }
                }
            }
        }
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        let finalizers = |o: &Value| -> BTreeSet<String> {
            o.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        };
        if old.pointer("/metadata/deletionTimestamp").is_some()
            && !finalizers(&new).is_subset(&finalizers(&old))
        {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &format!(
                    "{route_name}: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
                ),
            );
        }
        // A Job's pod template and completion mode are fixed at creation.
        if key.1 == "jobs" {
            for field in ["template", "completionMode", "selector"] {
                let at = format!("/spec/{field}");
                if old.pointer(&at).is_some() && old.pointer(&at) != new.pointer(&at) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        &format!(
                            "Job.batch \"{route_name}\" is invalid: spec.{field}: Invalid value: field is immutable"
                        ),
                    );
                }
            }
        }
        let spec_of = |o: &Value| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            o
        };
        if spec_of(&old) != spec_of(&new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if let Some((manager, fields)) = &owned {
            own(st, key, manager, fields);
        }
    }
    let gone = new.pointer("/metadata/deletionTimestamp").is_some()
        && new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && key.1 != "pods";
    save(st, key.clone(), new.clone(), "MODIFIED");
    if gone {
        // The last finalizer is gone: the deletion completes, and what it owns follows.
        delete(st, key);
        return json_ok(&new);
    }
    match st.objects.get(key) {
        Some(o) => json_ok(o),
        None => json_ok(&new),
    }
}

fn patch(
    st: &mut State,
    route: &Route,
    served: &Served,
    name: &str,
    content_type: &str,
    body: &[u8],
    query: &BTreeMap<String, String>,
) -> Response<FakeBody> {
    let Ok(p) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let key = route.key(name);
    let status_only = route.sub.is_some();
    let manager = query.get("fieldManager").cloned();
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/apply-patch+yaml" {
        let Some(manager) = manager else {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            );
        };
        let force = query.get("force").is_some_and(|f| f == "true");
        return apply(st, route, served, &key, p, &manager, force, status_only);
    }
    let Some(old) = st.objects.get(&key).cloned() else {
        return not_found(route, name);
    };
    let mut owned = None;
    let new = match ct {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if ct.starts_with("application/strategic") && !is_built_in(&route.api) {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                );
            }
            if let Some(rv) = str_at(&p, "/metadata/resourceVersion")
                && Some(rv) != str_at(&old, "/metadata/resourceVersion")
            {
                return conflict(route, name);
            }
            let mut new = old.clone();
            merge(&mut new, &p);
            owned = Some((manager.clone().unwrap_or_else(|| "unknown".into()), p));
            new
        }
        "application/json-patch+json" => {
            // As the API server does, a `test` for null passes on a missing field.
            let p: Vec<Value> = p
                .as_array()
                .into_iter()
                .flatten()
                .filter(|op| {
                    !(op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"]
                            .as_str()
                            .is_some_and(|at| old.pointer(at).is_none()))
                })
                .cloned()
                .collect();
            let ops: json_patch::Patch = match serde_json::from_value(Value::Array(p)) {
                Ok(ops) => ops,
                Err(e) => {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
                }
            };
            let mut new = old.clone();
            if let Err(e) = json_patch::patch(&mut new, &ops) {
                // A failed `test` is how a client detects a concurrent change.
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    &format!("the JSON patch could not be applied: {e}"),
                );
            }
            new
        }
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!("the body of the request was in an unknown format: {other}"),
            );
        }
    };
    write(st, &key, old, new, status_only, owned)
}

/// Server-side apply of `config` by `manager`.
#[allow(clippy::too_many_arguments)]
fn apply(
    st: &mut State,
    route: &Route,
    served: &Served,
    key: &Key,
    config: Value,
    manager: &str,
    force: bool,
    status_only: bool,
) -> Response<FakeBody> {
    if str_at(&config, "/kind").is_some_and(|k| k != served.kind)
        || str_at(&config, "/metadata/name").is_some_and(|n| n != key.3)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the kind or name of the applied object does not match the request",
        );
    }
    let Some(old) = st.objects.get(key).cloned() else {
        if status_only {
            return not_found(route, &key.3);
        }
        let n = st.next;
        let obj = fresh(config.clone(), route, served, &key.3, n);
        own(st, key, manager, &config);
        save(st, key.clone(), obj, "ADDED");
        let stored = st.objects.get(key).cloned().unwrap_or_default();
        let mut response = json_ok(&stored);
        *response.status_mut() = StatusCode::CREATED;
        return response;
    };
    let mut applied = BTreeSet::new();
    leaves(&config, "", &mut applied);
    let owners = st.managers.get(key).cloned().unwrap_or_default();
    if !force && !status_only {
        let conflicts: Vec<String> = owners
            .iter()
            .filter(|(m, _)| m.as_str() != manager)
            .flat_map(|(m, fields)| {
                fields
                    .iter()
                    .filter(|f| applied.contains(*f) && old.pointer(f) != config.pointer(f))
                    .map(move |f| format!("conflict with \"{m}\": {f}"))
            })
            .collect();
        if !conflicts.is_empty() {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join("; ")
                ),
            );
        }
    }
    let mut new = old.clone();
    if !status_only {
        // Fields this manager alone set before and applies no more are removed.
        let others: BTreeSet<&String> = owners
            .iter()
            .filter(|(m, _)| m.as_str() != manager)
            .flat_map(|(_, f)| f)
            .collect();
        if let Some(before) = owners.get(manager) {
            for f in before {
                if !applied.contains(f) && !others.contains(f) {
                    remove_at(&mut new, f);
                }
            }
        }
    }
    merge(&mut new, &config);
    let response = write(st, key, old, new, status_only, None);
    if !status_only {
        own(st, key, manager, &config);
    }
    response
}

/// A watch from `rv`: the changes after it (or the current objects as `ADDED`), then every
/// change as it happens, until the client goes.
fn watch(
    st: &mut State,
    route: &Route,
    selector: String,
    rv: Option<&String>,
) -> Response<FakeBody> {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
    let from = rv.and_then(|r| r.parse::<u64>().ok()).filter(|r| *r > 0);
    let backlog: Vec<Value> = match from {
        Some(from) => st
            .events
            .iter()
            .filter(|(v, k, _, o)| *v > from && route.holds(k) && matches(o, &selector))
            .map(|(_, _, t, o)| json!({"type": t, "object": o}))
            .collect(),
        None => list(st, route, &selector)
            .into_iter()
            .map(|o| json!({"type": "ADDED", "object": o}))
            .collect(),
    };
    for e in backlog {
        let _ = tx.unbounded_send(Bytes::from(e.to_string() + "\n"));
    }
    st.watchers.push(Watcher {
        api: route.api.clone(),
        plural: route.plural.clone(),
        ns: route.ns.clone(),
        selector,
        tx,
    });
    let stream = rx.map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

/// A pod's log: one container's (`container=`, needed when it has several), `tailLines`.
fn pod_log(
    st: &State,
    route: &Route,
    name: &str,
    query: &BTreeMap<String, String>,
) -> Response<FakeBody> {
    let Some(pod) = st.objects.get(&route.key(name)) else {
        return not_found(route, name);
    };
    let names = |at: &str| -> Vec<String> {
        pod.pointer(at)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| str_at(c, "/name").map(str::to_owned))
            .collect()
    };
    let mut containers = names("/spec/containers");
    let init = names("/spec/initContainers");
    let container = match query.get("container") {
        Some(c) if containers.contains(c) || init.contains(c) => c.clone(),
        Some(c) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("container {c} is not valid for pod {name}"),
            );
        }
        None if containers.len() > 1 => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                    containers.join(" "),
                    init.join(" ")
                ),
            );
        }
        None => containers.pop().unwrap_or_else(|| "main".to_owned()),
    };
    let ns = route.ns.clone().unwrap_or_default();
    let text = st
        .logs
        .get(&(ns, name.to_owned()))
        .and_then(|l| l.get(&container))
        .cloned()
        .unwrap_or_default();
    let text = match query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut t = lines[lines.len().saturating_sub(n)..].join("\n");
            if !t.is_empty() {
                t.push('\n');
            }
            t
        }
        None => text,
    };
    respond(StatusCode::OK, text.into_bytes())
}

/// RFC 7386 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Makes a pod owned by `owner` with `labels`, pod `spec` and `annotations`.
fn make_pod(
    st: &mut State,
    ns: &str,
    name: String,
    owner: &Value,
    labels: Value,
    spec: Value,
) -> Key {
    let n = st.next;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{n}"),
            "generation": 1, "creationTimestamp": now(),
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": str_at(owner, "/apiVersion").unwrap_or(""),
                "kind": str_at(owner, "/kind").unwrap_or(""),
                "name": str_at(owner, "/metadata/name").unwrap_or(""),
                "uid": str_at(owner, "/metadata/uid").unwrap_or(""),
                "controller": true,
            }],
        },
        "spec": spec,
        "status": {"phase": "Pending"},
    });
    let key = ("api/v1".to_owned(), "pods".to_owned(), ns.to_owned(), name);
    st.ages.insert(key.clone(), 0);
    save(st, key.clone(), pod, "ADDED");
    key
}

/// Makes a pod for `owner` from its pod template.
fn pod_for(st: &mut State, owner_key: &Key, owner: &Value, extra: &[(&str, String)]) -> Key {
    let n = st.next;
    let owner_name = str_at(owner, "/metadata/name").unwrap_or("x");
    let name = format!("{owner_name}-{n:05x}");
    let mut labels = owner
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    let spec = owner
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    make_pod(st, &owner_key.2, name, owner, labels, spec)
}

/// Pods controlled by `uid`, not being deleted.
fn owned_pods(st: &State, uid: &str) -> Vec<Key> {
    st.objects
        .iter()
        .filter(|(k, v)| {
            k.1 == "pods"
                && v.pointer("/metadata/deletionTimestamp").is_none()
                && v.pointer("/metadata/ownerReferences/0/uid")
                    .and_then(Value::as_str)
                    == Some(uid)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// One step of every simulated controller.
fn reconcile(st: &mut State) {
    // Pods being deleted go after their grace.
    let gone: Vec<Key> = st
        .terminating
        .iter_mut()
        .filter_map(|(k, left)| {
            *left = left.saturating_sub(1);
            (*left == 0).then(|| k.clone())
        })
        .collect();
    for k in gone {
        remove(st, &k);
    }
    let keys: Vec<Key> = st.objects.keys().cloned().collect();
    for key in keys {
        let age = {
            let a = st.ages.entry(key.clone()).or_insert(0);
            *a += 1;
            *a
        };
        let Some(obj) = st.objects.get(&key).cloned() else {
            continue;
        };
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let uid = str_at(&obj, "/metadata/uid").unwrap_or_default().to_owned();
        match (key.0.as_str(), key.1.as_str()) {
            ("apis/batch/v1", "jobs") => job_controller(st, &key, &obj, &uid),
            ("apis/apps/v1", "deployments") | ("apis/apps/v1", "statefulsets") => {
                let want = obj
                    .pointer("/spec/replicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(1) as usize;
                let pods = owned_pods(st, &uid);
                for _ in pods.len()..want {
                    pod_for(st, &key, &obj, &[]);
                }
                let ready = pods
                    .iter()
                    .filter_map(|k| st.objects.get(k))
                    .filter(|p| pod_ready(p))
                    .count();
                set_status(
                    st,
                    &key,
                    json!({"replicas": want, "readyReplicas": ready,
                           "observedGeneration": obj.pointer("/metadata/generation")}),
                );
            }
            ("api/v1", "pods") => {
                let delay = st.schedule_after;
                if age >= delay {
                    advance_pod(st, &key, &obj, age - delay);
                }
            }
            ("apis/nvidia.com/v1alpha1", "dynamographdeployments") if age >= 2 => {
                dynamo_controller(st, &key, &obj, &uid);
            }
            (api, _) if age >= 2 && obj.get("status").is_none() && !is_built_in(api) => {
                if api.starts_with("apis/harness.dev/") {
                    continue;
                }
                // A custom resource: its operator reports it ready.
                set_status(
                    st,
                    &key,
                    json!({
                        "state": "successful",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    }),
                );
            }
            _ => {}
        }
    }
}

fn is_built_in(api: &str) -> bool {
    BUILT_IN.iter().any(|b| b.0 == api)
}

fn job_controller(st: &mut State, key: &Key, obj: &Value, uid: &str) {
    let indexed = str_at(obj, "/spec/completionMode") == Some("Indexed");
    let want = if indexed {
        obj.pointer("/spec/completions")
            .and_then(Value::as_u64)
            .unwrap_or(1)
    } else {
        1
    };
    let pods = owned_pods(st, uid);
    if pods.is_empty() && obj.pointer("/status/succeeded").is_none() {
        let name = str_at(obj, "/metadata/name").unwrap_or_default().to_owned();
        for i in 0..want {
            let pod = pod_for(st, key, obj, &[("job-name", name.clone())]);
            if indexed && let Some(mut p) = st.objects.get(&pod).cloned() {
                p["metadata"]["annotations"] =
                    json!({"batch.kubernetes.io/job-completion-index": i.to_string()});
                save(st, pod, p, "MODIFIED");
            }
        }
        return;
    }
    let phases: Vec<String> = pods
        .iter()
        .filter_map(|k| st.objects.get(k))
        .filter_map(|p| str_at(p, "/status/phase").map(str::to_owned))
        .collect();
    let done = phases.iter().filter(|p| *p == "Succeeded").count() as u64;
    let status = if phases.iter().any(|p| p == "Failed") {
        json!({"failed": 1, "succeeded": done, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    } else if done >= want {
        json!({"succeeded": done, "conditions": [{"type": "Complete", "status": "True"}]})
    } else {
        json!({"active": phases.len() as u64 - done, "succeeded": done})
    };
    set_status(st, key, status);
}

/// What Dynamo's operator does for a `DynamoGraphDeployment`: pods per service (replicas ×
/// nodes), a frontend Service, and the graph's state.
fn dynamo_controller(st: &mut State, key: &Key, obj: &Value, uid: &str) {
    let name = str_at(obj, "/metadata/name").unwrap_or("dgd").to_owned();
    let services = obj
        .pointer("/spec/services")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let pods = owned_pods(st, uid);
    if pods.is_empty() {
        for (service, s) in &services {
            let replicas = s.get("replicas").and_then(Value::as_u64).unwrap_or(1);
            let nodes = s
                .pointer("/multinode/nodeCount")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let main = s
                .pointer("/extraPodSpec/mainContainer")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let mut container = json!({
                "name": "main",
                "image": main.get("image").cloned().unwrap_or(json!("dynamo:latest")),
            });
            for f in ["command", "args"] {
                if let Some(v) = main.get(f) {
                    container[f] = v.clone();
                }
            }
            if let Some(gpu) = s.pointer("/resources/limits/gpu") {
                container["resources"] = json!({"limits": {"nvidia.com/gpu": gpu}});
            }
            let component_type = s.get("componentType").and_then(Value::as_str).unwrap_or(
                if service == "Frontend" {
                    "frontend"
                } else {
                    "worker"
                },
            );
            for r in 0..replicas * nodes {
                let n = st.next;
                let pod = format!("{name}-0-{}-{r}{n:04x}", service.to_ascii_lowercase());
                let labels = json!({
                    DGD_LABEL: name,
                    DGD_COMPONENT: service,
                    DGD_COMPONENT_TYPE: component_type,
                    "nvidia.com/dynamo-namespace": format!("{}-{name}", key.2),
                });
                make_pod(
                    st,
                    &key.2,
                    pod,
                    obj,
                    labels,
                    json!({"containers": [container.clone()]}),
                );
            }
        }
        let svc_key = (
            "api/v1".to_owned(),
            "services".to_owned(),
            key.2.clone(),
            format!("{name}-frontend"),
        );
        if !st.objects.contains_key(&svc_key) {
            let n = st.next;
            let svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": svc_key.3, "namespace": key.2, "uid": format!("uid-{n}"),
                    "labels": {DGD_LABEL: name},
                    "ownerReferences": [{"apiVersion": "nvidia.com/v1alpha1",
                        "kind": "DynamoGraphDeployment", "name": name, "uid": uid,
                        "controller": true}]},
                "spec": {"selector": {DGD_LABEL: name, DGD_COMPONENT_TYPE: "frontend"},
                         "ports": [{"port": 8000}]},
            });
            save(st, svc_key, svc, "ADDED");
        }
        set_status(
            st,
            key,
            json!({"state": "pending", "conditions": [{"type": "Ready", "status": "False",
                   "reason": "ComponentsNotReady"}]}),
        );
        return;
    }
    let ready = pods
        .iter()
        .filter_map(|k| st.objects.get(k))
        .filter(|p| pod_ready(p))
        .count();
    let status = if ready == pods.len() {
        json!({"state": "successful", "conditions": [{"type": "Ready", "status": "True"}]})
    } else {
        json!({"state": "pending", "conditions": [{"type": "Ready", "status": "False",
               "reason": "ComponentsNotReady",
               "message": format!("{ready} of {} pods ready", pods.len())}]})
    };
    set_status(st, key, status);
}

/// The container's environment, with ConfigMap references resolved.
fn container_env(st: &State, ns: &str, container: &Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for e in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = str_at(e, "/name") else {
            continue;
        };
        let value = match (str_at(e, "/value"), e.pointer("/valueFrom/configMapKeyRef")) {
            (Some(v), _) => Some(v.to_owned()),
            (None, Some(r)) => {
                let cm = str_at(r, "/name").unwrap_or_default();
                let k = str_at(r, "/key").unwrap_or_default();
                configmap(st, ns, cm)
                    .and_then(|c| c.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }
            _ => None,
        };
        if let Some(v) = value {
            env.push((name.to_owned(), v));
        }
    }
    env
}

fn configmap<'a>(
    st: &'a State,
    ns: &str,
    name: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    let key = (
        "api/v1".to_owned(),
        "configmaps".to_owned(),
        ns.to_owned(),
        name.to_owned(),
    );
    st.objects
        .get(&key)
        .and_then(|c| c.get("data"))
        .and_then(Value::as_object)
}

/// Starts the pod's first container as a local process, its ConfigMap volumes written under
/// a folder of its own.
fn exec_pod(
    st: &mut State,
    key: &Key,
    pod: &Value,
    program: Option<&std::path::Path>,
) -> std::result::Result<(), String> {
    let container = pod
        .pointer("/spec/containers/0")
        .cloned()
        .unwrap_or_default();
    // Per process and per server: two fake clusters in one test binary may have pods of
    // the same name.
    let dir = std::env::temp_dir().join(format!(
        "harness-fake-pod-{}-{}-{}-{}",
        std::process::id(),
        st.id,
        key.2,
        key.3
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // ConfigMap volumes: each key a file under the mount, in the pod's folder.
    let mut mounts: Vec<(String, std::path::PathBuf)> = Vec::new();
    for m in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(vol), Some(path)) = (str_at(m, "/name"), str_at(m, "/mountPath")) else {
            continue;
        };
        let cm = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|v| str_at(v, "/name") == Some(vol))
            .and_then(|v| str_at(v, "/configMap/name"));
        let Some(cm) = cm else { continue };
        let Some(data) = configmap(st, &key.2, cm) else {
            return Err(format!("configmap \"{cm}\" not found"));
        };
        let local = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&local).map_err(|e| e.to_string())?;
        for (k, v) in data {
            std::fs::write(local.join(k), v.as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
        }
        mounts.push((path.trim_end_matches('/').to_owned(), local));
    }
    let mut argv: Vec<String> = container
        .get("command")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            container
                .get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(|a| a.as_str().map(str::to_owned))
        .map(|mut a| {
            for (path, local) in &mounts {
                a = a.replace(&format!("{path}/"), &format!("{}/", local.display()));
            }
            a
        })
        .collect();
    if let (Some(p), Some(first)) = (program, argv.first_mut()) {
        *first = p.display().to_string();
    }
    let Some((cmd, args)) = argv.split_first() else {
        return Err("the container has no command".into());
    };
    let log = dir.join("log");
    let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(cmd);
    command
        .args(args)
        .stdout(file)
        .stderr(err)
        .stdin(std::process::Stdio::null());
    for (k, v) in container_env(st, &key.2, &container) {
        command.env(k, v);
    }
    if let Some(index) = pod
        .pointer("/metadata/annotations/batch.kubernetes.io~1job-completion-index")
        .and_then(Value::as_str)
    {
        command.env("JOB_COMPLETION_INDEX", index);
    }
    // Served over HTTP: the pod reaches the API server, in its own namespace.
    if let Some(url) = &st.url {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig(url, &key.2)).map_err(|e| e.to_string())?;
        command.env("KUBECONFIG", path);
    }
    let child = command.spawn().map_err(|e| format!("{cmd}: {e}"))?;
    st.procs.insert(key.clone(), (child, dir));
    Ok(())
}

/// The names of the pod's containers (`main` when it has none).
fn container_names(pod: &Value, at: &str) -> Vec<String> {
    let names: Vec<String> = pod
        .pointer(at)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| str_at(c, "/name").map(str::to_owned))
        .collect();
    if names.is_empty() && at == "/spec/containers" {
        vec!["main".to_owned()]
    } else {
        names
    }
}

/// Statuses of every container: the first one's `state`, the others running (or `others`).
fn statuses(pod: &Value, first: Value, others: Value) -> Value {
    let ready = |s: &Value| s.get("running").is_some();
    let list: Vec<Value> = container_names(pod, "/spec/containers")
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let mut s = if i == 0 {
                first.clone()
            } else {
                others.clone()
            };
            let state = s.get("state").cloned().unwrap_or_default();
            s["name"] = json!(name);
            s["ready"] = json!(ready(&state) && s.get("ready") != Some(&json!(false)));
            s
        })
        .collect();
    json!(list)
}

fn running() -> Value {
    json!({"restartCount": 0, "state": {"running": {}}})
}

fn advance_pod(st: &mut State, key: &Key, pod: &Value, age: u32) {
    let mut script = (st.pod_rule)(pod);
    while let PodScript::Until { steps, first, then } = script {
        script = if age < steps { *first } else { *then };
    }
    let phase = str_at(pod, "/status/phase").unwrap_or("Pending").to_owned();
    let log_key = (key.2.clone(), key.3.clone());
    let first = container_names(pod, "/spec/containers")
        .into_iter()
        .next()
        .unwrap_or_else(|| "main".to_owned());
    let set_log = |st: &mut State, container: &str, text: &str| {
        let logs = st.logs.entry(log_key.clone()).or_default();
        for c in container_names(pod, "/spec/containers") {
            logs.entry(c.clone())
                .or_insert_with(|| format!("{c} started\n"));
        }
        logs.insert(container.to_owned(), text.to_owned());
    };
    let ready_running = |pod: &Value| {
        json!({
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "True"}],
            "containerStatuses": statuses(pod, running(), running()),
        })
    };
    let terminated = |pod: &Value, code: i64| {
        let t = json!({"restartCount": 0, "ready": false, "state": {"terminated": {"exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" }}}});
        json!({
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "False"}],
            "containerStatuses": statuses(pod, t.clone(), t),
        })
    };
    let status = match (&script, phase.as_str()) {
        (PodScript::Exec { program }, "Pending") => {
            match exec_pod(st, key, pod, program.as_deref()) {
                Ok(()) => ready_running(pod),
                Err(e) => {
                    set_log(st, &first, &format!("exec failed: {e}\n"));
                    json!({"phase": "Failed", "containerStatuses": statuses(pod,
                        json!({"restartCount": 0, "state": {"terminated": {"exitCode": 127, "reason": "StartError"}}}),
                        running())})
                }
            }
        }
        (PodScript::Exec { .. }, "Running") => {
            let Some((child, dir)) = st.procs.get_mut(key) else {
                return;
            };
            let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            let exited = child.try_wait().ok().flatten();
            set_log(st, &first, &text);
            match exited {
                None => return,
                Some(status) => terminated(pod, i64::from(status.code().unwrap_or(137))),
            }
        }
        (PodScript::Exec { .. }, _) => return,
        (PodScript::Run { logs, exit }, _) => {
            let is_ready = pod_ready(pod);
            match (phase.as_str(), is_ready, exit) {
                ("Succeeded" | "Failed", _, _) => return,
                (_, false, _) => {
                    set_log(st, &first, logs);
                    ready_running(pod)
                }
                (_, true, Some(code)) => terminated(pod, i64::from(*code)),
                (_, true, None) => return,
            }
        }
        (PodScript::CrashLoop { logs }, _) => {
            set_log(st, &first, logs);
            json!({
                "phase": "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": "False"}],
                "containerStatuses": statuses(pod, json!({"ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}), running()),
            })
        }
        (PodScript::ImagePullBackOff, _) => json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": statuses(pod, json!({"ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image"}}}), running()),
        }),
        (PodScript::Unschedulable, _) => json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
        }),
        (PodScript::OomKilled, _) => json!({
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "False"}],
            "containerStatuses": statuses(pod, json!({"ready": false, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}), running()),
        }),
        (PodScript::InitCrashLoop { logs }, _) => {
            let init = container_names(pod, "/spec/initContainers")
                .into_iter()
                .next()
                .unwrap_or_else(|| "init".to_owned());
            st.logs
                .entry(log_key.clone())
                .or_default()
                .insert(init.clone(), logs.clone());
            let waiting = json!({"ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}});
            json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Initialized", "status": "False"}],
                "initContainerStatuses": [{"name": init, "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 1m20s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
                "containerStatuses": statuses(pod, waiting.clone(), waiting),
            })
        }
        (PodScript::Until { .. }, _) => return,
    };
    set_status(st, key, status);
}
