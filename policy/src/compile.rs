//! The compiler from policies, endpoints and peers to datapath map entries, and
//! [`Compiled::lookup`], a pure emulation of the eBPF program's policy decision on them.
//!
//! The compiler makes the datapath's two longest-prefix lookups (peer identity, then the
//! wildcard identity) equal the reference evaluator ([`crate::eval`]):
//! - selectors resolve to the identities they select; entity `all` and rules without peers
//!   become [`IDENTITY_ANY`] entries;
//! - `ANY` with ports expands to TCP, UDP and SCTP; port ranges become minimal port prefixes;
//!   ICMP types are exact 96-bit keys with the type as port;
//! - entries with the same key merge (deny wins; origins of the winning action are unioned);
//! - an allow entry inside a deny entry of the same endpoint, identity and direction is
//!   dropped, so the longest prefix returns the deny;
//! - CIDR prefixes inside an in-cluster prefix are left out of the ipcache (CIDR rules do not
//!   apply to in-cluster peers).
#![deny(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::datapath::{
    ACTION_ALLOW, ACTION_DENY, DROP_POLICY_DENIED, DROP_POLICY_DENY, EP_F_AUDIT,
    EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED, EndpointInfo, IDENTITY_ANY, IDENTITY_WORLD,
    IpcacheEntry, MATCH_NONE, POLICY_PREFIX_EXACT_BITS, POLICY_PREFIX_FULL_BITS, PROTO_ANY,
    PolicyEntry, PolicyKey, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
};
use crate::endpoint::{Endpoint, IpcachePeer};
use crate::eval::policy_cidrs;
use crate::identity::{
    CidrAllocator, IdentityAllocator, IdentityError, LocalAllocator, RESERVED, cidr_labels,
    reserved_labels,
};
use crate::labels::LabelSet;
use crate::ports::{L4Match, Protocol};
use crate::rule::{Direction, Policy, PolicyRef};

/// Bits of the protocol field: a key with a protocol and no port has this prefix length.
const PROTO_PREFIX_BITS: u32 = POLICY_PREFIX_EXACT_BITS + 8;

/// Errors of compilation. A policy set that does not compile is rejected as a whole.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// Two endpoints have the same id.
    #[error("endpoint id {id} is used by both `{first}` and `{second}`")]
    DuplicateEndpoint {
        /// The id.
        id: u32,
        /// First endpoint (`namespace/name`).
        first: String,
        /// Second endpoint.
        second: String,
    },
    /// An identity could not be allocated or is invalid.
    #[error("identity allocation failed for {what}")]
    Identity {
        /// What needed the identity.
        what: String,
        /// Why.
        #[source]
        source: IdentityError,
    },
}

/// Everything the compiler and the evaluator need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileInput {
    /// Local endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Extra ipcache entries (host addresses, remote endpoints and nodes).
    pub peers: Vec<IpcachePeer>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Global audit mode (`CFG_F_AUDIT`).
    pub global_audit: bool,
}

/// Compiled datapath state: the contents of the endpoint, ipcache and policy maps, plus the
/// tables the agent needs to explain verdicts. Every list is in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    endpoints: Vec<(u32, EndpointInfo)>,
    ipcache_v4: Vec<(Ipv4Net, IpcacheEntry)>,
    ipcache_v6: Vec<(Ipv6Net, IpcacheEntry)>,
    policy: Vec<(u32, PolicyKey, PolicyEntry)>,
    origins: Vec<Vec<PolicyRef>>,
    identities: BTreeMap<u32, LabelSet>,
    global_audit: bool,
    index: Index,
}

/// Lookup tables for [`Compiled::lookup`], built once from the emitted entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Index {
    endpoints: HashMap<u32, EndpointInfo>,
    v4: HashMap<Ipv4Net, u32>,
    v6: HashMap<Ipv6Net, u32>,
    policy: HashMap<(u32, [u8; 12]), PolicyEntry>,
    policy_lens: Vec<u32>,
}

/// Result of [`Compiled::lookup`]: what the eBPF program decides for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupResult {
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `DROP_*` (also for AUDIT: the would-be reason); 0 when forwarded.
    pub reason: u8,
    /// `MATCH_*` of the deciding entry.
    pub match_type: u8,
    /// Index into [`Compiled::origins`] of the deciding entry (0: none).
    pub rule_id: u32,
    /// Identity the peer address resolved to.
    pub peer_identity: u32,
}

impl Compiled {
    /// Endpoint map entries: `(endpoint_id, info)`, sorted by id. The agent keys the map by
    /// ifindex; `info.endpoint_id` links back.
    pub fn endpoints(&self) -> &[(u32, EndpointInfo)] {
        &self.endpoints
    }

    /// IPv4 ipcache entries, sorted.
    pub fn ipcache_v4(&self) -> &[(Ipv4Net, IpcacheEntry)] {
        &self.ipcache_v4
    }

    /// IPv6 ipcache entries, sorted.
    pub fn ipcache_v6(&self) -> &[(Ipv6Net, IpcacheEntry)] {
        &self.ipcache_v6
    }

    /// Policy map entries `(prefix_len, key, entry)`, sorted by key fields then prefix length.
    /// Keys have the bits beyond `prefix_len` cleared.
    pub fn policy(&self) -> &[(u32, PolicyKey, PolicyEntry)] {
        &self.policy
    }

    /// Policies behind each `rule_id`; index 0 is the empty origin.
    pub fn origins(&self) -> &[Vec<PolicyRef>] {
        &self.origins
    }

    /// The policies behind `rule_id` (empty for 0 or an unknown id).
    pub fn origin(&self, rule_id: u32) -> &[PolicyRef] {
        self.origins
            .get(rule_id as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// Labels of every identity the compiled state refers to (for flow enrichment).
    pub fn identities(&self) -> &BTreeMap<u32, LabelSet> {
        &self.identities
    }

    /// Whether global audit mode is on (the agent sets `CFG_F_AUDIT`).
    pub fn global_audit(&self) -> bool {
        self.global_audit
    }

    /// Emulates the eBPF policy decision for the first packet of a flow, exactly as the
    /// datapath does it on these entries:
    /// 1. the peer identity is the longest-prefix match of `peer` in the ipcache, else world;
    /// 2. without an endpoint entry the packet is not policed (forwarded);
    /// 3. `a` = LPM of `{endpoint, peer identity, direction, protocol, dport}`, `b` = the same
    ///    with [`IDENTITY_ANY`];
    /// 4. a deny in `a`, then in `b`, drops (181); an allow in `a`, then in `b`, forwards; an
    ///    enforced direction drops (133); otherwise forwards;
    /// 5. audit (endpoint or global) turns a drop into AUDIT with the same reason.
    pub fn lookup(
        &self,
        endpoint_id: u32,
        direction: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
    ) -> LookupResult {
        let peer_identity = self.ipcache_lookup(peer);
        let mut r = LookupResult {
            verdict: VERDICT_FORWARDED,
            reason: 0,
            match_type: MATCH_NONE,
            rule_id: 0,
            peer_identity,
        };
        let Some(info) = self.index.endpoints.get(&endpoint_id) else {
            return r;
        };
        let enforced_bit = match Direction::from_datapath(direction) {
            Some(Direction::Ingress) => EP_F_INGRESS_ENFORCED,
            Some(Direction::Egress) => EP_F_EGRESS_ENFORCED,
            None => 0,
        };
        let key = |identity| PolicyKey {
            endpoint_id,
            identity,
            direction,
            protocol,
            dport_be: dport.to_be(),
        };
        let a = self.policy_lookup(&key(peer_identity));
        let b = self.policy_lookup(&key(IDENTITY_ANY));
        let is = |e: Option<PolicyEntry>, action| e.filter(|e| e.action == action);
        let decided = is(a, ACTION_DENY)
            .or(is(b, ACTION_DENY))
            .or(is(a, ACTION_ALLOW))
            .or(is(b, ACTION_ALLOW));
        match decided {
            Some(e) => {
                r.rule_id = e.rule_id;
                r.match_type = e.match_type as u8;
                if e.action == ACTION_DENY {
                    r.verdict = VERDICT_DROPPED;
                    r.reason = DROP_POLICY_DENY;
                }
            }
            None if info.flags & enforced_bit != 0 => {
                r.verdict = VERDICT_DROPPED;
                r.reason = DROP_POLICY_DENIED;
            }
            None => {}
        }
        if r.verdict == VERDICT_DROPPED && (info.flags & EP_F_AUDIT != 0 || self.global_audit) {
            r.verdict = VERDICT_AUDIT;
        }
        r
    }

    /// Longest-prefix match of `addr` in the ipcache; [`IDENTITY_WORLD`] when nothing matches.
    pub fn ipcache_lookup(&self, addr: IpAddr) -> u32 {
        match addr {
            IpAddr::V4(a) => (0..=32u8)
                .rev()
                .find_map(|l| {
                    Ipv4Net::new(a, l)
                        .ok()
                        .and_then(|n| self.index.v4.get(&n.trunc()))
                })
                .copied(),
            IpAddr::V6(a) => (0..=128u8)
                .rev()
                .find_map(|l| {
                    Ipv6Net::new(a, l)
                        .ok()
                        .and_then(|n| self.index.v6.get(&n.trunc()))
                })
                .copied(),
        }
        .unwrap_or(IDENTITY_WORLD)
    }

    /// Longest-prefix match of `key` in the policy map (LPM trie semantics over the key bytes).
    pub fn policy_lookup(&self, key: &PolicyKey) -> Option<PolicyEntry> {
        let bytes = key_bytes(key);
        self.index
            .policy_lens
            .iter()
            .rev()
            .find_map(|&len| self.index.policy.get(&(len, mask(bytes, len))).copied())
    }

    fn build_index(&mut self) {
        let policy: HashMap<(u32, [u8; 12]), PolicyEntry> = self
            .policy
            .iter()
            .map(|(len, k, e)| ((*len, mask(key_bytes(k), *len)), *e))
            .collect();
        let lens: BTreeSet<u32> = self.policy.iter().map(|(len, _, _)| *len).collect();
        self.index = Index {
            endpoints: self.endpoints.iter().copied().collect(),
            v4: self
                .ipcache_v4
                .iter()
                .map(|(n, e)| (*n, e.identity))
                .collect(),
            v6: self
                .ipcache_v6
                .iter()
                .map(|(n, e)| (*n, e.identity))
                .collect(),
            policy,
            policy_lens: lens.into_iter().collect(),
        };
    }
}

/// The bytes of a policy key as the LPM trie sees them (in memory order).
fn key_bytes(k: &PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&k.endpoint_id.to_ne_bytes());
    b[4..8].copy_from_slice(&k.identity.to_ne_bytes());
    b[8] = k.direction;
    b[9] = k.protocol;
    b[10..12].copy_from_slice(&k.dport_be.to_ne_bytes());
    b
}

/// Keeps the first `len` bits (MSB first within each byte).
fn mask(mut b: [u8; 12], len: u32) -> [u8; 12] {
    for (i, byte) in b.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if len <= start {
            *byte = 0;
        } else if len < start + 8 {
            *byte &= 0xffu8 << (start + 8 - len);
        }
    }
    b
}

/// Compiles with a fresh [`LocalAllocator`] and [`CidrAllocator`] (deterministic numbering).
pub fn compile(input: &CompileInput) -> Result<Compiled, CompileError> {
    compile_with(input, &mut LocalAllocator::new(), &mut CidrAllocator::new())
}

/// Per-group policy entry being built: `(prefix_len, protocol, port value)` within one
/// `(endpoint, identity, direction)`.
type Group = BTreeMap<(u32, u8, u16), Acc>;

#[derive(Debug, Clone)]
struct Acc {
    action: u32,
    match_type: u8,
    origins: BTreeSet<PolicyRef>,
}

/// Identities of everything a peer address can resolve to.
struct Identities {
    /// Identity labels of the endpoints, in the sorted endpoint order.
    ep_labels: Vec<LabelSet>,
    /// Identity of every endpoint and peer label set.
    ids: BTreeMap<LabelSet, u32>,
    /// In-cluster prefixes and their identity.
    cluster: BTreeMap<IpNet, u32>,
    /// Policy CIDRs outside every in-cluster prefix and their identity.
    cidrs: BTreeMap<IpNet, u32>,
    /// Every identity (reserved ones included) with what selectors see of it.
    universe: BTreeMap<u32, (LabelSet, Option<IpNet>)>,
}

fn sorted_endpoints(input: &CompileInput) -> Result<Vec<&Endpoint>, CompileError> {
    let mut endpoints: Vec<&Endpoint> = input.endpoints.iter().collect();
    endpoints.sort_by_key(|e| e.id);
    for w in endpoints.windows(2) {
        if w[0].id == w[1].id {
            return Err(CompileError::DuplicateEndpoint {
                id: w[0].id,
                first: format!("{}/{}", w[0].namespace, w[0].name),
                second: format!("{}/{}", w[1].namespace, w[1].name),
            });
        }
    }
    Ok(endpoints)
}

fn identities(
    input: &CompileInput,
    endpoints: &[&Endpoint],
    labels_alloc: &mut dyn IdentityAllocator,
    cidr_alloc: &mut CidrAllocator,
) -> Result<Identities, CompileError> {
    // New label sets are allocated in sorted order, so numbering is deterministic.
    let ep_labels: Vec<LabelSet> = endpoints.iter().map(|e| e.identity_labels()).collect();
    let mut peer_labels = Vec::new();
    for p in &input.peers {
        let l = p.labels().map_err(|source| CompileError::Identity {
            what: format!("ipcache peer {}", p.prefix),
            source,
        })?;
        peer_labels.push(l);
    }
    let mut ids: BTreeMap<LabelSet, u32> = BTreeMap::new();
    for l in ep_labels
        .iter()
        .chain(&peer_labels)
        .collect::<BTreeSet<_>>()
    {
        let id = labels_alloc
            .allocate(l)
            .map_err(|source| CompileError::Identity {
                what: format!("labels {l}"),
                source,
            })?;
        ids.insert(l.clone(), id);
    }

    // In-cluster prefixes: the first claim of a prefix wins (endpoints by id, then peers).
    let mut cluster: BTreeMap<IpNet, u32> = BTreeMap::new();
    for (ep, l) in endpoints.iter().zip(&ep_labels) {
        for a in &ep.addresses {
            cluster.entry(IpNet::from(*a)).or_insert(ids[l]);
        }
    }
    for (p, l) in input.peers.iter().zip(&peer_labels) {
        cluster.entry(p.prefix.trunc()).or_insert(ids[l]);
    }
    // CIDR identities for policy prefixes outside every in-cluster prefix.
    let mut cidrs: BTreeMap<IpNet, u32> = BTreeMap::new();
    for c in policy_cidrs(&input.policies) {
        if cluster.keys().any(|k| k.contains(&c)) {
            continue;
        }
        let id = cidr_alloc
            .allocate(c)
            .map_err(|source| CompileError::Identity {
                what: format!("CIDR {c}"),
                source,
            })?;
        cidrs.insert(c, id);
    }

    let mut universe: BTreeMap<u32, (LabelSet, Option<IpNet>)> = BTreeMap::new();
    for (id, _) in RESERVED {
        universe.insert(id, (reserved_labels(id).unwrap_or_default(), None));
    }
    for (l, id) in &ids {
        universe.insert(*id, (l.clone(), None));
    }
    for (c, id) in &cidrs {
        universe.insert(*id, (cidr_labels(c), Some(*c)));
    }
    Ok(Identities {
        ep_labels,
        ids,
        cluster,
        cidrs,
        universe,
    })
}

/// Compiles with long-lived allocators, so identities stay stable across recompilations.
/// (A fresh [`Engine`]'s first update; keep an [`Engine`] to recompile incrementally.)
pub fn compile_with(
    input: &CompileInput,
    labels_alloc: &mut dyn IdentityAllocator,
    cidr_alloc: &mut CidrAllocator,
) -> Result<Compiled, CompileError> {
    let mut engine = Engine::new();
    engine.update(input, labels_alloc, cidr_alloc)?;
    Ok(engine.to_compiled())
}

/// `(prefix_len, protocol, port value)` keys of an L4 condition.
fn l4_keys(l4: Option<&[L4Match]>) -> BTreeSet<(u32, u8, u16)> {
    let mut out = BTreeSet::new();
    let Some(l4) = l4 else {
        out.insert((POLICY_PREFIX_EXACT_BITS, PROTO_ANY, 0));
        return out;
    };
    for m in l4 {
        match *m {
            L4Match::Port {
                protocol: Protocol::Any,
                ports: None,
            } => {
                out.insert((POLICY_PREFIX_EXACT_BITS, PROTO_ANY, 0));
            }
            L4Match::Port { protocol, ports } => {
                for &p in protocol.numbers() {
                    match ports {
                        None => {
                            out.insert((PROTO_PREFIX_BITS, p, 0));
                        }
                        Some(r) => {
                            for (value, len) in r.prefixes() {
                                out.insert((PROTO_PREFIX_BITS + u32::from(len), p, value));
                            }
                        }
                    }
                }
            }
            // Named ports are resolved before compilation; one left here names nothing.
            L4Match::Named { .. } => {}
            L4Match::Icmp { family, icmp_type } => {
                out.insert((
                    POLICY_PREFIX_FULL_BITS,
                    family.protocol(),
                    u16::from(icmp_type),
                ));
            }
        }
    }
    out
}

/// Drops allow entries that lie inside a deny entry of the same group: the longest-prefix
/// match would otherwise return the allow where the evaluator says deny.
fn shadow_allows(group: Group) -> Vec<((u32, u8, u16), Acc)> {
    let denies: Vec<(u32, u8, u16)> = group
        .iter()
        .filter(|(_, a)| a.action == ACTION_DENY)
        .map(|(k, _)| *k)
        .collect();
    let covered = |&(len, proto, port): &(u32, u8, u16)| {
        denies.iter().any(|&(dlen, dproto, dport)| {
            dlen < len
                && (dlen == POLICY_PREFIX_EXACT_BITS
                    || (dproto == proto && {
                        let bits = dlen - PROTO_PREFIX_BITS;
                        let m = if bits == 0 {
                            0
                        } else {
                            u16::MAX << (16 - bits)
                        };
                        port & m == dport & m
                    }))
        })
    };
    group
        .into_iter()
        .filter(|(k, a)| a.action == ACTION_DENY || !covered(k))
        .collect()
}

mod engine;
pub use self::engine::{Engine, PolicyRow, UpdateStats};

#[cfg(test)]
mod tests;
