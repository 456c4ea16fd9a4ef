//! Renders an Organization and its Environments into Kubernetes objects: labelled namespaces,
//! the `cilium.io/v2` baseline and allow templates, and tier role bindings.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::TenancyConfig;
use crate::{
    crd::{DeletionPolicy, Environment, EnvironmentNamespace, Grant, Organization},
    object::{
        CONTROLLER_LABEL, DELETION_POLICY_ANNOTATION, Generated, MANAGED_BY_LABEL, MANAGER,
        OWNER_LABEL, ObjectKey, Owner,
    },
};

/// `openova.io/*` label keys.
pub const SOVEREIGN: &str = "openova.io/sovereign";
/// Organization label.
pub const ORGANIZATION: &str = "openova.io/organization";
/// Environment label.
pub const ENVIRONMENT: &str = "openova.io/environment";
/// Application label.
pub const APPLICATION: &str = "openova.io/application";
/// Region label.
pub const REGION: &str = "openova.io/region";

const CNP: &str = "CiliumNetworkPolicy";
const CCNP: &str = "CiliumClusterwideNetworkPolicy";
const CILIUM: &str = "cilium.io/v2";
/// Cilium's label for a pod's namespace, and the prefix of namespace labels on endpoints.
const POD_NAMESPACE: &str = "k8s:io.kubernetes.pod.namespace";
const NS_LABEL: &str = "k8s:io.cilium.k8s.namespace.labels.";

/// What every Organization's reconcile sees: all Organizations and Environments.
#[derive(Clone, Debug, Default)]
pub struct World<'a> {
    /// Every Organization.
    pub organizations: Vec<&'a Organization>,
    /// Every Environment.
    pub environments: Vec<&'a Environment>,
}

impl<'a> World<'a> {
    /// A world of the given resources.
    pub fn new(
        organizations: impl IntoIterator<Item = &'a Organization>,
        environments: impl IntoIterator<Item = &'a Environment>,
    ) -> Self {
        Self {
            organizations: organizations.into_iter().collect(),
            environments: environments.into_iter().collect(),
        }
    }

    /// Environments of an Organization, in name order.
    pub fn environments_of(&self, org: &str) -> Vec<&'a Environment> {
        let mut v: Vec<_> = self
            .environments
            .iter()
            .copied()
            .filter(|e| e.spec.organization == org && e.meta().deletion_timestamp.is_none())
            .collect();
        v.sort_by_key(|e| e.name_any());
        v
    }

    fn organization(&self, name: &str) -> Option<&'a Organization> {
        self.organizations
            .iter()
            .copied()
            .find(|o| o.name_any() == name)
    }
}

/// A namespace of an Organization with its place in the hierarchy.
struct TenantNamespace<'a> {
    env: &'a Environment,
    ns: &'a EnvironmentNamespace,
}

impl TenantNamespace<'_> {
    fn name(&self) -> &str {
        &self.ns.name
    }
    fn matches(&self, environment: Option<&String>, application: Option<&String>) -> bool {
        environment.is_none_or(|e| *e == self.env.spec.name)
            && application.is_none_or(|a| self.ns.application.as_ref() == Some(a))
    }
}

fn namespaces_of<'a>(world: &World<'a>, org: &str) -> Vec<TenantNamespace<'a>> {
    world
        .environments_of(org)
        .into_iter()
        .flat_map(|env| {
            env.spec
                .namespaces
                .iter()
                .map(move |ns| TenantNamespace { env, ns })
        })
        .collect()
}

/// Every object the tenancy controller wants for `org`. An Organization being deleted wants
/// nothing (its objects are pruned).
pub fn desired(org: &Organization, world: &World<'_>, cfg: &TenancyConfig) -> Vec<Generated> {
    if org.meta().deletion_timestamp.is_some() {
        return Vec::new();
    }
    let name = org.name_any();
    let mut out = Vec::new();
    let own = namespaces_of(world, &name);
    for t in &own {
        out.push(namespace(org, t));
        out.extend(templates(org, t, cfg));
        out.extend(role_bindings(org, t, cfg));
    }
    out.push(baseline(org, world));
    for grant in &org.spec.grants {
        out.extend(grant_objects(org, grant, &own, world));
    }
    // A namespace listed by two Environments (a user error the schema cannot see across
    // objects) is generated once, by the first Environment in name order.
    let mut seen = BTreeSet::new();
    out.retain(|g| seen.insert(g.key.clone()));
    out
}

fn base_labels(org: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (OWNER_LABEL.to_owned(), org.to_owned()),
        (CONTROLLER_LABEL.to_owned(), "tenancy".to_owned()),
        (ORGANIZATION.to_owned(), org.to_owned()),
    ])
}

fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> Option<Owner> {
    Some(Owner {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone()?,
        uid: obj.meta().uid.clone()?,
    })
}

fn namespace(org: &Organization, t: &TenantNamespace<'_>) -> Generated {
    let mut labels = base_labels(&org.name_any());
    labels.extend(t.ns.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert(SOVEREIGN.into(), org.spec.sovereign.clone());
    labels.insert(ENVIRONMENT.into(), t.env.spec.name.clone());
    if let Some(app) = &t.ns.application {
        labels.insert(APPLICATION.into(), app.clone());
    }
    if let Some(region) = &t.env.spec.region {
        labels.insert(REGION.into(), region.clone());
    }
    let policy = t.env.spec.deletion_policy;
    Generated {
        key: ObjectKey {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: t.ns.name.clone(),
        },
        labels,
        annotations: BTreeMap::from([(
            DELETION_POLICY_ANNOTATION.to_owned(),
            format!("{policy:?}"),
        )]),
        // Only a namespace that is deleted with its Environment is owned by it: an owner
        // reference would make the garbage collector delete a `Retain` namespace too.
        owner: if policy == DeletionPolicy::Delete {
            owner_of(t.env)
        } else {
            None
        },
        body: Map::new(),
    }
}

fn policy(
    org: &Organization,
    owner: Option<Owner>,
    kind: &str,
    namespace: Option<&str>,
    name: String,
    org_label: &str,
    spec: Value,
) -> Generated {
    let mut labels = base_labels(&org.name_any());
    labels.insert(ORGANIZATION.into(), org_label.to_owned());
    Generated {
        key: ObjectKey {
            api_version: CILIUM.into(),
            kind: kind.into(),
            namespace: namespace.map(str::to_owned),
            name,
        },
        labels,
        annotations: BTreeMap::new(),
        owner,
        body: Map::from_iter([("spec".to_owned(), spec)]),
    }
}

/// Peers in any namespace carrying the given namespace labels.
fn namespace_peer(labels: &[(&str, &str)]) -> Value {
    let mut match_labels = Map::new();
    for (k, v) in labels {
        match_labels.insert(format!("{NS_LABEL}{k}"), json!(v));
    }
    json!({
        "matchLabels": match_labels,
        "matchExpressions": [{"key": POD_NAMESPACE, "operator": "Exists"}],
    })
}

fn templates(org: &Organization, t: &TenantNamespace<'_>, cfg: &TenancyConfig) -> Vec<Generated> {
    let name = org.name_any();
    let ns = Some(t.name());
    let owner = owner_of(t.env);
    let p = |n: &str, spec: Value| policy(org, owner.clone(), CNP, ns, n.to_owned(), &name, spec);
    let mut out = vec![
        p(
            "catalyst-tenancy-same-namespace",
            json!({
                "description": format!("Catalyst tenancy: traffic within namespace {} (Organization {name})", t.name()),
                "endpointSelector": {},
                "ingress": [{"fromEndpoints": [{}]}],
                "egress": [{"toEndpoints": [{}]}],
            }),
        ),
        p(
            "catalyst-tenancy-same-organization",
            json!({
                "description": format!("Catalyst tenancy: traffic between the namespaces of Organization {name}"),
                "endpointSelector": {},
                "ingress": [{"fromEndpoints": [namespace_peer(&[(ORGANIZATION, &name)])]}],
                "egress": [{"toEndpoints": [namespace_peer(&[(ORGANIZATION, &name)])]}],
            }),
        ),
    ];
    if cfg.dns.enabled {
        let mut selector = Map::new();
        selector.insert(POD_NAMESPACE.into(), json!(cfg.dns.namespace));
        for (k, v) in &cfg.dns.pod_labels {
            selector.insert(format!("k8s:{k}"), json!(v));
        }
        out.push(p(
            "catalyst-tenancy-dns",
            json!({
                "description": "Catalyst tenancy: DNS to the cluster resolver",
                "endpointSelector": {},
                "egress": [{
                    "toEndpoints": [{"matchLabels": selector}],
                    "toPorts": [{"ports": [{"port": cfg.dns.port.to_string(), "protocol": "ANY"}]}],
                }],
            }),
        ));
    }
    if cfg.monitoring.enabled {
        let mut selector = Map::new();
        selector.insert(POD_NAMESPACE.into(), json!(cfg.monitoring.namespace));
        for (k, v) in &cfg.monitoring.pod_labels {
            selector.insert(format!("k8s:{k}"), json!(v));
        }
        let mut rule = json!({"fromEndpoints": [{"matchLabels": selector}]});
        if !cfg.monitoring.ports.is_empty() {
            let ports: Vec<Value> = cfg
                .monitoring
                .ports
                .iter()
                .map(|p| json!({"port": p.to_string(), "protocol": "TCP"}))
                .collect();
            rule["toPorts"] = json!([{"ports": ports}]);
        }
        out.push(p(
            "catalyst-tenancy-monitoring",
            json!({
                "description": "Catalyst tenancy: metrics scraping from the monitoring namespace",
                "endpointSelector": {},
                "ingress": [rule],
            }),
        ));
    }
    out
}

fn role_bindings(
    org: &Organization,
    t: &TenantNamespace<'_>,
    cfg: &TenancyConfig,
) -> Vec<Generated> {
    let name = org.name_any();
    org.spec
        .access
        .tiers()
        .into_iter()
        .filter(|(_, groups)| !groups.is_empty())
        .map(|(tier, groups)| {
            let subjects: Vec<Value> = groups
                .iter()
                .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
                .collect();
            Generated {
                key: ObjectKey {
                    api_version: "rbac.authorization.k8s.io/v1".into(),
                    kind: "RoleBinding".into(),
                    namespace: Some(t.name().to_owned()),
                    name: format!("catalyst-{tier}"),
                },
                labels: base_labels(&name),
                annotations: BTreeMap::new(),
                owner: owner_of(t.env),
                body: Map::from_iter([
                    (
                        "roleRef".to_owned(),
                        json!({
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": format!("{}{tier}", cfg.cluster_role_prefix),
                        }),
                    ),
                    ("subjects".to_owned(), Value::Array(subjects)),
                ]),
            }
        })
        .collect()
}

/// The baseline: default deny both ways for every namespace of the Organization, and an explicit
/// deny of every other tenant's workloads (so cross-tenant drops name this policy), except the
/// Organizations a grant involves (their traffic falls to default deny and the grant's ports).
fn baseline(org: &Organization, world: &World<'_>) -> Generated {
    let name = org.name_any();
    let mut ingress_ok: BTreeSet<String> = BTreeSet::from([name.clone()]);
    ingress_ok.extend(org.spec.grants.iter().map(|g| g.from.organization.clone()));
    let mut egress_ok: BTreeSet<String> = BTreeSet::from([name.clone()]);
    for other in &world.organizations {
        if other
            .spec
            .grants
            .iter()
            .any(|g| g.from.organization == name)
        {
            egress_ok.insert(other.name_any());
        }
    }
    let other_tenants = |allowed: &BTreeSet<String>| {
        json!({"matchExpressions": [
            {"key": format!("{NS_LABEL}{ORGANIZATION}"), "operator": "Exists"},
            {"key": format!("{NS_LABEL}{ORGANIZATION}"), "operator": "NotIn", "values": allowed},
            {"key": POD_NAMESPACE, "operator": "Exists"},
        ]})
    };
    policy(
        org,
        owner_of(org),
        CCNP,
        None,
        format!("catalyst-tenancy-{name}"),
        &name,
        json!({
            "description": format!("Catalyst tenancy baseline of Organization {name}: default deny, other tenants denied"),
            "endpointSelector": {"matchLabels": {format!("{NS_LABEL}{ORGANIZATION}"): name}},
            "enableDefaultDeny": {"ingress": true, "egress": true},
            "ingressDeny": [{"fromEndpoints": [other_tenants(&ingress_ok)]}],
            "egressDeny": [{"toEndpoints": [other_tenants(&egress_ok)]}],
        }),
    )
}

fn grant_id(grant: &Grant) -> String {
    let digest = Sha256::digest(serde_json::to_vec(grant).expect("a grant serialises"));
    digest.iter().take(4).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn ports_of(grant: &Grant) -> Value {
    let ports: Vec<Value> = grant
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({"port": p.port.to_string(), "protocol": p.protocol.as_str()});
            if let Some(end) = p.end_port {
                v["endPort"] = json!(end);
            }
            v
        })
        .collect();
    json!([{"ports": ports}])
}

/// A grant opens ingress in the receiving namespaces and egress in the sending ones. Both are
/// owned by the receiving Organization, which declared the grant.
fn grant_objects(
    org: &Organization,
    grant: &Grant,
    own: &[TenantNamespace<'_>],
    world: &World<'_>,
) -> Vec<Generated> {
    let name = org.name_any();
    let from = &grant.from;
    let id = grant_id(grant);
    let description = grant.description.clone().unwrap_or_else(|| {
        format!(
            "Catalyst grant: Organization {} to Organization {name}",
            from.organization
        )
    });
    let mut sender = vec![(ORGANIZATION, from.organization.as_str())];
    if let Some(e) = &from.environment {
        sender.push((ENVIRONMENT, e));
    }
    if let Some(a) = &from.application {
        sender.push((APPLICATION, a));
    }
    let mut receiver = vec![(ORGANIZATION, name.as_str())];
    if let Some(e) = &grant.to.environment {
        receiver.push((ENVIRONMENT, e));
    }
    if let Some(a) = &grant.to.application {
        receiver.push((APPLICATION, a));
    }
    let mut out = Vec::new();
    for t in own
        .iter()
        .filter(|t| t.matches(grant.to.environment.as_ref(), grant.to.application.as_ref()))
    {
        out.push(policy(
            org,
            owner_of(t.env),
            CNP,
            Some(t.name()),
            format!("catalyst-grant-from-{}-{id}", from.organization),
            &name,
            json!({
                "description": description,
                "endpointSelector": {},
                "ingress": [{"fromEndpoints": [namespace_peer(&sender)], "toPorts": ports_of(grant)}],
            }),
        ));
    }
    // The sending side exists only while the sending Organization does.
    if let Some(sender_org) = world.organization(&from.organization) {
        for t in namespaces_of(world, &sender_org.name_any())
            .iter()
            .filter(|t| t.matches(from.environment.as_ref(), from.application.as_ref()))
        {
            out.push(policy(
                org,
                owner_of(org),
                CNP,
                Some(t.name()),
                format!("catalyst-grant-to-{name}-{id}"),
                &from.organization,
                json!({
                    "description": description,
                    "endpointSelector": {},
                    "egress": [{"toEndpoints": [namespace_peer(&receiver)], "toPorts": ports_of(grant)}],
                }),
            ));
        }
    }
    out
}
