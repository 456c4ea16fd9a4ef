//! The Helm chart (deploy/helm/catalyst), checked without helm: `helm` is not installable on the
//! build machines, so a small renderer handles the subset of Go templates the chart uses
//! (`.Values`/`.Release`/`.Chart` paths, `quote`, `default`, `toYaml`, `nindent`, `if`/`end`)
//! and fails on anything else. What is verified: every rendered document is YAML of the expected
//! kind; the agent accepts the rendered configuration; the `DaemonSet` runs unprivileged with
//! exactly `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_PERFMON` (+ `CAP_SYS_RESOURCE` on request), host
//! network, bpffs and the node name; the `ClusterRole` grants only list/watch on what the agent
//! watches.
//! What is not: Go template semantics beyond that subset, and `helm lint`/`helm install`.

use std::path::{Path, PathBuf};

use catalyst_agent::config::{AgentConfig, Mode};
use serde_yaml::Value;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/catalyst")
}

fn lookup<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut v = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = v.get(part).unwrap_or(&Value::Null);
    }
    v
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

struct Context {
    values: Value,
    release: Value,
    chart: Value,
}

impl Context {
    fn operand(&self, token: &str) -> Value {
        if let Some(s) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return Value::String(s.to_owned());
        }
        if let Some(p) = token.strip_prefix(".Values") {
            return lookup(&self.values, p).clone();
        }
        if let Some(p) = token.strip_prefix(".Release") {
            return lookup(&self.release, p).clone();
        }
        if let Some(p) = token.strip_prefix(".Chart") {
            return lookup(&self.chart, p).clone();
        }
        panic!("unsupported operand `{token}`");
    }

    /// Evaluates a pipeline to text.
    fn eval(&self, expr: &str) -> String {
        let mut stages = expr.split('|').map(str::trim);
        let first = stages.next().unwrap();
        let (mut value, mut text) = match first.split_once(' ') {
            Some(("toYaml", arg)) => {
                let v = self.operand(arg.trim());
                let y = serde_yaml::to_string(&v).unwrap();
                (None, Some(y.trim_end().to_owned()))
            }
            Some((f, _)) => panic!("unsupported function `{f}`"),
            None => (Some(self.operand(first)), None),
        };
        for stage in stages {
            let (f, arg) = stage.split_once(' ').unwrap_or((stage, ""));
            match f {
                "default" => {
                    if !value.as_ref().is_some_and(truthy) {
                        value = Some(self.operand(arg.trim()));
                    }
                }
                "quote" => {
                    let s = text
                        .take()
                        .unwrap_or_else(|| scalar(value.as_ref().unwrap()));
                    text = Some(format!("{s:?}"));
                }
                "nindent" => {
                    let n: usize = arg.trim().parse().unwrap();
                    let s = text
                        .take()
                        .unwrap_or_else(|| scalar(value.as_ref().unwrap()));
                    let pad = " ".repeat(n);
                    text = Some(s.lines().fold(String::new(), |mut acc, l| {
                        acc.push('\n');
                        acc.push_str(&pad);
                        acc.push_str(l);
                        acc
                    }));
                }
                other => panic!("unsupported filter `{other}`"),
            }
        }
        text.unwrap_or_else(|| scalar(value.as_ref().unwrap()))
    }

    fn render(&self, template: &str) -> String {
        let mut out = String::new();
        let mut active = vec![true];
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if *active.last().unwrap() {
                out.push_str(&rest[..start]);
            }
            let end = rest[start..].find("}}").expect("unclosed action") + start;
            let mut action = &rest[start + 2..end];
            if let Some(a) = action.strip_prefix('-') {
                action = a;
                if *active.last().unwrap() {
                    let trimmed = out.trim_end().len();
                    out.truncate(trimmed);
                }
            }
            let action = action.trim();
            if let Some(cond) = action.strip_prefix("if ") {
                let on = *active.last().unwrap() && truthy(&self.operand(cond.trim()));
                active.push(on);
            } else if action == "end" {
                active.pop();
                assert!(!active.is_empty(), "unbalanced end");
            } else if *active.last().unwrap() {
                out.push_str(&self.eval(action));
            }
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        assert_eq!(active.len(), 1, "unclosed if");
        out
    }
}

/// Renders every template with the chart's values, `overrides` merged on top (`a.b: value`).
fn render(overrides: &[(&str, Value)]) -> Vec<Value> {
    let dir = chart_dir();
    let mut values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    for (path, v) in overrides {
        let mut cur = &mut values;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[parts[parts.len() - 1]] = v.clone();
    }
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let chart = serde_yaml::from_str(&format!(
        "{{Name: {}, AppVersion: '{}'}}",
        scalar(&chart["name"]),
        scalar(&chart["appVersion"])
    ))
    .unwrap();
    let ctx = Context {
        values,
        release: serde_yaml::from_str("{Name: cat, Namespace: catalyst-system}").unwrap(),
        chart,
    };
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let text = ctx.render(&std::fs::read_to_string(&f).unwrap());
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: rendered YAML invalid: {e}\n{text}", f.display()));
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

use serde::Deserialize as _;

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn chart_renders_the_agent_daemonset_rbac_and_config() {
    let docs = render(&[]);
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
    let docs = render(&[
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
    let docs = render(&[]);
    let svc = find(&docs, "Service");
    assert_eq!(svc["metadata"]["name"], "hubble-peer");
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["name"], "peer-service");
    assert_eq!(port["port"].as_u64(), Some(80));
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
    assert_eq!(advertise["value"], "$(NODE_IP):4244");
    // TLS set-ups use port 443; the Service can be left out.
    let tls = render(&[("hubble.peerService.servicePort", Value::from(443))]);
    assert_eq!(
        find(&tls, "Service")["spec"]["ports"][0]["port"].as_u64(),
        Some(443)
    );
    let off = render(&[("hubble.peerService.enabled", Value::Bool(false))]);
    assert!(off.iter().all(|d| d["kind"] != "Service"));
}

#[test]
fn chart_crds_are_valid_yaml_of_the_catalyst_group() {
    let text = std::fs::read_to_string(chart_dir().join("crds/catalyst-policies.yaml")).unwrap();
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
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
