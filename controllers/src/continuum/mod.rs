//! Continuum: lease-fenced multi-region switchover that drives DNS (DESIGN.md §4.8, docs/continuum.md).
//!
//! - [`lease`]: the lease on NATS KV `continuum-leases` (CAS on the entry revision; the revision
//!   of the acquiring write is the epoch, the fencing token of every side effect).
//! - [`machine`]: the pure core — what to do (manual switchover, failover, failback) and the
//!   persisted, resumable switchover state machine.
//! - [`kube`]: the Kubernetes side — `CloudNativePG` driver, `HTTPRoute` weights, CR status.
//! - [`postgres`]: the PostgreSQL driver (standalone and lab).
//! - [`store`]: NATS KV buckets and the audit subject.
//! - [`witness`]: the `_continuum.<group>` TXT witness quorum read from catalyst-dns instances.
//! - [`history`]: the epoch history every controller logs and the checker of its safety
//!   properties (used by the lab's nemesis runs).
//! - [`run`]: the controller loop.
//! - [`wire`]: the payloads other programs read (`dns-failover`, audit events).

pub mod history;
pub mod kube;
pub mod lease;
pub mod machine;
pub mod postgres;
pub mod run;
pub mod store;
pub mod wire;
pub mod witness;
