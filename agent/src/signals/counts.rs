//! Per-endpoint flow and drop counters, fed by the flow pipeline and read once per window by
//! the signal engine.
//!
//! The pipeline (the single writer) caches one `Arc` of counters per endpoint, so counting an
//! event is a small-integer hash lookup and a few relaxed atomic increments. The engine prunes
//! endpoints that no longer exist and bumps a generation number so the pipeline drops its cache.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, DROP_POLICY_DENIED, DROP_POLICY_DENY, FlowEvent, VERDICT_AUDIT,
    VERDICT_DROPPED,
};

/// One endpoint's counters since it was first seen.
#[derive(Debug, Default)]
struct Cell {
    flows: AtomicU64,
    ingress_drops: AtomicU64,
    egress_drops: AtomicU64,
    deny_rule_drops: AtomicU64,
    audited: AtomicU64,
}

/// A plain reading of one endpoint's counters (or of their growth over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Flow events of the endpoint (policy verdicts, drops, traces).
    pub flows: u64,
    /// Policy drops (`POLICY_DENIED` or `POLICY_DENY`) in the ingress direction.
    pub ingress_drops: u64,
    /// Policy drops in the egress direction.
    pub egress_drops: u64,
    /// Policy drops by a deny rule (`POLICY_DENY`, 181); the rest were default deny (133).
    pub deny_rule_drops: u64,
    /// Would-be policy drops forwarded under audit mode (`AUDIT`).
    pub audited: u64,
}

impl Counts {
    /// Policy drops, both directions.
    pub fn policy_drops(&self) -> u64 {
        self.ingress_drops + self.egress_drops
    }

    /// Growth from `earlier` to `self` (counters only grow; a reset reads as zero growth).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            flows: self.flows.saturating_sub(earlier.flows),
            ingress_drops: self.ingress_drops.saturating_sub(earlier.ingress_drops),
            egress_drops: self.egress_drops.saturating_sub(earlier.egress_drops),
            deny_rule_drops: self.deny_rule_drops.saturating_sub(earlier.deny_rule_drops),
            audited: self.audited.saturating_sub(earlier.audited),
        }
    }
}

/// The counters of every endpoint, shared by the pipeline and the signal engine.
#[derive(Debug, Default)]
pub struct FlowCounts {
    cells: RwLock<HashMap<u32, Arc<Cell>>>,
    generation: AtomicU64,
}

impl FlowCounts {
    /// A recorder for the flow pipeline.
    pub fn recorder(self: &Arc<Self>) -> CountRecorder {
        CountRecorder {
            shared: self.clone(),
            local: HashMap::new(),
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Current totals of every endpoint seen.
    pub fn read(&self) -> HashMap<u32, Counts> {
        let cells = self
            .cells
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cells
            .iter()
            .map(|(id, c)| {
                (
                    *id,
                    Counts {
                        flows: c.flows.load(Ordering::Relaxed),
                        ingress_drops: c.ingress_drops.load(Ordering::Relaxed),
                        egress_drops: c.egress_drops.load(Ordering::Relaxed),
                        deny_rule_drops: c.deny_rule_drops.load(Ordering::Relaxed),
                        audited: c.audited.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    /// Forgets endpoints for which `keep` is false (they no longer exist).
    pub fn retain(&self, keep: impl Fn(u32) -> bool) {
        let mut cells = self
            .cells
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = cells.len();
        cells.retain(|id, _| keep(*id));
        if cells.len() != before {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn cell(&self, id: u32) -> Arc<Cell> {
        self.cells
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone()
    }
}

/// Counts events into [`FlowCounts`]; owned by the flow pipeline.
#[derive(Debug)]
pub struct CountRecorder {
    shared: Arc<FlowCounts>,
    local: HashMap<u32, Arc<Cell>>,
    generation: u64,
}

impl CountRecorder {
    /// Counts one datapath event against its local endpoint.
    pub fn observe(&mut self, ev: &FlowEvent) {
        if ev.endpoint_id == 0 {
            return;
        }
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.local.clear();
            self.generation = generation;
        }
        let shared = &self.shared;
        let cell = self
            .local
            .entry(ev.endpoint_id)
            .or_insert_with(|| shared.cell(ev.endpoint_id));
        cell.flows.fetch_add(1, Ordering::Relaxed);
        let policy_drop = matches!(ev.drop_reason, DROP_POLICY_DENIED | DROP_POLICY_DENY);
        if ev.verdict == VERDICT_DROPPED && policy_drop {
            match ev.direction {
                DIR_INGRESS => cell.ingress_drops.fetch_add(1, Ordering::Relaxed),
                DIR_EGRESS => cell.egress_drops.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            if ev.drop_reason == DROP_POLICY_DENY {
                cell.deny_rule_drops.fetch_add(1, Ordering::Relaxed);
            }
        } else if ev.verdict == VERDICT_AUDIT {
            cell.audited.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use catalyst_policy::datapath::{EVENT_DROP, EVENT_POLICY_VERDICT, VERDICT_FORWARDED};

    use super::*;

    fn ev(endpoint_id: u32, verdict: u8, reason: u8, direction: u8) -> FlowEvent {
        FlowEvent {
            kind: if verdict == VERDICT_DROPPED {
                EVENT_DROP
            } else {
                EVENT_POLICY_VERDICT
            },
            endpoint_id,
            verdict,
            drop_reason: reason,
            direction,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn counts_flows_and_policy_drops_per_endpoint() {
        let counts = Arc::new(FlowCounts::default());
        let mut r = counts.recorder();
        r.observe(&ev(7, VERDICT_FORWARDED, 0, DIR_INGRESS));
        r.observe(&ev(7, VERDICT_DROPPED, DROP_POLICY_DENIED, DIR_INGRESS));
        r.observe(&ev(7, VERDICT_DROPPED, DROP_POLICY_DENY, DIR_EGRESS));
        // Not a policy drop (malformed packet): a flow, not a policy drop.
        r.observe(&ev(7, VERDICT_DROPPED, 134, DIR_INGRESS));
        r.observe(&ev(8, VERDICT_AUDIT, DROP_POLICY_DENIED, DIR_EGRESS));
        r.observe(&ev(0, VERDICT_DROPPED, DROP_POLICY_DENIED, DIR_EGRESS));
        let read = counts.read();
        assert_eq!(
            read[&7],
            Counts {
                flows: 4,
                ingress_drops: 1,
                egress_drops: 1,
                deny_rule_drops: 1,
                audited: 0
            }
        );
        assert_eq!(read[&8].audited, 1);
        assert_eq!(read[&8].policy_drops(), 0);
        assert!(!read.contains_key(&0));
    }

    #[test]
    fn pruned_endpoints_start_from_zero_when_they_come_back() {
        let counts = Arc::new(FlowCounts::default());
        let mut r = counts.recorder();
        r.observe(&ev(7, VERDICT_FORWARDED, 0, DIR_INGRESS));
        counts.retain(|id| id != 7);
        assert!(counts.read().is_empty());
        r.observe(&ev(7, VERDICT_FORWARDED, 0, DIR_INGRESS));
        assert_eq!(counts.read()[&7].flows, 1);
        let later = Counts {
            flows: 5,
            ..Counts::default()
        };
        assert_eq!(later.since(&counts.read()[&7]).flows, 4);
        assert_eq!(counts.read()[&7].since(&later).flows, 0);
    }
}
