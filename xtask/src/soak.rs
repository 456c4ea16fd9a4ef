//! `cargo xtask soak [--minutes N]` (issue 16 item 7): the agent in the netns lab and
//! catalyst-dns on loopback run for N minutes (default 10) under real traffic (TCP and UDP
//! echoes, allowed and denied, plus one long-lived connection), policy churn (policy files
//! rewritten every few seconds) and DNS queries (dnsperf at a fixed rate over
//! static, LUA and never-seen names; a zone reload every 30 s). After a warm-up (a fifth of the
//! run, at most 60 s) it samples each program's resident memory, open file descriptors and map
//! sizes (the agent's pinned BPF maps, counted with bpftool; catalyst-dns's record gauges — its
//! answer cache is bounded per worker and shows in its memory), and again at the end; it fails
//! when any grew by more than 10 % (counts within 2 of the start figure are flat, so a map of 3
//! entries may become 5), when an
//! allowed probe failed or a denied one passed, or when a DNS query was lost or failed. The
//! figures go to docs/benchmarks.md between the `soak` markers.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use catalyst_tests::{
    agent::{metric_value, workspace_bin},
    lab::pod,
    probe::{Pinger, TcpSession, tcp_echo, udp_echo},
    scenario::Scenario,
};

use crate::{bench, setup};

/// Growth allowed between the first and the last sample.
const MAX_GROWTH: f64 = 0.10;
/// Counts (descriptors, map entries) may move by this much whatever their size.
const COUNT_SLACK: f64 = 2.0;
/// Policy churn period.
const CHURN_EVERY: Duration = Duration::from_secs(3);
/// Zone reload period.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// dnsperf's query rate.
const DNS_QPS: u32 = 300;
/// Probe timeouts: first attempt, retry.
const PROBE: Duration = Duration::from_millis(600);
const PROBE_RETRY: Duration = Duration::from_secs(2);
const AGENT_METRICS: &str = "127.0.0.1:19968";

/// Policy variants for web: every one allows client -> web:80 (TCP and UDP) and none allows
/// client -> web:22, so the probes' expectations hold through the churn.
const WEB_VARIANTS: [&str; 3] = [
    "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: ANY}]}]\n",
    "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: ANY}, {port: \"8000\", endPort: 8999, protocol: TCP}]}]\n    - fromEndpoints: [{matchLabels: {app: db}}]\n",
    "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: ANY}, {port: \"9000\", protocol: TCP}]}]\n  ingressDeny:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n",
];
const DB_POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: web}}]\n      toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n";

fn web_policy(variant: usize) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n{}",
        WEB_VARIANTS[variant % WEB_VARIANTS.len()]
    )
}

/// One sample of one process.
#[derive(Debug, Clone, Default)]
struct Sample {
    rss_kib: f64,
    fds: f64,
    /// (map, entries)
    maps: Vec<(String, f64)>,
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn fds(pid: u32) -> anyhow::Result<f64> {
    #[expect(clippy::cast_precision_loss, reason = "a descriptor count")]
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("/proc/{pid}/fd"))?
        .count() as f64)
}

/// Entries of every pinned hash map under `pin` (`bpftool map dump`); arrays are full by
/// construction and are left out.
fn bpf_map_entries(pin: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    // Pins may sit in subdirectories of the pin path.
    let mut files = Vec::new();
    let mut dirs = vec![pin.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)
            .with_context(|| format!("reading pins in {}", d.display()))?
            .filter_map(Result::ok)
        {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    for f in files {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&f)
            .output()
            .context("cannot run bpftool (apt-get install bpftool)")?;
        if !show.status.success() {
            continue; // a pinned program or link, not a map
        }
        let info: serde_json::Value = serde_json::from_slice(&show.stdout)
            .with_context(|| format!("bpftool map show {}", f.display()))?;
        if !info["type"].as_str().is_some_and(|t| t.contains("hash")) {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&f)
            .output()?;
        ensure!(
            dump.status.success(),
            "bpftool map dump {}: {}",
            f.display(),
            String::from_utf8_lossy(&dump.stderr)
        );
        let entries: serde_json::Value = serde_json::from_slice(&dump.stdout)
            .with_context(|| format!("bpftool map dump {}", f.display()))?;
        #[expect(clippy::cast_precision_loss, reason = "an entry count")]
        let n = entries.as_array().map_or(0, Vec::len) as f64;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, n));
    }
    Ok(out)
}

/// `GET /metrics` on host loopback.
fn scrape(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("metrics at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn sample_agent(pid: u32, pin: &Path) -> anyhow::Result<Sample> {
    Ok(Sample {
        rss_kib: rss_kib(pid)?,
        fds: fds(pid)?,
        maps: bpf_map_entries(pin)?,
    })
}

fn sample_dns(pid: u32, metrics: &str) -> anyhow::Result<Sample> {
    let text = scrape(metrics)?;
    // The answer cache is per UDP worker and bounded by `cache_entries` (LRU); its memory shows
    // in RSS. The record gauges show that reloads replace the zone rather than add to it.
    let maps = ["catalyst_dns_static_records", "catalyst_dns_lua_records"]
        .iter()
        .filter(|m| text.lines().any(|l| l.starts_with(*m)))
        .map(|m| ((*m).to_owned(), metric_value(&text, m)))
        .collect();
    Ok(Sample {
        rss_kib: rss_kib(pid)?,
        fds: fds(pid)?,
        maps,
    })
}

/// Whether `end` is flat against `start`.
fn flat(start: f64, end: f64, slack: f64) -> bool {
    end <= start * (1.0 + MAX_GROWTH) + slack
}

fn growth(start: f64, end: f64) -> String {
    if start == 0.0 {
        format!("{:+}", end - start)
    } else {
        format!("{:+.1} %", (end - start) / start * 100.0)
    }
}

/// Traffic counters shared with the traffic thread.
#[derive(Default)]
struct Traffic {
    allowed_ok: AtomicU64,
    allowed_failed: AtomicU64,
    denied_ok: AtomicU64,
    denied_passed: AtomicU64,
}

fn probe_twice(f: impl Fn(Duration) -> bool) -> bool {
    f(PROBE) || f(PROBE_RETRY)
}

fn traffic_loop(stop: &AtomicBool, t: &Traffic) {
    let client = pod("client").netns();
    let other = pod("other").netns();
    let web = pod("web").ipv4;
    let db = pod("db").ipv4;
    while !stop.load(Ordering::Relaxed) {
        for ok in [
            probe_twice(|to| tcp_echo(&client, web, 80, to).unwrap_or(false)),
            probe_twice(|to| udp_echo(&client, web, 80, to).unwrap_or(false)),
        ] {
            let c = if ok { &t.allowed_ok } else { &t.allowed_failed };
            c.fetch_add(1, Ordering::Relaxed);
        }
        for passed in [
            tcp_echo(&client, web, 22, PROBE).unwrap_or(false),
            tcp_echo(&other, db, 5432, PROBE).unwrap_or(false),
        ] {
            let c = if passed {
                &t.denied_passed
            } else {
                &t.denied_ok
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// catalyst-dns on loopback with a zone of static, wildcard-free and LUA records and a health
/// target; killed by PID on drop.
struct Dns {
    child: Child,
    port: u16,
    metrics: String,
    zone: PathBuf,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = u.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

fn soak_zone(target_port: u16, serial: u32) -> String {
    let mut z = format!(
        "$ORIGIN soak.test.\n$TTL 60\n@ SOA ns hm {serial} 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
         svc LUA A \"ifportup({target_port}, {{'127.0.0.1'}}, {{interval = 1}})\"\n\
         pick LUA A \"pickrandom({{'192.0.2.1', '192.0.2.2', '192.0.2.3'}})\"\n"
    );
    for i in 0..100 {
        let _ = writeln!(z, "h{i} A 10.1.{}.{}", i / 250, i % 250);
    }
    z
}

fn start_dns(dir: &Path, target_port: u16) -> anyhow::Result<Dns> {
    let port = free_port()?;
    let mport = free_port()?;
    let zone = dir.join("soak.zone");
    std::fs::write(&zone, soak_zone(target_port, 1))?;
    let cfg = dir.join("catalyst-dns.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: [\"127.0.0.1:{port}\"]\nudp_workers: 1\nmetrics: {{listen: \"127.0.0.1:{mport}\"}}\nreload: {{watch_interval_secs: 0}}\nzones:\n  - {{origin: soak.test, file: {}}}\n",
            zone.display()
        ),
    )?;
    let bin = workspace_bin("CATALYST_DNS_BIN", "catalyst-dns");
    let child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("catalyst-dns.log"))?)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let dns = Dns {
        child,
        port,
        metrics: format!("127.0.0.1:{mport}"),
        zone,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while scrape(&dns.metrics).is_err() {
        ensure!(
            Instant::now() < deadline,
            "catalyst-dns did not serve metrics within 20 s: {}",
            std::fs::read_to_string(dir.join("catalyst-dns.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(dns)
}

/// dnsperf's final report: (sent, completed, lost, rcodes other than NOERROR/NXDOMAIN).
fn dnsperf_figures(out: &str) -> anyhow::Result<(u64, u64, u64, Vec<String>)> {
    let num = |key: &str| -> anyhow::Result<u64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no `{key}` in dnsperf's output:\n{out}"))
    };
    let bad: Vec<String> = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with("NOERROR") && !c.starts_with("NXDOMAIN"))
        .map(str::to_owned)
        .collect();
    Ok((
        num("Queries sent:")?,
        num("Queries completed:")?,
        num("Queries lost:")?,
        bad,
    ))
}

/// Runs the soak.
#[expect(clippy::too_many_lines, reason = "the soak reads top to bottom")]
pub fn soak(minutes: u64) -> anyhow::Result<()> {
    ensure!(minutes >= 1, "--minutes must be at least 1");
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the soak needs root (network namespaces, eBPF)"
    );
    for tool in ["bpftool", "dnsperf"] {
        ensure!(
            Command::new(tool)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "{tool} is not on PATH (apt-get install {tool})"
        );
    }
    setup::ensure_ebpf_toolchain()?;
    setup::cargo_build(false)?;
    let total = Duration::from_secs(minutes * 60);
    let warmup = (total / 5).min(Duration::from_mins(1));
    eprintln!(
        "soak: {minutes} min ({warmup:?} warm-up), agent in the lab, catalyst-dns on loopback"
    );

    let extra = format!(
        "metrics: {{listen_address: \"{AGENT_METRICS}\"}}\nobserver: {{listen_address: null, unix_socket: null}}\n"
    );
    let mut s = Scenario::start_with(
        "soak",
        &[("web.yaml", &web_policy(0)), ("db.yaml", DB_POLICY)],
        false,
        &extra,
    )?;
    let pin = s.agent().pin_path.clone();
    let agent_pid = s.agent().pid().context("agent pid")?;
    // The health target of the LUA record: a loopback listener that stays up.
    let target = std::net::TcpListener::bind("127.0.0.1:0")?;
    let target_port = target.local_addr()?.port();
    let dns = start_dns(&s.dir, target_port)?;
    let queries = s.dir.join("queries.txt");
    let mut q = String::new();
    for i in 0..2_000 {
        // Static, LUA and never-seen names (NXDOMAIN; they churn the answer cache).
        let _ = writeln!(q, "h{}.soak.test A", i % 100);
        let _ = writeln!(q, "svc.soak.test A");
        let _ = writeln!(q, "pick.soak.test A");
        let _ = writeln!(q, "n{i}-{}.soak.test A", std::process::id());
    }
    std::fs::write(&queries, q)?;
    let mut dnsperf = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &dns.port.to_string(), "-d"])
        .arg(&queries)
        .args([
            "-l",
            &total.as_secs().to_string(),
            "-Q",
            &DNS_QPS.to_string(),
        ])
        .args(["-c", "2", "-t", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start dnsperf (apt-get install dnsperf)")?;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let traffic_thread = {
        let (stop, t) = (stop.clone(), traffic.clone());
        std::thread::spawn(move || traffic_loop(&stop, &t))
    };
    let session = TcpSession::open(&pod("client").netns(), pod("web").ipv4, 80, PROBE_RETRY)?
        .context("the long-lived client -> web:80 connection did not open")?;
    let pinger = Pinger::start(session, Duration::from_millis(50));

    let started = Instant::now();
    let mut churns = 0usize;
    let mut reloads = 0u32;
    let mut next_churn = started + CHURN_EVERY;
    let mut next_reload = started + RELOAD_EVERY;
    let mut next_report = started + Duration::from_mins(1);
    let mut first: Option<(Sample, Sample)> = None;
    let res = (|| -> anyhow::Result<()> {
        while started.elapsed() < total {
            let now = Instant::now();
            if first.is_none() && started.elapsed() >= warmup {
                let a = sample_agent(agent_pid, &pin)?;
                let d = sample_dns(dns.child.id(), &dns.metrics)?;
                eprintln!("soak: start sample after warm-up: agent {a:?}, dns {d:?}");
                first = Some((a, d));
            }
            if now >= next_churn {
                churns += 1;
                s.set_policy("web.yaml", &web_policy(churns))?;
                // db's policy changes every other churn (both forms deny other -> db:5432).
                if churns.is_multiple_of(2) {
                    s.set_policy("db.yaml", DB_POLICY)?;
                } else {
                    s.set_policy("db.yaml", &DB_POLICY.replace("app: web", "app: client"))?;
                }
                next_churn = now + CHURN_EVERY;
            }
            if now >= next_reload {
                reloads += 1;
                std::fs::write(&dns.zone, soak_zone(target_port, reloads + 1))?;
                let pid = i32::try_from(dns.child.id())?;
                // SAFETY: signalling our own child by PID.
                unsafe { libc::kill(pid, libc::SIGHUP) };
                next_reload = now + RELOAD_EVERY;
            }
            if now >= next_report {
                eprintln!(
                    "soak: {:>3} s: agent rss {} KiB fds {}, dns rss {} KiB fds {}, {churns} policy changes, traffic {}/{} allowed ok, {}/{} denied ok",
                    started.elapsed().as_secs(),
                    rss_kib(agent_pid)?,
                    fds(agent_pid)?,
                    rss_kib(dns.child.id())?,
                    fds(dns.child.id())?,
                    traffic.allowed_ok.load(Ordering::Relaxed),
                    traffic.allowed_ok.load(Ordering::Relaxed)
                        + traffic.allowed_failed.load(Ordering::Relaxed),
                    traffic.denied_ok.load(Ordering::Relaxed),
                    traffic.denied_ok.load(Ordering::Relaxed)
                        + traffic.denied_passed.load(Ordering::Relaxed),
                );
                next_report = now + Duration::from_mins(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    // End samples while the load still runs (the same conditions as the start sample).
    let last = res.and_then(|()| {
        Ok((
            sample_agent(agent_pid, &pin)?,
            sample_dns(dns.child.id(), &dns.metrics)?,
        ))
    });
    stop.store(true, Ordering::Relaxed);
    if last.is_err() {
        let _ = dnsperf.kill();
    }
    let _ = traffic_thread.join();
    let (ping_ok, ping_failed) = pinger.stop();
    let perf = dnsperf.wait_with_output().context("waiting for dnsperf")?;
    drop(target);
    let elapsed = started.elapsed();
    drop(dns);
    drop(s);
    let (end_agent, end_dns) = last?;
    let (start_agent, start_dns) = first.context("the run ended before the warm-up did")?;
    let perf_out = String::from_utf8_lossy(&perf.stdout).into_owned();
    let (sent, completed, lost, bad_rcodes) = dnsperf_figures(&perf_out)?;

    let mut md = String::new();
    writeln!(md, "{}", bench::measured_on(", debug build"))?;
    writeln!(
        md,
        "Method: `cargo xtask soak --minutes {minutes}` (xtask/src/soak.rs). The agent in the netns \
         lab with two policies; a thread probes client → web:80 over TCP and UDP (allowed) and \
         client → web:22, other → db:5432 (denied) without pause; one connection pings every \
         50 ms throughout; web's policy is rewritten (three variants) and db's switched between two forms \
         every {} s. catalyst-dns on loopback (one zone: 100 static names, an `ifportup` and a \
         `pickrandom` LUA record) answers dnsperf at {DNS_QPS} queries/s, a quarter of them \
         never-seen names, and reloads its zone (SIGHUP) every {} s. Samples after a {} s \
         warm-up and at the end, under load: resident memory (`VmRSS`), open descriptors \
         (`/proc/PID/fd`), entries of the agent's pinned hash maps (`bpftool map dump`), \
         catalyst-dns's record gauges (its answer cache is bounded per worker; it shows in RSS). Bar: at most {} % growth (counts: plus 2).\n",
        CHURN_EVERY.as_secs(),
        RELOAD_EVERY.as_secs(),
        warmup.as_secs(),
        MAX_GROWTH * 100.0
    )?;
    writeln!(md, "| program | figure | start | end | growth | flat |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let mut failures = Vec::new();
    let mut row = |program: &str, figure: &str, a: f64, b: f64, slack: f64| {
        let ok = flat(a, b, slack);
        if !ok {
            failures.push(format!("{program} {figure}: {a} -> {b}"));
        }
        let _ = writeln!(
            md,
            "| {program} | {figure} | {a} | {b} | {} | {} |",
            growth(a, b),
            if ok { "yes" } else { "**no**" }
        );
    };
    for (program, a, b) in [
        ("catalyst-agent", &start_agent, &end_agent),
        ("catalyst-dns", &start_dns, &end_dns),
    ] {
        row(program, "RSS (KiB)", a.rss_kib, b.rss_kib, 0.0);
        row(program, "open fds", a.fds, b.fds, COUNT_SLACK);
        for (name, n) in &a.maps {
            let end = b
                .maps
                .iter()
                .find(|(m, _)| m == name)
                .map_or(0.0, |(_, v)| *v);
            row(program, &format!("`{name}` entries"), *n, end, COUNT_SLACK);
        }
    }
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    writeln!(md)?;
    writeln!(
        md,
        "Load over {} s: {churns} policy changes, {reloads} zone reloads; allowed probes {} ok / {} failed, \
         denied probes {} dropped / {} passed; long-lived connection {ping_ok} round trips / \
         {ping_failed} failed; dnsperf {sent} sent, {completed} completed, {lost} lost{}.",
        elapsed.as_secs(),
        t(&traffic.allowed_ok),
        t(&traffic.allowed_failed),
        t(&traffic.denied_ok),
        t(&traffic.denied_passed),
        if bad_rcodes.is_empty() {
            String::new()
        } else {
            format!(", other response codes: {}", bad_rcodes.join(", "))
        }
    )?;
    println!("{md}");
    if t(&traffic.allowed_failed) > 0 {
        failures.push(format!(
            "{} allowed probes failed",
            t(&traffic.allowed_failed)
        ));
    }
    if t(&traffic.denied_passed) > 0 {
        failures.push(format!(
            "{} denied probes passed",
            t(&traffic.denied_passed)
        ));
    }
    if ping_failed > 0 {
        failures.push(format!("{ping_failed} long-lived round trips failed"));
    }
    if lost > 0 || !bad_rcodes.is_empty() || completed == 0 {
        failures.push(format!(
            "dnsperf: {completed} completed, {lost} lost, {bad_rcodes:?}"
        ));
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "\n**Failed:** {}.", failures.join("; "));
    }
    bench::splice_section("soak", &md)?;
    eprintln!("soak: figures written to docs/benchmarks.md");
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}
