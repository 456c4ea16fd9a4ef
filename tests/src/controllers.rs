//! Runs a real `catalyst-controllers` (standalone mode: custom resources from files, generated
//! objects to files).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The controllers binary: `$CATALYST_CONTROLLERS_BIN`, else `target/debug/catalyst-controllers`.
pub fn controllers_bin() -> PathBuf {
    crate::agent::workspace_bin("CATALYST_CONTROLLERS_BIN", "catalyst-controllers")
}

/// A running `catalyst-controllers run --config …`; stopped (SIGTERM, by PID) on drop.
pub struct ControllersProcess {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ControllersProcess {
    /// Starts the controllers with `config` and waits for the first reconcile pass.
    pub fn start(config: &Path) -> anyhow::Result<Self> {
        let bin = controllers_bin();
        if !bin.exists() {
            bail!(
                "{} does not exist: build it first (`cargo build -p catalyst-controllers`)",
                bin.display()
            );
        }
        let mut child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[controllers] {line}");
                l.lock().expect("log").push(line);
            }
        });
        let mut p = Self {
            child: Some(child),
            log,
        };
        p.wait_log_count("reconciled", 1, Duration::from_secs(20))?;
        Ok(p)
    }

    /// Lines logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Waits until `needle` appeared in at least `count` log lines.
    pub fn wait_log_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
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
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("catalyst-controllers exited ({status}) before logging `{needle}`");
            }
            if start.elapsed() > timeout {
                bail!(
                    "catalyst-controllers did not log `{needle}` {count} times within {timeout:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGTERM by PID, then waits).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = libc::pid_t::try_from(c.id()).expect("pid fits");
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    c.kill()?;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for ControllersProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
