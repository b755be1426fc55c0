//! Manifests for clusters without harness' controller: what `harness k8s render` prints.
//!
//! [`manifests`]: a ServiceAccount for the agents, the Role and RoleBinding that a
//! controlling `harness run` (or `harness operator`) needs inside the cluster, and for each
//! cell its ConfigMap and Job ([`crate::incluster::cell_job_manifests`]). Applying them runs
//! the sweep's cells as Jobs that write to the run's object store.

use harness_core::{Experiment, Result};
use serde_json::{Value, json};

use crate::incluster::{
    EXPERIMENT_FILE, MOUNT, WORKLOAD_FILE, configmap_data, dns_label, job_objects, to_yaml,
};

/// The name of the ServiceAccount, Role and RoleBinding [`rbac`] makes.
const SERVICE_ACCOUNT: &str = "harness";

/// The ServiceAccount, Role and RoleBinding of harness in `namespace`: what the
/// controlling side may do (Jobs, ConfigMaps, Deployments, Services, Dynamo graphs, pods and
/// their logs, and its own `DynamoBenchmark` resources).
pub fn rbac(namespace: &str) -> Vec<Value> {
    let rules = json!([
        {"apiGroups": [""], "resources": ["configmaps", "services", "pods", "secrets"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["nvidia.com"], "resources": ["dynamographdeployments"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["harness.dev"], "resources": ["dynamobenchmarks", "dynamobenchmarks/status"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
    ]);
    let labels = json!({"app.kubernetes.io/name": "harness"});
    let name = SERVICE_ACCOUNT;
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": namespace, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": namespace, "labels": labels},
               "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": namespace, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
    ]
}

/// Every object of an in-cluster run of `exp` as `run_id`, as multi-document YAML: RBAC,
/// a ConfigMap with the experiment (and `workload_file`, the content of `workload.path`),
/// and one Job whose pod runs `harness run`: it creates the run in the store at
/// `store_url` (so `harness ls` and `show` see it) and runs the cells one after another,
/// never two at once against the same model. Against `endpoint`, it runs them in its own
/// pod (`--here`), or with `backend.clients` above 1 each as an Indexed Job of client
/// pods. Without an endpoint it deploys the experiment's `deployment.manifests` (inline:
/// read them before rendering), runs each cell as a Job next to the model and tears the
/// model down. Jobs and deployments are created with the rendered service account.
///
/// # Errors
/// When the plan cannot be made, or the ConfigMap would be too large.
pub fn manifests(
    exp: &Experiment,
    run_id: &str,
    endpoint: Option<&str>,
    store_url: &str,
    workload_file: Option<&str>,
) -> Result<String> {
    let namespace = exp.backend.namespace();
    let cells = exp.plan()?.len() as u64;
    let mut objects = rbac(namespace);
    let name = format!("harness-{}", dns_label(run_id, 50));
    let labels = json!({
        "app.kubernetes.io/name": "harness",
        "app.kubernetes.io/component": "run",
        "app.kubernetes.io/managed-by": "harness",
        "harness.dev/run": dns_label(run_id, 63),
    });
    // One client against a running model: the cells' steps run in this pod. Otherwise
    // this pod runs the cells as `harness run` does (deploying the model when there is no
    // endpoint), a Job of client pods each, as the rendered service account.
    let here = exp.backend.clients() <= 1 && endpoint.is_some();
    let mut command: Vec<String> = ["harness", "run", EXPERIMENT_FILE, "--run-id", run_id]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if here {
        command.push("--here".into());
    }
    if let Some(url) = endpoint {
        command.extend(["--endpoint".to_owned(), url.to_owned()]);
    }
    command.extend(
        ["--store", store_url, "--no-progress"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    if workload_file.is_some() {
        command.push("--set".into());
        command.push(format!("workload.path={WORKLOAD_FILE}"));
    }
    // Deploying waits up to the ready timeout and tearing down takes up to a step: the
    // Job's deadline counts them as steps.
    let policy = &exp.policy;
    let deploy_steps = match endpoint {
        Some(_) => 0,
        None => {
            let step = policy.step_timeout.get().as_secs().max(1);
            policy.ready_timeout.get().as_secs().div_ceil(step) + 1
        }
    };
    let data = configmap_data(exp, workload_file)?;
    for mut o in job_objects(exp, &name, &labels, data, command, 1, cells + deploy_steps) {
        o["metadata"]["namespace"] = json!(namespace);
        if !here && o["kind"] == "Job" {
            o["spec"]["template"]["spec"]["serviceAccountName"] = json!(SERVICE_ACCOUNT);
        }
        objects.push(o);
    }
    to_yaml(&objects)
}

/// Where the rendered workflow mounts the experiment.
pub const EXPERIMENT_PATH: &str = EXPERIMENT_FILE;

/// Where the workflow's deploy task writes the endpoint it hands to the cells.
const ENDPOINT_FILE: &str = "/tmp/endpoint";

/// An Argo Workflow that runs the sweep one task per step, next to the model:
///
/// * `begin` creates the run in the store (`harness run --plan-only`), with the experiment
///   from a ConfigMap;
/// * `deploy`, for `deployment.manifests` (inline: read them before rendering), applies
///   them labelled with the run, waits until they are ready and hands their endpoint to the
///   cells (`harness k8s deploy`); a `deployment.url` (e.g. a model the Dynamo operator
///   deployed) needs none;
/// * `cell` runs one cell (`harness run --resume RUN --only CELL --endpoint URL`): in its
///   own pod (`--here`), or with `backend.clients` above 1 as an Indexed Job of that many
///   client pods that start together, which the task creates, waits for and merges like
///   `harness run`; the cells form a DAG in which each waits for the one before (they share
///   the model, so they must not overlap) and runs even when it failed;
/// * the exit handler always runs `report` (`harness report`) and `cleanup` (deletes
///   everything labelled with the run: the ConfigMap, the deployment).
///
/// `workload_file`, the content of `workload.path` (a trace, conversations), travels in the
/// ConfigMap with the experiment, mounted in every task's pod.
///
/// # Errors
/// When the deployment is neither a URL nor inline manifests, the plan cannot be made, or
/// the ConfigMap would be too large.
pub fn argo_workflow(
    exp: &Experiment,
    run_id: &str,
    store_url: &str,
    workload_file: Option<&str>,
) -> Result<String> {
    use harness_core::config::Deployment;
    let (deploy, endpoint) = match &exp.deployment {
        Deployment::Url { url, .. } => (false, exp.substitute(url)),
        Deployment::Manifests { manifests, .. } if manifests.contains('\n') => (
            true,
            "{{tasks.deploy.outputs.parameters.endpoint}}".to_owned(),
        ),
        Deployment::Manifests { .. } => {
            return Err(harness_core::Error::invalid(
                "deployment.manifests",
                "the workflow's pods cannot read a file of this machine: give the YAML itself",
            ));
        }
        _ => {
            return Err(harness_core::Error::invalid(
                "--argo",
                "the workflow benchmarks a model in the cluster: give `deployment.url` (the \
                 in-cluster URL of a model already deployed) or `deployment.manifests` \
                 (which its first task deploys)",
            ));
        }
    };
    // One client: the cell's steps run in the task's pod. Several: the task runs the cell
    // as `harness run` does, an Indexed Job of client pods.
    let here = exp.backend.clients() <= 1;
    let namespace = exp.backend.namespace();
    let service_account = exp
        .backend
        .service_account
        .clone()
        .unwrap_or_else(|| SERVICE_ACCOUNT.into());
    let run_label = crate::incluster::dns_label_of(run_id);
    let plan = exp.plan()?;
    let image = exp.backend.image();
    let config = format!("harness-{}", crate::incluster::dns_label(run_id, 50));
    let env_from = exp
        .backend
        .env_secret
        .as_ref()
        .map_or_else(|| json!([]), |s| json!([{"secretRef": {"name": s}}]));
    let harness = |args: &[&str]| -> Value {
        let mut c = vec!["harness"];
        c.extend_from_slice(args);
        json!({"image": image, "command": c, "envFrom": env_from})
    };
    let mut tasks = vec![json!({"name": "begin", "template": "begin"})];
    let mut previous = "begin".to_owned();
    if deploy {
        tasks.push(json!({"name": "deploy", "template": "deploy", "depends": "begin"}));
        previous = "deploy".into();
    }
    for cell in plan.cells() {
        let name = format!("cell-{}", cell.index);
        let depends = if matches!(previous.as_str(), "begin" | "deploy") {
            previous.clone()
        } else {
            format!("{previous}.Succeeded || {previous}.Failed")
        };
        tasks.push(json!({
            "name": name,
            "template": "cell",
            "depends": depends,
            "arguments": {"parameters": [
                {"name": "cell", "value": cell.id.to_string()},
                {"name": "endpoint", "value": endpoint},
            ]},
        }));
        previous = name;
    }
    let workload_set = format!("workload.path={WORKLOAD_FILE}");
    let mut begin_args = vec![
        "run",
        EXPERIMENT_PATH,
        "--run-id",
        run_id,
        "--plan-only",
        "--store",
        store_url,
        "--no-progress",
    ];
    if workload_file.is_some() {
        // The stored experiment reads its workload file where every task mounts it.
        begin_args.extend(["--set", workload_set.as_str()]);
    }
    let mut begin = harness(&begin_args);
    begin["volumeMounts"] = json!([{"name": "experiment", "mountPath": MOUNT}]);
    let mut cell_args = vec![
        "run",
        "--resume",
        run_id,
        "--only",
        "{{inputs.parameters.cell}}",
    ];
    if here {
        cell_args.push("--here");
    }
    cell_args.extend([
        "--endpoint",
        "{{inputs.parameters.endpoint}}",
        "--store",
        store_url,
        "--no-progress",
    ]);
    let mut templates = vec![
        json!({"name": "sweep", "dag": {"tasks": tasks}}),
        json!({"name": "begin", "container": begin}),
    ];
    if deploy {
        let mut container = harness(&[
            "k8s",
            "deploy",
            EXPERIMENT_PATH,
            "--run-id",
            run_id,
            "--endpoint-file",
            ENDPOINT_FILE,
        ]);
        container["volumeMounts"] = json!([{"name": "experiment", "mountPath": MOUNT}]);
        templates.push(json!({
            "name": "deploy",
            "container": container,
            "outputs": {"parameters": [
                {"name": "endpoint", "valueFrom": {"path": ENDPOINT_FILE}},
            ]},
        }));
    }
    let mut cell = harness(&cell_args);
    cell["volumeMounts"] = json!([{"name": "experiment", "mountPath": MOUNT}]);
    templates.extend([
        json!({"name": "cell",
               "inputs": {"parameters": [{"name": "cell"}, {"name": "endpoint"}]},
               "container": cell}),
        json!({"name": "finish", "steps": [[{"name": "report", "template": "report"}],
                                           [{"name": "cleanup", "template": "cleanup"}]]}),
        json!({"name": "report", "container": harness(&["report", run_id, "--store", store_url])}),
        json!({"name": "cleanup", "container": harness(&["k8s", "cleanup", "--run", run_id,
            "--namespace", namespace])}),
    ]);
    // Bounded like the in-cluster Jobs: every cell's step timeout, plus the first and last
    // tasks, and the deployment's readiness.
    let mut deadline = exp.policy.step_timeout.get().as_secs() * (plan.len() as u64 + 2);
    if deploy {
        deadline += exp.policy.ready_timeout.get().as_secs();
    }
    let labels = json!({"harness.dev/run": run_label, "app.kubernetes.io/name": "harness"});
    let workflow = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": format!("harness-{}-", crate::incluster::dns_label(exp.name.as_str(), 40)),
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {
            "entrypoint": "sweep",
            "onExit": "finish",
            // Pods go when they succeed, the workflow a day after it ends.
            "activeDeadlineSeconds": deadline,
            "podGC": {"strategy": "OnPodSuccess"},
            "ttlStrategy": {"secondsAfterSuccess": 3600, "secondsAfterFailure": 86400},
            "serviceAccountName": service_account,
            "volumes": [{"name": "experiment", "configMap": {"name": config}}],
            "templates": templates,
        },
    });
    let configmap = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config, "namespace": namespace, "labels": labels},
        "data": configmap_data(exp, workload_file)?,
    });
    let mut objects = argo_rbac(namespace, &service_account);
    objects.push(configmap);
    objects.push(workflow);
    crate::incluster::to_yaml(&objects)
}

/// The service account of the workflow's pods with what they need: harness' rules (the
/// cleanup task deletes what the run left) and Argo's executor's (reporting task results).
fn argo_rbac(namespace: &str, account: &str) -> Vec<Value> {
    let mut objects = rbac(namespace);
    for o in &mut objects {
        if o["kind"] != "RoleBinding" {
            o["metadata"]["name"] = json!(account);
        }
    }
    if let Some(rules) = objects[1]["rules"].as_array_mut() {
        rules.push(
            json!({"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                          "verbs": ["create", "patch"]}),
        );
    }
    objects[2]["metadata"]["name"] = json!(account);
    objects[2]["roleRef"]["name"] = json!(account);
    objects[2]["subjects"][0]["name"] = json!(account);
    objects
}
