//! Local endpoints (workloads on this node) and extra ipcache peers (host addresses, remote
//! endpoints, remote nodes).
#![deny(unsafe_code)]

use std::net::IpAddr;

use ipnet::IpNet;

use crate::identity::{IdentityError, reserved_labels};
use crate::labels::{
    Label, LabelSet, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, NAMESPACE_NAME_LABEL, SOURCE_K8S,
};
use crate::ports::NamedPorts;

/// A local workload endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Agent-assigned endpoint id (the first field of every policy key of the endpoint).
    pub id: u32,
    /// Pod (or workload) name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Workload labels (default source `k8s`). The namespace label is added by
    /// [`Endpoint::identity_labels`]; namespace labels (for `namespaceSelector`) may be given as
    /// `k8s:io.cilium.k8s.namespace.labels.<key>`.
    pub labels: LabelSet,
    /// Addresses of the endpoint.
    pub addresses: Vec<IpAddr>,
    /// Audit mode for this endpoint: would-be drops are forwarded and reported as AUDIT.
    pub audit: bool,
    /// Source-address check: packets the workload sends from an address other than its own
    /// (its first address of each family) are dropped as `DROP_INVALID_SOURCE_IP` (132).
    /// `false` for workloads that route or forward traffic of other addresses.
    pub source_check: bool,
    /// Ports the workload names (Kubernetes `containerPort` names): `toPorts` entries whose
    /// `port` is a name resolve through them.
    pub named_ports: Vec<NamedPort>,
}

/// A named port a workload declares (`containers[].ports[]` in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// The name (an `IANA_SVC_NAME`: lowercase, at most 15 characters).
    pub name: String,
    /// Protocol (TCP, UDP or SCTP).
    pub protocol: crate::ports::Protocol,
    /// Port number.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint without audit mode, with the source-address check.
    pub fn new(
        id: u32,
        name: impl Into<String>,
        namespace: impl Into<String>,
        labels: LabelSet,
        addresses: Vec<IpAddr>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            namespace: namespace.into(),
            labels,
            addresses,
            audit: false,
            source_check: true,
            named_ports: Vec::new(),
        }
    }

    /// Its named ports as a lookup table.
    pub fn named_port_map(&self) -> NamedPorts {
        let mut out = NamedPorts::new();
        for p in &self.named_ports {
            out.entry(p.name.clone())
                .or_default()
                .insert((p.protocol, p.port));
        }
        out
    }

    /// The labels its identity is derived from: its labels plus
    /// `k8s:io.kubernetes.pod.namespace=<namespace>` and the namespace-name label
    /// `k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=<namespace>`.
    pub fn identity_labels(&self) -> LabelSet {
        let mut l = self.labels.clone();
        l.insert(Label::k8s(NAMESPACE_LABEL, self.namespace.clone()));
        l.insert(Label::new(
            SOURCE_K8S,
            format!("{NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}"),
            self.namespace.clone(),
        ));
        l
    }
}

/// The named ports of all `endpoints` together: what egress rules with named ports resolve
/// through (the destination is a peer, whose own declaration the subject does not know; Cilium
/// likewise resolves egress names against every named port it knows).
pub fn all_named_ports(endpoints: &[Endpoint]) -> NamedPorts {
    let mut out = NamedPorts::new();
    for e in endpoints {
        for p in &e.named_ports {
            out.entry(p.name.clone())
                .or_default()
                .insert((p.protocol, p.port));
        }
    }
    out
}

/// Identity of an extra ipcache peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A reserved identity (1 host, 6 remote-node, 7 kube-apiserver, …).
    Reserved(u32),
    /// A label set (a remote endpoint); allocated like local endpoints.
    Labels(LabelSet),
}

/// An extra ipcache entry: addresses that are not local endpoints but belong to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcachePeer {
    /// The prefix (host bits are ignored).
    pub prefix: IpNet,
    /// Its identity.
    pub identity: PeerIdentity,
}

impl IpcachePeer {
    /// The labels of the peer's identity.
    pub fn labels(&self) -> Result<LabelSet, IdentityError> {
        match &self.identity {
            PeerIdentity::Reserved(id) => reserved_labels(*id),
            PeerIdentity::Labels(l) => Ok(l.clone()),
        }
    }
}
