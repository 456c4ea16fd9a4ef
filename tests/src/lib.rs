//! Harness for end-to-end suites: the network-namespace lab and traffic probes that run inside
//! its namespaces. Used by `cargo xtask lab|demo|test` and by the suites under `tests/tests/`.
#![allow(
    clippy::missing_panics_doc,
    reason = "a test harness: panics are how it reports"
)]

pub mod agent;
pub mod continuum;
pub mod controllers;
pub mod helm;
pub mod lab;
pub mod nats;
pub mod probe;
pub mod require;
pub mod scenario;
