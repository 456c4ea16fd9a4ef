//! A lab scenario: the lab up, an agent config and policy directory of its own, echo servers,
//! and a running agent. Everything is torn down on drop (agent stopped by PID, pins removed,
//! namespaces deleted).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    agent::{AgentProcess, uninstall},
    lab::{self, PODS, WORLD_ADDRS, pod, world_ns},
    probe::{EchoServer, tcp_echo, udp_echo, udp_echo_sized},
};

/// Probe timeout for traffic expected to fail (and the bound for traffic expected to work).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(600);

/// A running lab scenario.
pub struct Scenario {
    /// Scenario directory (config, policies, flow log).
    pub dir: PathBuf,
    /// Agent, when running.
    pub agent: Option<AgentProcess>,
    pin: PathBuf,
    _servers: Vec<EchoServer>,
    /// Dropped last (fields drop after `Drop::drop`): the lab is ours until it is torn down.
    _lock: lab::LabLock,
}

/// Whether this process may run lab tests (root and the agent's eBPF object): the one test
/// convention of [`crate::require`].
pub fn root_or_skip(name: &str) -> bool {
    crate::require::require(
        name,
        &[crate::require::Need::Root, crate::require::Need::Ebpf],
    )
}

/// The labels of a lab pod in the agent config (the inside of a YAML flow map).
pub type PodLabels = fn(&lab::Pod) -> String;

/// The default pod labels: `app`.
fn app_label(p: &lab::Pod) -> String {
    format!("app: {}", p.app)
}

fn config_text(
    name: &str,
    pin: &Path,
    flow_log: &Path,
    audit: bool,
    extra: &str,
    labels: PodLabels,
) -> String {
    let mut s = format!(
        "node: lab-node\npin_path: {}\npolicy_paths: [policies]\naudit: {audit}\nflow_log: {}\nwatch_interval_ms: 100\nevent_interval_ms: 100\nhost_addresses: [{}]\n{extra}endpoints:\n",
        pin.display(),
        flow_log.display(),
        lab::HOST_ADDR
    );
    for p in PODS {
        // Named ports as a pod spec would declare them (for `toPorts` by name).
        let ports = match p.app {
            "web" => "[{name: http, port: 80}, {name: http-alt, port: 8080}]",
            "db" => "[{name: postgres, port: 5432}]",
            _ => "[]",
        };
        let _ = writeln!(
            s,
            "  - {{name: {}, namespace: {}, interface: {}, addresses: [{}, \"{}\"], labels: {{{}}}, ports: {ports}}}",
            p.name,
            p.namespace,
            p.host_iface(),
            p.ipv4,
            p.ipv6,
            labels(&p)
        );
    }
    let _ = name;
    s
}

impl Scenario {
    /// Brings the lab up, writes the config and `policies` (name → YAML), starts echo servers on
    /// web (TCP/UDP 80, 8080, 9000, 22), db (5432) and world (443), and starts the agent.
    pub fn start(name: &str, policies: &[(&str, &str)], audit: bool) -> anyhow::Result<Self> {
        Self::start_with(name, policies, audit, "")
    }

    /// Like [`Scenario::start`] with extra top-level config lines.
    pub fn start_with(
        name: &str,
        policies: &[(&str, &str)],
        audit: bool,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_labelled(name, policies, audit, extra, app_label)
    }

    /// Like [`Scenario::start_with`] with the pods' labels chosen by `labels`.
    pub fn start_labelled(
        name: &str,
        policies: &[(&str, &str)],
        audit: bool,
        extra: &str,
        labels: PodLabels,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("catalyst-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies"))?;
        let pin = lab::pin_path(&format!("e2e-{name}"));
        let lock = lab::lock()?;
        lab::up()?;
        let _ = uninstall(&pin);
        std::fs::write(
            dir.join("agent.yaml"),
            config_text(name, &pin, &dir.join("flows.jsonl"), audit, extra, labels),
        )?;
        for (file, text) in policies {
            std::fs::write(dir.join("policies").join(file), text)?;
        }
        let web = pod("web");
        let db = pod("db");
        let servers = vec![
            EchoServer::start(&web.netns(), web.ipv4, &[80, 8080, 9000, 22])?,
            EchoServer::start(&web.netns(), web.ipv6, &[80, 22])?,
            EchoServer::start(&db.netns(), db.ipv4, &[5432])?,
            EchoServer::start(world_ns(), WORLD_ADDRS[0], &[443])?,
            EchoServer::start(world_ns(), WORLD_ADDRS[1], &[443])?,
        ];
        let mut s = Self {
            dir,
            agent: None,
            pin,
            _servers: servers,
            _lock: lock,
        };
        s.start_agent()?;
        Ok(s)
    }

    /// Starts (or restarts) the agent.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        self.agent = Some(AgentProcess::start(
            &self.dir.join("agent.yaml"),
            &self.pin,
        )?);
        Ok(())
    }

    /// Stops the agent, leaving its pinned state (enforcement continues).
    pub fn stop_agent(&mut self) -> anyhow::Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.stop()?;
        }
        Ok(())
    }

    /// The running agent.
    pub fn agent(&mut self) -> &mut AgentProcess {
        self.agent.as_mut().expect("agent running")
    }

    /// Writes (or replaces) a policy file and waits for the agent to apply a change.
    pub fn set_policy(&mut self, file: &str, text: &str) -> anyhow::Result<()> {
        let n = self.sync_count();
        std::fs::write(self.dir.join("policies").join(file), text)?;
        self.agent()
            .wait_log_count("datapath in sync", n + 1, Duration::from_secs(10))
    }

    /// Removes a policy file and waits for the agent to apply the change.
    pub fn remove_policy(&mut self, file: &str) -> anyhow::Result<()> {
        let n = self.sync_count();
        std::fs::remove_file(self.dir.join("policies").join(file))?;
        self.agent()
            .wait_log_count("datapath in sync", n + 1, Duration::from_secs(10))
    }

    fn sync_count(&mut self) -> usize {
        self.agent()
            .log_lines()
            .iter()
            .filter(|l| l.contains("datapath in sync"))
            .count()
    }

    /// TCP echo from pod `from` to `addr:port`. A failed attempt is retried once with a longer
    /// timeout (so a loaded CI machine does not turn slowness into a false "blocked"); the
    /// retry is reported on stderr. Gap-freedom is asserted separately with long-lived sessions.
    pub fn tcp(&self, from: &str, addr: &str, port: u16) -> bool {
        let ns = ns_of(from);
        tcp_echo(&ns, addr, port, PROBE_TIMEOUT).expect("probe")
            || retried(
                "tcp",
                from,
                addr,
                port,
                tcp_echo(&ns, addr, port, RETRY_TIMEOUT).expect("probe"),
            )
    }

    /// UDP echo from pod `from` to `addr:port` (retried like [`Scenario::tcp`]).
    pub fn udp(&self, from: &str, addr: &str, port: u16) -> bool {
        let ns = ns_of(from);
        udp_echo(&ns, addr, port, PROBE_TIMEOUT).expect("probe")
            || retried(
                "udp",
                from,
                addr,
                port,
                udp_echo(&ns, addr, port, RETRY_TIMEOUT).expect("probe"),
            )
    }

    /// A `size`-byte UDP datagram (fragmented on the way) from pod `from` to `addr:port` and its
    /// echo (retried like [`Scenario::tcp`]).
    pub fn udp_sized(&self, from: &str, addr: &str, port: u16, size: usize) -> bool {
        let ns = ns_of(from);
        udp_echo_sized(&ns, addr, port, size, PROBE_TIMEOUT).expect("probe")
            || retried(
                "udp",
                from,
                addr,
                port,
                udp_echo_sized(&ns, addr, port, size, RETRY_TIMEOUT).expect("probe"),
            )
    }

    /// Flow records written so far (JSON objects).
    pub fn flows(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a flow matching `pred` has been logged.
    pub fn wait_flow(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(f) = self.flows().into_iter().find(|f| pred(f)) {
                return Ok(f);
            }
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!(
                    "no flow {what} within 5 s; flows:\n{}",
                    self.flows()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
                .context("waiting for a flow");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Timeout of the second attempt of a probe.
const RETRY_TIMEOUT: Duration = Duration::from_secs(2);

fn retried(proto: &str, from: &str, addr: &str, port: u16, ok: bool) -> bool {
    if ok {
        eprintln!("probe {proto} {from} -> {addr}:{port} needed a second attempt (slow machine?)");
    }
    ok
}

fn ns_of(from: &str) -> String {
    if from == "world" {
        world_ns().to_owned()
    } else {
        pod(from).netns()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.stop_agent();
        let _ = uninstall(&self.pin);
        let _ = lab::down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
