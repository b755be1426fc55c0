//! The Kubernetes backend of harness.
//!
//! * [`K8sBackend`]: workloads as Kubernetes objects (manifests such as a Dynamo
//!   `DynamoGraphDeployment`, or an image as a Deployment and Service or a Job), readiness
//!   that fails fast on pods that cannot recover, in-cluster endpoints, pod logs, and
//!   teardown by label.
//! * [`incluster`]: cells run as Jobs next to the model (`harness agent`), results written
//!   to the run's object store and folded into the run.
//! * [`crd`] and [`operator`]: the `DynamoBenchmark` custom resource and its controller.
//! * `testkit` (feature `testkit`): a fake API server behind a real `kube::Client`, with
//!   simulated controllers, for tests.
//!
//! The client is injected, so the same code runs against a cluster (`kube::Client::try_default`)
//! and against the fake:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let backend = harness_k8s::K8sBackend::new(client, "benchmarks").label("harness.dev/run", "r1");
//! # let _ = backend; Ok(()) }
//! ```

mod backend;
pub mod crd;
pub mod incluster;
pub mod operator;
pub mod render;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::{
    DEFAULT_FAIL_FAST_GRACE, DYNAMO_GRAPH_LABEL, Deployed, FIELD_MANAGER, K8sBackend, MANAGED_BY,
    WORKLOAD_LABEL, parse_manifests,
};
pub use incluster::{InClusterStep, run_agent};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
