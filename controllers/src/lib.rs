//! catalyst-controllers: the Kubernetes controllers of the Catalyst data plane (DESIGN.md §4.8).
//!
//! One binary hosts the controllers; each is a pure reconcile core (desired state from custom
//! resources + observed state → actions) behind a thin kube shell, and runs either against the
//! API server (Kubernetes mode) or on files (standalone mode).
#![forbid(unsafe_code)]

pub mod compliance;
pub mod config;
pub mod continuum;
pub mod crd;
pub mod kubernetes;
pub mod leader;
pub mod metrics;
pub mod object;
pub mod standalone;
pub mod tenancy;
pub mod validate;
