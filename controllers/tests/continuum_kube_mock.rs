//! Continuum's Kubernetes side against kube's tower-test mock of the API server: the
//! `CloudNativePG` switchover conversation (demote → wait for the demotion token → promote with
//! it), failover without a token, the `HTTPRoute` drain and restore, and status writes only on
//! change. No API server runs on these machines; the real-cluster steps are in `k8s_e2e.rs`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use catalyst_controllers::{
    continuum::kube::{Kube, WEIGHTS_ANNOTATION, cnpg_view},
    crd::ContinuumStatus,
};
use http::{Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

type Responder = Arc<dyn Fn(&Seen, usize) -> (u16, Value) + Send + Sync>;

/// A client whose requests are answered by `respond` (given the request and how many requests
/// came before it) and logged.
fn mock(respond: Responder) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let seen = Seen { method, path, body };
            let n = l.lock().unwrap().len();
            let (code, answer) = respond(&seen, n);
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

fn cluster(name: &str, primary: &str, ready: u64, token: Option<&str>) -> Value {
    let mut c = json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": "db", "resourceVersion": "7"},
        "spec": {"instances": 3, "replica": {"primary": primary, "source": "other"}},
        "status": {"readyInstances": ready, "instances": 3},
    });
    if let Some(t) = token {
        c["status"]["demotionToken"] = json!(t);
    }
    c
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "clusters.postgresql.cnpg.io \"x\" not found"})
}

#[tokio::test]
async fn controlled_switchover_demotes_waits_for_the_token_and_promotes_with_it() {
    // Demotion: PATCH pg-eu, then GETs; the token appears on the second GET.
    let (client, log) = mock(Arc::new(|s: &Seen, n| match (s.method.as_str(), n) {
        ("PATCH", _) | ("GET", 1) => (200, cluster("pg-eu", "pg-us", 3, None)),
        ("GET", _) => (200, cluster("pg-eu", "pg-us", 3, Some("tok-123"))),
        _ => (404, not_found()),
    }));
    let k = Kube::new(client);
    let token = k
        .cnpg_demote("db/pg-eu", "db/pg-us", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(token, "tok-123");
    {
        let seen = log.lock().unwrap();
        assert_eq!(seen[0].method, "PATCH");
        assert_eq!(
            seen[0].path,
            "/apis/postgresql.cnpg.io/v1/namespaces/db/clusters/pg-eu"
        );
        assert_eq!(
            seen[0].body,
            json!({"spec": {"replica": {"primary": "pg-us"}}})
        );
        assert!(seen[1..].iter().all(|s| s.method == "GET"));
        assert_eq!(seen.len(), 3, "polled until the token appeared: {seen:?}");
    }

    // Promotion with that token.
    let (client, log) = mock(Arc::new(|_: &Seen, _| {
        (200, cluster("pg-us", "pg-us", 3, None))
    }));
    Kube::new(client)
        .cnpg_promote("db/pg-us", Some(&token))
        .await
        .unwrap();
    let seen = log.lock().unwrap();
    assert_eq!(
        seen[0].path,
        "/apis/postgresql.cnpg.io/v1/namespaces/db/clusters/pg-us"
    );
    assert_eq!(
        seen[0].body,
        json!({"spec": {"replica": {"primary": "pg-us", "promotionToken": "tok-123"}}})
    );
}

#[tokio::test]
async fn demotion_without_a_token_times_out_and_failover_promotes_without_one() {
    let (client, _log) = mock(Arc::new(|s: &Seen, _| match s.method.as_str() {
        "PATCH" | "GET" => (200, cluster("pg-eu", "pg-us", 0, None)),
        _ => (404, not_found()),
    }));
    let err = Kube::new(client)
        .cnpg_demote("db/pg-eu", "db/pg-us", Duration::from_millis(600))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no status.demotionToken"),
        "{err:#}"
    );
    let (client, log) = mock(Arc::new(|_: &Seen, _| {
        (200, cluster("pg-us", "pg-us", 3, None))
    }));
    Kube::new(client)
        .cnpg_promote("db/pg-us", None)
        .await
        .unwrap();
    assert_eq!(
        log.lock().unwrap()[0].body,
        json!({"spec": {"replica": {"primary": "pg-us"}}})
    );
}

#[tokio::test]
async fn probe_reads_readiness_and_role_and_a_missing_cluster_is_down() {
    let (client, _) = mock(Arc::new(|s: &Seen, _| {
        if s.path.ends_with("/pg-us") {
            (200, cluster("pg-us", "pg-eu", 2, None))
        } else {
            (404, not_found())
        }
    }));
    let k = Kube::new(client);
    let v = k.cnpg_probe("db/pg-us").await;
    assert!(v.up);
    assert_eq!(v.standby, Some(true));
    let gone = k.cnpg_probe("db/pg-eu").await;
    assert!(!gone.up, "a Cluster that cannot be read is down");
    // The designated primary is not a standby; no ready instance is down.
    let p = cnpg_view(&cluster("pg-eu", "pg-eu", 0, None));
    assert_eq!((p.up, p.standby), (false, Some(false)));
}

fn route(weights: &[i64], kept: Option<&str>) -> Value {
    let mut r = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "web", "resourceVersion": "3"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": weights.iter().enumerate()
            .map(|(i, w)| json!({"name": format!("svc-{i}"), "port": 80, "weight": w})).collect::<Vec<_>>()}]},
    });
    if let Some(k) = kept {
        r["metadata"]["annotations"] = json!({WEIGHTS_ANNOTATION: k});
    }
    r
}

#[tokio::test]
async fn drain_steps_weights_to_zero_keeping_the_originals_and_restore_puts_them_back() {
    // The route as it evolves: each PATCH result is what the next GET returns.
    let current = Arc::new(Mutex::new(route(&[80, 20], None)));
    let c = current.clone();
    let (client, log) = mock(Arc::new(move |s: &Seen, _| match s.method.as_str() {
        "GET" => (200, c.lock().unwrap().clone()),
        "PATCH" => {
            let mut r = c.lock().unwrap();
            if let Some(rules) = s.body["spec"].get("rules") {
                r["spec"]["rules"] = rules.clone();
            }
            if let Some(a) = s.body["metadata"].get("annotations") {
                let v = &a[WEIGHTS_ANNOTATION];
                if v.is_null() {
                    r["metadata"].as_object_mut().unwrap().remove("annotations");
                } else {
                    r["metadata"]["annotations"] = json!({WEIGHTS_ANNOTATION: v});
                }
            }
            (200, r.clone())
        }
        _ => (404, not_found()),
    }));
    let k = Kube::new(client);
    k.drain(&["web/shop".into()], Duration::from_secs(2))
        .await
        .unwrap();
    let patches: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "PATCH")
        .map(|s| s.body.clone())
        .collect();
    let w = |p: &Value| -> Vec<i64> {
        p["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["weight"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(patches.len(), 2, "two steps over 2 s");
    assert_eq!(w(&patches[0]), vec![40, 10]);
    assert_eq!(w(&patches[1]), vec![0, 0]);
    assert_eq!(
        patches[0]["metadata"]["annotations"][WEIGHTS_ANNOTATION],
        json!("[[80,20]]"),
        "the originals are kept on the first step"
    );
    assert!(
        patches[1].get("metadata").is_none(),
        "and not overwritten by later steps"
    );
    k.restore(&["web/shop".into()]).await.unwrap();
    let r = current.lock().unwrap().clone();
    let back: Vec<i64> = r["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(back, vec![80, 20]);
    assert!(r["metadata"].get("annotations").is_none());
}

#[tokio::test]
async fn status_is_written_to_the_status_subresource_only_on_change() {
    let (client, log) = mock(Arc::new(|s: &Seen, _| {
        (
            200,
            json!({
                "apiVersion": "dr.openova.io/v1", "kind": "Continuum",
                "metadata": {"name": "orders", "namespace": "shop", "resourceVersion": "9"},
                "spec": {"application": "orders", "primary": "a",
                    "regions": [{"name": "a", "endpoints": ["192.0.2.1"]}, {"name": "b", "endpoints": ["192.0.2.2"]}],
                    "dns": {"zone": "example.org", "group": "orders", "record": "db.example.org"}},
                "status": s.body["status"].clone(),
            }),
        )
    }));
    let k = Kube::new(client);
    let mut st = ContinuumStatus {
        active_region: Some("a".into()),
        lease_holder: Some("ctrl-a".into()),
        epoch: 4,
        ..ContinuumStatus::default()
    };
    assert!(k.write_status("shop", "orders", &st).await.unwrap());
    assert!(!k.write_status("shop", "orders", &st).await.unwrap());
    st.epoch = 5;
    assert!(k.write_status("shop", "orders", &st).await.unwrap());
    let seen = log.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the unchanged status was not written: {seen:?}"
    );
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(
        seen[0].path,
        "/apis/dr.openova.io/v1/namespaces/shop/continuums/orders/status"
    );
    assert_eq!(seen[0].body["status"]["activeRegion"], json!("a"));
    assert_eq!(seen[1].body["status"]["epoch"], json!(5));
}
