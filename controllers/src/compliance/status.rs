//! Standalone mode: the compliance part of the Environment and Organization status, as files
//! under `<output>/status/` (`environment-<org>-<env>.compliance.yaml`,
//! `organization-<org>.compliance.yaml`; the tenancy controller owns `organization-<org>.yaml`).

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use serde_json::json;

use super::{aggregate::ScoreDoc, row::token, score::GateState};
use crate::crd::{Condition, ConditionStatus, set_condition};

fn previous_conditions(path: &Path) -> Vec<Condition> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v["status"]["conditions"].clone()).ok())
        .unwrap_or_default()
}

#[expect(
    clippy::too_many_lines,
    reason = "file name, condition and document of one level, read top to bottom"
)]
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
            None if failing.is_empty() => {
                (ConditionStatus::True, "NoEnforcingFailure", String::new())
            }
            None => (
                ConditionStatus::False,
                "EnforcingCheckFailed",
                format!("failing enforcing checks: {}", failing.join(", ")),
            ),
        };
        set_condition(
            &mut conditions,
            Condition {
                type_: "Compliant".into(),
                status,
                reason: reason.into(),
                message,
                observed_generation: 0,
                last_transition_time: jiff::Timestamp::now().to_string(),
            },
        );
        let doc = json!({
            "apiVersion": api,
            "kind": kind,
            "metadata": {"labels": {
                "openova.io/sovereign": d.sovereign,
                "openova.io/organization": d.organization,
                "openova.io/environment": d.environment,
            }},
            "status": {
                "score": d.score,
                "applications": d.applications,
                "workloads": d.workloads,
                "failingEnforcingChecks": failing,
                "gate": d.gate,
                "conditions": conditions,
            },
        });
        let text = serde_yaml::to_string(&doc)?;
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
