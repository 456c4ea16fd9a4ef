//! The kube shell of the tenancy controller: reflectors feed the pure core, the plan is executed
//! with server-side apply (one field manager), and the result lands in status, Events and metrics.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{TenancyConfig, World, desired};
use crate::{
    crd::{
        Condition, ConditionStatus, Environment, Organization, OrganizationStatus, set_condition,
    },
    metrics::Metrics,
    object::{
        CONTROLLER_LABEL, Generated, MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, ObjectKey, Plan,
        PruneAction, plan,
    },
};

/// Finalizer on Organizations: generated objects outside the Organization's ownership tree
/// (sender-side grant policies in other Organizations' namespaces, retained namespaces' labels)
/// are removed before the Organization goes.
pub const FINALIZER: &str = "tenancy.catalyst.openova.io/cleanup";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action} {object}: {source}")]
    Api {
        /// What was attempted.
        action: &'static str,
        /// The object.
        object: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 409 => "conflict",
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 404 => "not_found",
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 403 => "forbidden",
            Self::Api { .. } => "api",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// The kinds the tenancy controller generates.
pub fn generated_kinds() -> Vec<ApiResource> {
    let ar = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    vec![
        ar("", "v1", "Namespace", "namespaces"),
        ar(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
        ),
        ar(
            "cilium.io",
            "v2",
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
        ),
        ar(
            "cilium.io",
            "v2",
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
        ),
    ]
}

/// Label selector of everything the tenancy controller generated.
pub fn generated_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{CONTROLLER_LABEL}=tenancy")
}

/// Shared state of the reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Controller settings.
    pub cfg: TenancyConfig,
    /// Field manager of every apply.
    pub field_manager: String,
    /// Organizations (the controller's own store).
    pub orgs: Store<Organization>,
    /// Environments.
    pub envs: Store<Environment>,
    /// Generated objects, per kind.
    pub observed: Vec<(ApiResource, Store<DynamicObject>)>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Periodic re-reconcile.
    pub resync: Duration,
    /// Consecutive failures per Organization (for back-off).
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context over the given stores.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        cfg: TenancyConfig,
        field_manager: String,
        orgs: Store<Organization>,
        envs: Store<Environment>,
        observed: Vec<(ApiResource, Store<DynamicObject>)>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        resync: Duration,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            cfg,
            field_manager,
            orgs,
            envs,
            observed,
            metrics,
            recorder,
            resync,
            failures: Mutex::default(),
        }
    }

    fn api_for(&self, key: &ObjectKey) -> Api<DynamicObject> {
        let ar = generated_kinds()
            .into_iter()
            .find(|ar| ar.api_version == key.api_version && ar.kind == key.kind)
            .expect("the tenancy core generates only the kinds of generated_kinds()");
        match &key.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The live objects this Organization generated, as JSON with apiVersion and kind.
    fn observed_of(&self, org: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for (ar, store) in &self.observed {
            for o in store.state() {
                if o.labels().get(OWNER_LABEL).map(String::as_str) != Some(org) {
                    continue;
                }
                out.push(expand(ar, &o));
            }
        }
        out
    }
}

/// Key under which [`compact`] keeps an object's fields in its store.
const COMPACT: &str = "__catalyst_compact";

/// Shrinks a generated object for the reflector store (the controller's main memory cost: every
/// generated object of every Organization is held): `managedFields` and annotations that are not
/// Catalyst's are dropped, and the top-level fields (`spec`, `subjects`, `roleRef`, …) are kept as
/// one JSON string instead of a tree of small allocations. [`expand`] restores the JSON form
/// for the Organization being reconciled.
pub fn compact(o: &mut DynamicObject) {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("catalyst.openova.io/"));
    }
    if o.data.get(COMPACT).is_none() {
        let data = std::mem::take(&mut o.data);
        let text = serde_json::to_string(&data).unwrap_or_default();
        o.data = json!({ COMPACT: text });
    }
}

/// The JSON form of a stored (compacted) object, with apiVersion and kind (listed items carry
/// neither; the store's kind is known).
///
/// # Panics
///
/// Never: object metadata always serialises to JSON.
pub fn expand(ar: &ApiResource, o: &DynamicObject) -> Value {
    let mut v = match o.data.get(COMPACT).and_then(Value::as_str) {
        Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        None => o.data.clone(),
    };
    if !v.is_object() {
        v = json!({});
    }
    v["metadata"] = serde_json::to_value(&o.metadata).expect("metadata serialises");
    v["apiVersion"] = json!(ar.api_version);
    v["kind"] = json!(ar.kind);
    v
}

fn org_ref(name: &str) -> ObjectRef<Organization> {
    ObjectRef::new(name)
}

/// Runs the tenancy controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    cfg: TenancyConfig,
    field_manager: String,
    resync: Duration,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let orgs_api = Api::<Organization>::all(client.clone());
    let (env_store, env_writer) = reflector::store::<Environment>();
    let env_stream = reflector::reflector(
        env_writer,
        watcher(
            Api::<Environment>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let mut controller = Controller::new(orgs_api.clone(), watcher::Config::default());
    let orgs = controller.store();
    let mut observed = Vec::new();
    let selector = generated_selector();
    for ar in generated_kinds() {
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let store = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&selector)),
        )
        .default_backoff()
        .touched_objects();
        controller = controller.watches_stream_with(
            stream,
            |o: DynamicObject| o.labels().get(OWNER_LABEL).map(|owner| org_ref(owner)),
            ar.clone(),
        );
        observed.push((ar, store));
    }
    let orgs_for_envs = orgs.clone();
    controller = controller
        // An Environment changes its Organization's objects, and the sender-side grant policies
        // that Organizations granting it place in its namespaces.
        .watches_stream(env_stream, move |env: Environment| {
            let org = env.spec.organization.clone();
            let mut refs = vec![org_ref(&org)];
            for other in orgs_for_envs.state() {
                if other.spec.grants.iter().any(|g| g.from.organization == org) {
                    refs.push(org_ref(&other.name_any()));
                }
            }
            refs
        })
        // A grant changes the sender's baseline (its explicit deny excludes the receiver).
        .watches(orgs_api, watcher::Config::default(), |org: Organization| {
            org.spec
                .grants
                .iter()
                .map(|g| org_ref(&g.from.organization))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(tokio_stream_interval(resync))
        .graceful_shutdown_on(shutdown);
    let ctx = Arc::new(Context::new(
        client,
        cfg,
        field_manager,
        orgs,
        env_store,
        observed,
        metrics.clone(),
        reporter,
        resync,
    ));
    info!("tenancy controller started");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                warn!(error = %e, "tenancy reconcile failed");
            }
            std::future::ready(())
        })
        .await;
    info!("tenancy controller stopped");
}

fn tokio_stream_interval(every: Duration) -> impl futures_util::Stream<Item = ()> + Send {
    futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some(((), ()))
    })
}

/// Reconciles one Organization (through the finalizer, so deletion runs [`cleanup`]).
pub async fn reconcile(org: Arc<Organization>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = Api::<Organization>::all(ctx.client.clone());
    let started = Instant::now();
    ctx.metrics.reconcile_started("tenancy");
    let result = finalizer(&api, FINALIZER, org, |event| async {
        match event {
            Finalizer::Apply(o) => apply(&o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconcile_finished("tenancy");
    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "reconcile");
    result
}

/// Back-off after a failure: 1 s doubling to 5 min per Organization.
///
/// # Panics
///
/// When the failure map's lock is poisoned (a reconcile panicked while holding it).
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube's Controller::run requires"
)]
pub fn error_policy(org: Arc<Organization>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed("tenancy", error.metric_label());
    let mut f = ctx.failures.lock().expect("failure map");
    let n = f.entry(org.name_any()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_mins(5));
    warn!(organization = %org.name_any(), %error, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

async fn apply(org: &Organization, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let name = org.name_any();
    let orgs = ctx.orgs.state();
    let envs = ctx.envs.state();
    let world = World::new(
        orgs.iter().map(AsRef::as_ref),
        envs.iter().map(AsRef::as_ref),
    );
    let want = desired(org, &world, &ctx.cfg);
    let p = plan(&want, &ctx.observed_of(&name));
    let outcome = execute(org, &p, ctx).await;
    ctx.metrics.reconciled("tenancy", started.elapsed(), &p);
    let (status, cond) = match &outcome {
        Ok(()) => (
            ConditionStatus::True,
            ("Reconciled", format!("{} objects applied", want.len())),
        ),
        Err(e) => (ConditionStatus::False, ("ApplyFailed", e.to_string())),
    };
    let envs_of = world.environments_of(&name);
    let mut new_status = org.status.clone().unwrap_or_default();
    let old_status = new_status.clone();
    new_status.observed_generation = org.metadata.generation.unwrap_or(0);
    new_status.environments = envs_of.len() as u32;
    new_status.namespaces = envs_of.iter().map(|e| e.spec.namespaces.len() as u32).sum();
    new_status.generated_objects = want.len() as u32;
    set_condition(
        &mut new_status.conditions,
        Condition {
            type_: "Ready".into(),
            status,
            reason: cond.0.into(),
            message: cond.1,
            observed_generation: org.metadata.generation.unwrap_or(0),
            last_transition_time: jiff::Timestamp::now().to_string(),
        },
    );
    if !same_status(&old_status, &new_status) {
        let api = Api::<Organization>::all(ctx.client.clone());
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": tenancy_fields(&new_status)})),
        )
        .await
        .map_err(|source| Error::Api {
            action: "update status of",
            object: format!("Organization/{name}"),
            source,
        })?;
    }
    outcome?;
    if !p.is_empty() {
        publish(
            ctx,
            org,
            EventType::Normal,
            "Reconciled",
            format!(
                "created {}, updated {}, pruned {} (unchanged {})",
                p.create.len(),
                p.update.len(),
                p.prune.len(),
                p.unchanged
            ),
        )
        .await;
        info!(organization = %name, created = p.create.len(), updated = p.update.len(), pruned = p.prune.len(), "reconciled");
    }
    ctx.failures.lock().expect("failure map").remove(&name);
    Ok(Action::requeue(ctx.resync))
}

/// The status fields the tenancy controller owns (and the conditions list, which a merge patch
/// replaces whole). The compliance fields are left out, so a stale copy of them from this
/// controller's store never overwrites what the compliance aggregator wrote.
fn tenancy_fields(s: &OrganizationStatus) -> Value {
    json!({
        "observedGeneration": s.observed_generation,
        "environments": s.environments,
        "namespaces": s.namespaces,
        "generatedObjects": s.generated_objects,
        "conditions": s.conditions,
    })
}

/// Status equality ignoring condition transition times (which `set_condition` keeps anyway).
fn same_status(a: &OrganizationStatus, b: &OrganizationStatus) -> bool {
    let strip = |s: &OrganizationStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time.clear();
        }
        s
    };
    strip(a) == strip(b)
}

async fn cleanup(org: &Organization, ctx: &Context) -> Result<Action, Error> {
    let name = org.name_any();
    let p = plan(&[], &ctx.observed_of(&name));
    execute(org, &p, ctx).await?;
    info!(organization = %name, pruned = p.prune.len(), "organization deleted; generated objects removed");
    publish(
        ctx,
        org,
        EventType::Normal,
        "CleanedUp",
        format!("removed {} generated objects", p.prune.len()),
    )
    .await;
    Ok(Action::await_change())
}

/// Executes a plan: namespaces first (policies and bindings live in them), prunes last.
async fn execute(org: &Organization, p: &Plan, ctx: &Context) -> Result<(), Error> {
    let mut writes: Vec<(&Generated, Option<&str>)> = p
        .create
        .iter()
        .map(|g| (g, None))
        .chain(p.update.iter().map(|(g, why)| (g, Some(why.as_str()))))
        .collect();
    writes.sort_by_key(|(g, _)| g.key.kind != "Namespace");
    for (g, drift) in writes {
        apply_object(ctx, g).await?;
        if let Some(why) = drift {
            ctx.metrics.drift_corrected("tenancy");
            publish(
                ctx,
                org,
                EventType::Warning,
                "DriftCorrected",
                format!("{} was changed by someone else ({why}); put back", g.key),
            )
            .await;
        }
    }
    for (key, action) in &p.prune {
        let api = ctx.api_for(key);
        match action {
            PruneAction::Delete => match api.delete(&key.name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::Api {
                        action: "delete",
                        object: key.to_string(),
                        source,
                    });
                }
            },
            PruneAction::Release => {
                // Applying an empty object with our field manager removes every field we own
                // (labels, annotations): the namespace and its workloads stay.
                let bare = json!({"apiVersion": key.api_version, "kind": key.kind, "metadata": {"name": key.name}});
                api.patch(
                    &key.name,
                    &PatchParams::apply(&ctx.field_manager).force(),
                    &Patch::Apply(bare),
                )
                .await
                .map_err(|source| Error::Api {
                    action: "release",
                    object: key.to_string(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Server-side apply. Without `force` first: a conflict means another manager owns a field we
/// set; the controller takes it back (`force`) and says so in an Event.
async fn apply_object(ctx: &Context, g: &Generated) -> Result<(), Error> {
    let api = ctx.api_for(&g.key);
    let manifest = g.manifest();
    let pp = PatchParams::apply(&ctx.field_manager);
    match api.patch(&g.key.name, &pp, &Patch::Apply(&manifest)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            warn!(object = %g.key, conflict = %s.message, "field owned by another manager; taking it back");
            api.patch(&g.key.name, &pp.force(), &Patch::Apply(&manifest))
                .await
                .map(|_| ())
                .map_err(|source| Error::Api {
                    action: "apply",
                    object: g.key.to_string(),
                    source,
                })
        }
        Err(source) => Err(Error::Api {
            action: "apply",
            object: g.key.to_string(),
            source,
        }),
    }
}

async fn publish(ctx: &Context, org: &Organization, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &org.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
}
