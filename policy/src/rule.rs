//! The normalised policy model every source format is converted to: policies made of rules,
//! rules made of peer/port conditions per direction.
//!
//! Namespace scoping is already applied here: a namespaced policy's subject selector requires
//! the namespace label, and so do its peer endpoint selectors unless they name the namespace or
//! a reserved label.
#![deny(unsafe_code)]

use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;

use crate::labels::{LabelSet, SOURCE_RESERVED};
use crate::ports::{L4Level, L4Match, NamedPorts};
use crate::selector::EndpointSelector;

/// The kind of object a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `cilium.io/v2` `CiliumNetworkPolicy` (namespaced).
    CiliumNetworkPolicy,
    /// `cilium.io/v2` `CiliumClusterwideNetworkPolicy`.
    CiliumClusterwideNetworkPolicy,
    /// `networking.k8s.io/v1` `NetworkPolicy` (namespaced).
    NetworkPolicy,
}

impl PolicyKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The revision-independent identity of a policy: kind, namespace and name. Flows and map
/// entries point back to policies with it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// Kind of the object.
    pub kind: PolicyKind,
    /// Namespace; `None` for cluster-wide policies.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A parsed policy object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Identity of the policy.
    pub reference: PolicyRef,
    /// Where it was read from (`file`, document number), for messages.
    pub origin: String,
    /// Its rules (`spec` and `specs` of Cilium policies; one rule for NetworkPolicy).
    pub rules: Vec<Rule>,
}

/// `enableDefaultDeny`: whether a rule switches a direction to default deny. `None` means
/// "when the rule has rules for that direction".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// Ingress.
    #[serde(default)]
    pub ingress: Option<bool>,
    /// Egress.
    #[serde(default)]
    pub egress: Option<bool>,
}

/// Traffic direction from the endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the endpoint.
    Ingress,
    /// From the endpoint.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Self; 2] = [Self::Ingress, Self::Egress];

    /// The datapath `DIR_*` value.
    pub fn datapath(self) -> u8 {
        match self {
            Self::Ingress => crate::datapath::DIR_INGRESS,
            Self::Egress => crate::datapath::DIR_EGRESS,
        }
    }

    /// From a datapath `DIR_*` value.
    pub fn from_datapath(dir: u8) -> Option<Self> {
        match dir {
            crate::datapath::DIR_INGRESS => Some(Self::Ingress),
            crate::datapath::DIR_EGRESS => Some(Self::Egress),
            _ => None,
        }
    }
}

/// One rule: a subject selector and allow/deny conditions per direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Endpoints the rule applies to (namespace requirement included for namespaced policies).
    pub subject: EndpointSelector,
    /// Ingress allow conditions.
    pub ingress: Vec<PeerRule>,
    /// Ingress deny conditions.
    pub ingress_deny: Vec<PeerRule>,
    /// Egress allow conditions.
    pub egress: Vec<PeerRule>,
    /// Egress deny conditions.
    pub egress_deny: Vec<PeerRule>,
    /// `enableDefaultDeny`.
    pub default_deny: DefaultDeny,
}

impl Rule {
    /// Allow conditions of a direction.
    pub fn allows(&self, dir: Direction) -> &[PeerRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Deny conditions of a direction.
    pub fn denies(&self, dir: Direction) -> &[PeerRule] {
        match dir {
            Direction::Ingress => &self.ingress_deny,
            Direction::Egress => &self.egress_deny,
        }
    }

    /// Whether the rule puts the selected endpoints in default-deny mode for `dir`: explicitly
    /// through `enableDefaultDeny`, otherwise when it has allow or deny rules for `dir`.
    pub fn enforces(&self, dir: Direction) -> bool {
        let explicit = match dir {
            Direction::Ingress => self.default_deny.ingress,
            Direction::Egress => self.default_deny.egress,
        };
        explicit.unwrap_or(!self.allows(dir).is_empty() || !self.denies(dir).is_empty())
    }
}

/// One element of `ingress`/`egress`/`ingressDeny`/`egressDeny`: a packet matches when its
/// peer matches `peers` and its protocol/port matches `l4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    /// Peer condition.
    pub peers: Peers,
    /// L4 condition: `None` for every protocol and port, otherwise any of the matches.
    pub l4: Option<Vec<L4Match>>,
}

/// Peer condition of a [`PeerRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Every peer (a rule with ports only, or a NetworkPolicy rule without `from`/`to`).
    Any,
    /// Peers matching one of the selectors (none: the rule matches nothing, as `ingress: [{}]`).
    Selected(Vec<PeerSelector>),
}

/// One peer selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerSelector {
    /// Identities whose labels match (endpoints, remote endpoints, reserved identities).
    Endpoints(EndpointSelector),
    /// CIDR identities whose prefix lies inside `cidr` and inside none of `except`.
    Cidr(CidrSet),
    /// An entity.
    Entity(Entity),
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrSet {
    /// The prefix (host bits cleared).
    pub cidr: IpNet,
    /// Sub-prefixes carved out.
    pub except: Vec<IpNet>,
}

impl CidrSet {
    /// Whether the CIDR identity of `prefix` is selected.
    pub fn selects(&self, prefix: &IpNet) -> bool {
        self.cidr.contains(prefix) && !self.except.iter().any(|e| e.contains(prefix))
    }
}

/// Cilium entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything outside the cluster (world identities and CIDR identities).
    World,
    /// Everything inside the cluster (every non-world identity, host and remote nodes included).
    Cluster,
    /// The local host.
    Host,
    /// Other nodes.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// Every peer.
    All,
    /// Health endpoints.
    Health,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// Endpoints not managed by Catalyst.
    Unmanaged,
    /// The ingress proxy.
    Ingress,
}

impl Entity {
    /// Whether an identity with `labels` belongs to the entity.
    pub fn matches(self, labels: &LabelSet) -> bool {
        let reserved = |k: &str| labels.get(SOURCE_RESERVED, k).is_some();
        let world = || reserved("world") || reserved("world-ipv4") || reserved("world-ipv6");
        match self {
            Self::All => true,
            Self::World => world(),
            Self::Cluster => !world(),
            Self::Host => reserved("host"),
            Self::RemoteNode => reserved("remote-node"),
            Self::KubeApiserver => reserved("kube-apiserver"),
            Self::Health => reserved("health"),
            Self::Init => reserved("init"),
            Self::Unmanaged => reserved("unmanaged"),
            Self::Ingress => reserved("ingress"),
        }
    }
}

/// What a peer selector is matched against: an identity's labels, and its prefix when it is a
/// CIDR identity.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    /// Labels of the peer's identity.
    pub labels: &'a LabelSet,
    /// The policy CIDR of a CIDR identity; `None` for in-cluster and world identities.
    pub cidr: Option<&'a IpNet>,
}

impl PeerSelector {
    /// Whether the selector matches every peer (it compiles to the wildcard identity).
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Entity(Entity::All))
            || matches!(self, Self::Endpoints(s) if s.is_wildcard())
    }

    /// Whether the selector matches `peer`.
    pub fn matches(&self, peer: PeerView<'_>) -> bool {
        match self {
            Self::Endpoints(s) => s.matches(peer.labels),
            Self::Cidr(set) => peer.cidr.is_some_and(|p| set.selects(p)),
            Self::Entity(e) => e.matches(peer.labels),
        }
    }
}

/// How a condition matched a packet: whether through a wildcard peer and how specific its L4
/// part is. The datapath prefers specific peers, then longer L4 prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MatchKind {
    /// The peer matched through a specific identity (not the wildcard).
    pub specific_peer: bool,
    /// Specificity of the L4 match.
    pub level: L4Level,
}

impl MatchKind {
    /// The datapath `MATCH_*` type.
    pub fn match_type(self) -> u8 {
        use crate::datapath::{
            MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L3_PROTO, MATCH_L4_ONLY, MATCH_PROTO_ONLY,
        };
        match (self.specific_peer, self.level) {
            (true, L4Level::None) => MATCH_L3_ONLY,
            (true, L4Level::Protocol) => MATCH_L3_PROTO,
            (true, L4Level::Port) => MATCH_L3_L4,
            (false, L4Level::None) => MATCH_ALL,
            (false, L4Level::Protocol) => MATCH_PROTO_ONLY,
            (false, L4Level::Port) => MATCH_L4_ONLY,
        }
    }
}

impl PeerRule {
    /// The ways this condition matches a packet from/to `peer` with `protocol`/`dport`: one
    /// [`MatchKind`] per (peer selector, L4 match) pair that matches; empty when it does not.
    /// Named ports resolve through `named` (the ports in scope for the rule's direction).
    pub fn match_kinds(
        &self,
        peer: PeerView<'_>,
        protocol: u8,
        dport: u16,
        named: &NamedPorts,
    ) -> Vec<MatchKind> {
        let peer_kinds: Vec<bool> = match &self.peers {
            Peers::Any => vec![false],
            Peers::Selected(sels) => sels
                .iter()
                .filter(|s| s.matches(peer))
                .map(|s| !s.is_wildcard())
                .collect(),
        };
        if peer_kinds.is_empty() {
            return Vec::new();
        }
        let levels: Vec<L4Level> = match &self.l4 {
            None => vec![L4Level::None],
            Some(l4) => L4Match::resolve(l4, named)
                .iter()
                .filter(|m| m.matches(protocol, dport))
                .map(L4Match::level)
                .collect(),
        };
        let mut out = Vec::new();
        for &specific_peer in &peer_kinds {
            for &level in &levels {
                out.push(MatchKind {
                    specific_peer,
                    level,
                });
            }
        }
        out
    }
}
