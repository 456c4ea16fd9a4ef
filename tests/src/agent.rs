//! Runs a real `catalyst-agent` inside the lab's node namespace.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::lab::node_ns;

/// A workspace binary: `$env` when set, else `target/debug/<name>` of the workspace (or of
/// `$CARGO_TARGET_DIR`).
pub fn workspace_bin(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("debug").join(name)
}

/// The agent binary: `$CATALYST_AGENT_BIN`, else `target/debug/catalyst-agent` of the workspace.
pub fn agent_bin() -> PathBuf {
    workspace_bin("CATALYST_AGENT_BIN", "catalyst-agent")
}

/// A running agent; stopped (SIGTERM, by PID) on drop. Its pinned state stays unless
/// [`AgentProcess::uninstall`] is called.
pub struct AgentProcess {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    flows: Arc<Mutex<Vec<String>>>,
    /// Pin path of this agent.
    pub pin_path: PathBuf,
}

impl AgentProcess {
    /// Starts `catalyst-agent run --config <config>` in the node namespace (network namespace
    /// only, so bpffs pins stay shared with the host) and waits until the datapath is in sync.
    pub fn start(config: &Path, pin_path: &Path) -> anyhow::Result<Self> {
        Self::start_in(node_ns(), &agent_bin(), config, pin_path, &[])
    }

    /// Starts `bin run --config <config>` in network namespace `netns` with extra environment
    /// variables, and waits until the datapath is in sync.
    pub fn start_in(
        netns: &str,
        bin: &Path,
        config: &Path,
        pin_path: &Path,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!(
                "{} does not exist: build it first (`cargo xtask build`)",
                bin.display()
            );
        }
        // nsenter execs the agent, so the child's PID is the agent's.
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(bin)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "CATALYST_LOG",
                std::env::var("CATALYST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("CATALYST_SHOW_AGENT_LOG").is_some() {
                    eprintln!("agent: {line}");
                }
                l.lock().expect("log lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let flows = Arc::new(Mutex::new(Vec::new()));
        let f = flows.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                f.lock().expect("flows lock").push(line);
            }
        });
        let mut me = Self {
            child: Some(child),
            log,
            flows,
            pin_path: pin_path.to_owned(),
        };
        me.wait_log("datapath in sync", Duration::from_mins(2))?;
        Ok(me)
    }

    /// PID of the agent process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until a log line containing `needle` appears (counting from the start).
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until `count` log lines contain `needle`.
    pub fn wait_log_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .log_lines()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= count
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "agent exited ({status}) before logging `{needle}`:\n{}",
                    self.log_lines().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent did not log `{needle}` within {timeout:?}:\n{}",
                    self.log_lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every stderr line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Every stdout line so far (compact flow lines when `flow_log: stdout`).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.flows.lock().expect("flows lock").clone()
    }

    /// Stops the agent with SIGTERM (its PID) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).context("pid")?;
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("agent did not stop within 10 s of SIGTERM; killed");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kills the agent with SIGKILL (its PID) and reaps it: a crash, no shutdown code runs.
    /// Its pinned state stays.
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).context("pid")?;
            // SAFETY: signalling our own child by PID.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
            }
            child.wait().context("reaping the killed agent")?;
        }
        Ok(())
    }

    /// Removes the agent's pinned programs and maps (stops enforcement).
    pub fn uninstall(&self) -> anyhow::Result<()> {
        uninstall(&self.pin_path)
    }
}

/// `GET /metrics` from `addr` inside the node namespace (where the agent runs).
pub fn scrape_metrics(addr: &'static str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let body = crate::lab::in_netns(node_ns(), move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    Ok(body)
}

/// The value of an unlabelled sample (`name value`) in a Prometheus text exposition; 0 when
/// absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// `catalyst-agent uninstall --pin-path P`, run in the node namespace (where the filters are)
/// when the lab is up.
pub fn uninstall(pin_path: &Path) -> anyhow::Result<()> {
    let mut cmd = if crate::lab::is_up() {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", node_ns()))
            .arg(agent_bin());
        c
    } else {
        Command::new(agent_bin())
    };
    let out = cmd
        .args(["uninstall", "--pin-path"])
        .arg(pin_path)
        .output()?;
    if !out.status.success() {
        bail!("uninstall failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
