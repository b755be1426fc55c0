//! Manifests for clusters without harness' controller: what `harness k8s render` prints.
//!
//! [`manifests`]: a ServiceAccount for the agents, the Role and RoleBinding that a
//! controlling `harness run` (or `harness operator`) needs inside the cluster, and for each
//! cell its ConfigMap and Job ([`crate::incluster::cell_job_manifests`]). Applying them runs
//! the sweep's cells as Jobs that write to the run's object store.

use harness_core::{Experiment, Result};
use serde_json::{Value, json};

use crate::incluster::{CellJob, cell_job_manifests, to_yaml};

/// The ServiceAccount, Role and RoleBinding of harness in `namespace`: what the
/// controlling side may do (Jobs, ConfigMaps, Deployments, Services, Dynamo graphs, pods and
/// their logs, and its own `DynamoBenchmark` resources).
pub fn rbac(namespace: &str) -> Vec<Value> {
    let rules = json!([
        {"apiGroups": [""], "resources": ["configmaps", "services", "pods"],
         "verbs": ["get", "list", "watch", "create", "delete", "deletecollection"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["get", "list", "watch", "create", "delete", "deletecollection"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"],
         "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": ["nvidia.com"], "resources": ["dynamographdeployments"],
         "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": ["harness.dev"], "resources": ["dynamobenchmarks", "dynamobenchmarks/status"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
    ]);
    let labels = json!({"app.kubernetes.io/name": "harness"});
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "harness", "namespace": namespace, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "harness", "namespace": namespace, "labels": labels},
               "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "harness", "namespace": namespace, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "harness"},
               "subjects": [{"kind": "ServiceAccount", "name": "harness", "namespace": namespace}]}),
    ]
}

/// Every object of an in-cluster run of `exp` as `run_id`: RBAC, then each cell's ConfigMap
/// and Job, as multi-document YAML.
///
/// # Errors
/// When the plan cannot be made.
pub fn manifests(
    exp: &Experiment,
    run_id: &str,
    endpoint: &str,
    store_url: &str,
) -> Result<String> {
    let namespace = exp.backend.namespace();
    let mut objects = rbac(namespace);
    for cell in exp.plan()?.cells() {
        for mut o in cell_job_manifests(&CellJob {
            run_id,
            experiment: exp,
            cell,
            endpoint,
            store_url,
        }) {
            o["metadata"]["namespace"] = json!(namespace);
            objects.push(o);
        }
    }
    Ok(to_yaml(&objects))
}
