//! Builds the desired datapath state from configuration and policies.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CString,
    net::IpAddr,
    path::PathBuf,
    time::SystemTime,
};

use anyhow::Context as _;
use catalyst_policy::{
    CidrAllocator, CompileInput, Endpoint, Engine, IpcachePeer, LabelSet, LocalAllocator,
    NamedPort, PeerIdentity, Policy, PolicySet, UpdateStats,
    datapath::{
        CFG_F_AUDIT, IDENTITY_HEALTH, IDENTITY_HOST, IDENTITY_INGRESS, IDENTITY_INIT,
        IDENTITY_KUBE_APISERVER, IDENTITY_REMOTE_NODE, IDENTITY_UNMANAGED,
    },
    labels::SOURCE_K8S,
    manifest::policy_files,
    parse_manifests,
    ports::{PortName, Protocol},
};
use ipnet::IpNet;

use crate::{
    config::AgentConfig,
    datapath::DesiredState,
    flow::{EnrichState, PolicyRefOut},
};

/// Resolves an interface name to its ifindex (0 when it does not exist).
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Everything derived from one configuration + policy snapshot.
pub struct Snapshot {
    /// Desired map contents.
    pub desired: DesiredState,
    /// Enrichment tables for flows.
    pub enrich: EnrichState,
    /// Interfaces to attach to.
    pub interfaces: BTreeSet<String>,
    /// Configured endpoints whose interface does not exist (yet).
    pub missing: Vec<String>,
    /// Number of policies in force.
    pub policies: usize,
    /// What the incremental compiler recomputed for this snapshot.
    pub stats: UpdateStats,
}

/// Long-lived compilation state: identity allocators (identities stay stable across reloads),
/// the incremental compiler and the parsed policy files.
#[derive(Default)]
pub struct Allocators {
    labels: LocalAllocator,
    cidrs: CidrAllocator,
    engine: Engine,
    files: PolicyFiles,
    /// Cluster-wide label-set identities resolved in advance (Kubernetes mode with NATS); when
    /// set, they replace the local allocator.
    cluster: Option<crate::identity::Resolved>,
}

impl Allocators {
    /// The compiled state of the last successful build as a [`catalyst_policy::Compiled`]
    /// (flattened, with lookup tables: for tests, tools and explanations).
    pub fn compiled(&self) -> catalyst_policy::Compiled {
        self.engine.to_compiled()
    }

    /// Uses cluster-wide identities resolved in advance (`None`: the local allocator).
    pub fn set_cluster(&mut self, resolved: Option<crate::identity::Resolved>) {
        self.cluster = resolved;
    }

    /// Loads the policies named by the configuration, parsing only files that changed since
    /// the last successful load (size or modification time).
    pub fn load_policies(&mut self, cfg: &AgentConfig) -> anyhow::Result<PolicySet> {
        self.files.load(cfg)
    }
}

/// Parsed policy files by path, with the size and modification time they were parsed at.
#[derive(Default)]
struct PolicyFiles {
    files: HashMap<PathBuf, (u64, Option<SystemTime>, Vec<Policy>)>,
}

impl PolicyFiles {
    fn load(&mut self, cfg: &AgentConfig) -> anyhow::Result<PolicySet> {
        let mut set = PolicySet::new();
        let mut next = HashMap::new();
        for path in &cfg.policy_paths {
            for file in policy_files(path)? {
                let md = std::fs::metadata(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let (len, mtime) = (md.len(), md.modified().ok());
                let policies = match self.files.remove(&file) {
                    Some((l, m, p)) if l == len && m == mtime => p,
                    _ => {
                        let text = std::fs::read_to_string(&file)
                            .with_context(|| format!("cannot read {}", file.display()))?;
                        parse_manifests(&file.display().to_string(), &text)?
                    }
                };
                set.extend(policies.iter().cloned())?;
                next.insert(file, (len, mtime, policies));
            }
        }
        self.files = next;
        Ok(set)
    }
}

fn reserved_entity(name: &str) -> Option<u32> {
    Some(match name {
        "host" => IDENTITY_HOST,
        "remote-node" => IDENTITY_REMOTE_NODE,
        "kube-apiserver" => IDENTITY_KUBE_APISERVER,
        "health" => IDENTITY_HEALTH,
        "ingress" => IDENTITY_INGRESS,
        "unmanaged" => IDENTITY_UNMANAGED,
        "init" => IDENTITY_INIT,
        _ => return None,
    })
}

/// The label set of configured `key: value` labels (default source `k8s`).
pub fn label_set(labels: &BTreeMap<String, String>, what: &str) -> anyhow::Result<LabelSet> {
    let items: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    LabelSet::parse(items.iter().map(String::as_str), SOURCE_K8S)
        .with_context(|| format!("invalid labels in {what}"))
}

/// Loads the policies named by the configuration.
pub fn load_policies(cfg: &AgentConfig) -> anyhow::Result<PolicySet> {
    let paths: Vec<&PathBuf> = cfg.policy_paths.iter().collect();
    Ok(PolicySet::load_files(paths)?)
}

/// Builds a snapshot; fails without side effects when anything does not compile.
#[expect(
    clippy::too_many_lines,
    reason = "one pass over the configuration, in order"
)]
pub fn build(
    cfg: &AgentConfig,
    policies: &PolicySet,
    alloc: &mut Allocators,
) -> anyhow::Result<Snapshot> {
    let mut endpoints = Vec::new();
    let mut interfaces = BTreeSet::new();
    let mut missing = Vec::new();
    let mut meta = BTreeMap::new();
    let mut ifnames = BTreeMap::new();
    let mut by_ip = BTreeMap::new();
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        let labels = label_set(&ep.labels, &format!("endpoints[{i}] ({})", ep.name))?;
        let idx = ifindex(&ep.interface);
        if idx == 0 {
            missing.push(ep.interface.clone());
            continue;
        }
        // The endpoint id is the host-side ifindex: unique on the node and stable while the
        // interface exists.
        let mut e = Endpoint::new(
            idx,
            ep.name.clone(),
            ep.namespace.clone(),
            labels,
            ep.addresses.clone(),
        );
        e.audit = ep.audit;
        e.source_check = ep.source_check;
        if ep.source_check {
            for (family, is) in [
                ("IPv4", IpAddr::is_ipv4 as fn(&IpAddr) -> bool),
                ("IPv6", IpAddr::is_ipv6),
            ] {
                let n = ep.addresses.iter().filter(|a| is(a)).count();
                anyhow::ensure!(
                    n <= 1,
                    "endpoints[{i}] ({}): {n} {family} addresses, but the source-address check \
                     allows one per family; set `source_check: false` for a workload that sends \
                     from several",
                    ep.name
                );
            }
        }
        for (j, p) in ep.ports.iter().enumerate() {
            let what = || format!("endpoints[{i}] ({}).ports[{j}]", ep.name);
            PortName::new(&p.name).with_context(what)?;
            anyhow::ensure!(
                p.protocol != Protocol::Any,
                "{}: protocol must be TCP, UDP or SCTP",
                what()
            );
            e.named_ports.push(NamedPort {
                name: p.name.clone(),
                protocol: p.protocol,
                port: p.port,
            });
        }
        endpoints.push(e);
        interfaces.insert(ep.interface.clone());
        for a in &ep.addresses {
            by_ip.insert(*a, idx);
        }
        ifnames.insert(idx, ep.interface.clone());
        meta.insert(
            idx,
            crate::flow::EndpointMeta {
                name: ep.name.clone(),
                namespace: ep.namespace.clone(),
                interface: ep.interface.clone(),
                workloads: ep
                    .workloads
                    .iter()
                    .map(|w| (w.name.clone(), w.kind.clone()))
                    .collect(),
            },
        );
    }
    let mut peers: Vec<IpcachePeer> = cfg
        .host_addresses
        .iter()
        .map(|a| IpcachePeer {
            prefix: IpNet::from(*a),
            identity: PeerIdentity::Reserved(IDENTITY_HOST),
        })
        .collect();
    for (i, p) in cfg.peers.iter().enumerate() {
        let identity = if let Some(entity) = &p.entity {
            PeerIdentity::Reserved(
                reserved_entity(entity)
                    .with_context(|| format!("peers[{i}].entity: unknown entity `{entity}`"))?,
            )
        } else {
            PeerIdentity::Labels(label_set(&p.labels, &format!("peers[{i}]"))?)
        };
        peers.push(IpcachePeer {
            prefix: p.prefix,
            identity,
        });
    }
    let input = CompileInput {
        endpoints,
        peers,
        policies: policies.policies().to_vec(),
        global_audit: cfg.audit,
    };
    let labels_alloc: &mut dyn catalyst_policy::IdentityAllocator = match &mut alloc.cluster {
        Some(resolved) => resolved,
        None => &mut alloc.labels,
    };
    let stats = alloc
        .engine
        .update(&input, labels_alloc, &mut alloc.cidrs)?;
    let compiled = &alloc.engine;
    let mut desired = DesiredState::from_engine(
        compiled,
        if cfg.audit { CFG_F_AUDIT } else { 0 } | cfg.bpf_events.config_flags(),
        cfg.event_interval_ms.saturating_mul(1_000_000),
    );
    desired.ct_timeouts = cfg.conntrack_timeouts.datapath();
    let enrich = EnrichState {
        // As peer.Peer names the node: `<cluster>/<node>` unless the cluster is `default`.
        node: crate::observer::peer_name(&cfg.observer.cluster_name, &cfg.node),
        endpoints: meta,
        identities: compiled
            .identities()
            .iter()
            .map(|(id, l)| (*id, l.iter().map(|l| l.to_string()).collect()))
            .collect(),
        origins: compiled
            .origins()
            .iter()
            .map(|refs| {
                refs.iter()
                    .map(|r| PolicyRefOut {
                        name: r.name.clone(),
                        namespace: r.namespace.clone().unwrap_or_default(),
                        kind: r.kind.to_string(),
                    })
                    .collect()
            })
            .collect(),
        interfaces: ifnames,
        by_ip,
        cluster: cfg.observer.cluster_name.clone(),
        revision: 0,
    };
    Ok(Snapshot {
        desired,
        enrich,
        interfaces,
        missing,
        policies: policies.policies().len(),
        stats,
    })
}

/// A cheap fingerprint of the files a snapshot came from (paths, sizes, mtimes), to notice
/// changes by polling.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                entries.sort();
                for e in entries {
                    let md = std::fs::metadata(&e).ok();
                    out.push((
                        e,
                        md.as_ref().map_or(0, std::fs::Metadata::len),
                        md.and_then(|m| m.modified().ok()),
                    ));
                }
            }
        } else {
            let md = std::fs::metadata(p).ok();
            out.push((
                p.clone(),
                md.as_ref().map_or(0, std::fs::Metadata::len),
                md.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use catalyst_policy::datapath::EP_F_NO_SOURCE_CHECK;

    use super::*;

    fn config(endpoint: &str) -> AgentConfig {
        let text = format!("node: n1\nendpoints:\n  - {endpoint}\n");
        AgentConfig::parse(Path::new("agent.yaml"), &text).unwrap()
    }

    #[test]
    fn source_check_allows_one_address_per_family() {
        let cfg = config(
            "{name: router, interface: lo, addresses: [10.0.0.1, 10.0.0.2, \"fd00::1\"], labels: {app: r}}",
        );
        let err = build(&cfg, &PolicySet::new(), &mut Allocators::default())
            .err()
            .expect("two IPv4 addresses with the source check are rejected");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("endpoints[0] (router)") && msg.contains("2 IPv4 addresses"),
            "{msg}"
        );

        let cfg = config(
            "{name: router, interface: lo, addresses: [10.0.0.1, 10.0.0.2], labels: {app: r}, source_check: false}",
        );
        let mut alloc = Allocators::default();
        build(&cfg, &PolicySet::new(), &mut alloc).unwrap();
        let compiled = alloc.compiled();
        let (_, info) = compiled.endpoints()[0];
        assert_ne!(info.flags & EP_F_NO_SOURCE_CHECK, 0);
        assert_eq!(info.ipv4, u32::from_ne_bytes([10, 0, 0, 1]));
    }
}
