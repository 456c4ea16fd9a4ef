//! Catalyst policy model.
//!
//! The `datapath` module is `no_std`-clean and holds every type shared with the eBPF programs;
//! everything else (parsing, identities, the compiler and the reference evaluator) needs `std`.
//!
//! The pipeline the agent drives:
//!
//! 1. [`PolicySet::load_files`] parses CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
//!    Kubernetes NetworkPolicy manifests into normalised [`Policy`] values.
//! 2. [`CompileInput`] bundles them with the local [`Endpoint`]s and extra [`IpcachePeer`]s.
//! 3. [`compile`] (or [`compile_with`] and a long-lived [`LocalAllocator`]) turns the input into
//!    [`Compiled`] map entries; [`Compiled::lookup`] emulates the eBPF lookup on them.
//! 4. [`evaluate`] is the reference evaluator: the oracle the compiler is tested against.
#![cfg_attr(not(feature = "std"), no_std)]

#[expect(
    clippy::inline_always,
    reason = "datapath helpers are inlined into eBPF programs"
)]
pub mod datapath;

#[cfg(feature = "std")]
pub mod compile;
#[cfg(feature = "std")]
pub mod endpoint;
#[cfg(feature = "std")]
pub mod eval;
/// The suite's one HTTP serve loop (request size, time and connection limits, refusals counted).
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "std")]
pub mod identity;
#[cfg(feature = "std")]
pub mod labels;
#[cfg(feature = "std")]
pub mod manifest;
/// The suite's one NATS module: subject tokens, and behind the `nats` feature the connection.
#[cfg(feature = "std")]
pub mod nats;
#[cfg(feature = "std")]
pub mod ports;
#[cfg(feature = "std")]
pub mod rule;
#[cfg(feature = "std")]
pub mod selector;

#[cfg(feature = "std")]
pub use self::{
    compile::{
        CompileError, CompileInput, Compiled, Engine, LookupResult, PolicyRow, UpdateStats,
        compile, compile_with,
    },
    endpoint::{Endpoint, IpcachePeer, NamedPort, PeerIdentity},
    eval::{Decision, EvalError, Packet, Verdict, evaluate},
    identity::{CidrAllocator, IdentityAllocator, IdentityError, LocalAllocator},
    labels::{Label, LabelError, LabelSet},
    manifest::{ManifestError, PolicyError, PolicySet, parse_manifests},
    rule::{Policy, PolicyKind, PolicyRef, Rule},
    selector::{EndpointSelector, SelectorError},
};
