//! `cargo xtask bench flows`: the flow pipeline (`catalyst-agent bench-flows`: events/s decoded
//! and enriched on one core, ingest with 0, 1 and 16 concurrent `--last 65536` readers, `GetFlows` follow throughput, a full ring's history straight from
//! one agent and through `catalyst-agent relay`, alternating in one run) and the agent's
//! footprint: the real
//! release agent with 1,000 endpoints (veth pairs in a namespace of its own, programs attached
//! to the endpoint side of each; the kernels here have no `dummy` driver) and its 65,536-flow
//! ring filled by real traffic through the datapath, measured from `/proc/<pid>/status`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use catalyst_tests::{
    agent::{AgentProcess, metric_value, uninstall},
    lab::{self, in_netns},
};

use super::{measured_on, sh, splice_section};
use crate::{root, setup};

/// Namespace holding the 1,000 endpoint interfaces (not the lab's; nothing else uses it).
const NS: &str = "cat-bench-rss";
const ENDPOINTS: u32 = 1_000;
const RING: u32 = 65_536;
/// Distinct flows sent: more than the ring holds, so it is full.
const FLOWS: u32 = 70_000;
const METRICS: &str = "127.0.0.1:19967";
const PIN: &str = "/sys/fs/bpf/catalyst-bench-rss";
const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const FIRST_PORT: u16 = 20_000;

fn endpoint_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Runs the flow benchmarks and writes the `flows` section of docs/benchmarks.md.
pub fn flows() -> anyhow::Result<()> {
    setup::setup(true, true)?;
    let mut c = setup::cargo();
    c.args(["build", "-q", "--release", "-p", "catalyst-agent"]);
    sh(&mut c)?;
    let bin = root().join("target/release/catalyst-agent");

    eprintln!("bench: flow pipeline (bench-flows, 2,000,000 synthetic events, one core)");
    let out = sh(Command::new(&bin).args(["bench-flows", "--json"]))?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("bench-flows printed no figures")?;
    let p: serde_json::Value = serde_json::from_str(line)?;

    eprintln!("bench: agent RSS, {ENDPOINTS} endpoints, {RING}-flow ring filled by real traffic");
    let lock = lab::lock()?;
    let rss = footprint(&bin);
    let _ = teardown();
    drop(lock);
    let rss = rss?;

    let mut md = String::new();
    writeln!(md, "{}", measured_on(", release build"))?;
    writeln!(md, "| measure | value | bar |")?;
    writeln!(md, "|---|---|---|")?;
    let rate = |k: &str| p[k].as_f64().unwrap_or_default() / 1e6;
    writeln!(
        md,
        "| ingest: decode, metrics, signal counts, flow ring (events/s) | {:.2} M | |",
        rate("ingest_events_per_s")
    )?;
    writeln!(
        md,
        "| decode + enrich into the flow record (events/s, one core) | {:.2} M | ≥ 0.5 M |",
        rate("decode_enrich_events_per_s")
    )?;
    writeln!(
        md,
        "| decode + enrich + `flow.Flow` message (events/s) | {:.2} M | |",
        rate("decode_enrich_message_events_per_s")
    )?;
    // Ingest while 0, 1 and 16 readers take `--last 65536` snapshots in a loop (same run).
    for r in p["ingest_with_last_readers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        writeln!(
            md,
            "| ingest with {} concurrent `--last {RING}` readers (events/s; snapshots taken) | {:.2} M ({}) | |",
            r["readers"],
            r["ingest_events_per_s"].as_f64().unwrap_or_default() / 1e6,
            r["snapshots_taken"]
        )?;
    }
    writeln!(
        md,
        "| `GetFlows` follow to a client over TCP (flows/s; delivered / reported lost) | {:.2} M ({} / {}) | |",
        rate("follow_flows_per_s"),
        p["follow_delivered"],
        p["follow_lost"]
    )?;
    writeln!(
        md,
        "| `GetFlows` history of a full ring, one agent direct (flows/s) | {:.2} M | |",
        rate("history_direct_flows_per_s")
    )?;
    writeln!(
        md,
        "| the same through `catalyst-agent relay` (flows/s; cost vs direct, same run) | {:.2} M ({:.1} %) | cost ≤ 20 % |",
        rate("history_relay_flows_per_s"),
        p["relay_cost_percent"].as_f64().unwrap_or_default()
    )?;
    writeln!(
        md,
        "| two agents (half the flows each, interleaved) merged by the relay, newest {RING} of both (flows/s; cost vs one agent direct, same run) | {:.2} M ({:.1} %) | cost ≤ 20 % |",
        rate("history_relay_two_agents_flows_per_s"),
        p["relay_two_agents_cost_percent"]
            .as_f64()
            .unwrap_or_default()
    )?;
    writeln!(
        md,
        "| RSS the full 65,536-flow ring adds (in-process, KiB) | {} | |",
        p["ring_rss_kib"]
    )?;
    writeln!(
        md,
        "| **agent RSS**, {ENDPOINTS} endpoints, ring full ({} flows held, {} events processed, {} lost) | **{:.1} MiB** (anon {:.1}, file {:.1}, shmem {:.1}) | ≤ 64 MiB |",
        rss.ring_flows,
        rss.processed,
        rss.lost,
        kib_to_mib(rss.vm_rss),
        kib_to_mib(rss.rss_anon),
        kib_to_mib(rss.rss_file),
        kib_to_mib(rss.rss_shmem)
    )?;
    writeln!(
        md,
        "| agent peak RSS (VmHWM) | {:.1} MiB | |",
        kib_to_mib(rss.vm_hwm)
    )?;
    writeln!(
        md,
        "| agent start to datapath in sync, {ENDPOINTS} endpoints attached | {:.1} s | |",
        rss.start_s
    )?;
    println!("{md}");
    std::fs::create_dir_all(root().join("target/bench"))?;
    std::fs::write(root().join("target/bench/flows.md"), &md)?;
    splice_section("flows", &md)
}

#[expect(clippy::cast_precision_loss, reason = "KiB to MiB for display")]
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[expect(
    clippy::cast_sign_loss,
    reason = "Prometheus counters and gauges read back, never negative"
)]
fn count(v: f64) -> u64 {
    v as u64
}

#[derive(Debug, Default)]
struct Footprint {
    vm_rss: u64,
    vm_hwm: u64,
    rss_anon: u64,
    rss_file: u64,
    rss_shmem: u64,
    ring_flows: u64,
    processed: u64,
    lost: u64,
    start_s: f64,
}

fn ip_batch(lines: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("catalyst-bench-rss-{}.ip", std::process::id()));
    std::fs::write(&path, lines)?;
    let r = sh(Command::new("ip").args(["-n", NS, "-batch"]).arg(&path));
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
}

fn teardown() -> anyhow::Result<()> {
    let _ = uninstall(Path::new(PIN));
    sh(Command::new("ip").args(["netns", "del", NS]))?;
    Ok(())
}

fn footprint(bin: &Path) -> anyhow::Result<Footprint> {
    let _ = teardown();
    sh(Command::new("ip").args(["netns", "add", NS]))?;
    let mut batch = format!("link set lo up\naddr add {SOURCE}/32 dev lo\n");
    for i in 0..ENDPOINTS {
        let _ = writeln!(
            batch,
            "link add rss{i} type veth peer name rsp{i}\nlink set rss{i} arp off up\nlink set rsp{i} up\nroute add {}/32 dev rss{i} src {SOURCE}",
            endpoint_addr(i)
        );
    }
    ip_batch(&batch)?;

    let dir = std::env::temp_dir().join(format!("catalyst-bench-rss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(
        dir.join("policies/world-udp.yaml"),
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: bench-world-udp}}\nspec:\n  endpointSelector: {{}}\n  ingress:\n    - fromEntities: [world]\n      toPorts: [{{ports: [{{port: \"{FIRST_PORT}\", endPort: {}, protocol: UDP}}]}}]\n",
            FIRST_PORT + 127
        ),
    )?;
    let mut cfg = format!(
        "node: rss-node\npin_path: {PIN}\npolicy_paths: [policies]\nflow_log: none\nobserver: {{listen_address: null, unix_socket: null, ring_capacity: {RING}}}\nmetrics: {{listen_address: \"{METRICS}\"}}\nendpoints:\n"
    );
    for i in 0..ENDPOINTS {
        let app = format!("app-{}", i % 50);
        let _ = writeln!(
            cfg,
            "  - {{name: pod-{i}, namespace: ns-{}, interface: rss{i}, addresses: [{}], labels: {{app: {app}, openova.io/organization: acme, openova.io/environment: bench, openova.io/application: {app}}}}}",
            i % 16,
            endpoint_addr(i)
        );
    }
    std::fs::write(dir.join("agent.yaml"), cfg)?;

    let started = Instant::now();
    let mut agent = AgentProcess::start_in(
        NS,
        bin,
        &dir.join("agent.yaml"),
        Path::new(PIN),
        // Standalone: the 7,000 start-up signals would be logged at info.
        &[("CATALYST_LOG", "info,catalyst_agent::signals=warn")],
    )?;
    let start_s = started.elapsed().as_secs_f64();
    let pid = agent.pid().context("agent pid")?;

    // Real traffic: one UDP datagram per flow to FLOWS distinct (endpoint, port) pairs, each a
    // new connection with a policy verdict event; paced so the 1 MiB event ring keeps up.
    in_netns(NS, || -> std::io::Result<()> {
        let sock = UdpSocket::bind((SOURCE, 0))?;
        for n in 0..FLOWS {
            let ep = n % ENDPOINTS;
            let port = FIRST_PORT + (n / ENDPOINTS) as u16;
            sock.send_to(b"catalyst", (endpoint_addr(ep), port))?;
            if n % 1_000 == 999 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    })??;
    let scrape = || -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        in_netns(NS, || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(METRICS)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?
        .map_err(Into::into)
    };
    let deadline = Instant::now() + Duration::from_mins(1);
    let text = loop {
        let text = scrape()?;
        if metric_value(&text, "catalyst_flow_ring_flows") >= f64::from(RING) - 16.0 {
            break text;
        }
        if Instant::now() > deadline {
            bail!(
                "the ring did not fill within 60 s (holds {})",
                metric_value(&text, "catalyst_flow_ring_flows")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let sum = |prefix: &str| -> u64 {
        let v = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        count(v)
    };
    // Let the signal engine close a window over the full ring, then read the footprint.
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let fp = Footprint {
        vm_rss: field("VmRSS:"),
        vm_hwm: field("VmHWM:"),
        rss_anon: field("RssAnon:"),
        rss_file: field("RssFile:"),
        rss_shmem: field("RssShmem:"),
        ring_flows: count(metric_value(&text, "catalyst_flow_ring_flows")),
        processed: sum("hubble_flows_processed_total{"),
        lost: sum("hubble_lost_events_total{"),
        start_s,
    };
    agent.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{fp:?}");
    Ok(fp)
}
