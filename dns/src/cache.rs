//! Answer cache of one UDP worker: encoded responses keyed by the question, EDNS shape, ECS and
//! (for answers that depend on the client) the client address class. Entries of answers that
//! read health or failover state remember the version they were computed under and are stale
//! once it moves; a reload clears everything. One cache per worker thread, so no locks.
//!
//! An answer whose only randomness is one pick among fixed candidates (`pickrandom`,
//! `pickwrandom`, a random `ifportup` selection) is cached as a *choice*: one slot per candidate,
//! one encoded answer per outcome. Each query draws a slot with the candidates' odds (uniform, or
//! by weight); a filled slot is served, an empty one is computed with that outcome imposed
//! ([`Hit::Fill`]) and kept. Every answer is thus as random as `PowerDNS`'s evaluation per query,
//! without evaluating per query.

use std::{
    hash::{Hash, Hasher},
    net::IpAddr,
};

use hickory_proto::{op::ResponseCode, rr::Name};

use crate::{catalog::CachePolicy, lua::Odds};

/// Question plus everything else that shapes the encoded response.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct QKey {
    /// Query name (hash and equality ignore case).
    pub name: Name,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// 0: no EDNS, 1: EDNS, 2: EDNS with DO.
    pub edns: u8,
    /// ECS option as sent.
    pub ecs: Option<(IpAddr, u8)>,
}

/// A cached response.
#[derive(Debug)]
pub struct Entry {
    /// Encoded response(s) (id and question case are patched per query).
    body: Body,
    /// Version the answer was computed under, if it depends on one.
    version: Option<u64>,
    /// Response code (for metrics).
    rcode: ResponseCode,
}

#[derive(Debug)]
enum Body {
    One(Box<[u8]>),
    /// One slot per outcome of a pick; filled as they are drawn.
    Choice(Choice),
}

#[derive(Debug)]
struct Choice {
    odds: Odds,
    /// Running sums of the weights (weighted odds only).
    running: Option<Box<[u64]>>,
    slots: Box<[Option<Box<[u8]>>]>,
}

impl Choice {
    fn new(odds: Odds) -> Self {
        let running = match &odds {
            Odds::Uniform(_) => None,
            Odds::Weighted(w) => Some(
                w.iter()
                    .scan(0u64, |sum, &x| {
                        *sum += u64::from(x);
                        Some(*sum)
                    })
                    .collect(),
            ),
        };
        Self {
            slots: vec![None; odds.len()].into(),
            odds,
            running,
        }
    }

    /// A slot drawn with the candidates' odds.
    fn draw(&self) -> usize {
        use rand::RngExt as _;
        match &self.running {
            None => rand::rng().random_range(0..self.slots.len()),
            Some(sums) => {
                let total = sums.last().copied().unwrap_or(0).max(1);
                let r = rand::rng().random_range(0..total);
                sums.partition_point(|&s| s <= r)
            }
        }
    }
}

/// What the cache has for a query.
#[derive(Debug)]
pub enum Hit<'a> {
    /// This encoded response.
    Bytes(&'a [u8], ResponseCode),
    /// The drawn outcome's slot is empty: compute the answer with the random pick forced to
    /// this outcome, then [`AnswerCache::insert`] it.
    Fill(u16),
}

/// Cache key: the question shape, plus the client address class for answers that depend on it.
type Key = (QKey, Option<IpAddr>);

/// A borrowed [`Key`] for lookups (no clone of the name on the hot path); hashes like the tuple.
struct Lookup<'a>(&'a QKey, Option<IpAddr>);

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl quick_cache::Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.0 == key.0 && self.1 == key.1
    }
}

/// Per-worker cache, bounded by entry count. Eviction is `quick_cache`'s S3-FIFO-like policy:
/// a new name enters a small probationary queue and is promoted only when asked again, so a
/// flood of one-off names (random labels) cycles through probation while the names clients
/// really repeat stay cached. (It replaced a map that was cleared whole when full.)
pub struct AnswerCache {
    generation: u64,
    map: Option<quick_cache::unsync::Cache<Key, Entry>>,
    max: usize,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("generation", &self.generation)
            .field("entries", &self.len())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl AnswerCache {
    /// Empty cache holding at most `max` entries (0: no cache).
    pub fn new(max: usize) -> Self {
        Self {
            generation: 0,
            map: (max > 0).then(|| quick_cache::unsync::Cache::new(max)),
            max,
        }
    }

    /// Drop everything if the zone generation moved.
    pub fn sync_generation(&mut self, generation: u64) {
        if generation != self.generation {
            if let Some(m) = &mut self.map {
                m.clear();
            }
            self.generation = generation;
        }
    }

    /// A fresh entry for this key and client; for a choice, the slot drawn for this query.
    pub fn get(&self, key: &QKey, bestwho: IpAddr, version: u64) -> Option<Hit<'_>> {
        let m = self.map.as_ref()?;
        let e = m
            .get(&Lookup(key, None))
            .or_else(|| m.get(&Lookup(key, Some(bestwho))))?;
        if e.version.is_some_and(|v| v != version) {
            return None;
        }
        Some(match &e.body {
            Body::One(b) => Hit::Bytes(b, e.rcode),
            Body::Choice(choice) => {
                let slot = choice.draw();
                match choice.slots.get(slot)? {
                    Some(b) => Hit::Bytes(b, e.rcode),
                    // At most u16::MAX candidates (`Odds`).
                    None => Hit::Fill(u16::try_from(slot).ok()?),
                }
            }
        })
    }

    /// Store a response under its policy.
    pub fn insert(
        &mut self,
        key: QKey,
        bestwho: IpAddr,
        policy: CachePolicy,
        version: u64,
        bytes: &[u8],
        rcode: ResponseCode,
    ) {
        let Some(m) = &mut self.map else {
            return;
        };
        let entry = |versioned: bool| Entry {
            body: Body::One(bytes.into()),
            version: versioned.then_some(version),
            rcode,
        };
        match policy {
            CachePolicy::None => {}
            CachePolicy::Shared { versioned } => m.insert((key, None), entry(versioned)),
            CachePolicy::PerClient { versioned } => {
                m.insert((key, Some(bestwho)), entry(versioned));
            }
            CachePolicy::Choice {
                odds,
                picked,
                per_client,
                versioned,
            } => {
                let picked = usize::from(picked);
                if picked >= odds.len() {
                    return;
                }
                let client = per_client.then_some(bestwho);
                let version = versioned.then_some(version);
                if let Some(mut e) = m.peek_mut(&Lookup(&key, client))
                    && e.version == version
                    && e.rcode == rcode
                    && let Body::Choice(c) = &mut e.body
                    && c.odds == odds
                {
                    c.slots[picked] = Some(bytes.into());
                    return;
                }
                let mut c = Choice::new(odds);
                c.slots[picked] = Some(bytes.into());
                m.insert(
                    (key, client),
                    Entry {
                        body: Body::Choice(c),
                        version,
                        rcode,
                    },
                );
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, quick_cache::unsync::Cache::len)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Copy the query's id, RD/CD flags and question (with the client's letter case) into a cached
/// response. The question has the same length by construction (same key).
pub fn patch(resp: &mut [u8], query: &[u8], question_end: usize) {
    resp[0] = query[0];
    resp[1] = query[1];
    resp[2] = (resp[2] & !0x01) | (query[2] & 0x01);
    resp[3] = (resp[3] & !0x10) | (query[3] & 0x10);
    if question_end <= resp.len() && question_end <= query.len() {
        resp[12..question_end].copy_from_slice(&query[12..question_end]);
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn key(n: &str) -> QKey {
        QKey {
            name: Name::from_str(n).unwrap(),
            qtype: 1,
            qclass: 1,
            edns: 0,
            ecs: None,
        }
    }

    #[test]
    fn versioned_entries_go_stale_and_names_ignore_case() {
        let mut c = AnswerCache::new(10);
        let who: IpAddr = "192.0.2.1".parse().unwrap();
        c.insert(
            key("WWW.example."),
            who,
            CachePolicy::Shared { versioned: true },
            7,
            b"x",
            ResponseCode::NoError,
        );
        assert!(c.get(&key("www.example."), who, 7).is_some());
        assert!(c.get(&key("www.example."), who, 8).is_none());
    }

    #[test]
    fn per_client_entries_are_separate() {
        let mut c = AnswerCache::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        c.insert(
            key("x."),
            a,
            CachePolicy::PerClient { versioned: false },
            0,
            b"a",
            ResponseCode::NoError,
        );
        assert!(matches!(c.get(&key("x."), a, 0), Some(Hit::Bytes(b"a", _))));
        assert!(c.get(&key("x."), b, 0).is_none());
        c.sync_generation(5);
        assert!(c.get(&key("x."), a, 0).is_none());
    }

    #[test]
    fn a_choice_fills_its_slots_as_drawn_and_then_serves_them_uniformly() {
        let mut c = AnswerCache::new(10);
        let who: IpAddr = "192.0.2.1".parse().unwrap();
        let choice = |picked| CachePolicy::Choice {
            odds: Odds::Uniform(3),
            picked,
            per_client: false,
            versioned: true,
        };
        let bytes = [b"a".as_slice(), b"b", b"c"];
        c.insert(
            key("r."),
            who,
            choice(1),
            4,
            bytes[1],
            ResponseCode::NoError,
        );
        // Until every slot is filled, a query draws either the filled slot or one to fill.
        let mut fills = [0u32; 3];
        let mut served = [0u32; 3];
        for _ in 0..3_000 {
            match c.get(&key("r."), who, 4) {
                Some(Hit::Fill(j)) => fills[usize::from(j)] += 1,
                Some(Hit::Bytes(b, _)) => served[bytes.iter().position(|x| *x == b).unwrap()] += 1,
                None => panic!("the entry is there"),
            }
        }
        assert_eq!(fills[1], 0, "the filled slot is never to be filled");
        assert!(fills[0] > 0 && fills[2] > 0 && served[1] > 0);
        assert_eq!(served[0] + served[2], 0);
        for j in [0u16, 2] {
            c.insert(
                key("r."),
                who,
                choice(j),
                4,
                bytes[usize::from(j)],
                ResponseCode::NoError,
            );
        }
        let mut served = [0u32; 3];
        for _ in 0..3_000 {
            match c.get(&key("r."), who, 4) {
                Some(Hit::Bytes(b, _)) => served[bytes.iter().position(|x| *x == b).unwrap()] += 1,
                other => panic!("every slot is filled: {other:?}"),
            }
        }
        // Uniform: 1,000 each expected, σ ≈ 26; ±200 is beyond 7σ.
        assert!(
            served.iter().all(|&n| (800..=1_200).contains(&n)),
            "{served:?}"
        );
        // A new version makes the whole choice stale; a fill under it starts a new one.
        assert!(c.get(&key("r."), who, 5).is_none());
        c.insert(key("r."), who, choice(2), 5, b"c", ResponseCode::NoError);
        let mut filled_again = 0;
        for _ in 0..300 {
            if let Some(Hit::Fill(_)) = c.get(&key("r."), who, 5) {
                filled_again += 1;
            }
        }
        assert!(filled_again > 0, "the new version's slots start empty");
    }

    #[test]
    fn a_weighted_choice_serves_its_slots_by_weight() {
        let mut c = AnswerCache::new(10);
        let who: IpAddr = "192.0.2.1".parse().unwrap();
        let odds = Odds::Weighted(vec![1, 3].into());
        for (picked, b) in [(0u16, b"a"), (1, b"b")] {
            let policy = CachePolicy::Choice {
                odds: odds.clone(),
                picked,
                per_client: true,
                versioned: false,
            };
            c.insert(key("w."), who, policy, 0, b, ResponseCode::NoError);
        }
        let mut heavy = 0u32;
        for _ in 0..4_000 {
            match c.get(&key("w."), who, 0) {
                Some(Hit::Bytes(b, _)) => heavy += u32::from(b == b"b"),
                other => panic!("both slots are filled: {other:?}"),
            }
        }
        // 3,000 expected, σ ≈ 27.
        assert!((2_800..=3_200).contains(&heavy), "{heavy}");
        // Per client: another client has nothing yet.
        assert!(c.get(&key("w."), "192.0.2.2".parse().unwrap(), 0).is_none());
    }

    #[test]
    fn a_flood_of_one_off_names_does_not_evict_the_names_clients_repeat() {
        // 100 hot names asked over and over, 10 one-off random names between two hot asks,
        // 1,000 entries. A cache that is cleared when full loses the hot names every ~100 hot
        // asks (hit rate ~10 %); the eviction policy must keep them.
        let mut c = AnswerCache::new(1_000);
        let who: IpAddr = "192.0.2.1".parse().unwrap();
        let (mut hits, mut asks) = (0u32, 0u32);
        let mut flood = 0u64;
        for round in 0..200 {
            for h in 0..100 {
                let k = key(&format!("hot{h}.example."));
                if round >= 20 {
                    asks += 1;
                }
                if c.get(&k, who, 0).is_some() {
                    if round >= 20 {
                        hits += 1;
                    }
                } else {
                    c.insert(
                        k,
                        who,
                        CachePolicy::Shared { versioned: false },
                        0,
                        b"h",
                        ResponseCode::NoError,
                    );
                }
                for _ in 0..10 {
                    flood += 1;
                    let f = key(&format!("r{flood}.example."));
                    if c.get(&f, who, 0).is_none() {
                        c.insert(
                            f,
                            who,
                            CachePolicy::Shared { versioned: false },
                            0,
                            b"f",
                            ResponseCode::NoError,
                        );
                    }
                }
            }
        }
        assert!(c.len() <= 1_000, "bounded: {}", c.len());
        let rate = f64::from(hits) / f64::from(asks);
        assert!(rate > 0.8, "hot hit rate under the flood: {rate:.3}");
    }
}
