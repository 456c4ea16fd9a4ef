//! Answer cache of one UDP worker: encoded responses keyed by the question, EDNS shape, ECS and
//! (for answers that depend on the client) the client address class. Entries of answers that
//! read health or failover state remember the version they were computed under and are stale
//! once it moves; a reload clears everything. One cache per worker thread, so no locks.

use std::{collections::HashMap, net::IpAddr};

use hickory_proto::{op::ResponseCode, rr::Name};

use crate::catalog::CachePolicy;

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
    /// Encoded response (id and question case are patched per query).
    pub bytes: Box<[u8]>,
    /// Version the answer was computed under, if it depends on one.
    pub version: Option<u64>,
    /// Response code (for metrics).
    pub rcode: ResponseCode,
}

#[derive(Debug)]
enum Slot {
    Shared(Entry),
    PerClient(HashMap<IpAddr, Entry>),
}

/// Per-worker cache.
#[derive(Debug)]
pub struct AnswerCache {
    generation: u64,
    map: HashMap<QKey, Slot>,
    entries: usize,
    max: usize,
}

impl AnswerCache {
    /// Empty cache holding at most `max` entries.
    pub fn new(max: usize) -> Self {
        Self {
            generation: 0,
            map: HashMap::new(),
            entries: 0,
            max,
        }
    }

    /// Drop everything if the zone generation moved.
    pub fn sync_generation(&mut self, generation: u64) {
        if generation != self.generation {
            self.map.clear();
            self.entries = 0;
            self.generation = generation;
        }
    }

    /// A fresh entry for this key and client.
    pub fn get(&self, key: &QKey, bestwho: IpAddr, version: u64) -> Option<&Entry> {
        let e = match self.map.get(key)? {
            Slot::Shared(e) => e,
            Slot::PerClient(m) => m.get(&bestwho)?,
        };
        match e.version {
            Some(v) if v != version => None,
            _ => Some(e),
        }
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
        if self.max == 0 {
            return;
        }
        if self.entries >= self.max {
            self.map.clear();
            self.entries = 0;
        }
        let entry = |versioned: bool| Entry {
            bytes: bytes.into(),
            version: versioned.then_some(version),
            rcode,
        };
        match policy {
            CachePolicy::None => {}
            CachePolicy::Shared { versioned } => {
                self.entries += 1;
                self.map.insert(key, Slot::Shared(entry(versioned)));
            }
            CachePolicy::PerClient { versioned } => {
                self.entries += 1;
                match self
                    .map
                    .entry(key)
                    .or_insert_with(|| Slot::PerClient(HashMap::new()))
                {
                    Slot::PerClient(m) => {
                        m.insert(bestwho, entry(versioned));
                    }
                    slot @ Slot::Shared(_) => {
                        let mut m = HashMap::new();
                        m.insert(bestwho, entry(versioned));
                        *slot = Slot::PerClient(m);
                    }
                }
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
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
        assert_eq!(&*c.get(&key("x."), a, 0).unwrap().bytes, b"a");
        assert!(c.get(&key("x."), b, 0).is_none());
        c.sync_generation(5);
        assert!(c.get(&key("x."), a, 0).is_none());
    }
}
