use super::*;
use crate::ports::PortRange;

fn err(text: &str) -> ManifestError {
    parse_manifests("policies/web.yaml", text).expect_err("expected an error")
}

const HEAD: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\n";

#[test]
fn parses_spec_and_specs_with_namespace_scoping() {
    let text = format!(
        "{HEAD}spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: fe}}}}]
      toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]
specs:
  - endpointSelector: {{}}
    egressDeny: [{{toEntities: [world]}}]
"
    );
    let p = parse_manifests("x", &text).unwrap();
    assert_eq!(p.len(), 1);
    let p = &p[0];
    assert_eq!(
        p.reference,
        PolicyRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("ns".into()),
            name: "p".into()
        }
    );
    assert_eq!(p.rules.len(), 2);
    assert!(p.rules[0].subject.mentions_namespace());
    let Peers::Selected(sels) = &p.rules[0].ingress[0].peers else {
        panic!()
    };
    let PeerSelector::Endpoints(s) = &sels[0] else {
        panic!()
    };
    assert!(
        s.mentions_namespace(),
        "peer selector defaults to the policy namespace: {s}"
    );
    assert_eq!(
        p.rules[0].ingress[0].l4,
        Some(vec![L4Match::Port {
            protocol: Protocol::Tcp,
            ports: Some(PortRange { start: 80, end: 80 })
        }])
    );
    assert!(p.rules[1].enforces(crate::rule::Direction::Egress));
}

#[test]
fn errors_name_file_document_field_and_line() {
    let text = format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n---\n{HEAD}spec:
  endpointSelector: {{}}
  ingress:
    - toPorts:
        - ports:
            - port: '80'
            - port: Http_9
"
    );
    let e = err(&text);
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "policies/web.yaml: document 2: spec.ingress[0].toPorts[0].ports[1].port: invalid port name \"Http_9\""
        ),
        "{msg}"
    );
    assert!(msg.contains("expected 1-15 characters"), "{msg}");
    let ManifestError::Field { line, .. } = e else {
        panic!()
    };
    assert_eq!(line, Some(16), "{msg}");
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let msg = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingres: []\n"
    ))
    .to_string();
    assert!(
        msg.contains("document 1: spec.ingres: unknown field `ingres`, expected one of"),
        "{msg}"
    );
    assert!(msg.contains("(line 6, column 3)"), "{msg}");
    let msg = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - fromEndpoint: [{{}}]\n"
    ))
    .to_string();
    assert!(
        msg.contains("spec.ingress[0].fromEndpoint: unknown field `fromEndpoint`"),
        "{msg}"
    );
}

#[test]
fn unsupported_cilium_fields_are_named() {
    let msg = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n    - toFQDNs: [{{matchName: a.com}}]\n"
    ))
    .to_string();
    assert!(
        msg.contains("spec.egress[0].toFQDNs: this field is not supported by Catalyst"),
        "{msg}"
    );
    let msg = err(&format!(
        "{HEAD}spec:
  endpointSelector: {{}}
  ingress:
    - toPorts: [{{ports: [{{port: '80'}}], rules: {{http: [{{method: GET}}]}}}}]
"
    ))
    .to_string();
    assert!(
        msg.contains("spec.ingress[0].toPorts[0].rules: this field is not supported"),
        "{msg}"
    );
}

#[test]
fn invalid_values_are_reported_with_paths() {
    let cases = [
        (
            "  egress:\n    - toCIDR: [10.0.0.0/33]\n",
            "spec.egress[0].toCIDR[0]: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            "  egress:\n    - toEntities: [wrold]\n",
            "spec.egress[0].toEntities[0]: unknown variant `wrold`",
        ),
        (
            "  ingress:\n    - toPorts: [{ports: [{port: '90', endPort: 80}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0]: invalid port range 90-80",
        ),
        (
            "  ingress:\n    - toPorts: [{ports: [{port: '80', protocol: ICMP}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].protocol: unknown variant `ICMP`",
        ),
        (
            "  ingress:\n    - icmps: [{fields: [{type: PacketTooBig}]}]\n",
            "spec.ingress[0].icmps[0].fields[0]: invalid ICMP type \"PacketTooBig\": expected a number in 0-255 or a IPv4 type name (EchoReply,",
        ),
        (
            "  ingress:\n    - fromEndpoints: [{matchExpressions: [{key: a, operator: In}]}]\n",
            "spec.ingress[0].fromEndpoints[0]: operator In on key `a` needs at least one value",
        ),
    ];
    for (body, want) in cases {
        let msg = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n{body}")).to_string();
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
    }
}

#[test]
fn structural_errors() {
    let msg = err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").to_string();
    assert!(
        msg.contains("unsupported object apiVersion `v1` kind `ConfigMap`"),
        "{msg}"
    );
    let msg = err(HEAD).to_string();
    assert!(msg.contains("neither `spec` nor `specs`"), "{msg}");
    let msg = err(&format!("{HEAD}spec:\n  ingress: []\n")).to_string();
    assert!(
        msg.contains("spec: missing field `endpointSelector`"),
        "{msg}"
    );
    let msg = err(&format!("{HEAD}spec:\n  nodeSelector: {{}}\n")).to_string();
    assert!(
        msg.contains("spec.nodeSelector: this field is not supported"),
        "{msg}"
    );
    let msg = err("a: [b\n").to_string();
    assert!(msg.starts_with("policies/web.yaml: document 1"), "{msg}");
}

#[test]
fn empty_documents_are_skipped_and_clusterwide_has_no_namespace() {
    let text = "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy
metadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{}]}]\n---\n";
    let p = parse_manifests("x", text).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].reference.namespace, None);
    assert!(p[0].rules[0].subject.is_wildcard());
    let Peers::Selected(sels) = &p[0].rules[0].ingress[0].peers else {
        panic!()
    };
    let PeerSelector::Endpoints(s) = &sels[0] else {
        panic!()
    };
    // `{}` in a cluster-wide policy: every endpoint of the cluster, not the world.
    assert!(!s.is_wildcard() && s.mentions_namespace(), "{s}");
}

#[test]
fn network_policy_semantics() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy
metadata: {name: n, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
    - ports: [{port: 80}]
  egress:
    - to: [{podSelector: {}}]
";
    let p = parse_manifests("x", text).unwrap();
    let r = &p[0].rules[0];
    assert_eq!(p[0].reference.kind, PolicyKind::NetworkPolicy);
    assert_eq!(r.ingress[0].peers, Peers::Any);
    assert_eq!(
        r.ingress[0].l4,
        Some(vec![L4Match::Port {
            protocol: Protocol::Tcp,
            ports: Some(PortRange { start: 80, end: 80 })
        }])
    );
    // policyTypes defaults to Ingress plus Egress because egress rules exist.
    assert!(r.enforces(crate::rule::Direction::Egress));
    let msg = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy
metadata: {name: n}
spec:
  podSelector: {}
  ingress:
    - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]
")
    .to_string();
    assert!(
        msg.contains("spec.ingress[0].from[0]: ipBlock cannot be combined"),
        "{msg}"
    );
}

#[test]
fn duplicates_across_sources_are_rejected() {
    let text = format!("{HEAD}spec:\n  endpointSelector: {{}}\n");
    let mut set = PolicySet::parse_str("a.yaml", &text).unwrap();
    let e = set
        .extend(parse_manifests("b.yaml", &text).unwrap())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "CiliumNetworkPolicy ns/p is defined twice: in a.yaml: document 1 and in b.yaml: document 1"
    );
}

#[test]
fn fixtures_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let set = PolicySet::load_files([dir]).unwrap();
    assert_eq!(set.policies().len(), 6, "{set}");
    let e = PolicySet::load_files([format!("{dir}/missing.yaml")]).unwrap_err();
    assert!(e.to_string().contains("failed to read policy file"), "{e}");
}

#[test]
fn icmp_types_by_number_or_name_per_family() {
    let text = format!(
        "{HEAD}spec:
  endpointSelector: {{}}
  ingress:
    - icmps:
        - fields:
            - {{type: 8}}
            - {{type: EchoRequest}}
            - {{type: \"0\"}}
            - {{type: EchoRequest, family: IPv6}}
            - {{type: NeighborSolicitation, family: IPv6}}
"
    );
    let p = parse_manifests("x", &text).unwrap();
    let got: Vec<(IcmpFamily, u8)> = p[0].rules[0].ingress[0]
        .l4
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| match m {
            L4Match::Icmp { family, icmp_type } => (*family, *icmp_type),
            L4Match::Port { .. } | L4Match::Named { .. } => panic!("{m:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            (IcmpFamily::IPv4, 8),
            (IcmpFamily::IPv4, 8),
            (IcmpFamily::IPv4, 0),
            (IcmpFamily::IPv6, 128),
            (IcmpFamily::IPv6, 135),
        ]
    );
    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - icmps: [{{fields: [{{type: 256}}]}}]\n"
    ));
    assert!(e.to_string().contains("invalid ICMP type \"256\""), "{e}");
}
