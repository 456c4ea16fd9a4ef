//! catalyst-dns: an authoritative DNS server that loads `PowerDNS` zone files unchanged, including
//! `LUA` records, and answers them with a native evaluator compiled at load.
//!
//! Layers: [`zone`] (master files, the store and lookup), [`lua`] (the record language),
//! [`health`] (checks behind `ifportup`/`ifurlup`), [`geo`], [`failover`], [`catalog`] (zone
//! set + cache policy), [`cache`] (per-worker answer cache), [`server`] (UDP fast path, TCP via
//! hickory-server, reloads), [`metrics`], [`config`].
#![deny(unsafe_code)]

pub mod cache;
pub mod catalog;
pub mod config;
pub mod failover;
pub mod geo;
pub mod hash;
pub mod health;
pub mod lua;
pub mod metrics;
pub mod server;
pub mod zone;

pub use self::{
    catalog::Catalog,
    config::Config,
    server::{ServerError, Services, load_zones, run},
    zone::{Zone, ZoneError, ZoneSet},
};
