//! Needs root: runs the real agent on the netns lab, drives traffic with `catalyst_tests::probe`
//! and checks that `catalyst-agent observe` (a gRPC client of the agent's Observer API) shows
//! the right verdict, drop reason, direction, `is_reply` and policy names, that `status` answers,
//! and that `/metrics` counts the drops.
//!
//! Needs root and the eBPF object ([`catalyst_tests::require`]).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use catalyst_tests::{
    agent::{AgentProcess, agent_bin, uninstall},
    lab::{self, pod},
    probe::{EchoServer, tcp_echo},
    require::{Need, require},
};
use serde_json::Value;

fn pin() -> PathBuf {
    lab::pin_path("observe-test")
}
const METRICS: &str = "127.0.0.1:19965";

fn write_config(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let example = std::fs::read_to_string(root.join("deploy/examples/agent/agent.yaml"))?;
    let policies = root.join("deploy/examples/agent/policies");
    let socket = dir.join("hubble.sock");
    let mut cfg = String::new();
    // The example's own observability sections are replaced by this test's.
    let mut skipping = false;
    for line in example.lines() {
        if !line.starts_with([' ', '#', '-']) && !line.is_empty() {
            skipping = ["observer:", "metrics:", "nats:"]
                .iter()
                .any(|k| line.starts_with(k));
        }
        if skipping {
            continue;
        }
        let line = match line {
            l if l.starts_with("pin_path:") => format!("pin_path: {}", pin().display()),
            l if l.starts_with("flow_log:") => "flow_log: none".to_owned(),
            l if l.trim() == "- policies" => format!("  - {}", policies.display()),
            l => l.to_owned(),
        };
        cfg.push_str(&line);
        cfg.push('\n');
    }
    writeln!(
        cfg,
        "observer:\n  listen_address: 127.0.0.1:14244\n  unix_socket: {}\n  ring_capacity: 4096\nmetrics:\n  listen_address: {METRICS}",
        socket.display()
    )?;
    let path = dir.join("agent.yaml");
    std::fs::write(&path, cfg)?;
    Ok((path, socket))
}

fn observe(socket: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent_bin())
        .arg("observe")
        .arg("--server")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "observe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn flows_json(socket: &Path, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut a = vec!["-o", "json", "--all"];
    a.extend_from_slice(args);
    observe(socket, &a)?
        .lines()
        .map(|l| Ok(serde_json::from_str::<Value>(l)?["flow"].clone()))
        .collect()
}

fn policy_names(f: &Value, field: &str) -> Vec<String> {
    f[field].as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    })
}

fn scrape_metrics() -> anyhow::Result<String> {
    catalyst_tests::agent::scrape_metrics(METRICS)
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, checked step by step")]
fn observe_shows_verdicts_drop_reasons_and_policies_needs_root() -> anyhow::Result<()> {
    if !require(
        "observe_shows_verdicts_drop_reasons_and_policies_needs_root",
        &[Need::Root, Need::Ebpf],
    ) {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("catalyst-observe-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (config, socket) = write_config(&dir)?;
    let _lock = lab::lock()?;
    lab::up()?;
    let _ = uninstall(&pin());
    let result = (|| -> anyhow::Result<()> {
        let mut agent = AgentProcess::start(&config, &pin())?;
        agent.wait_log("observer API listening", Duration::from_secs(10))?;
        let (client, web, db) = (pod("client"), pod("web"), pod("db"));
        let _w = EchoServer::start(&web.netns(), web.ipv4, &[80, 22])?;
        let _d = EchoServer::start(&db.netns(), db.ipv4, &[5432])?;
        let t = Duration::from_millis(700);
        ensure!(
            tcp_echo(&client.netns(), web.ipv4, 80, t)?,
            "client -> web:80 must connect"
        );
        ensure!(
            !tcp_echo(&client.netns(), web.ipv4, 22, t)?,
            "client -> web:22 must be dropped"
        );
        ensure!(
            !tcp_echo(&client.netns(), db.ipv4, 5432, t)?,
            "client -> db:5432 must be dropped"
        );
        std::thread::sleep(Duration::from_millis(500));

        // Allowed: the ingress policy verdict at web names web-ingress.
        let allowed = flows_json(
            &socket,
            &[
                "--to-pod",
                "shop/web",
                "--to-port",
                "80",
                "--type",
                "policy-verdict",
            ],
        )?;
        let f = allowed
            .iter()
            .find(|f| f["traffic_direction"] == "INGRESS")
            .with_context(|| format!("no ingress policy verdict for web:80 in {allowed:?}"))?;
        ensure!(f["verdict"] == "FORWARDED", "{f}");
        ensure!(f["is_reply"] == false, "{f}");
        ensure!(
            policy_names(f, "ingress_allowed_by") == ["web-ingress"],
            "{f}"
        );
        ensure!(
            f["source"]["pod_name"] == "client" && f["source"]["namespace"] == "shop",
            "{f}"
        );
        ensure!(f["Type"] == "L3_L4", "{f}");

        // Replies of the allowed connection are flagged.
        let replies = flows_json(&socket, &["--from-pod", "shop/web", "--reply"])?;
        ensure!(replies.iter().all(|f| f["is_reply"] == true), "{replies:?}");

        // Default deny at web's ingress: POLICY_DENIED, ingress.
        let denied = flows_json(&socket, &["--to-port", "22", "--verdict", "DROPPED"])?;
        let f = denied
            .first()
            .with_context(|| "no drop for web:22".to_owned())?;
        ensure!(f["drop_reason_desc"] == "POLICY_DENIED", "{f}");
        ensure!(f["traffic_direction"] == "INGRESS", "{f}");
        ensure!(f["is_reply"] == false, "{f}");

        // Explicit deny at client's egress: POLICY_DENY, egress, denied by client-egress.
        let deny = flows_json(
            &socket,
            &["--to-pod", "shop/db", "--drop-reason", "POLICY_DENY"],
        )?;
        let f = deny
            .first()
            .with_context(|| "no POLICY_DENY drop for db:5432".to_owned())?;
        ensure!(f["traffic_direction"] == "EGRESS", "{f}");
        ensure!(
            policy_names(f, "egress_denied_by") == ["client-egress"],
            "{f}"
        );

        // Denials are policy-verdict events too (type 5, DROPPED), as Hubble reports them.
        let verdicts = flows_json(
            &socket,
            &["--type", "policy-verdict", "--verdict", "DROPPED"],
        )?;
        ensure!(
            verdicts
                .iter()
                .any(|f| f["drop_reason_desc"] == "POLICY_DENY"
                    && f["traffic_direction"] == "EGRESS"
                    && policy_names(f, "egress_denied_by") == ["client-egress"]),
            "no DROPPED policy verdict for client -> db in {verdicts:?}"
        );
        ensure!(
            verdicts
                .iter()
                .any(|f| f["drop_reason_desc"] == "POLICY_DENIED"
                    && f["traffic_direction"] == "INGRESS"),
            "no DROPPED policy verdict for web:22 in {verdicts:?}"
        );

        eprintln!(
            "observe --last 30:\n{}",
            observe(&socket, &["--last", "30"])?
        );
        // Compact output reads like hubble observe.
        let compact = observe(&socket, &["--to-pod", "shop/db", "--last", "5"])?;
        ensure!(
            compact.contains("shop/client:") && compact.contains("-> shop/db:5432"),
            "{compact}"
        );
        ensure!(
            compact.contains("Policy denied by denylist DROPPED"),
            "{compact}"
        );

        let status = Command::new(agent_bin())
            .args(["status", "--server"])
            .arg(format!("unix://{}", socket.display()))
            .output()?;
        let text = String::from_utf8_lossy(&status.stdout);
        ensure!(
            status.status.success() && text.contains("Healthcheck") && text.contains(": Ok"),
            "{text}"
        );

        let metrics = scrape_metrics()?;
        ensure!(
            metrics.contains("hubble_drop_total{reason=\"POLICY_DENY\",protocol=\"TCP\"}"),
            "{metrics}"
        );
        ensure!(
            metrics.contains("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"}"),
            "{metrics}"
        );
        ensure!(
            metrics.contains("hubble_policy_verdicts_total{direction=\"ingress\""),
            "{metrics}"
        );
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("hubble_policy_verdicts_total{")
                    && l.contains("action=\"dropped\"")),
            "{metrics}"
        );
        ensure!(metrics.contains("catalyst_datapath_packets_total{direction=\"egress\",outcome=\"dropped\",reason=\"POLICY_DENY\"}"), "{metrics}");
        agent.stop()?;
        Ok(())
    })();
    let _ = uninstall(&pin());
    let down = lab::down();
    let _ = std::fs::remove_dir_all(&dir);
    result.and(down)
}
