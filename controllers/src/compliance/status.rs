//! The compliance part of the Environment and Organization status ([`compliance_status`], the
//! one derivation both modes use). Standalone mode writes it as files under `<output>/status/`
//! (`environment-<org>-<env>.compliance.yaml`, `organization-<org>.compliance.yaml`; the tenancy
//! controller owns `organization-<org>.yaml`); Kubernetes mode patches it into the resources'
//! status (`kube.rs`).

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{aggregate::ScoreDoc, row::token, score::GateState};
use crate::crd::{ComplianceGate, Condition, ConditionStatus, set_condition};

/// The condition type the aggregator owns.
pub const COMPLIANT: &str = "Compliant";

/// What the aggregator puts in an Environment's or Organization's status.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplianceStatus {
    /// Score 0–100 (`None`: nothing applies).
    pub score: Option<f64>,
    /// Scored applications.
    pub applications: u32,
    /// Workloads.
    pub workloads: u32,
    /// `<environment>/<application>: <check>` of every failing enforcing check.
    pub failing_enforcing_checks: Vec<String>,
    /// The re-score gate (Environment).
    pub gate: Option<ComplianceGate>,
    /// The `Compliant` condition (its transition time is now; [`set_condition`] keeps the old
    /// one when the status did not change).
    pub condition: Condition,
}

impl ComplianceStatus {
    /// The status fields as JSON (camelCase, as the CRDs spell them), without conditions.
    pub fn fields(&self) -> Value {
        json!({
            "score": self.score,
            "applications": self.applications,
            "workloads": self.workloads,
            "failingEnforcingChecks": self.failing_enforcing_checks,
            // `policy: null` spelled out: a merge patch must remove an earlier policy name.
            "gate": self.gate.as_ref().map(|g| json!({
                "state": g.state,
                "minimumScore": g.minimum_score,
                "policy": g.policy,
            })),
        })
    }
}

/// The compliance status of an Environment or Organization document.
pub fn compliance_status(d: &ScoreDoc) -> ComplianceStatus {
    let failing: Vec<String> = d
        .failing_enforcing
        .iter()
        .map(|f| format!("{}/{}: {}", f.environment, f.application, f.check))
        .collect();
    let (status, reason, message) = match d.gate.as_ref().map(|g| g.state) {
        Some(GateState::Fail) if !failing.is_empty() => (
            ConditionStatus::False,
            "EnforcingCheckFailed",
            format!("failing enforcing checks: {}", failing.join(", ")),
        ),
        Some(GateState::Fail) => (
            ConditionStatus::False,
            "ScoreBelowMinimum",
            format!(
                "score {} below {}",
                d.score.unwrap_or(0.0),
                d.gate.as_ref().map_or(0.0, |g| g.minimum_score)
            ),
        ),
        Some(GateState::Pass) => (ConditionStatus::True, "GatePassed", String::new()),
        Some(GateState::Disabled) => (ConditionStatus::Unknown, "GateDisabled", String::new()),
        Some(GateState::Pending) => (ConditionStatus::Unknown, "NotScored", String::new()),
        None if failing.is_empty() => (ConditionStatus::True, "NoEnforcingFailure", String::new()),
        None => (
            ConditionStatus::False,
            "EnforcingCheckFailed",
            format!("failing enforcing checks: {}", failing.join(", ")),
        ),
    };
    ComplianceStatus {
        score: d.score,
        applications: d.applications,
        workloads: d.workloads,
        failing_enforcing_checks: failing,
        gate: d.gate.as_ref().map(|g| ComplianceGate {
            state: g.state.as_str().to_owned(),
            minimum_score: g.minimum_score,
            policy: g.policy.clone(),
        }),
        condition: Condition {
            type_: COMPLIANT.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: 0,
            last_transition_time: jiff::Timestamp::now().to_string(),
        },
    }
}

fn previous_conditions(path: &Path) -> Vec<Condition> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_norway::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v["status"]["conditions"].clone()).ok())
        .unwrap_or_default()
}

/// Writes the status file of every Environment and Organization document whose content
/// changed; removes those of vanished ones. Returns the files written.
///
/// # Errors
/// A file cannot be written.
pub fn write(out: &Path, docs: &BTreeMap<String, ScoreDoc>) -> anyhow::Result<usize> {
    let dir = out.join("status");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let mut wanted = std::collections::BTreeSet::new();
    let mut written = 0;
    for d in docs.values() {
        let (file, kind, api) = match d.level {
            "environment" => (
                format!(
                    "environment-{}-{}.compliance.yaml",
                    token(d.organization.as_deref().unwrap_or("")),
                    token(d.environment.as_deref().unwrap_or(""))
                ),
                "Environment",
                "catalyst.openova.io/v1",
            ),
            "organization" => (
                format!(
                    "organization-{}.compliance.yaml",
                    token(d.organization.as_deref().unwrap_or(""))
                ),
                "Organization",
                "orgs.openova.io/v1",
            ),
            _ => continue,
        };
        let path = dir.join(&file);
        wanted.insert(file);
        let mut conditions = previous_conditions(&path);
        let cs = compliance_status(d);
        set_condition(&mut conditions, cs.condition.clone());
        let mut status = cs.fields();
        status["conditions"] = json!(conditions);
        let doc = json!({
            "apiVersion": api,
            "kind": kind,
            "metadata": {"labels": {
                "openova.io/sovereign": d.sovereign,
                "openova.io/organization": d.organization,
                "openova.io/environment": d.environment,
            }},
            "status": status,
        });
        let text = serde_norway::to_string(&doc)?;
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        written += 1;
    }
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".compliance.yaml") && !wanted.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(written)
}
