//! The reference evaluator: policy semantics stated directly over policies, endpoints and peers,
//! with no knowledge of map layouts or identity numbers. It is the oracle the compiler (and,
//! through it, the datapath) is tested against.
//!
//! Semantics, following Cilium:
//! - the peer is the local endpoint or ipcache peer whose prefix most specifically covers the
//!   peer address; otherwise the CIDR identity of the most specific CIDR named by any policy
//!   that covers it; otherwise world. CIDR selectors never match in-cluster peers;
//! - a rule applies when its subject selects the endpoint; a direction is in default-deny mode
//!   when an applying rule enforces it ([`Rule::enforces`]);
//! - any matching deny drops (reason 181), whichever policy it comes from; otherwise any
//!   matching allow forwards; otherwise an enforced direction drops (reason 133);
//! - audit (per endpoint or global) forwards would-be drops and reports them as AUDIT.
#![deny(unsafe_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

use crate::compile::CompileInput;
use crate::datapath::{
    DROP_POLICY_DENIED, DROP_POLICY_DENY, MATCH_NONE, VERDICT_AUDIT, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};
use crate::identity::{IdentityError, cidr_labels, reserved_labels};
use crate::labels::LabelSet;
use crate::rule::{Direction, MatchKind, PeerSelector, PeerView, Peers, Policy, PolicyRef, Rule};

/// Errors of evaluation (invalid input).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The packet's direction is not `DIR_INGRESS` or `DIR_EGRESS`.
    #[error("invalid direction {direction}")]
    Direction {
        /// The value given.
        direction: u8,
    },
    /// An ipcache peer has an invalid identity.
    #[error("ipcache peer {prefix}: {source}")]
    Peer {
        /// The peer's prefix.
        prefix: IpNet,
        /// Why.
        #[source]
        source: IdentityError,
    },
}

/// A packet as policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Endpoint the packet enters or leaves.
    pub endpoint_id: u32,
    /// `DIR_INGRESS` (towards the endpoint) or `DIR_EGRESS`.
    pub direction: u8,
    /// The other side's address (source for ingress, destination for egress).
    pub peer: IpAddr,
    /// IP protocol.
    pub protocol: u8,
    /// Destination port; ICMP type for ICMP/ICMPv6.
    pub dport: u16,
}

/// Outcome of policy for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Forwarded.
    Forwarded,
    /// Dropped with a `DROP_*` reason (133 no allow rule, 181 deny rule).
    Dropped {
        /// The reason.
        reason: u8,
    },
    /// Would have been dropped with `reason`; forwarded because of audit mode.
    Audit {
        /// The would-be reason.
        reason: u8,
    },
}

impl Verdict {
    /// The datapath `VERDICT_*` value.
    pub fn datapath(self) -> u8 {
        match self {
            Self::Forwarded => VERDICT_FORWARDED,
            Self::Dropped { .. } => VERDICT_DROPPED,
            Self::Audit { .. } => VERDICT_AUDIT,
        }
    }

    /// The drop reason (0 when forwarded).
    pub fn reason(self) -> u8 {
        match self {
            Self::Forwarded => 0,
            Self::Dropped { reason } | Self::Audit { reason } => reason,
        }
    }
}

/// The evaluator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Verdict.
    pub verdict: Verdict,
    /// `MATCH_*` of the deciding match: the most specific one of the deciding action
    /// (specific peer before wildcard, then port before protocol before any); `MATCH_NONE`
    /// when no rule matched.
    pub match_type: u8,
    /// Policies with an allow rule matching the packet (sorted).
    pub allowed_by: Vec<PolicyRef>,
    /// Policies with a deny rule matching the packet (sorted).
    pub denied_by: Vec<PolicyRef>,
}

/// The peer the evaluator resolved an address to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPeer {
    /// Labels of the peer's identity.
    pub labels: LabelSet,
    /// The policy CIDR when the peer is a CIDR identity.
    pub cidr: Option<IpNet>,
}

/// Resolves `addr` to the peer policy sees (see the module documentation).
pub fn resolve_peer(input: &CompileInput, addr: IpAddr) -> Result<ResolvedPeer, EvalError> {
    // In-cluster candidates, in precedence order for equal prefixes: endpoints by id, then
    // peers in input order.
    let mut best: Option<(u8, LabelSet)> = None;
    let mut endpoints: Vec<_> = input.endpoints.iter().collect();
    endpoints.sort_by_key(|e| e.id);
    for ep in endpoints {
        if ep.addresses.contains(&addr) {
            let len = IpNet::from(addr).prefix_len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, ep.identity_labels()));
            }
        }
    }
    for peer in &input.peers {
        let prefix = peer.prefix.trunc();
        if prefix.contains(&addr) && best.as_ref().is_none_or(|(l, _)| prefix.prefix_len() > *l) {
            let labels = peer
                .labels()
                .map_err(|source| EvalError::Peer { prefix, source })?;
            best = Some((prefix.prefix_len(), labels));
        }
    }
    if let Some((_, labels)) = best {
        return Ok(ResolvedPeer { labels, cidr: None });
    }
    let cidr = policy_cidrs(&input.policies)
        .into_iter()
        .filter(|c| c.contains(&addr))
        .max_by_key(IpNet::prefix_len);
    Ok(match cidr {
        Some(c) => ResolvedPeer {
            labels: cidr_labels(&c),
            cidr: Some(c),
        },
        None => ResolvedPeer {
            labels: reserved_labels(crate::datapath::IDENTITY_WORLD).unwrap_or_default(),
            cidr: None,
        },
    })
}

/// Every prefix named by a CIDR selector (prefix or exception) of any policy.
pub fn policy_cidrs(policies: &[Policy]) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for r in policies.iter().flat_map(|p| &p.rules) {
        for pr in r
            .ingress
            .iter()
            .chain(&r.ingress_deny)
            .chain(&r.egress)
            .chain(&r.egress_deny)
        {
            if let Peers::Selected(sels) = &pr.peers {
                for s in sels {
                    if let PeerSelector::Cidr(set) = s {
                        out.insert(set.cidr.trunc());
                        out.extend(set.except.iter().map(IpNet::trunc));
                    }
                }
            }
        }
    }
    out
}

/// Evaluates policy for `packet`. An unknown endpoint is not subject to policy (forwarded).
pub fn evaluate(input: &CompileInput, packet: &Packet) -> Result<Decision, EvalError> {
    let dir = Direction::from_datapath(packet.direction).ok_or(EvalError::Direction {
        direction: packet.direction,
    })?;
    let forwarded = Decision {
        verdict: Verdict::Forwarded,
        match_type: MATCH_NONE,
        allowed_by: Vec::new(),
        denied_by: Vec::new(),
    };
    let Some(ep) = input.endpoints.iter().find(|e| e.id == packet.endpoint_id) else {
        return Ok(forwarded);
    };
    let labels = ep.identity_labels();
    let peer = resolve_peer(input, packet.peer)?;
    let view = PeerView {
        labels: &peer.labels,
        cidr: peer.cidr.as_ref(),
    };

    // Ingress names resolve through the subject's own ports (it is the destination); egress
    // names through every known endpoint's.
    let named = match dir {
        Direction::Ingress => ep.named_port_map(),
        Direction::Egress => crate::endpoint::all_named_ports(&input.endpoints),
    };
    let mut enforced = false;
    let (mut allowed_by, mut denied_by) = (BTreeSet::new(), BTreeSet::new());
    let (mut best_allow, mut best_deny): (Option<MatchKind>, Option<MatchKind>) = (None, None);
    for policy in &input.policies {
        for rule in policy.rules.iter().filter(|r| r.subject.matches(&labels)) {
            enforced |= rule.enforces(dir);
            let check = |conds: &[crate::rule::PeerRule],
                         by: &mut BTreeSet<PolicyRef>,
                         best: &mut Option<MatchKind>| {
                for c in conds {
                    let kinds = c.match_kinds(view, packet.protocol, packet.dport, &named);
                    if let Some(k) = kinds.into_iter().max() {
                        by.insert(policy.reference.clone());
                        *best = (*best).max(Some(k));
                    }
                }
            };
            check(Rule::denies(rule, dir), &mut denied_by, &mut best_deny);
            check(Rule::allows(rule, dir), &mut allowed_by, &mut best_allow);
        }
    }

    let (verdict, match_type) = if let Some(k) = best_deny {
        (
            Verdict::Dropped {
                reason: DROP_POLICY_DENY,
            },
            k.match_type(),
        )
    } else if let Some(k) = best_allow {
        (Verdict::Forwarded, k.match_type())
    } else if enforced {
        (
            Verdict::Dropped {
                reason: DROP_POLICY_DENIED,
            },
            MATCH_NONE,
        )
    } else {
        (Verdict::Forwarded, MATCH_NONE)
    };
    let verdict = match verdict {
        Verdict::Dropped { reason } if ep.audit || input.global_audit => Verdict::Audit { reason },
        v => v,
    };
    Ok(Decision {
        verdict,
        match_type,
        allowed_by: allowed_by.into_iter().collect(),
        denied_by: denied_by.into_iter().collect(),
    })
}
