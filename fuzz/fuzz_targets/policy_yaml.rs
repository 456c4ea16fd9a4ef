//! Policy manifests (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy and
//! Catalyst's own kinds, multi-document YAML): the parser returns errors that name the source and
//! the document, never panics; what it accepts compiles or is refused with an error, and the
//! compiled datapath lookup agrees with the reference evaluator on a grid of endpoints, peers and
//! ports (DESIGN.md §8: differential against the reference evaluator).
#![no_main]

use std::net::IpAddr;

use catalyst_policy::{
    CompileInput, Endpoint, IpcachePeer, LabelSet, ManifestError, Packet, PeerIdentity, PolicySet,
    compile,
    datapath::{
        DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST, IDENTITY_REMOTE_NODE, PROTO_ICMP, PROTO_TCP,
        PROTO_UDP,
    },
    evaluate,
    labels::SOURCE_K8S,
    parse_manifests,
};
use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "<fuzz>";

fn ep(id: u32, ns: &str, labels: &[&str], addr: &str) -> Endpoint {
    let labels = LabelSet::parse(labels.iter().copied(), SOURCE_K8S).expect("labels parse");
    Endpoint::new(
        id,
        format!("pod{id}"),
        ns,
        labels,
        vec![addr.parse().expect("address")],
    )
}

const PEERS: [&str; 7] = [
    "10.0.0.1",
    "10.0.0.2",
    "fd00::3",
    "192.168.1.1",
    "192.168.2.7",
    "172.17.0.9",
    "8.8.8.8",
];
const PORTS: [(u8, u16); 5] = [
    (PROTO_TCP, 80),
    (PROTO_TCP, 8080),
    (PROTO_UDP, 53),
    (PROTO_ICMP, 8),
    (PROTO_TCP, 5432),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policies = match parse_manifests(SOURCE, text) {
        Ok(p) => p,
        Err(e) => {
            let document = match &e {
                ManifestError::Field { document, .. }
                | ManifestError::UnsupportedKind { document, .. } => *document,
            };
            assert!(document >= 1, "{e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{SOURCE}: document {document}")),
                "error does not name its source and document: {msg}"
            );
            return;
        }
    };
    // The set's duplicate check runs on what parsed; parsing is deterministic.
    let Ok(set) = PolicySet::parse_str(SOURCE, text) else {
        return;
    };
    assert_eq!(set.policies(), &policies[..], "second parse differs");
    let input = CompileInput {
        endpoints: vec![
            ep(1, "default", &["app=web"], "10.0.0.1"),
            ep(2, "default", &["app=db", "tier=data"], "10.0.0.2"),
            ep(3, "prod", &["app=api"], "fd00::3"),
        ],
        peers: vec![
            IpcachePeer {
                prefix: "192.168.1.1/32".parse().expect("prefix"),
                identity: PeerIdentity::Reserved(IDENTITY_HOST),
            },
            IpcachePeer {
                prefix: "192.168.2.0/24".parse().expect("prefix"),
                identity: PeerIdentity::Reserved(IDENTITY_REMOTE_NODE),
            },
        ],
        policies: set.into_policies(),
        global_audit: false,
    };
    let Ok(compiled) = compile(&input) else {
        return;
    };
    for e in &input.endpoints {
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            for peer in PEERS {
                let peer: IpAddr = peer.parse().expect("peer");
                for (protocol, dport) in PORTS {
                    let p = Packet {
                        endpoint_id: e.id,
                        direction,
                        peer,
                        protocol,
                        dport,
                    };
                    let Ok(d) = evaluate(&input, &p) else {
                        continue;
                    };
                    let r = compiled.lookup(e.id, direction, peer, protocol, dport);
                    assert_eq!(
                        (r.verdict, r.reason, r.match_type),
                        (d.verdict.datapath(), d.verdict.reason(), d.match_type),
                        "{p:?}: evaluator {d:?}, datapath {r:?}"
                    );
                }
            }
        }
    }
});
