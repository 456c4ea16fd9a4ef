//! Pinned state carried across a layout change where it can be: the conntrack entries of an
//! agent of schema 4 or 5 are read before its incompatible maps are recreated, converted and
//! written into the new conntrack maps, so established connections keep passing through an
//! upgrade (the policy maps are refilled from policy by the first sync anyway; connections are
//! what only the old maps know). Without this, every connection would be new to the upgraded
//! datapath: the reply of an egress connection arriving before the workload's next packet would
//! be judged as a new ingress connection, and default deny would drop it.

use std::{collections::HashMap as StdHashMap, path::Path};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};

use catalyst_policy::datapath::{
    CT_EVENT_TICK_SHIFT, CT_EXPIRY_TICK_SHIFT, CT_F_CLOSING, CT_F_SEEN_REPLY, CT_F_SWAPPED,
    CT_TCP_FLAGS, CT_TCP_REPLY_SHIFT, CtConn, CtEntry, CtKey, MAP_CONNTRACK, MAP_CONNTRACK_V4,
    ct_side,
};

/// The schemas whose conntrack entries are carried over.
pub(super) const CONNTRACK_FROM_SCHEMAS: [u32; 2] = [4, 5];

/// A conntrack key of schemas 4 and 5 (44 bytes): [`CtKey`] with the endpoint's ifindex first
/// (one entry per endpoint and connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtKeyV5 {
    pub ifindex: u32,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    pub family: u8,
    pub pad: u16,
}

/// The IPv4 conntrack key of schema 5 (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtKey4V5 {
    pub ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    pub pad8: u8,
    pub pad16: u16,
}

/// A conntrack entry of schema 5 (32 bytes): [`CtEntry`] without the ifindex (it was in the key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryV5 {
    pub revision: u32,
    pub rule_id: u32,
    pub peer_identity: u32,
    pub verdict: u8,
    pub drop_reason: u8,
    pub match_type: u8,
    pub direction: u8,
    pub flags: u16,
    pub tcp_flags_seen: u16,
    pub policy_port: u16,
    pub pad: u16,
    pub last_event: u32,
    pub expires: u32,
}

/// A conntrack entry as schema 4 stored it (56 bytes; one entry per connection, keyed by its
/// original packet's tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CtEntryV4 {
    pub revision: u32,
    pub verdict: u32,
    pub drop_reason: u32,
    pub rule_id: u32,
    pub match_type: u32,
    pub direction: u32,
    pub peer_identity: u32,
    pub flags: u32,
    pub tcp_flags_seen: u32,
    pub policy_port: u32,
    pub last_event_ns: u64,
    pub expires_ns: u64,
}

// SAFETY: plain old data, `repr(C)` without implicit padding (checked by the layout test).
unsafe impl aya::Pod for CtKeyV5 {}
// SAFETY: as above.
unsafe impl aya::Pod for CtKey4V5 {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntryV5 {}
// SAFETY: as above (10 × 4 + 2 × 8 bytes).
unsafe impl aya::Pod for CtEntryV4 {}

/// Key and value sizes of the schema-4 conntrack map ([`MAP_CONNTRACK`], both families).
pub(super) const CONNTRACK_V4_SIZES: (u32, u32) =
    (size_of::<CtKeyV5>() as u32, size_of::<CtEntryV4>() as u32);
/// Key and value sizes of the schema-5 IPv4 and IPv6 conntrack maps.
pub(super) const CONNTRACK_V5_SIZES: [(u32, u32); 2] = [
    (size_of::<CtKey4V5>() as u32, size_of::<CtEntryV5>() as u32),
    (size_of::<CtKeyV5>() as u32, size_of::<CtEntryV5>() as u32),
];

/// The schema-5 form of a schema-4 entry: the key in canonical order with the original
/// direction recorded, narrow fields, expiry and last event in ticks (never earlier than before).
#[must_use]
pub fn convert_v4(key: &CtKeyV5, old: &CtEntryV4) -> (CtKeyV5, CtEntryV5) {
    let (canonical, swapped) = CtKey::canonical(
        key.saddr,
        key.daddr,
        key.sport_be,
        key.dport_be,
        key.protocol,
        key.family,
    );
    #[expect(
        clippy::cast_possible_truncation,
        reason = "schema-4 fields held u8/u16 values in u32 slots; ticks wrap by design"
    )]
    let entry = CtEntryV5 {
        revision: old.revision,
        rule_id: old.rule_id,
        peer_identity: old.peer_identity,
        verdict: old.verdict as u8,
        drop_reason: old.drop_reason as u8,
        match_type: old.match_type as u8,
        direction: old.direction as u8,
        flags: (old.flags as u16 & u16::from(CT_F_CLOSING | CT_F_SEEN_REPLY))
            | if swapped { u16::from(CT_F_SWAPPED) } else { 0 },
        tcp_flags_seen: old.tcp_flags_seen as u16,
        policy_port: old.policy_port as u16,
        pad: 0,
        last_event: (old.last_event_ns >> CT_EVENT_TICK_SHIFT) as u32,
        // The first tick at or after the old expiry.
        expires: old.expires_ns.div_ceil(1 << CT_EXPIRY_TICK_SHIFT) as u32,
    };
    let key = CtKeyV5 {
        ifindex: key.ifindex,
        saddr: canonical.saddr,
        daddr: canonical.daddr,
        sport_be: canonical.sport_be,
        dport_be: canonical.dport_be,
        protocol: canonical.protocol,
        family: canonical.family,
        pad: 0,
    };
    (key, entry)
}

/// The schema-6 connections of schema-5 entries (one per endpoint and connection, keys already
/// canonical): each entry becomes its endpoint's side of its connection, so the two entries of a
/// connection between two local workloads become one element. The cached verdicts are kept under
/// revision 0: they apply until the upgraded agent's first sync sets a revision, after which each
/// side is re-evaluated against the policy in force on its next packet (as after any policy
/// change).
#[must_use]
pub fn merge_v5(entries: impl IntoIterator<Item = (CtKeyV5, CtEntryV5)>) -> Vec<(CtKey, CtConn)> {
    let mut conns: StdHashMap<CtKey, CtConn> = StdHashMap::new();
    for (k, old) in entries {
        if k.ifindex == 0 {
            continue;
        }
        let key = CtKey {
            saddr: k.saddr,
            daddr: k.daddr,
            sport_be: k.sport_be,
            dport_be: k.dport_be,
            protocol: k.protocol,
            family: k.family,
            pad: 0,
        };
        // The entry was made by its connection's original packet at the hook of `direction`.
        let side = ct_side(old.direction, old.flags & u16::from(CT_F_SWAPPED) != 0);
        conns.entry(key).or_default().sides[side] = CtEntry {
            ifindex: k.ifindex,
            revision: 0,
            rule_id: old.rule_id,
            peer_identity: old.peer_identity,
            verdict: old.verdict,
            drop_reason: old.drop_reason,
            match_type: old.match_type,
            direction: old.direction,
            // Schema 5 kept every flag bit of both directions in a byte each.
            #[expect(
                clippy::cast_possible_truncation,
                reason = "the flag bits fit in a byte"
            )]
            flags: old.flags as u8,
            tcp_flags_seen: (old.tcp_flags_seen as u8 & CT_TCP_FLAGS)
                | (((old.tcp_flags_seen >> 8) as u8 & CT_TCP_FLAGS) << CT_TCP_REPLY_SHIFT),
            policy_port: old.policy_port,
            last_event: old.last_event,
            expires: old.expires,
        };
    }
    conns.into_iter().collect()
}

/// Opens the pinned LRU map at `path` as `K` → `V`.
fn open_old<K: aya::Pod, V: aya::Pod>(path: &Path) -> anyhow::Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(path)
        .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
    HashMap::try_from(Map::LruHashMap(data)).with_context(|| {
        format!(
            "{} is not a conntrack map of the old layout",
            path.display()
        )
    })
}

/// The key and value sizes of the map pinned at `path`, when it can be read.
fn sizes(path: &Path) -> Option<(u32, u32)> {
    aya::maps::MapInfo::from_pin(path)
        .map(|i| (i.key_size(), i.value_size()))
        .ok()
}

/// Reads and converts every conntrack entry of an agent of `schema` (one of
/// [`CONNTRACK_FROM_SCHEMAS`]) pinned in `maps_dir`. A table whose sizes are not that schema's
/// is skipped; entries that vanish during the walk (evicted, expired by the old datapath) too.
pub(super) fn read_conntrack(maps_dir: &Path, schema: u32) -> anyhow::Result<Vec<(CtKey, CtConn)>> {
    let mut old = Vec::new();
    if schema == 4 {
        let path = maps_dir.join(MAP_CONNTRACK);
        if sizes(&path) == Some(CONNTRACK_V4_SIZES) {
            let map: HashMap<MapData, CtKeyV5, CtEntryV4> = open_old(&path)?;
            old.extend(
                map.iter()
                    .filter_map(Result::ok)
                    .map(|(k, v)| convert_v4(&k, &v)),
            );
        }
    } else if schema == 5 {
        let path = maps_dir.join(MAP_CONNTRACK_V4);
        if sizes(&path) == Some(CONNTRACK_V5_SIZES[0]) {
            let map: HashMap<MapData, CtKey4V5, CtEntryV5> = open_old(&path)?;
            old.extend(map.iter().filter_map(Result::ok).map(|(k, v)| {
                let key = CtKeyV5 {
                    ifindex: k.ifindex,
                    saddr: [k.saddr, 0, 0, 0],
                    daddr: [k.daddr, 0, 0, 0],
                    sport_be: k.sport_be,
                    dport_be: k.dport_be,
                    protocol: k.protocol,
                    family: 4,
                    pad: 0,
                };
                (key, v)
            }));
        }
        let path = maps_dir.join(MAP_CONNTRACK);
        if sizes(&path) == Some(CONNTRACK_V5_SIZES[1]) {
            let map: HashMap<MapData, CtKeyV5, CtEntryV5> = open_old(&path)?;
            old.extend(map.iter().filter_map(Result::ok));
        }
    }
    Ok(merge_v5(old))
}

#[cfg(test)]
mod tests {
    use catalyst_policy::datapath::{
        DIR_EGRESS, DIR_INGRESS, PROTO_TCP, VERDICT_FORWARDED, ct_expired,
    };

    use super::*;

    fn ip(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    #[test]
    fn old_layouts_have_the_sizes_their_agents_pinned() {
        assert_eq!(CONNTRACK_V4_SIZES, (44, 56));
        assert_eq!(CONNTRACK_V5_SIZES, [(20, 32), (44, 32)]);
    }

    #[test]
    fn a_schema_4_entry_keeps_its_connection_and_never_expires_earlier() {
        // An egress connection 10.0.0.9:40000 → 10.0.0.2:80 as schema 4 keyed it.
        let key = CtKeyV5 {
            ifindex: 7,
            saddr: ip([10, 0, 0, 9]),
            daddr: ip([10, 0, 0, 2]),
            sport_be: 40_000u16.to_be(),
            dport_be: 80u16.to_be(),
            protocol: PROTO_TCP,
            family: 4,
            pad: 0,
        };
        let expires_ns = 5_000_000_000_123;
        let old = CtEntryV4 {
            revision: 9,
            verdict: u32::from(VERDICT_FORWARDED),
            rule_id: 3,
            match_type: 2,
            direction: u32::from(DIR_EGRESS),
            peer_identity: 1234,
            flags: u32::from(CT_F_SEEN_REPLY) | 1 << 9,
            tcp_flags_seen: 0x1202,
            policy_port: 80,
            last_event_ns: 4_000_000_000,
            expires_ns,
            ..CtEntryV4::default()
        };
        let merged = merge_v5([convert_v4(&key, &old)]);
        assert_eq!(merged.len(), 1);
        let (k, c) = merged[0];
        // The packet of either direction finds it, and tells which one it is.
        let (fwd, fwd_swapped) = CtKey::canonical(
            key.saddr,
            key.daddr,
            key.sport_be,
            key.dport_be,
            PROTO_TCP,
            4,
        );
        assert_eq!(k, fwd);
        // The client's side is the one its next packet (leaving it) uses.
        let side = ct_side(DIR_EGRESS, fwd_swapped);
        let e = c.sides[side];
        assert_eq!(c.sides[1 - side].ifindex, 0, "the other side is unused");
        assert_eq!(e.ifindex, 7);
        assert_eq!(
            e.flags & CT_F_SWAPPED != 0,
            fwd_swapped,
            "original direction"
        );
        assert_eq!(
            e.flags & !CT_F_SWAPPED,
            CT_F_SEEN_REPLY,
            "unknown bits dropped"
        );
        assert_eq!(
            (e.verdict, e.direction, e.rule_id, e.match_type),
            (VERDICT_FORWARDED, DIR_EGRESS, 3, 2)
        );
        assert_eq!(
            (e.peer_identity, e.tcp_flags_seen, e.policy_port),
            (1234, 0x22, 80),
            "SYN seen in both directions"
        );
        assert_eq!(e.revision, 0, "re-evaluated after the first sync");
        assert!(!ct_expired(e.expires, expires_ns - 1));
        assert!(ct_expired(
            e.expires,
            expires_ns + (1 << CT_EXPIRY_TICK_SHIFT)
        ));
    }

    #[test]
    fn the_two_schema_5_entries_of_a_local_connection_become_its_two_sides() {
        // 10.0.0.9:40000 → 10.0.0.2:80 between two workloads of the node: schema 5 kept an
        // entry for the client (ifindex 7, egress) and one for the server (ifindex 9, ingress).
        let (client, server) = (ip([10, 0, 0, 9]), ip([10, 0, 0, 2]));
        let (cp, sp) = (40_000u16.to_be(), 80u16.to_be());
        let (k, swapped) = CtKey::canonical(client, server, cp, sp, PROTO_TCP, 4);
        let old_key = |ifindex| CtKeyV5 {
            ifindex,
            saddr: k.saddr,
            daddr: k.daddr,
            sport_be: k.sport_be,
            dport_be: k.dport_be,
            protocol: k.protocol,
            family: 4,
            pad: 0,
        };
        let entry = |direction, rule_id| CtEntryV5 {
            revision: 4,
            rule_id,
            verdict: VERDICT_FORWARDED,
            direction,
            flags: u16::from(if swapped { CT_F_SWAPPED } else { 0 } | CT_F_SEEN_REPLY),
            expires: 77,
            ..CtEntryV5::default()
        };
        let merged = merge_v5([
            (old_key(7), entry(DIR_EGRESS, 1)),
            (old_key(9), entry(DIR_INGRESS, 2)),
        ]);
        assert_eq!(merged.len(), 1, "one element per connection");
        let (key, c) = merged[0];
        assert_eq!(key, k);
        // Each endpoint's packets, in either direction, find its own side.
        let client_side = c.sides[ct_side(DIR_EGRESS, swapped)];
        let server_side = c.sides[ct_side(DIR_INGRESS, swapped)];
        assert_eq!((client_side.ifindex, client_side.rule_id), (7, 1));
        assert_eq!((server_side.ifindex, server_side.rule_id), (9, 2));
        assert_eq!((client_side.revision, server_side.revision), (0, 0));
        assert_eq!((client_side.expires, server_side.expires), (77, 77));
        assert_eq!(size_of::<CtKey4V5>(), 20);
        assert_eq!(size_of::<CtEntryV5>(), 32);
    }
}
