//! The Kubernetes backend of harness.
//!
//! Not implemented yet: this crate will hold `K8sBackend`, in-cluster benchmark Jobs, the
//! `DynamoBenchmark` custom resource and its controller. It exports nothing until then, and
//! experiments that ask for a Kubernetes backend are rejected at validation.
