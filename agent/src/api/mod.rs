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

/// The encoded `FileDescriptorSet` of the `flow`, `relay`, `observer` and `peer` packages (for gRPC
/// server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/observer_descriptor.bin"));

/// Package `observer`: the Observer service.
pub mod observer {
    tonic::include_proto!("observer");
}

/// Package `peer`: the peer discovery service hubble-relay calls.
pub mod peer {
    tonic::include_proto!("peer");
}
