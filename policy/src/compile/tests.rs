use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::datapath::{
    DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST, IDENTITY_KUBE_APISERVER, IDENTITY_LOCAL_SCOPE,
    IDENTITY_REMOTE_NODE, IDENTITY_USER_MIN, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use crate::endpoint::NamedPort;
use crate::endpoint::PeerIdentity;
use crate::eval::{Packet, Verdict, evaluate};
use crate::labels::{Label, SOURCE_K8S};
use crate::manifest::parse_manifests;
use crate::ports::{IcmpFamily, PortName, PortRange};
use crate::rule::{CidrSet, DefaultDeny, Entity, PeerRule, PeerSelector, Peers, PolicyKind, Rule};
use crate::selector::{EndpointSelector, ExpressionSpec, LabelSelectorSpec, Operator};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ep(id: u32, ns: &str, labels: &[&str], addr: &str) -> Endpoint {
    Endpoint::new(
        id,
        format!("pod{id}"),
        ns,
        LabelSet::parse(labels.iter().copied(), SOURCE_K8S).unwrap(),
        vec![ip(addr)],
    )
}

fn input(yaml: &str, endpoints: Vec<Endpoint>) -> CompileInput {
    CompileInput {
        endpoints,
        peers: vec![
            IpcachePeer {
                prefix: "192.168.1.1/32".parse().unwrap(),
                identity: PeerIdentity::Reserved(IDENTITY_HOST),
            },
            IpcachePeer {
                prefix: "192.168.2.0/24".parse().unwrap(),
                identity: PeerIdentity::Reserved(IDENTITY_REMOTE_NODE),
            },
        ],
        policies: parse_manifests("test.yaml", yaml).unwrap(),
        global_audit: false,
    }
}

/// Checks the compiled lookup against the evaluator and returns the lookup result.
fn check(input: &CompileInput, c: &Compiled, p: Packet) -> (LookupResult, crate::eval::Decision) {
    let d = evaluate(input, &p).unwrap();
    let r = c.lookup(p.endpoint_id, p.direction, p.peer, p.protocol, p.dport);
    assert_eq!(
        (r.verdict, r.reason),
        (d.verdict.datapath(), d.verdict.reason()),
        "{p:?}: {d:?} vs {r:?}"
    );
    assert_eq!(r.match_type, d.match_type, "{p:?}: {d:?} vs {r:?}");
    let by = if d.verdict.reason() == DROP_POLICY_DENY {
        &d.denied_by
    } else {
        &d.allowed_by
    };
    let origin = c.origin(r.rule_id);
    assert!(
        origin.iter().all(|o| by.contains(o)),
        "{p:?}: origin {origin:?} not in {by:?}"
    );
    if r.match_type != MATCH_NONE {
        assert!(!origin.is_empty(), "{p:?}: deciding entry without origin");
    }
    if by.len() == 1 && r.match_type != MATCH_NONE {
        assert_eq!(origin, by.as_slice(), "{p:?}");
    }
    (r, d)
}

fn pkt(endpoint_id: u32, direction: u8, peer: &str, protocol: u8, dport: u16) -> Packet {
    Packet {
        endpoint_id,
        direction,
        peer: ip(peer),
        protocol,
        dport,
    }
}

const WEB: &str = include_str!("../../tests/fixtures/web.yaml");

fn shop() -> CompileInput {
    input(
        WEB,
        vec![
            ep(1, "shop", &["app=web"], "10.0.0.1"),
            ep(2, "shop", &["app=frontend"], "10.0.0.2"),
            ep(3, "shop", &["app=db"], "10.0.0.3"),
            ep(4, "other", &["app=frontend"], "10.0.0.4"),
            ep(5, "kube-system", &["k8s-app=kube-dns"], "10.0.0.5"),
        ],
    )
}

#[test]
fn fixture_policies_behave_as_written() {
    let input = shop();
    let c = compile(&input).unwrap();
    let fwd = |r: &LookupResult| r.verdict == VERDICT_FORWARDED;
    // World reaches web on 80 through the world entity (specific identities).
    let (r, d) = check(&input, &c, pkt(1, DIR_INGRESS, "8.8.8.8", PROTO_TCP, 80));
    assert!(fwd(&r));
    assert_eq!(r.match_type, MATCH_L3_L4);
    assert_eq!(d.allowed_by[0].name, "web");
    // Frontend in the same namespace reaches the port range, the one in `other` does not.
    assert!(fwd(&check(
        &input,
        &c,
        pkt(1, DIR_INGRESS, "10.0.0.2", PROTO_TCP, 8085)
    )
    .0));
    let (r, _) = check(&input, &c, pkt(1, DIR_INGRESS, "10.0.0.4", PROTO_TCP, 8085));
    assert_eq!((r.verdict, r.reason), (VERDICT_DROPPED, DROP_POLICY_DENIED));
    // The ping policy lets the cluster ping: ICMP echo yes, UDP no.
    assert!(fwd(&check(
        &input,
        &c,
        pkt(1, DIR_INGRESS, "10.0.0.4", PROTO_ICMP, 8)
    )
    .0));
    assert!(!fwd(&check(
        &input,
        &c,
        pkt(1, DIR_INGRESS, "10.0.0.4", PROTO_ICMP, 0)
    )
    .0));
    // DNS to kube-system over ANY: UDP and TCP.
    assert!(fwd(&check(
        &input,
        &c,
        pkt(1, DIR_EGRESS, "10.0.0.5", PROTO_UDP, 53)
    )
    .0));
    assert!(fwd(&check(
        &input,
        &c,
        pkt(1, DIR_EGRESS, "10.0.0.5", PROTO_TCP, 53)
    )
    .0));
    // db: ingress deny of 10/8 except 10.96/12 applies only to CIDR identities (not pods).
    assert!(fwd(&check(
        &input,
        &c,
        pkt(3, DIR_INGRESS, "10.0.0.1", PROTO_TCP, 5432)
    )
    .0));
    let (r, d) = check(
        &input,
        &c,
        pkt(3, DIR_INGRESS, "10.50.0.1", PROTO_TCP, 5432),
    );
    assert_eq!((r.verdict, r.reason), (VERDICT_DROPPED, DROP_POLICY_DENY));
    assert_eq!(d.denied_by[0].name, "db");
    let (r, _) = check(
        &input,
        &c,
        pkt(3, DIR_INGRESS, "10.96.0.1", PROTO_TCP, 5432),
    );
    assert_eq!(r.reason, DROP_POLICY_DENIED);
    // db egress: default deny off, but the deny rule for the world still drops.
    assert!(fwd(&check(
        &input,
        &c,
        pkt(3, DIR_EGRESS, "10.0.0.2", PROTO_TCP, 1)
    )
    .0));
    let (r, _) = check(&input, &c, pkt(3, DIR_EGRESS, "1.1.1.1", PROTO_TCP, 443));
    assert_eq!(r.reason, DROP_POLICY_DENY);
    // An endpoint no policy selects in ingress is not enforced there.
    assert!(fwd(&check(
        &input,
        &c,
        pkt(4, DIR_EGRESS, "1.1.1.1", PROTO_TCP, 443)
    )
    .0));
    // Unknown endpoints are not policed.
    assert!(fwd(&check(
        &input,
        &c,
        pkt(99, DIR_INGRESS, "1.1.1.1", PROTO_TCP, 443)
    )
    .0));
}

#[test]
fn output_is_deterministic_and_identities_are_numbered_from_user_min() {
    let input = shop();
    let a = compile(&input).unwrap();
    let b = compile(&input).unwrap();
    assert_eq!(a, b);
    let ids: Vec<u32> = a.endpoints().iter().map(|(_, i)| i.identity).collect();
    assert!(
        ids.iter()
            .all(|&i| (IDENTITY_USER_MIN..IDENTITY_USER_MIN + 5).contains(&i)),
        "{ids:?}"
    );
    // Two frontends in different namespaces have different identities.
    assert_ne!(ids[1], ids[3]);
    // The CIDR identities of 10.0.0.0/8 and 10.96.0.0/12 are in the ipcache.
    let cidr: Vec<String> = a
        .ipcache_v4()
        .iter()
        .filter(|(_, e)| e.identity & IDENTITY_LOCAL_SCOPE != 0)
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(cidr, ["10.0.0.0/8", "10.96.0.0/12"]);
    assert!(a.identities().contains_key(&IDENTITY_WORLD));
    assert!(a.policy().windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn allow_inside_deny_is_shadowed() {
    let yaml =
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: allow, namespace: n}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [world], toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]
---
apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny, namespace: n}
spec:
  endpointSelector: {}
  ingressDeny: [{fromEntities: [world]}]
";
    let input = input(yaml, vec![ep(1, "n", &["app=a"], "10.0.0.1")]);
    let c = compile(&input).unwrap();
    let (r, d) = check(&input, &c, pkt(1, DIR_INGRESS, "1.2.3.4", PROTO_TCP, 80));
    assert_eq!(r.reason, DROP_POLICY_DENY);
    assert_eq!(r.match_type, MATCH_L3_ONLY);
    assert_eq!(d.allowed_by.len(), 1);
    assert!(
        c.policy().iter().all(|(_, _, e)| e.action == ACTION_DENY),
        "{:?}",
        c.policy()
    );
}

#[test]
fn port_ranges_and_any_protocol_expand_to_prefixes() {
    let yaml =
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: n}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: '1', endPort: 65535}]}]}]
";
    let input = input(yaml, vec![ep(1, "n", &[], "10.0.0.1")]);
    let c = compile(&input).unwrap();
    // 16 prefixes for 1-65535, for each of TCP, UDP and SCTP; one wildcard-identity group.
    assert_eq!(c.policy().len(), 48);
    assert!(c.policy().iter().all(|(_, k, e)| k.identity == IDENTITY_ANY
        && e.match_type == u32::from(MATCH_L4_ONLY)));
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
        assert_eq!(
            check(&input, &c, pkt(1, DIR_INGRESS, "1.1.1.1", proto, 65535))
                .0
                .verdict,
            VERDICT_FORWARDED
        );
        assert_eq!(
            check(&input, &c, pkt(1, DIR_INGRESS, "1.1.1.1", proto, 0))
                .0
                .verdict,
            VERDICT_DROPPED
        );
    }
    assert_eq!(
        check(&input, &c, pkt(1, DIR_INGRESS, "1.1.1.1", PROTO_ICMP, 8))
            .0
            .verdict,
        VERDICT_DROPPED
    );
}

#[test]
fn audit_turns_drops_into_audit() {
    let yaml =
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: n}
spec:
  endpointSelector: {}
  ingress: [{}]
  egressDeny: [{toEntities: [all]}]
";
    let mut input = input(
        yaml,
        vec![ep(1, "n", &[], "10.0.0.1"), ep(2, "n", &[], "10.0.0.2")],
    );
    input.endpoints[0].audit = true;
    let c = compile(&input).unwrap();
    let r = check(&input, &c, pkt(1, DIR_INGRESS, "1.1.1.1", PROTO_TCP, 80)).0;
    assert_eq!((r.verdict, r.reason), (VERDICT_AUDIT, DROP_POLICY_DENIED));
    let r = check(&input, &c, pkt(1, DIR_EGRESS, "1.1.1.1", PROTO_TCP, 80)).0;
    assert_eq!((r.verdict, r.reason), (VERDICT_AUDIT, DROP_POLICY_DENY));
    let r = check(&input, &c, pkt(2, DIR_INGRESS, "1.1.1.1", PROTO_TCP, 80)).0;
    assert_eq!(r.verdict, VERDICT_DROPPED);
    input.global_audit = true;
    let c = compile(&input).unwrap();
    let r = check(&input, &c, pkt(2, DIR_INGRESS, "1.1.1.1", PROTO_TCP, 80)).0;
    assert_eq!(r.verdict, VERDICT_AUDIT);
}

#[test]
fn cidrs_inside_cluster_prefixes_stay_out_of_the_ipcache() {
    let yaml = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [192.168.2.128/25, 192.0.0.0/8]}]
";
    let input = input(yaml, vec![ep(1, "n", &[], "10.0.0.1")]);
    let c = compile(&input).unwrap();
    let nets: Vec<String> = c.ipcache_v4().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        nets,
        [
            "10.0.0.1/32",
            "192.0.0.0/8",
            "192.168.1.1/32",
            "192.168.2.0/24"
        ]
    );
    // 192.168.2.200 is a remote node, not the CIDR.
    let r = check(
        &input,
        &c,
        pkt(1, DIR_EGRESS, "192.168.2.200", PROTO_TCP, 1),
    )
    .0;
    assert_eq!(
        (r.peer_identity, r.reason),
        (IDENTITY_REMOTE_NODE, DROP_POLICY_DENIED)
    );
    let r = check(&input, &c, pkt(1, DIR_EGRESS, "192.1.1.1", PROTO_TCP, 1)).0;
    assert_eq!(r.verdict, VERDICT_FORWARDED);
}

#[test]
fn lpm_mask_keeps_leading_bits() {
    let b = [0xff; 12];
    assert_eq!(mask(b, 96), b);
    assert_eq!(mask(b, 72)[8..], [0xff, 0, 0, 0]);
    assert_eq!(mask(b, 81)[9..], [0xff, 0x80, 0]);
}

// ---------------------------------------------------------------------------------------------
// Property: the compiled lookup agrees with the reference evaluator.
// ---------------------------------------------------------------------------------------------

const NAMESPACES: [&str; 2] = ["ns1", "ns2"];
const CIDRS: [&str; 9] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.2.0/24",
    "8.8.0.0/16",
    "8.8.8.0/24",
    "192.168.0.0/16",
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
];
const PEER_ADDRS: [&str; 14] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "fd00::4",
    "10.1.2.3",
    "10.200.0.1",
    "8.8.8.8",
    "8.8.4.4",
    "1.1.1.1",
    "192.168.1.1",
    "192.168.1.10",
    "192.168.2.5",
    "2001:db8:1::1",
    "3000::1",
];
const PORT_RANGES: [(u16, u16); 6] = [
    (80, 80),
    (80, 90),
    (1, 1023),
    (53, 53),
    (8080, 8090),
    (443, 443),
];
/// Port names endpoints declare (the ports are among [`DPORTS`]).
const NAMED_PORTS: [(&str, Protocol, u16); 5] = [
    ("http", Protocol::Tcp, 80),
    ("http", Protocol::Tcp, 8080),
    ("dns", Protocol::Udp, 53),
    ("dns", Protocol::Tcp, 53),
    ("metrics", Protocol::Tcp, 1000),
];
const DPORTS: [u16; 10] = [0, 53, 80, 85, 90, 443, 1000, 8080, 8, 128];
const PROTOS: [u8; 6] = [
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    47,
];

fn label_strategy() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec!["app", "tier"]),
        prop::sample::select(vec!["a", "b", "c"]),
    )
        .prop_map(|(k, v)| (k.to_owned(), v.to_owned()))
}

fn selector_strategy() -> impl Strategy<Value = EndpointSelector> {
    let expr = (
        prop::sample::select(vec![
            "app",
            "tier",
            "k8s:app",
            "any:tier",
            "k8s:io.kubernetes.pod.namespace",
        ]),
        prop::sample::select(vec![
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]),
        prop::collection::btree_set(prop::sample::select(vec!["a", "b", "ns1"]), 1..3),
    )
        .prop_map(|(key, operator, values)| ExpressionSpec {
            key: key.to_owned(),
            operator,
            values: match operator {
                Operator::In | Operator::NotIn => values.into_iter().map(str::to_owned).collect(),
                _ => Vec::new(),
            },
        });
    let spec = (
        prop::collection::btree_map(
            prop::sample::select(vec![
                "app",
                "tier",
                "k8s:io.kubernetes.pod.namespace",
                "reserved:host",
            ]),
            prop::sample::select(vec!["a", "b", "ns1", ""]),
            0..2,
        ),
        prop::collection::vec(expr, 0..2),
    )
        .prop_map(|(ml, me)| LabelSelectorSpec {
            match_labels: ml
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions: me,
        });
    (
        spec,
        prop::option::of(prop::sample::select(NAMESPACES.to_vec())),
    )
        .prop_map(|(s, ns)| {
            let sel = EndpointSelector::from_spec(&s, crate::labels::SOURCE_ANY).unwrap();
            match ns {
                Some(ns) => sel.in_namespace(ns),
                None => sel,
            }
        })
}

fn peer_selector_strategy() -> impl Strategy<Value = PeerSelector> {
    let cidr = (
        prop::sample::select(CIDRS.to_vec()),
        prop::collection::vec(prop::sample::select(CIDRS.to_vec()), 0..2),
    )
        .prop_map(|(c, ex)| {
            PeerSelector::Cidr(CidrSet {
                cidr: c.parse().unwrap(),
                except: ex.iter().map(|e| e.parse().unwrap()).collect(),
            })
        });
    let entity = prop::sample::select(vec![
        Entity::World,
        Entity::Cluster,
        Entity::Host,
        Entity::RemoteNode,
        Entity::KubeApiserver,
        Entity::All,
        Entity::Health,
    ])
    .prop_map(PeerSelector::Entity);
    prop_oneof![
        3 => selector_strategy().prop_map(PeerSelector::Endpoints),
        2 => cidr,
        2 => entity,
    ]
}

fn l4_strategy() -> impl Strategy<Value = L4Match> {
    let port = (
        prop::sample::select(vec![
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Any,
        ]),
        prop::option::of(prop::sample::select(PORT_RANGES.to_vec())),
    )
        .prop_map(|(protocol, r)| L4Match::Port {
            protocol,
            ports: r.map(|(start, end)| PortRange { start, end }),
        });
    let icmp = (
        prop::sample::select(vec![IcmpFamily::IPv4, IcmpFamily::IPv6]),
        prop::sample::select(vec![0u8, 8, 128]),
    )
        .prop_map(|(family, icmp_type)| L4Match::Icmp { family, icmp_type });
    let named = (
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Any]),
        prop::sample::select(vec!["http", "dns", "metrics"]),
    )
        .prop_map(|(protocol, name)| L4Match::Named {
            protocol,
            name: PortName::new(name).unwrap(),
        });
    prop_oneof![4 => port, 1 => icmp, 1 => named]
}

fn peer_rule_strategy() -> impl Strategy<Value = PeerRule> {
    let peers = prop_oneof![
        1 => Just(Peers::Any),
        4 => prop::collection::vec(peer_selector_strategy(), 0..3).prop_map(Peers::Selected),
    ];
    (
        peers,
        prop::option::of(prop::collection::vec(l4_strategy(), 1..3)),
    )
        .prop_map(|(peers, l4)| PeerRule { peers, l4 })
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    let conds = || prop::collection::vec(peer_rule_strategy(), 0..3);
    let dd = prop::sample::select(vec![None, None, None, Some(true), Some(false)]);
    (
        selector_strategy(),
        conds(),
        conds(),
        conds(),
        conds(),
        dd.clone(),
        dd,
    )
        .prop_map(
            |(subject, ingress, ingress_deny, egress, egress_deny, i, e)| Rule {
                subject,
                // Keep deny rules less frequent than allows: trim them to one.
                ingress,
                ingress_deny: ingress_deny.into_iter().take(1).collect(),
                egress,
                egress_deny: egress_deny.into_iter().take(1).collect(),
                default_deny: DefaultDeny {
                    ingress: i,
                    egress: e,
                },
            },
        )
}

fn policy_strategy() -> impl Strategy<Value = Vec<Policy>> {
    prop::collection::vec(
        (
            prop::option::of(prop::sample::select(NAMESPACES.to_vec())),
            prop::collection::vec(rule_strategy(), 1..3),
        ),
        1..4,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .enumerate()
            .map(|(i, (ns, rules))| Policy {
                reference: PolicyRef {
                    kind: if ns.is_some() {
                        PolicyKind::CiliumNetworkPolicy
                    } else {
                        PolicyKind::CiliumClusterwideNetworkPolicy
                    },
                    namespace: ns.map(str::to_owned),
                    name: format!("p{i}"),
                },
                origin: format!("generated {i}"),
                rules,
            })
            .collect()
    })
}

fn endpoints_strategy() -> impl Strategy<Value = Vec<Endpoint>> {
    prop::collection::vec(
        (
            prop::sample::select(NAMESPACES.to_vec()),
            prop::collection::vec(label_strategy(), 0..3),
            prop::bool::weighted(0.15),
            prop::collection::vec(prop::sample::select(NAMED_PORTS.to_vec()), 0..3),
        ),
        1..5,
    )
    .prop_map(|eps| {
        eps.into_iter()
            .enumerate()
            .map(|(i, (ns, labels, audit, named))| {
                let id = i as u32 + 1;
                let mut addresses = vec![ip(&format!("10.0.0.{id}"))];
                if id == 4 {
                    addresses.push(ip("fd00::4"));
                }
                Endpoint {
                    audit,
                    named_ports: named
                        .into_iter()
                        .map(|(name, protocol, port)| NamedPort {
                            name: name.to_owned(),
                            protocol,
                            port,
                        })
                        .collect(),
                    ..Endpoint::new(
                        id,
                        format!("pod{id}"),
                        ns,
                        labels.into_iter().map(|(k, v)| Label::k8s(k, v)).collect(),
                        addresses,
                    )
                }
            })
            .collect()
    })
}

fn fixed_peers() -> Vec<IpcachePeer> {
    let remote: LabelSet = [
        Label::k8s("app", "a"),
        Label::k8s("io.kubernetes.pod.namespace", "ns1"),
    ]
    .into_iter()
    .collect();
    vec![
        IpcachePeer {
            prefix: "192.168.1.1/32".parse().unwrap(),
            identity: PeerIdentity::Reserved(IDENTITY_HOST),
        },
        IpcachePeer {
            prefix: "192.168.1.10/32".parse().unwrap(),
            identity: PeerIdentity::Reserved(IDENTITY_KUBE_APISERVER),
        },
        IpcachePeer {
            prefix: "192.168.2.0/24".parse().unwrap(),
            identity: PeerIdentity::Reserved(IDENTITY_REMOTE_NODE),
        },
        IpcachePeer {
            prefix: "10.1.0.0/16".parse().unwrap(),
            identity: PeerIdentity::Labels(remote),
        },
    ]
}

fn packet_strategy() -> impl Strategy<Value = Packet> {
    (
        1..=5u32,
        prop::sample::select(vec![DIR_INGRESS, DIR_EGRESS]),
        prop::sample::select(PEER_ADDRS.to_vec()),
        prop::sample::select(PROTOS.to_vec()),
        prop::sample::select(DPORTS.to_vec()),
    )
        .prop_map(|(endpoint_id, direction, peer, protocol, dport)| Packet {
            endpoint_id,
            direction,
            peer: ip(peer),
            protocol,
            dport,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookup_agrees_with_evaluator(
        policies in policy_strategy(),
        endpoints in endpoints_strategy(),
        global_audit in prop::bool::weighted(0.1),
        packets in prop::collection::vec(packet_strategy(), 48),
    ) {
        let input = CompileInput { endpoints, peers: fixed_peers(), policies, global_audit };
        let c = compile(&input).unwrap();
        let mut seen = BTreeSet::new();
        for p in packets {
            let (r, _) = check(&input, &c, p);
            seen.insert((r.verdict, r.reason));
        }
        // Recompiling with the same allocators is stable.
        let mut labels = LocalAllocator::new();
        let mut cidrs = CidrAllocator::new();
        let a = compile_with(&input, &mut labels, &mut cidrs).unwrap();
        let b = compile_with(&input, &mut labels, &mut cidrs).unwrap();
        prop_assert_eq!(a, b);
    }
}

#[test]
fn evaluator_reports_every_matching_policy() {
    let input = shop();
    let d = evaluate(&input, &pkt(3, DIR_EGRESS, "1.1.1.1", PROTO_TCP, 1)).unwrap();
    assert_eq!(
        d.verdict,
        Verdict::Dropped {
            reason: DROP_POLICY_DENY
        }
    );
    assert_eq!(d.denied_by.len(), 1);
    assert!(d.allowed_by.is_empty());
}

/// Policy entries with rule ids replaced by the policies behind them.
fn resolved(c: &Compiled) -> Vec<(u32, PolicyKey, u32, u32, Vec<PolicyRef>)> {
    c.policy()
        .iter()
        .map(|(len, k, e)| {
            assert!(
                !c.origin(e.rule_id).is_empty(),
                "entry {k:?} has rule id {} without origins",
                e.rule_id
            );
            (
                *len,
                *k,
                e.action,
                e.match_type,
                c.origin(e.rule_id).to_vec(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// An engine taken through a random sequence of inputs (policies changed, added and
    /// removed under the same names; endpoints relabelled, added and removed) ends every step
    /// with exactly what a fresh compilation of that step's input gives.
    #[test]
    fn incremental_updates_equal_a_fresh_compile(
        steps in prop::collection::vec(
            (
                policy_strategy(),
                prop::bool::ANY,
                endpoints_strategy(),
                prop::bool::ANY,
                prop::bool::weighted(0.1),
            ),
            2..6,
        ),
    ) {
        let mut engine = Engine::new();
        let mut labels = LocalAllocator::new();
        let mut cidrs = CidrAllocator::new();
        let mut last: Option<(Vec<Policy>, Vec<Endpoint>)> = None;
        for (policies, keep_policies, endpoints, keep_endpoints, global_audit) in steps {
            // Half the steps change only endpoints or only policies, so identity changes alone
            // (selector-cache updates) and policy changes alone are both exercised.
            let (policies, endpoints) = match last.take() {
                Some((p, mut e)) if keep_policies && !keep_endpoints => {
                    // One endpoint relabelled, the others untouched: only the selector cache
                    // can tell which of them must change.
                    e[0].labels = endpoints[0].labels.clone();
                    e[0].named_ports = endpoints[0].named_ports.clone();
                    (p, e)
                }
                Some((_, e)) if keep_endpoints && !keep_policies => (policies, e),
                _ => (policies, endpoints),
            };
            last = Some((policies.clone(), endpoints.clone()));
            let input = CompileInput { endpoints, peers: fixed_peers(), policies, global_audit };
            let (mut l2, mut c2) = (labels.clone(), cidrs.clone());
            engine.update(&input, &mut labels, &mut cidrs).unwrap();
            let fresh = compile_with(&input, &mut l2, &mut c2).unwrap();
            let inc = engine.to_compiled();
            prop_assert_eq!(inc.endpoints(), fresh.endpoints());
            prop_assert_eq!(inc.ipcache_v4(), fresh.ipcache_v4());
            prop_assert_eq!(inc.ipcache_v6(), fresh.ipcache_v6());
            prop_assert_eq!(inc.identities(), fresh.identities());
            prop_assert_eq!(resolved(&inc), resolved(&fresh));
        }
    }
}

#[test]
fn an_unrelated_policy_change_recompiles_only_the_endpoints_it_selects() {
    let mut input = shop();
    let mut engine = Engine::new();
    let mut labels = LocalAllocator::new();
    let mut cidrs = CidrAllocator::new();
    let first = engine.update(&input, &mut labels, &mut cidrs).unwrap();
    assert_eq!(first.endpoints_recompiled, input.endpoints.len());
    let before = engine.policy_by_endpoint();
    let nothing = engine.update(&input, &mut labels, &mut cidrs).unwrap();
    assert_eq!(
        nothing,
        UpdateStats::default(),
        "an identical input recompiles nothing"
    );

    // A new policy selecting only `app=db` in `shop`.
    let extra = parse_manifests(
        "extra.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db-extra, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: \"6543\", protocol: TCP}]}]\n",
    )
    .unwrap();
    input.policies.extend(extra);
    let stats = engine.update(&input, &mut labels, &mut cidrs).unwrap();
    assert_eq!(stats.policies_changed, 1);
    let db: Vec<u32> = input
        .endpoints
        .iter()
        .filter(|e| e.namespace == "shop" && e.labels.iter().any(|l| l.to_string() == "k8s:app=db"))
        .map(|e| e.id)
        .collect();
    assert_eq!(stats.endpoints_recompiled, db.len());
    let after = engine.policy_by_endpoint();
    for (id, rows) in &after {
        let same = std::sync::Arc::ptr_eq(rows, &before[id]);
        assert_eq!(same, !db.contains(id), "endpoint {id}");
    }
}
