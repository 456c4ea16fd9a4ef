//! Incremental compilation. The [`Engine`] keeps what the previous compilation computed — the
//! identity universe, what every peer selector resolves to (a selector cache), each endpoint's
//! entries and which selectors they came from — and on an update recompiles only the endpoints
//! whose result can differ:
//! - endpoints that are new or whose definition (labels, addresses, audit, named ports) changed;
//! - endpoints selected by a policy that was added, removed or changed (old or new version);
//! - endpoints whose rules use a peer selector that now resolves to a different identity set
//!   (an identity appeared, disappeared or changed labels).
//!
//! Everything else keeps its entries — the very same `Arc` — so the agent's map diff skips
//! unchanged endpoints without looking at their entries. Rule ids (the origin lists of entries)
//! are interned with reference counts, so an unchanged entry keeps its rule id across updates.
//!
//! [`super::compile_with`] is a fresh engine's first update: one code path for both.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    Acc, CompileError, CompileInput, Compiled, Group, Identities, identities, l4_keys,
    shadow_allows, sorted_endpoints,
};
use crate::datapath::{
    ACTION_ALLOW, ACTION_DENY, EP_F_AUDIT, EP_F_EGRESS_ENFORCED, EP_F_EGRESS_NO_ANY_DENY,
    EP_F_INGRESS_ENFORCED, EP_F_INGRESS_NO_ANY_DENY, EP_F_NO_SOURCE_CHECK, EndpointInfo,
    IDENTITY_ANY, IpcacheEntry, POLICY_PREFIX_EXACT_BITS, PolicyEntry, PolicyKey,
};
use crate::endpoint::{Endpoint, all_named_ports};
use crate::identity::{CidrAllocator, IdentityAllocator};
use crate::labels::LabelSet;
use crate::ports::{L4Level, L4Match, NamedPorts};
use crate::rule::{
    Direction, MatchKind, PeerRule, PeerSelector, PeerView, Peers, Policy, PolicyRef, Rule,
};

/// One policy map entry: `(prefix length, key, value)`.
pub type PolicyRow = (u32, PolicyKey, PolicyEntry);

/// Every identity with what selectors see of it: labels, and the prefix of CIDR identities.
type Universe = BTreeMap<u32, (LabelSet, Option<IpNet>)>;

/// The incremental compiler. Feed it complete inputs with [`Engine::update`]; read the map
/// contents with the accessors.
#[derive(Debug, Default)]
pub struct Engine {
    universe: Universe,
    selectors: SelectorCache,
    policies: HashMap<PolicyRef, Vec<Policy>>,
    endpoints: BTreeMap<u32, EndpointState>,
    origins: Origins,
    ipcache_v4: Vec<(Ipv4Net, IpcacheEntry)>,
    ipcache_v6: Vec<(Ipv6Net, IpcacheEntry)>,
    global_audit: bool,
    /// Every endpoint's named ports (what egress names resolve through).
    egress_named: NamedPorts,
}

#[derive(Debug)]
struct EndpointState {
    input: Endpoint,
    info: EndpointInfo,
    entries: Arc<Vec<PolicyRow>>,
    /// Selector-cache slots this endpoint's entries came from (sorted, unique).
    selectors: Vec<u32>,
    /// The rules that select it: (policy, which policy of that name, rule index).
    matched: Vec<(PolicyRef, u16, u16)>,
    /// Whether an egress rule of it names ports (resolved through every endpoint's names).
    uses_egress_names: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dirty {
    /// Everything about the endpoint may differ.
    Full,
    /// Only entries for the identities that changed may differ.
    Identities,
}

/// One endpoint compiled from scratch.
struct EndpointCompiled {
    flags: u32,
    groups: BTreeMap<(u32, u8), Group>,
    selectors: Vec<u32>,
    matched: Vec<(PolicyRef, u16, u16)>,
    uses_egress_names: bool,
}

/// What one [`Engine::update`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Endpoints whose entries were recomputed from scratch.
    pub endpoints_recompiled: usize,
    /// Endpoints whose entries were recomputed for the changed identities only.
    pub endpoints_partially_recompiled: usize,
    /// Endpoints that went away.
    pub endpoints_removed: usize,
    /// Identities added, removed or relabelled.
    pub identities_changed: usize,
    /// Policies (by reference) added, removed or changed.
    pub policies_changed: usize,
    /// Peer selectors whose identity set changed.
    pub selectors_changed: usize,
}

impl Engine {
    /// An engine with nothing compiled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the compiled state to `input`. On error nothing changes (the previous state
    /// stays readable and in force).
    pub fn update(
        &mut self,
        input: &CompileInput,
        labels_alloc: &mut dyn IdentityAllocator,
        cidr_alloc: &mut CidrAllocator,
    ) -> Result<UpdateStats, CompileError> {
        let endpoints = sorted_endpoints(input)?;
        let Identities {
            ep_labels,
            ids,
            cluster,
            cidrs,
            universe,
        } = identities(input, &endpoints, labels_alloc, cidr_alloc)?;
        let mut stats = UpdateStats::default();

        // Identities whose presence or labels changed, and the selectors that see it.
        let changed_ids = changed_keys(&self.universe, &universe);
        stats.identities_changed = changed_ids.len();
        let changed_selectors = self.selectors.refresh(&changed_ids, &universe);
        stats.selectors_changed = changed_selectors.len();
        self.universe = universe;

        // Policies that changed, in both versions. (Taken out of `self` while the old versions
        // are borrowed; nothing below can fail, so it is always put back.)
        let mut old_policies = std::mem::take(&mut self.policies);
        let mut by_ref: HashMap<&PolicyRef, Vec<&Policy>> = HashMap::new();
        for p in &input.policies {
            by_ref.entry(&p.reference).or_default().push(p);
        }
        let (changed_refs, changed_rules) = changed_policies(&old_policies, &by_ref);
        stats.policies_changed = changed_refs.len();

        // Recompile what can differ.
        let live: HashSet<u32> = endpoints.iter().map(|e| e.id).collect();
        let mut released: Vec<Arc<Vec<PolicyRow>>> = Vec::new();
        let egress_named = all_named_ports(&input.endpoints);
        let names_changed = egress_named != self.egress_named;
        let versions = occurrences(&input.policies);
        let delta: BTreeSet<u32> = changed_ids.iter().copied().collect();
        for (ep, labels) in endpoints.iter().zip(&ep_labels) {
            let dirty = match self.endpoints.get(&ep.id) {
                None => Dirty::Full,
                Some(old)
                    if old.input != **ep
                        || old.info.identity != ids[labels]
                        || (names_changed && old.uses_egress_names)
                        || changed_rules.iter().any(|r| r.subject.matches(labels)) =>
                {
                    Dirty::Full
                }
                Some(old) if old.selectors.iter().any(|s| changed_selectors.contains(s)) => {
                    Dirty::Identities
                }
                Some(_) => continue,
            };
            if dirty == Dirty::Identities {
                // Same rules, same flags: only the groups of the changed identities differ.
                stats.endpoints_partially_recompiled += 1;
                released.extend(self.recompile_identities(
                    ep.id,
                    &old_policies,
                    &delta,
                    &egress_named,
                ));
                continue;
            }
            stats.endpoints_recompiled += 1;
            let compiled = compile_endpoint(
                ep,
                labels,
                (&input.policies, &versions),
                &mut self.selectors,
                &self.universe,
                &egress_named,
            );
            let entries = Arc::new(self.rows(ep.id, compiled.groups));
            let state = EndpointState {
                input: (*ep).clone(),
                info: endpoint_info(ep, ids[labels], compiled.flags),
                entries,
                selectors: compiled.selectors,
                matched: compiled.matched,
                uses_egress_names: compiled.uses_egress_names,
            };
            if let Some(old) = self.endpoints.insert(ep.id, state) {
                released.push(old.entries);
            }
        }
        stats.endpoints_removed = self.remove_gone(&live, released);

        drop(changed_rules);
        for r in changed_refs {
            match by_ref.get(&r) {
                Some(new) => {
                    old_policies.insert(r, new.iter().map(|p| (*p).clone()).collect());
                }
                None => {
                    old_policies.remove(&r);
                }
            }
        }
        self.policies = old_policies;

        self.set_ipcache(&cluster, &cidrs);
        self.global_audit = input.global_audit;
        self.egress_named = egress_named;
        Ok(stats)
    }

    /// Recomputes the entries of endpoint `id` for the identities in `delta` only; returns the
    /// rows it replaced (to release their rule ids).
    fn recompile_identities(
        &mut self,
        id: u32,
        policies: &HashMap<PolicyRef, Vec<Policy>>,
        delta: &BTreeSet<u32>,
        egress_named: &NamedPorts,
    ) -> Option<Arc<Vec<PolicyRow>>> {
        let old = self.endpoints.get(&id)?;
        let groups = identity_groups(
            old,
            policies,
            (&mut self.selectors, &self.universe),
            delta,
            egress_named,
        );
        let mut entries = self.rows(id, groups);
        let old = self.endpoints.get_mut(&id)?;
        entries.extend(
            old.entries
                .iter()
                .filter(|(_, k, _)| !delta.contains(&k.identity))
                .copied(),
        );
        entries.sort_by_key(|(len, k, _)| {
            (
                k.identity,
                k.direction,
                *len,
                k.protocol,
                u16::from_be(k.dport_be),
            )
        });
        let before = std::mem::replace(&mut old.entries, Arc::new(entries));
        Some(Arc::new(
            before
                .iter()
                .filter(|(_, k, _)| delta.contains(&k.identity))
                .copied()
                .collect(),
        ))
    }

    /// Removes the endpoints not in `live`, releases the rule ids of every replaced row (after
    /// the new rows acquired theirs, so an origin list in both keeps its id) and frees selector
    /// slots no endpoint uses. Returns how many endpoints went away.
    fn remove_gone(
        &mut self,
        live: &HashSet<u32>,
        mut released: Vec<Arc<Vec<PolicyRow>>>,
    ) -> usize {
        let gone: Vec<u32> = self
            .endpoints
            .keys()
            .copied()
            .filter(|id| !live.contains(id))
            .collect();
        for id in &gone {
            if let Some(old) = self.endpoints.remove(id) {
                released.push(old.entries);
            }
        }
        for rows in released {
            for (_, _, e) in rows.iter() {
                self.origins.release(e.rule_id);
            }
        }
        let used: HashSet<u32> = self
            .endpoints
            .values()
            .flat_map(|e| e.selectors.iter().copied())
            .collect();
        self.selectors.retain(&used);
        gone.len()
    }

    fn set_ipcache(&mut self, cluster: &BTreeMap<IpNet, u32>, cidrs: &BTreeMap<IpNet, u32>) {
        self.ipcache_v4.clear();
        self.ipcache_v6.clear();
        for (prefix, id) in cluster.iter().chain(cidrs) {
            let entry = IpcacheEntry {
                identity: *id,
                flags: 0,
            };
            match prefix {
                IpNet::V4(n) => self.ipcache_v4.push((*n, entry)),
                IpNet::V6(n) => self.ipcache_v6.push((*n, entry)),
            }
        }
        self.ipcache_v4.sort_by_key(|(n, _)| *n);
        self.ipcache_v6.sort_by_key(|(n, _)| *n);
    }

    /// Turns one endpoint's groups into map rows, interning their origin lists.
    fn rows(&mut self, endpoint_id: u32, groups: BTreeMap<(u32, u8), Group>) -> Vec<PolicyRow> {
        let mut out = Vec::new();
        for ((identity, direction), group) in groups {
            for ((len, protocol, port), acc) in shadow_allows(group) {
                let rule_id = self.origins.acquire(acc.origins.into_iter().collect());
                let key = PolicyKey {
                    endpoint_id,
                    identity,
                    direction,
                    protocol,
                    dport_be: port.to_be(),
                };
                let entry = PolicyEntry {
                    action: acc.action,
                    rule_id,
                    match_type: u32::from(acc.match_type),
                    pad: 0,
                };
                out.push((len, key, entry));
            }
        }
        out
    }

    /// Endpoint map entries `(endpoint_id, info)`, sorted by id.
    pub fn endpoints(&self) -> Vec<(u32, EndpointInfo)> {
        self.endpoints.iter().map(|(id, e)| (*id, e.info)).collect()
    }

    /// Policy entries per endpoint id. An endpoint whose entries did not change in an update
    /// keeps the same `Arc` (compare with [`Arc::ptr_eq`] to skip it).
    pub fn policy_by_endpoint(&self) -> BTreeMap<u32, Arc<Vec<PolicyRow>>> {
        self.endpoints
            .iter()
            .map(|(id, e)| (*id, Arc::clone(&e.entries)))
            .collect()
    }

    /// Number of policy entries.
    pub fn policy_len(&self) -> usize {
        self.endpoints.values().map(|e| e.entries.len()).sum()
    }

    /// IPv4 ipcache entries, sorted.
    pub fn ipcache_v4(&self) -> &[(Ipv4Net, IpcacheEntry)] {
        &self.ipcache_v4
    }

    /// IPv6 ipcache entries, sorted.
    pub fn ipcache_v6(&self) -> &[(Ipv6Net, IpcacheEntry)] {
        &self.ipcache_v6
    }

    /// Policies behind each `rule_id` (index 0 and free slots are empty).
    pub fn origins(&self) -> &[Vec<PolicyRef>] {
        &self.origins.lists
    }

    /// Labels of every identity (reserved, label-set and CIDR identities).
    pub fn identities(&self) -> BTreeMap<u32, LabelSet> {
        self.universe
            .iter()
            .map(|(id, (l, _))| (*id, l.clone()))
            .collect()
    }

    /// Whether global audit mode is on.
    pub fn global_audit(&self) -> bool {
        self.global_audit
    }

    /// The whole state as a [`Compiled`] (flattened, with lookup tables; for tests, tools and
    /// explanations — the agent reads the per-endpoint form).
    pub fn to_compiled(&self) -> Compiled {
        let mut out = Compiled {
            endpoints: self.endpoints(),
            ipcache_v4: self.ipcache_v4.clone(),
            ipcache_v6: self.ipcache_v6.clone(),
            policy: self
                .endpoints
                .values()
                .flat_map(|e| e.entries.iter().copied())
                .collect(),
            origins: self.origins.lists.clone(),
            identities: self.identities(),
            global_audit: self.global_audit,
            index: super::Index::default(),
        };
        out.build_index();
        out
    }
}

/// References of the policies added, removed or changed between `old` and `new`, and the rules
/// of both versions (an endpoint either version selects must be recompiled).
fn changed_policies<'a>(
    old: &'a HashMap<PolicyRef, Vec<Policy>>,
    new: &HashMap<&PolicyRef, Vec<&'a Policy>>,
) -> (Vec<PolicyRef>, Vec<&'a Rule>) {
    let mut refs = Vec::new();
    let mut rules: Vec<&'a Rule> = Vec::new();
    for (r, versions) in new {
        let before = old.get(*r);
        let same = before.is_some_and(|o| {
            o.len() == versions.len() && o.iter().zip(versions).all(|(a, b)| a == *b)
        });
        if !same {
            refs.push((*r).clone());
            rules.extend(versions.iter().flat_map(|p| &p.rules));
            rules.extend(before.into_iter().flatten().flat_map(|p| &p.rules));
        }
    }
    for (r, versions) in old {
        if !new.contains_key(r) {
            refs.push(r.clone());
            rules.extend(versions.iter().flat_map(|p| &p.rules));
        }
    }
    (refs, rules)
}

/// Keys present in only one of the maps or with different values.
fn changed_keys<V: PartialEq>(old: &BTreeMap<u32, V>, new: &BTreeMap<u32, V>) -> Vec<u32> {
    let mut out: Vec<u32> = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, _)| *k)
        .collect();
    out.extend(old.keys().filter(|k| !new.contains_key(k)));
    out
}

/// For each policy, which of the policies with its reference it is (0 for the first).
fn occurrences(policies: &[Policy]) -> Vec<u16> {
    let mut seen: HashMap<&PolicyRef, u16> = HashMap::new();
    policies
        .iter()
        .map(|p| {
            let n = seen.entry(&p.reference).or_default();
            *n += 1;
            *n - 1
        })
        .collect()
}

/// Compiles one endpoint: its enforcement flags, its policy groups by `(identity, direction)`,
/// the selector slots they used and the rules that select it.
fn compile_endpoint(
    ep: &Endpoint,
    labels: &LabelSet,
    (policies, versions): (&[Policy], &[u16]),
    selectors: &mut SelectorCache,
    universe: &Universe,
    egress_named: &NamedPorts,
) -> EndpointCompiled {
    let ingress_named = ep.named_port_map();
    let mut uses_egress_names = false;
    let mut flags = if ep.audit { EP_F_AUDIT } else { 0 };
    if !ep.source_check {
        flags |= EP_F_NO_SOURCE_CHECK;
    }
    let mut groups: BTreeMap<(u32, u8), Group> = BTreeMap::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut matched = Vec::new();
    for (policy, version) in policies.iter().zip(versions) {
        for (i, rule) in policy.rules.iter().enumerate() {
            if !rule.subject.matches(labels) {
                continue;
            }
            matched.push((policy.reference.clone(), *version, i as u16));
            for dir in Direction::ALL {
                if rule.enforces(dir) {
                    flags |= match dir {
                        Direction::Ingress => EP_F_INGRESS_ENFORCED,
                        Direction::Egress => EP_F_EGRESS_ENFORCED,
                    };
                }
                let named = match dir {
                    Direction::Ingress => &ingress_named,
                    Direction::Egress => egress_named,
                };
                for (action, c) in conditions(rule, dir) {
                    uses_egress_names |= dir == Direction::Egress && has_names(c);
                    let peers = peer_identities(c, selectors, universe, &mut used);
                    emit(
                        &mut groups,
                        (dir, action, &policy.reference),
                        c,
                        &peers,
                        named,
                    );
                }
            }
        }
    }
    // Skipping the wildcard lookup after an allowed identity is exact only without wildcard
    // denies in that direction (checked on the entries themselves, after named ports resolved).
    for dir in Direction::ALL {
        let any_deny = groups
            .get(&(IDENTITY_ANY, dir.datapath()))
            .is_some_and(|g| g.values().any(|acc| acc.action == ACTION_DENY));
        if !any_deny {
            flags |= match dir {
                Direction::Ingress => EP_F_INGRESS_NO_ANY_DENY,
                Direction::Egress => EP_F_EGRESS_NO_ANY_DENY,
            };
        }
    }
    EndpointCompiled {
        flags,
        groups,
        selectors: used.into_iter().collect(),
        matched,
        uses_egress_names,
    }
}

/// Whether a condition has named ports.
fn has_names(cond: &PeerRule) -> bool {
    cond.l4
        .iter()
        .flatten()
        .any(|m| matches!(m, L4Match::Named { .. }))
}

/// The deny and allow conditions of a rule for a direction, with their action.
fn conditions(rule: &Rule, dir: Direction) -> impl Iterator<Item = (u32, &PeerRule)> {
    let deny = rule.denies(dir).iter().map(|c| (ACTION_DENY, c));
    deny.chain(rule.allows(dir).iter().map(|c| (ACTION_ALLOW, c)))
}

/// The groups of the identities in `delta` for an endpoint selected by `matched`.
fn identity_groups(
    state: &EndpointState,
    policies: &HashMap<PolicyRef, Vec<Policy>>,
    (selectors, universe): (&mut SelectorCache, &Universe),
    delta: &BTreeSet<u32>,
    egress_named: &NamedPorts,
) -> BTreeMap<(u32, u8), Group> {
    let ingress_named = state.input.named_port_map();
    let mut groups: BTreeMap<(u32, u8), Group> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (reference, version, i) in &state.matched {
        let Some(rule) = policies
            .get(reference)
            .and_then(|v| v.get(usize::from(*version)))
            .and_then(|p| p.rules.get(usize::from(*i)))
        else {
            continue;
        };
        for dir in Direction::ALL {
            let named = match dir {
                Direction::Ingress => &ingress_named,
                Direction::Egress => egress_named,
            };
            for (action, c) in conditions(rule, dir) {
                let mut peers = peer_identities(c, selectors, universe, &mut used);
                peers.retain(|id| delta.contains(id));
                if !peers.is_empty() {
                    emit(&mut groups, (dir, action, reference), c, &peers, named);
                }
            }
        }
    }
    groups
}

/// The identities a condition's peers resolve to (through the selector cache).
fn peer_identities(
    cond: &PeerRule,
    selectors: &mut SelectorCache,
    universe: &Universe,
    used: &mut BTreeSet<u32>,
) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    match &cond.peers {
        Peers::Any => {
            out.insert(IDENTITY_ANY);
        }
        Peers::Selected(sels) => {
            for s in sels {
                if s.is_wildcard() {
                    out.insert(IDENTITY_ANY);
                    continue;
                }
                let (slot, ids) = selectors.resolve(s, universe);
                used.insert(slot);
                out.extend(ids.iter().copied());
            }
        }
    }
    out
}

/// Adds the entries of one allow/deny condition, for the identities its peers resolve to.
fn emit(
    groups: &mut BTreeMap<(u32, u8), Group>,
    (dir, action, origin): (Direction, u32, &PolicyRef),
    cond: &PeerRule,
    peers: &BTreeSet<u32>,
    named: &NamedPorts,
) {
    let resolved = cond.l4.as_deref().map(|l4| L4Match::resolve(l4, named));
    let keys = l4_keys(resolved.as_deref());
    for &id in peers {
        let group = groups.entry((id, dir.datapath())).or_default();
        for &(len, protocol, port) in &keys {
            let level = match len {
                POLICY_PREFIX_EXACT_BITS => L4Level::None,
                super::PROTO_PREFIX_BITS => L4Level::Protocol,
                _ => L4Level::Port,
            };
            let match_type = MatchKind {
                specific_peer: id != IDENTITY_ANY,
                level,
            }
            .match_type();
            let acc = group.entry((len, protocol, port)).or_insert_with(|| Acc {
                action,
                match_type,
                origins: BTreeSet::new(),
            });
            if action == ACTION_DENY && acc.action == ACTION_ALLOW {
                // Deny wins; the allow's origins did not decide.
                acc.action = ACTION_DENY;
                acc.origins.clear();
            }
            if action == acc.action {
                acc.origins.insert(origin.clone());
            }
        }
    }
}

/// Peer selector → the identities it selects, kept current as identities come and go.
#[derive(Debug, Default)]
struct SelectorCache {
    index: HashMap<PeerSelector, u32>,
    slots: Vec<Option<(PeerSelector, Vec<u32>)>>,
    free: Vec<u32>,
}

impl SelectorCache {
    /// The slot and identity set of `sel`, resolving it against `universe` on first use.
    fn resolve(&mut self, sel: &PeerSelector, universe: &Universe) -> (u32, &[u32]) {
        let slot = if let Some(&slot) = self.index.get(sel) {
            slot
        } else {
            let ids: Vec<u32> = universe
                .iter()
                .filter(|(_, (labels, cidr))| {
                    sel.matches(PeerView {
                        labels,
                        cidr: cidr.as_ref(),
                    })
                })
                .map(|(id, _)| *id)
                .collect();
            let slot = if let Some(slot) = self.free.pop() {
                self.slots[slot as usize] = Some((sel.clone(), ids));
                slot
            } else {
                self.slots.push(Some((sel.clone(), ids)));
                (self.slots.len() - 1) as u32
            };
            self.index.insert(sel.clone(), slot);
            slot
        };
        let ids = self.slots[slot as usize]
            .as_ref()
            .map_or(&[][..], |(_, ids)| ids.as_slice());
        (slot, ids)
    }

    /// Re-tests every cached selector against the identities in `changed` (as they are in
    /// `universe` now); returns the slots whose identity set changed.
    fn refresh(&mut self, changed: &[u32], universe: &Universe) -> HashSet<u32> {
        let mut out = HashSet::new();
        if changed.is_empty() {
            return out;
        }
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some((sel, ids)) = entry else { continue };
            for id in changed {
                let selected = universe.get(id).is_some_and(|(labels, cidr)| {
                    sel.matches(PeerView {
                        labels,
                        cidr: cidr.as_ref(),
                    })
                });
                match (ids.binary_search(id), selected) {
                    (Ok(i), false) => {
                        ids.remove(i);
                        out.insert(slot as u32);
                    }
                    (Err(i), true) => {
                        ids.insert(i, *id);
                        out.insert(slot as u32);
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Frees the slots no endpoint uses any more.
    fn retain(&mut self, used: &HashSet<u32>) {
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if entry.is_some() && !used.contains(&(slot as u32)) {
                if let Some((sel, _)) = entry.take() {
                    self.index.remove(&sel);
                }
                self.free.push(slot as u32);
            }
        }
    }
}

/// Interned origin lists (the policies behind a rule id), reference-counted by the entries
/// that carry them. Id 0 is "no origin" and never handed out.
#[derive(Debug)]
struct Origins {
    ids: HashMap<Vec<PolicyRef>, u32>,
    lists: Vec<Vec<PolicyRef>>,
    counts: Vec<usize>,
    free: Vec<u32>,
}

impl Default for Origins {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            lists: vec![Vec::new()],
            counts: vec![0],
            free: Vec::new(),
        }
    }
}

impl Origins {
    fn acquire(&mut self, refs: Vec<PolicyRef>) -> u32 {
        if let Some(&id) = self.ids.get(&refs) {
            self.counts[id as usize] += 1;
            return id;
        }
        let id = if let Some(id) = self.free.pop() {
            self.lists[id as usize].clone_from(&refs);
            self.counts[id as usize] = 1;
            id
        } else {
            self.lists.push(refs.clone());
            self.counts.push(1);
            (self.lists.len() - 1) as u32
        };
        self.ids.insert(refs, id);
        id
    }

    fn release(&mut self, id: u32) {
        let i = id as usize;
        if id == 0 || i >= self.counts.len() || self.counts[i] == 0 {
            return;
        }
        self.counts[i] -= 1;
        if self.counts[i] == 0 {
            let refs = std::mem::take(&mut self.lists[i]);
            self.ids.remove(&refs);
            self.free.push(id);
        }
    }
}

/// The endpoint map value of `ep`: its id, identity, flags and the addresses it may send from
/// (its first address of each family, in network byte order; zero when it has none).
fn endpoint_info(ep: &Endpoint, identity: u32, flags: u32) -> EndpointInfo {
    let mut info = EndpointInfo {
        endpoint_id: ep.id,
        identity,
        flags,
        ipv4: 0,
        ipv6: [0; 4],
    };
    if let Some(v4) = ep.addresses.iter().find_map(|a| match a {
        std::net::IpAddr::V4(v4) => Some(*v4),
        std::net::IpAddr::V6(_) => None,
    }) {
        info.ipv4 = u32::from_ne_bytes(v4.octets());
    }
    if let Some(v6) = ep.addresses.iter().find_map(|a| match a {
        std::net::IpAddr::V6(v6) => Some(*v6),
        std::net::IpAddr::V4(_) => None,
    }) {
        let o = v6.octets();
        for (i, w) in info.ipv6.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
    }
    info
}
