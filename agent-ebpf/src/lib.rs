//! Host-side placeholder library so `agent` can list this crate as a build-dependency (cargo then
//! rebuilds the agent when the eBPF sources change). The programs are the `main.rs` binary, built
//! for `bpfel-unknown-none` by `agent/build.rs`.
#![no_std]
