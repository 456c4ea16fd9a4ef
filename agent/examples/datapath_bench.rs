//! Per-packet cost of the real datapath programs by `BPF_PROG_TEST_RUN` (root).
//!
//! For 10, 1,000 and 10,000 policy entries, with the conntrack table prefilled to 100,000
//! entries: the established-flow cost (one packet run `repeat` times: every run after the first
//! hits conntrack), and the new-flow cost (distinct packets, one run each: conntrack miss,
//! ipcache and two policy lookups, conntrack insert, event). A single run carries the test
//! harness's own per-call cost, so established packets are also measured one run at a time and
//! the difference is reported as the new-flow cost. Prints one JSON object per line.
//!
//! Used by `cargo xtask bench datapath`; run alone with
//! `cargo run -p catalyst-agent --example datapath_bench`.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use catalyst_agent::{
    config::MapSizes,
    datapath::{AttachMode, Datapath, DesiredState, LoadOptions, apply, by_endpoint, uninstall},
};
use catalyst_policy::datapath::{
    ACTION_ALLOW, CtEntry, CtKey, DIR_INGRESS, EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED,
    EndpointInfo, IpcacheEntry, MATCH_L3_L4, POLICY_PREFIX_FULL_BITS, PROG_TO_ENDPOINT, PROTO_TCP,
    PolicyEntry, PolicyKey, VERDICT_FORWARDED,
};

const LO: u32 = 1;
const CT_ENTRIES: u32 = 100_000;

fn packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    p
}

fn state(entries: u32) -> DesiredState {
    // `entries` allow entries for the endpoint: identities 1000.. each on TCP port 80, with
    // their /32 in the ipcache. The benchmarked peer is the last one.
    let mut d = DesiredState {
        endpoints: vec![(
            LO,
            EndpointInfo {
                endpoint_id: 7,
                identity: 300,
                flags: EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED,
                ..EndpointInfo::default()
            },
        )],
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
    d.policy = by_endpoint(rows);
    d
}

fn main() -> anyhow::Result<()> {
    let pin = PathBuf::from(format!("/sys/fs/bpf/catalyst-bench-{}", std::process::id()));
    let _ = uninstall(&pin);
    let result = run(&pin);
    uninstall(&pin)?;
    result
}

fn run(pin: &std::path::Path) -> anyhow::Result<()> {
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
        let key = CtKey {
            ifindex: LO,
            saddr: [
                u32::from_ne_bytes([172, 16, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            daddr: [u32::from_ne_bytes([10, 9, 9, 9]), 0, 0, 0],
            sport_be: ((i % 60_000) as u16 + 1024).to_be(),
            dport_be: 80u16.to_be(),
            protocol: PROTO_TCP,
            family: 4,
            pad: 0,
        };
        let entry = CtEntry {
            verdict: u32::from(VERDICT_FORWARDED),
            direction: u32::from(DIR_INGRESS),
            revision: 1,
            expires_ns: u64::MAX,
            ..CtEntry::default()
        };
        dp.conntrack_insert(key, entry)?;
    }
    let dst = Ipv4Addr::new(10, 9, 9, 9);
    let mut first = true;
    for entries in [10u32, 1_000, 10_000] {
        apply(&mut dp, &state(entries), first)?;
        first = false;
        let peer = Ipv4Addr::from(0x0a00_0000 + entries);
        // Established: one packet, many runs.
        let pkt = packet(peer, dst, 40_000, 80);
        let (ret, _) = dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?;
        anyhow::ensure!(ret == -1, "benchmark packet must be allowed (got {ret})");
        let mut est = Vec::new();
        for _ in 0..5 {
            est.push(dp.test_run(PROG_TO_ENDPOINT, &pkt, 200_000)?.1);
        }
        // New flows: distinct source ports, one run each.
        let mut total = Duration::ZERO;
        let n = 20_000u32;
        for i in 0..n {
            let pkt = packet(peer, dst, 1024 + (i as u16), 80);
            let (ret, d) = dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?;
            anyhow::ensure!(ret == -1, "new flow must be allowed");
            total += d;
        }
        // The same single-run measurement for established packets: what a single
        // BPF_PROG_TEST_RUN adds on top of the program (timer, preemption bookkeeping).
        let mut single = Duration::ZERO;
        for _ in 0..n {
            single += dp.test_run(PROG_TO_ENDPOINT, &pkt, 1)?.1;
        }
        est.sort();
        let median = est[est.len() / 2];
        let new_single = total.as_secs_f64() * 1e9 / f64::from(n);
        let est_single = single.as_secs_f64() * 1e9 / f64::from(n);
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
        let est_ns = median.as_nanos() as f64;
        println!(
            "{{\"policy_entries\":{entries},\"conntrack_entries\":{CT_ENTRIES},\"established_ns\":{est_ns},\"new_flow_single_run_ns\":{new_single:.1},\"established_single_run_ns\":{est_single:.1},\"new_flow_ns\":{:.1}}}",
            new_single - est_single + est_ns
        );
    }
    Ok(())
}
