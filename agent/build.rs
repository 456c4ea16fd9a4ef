//! Builds the eBPF object (`agent-ebpf`) with aya-build and places it in `OUT_DIR`, then compiles
//! the project's Hubble-compatible `.proto` files (`agent/proto/`) with protox (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed) and tonic-prost-build.
//!
//! The project-local bpf-linker installed by `cargo xtask setup` (`.tools/bpf-linker/bin`) is put
//! on `PATH` for the nested nightly build. Without the eBPF toolchain (no nightly with
//! `rust-src`, no bpf-linker) the agent is built without its eBPF object, with a warning, so
//! machines without it can still check, lint and `cargo test` the userspace crates; the agent
//! then refuses to load with a clear error instead of enforcing nothing, `--version` says
//! `eBPF datapath: not built in`, and tests that need the object skip (plain `cargo test`) or
//! fail (`cargo xtask test`, which sets the toolchain up first). `CATALYST_SKIP_EBPF=1` (or
//! aya-build's own `AYA_BUILD_SKIP=1`) skips the eBPF build even when the toolchain is there.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    build_ebpf()?;
    compile_protos()
}

/// The Observer API protos: `flow`, `relay`, `observer` and `peer` packages (specs/hubble-observer-api.md).
fn compile_protos() -> anyhow::Result<()> {
    const PROTOS: [&str; 4] = [
        "flow/flow.proto",
        "relay/relay.proto",
        "observer/observer.proto",
        "peer/peer.proto",
    ];
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let include = manifest_dir.join("proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", include.join(p).display());
    }
    let fds = protox::compile(PROTOS, [&include])?;
    // The encoded descriptors, for gRPC server reflection (grpcurl, grpcui).
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    fs::write(
        out_dir.join("observer_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CATALYST_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let object = out_dir.join("catalyst-agent-ebpf");
    let skip = |v: Option<std::ffi::OsString>| {
        v.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    };
    println!("cargo:rustc-check-cfg=cfg(catalyst_no_ebpf)");
    let without_object = |why: &str| -> anyhow::Result<()> {
        println!("cargo:warning={why}: building the agent without its eBPF object");
        fs::write(&object, b"")?;
        println!("cargo:rustc-cfg=catalyst_no_ebpf");
        Ok(())
    };
    if skip(env::var_os("CATALYST_SKIP_EBPF")) || skip(env::var_os("AYA_BUILD_SKIP")) {
        return without_object("CATALYST_SKIP_EBPF set");
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("agent/ lives in the workspace root")
        .to_owned();
    let linker_dir = root.join(".tools/bpf-linker/bin");
    // Built without the object because the toolchain was missing: `cargo xtask setup` installing
    // it must bring the object in on the next build.
    println!(
        "cargo:rerun-if-changed={}",
        linker_dir.join("bpf-linker").display()
    );
    if linker_dir.join("bpf-linker").exists() {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![linker_dir];
        paths.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded at this point; the nested cargo inherits it.
        unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    } else if which_bpf_linker().is_none() {
        return without_object(&format!(
            "eBPF toolchain missing (no bpf-linker in {} or on PATH; `cargo xtask setup` installs it)",
            root.join(".tools/bpf-linker/bin").display()
        ));
    }
    if !nightly_has_rust_src() {
        return without_object(
            "eBPF toolchain missing (no nightly Rust with rust-src; `cargo xtask setup` installs it)",
        );
    }
    let ebpf_dir = root.join("agent-ebpf");
    let policy_dir = root.join("policy/src/datapath.rs");
    println!("cargo:rerun-if-changed={}", policy_dir.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "catalyst-agent-ebpf",
            root_dir: ebpf_dir.to_str().expect("utf-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Whether `rustc +nightly` exists and has `rust-src` (aya-build builds `core` for the bpf target).
fn nightly_has_rust_src() -> bool {
    std::process::Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library/core")
                .exists()
        })
}

fn which_bpf_linker() -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|p| p.join("bpf-linker"))
        .find(|p| p.exists())
}
