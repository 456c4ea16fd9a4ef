//! Pieces of the Continuum suites (`continuum_lab_root`, `continuum_nemesis`): named processes
//! that can be signalled, killed and restarted by PID, a 3-node NATS `JetStream` cluster, one
//! catalyst-dns per region and one Continuum controller per region, all on loopback.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use catalyst_controllers::continuum::{
    history::{self, Event, Kind},
    witness,
};

use crate::{agent::workspace_bin, require::POSTGRES_BIN as PG_BIN};

/// `program`, run inside `netns` (through `ip netns exec`) when given.
fn in_ns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// How to (re)start one process.
#[derive(Clone, Debug)]
struct Spec {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

/// Named children; every one still running is killed by its PID (SIGKILL) and reaped on drop.
#[derive(Default)]
pub struct Procs {
    specs: BTreeMap<String, Spec>,
    running: BTreeMap<String, Child>,
    /// Region → network namespace its processes run in (`ip netns exec`, which execs, so the
    /// PID is the program's own); regions not listed run in the caller's namespace.
    pub netns: BTreeMap<String, String>,
}

impl Procs {
    /// Like [`Procs::spawn`], inside `region`'s network namespace when it has one.
    pub fn spawn_at(
        &mut self,
        region: &str,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<u32> {
        match self.netns.get(region).cloned() {
            Some(ns) => {
                let mut all = vec![
                    "netns".to_owned(),
                    "exec".to_owned(),
                    ns,
                    program.to_string_lossy().into_owned(),
                ];
                all.extend_from_slice(args);
                self.spawn(name, Path::new("ip"), &all, env, log)
            }
            None => self.spawn(name, program, args, env, log),
        }
    }

    /// Starts `program args` as `name`, stderr appended to `log`; returns its PID.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let spec = Spec {
            program: program.to_owned(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: log.to_owned(),
        };
        self.specs.insert(name.to_owned(), spec);
        self.start(name)
    }

    fn start(&mut self, name: &str) -> anyhow::Result<u32> {
        let spec = self.specs.get(name).context("unknown process")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {name} ({}; `cargo build --bins` builds the workspace binaries)",
                    spec.program.display()
                )
            })?;
        let pid = child.id();
        self.running.insert(name.to_owned(), child);
        Ok(pid)
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of `name` for its next start.
    pub fn set_env(&mut self, name: &str, key: &str, value: Option<&str>) {
        if let Some(spec) = self.specs.get_mut(name) {
            spec.env.retain(|(k, _)| k != key);
            if let Some(v) = value {
                spec.env.push((key.to_owned(), v.to_owned()));
            }
        }
    }

    /// Whether `name` has exited, and its exit status (reaped).
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let status = self.running.get_mut(name)?.try_wait().ok().flatten()?;
        self.running.remove(name);
        Some(status)
    }

    /// PID of `name` while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running.get(name).map(Child::id)
    }

    /// Names of the running processes.
    pub fn running(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Sends `signal` to `name` (by PID); false when it is not running.
    pub fn signal(&self, name: &str, signal: i32) -> bool {
        let Some(pid) = self.pid(name).and_then(|p| i32::try_from(p).ok()) else {
            return false;
        };
        // SAFETY: the PID of a child this harness spawned and has not reaped.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// SIGKILL `name` and reap it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.running.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `name` again with the same command (after [`Procs::kill`]).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<u32> {
        self.kill(name);
        self.start(name)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.running.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 25 ms until it holds; the time it took, or an error naming `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(t0.elapsed())
}

/// `dig +short` against `server` (`addr:port`); empty on any failure.
pub fn dig(server: &str, name: &str, qtype: &str) -> String {
    dig_in(None, server, name, qtype)
}

/// [`dig`] from inside network namespace `netns`.
pub fn dig_in(netns: Option<&str>, server: &str, name: &str, qtype: &str) -> String {
    let (addr, port) = server.split_once(':').unwrap_or((server, "53"));
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dig"]);
            c
        }
        None => Command::new("dig"),
    };
    cmd.args([
        "+short",
        "+time=1",
        "+tries=1",
        "-p",
        port,
        &format!("@{addr}"),
        name,
        qtype,
    ])
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default()
}

/// A 3-node NATS cluster: node `i` listens on `hosts[i]`, client port `client + i`, route port
/// `cluster + i`, monitoring port `client + 1000 + i`.
#[derive(Clone, Copy, Debug)]
pub struct NatsPorts {
    /// First client port.
    pub client: u16,
    /// First cluster (route) port.
    pub cluster: u16,
    /// Address of each node.
    pub hosts: [&'static str; 3],
}

impl NatsPorts {
    /// Monitoring (HTTP) port of node `i`: client port + 1000.
    pub fn monitor(self, i: u16) -> u16 {
        self.client + 1000 + i
    }

    /// Waits until every node's `/healthz` says ok (`JetStream` meta leader known, streams
    /// current): KV operations against a cluster still electing leaders fail or stall.
    /// `from_netns`: where the checks run from (the nodes' addresses must be reachable there).
    pub fn wait_ready(
        self,
        from_netns: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        wait_until("the NATS cluster healthy", timeout, || {
            (0..3u16).all(|i| {
                let addr = std::net::SocketAddr::new(
                    self.hosts[usize::from(i)]
                        .parse()
                        .expect("NATS host address"),
                    self.monitor(i),
                );
                match from_netns {
                    Some(ns) => crate::lab::in_netns(ns, move || healthz(addr)).unwrap_or(false),
                    None => healthz(addr),
                }
            })
        })
    }

    /// Client URL of node `i`.
    pub fn url(self, i: u16) -> String {
        format!("nats://{}:{}", self.hosts[usize::from(i)], self.client + i)
    }

    /// All three client URLs, comma-separated (what `--nats` takes).
    pub fn urls(self) -> String {
        (0..3).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// All three client URLs, node `i` (a region's own) first.
    pub fn urls_from(self, i: u16) -> String {
        (0..3)
            .map(|k| self.url((i + k) % 3))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `GET /healthz` on `addr` answered 200.
fn healthz(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// Starts node `i` of the cluster as `nats-<region>` (store under `dir`).
pub fn start_nats_node(
    procs: &mut Procs,
    dir: &Path,
    ports: NatsPorts,
    i: u16,
    region: &str,
) -> anyhow::Result<u32> {
    let routes: Vec<String> = (0..3u16)
        .filter(|j| *j != i)
        .map(|j| {
            format!(
                "nats://{}:{}",
                ports.hosts[usize::from(j)],
                ports.cluster + j
            )
        })
        .collect();
    let host = ports.hosts[usize::from(i)];
    // Pings every second, three missed end a connection: a route into a cut-off region is
    // dropped within seconds (the default, 2 min, keeps routing requests into the cut for
    // minutes). Operators running Continuum across regions want the same (docs/continuum.md).
    let conf = dir.join(format!("nats-{region}.conf"));
    std::fs::write(&conf, "ping_interval: \"1s\"\nping_max: 3\n")?;
    let args: Vec<String> = [
        "-c",
        &conf.to_string_lossy(),
        "-a",
        host,
        "-p",
        &(ports.client + i).to_string(),
        "-js",
        "-sd",
        &dir.join(format!("nats-{region}")).to_string_lossy(),
        "-n",
        &format!("n-{region}"),
        "--cluster_name",
        "catalyst-lab",
        "--cluster",
        &format!("nats://{host}:{}", ports.cluster + i),
        "--routes",
        &routes.join(","),
        "--http_port",
        &ports.monitor(i).to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    procs.spawn_at(
        region,
        &format!("nats-{region}"),
        Path::new("nats-server"),
        &args,
        &[],
        &dir.join(format!("nats-{region}.log")),
    )
}

/// Starts one catalyst-dns per region (`dns-<region>`), instance `i` listening on `listen[i]`
/// with metrics on `<ip of listen[i]>:9153`, reading `dns-failover` from NATS node `i`.
pub fn start_dns(
    procs: &mut Procs,
    dir: &Path,
    regions: &[&str],
    listen: &[String],
    zone_origin: &str,
    zone_text: &str,
    ports: NatsPorts,
) -> anyhow::Result<()> {
    let zone = dir.join(format!("{zone_origin}.zone"));
    std::fs::write(&zone, zone_text)?;
    let bin = workspace_bin("CATALYST_DNS_BIN", "catalyst-dns");
    for (i, (r, addr)) in regions.iter().zip(listen).enumerate() {
        let ip = addr.split_once(':').map_or(addr.as_str(), |(ip, _)| ip);
        let cfg = dir.join(format!("dns-{r}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "listen: ['{addr}']\nzones:\n  - origin: {zone_origin}\n    file: {}\nnats:\n  url: {}\nmetrics:\n  listen: {ip}:9153\n",
                zone.display(),
                ports.url(u16::try_from(i)?),
            ),
        )?;
        procs.spawn_at(
            r,
            &format!("dns-{r}"),
            &bin,
            &[
                "serve".into(),
                "--config".into(),
                cfg.to_string_lossy().into_owned(),
            ],
            &[("RUST_LOG", "info")],
            &dir.join(format!("dns-{r}.log")),
        )?;
    }
    Ok(())
}

/// Starts region `region`'s Continuum controller as `ctrl-<region>` (identity `ctrl-<region>`,
/// history `history-<region>.jsonl`, status `status-<region>.json` under `dir`).
pub fn start_controller(
    procs: &mut Procs,
    dir: &Path,
    manifest: &Path,
    nats: &str,
    region: &str,
    extra: &[String],
) -> anyhow::Result<u32> {
    let bin = workspace_bin("CATALYST_CONTROLLERS_BIN", "catalyst-controllers");
    let mut args: Vec<String> = [
        "continuum",
        "run",
        "--continuum",
        &manifest.to_string_lossy(),
        "--nats",
        nats,
        "--kv-replicas",
        "3",
        "--identity",
        &format!("ctrl-{region}"),
        "--region",
        region,
        "--history",
        &dir.join(format!("history-{region}.jsonl"))
            .to_string_lossy(),
        "--status-file",
        &dir.join(format!("status-{region}.json")).to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend_from_slice(extra);
    procs.spawn_at(
        region,
        &format!("ctrl-{region}"),
        &bin,
        &args,
        &[("RUST_LOG", "info")],
        &dir.join(format!("ctrl-{region}.log")),
    )
}

/// The `continuum run` options of the PostgreSQL suites: tools from [`PG_BIN`] run as
/// `postgres`, probes every 500 ms, a 1 s margin, and `--pg-data` for regions with a database.
pub fn pg_controller_args(dir: &Path, region: &str, has_database: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--pg-bin",
        PG_BIN,
        "--pg-os-user",
        "postgres",
        "--probe-ms",
        "500",
        "--margin-ms",
        "1000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if has_database {
        args.push("--pg-data".into());
        args.push(
            dir.join(format!("pg-{region}"))
                .to_string_lossy()
                .into_owned(),
        );
    }
    args
}

/// `catalyst-controllers continuum switchover --to <to>`; whether it succeeded.
pub fn request_switchover(manifest: &Path, nats: &str, to: &str) -> anyhow::Result<bool> {
    let bin = workspace_bin("CATALYST_CONTROLLERS_BIN", "catalyst-controllers");
    Ok(Command::new(bin)
        .args(["continuum", "switchover", "--continuum"])
        .arg(manifest)
        .args(["--nats", nats, "--to", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

/// SIGKILL the postmaster of region `r`'s cluster (from its postmaster.pid).
pub fn kill_postmaster(dir: &Path, r: &str) -> anyhow::Result<()> {
    let pid: i32 = std::fs::read_to_string(dir.join(format!("pg-{r}/postmaster.pid")))?
        .lines()
        .next()
        .context("postmaster.pid")?
        .trim()
        .parse()?;
    // SAFETY: the postmaster of a cluster the calling test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}

/// PostgreSQL clusters stopped (by their postmaster PID, via `pg_ctl`) on drop.
pub struct Pg {
    dirs: Vec<PathBuf>,
}
impl Drop for Pg {
    fn drop(&mut self) {
        for d in &self.dirs {
            if d.join("postmaster.pid").exists() {
                let _ = as_postgres(
                    None,
                    &format!("{PG_BIN}/pg_ctl"),
                    &["-D", &d.to_string_lossy(), "-m", "immediate", "-w", "stop"],
                );
            }
        }
    }
}

/// Runs a PostgreSQL tool as the `postgres` OS user (inside `netns` when given).
pub fn as_postgres(netns: Option<&str>, exe: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = in_ns(netns, "runuser")
        .args(["-u", "postgres", "--", exe])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {exe}"))?;
    if !out.status.success() {
        bail!("{exe} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One statement through `psql` (from inside `netns` when given); its unaligned output.
pub fn psql(netns: Option<&str>, addr: &str, sql: &str) -> anyhow::Result<String> {
    let out = in_ns(netns, "psql")
        .args(["-h", addr, "-U", "postgres", "-d", "postgres", "-tAc", sql])
        .output()?;
    if !out.status.success() {
        bail!("psql {addr}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A socket folder outside the data directory (`pg_basebackup` would copy a lock file in it).
fn sock(dir: &Path, r: &str) -> anyhow::Result<PathBuf> {
    let d = dir.join(format!("sock-{r}"));
    std::fs::create_dir_all(&d)?;
    Command::new("chown")
        .arg("postgres:postgres")
        .arg(&d)
        .status()?;
    Ok(d)
}

/// Where one PostgreSQL server of the pair runs.
#[derive(Clone, Debug)]
pub struct PgSite {
    /// Region name (data directory `pg-<region>` under the lab folder).
    pub region: &'static str,
    /// Listen address.
    pub ip: &'static str,
    /// Network namespace (`None`: the caller's).
    pub netns: Option<String>,
}

/// A primary (`a`) with a synchronous standby (`b`, `remote_apply`), table `rows (id)` created,
/// both accepting trust connections from `clients` (CIDR); stopped on drop.
#[expect(clippy::too_many_lines, reason = "the set-up reads top to bottom")]
pub fn setup_pg(dir: &Path, sa: &PgSite, sb: &PgSite, clients: &str) -> anyhow::Result<Pg> {
    let a = dir.join(format!("pg-{}", sa.region));
    let b = dir.join(format!("pg-{}", sb.region));
    let (na, nb) = (sa.netns.as_deref(), sb.netns.as_deref());
    let ctl = format!("{PG_BIN}/pg_ctl");
    as_postgres(
        None,
        &format!("{PG_BIN}/initdb"),
        &[
            "-D",
            &a.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "--data-checksums",
            "-N",
        ],
    )?;
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("postgresql.conf"))?;
    writeln!(
        conf,
        "listen_addresses = '{}'\nport = 5432\nunix_socket_directories = '{}'\nwal_level = replica\n\
         synchronous_commit = remote_apply\nsynchronous_standby_names = '*'\nwal_log_hints = on\n\
         max_wal_senders = 8\nwal_keep_size = 256MB\nfsync = off\nshared_buffers = 32MB\nhot_standby = on",
        sa.ip,
        sock(dir, sa.region)?.display()
    )?;
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("pg_hba.conf"))?;
    writeln!(
        hba,
        "host all all {clients} trust\nhost replication all {clients} trust"
    )?;
    let mut pg = Pg {
        dirs: vec![a.clone()],
    };
    as_postgres(
        na,
        &ctl,
        &[
            "-D",
            &a.to_string_lossy(),
            "-l",
            &a.join("log").to_string_lossy(),
            "-w",
            "start",
        ],
    )?;
    // No standby yet: create the table without waiting for one.
    psql(
        na,
        sa.ip,
        "ALTER SYSTEM SET synchronous_standby_names = ''; ",
    )?;
    psql(na, sa.ip, "SELECT pg_reload_conf()")?;
    psql(
        na,
        sa.ip,
        "CREATE TABLE rows (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    )?;
    as_postgres(
        nb,
        &format!("{PG_BIN}/pg_basebackup"),
        &[
            "-h",
            sa.ip,
            "-U",
            "postgres",
            "-D",
            &b.to_string_lossy(),
            "-R",
            "-X",
            "stream",
        ],
    )?;
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("postgresql.conf"))?;
    writeln!(
        conf,
        "listen_addresses = '{}'\nunix_socket_directories = '{}'",
        sb.ip,
        sock(dir, sb.region)?.display()
    )?;
    pg.dirs.push(b.clone());
    as_postgres(
        nb,
        &ctl,
        &[
            "-D",
            &b.to_string_lossy(),
            "-l",
            &b.join("log").to_string_lossy(),
            "-w",
            "start",
        ],
    )?;
    psql(
        na,
        sa.ip,
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    )?;
    psql(na, sa.ip, "SELECT pg_reload_conf()")?;
    wait_until("standby streaming", Duration::from_secs(20), || {
        psql(na, sa.ip, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'").is_ok_and(|s| s == "1")
    })?;
    Ok(pg)
}

/// The writer: resolve the primary through catalyst-dns, insert numbered rows, reconnect on
/// failure. Records acknowledged ids and the longest pause between acknowledgements.
pub struct Writer {
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing: resolves `record` (A) at `dns` (`addr:port`), from inside `netns` when
    /// given.
    pub fn start(dns: String, record: &str, netns: Option<String>) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let record = record.to_owned();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = &netns {
                crate::lab::enter(&format!("/run/netns/{ns}")).expect("writer enters its netns");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut next = 1u64;
                while !s.load(Ordering::Relaxed) {
                    let host = dig(&dns, &record, "A");
                    let Some(host) = host.lines().next().map(str::to_string) else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let conn = tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio_postgres::connect(
                            &format!("host={host} user=postgres dbname=postgres connect_timeout=1"),
                            tokio_postgres::NoTls,
                        ),
                    )
                    .await;
                    let Ok(Ok((client, conn))) = conn else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    tokio::spawn(conn);
                    while !s.load(Ordering::Relaxed) {
                        let r = tokio::time::timeout(
                            Duration::from_secs(2),
                            client.execute(
                                "INSERT INTO rows (id) VALUES ($1)",
                                &[&i64::try_from(next).unwrap_or(i64::MAX)],
                            ),
                        )
                        .await;
                        match r {
                            Ok(Ok(_)) => {
                                a.lock().expect("acked").push((next, Instant::now()));
                                next += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            // A duplicate means the row was committed but the ack was lost: move on.
                            Ok(Err(e))
                                if e.code()
                                    == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                            {
                                next += 1;
                            }
                            _ => break,
                        }
                    }
                }
            });
        });
        Self {
            acked,
            stop,
            thread: Some(thread),
        }
    }

    /// Rows acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// Longest pause between acknowledgements inside [from, to].
    pub fn gap(&self, from: Instant, to: Instant) -> Duration {
        let a = self.acked.lock().expect("acked");
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (_, t) in a.iter().filter(|(_, t)| *t >= from && *t <= to) {
            gap = gap.max(t.duration_since(last));
            last = *t;
        }
        gap.max(to.saturating_duration_since(last))
    }

    /// First acknowledgement after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acked
            .lock()
            .expect("acked")
            .iter()
            .map(|(_, x)| *x)
            .find(|x| *x > t)
    }

    /// Stops writing; the acknowledged ids.
    pub fn finish(mut self) -> BTreeSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked
            .lock()
            .expect("acked")
            .iter()
            .map(|(i, _)| *i)
            .collect()
    }
}

/// Polls each DNS instance (`(node name, addr:port)`) for `txt_name` (a `_continuum` witness
/// TXT) every 100 ms, from inside `netns` when given, and records what it served as history
/// events until `stop`.
pub fn observe_dns(
    servers: Vec<(String, String)>,
    txt_name: String,
    netns: Option<String>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Event>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Some(ns) = &netns {
            crate::lab::enter(&format!("/run/netns/{ns}")).expect("observer enters its netns");
        }
        while !stop.load(Ordering::Relaxed) {
            for (node, addr) in &servers {
                let txt = dig(addr, &txt_name, "TXT");
                if let Some(s) = witness::parse(&txt) {
                    out.lock().expect("events").push(Event {
                        t_ms: history::now_ms(),
                        node: node.clone(),
                        kind: Kind::DnsServed,
                        epoch: s.epoch,
                        detail: s.active,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Regions in network namespaces joined by a "wan" router namespace, where partitions are cut
/// with nftables (DESIGN.md §6: every address lives inside namespaces this process created):
///
/// ```text
///   cat<run>-rg-a  eth0 10.77.1.2/24 ── to-a 10.77.1.1 ┐
///   cat<run>-rg-b  eth0 10.77.2.2/24 ── to-b 10.77.2.1 ├─ cat<run>-wan (forwarding; nft table
///   cat<run>-rg-c  eth0 10.77.3.2/24 ── to-c 10.77.3.1 ┘   inet catalyst_partition)
/// ```
///
/// Removed (namespaces, and with them the veths and rules) on drop.
pub struct RegionNet {
    /// The router namespace; the test's own clients (writer, observers, psql) run here.
    pub wan: String,
    /// `(region, namespace)` in order.
    pub regions: Vec<(String, String)>,
}

impl RegionNet {
    /// Address of region `i` (0-based) inside its namespace.
    pub const HOSTS: [&'static str; 3] = ["10.77.1.2", "10.77.2.2", "10.77.3.2"];

    /// Creates the namespaces and links for `regions` (at most 3).
    pub fn up(regions: &[&str]) -> anyhow::Result<Self> {
        let run = crate::lab::run_id();
        let me = Self {
            wan: format!("cat{run}-wan"),
            regions: regions
                .iter()
                .map(|r| ((*r).to_owned(), format!("cat{run}-rg-{r}")))
                .collect(),
        };
        me.remove();
        sh(&["ip", "netns", "add", &me.wan])?;
        ns_sh(&me.wan, &["ip", "link", "set", "lo", "up"])?;
        ns_sh(&me.wan, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        for (i, (r, ns)) in me.regions.iter().enumerate() {
            let n = i + 1;
            sh(&["ip", "netns", "add", ns])?;
            ns_sh(ns, &["ip", "link", "set", "lo", "up"])?;
            ns_sh(
                &me.wan,
                &[
                    "ip",
                    "link",
                    "add",
                    &format!("to-{r}"),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ],
            )?;
            ns_sh(
                &me.wan,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.77.{n}.1/24"),
                    "dev",
                    &format!("to-{r}"),
                ],
            )?;
            ns_sh(&me.wan, &["ip", "link", "set", &format!("to-{r}"), "up"])?;
            ns_sh(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.77.{n}.2/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            ns_sh(ns, &["ip", "link", "set", "eth0", "up"])?;
            ns_sh(
                ns,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.77.{n}.1"),
                ],
            )?;
        }
        ns_sh(
            &me.wan,
            &["nft", "add", "table", "inet", "catalyst_partition"],
        )?;
        ns_sh(
            &me.wan,
            &[
                "nft",
                "add chain inet catalyst_partition cuts { type filter hook forward priority 0; policy accept; }",
            ],
        )?;
        Ok(me)
    }

    /// Namespace of `region`.
    pub fn ns(&self, region: &str) -> &str {
        self.regions
            .iter()
            .find(|(r, _)| r == region)
            .map_or("", |(_, n)| n.as_str())
    }

    /// Drops every packet from `from` to `to` (one way).
    pub fn cut(&self, from: &str, to: &str) -> anyhow::Result<()> {
        ns_sh(
            &self.wan,
            &[
                "nft",
                &format!(
                    "add rule inet catalyst_partition cuts iifname \"to-{from}\" oifname \"to-{to}\" drop"
                ),
            ],
        )
    }

    /// Cuts `region` off from every other region, both ways.
    pub fn isolate(&self, region: &str) -> anyhow::Result<()> {
        for (other, _) in &self.regions {
            if other != region {
                self.cut(region, other)?;
                self.cut(other, region)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        ns_sh(
            &self.wan,
            &[
                "nft",
                "flush",
                "chain",
                "inet",
                "catalyst_partition",
                "cuts",
            ],
        )
    }

    fn remove(&self) {
        for ns in self
            .regions
            .iter()
            .map(|(_, n)| n.as_str())
            .chain([self.wan.as_str()])
        {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = sh(&["ip", "netns", "del", ns]);
            }
        }
    }
}

impl Drop for RegionNet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// [`sh`] inside network namespace `ns`.
fn ns_sh(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all)
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// After a failed run: the last `lines` distinct lines (ANSI colours stripped, repeats of the
/// same message folded) of every controller log in `dir`, on stderr — so a CI log that keeps
/// only the test's output still shows what each controller did last.
pub fn print_controller_log_tails(dir: &Path, lines: usize) {
    eprint!("{}", controller_log_tails(dir, lines));
}

/// What [`print_controller_log_tails`] prints.
pub fn controller_log_tails(dir: &Path, lines: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ctrl-"))
        })
        .collect();
    logs.sort();
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let mut tail: Vec<String> = Vec::new();
        for line in text.lines().rev() {
            let clean = strip_ansi(line);
            // Fold repeats: the message after the timestamp decides.
            let message = clean.split_once(' ').map_or(clean.as_str(), |(_, m)| m);
            if tail
                .last()
                .is_some_and(|l| l.split_once(' ').map_or(l.as_str(), |(_, m)| m) == message)
            {
                continue;
            }
            tail.push(clean.chars().take(300).collect());
            if tail.len() == lines {
                break;
            }
        }
        let _ = writeln!(out, "--- last lines of {} ---", p.display());
        for l in tail.iter().rev() {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_fold_repeats_and_strip_colours() {
        let dir = std::env::temp_dir().join(format!("catalyst-tails-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("ctrl-a.log"),
            "t1 \u{1b}[32mINFO\u{1b}[0m started\nt2 WARN unreachable\nt3 WARN unreachable\nt4 INFO rejoined\n",
        )
        .expect("write");
        std::fs::write(dir.join("nats-a.log"), "not a controller log\n").expect("write");
        let out = controller_log_tails(&dir, 10);
        std::fs::remove_dir_all(&dir).expect("rm");
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(
            lines,
            ["t1 INFO started", "t3 WARN unreachable", "t4 INFO rejoined"]
        );
        assert!(!out.contains("not a controller log"));
    }
}
