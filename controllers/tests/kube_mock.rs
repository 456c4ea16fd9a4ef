//! The tenancy controller's kube shell against kube's tower-test mock of the API server: the
//! conversations a real server has (server-side apply, status patch, Events, conflicts, 404 on
//! delete, finalizer removal), answered as the API server answers them. No API server can run on
//! these machines; the same scenarios run against a real cluster in `k8s_e2e.rs` (ignored here).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use catalyst_controllers::{
    crd::{
        AccessTiers, DeletionPolicy, Environment, EnvironmentNamespace, EnvironmentSpec,
        Organization, OrganizationSpec,
    },
    metrics::Metrics,
    object::{OWNER_LABEL, key_of},
    tenancy::{
        TenancyConfig, World, desired,
        kube::{Context, FINALIZER, compact, error_policy, generated_kinds, reconcile},
    },
};
use http::{Request, Response};
use kube::{
    Client,
    api::DynamicObject,
    client::Body,
    runtime::{events::Reporter, reflector::store::Writer, watcher},
};
use serde_json::{Value, json};

/// One request the mock API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

type Responder = Arc<dyn Fn(&Seen) -> (u16, Value) + Send + Sync>;

/// Answers like the API server: an apply or patch returns the object, a POST returns what was
/// posted, a DELETE returns a Status.
fn api_server() -> Responder {
    let o = serde_json::to_value(org("acme")).unwrap();
    Arc::new(move |s: &Seen| match s.method.as_str() {
        // The Organization itself: status patches and the finalizer patch return the object.
        _ if s
            .path
            .starts_with("/apis/orgs.openova.io/v1/organizations/") =>
        {
            let mut obj = o.clone();
            if s.path.ends_with("/status") {
                obj["status"] = s.body["status"].clone();
            } else {
                obj["metadata"]["finalizers"] = json!([]);
            }
            (200, obj)
        }
        "PATCH" | "POST" | "PUT" => {
            let mut b = s.body.clone();
            if b.is_object() {
                b["metadata"]["uid"] = json!("uid-x");
                b["metadata"]["resourceVersion"] = json!("2");
            }
            (200, b)
        }
        "DELETE" => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => (404, not_found()),
    })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
        "message": "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using cilium.io/v2: .spec.ingress"})
}

/// A client whose requests are answered by `respond` and logged.
fn mock(respond: Responder) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let seen = Seen {
                method,
                path,
                query,
                body,
            };
            let (code, answer) = respond(&seen);
            l.lock().unwrap().push(seen);
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(svc, "default"), log)
}

fn org(name: &str) -> Organization {
    let mut o = Organization::new(
        name,
        OrganizationSpec {
            display_name: None,
            sovereign: "eu".into(),
            access: AccessTiers {
                developer: vec![format!("{name}-devs")],
                ..Default::default()
            },
            grants: vec![],
        },
    );
    o.metadata.uid = Some(format!("uid-{name}"));
    o.metadata.generation = Some(1);
    o.metadata.resource_version = Some("1".into());
    o.metadata.finalizers = Some(vec![FINALIZER.into()]);
    o
}

fn env(org: &str, namespaces: &[&str]) -> Environment {
    let mut e = Environment::new(
        &format!("{org}-prod"),
        EnvironmentSpec {
            organization: org.into(),
            name: "prod".into(),
            region: None,
            policy: None,
            namespaces: namespaces
                .iter()
                .map(|n| EnvironmentNamespace {
                    name: (*n).into(),
                    application: None,
                    labels: BTreeMap::default(),
                })
                .collect(),
            deletion_policy: DeletionPolicy::Retain,
        },
    );
    e.metadata.uid = Some(format!("uid-{org}-prod"));
    e
}

/// A context whose stores hold `orgs`, `envs` and the live generated objects `live`.
fn context(
    client: Client,
    orgs: &[Organization],
    envs: &[Environment],
    live: &[Value],
) -> Arc<Context> {
    let mut ow = Writer::<Organization>::default();
    for o in orgs {
        ow.apply_watcher_event(&watcher::Event::Apply(o.clone()));
    }
    let mut ew = Writer::<Environment>::default();
    for e in envs {
        ew.apply_watcher_event(&watcher::Event::Apply(e.clone()));
    }
    let mut observed = Vec::new();
    for ar in generated_kinds() {
        let mut w = Writer::<DynamicObject>::new(ar.clone());
        for v in live.iter().filter(|v| v["kind"] == ar.kind.as_str()) {
            // Stored as the controller stores them (compacted).
            let mut o: DynamicObject = serde_json::from_value(v.clone()).unwrap();
            compact(&mut o);
            w.apply_watcher_event(&watcher::Event::Apply(o));
        }
        observed.push((ar, w.as_reader()));
        std::mem::forget(w); // keep the store's writer side alive for the test's duration
    }
    let (orgs_store, envs_store) = (ow.as_reader(), ew.as_reader());
    std::mem::forget(ow);
    std::mem::forget(ew);
    Arc::new(Context::new(
        client,
        TenancyConfig::default(),
        "catalyst-controllers".into(),
        orgs_store,
        envs_store,
        observed,
        Arc::new(Metrics::new()),
        Reporter {
            controller: "catalyst-controllers".into(),
            instance: Some("test".into()),
        },
        Duration::from_mins(5),
    ))
}

fn writes(log: &[Seen]) -> Vec<&Seen> {
    log.iter().filter(|s| s.method != "GET").collect()
}

#[tokio::test]
async fn new_organization_is_applied_with_one_field_manager_then_status_and_event() {
    let (client, log) = mock(api_server());
    let o = org("acme");
    let e = env("acme", &["shop", "pay"]);
    let ctx = context(
        client,
        std::slice::from_ref(&o),
        std::slice::from_ref(&e),
        &[],
    );
    reconcile(Arc::new(o.clone()), ctx)
        .await
        .expect("reconcile");
    let log = log.lock().unwrap().clone();
    let applies: Vec<&Seen> = log
        .iter()
        .filter(|s| s.method == "PATCH" && s.query.contains("fieldManager=catalyst-controllers"))
        .collect();
    let want = desired(&o, &World::new([&o], [&e]), &TenancyConfig::default());
    assert_eq!(applies.len(), want.len(), "{log:#?}");
    // Namespaces go first: the policies and bindings live in them.
    assert!(
        applies[0].path == "/api/v1/namespaces/shop" || applies[0].path == "/api/v1/namespaces/pay",
        "{:?}",
        applies[0]
    );
    assert!(applies.iter().any(|s| s.path == "/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies/catalyst-tenancy-same-organization"));
    assert!(
        applies.iter().any(|s| s.path
            == "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/catalyst-tenancy-acme")
    );
    assert!(applies.iter().any(|s| s.path
        == "/apis/rbac.authorization.k8s.io/v1/namespaces/pay/rolebindings/catalyst-developer"));
    // Without force first: a conflict must be seen, not silently overridden.
    assert!(applies.iter().all(|s| !s.query.contains("force=true")));
    let status = log
        .iter()
        .find(|s| s.path == "/apis/orgs.openova.io/v1/organizations/acme/status")
        .expect("status patch");
    assert_eq!(status.body["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(status.body["status"]["conditions"][0]["status"], "True");
    assert_eq!(status.body["status"]["namespaces"], 2);
    assert_eq!(status.body["status"]["observedGeneration"], 1);
    let event = log
        .iter()
        .find(|s| s.path.contains("/events"))
        .expect("an Event");
    assert_eq!(event.body["reason"], "Reconciled");
}

#[tokio::test]
async fn unchanged_world_writes_nothing() {
    let (client, log) = mock(api_server());
    let mut o = org("acme");
    let e = env("acme", &["shop"]);
    let want = desired(&o, &World::new([&o], [&e]), &TenancyConfig::default());
    let live: Vec<Value> = want
        .iter()
        .map(catalyst_controllers::object::Generated::manifest)
        .collect();
    // The status a previous reconcile wrote.
    o.status = Some(serde_json::from_value(json!({
        "observedGeneration": 1, "environments": 1, "namespaces": 1, "generatedObjects": want.len(),
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
            "message": format!("{} objects applied", want.len()), "observedGeneration": 1,
            "lastTransitionTime": "2026-12-01T00:00:00Z"}]
    })).unwrap());
    let ctx = context(client, std::slice::from_ref(&o), &[e], &live);
    reconcile(Arc::new(o), ctx).await.expect("reconcile");
    let log = log.lock().unwrap().clone();
    assert!(
        writes(&log).is_empty(),
        "a second reconcile of an unchanged world wrote: {log:#?}"
    );
}

#[tokio::test]
async fn drift_is_put_back_and_the_event_says_so() {
    let (client, log) = mock(api_server());
    let o = org("acme");
    let e = env("acme", &["shop"]);
    let want = desired(&o, &World::new([&o], [&e]), &TenancyConfig::default());
    let mut live: Vec<Value> = want
        .iter()
        .map(catalyst_controllers::object::Generated::manifest)
        .collect();
    let edited = live
        .iter_mut()
        .find(|v| v["metadata"]["name"] == "catalyst-tenancy-dns")
        .unwrap();
    edited["spec"]["egress"][0]["toPorts"][0]["ports"][0]["port"] = json!("5353");
    let ctx = context(client, std::slice::from_ref(&o), &[e], &live);
    reconcile(Arc::new(o), ctx).await.expect("reconcile");
    let log = log.lock().unwrap().clone();
    let applies: Vec<&Seen> = log
        .iter()
        .filter(|s| s.method == "PATCH" && s.query.contains("fieldManager"))
        .collect();
    assert_eq!(applies.len(), 1, "{applies:#?}");
    assert!(
        applies[0]
            .path
            .ends_with("/namespaces/shop/ciliumnetworkpolicies/catalyst-tenancy-dns")
    );
    assert_eq!(
        applies[0].body["spec"]["egress"][0]["toPorts"][0]["ports"][0]["port"],
        "53"
    );
    let drift = log
        .iter()
        .find(|s| s.body["reason"] == "DriftCorrected")
        .expect("a DriftCorrected event");
    let note = drift.body["note"].as_str().unwrap();
    assert!(
        note.contains("CiliumNetworkPolicy/shop/catalyst-tenancy-dns")
            && note.contains("someone else"),
        "{note}"
    );
}

#[tokio::test]
async fn apply_conflict_is_retried_with_force() {
    let seen_conflict = Arc::new(Mutex::new(false));
    let s2 = seen_conflict.clone();
    let inner = api_server();
    let responder: Responder = Arc::new(move |s: &Seen| {
        if s.method == "PATCH"
            && s.path.ends_with("catalyst-tenancy-same-namespace")
            && !s.query.contains("force=true")
        {
            *s2.lock().unwrap() = true;
            return (409, conflict());
        }
        inner(s)
    });
    let (client, log) = mock(responder);
    let o = org("acme");
    let e = env("acme", &["shop"]);
    let ctx = context(client, std::slice::from_ref(&o), &[e], &[]);
    reconcile(Arc::new(o), ctx).await.expect("reconcile");
    assert!(*seen_conflict.lock().unwrap());
    let log = log.lock().unwrap().clone();
    let forced: Vec<&Seen> = log
        .iter()
        .filter(|s| s.query.contains("force=true"))
        .collect();
    assert_eq!(forced.len(), 1);
    assert!(forced[0].path.ends_with("catalyst-tenancy-same-namespace"));
}

#[tokio::test]
async fn stale_objects_are_pruned_and_404_on_delete_is_fine() {
    let (client, log) = mock(Arc::new({
        let inner = api_server();
        move |s: &Seen| {
            if s.method == "DELETE" {
                (404, not_found())
            } else {
                inner(s)
            }
        }
    }));
    let o = org("acme");
    let e = env("acme", &["shop"]);
    let want = desired(&o, &World::new([&o], [&e]), &TenancyConfig::default());
    let mut live: Vec<Value> = want
        .iter()
        .map(catalyst_controllers::object::Generated::manifest)
        .collect();
    // Objects of a namespace that left the Environment (already deleted by someone: 404).
    let mut stale = live
        .iter()
        .find(|v| v["metadata"]["name"] == "catalyst-tenancy-dns")
        .unwrap()
        .clone();
    stale["metadata"]["namespace"] = json!("old");
    live.push(stale);
    let ctx = context(client, std::slice::from_ref(&o), &[e], &live);
    reconcile(Arc::new(o), ctx)
        .await
        .expect("a 404 on delete is success");
    let log = log.lock().unwrap().clone();
    let deletes: Vec<&Seen> = log.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].path,
        "/apis/cilium.io/v2/namespaces/old/ciliumnetworkpolicies/catalyst-tenancy-dns"
    );
}

#[tokio::test]
async fn deleted_organization_is_cleaned_up_then_its_finalizer_removed() {
    let (client, log) = mock(api_server());
    let mut o = org("acme");
    o.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let e = env("acme", &["shop"]);
    let alive = org("acme");
    let want = desired(
        &alive,
        &World::new([&alive], [&e]),
        &TenancyConfig::default(),
    );
    let live: Vec<Value> = want
        .iter()
        .map(catalyst_controllers::object::Generated::manifest)
        .collect();
    let ctx = context(client, std::slice::from_ref(&o), &[e], &live);
    reconcile(Arc::new(o), ctx).await.expect("cleanup");
    let log = log.lock().unwrap().clone();
    let deletes = log.iter().filter(|s| s.method == "DELETE").count();
    assert_eq!(
        deletes,
        want.len() - 1,
        "every object but the retained namespace is deleted: {log:#?}"
    );
    let release = log
        .iter()
        .find(|s| s.method == "PATCH" && s.path == "/api/v1/namespaces/shop")
        .expect("the retained namespace is released");
    assert!(release.body["metadata"].get("labels").is_none());
    let last = log
        .iter()
        .rev()
        .find(|s| s.path == "/apis/orgs.openova.io/v1/organizations/acme")
        .expect("finalizer patch");
    assert_eq!(last.method, "PATCH");
    assert!(
        last.body.to_string().contains("remove") || last.body.to_string().contains("finalizers"),
        "{last:?}"
    );
    // Owned objects only: every delete targets an object labelled with this owner.
    for d in log.iter().filter(|s| s.method == "DELETE") {
        assert!(live.iter().any(|v| {
            let k = key_of(v).unwrap();
            d.path.ends_with(&format!("/{}", k.name))
                && v["metadata"]["labels"][OWNER_LABEL] == "acme"
        }));
    }
}

#[tokio::test]
async fn apply_failure_sets_ready_false_and_backs_off() {
    let inner = api_server();
    let (client, log) = mock(Arc::new(move |s: &Seen| {
        // Cilium's CRDs are not installed: the policy endpoints answer 404.
        if s.path.starts_with("/apis/cilium.io/") {
            (404, not_found())
        } else {
            inner(s)
        }
    }));
    let o = org("acme");
    let e = env("acme", &["shop"]);
    let ctx = context(client, std::slice::from_ref(&o), &[e], &[]);
    let err = reconcile(Arc::new(o.clone()), ctx.clone())
        .await
        .expect_err("apply fails");
    assert!(
        err.to_string().contains("cilium.io/v2") || err.to_string().contains("CiliumNetworkPolicy"),
        "{err}"
    );
    let log = log.lock().unwrap().clone();
    let status = log
        .iter()
        .find(|s| s.path.ends_with("/organizations/acme/status"))
        .expect("status patch");
    assert_eq!(status.body["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        status.body["status"]["conditions"][0]["reason"],
        "ApplyFailed"
    );
    let a1 = error_policy(Arc::new(o.clone()), &err, ctx.clone());
    let a2 = error_policy(Arc::new(o), &err, ctx);
    assert_ne!(a1, a2, "back-off grows");
}

mod leader_election {
    use super::*;
    use catalyst_controllers::{config::LeaderElectionConfig, leader::Elector};

    fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
        let renew = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_secs_ago);
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "catalyst-controllers", "namespace": "catalyst-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew.to_string(), "leaseTransitions": 3}
        })
    }

    fn elector(client: Client, me: &str) -> Elector {
        Elector::new(
            client,
            "catalyst-system",
            me.into(),
            LeaderElectionConfig::default(),
        )
    }

    #[tokio::test]
    async fn absent_lease_is_created_with_us_as_holder() {
        let (client, log) = mock(Arc::new(|s: &Seen| match s.method.as_str() {
            "GET" => (404, not_found()),
            _ => (201, s.body.clone()),
        }));
        assert!(
            elector(client, "pod-a")
                .try_acquire_or_renew()
                .await
                .unwrap()
        );
        let log = log.lock().unwrap().clone();
        let post = log.iter().find(|s| s.method == "POST").unwrap();
        assert_eq!(
            post.path,
            "/apis/coordination.k8s.io/v1/namespaces/catalyst-system/leases"
        );
        assert_eq!(post.body["spec"]["holderIdentity"], "pod-a");
    }

    #[tokio::test]
    async fn a_live_holder_keeps_the_lease_and_an_expired_one_loses_it() {
        let live = lease("pod-b", 2);
        let (client, log) = mock(Arc::new(move |s: &Seen| {
            (
                200,
                if s.method == "GET" {
                    live.clone()
                } else {
                    s.body.clone()
                },
            )
        }));
        assert!(
            !elector(client, "pod-a")
                .try_acquire_or_renew()
                .await
                .unwrap()
        );
        assert!(
            log.lock().unwrap().iter().all(|s| s.method == "GET"),
            "no write while another holder is live"
        );

        let expired = lease("pod-b", 60);
        let (client, log) = mock(Arc::new(move |s: &Seen| {
            (
                200,
                if s.method == "GET" {
                    expired.clone()
                } else {
                    s.body.clone()
                },
            )
        }));
        assert!(
            elector(client, "pod-a")
                .try_acquire_or_renew()
                .await
                .unwrap()
        );
        let log = log.lock().unwrap().clone();
        let put = log.iter().find(|s| s.method == "PUT").unwrap();
        assert_eq!(put.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(put.body["spec"]["leaseTransitions"], 4);
        // Optimistic concurrency: the update carries the resourceVersion that was read.
        assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    }

    #[tokio::test]
    async fn losing_the_race_is_a_409_and_not_leading() {
        let expired = lease("pod-b", 60);
        let (client, _) = mock(Arc::new(move |s: &Seen| {
            if s.method == "GET" {
                (200, expired.clone())
            } else {
                (409, conflict())
            }
        }));
        assert!(
            !elector(client, "pod-a")
                .try_acquire_or_renew()
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn release_clears_the_holder() {
        let mine = lease("pod-a", 1);
        let (client, log) = mock(Arc::new(move |s: &Seen| {
            (
                200,
                if s.method == "GET" {
                    mine.clone()
                } else {
                    s.body.clone()
                },
            )
        }));
        elector(client, "pod-a").release().await;
        let log = log.lock().unwrap().clone();
        let put = log.iter().find(|s| s.method == "PUT").unwrap();
        assert!(
            put.body["spec"]
                .get("holderIdentity")
                .is_none_or(Value::is_null)
        );
        assert_eq!(put.body["spec"]["leaseDurationSeconds"], 1);
    }
}
