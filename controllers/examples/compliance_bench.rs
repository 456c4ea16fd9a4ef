//! `cargo xtask bench compliance`: ingest throughput and RSS at 10,000 workloads × 20 checks,
//! and signal → new score in NATS KV latency with a real `nats-server` (PATH). Prints one JSON
//! line of figures.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "benchmark figures: counts far below 2^52"
)]

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use catalyst_controllers::{
    compliance::{self, Aggregator, ComplianceConfig, NatsSettings, Published, Tenants},
    metrics::Metrics,
};
use futures_util::StreamExt as _;

const WORKLOADS: usize = 10_000;
const CHECKS: usize = 20;
const APPS: usize = 1_000;
const SAMPLES: usize = 200;
/// Applications that appear for the first time after the replay (one signal each).
const NEW_APPS: usize = 50;

fn check(i: usize) -> &'static str {
    compliance::CATALYST_DEFAULTS[i % compliance::CATALYST_DEFAULTS.len()].0
}

fn payload(buf: &mut String, w: usize, c: usize, pass: bool) {
    payload_in(buf, w, w % APPS, c, pass);
}

/// A signal of workload `w` in application `app` (`app{app}` of organization `org{app % 20}`).
fn payload_in(buf: &mut String, w: usize, app: usize, c: usize, pass: bool) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"schema":"catalyst.signal/v1","check":"{}","result":"{}","subject":{{"organization":"org{}","environment":"prod","application":"app{app}","namespace":"ns{app}","pod":"pod{w}","interface":"cat{w}","endpoint_id":{w},"identity":{}}},"evidence":{{"reason":"x","enforced":{pass}}},"observed_at":"2026-12-04T10:00:00Z","node":"n","cluster":"c","policy_revision":1,"trigger":"start"}}"#,
        check(c),
        if pass { "pass" } else { "fail" },
        app % 20,
        256 + w
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    // 1. Throughput and memory, in process.
    let rss_start = rss_kib();
    let t = Tenants::default();
    let mut buf = String::with_capacity(512);
    let started = Instant::now();
    let mut n = 0u64;
    for w in 0..WORKLOADS {
        for c in 0..CHECKS {
            payload(&mut buf, w, c, !(w + c).is_multiple_of(7));
            n += buf.len() as u64;
        }
    }
    let gen_s = started.elapsed().as_secs_f64();
    let rows = (WORKLOADS * CHECKS) as f64;
    let mut agg = Aggregator::new(ComplianceConfig::default());
    let started = Instant::now();
    for w in 0..WORKLOADS {
        for c in 0..CHECKS {
            payload(&mut buf, w, c, !(w + c).is_multiple_of(7));
            let row = compliance::inputs::signal_row("s", buf.as_bytes(), &t, "default")?;
            agg.ingest(row, 0);
        }
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let publication = agg.publication();
    let mut published = Published::default();
    let changes = published.diff(&publication.entries);
    let score_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    // One row changes: re-score one application + the roll-ups.
    payload(&mut buf, 42, 3, false);
    let started = Instant::now();
    agg.ingest(
        compliance::inputs::signal_row("s", buf.as_bytes(), &t, "default")?,
        1,
    );
    let changed = published.diff(&agg.publication().entries).len();
    let rescore_one_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_after = rss_kib();
    eprintln!(
        "bench: {rows} rows ingested in {ingest_s:.2} s; {} documents",
        changes.len()
    );
    drop(agg);

    // 2. Latency through a real nats-server and the real aggregator shell.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let store = std::env::temp_dir().join(format!("compliance-bench-{}", std::process::id()));
    let mut nats = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(latency(&url));
    let _ = nats.kill();
    let _ = nats.wait();
    let _ = std::fs::remove_dir_all(&store);
    let Latency {
        mut lat,
        mut floor,
        mut first,
        preload_s,
        ready_s,
    } = result?;
    println!(
        "{}",
        serde_json::json!({
            "rows": rows,
            "payload_bytes": n,
            "generate_rows_per_s": (rows / gen_s).round(),
            "ingest_rows_per_s": (rows / ingest_s).round(),
            "score_all_ms": (score_all_ms * 10.0).round() / 10.0,
            "documents": changes.len(),
            "rescore_one_ms": (rescore_one_ms * 100.0).round() / 100.0,
            "rescore_one_changed": changed,
            "rss_start_mib": rss_start / 1024,
            "rss_mib": rss_after / 1024,
            "nats_preload_s": (preload_s * 10.0).round() / 10.0,
            "replay_ready_s": (ready_s * 10.0).round() / 10.0,
            "new_app_p50_ms": (pct(&mut first, 0.5) * 10.0).round() / 10.0,
            "new_app_max_ms": (pct(&mut first, 1.0) * 10.0).round() / 10.0,
            "new_apps": NEW_APPS,
            "latency_p50_ms": (pct(&mut lat, 0.5) * 10.0).round() / 10.0,
            "latency_p99_ms": (pct(&mut lat, 0.99) * 10.0).round() / 10.0,
            "floor_p50_ms": (pct(&mut floor, 0.5) * 100.0).round() / 100.0,
            "floor_p99_ms": (pct(&mut floor, 0.99) * 100.0).round() / 100.0,
            "samples": SAMPLES,
        })
    );
    Ok(())
}

/// Figures of the run through NATS (milliseconds unless named `_s`).
struct Latency {
    /// Signal flipping a check → new application score seen in the KV.
    lat: Vec<f64>,
    /// KV put → seen by a watcher (no aggregator).
    floor: Vec<f64>,
    /// First signal of a new application → its score seen in the KV.
    first: Vec<f64>,
    preload_s: f64,
    /// Aggregator start → every replayed application scored and published (ready).
    ready_s: f64,
}

#[expect(
    clippy::too_many_lines,
    reason = "one benchmark scenario, read top to bottom"
)]
async fn latency(url: &str) -> anyhow::Result<Latency> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match async_nats::connect(url).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "CATALYST_SIGNALS".into(),
        subjects: vec!["catalyst.signals.>".into()],
        ..Default::default()
    })
    .await?;
    // The full population, as the agents' first heartbeat would publish it.
    let started = Instant::now();
    let mut buf = String::new();
    let mut acks = Vec::with_capacity(4096);
    for w in 0..WORKLOADS {
        for c in 0..CHECKS {
            payload(&mut buf, w, c, !(w + c).is_multiple_of(7));
            let subject = format!(
                "catalyst.signals.org{}.prod.app{}",
                (w % APPS) % 20,
                w % APPS
            );
            acks.push(js.publish(subject, buf.clone().into()).await?);
            if acks.len() == 4096 {
                for a in acks.drain(..) {
                    a.await?;
                }
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    let preload_s = started.elapsed().as_secs_f64();
    let cfg = ComplianceConfig {
        enabled: true,
        listen_address: None,
        nats: Some(serde_norway::from_str::<NatsSettings>(&format!(
            "url: \"{url}\""
        ))?),
        ..ComplianceConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let task = tokio::spawn(compliance::run(
        cfg,
        compliance::Files::default(),
        metrics.clone(),
        stop_rx,
    ));
    let deadline = Instant::now() + Duration::from_mins(2);
    while !metrics.is_ready() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "aggregator not ready within 120 s"
        );
        anyhow::ensure!(!task.is_finished(), "aggregator stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready_s = start.elapsed().as_secs_f64();
    let kv = js.get_key_value("policy-rollup").await?;
    let mut lat = Vec::with_capacity(SAMPLES);
    let mut floor = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let w = (i * 7919) % WORKLOADS;
        let app = w % APPS;
        let key = format!("default.org{}.prod.app{app}", app % 20);
        // Floor: the same KV round trip without the aggregator (a put seen by a watcher).
        let probe = format!("bench-probe-{i}");
        let mut pw = kv.watch(&probe).await?;
        let t0 = Instant::now();
        kv.put(&probe, "x".into()).await?;
        pw.next().await;
        floor.push(t0.elapsed().as_secs_f64() * 1000.0);
        kv.delete(&probe).await?;
        // Flip one check of a workload not touched before: the application score must change.
        let mut watch = kv.watch(&key).await?;
        let c = i % CHECKS;
        let pass = !(w + c).is_multiple_of(7);
        payload(&mut buf, w, c, !pass);
        let t0 = Instant::now();
        js.publish(
            format!("catalyst.signals.org{}.prod.app{app}", app % 20),
            buf.clone().into(),
        )
        .await?
        .await?;
        let wait = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
        anyhow::ensure!(wait.is_ok(), "no new score for {key} within 10 s");
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // Applications appearing for the first time: one signal → their own key in the KV.
    let mut first = Vec::with_capacity(NEW_APPS);
    for i in 0..NEW_APPS {
        let (w, app) = (WORKLOADS + i, APPS + i);
        let key = format!("default.org{}.prod.app{app}", app % 20);
        let mut watch = kv.watch(&key).await?;
        payload_in(&mut buf, w, app, i % CHECKS, true);
        let t0 = Instant::now();
        js.publish(
            format!("catalyst.signals.org{}.prod.app{app}", app % 20),
            buf.clone().into(),
        )
        .await?
        .await?;
        let wait = tokio::time::timeout(Duration::from_mins(1), watch.next()).await;
        anyhow::ensure!(wait.is_ok(), "new application {key} not scored within 60 s");
        first.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    task.abort();
    Ok(Latency {
        lat,
        floor,
        first,
        preload_s,
        ready_s,
    })
}
