//! The map operations the agent needs, as a trait: the aya-backed implementation talks to the
//! kernel, [`super::MemoryMaps`] keeps everything in memory for unit tests.

use std::{collections::BTreeMap, sync::Arc};

use ipnet::{Ipv4Net, Ipv6Net};

use catalyst_policy::datapath::{
    CtTimeouts, DatapathConfig, EndpointInfo, IpcacheEntry, PolicyEntry, PolicyKey,
};
use catalyst_policy::{Engine, PolicyRow};

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
#[error("map `{map}`: {op} failed: {message}")]
pub struct StoreError {
    /// Map name.
    pub map: &'static str,
    /// Operation (`insert`, `remove`, `iterate`, …).
    pub op: &'static str,
    /// Cause.
    pub message: String,
}

/// Desired contents of the maps, keyed the way the kernel keys them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Endpoint map: ifindex → info.
    pub endpoints: Vec<(u32, EndpointInfo)>,
    /// IPv4 ipcache.
    pub ipcache_v4: Vec<(Ipv4Net, IpcacheEntry)>,
    /// IPv6 ipcache.
    pub ipcache_v6: Vec<(Ipv6Net, IpcacheEntry)>,
    /// Policy entries `(prefix length, key, value)` by endpoint id (`key.endpoint_id`). An
    /// endpoint whose entries are the same `Arc` as in the previous state is skipped by the diff
    /// without looking at its entries (the incremental compiler keeps unchanged endpoints' `Arc`).
    pub policy: BTreeMap<u32, Arc<Vec<PolicyRow>>>,
    /// Global flags (`CFG_F_*`).
    pub config_flags: u32,
    /// Event aggregation interval, ns.
    pub event_interval_ns: u64,
    /// Conntrack timeouts (default: Cilium's).
    pub ct_timeouts: CtTimeouts,
}

impl DesiredState {
    /// The map contents of `compiled`. Endpoint ids are the endpoints' host-side ifindexes (the
    /// agent's convention), so they key the endpoint map as they are.
    pub fn from_compiled(
        compiled: &catalyst_policy::Compiled,
        config_flags: u32,
        event_interval_ns: u64,
    ) -> Self {
        Self {
            endpoints: compiled.endpoints().to_vec(),
            ipcache_v4: compiled.ipcache_v4().to_vec(),
            ipcache_v6: compiled.ipcache_v6().to_vec(),
            policy: by_endpoint(compiled.policy().iter().copied()),
            config_flags,
            event_interval_ns,
            ct_timeouts: CtTimeouts::default(),
        }
    }

    /// The map contents an incremental [`Engine`] holds (cheap: entries are shared).
    pub fn from_engine(engine: &Engine, config_flags: u32, event_interval_ns: u64) -> Self {
        Self {
            endpoints: engine.endpoints(),
            ipcache_v4: engine.ipcache_v4().to_vec(),
            ipcache_v6: engine.ipcache_v6().to_vec(),
            policy: engine.policy_by_endpoint(),
            config_flags,
            event_interval_ns,
            ct_timeouts: CtTimeouts::default(),
        }
    }

    /// Number of policy entries.
    pub fn policy_len(&self) -> usize {
        self.policy.values().map(|v| v.len()).sum()
    }
}

/// Groups policy rows by `key.endpoint_id`.
pub fn by_endpoint(
    rows: impl IntoIterator<Item = PolicyRow>,
) -> BTreeMap<u32, Arc<Vec<PolicyRow>>> {
    let mut out: BTreeMap<u32, Vec<PolicyRow>> = BTreeMap::new();
    for row in rows {
        out.entry(row.1.endpoint_id).or_default().push(row);
    }
    out.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// Map access used by [`super::apply`].
pub trait MapStore {
    /// Current endpoint entries.
    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, StoreError>;
    /// Inserts or replaces an endpoint entry.
    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), StoreError>;
    /// Removes an endpoint entry.
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), StoreError>;
    /// Current IPv4 ipcache entries.
    fn ipcache_v4(&self) -> Result<Vec<(Ipv4Net, IpcacheEntry)>, StoreError>;
    /// Inserts or replaces an IPv4 ipcache entry.
    fn put_ipcache_v4(&mut self, net: Ipv4Net, e: IpcacheEntry) -> Result<(), StoreError>;
    /// Removes an IPv4 ipcache entry.
    fn del_ipcache_v4(&mut self, net: Ipv4Net) -> Result<(), StoreError>;
    /// Current IPv6 ipcache entries.
    fn ipcache_v6(&self) -> Result<Vec<(Ipv6Net, IpcacheEntry)>, StoreError>;
    /// Inserts or replaces an IPv6 ipcache entry.
    fn put_ipcache_v6(&mut self, net: Ipv6Net, e: IpcacheEntry) -> Result<(), StoreError>;
    /// Removes an IPv6 ipcache entry.
    fn del_ipcache_v6(&mut self, net: Ipv6Net) -> Result<(), StoreError>;
    /// Current policy entries.
    fn policy(&self) -> Result<Vec<(u32, PolicyKey, PolicyEntry)>, StoreError>;
    /// Inserts or replaces a policy entry.
    fn put_policy(&mut self, len: u32, key: PolicyKey, e: PolicyEntry) -> Result<(), StoreError>;
    /// Removes a policy entry.
    fn del_policy(&mut self, len: u32, key: PolicyKey) -> Result<(), StoreError>;
    /// Current global config.
    fn config(&self) -> Result<DatapathConfig, StoreError>;
    /// Replaces the global config.
    fn set_config(&mut self, cfg: DatapathConfig) -> Result<(), StoreError>;
}
