//! A scripted Kubernetes API server: it answers list, watch and discovery requests from an
//! in-memory object store, so recorded scenarios (initial objects, then events) run through the
//! real kube-runtime watchers. Two front ends: kube's tower-test mock service ([`FakeApi::spawn`])
//! and plain HTTP on a listener ([`FakeApi::serve_http`], for a real agent process).
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a part"
)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tower_test::mock::Handle;

/// A reply: status and JSON (or JSON-lines) body.
type Reply = oneshot::Sender<(StatusCode, Vec<u8>)>;

/// Collections the agent watches (all-namespace paths).
pub const PODS: &str = "/api/v1/pods";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const NODES: &str = "/api/v1/nodes";
pub const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
pub const CNPS: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";
pub const CCNPS: &str = "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies";
pub const CATALYST_NPS: &str = "/apis/policy.catalyst.openova.io/v1/catalystnetworkpolicies";

struct Event {
    rv: u64,
    collection: String,
    kind: &'static str,
    object: Value,
}

struct PendingWatch {
    collection: String,
    since: u64,
    selector: Option<String>,
    send: Reply,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    events: Vec<Event>,
    pending: Vec<PendingWatch>,
    /// groupVersion → (plural, kind, namespaced) served by discovery.
    served: BTreeMap<String, Vec<(String, String, bool)>>,
    /// Requests seen (method, path and query), for assertions.
    log: Vec<String>,
}

/// Handle of the fake server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_owned(),
        m["name"].as_str().unwrap_or("").to_owned(),
    )
}

/// `spec.nodeName=x` / `spec.nodeName!=x`.
fn matches(selector: Option<&str>, obj: &Value) -> bool {
    let Some(sel) = selector else { return true };
    let node = obj["spec"]["nodeName"].as_str().unwrap_or("");
    if let Some(v) = sel.strip_prefix("spec.nodeName!=") {
        node != v
    } else if let Some(v) = sel.strip_prefix("spec.nodeName=") {
        node == v
    } else {
        true
    }
}

fn json_response(status: StatusCode, body: &Value) -> (StatusCode, Vec<u8>) {
    (status, serde_json::to_vec(body).unwrap())
}

fn not_found() -> (StatusCode, Vec<u8>) {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the server could not find the requested resource",
                "reason": "NotFound", "details": {}, "code": 404}),
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            // Enough percent-decoding for field selectors.
            v.replace("%21", "!")
                .replace("%3D", "=")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
    })
}

impl State {
    fn watch_body(&self, collection: &str, since: u64, selector: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        for e in self
            .events
            .iter()
            .filter(|e| e.collection == collection && e.rv > since)
        {
            if matches(selector, &e.object) {
                body.extend(
                    serde_json::to_vec(&json!({"type": e.kind, "object": e.object})).unwrap(),
                );
                body.push(b'\n');
            }
        }
        body
    }

    /// Answers the watches that have something to see; the watcher then watches again from
    /// the last resourceVersion it saw.
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for w in pending {
            let body = self.watch_body(&w.collection, w.since, w.selector.as_deref());
            if body.is_empty() {
                self.pending.push(w);
            } else {
                let _ = w.send.send((StatusCode::OK, body));
            }
        }
    }

    fn handle(&mut self, method: &http::Method, uri: &http::Uri, send: Reply) {
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or("").to_owned();
        self.log.push(format!("{method} {path}?{query}"));
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // Discovery of one group version: /apis/<group>/<version>.
        if segments.len() == 3 && segments[0] == "apis" {
            let gv = format!("{}/{}", segments[1], segments[2]);
            let response = match self.served.get(&gv) {
                Some(resources) => json_response(
                    StatusCode::OK,
                    &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": resources.iter().map(|(plural, kind, namespaced)| json!({
                            "name": plural, "singularName": "", "namespaced": namespaced,
                            "kind": kind, "verbs": ["get", "list", "watch"]})).collect::<Vec<_>>()}),
                ),
                None => not_found(),
            };
            let _ = send.send(response);
            return;
        }
        let Some(objects) = self.objects.get(&path) else {
            let _ = send.send(not_found());
            return;
        };
        let selector = query_param(&query, "fieldSelector");
        if query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1") {
            let since = query_param(&query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.pending.push(PendingWatch {
                collection: path,
                since,
                selector,
                send,
            });
            self.flush();
            return;
        }
        let items: Vec<&Value> = objects
            .values()
            .filter(|o| matches(selector.as_deref(), o))
            .collect();
        let _ = send.send(json_response(
            StatusCode::OK,
            &json!({"kind": "List", "apiVersion": "v1",
                    "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
        ));
    }
}

impl FakeApi {
    /// An empty cluster: the core collections exist, no CRDs are installed.
    pub fn new() -> Self {
        let mut state = State::default();
        for c in [PODS, NAMESPACES, NODES, NETWORK_POLICIES] {
            state.objects.insert(c.to_owned(), BTreeMap::new());
        }
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Answers one request (once it has something to say, for watches).
    pub async fn answer(&self, method: &http::Method, uri: &http::Uri) -> (StatusCode, Vec<u8>) {
        let (tx, rx) = oneshot::channel();
        self.state.lock().unwrap().handle(method, uri, tx);
        rx.await
            .unwrap_or((StatusCode::SERVICE_UNAVAILABLE, Vec::new()))
    }

    /// Serves the tower-test mock's requests until the client side is dropped.
    pub fn spawn(mut handle: Handle<Request<Body>, Response<Body>>) -> Self {
        let api = Self::new();
        let a = api.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let a = a.clone();
                tokio::spawn(async move {
                    let (status, body) = a.answer(req.method(), req.uri()).await;
                    send.send_response(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(body))
                            .unwrap(),
                    );
                });
            }
        });
        api
    }

    /// Serves plain HTTP on `listener` (a kubeconfig `server: http://…` reaches it).
    pub async fn serve_http(self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let api = self.clone();
            async move {
                let (status, body) = api.answer(req.method(), req.uri()).await;
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        });
        let _ = axum::serve(listener, app).await;
    }

    /// Installs a CRD: discovery serves it and its collection exists.
    pub fn install_crd(&self, collection: &str, kind: &str, namespaced: bool) {
        let mut s = self.state.lock().unwrap();
        let rest = collection.trim_start_matches("/apis/");
        let (gv, plural) = rest.rsplit_once('/').unwrap();
        s.served.entry(gv.to_owned()).or_default().push((
            plural.to_owned(),
            kind.to_owned(),
            namespaced,
        ));
        s.objects.entry(collection.to_owned()).or_default();
    }

    /// Creates or replaces an object (an ADDED or MODIFIED event).
    pub fn apply(&self, collection: &str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let objects = s
            .objects
            .get_mut(collection)
            .unwrap_or_else(|| panic!("collection {collection} not served"));
        let kind = if objects.insert(key, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.events.push(Event {
            rv,
            collection: collection.to_owned(),
            kind,
            object: obj,
        });
        s.flush();
    }

    /// Deletes an object (a DELETED event).
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let mut obj = s
            .objects
            .get_mut(collection)
            .and_then(|o| o.remove(&(namespace.to_owned(), name.to_owned())))
            .unwrap_or_else(|| panic!("no {namespace}/{name} in {collection}"));
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.events.push(Event {
            rv,
            collection: collection.to_owned(),
            kind: "DELETED",
            object: obj,
        });
        s.flush();
    }

    /// Requests served so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}
