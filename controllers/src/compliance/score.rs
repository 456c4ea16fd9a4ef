//! Scoring, pure: applications from their rows, roll-ups Environment → Organization → Sovereign,
//! the re-score gate and the "what to fix" list. docs/compliance.md states the formulas.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    checks::{Catalog, Mode},
    row::{Evidence, Outcome, RowRef, Source},
};
use crate::crd::CompliancePolicy;

/// The weighted score of a set of checks, 0–100: `Σ wᵢ·rᵢ / Σ wᵢ` over the checks that apply
/// (`rᵢ` = `Some(ratio of passing workloads)`); checks with `None` (n-a) or weight 0 leave the
/// denominator. `None` when nothing applies.
pub fn weighted_score(checks: impl IntoIterator<Item = (f64, Option<f64>)>) -> Option<f64> {
    let (mut num, mut den) = (0.0_f64, 0.0_f64);
    for (w, r) in checks {
        if let Some(r) = r
            && w > 0.0
        {
            num += w * r.clamp(0.0, 1.0);
            den += w;
        }
    }
    (den > 0.0).then(|| 100.0 * num / den)
}

/// Rounds a score to hundredths (what is published: the value is stable across restarts and
/// summation orders).
pub fn publish_round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One failing workload of a check, with the producer's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// `kind/namespace/name`.
    pub workload: String,
    /// Producer.
    pub source: Source,
    /// The producer's evidence.
    pub evidence: serde_json::Value,
}

/// One check of an application, over its workloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckScore {
    /// Check id.
    pub check: String,
    /// Weight in force.
    pub weight: f64,
    /// Mode in force.
    pub mode: Mode,
    /// `pass` (every applicable workload passes), `fail` (at least one fails) or `n-a`.
    pub result: Outcome,
    /// Applicable rows that pass.
    pub passing: u32,
    /// Applicable rows (pass + fail).
    pub applicable: u32,
    /// The failing workloads (at most `max_evidence`, sorted), with evidence.
    pub failures: Vec<Failure>,
}

impl CheckScore {
    /// The share of passing rows, `None` when n-a.
    pub fn ratio(&self) -> Option<f64> {
        (self.applicable > 0).then(|| f64::from(self.passing) / f64::from(self.applicable))
    }
}

/// One step of a fix list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixStep {
    /// Check to fix (on every failing workload).
    pub check: String,
    /// Score points gained by fixing it.
    pub gain: f64,
    /// Score after this and the previous steps.
    pub score_after: f64,
    /// Mode of the check.
    pub mode: Mode,
}

/// "What to fix to reach the target".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixList {
    /// Target score.
    pub target: f64,
    /// Whether fixing the listed checks reaches it (false only when nothing applies).
    pub reachable: bool,
    /// The smallest ordered set of failing checks whose fixing reaches the target, largest gain
    /// first.
    pub steps: Vec<FixStep>,
}

/// The smallest set of checks to fix to reach `target`. Fixing check `i` raises the score by
/// `100·wᵢ·(1 − rᵢ) / Σw` and does not change the denominator (applicability does not change),
/// so gains add up and taking the largest gains first gives a set of minimum size. Ties break
/// by check id. `checks` are `(check, weight, ratio, mode)` with n-a checks left out.
pub fn fix_list(checks: &[(String, f64, f64, Mode)], target: f64) -> FixList {
    let den: f64 = checks.iter().map(|c| c.1).filter(|w| *w > 0.0).sum();
    if den <= 0.0 {
        return FixList {
            target,
            reachable: false,
            steps: Vec::new(),
        };
    }
    let mut score = 100.0
        * checks
            .iter()
            .filter(|c| c.1 > 0.0)
            .map(|c| c.1 * c.2)
            .sum::<f64>()
        / den;
    let mut gains: Vec<(&str, f64, Mode)> = checks
        .iter()
        .filter(|c| c.1 > 0.0 && c.2 < 1.0)
        .map(|c| (c.0.as_str(), 100.0 * c.1 * (1.0 - c.2) / den, c.3))
        .collect();
    gains.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut steps = Vec::new();
    // A small epsilon: 90 reached by summing 89.999… counts as reached.
    let eps = 1e-9;
    for (check, gain, mode) in gains {
        if score + eps >= target {
            break;
        }
        score += gain;
        steps.push(FixStep {
            check: check.to_owned(),
            gain: publish_round(gain),
            score_after: publish_round(score.min(100.0)),
            mode,
        });
    }
    FixList {
        target,
        reachable: score + eps >= target,
        steps,
    }
}

/// An application's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppScore {
    /// 0–100, `None` when no check applies.
    pub score: Option<f64>,
    /// Checks, sorted by id.
    pub checks: Vec<CheckScore>,
    /// Distinct workloads in the rows.
    pub workloads: u32,
    /// Enforcing checks that fail.
    pub failing_enforcing: Vec<String>,
    /// What to fix.
    pub fix: FixList,
}

/// A failing workload before its evidence becomes JSON: (workload, source, evidence).
type FailureRef<'a> = (String, Source, Evidence<'a>);

/// Scores one application from its rows under the catalogue and its Environment's policy.
pub fn score_app<'a, R: Into<RowRef<'a>>>(
    rows: impl IntoIterator<Item = R>,
    catalog: &Catalog,
    env: Option<&CompliancePolicy>,
    target: f64,
    max_evidence: usize,
) -> AppScore {
    let mut per_check: BTreeMap<&str, (u32, u32, Vec<FailureRef<'a>>)> = BTreeMap::new();
    let mut workloads = std::collections::BTreeSet::new();
    for r in rows {
        let r: RowRef<'a> = r.into();
        workloads.insert(r.workload);
        let e = per_check.entry(r.check).or_default();
        match r.outcome {
            Outcome::Pass => {
                e.0 += 1;
                e.1 += 1;
            }
            Outcome::Fail => {
                e.1 += 1;
                e.2.push((r.workload.to_string(), r.source, r.evidence));
            }
            Outcome::NotApplicable => {}
        }
    }
    let mut checks = Vec::with_capacity(per_check.len());
    for (check, (passing, applicable, mut failures)) in per_check {
        let s = catalog.setting(check, env);
        failures.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        failures.truncate(max_evidence);
        // Evidence becomes JSON for the kept failures only.
        let failures = failures
            .into_iter()
            .map(|(workload, source, evidence)| Failure {
                workload,
                source,
                evidence: evidence.to_value(),
            })
            .collect();
        let result = if applicable == 0 {
            Outcome::NotApplicable
        } else if passing == applicable {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        checks.push(CheckScore {
            check: check.to_owned(),
            weight: s.weight,
            mode: s.mode,
            result,
            passing,
            applicable,
            failures,
        });
    }
    let score = weighted_score(checks.iter().map(|c| (c.weight, c.ratio())));
    let failing_enforcing = checks
        .iter()
        .filter(|c| c.mode == Mode::Enforcing && c.result == Outcome::Fail && c.weight > 0.0)
        .map(|c| c.check.clone())
        .collect();
    let fix_input: Vec<(String, f64, f64, Mode)> = checks
        .iter()
        .filter_map(|c| c.ratio().map(|r| (c.check.clone(), c.weight, r, c.mode)))
        .collect();
    AppScore {
        score,
        checks,
        workloads: u32::try_from(workloads.len()).unwrap_or(u32::MAX),
        failing_enforcing,
        fix: fix_list(&fix_input, target),
    }
}

/// A roll-up of children (applications of an Environment, Environments of an Organization, …):
/// `Σ weightᵢ·scoreᵢ / Σ weightᵢ` over children with a score, and the total weight (which is the
/// weight of the roll-up in the level above, so an Organization's score is the weighted mean of
/// all its applications).
pub fn roll_up(children: impl IntoIterator<Item = (f64, Option<f64>)>) -> (Option<f64>, f64) {
    let (mut num, mut den) = (0.0_f64, 0.0_f64);
    for (w, s) in children {
        if let Some(s) = s
            && w > 0.0
        {
            num += w * s;
            den += w;
        }
    }
    ((den > 0.0).then(|| num / den), den)
}

/// State of an Environment's re-score gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    /// Score ≥ minimum and no enforcing check fails.
    Pass,
    /// Score below the minimum, or an enforcing check fails.
    Fail,
    /// The gate is turned off (`reScoreGate.enabled: false`).
    Disabled,
    /// Nothing scored yet.
    Pending,
}

impl GateState {
    /// The wire name (`pass`, `fail`, `disabled`, `pending`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Disabled => "disabled",
            Self::Pending => "pending",
        }
    }
}

/// The gate: an enforcing check that fails fails the gate regardless of the score.
pub fn gate(
    enabled: bool,
    minimum: f64,
    score: Option<f64>,
    failing_enforcing: usize,
) -> GateState {
    if !enabled {
        return GateState::Disabled;
    }
    match score {
        None => GateState::Pending,
        Some(_) if failing_enforcing > 0 => GateState::Fail,
        Some(s) if s + 1e-9 < minimum => GateState::Fail,
        Some(_) => GateState::Pass,
    }
}
