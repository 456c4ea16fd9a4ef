//! Fault test (issue 16 item 7): the real agent is killed with SIGKILL while real traffic flows
//! through the netns lab. The pinned programs and maps keep enforcing while no agent runs —
//! what was denied stays denied, what was allowed stays allowed, an established connection
//! pinging every 2 ms loses no round trip across the kill and the restart — and after the
//! restart flows reach the flow log and the Observer API again.
//!
//! Bounded: about 10 s. Needs root and the eBPF object ([`catalyst_tests::require`]).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use catalyst_tests::{
    agent::agent_bin,
    lab::pod,
    probe::{Pinger, TcpSession},
    scenario::{PROBE_TIMEOUT, Scenario, root_or_skip},
};
use serde_json::Value;

const WEB_ALLOW_CLIENT_80: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";

/// Drops to port 22 in the agent's Observer ring (`catalyst-agent observe`, a gRPC client).
fn observed_drops_to_22(socket: &Path) -> anyhow::Result<usize> {
    let out = Command::new(agent_bin())
        .arg("observe")
        .arg("--server")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "-o",
            "json",
            "--all",
            "--to-port",
            "22",
            "--verdict",
            "DROPPED",
        ])
        .output()
        .context("running catalyst-agent observe")?;
    ensure!(
        out.status.success(),
        "observe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.lines().count())
}

fn is_drop_to_22(f: &Value) -> bool {
    f["verdict"] == "DROPPED" && f["destination_port"] == 22
}

#[test]
fn agent_kill_9_during_traffic_keeps_enforcing_and_flows_resume_needs_root() -> anyhow::Result<()> {
    let name = "agent_kill_9_during_traffic_keeps_enforcing_and_flows_resume_needs_root";
    if !root_or_skip(name) {
        return Ok(());
    }
    let started = Instant::now();
    let socket = std::env::temp_dir().join(format!("catalyst-fault-{}.sock", std::process::id()));
    let extra = format!(
        "observer: {{listen_address: null, unix_socket: {}}}\nmetrics: {{listen_address: null}}\n",
        socket.display()
    );
    let mut s = Scenario::start_with("kill9", &[("web.yaml", WEB_ALLOW_CLIENT_80)], false, &extra)?;
    let web = pod("web").ipv4;
    ensure!(s.tcp("client", web, 80), "client -> web:80 allowed");
    ensure!(!s.tcp("client", web, 22), "client -> web:22 denied");
    s.wait_flow("client -> web:22 dropped", is_drop_to_22)?;

    let session = TcpSession::open(&pod("client").netns(), web, 80, PROBE_TIMEOUT)?
        .context("client -> web:80 connects")?;
    let pinger = Pinger::start(session, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(200));

    // The crash: no shutdown code runs, the Observer socket file stays behind.
    let pid = s.agent().pid().context("agent pid")?;
    s.agent().kill_9()?;
    s.agent = None;
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "agent {pid} still exists after SIGKILL"
    );
    // No agent: the pinned state enforces on its own, in both directions of the policy.
    let down = Instant::now();
    for round in 0..3 {
        ensure!(
            s.tcp("client", web, 80),
            "round {round}: client -> web:80 refused while the agent is dead (enforcement gap)"
        );
        ensure!(
            !s.tcp("client", web, 22),
            "round {round}: client -> web:22 passed while the agent is dead (enforcement gap)"
        );
        ensure!(
            !s.tcp("other", web, 80),
            "round {round}: other -> web:80 passed while the agent is dead (enforcement gap)"
        );
    }
    let flows_before_restart = s.flows().len();
    eprintln!(
        "agent dead for {:?}: allowed stayed allowed, denied stayed denied",
        down.elapsed()
    );

    // Restart on the same pins (the stale socket file must not stop it).
    s.start_agent()?;
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = pinger.stop();
    eprintln!(
        "established connection across kill -9 and restart: {ok} round trips, {failed} failed"
    );
    ensure!(
        failed == 0,
        "{failed} of {} round trips failed across kill -9 and restart",
        ok + failed
    );
    ensure!(ok > 50, "only {ok} round trips ran");
    ensure!(s.tcp("client", web, 80), "allowed after the restart");
    ensure!(!s.tcp("client", web, 22), "denied after the restart");

    // Flows resume: a new drop reaches the flow log (after the lines written before the
    // restart) and the restarted agent's Observer API.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let new_drop = s
            .flows()
            .iter()
            .skip(flows_before_restart)
            .any(is_drop_to_22);
        if new_drop && observed_drops_to_22(&socket)? > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no client -> web:22 drop in the flow log after line {flows_before_restart} and the Observer API within 5 s of the restart"
        );
        ensure!(!s.tcp("client", web, 22), "denied after the restart");
    }
    let took = started.elapsed();
    eprintln!("kill -9 fault test took {took:?}");
    ensure!(took < Duration::from_mins(1), "bounded: took {took:?}");
    drop(s);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
