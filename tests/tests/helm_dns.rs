//! The Helm chart's catalyst-dns part (deploy/helm/catalyst), rendered without helm (see
//! `catalyst_tests::helm` for what that covers), and every rendered object of the chart checked
//! against the Kubernetes schemas with `kubernetes-validate`, for the default values and for each
//! documented option.
//!
//! What is verified: catalyst-dns accepts the rendered configuration and zone files (its own
//! config loader and zone parser); the Deployment runs non-root with a read-only root
//! filesystem, mounts the zones `ConfigMap` where the configuration points and probes
//! `/health`; the Services carry DNS over UDP and TCP and the metrics port; the
//! `PodDisruptionBudget` selects the pods. Custom-resource kinds (cert-manager's `Certificate`)
//! have no schema in `kubernetes-validate` and are skipped by name, said in the output.

use std::collections::BTreeMap;

use catalyst_tests::{
    helm::{find, render, strings},
    require::{Need, require},
};
use serde_norway::Value;

fn dns_docs(overrides: &[(&str, Value)]) -> Vec<Value> {
    render(overrides)
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/name"] == "catalyst-dns")
        .collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .unwrap()
        .iter()
        .all(|(k, v)| &labels[k.as_str().unwrap()] == v)
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one rendering checked top to bottom: config, zones, security context, services, PDB"
)]
fn chart_renders_catalyst_dns_and_dns_accepts_its_config_and_zones() {
    let docs = dns_docs(&[]);
    let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "Service"
        ]
    );

    // Lay the two ConfigMaps out as the pod sees them, with the paths moved under a temporary
    // directory, and load them with catalyst-dns's own loader and zone parser.
    let dir = std::env::temp_dir().join(format!("catalyst-helm-dns-{}", std::process::id()));
    let zones_dir = dir.join("zones");
    std::fs::create_dir_all(&zones_dir).unwrap();
    for (k, v) in named(&docs, "ConfigMap", "cat-dns-zones")["data"]
        .as_mapping()
        .unwrap()
    {
        std::fs::write(zones_dir.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
    }
    let text = named(&docs, "ConfigMap", "cat-dns")["data"]["catalyst-dns.yaml"]
        .as_str()
        .unwrap()
        .replace("/etc/catalyst-dns", dir.to_str().unwrap());
    let file = dir.join("catalyst-dns.yaml");
    std::fs::write(&file, text).unwrap();
    let cfg = catalyst_dns::config::Config::load(&file)
        .expect("catalyst-dns accepts the chart's configuration");
    assert_eq!(cfg.listen[0].to_string(), "0.0.0.0:5353");
    assert_eq!(
        cfg.metrics.listen.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:9153")
    );
    for z in &cfg.zones {
        catalyst_dns::zone::parser::parse_file(&z.file, &z.origin)
            .unwrap_or_else(|e| panic!("zone {} of the chart: {e:?}", z.origin));
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let dep = find(&docs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/openova/catalyst-dns:0.1.0");
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true)
    );
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    let args = strings(&c["args"]);
    assert_eq!(
        args[args.len() - 2..],
        ["--config", "/etc/catalyst-dns/catalyst-dns.yaml"]
    );
    // Container ports by name: what the Services and probes target.
    let ports: BTreeMap<String, (u64, String)> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(ports["dns-udp"], (5353, "UDP".into()));
    assert_eq!(ports["dns-tcp"], (5353, "TCP".into()));
    assert_eq!(ports["metrics"], (9153, "TCP".into()));
    let zones_vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "zones")
        .unwrap();
    assert_eq!(zones_vol["configMap"]["name"], "cat-dns-zones");

    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    let svc = named(&docs, "Service", "cat-dns");
    assert!(selects(&svc["spec"]["selector"], labels));
    let svc_ports: Vec<(u64, &str, &str)> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(svc_ports, [(53, "UDP", "dns-udp"), (53, "TCP", "dns-tcp")]);
    let metrics = named(&docs, "Service", "cat-dns-metrics");
    assert!(selects(&metrics["spec"]["selector"], labels));
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "metrics");
    let pdb = find(&docs, "PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
}

#[test]
fn chart_dns_options() {
    // Zones from an existing ConfigMap: the chart makes none and mounts that one.
    let docs = dns_docs(&[("dns.zones.configMap", Value::from("my-zones"))]);
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["name"] != "cat-dns-zones")
    );
    let pod = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    let vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "zones")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], "my-zones");
    let docs = dns_docs(&[("dns.podDisruptionBudget.enabled", Value::Bool(false))]);
    assert!(docs.iter().all(|d| d["kind"] != "PodDisruptionBudget"));
    assert!(dns_docs(&[("dns.enabled", Value::Bool(false))]).is_empty());
}

/// Each documented option of values.yaml that changes what is rendered (docs/kubernetes.md).
fn option_sets() -> Vec<(&'static str, Vec<(&'static str, Value)>)> {
    let v = |s: &str| serde_norway::from_str::<Value>(s).unwrap();
    vec![
        ("defaults", vec![]),
        (
            "agent options",
            vec![
                ("memlockCapability", Value::Bool(true)),
                ("nats.url", v("nats://nats:4222")),
                ("image.tag", v("v9")),
            ],
        ),
        (
            "hubble mTLS",
            vec![("hubble.tls.clientCA", Value::Bool(true))],
        ),
        (
            "hubble cert-manager",
            vec![
                ("hubble.tls.certManager.enabled", Value::Bool(true)),
                (
                    "hubble.tls.certManager.issuerRef",
                    v("{name: ca, kind: Issuer, group: cert-manager.io}"),
                ),
            ],
        ),
        (
            "hubble plaintext",
            vec![
                ("hubble.tls.enabled", Value::Bool(false)),
                ("hubble.peerService.servicePort", v("80")),
            ],
        ),
        (
            "no hubble-peer",
            vec![("hubble.peerService.enabled", Value::Bool(false))],
        ),
        (
            "controllers off",
            vec![("controllers.enabled", Value::Bool(false))],
        ),
        (
            "dns zones from a ConfigMap, no PDB, LoadBalancer",
            vec![
                ("dns.zones.configMap", v("my-zones")),
                ("dns.podDisruptionBudget.enabled", Value::Bool(false)),
                ("dns.service.type", v("LoadBalancer")),
                ("dns.replicas", v("3")),
            ],
        ),
        ("dns off", vec![("dns.enabled", Value::Bool(false))]),
    ]
}

/// API groups of custom resources: no schema ships with `kubernetes-validate`.
const CUSTOM_GROUPS: [&str; 2] = ["cert-manager.io/", "cilium.io/"];

/// Kubernetes version whose schemas the objects are validated against (one `kubernetes-validate`
/// ships, strict: unknown fields are errors).
const K8S_VERSION: &str = "1.33.0";

#[test]
fn chart_objects_are_valid_kubernetes_objects() {
    if !require(
        "chart_objects_are_valid_kubernetes_objects",
        &[Need::KubernetesValidate],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("catalyst-helm-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    let mut skipped = std::collections::BTreeSet::new();
    for (set, overrides) in option_sets() {
        for (i, doc) in render(&overrides).iter().enumerate() {
            let api = doc["apiVersion"].as_str().unwrap();
            if CUSTOM_GROUPS.iter().any(|g| api.starts_with(g)) {
                skipped.insert(format!("{api} {}", scalar_kind(doc)));
                continue;
            }
            let f = dir.join(format!(
                "{}-{i}-{}.yaml",
                set.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                scalar_kind(doc)
            ));
            std::fs::write(&f, serde_norway::to_string(doc).unwrap()).unwrap();
            files.push(f);
        }
    }
    // The chart's CRDs are apiextensions.k8s.io/v1 objects: validated too.
    let crds = catalyst_tests::helm::chart_dir().join("crds");
    for e in std::fs::read_dir(&crds).unwrap() {
        files.push(e.unwrap().path());
    }
    println!("not validated (custom resources, no schema): {skipped:?}");
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", K8S_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success() && !report.contains("ERROR"),
        "kubernetes-validate rejected rendered objects:\n{report}"
    );
    assert!(files.len() > 30, "{} objects validated", files.len());
}

fn scalar_kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap()
}

#[test]
fn validation_would_catch_a_bad_object() {
    if !require(
        "validation_would_catch_a_bad_object",
        &[Need::KubernetesValidate],
    ) {
        return;
    }
    let f = std::env::temp_dir().join(format!("catalyst-helm-bad-{}.yaml", std::process::id()));
    let mut doc = find(&dns_docs(&[]), "Service").clone();
    doc["spec"]["ports"][0]["protocol"] = Value::from(7);
    std::fs::write(&f, serde_norway::to_string(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", K8S_VERSION])
        .arg(&f)
        .output()
        .unwrap();
    std::fs::remove_file(&f).unwrap();
    assert!(
        !out.status.success(),
        "a port protocol of 7 must be rejected"
    );
}
