//! Answer-cache behaviour under a cache-busting flood (issue 16 item 5), for
//! `cargo xtask bench dns`: catalyst-dns (release) on loopback with wildcard records; dnsperf
//! first with 20,000 hot names only (25 asks each), then with the same hot names interleaved 1:1 with 500,000
//! unique random labels (each asked once: every one is a miss that enters the cache). The cache
//! hit and miss counters from `/metrics` give the hit rate of each run; since every flood query
//! misses, the hot names' own hit rate in the mixed run is `hits / hot queries`.
//!
//! Prints one JSON line of figures. Needs dnsperf; `--bin` defaults to the catalyst-dns next to
//! this example.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Hot names clients repeat.
const HOT: u32 = 20_000;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = u.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sum of the counter `name` in the metrics text of `127.0.0.1:port`.
fn counter(port: u16, name: &str) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

fn field(out: &str, key: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One dnsperf run over `file` (each line once, `-n 1`); QPS and the cache counters' deltas.
fn run(dns: u16, metrics: u16, file: &Path) -> anyhow::Result<(f64, f64, f64, f64)> {
    let h0 = counter(metrics, "catalyst_dns_cache_hits_total")?;
    let m0 = counter(metrics, "catalyst_dns_cache_misses_total")?;
    let out = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &dns.to_string(), "-d"])
        .arg(file)
        .args(["-n", "1", "-c", "4", "-q", "200"])
        .output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    let out = String::from_utf8_lossy(&out.stdout);
    let qps = field(&out, "Queries per second:").context("dnsperf printed no QPS")?;
    let sent = field(&out, "Queries sent:").unwrap_or(0.0);
    let hits = counter(metrics, "catalyst_dns_cache_hits_total")? - h0;
    let misses = counter(metrics, "catalyst_dns_cache_misses_total")? - m0;
    Ok((qps, sent, hits, misses))
}

fn main() -> anyhow::Result<()> {
    let mut bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("catalyst-dns"))
        .unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => bin = PathBuf::from(args.next().context("--bin needs a value")?),
            other => bail!("unknown argument `{other}` (--bin PATH)"),
        }
    }
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p catalyst-dns",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("catalyst-cache-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("flood.test.zone"),
        "$ORIGIN flood.test.\n$TTL 300\n@ IN SOA ns.flood.test. hm.flood.test. 1 3600 600 604800 60\n\
         @ IN NS ns\nns IN A 127.0.0.1\n*.hot IN A 192.0.2.10\n*.rnd IN A 192.0.2.20\n",
    )?;
    let (dns, metrics) = (free_port(), free_port());
    let cfg = dir.join("catalyst-dns.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: [\"127.0.0.1:{dns}\"]\nzones:\n  - {{origin: flood.test, file: {}}}\n\
             metrics: {{listen: \"127.0.0.1:{metrics}\"}}\nreload: {{watch_interval_secs: 0}}\n",
            dir.join("flood.test.zone").display()
        ),
    )?;
    let _server = Proc(
        Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("catalyst-dns.log"))?)
            .spawn()
            .context("starting catalyst-dns")?,
    );
    let t0 = Instant::now();
    while counter(metrics, "catalyst_dns_cache_hits_total").is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("catalyst-dns did not start (log in {})", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Hot only: 20,000 names (a tenth of the two workers' capacity), 25 passes (500,000
    // queries).
    let hot = dir.join("hot.txt");
    let mut text = String::new();
    for _ in 0..25 {
        for h in 0..HOT {
            let _ = writeln!(text, "h{h}.hot.flood.test A");
        }
    }
    std::fs::write(&hot, &text)?;
    // Mixed: each hot ask followed by one never-seen random label (500,000 of them).
    let mixed = dir.join("mixed.txt");
    let mut text = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..500_000u32 {
        let _ = writeln!(text, "h{}.hot.flood.test A", i % HOT);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(text, "r{x:016x}.rnd.flood.test A");
    }
    std::fs::write(&mixed, &text)?;
    let (hot_qps, hot_sent, hot_hits, hot_misses) = run(dns, metrics, &hot)?;
    let (mix_qps, mix_sent, mix_hits, mix_misses) = run(dns, metrics, &mixed)?;
    let rate = |h: f64, m: f64| if h + m > 0.0 { h / (h + m) } else { 0.0 };
    println!(
        "{}",
        serde_json::json!({
            "hot_qps": hot_qps.round(),
            "hot_queries": hot_sent,
            "hot_hit_rate": (rate(hot_hits, hot_misses) * 1000.0).round() / 1000.0,
            "mixed_qps": mix_qps.round(),
            "mixed_queries": mix_sent,
            "mixed_hit_rate": (rate(mix_hits, mix_misses) * 1000.0).round() / 1000.0,
            "mixed_hot_hit_rate": ((mix_hits / (mix_sent / 2.0).max(1.0)) * 1000.0).round() / 1000.0,
            "flood_names": 500_000,
            "hot_names": HOT,
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
