//! Kubernetes mode against kube's tower-test mock API server: recorded scenarios (initial
//! objects, then watch events) run through the real kube-runtime watchers, the model, the
//! policy parser and the compiler; assertions are on the compiled verdicts.

#[path = "k8s/fake_api.rs"]
mod fake_api;

use std::{path::Path, sync::Arc, time::Duration};

use catalyst_agent::{
    config::AgentConfig,
    k8s::{self, Source, netlink::StaticTable},
    state::{self, Allocators},
};
use catalyst_policy::{
    PolicySet,
    datapath::{DIR_INGRESS, VERDICT_FORWARDED},
};
use fake_api::{CATALYST_NPS, CCNPS, CNPS, FakeApi, NAMESPACES, NETWORK_POLICIES, NODES, PODS};
use serde_json::{Value, json};

const WEB_IP: &str = "10.0.1.5";

fn config() -> AgentConfig {
    AgentConfig::parse(
        Path::new("agent.yaml"),
        "node: n1\nmode: kubernetes\nkubernetes:\n  node_name_env: CATALYST_TEST_NO_SUCH_VAR\n  \
         debounce_ms: 5\n  interface_retry_ms: 100\n  discovery_interval_s: 1\n",
    )
    .unwrap()
}

fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn namespace(name: &str, team: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"team": team}}})
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn cnp(api_version: &str, kind: &str, ns: &str, name: &str, spec: &Value) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// CNP shop/allow-fe: web admits fe (of its namespace) on 8080.
fn apply_allow_fe(api: &FakeApi) {
    api.apply(
        CNPS,
        cnp(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            "shop",
            "allow-fe",
            &json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
                                 "toPorts": [{"ports": [{"port": "8080"}]}]}]}),
        ),
    );
}

/// A cluster: nodes n1 (this one) and n2, namespaces shop (team a) and other (team b), `web`
/// on n1, `fe` in shop and in other on n2.
fn cluster(api: &FakeApi) {
    api.apply(NODES, node("n1", "192.168.0.1"));
    api.apply(NODES, node("n2", "192.168.0.2"));
    api.apply(NAMESPACES, namespace("shop", "a"));
    api.apply(NAMESPACES, namespace("other", "b"));
    api.apply(PODS, pod("shop", "web", "n1", WEB_IP, "web"));
    api.apply(PODS, pod("shop", "fe", "n2", "10.0.2.7", "fe"));
    api.apply(PODS, pod("other", "fe", "n2", "10.0.2.8", "fe"));
}

fn mock() -> (kube::Client, FakeApi) {
    let (service, handle) = tower_test::mock::pair();
    let api = FakeApi::spawn(handle);
    (kube::Client::new(service, "default"), api)
}

/// `lo` stands in for web's veth (`state::build` resolves interface names).
fn table() -> Arc<StaticTable> {
    Arc::new(StaticTable::default().with_veth_route(WEB_IP.parse().unwrap(), 1, "lo"))
}

async fn start(client: kube::Client) -> Source {
    tokio::time::timeout(
        Duration::from_secs(10),
        Source::start(client, &config(), table(), None),
    )
    .await
    .expect("source ready within 10 s")
    .expect("source starts")
}

/// Compiles the source's current inputs as the agent does; the verdict for `peer` → web:`port`.
fn verdict(source: &Source, peer: &str, port: u16) -> u8 {
    let (cfg, policies) = k8s::overlay(&config(), PolicySet::new(), &source.current());
    let snap = state::build(&cfg, &policies, &mut Allocators::default()).unwrap();
    snap.compiled
        .lookup(
            state::ifindex("lo"),
            DIR_INGRESS,
            peer.parse().unwrap(),
            6,
            port,
        )
        .verdict
}

/// Waits (up to 5 s) until `done` holds for the source's inputs.
async fn until(source: &mut Source, what: &str, done: impl Fn(&Source) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(source) {
        assert!(
            tokio::time::timeout_at(deadline, source.changed())
                .await
                .is_ok(),
            "timed out waiting for {what}"
        );
    }
}

#[tokio::test]
async fn initial_list_gives_endpoints_peers_policies_and_verdicts() {
    let (client, api) = mock();
    api.install_crd(CNPS, "CiliumNetworkPolicy", true);
    api.install_crd(CCNPS, "CiliumClusterwideNetworkPolicy", false);
    cluster(&api);
    apply_allow_fe(&api);
    let source = start(client).await;
    let p = source.current();
    assert_eq!(p.inputs.endpoints.len(), 1);
    assert_eq!(p.inputs.endpoints[0].interface, "lo");
    assert_eq!(p.inputs.policies.len(), 1);
    assert!(
        p.inputs
            .peers
            .iter()
            .any(|x| x.prefix.to_string() == "10.0.2.7/32")
    );
    assert!(
        p.inputs
            .peers
            .iter()
            .any(|x| x.prefix.to_string() == "192.168.0.2/32"
                && x.entity.as_deref() == Some("remote-node"))
    );
    assert_eq!(verdict(&source, "10.0.2.7", 8080), VERDICT_FORWARDED);
    assert_ne!(verdict(&source, "10.0.2.7", 9000), VERDICT_FORWARDED);
    assert_ne!(verdict(&source, "10.0.2.8", 8080), VERDICT_FORWARDED);
    let log = api.requests();
    assert!(
        log.iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dn1")
                || r.contains("fieldSelector=spec.nodeName=n1")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn watch_events_add_a_policy_delete_a_pod_and_relabel_a_namespace() {
    let (client, api) = mock();
    api.install_crd(CNPS, "CiliumNetworkPolicy", true);
    cluster(&api);
    let mut source = start(client).await;
    // No policy selects web: everything is forwarded.
    assert_eq!(verdict(&source, "10.0.2.8", 9000), VERDICT_FORWARDED);

    // A policy arrives through the watch.
    api.apply(
        CNPS,
        cnp(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            "shop",
            "team-a",
            &json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {
                        "io.cilium.k8s.namespace.labels.team": "a",
                        "io.kubernetes.pod.namespace": "other"}}]}]}),
        ),
    );
    until(&mut source, "the policy", |s| {
        s.current().inputs.policies.len() == 1
    })
    .await;
    assert_ne!(verdict(&source, "10.0.2.8", 80), VERDICT_FORWARDED);

    // Namespace `other` relabelled team=a: its pods now match.
    api.apply(NAMESPACES, namespace("other", "a"));
    until(&mut source, "the relabel", |s| {
        s.current().inputs.peers.iter().any(|p| {
            p.labels.get("k8s:io.cilium.k8s.namespace.labels.team") == Some(&"a".to_owned())
                && p.prefix.to_string() == "10.0.2.8/32"
        })
    })
    .await;
    assert_eq!(verdict(&source, "10.0.2.8", 80), VERDICT_FORWARDED);

    // The remote pod is deleted: its address is no longer in the ipcache (world, denied).
    api.delete(PODS, "other", "fe");
    until(&mut source, "the pod deletion", |s| {
        !s.current()
            .inputs
            .peers
            .iter()
            .any(|p| p.prefix.to_string() == "10.0.2.8/32")
    })
    .await;
    assert_ne!(verdict(&source, "10.0.2.8", 80), VERDICT_FORWARDED);

    // The local pod is deleted: no endpoint left.
    api.delete(PODS, "shop", "web");
    until(&mut source, "the endpoint removal", |s| {
        s.current().inputs.endpoints.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_bad_policy_object_is_rejected_alone() {
    let (client, api) = mock();
    api.install_crd(CNPS, "CiliumNetworkPolicy", true);
    cluster(&api);
    apply_allow_fe(&api);
    api.apply(
        CNPS,
        cnp(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            "shop",
            "broken",
            &json!({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}]}),
        ),
    );
    let source = start(client).await;
    let p = source.current();
    assert_eq!(p.inputs.policies.len(), 1);
    assert_eq!(p.inputs.policies[0].reference.name, "allow-fe");
    assert_eq!(p.inputs.rejected.len(), 1);
    assert_eq!(
        p.inputs.rejected[0].object,
        "CiliumNetworkPolicy shop/broken"
    );
    assert!(
        p.inputs.rejected[0]
            .error
            .contains("spec.egress[0].toPorts[0].ports[0].port"),
        "{}",
        p.inputs.rejected[0].error
    );
    assert_eq!(verdict(&source, "10.0.2.7", 8080), VERDICT_FORWARDED);
}

#[tokio::test]
async fn without_cilium_crds_network_policies_work_and_catalyst_crds_are_found_later() {
    let (client, api) = mock();
    cluster(&api);
    api.apply(
        NETWORK_POLICIES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "np", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "fe"}}}],
                                     "ports": [{"port": 8080}]}]}}),
    );
    let mut source = start(client).await;
    assert_eq!(source.current().inputs.policies.len(), 1);
    assert_eq!(verdict(&source, "10.0.2.7", 8080), VERDICT_FORWARDED);
    assert_ne!(verdict(&source, "10.0.2.7", 9000), VERDICT_FORWARDED);
    let log = api.requests();
    assert!(
        log.iter().any(|r| r.starts_with("GET /apis/cilium.io/v2?")),
        "discovery asked for cilium.io/v2: {log:#?}"
    );
    assert!(
        !log.iter().any(|r| r.contains("ciliumnetworkpolicies")),
        "no watch on an absent CRD: {log:#?}"
    );

    // Catalyst's CRD gets installed: rediscovery (every second here) starts watching it.
    api.install_crd(CATALYST_NPS, "CatalystNetworkPolicy", true);
    api.apply(
        CATALYST_NPS,
        cnp(
            "policy.catalyst.openova.io/v1",
            "CatalystNetworkPolicy",
            "shop",
            "also-9000",
            &json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
                                 "toPorts": [{"ports": [{"port": "9000"}]}]}]}),
        ),
    );
    until(&mut source, "the Catalyst policy", |s| {
        s.current().inputs.policies.len() == 2
    })
    .await;
    assert_eq!(verdict(&source, "10.0.2.7", 9000), VERDICT_FORWARDED);
}
