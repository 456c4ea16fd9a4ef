//! catalyst-controllers: the Kubernetes controllers of the Catalyst data plane.
//!
//! Nothing is implemented here yet: tenancy isolation, compliance score roll-ups and the
//! Continuum failover controller are tracked as separate issues. The crate exists so the
//! workspace has its fixed layout (DESIGN.md §2); it exports no API that pretends to work.
#![forbid(unsafe_code)]
