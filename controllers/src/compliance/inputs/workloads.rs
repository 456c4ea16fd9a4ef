//! The own evaluators: Catalyst's sample checks over workload objects (Deployment, `StatefulSet`,
//! `DaemonSet`) with the `PodDisruptionBudgets`, `HorizontalPodAutoscalers`, Services, `ServiceMonitors`
//! and network policies around them. A check that does not apply to a workload is `n-a`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Container, PodTemplateSpec, Service},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use serde_json::{Value, json};

use super::InputError;
use crate::compliance::{
    aggregate::Tenants,
    config::EvaluatorSettings,
    row::{AppKey, Outcome, Row, Source, Workload},
};

/// A workload: kind, metadata, replicas (`None`: one per node) and pod template.
#[derive(Debug, Clone)]
struct Wl {
    kind: &'static str,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    replicas: Option<i32>,
    template: PodTemplateSpec,
}

/// The objects read from the workload files.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    workloads: Vec<Wl>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    services: Vec<Service>,
    service_monitors: Vec<Value>,
    network_policies: Vec<NetworkPolicy>,
    cilium_policies: Vec<Value>,
    namespaces: Vec<(String, BTreeMap<String, String>)>,
}

fn typed<T: serde::de::DeserializeOwned>(input: &str, v: &Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(v).map_err(|e| InputError {
        input: input.to_owned(),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

impl Objects {
    /// Adds one manifest. Kinds the evaluators do not use are ignored (`Ok(false)`).
    ///
    /// # Errors
    /// A known kind whose fields do not parse, naming the field path.
    pub fn add(&mut self, input: &str, v: &Value) -> Result<bool, InputError> {
        let api = v["apiVersion"].as_str().unwrap_or("");
        let kind = v["kind"].as_str().unwrap_or("");
        match (api, kind) {
            ("apps/v1", "Deployment") => {
                let d: Deployment = typed(input, v)?;
                let spec = d.spec.unwrap_or_default();
                self.workloads.push(Wl {
                    kind: "Deployment",
                    namespace: d.metadata.namespace.unwrap_or_default(),
                    name: d.metadata.name.unwrap_or_default(),
                    labels: d.metadata.labels.unwrap_or_default(),
                    replicas: Some(spec.replicas.unwrap_or(1)),
                    template: spec.template,
                });
            }
            ("apps/v1", "StatefulSet") => {
                let d: StatefulSet = typed(input, v)?;
                let spec = d.spec.unwrap_or_default();
                self.workloads.push(Wl {
                    kind: "StatefulSet",
                    namespace: d.metadata.namespace.unwrap_or_default(),
                    name: d.metadata.name.unwrap_or_default(),
                    labels: d.metadata.labels.unwrap_or_default(),
                    replicas: Some(spec.replicas.unwrap_or(1)),
                    template: spec.template,
                });
            }
            ("apps/v1", "DaemonSet") => {
                let d: DaemonSet = typed(input, v)?;
                let spec = d.spec.unwrap_or_default();
                self.workloads.push(Wl {
                    kind: "DaemonSet",
                    namespace: d.metadata.namespace.unwrap_or_default(),
                    name: d.metadata.name.unwrap_or_default(),
                    labels: d.metadata.labels.unwrap_or_default(),
                    replicas: None,
                    template: spec.template,
                });
            }
            ("policy/v1", "PodDisruptionBudget") => self.pdbs.push(typed(input, v)?),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => self.hpas.push(typed(input, v)?),
            ("v1", "Service") => self.services.push(typed(input, v)?),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                self.service_monitors.push(v.clone());
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policies.push(typed(input, v)?);
            }
            ("cilium.io/v2", "CiliumNetworkPolicy") => self.cilium_policies.push(v.clone()),
            ("v1", "Namespace") => {
                let n: k8s_openapi::api::core::v1::Namespace = typed(input, v)?;
                self.namespaces.push((
                    n.metadata.name.unwrap_or_default(),
                    n.metadata.labels.unwrap_or_default(),
                ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Number of workloads.
    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    /// The `Namespace` objects read: name and labels.
    pub fn namespaces(&self) -> &[(String, BTreeMap<String, String>)] {
        &self.namespaces
    }
}

/// Whether `selector` selects `labels` (matchLabels and matchExpressions; an empty selector
/// selects everything).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let ml = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let me = selector.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| vals.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !vals.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    ml && me
}

fn match_labels_value(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

fn subset(want: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn containers(t: &PodTemplateSpec) -> &[Container] {
    t.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn pass_fail(ok: bool, evidence: Value) -> (Outcome, Value) {
    (if ok { Outcome::Pass } else { Outcome::Fail }, evidence)
}

fn na(reason: &str) -> (Outcome, Value) {
    (Outcome::NotApplicable, json!({"reason": reason}))
}

/// The image's tag, or `None` when it has a digest.
fn image_tag(image: &str) -> Option<&str> {
    if image.contains("@sha256:") {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    Some(last.split_once(':').map_or("", |(_, t)| t))
}

/// Every check of every workload.
pub fn evaluate(
    objects: &Objects,
    settings: &EvaluatorSettings,
    tenants: &Tenants,
    default_sovereign: &str,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for w in &objects.workloads {
        let pod_labels = w
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let annotations = w
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        let app = app_of(w, &pod_labels, tenants, default_sovereign);
        for (check, (outcome, evidence)) in checks(w, &pod_labels, &annotations, objects, settings)
        {
            rows.push(Row {
                check: check.into(),
                app: app.clone(),
                workload: Workload {
                    kind: w.kind.into(),
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                },
                outcome,
                evidence,
                observed_at: String::new(),
                source: Source::Evaluator,
            });
        }
    }
    rows
}

fn app_of(
    w: &Wl,
    pod_labels: &BTreeMap<String, String>,
    tenants: &Tenants,
    default_sovereign: &str,
) -> AppKey {
    let label = |k: &str| {
        w.labels
            .get(k)
            .or_else(|| pod_labels.get(k))
            .map(String::as_str)
    };
    let ns = tenants.namespace(&w.namespace);
    let org = label("openova.io/organization")
        .or(ns.map(|n| n.0))
        .unwrap_or("_");
    let env = label("openova.io/environment")
        .or(ns.map(|n| n.1))
        .unwrap_or("_");
    let app = label("openova.io/application")
        .or(ns.and_then(|n| n.2))
        .unwrap_or("_");
    AppKey {
        sovereign: tenants.sovereign(org, default_sovereign).to_owned(),
        organization: org.to_owned(),
        environment: env.to_owned(),
        application: app.to_owned(),
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one short block per check reads best as a table"
)]
fn checks(
    w: &Wl,
    pod_labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    o: &Objects,
    s: &EvaluatorSettings,
) -> Vec<(&'static str, (Outcome, Value))> {
    let in_ns = |ns: &Option<String>| ns.as_deref().unwrap_or("") == w.namespace;
    let cs = containers(&w.template);
    let images: Vec<&str> = cs.iter().filter_map(|c| c.image.as_deref()).collect();
    let hpa = o.hpas.iter().find(|h| {
        in_ns(&h.metadata.namespace)
            && h.spec.as_ref().is_some_and(|s| {
                s.scale_target_ref.kind == w.kind && s.scale_target_ref.name == w.name
            })
    });
    let hpa_min = hpa
        .and_then(|h| h.spec.as_ref())
        .map(|s| s.min_replicas.unwrap_or(1));
    let mut out = Vec::new();

    out.push((
        "multi-replica",
        match w.replicas {
            None => na("daemonset"),
            Some(r) => {
                let eff = hpa_min.unwrap_or(r);
                pass_fail(
                    eff >= 2,
                    json!({"replicas": r, "hpa_min_replicas": hpa_min}),
                )
            }
        },
    ));
    let pdb = o.pdbs.iter().find(|p| {
        in_ns(&p.metadata.namespace)
            && p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| selects(sel, pod_labels))
    });
    out.push((
        "pdb-present",
        if w.replicas.is_none() {
            na("daemonset")
        } else {
            pass_fail(
                pdb.is_some(),
                json!({"pdb": pdb.and_then(|p| p.metadata.name.clone())}),
            )
        },
    ));
    let spec = w.template.spec.as_ref();
    let spread = spec.is_some_and(|s| {
        s.topology_spread_constraints
            .as_ref()
            .is_some_and(|t| !t.is_empty())
            || s.affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_some()
    });
    out.push((
        "topology-spread",
        if w.replicas.is_none() {
            na("daemonset")
        } else {
            pass_fail(
                spread,
                json!({"reason": if spread { "spread" } else { "no-constraints" }}),
            )
        },
    ));
    let missing = |f: &dyn Fn(&Container) -> bool| -> Vec<String> {
        cs.iter()
            .filter(|c| !f(c))
            .map(|c| c.name.clone())
            .collect()
    };
    let probes = missing(&|c| c.readiness_probe.is_some() && c.liveness_probe.is_some());
    out.push((
        "probes",
        pass_fail(probes.is_empty(), json!({"containers_without": probes})),
    ));
    let req = missing(&|c| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    });
    out.push((
        "resource-requests",
        pass_fail(req.is_empty(), json!({"containers_without": req})),
    ));
    let lim = missing(&|c| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|r| r.contains_key("memory"))
    });
    out.push((
        "resource-limits",
        pass_fail(lim.is_empty(), json!({"containers_without": lim})),
    ));
    let mesh = annotations
        .get("linkerd.io/inject")
        .is_some_and(|v| v == "enabled")
        || annotations
            .get("sidecar.istio.io/inject")
            .is_some_and(|v| v == "true")
        || pod_labels
            .get("sidecar.istio.io/inject")
            .is_some_and(|v| v == "true")
        || pod_labels
            .get("istio.io/dataplane-mode")
            .is_some_and(|v| v == "ambient");
    out.push(("l7-mtls-required", pass_fail(mesh, json!({"mesh": mesh}))));
    let flux = w
        .labels
        .keys()
        .find(|k| *k == "kustomize.toolkit.fluxcd.io/name" || *k == "helm.toolkit.fluxcd.io/name")
        .cloned();
    out.push((
        "flux-managed",
        pass_fail(flux.is_some(), json!({"label": flux})),
    ));
    let not_harbor: Vec<&str> = images
        .iter()
        .copied()
        .filter(|i| !s.harbor_prefixes.iter().any(|p| i.starts_with(p.as_str())))
        .collect();
    out.push((
        "harbor-proxy",
        if images.is_empty() {
            na("no-images")
        } else {
            pass_fail(
                not_harbor.is_empty(),
                json!({"images_elsewhere": not_harbor}),
            )
        },
    ));
    let unpinned: Vec<&str> = images
        .iter()
        .copied()
        .filter(|i| {
            image_tag(i).is_some_and(|t| t.is_empty() || s.mutable_tags.iter().any(|m| m == t))
        })
        .collect();
    out.push((
        "image-tag-pinned",
        if images.is_empty() {
            na("no-images")
        } else {
            pass_fail(unpinned.is_empty(), json!({"unpinned": unpinned}))
        },
    ));
    let services: Vec<&Service> = o
        .services
        .iter()
        .filter(|svc| {
            in_ns(&svc.metadata.namespace)
                && svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|sel| !sel.is_empty() && subset(sel, pod_labels))
        })
        .collect();
    let annotated = annotations
        .get("prometheus.io/scrape")
        .is_some_and(|v| v == "true")
        || services.iter().any(|svc| {
            svc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("prometheus.io/scrape"))
                .is_some_and(|v| v == "true")
        });
    let monitor = o.service_monitors.iter().find(|m| {
        let ns_ok = m["metadata"]["namespace"].as_str() == Some(w.namespace.as_str())
            || m["spec"]["namespaceSelector"]["any"] == json!(true)
            || m["spec"]["namespaceSelector"]["matchNames"]
                .as_array()
                .is_some_and(|n| n.iter().any(|x| x.as_str() == Some(w.namespace.as_str())));
        let want = match_labels_value(&m["spec"]["selector"]["matchLabels"]);
        ns_ok
            && services
                .iter()
                .any(|svc| subset(&want, &svc.metadata.labels.clone().unwrap_or_default()))
    });
    out.push((
        "prometheus-scrape",
        pass_fail(
            annotated || monitor.is_some(),
            json!({
                "annotation": annotated,
                "service_monitor": monitor.and_then(|m| m["metadata"]["name"].as_str().map(str::to_owned)),
            }),
        ),
    ));
    let np = o
        .network_policies
        .iter()
        .find(|p| {
            in_ns(&p.metadata.namespace)
                && p.spec.as_ref().is_some_and(|s| {
                    s.pod_selector
                        .as_ref()
                        .is_none_or(|sel| selects(sel, pod_labels))
                })
        })
        .and_then(|p| p.metadata.name.clone())
        .or_else(|| {
            o.cilium_policies
                .iter()
                .find(|p| {
                    p["metadata"]["namespace"].as_str() == Some(w.namespace.as_str())
                        && subset(
                            &match_labels_value(&p["spec"]["endpointSelector"]["matchLabels"]),
                            pod_labels,
                        )
                })
                .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        });
    out.push((
        "network-policy-present",
        pass_fail(np.is_some(), json!({"policy": np})),
    ));
    let pod_non_root = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.run_as_non_root)
        .unwrap_or(false);
    let insecure = missing(&|c| {
        let sc = c.security_context.as_ref();
        sc.and_then(|x| x.run_as_non_root).unwrap_or(pod_non_root)
            && sc
                .and_then(|x| x.read_only_root_filesystem)
                .unwrap_or(false)
    });
    out.push((
        "non-root-read-only",
        pass_fail(insecure.is_empty(), json!({"containers_without": insecure})),
    ));
    let secret_env: Vec<String> = cs
        .iter()
        .filter(|c| {
            c.env.iter().flatten().any(|e| {
                e.value_from
                    .as_ref()
                    .is_some_and(|v| v.secret_key_ref.is_some())
            }) || c.env_from.iter().flatten().any(|e| e.secret_ref.is_some())
        })
        .map(|c| c.name.clone())
        .collect();
    out.push((
        "secret-not-in-env",
        pass_fail(
            secret_env.is_empty(),
            json!({"containers_with_secret_env": secret_env}),
        ),
    ));
    out
}
