//! The kernel datapath as the agent sees it: the maps (behind [`MapStore`], so the
//! synchronisation logic is unit-tested without root), the loader that loads, pins and attaches
//! the eBPF programs, and the diff-based synchronisation of compiled policy into the maps.

mod bpffs;
mod gc;
mod loader;
#[cfg(test)]
mod memory;
mod migrate;
#[cfg(test)]
pub use self::memory::MemoryMaps;
mod store;
mod sync;
pub mod tcx;

pub use self::{
    bpffs::ensure_bpffs,
    gc::{ConntrackGc, GcReport, monotonic_ns},
    loader::{AttachMode, Datapath, LoadOptions, read_counters_of, uninstall},
    migrate::{CtEntryV4, CtEntryV5, CtKey4V5, CtKeyV5},
    store::{DesiredState, MapStore, StoreError, by_endpoint},
    sync::{apply, apply_diff},
};
