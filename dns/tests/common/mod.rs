//! Shared helpers of the integration tests: start catalyst-dns (and PowerDNS) as child
//! processes on loopback ports, stop them by PID, and query with dig or hickory-proto.
//!
//! Tests that need external tools say so with [`require`] (the workspace's one test convention,
//! `catalyst_tests::require`): skipped with one line by plain `cargo test` when a tool is
//! missing, failed by `cargo xtask test`.

#![allow(
    dead_code,
    clippy::missing_panics_doc,
    clippy::cast_possible_truncation,
    clippy::format_push_string,
    clippy::many_single_char_names,
    clippy::doc_markdown
)]

pub mod mmdb;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{Name, RecordType, rdata::opt::EdnsOption},
};

pub use catalyst_tests::require::{Need, require};

/// A free loopback port for both UDP and TCP.
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process killed (by PID) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start catalyst-dns with `config` (YAML text) in `dir`; waits until it answers on `port`.
pub fn start_catalyst(dir: &Path, config: &str, port: u16) -> Proc {
    let cfg = dir.join("catalyst-dns.yaml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join("catalyst-dns.log");
    let child = Command::new(env!("CARGO_BIN_EXE_catalyst-dns"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start catalyst-dns");
    let p = Proc { child, log };
    wait_ready(port, &p);
    p
}

fn wait_ready(port: u16, p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if query_raw(port, "ready.invalid.", RecordType::A, None).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "server on port {port} did not come up; log:\n{}",
        p.log_text()
    );
}

/// Start pdns_server (bind backend) serving `zones` ((origin, file) pairs) on `port`.
pub fn start_pdns(dir: &Path, zones: &[(&str, &Path)], port: u16, extra: &str) -> Proc {
    let named = dir.join("named.conf");
    let mut conf = String::new();
    for (origin, file) in zones {
        conf.push_str(&format!(
            "zone \"{origin}\" {{ type master; file \"{}\"; }};\n",
            file.display()
        ));
    }
    std::fs::write(&named, conf).unwrap();
    let launch = if extra.contains("launch=") {
        ""
    } else {
        "launch=bind\n"
    };
    let pdns_conf = format!(
        "{launch}bind-config={}\nenable-lua-records=shared\nlocal-address=127.0.0.1\nlocal-port={port}\n\
         socket-dir={}\ndaemon=no\nguardian=no\ndisable-syslog=yes\nedns-subnet-processing=yes\nwebserver=no\n\
         loglevel=4\nlua-health-checks-interval=1\n{extra}\n",
        named.display(),
        dir.display()
    );
    std::fs::write(dir.join("pdns.conf"), pdns_conf).unwrap();
    let log = dir.join("pdns.log");
    let child = Command::new("pdns_server")
        .arg(format!("--config-dir={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start pdns_server");
    let p = Proc { child, log };
    wait_ready(port, &p);
    p
}

/// Query with hickory-proto over UDP; None on timeout.
pub fn query_raw(port: u16, name: &str, t: RecordType, ecs: Option<&str>) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .ok()?;
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.add_query(Query::query(name.parse::<Name>().ok()?, t));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    if let Some(ecs) = ecs {
        e.options_mut()
            .insert(EdnsOption::Subnet(ecs.parse().ok()?));
    }
    m.set_edns(e);
    sock.send_to(&m.to_vec().ok()?, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        // Ephemeral ports get reused: ignore stray responses meant for an earlier socket.
        match Message::from_vec(&buf[..n]) {
            Ok(r) if r.metadata.id == m.metadata.id => return Some(r),
            _ => {}
        }
    }
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

/// Sorted answer RDATA strings of a hickory query.
pub fn answers(port: u16, name: &str, t: RecordType, ecs: Option<&str>) -> Vec<String> {
    let m = query_raw(port, name, t, ecs)
        .unwrap_or_else(|| panic!("no answer for {name} {t} on {port}"));
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// Run dig and return stdout.
pub fn dig(args: &[&str]) -> String {
    let out = Command::new("dig").args(args).output().expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait for a log line containing `needle`.
pub fn wait_log(p: &Proc, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(f) = std::fs::File::open(&p.log)
            && BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains(needle))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Standard config for a test server.
pub fn config(port: u16, zones: &[(&str, &Path)], extra: &str) -> String {
    let mut c = format!(
        "listen: [\"127.0.0.1:{port}\"]\nudp_workers: 1\nmetrics: {{listen: null}}\nzones:\n"
    );
    for (o, f) in zones {
        c.push_str(&format!("  - {{origin: {o}, file: {}}}\n", f.display()));
    }
    c.push_str(extra);
    c
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TCP health-check target on `ip:port` that accepts and closes connections until dropped
/// (so the accept queue never fills up and the target never looks down by accident).
pub struct TcpTarget {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpTarget {
    pub fn start(ip: &str, port: u16) -> Self {
        let l = TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpTarget {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an [`HttpTarget`] answers to one request: a delay before answering, the status line
/// (e.g. `"200 OK"`) and the body.
pub type HttpReply = (Duration, &'static str, String);

/// An HTTP health-check target on `ip:port`: each request (its head as text) is answered by
/// `reply` on its own thread (so a slow answer delays nobody else), HTTP/1.0 style, then the
/// connection is closed. Stopped (accepting ends, in-flight answers finish) on drop.
pub struct HttpTarget {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpTarget {
    pub fn start(ip: &str, port: u16, reply: fn(&str) -> HttpReply) -> Self {
        use std::io::{Read, Write};
        let l = TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => conns.push(std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 2048];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let (delay, status, body) = reply(&String::from_utf8_lossy(&req));
                        std::thread::sleep(delay);
                        let _ = write!(
                            c,
                            "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = c.write_all(body.as_bytes());
                    })),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                conns.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
            }
            for t in conns {
                let _ = t.join();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
