//! Labels and label sets, in Cilium's `source:key=value` form.
//!
//! Endpoint labels default to the `k8s` source; selectors treat a key without a source as `any`
//! (see [`crate::selector`]). Reserved identities carry `reserved:` labels, CIDR identities
//! `cidr:` labels.
#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// Kubernetes source: labels of pods and namespaces.
pub const SOURCE_K8S: &str = "k8s";
/// Reserved source: labels of the reserved identities (`reserved:host`, `reserved:world`, …).
pub const SOURCE_RESERVED: &str = "reserved";
/// CIDR source: labels of CIDR identities (`cidr:10.0.0.0/8`).
pub const SOURCE_CIDR: &str = "cidr";
/// Wildcard source in selectors: matches a key from any source.
pub const SOURCE_ANY: &str = "any";

/// Key of the label holding an endpoint's namespace (source `k8s`).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the keys carrying the labels of an endpoint's namespace (source `k8s`), so that
/// Kubernetes `namespaceSelector`s can be matched against endpoint labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Namespace label Kubernetes sets on every namespace (its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Errors of label parsing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LabelError {
    /// The label or its key is empty.
    #[error("empty label key in `{label}`")]
    EmptyKey {
        /// The label as written.
        label: String,
    },
    /// The source prefix is empty (`:key`).
    #[error("empty label source in `{label}`")]
    EmptySource {
        /// The label as written.
        label: String,
    },
}

/// One label: `source:key=value`. The value may be empty (`reserved:world`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Source (`k8s`, `reserved`, `cidr`; `any` only in selectors).
    pub source: String,
    /// Key, e.g. `app` or `io.kubernetes.pod.namespace`.
    pub key: String,
    /// Value, possibly empty.
    pub value: String,
}

impl Label {
    /// A label from its parts.
    pub fn new(
        source: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            source: source.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// A `k8s:` label.
    pub fn k8s(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(SOURCE_K8S, key, value)
    }

    /// A `reserved:` label with an empty value.
    pub fn reserved(key: impl Into<String>) -> Self {
        Self::new(SOURCE_RESERVED, key, "")
    }

    /// Parses `source:key=value`, `source:key` or `key=value`; a missing source is
    /// `default_source`. The source is the part before the first `:` that comes before any `=`.
    pub fn parse(text: &str, default_source: &str) -> Result<Self, LabelError> {
        let (key_part, value) = match text.split_once('=') {
            Some((k, v)) => (k, v),
            None => (text, ""),
        };
        let (source, key) = split_source(key_part, default_source);
        if source.is_empty() {
            return Err(LabelError::EmptySource {
                label: text.to_owned(),
            });
        }
        if key.is_empty() {
            return Err(LabelError::EmptyKey {
                label: text.to_owned(),
            });
        }
        Ok(Self::new(source, key, value))
    }
}

/// Splits `source:key` at the first `:`; without one the source is `default_source`.
pub(crate) fn split_source<'a>(key: &'a str, default_source: &'a str) -> (&'a str, &'a str) {
    match key.split_once(':') {
        Some((s, k)) => (s, k),
        None => (default_source, key),
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A set of labels with at most one value per `(source, key)`, kept sorted so that equal sets
/// compare, hash and print equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSet {
    labels: BTreeMap<(String, String), String>,
}

impl LabelSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses labels with [`Label::parse`] and `default_source`; later duplicates win.
    pub fn parse<'a>(
        labels: impl IntoIterator<Item = &'a str>,
        default_source: &str,
    ) -> Result<Self, LabelError> {
        let mut set = Self::new();
        for l in labels {
            set.insert(Label::parse(l, default_source)?);
        }
        Ok(set)
    }

    /// Inserts a label, replacing the value of an existing `(source, key)`.
    pub fn insert(&mut self, label: Label) {
        self.labels.insert((label.source, label.key), label.value);
    }

    /// The value of `source:key`.
    pub fn get(&self, source: &str, key: &str) -> Option<&str> {
        self.labels
            .get(&(source.to_owned(), key.to_owned()))
            .map(String::as_str)
    }

    /// Values of `key` under any source.
    pub fn values_any_source<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.labels
            .iter()
            .filter(move |((_, k), _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the set has `source:key` (`source` [`SOURCE_ANY`]: under any source).
    pub fn has_key(&self, source: &str, key: &str) -> bool {
        if source == SOURCE_ANY {
            self.values_any_source(key).next().is_some()
        } else {
            self.get(source, key).is_some()
        }
    }

    /// Whether the set contains a label with the given source (e.g. `reserved`).
    pub fn has_source(&self, source: &str) -> bool {
        self.labels.keys().any(|(s, _)| s == source)
    }

    /// The labels, sorted by source and key.
    pub fn iter(&self) -> impl Iterator<Item = Label> + '_ {
        self.labels
            .iter()
            .map(|((s, k), v)| Label::new(s.clone(), k.clone(), v.clone()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl FromIterator<Label> for LabelSet {
    fn from_iter<T: IntoIterator<Item = Label>>(iter: T) -> Self {
        let mut set = Self::new();
        for l in iter {
            set.insert(l);
        }
        set
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, l) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{l}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_keys_and_values() {
        assert_eq!(
            Label::parse("k8s:app=foo", SOURCE_K8S).unwrap(),
            Label::k8s("app", "foo")
        );
        assert_eq!(
            Label::parse("app=foo", SOURCE_K8S).unwrap(),
            Label::k8s("app", "foo")
        );
        assert_eq!(
            Label::parse("reserved:world", SOURCE_K8S).unwrap(),
            Label::reserved("world")
        );
        assert_eq!(
            Label::parse("app.kubernetes.io/name=web", SOURCE_ANY).unwrap(),
            Label::new(SOURCE_ANY, "app.kubernetes.io/name", "web")
        );
        // A `:` inside the value does not make a source.
        assert_eq!(
            Label::parse("url=a:b", SOURCE_K8S).unwrap(),
            Label::k8s("url", "a:b")
        );
    }

    #[test]
    fn rejects_empty_parts() {
        assert!(matches!(
            Label::parse("=x", SOURCE_K8S),
            Err(LabelError::EmptyKey { .. })
        ));
        assert!(matches!(
            Label::parse(":x", SOURCE_K8S),
            Err(LabelError::EmptySource { .. })
        ));
        assert!(matches!(
            Label::parse("k8s:", SOURCE_K8S),
            Err(LabelError::EmptyKey { .. })
        ));
    }

    #[test]
    fn sets_are_sorted_and_unique_per_key() {
        let a = LabelSet::parse(["b=2", "a=1", "b=3"], SOURCE_K8S).unwrap();
        let b = LabelSet::parse(["a=1", "k8s:b=3"], SOURCE_K8S).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "[k8s:a=1 k8s:b=3]");
        assert!(a.has_key(SOURCE_ANY, "b"));
        assert!(!a.has_key(SOURCE_RESERVED, "b"));
    }
}
