//! The Helm chart's controllers part (deploy/helm/catalyst), rendered without helm (see
//! `catalyst_tests::helm` for what that covers): the Deployment runs two replicas as non-root
//! with leader election, the controllers accept the rendered configuration, the probes and the
//! metrics Service hit the configured port, and RBAC grants exactly what the controllers touch
//! (the tenancy controller's writes, the compliance aggregator's watches and status patches).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use catalyst_controllers::config::{Config, Mode};
use catalyst_tests::helm::{find, render, strings};
use serde_norway::Value;

fn controllers_docs(overrides: &[(&str, Value)]) -> Vec<Value> {
    render(overrides)
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/name"] == "catalyst-controllers")
        .collect()
}

#[test]
fn chart_renders_the_controllers_deployment_rbac_and_config() {
    let docs = controllers_docs(&[]);
    let cm = find(&docs, "ConfigMap");
    let dir =
        std::env::temp_dir().join(format!("catalyst-helm-controllers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("controllers.yaml");
    std::fs::write(&file, cm["data"]["controllers.yaml"].as_str().unwrap()).unwrap();
    let cfg = Config::load(&file).expect("the controllers accept the chart's configuration");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cfg.mode, Mode::Kubernetes);
    assert!(cfg.kubernetes.leader_election.enabled);
    assert!(
        cfg.compliance.enabled,
        "the chart runs the compliance aggregator"
    );

    let dep = find(&docs, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    let env: Vec<String> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(env.contains(&"POD_NAME".to_owned()) && env.contains(&"POD_NAMESPACE".to_owned()));
    let port = u64::from(cfg.metrics.listen_address.port());
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(port));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let svc = find(&docs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(port));

    // RBAC: writes only on what the tenancy controller generates, read on its inputs.
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "cat-controllers")
        .expect("controllers ClusterRole");
    let mut writable = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let verbs = strings(&rule["verbs"]);
        if verbs.iter().any(|v| v == "delete") {
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    writable.push(format!("{g}/{r}"));
                }
            }
        }
    }
    writable.sort();
    let mut generated: Vec<String> = catalyst_controllers::tenancy::kube::generated_kinds()
        .iter()
        .map(|ar| format!("{}/{}", ar.group, ar.plural))
        .collect();
    generated.sort();
    assert_eq!(writable, generated);
    let lease = find(&docs, "Role");
    assert_eq!(strings(&lease["rules"][0]["resources"]), ["leases"]);
    // The tier ClusterRoles the generated RoleBindings refer to exist.
    for tier in ["viewer", "developer", "operator", "admin", "owner"] {
        let name = format!("catalyst:{tier}");
        assert!(
            docs.iter()
                .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name.as_str()),
            "{name}"
        );
    }
}

/// Every verb granted per `group/resource` by the controllers' `ClusterRole`.
fn grants(docs: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "cat-controllers")
        .expect("controllers ClusterRole");
    let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                grants
                    .entry(format!("{g}/{r}"))
                    .or_default()
                    .extend(strings(&rule["verbs"]));
            }
        }
    }
    grants
}

/// The compliance aggregator: list + watch on every kind it watches, read only where the
/// tenancy controller does not already write; status patches on Environments and
/// Organizations.
#[test]
fn chart_grants_the_compliance_aggregator_its_watches_and_status_patches() {
    let grants = grants(&controllers_docs(&[]));
    let generated: Vec<String> = catalyst_controllers::tenancy::kube::generated_kinds()
        .iter()
        .map(|ar| format!("{}/{}", ar.group, ar.plural))
        .collect();
    let read = |v: &BTreeSet<String>| v.contains("list") && v.contains("watch");
    for k in catalyst_controllers::compliance::kube::watched_kinds() {
        let key = format!("{}/{}", k.resource.group, k.resource.plural);
        let verbs = grants.get(&key).cloned().unwrap_or_default();
        assert!(
            read(&verbs),
            "compliance watches {key}: needs list, watch ({verbs:?})"
        );
        if !generated.contains(&key) {
            assert!(
                verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                "{key} is read only for the aggregator: {verbs:?}"
            );
        }
    }
    for key in [
        "orgs.openova.io/organizations",
        "catalyst.openova.io/environments",
        "catalyst.openova.io/environmentpolicies",
    ] {
        assert!(read(&grants[key]), "{key}");
    }
    for key in [
        "orgs.openova.io/organizations/status",
        "catalyst.openova.io/environments/status",
    ] {
        assert!(grants[key].contains("patch"), "status patch on {key}");
    }
}

#[test]
fn compliance_rbac_goes_with_the_aggregator() {
    let off = controllers_docs(&[("controllers.config.compliance.enabled", Value::Bool(false))]);
    let groups: BTreeSet<String> = grants(&off)
        .keys()
        .map(|k| k.split('/').next().unwrap_or("").to_owned())
        .collect();
    for g in [
        "wgpolicyk8s.io",
        "openreports.io",
        "apps",
        "monitoring.coreos.com",
    ] {
        assert!(!groups.contains(g), "{g} granted with compliance off");
    }
    let cm = find(&off, "ConfigMap");
    let text = cm["data"]["controllers.yaml"].as_str().unwrap();
    let dir = std::env::temp_dir().join(format!("catalyst-helm-compl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("controllers.yaml");
    std::fs::write(&file, text).unwrap();
    let cfg = Config::load(&file).expect("the controllers accept the chart's configuration");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!cfg.compliance.enabled);
}

#[test]
fn controllers_can_be_disabled() {
    assert!(controllers_docs(&[("controllers.enabled", Value::Bool(false))]).is_empty());
}

#[test]
fn chart_carries_the_controllers_crds() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/catalyst/crds/catalyst-controllers.yaml"),
    )
    .unwrap();
    assert_eq!(text, catalyst_controllers::crd::yaml());
}
