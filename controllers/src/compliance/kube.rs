//! Kubernetes mode of the aggregator: reflectors over Kyverno's and `OpenReports`' reports, the
//! workload kinds the own evaluators read, labelled namespaces and the Catalyst resources feed
//! the same row path as the standalone files ([`inputs::object_rows`]); the compliance part of
//! the Environment and Organization status is written with a merge patch under one field
//! manager, only when it differs from what the resource already says.
//!
//! A kind the API server does not serve (a CRD not installed, e.g. `OpenReports`) is logged once
//! with what it means and retried with back-off; its rows stay empty and everything else keeps
//! counting.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use futures_util::{Stream, StreamExt as _};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::{sync::watch as channel, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    aggregate::{ScoreDoc, Tenants},
    inputs::InputError,
    metrics::ComplianceMetrics,
    status::{COMPLIANT, compliance_status},
};
use crate::crd::{Condition, Environment, EnvironmentPolicy, Organization, set_condition};

/// What the rows of a watched kind come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A policy report: rows by [`super::inputs::report_rows`].
    Report,
    /// An object the own evaluators read (or a namespace placing applications).
    Workload,
}

/// One watched kind.
#[derive(Debug, Clone)]
pub struct Kind {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// What its objects are.
    pub role: Role,
    /// Label selector of the watch (`None`: every object).
    pub selector: Option<&'static str>,
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Every kind the aggregator watches besides the Catalyst resources (the Helm chart's RBAC
/// grants `list` and `watch` on exactly these; `tests/tests/helm_controllers.rs` checks it).
pub fn watched_kinds() -> Vec<Kind> {
    let report = |g, v, k, p| Kind {
        resource: ar(g, v, k, p),
        role: Role::Report,
        selector: None,
    };
    let workload = |g, v, k, p| Kind {
        resource: ar(g, v, k, p),
        role: Role::Workload,
        selector: None,
    };
    vec![
        report(
            "wgpolicyk8s.io",
            "v1alpha2",
            "PolicyReport",
            "policyreports",
        ),
        report(
            "wgpolicyk8s.io",
            "v1alpha2",
            "ClusterPolicyReport",
            "clusterpolicyreports",
        ),
        report("openreports.io", "v1alpha1", "Report", "reports"),
        report(
            "openreports.io",
            "v1alpha1",
            "ClusterReport",
            "clusterreports",
        ),
        workload("apps", "v1", "Deployment", "deployments"),
        workload("apps", "v1", "StatefulSet", "statefulsets"),
        workload("apps", "v1", "DaemonSet", "daemonsets"),
        workload(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        ),
        workload(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
        ),
        workload("", "v1", "Service", "services"),
        workload(
            "monitoring.coreos.com",
            "v1",
            "ServiceMonitor",
            "servicemonitors",
        ),
        workload(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
        workload(
            "cilium.io",
            "v2",
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
        ),
        Kind {
            resource: ar("", "v1", "Namespace", "namespaces"),
            role: Role::Workload,
            selector: Some("openova.io/organization"),
        },
    ]
}

/// Progress of the watches: a change counter per concern, and the kinds whose first list has
/// neither completed nor failed yet.
#[derive(Debug, Default)]
struct Progress {
    /// Bumped by every change of a report, workload or namespace.
    objects: u64,
    /// Bumped by every change of an Organization, Environment or `EnvironmentPolicy`.
    resources: u64,
    /// Kinds still in their first list.
    pending: BTreeSet<String>,
}

/// Objects as JSON, each with the label that names it in errors.
pub type Labelled = Vec<(String, Value)>;

/// The watches of Kubernetes mode and their stores.
pub struct Watch {
    kinds: Vec<(Kind, Store<DynamicObject>)>,
    orgs: Store<Organization>,
    envs: Store<Environment>,
    policies: Store<EnvironmentPolicy>,
    progress: channel::Receiver<Progress>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The watcher's first error of a run of errors, as an operator reads it.
fn describe(kind: &str, e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.is_not_found() => format!(
            "{kind}: not served by the API server (404; is its CRD installed?): its rows stay empty, the other inputs keep counting; retrying with back-off"
        ),
        Some(s) if s.code == 403 => format!(
            "{kind}: forbidden (403; the service account lacks list/watch, see the chart's controllers RBAC): {}; retrying with back-off",
            s.message
        ),
        _ => format!("{kind}: cannot list/watch: {e}; retrying with back-off"),
    }
}

/// Follows one reflector stream: counts changes into `progress`, clears the kind from
/// `pending` once its first list completed or failed, and logs the first error of a run.
async fn follow<K>(
    label: String,
    resources: bool,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    progress: Arc<channel::Sender<Progress>>,
) {
    let mut failing = false;
    let stream = std::pin::pin!(stream);
    let mut stream = stream;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                // `Init` comes before the list request is answered: recovered only once a list
                // completed or an event arrived.
                let recovered = !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_));
                if failing && recovered {
                    info!(kind = %label, "compliance: watching again");
                    failing = false;
                }
                let changed = match ev {
                    watcher::Event::Init | watcher::Event::InitApply(_) => false,
                    watcher::Event::InitDone => {
                        progress.send_modify(|p| {
                            p.pending.remove(&label);
                        });
                        true
                    }
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => true,
                };
                if changed {
                    progress.send_modify(|p| {
                        if resources {
                            p.resources += 1;
                        } else {
                            p.objects += 1;
                        }
                    });
                }
            }
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                // The resourceVersion expired: the watcher lists again (routine).
                debug!(kind = %label, "compliance: watch expired; listing again");
            }
            Err(e) => {
                if !failing {
                    warn!("compliance: {}", describe(&label, &e));
                    failing = true;
                }
                // A kind that cannot be listed must not hold the others' scores back.
                progress.send_modify(|p| {
                    if p.pending.remove(&label) {
                        p.objects += 1;
                    }
                });
            }
        }
    }
}

/// Drops what the evaluators never read from a stored object (the stores hold every workload
/// of the cluster): managed fields, the last-applied annotation, the status.
fn slim(o: &mut DynamicObject) {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(m) = o.data.as_object_mut() {
        m.remove("status");
    }
}

impl Watch {
    /// Starts the watches on `client`.
    pub fn start(client: &Client) -> Self {
        let kinds = watched_kinds();
        let mut pending: BTreeSet<String> = kinds
            .iter()
            .map(|k| format!("{} {}", k.resource.api_version, k.resource.kind))
            .collect();
        for name in [
            "orgs.openova.io/v1 Organization",
            "catalyst.openova.io/v1 Environment",
            "catalyst.openova.io/v1 EnvironmentPolicy",
        ] {
            pending.insert(name.into());
        }
        let (tx, progress) = channel::channel(Progress {
            pending,
            ..Progress::default()
        });
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();
        let mut stores = Vec::new();
        for k in kinds {
            let writer = Writer::<DynamicObject>::new(k.resource.clone());
            let store = writer.as_reader();
            let api = Api::<DynamicObject>::all_with(client.clone(), &k.resource);
            let mut cfg = watcher::Config::default();
            if let Some(s) = k.selector {
                cfg = cfg.labels(s);
            }
            let stream = watcher(api, cfg)
                .default_backoff()
                .modify(slim)
                .reflect(writer);
            let label = format!("{} {}", k.resource.api_version, k.resource.kind);
            tasks.push(tokio::spawn(follow(label, false, stream, tx.clone())));
            stores.push((k, store));
        }
        let (orgs, t) = typed::<Organization>(client, "orgs.openova.io/v1 Organization", &tx);
        tasks.push(t);
        let (envs, t) = typed::<Environment>(client, "catalyst.openova.io/v1 Environment", &tx);
        tasks.push(t);
        let (policies, t) =
            typed::<EnvironmentPolicy>(client, "catalyst.openova.io/v1 EnvironmentPolicy", &tx);
        tasks.push(t);
        info!(
            kinds = stores.len() + 3,
            "compliance: watching reports, workloads and the Catalyst resources"
        );
        Self {
            kinds: stores,
            orgs,
            envs,
            policies,
            progress,
            tasks,
        }
    }

    /// Whether every kind's first list completed (or failed and is being retried).
    pub fn synced(&self) -> bool {
        self.progress.borrow().pending.is_empty()
    }

    /// The change counters: (reports / workloads / namespaces, Catalyst resources).
    pub fn generations(&self) -> (u64, u64) {
        let p = self.progress.borrow();
        (p.objects, p.resources)
    }

    /// The tenants from the watched Organizations, Environments and `EnvironmentPolicies`.
    pub fn tenants(&self) -> Tenants {
        let orgs: Vec<Organization> = self.orgs.state().iter().map(|o| (**o).clone()).collect();
        let envs: Vec<Environment> = self.envs.state().iter().map(|o| (**o).clone()).collect();
        let policies: Vec<EnvironmentPolicy> = self
            .policies
            .state()
            .iter()
            .map(|o| (**o).clone())
            .collect();
        Tenants::from_resources(&orgs, &envs, &policies)
    }

    /// The report documents and the workload objects (with namespaces) as JSON, each labelled
    /// `<Kind> <namespace>/<name>` for errors, sorted by label.
    pub fn documents(&self) -> (Labelled, Labelled) {
        let (mut reports, mut workloads) = (Vec::new(), Vec::new());
        for (k, store) in &self.kinds {
            for o in store.state() {
                let mut v = o.data.clone();
                if !v.is_object() {
                    v = json!({});
                }
                v["metadata"] = serde_json::to_value(&o.metadata).unwrap_or(Value::Null);
                v["apiVersion"] = json!(k.resource.api_version);
                v["kind"] = json!(k.resource.kind);
                let label = format!(
                    "{} {}/{}",
                    k.resource.kind,
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                );
                match k.role {
                    Role::Report => reports.push((label, v)),
                    Role::Workload => workloads.push((label, v)),
                }
            }
        }
        reports.sort_by(|a, b| a.0.cmp(&b.0));
        workloads.sort_by(|a, b| a.0.cmp(&b.0));
        (reports, workloads)
    }
}

fn typed<K>(
    client: &Client,
    label: &str,
    tx: &Arc<channel::Sender<Progress>>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let writer = Writer::<K>::default();
    let store = writer.as_reader();
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer);
    let task = tokio::spawn(follow(label.to_owned(), true, stream, tx.clone()));
    (store, task)
}

/// Treats null, `[]` and absent alike (a merge patch deletes with null; the API server keeps
/// an empty list).
fn norm(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        Some(v) => v.clone(),
    }
}

const FIELDS: [&str; 5] = [
    "score",
    "applications",
    "workloads",
    "failingEnforcingChecks",
    "gate",
];

/// The `status` of a merge patch bringing `observed` (a resource's status as JSON, `Null` when
/// it has none) to what `doc` says, or `None` when it says that already. `generation` is the
/// resource's `metadata.generation` (the condition's `observedGeneration`). Without a document
/// (nothing scored under the resource), the compliance fields and the `Compliant` condition
/// are removed if present.
pub fn status_patch(observed: &Value, doc: Option<&ScoreDoc>, generation: i64) -> Option<Value> {
    let conditions: Vec<Condition> =
        serde_json::from_value(observed["conditions"].clone()).unwrap_or_default();
    let current = conditions.iter().find(|c| c.type_ == COMPLIANT);
    let Some(doc) = doc else {
        let has_fields = FIELDS.iter().any(|f| !norm(observed.get(*f)).is_null());
        if !has_fields && current.is_none() {
            return None;
        }
        let mut patch: serde_json::Map<String, Value> = FIELDS
            .iter()
            .map(|f| ((*f).to_owned(), Value::Null))
            .collect();
        let rest: Vec<&Condition> = conditions.iter().filter(|c| c.type_ != COMPLIANT).collect();
        patch.insert("conditions".into(), json!(rest));
        return Some(Value::Object(patch));
    };
    let mut cs = compliance_status(doc);
    cs.condition.observed_generation = generation;
    let fields = cs.fields();
    let same_fields = FIELDS
        .iter()
        .all(|f| norm(fields.get(*f)) == norm(observed.get(*f)));
    let same_condition = current.is_some_and(|c| {
        (c.status, &c.reason, &c.message, c.observed_generation)
            == (
                cs.condition.status,
                &cs.condition.reason,
                &cs.condition.message,
                cs.condition.observed_generation,
            )
    });
    if same_fields && same_condition {
        return None;
    }
    let mut conditions = conditions;
    set_condition(&mut conditions, cs.condition);
    let mut patch = fields;
    patch["conditions"] = json!(conditions);
    Some(patch)
}

/// Writes the compliance status of Environments and Organizations, only when it differs.
pub struct StatusWriter {
    client: Client,
    field_manager: String,
    /// Per resource, the status last written and the `resourceVersion` it was based on: while
    /// the store still shows that version, the write is in flight and is not repeated.
    sent: HashMap<String, (Value, String)>,
}

impl StatusWriter {
    /// A writer patching as `field_manager`.
    pub fn new(client: Client, field_manager: String) -> Self {
        Self {
            client,
            field_manager,
            sent: HashMap::new(),
        }
    }

    /// Brings every watched Environment and Organization to the documents of `rollups`.
    /// Returns whether every needed write succeeded (a failed one is retried at the next call;
    /// a 409 means the resource changed meanwhile and the next call sees the new version).
    pub async fn write(
        &mut self,
        watch: &Watch,
        rollups: &std::collections::BTreeMap<String, ScoreDoc>,
        m: &ComplianceMetrics,
    ) -> bool {
        let mut by_env = HashMap::new();
        let mut by_org = HashMap::new();
        for d in rollups.values() {
            let org = d.organization.clone().unwrap_or_default();
            match d.level {
                "environment" => {
                    by_env.insert((org, d.environment.clone().unwrap_or_default()), d);
                }
                "organization" => {
                    by_org.insert(org, d);
                }
                _ => {}
            }
        }
        let mut ok = true;
        for o in watch.orgs.state() {
            let status = serde_json::to_value(&o.status).unwrap_or(Value::Null);
            let doc = by_org.get(&o.name_any()).copied();
            let api = Api::<Organization>::all(self.client.clone());
            ok &= self.write_one(&api, &*o, &status, doc, m).await;
        }
        for e in watch.envs.state() {
            let status = serde_json::to_value(&e.status).unwrap_or(Value::Null);
            let doc = by_env
                .get(&(e.spec.organization.clone(), e.spec.name.clone()))
                .copied();
            let api = Api::<Environment>::all(self.client.clone());
            ok &= self.write_one(&api, &*e, &status, doc, m).await;
        }
        ok
    }

    async fn write_one<K>(
        &mut self,
        api: &Api<K>,
        obj: &K,
        observed: &Value,
        doc: Option<&ScoreDoc>,
        m: &ComplianceMetrics,
    ) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let name = obj.name_any();
        let key = format!("{}/{name}", K::kind(&()));
        let rv = obj.resource_version().unwrap_or_default();
        let Some(status) = status_patch(observed, doc, obj.meta().generation.unwrap_or(0)) else {
            self.sent.remove(&key);
            return true;
        };
        // Written (or refused with 409) on this version already: wait for the watch to deliver
        // the next one instead of repeating the same request.
        if self
            .sent
            .get(&key)
            .is_some_and(|(s, based_on)| *s == status && *based_on == rv)
        {
            return true;
        }
        let pp = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        // The resourceVersion makes the patch conditional: the conditions list is replaced
        // whole, so a version this writer has not seen (the tenancy controller's `Ready`) must
        // not be overwritten.
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": status});
        match api.patch_status(&name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => {
                m.wrote("status", true);
                debug!(resource = %key, "compliance status written");
                self.sent.insert(key, (status, rv));
                true
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(resource = %key, "compliance status: resource changed meanwhile; written again once the watch delivers it");
                self.sent.insert(key, (status, rv));
                true
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => true,
            Err(e) => {
                m.wrote("status", false);
                warn!(resource = %key, error = %e, "compliance: cannot write status; retrying");
                false
            }
        }
    }
}

/// Logs the refused objects of a pass (once per distinct problem set, so a steady bad object
/// does not flood the log at every change).
pub fn report_errors(errors: &[InputError], last: &mut Vec<InputError>, m: &ComplianceMetrics) {
    if errors == last.as_slice() {
        return;
    }
    for e in errors {
        if !last.contains(e) {
            m.invalid(if e.input.contains("Report") {
                "policy-report"
            } else {
                "kubernetes"
            });
            warn!(error = %e, "compliance: object refused");
        }
    }
    last.clear();
    last.extend_from_slice(errors);
}
