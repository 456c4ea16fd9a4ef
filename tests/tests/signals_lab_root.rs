//! Needs root: the real agent on the netns lab publishes compliance signals to a real
//! `nats-server` (in the node namespace). A policy added and removed flips
//! `ingress-default-deny` pass ↔ fail within a second of the maps being updated; blocked traffic
//! makes `policy-drops` fail; nats-server killed and restarted mid-run: signals are dropped and
//! counted meanwhile, and resume.
//!
//! Needs root, the eBPF object and nats-server ([`catalyst_tests::require`]).

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use catalyst_tests::{
    agent::{metric_value, scrape_metrics},
    lab::pod,
    nats::{NatsServer, Received, Subscriber},
    require::{Need, require},
    scenario::Scenario,
};
use serde_json::Value;

/// Port of nats-server inside the node namespace (private to the lab).
const NATS_PORT: u16 = 14222;
const METRICS: &str = "127.0.0.1:19966";

const WEB_INGRESS: &str = r"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ingress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

fn json(m: &Received) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

fn is(m: &Received, pod: &str, check: &str, result: &str) -> bool {
    let s = json(m);
    s["subject"]["pod"] == pod && s["check"] == check && s["result"] == result
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, checked step by step")]
fn signals_follow_policy_changes_and_survive_a_nats_outage_needs_root() -> anyhow::Result<()> {
    if !require(
        "signals_follow_policy_changes_and_survive_a_nats_outage_needs_root",
        &[Need::Root, Need::Ebpf, Need::NatsServer],
    ) {
        return Ok(());
    }
    let extra = format!(
        "nats: {{url: \"nats://127.0.0.1:{NATS_PORT}\", cluster: lab}}\nsignals: {{interval_ms: 1000, heartbeat_ms: 2000}}\nmetrics: {{listen_address: \"{METRICS}\"}}\nobserver: {{listen_address: null, unix_socket: null}}\n"
    );
    // The agent connects in the background and retries until the server is up.
    let mut s = Scenario::start_with("signals", &[], false, &extra)?;
    let store = s.dir.join("nats-store");
    let mut server = NatsServer::start(NATS_PORT, &store)?;
    let sub = Subscriber::connect(NATS_PORT, "catalyst.signals.>")?;

    // No policy: web's ingress is open.
    let m = sub.wait_for(
        "web ingress-default-deny fail",
        0,
        Duration::from_secs(20),
        |m| is(m, "web", "ingress-default-deny", "fail"),
    )?;
    // The lab's endpoints carry only `app`: the subject says so and labels-complete fails.
    ensure!(
        m.subject == "catalyst.signals._._._",
        "subject {}",
        m.subject
    );
    let s0 = json(&m);
    ensure!(
        s0["schema"] == "catalyst.signal/v1" && s0["node"] == "lab-node" && s0["cluster"] == "lab",
        "{s0}"
    );
    sub.wait_for("web labels-complete fail", 0, Duration::from_secs(5), |m| {
        is(m, "web", "labels-complete", "fail")
            && json(m)["evidence"]["missing_labels"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
    })?;

    // A policy selecting web with an ingress section: default deny in force.
    let from = sub.messages().len();
    let written = Instant::now();
    s.set_policy("web.yaml", WEB_INGRESS)?;
    let in_sync = Instant::now();
    let m = sub.wait_for(
        "web ingress-default-deny pass",
        from,
        Duration::from_secs(5),
        |m| is(m, "web", "ingress-default-deny", "pass"),
    )?;
    let sig = json(&m);
    ensure!(sig["trigger"] == "change", "{sig}");
    ensure!(
        sig["evidence"]["policies"][0]["name"] == "web-ingress",
        "{sig}"
    );
    let lag = m.at.saturating_duration_since(in_sync);
    eprintln!(
        "policy added: signal {:?} after the file was written (watch interval 100 ms)",
        m.at - written
    );
    ensure!(
        lag < Duration::from_secs(1),
        "signal came {lag:?} after the maps were updated"
    );

    // Blocked traffic: other -> web:80 hits default deny; the next window reports the drops.
    let web = pod("web");
    ensure!(
        !s.tcp("other", web.ipv4, 80),
        "other -> web:80 should be blocked"
    );
    ensure!(
        s.tcp("client", web.ipv4, 80),
        "client -> web:80 should pass"
    );
    let m = sub.wait_for("web policy-drops fail", from, Duration::from_secs(5), |m| {
        is(m, "web", "policy-drops", "fail")
    })?;
    let ev = &json(&m)["evidence"];
    ensure!(ev["ingress_drops"].as_u64() >= Some(1), "{ev}");
    sub.wait_for(
        "web flows-observed pass",
        from,
        Duration::from_secs(5),
        |m| is(m, "web", "flows-observed", "pass"),
    )?;

    // Removed again: fail, promptly.
    let from = sub.messages().len();
    let written = Instant::now();
    s.remove_policy("web.yaml")?;
    let in_sync = Instant::now();
    let m = sub.wait_for(
        "web ingress-default-deny fail again",
        from,
        Duration::from_secs(5),
        |m| is(m, "web", "ingress-default-deny", "fail") && json(m)["trigger"] == "change",
    )?;
    let lag = m.at.saturating_duration_since(in_sync);
    eprintln!(
        "policy removed: signal {:?} after the file was removed (watch interval 100 ms)",
        m.at - written
    );
    ensure!(
        lag < Duration::from_secs(1),
        "signal came {lag:?} after the maps were updated"
    );

    // Outage: heartbeats (every 2 s) cannot be published; they are counted as dropped.
    let published = metric_value(
        &scrape_metrics(METRICS)?,
        "catalyst_signals_published_total",
    );
    ensure!(published >= 7.0, "published {published}");
    drop(sub);
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let dropped = loop {
        let text = scrape_metrics(METRICS)?;
        let d: f64 = text
            .lines()
            .filter(|l| l.starts_with("catalyst_signals_dropped_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if d > 0.0 {
            break d;
        }
        ensure!(
            Instant::now() < deadline,
            "no dropped signal counted during the outage:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("during the outage: {dropped} signals dropped and counted");
    // The agent kept enforcing and observing meanwhile.
    ensure!(
        !s.tcp("other", pod("db").ipv4, 5432) || s.tcp("client", web.ipv4, 80),
        "datapath stalled"
    );

    server.restart()?;
    let sub = Subscriber::connect(NATS_PORT, "catalyst.signals.>")?;
    sub.wait_for(
        "a signal after the restart",
        0,
        Duration::from_secs(30),
        |m| json(m)["subject"]["pod"] == "web",
    )
    .context("signals did not resume after nats-server restarted")?;
    let after = metric_value(
        &scrape_metrics(METRICS)?,
        "catalyst_signals_published_total",
    );
    ensure!(after > published, "published {published} -> {after}");
    ensure!(
        s.agent()
            .log_lines()
            .iter()
            .any(|l| l.contains("NATS connection event")),
        "reconnects are logged"
    );
    drop(server);
    Ok(())
}
