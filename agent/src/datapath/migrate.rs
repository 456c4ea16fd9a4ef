//! Pinned state carried across a layout change where it can be: the conntrack entries of an
//! agent of schema 4 are read before its incompatible maps are recreated, converted and written
//! into the new conntrack map, so established connections keep passing through an upgrade (the
//! policy maps are refilled from policy by the first sync anyway; connections are what only the
//! old maps know). Without this, every connection would be new to the upgraded datapath: the
//! reply of an egress connection arriving before the workload's next packet would be judged as
//! a new ingress connection, and default deny would drop it.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};

use catalyst_policy::datapath::{
    CT_EVENT_TICK_SHIFT, CT_EXPIRY_TICK_SHIFT, CT_F_CLOSING, CT_F_SEEN_REPLY, CT_F_SWAPPED,
    CtEntry, CtKey,
};

/// The schema whose conntrack entries are migrated.
pub(super) const CONNTRACK_FROM_SCHEMA: u32 = 4;

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

// SAFETY: plain old data, `repr(C)` without implicit padding (10 × 4 + 2 × 8 bytes).
unsafe impl aya::Pod for CtEntryV4 {}

/// Key and value sizes of a schema-4 conntrack map.
pub(super) const CONNTRACK_V4_SIZES: (u32, u32) =
    (size_of::<CtKey>() as u32, size_of::<CtEntryV4>() as u32);

/// The schema-5 form of a schema-4 entry: the key in canonical order with the original
/// direction recorded, narrow fields, expiry and last event in ticks (never earlier than before).
/// The cached verdict is kept under revision 0: it applies until the upgraded agent's first sync
/// sets a revision, after which the connection is re-evaluated against the policy in force on
/// its next packet (as after any policy change).
#[must_use]
pub fn convert_v4(key: &CtKey, old: &CtEntryV4) -> (CtKey, CtEntry) {
    let (canonical, swapped) = CtKey::canonical(
        key.ifindex,
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
    let entry = CtEntry {
        revision: 0,
        rule_id: old.rule_id,
        peer_identity: old.peer_identity,
        verdict: old.verdict as u8,
        drop_reason: old.drop_reason as u8,
        match_type: old.match_type as u8,
        direction: old.direction as u8,
        flags: (old.flags as u16 & (CT_F_CLOSING | CT_F_SEEN_REPLY))
            | if swapped { CT_F_SWAPPED } else { 0 },
        tcp_flags_seen: old.tcp_flags_seen as u16,
        policy_port: old.policy_port as u16,
        pad: 0,
        last_event: (old.last_event_ns >> CT_EVENT_TICK_SHIFT) as u32,
        // The first tick at or after the old expiry.
        expires: old.expires_ns.div_ceil(1 << CT_EXPIRY_TICK_SHIFT) as u32,
    };
    (canonical, entry)
}

/// Reads and converts every entry of the schema-4 conntrack map pinned at `path`. Entries that
/// vanish during the walk (evicted, expired by the old datapath) are skipped.
pub(super) fn read_conntrack_v4(path: &Path) -> anyhow::Result<Vec<(CtKey, CtEntry)>> {
    let data = MapData::from_pin(path)
        .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
    let map: HashMap<MapData, CtKey, CtEntryV4> = HashMap::try_from(Map::LruHashMap(data))
        .with_context(|| format!("{} is not a schema-4 conntrack map", path.display()))?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| convert_v4(&k, &v))
        .collect())
}

#[cfg(test)]
mod tests {
    use catalyst_policy::datapath::{DIR_EGRESS, PROTO_TCP, VERDICT_FORWARDED, ct_expired};

    use super::*;

    #[test]
    fn a_schema_4_entry_keeps_its_connection_and_never_expires_earlier() {
        assert_eq!(CONNTRACK_V4_SIZES, (44, 56));
        let ip = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        // An egress connection 10.0.0.9:40000 → 10.0.0.2:80 as schema 4 keyed it.
        let key = CtKey {
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
        let (k, e) = convert_v4(&key, &old);
        // The packet of either direction finds it, and tells which one it is.
        let (fwd, fwd_swapped) = CtKey::canonical(
            7,
            key.saddr,
            key.daddr,
            key.sport_be,
            key.dport_be,
            PROTO_TCP,
            4,
        );
        assert_eq!(k, fwd);
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
            (1234, 0x1202, 80)
        );
        assert_eq!(e.revision, 0, "re-evaluated after the first sync");
        assert!(!ct_expired(e.expires, expires_ns - 1));
        assert!(ct_expired(
            e.expires,
            expires_ns + (1 << CT_EXPIRY_TICK_SHIFT)
        ));
    }
}
