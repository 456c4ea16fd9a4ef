//! Tenancy reconcile latency and memory at scale (`cargo xtask bench controllers`).
//!
//! A world of `--organizations` Organizations, each with one Environment of `--namespaces`
//! namespaces, whose generated objects are all present in the reflector stores (as after a
//! resync). Then `--samples` new Organizations are created one at a time; each is reconciled by
//! the real kube shell (desired objects from the stores, plan, server-side apply of every object,
//! status patch, Event) against kube's tower-test mock API, which answers every request at once.
//! Latency = Organization created (in the stores) → every generated object applied and the status
//! written. The pure core (desired + plan) is timed separately. RSS is read at the end with
//! everything in memory. Prints one JSON line.

#![allow(
    clippy::many_single_char_names,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "a benchmark driver: short names for stores and timers, percentile index arithmetic"
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use catalyst_controllers::{
    crd::{
        AccessTiers, DeletionPolicy, Environment, EnvironmentNamespace, EnvironmentSpec,
        Organization, OrganizationSpec,
    },
    metrics::Metrics,
    object::{Generated, plan},
    tenancy::{
        TenancyConfig, World, desired,
        kube::{Context, FINALIZER, compact, generated_kinds, reconcile},
    },
};
use http::{Request, Response};
use kube::{
    Client, ResourceExt,
    api::DynamicObject,
    client::Body,
    runtime::{events::Reporter, reflector::store::Writer, watcher},
};
use serde_json::{Value, json};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn org(name: &str) -> Organization {
    let mut o = Organization::new(
        name,
        OrganizationSpec {
            display_name: None,
            sovereign: "eu".into(),
            access: AccessTiers {
                developer: vec![format!("{name}-devs")],
                viewer: vec![format!("{name}-audit")],
                ..Default::default()
            },
            grants: vec![],
        },
    );
    o.metadata.uid = Some(format!("uid-{name}"));
    o.metadata.generation = Some(1);
    o.metadata.finalizers = Some(vec![FINALIZER.into()]);
    o
}

fn env(org: &str, namespaces: usize) -> Environment {
    let mut e = Environment::new(
        &format!("{org}-prod"),
        EnvironmentSpec {
            organization: org.into(),
            name: "prod".into(),
            region: None,
            policy: None,
            namespaces: (0..namespaces)
                .map(|i| EnvironmentNamespace {
                    name: format!("{org}-ns{i}"),
                    application: Some(format!("app{i}")),
                    labels: std::collections::BTreeMap::default(),
                })
                .collect(),
            deletion_policy: DeletionPolicy::Retain,
        },
    );
    e.metadata.uid = Some(format!("uid-{org}-prod"));
    e
}

fn mock() -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if path.starts_with("/apis/orgs.openova.io/") {
                let name = path.split('/').nth(5).unwrap_or("x").to_owned();
                let mut o = serde_json::to_value(org(&name)).unwrap();
                o["status"] = body["status"].clone();
                body = o;
            }
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(svc, "default")
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_orgs = arg("--organizations", 1000);
    let n_ns = arg("--namespaces", 3);
    let samples = arg("--samples", 200);
    let cfg = TenancyConfig::default();
    let mut ow = Writer::<Organization>::default();
    let mut ew = Writer::<Environment>::default();
    let mut writers: Vec<(kube::api::ApiResource, Writer<DynamicObject>)> = generated_kinds()
        .into_iter()
        .map(|ar| (ar.clone(), Writer::new(ar)))
        .collect();
    let mut live_objects = 0usize;
    {
        // The bench's own copies are dropped once the stores hold the world: the controller
        // process holds only its stores.
        let orgs: Vec<Organization> = (0..n_orgs).map(|i| org(&format!("org{i:04}"))).collect();
        let envs: Vec<Environment> = orgs.iter().map(|o| env(&o.name_any(), n_ns)).collect();
        for o in &orgs {
            ow.apply_watcher_event(&watcher::Event::Apply(o.clone()));
        }
        for e in &envs {
            ew.apply_watcher_event(&watcher::Event::Apply(e.clone()));
        }
        // Every existing Organization's objects are live (and in the stores), as after a resync.
        let world = World::new(&orgs, &envs);
        for o in &orgs {
            for g in desired(o, &world, &cfg) {
                let w = &mut writers
                    .iter_mut()
                    .find(|(ar, _)| ar.kind == g.key.kind)
                    .unwrap()
                    .1;
                let mut o: DynamicObject = serde_json::from_value(g.manifest()).unwrap();
                compact(&mut o);
                w.apply_watcher_event(&watcher::Event::Apply(o));
                live_objects += 1;
            }
        }
    }
    let rss_loaded = status_kib("VmRSS:") / 1024.0;
    let observed = writers
        .iter()
        .map(|(ar, w)| (ar.clone(), w.as_reader()))
        .collect();
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        mock(),
        cfg.clone(),
        "catalyst-controllers".into(),
        ow.as_reader(),
        ew.as_reader(),
        observed,
        metrics,
        Reporter {
            controller: "catalyst-controllers".into(),
            instance: Some("bench".into()),
        },
        Duration::from_mins(5),
    ));
    let mut end_to_end = Vec::new();
    let mut core = Vec::new();
    let mut per_org = 0;
    for i in 0..samples {
        let o = org(&format!("new{i:04}"));
        let e = env(&o.name_any(), n_ns);
        let created = Instant::now();
        ew.apply_watcher_event(&watcher::Event::Apply(e.clone()));
        ow.apply_watcher_event(&watcher::Event::Apply(o.clone()));
        reconcile(Arc::new(o.clone()), ctx.clone())
            .await
            .expect("reconcile");
        end_to_end.push(created.elapsed().as_secs_f64() * 1000.0);
        // The pure core alone, over the same world.
        let t = Instant::now();
        let os = ctx.orgs.state();
        let es = ctx.envs.state();
        let w = World::new(os.iter().map(AsRef::as_ref), es.iter().map(AsRef::as_ref));
        let want: Vec<Generated> = desired(&o, &w, &cfg);
        let p = plan(&want, &[]);
        core.push(t.elapsed().as_secs_f64() * 1000.0);
        per_org = p.create.len();
    }
    let rss = status_kib("VmRSS:") / 1024.0;
    let hwm = status_kib("VmHWM:") / 1024.0;
    let out = json!({
        "organizations": n_orgs,
        "namespaces_per_organization": n_ns,
        "live_objects": live_objects,
        "objects_per_organization": per_org,
        "samples": samples,
        "apply_p50_ms": percentile(&mut end_to_end.clone(), 0.5),
        "apply_p99_ms": percentile(&mut end_to_end, 0.99),
        "core_p50_ms": percentile(&mut core.clone(), 0.5),
        "core_p99_ms": percentile(&mut core, 0.99),
        "rss_loaded_mib": (rss_loaded * 10.0).round() / 10.0,
        "rss_mib": (rss * 10.0).round() / 10.0,
        "hwm_mib": (hwm * 10.0).round() / 10.0,
    });
    println!("{out}");
}
