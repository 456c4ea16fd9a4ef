//! In-memory [`MapStore`] for unit tests of the synchronisation logic.

use std::collections::{BTreeMap, HashMap};

use ipnet::{Ipv4Net, Ipv6Net};

use catalyst_policy::datapath::{
    DatapathConfig, EndpointInfo, IpcacheEntry, PolicyEntry, PolicyKey,
};

use super::store::{MapStore, StoreError};

/// Maps held in memory; every mutation is recorded in `log` so tests can check ordering.
#[derive(Debug, Default, Clone)]
pub struct MemoryMaps {
    /// Endpoint map.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// IPv4 ipcache.
    pub v4: BTreeMap<Ipv4Net, IpcacheEntry>,
    /// IPv6 ipcache.
    pub v6: BTreeMap<Ipv6Net, IpcacheEntry>,
    /// Policy map, keyed by (prefix length, key).
    pub policy: HashMap<(u32, PolicyKey), PolicyEntry>,
    /// Global config.
    pub config: DatapathConfig,
    /// Mutations in order: `"put policy"`, `"del endpoint"`, `"config"`, …
    pub log: Vec<String>,
    /// Policy mutations in order with their prefix length: `("put", 96)`, `("del", 80)`, …
    pub policy_log: Vec<(&'static str, u32)>,
}

impl MapStore for MemoryMaps {
    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, StoreError> {
        Ok(self.endpoints.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), StoreError> {
        self.log.push("put endpoint".into());
        self.endpoints.insert(ifindex, info);
        Ok(())
    }
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), StoreError> {
        self.log.push("del endpoint".into());
        self.endpoints.remove(&ifindex);
        Ok(())
    }
    fn ipcache_v4(&self) -> Result<Vec<(Ipv4Net, IpcacheEntry)>, StoreError> {
        Ok(self.v4.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_ipcache_v4(&mut self, net: Ipv4Net, e: IpcacheEntry) -> Result<(), StoreError> {
        self.log.push("put ipcache".into());
        self.v4.insert(net, e);
        Ok(())
    }
    fn del_ipcache_v4(&mut self, net: Ipv4Net) -> Result<(), StoreError> {
        self.log.push("del ipcache".into());
        self.v4.remove(&net);
        Ok(())
    }
    fn ipcache_v6(&self) -> Result<Vec<(Ipv6Net, IpcacheEntry)>, StoreError> {
        Ok(self.v6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_ipcache_v6(&mut self, net: Ipv6Net, e: IpcacheEntry) -> Result<(), StoreError> {
        self.log.push("put ipcache".into());
        self.v6.insert(net, e);
        Ok(())
    }
    fn del_ipcache_v6(&mut self, net: Ipv6Net) -> Result<(), StoreError> {
        self.log.push("del ipcache".into());
        self.v6.remove(&net);
        Ok(())
    }
    fn policy(&self) -> Result<Vec<(u32, PolicyKey, PolicyEntry)>, StoreError> {
        Ok(self
            .policy
            .iter()
            .map(|((len, k), v)| (*len, *k, *v))
            .collect())
    }
    fn put_policy(&mut self, len: u32, key: PolicyKey, e: PolicyEntry) -> Result<(), StoreError> {
        self.log.push("put policy".into());
        self.policy_log.push(("put", len));
        self.policy.insert((len, key), e);
        Ok(())
    }
    fn del_policy(&mut self, len: u32, key: PolicyKey) -> Result<(), StoreError> {
        self.log.push("del policy".into());
        self.policy_log.push(("del", len));
        self.policy.remove(&(len, key));
        Ok(())
    }
    fn config(&self) -> Result<DatapathConfig, StoreError> {
        Ok(self.config)
    }
    fn set_config(&mut self, cfg: DatapathConfig) -> Result<(), StoreError> {
        self.log.push("config".into());
        self.config = cfg;
        Ok(())
    }
}
