//! Remote pods at scale: what an agent receives and holds to learn 100,000 pods of other nodes,
//! the API-watch way against the shared ipcache (NATS KV), in one run.
//!
//! (a) watch: every pod as a typical Deployment pod the API server sends (metadata with owner
//! reference and labels, one container with ports, resources, env, probes, the service-account
//! volume, status with conditions and container status), serialized as watch events
//! (`{"type":"ADDED","object":…}` lines); bytes counted; then decoded into `Pod`s, applied to a
//! kube-runtime reflector store, and turned into ipcache peers by the agent's model. Memory =
//! bytes allocated after minus before (a counting allocator), the wire text excluded.
//!
//! (b) shared: the same pods, as the agents of their nodes publish them (`model::shared_entries`,
//! one call per node, plus the node heartbeats), put into a real nats-server's KV bucket; then a
//! fresh agent's [`SharedIpcache`] reads the bucket. Bytes = what its NATS connection received;
//! memory = allocated after it caught up minus before (the connection's buffers included), plus
//! the peers built from it. Time = start until every peer is known.
//!
//! Needs `nats-server` ≥ 2.11 on PATH. Prints one JSON object. Used by `cargo xtask bench
//! ipcache`; alone: `cargo run --release -p catalyst-agent --example ipcache_bench [pods]`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use catalyst_agent::k8s::{
    model::{self, ClusterView, Model},
    netlink::StaticTable,
    shared::{IpcacheConfig, SharedIpcache, node_key},
};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::{reflector::store::Writer, watcher};
use serde_json::{Value, json};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's layout; the counter is
// only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's obligations are those of `System.alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as `System.realloc`.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const PODS_PER_NODE: usize = 100;
const NAMESPACES: usize = 50;

fn namespace(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": format!("ns{i}"), "resourceVersion": "1",
                        "labels": {"team": format!("team{}", i % 10),
                                   "kubernetes.io/metadata.name": format!("ns{i}")}}})
}

/// A typical pod of a Deployment.
fn pod(i: usize) -> Value {
    let ns = format!("ns{}", i % NAMESPACES);
    let app = format!("app{}", i % 500);
    let rs = format!("{app}-7d9c5b8f4");
    let name = format!("{rs}-{i:05x}");
    let node = format!("node-{:04}", i / PODS_PER_NODE);
    let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "generateName": format!("{rs}-"), "namespace": ns,
            "uid": format!("6f1c2a4e-{:04x}-4b7d-9e3a-{i:012x}", i % 65536),
            "resourceVersion": format!("{}", 1_000_000 + i),
            "creationTimestamp": "2026-11-30T08:15:00Z",
            "labels": {"app": app, "pod-template-hash": "7d9c5b8f4", "version": "v1",
                       "tier": format!("t{}", i % 3)},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T08:14:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": "0a7c4e2d-1111-4b7d-9e3a-000000000001",
                                 "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": node, "serviceAccountName": app, "serviceAccount": app,
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30,
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
            "securityContext": {},
            "containers": [{
                "name": "main", "image": format!("registry.example.com/{app}:1.4.2"),
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                                  "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                                   "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
            }],
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "192.168.0.10",
            "hostIPs": [{"ip": "192.168.0.10"}], "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": "2026-11-30T08:15:00Z",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-11-30T08:15:02Z"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-30T08:15:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-30T08:15:05Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-30T08:15:05Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-30T08:15:00Z"}],
            "containerStatuses": [{
                "name": "main", "ready": true, "started": true, "restartCount": 0,
                "image": format!("registry.example.com/{app}:1.4.2"),
                "imageID": format!("registry.example.com/{app}@sha256:9b2a4c6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1c"),
                "containerID": format!("containerd://{i:064x}"),
                "state": {"running": {"startedAt": "2026-11-30T08:15:03Z"}},
                "lastState": {}
            }]
        }
    })
}

fn mib(bytes: usize) -> f64 {
    let b = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
    (f64::from(b) / 1024.0 * 10.0).round() / 10.0
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// (a): wire bytes, memory held, time to decode + store + peers.
fn api_watch(pods: usize, namespaces: &[Arc<Namespace>]) -> anyhow::Result<Value> {
    let wire: Vec<Vec<u8>> = (0..pods)
        .map(|i| {
            let mut line =
                serde_json::to_vec(&json!({"type": "ADDED", "object": pod(i)})).expect("json");
            line.push(b'\n');
            line
        })
        .collect();
    let bytes: usize = wire.iter().map(Vec::len).sum();
    let before = live();
    let t = Instant::now();
    let mut writer: Writer<Pod> = Writer::new(());
    let store = writer.as_reader();
    writer.apply_watcher_event(&watcher::Event::Init);
    for line in &wire {
        let event: Value = serde_json::from_slice(line)?;
        let pod: Pod = serde_json::from_value(event["object"].clone())?;
        writer.apply_watcher_event(&watcher::Event::InitApply(pod));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let store_bytes = live().saturating_sub(before);
    let view = ClusterView {
        remote_pods: store.state(),
        namespaces: namespaces.to_vec(),
        ..ClusterView::default()
    };
    let mut model = Model::default();
    let inputs = model.build(&view, "bench-node", &StaticTable::default());
    let took = t.elapsed();
    if inputs.peers.len() != pods {
        bail!("watch: {} peers for {pods} pods", inputs.peers.len());
    }
    drop(view);
    let held = live().saturating_sub(before);
    let rebuild = Instant::now();
    let again = model.build(
        &ClusterView {
            remote_pods: store.state(),
            namespaces: namespaces.to_vec(),
            ..ClusterView::default()
        },
        "bench-node",
        &StaticTable::default(),
    );
    let rebuild = rebuild.elapsed();
    drop(again);
    let v = json!({
        "bytes": bytes, "mib": mib(bytes), "bytes_per_pod": bytes / pods,
        "store_mib": mib(store_bytes), "held_mib": mib(held),
        "learn_ms": ms(took), "rebuild_ms": ms(rebuild),
    });
    drop((inputs, model, store, writer));
    Ok(v)
}

struct Server {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_server() -> anyhow::Result<Server> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("catalyst-ipcache-bench-{port}"));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nats-server not found (`cargo xtask setup` installs it)")?;
    let server = Server { child, dir, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// (b): bytes received over NATS, memory held, time to learn every pod.
async fn shared(pods: usize, namespaces: &[Arc<Namespace>]) -> anyhow::Result<Value> {
    let server = nats_server()?;
    let url = format!("nats://127.0.0.1:{}", server.port);
    let cfg = IpcacheConfig::default();
    // The other nodes' agents publish (one connection stands for all of them).
    let writer = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(writer.clone());
    let publisher = SharedIpcache::start(writer.clone(), &cfg, "publisher");
    tokio::time::timeout(Duration::from_secs(30), publisher.ready())
        .await
        .context("bucket not ready")?;
    let kv = js.get_key_value(&cfg.bucket).await?;
    let nodes = pods.div_ceil(PODS_PER_NODE);
    let mut entries = Vec::with_capacity(pods);
    let mut value_bytes = 0;
    for n in 0..nodes {
        let node = format!("node-{n:04}");
        let local: Vec<Arc<Pod>> = (n * PODS_PER_NODE..((n + 1) * PODS_PER_NODE).min(pods))
            .map(|i| serde_json::from_value(pod(i)).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let view = ClusterView {
            local_pods: local,
            namespaces: namespaces.to_vec(),
            ..ClusterView::default()
        };
        for (key, entry) in model::shared_entries(&view, &node) {
            let body = serde_json::to_vec(&entry)?;
            value_bytes += body.len();
            entries.push((key, body));
        }
        entries.push((node_key(&node), b"0".to_vec()));
    }
    if entries.len() != pods + nodes {
        bail!("{} entries for {pods} pods", entries.len());
    }
    let put = Instant::now();
    let mut puts = futures_util::stream::iter(entries.into_iter().map(|(k, v)| {
        let kv = kv.clone();
        async move { kv.put(k, v.into()).await }
    }))
    .buffer_unordered(256);
    while let Some(r) = puts.next().await {
        r?;
    }
    let put_ms = ms(put.elapsed());
    drop(puts);
    drop(publisher);
    // Its aborted tasks (and the bucket state they held) are freed on the runtime: let them go
    // before the baseline is taken.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The learning agent.
    let before = live();
    let client = async_nats::connect(&url).await?;
    let t = Instant::now();
    let agent = SharedIpcache::start(client.clone(), &cfg, "bench-node");
    tokio::time::timeout(Duration::from_mins(2), agent.ready())
        .await
        .context("the bucket was not read within 120 s")?;
    let peers = agent.peers();
    let took = t.elapsed();
    if peers.len() != pods {
        bail!("shared: {} peers for {pods} pods", peers.len());
    }
    let received = client
        .statistics()
        .in_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let held = live().saturating_sub(before);
    let rebuild = Instant::now();
    let again = agent.peers();
    let rebuild = rebuild.elapsed();
    drop(again);
    drop(peers);
    let state = live().saturating_sub(before);
    drop(agent);
    drop(server);
    let received = usize::try_from(received).unwrap_or(usize::MAX);
    Ok(json!({
        "bytes": received, "mib": mib(received), "bytes_per_pod": received / pods,
        "value_bytes_per_pod": value_bytes / pods,
        "state_mib": mib(state), "held_mib": mib(held),
        "learn_ms": ms(took), "rebuild_ms": ms(rebuild), "publish_ms": put_ms,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let pods: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .with_context(|| format!("argument 1: `{a}` is not a pod count"))?,
        None => 100_000,
    };
    let namespaces: Vec<Arc<Namespace>> = (0..NAMESPACES)
        .map(|i| serde_json::from_value(namespace(i)).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let watch = api_watch(pods, &namespaces)?;
    let shared = shared(pods, &namespaces).await?;
    println!(
        "{}",
        json!({"pods": pods, "nodes": pods.div_ceil(PODS_PER_NODE), "watch": watch, "shared": shared})
    );
    Ok(())
}
