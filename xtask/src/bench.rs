//! `cargo xtask bench datapath`: per-packet cost by `BPF_PROG_TEST_RUN`, and end-to-end latency,
//! UDP rate and TCP connection rate through the lab with no filtering, with the agent, and with
//! the same rules in nftables (linear chain + conntrack fast path; set + conntrack), at 10, 1,000
//! and 10,000 rules, in one run. Figures go to `docs/benchmarks.md` (between markers) and
//! `target/bench/datapath.json`.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use catalyst_tests::{
    agent::{AgentProcess, uninstall},
    lab::{self, PODS, in_netns, node_ns, pod},
};

use crate::{root, setup};

mod controllers;
mod empty_tc;
mod flows;
pub use self::{controllers::controllers, flows::flows};

/// The port every benchmark flow uses; the N-rule sets put it last.
const PORT: u16 = 30_000;
const RULE_COUNTS: [u32; 3] = [10, 1_000, 10_000];
const SECS: u32 = 2;

/// End-to-end rounds: 5, or `CATALYST_BENCH_ROUNDS` (a positive integer).
fn rounds() -> anyhow::Result<usize> {
    match std::env::var("CATALYST_BENCH_ROUNDS") {
        Err(_) => Ok(5),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("CATALYST_BENCH_ROUNDS=`{v}`: expected a positive integer")),
    }
}

/// Median of the samples (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Filter {
    None,
    /// A two-instruction TC program at the agent's hooks: the floor of the hook.
    Empty,
    Agent(u32),
    /// The agent with its process confined to CPU 1 (the traffic runs on CPU 0): the datapath's
    /// own cost without the agent's userspace competing for the benchmark's CPU.
    AgentOffCpu(u32),
    /// The agent with only drop events (`bpf_events: {policy_verdict: false, trace: false}`):
    /// enforcement without the flow visibility of allowed traffic.
    AgentDropEvents(u32),
    NftChain(u32),
    NftSet(u32),
}

impl Filter {
    /// Whether the filter runs BPF programs at the hooks (the empty classifier or the agent's).
    fn has_programs(self) -> bool {
        matches!(
            self,
            Self::Empty | Self::Agent(_) | Self::AgentDropEvents(_) | Self::AgentOffCpu(_)
        )
    }

    fn label(self) -> String {
        match self {
            Self::None => "no filtering".into(),
            Self::Empty => "empty classifier (TCX, the agent's hooks)".into(),
            Self::Agent(n) => format!("catalyst-agent, {n} rules"),
            Self::AgentOffCpu(n) => format!("catalyst-agent, {n} rules, agent process on CPU 1"),
            Self::AgentDropEvents(n) => {
                format!("catalyst-agent, {n} rules, drop events only (`bpf_events`)")
            }
            Self::NftChain(n) => format!("nftables chain + ct, {n} rules"),
            Self::NftSet(n) => format!("nftables set + ct, {n} rules"),
        }
    }

    /// Short name for `CATALYST_BENCH_FILTERS`: `none`, `empty`, `agent-N`, `chain-N`, `set-N`.
    fn key(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Empty => "empty".into(),
            Self::Agent(n) => format!("agent-{n}"),
            Self::AgentOffCpu(n) => format!("agent-cpu1-{n}"),
            Self::AgentDropEvents(n) => format!("agent-drops-{n}"),
            Self::NftChain(n) => format!("chain-{n}"),
            Self::NftSet(n) => format!("set-{n}"),
        }
    }
}

/// The end-to-end filters `CATALYST_BENCH_FILTERS` (comma-separated [`Filter::key`]s) selects,
/// for quick comparisons while working on the datapath; `None` when unset (every filter, and
/// the figures go into docs/benchmarks.md).
fn selected_filters() -> Option<Vec<String>> {
    std::env::var("CATALYST_BENCH_FILTERS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
}

/// Runs one end-to-end measure; with `CATALYST_BENCH_PERF=<dir>` under `perf record -a -g` on
/// the measured CPU (0), written to `<dir>/<filter>-r<round>-<measure>.data` (for `perf report`;
/// the figure of a profiled run is slower than an unprofiled one and is not for the docs).
fn profiled<T>(
    tag: &str,
    measure: &str,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let Ok(dir) = std::env::var("CATALYST_BENCH_PERF") else {
        return run();
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("CATALYST_BENCH_PERF={dir}"))?;
    let out = Path::new(&dir).join(format!("{tag}-{measure}.data"));
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-g", "-C", "0", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf (apt-get install linux-perf)")?;
    std::thread::sleep(Duration::from_millis(200));
    let res = run();
    // SIGINT: perf writes its file and exits.
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(i32::try_from(perf.id()).unwrap_or(0), libc::SIGINT) };
    let _ = perf.wait();
    res
}

/// Runs and run time of the filter's programs over one measure (the kernel's BPF statistics).
#[derive(Clone, Copy, Debug, Default)]
struct ProgTime {
    /// Program runs (packets at the hooks), all hooks together.
    runs: u64,
    /// Time in the programs (ns), all hooks together.
    ns: u64,
}

impl ProgTime {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn ns_per_run(self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ns as f64 / self.runs as f64
        }
    }
}

/// Runs one measure with `kernel.bpf_stats_enabled` on; returns its result and the run count and
/// run time of the catalyst programs (the agent's and the empty classifier) over it.
fn with_bpf_stats<T>(run: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, ProgTime)> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    // Left as found afterwards (an operator may have it on).
    let was = std::fs::read_to_string(KNOB).unwrap_or_else(|_| "0".into());
    std::fs::write(KNOB, "1").with_context(|| format!("cannot enable BPF statistics ({KNOB})"))?;
    let before = prog_time();
    let res = run();
    let after = prog_time();
    let _ = std::fs::write(KNOB, was.trim());
    let before = before?;
    let mut t = ProgTime::default();
    for (id, a) in after? {
        let b = before.get(&id).copied().unwrap_or_default();
        t.runs += a.runs.saturating_sub(b.runs);
        t.ns += a.ns.saturating_sub(b.ns);
    }
    Ok((res?, t))
}

/// Run count and run time of every loaded program whose name starts with `catalyst_`, by id.
fn prog_time() -> anyhow::Result<std::collections::BTreeMap<u64, ProgTime>> {
    let out = sh(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool -j prog show")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("catalyst_"))
        })
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                ProgTime {
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect())
}

/// CPU time (user + system, all threads) of process `pid` so far, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).map_or(100.0, f64::from);
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    latency_us: f64,
    udp_pps: f64,
    conn_per_s: f64,
    /// The agent's own CPU use while the figures were measured (% of one CPU), agent rows only.
    agent_cpu_pct: Option<f64>,
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Runs the datapath benchmark.
pub fn datapath() -> anyhow::Result<()> {
    setup::setup(true, true)?;
    setup::cargo_build(false)?;
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    eprintln!("bench: per-packet cost by BPF_PROG_TEST_RUN");
    let mut c = setup::cargo();
    c.args([
        "run",
        "-q",
        "-p",
        "catalyst-agent",
        "--example",
        "datapath_bench",
    ]);
    let test_run = sh(&mut c)?;
    let (floor_repeated, floor_single) = empty_tc::test_run_floor(200_000, 20_000)?;

    eprintln!("bench: end to end (sockperf ping-pong, sockperf UDP throughput, TCP connects)");
    let lock = lab::lock()?;
    let result = end_to_end();
    let _ = lab::down();
    drop(lock);
    let (rows, in_situ) = result?;

    let mut md = String::new();
    writeln!(md, "{}", measured_on(""))?;
    writeln!(
        md,
        "### Per-packet cost (BPF_PROG_TEST_RUN, 100,000 conntrack entries)\n"
    )?;
    writeln!(
        md,
        "| policy entries | established flow (ns/packet) | bar | new TCP flow, SYN (ns/packet) | new UDP flow (ns/packet) | bar | new TCP flow at the second local endpoint (ns/packet) | raw single runs: new TCP / new UDP / second endpoint / established (ns) | events lost |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for line in test_run.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).context("datapath_bench output")?;
        let f = |k: &str| v[k].as_f64().unwrap_or_default();
        // A lost event skipped its write: the new-flow figures of that row are too low.
        let lost = v["events_lost"].as_u64().unwrap_or_default();
        let lost = if lost == 0 {
            "0".to_owned()
        } else {
            format!("{lost} (new-flow figures invalid)")
        };
        writeln!(
            md,
            "| {} | {} | ≤ 100 | {:.0} | {:.0} | ≤ 250 | {:.0} | {:.0} / {:.0} / {:.0} / {:.0} | {lost} |",
            v["policy_entries"],
            v["established_ns"],
            f("new_flow_ns"),
            f("new_udp_flow_ns"),
            f("second_side_ns"),
            f("new_flow_single_run_ns"),
            f("new_udp_flow_single_run_ns"),
            f("second_side_single_run_ns"),
            f("established_single_run_ns")
        )?;
    }
    writeln!(
        md,
        "\nThe harness's own cost, included in every figure above: the empty classifier (two \
         instructions) on the same kind of packet takes {floor_repeated:.0} ns per run when run \
         200,000 times in one call and {floor_single:.0} ns as a single run (the mean of 20,000).\n"
    )?;
    writeln!(
        md,
        "### End to end (client pod → node → server pod; clients and servers pinned to CPU 0; median of {} interleaved rounds)\n",
        rounds()?
    )?;
    writeln!(
        md,
        "| filter | ping-pong latency (µs, one way) | UDP 64 B one-way (packets/s) | new TCP connections/s | agent CPU while measured (% of one CPU) |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    let base = rows[0].1;
    for (f, fig) in &rows {
        writeln!(
            md,
            "| {} | {:.2} ({:+.1} %) | {:.0} ({:+.1} %) | {:.0} ({:+.1} %) | {} |",
            f.label(),
            fig.latency_us,
            pct(fig.latency_us, base.latency_us),
            fig.udp_pps,
            pct(fig.udp_pps, base.udp_pps),
            fig.conn_per_s,
            pct(fig.conn_per_s, base.conn_per_s),
            fig.agent_cpu_pct
                .map_or_else(|| "–".to_owned(), |c| format!("{c:.1}"))
        )?;
    }
    floor_table(&mut md, &rows)?;
    in_situ_table(&mut md, &in_situ)?;
    println!("{md}");
    if selected_filters().is_some() {
        eprintln!("bench: CATALYST_BENCH_FILTERS is set: docs/benchmarks.md left as it is");
        return Ok(());
    }
    std::fs::write(out_dir.join("datapath.md"), &md)?;
    splice_docs(&md)?;
    Ok(())
}

/// The agent's rows against the empty classifier's (the floor of the hook), with the bar.
fn floor_table(md: &mut String, rows: &[(Filter, Figures)]) -> anyhow::Result<()> {
    let Some(&(_, floor)) = rows.iter().find(|(f, _)| *f == Filter::Empty) else {
        return Ok(());
    };
    writeln!(
        md,
        "\n### catalyst-agent against the empty classifier (bar: within 5 % on each)\n"
    )?;
    writeln!(
        md,
        "| rules | latency vs floor | UDP rate vs floor | connections/s vs floor | within 5 % |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for (f, fig) in rows {
        let n = match f {
            Filter::Agent(n) => n.to_string(),
            Filter::AgentOffCpu(n) => format!("{n} (agent process on CPU 1)"),
            Filter::AgentDropEvents(n) => format!("{n} (drop events only)"),
            _ => continue,
        };
        let lat = pct(fig.latency_us, floor.latency_us);
        let udp = pct(fig.udp_pps, floor.udp_pps);
        let conn = pct(fig.conn_per_s, floor.conn_per_s);
        // Latency may not grow by more than 5 %, the rates may not fall by more than 5 %.
        let met = lat <= 5.0 && udp >= -5.0 && conn >= -5.0;
        writeln!(
            md,
            "| {n} | {lat:+.1} % | {udp:+.1} % | {conn:+.1} % | {} |",
            if met { "yes" } else { "no" }
        )?;
    }
    Ok(())
}

/// The programs' own run time in situ (kernel BPF statistics), net of the empty classifier's,
/// per packet (latency, UDP: two hooks per packet) and per connection, and its share of the
/// empty classifier's time per packet or connection: the part of the end-to-end gap the
/// programs' instructions explain.
fn in_situ_table(md: &mut String, rows: &[InSituRow]) -> anyhow::Result<()> {
    let Some(&(_, floor, floor_t)) = rows.iter().find(|(f, _, _)| *f == Filter::Empty) else {
        return Ok(());
    };
    writeln!(
        md,
        "\n### In situ: time in the programs (kernel BPF statistics, one extra round)\n\n\
         `kernel.bpf_stats_enabled` times every run of every program (it adds two clock reads \
         per run, to the empty classifier too; the net figures subtract the empty classifier's \
         time per run). Per packet: the latency and UDP packets cross two hooks (client egress, \
         server ingress); per connection: every run at both hooks during the connect loop \
         divided by the connections made. Share: of the empty classifier's time per packet \
         (one-way latency; 1 / UDP rate) or per connection (1 / connections/s) in this round.\n"
    )?;
    writeln!(
        md,
        "| filter | latency: ns per run | net per packet (share) | UDP: ns per run | net per packet (share) | connect: ns per run | runs per connection | net per connection (share) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    let empty = floor_t.map(ProgTime::ns_per_run);
    for (f, fig, t) in rows {
        let net_packet = |i: usize| 2.0 * (t[i].ns_per_run() - empty[i]);
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let runs = t[2].runs as f64;
        let conns = fig.conn_per_s * f64::from(SECS);
        let net_conn = if conns > 0.0 {
            runs * (t[2].ns_per_run() - empty[2]) / conns
        } else {
            0.0
        };
        let lat_share = net_packet(0) / (floor.latency_us * 1000.0) * 100.0;
        let udp_share = net_packet(1) * floor.udp_pps / 1e9 * 100.0;
        let conn_share = net_conn * floor.conn_per_s / 1e9 * 100.0;
        writeln!(
            md,
            "| {} | {:.1} | {:.0} ns ({lat_share:.1} %) | {:.1} | {:.0} ns ({udp_share:.1} %) | {:.1} | {:.1} | {net_conn:.0} ns ({conn_share:.1} %) |",
            f.label(),
            t[0].ns_per_run(),
            net_packet(0),
            t[1].ns_per_run(),
            net_packet(1),
            t[2].ns_per_run(),
            if conns > 0.0 { runs / conns } else { 0.0 },
        )?;
    }
    Ok(())
}

fn pct(v: f64, base: f64) -> f64 {
    if base == 0.0 {
        0.0
    } else {
        (v - base) / base * 100.0
    }
}

/// The first line of a figures section: when, where, on what.
pub(crate) fn measured_on(build: &str) -> String {
    format!(
        "Measured {} on {} (kernel {}), {} CPUs{build}.\n",
        now(),
        hostname(),
        kernel(),
        num_cpus()
    )
}

fn now() -> String {
    sh(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `cargo xtask bench policy`: compile time, entry counts and implementation delay.
pub fn policy() -> anyhow::Result<()> {
    setup::setup(true, true)?;
    eprintln!(
        "bench: policy engine (1,000 endpoints × 5,500 rules, 200 policy changes, 100 pod events)"
    );
    let v = example_figures("catalyst-agent", "policy_bench", &[])?;
    let mut md = String::new();
    writeln!(md, "{}", measured_on(", release build"))?;
    writeln!(md, "| measure | value |")?;
    writeln!(md, "|---|---|")?;
    for (k, label) in [
        ("endpoints", "endpoints"),
        ("policies", "policies"),
        ("rules", "rules (allow + deny)"),
        ("identities", "identities"),
        ("policy_entries", "policy map entries"),
        ("ipcache_entries", "ipcache entries"),
        ("parse_ms", "parse, all policies (ms)"),
        ("compile_ms", "compile, all policies, first time (ms)"),
        ("initial_apply_ms", "first apply to empty maps (ms)"),
        (
            "full_recompile_ms",
            "baseline: full recompilation, same run (ms)",
        ),
        (
            "policy_endpoints_recompiled_p50",
            "policy change: endpoints recompiled, p50",
        ),
        (
            "policy_compile_p50_ms",
            "policy change: parse + incremental compile, p50 (ms)",
        ),
        (
            "policy_delay_p50_ms",
            "**policy change: implementation delay p50 (ms)**",
        ),
        (
            "policy_delay_p99_ms",
            "**policy change: implementation delay p99 (ms)**",
        ),
        (
            "pod_compile_p50_ms",
            "pod event: incremental compile, p50 (ms)",
        ),
        (
            "pod_delay_p50_ms",
            "**pod event: implementation delay p50 (ms)**",
        ),
        (
            "pod_delay_p99_ms",
            "**pod event: implementation delay p99 (ms)**",
        ),
    ] {
        writeln!(md, "| {label} | {} |", v[k])?;
    }
    println!("{md}");
    splice_section("policy", &md)
}

/// `cargo xtask bench compliance`: ingest throughput and RSS at 10,000 workloads × 20 checks,
/// and signal → new score in NATS KV latency (real nats-server), against the bars of DESIGN.md §7.
pub fn compliance() -> anyhow::Result<()> {
    setup::setup(false, true)?;
    eprintln!("bench: compliance aggregator (10,000 workloads × 20 checks, 200 signal changes)");
    let v = example_figures("catalyst-controllers", "compliance_bench", &[])?;
    let mut md = String::new();
    writeln!(md, "{}", measured_on(", release build"))?;
    writeln!(
        md,
        "Method: `controllers/examples/compliance_bench.rs`. Throughput: 200,000 `catalyst.signal/v1` \
         payloads (10,000 pods in 1,000 applications × 20 checks) are generated, parsed and ingested \
         in process; the baseline is generating the same payloads alone, in the same run. RSS is \
         the process's VmRSS after ingesting and scoring all of them. Latency: a real nats-server, \
         the 200,000 signals preloaded in `CATALYST_SIGNALS`, the aggregator's shell (`compliance::run`, \
         100 ms publish debounce) replays them; then 200 times one signal flips a check of a fresh \
         pod and the time from the publish to the new value seen by a KV watcher on the \
         application key is taken. Floor, same run: a KV put seen by a watcher. New applications: \
         after that, 50 applications appear for the first time, one signal each, and the time \
         from the publish to their own key in the KV is taken; replay: aggregator start to every \
         replayed application scored and published.\n"
    )?;
    writeln!(md, "| measure | value | bar |")?;
    writeln!(md, "|---|---|---|")?;
    for (k, label, bar) in [
        ("rows", "rows", ""),
        (
            "generate_rows_per_s",
            "baseline: payload generation only (rows/s)",
            "",
        ),
        (
            "ingest_rows_per_s",
            "**ingest: generate + parse + store (rows/s)**",
            "≥ 50,000",
        ),
        ("documents", "score documents (applications + roll-ups)", ""),
        (
            "score_all_ms",
            "first full scoring + diff of all documents (ms)",
            "",
        ),
        (
            "rescore_one_ms",
            "one row changed: re-score + diff (ms)",
            "",
        ),
        ("rss_mib", "**RSS after ingest + scoring (MiB)**", "≤ 256"),
        ("nats_preload_s", "preload of the stream (s)", ""),
        ("floor_p50_ms", "floor: KV put → watcher, p50 (ms)", ""),
        ("floor_p99_ms", "floor: KV put → watcher, p99 (ms)", ""),
        (
            "latency_p50_ms",
            "**signal → new score in KV, p50 (ms)**",
            "",
        ),
        (
            "latency_p99_ms",
            "**signal → new score in KV, p99 (ms)**",
            "≤ 1,000",
        ),
        (
            "replay_ready_s",
            "replay at start: all 1,000 applications scored and published (s)",
            "≤ 60",
        ),
        (
            "new_app_p50_ms",
            "new application: first signal → its score in KV, p50 (ms)",
            "",
        ),
        (
            "new_app_max_ms",
            "**new application: first signal → its score in KV, worst of 50 (ms)**",
            "≤ 60,000",
        ),
    ] {
        writeln!(md, "| {label} | {} | {bar} |", v[k])?;
    }
    println!("{md}");
    splice_section("compliance", &md)
}

/// Runs `cargo run --release -p <package> --example <example> -- <args>` and returns the JSON
/// object of its last line starting with `{` (every benchmark driver prints its figures so).
/// `cargo xtask bench failover`: the Continuum lab (`tests/tests/continuum_lab_root.rs`) with the
/// design's 30 s lease TTL, `CATALYST_BENCH_RUNS` times (default 3); its figures line per run.
pub fn failover() -> anyhow::Result<()> {
    setup::setup(false, true)?;
    let runs: usize = std::env::var("CATALYST_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    eprintln!("bench: Continuum switchover and region loss, lease TTL 30 s, {runs} runs");
    setup::cargo_build(false)?;
    let mut rows = Vec::new();
    for i in 0..runs {
        let mut c = setup::lab_suite(
            "continuum_lab_root",
            Some("continuum_switchover_and_failover_with_postgres_nats_cluster_and_dns"),
        );
        c.env("CATALYST_FAILOVER_TTL", "30");
        let out = sh(&mut c).with_context(|| format!("failover lab run {}", i + 1))?;
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with("switchover_ms="))
            .context("the failover lab printed no figures")?;
        let kv: std::collections::BTreeMap<String, String> = line
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        eprintln!("run {}: {line}", i + 1);
        rows.push(kv);
    }
    let mut md = String::new();
    writeln!(
        md,
        "{}",
        measured_on(", debug build of the test harness and binaries")
    )?;
    writeln!(
        md,
        "Method: `tests/tests/continuum_lab_root.rs` on loopback: a 3-node NATS JetStream cluster \
         (KV replicas 3), three catalyst-dns, a PostgreSQL 15 primary with a synchronous standby \
         (`remote_apply`), three Continuum controllers (lease renew 10 s, TTL 30 s, probes every \
         500 ms, down after 2). A writer resolves the record through catalyst-dns and inserts \
         numbered rows, 10 ms apart, recording every acknowledgement. Manual switchover: from \
         `continuum switchover` to the first acknowledged write on the new primary; write gap: \
         longest pause between acknowledgements in that span. Region loss: SIGKILL of the active \
         region's controller and postmaster at once, to the first acknowledged write after DNS \
         answered the survivor (the lease must expire first: TTL 30 s). Lost rows: acknowledged \
         ids missing on the final primary. Overlaps: the epoch-history checker over every \
         controller's history and what DNS served.\n"
    )?;
    writeln!(
        md,
        "| run | switchover (ms) | DNS flip (ms) | write gap (ms) | region loss → writes (ms) | lost rows | overlapping holders | acknowledged rows |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    let get = |kv: &std::collections::BTreeMap<String, String>, k: &str| {
        kv.get(k).cloned().unwrap_or_else(|| "?".into())
    };
    for (i, kv) in rows.iter().enumerate() {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            get(kv, "switchover_ms"),
            get(kv, "dns_flip_ms"),
            get(kv, "write_gap_ms"),
            get(kv, "failover_ms"),
            get(kv, "lost_rows"),
            get(kv, "overlaps"),
            get(kv, "acked_rows")
        )?;
    }
    writeln!(
        md,
        "| **bar** | **< 10,000** | | **< 5,000** | **< 40,000** | **0** | **0** | |"
    )?;
    // Lease safety under a nemesis (tests/tests/continuum_nemesis.rs), 20 seeded runs.
    let nemesis_runs = std::env::var("CATALYST_NEMESIS_RUNS").unwrap_or_else(|_| "20".into());
    let mut c = setup::lab_suite("continuum_nemesis", None);
    c.env("CATALYST_NEMESIS_RUNS", &nemesis_runs);
    let out = sh(&mut c).context("nemesis runs")?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("nemesis_runs="))
        .context("the nemesis test printed no figures")?;
    eprintln!("{line}");
    writeln!(
        md,
        "\nNemesis (`tests/tests/continuum_nemesis.rs`): 3-node NATS cluster, 3 catalyst-dns, 3 \
         controllers with a 3 s lease; per run 20 s of seeded random faults (SIGSTOP of the holder \
         for 0.5–2 TTL, SIGKILL + restart of controllers, SIGKILL or SIGSTOP of one NATS node, \
         switchover requests), then the epoch-history checker over every controller and every \
         DNS instance's served epochs. Bar: no two lease holders in ≥ 20 runs.\n\n`{line}`\n"
    )?;
    // Partitions (tests/tests/continuum_partition_root.rs), the design's 30 s TTL.
    let mut c = setup::lab_suite("continuum_partition_root", None);
    c.env("CATALYST_FAILOVER_TTL", "30");
    let out = sh(&mut c).context("partition run")?;
    let part = out
        .lines()
        .rev()
        .find(|l| l.starts_with("partition_failover_ms="))
        .context("the partition test printed no figures")?
        .to_owned();
    eprintln!("{part}");
    let part_kv: std::collections::BTreeMap<String, String> = part
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    writeln!(
        md,
        "Partitions (`tests/tests/continuum_partition_root.rs`): regions in network namespaces \
         behind a router namespace, links cut with nftables, lease TTL 30 s. The active region \
         cut off both ways, then (healed, old primary rejoined) the new active region cut one \
         way (it receives, cannot send). Time: the cut to the first acknowledged write on the \
         other region. Bar: failover < 40,000 ms with the 30 s TTL, no lost row, no overlap.\n\n\
         | measure | value | bar |\n|---|---|---|\n\
         | both-way partition → writes on the survivor (ms) | {} | < 40,000 |\n\
         | one-way partition → writes on the survivor (ms) | {} | < 40,000 |\n\
         | lost rows | {} | 0 |\n| overlapping holders | {} | 0 |\n",
        part_kv
            .get("partition_failover_ms")
            .map_or("?", String::as_str),
        part_kv
            .get("one_way_failover_ms")
            .map_or("?", String::as_str),
        part_kv.get("lost_rows").map_or("?", String::as_str),
        part_kv.get("overlaps").map_or("?", String::as_str),
    )?;
    let part_worst = ["partition_failover_ms", "one_way_failover_ms"]
        .iter()
        .filter_map(|k| part_kv.get(*k).and_then(|v| v.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    let part_lost: u64 = part_kv
        .get("lost_rows")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let part_overlaps: u64 = part_kv
        .get("overlaps")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The summary line: the worst run for times, sums for losses and overlaps (nemesis
    // failures count as overlaps: a failed nemesis run is an overlap, stale effect or DNS
    // regression, or a run that proved nothing).
    let worst = |k: &str| {
        rows.iter()
            .filter_map(|kv| kv.get(k).and_then(|v| v.parse::<u64>().ok()))
            .max()
            .unwrap_or(0)
    };
    let sum = |k: &str| {
        rows.iter()
            .filter_map(|kv| kv.get(k).and_then(|v| v.parse::<u64>().ok()))
            .sum::<u64>()
    };
    let nemesis_failed: u64 = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("failed_runs="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let summary = format!(
        "switchover_ms={} failover_ms={} dns_flip_ms={} write_gap_ms={} lost_rows={} overlaps={}",
        worst("switchover_ms"),
        worst("failover_ms").max(part_worst),
        worst("dns_flip_ms"),
        worst("write_gap_ms"),
        sum("lost_rows") + part_lost,
        sum("overlaps") + nemesis_failed + part_overlaps
    );
    writeln!(
        md,
        "Primary loss (postmaster SIGKILLed, controller alive) → DNS flipped, worst run: {} ms \
         (probe 500 ms × 2 failures + 1 s = 2,000 ms bar, detection included).\n\n\
         Summary (worst run, region loss and partitions; sums for lost rows and overlaps, nemesis and partitions included): `{summary}`\n",
        worst("primary_loss_flip_ms")
    )?;
    println!("{md}");
    splice_section("failover", &md)?;
    println!("{summary}");
    Ok(())
}

fn example_figures(
    package: &str,
    example: &str,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let mut c = setup::cargo();
    c.args([
        "run",
        "-q",
        "--release",
        "-p",
        package,
        "--example",
        example,
        "--",
    ]);
    c.args(args);
    let out = sh(&mut c)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{example} printed no figures"))?;
    Ok(serde_json::from_str(line)?)
}

/// `cargo xtask bench ipcache`: 100,000 remote pods learnt by watching the API server against
/// the shared ipcache (NATS KV), same run: bytes received, memory held, time to learn them.
pub fn ipcache() -> anyhow::Result<()> {
    setup::setup(false, true)?;
    eprintln!("bench: remote pods, API watch vs shared ipcache (100,000 pods on 1,000 nodes)");
    let v = example_figures("catalyst-agent", "ipcache_bench", &["100000"])?;
    let md = ipcache_table(&v, &measured_on(", release build"))?;
    println!("{md}");
    splice_section("ipcache", &md)
}

/// The figures of `ipcache_bench` as the docs' table.
fn ipcache_table(v: &serde_json::Value, measured: &str) -> anyhow::Result<String> {
    let (w, s) = (&v["watch"], &v["shared"]);
    let mut md = String::new();
    writeln!(md, "{measured}")?;
    writeln!(
        md,
        "{} remote pods on {} nodes; one agent learns them all.\n",
        v["pods"], v["nodes"]
    )?;
    writeln!(
        md,
        "| measure | API watch (`remote_pods: watch`) | shared ipcache (`remote_pods: shared`) |"
    )?;
    writeln!(md, "|---|---|---|")?;
    writeln!(
        md,
        "| bytes received by the agent (MiB) | {} | **{}** |",
        w["mib"], s["mib"]
    )?;
    writeln!(
        md,
        "| bytes per pod | {} | {} (value: {}) |",
        w["bytes_per_pod"], s["bytes_per_pod"], s["value_bytes_per_pod"]
    )?;
    writeln!(
        md,
        "| memory held: store / bucket state (MiB) | {} | {} |",
        w["store_mib"], s["state_mib"]
    )?;
    writeln!(
        md,
        "| memory held with the peers built (MiB) | {} | **{}** |",
        w["held_mib"], s["held_mib"]
    )?;
    writeln!(
        md,
        "| time to learn every pod (ms) | {} | **{}** |",
        w["learn_ms"], s["learn_ms"]
    )?;
    writeln!(
        md,
        "| rebuild of the peers, nothing changed (ms) | {} | {} |",
        w["rebuild_ms"], s["rebuild_ms"]
    )?;
    writeln!(
        md,
        "| publishing all entries, 256 puts in flight (ms) | — | {} |",
        s["publish_ms"]
    )?;
    Ok(md)
}

/// `cargo xtask bench dns`: catalyst-dns against `PowerDNS` with dnsperf, side by side.
pub fn dns() -> anyhow::Result<()> {
    setup::setup(false, true)?;
    let mut c = setup::cargo();
    c.args([
        "build",
        "-q",
        "--release",
        "-p",
        "catalyst-dns",
        "--bins",
        "--examples",
    ]);
    sh(&mut c)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let out = root().join("docs/benchmarks-dns.md");
    let status = Command::new(target.join("release/examples/bench"))
        .args([
            "--duration",
            "10",
            "--runs",
            "3",
            "--threads",
            "1,2",
            "--out",
        ])
        .arg(&out)
        .current_dir(root())
        .status()
        .context("cannot run the DNS benchmark driver")?;
    anyhow::ensure!(status.success(), "DNS benchmark failed ({status})");
    eprintln!("bench: DNS figures written to {}", out.display());
    dns_cache_flood()
}

/// `cargo xtask bench dns`, second part: the answer cache under a cache-busting flood.
pub fn dns_cache_flood() -> anyhow::Result<()> {
    eprintln!("bench: catalyst-dns answer cache under a 500,000-name flood");
    let v = example_figures("catalyst-dns", "cache_flood", &[])?;
    let mut md = String::new();
    writeln!(md, "{}", measured_on(", release build"))?;
    writeln!(
        md,
        "Method: `dns/examples/cache_flood.rs`. catalyst-dns (2 UDP workers, 100,000 cached \
         answers each) serves wildcard records; dnsperf (`-c 4 -q 200`, each line once) first \
         asks 20,000 hot names 25 times each, then the same hot names interleaved 1:1 with \
         500,000 never-seen random labels (every one a miss that enters the cache). Hit rates from \
         the server's `catalyst_dns_cache_hits_total` / `_misses_total`; the hot names' own hit \
         rate in the mixed run is hits / hot queries (flood queries can only miss). The cache it \
         replaced was cleared whole when full, so the flood emptied it every 100,000 misses per \
         worker and every hot name had to be computed again after each clear.\n"
    )?;
    writeln!(md, "| measure | value |")?;
    writeln!(md, "|---|---|")?;
    for (k, label) in [
        ("hot_qps", "hot names only: QPS"),
        ("hot_hit_rate", "hot names only: hit rate"),
        ("mixed_qps", "hot + flood: QPS"),
        (
            "mixed_hit_rate",
            "hot + flood: overall hit rate (ideal 0.5)",
        ),
        ("mixed_hot_hit_rate", "**hot + flood: hot names' hit rate**"),
    ] {
        writeln!(md, "| {label} | {} |", v[k])?;
    }
    println!("{md}");
    splice_section("dns-cache", &md)
}

/// Replaces the text between the datapath markers in docs/benchmarks.md.
fn splice_docs(md: &str) -> anyhow::Result<()> {
    splice_section("datapath", md)
}

/// Replaces the text between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in
/// docs/benchmarks.md (appending the section when the markers are missing).
pub(crate) fn splice_section(name: &str, md: &str) -> anyhow::Result<()> {
    let path = root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let (start, end) = (start.as_str(), end.as_str());
    let new = match (doc.find(start), doc.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{start}\n{md}\n{}", &doc[..a], &doc[b..]),
        _ => format!("{doc}\n{start}\n{md}\n{end}\n"),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

/// One filter's figures in the statistics round and its programs' run time in each measure
/// (latency, UDP, connections).
type InSituRow = (Filter, Figures, [ProgTime; 3]);

/// The median figures of every filter, and the statistics round.
type EndToEnd = (Vec<(Filter, Figures)>, Vec<InSituRow>);

fn end_to_end() -> anyhow::Result<EndToEnd> {
    lab::up()?;
    let client = pod("client");
    let server = pod("web");
    // Servers: sockperf (ping-pong and throughput) and a TCP accept loop, on the clients' CPU
    // (same-CPU figures, as DESIGN.md's references: no cross-CPU wake-ups in the numbers).
    let mut sockperf_srv = in_ns(
        &server.netns(),
        &[
            "taskset",
            "-c",
            "0",
            "sockperf",
            "sr",
            "-i",
            server.ipv4,
            "-p",
            &PORT.to_string(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .context("cannot start sockperf (apt-get install sockperf)")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (acceptor, acceptor_fd) = start_acceptor(&server.netns(), server.ipv4, stop.clone())?;
    std::thread::sleep(Duration::from_millis(300));

    let mut filters = vec![Filter::None, Filter::Empty];
    for n in RULE_COUNTS {
        filters.push(Filter::Agent(n));
    }
    filters.push(Filter::AgentOffCpu(RULE_COUNTS[0]));
    filters.push(Filter::AgentDropEvents(RULE_COUNTS[0]));
    for n in RULE_COUNTS {
        filters.push(Filter::NftChain(n));
    }
    for n in RULE_COUNTS {
        filters.push(Filter::NftSet(n));
    }
    if let Some(keys) = selected_filters() {
        filters.retain(|f| keys.contains(&f.key()));
        anyhow::ensure!(
            !filters.is_empty(),
            "CATALYST_BENCH_FILTERS={keys:?} selects no filter (none, empty, agent-N, chain-N, set-N)"
        );
    }
    let mut rows = Vec::new();
    let mut in_situ = Vec::new();
    let work = std::env::temp_dir().join(format!("catalyst-bench-{}", std::process::id()));
    std::fs::create_dir_all(work.join("policies"))?;
    let pin = PathBuf::from("/sys/fs/bpf/catalyst-bench");
    // Rounds: every filter is set up and measured once per round, the rounds interleave the
    // filters (drift of the machine over the run spreads over all of them instead of biasing
    // whichever was measured last), and each figure is the median over the rounds.
    let rounds = rounds()?;
    let mut samples: Vec<(Filter, Vec<Figures>)> =
        filters.iter().map(|f| (*f, Vec::new())).collect();
    let res = (|| -> anyhow::Result<()> {
        let mut warm = false;
        for round in 1..=rounds {
            for (f, figs) in &mut samples {
                let f = *f;
                eprintln!("bench: round {round}/{rounds}: {}", f.label());
                let running = start_filter(f, &work, &pin)?;
                if !warm {
                    // Warm-up (ARP, caches, sockperf's first connection), discarded.
                    sockperf_latency(&client.netns(), server.ipv4)?;
                    connect_rate(&client.netns(), server.ipv4)?;
                    warm = true;
                }
                let pid = running.agent.as_ref().and_then(AgentProcess::pid);
                let (cpu0, t0) = (pid.map(cpu_seconds), Instant::now());
                let tag = format!("{}-r{round}", f.key());
                let mut fig = Figures {
                    latency_us: profiled(&tag, "latency", || {
                        sockperf_latency(&client.netns(), server.ipv4)
                    })?,
                    udp_pps: profiled(&tag, "udp", || sockperf_udp(&client.netns(), server.ipv4))?,
                    conn_per_s: profiled(&tag, "connect", || {
                        connect_rate(&client.netns(), server.ipv4)
                    })?,
                    agent_cpu_pct: None,
                };
                if let (Some(pid), Some(cpu0)) = (pid, cpu0) {
                    fig.agent_cpu_pct =
                        Some((cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0);
                }
                eprintln!("bench:   {fig:?}");
                figs.push(fig);
                running.stop(&pin)?;
            }
        }
        // One more round of the BPF filters with the kernel's run-time statistics on (they add
        // two clock reads to every run of every program, so not in the rounds above).
        for f in filters.iter().filter(|f| f.has_programs()) {
            eprintln!("bench: in situ: {}", f.label());
            let running = start_filter(*f, &work, &pin)?;
            let (latency_us, lat) =
                with_bpf_stats(|| sockperf_latency(&client.netns(), server.ipv4))?;
            let (udp_pps, udp) = with_bpf_stats(|| sockperf_udp(&client.netns(), server.ipv4))?;
            let (conn_per_s, conn) = with_bpf_stats(|| connect_rate(&client.netns(), server.ipv4))?;
            let fig = Figures {
                latency_us,
                udp_pps,
                conn_per_s,
                agent_cpu_pct: None,
            };
            eprintln!("bench:   {fig:?} {lat:?} {udp:?} {conn:?}");
            in_situ.push((*f, fig, [lat, udp, conn]));
            running.stop(&pin)?;
        }
        for (f, figs) in &samples {
            let med = |get: fn(&Figures) -> f64| median(figs.iter().map(get).collect());
            rows.push((
                *f,
                Figures {
                    latency_us: med(|x| x.latency_us),
                    udp_pps: med(|x| x.udp_pps),
                    conn_per_s: med(|x| x.conn_per_s),
                    agent_cpu_pct: figs
                        .iter()
                        .all(|x| x.agent_cpu_pct.is_some())
                        .then(|| med(|x| x.agent_cpu_pct.unwrap_or_default())),
                },
            ));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    // SAFETY: the listener's fd stays open until the acceptor thread ends; shutdown wakes its
    // blocking accept().
    unsafe { libc::shutdown(acceptor_fd, libc::SHUT_RDWR) };
    let _ = sockperf_srv.kill();
    let _ = sockperf_srv.wait();
    let _ = acceptor.join();
    let _ = uninstall(&pin);
    let _ = std::fs::remove_dir_all(&work);
    res.map(|()| (rows, in_situ))
}

/// What one filter left running (dropped or stopped after its measures).
struct Running {
    agent: Option<AgentProcess>,
    empty: Option<empty_tc::EmptyClassifier>,
}

impl Running {
    /// Stops the agent (removing its pins), detaches the empty classifier, flushes nftables.
    fn stop(self, pin: &Path) -> anyhow::Result<()> {
        let Self { agent, empty } = self;
        drop(empty);
        if let Some(mut a) = agent {
            a.stop()?;
            uninstall(pin)?;
        }
        let _ = sh(&mut in_ns(node_ns(), &["nft", "flush", "ruleset"]));
        Ok(())
    }
}

/// Sets up filter `f` on the lab's node.
fn start_filter(f: Filter, work: &Path, pin: &Path) -> anyhow::Result<Running> {
    let mut agent = None;
    let mut empty = None;
    match f {
        Filter::None => {}
        Filter::Empty => {
            let ifaces: Vec<String> = PODS.iter().map(lab::Pod::host_iface).collect();
            empty = Some(empty_tc::attach(node_ns(), &ifaces)?);
        }
        Filter::Agent(n) => agent = Some(start_agent(work, pin, n, "")?),
        Filter::AgentDropEvents(n) => {
            agent = Some(start_agent(
                work,
                pin,
                n,
                "bpf_events: {policy_verdict: false, trace: false}\n",
            )?);
        }
        Filter::AgentOffCpu(n) => {
            let a = start_agent(work, pin, n, "")?;
            if let Some(pid) = a.pid() {
                // Every thread of the agent (-a), now and later.
                sh(Command::new("taskset").args(["-a", "-p", "-c", "1", &pid.to_string()]))?;
            }
            agent = Some(a);
        }
        Filter::NftChain(n) | Filter::NftSet(n) => nft_load(f, n, work)?,
    }
    Ok(Running { agent, empty })
}

/// Starts the agent enforcing `rules` ports; `extra` is appended to its configuration.
fn start_agent(work: &Path, pin: &Path, rules: u32, extra: &str) -> anyhow::Result<AgentProcess> {
    // N rules: the client may reach the server on N distinct ports (TCP and UDP); the benchmark
    // port is one of them. Both ends are enforced (client egress, server ingress).
    let ports: Vec<String> = (0..rules)
        .map(|i| format!("{{port: \"{}\", protocol: ANY}}", u32::from(PORT) - i))
        .collect();
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench-in, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n    - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{}]}}]\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench-out, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n    - toEndpoints: [{{matchLabels: {{app: web}}}}]\n      toPorts: [{{ports: [{}]}}]\n",
        ports.join(", "),
        ports.join(", ")
    );
    std::fs::write(work.join("policies/bench.yaml"), policy)?;
    let mut cfg = format!(
        "node: bench\npin_path: {}\npolicy_paths: [policies]\nflow_log: none\n{extra}endpoints:\n",
        pin.display()
    );
    for p in PODS {
        let _ = writeln!(
            cfg,
            "  - {{name: {}, namespace: {}, interface: {}, addresses: [{}], labels: {{app: {}}}}}",
            p.name,
            p.namespace,
            p.host_iface(),
            p.ipv4,
            p.app
        );
    }
    std::fs::write(work.join("agent.yaml"), cfg)?;
    let _ = uninstall(pin);
    AgentProcess::start(&work.join("agent.yaml"), pin)
}

fn nft_load(f: Filter, rules: u32, work: &Path) -> anyhow::Result<()> {
    let client = pod("client").ipv4;
    let server = pod("web").ipv4;
    let mut s = String::from("flush ruleset\ntable inet bench {\n");
    match f {
        Filter::NftChain(_) => {
            s.push_str("  chain forward_filter {\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n");
            for i in (0..rules).rev() {
                let _ = writeln!(
                    s,
                    "    ip saddr {client} ip daddr {server} meta l4proto {{ tcp, udp }} th dport {} accept",
                    u32::from(PORT) - i
                );
            }
            s.push_str("  }\n");
        }
        Filter::NftSet(_) => {
            s.push_str(
                "  set allowed {\n    type ipv4_addr . ipv4_addr . inet_service\n    elements = { ",
            );
            let elems: Vec<String> = (0..rules)
                .map(|i| format!("{client} . {server} . {}", u32::from(PORT) - i))
                .collect();
            s.push_str(&elems.join(", "));
            s.push_str(" }\n  }\n  chain forward_filter {\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    meta l4proto { tcp, udp } ip saddr . ip daddr . th dport @allowed accept\n  }\n");
        }
        _ => {}
    }
    s.push_str("}\n");
    // The reverse direction of new flows (replies) is covered by conntrack; ARP is not forwarded.
    let file = work.join("rules.nft");
    std::fs::write(&file, s)?;
    sh(&mut in_ns(
        node_ns(),
        &["nft", "-f", file.to_str().expect("utf-8")],
    ))?;
    Ok(())
}

fn sockperf_latency(ns: &str, server: &str) -> anyhow::Result<f64> {
    let out = sh(&mut in_ns(
        ns,
        &[
            "taskset",
            "-c",
            "0",
            "sockperf",
            "pp",
            "-i",
            server,
            "-p",
            &PORT.to_string(),
            "-t",
            &SECS.to_string(),
            "-m",
            "64",
        ],
    ))?;
    // "sockperf: Summary: Latency is 5.123 usec"
    out.lines()
        .find_map(|l| {
            l.split("Latency is ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .with_context(|| format!("no latency in sockperf output:\n{out}"))
}

fn sockperf_udp(ns: &str, server: &str) -> anyhow::Result<f64> {
    let out = sh(&mut in_ns(
        ns,
        &[
            "taskset",
            "-c",
            "0",
            "sockperf",
            "tp",
            "-i",
            server,
            "-p",
            &PORT.to_string(),
            "-t",
            &SECS.to_string(),
            "-m",
            "64",
        ],
    ))?;
    // "sockperf: Summary: Message Rate is 512345 [msg/sec]"
    out.lines()
        .find_map(|l| {
            l.split("Message Rate is ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .with_context(|| format!("no message rate in sockperf output:\n{out}"))
}

fn start_acceptor(
    ns: &str,
    addr: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(std::thread::JoinHandle<()>, i32)> {
    use std::os::fd::AsRawFd as _;
    let sa: SocketAddr = format!("{addr}:{PORT}").parse()?;
    let l = in_netns(ns, move || TcpListener::bind(sa))??;
    let fd = l.as_raw_fd();
    // A deep accept queue: with client and acceptor on one CPU, std's default backlog overflows
    // and lost SYNs (1 s retransmit) would be measured instead of connection setup.
    // SAFETY: a valid listening socket.
    unsafe { libc::listen(fd, 4096) };
    let handle = std::thread::spawn(move || {
        pin_to_cpu(0);
        // Blocking accept; the caller sets `stop` and shuts the socket down to wake it.
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    Ok((handle, fd))
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity(0, …) affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// Closes with RST (`SO_LINGER` 0): no `TIME_WAIT` build-up over tens of thousands of connections.
fn close_with_rst(s: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

fn connect_rate(ns: &str, server: &str) -> anyhow::Result<f64> {
    let sa: SocketAddr = format!("{server}:{PORT}").parse()?;
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let ns = ns.to_owned();
    let elapsed = in_netns(&ns, move || -> std::io::Result<Duration> {
        pin_to_cpu(0);
        let start = Instant::now();
        let limit = Duration::from_secs(u64::from(SECS));
        while start.elapsed() < limit {
            // A failed connect (SYN lost to a full accept queue, a drop) is not counted.
            if let Ok(s) = TcpStream::connect_timeout(&sa, Duration::from_millis(500)) {
                close_with_rst(s);
                c2.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(start.elapsed())
    })??;
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Ok(count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figs(latency_us: f64, udp_pps: f64, conn_per_s: f64) -> Figures {
        Figures {
            latency_us,
            udp_pps,
            conn_per_s,
            agent_cpu_pct: None,
        }
    }

    fn t(runs: u64, ns: u64) -> ProgTime {
        ProgTime { runs, ns }
    }

    #[test]
    fn in_situ_figures_are_net_of_the_empty_classifier_per_packet_and_per_connection() {
        // Empty: 20 ns per run everywhere. Agent: 70 ns per run for latency and UDP (net 50 per
        // hook, 100 per packet); connect: 1,000 runs at 120 ns for 100 connections (2 s at 50/s):
        // 10 runs per connection, net (120 − 20) × 10 = 1,000 ns per connection.
        let rows = vec![
            (
                Filter::Empty,
                figs(2.0, 500_000.0, 100.0),
                [t(1_000, 20_000), t(1_000, 20_000), t(1_000, 20_000)],
            ),
            (
                Filter::Agent(10),
                figs(2.1, 450_000.0, 50.0),
                [t(1_000, 70_000), t(2_000, 140_000), t(1_000, 120_000)],
            ),
        ];
        let mut md = String::new();
        in_situ_table(&mut md, &rows).unwrap();
        let agent = md
            .lines()
            .find(|l| l.starts_with("| catalyst-agent, 10 rules |"))
            .expect("agent row");
        // Latency: 100 ns of a 2,000 ns one-way time; UDP: 100 ns at 500,000 packets/s (5 %);
        // connect: 1,000 ns at the empty classifier's 100 connections/s (0.01 %).
        assert_eq!(
            agent,
            "| catalyst-agent, 10 rules | 70.0 | 100 ns (5.0 %) | 70.0 | 100 ns (5.0 %) | 120.0 | 10.0 | 1000 ns (0.0 %) |"
        );
        let empty = md
            .lines()
            .find(|l| l.starts_with("| empty classifier"))
            .expect("empty row");
        assert!(empty.ends_with("| 20.0 | 5.0 | 0 ns (0.0 %) |"), "{empty}");
    }

    #[test]
    fn no_in_situ_table_without_the_empty_classifier() {
        let rows = vec![(
            Filter::Agent(10),
            figs(2.1, 450_000.0, 50.0),
            [t(1, 1), t(1, 1), t(1, 1)],
        )];
        let mut md = String::new();
        in_situ_table(&mut md, &rows).unwrap();
        assert!(md.is_empty());
    }
}
