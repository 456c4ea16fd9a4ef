//! Policy decision for a new (or re-evaluated) connection.
//!
//! The algorithm is the contract that `catalyst_policy::compile::Compiled::lookup` emulates in
//! userspace (and that the differential tests check against the reference evaluator):
//! peer identity from the ipcache (world when unknown); two longest-prefix lookups in the policy
//! maps, with the peer identity and with the wildcard identity; a deny from either wins, then an
//! allow (identity-specific first); otherwise default deny when the direction is enforced.
//!
//! Each longest-prefix lookup is an exact hash lookup first (single addresses, policy entries of
//! one protocol and port: the common entries, and the longest prefixes a key can match), then
//! the LPM trie of the shorter prefixes on a miss: the same answer as one trie holding both, at
//! the cost of a hash lookup where a trie walk was. The wildcard lookup is skipped when it
//! cannot change the verdict (`EP_F_*_NO_ANY_DENY`).

use aya_ebpf::maps::lpm_trie::Key;
use catalyst_policy::datapath::{
    ACTION_ALLOW, ACTION_DENY, CFG_F_AUDIT, DIR_INGRESS, DROP_NONE, DROP_POLICY_DENIED,
    DROP_POLICY_DENY, DatapathConfig, EP_F_AUDIT, EP_F_EGRESS_ENFORCED, EP_F_EGRESS_NO_ANY_DENY,
    EP_F_INGRESS_ENFORCED, EP_F_INGRESS_NO_ANY_DENY, EndpointInfo, IDENTITY_ANY, IDENTITY_WORLD,
    MATCH_NONE, POLICY_PREFIX_FULL_BITS, PolicyEntry, PolicyKey, VERDICT_AUDIT, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};

use crate::{IPCACHE4, IPCACHE6, IPHOST4, IPHOST6, POLICY, POLICY_EXACT};

/// Result of a policy decision.
pub struct Decision {
    pub verdict: u8,
    pub reason: u8,
    pub rule_id: u32,
    pub match_type: u8,
    pub peer_identity: u32,
    pub audit: bool,
}

/// Security identity of `peer` from the ipcache; world when it is not known.
#[inline(always)]
pub fn peer_identity(peer: &[u32; 4], family: u8) -> u32 {
    if family == 4 {
        if let Some(v) = IPHOST4.get_ptr(&peer[0]) {
            // SAFETY: pointer from a successful lookup, read at once.
            return unsafe { (*v).identity };
        }
        let key = Key::new(32, peer[0].to_ne_bytes());
        if let Some(v) = IPCACHE4.get(&key) {
            return v.identity;
        }
    } else {
        if let Some(v) = IPHOST6.get_ptr(peer) {
            // SAFETY: pointer from a successful lookup, read at once.
            return unsafe { (*v).identity };
        }
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = peer[i].to_ne_bytes();
            bytes[i * 4] = w[0];
            bytes[i * 4 + 1] = w[1];
            bytes[i * 4 + 2] = w[2];
            bytes[i * 4 + 3] = w[3];
            i += 1;
        }
        let key = Key::new(128, bytes);
        if let Some(v) = IPCACHE6.get(&key) {
            return v.identity;
        }
    }
    IDENTITY_WORLD
}

/// The policy entry of the longest prefix matching the key; action 0 (neither allow nor deny)
/// when none matches. (A plain value, not an `Option`: the verifier refuses code that reads the
/// undefined payload LLVM may keep in registers for `None`.)
#[inline(always)]
fn lookup(endpoint_id: u32, identity: u32, dir: u8, protocol: u8, port: u16) -> PolicyEntry {
    let key = PolicyKey {
        endpoint_id,
        identity,
        direction: dir,
        protocol,
        dport_be: port.to_be(),
    };
    if let Some(e) = POLICY_EXACT.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup, copied out at once.
        return unsafe { *e };
    }
    match POLICY.get(&Key::new(POLICY_PREFIX_FULL_BITS, key)) {
        Some(e) => *e,
        None => PolicyEntry::default(),
    }
}

/// Decides the verdict for a connection of endpoint `ep` in direction `dir` with `peer`.
#[inline(always)]
pub fn decide(
    ep: &EndpointInfo,
    dir: u8,
    peer: &[u32; 4],
    family: u8,
    protocol: u8,
    port: u16,
    cfg: &DatapathConfig,
) -> Decision {
    let peer_id = peer_identity(peer, family);
    let specific = lookup(ep.endpoint_id, peer_id, dir, protocol, port);
    let (enforced_bit, no_any_deny) = if dir == DIR_INGRESS {
        (EP_F_INGRESS_ENFORCED, EP_F_INGRESS_NO_ANY_DENY)
    } else {
        (EP_F_EGRESS_ENFORCED, EP_F_EGRESS_NO_ANY_DENY)
    };
    // The wildcard entry cannot change a specific deny (deny wins, the specific one first), nor
    // a specific allow when the endpoint has no wildcard deny in this direction (an allow from
    // either is the specific one's): a new connection then costs one policy lookup, not two.
    let wildcard = if specific.action == ACTION_DENY
        || (specific.action == ACTION_ALLOW && ep.flags & no_any_deny != 0)
    {
        PolicyEntry::default()
    } else {
        lookup(ep.endpoint_id, IDENTITY_ANY, dir, protocol, port)
    };

    let mut d = Decision {
        verdict: VERDICT_FORWARDED,
        reason: DROP_NONE,
        rule_id: 0,
        match_type: MATCH_NONE,
        peer_identity: peer_id,
        audit: false,
    };
    if specific.action == ACTION_DENY || wildcard.action == ACTION_DENY {
        let e = if specific.action == ACTION_DENY {
            &specific
        } else {
            &wildcard
        };
        d.verdict = VERDICT_DROPPED;
        d.reason = DROP_POLICY_DENY;
        d.rule_id = e.rule_id;
        d.match_type = e.match_type as u8;
    } else if specific.action == ACTION_ALLOW || wildcard.action == ACTION_ALLOW {
        let e = if specific.action == ACTION_ALLOW {
            &specific
        } else {
            &wildcard
        };
        d.rule_id = e.rule_id;
        d.match_type = e.match_type as u8;
    } else if ep.flags & enforced_bit != 0 {
        d.verdict = VERDICT_DROPPED;
        d.reason = DROP_POLICY_DENIED;
    }
    if d.verdict == VERDICT_DROPPED && (ep.flags & EP_F_AUDIT != 0 || cfg.flags & CFG_F_AUDIT != 0)
    {
        d.verdict = VERDICT_AUDIT;
        d.audit = true;
    }
    d
}
