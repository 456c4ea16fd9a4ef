//! Kubernetes mode end to end in the netns lab (needs root, eBPF and the agent built with its
//! eBPF object): the real agent process runs in the lab's node namespace with `mode: kubernetes`,
//! talking plain HTTP to a scripted API server in the same namespace. It finds the lab pods'
//! host-side veths through netlink (the lab routes pods Calico-style, /32 per pod), and a policy
//! that arrives as a watch event changes real traffic.

#[path = "support/fake_api.rs"]
mod fake_api;

use std::time::{Duration, Instant};

use catalyst_tests::{
    agent::{AgentProcess, uninstall},
    lab::{self, PODS, node_ns, pod},
    probe::{EchoServer, tcp_echo},
    scenario::root_or_skip,
};
use fake_api::{CNPS, FakeApi, NAMESPACES, NODES, PODS as POD_COLLECTION};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_millis(600);
/// The agent's metrics port inside the node namespace.
const METRICS_PORT: u16 = 19965;

/// `GET /metrics` from inside the node namespace.
fn metrics() -> String {
    use std::io::{Read as _, Write as _};
    lab::in_netns(node_ns(), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

/// The value of a metric line `name value`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn seed(api: &FakeApi) {
    api.install_crd(CNPS, "CiliumNetworkPolicy", true);
    api.apply(
        NODES,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "lab-node"},
               "status": {"addresses": [{"type": "InternalIP", "address": lab::HOST_ADDR}]}}),
    );
    for ns in ["shop", "other"] {
        api.apply(
            NAMESPACES,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    for p in PODS {
        api.apply(
            POD_COLLECTION,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": p.name, "namespace": p.namespace,
                                "uid": format!("uid-{}", p.name), "labels": {"app": p.app}},
                   "spec": {"nodeName": "lab-node", "containers": [{"name": "c"}]},
                   "status": {"phase": "Running", "podIP": p.ipv4,
                              "podIPs": [{"ip": p.ipv4}, {"ip": p.ipv6}]}}),
        );
    }
}

fn tcp(from: &str, to: &str, port: u16) -> bool {
    tcp_echo(&pod(from).netns(), pod(to).ipv4, port, TIMEOUT).unwrap()
}

/// Waits until the agent logged `needle` `count` times; returns how long that took.
fn wait_sync(agent: &mut AgentProcess, count: usize) -> Duration {
    let t = Instant::now();
    agent
        .wait_log_count("datapath in sync", count, Duration::from_secs(10))
        .unwrap();
    t.elapsed()
}

#[test]
fn root_kubernetes_mode_enforces_policies_from_the_api_on_discovered_interfaces() {
    if !root_or_skip("root_kubernetes_mode_enforces_policies_from_the_api_on_discovered_interfaces")
    {
        return;
    }
    let _lock = lab::lock().unwrap();
    lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("catalyst-k8s-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pin = lab::pin_path("e2e-k8s");
    let _ = uninstall(&pin);

    // The API server listens inside the node namespace, where the agent runs.
    let listener = lab::in_netns(node_ns(), || std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let api = FakeApi::new();
    seed(&api);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = api.clone();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        server.serve_http(listener).await;
    });

    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: lab, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: lab, user: {{}}}}]\ncontexts: [{{name: lab, context: {{cluster: lab, user: lab}}}}]\n\
             current-context: lab\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "node: lab-node\nmode: kubernetes\npin_path: {}\nflow_log: none\nobserver: {{listen_address: null, unix_socket: null}}\n\
             metrics: {{listen_address: '127.0.0.1:{METRICS_PORT}'}}\nkubernetes:\n  kubeconfig: kubeconfig\n  node_name_env: CATALYST_TEST_NO_SUCH_VAR\n  debounce_ms: 5\n",
            pin.display()
        ),
    )
    .unwrap();
    let web = pod("web");
    let _servers = [
        EchoServer::start(&web.netns(), web.ipv4, &[80, 22]).unwrap(),
        EchoServer::start(&pod("db").netns(), pod("db").ipv4, &[5432]).unwrap(),
    ];

    let mut agent = AgentProcess::start(&dir.join("agent.yaml"), &pin).unwrap();
    let log = agent.log_lines().join("\n");
    assert!(
        log.contains("endpoints=4"),
        "every lab pod's interface was discovered:\n{log}"
    );
    assert!(tcp("client", "web", 80), "no policy: allowed");
    assert!(tcp("db", "web", 80), "no policy: allowed");

    // A CNP arrives as a watch event: web admits client on 80 only.
    api.apply(
        CNPS,
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}),
    );
    let took = wait_sync(&mut agent, 2);
    eprintln!("policy added: maps in sync {took:?} after the API event (incl. 50 ms log polling)");
    let m = metrics();
    assert!((metric(&m, "catalyst_kubernetes_endpoints") - 4.0).abs() < f64::EPSILON);
    assert!((metric(&m, "catalyst_kubernetes_policies") - 1.0).abs() < f64::EPSILON);
    let count = metric(&m, "catalyst_policy_implementation_delay_seconds_count");
    let sum = metric(&m, "catalyst_policy_implementation_delay_seconds_sum");
    assert!(count >= 1.0);
    eprintln!(
        "policy implementation delay (API event -> maps updated): {count} change(s), mean {:.1} ms",
        sum / count * 1000.0
    );
    assert!(tcp("client", "web", 80), "client -> web:80 allowed");
    assert!(!tcp("client", "web", 22), "client -> web:22 denied");
    assert!(!tcp("db", "web", 80), "db -> web:80 denied");
    assert!(!tcp("other", "web", 80), "other namespace denied");

    // The policy is deleted: everything is allowed again.
    api.delete(CNPS, "shop", "web");
    wait_sync(&mut agent, 3);
    assert!(tcp("db", "web", 80), "policy gone: allowed");

    agent.stop().unwrap();
    agent.uninstall().unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    lab::down().unwrap();
}
