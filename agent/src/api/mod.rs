//! Generated Hubble Observer API types (from `agent/proto/`, compiled by `build.rs`).

#![allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    reason = "generated code from tonic-prost-build"
)]

/// Package `flow`: the flow record, filters, lost events.
pub mod flow {
    tonic::include_proto!("flow");
}

/// Package `relay`: node status events.
pub mod relay {
    tonic::include_proto!("relay");
}

/// Package `observer`: the Observer service.
pub mod observer {
    tonic::include_proto!("observer");
}
