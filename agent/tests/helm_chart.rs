//! The Helm chart (deploy/helm/catalyst), checked without helm: `helm` is not installable on the
//! build machines, so a small renderer handles the subset of Go templates the chart uses
//! (`.Values`/`.Release`/`.Chart` paths, `quote`, `default`, `toYaml`, `nindent`, `if`/`end`)
//! and fails on anything else. What is verified: every rendered document is YAML of the expected
//! kind; the agent accepts the rendered configuration; the `DaemonSet` runs unprivileged with
//! exactly `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_PERFMON` (+ `CAP_SYS_RESOURCE` on request), host
//! network, bpffs and the node name; the `ClusterRole` grants only list/watch on what the agent
//! watches.
//! What is not: Go template semantics beyond that subset, and `helm lint`/`helm install`.

use std::path::Path;

use catalyst_agent::config::{AgentConfig, Mode};
use catalyst_tests::helm::{chart_dir, find, render, strings};
use serde::Deserialize as _;
use serde_norway::Value;

/// The agent's documents of the rendered chart, with its `hubble-peer` Service (the controllers
/// have their own test).
fn agent_docs(overrides: &[(&str, Value)]) -> Vec<Value> {
    render(overrides)
        .into_iter()
        .filter(|d| {
            let name = &d["metadata"]["labels"]["app.kubernetes.io/name"];
            name == "catalyst-agent" || name == "hubble-peer"
        })
        .collect()
}

#[test]
fn chart_renders_the_agent_daemonset_rbac_and_config() {
    let docs = agent_docs(&[]);
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "ServiceAccount"
        ]
    );

    let cm = find(&docs, "ConfigMap");
    let cfg = AgentConfig::parse(
        Path::new("configmap/agent.yaml"),
        cm["data"]["agent.yaml"].as_str().unwrap(),
    )
    .expect("the agent accepts the chart's configuration");
    assert_eq!(cfg.mode, Mode::Kubernetes);
    assert_eq!(cfg.nats.url, None);

    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Value::Bool(true));
    assert_eq!(pod["serviceAccountName"], "cat-agent");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], Value::Bool(false));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON"]
    );
    assert_eq!(c["image"], "ghcr.io/openova/catalyst-agent:0.1.0");
    let env = c["env"].as_sequence().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/sys/fs/bpf"));
    assert!(mounts.iter().any(|m| m["mountPath"] == "/var/run/catalyst"));
    // The probes hit the metrics listener of the rendered configuration.
    let port = c["readinessProbe"]["tcpSocket"]["port"].as_u64().unwrap();
    assert_eq!(
        cfg.metrics.listen_address.map(|a| u64::from(a.port())),
        Some(port)
    );
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"].as_u64(), Some(port));

    // RBAC: read-only, and exactly what the watchers use.
    let role = find(&docs, "ClusterRole");
    let mut granted = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        assert_eq!(strings(&rule["verbs"]), ["list", "watch"]);
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                granted.push(format!("{g}/{r}"));
            }
        }
    }
    granted.sort();
    let mut watched: Vec<String> = [
        "/pods",
        "/namespaces",
        "/nodes",
        "networking.k8s.io/networkpolicies",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(
        catalyst_agent::k8s::model::CUSTOM_POLICY_SOURCES
            .iter()
            .map(|s| format!("{}/{}", s.api_version.split('/').next().unwrap(), s.plural)),
    )
    .collect();
    watched.sort();
    assert_eq!(granted, watched);
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "cat-agent");
    assert_eq!(binding["subjects"][0]["namespace"], "catalyst-system");
}

#[test]
fn chart_values_reach_the_agent() {
    let docs = agent_docs(&[
        ("nats.url", Value::from("nats://nats.catalyst-system:4222")),
        ("memlockCapability", Value::Bool(true)),
        ("image.tag", Value::from("v9")),
    ]);
    let cm = find(&docs, "ConfigMap");
    let cfg = AgentConfig::parse(
        Path::new("configmap/agent.yaml"),
        cm["data"]["agent.yaml"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg.nats.url.as_deref(),
        Some("nats://nats.catalyst-system:4222")
    );
    let c = &find(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
    );
    assert_eq!(c["image"], "ghcr.io/openova/catalyst-agent:v9");
}

#[test]
fn chart_exposes_the_hubble_peer_service_as_cilium_does() {
    let docs = agent_docs(&[]);
    let svc = find(&docs, "Service");
    assert_eq!(svc["metadata"]["name"], "hubble-peer");
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["name"], "peer-service");
    assert_eq!(port["targetPort"].as_u64(), Some(4244));
    // The Service selects the agent pods.
    let ds = find(&docs, "DaemonSet");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v);
    }
    // Each agent announces its node IP.
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    let advertise = env
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CATALYST_OBSERVER_ADVERTISE_ADDRESS")
        .expect("advertise env");
    assert_eq!(advertise["value"], "$(POD_IP):4244");
    // TLS (the default) uses port 443, plaintext set-ups 80; the Service can be left out.
    assert_eq!(port["port"].as_u64(), Some(443));
    let plain = agent_docs(&[("hubble.peerService.servicePort", Value::from(80))]);
    assert_eq!(
        find(&plain, "Service")["spec"]["ports"][0]["port"].as_u64(),
        Some(80)
    );
    let off = agent_docs(&[("hubble.peerService.enabled", Value::Bool(false))]);
    assert!(off.iter().all(|d| d["kind"] != "Service"));
}

#[test]
fn chart_crds_are_valid_yaml_of_the_catalyst_group() {
    let text = std::fs::read_to_string(chart_dir().join("crds/catalyst-policies.yaml")).unwrap();
    let mut names = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        assert_eq!(v["kind"], "CustomResourceDefinition");
        assert_eq!(v["spec"]["group"], "policy.catalyst.openova.io");
        names.push(v["spec"]["names"]["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        names,
        ["CatalystNetworkPolicy", "CatalystClusterwideNetworkPolicy"]
    );
}

fn agent_config(docs: &[Value]) -> AgentConfig {
    AgentConfig::parse(
        Path::new("/etc/catalyst/agent.yaml"),
        find(docs, "ConfigMap")["data"]["agent.yaml"]
            .as_str()
            .unwrap(),
    )
    .expect("the agent accepts the chart's configuration")
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// Issue 16 item 1: TLS on the gRPC listener by default, from a Secret mounted where the
/// rendered configuration points; both listeners bound to the pod's own address.
#[test]
fn chart_serves_hubble_over_tls_on_the_pod_address_by_default() {
    let docs = agent_docs(&[]);
    let cfg = agent_config(&docs);
    let tls = cfg.observer.tls.as_ref().expect("TLS by default");
    assert_eq!(tls.cert, Path::new("/etc/catalyst/tls/tls.crt"));
    assert_eq!(tls.key, Path::new("/etc/catalyst/tls/tls.key"));
    assert_eq!(tls.client_ca, None);
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "hubble-tls")
        .expect("TLS mount");
    assert_eq!(mount["mountPath"], "/etc/catalyst/tls");
    assert_eq!(mount["readOnly"], Value::Bool(true));
    let vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "hubble-tls")
        .expect("TLS volume");
    assert_eq!(vol["secret"]["secretName"], "hubble-server-certs");
    assert!(docs.iter().all(|d| d["kind"] != "Certificate"));

    // The listeners bind to status.podIP, through the agent's bind-address override.
    let pod_ip = env_value(c, "POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let bind = env_value(c, catalyst_agent::run::BIND_ADDRESS_ENV);
    assert_eq!(bind["value"], "$(POD_IP)");
    let mut bound = cfg.clone();
    catalyst_agent::run::bind_to(&mut bound, Some("10.0.0.7")).unwrap();
    assert_eq!(
        bound.observer.listen_address.unwrap().to_string(),
        "10.0.0.7:4244"
    );
    assert_eq!(
        bound.metrics.listen_address.unwrap().to_string(),
        "10.0.0.7:9965"
    );

    // Least privilege beyond the capabilities.
    let sc = &c["securityContext"];
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
}

#[test]
fn chart_hubble_tls_options() {
    // Mutual TLS: the client CA of the same Secret.
    let docs = agent_docs(&[("hubble.tls.clientCA", Value::Bool(true))]);
    assert_eq!(
        agent_config(&docs)
            .observer
            .tls
            .unwrap()
            .client_ca
            .as_deref(),
        Some(Path::new("/etc/catalyst/tls/ca.crt"))
    );
    // cert-manager issues the Secret the agents mount.
    let issuer: Value =
        serde_norway::from_str("{name: ca, kind: ClusterIssuer, group: cert-manager.io}").unwrap();
    let docs = agent_docs(&[
        ("hubble.tls.certManager.enabled", Value::Bool(true)),
        ("hubble.tls.certManager.issuerRef", issuer),
    ]);
    let cert = find(&docs, "Certificate");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["spec"]["secretName"], "hubble-server-certs");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "ca");
    // Plaintext only when chosen: no TLS in the config, no Secret mounted.
    let docs = agent_docs(&[("hubble.tls.enabled", Value::Bool(false))]);
    assert_eq!(agent_config(&docs).observer.tls, None);
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "hubble-tls")
    );
}
