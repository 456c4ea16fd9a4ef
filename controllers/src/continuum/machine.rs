//! The pure core of Continuum: what to do next, from the Continuum spec, the persisted state and
//! what the controller observes of each region. No I/O here.
//!
//! A switchover is a persisted state machine. The order (Catalyst seed §8.2):
//!
//! `Validate` (the lease holder acts, the source is the active region) → `Demote` the old
//! primary (fenced read-only, then stopped and caught up; skipped when unreachable) → `Drain`
//! (`HTTPRoute` weights of the old region to 0 over the drain time) → `FlipDns` (the
//! `dns-failover` value names the new region under the current epoch) → `MoveLease` (the lease
//! is released to the new region; its controller takes it with a new epoch) → `Promote` the new
//! primary → `Restore` weights → `Audit` → done.
//!
//! Every step is idempotent and the current step is written (with the epoch it ran under)
//! before the step's effect is considered done, so a controller killed at any point resumes from
//! the recorded step — whoever holds the lease next runs it again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::{ContinuumSpec, SwitchoverRecord};

/// One step of a switchover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    /// Check the lease holder acts and the source is the active region.
    Validate,
    /// Fence and demote the old primary.
    Demote,
    /// Drain `HTTPRoute` weights of the old region.
    Drain,
    /// Point DNS at the new region.
    FlipDns,
    /// Hand the lease to the new region.
    MoveLease,
    /// Promote the new primary.
    Promote,
    /// Restore `HTTPRoute` weights on the new region.
    Restore,
    /// Publish the audit event and record the switchover.
    Audit,
}

impl Step {
    /// The step after this one (`None` after `Audit`).
    pub fn next(self) -> Option<Self> {
        Some(match self {
            Self::Validate => Self::Demote,
            Self::Demote => Self::Drain,
            Self::Drain => Self::FlipDns,
            Self::FlipDns => Self::MoveLease,
            Self::MoveLease => Self::Promote,
            Self::Promote => Self::Restore,
            Self::Restore => Self::Audit,
            Self::Audit => return None,
        })
    }

    /// Name as shown in status (`kubectl get continuum` Step column).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "Validate",
            Self::Demote => "Demote",
            Self::Drain => "Drain",
            Self::FlipDns => "FlipDns",
            Self::MoveLease => "MoveLease",
            Self::Promote => "Promote",
            Self::Restore => "Restore",
            Self::Audit => "Audit",
        }
    }
}

/// Why a switchover runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Requested (`spec.primary` changed, or `catalyst-controllers continuum switchover`).
    Manual,
    /// The active region's primary was lost.
    PrimaryLost,
    /// `spec.primary` returned and `spec.switchover.failback` is on.
    Failback,
}

impl Reason {
    /// Kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::PrimaryLost => "primary-lost",
            Self::Failback => "failback",
        }
    }
}

/// A switchover in progress (persisted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// From region.
    pub from: String,
    /// To region.
    pub to: String,
    /// Why.
    pub reason: Reason,
    /// The step to run next.
    pub step: Step,
    /// Epoch the last step ran under.
    pub epoch: u64,
    /// Start, Unix milliseconds.
    pub started_ms: u64,
    /// When the old primary stopped taking writes (Unix ms), once demoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_stopped_ms: Option<u64>,
    /// When the new primary took writes (Unix ms), once promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_resumed_ms: Option<u64>,
    /// WAL position the new primary must have replayed before promotion (from the demotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demoted_lsn: Option<String>,
    /// `CloudNativePG`: the old primary Cluster's demotion token, for the target's promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_token: Option<String>,
    /// Whether the old primary was reachable at demotion (`false`: fenced by DNS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_reachable: Option<bool>,
}

/// A switchover requested from the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Target region.
    pub to: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// The persisted state of one Continuum (NATS KV `continuum-state`, CR status in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Schema id `catalyst.continuum-state/v1`.
    pub schema: String,
    /// The region serving writes.
    pub active_region: String,
    /// Last epoch that changed this state.
    pub epoch: u64,
    /// The `spec.primary` this state last acted on (a change requests a switchover).
    pub spec_primary: String,
    /// The switchover in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<Switchover>,
    /// A pending manual request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// Last switchovers, newest first (at most 10).
    #[serde(default)]
    pub history: Vec<SwitchoverRecord>,
}

/// Schema id of [`State`].
pub const STATE_SCHEMA: &str = "catalyst.continuum-state/v1";

impl State {
    /// The initial state: `spec.primary` active, nothing in progress.
    pub fn initial(spec: &ContinuumSpec) -> Self {
        Self {
            schema: STATE_SCHEMA.into(),
            active_region: spec.primary.clone(),
            epoch: 0,
            spec_primary: spec.primary.clone(),
            in_progress: None,
            request: None,
            history: Vec::new(),
        }
    }
}

/// What the controller sees of one region's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RegionView {
    /// The database answered the last probes (after the configured number of failures, down).
    pub up: bool,
    /// It is a standby (in recovery); `None` when unknown.
    pub standby: Option<bool>,
    /// Replication lag behind the primary, bytes (standbys).
    pub lag_bytes: Option<u64>,
}

/// The decision of one reconcile pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Steady,
    /// Continue the switchover in progress at its recorded step.
    Resume,
    /// Start a switchover.
    Start {
        /// From region.
        from: String,
        /// To region.
        to: String,
        /// Why.
        reason: Reason,
    },
    /// A switchover is wanted but cannot start (e.g. no eligible standby); said in status.
    Blocked(String),
}

/// Decide what to do (only the lease holder calls this).
pub fn decide(
    spec: &ContinuumSpec,
    state: &State,
    view: &BTreeMap<String, RegionView>,
) -> Decision {
    if state.in_progress.is_some() {
        return Decision::Resume;
    }
    let active = &state.active_region;
    let eligible = |r: &str| {
        r != active
            && spec.regions.iter().any(|x| x.name == r)
            && view.get(r).is_some_and(|v| {
                v.up && v.standby != Some(false)
                    && v.lag_bytes.unwrap_or(0) <= spec.switchover.max_replication_lag_bytes
            })
    };
    // 1. Manual: a command-line request, or spec.primary changed since last acted on.
    let requested = state
        .request
        .as_ref()
        .map(|r| r.to.clone())
        .or_else(|| (spec.primary != state.spec_primary).then(|| spec.primary.clone()));
    if let Some(to) = requested {
        if &to == active {
            return Decision::Steady;
        }
        if !spec.regions.iter().any(|x| x.name == to) {
            return Decision::Blocked(format!("switchover target `{to}` is not a region"));
        }
        if !eligible(&to) {
            return Decision::Blocked(format!(
                "switchover to `{to}` waits: its database is not an up-to-date, reachable standby"
            ));
        }
        return Decision::Start {
            from: active.clone(),
            to,
            reason: Reason::Manual,
        };
    }
    // 2. Automatic failover when the active primary is lost.
    let active_up = view.get(active.as_str()).is_some_and(|v| v.up);
    if !active_up {
        if !spec.switchover.automatic {
            return Decision::Blocked(format!(
                "primary region `{active}` is down and automatic failover is off"
            ));
        }
        // Prefer the order of spec.regions among eligible standbys.
        return match spec.regions.iter().find(|r| eligible(&r.name)) {
            Some(r) => Decision::Start {
                from: active.clone(),
                to: r.name.clone(),
                reason: Reason::PrimaryLost,
            },
            None => Decision::Blocked(format!(
                "primary region `{active}` is down and no standby is eligible"
            )),
        };
    }
    // 3. Failback to spec.primary once it is back as an up-to-date standby.
    if spec.switchover.failback && &spec.primary != active && eligible(&spec.primary) {
        return Decision::Start {
            from: active.clone(),
            to: spec.primary.clone(),
            reason: Reason::Failback,
        };
    }
    Decision::Steady
}

/// Begin a switchover in `state` (clears a served request, records spec.primary as acted on).
pub fn begin(
    state: &mut State,
    spec: &ContinuumSpec,
    from: String,
    to: String,
    reason: Reason,
    epoch: u64,
    now_ms: u64,
) {
    state.request = None;
    state.spec_primary.clone_from(&spec.primary);
    state.epoch = epoch;
    state.in_progress = Some(Switchover {
        from,
        to,
        reason,
        step: Step::Validate,
        epoch,
        started_ms: now_ms,
        writes_stopped_ms: None,
        writes_resumed_ms: None,
        demoted_lsn: None,
        promotion_token: None,
        old_reachable: None,
    });
}

/// Record that `step` completed under `epoch`; at the end, the switchover becomes history and
/// the target the active region.
pub fn complete(state: &mut State, epoch: u64, now_ms: u64, finished: String) {
    let Some(sw) = state.in_progress.as_mut() else {
        return;
    };
    sw.epoch = epoch;
    state.epoch = epoch;
    if sw.step == Step::FlipDns {
        // From here on, DNS answers with the new region.
        state.active_region.clone_from(&sw.to);
    }
    if let Some(n) = sw.step.next() {
        sw.step = n;
    } else {
        let sw = state.in_progress.take().unwrap_or_else(|| unreachable!());
        state.active_region.clone_from(&sw.to);
        let gap = match (sw.writes_stopped_ms, sw.writes_resumed_ms) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        state.history.insert(
            0,
            SwitchoverRecord {
                from: sw.from,
                to: sw.to,
                reason: sw.reason.as_str().into(),
                finished,
                duration_ms: now_ms.saturating_sub(sw.started_ms),
                write_gap_ms: gap,
            },
        );
        state.history.truncate(10);
    }
}

#[cfg(test)]
mod tests;
