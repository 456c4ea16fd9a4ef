//! Tests of the pure tenancy core: what is generated, and that planning against the generated
//! objects converges (a second reconcile of an unchanged world writes nothing).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::{
    crd::{
        AccessTiers, DeletionPolicy, Environment, EnvironmentNamespace, EnvironmentSpec, Grant,
        GrantPeer, GrantPort, GrantProtocol, GrantTarget, Organization, OrganizationSpec,
    },
    object::{Generated, PruneAction, plan},
};

fn org(name: &str, grants: Vec<Grant>) -> Organization {
    let mut o = Organization::new(
        name,
        OrganizationSpec {
            display_name: None,
            sovereign: "eu".into(),
            access: AccessTiers {
                viewer: vec![format!("{name}-viewers")],
                ..Default::default()
            },
            grants,
        },
    );
    o.metadata.uid = Some(format!("uid-{name}"));
    o
}

fn env(name: &str, org: &str, env_name: &str, namespaces: &[(&str, Option<&str>)]) -> Environment {
    let mut e = Environment::new(
        name,
        EnvironmentSpec {
            organization: org.into(),
            name: env_name.into(),
            region: None,
            policy: None,
            namespaces: namespaces
                .iter()
                .map(|(n, app)| EnvironmentNamespace {
                    name: (*n).into(),
                    application: app.map(str::to_owned),
                    labels: BTreeMap::default(),
                })
                .collect(),
            deletion_policy: DeletionPolicy::Retain,
        },
    );
    e.metadata.uid = Some(format!("uid-{name}"));
    e
}

fn grant(from: &str, port: u16) -> Grant {
    Grant {
        description: None,
        from: GrantPeer {
            organization: from.into(),
            environment: None,
            application: None,
        },
        to: GrantTarget::default(),
        ports: vec![GrantPort {
            port,
            end_port: None,
            protocol: GrantProtocol::Tcp,
        }],
    }
}

fn names(objs: &[Generated]) -> Vec<String> {
    objs.iter().map(|g| g.key.to_string()).collect()
}

/// Applies a plan to a simulated API server (the live objects as JSON).
fn apply(
    live: &mut Vec<Value>,
    desired: &[Generated],
    observed_owner: &str,
) -> crate::object::Plan {
    let observed: Vec<Value> = live
        .iter()
        .filter(|v| v["metadata"]["labels"][crate::object::OWNER_LABEL] == observed_owner)
        .cloned()
        .collect();
    let p = plan(desired, &observed);
    for g in p.create.iter().chain(p.update.iter().map(|(g, _)| g)) {
        live.retain(|v| crate::object::key_of(v).as_ref() != Some(&g.key));
        live.push(g.manifest());
    }
    for (key, action) in &p.prune {
        live.retain(|v| crate::object::key_of(v).as_ref() != Some(key));
        if *action == PruneAction::Release {
            live.push(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": key.name}}));
        }
    }
    p
}

#[test]
fn organization_gets_namespaces_baseline_templates_and_bindings() {
    let orgs = [org("acme", vec![])];
    let envs = [env(
        "acme-prod",
        "acme",
        "prod",
        &[("shop", Some("shop")), ("pay", None)],
    )];
    let world = World::new(&orgs, &envs);
    let objs = desired(&orgs[0], &world, &TenancyConfig::default());
    let n = names(&objs);
    for want in [
        "Namespace/shop",
        "Namespace/pay",
        "CiliumClusterwideNetworkPolicy/catalyst-tenancy-acme",
        "CiliumNetworkPolicy/shop/catalyst-tenancy-same-namespace",
        "CiliumNetworkPolicy/shop/catalyst-tenancy-same-organization",
        "CiliumNetworkPolicy/shop/catalyst-tenancy-dns",
        "CiliumNetworkPolicy/shop/catalyst-tenancy-monitoring",
        "RoleBinding/shop/catalyst-viewer",
        "RoleBinding/pay/catalyst-viewer",
    ] {
        assert!(n.contains(&want.to_owned()), "{want} missing from {n:?}");
    }
    let ns = objs
        .iter()
        .find(|g| g.key.to_string() == "Namespace/shop")
        .unwrap();
    assert_eq!(ns.labels[ORGANIZATION], "acme");
    assert_eq!(ns.labels[ENVIRONMENT], "prod");
    assert_eq!(ns.labels[APPLICATION], "shop");
    assert_eq!(ns.labels[SOVEREIGN], "eu");
    // Retain: no owner reference, or the garbage collector would delete the namespace.
    assert!(ns.owner.is_none());
    let ccnp = objs
        .iter()
        .find(|g| g.key.kind == "CiliumClusterwideNetworkPolicy")
        .unwrap();
    let spec = &ccnp.body["spec"];
    assert_eq!(spec["enableDefaultDeny"]["ingress"], true);
    assert_eq!(
        spec["endpointSelector"]["matchLabels"]["k8s:io.cilium.k8s.namespace.labels.openova.io/organization"],
        "acme"
    );
    assert_eq!(ccnp.owner.as_ref().unwrap().uid, "uid-acme");
}

/// Every generated policy is one the agent's parser (the same schema as Cilium's) accepts.
#[test]
fn generated_policies_parse_as_cilium_policies() {
    let orgs = [
        org("acme", vec![grant("globex", 443)]),
        org("globex", vec![]),
    ];
    let envs = [
        env("acme-prod", "acme", "prod", &[("shop", Some("shop"))]),
        env("globex-prod", "globex", "prod", &[("other", None)]),
    ];
    let world = World::new(&orgs, &envs);
    for o in &orgs {
        for g in desired(o, &world, &TenancyConfig::default()) {
            if g.key.api_version != "cilium.io/v2" {
                continue;
            }
            let yaml = serde_norway::to_string(&g.manifest()).unwrap();
            catalyst_policy::manifest::parse_manifests(&g.key.to_string(), &yaml)
                .unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", g.key));
        }
    }
}

#[test]
fn grant_opens_ingress_in_receiver_and_egress_in_sender_and_lifts_the_explicit_deny() {
    let orgs = [
        org("acme", vec![grant("globex", 443)]),
        org("globex", vec![]),
    ];
    let envs = [
        env("acme-prod", "acme", "prod", &[("shop", None)]),
        env("globex-prod", "globex", "prod", &[("other", None)]),
    ];
    let world = World::new(&orgs, &envs);
    let acme = desired(&orgs[0], &world, &TenancyConfig::default());
    let n = names(&acme);
    assert!(
        n.iter()
            .any(|k| k.starts_with("CiliumNetworkPolicy/shop/catalyst-grant-from-globex-")),
        "{n:?}"
    );
    let egress = acme
        .iter()
        .find(|g| g.key.name.starts_with("catalyst-grant-to-acme-"))
        .expect("sender-side egress");
    assert_eq!(egress.key.namespace.as_deref(), Some("other"));
    assert_eq!(
        egress.body["spec"]["egress"][0]["toPorts"][0]["ports"][0]["port"],
        "443"
    );
    // Owned by the receiving Organization, labelled with the sender's.
    assert_eq!(egress.labels[crate::object::OWNER_LABEL], "acme");
    assert_eq!(egress.labels[ORGANIZATION], "globex");
    let acme_base = acme
        .iter()
        .find(|g| g.key.kind == "CiliumClusterwideNetworkPolicy")
        .unwrap();
    let values = &acme_base.body["spec"]["ingressDeny"][0]["fromEndpoints"][0]["matchExpressions"]
        [1]["values"];
    assert_eq!(values, &serde_json::json!(["acme", "globex"]));
    let globex = desired(&orgs[1], &world, &TenancyConfig::default());
    let base = globex
        .iter()
        .find(|g| g.key.kind == "CiliumClusterwideNetworkPolicy")
        .unwrap();
    let values =
        &base.body["spec"]["egressDeny"][0]["toEndpoints"][0]["matchExpressions"][1]["values"];
    assert_eq!(values, &serde_json::json!(["acme", "globex"]));
}

#[test]
fn second_reconcile_of_an_unchanged_world_writes_nothing_and_drift_is_put_back() {
    let orgs = [org("acme", vec![])];
    let envs = [env("acme-prod", "acme", "prod", &[("shop", None)])];
    let world = World::new(&orgs, &envs);
    let want = desired(&orgs[0], &world, &TenancyConfig::default());
    let mut live = Vec::new();
    let first = apply(&mut live, &want, "acme");
    assert_eq!(first.create.len(), want.len());
    let second = apply(&mut live, &want, "acme");
    assert!(second.is_empty(), "{second:?}");
    assert_eq!(second.unchanged, want.len());
    // Someone edits a generated policy: the next plan puts it back and says what differed.
    let cnp = live
        .iter_mut()
        .find(|v| v["metadata"]["name"] == "catalyst-tenancy-same-namespace")
        .unwrap();
    cnp["spec"]["ingress"] = serde_json::json!([{"fromEntities": ["world"]}]);
    let third = apply(&mut live, &want, "acme");
    assert_eq!(third.update.len(), 1);
    assert_eq!(third.update[0].1, "spec differs");
    assert!(apply(&mut live, &want, "acme").is_empty());
}

#[test]
fn removing_a_namespace_or_the_organization_prunes_exactly_what_it_created() {
    let orgs = [org("acme", vec![]), org("globex", vec![])];
    let mut envs = vec![
        env(
            "acme-prod",
            "acme",
            "prod",
            &[("shop", None), ("pay", None)],
        ),
        env("globex-prod", "globex", "prod", &[("other", None)]),
    ];
    envs[0].spec.deletion_policy = DeletionPolicy::Delete;
    let cfg = TenancyConfig::default();
    let mut live = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": "shop"}}),
    ];
    for o in &orgs {
        let world = World::new(&orgs, &envs);
        apply(&mut live, &desired(o, &world, &cfg), &o.name_any());
    }
    let globex_before: Vec<Value> = live
        .iter()
        .filter(|v| v["metadata"]["labels"][crate::object::OWNER_LABEL] == "globex")
        .cloned()
        .collect();
    // `pay` leaves the Environment: its namespace (Delete policy) and objects go, nothing else.
    envs[0].spec.namespaces.retain(|n| n.name != "pay");
    let world = World::new(&orgs, &envs);
    let p = apply(&mut live, &desired(&orgs[0], &world, &cfg), "acme");
    assert!(p.create.is_empty() && p.update.is_empty());
    assert!(
        p.prune
            .iter()
            .all(|(k, _)| k.name == "pay" || k.namespace.as_deref() == Some("pay")),
        "{p:?}"
    );
    assert!(
        p.prune
            .iter()
            .any(|(k, a)| k.kind == "Namespace" && *a == PruneAction::Delete)
    );
    // The Organization is deleted: all of acme's objects go; globex's and the unrelated one stay.
    let mut deleted = orgs[0].clone();
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    apply(&mut live, &desired(&deleted, &world, &cfg), "acme");
    assert!(
        live.iter()
            .all(|v| v["metadata"]["labels"][crate::object::OWNER_LABEL] != "acme")
    );
    let globex_after: Vec<Value> = live
        .iter()
        .filter(|v| v["metadata"]["labels"][crate::object::OWNER_LABEL] == "globex")
        .cloned()
        .collect();
    assert_eq!(globex_before, globex_after);
    assert!(live.iter().any(|v| v["metadata"]["name"] == "unrelated"));
}

#[test]
fn retained_namespace_is_released_not_deleted() {
    let orgs = [org("acme", vec![])];
    let mut envs = vec![env("acme-prod", "acme", "prod", &[("shop", None)])];
    let cfg = TenancyConfig::default();
    let mut live = Vec::new();
    let world = World::new(&orgs, &envs);
    apply(&mut live, &desired(&orgs[0], &world, &cfg), "acme");
    envs[0].spec.namespaces.clear();
    let world = World::new(&orgs, &envs);
    let p = apply(&mut live, &desired(&orgs[0], &world, &cfg), "acme");
    assert!(p.prune.contains(&(
        crate::object::ObjectKey {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: "shop".into()
        },
        PruneAction::Release
    )));
}

use ::kube::ResourceExt;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random worlds: desired objects have unique keys, planning converges in one step from any
    /// earlier world, and every object is labelled with its owner.
    #[test]
    fn plans_converge_from_any_previous_world(
        a in proptest::collection::vec((0usize..4, 0usize..3, proptest::option::of(0usize..2)), 0..8),
        b in proptest::collection::vec((0usize..4, 0usize..3, proptest::option::of(0usize..2)), 0..8),
        grants in proptest::collection::vec((0usize..3, 0usize..3, 1u16..1024), 0..4),
    ) {
        let org_names = ["o0", "o1", "o2"];
        let build = |spec: &[(usize, usize, Option<usize>)]| -> (Vec<Organization>, Vec<Environment>) {
            let orgs: Vec<Organization> = org_names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    org(n, grants.iter().filter(|(to, from, _)| *to == i && to != from).map(|(_, from, p)| grant(org_names[*from], *p)).collect())
                })
                .collect();
            let mut envs: Vec<Environment> = Vec::new();
            for (ns, o, app) in spec {
                let env_name = format!("{}-e{}", org_names[*o], ns % 2);
                let ns_name = format!("ns{ns}");
                if envs.iter().any(|e| e.spec.namespaces.iter().any(|n| n.name == ns_name)) {
                    continue;
                }
                let app = app.map(|a| format!("app{a}"));
                match envs.iter_mut().find(|e| e.name_any() == env_name) {
                    Some(e) => e.spec.namespaces.push(EnvironmentNamespace { name: ns_name, application: app, labels: BTreeMap::default() }),
                    None => envs.push(env(&env_name, org_names[*o], &format!("e{}", ns % 2), &[(&ns_name, app.as_deref())])),
                }
            }
            (orgs, envs)
        };
        let cfg = TenancyConfig::default();
        let mut live = Vec::new();
        for spec in [&a, &b] {
            let (orgs, envs) = build(spec);
            let world = World::new(&orgs, &envs);
            for o in &orgs {
                let want = desired(o, &world, &cfg);
                let keys: std::collections::BTreeSet<_> = want.iter().map(|g| &g.key).collect();
                prop_assert_eq!(keys.len(), want.len());
                for g in &want {
                    prop_assert_eq!(&g.labels[crate::object::OWNER_LABEL], &o.name_any());
                }
                apply(&mut live, &want, &o.name_any());
            }
            for o in &orgs {
                let again = apply(&mut live, &desired(o, &world, &cfg), &o.name_any());
                prop_assert!(again.is_empty(), "not converged: {:?}", again);
            }
        }
    }
}
