//! The compliance aggregator's Kubernetes mode against kube's tower-test mock of the API server
//! (no API server can run on these machines; the real-cluster steps are in `k8s_e2e.rs`).
//!
//! The mock answers list and watch requests from recorded objects — the sample of
//! deploy/examples/compliance (Catalyst resources, a Kyverno `PolicyReport`, an `OpenReports`
//! `Report`, workloads) — and status patches as the API server does, including a 409 when the
//! patch's `resourceVersion` is stale. The scenarios check that the watched objects give the
//! same scores as the same manifests read as files (one row path), that a deleted report
//! removes its rows, that status is written only when it changes, and that a report CRD the
//! server does not serve (404) is logged clearly while the rest keeps scoring.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use ::kube::{Client, client::Body};
use catalyst_controllers::{
    compliance::{
        Aggregator, ComplianceConfig, ScoreDoc, Source, Tenants, inputs::file_rows, kube as shell,
        run_kubernetes,
    },
    metrics::Metrics,
    standalone,
    validate::Validator,
};
use http::{Request, Response};
use serde_json::{Value, json};
use tower_test::mock::SendResponse;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/compliance")
}

/// Every document of the sample directory `sub`, as JSON.
fn documents(sub: &str) -> Vec<Value> {
    let (docs, errors) =
        catalyst_controllers::compliance::inputs::read_documents(&example().join(sub));
    assert!(errors.is_empty(), "{errors:?}");
    docs.into_iter().map(|(_, v)| v).collect()
}

/// The collection path of a kind (cluster-wide, as the aggregator's watches ask).
fn collection(api_version: &str, kind: &str) -> String {
    let plural = match kind {
        "PolicyReport" => "policyreports",
        "ClusterPolicyReport" => "clusterpolicyreports",
        "Report" => "reports",
        "ClusterReport" => "clusterreports",
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "DaemonSet" => "daemonsets",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        "HorizontalPodAutoscaler" => "horizontalpodautoscalers",
        "Service" => "services",
        "ServiceMonitor" => "servicemonitors",
        "NetworkPolicy" => "networkpolicies",
        "CiliumNetworkPolicy" => "ciliumnetworkpolicies",
        "Namespace" => "namespaces",
        "Organization" => "organizations",
        "Environment" => "environments",
        "EnvironmentPolicy" => "environmentpolicies",
        other => panic!("no plural for {other}"),
    };
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

/// One request the mock API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// The recorded cluster: objects per collection, collections not served (404), watch events
/// queued per collection, and every request seen.
#[derive(Default)]
struct State {
    objects: BTreeMap<String, Vec<Value>>,
    missing: Vec<String>,
    events: HashMap<String, Vec<Value>>,
    log: Vec<Seen>,
    rv: u64,
}

#[derive(Clone)]
struct Cluster {
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
        "code": code, "message": format!("{reason} (mock API server)")})
}

impl Cluster {
    /// A cluster holding `objects` (resourceVersion 1 each); `missing` collections answer 404.
    fn new(objects: Vec<Value>, missing: &[&str]) -> Self {
        let mut s = State {
            rv: 10,
            missing: missing.iter().map(|m| (*m).to_owned()).collect(),
            ..State::default()
        };
        // Every watched collection answers, empty when the sample has none of its kind.
        for (api, kind) in [
            ("wgpolicyk8s.io/v1alpha2", "PolicyReport"),
            ("wgpolicyk8s.io/v1alpha2", "ClusterPolicyReport"),
            ("openreports.io/v1alpha1", "Report"),
            ("openreports.io/v1alpha1", "ClusterReport"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "StatefulSet"),
            ("apps/v1", "DaemonSet"),
            ("policy/v1", "PodDisruptionBudget"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("v1", "Service"),
            ("monitoring.coreos.com/v1", "ServiceMonitor"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
            ("cilium.io/v2", "CiliumNetworkPolicy"),
            ("v1", "Namespace"),
            ("orgs.openova.io/v1", "Organization"),
            ("catalyst.openova.io/v1", "Environment"),
            ("catalyst.openova.io/v1", "EnvironmentPolicy"),
        ] {
            s.objects.entry(collection(api, kind)).or_default();
        }
        for mut o in objects {
            o["metadata"]["resourceVersion"] = json!("1");
            o["metadata"]["generation"] = json!(1);
            let path = collection(
                o["apiVersion"].as_str().unwrap(),
                o["kind"].as_str().unwrap(),
            );
            s.objects.entry(path).or_default().push(o);
        }
        Self {
            state: Arc::new(Mutex::new(s)),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Changes the cluster: `ADDED`/`MODIFIED` store `obj` (with a new resourceVersion),
    /// `DELETED` removes it; the event goes to the watch of its collection.
    fn event(&self, kind: &str, mut obj: Value) {
        let path = collection(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let ns = obj["metadata"]["namespace"].clone();
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let items = s.objects.entry(path.clone()).or_default();
        items.retain(|o| {
            !(o["metadata"]["name"] == name.as_str() && o["metadata"]["namespace"] == ns)
        });
        if kind != "DELETED" {
            items.push(obj.clone());
        }
        s.events
            .entry(path)
            .or_default()
            .push(json!({"type": kind, "object": obj}));
        drop(s);
        self.wake.notify_one();
    }

    /// Ends the watch of a collection with `410 Gone` (the resourceVersion expired): the
    /// watcher lists again.
    fn expire_watch(&self, path: &str) {
        self.state
            .lock()
            .unwrap()
            .events
            .entry(path.to_owned())
            .or_default()
            .push(json!({"type": "ERROR", "object": status(410, "Expired")}));
        self.wake.notify_one();
    }

    fn lists(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|s| s.method == "GET" && s.path == path && !s.query.contains("watch=true"))
            .count()
    }

    /// Changes an object without telling the watches (another writer the aggregator has not
    /// seen yet).
    fn touch_unseen(&self, api: &str, kind: &str, name: &str) {
        let path = collection(api, kind);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv.to_string();
        for o in s.objects.get_mut(&path).unwrap() {
            if o["metadata"]["name"] == name {
                o["metadata"]["resourceVersion"] = json!(rv);
            }
        }
    }

    fn object(&self, api: &str, kind: &str, name: &str) -> Value {
        let s = self.state.lock().unwrap();
        s.objects[&collection(api, kind)]
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap()
            .clone()
    }

    fn answer(&self, seen: &Seen) -> (u16, Value) {
        let mut s = self.state.lock().unwrap();
        if s.missing.iter().any(|m| seen.path.starts_with(m.as_str())) {
            return (404, status(404, "NotFound"));
        }
        match seen.method.as_str() {
            "GET" => match s.objects.get(&seen.path) {
                Some(items) => (
                    200,
                    json!({"apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
                ),
                None => (404, status(404, "NotFound")),
            },
            "PATCH" if seen.path.ends_with("/status") => {
                let mut parts: Vec<&str> = seen.path.rsplitn(3, '/').collect();
                parts.reverse();
                let (coll, name) = (parts[0].to_owned(), parts[1].to_owned());
                s.rv += 1;
                let rv = s.rv.to_string();
                let Some(o) = s.objects.get_mut(&coll).and_then(|items| {
                    items
                        .iter_mut()
                        .find(|o| o["metadata"]["name"] == name.as_str())
                }) else {
                    return (404, status(404, "NotFound"));
                };
                // Optimistic concurrency, as the API server checks a resourceVersion in a patch.
                if let Some(want) = seen.body["metadata"]["resourceVersion"].as_str()
                    && o["metadata"]["resourceVersion"] != want
                {
                    return (409, status(409, "Conflict"));
                }
                merge(&mut o["status"], &seen.body["status"]);
                o["metadata"]["resourceVersion"] = json!(rv);
                let o = o.clone();
                // The watch sees the write, as on a real server.
                s.events
                    .entry(coll)
                    .or_default()
                    .push(json!({"type": "MODIFIED", "object": o.clone()}));
                self.wake.notify_one();
                (200, o)
            }
            _ => (405, status(405, "MethodNotAllowed")),
        }
    }

    /// A client served by this cluster.
    fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            let mut parked: Vec<(String, SendResponse<Response<Body>>)> = Vec::new();
            loop {
                tokio::select! {
                    next = handle.next_request() => {
                        let Some((req, send)) = next else { return };
                        let seen = Seen {
                            method: req.method().to_string(),
                            path: req.uri().path().to_owned(),
                            query: req.uri().query().unwrap_or("").to_owned(),
                            body: {
                                let bytes = req.into_body().collect_bytes().await.unwrap();
                                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                            },
                        };
                        me.state.lock().unwrap().log.push(seen.clone());
                        let is_watch = seen.query.split('&').any(|q| q == "watch=true");
                        let missing = {
                            let s = me.state.lock().unwrap();
                            s.missing.iter().any(|m| seen.path.starts_with(m.as_str()))
                        };
                        if is_watch && !missing {
                            parked.push((seen.path, send));
                        } else {
                            let (code, body) = me.answer(&seen);
                            send.send_response(respond(code, serde_json::to_vec(&body).unwrap()));
                        }
                    }
                    () = me.wake.notified() => {}
                }
                // Answer the parked watches that have events; the watcher re-watches after the
                // body ends and parks again.
                let mut still = Vec::new();
                for (path, send) in parked {
                    let events = me.state.lock().unwrap().events.remove(&path);
                    match events {
                        Some(ev) if !ev.is_empty() => {
                            let mut body = Vec::new();
                            for e in ev {
                                body.extend(serde_json::to_vec(&e).unwrap());
                                body.push(b'\n');
                            }
                            send.send_response(respond(200, body));
                        }
                        _ => still.push((path, send)),
                    }
                }
                parked = still;
            }
        });
        Client::new(svc, "default")
    }

    fn status_patches(&self, path: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|s| s.method == "PATCH" && s.path == path)
            .map(|s| s.body.clone())
            .collect()
    }

    fn writes(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|s| s.method != "GET")
            .count()
    }
}

fn respond(code: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(body))
        .unwrap()
}

/// JSON merge patch (RFC 7386), as the API server applies `application/merge-patch+json`.
fn merge(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().unwrap();
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

const ENV_STATUS: &str = "/apis/catalyst.openova.io/v1/environments/acme-prod/status";
const ORG_STATUS: &str = "/apis/orgs.openova.io/v1/organizations/acme/status";

/// The sample's objects, minus reports for which `keep_report` is false.
fn sample(keep_report: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut all = documents("tenants");
    all.extend(documents("workloads"));
    all.extend(documents("reports").into_iter().filter(|r| keep_report(r)));
    all
}

/// What standalone mode computes from the same sample as files (the oracle of "one row path"),
/// with the reports for which `keep_report` is true.
fn file_mode_docs(keep_report: impl Fn(&Value) -> bool) -> BTreeMap<String, ScoreDoc> {
    let (i, errors) = standalone::load(
        &example().join("tenants"),
        &Validator::for_catalyst(),
        &standalone::Inputs::default(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    let t = Tenants::from_resources(&i.organizations, &i.environments, &i.environment_policies);
    let dir = tempfile::tempdir().unwrap();
    for (n, r) in documents("reports")
        .into_iter()
        .filter(|r| keep_report(r))
        .enumerate()
    {
        std::fs::write(
            dir.path().join(format!("{n}.yaml")),
            serde_norway::to_string(&r).unwrap(),
        )
        .unwrap();
    }
    let cfg = ComplianceConfig::default();
    let (eval, reports, errors) = file_rows(
        Some(dir.path()),
        Some(&example().join("workloads")),
        &cfg.evaluators,
        &t,
        "default",
    );
    assert!(errors.is_empty(), "{errors:?}");
    let mut a = Aggregator::new(cfg);
    a.set_tenants(t);
    a.replace_source(Source::Evaluator, eval, 0);
    a.replace_source(Source::PolicyReport, reports, 0);
    a.documents()
}

fn failing(doc: &ScoreDoc) -> Vec<String> {
    doc.failing_enforcing
        .iter()
        .map(|f| format!("{}/{}: {}", f.environment, f.application, f.check))
        .collect()
}

fn config() -> ComplianceConfig {
    ComplianceConfig {
        enabled: true,
        listen_address: None,
        nats: None,
        publish_interval_ms: 20,
        ..ComplianceConfig::default()
    }
}

/// Starts the aggregator in Kubernetes mode on `cluster`; dropping the guard stops it.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(cluster: &Cluster) -> Running {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_kubernetes(
        config(),
        cluster.client(),
        "catalyst-controllers".into(),
        Arc::new(Metrics::new()),
        rx,
    ));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
    }
}

/// Waits until `path` has received `n` status patches (or panics after 10 s).
async fn patches(cluster: &Cluster, path: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let p = cluster.status_patches(path);
        if p.len() >= n {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{path}: {} status patches, expected {n}",
        cluster.status_patches(path).len()
    );
}

/// Lets the aggregator run several passes.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn is_cache_report(r: &Value) -> bool {
    r["kind"] == "Report"
}

/// Watched reports and workloads give what the same manifests give as files (the worked
/// example of docs/compliance.md, hand-computed there), written into the Environment's and the
/// Organization's status with one field manager and a resourceVersion precondition; deleting
/// the `OpenReports` Report removes its row and the status follows.
#[tokio::test]
async fn watched_objects_score_as_files_and_a_deleted_report_removes_its_rows() {
    let cluster = Cluster::new(sample(|_| true), &[]);
    let running = start(&cluster);

    let env = patches(&cluster, ENV_STATUS, 1).await.remove(0);
    let org = patches(&cluster, ORG_STATUS, 1).await.remove(0);
    let files = file_mode_docs(|_| true);
    let want_env = &files["eu.acme.prod"];
    // Hand-computed in docs/compliance.md: (2 · 55.5/99 + 52/57) / 3.
    let hand = round2((2.0 * 55.5 / 99.0 + 52.0 / 57.0) / 3.0 * 100.0);
    assert_eq!(want_env.score, Some(hand));
    assert_eq!(env["status"]["score"], json!(hand), "{env}");
    assert_eq!(
        env["status"]["failingEnforcingChecks"],
        json!(failing(want_env))
    );
    assert_eq!(env["status"]["applications"], json!(2));
    assert_eq!(env["status"]["workloads"], json!(3));
    assert_eq!(
        env["status"]["gate"],
        json!({"state": "fail", "minimumScore": 80.0, "policy": "prod-rules"})
    );
    let compliant = &env["status"]["conditions"][0];
    assert_eq!(
        (
            &compliant["type"],
            &compliant["status"],
            &compliant["reason"]
        ),
        (
            &json!("Compliant"),
            &json!("False"),
            &json!("EnforcingCheckFailed")
        )
    );
    assert_eq!(compliant["observedGeneration"], json!(1));
    // Conditional on the version the aggregator saw; one field manager.
    assert_eq!(env["metadata"]["resourceVersion"], json!("1"));
    let seen = cluster.state.lock().unwrap().log.clone();
    let managers: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "PATCH")
        .map(|s| s.query.as_str())
        .collect();
    assert!(
        managers
            .iter()
            .all(|q| q.contains("fieldManager=catalyst-controllers")),
        "{managers:?}"
    );
    assert_eq!(
        org["status"]["score"],
        json!(files["eu.acme"].score.unwrap())
    );
    assert!(
        org["status"].get("gate").is_none_or(Value::is_null),
        "{org}"
    );

    // The OpenReports Report on the cache StatefulSet goes: its failing
    // `disallow-privilege-escalation` row goes with it (shop 55.5 → 56 of 99).
    let report = cluster.object("openreports.io/v1alpha1", "Report", "cache");
    cluster.event("DELETED", report);
    let env2 = patches(&cluster, ENV_STATUS, 2).await.remove(1);
    let without = file_mode_docs(|r| !is_cache_report(r));
    let hand2 = round2((2.0 * 56.0 / 99.0 + 52.0 / 57.0) / 3.0 * 100.0);
    assert_eq!(without["eu.acme.prod"].score, Some(hand2));
    assert_eq!(env2["status"]["score"], json!(hand2), "{env2}");
    // Based on the version the watch delivered after the first write.
    assert_ne!(env2["metadata"]["resourceVersion"], json!("1"));
    running.stop().await;
}

/// A status is written only when what it says changes: the watch echo of the aggregator's own
/// write, a workload change that changes no check, and a new list of the same objects write
/// nothing; another writer replacing the conditions (the tenancy controller's `Ready` without
/// `Compliant`) gets `Compliant` back, keeping `Ready`; a patch on a version the aggregator has
/// not seen yet is refused (409) and repeated once the watch delivers that version.
#[tokio::test]
async fn status_is_written_only_on_change_and_never_over_an_unseen_version() {
    let cluster = Cluster::new(sample(|_| true), &[]);
    let running = start(&cluster);
    patches(&cluster, ENV_STATUS, 1).await;
    patches(&cluster, ORG_STATUS, 1).await;
    settle().await;
    assert_eq!(cluster.writes(), 2, "one write per resource");

    // The watch has echoed both writes (the mock does, as the API server does) and nothing
    // was written again. A workload change no check reads:
    let mut web = cluster.object("apps/v1", "Deployment", "web");
    web["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "7"});
    cluster.event("MODIFIED", web);
    // The Deployments' watch expires: a new list of the same objects.
    let deployments = collection("apps/v1", "Deployment");
    assert_eq!(cluster.lists(&deployments), 1);
    cluster.expire_watch(&deployments);
    // The watcher lists again after its back-off.
    for _ in 0..250 {
        if cluster.lists(&deployments) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.lists(&deployments), 2, "listed again after 410");
    settle().await;
    assert_eq!(cluster.writes(), 2, "nothing changed: no write");

    // Another writer replaces the conditions with its own `Ready` only.
    let mut clobbered = cluster.object("catalyst.openova.io/v1", "Environment", "acme-prod");
    clobbered["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
        "reason": "Reconciled", "message": "", "observedGeneration": 1,
        "lastTransitionTime": "2026-12-05T00:00:00Z"}]);
    cluster.event("MODIFIED", clobbered);
    let p = patches(&cluster, ENV_STATUS, 2).await.remove(1);
    let types: Vec<&str> = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "Compliant"], "{p}");
    settle().await;
    assert_eq!(cluster.status_patches(ENV_STATUS).len(), 2);

    // The Environment changes on the server (rv bumped) before the watch says so; then a score
    // change: the aggregator patches on the version it saw → 409, nothing overwritten; the
    // watch delivers the new version → the patch lands.
    cluster.touch_unseen("catalyst.openova.io/v1", "Environment", "acme-prod");
    let report = cluster.object("openreports.io/v1alpha1", "Report", "cache");
    cluster.event("DELETED", report);
    patches(&cluster, ENV_STATUS, 3).await;
    settle().await;
    let env_now = cluster.object("catalyst.openova.io/v1", "Environment", "acme-prod");
    assert_ne!(
        env_now["status"]["score"],
        json!(round2((2.0 * 56.0 / 99.0 + 52.0 / 57.0) / 3.0 * 100.0)),
        "a patch on an unseen version must not land"
    );
    cluster.event("MODIFIED", env_now);
    let all = patches(&cluster, ENV_STATUS, 4).await;
    let last = all.last().unwrap();
    assert_eq!(
        last["status"]["score"],
        json!(round2((2.0 * 56.0 / 99.0 + 52.0 / 57.0) / 3.0 * 100.0))
    );
    settle().await;
    let env_final = cluster.object("catalyst.openova.io/v1", "Environment", "acme-prod");
    assert_eq!(env_final["status"]["score"], last["status"]["score"]);
    assert_eq!(
        cluster.status_patches(ENV_STATUS).len(),
        4,
        "no further write"
    );
    running.stop().await;
}

/// Captures the log lines of the test (current-thread runtime: every task logs here).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `OpenReports` not installed: its list answers 404. The aggregator says so once per kind in
/// plain words, scores everything else (exactly what the files give without that report), and
/// keeps retrying without repeating the line.
#[tokio::test]
async fn missing_report_crds_are_logged_once_and_the_rest_scores() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = Cluster::new(sample(|r| !is_cache_report(r)), &["/apis/openreports.io/"]);
    let running = start(&cluster);
    let env = patches(&cluster, ENV_STATUS, 1).await.remove(0);
    let want = file_mode_docs(|r| !is_cache_report(r));
    assert_eq!(
        env["status"]["score"],
        json!(want["eu.acme.prod"].score.unwrap())
    );
    // Let the back-off retry the missing kinds a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for kind in ["Report", "ClusterReport"] {
        let line = format!(
            "openreports.io/v1alpha1 {kind}: not served by the API server (404; is its CRD installed?)"
        );
        assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    }
    let retries = cluster
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|s| s.path == "/apis/openreports.io/v1alpha1/reports")
        .count();
    assert!(retries >= 2, "the missing kind is retried ({retries})");
    assert_eq!(cluster.status_patches(ENV_STATUS).len(), 1);
    running.stop().await;
}

/// The pure status derivation: a resource whose status already says what the document says
/// needs no patch; without a document the compliance fields and condition are removed.
#[test]
fn status_patch_is_none_when_nothing_changes_and_clears_without_a_document() {
    let docs = file_mode_docs(|_| true);
    let doc = &docs["eu.acme.prod"];
    let patch = shell::status_patch(&Value::Null, Some(doc), 1).unwrap();
    let mut status = Value::Null;
    merge(&mut status, &patch);
    assert_eq!(shell::status_patch(&status, Some(doc), 1), None);
    // A new generation: the condition's observedGeneration follows.
    assert!(shell::status_patch(&status, Some(doc), 2).is_some());
    let clear = shell::status_patch(&status, None, 1).unwrap();
    assert_eq!(clear["score"], Value::Null);
    assert_eq!(clear["conditions"], json!([]));
    merge(&mut status, &clear);
    assert_eq!(shell::status_patch(&status, None, 1), None);
}
