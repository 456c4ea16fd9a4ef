//! The kernel datapath as the agent sees it: the maps (behind [`MapStore`], so the
//! synchronisation logic is unit-tested without root), the loader that loads, pins and attaches
//! the eBPF programs, and the diff-based synchronisation of compiled policy into the maps.

mod bpffs;
mod loader;
mod memory;
mod store;
mod sync;

pub use self::{
    bpffs::ensure_bpffs,
    loader::{Datapath, LoadOptions, uninstall},
    memory::MemoryMaps,
    store::{DesiredState, MapStore, StoreError},
    sync::{SyncReport, apply},
};
