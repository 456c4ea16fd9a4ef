//! Generates the agent's `flow` protobuf package (`agent/proto/flow/flow.proto`) with the
//! generator the agent's own build script uses (protox + tonic-prost-build), so the
//! `flow_filter` target compiles `agent/src/flow/filter.rs` against the same types.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no manifest dir")?);
    let include = manifest_dir.join("../agent/proto");
    println!(
        "cargo:rerun-if-changed={}",
        include.join("flow/flow.proto").display()
    );
    let fds = protox::compile(["flow/flow.proto"], [&include])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
