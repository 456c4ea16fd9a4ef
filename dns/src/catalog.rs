//! The catalog: the current zone set (swapped atomically on reload), query resolution and the
//! answer-cache policy derived from what each answer depended on.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType, rdata::TXT},
};

use crate::{
    failover::FailoverState,
    lua::{Deps, Odds},
    metrics::DnsMetrics,
    server::message::{ParsedQuery, ResponseParts, ecs_net, encode},
    zone::{ClientInfo, Outcome, ZoneSet},
};

/// How an encoded answer may be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Not at all (random choice, transport-dependent, SERVFAIL).
    None,
    /// For every client asking the same question.
    Shared {
        /// Valid only while the health/failover version is unchanged.
        versioned: bool,
    },
    /// Per client address class (bestwho).
    PerClient {
        /// Valid only while the health/failover version is unchanged.
        versioned: bool,
    },
    /// One outcome of a random pick among fixed candidates (`pickrandom`, `pickwrandom`, an
    /// `ifportup`/`ifurlup` random selection): cached as slot `picked`; the cache draws among
    /// the slots per query with the same odds, so answers stay as random as with `PowerDNS`,
    /// which evaluates every query.
    Choice {
        /// The candidates' odds.
        odds: Odds,
        /// This answer's outcome.
        picked: u16,
        /// Per client address class (else shared).
        per_client: bool,
        /// Valid only while the health/failover version is unchanged.
        versioned: bool,
    },
}

/// A resolved query.
#[derive(Debug)]
pub struct Resolved {
    /// Response code.
    pub rcode: ResponseCode,
    /// AA flag.
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// Additional section.
    pub additional: Vec<Record>,
    /// ECS scope prefix to echo (`None`: ECS processing is off, no option in the response).
    pub ecs_scope: Option<u8>,
    /// Reuse policy.
    pub cache: CachePolicy,
}

impl Resolved {
    /// The parts for encoding.
    pub fn parts(&self) -> ResponseParts<'_> {
        ResponseParts {
            rcode: self.rcode,
            authoritative: self.authoritative,
            answers: &self.answers,
            authority: &self.authority,
            additional: &self.additional,
            ecs_scope: self.ecs_scope,
        }
    }
}

/// Zones plus the versions caches key on.
#[derive(Debug)]
pub struct Catalog {
    zones: ArcSwap<ZoneSet>,
    generation: AtomicU64,
    version: Arc<AtomicU64>,
    /// Metrics.
    pub metrics: Arc<DnsMetrics>,
    ecs: bool,
    witness: Option<Arc<FailoverState>>,
}

/// Label that starts a Continuum witness name: `_continuum.<group>.<zone>`.
const WITNESS_LABEL: &[u8] = b"_continuum";

impl Catalog {
    /// A catalog serving `zones`; `version` is bumped by health and failover changes.
    pub fn new(
        zones: ZoneSet,
        version: Arc<AtomicU64>,
        metrics: Arc<DnsMetrics>,
        ecs: bool,
    ) -> Self {
        Self {
            zones: ArcSwap::from_pointee(zones),
            generation: AtomicU64::new(1),
            version,
            metrics,
            ecs,
            witness: None,
        }
    }

    /// Serve the failover state of every group as TXT `_continuum.<group>.<zone>` in each zone
    /// (Continuum's witness record: `active=<region> epoch=<n> holder=<id>`). Names of groups
    /// this instance holds no record for resolve from the zone as usual.
    #[must_use]
    pub fn with_witness(mut self, failover: Arc<FailoverState>) -> Self {
        self.witness = Some(failover);
        self
    }

    /// For a witness name `_continuum.<group>.<origin>`: `Some(answer)`, where the answer is
    /// `None` while the group is unknown (the zone answers, uncached, so the record appears as
    /// soon as the state arrives). `None` for every other name.
    #[expect(
        clippy::option_option,
        reason = "outer: whether the name is a witness name; inner: its record or NXDOMAIN"
    )]
    fn witness_answer(
        &self,
        name: &Name,
        origin: &Name,
        qtype: RecordType,
    ) -> Option<Option<Record>> {
        let failover = self.witness.as_ref()?;
        if name.num_labels() != origin.num_labels() + 2 {
            return None;
        }
        let mut labels = name.iter();
        if !labels.next()?.eq_ignore_ascii_case(WITNESS_LABEL) {
            return None;
        }
        if !matches!(qtype, RecordType::TXT | RecordType::ANY) {
            return Some(None);
        }
        let group = std::str::from_utf8(labels.next()?)
            .ok()?
            .to_ascii_lowercase();
        Some(
            failover
                .witness_txt(&group)
                .map(|txt| Record::from_rdata(name.clone(), 0, RData::TXT(TXT::new(vec![txt])))),
        )
    }

    /// Swap in a new zone set atomically; caches notice through [`Catalog::generation`].
    pub fn replace(&self, zones: ZoneSet) {
        self.zones.store(Arc::new(zones));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Current zone set.
    pub fn zones(&self) -> arc_swap::Guard<Arc<ZoneSet>> {
        self.zones.load()
    }

    /// Bumped on every reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Bumped on every health or failover transition.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Client facts for a query.
    pub fn client(&self, q: &ParsedQuery, src: SocketAddr, local: IpAddr, tcp: bool) -> ClientInfo {
        let ecs = if self.ecs {
            q.edns.and_then(|e| e.ecs).and_then(ecs_net)
        } else {
            None
        };
        ClientInfo {
            who: src.ip().to_canonical(),
            ecs,
            local,
            tcp,
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
            forced_pick: None,
        }
    }

    /// Resolve a query.
    pub fn resolve(&self, q: &ParsedQuery, client: &ClientInfo) -> Resolved {
        let zones = self.zones.load();
        let name = q.query.name();
        let transfer = matches!(q.query.query_type(), RecordType::AXFR | RecordType::IXFR);
        let Some(zone) = zones.find(name).filter(|_| !transfer) else {
            // Not our zone, or a zone transfer (not offered): REFUSED.
            return Resolved {
                rcode: ResponseCode::Refused,
                authoritative: false,
                answers: Vec::new(),
                authority: Vec::new(),
                additional: Vec::new(),
                ecs_scope: self.ecs.then_some(0),
                cache: CachePolicy::Shared { versioned: false },
            };
        };
        let witness = self.witness_answer(name, &zone.origin, q.query.query_type());
        if let Some(Some(rec)) = witness {
            // Never cached: a witness must report what it holds now.
            return Resolved {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers: vec![rec],
                authority: Vec::new(),
                additional: Vec::new(),
                ecs_scope: self.ecs.then_some(0),
                cache: CachePolicy::None,
            };
        }
        let ans = zone.answer(name, q.query.query_type(), client);
        if ans.dynamic {
            self.metrics.lua_evaluations.inc();
        }
        let d = ans.deps;
        let versioned = d.has(Deps::HEALTH) || d.has(Deps::FAILOVER);
        let cache = if ans.outcome == Outcome::ServFail
            || witness.is_some()
            || d.has(Deps::TRANSPORT)
            || d.has(Deps::IMPURE)
        {
            CachePolicy::None
        } else if d.has(Deps::RANDOM) {
            match ans.draws.single() {
                Some(pick) => CachePolicy::Choice {
                    odds: pick.odds.clone(),
                    picked: pick.picked,
                    per_client: d.has(Deps::CLIENT),
                    versioned,
                },
                None => CachePolicy::None,
            }
        } else if d.has(Deps::CLIENT) {
            CachePolicy::PerClient { versioned }
        } else {
            CachePolicy::Shared { versioned }
        };
        let ecs_scope = self.ecs.then(|| match (client.ecs, d.has(Deps::CLIENT)) {
            (Some(net), true) => net.prefix_len(),
            _ => 0,
        });
        Resolved {
            rcode: ans.rcode(),
            authoritative: ans.authoritative,
            answers: ans.answers,
            authority: ans.authority,
            additional: ans.additional,
            ecs_scope,
            cache,
        }
    }

    /// Resolve and encode for UDP; `forced_pick` imposes the outcome of the answer's first
    /// uniform random pick (the answer cache filling the slot it drew).
    pub fn answer_udp(
        &self,
        q: &ParsedQuery,
        src: SocketAddr,
        local: IpAddr,
        forced_pick: Option<u16>,
    ) -> (Vec<u8>, ResponseCode, CachePolicy, IpAddr) {
        let client = ClientInfo {
            forced_pick,
            ..self.client(q, src, local, false)
        };
        let r = self.resolve(q, &client);
        let bytes = encode(q, &r.parts(), true);
        (bytes, r.rcode, r.cache, client.bestwho())
    }
}
