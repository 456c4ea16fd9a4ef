//! Authoritative lookup in one zone, LUA records evaluated on the way.

use std::{cell::Cell, net::IpAddr, sync::Arc};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use ipnet::IpNet;
use tracing::debug;

use super::{LuaRecord, Node, Zone, parse_lua_content};
use crate::lua::{Deps, Draws, EvalContext};

/// Longest CNAME chain followed inside a zone.
const MAX_CNAME_HOPS: usize = 12;

/// Who asked, and how.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    /// Source address of the query.
    pub who: IpAddr,
    /// ECS subnet (address masked to the source prefix), when present and processed.
    pub ecs: Option<IpNet>,
    /// Local address the query arrived on.
    pub local: IpAddr,
    /// TCP transport.
    pub tcp: bool,
    /// DO bit.
    pub dnssec_ok: bool,
    /// Outcome imposed on the answer's first uniform random pick (the answer cache filling one
    /// of its slots); `None` for a random pick.
    pub forced_pick: Option<u16>,
}

impl ClientInfo {
    /// The address geo and hashing use: the ECS network when present, else the source.
    pub fn bestwho(&self) -> IpAddr {
        self.ecs.map_or(self.who, |n| n.network())
    }
}

/// Kind of answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Data (possibly after a CNAME chain).
    Data,
    /// Name exists, no data of the type.
    NoData,
    /// Name does not exist.
    NxDomain,
    /// Referral to a child zone.
    Referral,
    /// A LUA record failed.
    ServFail,
}

/// An answer, before it becomes a message.
#[derive(Debug)]
pub struct Answer {
    /// What kind.
    pub outcome: Outcome,
    /// Authoritative answer flag.
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// Additional section.
    pub additional: Vec<Record>,
    /// What LUA evaluation depended on.
    pub deps: Deps,
    /// A LUA record ran.
    pub dynamic: bool,
    /// Random draws of the LUA records that ran.
    pub draws: Draws,
}

impl Answer {
    /// Response code.
    pub fn rcode(&self) -> ResponseCode {
        match self.outcome {
            Outcome::NxDomain => ResponseCode::NXDomain,
            Outcome::ServFail => ResponseCode::ServFail,
            _ => ResponseCode::NoError,
        }
    }
}

enum Found<'z> {
    Node(&'z Node, bool),
    Ent,
    Missing,
    Cut(Name),
}

impl Zone {
    fn find(&self, name: &Name) -> Found<'_> {
        // Zone cuts above or at the name (below the apex) delegate.
        if !self.cuts.is_empty() {
            let apex_labels = self.origin.num_labels();
            for n in apex_labels + 1..=name.num_labels() {
                let anc = name.trim_to(n as usize);
                if self.cuts.contains(&anc) {
                    return Found::Cut(anc);
                }
            }
        }
        if let Some(node) = self.nodes.get(name) {
            return Found::Node(node, false);
        }
        if self.ents.contains(name) {
            return Found::Ent;
        }
        // Wildcard at the closest encloser.
        let mut enc = name.base_name();
        loop {
            if self.nodes.contains_key(&enc) || self.ents.contains(&enc) || enc == self.origin {
                let Ok(wild) = enc.prepend_label("*") else {
                    return Found::Missing;
                };
                if let Some(node) = self.nodes.get(&wild) {
                    return Found::Node(node, true);
                }
                return Found::Missing;
            }
            if enc.num_labels() <= self.origin.num_labels() {
                return Found::Missing;
            }
            enc = enc.base_name();
        }
    }

    fn negative_soa(&self) -> Record {
        let mut soa = self.soa.clone();
        soa.ttl = self.negative_ttl;
        soa
    }

    fn run_lua(
        &self,
        rec: &LuaRecord,
        qname: &Name,
        client: &ClientInfo,
        ans: &mut Answer,
    ) -> Result<Vec<Record>, ()> {
        ans.dynamic = true;
        let qname_str = qname.to_lowercase().to_ascii();
        let lookup = |name: &str, qtype: u16| self.db_lookup(name, qtype);
        let cx = EvalContext {
            qname: &qname_str,
            zone: &self.origin_str,
            owner: &rec.owner_str,
            who: client.who,
            ecs: client.ecs,
            bestwho: client.bestwho(),
            localwho: client.local,
            tcp: client.tcp,
            dnssec_ok: client.dnssec_ok,
            env: &self.env,
            zone_lookup: &lookup,
            deps: Cell::new(Deps::default()),
            draws: Cell::new(std::mem::take(&mut ans.draws)),
            forced_pick: client.forced_pick,
        };
        let result = rec.program.run(&cx);
        ans.deps.0 |= cx.deps.get().0;
        ans.draws = cx.draws.take();
        let strings = result.map_err(|e| {
            debug!(record = %rec.owner_str, rtype = %rec.rtype, error = %e, "LUA record failed");
        })?;
        let mut out = Vec::with_capacity(strings.len());
        for s in strings {
            let rdata = parse_lua_content(rec.rtype, &s).map_err(|e| {
                debug!(record = %rec.owner_str, rtype = %rec.rtype, error = %e, "LUA result is not valid RDATA");
            })?;
            out.push(Record::from_rdata(qname.clone(), rec.ttl, rdata));
        }
        Ok(out)
    }

    fn static_set(node: &Node, t: RecordType, owner: &Name, wildcard: bool) -> Vec<Record> {
        node.rrset(t)
            .map(|set| {
                set.iter()
                    .map(|r| {
                        let mut r = r.clone();
                        if wildcard {
                            r.name = owner.clone();
                        }
                        r
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn referral(&self, cut: &Name, ans: &mut Answer) {
        let Some(node) = self.nodes.get(cut) else {
            return;
        };
        let ns = Self::static_set(node, RecordType::NS, cut, false);
        for r in &ns {
            if let RData::NS(target) = &r.data
                && cut.zone_of(&target.0)
                && let Some(glue) = self.nodes.get(&target.0)
            {
                for t in [RecordType::A, RecordType::AAAA] {
                    ans.additional
                        .extend(Self::static_set(glue, t, &target.0, false));
                }
            }
        }
        ans.authority.extend(ns);
        ans.outcome = Outcome::Referral;
        if ans.answers.is_empty() {
            ans.authoritative = false;
        }
    }

    /// Answer `qname`/`qtype` (qname must be in this zone).
    #[expect(
        clippy::too_many_lines,
        reason = "RFC 1034 §4.3.2 as one readable loop"
    )]
    pub fn answer(&self, qname: &Name, qtype: RecordType, client: &ClientInfo) -> Answer {
        let mut ans = Answer {
            outcome: Outcome::Data,
            authoritative: true,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            deps: Deps::default(),
            dynamic: false,
            draws: Draws::default(),
        };
        let mut name = qname.clone();
        for _ in 0..MAX_CNAME_HOPS {
            let (node, wildcard) = match self.find(&name) {
                Found::Cut(cut) => {
                    if qtype == RecordType::DS && cut == name {
                        // DS lives in the parent: NODATA here (this server does not sign).
                        ans.outcome = Outcome::NoData;
                        ans.authority.push(self.negative_soa());
                    } else {
                        self.referral(&cut, &mut ans);
                    }
                    return ans;
                }
                Found::Missing => {
                    ans.outcome = Outcome::NxDomain;
                    ans.authority.push(self.negative_soa());
                    return ans;
                }
                Found::Ent => {
                    ans.outcome = Outcome::NoData;
                    ans.authority.push(self.negative_soa());
                    return ans;
                }
                Found::Node(n, w) => (n, w),
            };
            if qtype == RecordType::ANY {
                for (_, set) in &node.rrsets {
                    for r in set {
                        let mut r = r.clone();
                        if wildcard {
                            r.name = name.clone();
                        }
                        ans.answers.push(r);
                    }
                }
                for rec in &node.lua {
                    match self.run_lua(rec, &name, client, &mut ans) {
                        Ok(rs) => ans.answers.extend(rs),
                        Err(()) => return servfail(ans),
                    }
                }
                if ans.answers.is_empty() {
                    ans.outcome = Outcome::NoData;
                    ans.authority.push(self.negative_soa());
                }
                return ans;
            }
            if qtype != RecordType::CNAME {
                let mut cname = Self::static_set(node, RecordType::CNAME, &name, wildcard);
                if cname.is_empty()
                    && let Some(rec) = node.lua.iter().find(|l| l.rtype == RecordType::CNAME)
                {
                    match self.run_lua(rec, &name, client, &mut ans) {
                        Ok(rs) => cname = rs,
                        Err(()) => return servfail(ans),
                    }
                }
                if let Some(first) = cname.first() {
                    let target = match &first.data {
                        RData::CNAME(c) => Some(c.0.clone()),
                        _ => None,
                    };
                    ans.answers.push(first.clone());
                    match target {
                        Some(t)
                            if self.origin.zone_of(&t) && ans.answers.len() < MAX_CNAME_HOPS =>
                        {
                            name = t;
                            continue;
                        }
                        _ => return ans,
                    }
                }
            }
            let before = ans.answers.len();
            ans.answers
                .extend(Self::static_set(node, qtype, &name, wildcard));
            for rec in node.lua.iter().filter(|l| l.rtype == qtype) {
                match self.run_lua(rec, &name, client, &mut ans) {
                    Ok(rs) => ans.answers.extend(rs),
                    Err(()) => return servfail(ans),
                }
            }
            if ans.answers.len() == before {
                if before == 0 {
                    ans.outcome = Outcome::NoData;
                }
                ans.authority.push(self.negative_soa());
            }
            if qtype == RecordType::NS && name == self.origin {
                self.add_glue(&mut ans);
            }
            return ans;
        }
        ans
    }

    fn add_glue(&self, ans: &mut Answer) {
        let targets: Vec<Name> = ans
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(n) => Some(n.0.clone()),
                _ => None,
            })
            .collect();
        for t in targets {
            if let Some(node) = self.nodes.get(&t) {
                for rt in [RecordType::A, RecordType::AAAA] {
                    ans.additional.extend(Self::static_set(node, rt, &t, false));
                }
            }
        }
    }
}

fn servfail(mut ans: Answer) -> Answer {
    ans.outcome = Outcome::ServFail;
    ans.answers.clear();
    ans.authority.clear();
    ans.additional.clear();
    ans
}

/// Zones by apex; the one with the longest matching suffix answers.
#[derive(Debug, Default)]
pub struct ZoneSet {
    zones: Vec<Arc<Zone>>,
}

impl ZoneSet {
    /// Build from loaded zones.
    pub fn new(mut zones: Vec<Arc<Zone>>) -> Self {
        zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        Self { zones }
    }

    /// Zone authoritative for `name`.
    pub fn find(&self, name: &Name) -> Option<&Arc<Zone>> {
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    /// All zones.
    pub fn zones(&self) -> &[Arc<Zone>] {
        &self.zones
    }
}
