//! Catalyst policy model.
//!
//! The `datapath` module is `no_std`-clean and holds every type shared with the eBPF programs;
//! everything else (parsing, identities, the compiler and the reference evaluator) needs `std`.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod datapath;
