//! Kubernetes mode against kube's tower-test mock API server: recorded scenarios (initial
//! objects, then watch events) run through the real kube-runtime watchers, the model, the
//! policy parser and the compiler; assertions are on the compiled verdicts.

#[path = "support/fake_api.rs"]
mod fake_api;
#[path = "support/nats_server.rs"]
mod nats_server;

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use catalyst_agent::{
    config::AgentConfig,
    identity::NatsAllocator,
    k8s::{
        self, Source,
        netlink::{Link, NetlinkError, Route, RouteTable, StaticTable},
    },
    state::{self, Allocators},
};
use catalyst_policy::{
    PolicySet,
    datapath::{DIR_INGRESS, VERDICT_FORWARDED},
};
use catalyst_tests::require::{Need, require};
use fake_api::{CATALYST_NPS, CCNPS, CNPS, FakeApi, NAMESPACES, NETWORK_POLICIES, NODES, PODS};
use nats_server::NatsServer;
use serde_json::{Value, json};

const WEB_IP: &str = "10.0.1.5";

fn config() -> AgentConfig {
    config_of("n1")
}

fn config_of(node: &str) -> AgentConfig {
    AgentConfig::parse(
        Path::new("agent.yaml"),
        &format!(
            "node: {node}\nmode: kubernetes\nkubernetes:\n  node_name_env: CATALYST_TEST_NO_SUCH_VAR\n  \
             debounce_ms: 5\n  interface_retry_ms: 100\n  discovery_interval_s: 1\n"
        ),
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

/// A rule: web admits fe (of the policy's namespace) on `port`.
fn web_from_fe_on(port: &str) -> Value {
    json!({"endpointSelector": {"matchLabels": {"app": "web"}},
           "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
                        "toPorts": [{"ports": [{"port": port}]}]}]})
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
            &web_from_fe_on("8080"),
        ),
    );
}

/// A cluster: nodes n1 (this one) and n2, namespaces shop (team a) and other (team b), `web`
/// on n1, `fe` in shop and in other on n3 (a node without an agent here).
fn cluster(api: &FakeApi) {
    api.apply(NODES, node("n1", "192.168.0.1"));
    api.apply(NODES, node("n2", "192.168.0.2"));
    api.apply(NAMESPACES, namespace("shop", "a"));
    api.apply(NAMESPACES, namespace("other", "b"));
    api.apply(PODS, pod("shop", "web", "n1", WEB_IP, "web"));
    api.apply(PODS, pod("shop", "fe", "n3", "10.0.2.7", "fe"));
    api.apply(PODS, pod("other", "fe", "n3", "10.0.2.8", "fe"));
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
    let mut alloc = Allocators::default();
    state::build(&cfg, &policies, &mut alloc).unwrap();
    alloc
        .compiled()
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
            &web_from_fe_on("9000"),
        ),
    );
    until(&mut source, "the Catalyst policy", |s| {
        s.current().inputs.policies.len() == 2
    })
    .await;
    assert_eq!(verdict(&source, "10.0.2.7", 9000), VERDICT_FORWARDED);
}

/// A route table the test changes while the source runs (an interface that appears later).
#[derive(Default)]
struct SharedTable(Mutex<StaticTable>);

impl RouteTable for SharedTable {
    fn route(&self, ip: IpAddr) -> Result<Option<Route>, NetlinkError> {
        self.0.lock().unwrap().route(ip)
    }
    fn link(&self, ifindex: u32) -> Result<Option<Link>, NetlinkError> {
        self.0.lock().unwrap().link(ifindex)
    }
    fn neighbour_mac(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
        self.0.lock().unwrap().neighbour_mac(ifindex, ip)
    }
    fn fdb_port(&self, bridge: u32, mac: [u8; 6]) -> Result<Option<u32>, NetlinkError> {
        self.0.lock().unwrap().fdb_port(bridge, mac)
    }
    fn index_of(&self, name: &str) -> u32 {
        self.0.lock().unwrap().index_of(name)
    }
}

#[tokio::test]
async fn a_pod_whose_interface_appears_later_becomes_an_endpoint() {
    let (client, api) = mock();
    cluster(&api);
    let table = Arc::new(SharedTable::default());
    let mut source = Source::start(client, &config(), table.clone(), None)
        .await
        .unwrap();
    let p = source.current();
    assert!(p.inputs.endpoints.is_empty());
    assert_eq!(p.inputs.unresolved.len(), 1);
    assert_eq!(p.inputs.unresolved[0].pod, "shop/web");
    // The CNI finishes: the route appears; the retry (every 100 ms here) finds it.
    let ready = StaticTable::default().with_veth_route(WEB_IP.parse().unwrap(), 1, "lo");
    *table.0.lock().unwrap() = ready;
    until(&mut source, "the interface", |s| {
        s.current().inputs.endpoints.len() == 1 && s.current().inputs.unresolved.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_get_the_same_identities_from_nats() {
    if !require(
        "two_nodes_get_the_same_identities_from_nats",
        &[Need::NatsServer],
    ) {
        return;
    }
    let server = NatsServer::start();
    let url = format!("nats://127.0.0.1:{}", server.port);
    // Two agents (nodes n1 and n2), each with its own API connection, one NATS bucket.
    let mut compiled = Vec::new();
    for node in ["n1", "n2"] {
        let (client, api) = mock();
        cluster(&api);
        let nats = async_nats::connect(url.as_str()).await.unwrap();
        let alloc = NatsAllocator::open(nats, "catalyst-identities")
            .await
            .unwrap();
        let cfg = config_of(node);
        let source = Source::start(client, &cfg, table(), Some(alloc))
            .await
            .unwrap();
        let published = source.current();
        let resolved = published.identities.clone().expect("identities from NATS");
        assert!(
            resolved.entries().values().all(|id| *id >= 256),
            "{:?}",
            resolved.entries()
        );
        let (cfg, policies) = k8s::overlay(&cfg, PolicySet::new(), &published);
        let mut alloc = Allocators::default();
        alloc.set_cluster(Some(resolved.clone()));
        state::build(&cfg, &policies, &mut alloc).unwrap();
        compiled.push(alloc.compiled());

        if node == "n1" {
            // A relabel: the new label set is allocated, the others keep their numbers (served
            // from the node's cache of identities in use).
            let mut source = source;
            api.apply(NAMESPACES, namespace("other", "c"));
            until(&mut source, "the relabelled identities", |s| {
                s.current().identities.as_ref().is_some_and(|r| {
                    r.entries()
                        .keys()
                        .any(|l| l.to_string().contains("namespace.labels.team=c"))
                })
            })
            .await;
            let after = source.current().identities.clone().unwrap();
            for (labels, id) in resolved.entries() {
                if !labels.to_string().contains("namespace.labels.team=b") {
                    assert_eq!(after.entries().get(labels), Some(id), "{labels}");
                }
            }
            api.apply(NAMESPACES, namespace("other", "b"));
            until(&mut source, "the label set back", |s| {
                s.current().identities.as_ref() == Some(&resolved)
            })
            .await;
        }
    }
    // Every pod address has the same identity on both nodes (n1 sees `web` as local and the fe
    // pods as remote; n2 sees all three as remote), and different label sets differ.
    let ids: Vec<Vec<u32>> = compiled
        .iter()
        .map(|c| {
            [WEB_IP, "10.0.2.7", "10.0.2.8"]
                .iter()
                .map(|ip| c.ipcache_lookup(ip.parse().unwrap()))
                .collect()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert!(ids[0][0] != ids[0][1] && ids[0][1] != ids[0][2], "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_learns_remote_pods_from_nats_without_watching_them() {
    if !require(
        "shared_mode_learns_remote_pods_from_nats_without_watching_them",
        &[Need::NatsServer],
    ) {
        return;
    }
    let server = NatsServer::start();
    let url = format!("nats://127.0.0.1:{}", server.port);
    // Agents of n3 (where the fe pods run) and n1 (web), each with its own API connection;
    // `remote_pods` left at `auto`, which is `shared` with NATS configured.
    let mut compiled = Vec::new();
    let mut sources = Vec::new();
    for node in ["n3", "n1"] {
        let (client, api) = mock();
        cluster(&api);
        let cfg = AgentConfig::parse(
            Path::new("agent.yaml"),
            &format!(
                "node: {node}\nmode: kubernetes\nnats:\n  url: {url}\nkubernetes:\n  \
                 node_name_env: CATALYST_TEST_NO_SUCH_VAR\n  debounce_ms: 5\n  \
                 ipcache:\n    heartbeat_s: 1\n    node_ttl_s: 5\n"
            ),
        )
        .unwrap();
        let nats = async_nats::connect(url.as_str()).await.unwrap();
        let alloc = NatsAllocator::open(nats.clone(), "catalyst-identities")
            .await
            .unwrap();
        let shared = k8s::shared::SharedIpcache::start(nats, &cfg.kubernetes.ipcache, node);
        let mut source = Source::start_with(client, &cfg, table(), Some(alloc), Some(shared))
            .await
            .unwrap();
        if node == "n1" {
            until(&mut source, "fe pods of n3 from the shared ipcache", |s| {
                s.current().inputs.peers.iter().any(|p| {
                    p.prefix.addr().to_string() == "10.0.2.8"
                        && p.labels.get("k8s:io.cilium.k8s.namespace.labels.team")
                            == Some(&"b".to_owned())
                })
            })
            .await;
        }
        let log = api.requests();
        assert!(
            !log.iter()
                .any(|r| r.contains("nodeName%21%3D") || r.contains("nodeName!=")),
            "no watch of other nodes' pods in shared mode: {log:#?}"
        );
        let published = source.current();
        let (cfg, policies) = k8s::overlay(&cfg, PolicySet::new(), &published);
        let mut alloc = Allocators::default();
        alloc.set_cluster(published.identities.clone());
        state::build(&cfg, &policies, &mut alloc).unwrap();
        compiled.push(alloc.compiled());
        sources.push(source);
    }
    // n1's peers for the fe pods are exactly what watching every pod gives (same labels, namespace
    // labels included), and they compile to cluster-wide identities that differ.
    let (client, api) = mock();
    cluster(&api);
    let watching = Source::start(client, &config(), table(), None)
        .await
        .unwrap();
    let fe = |s: &Source| -> Vec<catalyst_agent::config::PeerConfig> {
        let mut p: Vec<_> = s
            .current()
            .inputs
            .peers
            .iter()
            .filter(|p| p.entity.is_none())
            .cloned()
            .collect();
        p.sort_by_key(|p| p.prefix);
        p
    };
    assert_eq!(fe(&sources[1]), fe(&watching));
    assert_eq!(fe(&watching).len(), 2);
    let a = compiled[1].ipcache_lookup("10.0.2.7".parse().unwrap());
    let b = compiled[1].ipcache_lookup("10.0.2.8".parse().unwrap());
    assert!(a >= 256 && b >= 256 && a != b, "{a} {b}");
}
