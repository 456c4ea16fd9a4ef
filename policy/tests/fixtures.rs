//! The example policies under `tests/fixtures/` load, compile, and the compiled lookup agrees
//! with the reference evaluator for every endpoint, direction, peer and port tried.

use std::net::IpAddr;

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, DROP_POLICY_DENIED, IDENTITY_HOST, IDENTITY_KUBE_APISERVER,
    IDENTITY_REMOTE_NODE, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};
use catalyst_policy::labels::SOURCE_K8S;
use catalyst_policy::{
    CompileInput, Endpoint, IpcachePeer, LabelSet, Packet, PeerIdentity, PolicySet, compile,
    evaluate,
};

fn ep(id: u32, ns: &str, labels: &[&str], addr: &str) -> Endpoint {
    let labels = LabelSet::parse(labels.iter().copied(), SOURCE_K8S).unwrap();
    Endpoint::new(
        id,
        format!("pod{id}"),
        ns,
        labels,
        vec![addr.parse().unwrap()],
    )
}

fn input() -> CompileInput {
    let set = PolicySet::load_files([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")])
        .expect("fixtures load");
    let payments_ns = "k8s:io.cilium.k8s.namespace.labels.team=payments";
    CompileInput {
        endpoints: vec![
            ep(1, "shop", &["app=web"], "10.0.0.1"),
            ep(2, "shop", &["app=frontend"], "10.0.0.2"),
            ep(3, "shop", &["app=db"], "10.0.0.3"),
            ep(4, "kube-system", &["k8s-app=kube-dns"], "10.0.0.4"),
            ep(5, "prod", &["app=api"], "10.0.0.5"),
            ep(6, "prod", &["role=client"], "10.0.0.6"),
            ep(7, "pay", &["role=gateway", payments_ns], "10.0.0.7"),
            ep(8, "prod", &["app=other"], "fd00::8"),
        ],
        peers: vec![
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
        ],
        policies: set.into_policies(),
        global_audit: false,
    }
}

const PEERS: [&str; 16] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "10.0.0.4",
    "10.0.0.5",
    "10.0.0.6",
    "10.0.0.7",
    "fd00::8",
    "192.168.1.1",
    "192.168.1.10",
    "192.168.2.7",
    "169.254.169.254",
    "172.17.0.9",
    "172.17.1.9",
    "10.97.0.1",
    "8.8.8.8",
];
const PORTS: [(u8, u16); 10] = [
    (PROTO_TCP, 80),
    (PROTO_TCP, 443),
    (PROTO_TCP, 25),
    (PROTO_TCP, 5432),
    (PROTO_TCP, 8050),
    (PROTO_TCP, 8085),
    (PROTO_UDP, 53),
    (PROTO_ICMP, 8),
    (PROTO_ICMPV6, 128),
    (PROTO_TCP, 22),
];

#[test]
fn compiled_fixtures_agree_with_the_evaluator_everywhere() {
    let input = input();
    let compiled = compile(&input).unwrap();
    let mut outcomes = std::collections::BTreeSet::new();
    for e in &input.endpoints {
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            for peer in PEERS {
                let peer: IpAddr = peer.parse().unwrap();
                for (protocol, dport) in PORTS {
                    let p = Packet {
                        endpoint_id: e.id,
                        direction,
                        peer,
                        protocol,
                        dport,
                    };
                    let d = evaluate(&input, &p).unwrap();
                    let r = compiled.lookup(e.id, direction, peer, protocol, dport);
                    assert_eq!(
                        (r.verdict, r.reason, r.match_type),
                        (d.verdict.datapath(), d.verdict.reason(), d.match_type),
                        "{p:?}: evaluator {d:?}, datapath {r:?}"
                    );
                    outcomes.insert((r.verdict, r.reason));
                }
            }
        }
    }
    // The fixtures exercise forwards, default-deny drops and deny-rule drops.
    assert!(outcomes.len() >= 3, "{outcomes:?}");
}

#[test]
fn network_policy_fixture_behaves_as_kubernetes_documents() {
    let input = input();
    let c = compile(&input).unwrap();
    let look = |peer: &str, port| c.lookup(5, DIR_INGRESS, peer.parse().unwrap(), PROTO_TCP, port);
    // Same-namespace client and the payments gateway reach the port range.
    assert_eq!(look("10.0.0.6", 8050).verdict, VERDICT_FORWARDED);
    assert_eq!(look("10.0.0.7", 8100).verdict, VERDICT_FORWARDED);
    assert_eq!(look("10.0.0.7", 8101).reason, DROP_POLICY_DENIED);
    // ipBlock with except.
    assert_eq!(look("172.17.0.9", 8000).verdict, VERDICT_FORWARDED);
    assert_eq!(look("172.17.1.9", 8000).verdict, VERDICT_DROPPED);
    // default-deny selects every pod in prod for ingress.
    let r = c.lookup(8, DIR_INGRESS, "10.0.0.6".parse().unwrap(), PROTO_TCP, 80);
    assert_eq!(r.reason, DROP_POLICY_DENIED);
    // Egress DNS to any namespace over UDP only.
    let dns = |proto| c.lookup(5, DIR_EGRESS, "10.0.0.4".parse().unwrap(), proto, 53);
    assert_eq!(dns(PROTO_UDP).verdict, VERDICT_FORWARDED);
    assert_eq!(dns(PROTO_TCP).verdict, VERDICT_DROPPED);
}
