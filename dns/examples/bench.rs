//! Benchmark driver: dnsperf against catalyst-dns and PowerDNS (`enable-lua-records=shared`)
//! on the same zone, in one run, for static A, ifportup, pickwhashed and pickclosest with ECS.
//!
//! ```text
//! cargo build --release -p catalyst-dns --examples
//! target/release/examples/bench --duration 10 --out docs/benchmarks-dns.md
//! ```
//!
//! Needs `dnsperf`, `pdns_server` with the bind backend, and (for pickclosest on PowerDNS) the
//! GeoIP backend: `apt-get install dnsperf pdns-server pdns-backend-bind pdns-backend-geoip`.
//! Each case runs `--duration` seconds at full load (QPS), then 3 s at a fixed 20k QPS with
//! per-query latencies (p50/p99). Servers run as child processes on loopback ports and are
//! stopped by PID.

#![allow(
    clippy::doc_markdown,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    reason = "a measurement script"
)]

#[path = "../tests/common/mmdb.rs"]
#[allow(dead_code)]
mod mmdb;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

struct Args {
    duration: u64,
    clients: u32,
    /// Server threads, each count a separate run of every case: catalyst-dns `udp_workers`,
    /// PowerDNS `receiver-threads`.
    threads: Vec<usize>,
    out: Option<PathBuf>,
    bin: PathBuf,
    skip_pdns: bool,
    runs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench → target/<profile>/catalyst-dns
    let default_bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("catalyst-dns"))
        .context("locating catalyst-dns")?;
    let mut a = Args {
        duration: 10,
        clients: 4,
        threads: vec![1, 2],
        out: None,
        bin: std::env::var_os("CATALYST_DNS_BIN").map_or(default_bin, PathBuf::from),
        skip_pdns: false,
        runs: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--duration" => a.duration = val()?.parse()?,
            "--clients" => a.clients = val()?.parse()?,
            "--threads" | "--workers" => {
                let v = val()?;
                a.threads = v
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .with_context(|| {
                                format!("--threads `{v}`: `{t}` is not a thread count")
                            })
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--out" => a.out = Some(PathBuf::from(val()?)),
            "--bin" => a.bin = PathBuf::from(val()?),
            "--skip-pdns" => a.skip_pdns = true,
            "--runs" => a.runs = val()?.parse::<usize>()?.max(1),
            "-h" | "--help" => {
                println!(
                    "bench [--duration SECS] [--runs N] [--clients N] [--threads N[,N...]] [--out FILE.md] [--bin catalyst-dns] [--skip-pdns]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(a)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_ready(port: u16) -> anyhow::Result<()> {
    // A bare query for `ready.invalid. A`; any response means the server is up.
    let q = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'r', b'e', b'a', b'd', b'y', 7, b'i', b'n',
        b'v', b'a', b'l', b'i', b'd', 0, 0, 1, 0, 1,
    ];
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        s.send_to(&q, ("127.0.0.1", port))?;
        if s.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("server on port {port} did not answer")
}

const ZONE: &str = "$ORIGIN bench.test.
$TTL 300
@        IN SOA ns.bench.test. hm.bench.test. 1 3600 600 604800 60
@        IN NS  ns
ns       IN A   127.0.0.1
static   IN A   192.0.2.10
portup   IN LUA A \"ifportup(PORT, {'127.0.0.41', '127.0.0.42'})\"
whashed  IN LUA A \"pickwhashed({{10, '192.0.2.1'}, {20, '192.0.2.2'}, {70, '192.0.2.3'}})\"
closest  IN LUA A \"pickclosest({'192.0.2.1', '198.51.100.1', '203.0.113.1'})\"
random   IN LUA A \"pickrandom({'192.0.2.1', '192.0.2.2', '192.0.2.3'})\"
wrandom  IN LUA A \"pickwrandom({{10, '192.0.2.1'}, {20, '192.0.2.2'}, {70, '192.0.2.3'}})\"
loop     IN LUA A \";local s = 0 for i = 1, 3 do s = s + i end return '192.0.2.' .. s\"
format   IN LUA A \"string.format('192.0.2.%d', 7)\"
";

struct Case {
    name: &'static str,
    /// Which bar of issue 13 the case counts towards: `static`, `native` or `interpreter`.
    tier: &'static str,
    qname: &'static str,
    ecs: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        name: "static A",
        tier: "static",
        qname: "static.bench.test A",
        ecs: None,
    },
    Case {
        name: "ifportup",
        tier: "native",
        qname: "portup.bench.test A",
        ecs: None,
    },
    Case {
        name: "pickwhashed",
        tier: "native",
        qname: "whashed.bench.test A",
        ecs: None,
    },
    Case {
        name: "pickclosest + ECS",
        tier: "native",
        qname: "closest.bench.test A",
        // ECS 10.1.2.0/24: family 1, source 24, scope 0, address 10.1.2.
        ecs: Some("8:000118000a0102"),
    },
    Case {
        // Random answers are served from the choice cache (one slot per outcome, drawn per
        // query with the candidates' odds).
        name: "pickrandom (choice cache)",
        tier: "native",
        qname: "random.bench.test A",
        ecs: None,
    },
    Case {
        name: "pickwrandom (choice cache)",
        tier: "native",
        qname: "wrandom.bench.test A",
        ecs: None,
    },
    Case {
        // Outside the native subset: the embedded Lua interpreter on every query (never cached).
        name: "interpreter: for loop",
        tier: "interpreter",
        qname: "loop.bench.test A",
        ecs: None,
    },
    Case {
        name: "interpreter: string.format",
        tier: "interpreter",
        qname: "format.bench.test A",
        ecs: None,
    },
];

/// Median of each field over runs, plus the QPS range.
#[derive(Default, Clone, Copy)]
struct Summary {
    qps: f64,
    qps_min: f64,
    qps_max: f64,
    lost: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn summarize(r: &[Result]) -> Summary {
    Summary {
        qps: median(r.iter().map(|x| x.qps).collect()),
        qps_min: r.iter().map(|x| x.qps).fold(f64::INFINITY, f64::min),
        qps_max: r.iter().map(|x| x.qps).fold(0.0, f64::max),
        lost: median(r.iter().map(|x| x.lost).collect()),
        p50_ms: median(r.iter().map(|x| x.p50_ms).collect()),
        p99_ms: median(r.iter().map(|x| x.p99_ms).collect()),
        ok: r.iter().all(|x| x.ok),
    }
}

#[derive(Default, Clone, Copy)]
struct Result {
    qps: f64,
    lost: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: bool,
}

fn dnsperf(port: u16, dir: &Path, case: &Case, extra: &[&str]) -> anyhow::Result<String> {
    let qf = dir.join("queries.txt");
    std::fs::write(&qf, format!("{}\n", case.qname))?;
    let mut cmd = Command::new("dnsperf");
    cmd.args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(&qf)
        .args(extra);
    if let Some(e) = case.ecs {
        cmd.args(["-E", e]);
    }
    let out = cmd.output().context("running dnsperf")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn field(out: &str, key: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn measure(port: u16, dir: &Path, case: &Case, a: &Args) -> anyhow::Result<Result> {
    let out = dnsperf(
        port,
        dir,
        case,
        &[
            "-c",
            &a.clients.to_string(),
            "-l",
            &a.duration.to_string(),
            "-q",
            "200",
        ],
    )?;
    let qps = field(&out, "Queries per second:").context("dnsperf printed no QPS")?;
    let sent = field(&out, "Queries sent:").unwrap_or(0.0);
    let lost = field(&out, "Queries lost:").unwrap_or(0.0);
    let noerror = out.contains("NOERROR") && !out.contains("SERVFAIL");
    // Latency at a fixed, moderate rate so the distribution is the server's, not the queue's.
    let out = dnsperf(
        port,
        dir,
        case,
        &["-c", "1", "-l", "3", "-Q", "20000", "-v"],
    )?;
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
            * 1000.0
    };
    Ok(Result {
        qps,
        lost: if sent > 0.0 { lost / sent * 100.0 } else { 0.0 },
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        ok: noerror,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn pdns_version() -> String {
    let out = Command::new("pdns_server").arg("--version").output();
    out.ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout)
        })
        .and_then(|s| {
            s.lines()
                .find(|l| l.contains("PowerDNS Authoritative"))
                .map(|l| {
                    l.split("PowerDNS Authoritative Server")
                        .nth(1)
                        .unwrap_or("")
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
        })
        .unwrap_or_else(|| "unknown".into())
}

type Row = (&'static Case, Summary, Option<Summary>);

/// Start both servers with `threads` server threads each, warm them up, and measure every case.
fn run_config(
    a: &Args,
    dir: &Path,
    zone: &Path,
    city: &Path,
    geo: bool,
    threads: usize,
) -> anyhow::Result<Vec<Row>> {
    eprintln!("== {threads} server thread(s) each ==");
    let cport = free_port();
    let cfg = dir.join("catalyst-dns.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: [\"127.0.0.1:{cport}\"]\nudp_workers: {}\nzones:\n  - {{origin: bench.test, file: {}}}\n\
             geo: {{city: {}}}\nmetrics: {{listen: null}}\nreload: {{watch_interval_secs: 0}}\n",
            threads,
            zone.display(),
            city.display()
        ),
    )?;
    let cat = Proc(
        Command::new(&a.bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("catalyst-dns.log"))?)
            .spawn()
            .context("starting catalyst-dns")?,
    );
    wait_ready(cport)?;

    let mut pdns = None;
    let pport = free_port();
    if !a.skip_pdns {
        std::fs::write(
            dir.join("named.conf"),
            format!(
                "zone \"bench.test\" {{ type master; file \"{}\"; }};\n",
                zone.display()
            ),
        )?;
        std::fs::write(dir.join("geo-zones.yaml"), "domains: []\n")?;
        let launch = if geo {
            format!(
                "launch=bind,geoip\ngeoip-database-files=mmdb:{}\ngeoip-zones-file={}\n",
                city.display(),
                dir.join("geo-zones.yaml").display()
            )
        } else {
            "launch=bind\n".to_string()
        };
        std::fs::write(
            dir.join("pdns.conf"),
            format!(
                "{launch}bind-config={}\nenable-lua-records=shared\nlocal-address=127.0.0.1\nlocal-port={pport}\n\
                 socket-dir={}\ndaemon=no\nguardian=no\ndisable-syslog=yes\nedns-subnet-processing=yes\n\
                 webserver=no\nloglevel=3\nreceiver-threads={threads}\nreuseport=yes\nlua-health-checks-interval=1\n",
                dir.join("named.conf").display(),
                dir.display()
            ),
        )?;
        pdns = Some(Proc(
            Command::new("pdns_server")
                .arg(format!("--config-dir={}", dir.display()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("pdns.log"))?)
                .spawn()
                .context("starting pdns_server")?,
        ));
        wait_ready(pport)?;
        // PowerDNS starts health checks on the first query.
        let _ = dnsperf(pport, dir, &CASES[1], &["-n", "1"]);
    }
    std::thread::sleep(Duration::from_secs(3));
    // Warm-up, discarded: the first seconds of load on a fresh machine ran slower for whichever
    // server met them (the first case measured read 10 % below the same answer from the cache
    // later on), so both servers get the same 5 s of load before anything counts.
    for port in std::iter::once(cport).chain(pdns.is_some().then_some(pport)) {
        eprintln!("warm-up on port {port} ...");
        let _ = dnsperf(
            port,
            dir,
            &CASES[0],
            &["-c", &a.clients.to_string(), "-l", "5"],
        );
    }

    // Each case alternates the two servers `runs` times, the one that goes first alternating too
    // (no order bias); the table shows medians and the QPS range.
    let mut rows = Vec::new();
    for case in CASES {
        let mut cs = Vec::new();
        let mut ps = Vec::new();
        for run in 0..a.runs {
            let order: &[bool] = if run % 2 == 0 {
                &[true, false]
            } else {
                &[false, true]
            };
            for &catalyst in order {
                if catalyst {
                    eprintln!(
                        "{} (run {}/{}): catalyst-dns ...",
                        case.name,
                        run + 1,
                        a.runs
                    );
                    cs.push(measure(cport, dir, case, a)?);
                } else if pdns.is_some() {
                    eprintln!("{} (run {}/{}): PowerDNS ...", case.name, run + 1, a.runs);
                    ps.push(measure(pport, dir, case, a)?);
                }
            }
        }
        rows.push((
            case,
            summarize(&cs),
            (!ps.is_empty()).then(|| summarize(&ps)),
        ));
    }
    drop(cat);
    drop(pdns);
    Ok(rows)
}

/// One thread count's table and the bars of issue 13 from it.
fn table(md: &mut String, runs: usize, threads: usize, rows: &[Row]) {
    let _ = writeln!(
        md,
        "\n### {threads} server thread{} each\n\n\
         | case | catalyst-dns QPS | PowerDNS QPS | ratio | catalyst p50 / p99 (ms) | PowerDNS p50 / p99 (ms) |\n|---|---:|---:|---:|---:|---:|",
        if threads == 1 { "" } else { "s" }
    );
    let range = |r: &Summary| {
        if runs > 1 {
            format!(" ({:.0}–{:.0})", r.qps_min, r.qps_max)
        } else {
            String::new()
        }
    };
    let flag = |r: &Summary| {
        let mut f = String::new();
        if !r.ok {
            f.push_str(" (errors)");
        }
        if r.lost > 0.5 {
            let _ = write!(f, " ({:.1} % lost)", r.lost);
        }
        f
    };
    for (case, c, p) in rows {
        let (pq, ratio, pl) = match p {
            Some(p) => (
                format!("{:.0}{}{}", p.qps, range(p), flag(p)),
                format!("{:.2}×", c.qps / p.qps.max(1.0)),
                format!("{:.3} / {:.3}", p.p50_ms, p.p99_ms),
            ),
            None => ("—".into(), "—".into(), "—".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {:.0}{}{} | {} | {} | {:.3} / {:.3} | {} |",
            case.name,
            c.qps,
            range(c),
            flag(c),
            pq,
            ratio,
            c.p50_ms,
            c.p99_ms,
            pl
        );
    }
    // The bars of issue 13, from this table: the lowest ratio of each kind of record.
    let lowest = |tier: &str| {
        rows.iter()
            .filter(|(case, _, _)| case.tier == tier)
            .filter_map(|(_, c, p)| p.as_ref().map(|p| c.qps / p.qps.max(1.0)))
            .fold(f64::INFINITY, f64::min)
    };
    let bar = |tier: &str, want: f64| {
        let got = lowest(tier);
        if got.is_finite() {
            format!(
                "{tier} {got:.2}× (bar ≥ {want}×: {})",
                if got >= want { "met" } else { "not met" }
            )
        } else {
            format!("{tier} — (no PowerDNS figure)")
        }
    };
    let _ = writeln!(
        md,
        "\nLowest ratio per kind, {threads} thread{} each: {}; {}; {}.",
        if threads == 1 { "" } else { "s" },
        bar("static", 1.25),
        bar("native", 2.5),
        bar("interpreter", 1.0)
    );
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    for tool in ["dnsperf"]
        .into_iter()
        .chain((!a.skip_pdns).then_some("pdns_server"))
    {
        if !have(tool) {
            bail!(
                "`{tool}` is required: apt-get install dnsperf pdns-server pdns-backend-bind pdns-backend-geoip"
            );
        }
    }
    if !a.bin.exists() {
        bail!(
            "{} not found: cargo build --release -p catalyst-dns (or pass --bin)",
            a.bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("catalyst-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // ifportup target: 127.0.0.41 accepts, 127.0.0.42 has nothing listening.
    let tport = free_port();
    let target = TcpListener::bind(("127.0.0.41", tport)).context("binding the ifportup target")?;
    std::thread::spawn(move || {
        for c in target.incoming() {
            drop(c);
        }
    });
    let zone = dir.join("bench.test.zone");
    std::fs::write(&zone, ZONE.replace("PORT", &tport.to_string()))?;
    let city = dir.join("city.mmdb");
    std::fs::write(
        &city,
        mmdb::build(
            "GeoIP2-City",
            &[
                (
                    Ipv4Addr::new(192, 0, 2, 0),
                    24,
                    mmdb::city("NL", "EU", "NH", 52.37, 4.89),
                ),
                (
                    Ipv4Addr::new(198, 51, 100, 0),
                    24,
                    mmdb::city("US", "NA", "NY", 40.71, -74.0),
                ),
                (
                    Ipv4Addr::new(203, 0, 113, 0),
                    24,
                    mmdb::city("AU", "OC", "NSW", -33.87, 151.21),
                ),
                (
                    Ipv4Addr::new(10, 1, 0, 0),
                    16,
                    mmdb::city("DE", "EU", "BE", 52.52, 13.40),
                ),
            ],
        ),
    )?;

    let geo = Path::new("/usr/lib/x86_64-linux-gnu/pdns/libgeoipbackend.so").exists();
    let mut tables = Vec::new();
    for &threads in &a.threads {
        let rows = run_config(&a, &dir, &zone, &city, geo, threads)?;
        tables.push((threads, rows));
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "## catalyst-dns vs PowerDNS {} (LUA records)\n",
        pdns_version()
    );
    let _ = writeln!(
        md,
        "Machine: {} × {}; dnsperf 2.10, `-c {}` clients, {} s per case, both servers on loopback \
         beside the load generator. catalyst-dns: `udp_workers` = the thread count below; \
         PowerDNS: bind backend{}, `enable-lua-records=shared`, `receiver-threads` = the thread \
         count below, `reuseport=yes`.",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model(),
        a.clients,
        a.duration,
        if geo {
            " + GeoIP backend (same MMDB file)"
        } else {
            ""
        }
    );
    for (threads, rows) in &tables {
        table(&mut md, a.runs, *threads, rows);
    }
    let _ = writeln!(
        md,
        "\n### Method\n\n\
         - One zone file (`bench.test`) served by both servers: a static A record, \
         `ifportup(port, {{'127.0.0.41', '127.0.0.42'}})` (the driver listens on .41, nothing on .42), \
         `pickwhashed` over three weighted addresses, `pickclosest` over three addresses with a \
         MaxMind-format city database the driver writes (both servers read the same file), and \
         `pickrandom` over three addresses and `pickwrandom` over three weighted ones (random \
         answers: catalyst-dns serves them from its choice cache, one encoded answer per outcome \
         drawn per query with the candidates' odds; PowerDNS evaluates them per query) — and two bodies outside the native subset (a `for` \
         loop with locals, `string.format`) that catalyst-dns runs in its embedded Lua 5.1 \
         interpreter on every query (interpreter answers are never cached), against PowerDNS \
         `enable-lua-records=shared` on the same records. Native rows count towards the \
         ≥ 2.5× bar, interpreter rows towards ≥ 1.0×, static towards ≥ 1.25×.\n\
         - Per case and run: `dnsperf -c {clients} -q 200 -l {dur}` for throughput (QPS, median of \
         {runs} run(s), range in brackets), then `dnsperf -c 1 -Q 20000 -l 3 -v` for per-query \
         latency (p50/p99 at a fixed 20k QPS, so they describe the server rather than a saturated \
         queue). The pickclosest case sends ECS 10.1.2.0/24 (`-E 8:000118000a0102`).\n\
         - Thread counts: every case runs once per thread count ({threads}), each server with that \
         many server threads (catalyst-dns `udp_workers`, PowerDNS `receiver-threads`; PowerDNS \
         runs Lua in its distributor threads, 3 by default, either way), both restarted per count. \
         dnsperf keeps one of the machine's cores busy, so on 2 cores 1 thread each is the \
         configuration that fits what the servers really have; with 2 each, three busy threads \
         share two cores and both servers pay for the context switches.\n\
         - Both servers first get 5 s of load on the static record (discarded). Then the servers \
         alternate per case and run, the one that goes first alternating too, on the same cores as \
         dnsperf; expect ±10–20 % run-to-run noise in QPS on a 2-core machine.\n\
         - PowerDNS runs Lua for every LUA query (it never caches LUA answers); catalyst-dns \
         evaluates the compiled record once per (question, client class, health version) and serves \
         repeats from its per-worker answer cache, which is why the LUA cases cost about what a \
         static answer costs.\n\
         - Reproduce: `cargo build --release -p catalyst-dns --bins --examples && \
         target/release/examples/bench --duration {dur} --runs {runs} --threads {threads_arg} --out docs/benchmarks-dns.md`.",
        clients = a.clients,
        dur = a.duration,
        runs = a.runs,
        threads = a
            .threads
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        threads_arg = a
            .threads
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("{md}");
    if let Some(out) = &a.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
