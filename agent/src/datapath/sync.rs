//! Applies a [`DesiredState`] to the maps as a diff.
//!
//! Order matters twice:
//!
//! - **Revocation is exact.** Every insert and update happens first, then stale entries are
//!   removed, and only then is the policy revision bumped. A packet that re-evaluates its
//!   connection and caches the verdict under the new revision therefore sees only the new state:
//!   nothing it can read under the new revision is about to be removed. (Bumping before the
//!   deletes let a busy flow re-evaluate against a stale allow entry and cache "allow" under the
//!   new revision, so a revoked connection stayed open.) Verdicts cached while the update was in
//!   flight carry the old revision and are re-evaluated on their next packet.
//! - **Churn without disruption.** Policy puts go longest prefix first and deletes shortest
//!   prefix first. A flow that both the old and the new policy allow is then allowed by the
//!   longest-prefix lookup at every instant: while its deciding old entry is present, no shorter
//!   old entry can win; once it is gone, every shorter old entry is gone too; and a new entry
//!   never goes in before the longer new entries that shadow it. (The compiler resolves
//!   deny-over-allow within each revision, so each state's own longest match is its verdict.)

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use catalyst_policy::PolicyRow as Row;

use catalyst_policy::datapath::{DATAPATH_SCHEMA, DatapathConfig, PolicyEntry, PolicyKey};

/// A policy map entry keyed by (prefix length, key).
type PolicyRow = ((u32, PolicyKey), PolicyEntry);

use super::store::{DesiredState, MapStore, StoreError, by_endpoint};

/// What [`apply`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Entries inserted or updated.
    pub upserted: usize,
    /// Entries removed.
    pub removed: usize,
    /// Entries left as they were.
    pub unchanged: usize,
    /// Policy revision now in force.
    pub revision: u32,
}

struct Plan<K, V> {
    put: Vec<(K, V)>,
    del: Vec<K>,
    unchanged: usize,
}

fn plan<K: Eq + Hash + Clone, V: PartialEq + Clone>(
    current: Vec<(K, V)>,
    desired: &[(K, V)],
) -> Plan<K, V> {
    let mut cur: HashMap<K, V> = current.into_iter().collect();
    let mut put = Vec::new();
    let mut unchanged = 0;
    for (k, v) in desired {
        match cur.remove(k) {
            Some(old) if old == *v => unchanged += 1,
            _ => put.push((k.clone(), v.clone())),
        }
    }
    Plan {
        put,
        del: cur.into_keys().collect(),
        unchanged,
    }
}

/// Plans the policy map per endpoint: endpoints whose entries are the same `Arc` on both sides
/// are unchanged without a look at their entries.
fn plan_policy(
    current: &BTreeMap<u32, Arc<Vec<Row>>>,
    desired: &BTreeMap<u32, Arc<Vec<Row>>>,
) -> Plan<(u32, PolicyKey), PolicyEntry> {
    let mut out = Plan {
        put: Vec::new(),
        del: Vec::new(),
        unchanged: 0,
    };
    let rows = |v: &Arc<Vec<Row>>| -> Vec<PolicyRow> {
        v.iter().map(|(len, k, e)| ((*len, *k), *e)).collect()
    };
    for (id, want) in desired {
        match current.get(id) {
            Some(have) if Arc::ptr_eq(have, want) => out.unchanged += want.len(),
            Some(have) => {
                // Policy entries are unique per (prefix length, key).
                let p = plan(rows(have), &rows(want));
                out.put.extend(p.put);
                out.del.extend(p.del);
                out.unchanged += p.unchanged;
            }
            None => out.put.extend(rows(want)),
        }
    }
    for (id, have) in current {
        if !desired.contains_key(id) {
            out.del.extend(have.iter().map(|(len, k, _)| (*len, *k)));
        }
    }
    out
}

/// Makes the maps in `store` equal to `desired`, bumping the policy revision when anything that
/// affects verdicts changed (always on the first sync of a process, so adopted conntrack entries
/// are re-evaluated under the policy this process computed).
pub fn apply(
    store: &mut dyn MapStore,
    desired: &DesiredState,
    force_revision_bump: bool,
) -> Result<SyncReport, StoreError> {
    apply_diff(store, None, desired, force_revision_bump)
}

/// Like [`apply`], but diffs against `previous` — the state this process applied last — instead
/// of reading every entry back from the kernel. The maps must not have been changed by anyone
/// else since (the agent owns them); the first sync of a process uses [`apply`] to adopt what is
/// pinned.
pub fn apply_diff(
    store: &mut dyn MapStore,
    previous: Option<&DesiredState>,
    desired: &DesiredState,
    force_revision_bump: bool,
) -> Result<SyncReport, StoreError> {
    let mut report = SyncReport::default();

    let (cur_v4, cur_v6, cur_policy, cur_eps) = match previous {
        Some(p) => (
            p.ipcache_v4.clone(),
            p.ipcache_v6.clone(),
            p.policy.clone(),
            p.endpoints.clone(),
        ),
        None => (
            store.ipcache_v4()?,
            store.ipcache_v6()?,
            by_endpoint(store.policy()?),
            store.endpoints()?,
        ),
    };
    let v4 = plan(cur_v4, &desired.ipcache_v4);
    let v6 = plan(cur_v6, &desired.ipcache_v6);
    let mut pol = plan_policy(&cur_policy, &desired.policy);
    pol.put.sort_by_key(|((len, _), _)| std::cmp::Reverse(*len));
    pol.del.sort_by_key(|(len, _)| *len);
    let eps = plan(cur_eps, &desired.endpoints);

    for (net, e) in &v4.put {
        store.put_ipcache_v4(*net, *e)?;
    }
    for (net, e) in &v6.put {
        store.put_ipcache_v6(*net, *e)?;
    }
    for ((len, k), v) in &pol.put {
        store.put_policy(*len, *k, *v)?;
    }
    for (ifindex, info) in &eps.put {
        store.put_endpoint(*ifindex, *info)?;
    }

    for ifindex in &eps.del {
        store.del_endpoint(*ifindex)?;
    }
    for (len, k) in &pol.del {
        store.del_policy(*len, *k)?;
    }
    for net in &v4.del {
        store.del_ipcache_v4(*net)?;
    }
    for net in &v6.del {
        store.del_ipcache_v6(*net)?;
    }

    let old = store.config()?;
    let changed = !(v4.put.is_empty()
        && v6.put.is_empty()
        && pol.put.is_empty()
        && eps.put.is_empty()
        && v4.del.is_empty()
        && v6.del.is_empty()
        && pol.del.is_empty()
        && eps.del.is_empty())
        || old.flags != desired.config_flags;
    let revision = if changed || force_revision_bump {
        old.policy_revision.wrapping_add(1).max(1)
    } else {
        old.policy_revision
    };
    let cfg = DatapathConfig {
        policy_revision: revision,
        flags: desired.config_flags,
        event_interval_ns: desired.event_interval_ns,
        schema: DATAPATH_SCHEMA,
        pad: 0,
        ct_timeouts: desired.ct_timeouts,
    };
    if cfg != old {
        store.set_config(cfg)?;
    }

    report.upserted = v4.put.len() + v6.put.len() + pol.put.len() + eps.put.len();
    report.removed = v4.del.len() + v6.del.len() + pol.del.len() + eps.del.len();
    report.unchanged = v4.unchanged + v6.unchanged + pol.unchanged + eps.unchanged;
    report.revision = revision;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use catalyst_policy::datapath::{
        ACTION_ALLOW, CtTimeouts, DIR_INGRESS, EndpointInfo, IpcacheEntry, PROTO_TCP, PolicyEntry,
        PolicyKey,
    };

    use super::*;
    use crate::datapath::MemoryMaps;

    fn entry(port: u16) -> (u32, PolicyKey, PolicyEntry) {
        (
            96,
            PolicyKey {
                endpoint_id: 7,
                identity: 256,
                direction: DIR_INGRESS,
                protocol: PROTO_TCP,
                dport_be: port.to_be(),
            },
            PolicyEntry {
                action: ACTION_ALLOW,
                rule_id: 1,
                match_type: 2,
                pad: 0,
            },
        )
    }

    fn desired(ports: &[u16]) -> DesiredState {
        DesiredState {
            endpoints: vec![(
                42,
                EndpointInfo {
                    endpoint_id: 7,
                    identity: 300,
                    flags: 1,
                    ..EndpointInfo::default()
                },
            )],
            ipcache_v4: vec![(
                "10.0.0.2/32".parse().unwrap(),
                IpcacheEntry {
                    identity: 256,
                    flags: 0,
                },
            )],
            ipcache_v6: vec![],
            policy: by_endpoint(ports.iter().map(|p| entry(*p))),
            config_flags: 0,
            event_interval_ns: 1,
            ct_timeouts: CtTimeouts::default(),
        }
    }

    #[test]
    fn puts_then_deletes_then_the_revision_bump() {
        let mut maps = MemoryMaps::default();
        apply(&mut maps, &desired(&[80, 443]), true).unwrap();
        maps.log.clear();
        let r = apply(&mut maps, &desired(&[443, 8080]), false).unwrap();
        assert_eq!(maps.log, ["put policy", "del policy", "config"]);
        assert_eq!(r.upserted, 1);
        assert_eq!(r.removed, 1);
        assert_eq!(r.revision, 2);
        let ports: Vec<u16> = maps
            .policy()
            .unwrap()
            .iter()
            .map(|(_, k, _)| u16::from_be(k.dport_be))
            .collect();
        assert_eq!(ports.len(), 2);
        assert!(ports.contains(&443) && ports.contains(&8080));
    }

    #[test]
    fn policy_puts_go_longest_prefix_first_and_deletes_shortest_first() {
        let row = |len: u32, port: u16| {
            let (_, mut k, e) = entry(port);
            if len < 96 {
                k.dport_be = 0;
            }
            (len, k, e)
        };
        let state = |rows: Vec<(u32, PolicyKey, PolicyEntry)>| {
            let mut d = desired(&[]);
            d.policy = by_endpoint(rows);
            d
        };
        let mut maps = MemoryMaps::default();
        apply(
            &mut maps,
            &state(vec![row(72, 0), row(80, 0), row(96, 80)]),
            true,
        )
        .unwrap();
        maps.policy_log.clear();
        apply(
            &mut maps,
            &state(vec![row(88, 0), row(96, 443), row(76, 0)]),
            false,
        )
        .unwrap();
        assert_eq!(
            maps.policy_log,
            [
                ("put", 96),
                ("put", 88),
                ("put", 76),
                ("del", 72),
                ("del", 80),
                ("del", 96)
            ]
        );
    }

    #[test]
    fn unchanged_state_keeps_the_revision_unless_forced() {
        let mut maps = MemoryMaps::default();
        apply(&mut maps, &desired(&[80]), true).unwrap();
        maps.log.clear();
        let r = apply(&mut maps, &desired(&[80]), false).unwrap();
        assert!(maps.log.is_empty(), "{:?}", maps.log);
        assert_eq!(r.revision, 1);
        let r = apply(&mut maps, &desired(&[80]), true).unwrap();
        assert_eq!(
            r.revision, 2,
            "a restarted agent re-evaluates adopted connections"
        );
    }

    #[test]
    fn diff_against_the_previous_state_touches_only_changes() {
        let mut maps = MemoryMaps::default();
        let first = desired(&[80, 443]);
        apply(&mut maps, &first, true).unwrap();
        maps.log.clear();
        let r = apply_diff(&mut maps, Some(&first), &desired(&[443, 8080]), false).unwrap();
        assert_eq!(maps.log, ["put policy", "del policy", "config"]);
        assert_eq!((r.upserted, r.removed), (1, 1));
        let mut from_kernel = maps.clone();
        from_kernel.log.clear();
        apply(&mut from_kernel, &desired(&[443, 8080]), false).unwrap();
        assert!(from_kernel.log.is_empty(), "maps equal the desired state");
    }

    #[test]
    fn adopted_state_is_diffed_not_flushed() {
        let mut maps = MemoryMaps::default();
        apply(&mut maps, &desired(&[80, 443]), true).unwrap();
        // A new process adopts the pinned maps and applies the same policy.
        maps.log.clear();
        let r = apply(&mut maps, &desired(&[80, 443]), true).unwrap();
        assert_eq!(r.upserted, 0);
        assert_eq!(r.removed, 0);
        assert_eq!(maps.log, ["config"]);
    }
}
