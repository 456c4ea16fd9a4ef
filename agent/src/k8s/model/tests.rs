use std::{net::IpAddr, path::Path, sync::Arc};

use catalyst_policy::{
    PolicyKind, PolicySet,
    datapath::{DIR_INGRESS, VERDICT_FORWARDED},
};
use serde_json::{Value, json};

use super::*;
use crate::{
    config::AgentConfig,
    k8s::netlink::StaticTable,
    state::{self, Allocators},
};

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: &Value) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                         "resourceVersion": "1", "labels": labels},
            "spec": {"nodeName": node, "serviceAccountName": "sa-".to_owned() + name,
                     "containers": [{"name": "c", "image": "i",
                        "ports": [{"name": "http", "containerPort": 8080},
                                  {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                  {"containerPort": 9000}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap(),
    )
}

fn namespace(name: &str, labels: &Value) -> Arc<Namespace> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            // The API server bumps the version on every change (here: on every relabel).
            "metadata": {"name": name, "labels": labels, "resourceVersion": labels.to_string()}
        }))
        .unwrap(),
    )
}

fn node(name: &str, ip: &str) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]}
        }))
        .unwrap(),
    )
}

fn cnp(ns: &str, name: &str, version: &str, spec: &Value) -> Arc<DynamicObject> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": version,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": spec
        }))
        .unwrap(),
    )
}

fn cnp_source() -> PolicySource {
    CUSTOM_POLICY_SOURCES[0]
}

const WEB_IP: &str = "10.0.1.5";

fn view() -> ClusterView {
    ClusterView {
        local_pods: vec![pod("shop", "web", "n1", WEB_IP, &json!({"app": "web"}))],
        remote_pods: vec![
            pod("shop", "fe", "n2", "10.0.2.7", &json!({"app": "fe"})),
            pod("other", "fe", "n2", "10.0.2.8", &json!({"app": "fe"})),
        ],
        namespaces: vec![
            namespace(
                "shop",
                &json!({"team": "a", "kubernetes.io/metadata.name": "shop"}),
            ),
            namespace("other", &json!({"team": "b"})),
        ],
        nodes: vec![node("n1", "192.168.0.1"), node("n2", "192.168.0.2")],
        network_policies: Vec::new(),
        custom_policies: vec![(
            cnp_source(),
            vec![cnp(
                "shop",
                "allow-fe",
                "1",
                &json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
                                     "toPorts": [{"ports": [{"port": "8080"}]}]}]}),
            )],
        )],
    }
}

/// `lo` stands in for the pod's veth: `state::build` resolves names with `if_nametoindex`.
fn table() -> StaticTable {
    StaticTable::default().with_veth_route(WEB_IP.parse().unwrap(), 1, "lo")
}

#[test]
fn local_pod_becomes_an_endpoint_with_cilium_labels_and_named_ports() {
    let inputs = Model::default().build(&view(), "n1", &table());
    assert!(inputs.unresolved.is_empty(), "{:?}", inputs.unresolved);
    assert_eq!(inputs.endpoints.len(), 1);
    let ep = &inputs.endpoints[0];
    assert_eq!((ep.namespace.as_str(), ep.name.as_str()), ("shop", "web"));
    assert_eq!(ep.interface, "lo");
    assert_eq!(ep.addresses, vec![WEB_IP.parse::<IpAddr>().unwrap()]);
    assert_eq!(ep.labels["app"], "web");
    assert_eq!(ep.labels[SERVICE_ACCOUNT_LABEL], "sa-web");
    assert_eq!(ep.labels["io.cilium.k8s.namespace.labels.team"], "a");
    let ports: Vec<(&str, u16)> = ep.ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
    assert_eq!(ports, vec![("dns", 53), ("http", 8080)]);
}

#[test]
fn per_pod_and_agent_owned_labels_stay_out_of_the_identity() {
    let mut v = view();
    v.local_pods[0] = pod(
        "shop",
        "web",
        "n1",
        WEB_IP,
        &json!({"app": "web", "pod-template-hash": "5d9c7", "app.kubernetes.io/name": "web",
                // A pod must not claim namespace labels, another namespace or service account.
                "io.cilium.k8s.namespace.labels.team": "b",
                "io.kubernetes.pod.namespace": "kube-system",
                "io.cilium.k8s.policy.serviceaccount": "admin",
                "statefulset.kubernetes.io/pod-name": "web-0"}),
    );
    let inputs = Model::default().build(&v, "n1", &table());
    let labels = &inputs.endpoints[0].labels;
    let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "app",
            "app.kubernetes.io/name",
            "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
            "io.cilium.k8s.namespace.labels.team",
            SERVICE_ACCOUNT_LABEL,
        ]
    );
    assert_eq!(labels["io.cilium.k8s.namespace.labels.team"], "a");
    assert_eq!(labels[SERVICE_ACCOUNT_LABEL], "sa-web");
}

#[test]
fn remote_pods_and_nodes_become_ipcache_peers() {
    let inputs = Model::default().build(&view(), "n1", &table());
    let by_prefix = |p: &str| {
        inputs
            .peers
            .iter()
            .find(|x| x.prefix.to_string() == p)
            .unwrap_or_else(|| panic!("no peer {p}: {:?}", inputs.peers))
    };
    let fe = by_prefix("10.0.2.7/32");
    assert_eq!(fe.labels["k8s:app"], "fe");
    assert_eq!(fe.labels["k8s:io.kubernetes.pod.namespace"], "shop");
    assert_eq!(fe.labels["k8s:io.cilium.k8s.namespace.labels.team"], "a");
    assert_eq!(by_prefix("192.168.0.1/32").entity.as_deref(), Some("host"));
    assert_eq!(
        by_prefix("192.168.0.2/32").entity.as_deref(),
        Some("remote-node")
    );
}

#[test]
fn a_recreated_sandbox_interface_replaces_the_cached_one() {
    let ip: IpAddr = WEB_IP.parse().unwrap();
    let mut m = Model::default();
    let before = StaticTable::default().with_veth_route(ip, 5, "vetha");
    assert_eq!(
        m.build(&view(), "n1", &before).endpoints[0].interface,
        "vetha"
    );
    // The sandbox was recreated: vetha is gone, the route now leads to vethb.
    let after = StaticTable::default().with_veth_route(ip, 6, "vethb");
    assert_eq!(
        m.build(&view(), "n1", &after).endpoints[0].interface,
        "vethb"
    );
}

#[test]
fn pods_without_an_interface_are_reported_not_compiled() {
    let inputs = Model::default().build(&view(), "n1", &StaticTable::default());
    assert!(inputs.endpoints.is_empty());
    assert_eq!(inputs.unresolved.len(), 1);
    assert_eq!(inputs.unresolved[0].pod, "shop/web");
    assert!(inputs.unresolved[0].reason.contains("no route"));
}

/// Compiles what the API holds exactly as the agent does (overlay on the file config, then
/// `state::build`) and returns the verdict for `peer` → web:`port`/TCP.
fn verdict(view: &ClusterView, model: &mut Model, peer: &str, port: u16) -> u8 {
    let inputs = model.build(view, "n1", &table());
    let cfg = AgentConfig::parse(Path::new("agent.yaml"), "mode: kubernetes\n").unwrap();
    let published = crate::k8s::Published::new(inputs);
    let (cfg, policies) = crate::k8s::overlay(&cfg, PolicySet::new(), &published);
    let mut alloc = Allocators::default();
    state::build(&cfg, &policies, &mut alloc).unwrap();
    let ifindex = state::ifindex("lo");
    alloc
        .compiled()
        .lookup(ifindex, DIR_INGRESS, peer.parse().unwrap(), 6, port)
        .verdict
}

#[test]
fn compiled_verdicts_follow_the_cnp_with_namespace_scoping() {
    let v = view();
    let mut m = Model::default();
    // fe in the policy's namespace, on the allowed port: allowed.
    assert_eq!(verdict(&v, &mut m, "10.0.2.7", 8080), VERDICT_FORWARDED);
    // Another port: default deny once a rule selects web.
    assert_ne!(verdict(&v, &mut m, "10.0.2.7", 9000), VERDICT_FORWARDED);
    // fe in another namespace: peers of a namespaced policy default to its namespace.
    assert_ne!(verdict(&v, &mut m, "10.0.2.8", 8080), VERDICT_FORWARDED);
}

#[test]
fn named_ports_of_the_pod_resolve_policy_ports() {
    let mut v = view();
    // `http` is web's containerPort 8080 (the pod fixture's named ports).
    v.custom_policies[0].1[0] = cnp(
        "shop",
        "allow-fe",
        "4",
        &json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
                             "toPorts": [{"ports": [{"port": "http"}]}]}]}),
    );
    let mut m = Model::default();
    assert_eq!(verdict(&v, &mut m, "10.0.2.7", 8080), VERDICT_FORWARDED);
    assert_ne!(verdict(&v, &mut m, "10.0.2.7", 9000), VERDICT_FORWARDED);
}

#[test]
fn a_bad_policy_object_is_rejected_alone_and_a_bad_update_keeps_the_previous_version() {
    let mut v = view();
    let bad = cnp(
        "shop",
        "typo",
        "1",
        &json!({"endpointSelector": {}, "ingres": []}),
    );
    v.custom_policies[0].1.push(bad);
    let mut m = Model::default();
    let inputs = m.build(&v, "n1", &table());
    assert_eq!(inputs.policies.len(), 1, "the good policy stays in force");
    assert_eq!(inputs.rejected.len(), 1);
    let r = &inputs.rejected[0];
    assert_eq!(r.object, "CiliumNetworkPolicy shop/typo");
    assert!(r.error.contains("ingres"), "{}", r.error);
    assert!(!r.previous_in_force);

    // Now break the good one: its last good version stays in force, and the verdict with it.
    v.custom_policies[0].1[0] = cnp(
        "shop",
        "allow-fe",
        "2",
        &json!({"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"toPorts": "x"}]}),
    );
    let inputs = m.build(&v, "n1", &table());
    assert_eq!(inputs.policies.len(), 1);
    assert_eq!(inputs.policies[0].reference.name, "allow-fe");
    assert!(
        inputs
            .rejected
            .iter()
            .any(|r| r.object.ends_with("shop/allow-fe") && r.previous_in_force)
    );
    assert_eq!(verdict(&v, &mut m, "10.0.2.7", 8080), VERDICT_FORWARDED);
}

#[test]
fn namespace_relabel_changes_the_peer_identity_and_the_verdict() {
    let mut v = view();
    // Allow from any namespace labelled team=a (namespace labels in a peer selector).
    v.custom_policies[0].1[0] = cnp(
        "shop",
        "allow-fe",
        "3",
        &json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {
                    "io.cilium.k8s.namespace.labels.team": "a",
                    "io.kubernetes.pod.namespace": "other"}}]}]}),
    );
    let mut m = Model::default();
    assert_ne!(verdict(&v, &mut m, "10.0.2.8", 80), VERDICT_FORWARDED);
    v.namespaces[1] = namespace("other", &json!({"team": "a"}));
    assert_eq!(verdict(&v, &mut m, "10.0.2.8", 80), VERDICT_FORWARDED);
}

#[test]
fn network_policy_objects_go_through_the_same_parser() {
    let mut v = view();
    v.custom_policies.clear();
    v.network_policies.push(Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "shop", "resourceVersion": "9",
                         "uid": "u", "generation": 1},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}],
                                  "ports": [{"port": 80, "endPort": 90}]}],
                     "policyTypes": ["Ingress"]}
        }))
        .unwrap(),
    ));
    let mut m = Model::default();
    let inputs = m.build(&v, "n1", &table());
    assert_eq!(inputs.policies.len(), 1);
    assert_eq!(inputs.policies[0].reference.kind, PolicyKind::NetworkPolicy);
    assert_eq!(verdict(&v, &mut m, "10.0.2.8", 85), VERDICT_FORWARDED);
    assert_ne!(verdict(&v, &mut m, "10.0.2.7", 85), VERDICT_FORWARDED);
}
