//! The `DynamoBenchmark` custom resource (`harness.dev/v1alpha1`): an experiment as a
//! Kubernetes object, run by `harness operator` (the proposal's first alternative).
//!
//! ```yaml
//! apiVersion: harness.dev/v1alpha1
//! kind: DynamoBenchmark
//! metadata: {name: llama-sweep, namespace: bench}
//! spec:
//!   experiment:            # the experiment file's format, as is
//!     name: llama-sweep
//!     model: {name: meta-llama/Llama-3.1-8B-Instruct}
//!     concurrency: [1, 8, 64]
//!     benchmark: {isl_osl: [[1024, 256]]}
//!     deployment: {url: http://llama-frontend.bench.svc.cluster.local:8000}
//!   store: s3://results/harness
//! ```

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec of a [`DynamoBenchmark`]: the experiment, and where its run is stored.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "harness.dev",
    version = "v1alpha1",
    kind = "DynamoBenchmark",
    namespaced,
    status = "DynamoBenchmarkStatus",
    shortname = "dbench",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.cellsDone"}"#,
    printcolumn = r#"{"name":"Cells","type":"integer","jsonPath":".status.cellsTotal"}"#,
    printcolumn = r#"{"name":"Run","type":"string","jsonPath":".status.runId"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DynamoBenchmarkSpec {
    /// The experiment, in the format of harness' experiment files; checked by the operator,
    /// which reports the first problem (field and reason) in `.status.message`.
    #[schemars(schema_with = "experiment_schema")]
    pub experiment: serde_json::Value,
    /// The object store URL of the run (default: the experiment's `storage.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// The experiment: an object with the required top-level keys; its fields are checked by
/// harness (the schema keeps unknown fields so the experiment format can grow).
fn experiment_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "required": ["name", "model"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
            "model": {"type": "object", "required": ["name"],
                      "properties": {"name": {"type": "string", "minLength": 1}}},
            "concurrency": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "request_rate": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMinimum": true}},
        },
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// What the operator reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamoBenchmarkStatus {
    /// `Running`, `Succeeded`, `PartiallyFailed`, `Failed` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The run's id in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Cells in the plan.
    #[serde(default)]
    pub cells_total: u32,
    /// Cells finished (either way).
    #[serde(default)]
    pub cells_done: u32,
    /// Cells that failed.
    #[serde(default)]
    pub cells_failed: u32,
    /// The cell running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_cell: Option<String>,
    /// Why it is invalid or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Checks `resource` (a whole `DynamoBenchmark` object) against the CRD's generated
/// OpenAPI schema, as the API server does on create: types, required fields, minimums and
/// lengths. Returns the first problem with its path.
///
/// ```
/// let ok = serde_json::json!({"apiVersion": "harness.dev/v1alpha1", "kind": "DynamoBenchmark",
///     "metadata": {"name": "a"}, "spec": {"experiment": {"name": "a", "model": {"name": "m"}}}});
/// assert!(harness_k8s::crd::check(&ok).is_ok());
/// let mut broken = ok.clone();
/// broken["spec"]["experiment"]["model"] = serde_json::json!({});
/// assert!(harness_k8s::crd::check(&broken).unwrap_err().contains(".spec.experiment.model.name"));
/// ```
///
/// # Errors
/// The first problem, as `<path>: <reason>`.
pub fn check(resource: &serde_json::Value) -> Result<(), String> {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(DynamoBenchmark::crd()).map_err(|e| e.to_string())?;
    let schema = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .ok_or("the CRD has no schema")?;
    check_value(schema, resource, "")
}

fn check_value(
    schema: &serde_json::Value,
    v: &serde_json::Value,
    path: &str,
) -> Result<(), String> {
    use serde_json::Value;
    let at = if path.is_empty() { "." } else { path };
    if v.is_null() {
        return if schema.get("nullable") == Some(&Value::Bool(true)) {
            Ok(())
        } else {
            Err(format!("{at}: must not be null"))
        };
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        return Err(format!("{at}: expected {}", ty.unwrap_or("?")));
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && let Some(x) = v.as_f64()
    {
        let exclusive = schema.get("exclusiveMinimum") == Some(&Value::Bool(true));
        if x < min || (exclusive && x == min) {
            return Err(format!("{at}: {x} is below the minimum {min}"));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && v.as_str().is_some_and(|s| (s.chars().count() as u64) < min)
    {
        return Err(format!("{at}: shorter than {min}"));
    }
    if let Some(obj) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str()
                && !obj.contains_key(k)
            {
                return Err(format!("{path}.{k}: required"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, x) in obj {
                if let Some(s) = props.get(k) {
                    check_value(s, x, &format!("{path}.{k}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check_value(items, x, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}
