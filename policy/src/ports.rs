//! Layer-4 matches: protocols, ports and port ranges, ICMP types, and the decomposition of port
//! ranges into the bit prefixes the policy LPM trie matches on.
#![deny(unsafe_code)]

use std::fmt;

use serde::Deserialize;
use thiserror::Error;

use crate::datapath::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Errors of port and protocol validation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PortError {
    /// A port that is not a number in 0–65535.
    #[error("invalid port \"{port}\": expected a number in 0-65535")]
    Invalid {
        /// The port as written.
        port: String,
    },
    /// A port name that is not a valid `IANA_SVC_NAME`.
    #[error(
        "invalid port name \"{port}\": expected 1-15 characters a-z, 0-9 and '-', with at least \
         one letter and no leading, trailing or double '-'"
    )]
    InvalidName {
        /// The port as written.
        port: String,
    },
    /// `endPort` with a named port.
    #[error("invalid port range: endPort {end_port} cannot follow the named port \"{port}\"")]
    NamedRange {
        /// The port name.
        port: String,
        /// The `endPort` given.
        end_port: u32,
    },
    /// `endPort` without a `port`, or smaller than it.
    #[error("invalid port range {port}-{end_port}: endPort must be >= port and port non-zero")]
    InvalidRange {
        /// The start of the range.
        port: u16,
        /// The end of the range.
        end_port: u32,
    },
    /// An ICMP type outside 0–255 and not a type name of its family.
    #[error(
        "invalid ICMP type \"{value}\": expected a number in 0-255 or a {family:?} type name ({})",
        family.type_names().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    IcmpType {
        /// The type as written.
        value: String,
        /// The family it was read for.
        family: IcmpFamily,
    },
}

/// Protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
    /// TCP, UDP and SCTP with ports; every protocol without ports.
    #[serde(rename = "ANY")]
    Any,
}

impl Protocol {
    /// The IP protocol numbers a port rule of this protocol expands to.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Self::Tcp => &[PROTO_TCP],
            Self::Udp => &[PROTO_UDP],
            Self::Sctp => &[PROTO_SCTP],
            Self::Any => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
        }
    }
}

/// ICMP family of an `icmps` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Default)]
pub enum IcmpFamily {
    /// ICMP (protocol 1).
    #[default]
    IPv4,
    /// ICMPv6 (protocol 58).
    IPv6,
}

/// ICMP type names Cilium accepts in `icmps[].fields[].type` (CamelCase), by family.
const ICMP_V4_NAMES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// ICMPv6 type names (RFC 4443 and the neighbour-discovery family), CamelCase.
const ICMP_V6_NAMES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

impl IcmpFamily {
    /// The IP protocol number.
    pub fn protocol(self) -> u8 {
        match self {
            Self::IPv4 => PROTO_ICMP,
            Self::IPv6 => PROTO_ICMPV6,
        }
    }

    /// The type names of the family and their numbers.
    pub fn type_names(self) -> &'static [(&'static str, u8)] {
        match self {
            Self::IPv4 => ICMP_V4_NAMES,
            Self::IPv6 => ICMP_V6_NAMES,
        }
    }

    /// The ICMP type `value` stands for in this family: a number 0–255 or a type name.
    pub fn icmp_type(self, value: &Scalar) -> Result<u8, PortError> {
        let err = || PortError::IcmpType {
            value: value.to_string(),
            family: self,
        };
        match value {
            Scalar::Int(i) => u8::try_from(*i).map_err(|_| err()),
            Scalar::Str(t) => match t.trim().parse::<i64>() {
                Ok(i) => u8::try_from(i).map_err(|_| err()),
                Err(_) => self
                    .type_names()
                    .iter()
                    .find(|(name, _)| *name == t.trim())
                    .map(|(_, n)| *n)
                    .ok_or_else(err),
            },
        }
    }
}

/// An inclusive destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    /// The minimal set of `(value, prefix_len)` port prefixes covering the range exactly.
    pub fn prefixes(self) -> Vec<(u16, u8)> {
        range_prefixes(self.start, self.end)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The minimal set of `(value, prefix_len)` 16-bit prefixes whose union is `[lo, hi]`, in
/// ascending order (empty when `lo > hi`).
pub fn range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // Largest aligned block starting at `lo` that does not pass `hi`.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

/// A port name (`IANA_SVC_NAME`: at most 15 characters), stored inline so matches stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortName {
    len: u8,
    bytes: [u8; 15],
}

impl PortName {
    /// Validates `name` as an `IANA_SVC_NAME` (RFC 6335: 1–15 of `a-z0-9-`, at least one
    /// letter, no leading/trailing hyphen, no two hyphens in a row).
    pub fn new(name: &str) -> Result<Self, PortError> {
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 15
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.iter().any(u8::is_ascii_lowercase)
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && !name.contains("--");
        if !ok {
            return Err(PortError::InvalidName {
                port: name.to_owned(),
            });
        }
        let mut bytes = [0u8; 15];
        bytes[..b.len()].copy_from_slice(b);
        Ok(Self {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (validated in `new`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Named ports in scope of a rule: name → the (protocol, port) pairs workloads declare for it.
pub type NamedPorts =
    std::collections::BTreeMap<String, std::collections::BTreeSet<(Protocol, u16)>>;

/// One layer-4 match of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Match {
    /// A protocol with all ports (`ports: None`) or a port range. `Any` without ports matches
    /// every IP protocol, ICMP included.
    Port {
        /// Protocol.
        protocol: Protocol,
        /// Port range, or all ports.
        ports: Option<PortRange>,
    },
    /// A named port (`port: http`): resolved through the workloads' declared ports before it
    /// is matched or compiled (see [`L4Match::resolve`]).
    Named {
        /// Protocol (`Any`: whatever protocol the workload declares for the name).
        protocol: Protocol,
        /// The name.
        name: PortName,
    },
    /// An ICMP or ICMPv6 type.
    Icmp {
        /// Family.
        family: IcmpFamily,
        /// ICMP type.
        icmp_type: u8,
    },
}

/// How specific an L4 match is: what the datapath's longest-prefix match prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Level {
    /// Any protocol, any port.
    None,
    /// One protocol, any port.
    Protocol,
    /// A port (range) or ICMP type.
    Port,
}

impl L4Match {
    /// Whether a packet of `protocol` to `dport` (ICMP: type) matches.
    pub fn matches(&self, protocol: u8, dport: u16) -> bool {
        match *self {
            Self::Port { protocol: p, ports } => {
                let proto_ok = if p == Protocol::Any && ports.is_none() {
                    true
                } else {
                    p.numbers().contains(&protocol)
                };
                proto_ok && ports.is_none_or(|r| r.contains(dport))
            }
            Self::Icmp { family, icmp_type } => {
                protocol == family.protocol() && dport == u16::from(icmp_type)
            }
            // Unresolved names match nothing; resolve them first.
            Self::Named { .. } => false,
        }
    }

    /// Replaces named ports by the port numbers `named` declares for them with a compatible
    /// protocol (a name nobody declares matches nothing, as in Cilium); other matches are kept.
    pub fn resolve(l4: &[Self], named: &NamedPorts) -> Vec<Self> {
        let mut out = Vec::with_capacity(l4.len());
        for m in l4 {
            let Self::Named { protocol, name } = *m else {
                out.push(*m);
                continue;
            };
            for &(declared, port) in named.get(name.as_str()).into_iter().flatten() {
                if protocol == Protocol::Any || protocol == declared {
                    out.push(Self::Port {
                        protocol: declared,
                        ports: Some(PortRange {
                            start: port,
                            end: port,
                        }),
                    });
                }
            }
        }
        out
    }

    /// The specificity of the match.
    pub fn level(&self) -> L4Level {
        match *self {
            Self::Port {
                protocol: Protocol::Any,
                ports: None,
            } => L4Level::None,
            Self::Port { ports: None, .. } => L4Level::Protocol,
            Self::Port { ports: Some(_), .. } | Self::Icmp { .. } | Self::Named { .. } => {
                L4Level::Port
            }
        }
    }
}

/// A port as written in a manifest: a number, a numeric string (`0` means all ports) or a port
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Scalar")]
pub enum Port {
    /// A port number.
    Number(u16),
    /// A named port.
    Name(PortName),
}

/// A YAML scalar that may be written as a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A number.
    Int(i64),
    /// A string.
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

impl TryFrom<Scalar> for Port {
    type Error = PortError;

    fn try_from(s: Scalar) -> Result<Self, Self::Error> {
        let text = s.to_string();
        let n = match s {
            Scalar::Int(i) => i,
            Scalar::Str(ref t) => match t.trim().parse::<i64>() {
                Ok(n) => n,
                Err(_) if t.chars().any(|c| c.is_ascii_alphabetic()) => {
                    return PortName::new(t.trim()).map(Port::Name);
                }
                Err(_) => return Err(PortError::Invalid { port: text }),
            },
        };
        u16::try_from(n)
            .map(Port::Number)
            .map_err(|_| PortError::Invalid { port: text })
    }
}

/// The match for `protocol` with `port`/`endPort`: a named port, or a range where `port` 0 (or
/// absent) without `endPort` is all ports.
pub fn port_match(
    protocol: Protocol,
    port: Option<Port>,
    end_port: Option<u32>,
) -> Result<L4Match, PortError> {
    match port {
        Some(Port::Name(name)) => match end_port {
            None => Ok(L4Match::Named { protocol, name }),
            Some(end_port) => Err(PortError::NamedRange {
                port: name.to_string(),
                end_port,
            }),
        },
        Some(Port::Number(n)) => Ok(L4Match::Port {
            protocol,
            ports: port_range(n, end_port)?,
        }),
        None => Ok(L4Match::Port {
            protocol,
            ports: port_range(0, end_port)?,
        }),
    }
}

/// Builds the range for `port`/`endPort`: `port` 0 without `endPort` is all ports.
fn port_range(start: u16, end_port: Option<u32>) -> Result<Option<PortRange>, PortError> {
    match end_port {
        None if start == 0 => Ok(None),
        None => Ok(Some(PortRange { start, end: start })),
        Some(end) => match u16::try_from(end) {
            Ok(e) if start != 0 && e >= start => Ok(Some(PortRange { start, end: e })),
            _ => Err(PortError::InvalidRange {
                port: start,
                end_port: end,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u16> {
        let mut v: Vec<u16> = prefixes
            .iter()
            .flat_map(|&(base, len)| {
                let size = 1u32 << (16 - u32::from(len));
                (0..size).map(move |i| (u32::from(base) + i) as u16)
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn single_port_is_one_full_prefix() {
        assert_eq!(range_prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn full_range_is_one_empty_prefix() {
        assert_eq!(range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_prefixes(32768, 65535), vec![(32768, 1)]);
    }

    #[test]
    fn ranges_decompose_minimally() {
        assert_eq!(range_prefixes(8080, 8081), vec![(8080, 15)]);
        assert_eq!(range_prefixes(1, 65535).len(), 16);
        assert_eq!(range_prefixes(1024, 2047), vec![(1024, 6)]);
        // 1000-1999: a classic worst-ish case, still small.
        let p = range_prefixes(1000, 1999);
        assert!(p.len() <= 2 * 16 - 2, "{p:?}");
        assert_eq!(covered(&p), (1000..=1999).collect::<Vec<u16>>());
    }

    #[test]
    fn decomposition_is_exact_for_many_ranges() {
        for (lo, hi) in [
            (0, 0),
            (1, 1),
            (3, 17),
            (65534, 65535),
            (0, 1023),
            (443, 8443),
        ] {
            assert_eq!(
                covered(&range_prefixes(lo, hi)),
                (lo..=hi).collect::<Vec<u16>>()
            );
        }
        assert!(range_prefixes(5, 4).is_empty());
    }

    #[test]
    fn ports_parse_from_numbers_and_strings() {
        assert_eq!(Port::try_from(Scalar::Int(80)), Ok(Port::Number(80)));
        assert_eq!(
            Port::try_from(Scalar::Str("443".into())),
            Ok(Port::Number(443))
        );
        assert_eq!(
            Port::try_from(Scalar::Str("http-alt9".into())),
            Ok(Port::Name(PortName::new("http-alt9").unwrap()))
        );
        for bad in [
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "abcdefghijklmnop",
            "web_ui",
        ] {
            assert!(
                matches!(
                    Port::try_from(Scalar::Str(bad.into())),
                    Err(PortError::InvalidName { .. } | PortError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Port::try_from(Scalar::Int(70000)),
            Err(PortError::Invalid { .. })
        ));
        assert!(matches!(
            Port::try_from(Scalar::Str("-1".into())),
            Err(PortError::Invalid { .. })
        ));
    }

    #[test]
    fn port_ranges_validate() {
        let tcp = |ports| L4Match::Port {
            protocol: Protocol::Tcp,
            ports,
        };
        let m = |port, end| port_match(Protocol::Tcp, port, end);
        assert_eq!(m(None, None), Ok(tcp(None)));
        assert_eq!(m(Some(Port::Number(0)), None), Ok(tcp(None)));
        assert_eq!(
            m(Some(Port::Number(80)), Some(90)),
            Ok(tcp(Some(PortRange { start: 80, end: 90 })))
        );
        assert!(m(Some(Port::Number(90)), Some(80)).is_err());
        assert!(m(None, Some(80)).is_err());
        assert!(m(Some(Port::Number(1)), Some(70000)).is_err());
        let http = PortName::new("http").unwrap();
        assert_eq!(
            m(Some(Port::Name(http)), None),
            Ok(L4Match::Named {
                protocol: Protocol::Tcp,
                name: http
            })
        );
        assert!(matches!(
            m(Some(Port::Name(http)), Some(90)),
            Err(PortError::NamedRange { .. })
        ));
    }

    #[test]
    fn named_ports_resolve_through_declared_ports_with_a_compatible_protocol() {
        let mut named = NamedPorts::new();
        named.entry("http".into()).or_default().extend([
            (Protocol::Tcp, 8080),
            (Protocol::Tcp, 80),
            (Protocol::Udp, 443),
        ]);
        let http = PortName::new("http").unwrap();
        let single = |protocol, p| L4Match::Port {
            protocol,
            ports: Some(PortRange { start: p, end: p }),
        };
        let tcp = L4Match::Named {
            protocol: Protocol::Tcp,
            name: http,
        };
        assert_eq!(
            L4Match::resolve(&[tcp], &named),
            [single(Protocol::Tcp, 80), single(Protocol::Tcp, 8080)]
        );
        let any = L4Match::Named {
            protocol: Protocol::Any,
            name: http,
        };
        assert_eq!(L4Match::resolve(&[any], &named).len(), 3);
        let dns = L4Match::Named {
            protocol: Protocol::Udp,
            name: PortName::new("dns").unwrap(),
        };
        assert!(
            L4Match::resolve(&[dns], &named).is_empty(),
            "undeclared names match nothing"
        );
        assert!(
            !tcp.matches(PROTO_TCP, 80),
            "unresolved names match nothing"
        );
    }

    #[test]
    fn any_protocol_without_ports_matches_icmp() {
        let any = L4Match::Port {
            protocol: Protocol::Any,
            ports: None,
        };
        assert!(any.matches(PROTO_ICMP, 8));
        let any80 = L4Match::Port {
            protocol: Protocol::Any,
            ports: Some(PortRange { start: 80, end: 80 }),
        };
        assert!(any80.matches(PROTO_SCTP, 80));
        assert!(!any80.matches(PROTO_ICMP, 80));
        let echo = L4Match::Icmp {
            family: IcmpFamily::IPv4,
            icmp_type: 8,
        };
        assert!(echo.matches(PROTO_ICMP, 8));
        assert!(!echo.matches(PROTO_ICMPV6, 8));
    }
}
