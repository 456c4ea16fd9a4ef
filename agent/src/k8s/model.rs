//! Kubernetes objects → the agent's inputs: local pods become endpoints (with the host-side
//! interface found through netlink), remote pods and nodes become ipcache peers, policy objects
//! go through the same manifest parser as policy files.
//!
//! Labels follow Cilium: a pod's identity is its labels (`k8s:` source), its namespace's labels as
//! `k8s:io.cilium.k8s.namespace.labels.<key>`, its service account as
//! `k8s:io.cilium.k8s.policy.serviceaccount`, plus the namespace labels every endpoint gets
//! ([`catalyst_policy::Endpoint::identity_labels`]).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use catalyst_policy::{Endpoint, Policy, PolicyKind, labels::NAMESPACE_LABELS_PREFIX};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::api::DynamicObject;
use serde_json::Value;

use crate::{
    config::{EndpointConfig, NamedPortConfig, PeerConfig},
    k8s::{
        netlink::{self, Resolution, RouteTable},
        shared::{self, PodEntry},
    },
};

/// Label carrying a pod's service account (Cilium's name for it).
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Pod annotation that puts one endpoint in audit mode (`"true"`).
pub const AUDIT_ANNOTATION: &str = "policy.catalyst.openova.io/audit";
/// Pod annotation that turns the source-address check off for a workload that routes traffic
/// of other addresses (`"false"`).
pub const SOURCE_CHECK_ANNOTATION: &str = "policy.catalyst.openova.io/source-check";

/// One kind of policy object the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicySource {
    /// Its kind.
    pub kind: PolicyKind,
    /// `apiVersion`.
    pub api_version: &'static str,
    /// Plural resource name (URL path segment).
    pub plural: &'static str,
    /// Namespaced (or cluster-scoped).
    pub namespaced: bool,
}

/// The custom policy kinds, discovered at start: Cilium's and Catalyst's own.
pub const CUSTOM_POLICY_SOURCES: [PolicySource; 4] = [
    PolicySource {
        kind: PolicyKind::CiliumNetworkPolicy,
        api_version: "cilium.io/v2",
        plural: "ciliumnetworkpolicies",
        namespaced: true,
    },
    PolicySource {
        kind: PolicyKind::CiliumClusterwideNetworkPolicy,
        api_version: "cilium.io/v2",
        plural: "ciliumclusterwidenetworkpolicies",
        namespaced: false,
    },
    PolicySource {
        kind: PolicyKind::CatalystNetworkPolicy,
        api_version: catalyst_policy::manifest::CATALYST_API_VERSION,
        plural: "catalystnetworkpolicies",
        namespaced: true,
    },
    PolicySource {
        kind: PolicyKind::CatalystClusterwideNetworkPolicy,
        api_version: catalyst_policy::manifest::CATALYST_API_VERSION,
        plural: "catalystclusterwidenetworkpolicies",
        namespaced: false,
    },
];

/// What the watchers hold at one moment.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    /// Pods on this node.
    pub local_pods: Vec<Arc<Pod>>,
    /// Pods on other nodes (empty when remote pods are not watched).
    pub remote_pods: Vec<Arc<Pod>>,
    /// Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Nodes (empty when nodes are not watched).
    pub nodes: Vec<Arc<Node>>,
    /// `NetworkPolicy` objects.
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    /// Custom policy objects by their source.
    pub custom_policies: Vec<(PolicySource, Vec<Arc<DynamicObject>>)>,
}

/// A policy object that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `Kind namespace/name`.
    pub object: String,
    /// The parser's message (field path and reason).
    pub error: String,
    /// Whether an earlier version of the object stays in force.
    pub previous_in_force: bool,
}

/// A local pod whose interface was not found (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// `namespace/name`.
    pub pod: String,
    /// Why.
    pub reason: String,
}

/// The inputs the agent compiles, derived from a [`ClusterView`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Local endpoints, with their host-side interface.
    pub endpoints: Vec<EndpointConfig>,
    /// Remote pods and node addresses.
    pub peers: Vec<PeerConfig>,
    /// Policies in force from the API.
    pub policies: Vec<Policy>,
    /// Policy objects rejected by the parser.
    pub rejected: Vec<Rejected>,
    /// Local pods whose interface is not known yet.
    pub unresolved: Vec<Unresolved>,
}

/// `namespace/name` of an object.
fn object_name(ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// Parsed policy objects, kept per object and version so unchanged objects are not parsed
/// again and a bad update keeps the last good version in force.
#[derive(Debug, Default)]
pub struct PolicyCache {
    entries: HashMap<(PolicyKind, Option<String>, String), CacheEntry>,
}

#[derive(Debug)]
struct CacheEntry {
    version: String,
    parsed: Result<Policy, String>,
    last_good: Option<Policy>,
}

impl PolicyCache {
    /// The policies in force for `objects` (kind, namespace, name, version, manifest JSON);
    /// objects that do not parse are reported (their previous version, if any, stays).
    fn update(&mut self, objects: Vec<PolicyObject<'_>>) -> (Vec<Policy>, Vec<Rejected>) {
        let mut seen = HashMap::new();
        let mut policies = Vec::new();
        let mut rejected = Vec::new();
        for (kind, ns, name, version, manifest) in objects {
            let key = (kind, ns.clone(), name.clone());
            let entry = self.entries.remove(&key);
            let entry = match entry {
                Some(e) if e.version == version && !version.is_empty() => e,
                previous => {
                    let source = format!("{kind} {}", object_name(ns.as_deref(), &name));
                    let parsed = parse_object(&source, &manifest());
                    let last_good = match (&parsed, previous) {
                        (Ok(p), _) => Some(p.clone()),
                        (Err(_), Some(prev)) => prev.last_good,
                        (Err(_), None) => None,
                    };
                    if let Err(error) = &parsed {
                        tracing::warn!(
                            policy = %source,
                            %error,
                            previous_in_force = last_good.is_some(),
                            "policy object rejected; other policies stay in force"
                        );
                    }
                    CacheEntry {
                        version,
                        parsed,
                        last_good,
                    }
                }
            };
            match (&entry.parsed, &entry.last_good) {
                (Ok(p), _) => policies.push(p.clone()),
                (Err(error), last_good) => {
                    rejected.push(Rejected {
                        object: format!("{kind} {}", object_name(ns.as_deref(), &name)),
                        error: error.clone(),
                        previous_in_force: last_good.is_some(),
                    });
                    if let Some(p) = last_good {
                        policies.push(p.clone());
                    }
                }
            }
            seen.insert(key, entry);
        }
        self.entries = seen;
        policies.sort_by(|a, b| a.reference.cmp(&b.reference));
        (policies, rejected)
    }
}

/// Runs one object through the policy-file parser, so semantics and messages are identical.
fn parse_object(source: &str, manifest: &Value) -> Result<Policy, String> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| e.to_string())?;
    let mut policies =
        catalyst_policy::parse_manifests(source, &text).map_err(|e| e.to_string())?;
    match (policies.pop(), policies.is_empty()) {
        (Some(p), true) => Ok(p),
        _ => Err(format!("{source}: expected exactly one policy object")),
    }
}

/// The manifest the parser sees: `apiVersion`, `kind`, `metadata.{name,namespace}` and the rest
/// of the object (`spec`, `specs`, …) as stored. Server-side metadata is left out.
fn manifest_of(
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
    mut body: serde_json::Map<String, Value>,
) -> Value {
    body.remove("apiVersion");
    body.remove("kind");
    body.remove("metadata");
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), Value::from(name));
    if let Some(ns) = ns {
        metadata.insert("namespace".into(), Value::from(ns));
    }
    body.insert("apiVersion".into(), Value::from(api_version));
    body.insert("kind".into(), Value::from(kind));
    body.insert("metadata".into(), Value::Object(metadata));
    Value::Object(body)
}

/// Kind, namespace, name, version and the manifest (built only when the version is new).
type PolicyObject<'a> = (
    PolicyKind,
    Option<String>,
    String,
    String,
    Box<dyn Fn() -> Value + 'a>,
);

fn policy_objects(view: &ClusterView) -> Vec<PolicyObject<'_>> {
    let mut out: Vec<PolicyObject<'_>> = Vec::new();
    for np in &view.network_policies {
        let name = np.metadata.name.clone().unwrap_or_default();
        let ns = np.metadata.namespace.clone();
        let version = np.metadata.resource_version.clone().unwrap_or_default();
        let manifest = move || {
            let body = match serde_json::to_value(np.as_ref()) {
                Ok(Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            manifest_of(
                "networking.k8s.io/v1",
                "NetworkPolicy",
                np.metadata.namespace.as_deref(),
                np.metadata.name.as_deref().unwrap_or_default(),
                body,
            )
        };
        out.push((
            PolicyKind::NetworkPolicy,
            ns,
            name,
            version,
            Box::new(manifest),
        ));
    }
    for (source, objects) in &view.custom_policies {
        for o in objects {
            let name = o.metadata.name.clone().unwrap_or_default();
            let ns = if source.namespaced {
                o.metadata.namespace.clone()
            } else {
                None
            };
            let version = o.metadata.resource_version.clone().unwrap_or_default();
            let manifest = move || {
                let body = match &o.data {
                    Value::Object(m) => m.clone(),
                    _ => serde_json::Map::new(),
                };
                manifest_of(
                    source.api_version,
                    source.kind.as_str(),
                    o.metadata
                        .namespace
                        .as_deref()
                        .filter(|_| source.namespaced),
                    o.metadata.name.as_deref().unwrap_or_default(),
                    body,
                )
            };
            out.push((source.kind, ns, name, version, Box::new(manifest)));
        }
    }
    out
}

/// Whether a pod takes part: it has an address of its own and is not finished.
fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    if spec.host_network == Some(true) {
        return Vec::new();
    }
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Pod label keys that never enter an identity, as in Cilium's default label filter: labels
/// Kubernetes sets per pod or per rollout (they would give every pod or every rollout its own
/// identity), and `io.cilium.k8s.*` / `io.kubernetes.*`, which the agent derives itself (a pod
/// must not claim its namespace's labels, its namespace or its service account).
const IGNORED_LABEL_PREFIXES: &[&str] = &[
    "io.cilium.k8s",
    "io.kubernetes",
    "kubernetes.io",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "k8s.io",
    "topology.kubernetes.io",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "controller-uid",
    "annotation",
    "etcd_node",
];

/// Whether a pod label key is part of the pod's identity.
fn identity_relevant(key: &str) -> bool {
    !IGNORED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p))
        && !key.contains("beta.kubernetes.io")
}

/// Labels of a pod's identity, without the namespace labels every endpoint gets.
fn pod_labels(pod: &Pod, ns_labels: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| identity_relevant(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    labels.insert(SERVICE_ACCOUNT_LABEL.to_owned(), sa);
    for (k, v) in ns_labels.into_iter().flatten() {
        labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
    }
    labels
}

fn named_ports(pod: &Pod) -> Vec<NamedPortConfig> {
    let mut out: Vec<NamedPortConfig> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => catalyst_policy::ports::Protocol::Udp,
                "SCTP" => catalyst_policy::ports::Protocol::Sctp,
                _ => catalyst_policy::ports::Protocol::Tcp,
            };
            Some(NamedPortConfig {
                name,
                protocol,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
    out.dedup();
    out
}

/// Host-side interfaces of local pods, cached by pod UID and address. A cached interface is
/// used while its name still has its index (a recreated sandbox gets a new one); that check is
/// one `if_nametoindex`, where a netlink link query costs about 30 times more.
#[derive(Debug, Default)]
pub struct InterfaceCache {
    by_pod: HashMap<(String, IpAddr), (u32, String)>,
}

impl InterfaceCache {
    fn resolve(&mut self, table: &dyn RouteTable, uid: &str, ip: IpAddr) -> Result<String, String> {
        let key = (uid.to_owned(), ip);
        if let Some((ifindex, name)) = self.by_pod.get(&key) {
            if table.index_of(name) == *ifindex {
                return Ok(name.clone());
            }
            self.by_pod.remove(&key);
        }
        match netlink::resolve(table, ip) {
            Ok(Resolution::Found { ifindex, name }) => {
                self.by_pod.insert(key, (ifindex, name.clone()));
                Ok(name)
            }
            Ok(Resolution::NotFound { reason }) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }

    fn retain(&mut self, live: &HashSet<String>) {
        self.by_pod.retain(|(uid, _), _| live.contains(uid));
    }
}

/// Peers of remote pods, cached by pod UID and the versions of the pod and its namespace (the
/// label work is most of a rebuild in a large cluster, and one event changes one pod).
#[derive(Debug, Default)]
pub struct PeerCache {
    by_pod: HashMap<String, (String, String, Vec<PeerConfig>)>,
}

/// The peers of one remote pod: its addresses with the identity labels a local endpoint with
/// the same labels would have.
fn remote_pod_peer(pod: &Pod, ns_labels: Option<&BTreeMap<String, String>>) -> Vec<PeerConfig> {
    let Some(labels) = peer_labels(pod, ns_labels) else {
        return Vec::new();
    };
    pod_addresses(pod)
        .into_iter()
        .map(|ip| PeerConfig {
            prefix: ip.into(),
            entity: None,
            labels: labels.clone(),
        })
        .collect()
}

/// The labels a pod has as a peer of other nodes (`source:key` → value): its identity labels,
/// namespace labels and service account included. `None` when they do not make a label set.
fn peer_labels(
    pod: &Pod,
    ns_labels: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let labels = pod_labels(pod, ns_labels);
    let set = crate::state::label_set(&labels, "remote pod").ok()?;
    let identity = Endpoint::new(0, "", namespace, set, Vec::new()).identity_labels();
    Some(
        identity
            .iter()
            .map(|l| (format!("{}:{}", l.source, l.key), l.value))
            .collect(),
    )
}

/// This node's pods as the shared ipcache carries them (key → entry): every pod with an address
/// of its own, whether or not its interface was found (other nodes need it either way).
#[must_use]
pub fn shared_entries(view: &ClusterView, node: &str) -> BTreeMap<String, PodEntry> {
    let ns_labels: HashMap<&str, &BTreeMap<String, String>> = view
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
        .collect();
    let mut out = BTreeMap::new();
    for pod in &view.local_pods {
        let ips = pod_addresses(pod);
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if ips.is_empty() {
            continue;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let Some(labels) = peer_labels(pod, ns_labels.get(namespace).copied()) else {
            continue;
        };
        out.insert(
            shared::pod_key(node, namespace, name),
            PodEntry {
                node: node.to_owned(),
                pod: format!("{namespace}/{name}"),
                ips,
                labels,
            },
        );
    }
    out
}

impl PeerCache {
    /// Peers of every remote pod, sorted by namespace and name.
    fn peers(&mut self, view: &ClusterView) -> Vec<PeerConfig> {
        let namespaces: HashMap<&str, &Namespace> = view
            .namespaces
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.as_ref())))
            .collect();
        let mut remote: Vec<&Arc<Pod>> = view.remote_pods.iter().collect();
        remote.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut seen = HashMap::with_capacity(remote.len());
        let mut peers = Vec::new();
        for pod in remote {
            let ns = namespaces
                .get(pod.metadata.namespace.as_deref().unwrap_or("default"))
                .copied();
            let version = pod.metadata.resource_version.clone().unwrap_or_default();
            let ns_version = ns
                .and_then(|n| n.metadata.resource_version.clone())
                .unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let cached = self.by_pod.remove(&uid).filter(|(v, nv, _)| {
                // Objects without versions (never from an API server) are not cached.
                !version.is_empty() && !nv.is_empty() && *v == version && *nv == ns_version
            });
            let entry = cached.unwrap_or_else(|| {
                let p = remote_pod_peer(pod, ns.and_then(|n| n.metadata.labels.as_ref()));
                (version, ns_version, p)
            });
            peers.extend(entry.2.iter().cloned());
            seen.insert(uid, entry);
        }
        self.by_pod = seen;
        peers
    }
}

/// Node addresses: `host` for this node, `remote-node` for the others.
fn node_peers(view: &ClusterView, node: &str) -> Vec<PeerConfig> {
    let mut peers = Vec::new();
    let mut nodes: Vec<&Arc<Node>> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for n in nodes {
        let entity = if n.metadata.name.as_deref() == Some(node) {
            "host"
        } else {
            "remote-node"
        };
        for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                continue;
            }
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                peers.push(PeerConfig {
                    prefix: ip.into(),
                    entity: Some(entity.to_owned()),
                    labels: BTreeMap::new(),
                });
            }
        }
    }
    peers
}

/// Long-lived state of the model: parsed policies and discovered interfaces.
#[derive(Debug, Default)]
pub struct Model {
    policies: PolicyCache,
    interfaces: InterfaceCache,
    peers: PeerCache,
}

impl Model {
    /// Derives the inputs from a view of the cluster. `node` names this node (its addresses get
    /// the `host` identity).
    pub fn build(&mut self, view: &ClusterView, node: &str, table: &dyn RouteTable) -> Inputs {
        let ns_labels: HashMap<&str, &BTreeMap<String, String>> = view
            .namespaces
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
            .collect();
        let mut inputs = Inputs::default();

        let mut local: Vec<&Arc<Pod>> = view.local_pods.iter().collect();
        local.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut live = HashSet::new();
        let mut used_interfaces = HashMap::new();
        for pod in local {
            let addresses = pod_addresses(pod);
            let (Some(name), Some(first)) = (pod.metadata.name.clone(), addresses.first()) else {
                continue;
            };
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            live.insert(uid.clone());
            let interface = match self.interfaces.resolve(table, &uid, *first) {
                Ok(i) => i,
                Err(reason) => {
                    inputs.unresolved.push(Unresolved {
                        pod: format!("{namespace}/{name}"),
                        reason,
                    });
                    continue;
                }
            };
            if let Some(other) =
                used_interfaces.insert(interface.clone(), format!("{namespace}/{name}"))
            {
                inputs.unresolved.push(Unresolved {
                    pod: format!("{namespace}/{name}"),
                    reason: format!("interface `{interface}` is already the endpoint of {other}"),
                });
                continue;
            }
            let audit = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(AUDIT_ANNOTATION))
                .is_some_and(|v| v == "true");
            let source_check = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_CHECK_ANNOTATION))
                .is_none_or(|v| v != "false");
            inputs.endpoints.push(EndpointConfig {
                labels: pod_labels(pod, ns_labels.get(namespace.as_str()).copied()),
                name,
                namespace,
                interface,
                addresses,
                audit,
                source_check,
                ports: named_ports(pod),
                workloads: owner_workloads(pod),
            });
        }
        self.interfaces.retain(&live);

        inputs.peers = self.peers.peers(view);
        inputs.peers.extend(node_peers(view, node));

        let (policies, rejected) = self.policies.update(policy_objects(view));
        inputs.policies = policies;
        inputs.rejected = rejected;
        inputs
    }
}

#[cfg(test)]
mod tests;

/// The workloads of a pod from its controller owner reference, as Cilium derives them: a
/// `ReplicaSet` named `<deployment>-<pod-template-hash>` stands for its `Deployment`.
pub(crate) fn owner_workloads(
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Vec<crate::config::WorkloadConfig> {
    let Some(owners) = pod.metadata.owner_references.as_ref() else {
        return Vec::new();
    };
    let Some(owner) = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
    else {
        return Vec::new();
    };
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    let deployment = (owner.kind == "ReplicaSet")
        .then(|| hash.and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-')))
        .flatten()
        .filter(|d| !d.is_empty());
    let (name, kind) = match deployment {
        Some(d) => (d.to_owned(), "Deployment".to_owned()),
        None => (owner.name.clone(), owner.kind.clone()),
    };
    vec![crate::config::WorkloadConfig { name, kind }]
}
