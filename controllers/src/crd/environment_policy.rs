//! `EnvironmentPolicy` (catalyst.openova.io/v1): Catalyst's promotion rules and the compliance
//! weights and modes of the Environments that reference it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Rules that govern changes to an Environment (`pr-required`, `re-score-gate`, `soak`,
/// `change-window`) and how its compliance score is computed (per-check weight and mode).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "catalyst.openova.io",
    version = "v1",
    kind = "EnvironmentPolicy",
    plural = "environmentpolicies",
    shortname = "envpol",
    category = "catalyst",
    status = "EnvironmentPolicyStatus",
    doc = "Promotion rules and compliance weights for the Environments that reference this policy.",
    printcolumn(
        name = "PR",
        type_ = "boolean",
        json_path = ".spec.rules.prRequired.enabled"
    ),
    printcolumn(
        name = "Gate",
        type_ = "number",
        json_path = ".spec.rules.reScoreGate.minimumScore"
    ),
    printcolumn(
        name = "Soak",
        type_ = "string",
        json_path = ".spec.rules.soak.duration"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentPolicySpec {
    /// Catalyst's change rules.
    #[serde(default)]
    pub rules: EnvironmentRules,
    /// Compliance scoring: target and per-check weight and mode.
    #[serde(default)]
    pub compliance: CompliancePolicy,
}

/// Catalyst's change rules.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentRules {
    /// `pr-required`: changes reach the Environment only through an approved pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_required: Option<PrRequiredRule>,
    /// `re-score-gate`: a promotion is blocked while the score is below the minimum or an
    /// enforcing check fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re_score_gate: Option<ReScoreGateRule>,
    /// `soak`: a change must run this long in the previous Environment before promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakRule>,
    /// `change-window`: changes are applied only inside these windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_window: Option<ChangeWindowRule>,
}

/// `pr-required`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrRequiredRule {
    /// Whether the rule applies. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Approvals required (1–10). Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    pub approvals: u32,
}

/// `re-score-gate`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReScoreGateRule {
    /// Whether the rule applies. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Minimum compliance score (0–100) for a promotion. Default 90.
    #[serde(default = "ninety")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub minimum_score: f64,
}

/// `soak`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SoakRule {
    /// Whether the rule applies. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long, as a Go-style duration of whole units (`30m`, `24h`, `90s`).
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub duration: String,
}

/// `change-window`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeWindowRule {
    /// Whether the rule applies. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// IANA time zone of the windows (e.g. `Europe/Amsterdam`). Default `UTC`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The windows (at least one).
    #[schemars(length(min = 1, max = 32))]
    pub windows: Vec<ChangeWindow>,
}

/// One weekly window.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start < self.end").message("a change window must start before it ends (start < end, HH:MM)"))]
pub struct ChangeWindow {
    /// Days of the week the window opens.
    #[schemars(length(min = 1, max = 7))]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` (24 h).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// Closing time, `HH:MM` (24 h), after `start`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"))]
    pub end: String,
}

/// A day of the week.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Compliance scoring settings of an Environment.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompliancePolicy {
    /// Score (0–100) the "what to fix" list aims for. Default 90.
    #[serde(default = "ninety")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub target: f64,
    /// Per-check overrides of Catalyst's default weight and mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.check == x.check))").message("spec.compliance.checks lists a check twice"))]
    pub checks: Vec<CheckPolicy>,
}

impl Default for CompliancePolicy {
    fn default() -> Self {
        Self {
            target: ninety(),
            checks: Vec::new(),
        }
    }
}

/// Weight and mode of one compliance check.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckPolicy {
    /// Check id (e.g. `multi-replica`, `pdb-present`, `ingress-default-deny`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub check: String,
    /// Relative weight (0–100; 0 disables the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub weight: Option<f64>,
    /// `Permissive` (lowers the score) or `Enforcing` (also fails the re-score gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CheckMode>,
}

/// How a failing check counts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CheckMode {
    /// Lowers the score only.
    Permissive,
    /// Lowers the score and fails the Environment's re-score gate.
    Enforcing,
}

/// Which Environments use the policy.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentPolicyStatus {
    /// The metadata.generation last read.
    #[serde(default)]
    pub observed_generation: i64,
    /// Environments referencing the policy.
    #[serde(default)]
    pub environments: u32,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn ninety() -> f64 {
    90.0
}
fn utc() -> String {
    "UTC".to_owned()
}
