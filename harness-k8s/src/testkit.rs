//! A fake Kubernetes API server for tests, behind a real [`kube::Client`]
//! (`tower_test::mock::pair`), so the client code under test is exercised as it is against
//! a cluster. It stores objects and answers create, get, list, watch (the current objects
//! as `ADDED` events), patch (merge), replace, delete (one or by label selector, cascading
//! to owned objects) and pod logs, and it simulates the controllers a benchmark needs:
//!
//! * a Job gets a pod that runs its [`PodScript`] and the Job completes or fails with it;
//! * a Deployment gets `replicas` pods and counts the ready ones;
//! * a custom resource (a Dynamo `DynamoGraphDeployment`, ...) gets `status.state:
//!   successful` and a `Ready` condition one step after it is created;
//! * a pod's fate is decided by [`FakeApiServer::on_pod`]: run (and exit), crash-loop,
//!   image pull back-off, unschedulable, OOM-killed.
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
//! api.create(&Default::default(), &cm).await.unwrap();
//! assert_eq!(api.get("c").await.unwrap().data.unwrap()["k"], "v");
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
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
    /// Runs the container's command as a local process, as a kubelet would, with the
    /// container's environment (`value` and `valueFrom.configMapKeyRef` resolved from the
    /// stored ConfigMaps); `program` replaces the command's first word (the image's binary,
    /// e.g. `harness`, by a local build). The pod is ready while it runs and ends with its
    /// exit status; its output is the pod's log.
    Exec {
        /// The local program for the command's first word.
        program: Option<std::path::PathBuf>,
    },
}

type PodRule = Arc<dyn Fn(&Value) -> PodScript + Send + Sync>;

/// Where an object lives: (`api/v1` or `apis/<group>/<version>`, plural, namespace, name).
type Key = (String, String, String, String);

struct State {
    objects: BTreeMap<Key, Value>,
    ages: BTreeMap<Key, u32>,
    logs: BTreeMap<(String, String), String>,
    next: u64,
    pod_rule: PodRule,
    requests: Vec<String>,
    procs: BTreeMap<Key, (std::process::Child, std::path::PathBuf)>,
}

impl Drop for State {
    fn drop(&mut self) {
        for (_, (mut child, log)) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(log);
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

impl FakeApiServer {
    /// An empty cluster whose pods run (Job pods exit 0).
    pub fn new() -> Self {
        FakeApiServer {
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                ages: BTreeMap::new(),
                logs: BTreeMap::new(),
                next: 1,
                pod_rule: Arc::new(default_rule),
                requests: Vec::new(),
                procs: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides each new pod's fate from the pod (its labels, image, command, ...).
    pub fn on_pod(&self, rule: impl Fn(&Value) -> PodScript + Send + Sync + 'static) {
        self.lock().pod_rule = Arc::new(rule);
    }

    /// A client for this server, with `default` as its default namespace. Must be called
    /// inside a tokio runtime: it spawns the task that answers the client.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let response = me.handle(&parts.method, &parts.uri, &bytes);
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Every stored object of resource `plural` (`pods`, `jobs`, `dynamographdeployments`).
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

    /// Stores `object` as if created by someone else (no controller age).
    pub fn insert(&self, api: &str, plural: &str, object: Value) {
        let ns = str_at(&object, "/metadata/namespace").unwrap_or("default");
        let name = str_at(&object, "/metadata/name").unwrap_or_default();
        let key = (
            api.to_owned(),
            plural.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        );
        self.lock().objects.insert(key, object);
    }

    fn handle(&self, method: &Method, uri: &http::Uri, body: &[u8]) -> Response<Body> {
        let mut st = self.lock();
        st.requests.push(format!(
            "{method} {}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ));
        reconcile(&mut st);
        let query = parse_query(uri.query().unwrap_or(""));
        let Some(route) = Route::parse(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        match (method, route.name.as_deref(), route.sub.as_deref()) {
            (&Method::POST, None, None) => create(&mut st, &route, body),
            (&Method::GET, None, None) if query.get("watch").is_some_and(|w| w == "true") => {
                let items = list(&st, &route, &selector);
                let lines: String = items
                    .into_iter()
                    .map(|o| json!({"type": "ADDED", "object": o}).to_string() + "\n")
                    .collect();
                ok(lines.into_bytes())
            }
            (&Method::GET, None, None) => {
                let items = list(&st, &route, &selector);
                let kind = items
                    .first()
                    .and_then(|o| str_at(o, "/kind"))
                    .map_or_else(|| "List".to_owned(), |k| format!("{k}List"));
                json_ok(&json!({
                    "apiVersion": route.api_version(),
                    "kind": kind,
                    "metadata": {"resourceVersion": st.next.to_string()},
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
            (&Method::GET, Some(name), Some("log")) => {
                let key = (route.ns.clone(), name.to_owned());
                match st.logs.get(&key) {
                    Some(l) => ok(l.clone().into_bytes()),
                    None if st.objects.contains_key(&route.key(name)) => ok(Vec::new()),
                    None => not_found(&route, name),
                }
            }
            (&Method::GET, Some(name), _) => match st.objects.get(&route.key(name)) {
                Some(o) => json_ok(o),
                None => not_found(&route, name),
            },
            (&Method::PATCH, Some(name), _) | (&Method::PUT, Some(name), _) => {
                let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
                };
                let key = route.key(name);
                let Some(obj) = st.objects.get_mut(&key) else {
                    return not_found(&route, name);
                };
                if method == Method::PUT {
                    *obj = patch;
                } else {
                    merge(obj, &patch);
                }
                let obj = obj.clone();
                json_ok(&obj)
            }
            (&Method::DELETE, Some(name), _) => {
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

/// A parsed resource path.
struct Route {
    api: String,
    ns: String,
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
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => ((*ns).to_owned(), rest),
            _ => return None,
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
            self.ns.clone(),
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

/// Whether `obj`'s labels match `selector` (`a=b,c!=d,e`).
pub(crate) fn matches(obj: &Value, selector: &str) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            label(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k.trim()) == Some(v.trim())
        } else {
            label(term.trim()).is_some()
        }
    })
}

fn list(st: &State, route: &Route, selector: &str) -> Vec<Value> {
    st.objects
        .iter()
        .filter(|(k, v)| {
            k.0 == route.api && k.1 == route.plural && k.2 == route.ns && matches(v, selector)
        })
        .map(|(_, v)| v.clone())
        .collect()
}

fn respond(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r
}

fn ok(body: Vec<u8>) -> Response<Body> {
    respond(StatusCode::OK, body)
}

fn json_ok(v: &Value) -> Response<Body> {
    ok(v.to_string().into_bytes())
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, body.to_string().into_bytes())
}

fn not_found(route: &Route, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", route.plural),
    )
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

fn create(st: &mut State, route: &Route, body: &[u8]) -> Response<Body> {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let n = st.next;
    st.next += 1;
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
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(route.ns));
        meta.insert("uid".into(), json!(format!("uid-{n}")));
        meta.insert("resourceVersion".into(), json!(n.to_string()));
        meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
    }
    st.objects.insert(key.clone(), obj.clone());
    st.ages.insert(key, 0);
    let mut response = json_ok(&obj);
    *response.status_mut() = StatusCode::CREATED;
    response
}

/// Deletes `key` and, recursively, every object it owns.
fn delete(st: &mut State, key: &Key) -> Option<Value> {
    let obj = st.objects.remove(key)?;
    st.ages.remove(key);
    if key.1 == "pods" {
        st.logs.remove(&(key.2.clone(), key.3.clone()));
        if let Some((mut child, log)) = st.procs.remove(key) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(log);
        }
    }
    if let Some(uid) = str_at(&obj, "/metadata/uid") {
        let owned: Vec<Key> = st
            .objects
            .iter()
            .filter(|(_, v)| {
                v.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| str_at(r, "/uid") == Some(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in owned {
            delete(st, &k);
        }
    }
    Some(obj)
}

/// Makes a pod for `owner` from its pod template.
fn pod_for(st: &mut State, owner_key: &Key, owner: &Value, extra: &[(&str, String)]) -> Key {
    let n = st.next;
    st.next += 1;
    let owner_name = str_at(owner, "/metadata/name").unwrap_or("x");
    let name = format!("{owner_name}-{n:05x}");
    let mut labels = owner
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": owner_key.2, "uid": format!("uid-{n}"),
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": str_at(owner, "/apiVersion").unwrap_or(""),
                "kind": str_at(owner, "/kind").unwrap_or(""),
                "name": owner_name,
                "uid": str_at(owner, "/metadata/uid").unwrap_or(""),
            }],
        },
        "spec": owner.pointer("/spec/template/spec").cloned().unwrap_or_else(|| json!({})),
        "status": {"phase": "Pending"},
    });
    let key = (
        "api/v1".to_owned(),
        "pods".to_owned(),
        owner_key.2.clone(),
        name,
    );
    st.objects.insert(key.clone(), pod);
    st.ages.insert(key.clone(), 0);
    key
}

fn owned_pods(st: &State, uid: &str) -> Vec<Key> {
    st.objects
        .iter()
        .filter(|(k, v)| {
            k.1 == "pods"
                && v.pointer("/metadata/ownerReferences/0/uid")
                    .and_then(Value::as_str)
                    == Some(uid)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// One step of every simulated controller.
fn reconcile(st: &mut State) {
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
        let uid = str_at(&obj, "/metadata/uid").unwrap_or_default().to_owned();
        match (key.0.as_str(), key.1.as_str()) {
            ("apis/batch/v1", "jobs") => {
                let indexed = str_at(&obj, "/spec/completionMode") == Some("Indexed");
                let want = if indexed {
                    obj.pointer("/spec/completions")
                        .and_then(Value::as_u64)
                        .unwrap_or(1)
                } else {
                    1
                };
                let pods = owned_pods(st, &uid);
                if pods.is_empty() && obj.pointer("/status/succeeded").is_none() {
                    let name = str_at(&obj, "/metadata/name")
                        .unwrap_or_default()
                        .to_owned();
                    for i in 0..want {
                        let pod = pod_for(st, &key, &obj, &[("job-name", name.clone())]);
                        if indexed && let Some(p) = st.objects.get_mut(&pod) {
                            p["metadata"]["annotations"] =
                                json!({"batch.kubernetes.io/job-completion-index": i.to_string()});
                        }
                    }
                    continue;
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
                if let Some(o) = st.objects.get_mut(&key) {
                    o["status"] = status;
                }
            }
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
                    .filter(|p| {
                        p.pointer("/status/containerStatuses/0/ready") == Some(&json!(true))
                    })
                    .count();
                if let Some(o) = st.objects.get_mut(&key) {
                    o["status"] = json!({"replicas": want, "readyReplicas": ready});
                }
            }
            ("api/v1", "pods") if age >= 2 => advance_pod(st, &key, &obj),
            ("api/v1", _) | ("apis/apps/v1", _) | ("apis/batch/v1", _) => {}
            ("apis/rbac.authorization.k8s.io/v1", _) => {}
            _ if age >= 2
                && obj.get("status").is_none()
                && !str_at(&obj, "/apiVersion").is_some_and(|a| a.starts_with("harness.dev/")) =>
            {
                // A custom resource: its operator reports it ready.
                if let Some(o) = st.objects.get_mut(&key) {
                    o["status"] = json!({
                        "state": "successful",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    });
                }
            }
            _ => {}
        }
    }
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
                let key = (
                    "api/v1".to_owned(),
                    "configmaps".to_owned(),
                    ns.to_owned(),
                    cm.to_owned(),
                );
                let k = str_at(r, "/key").unwrap_or_default();
                st.objects
                    .get(&key)
                    .and_then(|c| {
                        c.pointer(&format!(
                            "/data/{}",
                            k.replace('~', "~0").replace('/', "~1")
                        ))
                    })
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

/// Starts the pod's first container as a local process.
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
        .collect();
    if let (Some(p), Some(first)) = (program, argv.first_mut()) {
        *first = p.display().to_string();
    }
    let Some((cmd, args)) = argv.split_first() else {
        return Err("the container has no command".into());
    };
    let log = std::env::temp_dir().join(format!(
        "harness-fake-pod-{}-{}-{}.log",
        std::process::id(),
        key.2,
        key.3
    ));
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
    let child = command.spawn().map_err(|e| format!("{cmd}: {e}"))?;
    st.procs.insert(key.clone(), (child, log));
    Ok(())
}

fn advance_pod(st: &mut State, key: &Key, pod: &Value) {
    let phase = str_at(pod, "/status/phase").unwrap_or("Pending");
    let script = (st.pod_rule)(pod);
    let log_key = (key.2.clone(), key.3.clone());
    if let PodScript::Exec { program } = &script {
        let status = match phase {
            "Pending" => match exec_pod(st, key, pod, program.as_deref()) {
                Ok(()) => json!({
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
                                           "state": {"running": {}}}],
                }),
                Err(e) => {
                    st.logs.insert(log_key, format!("exec failed: {e}\n"));
                    json!({"phase": "Failed", "containerStatuses": [{"name": "main",
                        "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 127, "reason": "StartError"}}}]})
                }
            },
            "Running" => {
                let Some((child, log)) = st.procs.get_mut(key) else {
                    return;
                };
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let exited = child.try_wait().ok().flatten();
                st.logs.insert(log_key, text);
                match exited {
                    None => return,
                    Some(status) => {
                        let code = status.code().unwrap_or(137);
                        json!({
                            "phase": if code == 0 { "Succeeded" } else { "Failed" },
                            "containerStatuses": [{"name": "main", "ready": false,
                                "restartCount": 0, "state": {"terminated": {"exitCode": code,
                                "reason": if code == 0 { "Completed" } else { "Error" }}}}],
                        })
                    }
                }
            }
            _ => return,
        };
        if let Some(o) = st.objects.get_mut(key) {
            o["status"] = status;
        }
        return;
    }
    let status = match (&script, phase) {
        (PodScript::Run { logs, .. }, "Pending") => {
            st.logs.insert(log_key, logs.clone());
            json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
                                       "state": {"running": {}}}],
            })
        }
        (
            PodScript::Run {
                exit: Some(code), ..
            },
            "Running",
        ) => json!({
            "phase": if *code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{"name": "main", "ready": false, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": code,
                                   "reason": if *code == 0 { "Completed" } else { "Error" }}}}],
        }),
        (PodScript::CrashLoop { logs }, _) => {
            st.logs.insert(log_key, logs.clone());
            json!({
                "phase": "Running",
                "containerStatuses": [{"name": "main", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
            })
        }
        (PodScript::ImagePullBackOff, _) => json!({
            "phase": "Pending",
            "containerStatuses": [{"name": "main", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image"}}}],
        }),
        (PodScript::Unschedulable, _) => json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
        }),
        (PodScript::OomKilled, _) => json!({
            "phase": "Running",
            "containerStatuses": [{"name": "main", "ready": false, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
        }),
        _ => return,
    };
    if let Some(o) = st.objects.get_mut(key) {
        o["status"] = status;
    }
}
