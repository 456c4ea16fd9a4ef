//! Endpoint selectors: Kubernetes label selectors (`matchLabels`, `matchExpressions`) over
//! Cilium's source-prefixed labels.
//!
//! A selector key may carry a source (`k8s:app`, `reserved:host`); without one it is `any:`,
//! which matches the key under every source. `{}` selects everything.
#![deny(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use thiserror::Error;

use crate::labels::{
    LabelSet, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, SOURCE_ANY, SOURCE_K8S, SOURCE_RESERVED,
    split_source,
};

/// Errors of selector validation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SelectorError {
    /// A key is empty or has an empty source.
    #[error("invalid label key `{key}`")]
    InvalidKey {
        /// The key as written.
        key: String,
    },
    /// `In`/`NotIn` without values.
    #[error("operator {operator} on key `{key}` needs at least one value")]
    MissingValues {
        /// The key of the expression.
        key: String,
        /// The operator.
        operator: Operator,
    },
    /// `Exists`/`DoesNotExist` with values.
    #[error("operator {operator} on key `{key}` takes no values")]
    UnexpectedValues {
        /// The key of the expression.
        key: String,
        /// The operator.
        operator: Operator,
    },
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Operator {
    /// The label exists with one of the values.
    In,
    /// No label with the key has one of the values (an absent key matches).
    NotIn,
    /// The key exists.
    Exists,
    /// The key does not exist.
    DoesNotExist,
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        })
    }
}

/// The manifest form of a label selector (Kubernetes `LabelSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorSpec {
    /// `key: value` pairs, all of which must match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Expressions, all of which must match.
    #[serde(default)]
    pub match_expressions: Vec<ExpressionSpec>,
}

/// One entry of `matchExpressions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpressionSpec {
    /// Label key, optionally source-prefixed.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// One requirement of a selector: `source:key operator values`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// Label source, or [`SOURCE_ANY`].
    pub source: String,
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values (empty for `Exists`/`DoesNotExist`).
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let value_in = || {
            if self.source == SOURCE_ANY {
                labels
                    .values_any_source(&self.key)
                    .any(|v| self.values.contains(v))
            } else {
                labels
                    .get(&self.source, &self.key)
                    .is_some_and(|v| self.values.contains(v))
            }
        };
        match self.operator {
            Operator::In => value_in(),
            Operator::NotIn => !value_in(),
            Operator::Exists => labels.has_key(&self.source, &self.key),
            Operator::DoesNotExist => !labels.has_key(&self.source, &self.key),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {}", self.source, self.key, self.operator)?;
        if !self.values.is_empty() {
            let v: Vec<&str> = self.values.iter().map(String::as_str).collect();
            write!(f, " ({})", v.join(","))?;
        }
        Ok(())
    }
}

/// A selector over label sets: the conjunction of its requirements (none: matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "LabelSelectorSpec")]
pub struct EndpointSelector {
    requirements: Vec<Requirement>,
}

impl EndpointSelector {
    /// The selector that matches every label set (`{}`).
    pub fn all() -> Self {
        Self::default()
    }

    /// Builds a selector from its manifest form; keys without a source get `default_source`
    /// (`any` in Cilium rules, `k8s` in Kubernetes NetworkPolicy).
    pub fn from_spec(
        spec: &LabelSelectorSpec,
        default_source: &str,
    ) -> Result<Self, SelectorError> {
        let mut sel = Self::all();
        for (k, v) in &spec.match_labels {
            let (source, key) = parse_key(k, default_source)?;
            sel.push(Requirement {
                source,
                key,
                operator: Operator::In,
                values: BTreeSet::from([v.clone()]),
            });
        }
        for e in &spec.match_expressions {
            let (source, key) = parse_key(&e.key, default_source)?;
            match (e.operator, e.values.is_empty()) {
                (Operator::In | Operator::NotIn, true) => {
                    return Err(SelectorError::MissingValues {
                        key: e.key.clone(),
                        operator: e.operator,
                    });
                }
                (Operator::Exists | Operator::DoesNotExist, false) => {
                    return Err(SelectorError::UnexpectedValues {
                        key: e.key.clone(),
                        operator: e.operator,
                    });
                }
                _ => {}
            }
            sel.push(Requirement {
                source,
                key,
                operator: e.operator,
                values: e.values.iter().cloned().collect(),
            });
        }
        Ok(sel)
    }

    /// Adds a requirement (kept sorted and unique so equal selectors compare equal).
    pub fn push(&mut self, req: Requirement) {
        if let Err(pos) = self.requirements.binary_search(&req) {
            self.requirements.insert(pos, req);
        }
    }

    /// Returns the selector with the extra requirement `k8s:io.kubernetes.pod.namespace=ns`.
    #[must_use]
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.push(Requirement {
            source: SOURCE_K8S.to_owned(),
            key: NAMESPACE_LABEL.to_owned(),
            operator: Operator::In,
            values: BTreeSet::from([namespace.to_owned()]),
        });
        self
    }

    /// Returns the selector with a requirement that the namespace label exists (every endpoint
    /// of the cluster, no reserved or CIDR identity).
    #[must_use]
    pub fn in_any_namespace(mut self) -> Self {
        self.push(Requirement {
            source: SOURCE_K8S.to_owned(),
            key: NAMESPACE_LABEL.to_owned(),
            operator: Operator::Exists,
            values: BTreeSet::new(),
        });
        self
    }

    /// Builds a selector over namespace labels (a Kubernetes `namespaceSelector`): every key
    /// `k` becomes `k8s:io.cilium.k8s.namespace.labels.k`, and the namespace label must exist.
    pub fn namespace_selector(spec: &LabelSelectorSpec) -> Result<Self, SelectorError> {
        let prefixed = LabelSelectorSpec {
            match_labels: spec
                .match_labels
                .iter()
                .map(|(k, v)| {
                    (
                        format!("{SOURCE_K8S}:{NAMESPACE_LABELS_PREFIX}{k}"),
                        v.clone(),
                    )
                })
                .collect(),
            match_expressions: spec
                .match_expressions
                .iter()
                .map(|e| ExpressionSpec {
                    key: format!("{SOURCE_K8S}:{NAMESPACE_LABELS_PREFIX}{}", e.key),
                    ..e.clone()
                })
                .collect(),
        };
        Ok(Self::from_spec(&prefixed, SOURCE_K8S)?.in_any_namespace())
    }

    /// Merges the requirements of `other` into this selector (conjunction).
    #[must_use]
    pub fn and(mut self, other: &Self) -> Self {
        for r in &other.requirements {
            self.push(r.clone());
        }
        self
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirement (selects everything).
    pub fn is_wildcard(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a requirement names the namespace label (`k8s:` or `any:` source).
    pub fn mentions_namespace(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key == NAMESPACE_LABEL && (r.source == SOURCE_K8S || r.source == SOURCE_ANY))
    }

    /// Whether a requirement names a `reserved:` label (such selectors are not namespaced).
    pub fn mentions_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.source == SOURCE_RESERVED)
    }

    /// The requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl TryFrom<LabelSelectorSpec> for EndpointSelector {
    type Error = SelectorError;

    fn try_from(spec: LabelSelectorSpec) -> Result<Self, Self::Error> {
        Self::from_spec(&spec, SOURCE_ANY)
    }
}

impl fmt::Display for EndpointSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        f.write_str("}")
    }
}

fn parse_key(k: &str, default_source: &str) -> Result<(String, String), SelectorError> {
    let (source, key) = split_source(k, default_source);
    if source.is_empty() || key.is_empty() {
        return Err(SelectorError::InvalidKey { key: k.to_owned() });
    }
    Ok((source.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;

    fn sel(yaml: &str) -> EndpointSelector {
        serde_norway::from_str(yaml).unwrap()
    }

    fn labels(l: &[&str]) -> LabelSet {
        LabelSet::parse(l.iter().copied(), SOURCE_K8S).unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel("{}");
        assert!(s.is_wildcard());
        assert!(s.matches(&LabelSet::new()));
        assert!(s.matches(&labels(&["reserved:world"])));
    }

    #[test]
    fn match_labels_respect_sources() {
        let any = sel("matchLabels: {app: web}");
        let k8s = sel("matchLabels: {'k8s:app': web}");
        let other = sel("matchLabels: {'container:app': web}");
        let web = labels(&["app=web"]);
        assert!(any.matches(&web));
        assert!(k8s.matches(&web));
        assert!(!other.matches(&web));
        assert!(!any.matches(&labels(&["app=db"])));
        assert!(!any.matches(&LabelSet::new()));
    }

    #[test]
    fn expressions_follow_kubernetes_semantics() {
        let s = sel("matchExpressions:
  - {key: tier, operator: In, values: [a, b]}
  - {key: env, operator: NotIn, values: [prod]}
  - {key: team, operator: Exists}
  - {key: legacy, operator: DoesNotExist}");
        assert!(s.matches(&labels(&["tier=a", "team=x"])));
        assert!(s.matches(&labels(&["tier=b", "team=x", "env=dev"])));
        assert!(!s.matches(&labels(&["tier=c", "team=x"])));
        assert!(!s.matches(&labels(&["tier=a", "team=x", "env=prod"])));
        assert!(!s.matches(&labels(&["tier=a"])));
        assert!(!s.matches(&labels(&["tier=a", "team=x", "legacy=1"])));
    }

    #[test]
    fn reserved_labels_need_the_reserved_source() {
        let host = sel("matchLabels: {'reserved:host': ''}");
        assert!(host.mentions_reserved());
        let mut l = LabelSet::new();
        l.insert(Label::reserved("host"));
        assert!(host.matches(&l));
        assert!(!host.matches(&labels(&["host="])));
    }

    #[test]
    fn namespace_helpers() {
        let s = sel("matchLabels: {app: web}").in_namespace("prod");
        assert!(s.mentions_namespace());
        assert!(s.matches(&labels(&["app=web", "io.kubernetes.pod.namespace=prod"])));
        assert!(!s.matches(&labels(&["app=web", "io.kubernetes.pod.namespace=dev"])));
        let spec: LabelSelectorSpec = serde_norway::from_str("matchLabels: {team: a}").unwrap();
        let ns = EndpointSelector::namespace_selector(&spec).unwrap();
        assert!(ns.matches(&labels(&[
            "io.kubernetes.pod.namespace=x",
            "io.cilium.k8s.namespace.labels.team=a"
        ])));
        assert!(!ns.matches(&labels(&["io.cilium.k8s.namespace.labels.team=a"])));
    }

    #[test]
    fn invalid_expressions_are_rejected() {
        let e = serde_norway::from_str::<EndpointSelector>(
            "matchExpressions: [{key: a, operator: In}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs at least one value"), "{e}");
        let e = serde_norway::from_str::<EndpointSelector>(
            "matchExpressions: [{key: a, operator: Exists, values: [x]}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("takes no values"), "{e}");
        let e = serde_norway::from_str::<EndpointSelector>("matchLabel: {a: b}").unwrap_err();
        assert!(e.to_string().contains("unknown field `matchLabel`"), "{e}");
        let e = serde_norway::from_str::<EndpointSelector>(
            "matchExpressions: [{key: a, operator: Maybe}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `Maybe`"), "{e}");
    }
}
