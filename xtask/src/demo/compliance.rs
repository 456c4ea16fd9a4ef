//! The demo's compliance phase (standalone mode: NATS + files, no Kubernetes): nats-server and
//! the aggregator (`catalyst-controllers`, compliance on) in the lab's node namespace, the agent
//! publishing its signals there. Adding web's ingress policy raises web's score; blocked traffic
//! to web lowers it again (`policy-drops`). The score is read from the aggregator's API, as the
//! dashboard reads it.

use std::{
    io::{Read as _, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use catalyst_tests::{
    agent::{AgentProcess, agent_bin},
    lab::{in_netns, node_ns, pod},
    nats::NatsServer,
    probe::tcp_echo,
};
use serde_json::Value;

/// Ports on the node namespace's loopback (private to the lab).
const NATS_PORT: u16 = 14322;
const API: &str = "127.0.0.1:19968";
const METRICS: &str = "127.0.0.1:19967";
/// web's application in the agent's example configuration; no Organization resource names
/// Sovereign, so it is `default`.
const KEY: &str = "default.acme.prod.shop-web";

/// Runs the phase; returns the number of steps whose score did not move as expected.
pub fn demo(agent_config: &Path, pin: &Path) -> anyhow::Result<usize> {
    let work =
        std::env::temp_dir().join(format!("catalyst-demo-compliance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work, agent_config, pin);
    if result.is_err() {
        let log = std::fs::read_to_string(work.join("controllers.log")).unwrap_or_default();
        for line in log
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("  controllers: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The aggregator as a child in the node namespace (nsenter execs it: the PID is the
/// aggregator's); stopped by PID on drop.
struct Aggregator(Child);

impl Drop for Aggregator {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from the aggregator's API inside the node namespace: (status, body).
fn get(path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_owned();
    in_netns(node_ns(), move || -> anyhow::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(API)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((code, body))
    })?
}

/// web's score document, once published.
fn score_doc() -> Option<Value> {
    match get(&format!("/api/scores/{KEY}")) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn result_of(doc: &Value, check: &str) -> String {
    doc["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == check)
        .and_then(|c| c["result"].as_str())
        .unwrap_or("none")
        .to_owned()
}

/// Waits up to `within` for web's document to satisfy `want`; prints it either way.
fn wait_for(step: &str, within: Duration, want: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(doc) = score_doc() {
            if want(&doc) {
                print_doc("ok ", step, &doc);
                return Some(doc);
            }
            last = Some(doc);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match &last {
        Some(doc) => print_doc("BAD", step, doc),
        None => println!("  [BAD] {step:<48} no score for {KEY} within {within:?}"),
    }
    None
}

fn print_doc(mark: &str, step: &str, doc: &Value) {
    println!(
        "  [{mark}] {step:<48} {KEY} score {} (ingress-default-deny {}, policy-drops {})",
        doc["score"],
        result_of(doc, "ingress-default-deny"),
        result_of(doc, "policy-drops"),
    );
}

fn run_in(work: &Path, agent_config: &Path, pin: &Path) -> anyhow::Result<usize> {
    let examples = agent_config
        .parent()
        .context("agent config has no directory")?;
    // The example policies without web's ingress policy: web starts without default deny.
    let policies = work.join("policies");
    std::fs::create_dir_all(&policies)?;
    for p in ["client.yaml", "db.yaml"] {
        std::fs::copy(examples.join("policies").join(p), policies.join(p))?;
    }
    let mut cfg: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(agent_config)?)?;
    cfg["policy_paths"] =
        serde_norway::Value::Sequence(vec![policies.display().to_string().into()]);
    cfg["flow_log"] = work.join("flows.jsonl").display().to_string().into();
    cfg["nats"] = serde_norway::from_str(&format!(
        "{{url: \"nats://127.0.0.1:{NATS_PORT}\", cluster: lab}}"
    ))?;
    cfg["signals"] =
        serde_norway::from_str("{enabled: true, interval_ms: 1000, heartbeat_ms: 2000}")?;
    let agent_cfg = work.join("agent.yaml");
    std::fs::write(&agent_cfg, serde_norway::to_string(&cfg)?)?;

    let resources = work.join("resources");
    std::fs::create_dir_all(&resources)?;
    let controllers_cfg = work.join("controllers.yaml");
    std::fs::write(
        &controllers_cfg,
        format!(
            "mode: standalone\nmetrics: {{listen_address: \"{METRICS}\"}}\n\
             standalone: {{input: {}, output: {}}}\n\
             tenancy: {{enabled: false}}\n\
             compliance:\n  enabled: true\n  listen_address: \"{API}\"\n  publish_interval_ms: 100\n  \
             nats: {{url: \"nats://127.0.0.1:{NATS_PORT}\", replay_s: 60}}\n",
            resources.display(),
            work.join("out").display()
        ),
    )?;

    println!(
        "== compliance (standalone: NATS + files): nats-server and catalyst-controllers in the node namespace, the agent's signals → {KEY}"
    );
    let _nats = NatsServer::start(NATS_PORT, &work.join("nats-store"))?;
    let bin = agent_bin().with_file_name("catalyst-controllers");
    let log = std::fs::File::create(work.join("controllers.log"))?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node_ns()))
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&controllers_cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let _aggregator = Aggregator(child);
    let mut agent = AgentProcess::start(&agent_cfg, pin)?;

    let mut failures = 0;
    let Some(before) = wait_for(
        "web without an ingress policy",
        Duration::from_secs(30),
        |d| {
            result_of(d, "ingress-default-deny") == "fail" && result_of(d, "policy-drops") == "pass"
        },
    ) else {
        agent.stop()?;
        return Ok(1);
    };
    let s0 = before["score"].as_f64().unwrap_or(0.0);

    std::fs::copy(
        examples.join("policies/web.yaml"),
        policies.join("web.yaml"),
    )?;
    let after_policy = wait_for(
        "+ policy web-ingress (default deny for web)",
        Duration::from_secs(10),
        |d| d["score"].as_f64().is_some_and(|s| s > s0),
    );
    let s1 = after_policy
        .as_ref()
        .and_then(|d| d["score"].as_f64())
        .unwrap_or(s0);
    if after_policy.is_none() {
        failures += 1;
    }

    // Traffic web's policy does not admit: dropped by default deny, `policy-drops` fails.
    let web = pod("web");
    let blocked = !tcp_echo(
        &pod("other").netns(),
        web.ipv4,
        22,
        Duration::from_millis(700),
    )?;
    if !blocked {
        println!("  [BAD] other -> web:22 connected; web's ingress policy should drop it");
        failures += 1;
    }
    if wait_for(
        "other -> web:22 blocked (133)",
        Duration::from_secs(10),
        |d| d["score"].as_f64().is_some_and(|s| s < s1),
    )
    .is_none()
    {
        failures += 1;
    }
    let status = work.join("out/status/environment-acme-prod.compliance.yaml");
    if let Ok(text) = std::fs::read_to_string(&status) {
        let v: serde_norway::Value = serde_norway::from_str(&text)?;
        println!(
            "  environment acme/prod: score {}, gate {}",
            serde_json::to_string(&v["status"]["score"]).unwrap_or_default(),
            v["status"]["gate"]["state"].as_str().unwrap_or("?"),
        );
    }
    println!(
        "  (the aggregator also wrote every change to NATS KV `policy-rollup` and the `CATALYST_SCORES` stream; docs/compliance.md)"
    );
    agent.stop()?;
    Ok(failures)
}
