//! Per-packet cost of the real datapath programs by `BPF_PROG_TEST_RUN` (root).
//!
//! For 10, 1,000 and 10,000 policy entries, with the conntrack table prefilled to 100,000
//! entries: the established-flow cost (one packet run `repeat` times: every run after the first
//! hits conntrack), and the new-flow cost (distinct packets, one run each: conntrack miss,
//! ipcache and two policy lookups, conntrack insert, event). As in the agent, a reader thread
//! drains the event ring buffer while the programs run (every millisecond, on whichever CPU the
//! scheduler gives it), so every new flow writes its event: the figures are only valid with no
//! event lost, which each line reports (`events_lost`). A single run carries the test
//! harness's own per-call cost, so established packets are also measured one run at a time and
//! the difference is reported as the new-flow cost: for TCP connections opening with a SYN and
//! for UDP flows. A third new-flow figure is the second endpoint of a connection between two
//! workloads of the node: the peer is then an endpoint too (on a veth interface of the
//! benchmark's own network namespace), its hook runs the SYN first (inserting the connection,
//! not timed) and the server's hook is timed as it fills its side of that element. Prints one
//! JSON object per line.
//!
//! Used by `cargo xtask bench datapath`; run alone with
//! `cargo run -p catalyst-agent --example datapath_bench`. With `--profile-new-flows N` it only
//! runs N new flows (10,000 policy entries), with `--profile-established N` one established
//! packet N times, for `perf record -a -g` to see where their time goes.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};

use catalyst_agent::{
    config::MapSizes,
    datapath::{
        AttachMode, Datapath, DesiredState, LoadOptions, apply, by_endpoint, monotonic_ns,
        uninstall,
    },
};
use catalyst_policy::datapath::{
    ACTION_ALLOW, CT_F_SWAPPED, CtConn, CtEntry, CtKey, DIR_INGRESS, EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED, EndpointInfo, IpcacheEntry, MATCH_L3_L4, POLICY_PREFIX_FULL_BITS,
    PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PROTO_TCP, PROTO_UDP, PolicyEntry, PolicyKey,
    STAT_EVENTS_LOST, VERDICT_FORWARDED, ct_expiry, ct_side,
};

const LO: u32 = 1;
const CT_ENTRIES: u32 = 100_000;

/// An IPv4 packet of `protocol` (TCP with `tcp_flags`, or UDP) as the programs see it.
fn packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total: u16 = if protocol == PROTO_TCP { 40 } else { 28 };
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    if protocol == PROTO_TCP {
        p.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        p.extend_from_slice(&[0, 8, 0, 0]);
    }
    p
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Mean kernel time of one single-run `BPF_PROG_TEST_RUN` per packet, each expected allowed.
fn single_runs(dp: &Datapath, packets: impl Iterator<Item = Vec<u8>>) -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    let mut n = 0u32;
    for pkt in packets {
        let (ret, d) = dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?;
        anyhow::ensure!(ret == -1, "benchmark packet must be allowed (got {ret})");
        total += d;
        n += 1;
    }
    Ok(total.as_secs_f64() * 1e9 / f64::from(n.max(1)))
}

/// [`single_runs`] at the server's hook for connections whose other end is the endpoint on
/// `peer_if`: each packet first leaves the peer (its hook inserts the connection, not timed).
fn second_side_runs(
    dp: &Datapath,
    peer_if: u32,
    packets: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    let mut n = 0u32;
    for pkt in packets {
        let (ret, _) = dp.test_run_on(PROG_FROM_ENDPOINT, &pkt, 1, peer_if)?;
        anyhow::ensure!(ret == -1, "the peer's packet must leave it (got {ret})");
        let (ret, d) = dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?;
        anyhow::ensure!(ret == -1, "benchmark packet must be allowed (got {ret})");
        total += d;
        n += 1;
    }
    Ok(total.as_secs_f64() * 1e9 / f64::from(n.max(1)))
}

fn state(entries: u32, peer_if: u32) -> DesiredState {
    // `entries` allow entries for the endpoint: identities 1000.. each on TCP port 80, with
    // their /32 in the ipcache. The benchmarked peer is the last one; it is also an endpoint
    // (on `peer_if`, its egress not enforced), for the second-endpoint figure.
    let peer = Ipv4Addr::from(0x0a00_0000 + entries);
    let mut d = DesiredState {
        endpoints: vec![
            (
                LO,
                EndpointInfo {
                    endpoint_id: 7,
                    identity: 300,
                    flags: EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED,
                    ..EndpointInfo::default()
                },
            ),
            (
                peer_if,
                EndpointInfo {
                    endpoint_id: 8,
                    identity: 1000 + entries - 1,
                    ipv4: u32::from_ne_bytes(peer.octets()),
                    ..EndpointInfo::default()
                },
            ),
        ],
        event_interval_ns: 1_000_000_000,
        ..DesiredState::default()
    };
    let mut rows = Vec::new();
    for i in 0..entries {
        let id = 1000 + i;
        let ip = Ipv4Addr::from(0x0a00_0000 + i + 1);
        d.ipcache_v4.push((
            ipnet::Ipv4Net::new(ip, 32).unwrap(),
            IpcacheEntry {
                identity: id,
                flags: 0,
            },
        ));
        rows.push((
            POLICY_PREFIX_FULL_BITS,
            PolicyKey {
                endpoint_id: 7,
                identity: id,
                direction: DIR_INGRESS,
                protocol: PROTO_TCP,
                dport_be: 80u16.to_be(),
            },
            PolicyEntry {
                action: ACTION_ALLOW,
                rule_id: 1,
                match_type: u32::from(MATCH_L3_L4),
                pad: 0,
            },
        ));
    }
    // The benchmarked peer may also send UDP to port 80 (the UDP new-flow figure).
    if let Some(&(len, key, entry)) = rows.last() {
        rows.push((
            len,
            PolicyKey {
                protocol: PROTO_UDP,
                ..key
            },
            entry,
        ));
    }
    d.policy = by_endpoint(rows);
    d
}

/// Drains the event ring buffer every millisecond until `stop`, like the agent's reader (which
/// drains on a 10 ms timer or when an eighth of the ring waits); returns the records read.
fn spawn_reader(mut ring: RingBuf<MapData>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut read = 0u64;
        loop {
            let done = stop.load(Ordering::Relaxed);
            while ring.next().is_some() {
                read += 1;
            }
            if done {
                return read;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn main() -> anyhow::Result<()> {
    let id = std::process::id();
    let pin = PathBuf::from(format!("/sys/fs/bpf/catalyst-bench-{id}"));
    let _ = uninstall(&pin);
    // A network namespace of the benchmark's own with one veth pair: the peer endpoint's
    // interface (`BPF_PROG_TEST_RUN` takes the skb's device from this namespace).
    let ns = format!("cat-dpbench-{id}");
    ip(&["netns", "add", &ns])?;
    let result = ip(&[
        "-n", &ns, "link", "add", "peer0", "type", "veth", "peer", "name", "peer1",
    ])
    .and_then(|()| {
        let p = pin.clone();
        catalyst_tests::lab::in_netns(&ns, move || {
            // SAFETY: a NUL-terminated literal.
            let peer_if = unsafe { libc::if_nametoindex(c"peer0".as_ptr()) };
            anyhow::ensure!(
                peer_if > 1,
                "no interface peer0 in the benchmark's namespace"
            );
            run(&p, peer_if)
        })?
    });
    let cleaned = uninstall(&pin);
    let _ = ip(&["netns", "del", &ns]);
    result?;
    cleaned.map(drop)
}

/// Runs `ip` with `args`; an error names the command.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .context("cannot run ip (apt-get install iproute2)")?;
    anyhow::ensure!(status.success(), "ip {} failed: {status}", args.join(" "));
    Ok(())
}

/// `--profile-established N` or `--profile-new-flows N`, read before anything is loaded: an
/// unknown argument or a missing count is an error naming it.
fn profile_args() -> anyhow::Result<Option<(String, u32)>> {
    let mut args = std::env::args().skip(1);
    let Some(mode) = args.next() else {
        return Ok(None);
    };
    anyhow::ensure!(
        mode == "--profile-established" || mode == "--profile-new-flows",
        "unknown argument `{mode}` (expected --profile-established N or --profile-new-flows N)"
    );
    let n = args
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{mode} needs a count"))?;
    Ok(Some((mode, n)))
}

fn run(pin: &std::path::Path, peer_if: u32) -> anyhow::Result<()> {
    let profile = profile_args()?;
    let mut dp = Datapath::load(&LoadOptions {
        pin_path: pin.to_owned(),
        // Room for the prefill and every benchmark connection: no LRU eviction in the figures.
        sizes: MapSizes {
            conntrack: 1 << 20,
            ..MapSizes::default()
        },
        attach_mode: AttachMode::Auto,
    })?;
    // 100,000 established connections of other peers.
    for i in 0..CT_ENTRIES {
        let (key, swapped) = CtKey::canonical(
            [
                u32::from_ne_bytes([172, 16, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            [u32::from_ne_bytes([10, 9, 9, 9]), 0, 0, 0],
            ((i % 60_000) as u16 + 1024).to_be(),
            80u16.to_be(),
            PROTO_TCP,
            4,
        );
        let entry = CtEntry {
            ifindex: LO,
            verdict: VERDICT_FORWARDED,
            direction: DIR_INGRESS,
            revision: 1,
            // Far from expiry for the next 4 years.
            expires: ct_expiry(monotonic_ns(), 4 * 365 * 24 * 3600 * 1_000_000_000),
            flags: if swapped { CT_F_SWAPPED } else { 0 },
            ..CtEntry::default()
        };
        let mut conn = CtConn::default();
        conn.sides[ct_side(DIR_INGRESS, swapped)] = entry;
        dp.conntrack_insert(key, conn)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(
        dp.take_events()
            .context("event ring buffer already taken")?,
        stop.clone(),
    );
    let result = measure(&mut dp, profile, peer_if);
    stop.store(true, Ordering::Relaxed);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the event reader panicked"))?;
    eprintln!("datapath_bench: {read} events read");
    result
}

/// Events the programs could not write to the ring (full) so far.
fn events_lost(dp: &Datapath) -> anyhow::Result<u64> {
    Ok(dp.counters()?[STAT_EVENTS_LOST as usize])
}

fn measure(dp: &mut Datapath, profile: Option<(String, u32)>, peer_if: u32) -> anyhow::Result<()> {
    let dst = Ipv4Addr::new(10, 9, 9, 9);
    if let Some((mode, n)) = profile {
        apply(dp, &state(10_000, peer_if), true)?;
        let peer = Ipv4Addr::from(0x0a00_0000 + 10_000);
        if mode == "--profile-established" {
            let pkt = packet(peer, dst, PROTO_TCP, 40_000, 80, ACK);
            let (ret, _) = dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?;
            anyhow::ensure!(ret == -1, "benchmark packet must be allowed (got {ret})");
            let (_, d) = dp.test_run(PROG_TO_ENDPOINT, &pkt, n)?;
            println!("established: {n} runs, {} ns per run", d.as_nanos());
        } else {
            let ns = single_runs(
                dp,
                (0..n).map(|i| {
                    let dst = Ipv4Addr::from(0x0b00_0000 + i / 60_000);
                    packet(peer, dst, PROTO_TCP, 1024 + (i % 60_000) as u16, 80, SYN)
                }),
            )?;
            println!(
                "new TCP flows: {n}, {ns:.1} ns per single run, {} events lost",
                events_lost(dp)?
            );
        }
        return Ok(());
    }
    let mut first = true;
    for entries in [10u32, 1_000, 10_000] {
        apply(dp, &state(entries, peer_if), first)?;
        first = false;
        let peer = Ipv4Addr::from(0x0a00_0000 + entries);
        let lost_before = events_lost(dp)?;
        // Established: one packet, many runs.
        let pkt = packet(peer, dst, PROTO_TCP, 40_000, 80, ACK);
        let (ret, _) = dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?;
        anyhow::ensure!(ret == -1, "benchmark packet must be allowed (got {ret})");
        let mut est = Vec::new();
        for _ in 0..5 {
            est.push(dp.test_run(PROG_TO_ENDPOINT, &pkt, 200_000)?.1);
        }
        // New flows, one run each: TCP connections opening with their SYN, and UDP flows (one
        // conntrack lookup each: both directions of a connection share one key).
        let n = 20_000u32;
        let new_tcp = single_runs(
            dp,
            (0..n).map(|i| packet(peer, dst, PROTO_TCP, 1024 + i as u16, 80, SYN)),
        )?;
        let new_udp = single_runs(
            dp,
            (0..n).map(|i| packet(peer, dst, PROTO_UDP, 1024 + i as u16, 80, 0)),
        )?;
        // The server's side of connections whose client is the peer endpoint.
        let second_side = second_side_runs(
            dp,
            peer_if,
            (0..n).map(|i| packet(peer, dst, PROTO_TCP, 41_000 + i as u16, 80, SYN)),
        )?;
        // The same single-run measurement for established packets: what a single
        // BPF_PROG_TEST_RUN adds on top of the program (timer, preemption bookkeeping).
        let est_single = single_runs(dp, (0..n).map(|_| pkt.clone()))?;
        est.sort();
        let median = est[est.len() / 2];
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
        let est_ns = median.as_nanos() as f64;
        let lost = events_lost(dp)? - lost_before;
        println!(
            "{{\"policy_entries\":{entries},\"conntrack_entries\":{CT_ENTRIES},\"established_ns\":{est_ns},\"new_flow_single_run_ns\":{new_tcp:.1},\"new_udp_flow_single_run_ns\":{new_udp:.1},\"established_single_run_ns\":{est_single:.1},\"new_flow_ns\":{:.1},\"new_udp_flow_ns\":{:.1},\"second_side_single_run_ns\":{second_side:.1},\"second_side_ns\":{:.1},\"events_lost\":{lost}}}",
            new_tcp - est_single + est_ns,
            new_udp - est_single + est_ns,
            second_side - est_single + est_ns
        );
    }
    Ok(())
}
