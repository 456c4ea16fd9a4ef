//! Status conditions (the `metav1.Condition` shape, with a schema of our own so the CRDs do not
//! depend on k8s-openapi's optional schemars support).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// One status condition, as `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// One CamelCase word saying why (e.g. `Reconciled`, `ApplyFailed`).
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` the condition was computed for.
    #[serde(default)]
    pub observed_generation: i64,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
}

/// Sets `cond` in `conditions`, keeping the old transition time when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut cond: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        if old.status == cond.status {
            cond.last_transition_time
                .clone_from(&old.last_transition_time);
        }
        *old = cond;
    } else {
        conditions.push(cond);
    }
}
