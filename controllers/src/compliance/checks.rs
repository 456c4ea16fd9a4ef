//! Check weights and modes: Catalyst's defaults, the configuration's overrides, and each
//! Environment's `EnvironmentPolicy` on top.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::{CheckMode, CompliancePolicy};

/// Permissive or enforcing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A failure lowers the score only.
    Permissive,
    /// A failure lowers the score and fails the Environment's re-score gate.
    Enforcing,
}

impl From<CheckMode> for Mode {
    fn from(m: CheckMode) -> Self {
        match m {
            CheckMode::Permissive => Self::Permissive,
            CheckMode::Enforcing => Self::Enforcing,
        }
    }
}

/// Weight and mode of one check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSetting {
    /// Relative weight (≥ 0; 0 disables the check). Weights are normalised per application
    /// over the checks that apply, so only ratios matter.
    pub weight: f64,
    /// `permissive` or `enforcing`.
    pub mode: Mode,
}

/// Catalyst's default catalogue (issue 11): the sample policies with their weights (percent) and
/// modes, then the network and pod-security checks, whose weights are Catalyst's proposal and
/// meant to be tuned (configuration `compliance.checks`, or per Environment).
pub const CATALYST_DEFAULTS: &[(&str, f64, Mode)] = &[
    ("multi-replica", 15.0, Mode::Permissive),
    ("pdb-present", 15.0, Mode::Permissive),
    ("topology-spread", 10.0, Mode::Permissive),
    ("probes", 5.0, Mode::Enforcing),
    ("resource-requests", 8.0, Mode::Enforcing),
    ("resource-limits", 4.0, Mode::Permissive),
    ("l7-mtls-required", 10.0, Mode::Enforcing),
    ("flux-managed", 10.0, Mode::Enforcing),
    ("harbor-proxy", 5.0, Mode::Enforcing),
    ("image-tag-pinned", 5.0, Mode::Enforcing),
    ("prometheus-scrape", 5.0, Mode::Permissive),
    // Own evaluators beyond the sample policies.
    ("network-policy-present", 5.0, Mode::Permissive),
    ("non-root-read-only", 5.0, Mode::Permissive),
    ("secret-not-in-env", 5.0, Mode::Permissive),
    // The agent's signals (docs/signals.md).
    ("ingress-default-deny", 5.0, Mode::Permissive),
    ("egress-default-deny", 5.0, Mode::Permissive),
    ("egress-world-unrestricted", 5.0, Mode::Permissive),
    ("policy-drops", 2.0, Mode::Permissive),
    ("audit-mode", 2.0, Mode::Permissive),
    ("labels-complete", 2.0, Mode::Permissive),
    // Informational: traffic seen is not a compliance property.
    ("flows-observed", 0.0, Mode::Permissive),
    // catalyst-dns health of the targets behind an application's failover records.
    ("failover-target-healthy", 5.0, Mode::Permissive),
];

/// The check catalogue in force before Environment overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    checks: BTreeMap<String, CheckSetting>,
    unknown: CheckSetting,
}

impl Catalog {
    /// Catalyst's defaults, then `overrides`; checks no one listed (e.g. a Kyverno policy) get
    /// `unknown`.
    pub fn new(overrides: &BTreeMap<String, CheckSetting>, unknown: CheckSetting) -> Self {
        let mut checks: BTreeMap<String, CheckSetting> = CATALYST_DEFAULTS
            .iter()
            .map(|(c, w, m)| {
                (
                    (*c).to_owned(),
                    CheckSetting {
                        weight: *w,
                        mode: *m,
                    },
                )
            })
            .collect();
        for (c, s) in overrides {
            checks.insert(c.clone(), *s);
        }
        Self { checks, unknown }
    }

    /// Catalyst's defaults only; unknown checks weigh 1, permissive.
    pub fn catalyst() -> Self {
        Self::new(
            &BTreeMap::new(),
            CheckSetting {
                weight: 1.0,
                mode: Mode::Permissive,
            },
        )
    }

    /// The setting of `check` under an Environment's policy (`None`: no `EnvironmentPolicy`).
    pub fn setting(&self, check: &str, env: Option<&CompliancePolicy>) -> CheckSetting {
        let mut s = self.checks.get(check).copied().unwrap_or(self.unknown);
        if let Some(p) = env.and_then(|p| p.checks.iter().find(|c| c.check == check)) {
            if let Some(w) = p.weight {
                s.weight = w;
            }
            if let Some(m) = p.mode {
                s.mode = m.into();
            }
        }
        s
    }
}
