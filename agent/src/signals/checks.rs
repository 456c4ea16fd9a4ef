//! The checks: pure functions from what the agent knows about a workload (its compiled policy
//! facts and the window's flow counts) to a result and its evidence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use catalyst_policy::datapath::{
    ACTION_ALLOW, DIR_EGRESS, DIR_INGRESS, EP_F_AUDIT, EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED,
    IDENTITY_ANY, IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6,
    POLICY_PREFIX_EXACT_BITS, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use serde::Serialize;

use super::counts::Counts;
use crate::{datapath::DesiredState, flow::PolicyRefOut};

/// Label keys of the `openova.io/*` vocabulary that name a workload.
pub const ORGANIZATION: &str = "openova.io/organization";
/// See [`ORGANIZATION`].
pub const ENVIRONMENT: &str = "openova.io/environment";
/// See [`ORGANIZATION`].
pub const APPLICATION: &str = "openova.io/application";

/// Check ids, in the order they are evaluated.
pub const CHECKS: [&str; 7] = [
    INGRESS_DEFAULT_DENY,
    EGRESS_DEFAULT_DENY,
    FLOWS_OBSERVED,
    POLICY_DROPS,
    EGRESS_WORLD_UNRESTRICTED,
    AUDIT_MODE,
    LABELS_COMPLETE,
];
/// Ingress default deny is in force.
pub const INGRESS_DEFAULT_DENY: &str = "ingress-default-deny";
/// Egress default deny is in force.
pub const EGRESS_DEFAULT_DENY: &str = "egress-default-deny";
/// Flows of the workload were observed in the window.
pub const FLOWS_OBSERVED: &str = "flows-observed";
/// Policy drops (or audited would-be drops) in the window.
pub const POLICY_DROPS: &str = "policy-drops";
/// Egress to the world is unrestricted.
pub const EGRESS_WORLD_UNRESTRICTED: &str = "egress-world-unrestricted";
/// Audit mode (global or per endpoint) is on.
pub const AUDIT_MODE: &str = "audit-mode";
/// The `openova.io/*` workload labels are complete.
pub const LABELS_COMPLETE: &str = "labels-complete";

/// Result of a check, from the compliance point of view: `pass` is compliant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Compliant.
    #[serde(rename = "pass")]
    Pass,
    /// Not compliant.
    #[serde(rename = "fail")]
    Fail,
    /// Nothing to judge (e.g. no traffic in the window).
    #[serde(rename = "n-a")]
    NotApplicable,
}

/// The workload a signal is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// `openova.io/organization`, or `_` when missing.
    pub organization: String,
    /// `openova.io/environment`, or `_` when missing.
    pub environment: String,
    /// `openova.io/application`, or `_` when missing.
    pub application: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod (endpoint) name.
    pub pod: String,
    /// Host-side interface.
    pub interface: String,
    /// Endpoint id on this node.
    pub endpoint_id: u32,
    /// Security identity.
    pub identity: u32,
}

/// What a check saw. Only the fields the check uses are present in the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Why the check has its result (a short, stable code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Whether the direction is enforced (default deny) in the datapath.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
    /// Policies behind the result (entries for the endpoint in that direction; the entries
    /// that open egress to the world).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRefOut>,
    /// Length of the window the counts cover, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Flow events of the endpoint in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
    /// Policy drops in the window, ingress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_drops: Option<u64>,
    /// Policy drops in the window, egress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_drops: Option<u64>,
    /// Of the policy drops, those by a deny rule (the rest hit default deny).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_rule_drops: Option<u64>,
    /// Would-be drops forwarded under audit mode in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audited: Option<u64>,
    /// Global audit mode (`audit: true` in the agent config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_audit: Option<bool>,
    /// Audit mode of this endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_audit: Option<bool>,
    /// `openova.io/*` labels the workload lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_labels: Vec<&'static str>,
}

impl Evidence {
    /// The evidence without the window's counts: what must change for a signal to count as
    /// changed (counts vary every window; results and policies do not).
    #[must_use]
    pub fn stable(&self) -> Self {
        Self {
            window_ms: None,
            flows: None,
            ingress_drops: None,
            egress_drops: None,
            deny_rule_drops: None,
            audited: None,
            ..self.clone()
        }
    }
}

/// What the checks need to know about one local workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Who it is.
    pub subject: Subject,
    /// `EP_F_*` bits of its endpoint map entry.
    pub flags: u32,
    /// `openova.io/*` labels it lacks.
    pub missing_labels: Vec<&'static str>,
    /// Policies with ingress entries for it.
    pub ingress_policies: Vec<PolicyRefOut>,
    /// Policies with egress entries for it.
    pub egress_policies: Vec<PolicyRefOut>,
    /// Policies whose allow entries open egress to the world on every port of a protocol
    /// (see [`world_egress_allows`]).
    pub world_allows: Vec<PolicyRefOut>,
}

/// One evaluated check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Check id.
    pub check: &'static str,
    /// Result.
    pub outcome: Outcome,
    /// Evidence.
    pub evidence: Evidence,
}

/// The window's counts of a workload, when a window has completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Growth of the counters over the window.
    pub counts: Counts,
    /// Window length, milliseconds.
    pub ms: u64,
}

/// Evaluates every check of [`CHECKS`] for `w`. `window` is `None` until the first window has
/// completed (the window checks are then `n-a`).
#[expect(
    clippy::too_many_lines,
    reason = "one block per check, in the order of CHECKS"
)]
pub fn evaluate(w: &Workload, window: Option<Window>, global_audit: bool) -> Vec<CheckResult> {
    let result = |check, outcome, evidence| CheckResult {
        check,
        outcome,
        evidence,
    };
    let pass_if = |ok: bool| if ok { Outcome::Pass } else { Outcome::Fail };
    let ingress = w.flags & EP_F_INGRESS_ENFORCED != 0;
    let egress = w.flags & EP_F_EGRESS_ENFORCED != 0;
    let endpoint_audit = w.flags & EP_F_AUDIT != 0;
    let mut out = Vec::with_capacity(CHECKS.len());
    out.push(result(
        INGRESS_DEFAULT_DENY,
        pass_if(ingress),
        Evidence {
            reason: Some(if ingress { "enforced" } else { "not-enforced" }),
            enforced: Some(ingress),
            policies: w.ingress_policies.clone(),
            ..Evidence::default()
        },
    ));
    out.push(result(
        EGRESS_DEFAULT_DENY,
        pass_if(egress),
        Evidence {
            reason: Some(if egress { "enforced" } else { "not-enforced" }),
            enforced: Some(egress),
            policies: w.egress_policies.clone(),
            ..Evidence::default()
        },
    ));
    match window {
        None => {
            let pending = Evidence {
                reason: Some("first-window-pending"),
                ..Evidence::default()
            };
            out.push(result(
                FLOWS_OBSERVED,
                Outcome::NotApplicable,
                pending.clone(),
            ));
            out.push(result(POLICY_DROPS, Outcome::NotApplicable, pending));
        }
        Some(Window { counts: c, ms }) => {
            out.push(result(
                FLOWS_OBSERVED,
                if c.flows > 0 {
                    Outcome::Pass
                } else {
                    Outcome::NotApplicable
                },
                Evidence {
                    reason: Some(if c.flows > 0 { "flows" } else { "no-flows" }),
                    window_ms: Some(ms),
                    flows: Some(c.flows),
                    ..Evidence::default()
                },
            ));
            let violations = c.policy_drops() + c.audited;
            out.push(result(
                POLICY_DROPS,
                pass_if(violations == 0),
                Evidence {
                    reason: Some(match (c.policy_drops() > 0, c.audited > 0) {
                        (false, false) => "no-drops",
                        (true, _) => "policy-drops",
                        (false, true) => "audited-drops",
                    }),
                    window_ms: Some(ms),
                    flows: Some(c.flows),
                    ingress_drops: Some(c.ingress_drops),
                    egress_drops: Some(c.egress_drops),
                    deny_rule_drops: Some(c.deny_rule_drops),
                    audited: Some(c.audited),
                    ..Evidence::default()
                },
            ));
        }
    }
    let (world_outcome, world_reason, world_policies) = if !egress {
        (Outcome::Fail, "egress-not-enforced", Vec::new())
    } else if w.world_allows.is_empty() {
        (Outcome::Pass, "restricted", Vec::new())
    } else {
        (
            Outcome::Fail,
            "world-allowed-any-port",
            w.world_allows.clone(),
        )
    };
    out.push(result(
        EGRESS_WORLD_UNRESTRICTED,
        world_outcome,
        Evidence {
            reason: Some(world_reason),
            enforced: Some(egress),
            policies: world_policies,
            ..Evidence::default()
        },
    ));
    let audit = global_audit || endpoint_audit;
    out.push(result(
        AUDIT_MODE,
        pass_if(!audit),
        Evidence {
            reason: Some(if audit { "audit-on" } else { "enforcing" }),
            global_audit: Some(global_audit),
            endpoint_audit: Some(endpoint_audit),
            ..Evidence::default()
        },
    ));
    out.push(result(
        LABELS_COMPLETE,
        pass_if(w.missing_labels.is_empty()),
        Evidence {
            reason: Some(if w.missing_labels.is_empty() {
                "complete"
            } else {
                "missing-labels"
            }),
            missing_labels: w.missing_labels.clone(),
            ..Evidence::default()
        },
    ));
    out
}

/// A NATS subject token from a label value: characters other than ASCII letters, digits, `-`
/// and `_` become `_` (NATS tokens may not hold `.`, `*`, `>` or whitespace); empty is `_`.
pub fn token(value: &str) -> String {
    catalyst_policy::nats::subject_token(value)
}

/// Subject of a workload's signals: `catalyst.signals.<org>.<env>.<app>`.
pub fn subject_of(s: &Subject) -> String {
    catalyst_policy::nats::subject(
        "catalyst.signals",
        &[&s.organization, &s.environment, &s.application],
    )
}

/// Looks a label up by key, with or without a source prefix (`k8s:`, `any:`).
fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k.as_str() == key || k.split_once(':').is_some_and(|(_, rest)| rest == key))
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The organization, environment and application of a label map (`_` for each one missing)
/// and the keys that are missing.
pub fn workload_names(labels: &BTreeMap<String, String>) -> ([String; 3], Vec<&'static str>) {
    let mut missing = Vec::new();
    let names = [ORGANIZATION, ENVIRONMENT, APPLICATION].map(|key| {
        label(labels, key).map_or_else(
            || {
                missing.push(key);
                "_".to_owned()
            },
            str::to_owned,
        )
    });
    (names, missing)
}

/// Per endpoint: the policies with entries per direction, and those opening egress to the
/// world on every port.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyFacts {
    /// Policies with ingress entries.
    pub ingress: Vec<PolicyRefOut>,
    /// Policies with egress entries.
    pub egress: Vec<PolicyRefOut>,
    /// See [`world_egress_allows`].
    pub world_allows: Vec<PolicyRefOut>,
}

/// Identities that stand for "the world": [`IDENTITY_ANY`] (any peer), the reserved world
/// identities, and CIDR identities of a `/0` prefix (`0.0.0.0/0`, `::/0`).
fn world_identities(desired: &DesiredState) -> BTreeSet<u32> {
    let mut ids: BTreeSet<u32> = [
        IDENTITY_ANY,
        IDENTITY_WORLD,
        IDENTITY_WORLD_IPV4,
        IDENTITY_WORLD_IPV6,
    ]
    .into();
    ids.extend(
        desired
            .ipcache_v4
            .iter()
            .filter(|(net, _)| net.prefix_len() == 0)
            .map(|(_, e)| e.identity),
    );
    ids.extend(
        desired
            .ipcache_v6
            .iter()
            .filter(|(net, _)| net.prefix_len() == 0)
            .map(|(_, e)| e.identity),
    );
    ids
}

/// The rule for `egress-world-unrestricted`, on the policy map entries the datapath is given
/// (the desired state, per endpoint): an egress
/// entry of the endpoint opens the world when
/// - its action is allow,
/// - its peer identity is one of [`world_identities`] (any peer, `world`, `world-ipv4`,
///   `world-ipv6`, or a CIDR identity of `0.0.0.0/0` or `::/0`), and
/// - it does not restrict the port: its prefix stops at or before the protocol byte (any
///   protocol, or every port of TCP, UDP or SCTP). Entries for ICMP and port-restricted
///   entries (`toPorts` with ports) do not count.
///
/// Deny entries are not subtracted: an allow-all-ports entry to the world is reported even when
/// a deny rule narrows it (a deny list is not a restriction an auditor accepts). The check also
/// fails when egress is not enforced at all (see [`evaluate`]).
pub fn world_egress_allows(
    desired: &DesiredState,
    origins: &[Vec<PolicyRefOut>],
) -> HashMap<u32, PolicyFacts> {
    let world = world_identities(desired);
    // Per endpoint: the rule ids behind its ingress, egress and world-opening entries. Names are
    // resolved once per endpoint at the end (a node can have hundreds of thousands of entries).
    let mut acc: HashMap<u32, [BTreeSet<u32>; 3]> = HashMap::new();
    for (len, key, entry) in desired.policy.values().flat_map(|rows| rows.iter()) {
        let sets = acc.entry(key.endpoint_id).or_default();
        match key.direction {
            DIR_INGRESS => {
                sets[0].insert(entry.rule_id);
            }
            DIR_EGRESS => {
                sets[1].insert(entry.rule_id);
                let any_port = *len <= POLICY_PREFIX_EXACT_BITS + 8
                    && matches!(key.protocol, PROTO_ANY | PROTO_TCP | PROTO_UDP | PROTO_SCTP);
                if entry.action == ACTION_ALLOW && any_port && world.contains(&key.identity) {
                    sets[2].insert(entry.rule_id);
                }
            }
            _ => {}
        }
    }
    let names = |ids: &BTreeSet<u32>| -> Vec<PolicyRefOut> {
        let set: BTreeSet<(&str, &str, &str)> = ids
            .iter()
            .filter_map(|id| origins.get(*id as usize))
            .flatten()
            .map(|p| (p.namespace.as_str(), p.name.as_str(), p.kind.as_str()))
            .collect();
        set.into_iter()
            .map(|(namespace, name, kind)| PolicyRefOut {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                kind: kind.to_owned(),
            })
            .collect()
    };
    acc.into_iter()
        .map(|(id, [i, e, w])| {
            (
                id,
                PolicyFacts {
                    ingress: names(&i),
                    egress: names(&e),
                    world_allows: names(&w),
                },
            )
        })
        .collect()
}
