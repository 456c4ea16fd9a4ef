//! Security identities: the reserved ones (1–10), label-set identities allocated from
//! [`IDENTITY_USER_MIN`], and node-local CIDR identities (`IDENTITY_LOCAL_SCOPE | n`).
//!
//! Label-set allocation sits behind [`IdentityAllocator`] so a cluster-wide allocator (NATS KV
//! compare-and-set) can replace the [`LocalAllocator`] of standalone mode. CIDR identities are
//! always node-local, as in Cilium.
#![deny(unsafe_code)]

use std::collections::BTreeMap;

use ipnet::IpNet;
use thiserror::Error;

use crate::datapath::{
    IDENTITY_HEALTH, IDENTITY_HOST, IDENTITY_INGRESS, IDENTITY_INIT, IDENTITY_KUBE_APISERVER,
    IDENTITY_LOCAL_SCOPE, IDENTITY_REMOTE_NODE, IDENTITY_UNMANAGED, IDENTITY_USER_MIN,
    IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6,
};
use crate::labels::{Label, LabelSet, SOURCE_CIDR};

/// Errors of identity allocation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The allocator ran out of identities.
    #[error("identity space exhausted: no {scope} identity left")]
    Exhausted {
        /// `label-set` or `CIDR`.
        scope: &'static str,
    },
    /// A reserved identity number without a definition.
    #[error("unknown reserved identity {id} (known: 1-10)")]
    UnknownReserved {
        /// The number.
        id: u32,
    },
}

/// Reserved identities and their names (the key of their `reserved:` label).
pub const RESERVED: [(u32, &str); 10] = [
    (IDENTITY_HOST, "host"),
    (IDENTITY_WORLD, "world"),
    (IDENTITY_UNMANAGED, "unmanaged"),
    (IDENTITY_HEALTH, "health"),
    (IDENTITY_INIT, "init"),
    (IDENTITY_REMOTE_NODE, "remote-node"),
    (IDENTITY_KUBE_APISERVER, "kube-apiserver"),
    (IDENTITY_INGRESS, "ingress"),
    (IDENTITY_WORLD_IPV4, "world-ipv4"),
    (IDENTITY_WORLD_IPV6, "world-ipv6"),
];

/// The labels of a reserved identity (`reserved:<name>`).
pub fn reserved_labels(id: u32) -> Result<LabelSet, IdentityError> {
    RESERVED
        .iter()
        .find(|(n, _)| *n == id)
        .map(|(_, name)| LabelSet::from_iter([Label::reserved(*name)]))
        .ok_or(IdentityError::UnknownReserved { id })
}

/// The reserved identity whose labels are exactly `labels`.
pub fn reserved_identity(labels: &LabelSet) -> Option<u32> {
    RESERVED
        .iter()
        .map(|(id, _)| *id)
        .find(|id| reserved_labels(*id).is_ok_and(|l| &l == labels))
}

/// The labels of the CIDR identity of `prefix`: `cidr:<prefix>` and `reserved:world` (CIDR
/// identities are outside the cluster).
pub fn cidr_labels(prefix: &IpNet) -> LabelSet {
    LabelSet::from_iter([
        Label::new(SOURCE_CIDR, prefix.to_string(), ""),
        Label::reserved("world"),
    ])
}

/// Allocates numeric identities for label sets.
///
/// Contract: the same label set always gets the same identity from one allocator; reserved
/// label sets get their reserved number; other identities are `>= IDENTITY_USER_MIN` and
/// below [`IDENTITY_LOCAL_SCOPE`].
pub trait IdentityAllocator {
    /// The identity of `labels`, allocating one if needed.
    fn allocate(&mut self, labels: &LabelSet) -> Result<u32, IdentityError>;
}

/// Process-local, deterministic allocator: identities are handed out in increasing order from
/// [`IDENTITY_USER_MIN`] and kept for the allocator's lifetime. The compiler allocates new label
/// sets in sorted order, so a fresh allocator gives the same numbers for the same input.
#[derive(Debug, Clone)]
pub struct LocalAllocator {
    by_labels: BTreeMap<LabelSet, u32>,
    next: u32,
}

impl Default for LocalAllocator {
    fn default() -> Self {
        Self {
            by_labels: BTreeMap::new(),
            next: IDENTITY_USER_MIN,
        }
    }
}

impl LocalAllocator {
    /// An empty allocator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every allocated identity with its labels.
    pub fn allocated(&self) -> impl Iterator<Item = (u32, &LabelSet)> {
        self.by_labels.iter().map(|(l, id)| (*id, l))
    }
}

impl IdentityAllocator for LocalAllocator {
    fn allocate(&mut self, labels: &LabelSet) -> Result<u32, IdentityError> {
        if let Some(id) = reserved_identity(labels) {
            return Ok(id);
        }
        if let Some(id) = self.by_labels.get(labels) {
            return Ok(*id);
        }
        if self.next >= IDENTITY_LOCAL_SCOPE {
            return Err(IdentityError::Exhausted { scope: "label-set" });
        }
        let id = self.next;
        self.next += 1;
        self.by_labels.insert(labels.clone(), id);
        Ok(id)
    }
}

/// Node-local allocator of CIDR identities: `IDENTITY_LOCAL_SCOPE | n`, `n` from 1, one per
/// distinct prefix, stable for the allocator's lifetime.
#[derive(Debug, Clone, Default)]
pub struct CidrAllocator {
    by_prefix: BTreeMap<IpNet, u32>,
}

impl CidrAllocator {
    /// An empty allocator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity of `prefix` (host bits are cleared first).
    pub fn allocate(&mut self, prefix: IpNet) -> Result<u32, IdentityError> {
        let prefix = prefix.trunc();
        if let Some(id) = self.by_prefix.get(&prefix) {
            return Ok(*id);
        }
        let n = u32::try_from(self.by_prefix.len() + 1)
            .ok()
            .filter(|n| *n < IDENTITY_LOCAL_SCOPE)
            .ok_or(IdentityError::Exhausted { scope: "CIDR" })?;
        let id = IDENTITY_LOCAL_SCOPE | n;
        self.by_prefix.insert(prefix, id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::SOURCE_K8S;

    #[test]
    fn reserved_sets_get_reserved_numbers() {
        let mut a = LocalAllocator::new();
        assert_eq!(
            a.allocate(&reserved_labels(IDENTITY_HOST).unwrap()),
            Ok(IDENTITY_HOST)
        );
        assert_eq!(
            a.allocate(&reserved_labels(IDENTITY_WORLD).unwrap()),
            Ok(IDENTITY_WORLD)
        );
        assert!(reserved_labels(42).is_err());
        assert!(reserved_labels(0).is_err());
    }

    #[test]
    fn label_sets_are_stable_and_start_at_user_min() {
        let mut a = LocalAllocator::new();
        let web = LabelSet::parse(["app=web"], SOURCE_K8S).unwrap();
        let db = LabelSet::parse(["app=db"], SOURCE_K8S).unwrap();
        assert_eq!(a.allocate(&web), Ok(IDENTITY_USER_MIN));
        assert_eq!(a.allocate(&db), Ok(IDENTITY_USER_MIN + 1));
        assert_eq!(a.allocate(&web), Ok(IDENTITY_USER_MIN));
        assert_eq!(a.allocated().count(), 2);
    }

    #[test]
    fn cidr_identities_are_local_scope_and_per_prefix() {
        let mut c = CidrAllocator::new();
        let a = c.allocate("10.0.0.0/8".parse().unwrap()).unwrap();
        let b = c.allocate("10.1.2.3/8".parse().unwrap()).unwrap();
        let d = c.allocate("::/0".parse().unwrap()).unwrap();
        assert_eq!(a, IDENTITY_LOCAL_SCOPE | 1);
        assert_eq!(a, b);
        assert_eq!(d, IDENTITY_LOCAL_SCOPE | 2);
        assert!(
            cidr_labels(&"10.0.0.0/8".parse().unwrap())
                .to_string()
                .contains("reserved:world")
        );
    }
}
