//! The real eBPF programs driven through `BPF_PROG_TEST_RUN` (needs root and a kernel with BPF):
//! malformed packets never fault the program and end in a counted drop reason or a verdict;
//! verdicts for well-formed packets match the reference evaluator.
//!
//! Need root and the eBPF object ([`catalyst_tests::require`]): plain `cargo test` skips them
//! with one line when either is missing, `cargo xtask test` (`CATALYST_TEST_MODE=full`) fails.
#![allow(
    clippy::too_many_lines,
    clippy::format_push_string,
    reason = "each test is one table of cases, read top to bottom; YAML built with format!"
)]

use std::{net::IpAddr, path::PathBuf};

use catalyst_tests::require::{Need, require};

use catalyst_agent::{
    config::MapSizes,
    datapath::{
        AttachMode, ConntrackGc, CtEntryV4, CtEntryV5, CtKey4V5, CtKeyV5, Datapath, DesiredState,
        GcReport, LoadOptions, MapStore, StoreError, apply, monotonic_ns, uninstall,
    },
};
use catalyst_policy::{
    CompileInput, Endpoint, LabelSet, PolicySet, compile,
    datapath::{
        ALL_MAPS, CT_F_SWAPPED, CtEntry, CtKey, CtTimeouts, DATAPATH_SCHEMA, DIR_EGRESS,
        DIR_INGRESS, DROP_CT_INVALID_HEADER, DROP_FRAG_NOT_FOUND, DROP_INVALID_IPV6_EXT,
        DROP_INVALID_PACKET, DROP_INVALID_SOURCE_IP, DROP_POLICY_DENIED, DROP_POLICY_DENY,
        DROP_UNSUPPORTED_L3, DatapathConfig, EndpointInfo, IpcacheEntry, MAP_CONFIG, MAP_CONNTRACK,
        MAP_CONNTRACK_V4, MAP_ENDPOINTS, PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PolicyEntry,
        PolicyKey, STAT_AUDIT, STAT_CT_CREATED, STAT_CT_ENDED, STAT_NOT_POLICED, VERDICT_AUDIT,
        VERDICT_DROPPED, VERDICT_FORWARDED, counter_index, ct_expiry, ct_side,
    },
    labels::SOURCE_K8S,
};
use ipnet::{Ipv4Net, Ipv6Net};

const PASS: i32 = -1;
const DROP: i32 = 2;
/// Loopback: `BPF_PROG_TEST_RUN` runs TC programs on an skb of the loopback device.
const LO: u32 = 1;

fn root_or_skip(name: &str) -> bool {
    require(name, &[Need::Root, Need::Ebpf])
}

struct Fixture {
    dp: Datapath,
    pin: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = uninstall(&self.pin);
    }
}

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8000", endPort: 8099, protocol: TCP}]}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
    - toCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.20/32]}]
"#;

fn input(policy: &str, audit: bool) -> CompileInput {
    let labels = |s: &str| LabelSet::parse([s], SOURCE_K8S).unwrap();
    let mut web = Endpoint::new(
        LO,
        "web",
        "shop",
        labels("app=web"),
        vec!["10.244.0.11".parse().unwrap(), "fd00::11".parse().unwrap()],
    );
    web.audit = audit;
    let client = Endpoint::new(
        77,
        "client",
        "shop",
        labels("app=client"),
        vec!["10.244.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
    );
    CompileInput {
        endpoints: vec![web, client],
        peers: vec![],
        policies: PolicySet::parse_str("test.yaml", policy)
            .unwrap()
            .into_policies(),
        global_audit: false,
    }
}

/// A pin directory of this test process for `name`, emptied of anything a previous run left.
fn fresh_pin(name: &str) -> PathBuf {
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/catalyst-test-{name}-{}",
        std::process::id()
    ));
    let _ = uninstall(&pin);
    pin
}

/// Loads the datapath with default sizes over whatever is pinned under `pin`.
fn load_at(pin: &std::path::Path) -> anyhow::Result<Datapath> {
    Datapath::load(&LoadOptions {
        pin_path: pin.to_owned(),
        sizes: MapSizes::default(),
        attach_mode: AttachMode::Auto,
    })
}

fn fixture(
    name: &str,
    policy: &str,
    audit: bool,
) -> (Fixture, catalyst_policy::Compiled, CompileInput) {
    let pin = fresh_pin(name);
    let dp = load_at(&pin).expect("datapath loads");
    let mut f = Fixture { dp, pin };
    let inp = input(policy, audit);
    let compiled = compile(&inp).unwrap();
    // The endpoint map is keyed by ifindex; only `web` lives on loopback.
    let desired = lo_only(&compiled);
    apply(&mut f.dp, &desired, true).unwrap();
    (f, compiled, inp)
}

/// The map contents of `compiled` with only the endpoint on loopback (the one device
/// `BPF_PROG_TEST_RUN` runs on) in the endpoint map.
fn lo_only(compiled: &catalyst_policy::Compiled) -> DesiredState {
    let mut d = DesiredState::from_compiled(compiled, 0, 0);
    d.endpoints.retain(|(id, _)| *id == LO);
    d
}

// ---------------------------------------------------------------------------------------------
// Packet building.
// ---------------------------------------------------------------------------------------------

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8], frag: u16) -> Vec<u8> {
    let mut p = eth(0x0800);
    let total = (20 + l4.len()) as u16;
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn ipv6(src: IpAddr, dst: IpAddr, next: u8, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("v6")
    };
    let mut p = eth(0x86DD);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    p.extend_from_slice(payload);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

const CLIENT: [u8; 4] = [10, 244, 0, 10];
const WEB: [u8; 4] = [10, 244, 0, 11];

fn counters(f: &Fixture) -> Vec<u64> {
    f.dp.counters().unwrap()
}

/// Runs a packet; `None` when the kernel refuses to inject it (recent kernels reject frames whose
/// ethertype promises an L3 header that is not there, before any program runs).
fn try_run(f: &Fixture, prog: &str, pkt: &[u8]) -> Option<i32> {
    match f.dp.test_run(prog, pkt, 1) {
        Ok((r, _)) => Some(r),
        Err(e) if format!("{e:#}").contains("Invalid argument") => None,
        Err(e) => panic!("{e:#}"),
    }
}

fn run(f: &Fixture, prog: &str, pkt: &[u8]) -> i32 {
    f.dp.test_run(prog, pkt, 1)
        .unwrap_or_else(|e| panic!("{e:#}: {} bytes {pkt:02x?}", pkt.len()))
        .0
}

/// Runs `pkt` and asserts the verdict and that exactly the counter for `reason` grew.
fn expect(f: &Fixture, what: &str, prog: &str, pkt: &[u8], ret: i32, dir: u8, reason: Option<u8>) {
    let before = counters(f);
    let got = run(f, prog, pkt);
    assert_eq!(got, ret, "{what}: return value");
    let after = counters(f);
    if let Some(reason) = reason {
        let i = counter_index(dir, reason) as usize;
        assert_eq!(
            after[i],
            before[i] + 1,
            "{what}: counter for reason {reason} in direction {dir}"
        );
    }
}

#[test]
fn malformed_packets_end_in_counted_drop_reasons() {
    if !root_or_skip("malformed_packets_end_in_counted_drop_reasons") {
        return;
    }
    let (f, _, _) = fixture("malformed", POLICY, false);
    let to = PROG_TO_ENDPOINT;
    // Ethernet only: the kernel may refuse to inject it; if it runs, it is an invalid packet.
    if let Some(r) = try_run(&f, to, &eth(0x0800)) {
        assert_eq!(r, DROP, "truncated IPv4");
    }
    // Bad IHL.
    let mut p = ipv4(CLIENT, WEB, 6, &tcp(1000, 80, 0x02), 0);
    p[14] = 0x43;
    expect(
        &f,
        "IHL 3",
        to,
        &p,
        DROP,
        DIR_INGRESS,
        Some(DROP_INVALID_PACKET),
    );
    // Wrong version in an IPv4 frame.
    let mut p = ipv4(CLIENT, WEB, 6, &tcp(1000, 80, 0x02), 0);
    p[14] = 0x65;
    expect(
        &f,
        "version 6 in IPv4 frame",
        to,
        &p,
        DROP,
        DIR_INGRESS,
        Some(DROP_INVALID_PACKET),
    );
    // IHL pointing past the end of the packet.
    let mut p = ipv4(CLIENT, WEB, 6, &tcp(1000, 80, 0x02)[..8], 0);
    p[14] = 0x4f;
    expect(
        &f,
        "IHL past the end",
        to,
        &p,
        DROP,
        DIR_INGRESS,
        Some(DROP_CT_INVALID_HEADER),
    );
    // Truncated TCP header.
    let p = ipv4(CLIENT, WEB, 6, &tcp(1000, 80, 0x02)[..10], 0);
    expect(
        &f,
        "truncated TCP",
        to,
        &p,
        DROP,
        DIR_INGRESS,
        Some(DROP_CT_INVALID_HEADER),
    );
    // TCP data offset below 5.
    let mut t = tcp(1000, 80, 0x02);
    t[12] = 0x40;
    expect(
        &f,
        "TCP doff 4",
        to,
        &ipv4(CLIENT, WEB, 6, &t, 0),
        DROP,
        DIR_INGRESS,
        Some(DROP_CT_INVALID_HEADER),
    );
    // Truncated UDP.
    expect(
        &f,
        "truncated UDP",
        to,
        &ipv4(CLIENT, WEB, 17, &[0, 1, 0], 0),
        DROP,
        DIR_INGRESS,
        Some(DROP_CT_INVALID_HEADER),
    );
    // Non-first fragment of a datagram whose first fragment was never seen.
    expect(
        &f,
        "IPv4 non-first fragment",
        to,
        &ipv4(CLIENT, WEB, 6, &[0; 16], 0x0010),
        DROP,
        DIR_INGRESS,
        Some(DROP_FRAG_NOT_FOUND),
    );
    // First fragment (MF set, offset 0) is evaluated by policy: allowed port.
    expect(
        &f,
        "IPv4 first fragment, allowed port",
        to,
        &ipv4(CLIENT, WEB, 6, &tcp(1001, 80, 0x02), 0x2000),
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    // IPv4 with 40 bytes of options, then TCP.
    let mut p = eth(0x0800);
    let t = tcp(1002, 80, 0x02);
    p.extend_from_slice(&[0x4f, 0]);
    p.extend_from_slice(&((60 + t.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&CLIENT);
    p.extend_from_slice(&WEB);
    p.extend_from_slice(&[1; 40]);
    p.extend_from_slice(&t);
    expect(&f, "IPv4 with options", to, &p, PASS, DIR_INGRESS, Some(0));
    // Unsupported L3.
    let mut p = eth(0x88cc);
    p.extend_from_slice(&[0; 40]);
    expect(
        &f,
        "LLDP",
        to,
        &p,
        DROP,
        DIR_INGRESS,
        Some(DROP_UNSUPPORTED_L3),
    );
    // ARP passes without policy.
    let mut p = eth(0x0806);
    p.extend_from_slice(&[0; 28]);
    let before = counters(&f)[STAT_NOT_POLICED as usize];
    assert_eq!(run(&f, to, &p), PASS, "ARP passes");
    assert_eq!(counters(&f)[STAT_NOT_POLICED as usize], before + 1);

    let c6: IpAddr = "fd00::10".parse().unwrap();
    let w6: IpAddr = "fd00::11".parse().unwrap();
    // IPv6 extension chain hop-by-hop → destination options → routing → TCP.
    let t = tcp(2000, 80, 0x02);
    let mut payload = vec![60, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop, next = dest opts
    payload.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // dest opts, next = routing
    payload.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]); // routing, next = TCP
    payload.extend_from_slice(&t);
    expect(
        &f,
        "IPv6 extension chain",
        to,
        &ipv6(c6, w6, 0, &payload),
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    // Too many extension headers.
    let mut payload = Vec::new();
    for _ in 0..7 {
        payload.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    payload.extend_from_slice(&t);
    expect(
        &f,
        "IPv6 7 extension headers",
        to,
        &ipv6(c6, w6, 60, &payload),
        DROP,
        DIR_INGRESS,
        Some(DROP_INVALID_IPV6_EXT),
    );
    // Truncated extension header.
    expect(
        &f,
        "IPv6 truncated extension",
        to,
        &ipv6(c6, w6, 0, &[6, 0, 1]),
        DROP,
        DIR_INGRESS,
        Some(DROP_INVALID_IPV6_EXT),
    );
    // No next header.
    expect(
        &f,
        "IPv6 no next header",
        to,
        &ipv6(c6, w6, 59, &[0; 8]),
        DROP,
        DIR_INGRESS,
        Some(DROP_INVALID_IPV6_EXT),
    );
    // Extension header length running past the end of the packet.
    expect(
        &f,
        "IPv6 extension length past the end",
        to,
        &ipv6(c6, w6, 0, &[6, 255, 0, 0, 0, 0, 0, 0]),
        DROP,
        DIR_INGRESS,
        None,
    );
    // Non-first IPv6 fragment.
    let frag = [6, 0, 0, 0x10, 0, 0, 0, 1];
    let mut payload = frag.to_vec();
    payload.extend_from_slice(&[0; 20]);
    expect(
        &f,
        "IPv6 non-first fragment",
        to,
        &ipv6(c6, w6, 44, &payload),
        DROP,
        DIR_INGRESS,
        Some(DROP_FRAG_NOT_FOUND),
    );
    // Neighbour solicitation passes without policy.
    let before = counters(&f)[STAT_NOT_POLICED as usize];
    assert_eq!(
        run(
            &f,
            to,
            &ipv6(c6, w6, 58, &[135, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        ),
        PASS
    );
    assert_eq!(counters(&f)[STAT_NOT_POLICED as usize], before + 1);
}

#[test]
fn random_bytes_never_fault_the_programs() {
    if !root_or_skip("random_bytes_never_fault_the_programs") {
        return;
    }
    let (f, _, _) = fixture("fuzz", POLICY, false);
    // Deterministic xorshift so failures reproduce.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ran, mut refused) = (0u32, 0u32);
    for i in 0..3000u32 {
        let len = 14 + (next() % 200) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Steer a share of the cases into the IPv4/IPv6 parsers.
        match i % 3 {
            0 => p[12..14].copy_from_slice(&0x0800u16.to_be_bytes()),
            1 => p[12..14].copy_from_slice(&0x86DDu16.to_be_bytes()),
            _ => {}
        }
        if i % 3 == 0 && len > 14 {
            p[14] = 0x40 | (p[14] & 0x0f);
        }
        if i % 3 == 1 && len > 14 {
            p[14] = 0x60 | (p[14] & 0x0f);
        }
        for prog in [PROG_TO_ENDPOINT, PROG_FROM_ENDPOINT] {
            match try_run(&f, prog, &p) {
                Some(r) => {
                    assert!(
                        r == PASS || r == DROP,
                        "case {i}: {prog} returned {r} for {p:02x?}"
                    );
                    ran += 1;
                }
                None => refused += 1,
            }
        }
    }
    eprintln!("random packets: {ran} runs, {refused} refused by the kernel before the program");
    assert!(ran > 3000, "too few packets reached the program: {ran}");
}

#[test]
fn verdicts_match_the_reference_evaluator() {
    if !root_or_skip("verdicts_match_the_reference_evaluator") {
        return;
    }
    for audit in [false, true] {
        let (f, compiled, inp) = fixture(if audit { "eval-audit" } else { "eval" }, POLICY, audit);
        let peers: [([u8; 4], &str); 5] = [
            (CLIENT, "client"),
            (
                [10, 244, 0, 99],
                "unknown in-cluster-looking address (world)",
            ),
            ([198, 51, 100, 10], "world in CIDR"),
            ([198, 51, 100, 20], "world in except"),
            ([8, 8, 8, 8], "world"),
        ];
        let mut sport = 10_000u16;
        let mut checked = 0;
        for (peer, what) in peers {
            for port in [22u16, 80, 443, 8000, 8050, 8080, 8099, 8100] {
                for (dir, prog) in [
                    (DIR_INGRESS, PROG_TO_ENDPOINT),
                    (DIR_EGRESS, PROG_FROM_ENDPOINT),
                ] {
                    sport += 1;
                    let pkt = if dir == DIR_INGRESS {
                        ipv4(peer, WEB, 6, &tcp(sport, port, 0x02), 0)
                    } else {
                        ipv4(WEB, peer, 6, &tcp(sport, port, 0x02), 0)
                    };
                    let peer_ip = IpAddr::from(peer);
                    let want = compiled.lookup(LO, dir, peer_ip, 6, port);
                    let eval = catalyst_policy::evaluate(
                        &inp,
                        &catalyst_policy::Packet {
                            endpoint_id: LO,
                            direction: dir,
                            peer: peer_ip,
                            protocol: 6,
                            dport: port,
                        },
                    )
                    .unwrap();
                    assert_eq!(
                        want.verdict,
                        eval.verdict.datapath(),
                        "emulation vs evaluator for {what}:{port} dir {dir}"
                    );
                    let before = counters(&f);
                    let ret = run(&f, prog, &pkt);
                    let after = counters(&f);
                    let dropped = want.verdict == VERDICT_DROPPED;
                    assert_eq!(
                        ret,
                        if dropped { DROP } else { PASS },
                        "{what}:{port} dir {dir} audit {audit}: {want:?}"
                    );
                    let reason = if want.verdict == VERDICT_DROPPED {
                        want.reason
                    } else {
                        0
                    };
                    let i = counter_index(dir, reason) as usize;
                    assert_eq!(
                        after[i],
                        before[i] + 1,
                        "{what}:{port} dir {dir}: counted under reason {reason}"
                    );
                    if audit && want.reason != 0 {
                        assert_eq!(want.verdict, VERDICT_AUDIT);
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 80);
        if !audit {
            // Spot checks of the semantics users rely on.
            assert_eq!(
                compiled
                    .lookup(LO, DIR_INGRESS, IpAddr::from(CLIENT), 6, 8080)
                    .reason,
                DROP_POLICY_DENY
            );
            assert_eq!(
                compiled
                    .lookup(LO, DIR_INGRESS, IpAddr::from(CLIENT), 6, 22)
                    .reason,
                DROP_POLICY_DENIED
            );
            assert_eq!(
                compiled
                    .lookup(LO, DIR_EGRESS, "198.51.100.20".parse().unwrap(), 6, 443)
                    .reason,
                DROP_POLICY_DENIED
            );
        }
    }
}

/// An IPv4 packet with identification `id`.
fn ipv4_id(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8], frag: u16, id: u16) -> Vec<u8> {
    let mut p = ipv4(src, dst, proto, l4, frag);
    p[18..20].copy_from_slice(&id.to_be_bytes());
    p
}

/// An IPv6 fragment header (next header TCP) followed by `rest`: `offset` in 8-byte units.
fn frag6(offset: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![6, 0];
    p.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(rest);
    p
}

#[test]
fn fragments_follow_the_verdict_of_their_first_fragment() {
    if !root_or_skip("fragments_follow_the_verdict_of_their_first_fragment") {
        return;
    }
    let (f, _, _) = fixture("fragments", POLICY, false);
    let to = PROG_TO_ENDPOINT;
    let middle = [0u8; 16];
    // Allowed datagram (client → web:80): first, middle and last fragments all pass.
    let steps: [(&str, Vec<u8>, i32, u8); 8] = [
        (
            "first fragment to an allowed port",
            ipv4_id(CLIENT, WEB, 6, &tcp(2000, 80, 0x02), 0x2000, 7),
            PASS,
            0,
        ),
        (
            "middle fragment of the allowed datagram",
            ipv4_id(CLIENT, WEB, 6, &middle, 0x2000 | 3, 7),
            PASS,
            0,
        ),
        (
            "last fragment of the allowed datagram",
            ipv4_id(CLIENT, WEB, 6, &middle, 5, 7),
            PASS,
            0,
        ),
        // Denied datagram (client → web:22): its later fragments are dropped as its flow is.
        (
            "first fragment to a denied port",
            ipv4_id(CLIENT, WEB, 6, &tcp(2001, 22, 0x02), 0x2000, 8),
            DROP,
            DROP_POLICY_DENIED,
        ),
        (
            "later fragment of the denied datagram",
            ipv4_id(CLIENT, WEB, 6, &middle, 3, 8),
            DROP,
            DROP_POLICY_DENIED,
        ),
        // Same addresses, an identification never seen: nothing to attribute it to.
        (
            "later fragment of an unknown datagram",
            ipv4_id(CLIENT, WEB, 6, &middle, 3, 9),
            DROP,
            DROP_FRAG_NOT_FOUND,
        ),
        // The identification is per source/destination pair: web → client's id 7 is unknown.
        (
            "same identification, other addresses",
            ipv4_id([10, 244, 0, 99], WEB, 6, &middle, 3, 7),
            DROP,
            DROP_FRAG_NOT_FOUND,
        ),
        (
            "IPv6 first fragment to an allowed port",
            ipv6(
                "fd00::10".parse().unwrap(),
                "fd00::11".parse().unwrap(),
                44,
                &frag6(0, true, 0xdead_beef, &tcp(2002, 80, 0x02)),
            ),
            PASS,
            0,
        ),
    ];
    for (what, pkt, ret, reason) in &steps {
        expect(&f, what, to, pkt, *ret, DIR_INGRESS, Some(*reason));
    }
    let (c6, w6): (IpAddr, IpAddr) = ("fd00::10".parse().unwrap(), "fd00::11".parse().unwrap());
    expect(
        &f,
        "IPv6 later fragment of the allowed datagram",
        to,
        &ipv6(c6, w6, 44, &frag6(3, false, 0xdead_beef, &middle)),
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    expect(
        &f,
        "IPv6 later fragment of an unknown datagram",
        to,
        &ipv6(c6, w6, 44, &frag6(3, false, 0x0bad_cafe, &middle)),
        DROP,
        DIR_INGRESS,
        Some(DROP_FRAG_NOT_FOUND),
    );
}

fn udp_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 8, 0, 0]);
    u
}

/// Seeded xorshift64 so every case reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const PORTS: [u16; 6] = [22, 53, 80, 443, 8080, 9000];

fn random_peer(rng: &mut Rng, from: bool) -> String {
    let (ep, cidr, cidrset, ent) = if from {
        ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
    } else {
        ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")
    };
    match rng.next() % 5 {
        0 => format!(
            "{ep}: [{{matchLabels: {{app: {}}}}}]",
            rng.pick(&["client", "db", "web"])
        ),
        1 => format!("{ep}: [{{}}]"),
        2 => format!(
            "{cidr}: [{}]",
            rng.pick(&[
                "198.51.100.0/24",
                "198.51.100.20/32",
                "0.0.0.0/0",
                "10.0.0.0/8"
            ])
        ),
        3 => format!("{cidrset}: [{{cidr: 198.51.100.0/24, except: [198.51.100.20/32]}}]"),
        _ => format!(
            "{ent}: [{}]",
            rng.pick(&["world", "cluster", "all", "host"])
        ),
    }
}

fn random_rule(rng: &mut Rng, from: bool) -> String {
    let mut r = format!("    - {}\n", random_peer(rng, from));
    if rng.chance(60) {
        let proto = rng.pick(&["TCP", "UDP", "ANY"]);
        let port = *rng.pick(&PORTS);
        if rng.chance(30) {
            r.push_str(&format!("      toPorts: [{{ports: [{{port: \"{port}\", endPort: {}, protocol: {proto}}}]}}]\n", port + 500));
        } else {
            r.push_str(&format!(
                "      toPorts: [{{ports: [{{port: \"{port}\", protocol: {proto}}}]}}]\n"
            ));
        }
    }
    r
}

fn random_policies(rng: &mut Rng) -> String {
    let mut docs = Vec::new();
    for i in 0..=(rng.next() % 3) {
        let mut body = String::new();
        for (section, from) in [
            ("ingress", true),
            ("egress", false),
            ("ingressDeny", true),
            ("egressDeny", false),
        ] {
            let p = if section.ends_with("Deny") { 20 } else { 50 };
            if rng.chance(p) {
                body.push_str(&format!("  {section}:\n"));
                for _ in 0..=(rng.next() % 2) {
                    body.push_str(&random_rule(rng, from));
                }
            }
        }
        let selector = if rng.chance(80) {
            "{matchLabels: {app: web}}"
        } else {
            "{}"
        };
        docs.push(format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: shop}}\nspec:\n  endpointSelector: {selector}\n{body}"
        ));
    }
    docs.join("---\n")
}

#[test]
fn random_policies_and_packets_match_the_reference_evaluator() {
    if !root_or_skip("random_policies_and_packets_match_the_reference_evaluator") {
        return;
    }
    let seed = std::env::var("CATALYST_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_u64);
    let mut rng = Rng(seed);
    let (mut f, _, _) = fixture("diff", POLICY, false);
    let peers: [[u8; 4]; 7] = [
        CLIENT,
        [10, 244, 0, 12],
        [10, 244, 0, 13],
        [198, 51, 100, 10],
        [198, 51, 100, 20],
        [8, 8, 8, 8],
        [10, 1, 2, 3],
    ];
    let mut sport = 1024u16;
    let mut cases = 0;
    let mut by_reason = std::collections::BTreeMap::new();
    for set in 0..40 {
        let yaml = random_policies(&mut rng);
        let labels = |s: &str| LabelSet::parse([s], SOURCE_K8S).unwrap();
        let inp = CompileInput {
            endpoints: vec![
                Endpoint::new(
                    LO,
                    "web",
                    "shop",
                    labels("app=web"),
                    vec!["10.244.0.11".parse().unwrap()],
                ),
                Endpoint::new(
                    77,
                    "client",
                    "shop",
                    labels("app=client"),
                    vec!["10.244.0.10".parse().unwrap()],
                ),
                Endpoint::new(
                    78,
                    "db",
                    "shop",
                    labels("app=db"),
                    vec!["10.244.0.12".parse().unwrap()],
                ),
                Endpoint::new(
                    79,
                    "other",
                    "other",
                    labels("app=client"),
                    vec!["10.244.0.13".parse().unwrap()],
                ),
            ],
            peers: vec![],
            policies: PolicySet::parse_str("random.yaml", &yaml)
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
                .into_policies(),
            global_audit: false,
        };
        let compiled = compile(&inp).unwrap();
        let desired = lo_only(&compiled);
        apply(&mut f.dp, &desired, false).unwrap();
        for _ in 0..80 {
            let peer = *rng.pick(&peers);
            let port = *rng.pick(&PORTS);
            let proto = *rng.pick(&[6u8, 17]);
            let (dir, prog) = *rng.pick(&[
                (DIR_INGRESS, PROG_TO_ENDPOINT),
                (DIR_EGRESS, PROG_FROM_ENDPOINT),
            ]);
            sport = sport.wrapping_add(1).max(1024);
            let l4 = if proto == 6 {
                tcp(sport, port, 0x02)
            } else {
                udp_hdr(sport, port)
            };
            let pkt = if dir == DIR_INGRESS {
                ipv4(peer, WEB, proto, &l4, 0)
            } else {
                ipv4(WEB, peer, proto, &l4, 0)
            };
            let peer_ip = IpAddr::from(peer);
            let eval = catalyst_policy::evaluate(
                &inp,
                &catalyst_policy::Packet {
                    endpoint_id: LO,
                    direction: dir,
                    peer: peer_ip,
                    protocol: proto,
                    dport: port,
                },
            )
            .unwrap();
            let before = counters(&f);
            let ret = run(&f, prog, &pkt);
            let after = counters(&f);
            let dropped = eval.verdict.datapath() == VERDICT_DROPPED;
            let what = format!(
                "seed {seed:#x} set {set} peer {peer_ip} proto {proto} port {port} dir {dir}\npolicies:\n{yaml}\nevaluator: {eval:?}"
            );
            assert_eq!(
                ret,
                if dropped { DROP } else { PASS },
                "verdict differs: {what}"
            );
            let reason = if dropped { eval.verdict.reason() } else { 0 };
            let i = counter_index(dir, reason) as usize;
            assert_eq!(
                after[i],
                before[i] + 1,
                "drop reason differs (expected {reason}): {what}"
            );
            cases += 1;
            *by_reason.entry(reason).or_insert(0u32) += 1;
        }
    }
    eprintln!(
        "differential: {cases} random cases agree (seed {seed:#x}); by drop reason: {by_reason:?}"
    );
    assert!(
        by_reason.len() >= 3,
        "the random sets exercise forward, 133 and 181: {by_reason:?}"
    );
    assert_eq!(cases, 3200);
}

/// A [`MapStore`] over the real maps that runs one packet of an established connection through
/// the program after every map operation, the way a busy flow interleaves with an update.
struct Interleaved<'a> {
    f: &'a mut Fixture,
    prog: &'static str,
    packet: Vec<u8>,
    verdicts: Vec<(String, i32)>,
}

impl Interleaved<'_> {
    fn tick(&mut self, op: &str) {
        let r = run(self.f, self.prog, &self.packet);
        self.verdicts.push((op.to_owned(), r));
    }
}

impl MapStore for Interleaved<'_> {
    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, StoreError> {
        self.f.dp.endpoints()
    }
    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), StoreError> {
        self.f.dp.put_endpoint(ifindex, info)?;
        self.tick("put endpoint");
        Ok(())
    }
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), StoreError> {
        self.f.dp.del_endpoint(ifindex)?;
        self.tick("del endpoint");
        Ok(())
    }
    fn ipcache_v4(&self) -> Result<Vec<(Ipv4Net, IpcacheEntry)>, StoreError> {
        self.f.dp.ipcache_v4()
    }
    fn put_ipcache_v4(&mut self, net: Ipv4Net, e: IpcacheEntry) -> Result<(), StoreError> {
        self.f.dp.put_ipcache_v4(net, e)?;
        self.tick("put ipcache4");
        Ok(())
    }
    fn del_ipcache_v4(&mut self, net: Ipv4Net) -> Result<(), StoreError> {
        self.f.dp.del_ipcache_v4(net)?;
        self.tick("del ipcache4");
        Ok(())
    }
    fn ipcache_v6(&self) -> Result<Vec<(Ipv6Net, IpcacheEntry)>, StoreError> {
        self.f.dp.ipcache_v6()
    }
    fn put_ipcache_v6(&mut self, net: Ipv6Net, e: IpcacheEntry) -> Result<(), StoreError> {
        self.f.dp.put_ipcache_v6(net, e)?;
        self.tick("put ipcache6");
        Ok(())
    }
    fn del_ipcache_v6(&mut self, net: Ipv6Net) -> Result<(), StoreError> {
        self.f.dp.del_ipcache_v6(net)?;
        self.tick("del ipcache6");
        Ok(())
    }
    fn policy(&self) -> Result<Vec<(u32, PolicyKey, PolicyEntry)>, StoreError> {
        self.f.dp.policy()
    }
    fn put_policy(&mut self, len: u32, key: PolicyKey, e: PolicyEntry) -> Result<(), StoreError> {
        self.f.dp.put_policy(len, key, e)?;
        self.tick("put policy");
        Ok(())
    }
    fn del_policy(&mut self, len: u32, key: PolicyKey) -> Result<(), StoreError> {
        self.f.dp.del_policy(len, key)?;
        self.tick("del policy");
        Ok(())
    }
    fn config(&self) -> Result<DatapathConfig, StoreError> {
        self.f.dp.config()
    }
    fn set_config(&mut self, cfg: DatapathConfig) -> Result<(), StoreError> {
        self.f.dp.set_config(cfg)?;
        self.tick("config");
        Ok(())
    }
}

/// Revocation while the connection is busy: a packet of the established connection runs after
/// every single map operation of the update. Once the update is applied, the connection is
/// dropped: no packet could cache "allow" under the new revision from an entry being removed.
#[test]
fn revocation_interleaved_with_a_busy_flow_is_final() {
    if !root_or_skip("revocation_interleaved_with_a_busy_flow_is_final") {
        return;
    }
    let (mut f, _, _) = fixture("revoke", POLICY, false);
    let syn = ipv4(CLIENT, WEB, 6, &tcp(41_000, 80, 0x02), 0);
    let ack = ipv4(CLIENT, WEB, 6, &tcp(41_000, 80, 0x10), 0);
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &syn), PASS, "allowed before");
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &ack), PASS, "established");
    // The new policy no longer allows client → web:80 (it allows 81 instead), so the update has
    // both puts and deletes.
    let revoked = POLICY.replace(
        r#"{port: "80", protocol: TCP}"#,
        r#"{port: "81", protocol: TCP}"#,
    );
    let compiled = compile(&input(&revoked, false)).unwrap();
    let desired = lo_only(&compiled);
    let mut store = Interleaved {
        f: &mut f,
        prog: PROG_TO_ENDPOINT,
        packet: ack.clone(),
        verdicts: Vec::new(),
    };
    let report = apply(&mut store, &desired, false).unwrap();
    let verdicts = store.verdicts;
    assert!(report.upserted > 0 && report.removed > 0, "{report:?}");
    assert!(
        verdicts.iter().any(|(op, _)| op == "del policy"),
        "{verdicts:?}"
    );
    for _ in 0..3 {
        assert_eq!(
            run(&f, PROG_TO_ENDPOINT, &ack),
            DROP,
            "the revoked connection stays open; packets during the update: {verdicts:?}"
        );
    }
    // A new connection to the newly allowed port passes.
    let syn81 = ipv4(CLIENT, WEB, 6, &tcp(41_001, 81, 0x02), 0);
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &syn81), PASS);
}

/// A workload sending from an address that is not its own is dropped with 132, counted, and
/// creates no connection; its own addresses pass; an endpoint that opted out may send from any.
#[test]
fn spoofed_sources_are_dropped_unless_the_endpoint_opted_out() {
    if !root_or_skip("spoofed_sources_are_dropped_unless_the_endpoint_opted_out") {
        return;
    }
    let (mut f, _, _) = fixture("spoof", POLICY, false);
    let from = PROG_FROM_ENDPOINT;
    let world = [198, 51, 100, 10];
    expect(
        &f,
        "own IPv4 source",
        from,
        &ipv4(WEB, world, 6, &tcp(42_000, 443, 0x02), 0),
        PASS,
        DIR_EGRESS,
        Some(0),
    );
    // The neighbour's address (known to the ipcache) and an unknown one.
    for (src, what) in [
        (CLIENT, "another endpoint's address"),
        ([10, 99, 0, 1], "unknown"),
    ] {
        let before = counters(&f)[STAT_CT_CREATED as usize];
        expect(
            &f,
            what,
            from,
            &ipv4(src, world, 6, &tcp(42_001, 443, 0x02), 0),
            DROP,
            DIR_EGRESS,
            Some(DROP_INVALID_SOURCE_IP),
        );
        assert_eq!(
            counters(&f)[STAT_CT_CREATED as usize],
            before,
            "{what}: no conntrack entry for a spoofed source"
        );
    }
    // A reply to the spoofed packet finds no connection: it is a new ingress flow from world,
    // which this policy does not allow.
    expect(
        &f,
        "reply towards the spoofed address",
        PROG_TO_ENDPOINT,
        &ipv4(world, CLIENT, 6, &tcp(443, 42_001, 0x12), 0),
        DROP,
        DIR_INGRESS,
        Some(DROP_POLICY_DENIED),
    );
    let w6: IpAddr = "fd00::11".parse().unwrap();
    let spoof6: IpAddr = "fd00::99".parse().unwrap();
    let world6: IpAddr = "2001:db8::1".parse().unwrap();
    expect(
        &f,
        "own IPv6 source",
        from,
        &ipv6(w6, world6, 17, &udp_hdr(42_002, 53)),
        DROP,
        DIR_EGRESS,
        Some(DROP_POLICY_DENIED),
    );
    expect(
        &f,
        "spoofed IPv6 source",
        from,
        &ipv6(spoof6, world6, 17, &udp_hdr(42_002, 53)),
        DROP,
        DIR_EGRESS,
        Some(DROP_INVALID_SOURCE_IP),
    );

    // Opt-out: the same spoofed packet is evaluated by policy (and allowed to the CIDR).
    let mut inp = input(POLICY, false);
    inp.endpoints[0].source_check = false;
    let desired = lo_only(&compile(&inp).unwrap());
    apply(&mut f.dp, &desired, false).unwrap();
    expect(
        &f,
        "opted-out endpoint, foreign source",
        from,
        &ipv4([10, 99, 0, 1], world, 6, &tcp(42_003, 443, 0x02), 0),
        PASS,
        DIR_EGRESS,
        Some(0),
    );
    // Back on: an established connection from a foreign source is dropped on re-evaluation.
    let desired = lo_only(&compile(&input(POLICY, false)).unwrap());
    apply(&mut f.dp, &desired, false).unwrap();
    expect(
        &f,
        "established foreign-source connection after the check is back on",
        from,
        &ipv4([10, 99, 0, 1], world, 6, &tcp(42_003, 443, 0x10), 0),
        DROP,
        DIR_EGRESS,
        Some(DROP_INVALID_SOURCE_IP),
    );
}

/// The audit counter counts packets forwarded under audit that policy would have dropped.
#[test]
fn audit_counter_counts_would_be_drops() {
    if !root_or_skip("audit_counter_counts_would_be_drops") {
        return;
    }
    let (f, _, _) = fixture("auditcount", POLICY, true);
    let before = counters(&f)[STAT_AUDIT as usize];
    let syn = ipv4(CLIENT, WEB, 6, &tcp(43_000, 22, 0x02), 0);
    let ack = ipv4(CLIENT, WEB, 6, &tcp(43_000, 22, 0x10), 0);
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &syn), PASS, "audit forwards");
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &ack), PASS, "audit forwards");
    assert_eq!(counters(&f)[STAT_AUDIT as usize], before + 2);
    // An allowed packet is not an audit.
    assert_eq!(
        run(
            &f,
            PROG_TO_ENDPOINT,
            &ipv4(CLIENT, WEB, 6, &tcp(43_001, 80, 0x02), 0)
        ),
        PASS
    );
    assert_eq!(counters(&f)[STAT_AUDIT as usize], before + 2);
}

/// Creates a map with `BPF_MAP_CREATE` and pins it at `path`, the way an agent built with
/// another layout left it.
fn pin_raw_map(path: &std::path::Path, map_type: u32, key: u32, value: u32, max: u32) {
    use std::os::unix::ffi::OsStrExt as _;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&map_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&key.to_ne_bytes());
    attr[8..12].copy_from_slice(&value.to_ne_bytes());
    attr[12..16].copy_from_slice(&max.to_ne_bytes());
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&u32::try_from(fd).unwrap().to_ne_bytes());
    // SAFETY: BPF_OBJ_PIN (6); `c` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_ptr(), attr.len()) };
    assert!(rc == 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: fd from BPF_MAP_CREATE, closed once; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// Pinned maps of an older layout are recreated, not read as garbage; compatible ones are
/// adopted with their contents; a config written under another schema recreates everything.
#[test]
fn pinned_maps_of_an_old_layout_are_recreated() {
    if !root_or_skip("pinned_maps_of_an_old_layout_are_recreated") {
        return;
    }
    let pin = fresh_pin("layout");
    let maps = pin.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    // The layout before versioning: 16-byte endpoint values and a 16-byte config.
    pin_raw_map(&maps.join(MAP_ENDPOINTS), 1, 4, 16, 4096);
    pin_raw_map(&maps.join(MAP_CONFIG), 2, 4, 16, 1);
    let load = || load_at(&pin);
    let mut f = Fixture {
        dp: load().expect("loads over an old-layout pin"),
        pin: pin.clone(),
    };
    let mut recreated = f.dp.recreated_maps().to_vec();
    recreated.sort_unstable();
    assert_eq!(recreated, [MAP_CONFIG, MAP_ENDPOINTS]);
    let info = aya::maps::MapInfo::from_pin(maps.join(MAP_ENDPOINTS)).unwrap();
    assert_eq!(
        info.value_size() as usize,
        std::mem::size_of::<EndpointInfo>()
    );
    let desired = lo_only(&compile(&input(POLICY, false)).unwrap());
    apply(&mut f.dp, &desired, true).unwrap();
    let syn = ipv4(CLIENT, WEB, 6, &tcp(44_000, 80, 0x02), 0);
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &syn), PASS);
    assert_eq!(
        run(
            &f,
            PROG_TO_ENDPOINT,
            &ipv4(CLIENT, WEB, 6, &tcp(44_001, 22, 0x02), 0)
        ),
        DROP,
        "policy enforced through the recreated maps"
    );
    let forwarded = counters(&f)[counter_index(DIR_INGRESS, 0) as usize];
    assert!(forwarded >= 1);

    // Same layout: everything is adopted, counters included.
    drop(std::mem::replace(&mut f.dp, load().unwrap()));
    assert!(
        f.dp.recreated_maps().is_empty(),
        "{:?}",
        f.dp.recreated_maps()
    );
    assert_eq!(
        counters(&f)[counter_index(DIR_INGRESS, 0) as usize],
        forwarded
    );
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &syn), PASS, "adopted state");

    // A config written under another schema: every pinned map is recreated.
    let mut cfg = f.dp.config().unwrap();
    cfg.schema = DATAPATH_SCHEMA + 1;
    f.dp.set_config(cfg).unwrap();
    drop(std::mem::replace(&mut f.dp, load().unwrap()));
    assert_eq!(f.dp.recreated_maps().len(), ALL_MAPS.len());
    assert_eq!(counters(&f)[counter_index(DIR_INGRESS, 0) as usize], 0);
}

/// The connection every upgrade test carries over: client:44100 → web:80, allowed into web
/// (on loopback), with its entry written by `fill` into the conntrack tables of an agent of
/// `schema` (`tables`: name, key size, value size). After the upgrade, web's SYN-ACK still
/// passes as the reply it is: without the entry it would be a new connection web → client,
/// which this policy denies (as the control packet of a connection the old agent did not know
/// shows).
fn an_upgrade_keeps_the_connection(
    name: &str,
    schema: u32,
    tables: &[(&str, u32, u32)],
    fill: impl FnOnce(&std::path::Path),
) {
    let pin = fresh_pin(name);
    let load = || load_at(&pin);
    let desired = lo_only(&compile(&input(POLICY, false)).unwrap());
    // What the old agent leaves: maps whose config says `schema` (made here by a current agent,
    // then marked) and conntrack tables of the old layout.
    let mut f = Fixture {
        dp: load().unwrap(),
        pin: pin.clone(),
    };
    apply(&mut f.dp, &desired, true).unwrap();
    let mut cfg = f.dp.config().unwrap();
    cfg.schema = schema;
    f.dp.set_config(cfg).unwrap();
    let maps = pin.join("maps");
    for (table, key, value) in tables {
        let path = maps.join(table);
        std::fs::remove_file(&path).unwrap();
        // BPF_MAP_TYPE_LRU_HASH
        pin_raw_map(&path, 9, *key, *value, 4096);
    }
    fill(&maps);
    drop(std::mem::replace(
        &mut f.dp,
        load().unwrap_or_else(|e| panic!("loads over schema-{schema} pins: {e:#}")),
    ));
    assert_eq!(
        f.dp.recreated_maps().len(),
        ALL_MAPS.len(),
        "everything recreated"
    );
    assert_eq!(
        f.dp.migrated_connections(),
        1,
        "the connection carried over"
    );
    apply(&mut f.dp, &desired, true).unwrap();
    let synack = ipv4(WEB, CLIENT, 6, &tcp(80, 44_100, 0x12), 0);
    assert_eq!(
        run(&f, PROG_FROM_ENDPOINT, &synack),
        PASS,
        "the reply of the carried-over connection"
    );
    let unknown = ipv4(WEB, CLIENT, 6, &tcp(80, 44_101, 0x12), 0);
    assert_eq!(run(&f, PROG_FROM_ENDPOINT, &unknown), DROP, "control");
    // The connection continues in its own direction too.
    let ack = ipv4(CLIENT, WEB, 6, &tcp(44_100, 80, 0x10), 0);
    assert_eq!(run(&f, PROG_TO_ENDPOINT, &ack), PASS);
}

/// Opens a conntrack table pinned by [`pin_raw_map`] with the old layout `K` → `V`.
fn old_table<K: aya::Pod, V: aya::Pod>(
    path: &std::path::Path,
) -> aya::maps::HashMap<aya::maps::MapData, K, V> {
    let data = aya::maps::MapData::from_pin(path).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap()
}

fn ip4(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

/// An upgrade from layout schema 4 keeps established connections: the old agent's conntrack
/// entries are converted (one key for both directions, a side per endpoint) while every map is
/// recreated.
#[test]
fn conntrack_entries_of_schema_4_survive_the_upgrade() {
    if !root_or_skip("conntrack_entries_of_schema_4_survive_the_upgrade") {
        return;
    }
    an_upgrade_keeps_the_connection("migrate4", 4, &[(MAP_CONNTRACK, 44, 56)], |maps| {
        let mut old: aya::maps::HashMap<_, CtKeyV5, CtEntryV4> =
            old_table(&maps.join(MAP_CONNTRACK));
        // Keyed by its original tuple, as schema 4 did.
        let key = CtKeyV5 {
            ifindex: LO,
            saddr: ip4(CLIENT),
            daddr: ip4(WEB),
            sport_be: 44_100u16.to_be(),
            dport_be: 80u16.to_be(),
            protocol: 6,
            family: 4,
            pad: 0,
        };
        let entry = CtEntryV4 {
            revision: 1,
            verdict: u32::from(VERDICT_FORWARDED),
            direction: u32::from(DIR_INGRESS),
            tcp_flags_seen: 0x02,
            policy_port: 80,
            expires_ns: monotonic_ns() + 3_600 * 1_000_000_000,
            ..CtEntryV4::default()
        };
        old.insert(key, entry, 0).unwrap();
    });
}

/// An upgrade from layout schema 5 (one entry per endpoint and connection, keyed with the
/// endpoint's ifindex) keeps established connections: the entries of the two endpoints of a
/// connection between workloads of the node become the two sides of one element.
#[test]
fn conntrack_entries_of_schema_5_survive_the_upgrade() {
    if !root_or_skip("conntrack_entries_of_schema_5_survive_the_upgrade") {
        return;
    }
    let tables = [(MAP_CONNTRACK_V4, 20, 32), (MAP_CONNTRACK, 44, 32)];
    an_upgrade_keeps_the_connection("migrate5", 5, &tables, |maps| {
        let mut old: aya::maps::HashMap<_, CtKey4V5, CtEntryV5> =
            old_table(&maps.join(MAP_CONNTRACK_V4));
        let (k, swapped) = CtKey::canonical(
            ip4(CLIENT),
            ip4(WEB),
            44_100u16.to_be(),
            80u16.to_be(),
            6,
            4,
        );
        let key = |ifindex| CtKey4V5 {
            ifindex,
            saddr: k.saddr[0],
            daddr: k.daddr[0],
            sport_be: k.sport_be,
            dport_be: k.dport_be,
            protocol: 6,
            pad8: 0,
            pad16: 0,
        };
        let entry = |direction| CtEntryV5 {
            revision: 1,
            verdict: VERDICT_FORWARDED,
            direction,
            flags: if swapped { u16::from(CT_F_SWAPPED) } else { 0 },
            tcp_flags_seen: 0x02,
            policy_port: 80,
            expires: ct_expiry(monotonic_ns(), 3_600 * 1_000_000_000),
            ..CtEntryV5::default()
        };
        // web's entry (ingress, on loopback) and the client's (egress, on its interface).
        old.insert(key(LO), entry(DIR_INGRESS), 0).unwrap();
        old.insert(key(77), entry(DIR_EGRESS), 0).unwrap();
    });
}

/// A network namespace of a test with one veth pair (`a` up), removed however the test ends.
struct Netns(String);

impl Netns {
    fn with_veth(name: &str, a: &str, b: &str) -> Self {
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", name]);
        let ns = Self(name.to_owned());
        ip(&[
            "-n", name, "link", "add", a, "type", "veth", "peer", "name", b,
        ]);
        ip(&["-n", name, "link", "set", a, "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A connection between two workloads of the node is one conntrack element with a side for
/// each: the second endpoint's hook fills its side of the element the first one made (its own
/// policy decides, it counts its own new connection), the packets of both directions at both
/// hooks find their side, and a workload that sends with another's address on another's
/// connection finds no side of its own: the source check drops it.
#[test]
fn a_connection_between_two_local_workloads_is_one_element_with_a_side_each() {
    if !root_or_skip("a_connection_between_two_local_workloads_is_one_element_with_a_side_each") {
        return;
    }
    let id = std::process::id();
    let ns = format!("cat-sides-{id}");
    let netns = Netns::with_veth(&ns, "client0", "client1");
    let pin = PathBuf::from(format!("/sys/fs/bpf/catalyst-test-sides-{id}"));
    let _ = uninstall(&pin);
    let p = pin.clone();
    let result = catalyst_tests::lab::in_netns(&ns, move || {
        // SAFETY: a NUL-terminated literal.
        let client_if = unsafe { libc::if_nametoindex(c"client0".as_ptr()) };
        assert!(client_if > 1);
        let mut f = Fixture {
            dp: load_at(&p).expect("datapath loads"),
            pin: p.clone(),
        };
        // web on loopback, the client on its own interface (its egress is not enforced).
        let mut desired =
            DesiredState::from_compiled(&compile(&input(POLICY, false)).unwrap(), 0, 0);
        for (ifindex, _) in &mut desired.endpoints {
            if *ifindex == 77 {
                *ifindex = client_if;
            }
        }
        apply(&mut f.dp, &desired, true).unwrap();
        let at = |prog: &str, ifindex: u32, pkt: &[u8]| {
            f.dp.test_run_on(prog, pkt, 1, ifindex)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .0
        };
        let created = |f: &Fixture| counters(f)[STAT_CT_CREATED as usize];
        let (c, w) = (CLIENT, WEB);
        let syn = ipv4(c, w, 6, &tcp(44_200, 80, 0x02), 0);
        let before = created(&f);
        // The SYN leaves the client, then arrives at web.
        assert_eq!(
            at(PROG_FROM_ENDPOINT, client_if, &syn),
            PASS,
            "client egress"
        );
        assert_eq!(at(PROG_TO_ENDPOINT, LO, &syn), PASS, "web ingress");
        assert_eq!(created(&f), before + 2, "a new connection at each endpoint");
        let (key, swapped) =
            CtKey::canonical(ip4(c), ip4(w), 44_200u16.to_be(), 80u16.to_be(), 6, 4);
        let conn =
            f.dp.conntrack_get(&key)
                .expect("one element under the connection's key");
        let client_side = conn.sides[ct_side(DIR_EGRESS, swapped)];
        let web_side = conn.sides[ct_side(DIR_INGRESS, swapped)];
        assert_eq!(
            (
                client_side.ifindex,
                client_side.direction,
                client_side.verdict
            ),
            (client_if, DIR_EGRESS, VERDICT_FORWARDED)
        );
        assert_eq!(
            (web_side.ifindex, web_side.direction, web_side.verdict),
            (LO, DIR_INGRESS, VERDICT_FORWARDED)
        );
        assert_eq!(
            f.dp.conntrack_get(&key).map(|c| c.sides),
            Some(conn.sides),
            "read twice, same"
        );
        // The reply leaves web and arrives at the client; the connection goes on; nothing new.
        let synack = ipv4(w, c, 6, &tcp(80, 44_200, 0x12), 0);
        assert_eq!(
            at(PROG_FROM_ENDPOINT, LO, &synack),
            PASS,
            "web egress, reply"
        );
        assert_eq!(
            at(PROG_TO_ENDPOINT, client_if, &synack),
            PASS,
            "client ingress, reply"
        );
        let ack = ipv4(c, w, 6, &tcp(44_200, 80, 0x10), 0);
        assert_eq!(at(PROG_FROM_ENDPOINT, client_if, &ack), PASS);
        assert_eq!(at(PROG_TO_ENDPOINT, LO, &ack), PASS);
        assert_eq!(created(&f), before + 2, "all on the two sides");
        let seen = f.dp.conntrack_get(&key).unwrap();
        assert_ne!(
            seen.sides[ct_side(DIR_INGRESS, swapped)].tcp_flags_seen & (0x02 << 4),
            0,
            "web's side saw its SYN-ACK"
        );
        // web sends with the client's address on the client's connection: the client's side is
        // not web's, so it is a new connection of web's, from a foreign source.
        let spoofed = ipv4(c, w, 6, &tcp(44_200, 80, 0x10), 0);
        let spoof_drops = counters(&f)[counter_index(DIR_EGRESS, DROP_INVALID_SOURCE_IP) as usize];
        assert_eq!(at(PROG_FROM_ENDPOINT, LO, &spoofed), DROP, "spoofed by web");
        assert_eq!(
            counters(&f)[counter_index(DIR_EGRESS, DROP_INVALID_SOURCE_IP) as usize],
            spoof_drops + 1
        );
        // A connection of web with a peer that is not a workload of the node uses one side.
        let outside = ipv4([198, 51, 100, 7], w, 6, &tcp(50_000, 80, 0x02), 0);
        let _ = at(PROG_TO_ENDPOINT, LO, &outside);
        let (okey, oswapped) = CtKey::canonical(
            ip4([198, 51, 100, 7]),
            ip4(w),
            50_000u16.to_be(),
            80u16.to_be(),
            6,
            4,
        );
        let other = f.dp.conntrack_get(&okey).expect("web's connection");
        assert_eq!(other.sides[ct_side(DIR_INGRESS, oswapped)].ifindex, LO);
        assert_eq!(
            other.sides[ct_side(DIR_EGRESS, oswapped)],
            CtEntry::default(),
            "the unused side is zero"
        );
        drop(f);
    });
    let _ = uninstall(&pin);
    drop(netns);
    // The panic message of a failed assertion is printed by the thread that panicked.
    result.expect("the test's assertions in the network namespace");
}

/// Conntrack lifecycle: FIN/RST move a TCP connection to closing and a new SYN on its tuple
/// starts a new, re-evaluated connection; a connection idle past the timeout of its state is
/// over (its replies no longer pass as replies).
#[test]
fn conntrack_entries_end_by_state_timeout_and_tuple_reuse() {
    if !root_or_skip("conntrack_entries_end_by_state_timeout_and_tuple_reuse") {
        return;
    }
    let (mut f, compiled, _) = fixture("ctlife", POLICY, false);
    let to = PROG_TO_ENDPOINT;
    let stat = |f: &Fixture, slot: u32| counters(f)[slot as usize];

    // Tuple reuse after FIN.
    let syn = ipv4(CLIENT, WEB, 6, &tcp(45_000, 80, 0x02), 0);
    assert_eq!(run(&f, to, &syn), PASS);
    assert_eq!(
        run(&f, to, &ipv4(CLIENT, WEB, 6, &tcp(45_000, 80, 0x10), 0)),
        PASS
    );
    assert_eq!(
        run(&f, to, &ipv4(CLIENT, WEB, 6, &tcp(45_000, 80, 0x11), 0)),
        PASS,
        "FIN"
    );
    let (created, ended) = (stat(&f, STAT_CT_CREATED), stat(&f, STAT_CT_ENDED));
    // A retransmitted ACK of the closing connection is still that connection.
    assert_eq!(
        run(&f, to, &ipv4(CLIENT, WEB, 6, &tcp(45_000, 80, 0x10), 0)),
        PASS
    );
    assert_eq!(stat(&f, STAT_CT_CREATED), created);
    assert_eq!(run(&f, to, &syn), PASS, "new SYN on the tuple");
    assert_eq!(
        stat(&f, STAT_CT_ENDED),
        ended + 1,
        "closing connection ended"
    );
    assert_eq!(
        stat(&f, STAT_CT_CREATED),
        created + 1,
        "new connection created"
    );

    // Timeouts of 1 s for every state.
    let mut desired = lo_only(&compiled);
    desired.ct_timeouts = CtTimeouts {
        tcp_syn_s: 1,
        tcp_established_s: 1,
        tcp_closing_s: 1,
        udp_s: 1,
        other_s: 1,
        pad: 0,
    };
    apply(&mut f.dp, &desired, false).unwrap();
    let syn = ipv4(CLIENT, WEB, 6, &tcp(45_001, 80, 0x02), 0);
    let synack = ipv4(WEB, CLIENT, 6, &tcp(80, 45_001, 0x12), 0);
    let ack_reply = ipv4(WEB, CLIENT, 6, &tcp(80, 45_001, 0x10), 0);
    assert_eq!(run(&f, to, &syn), PASS);
    assert_eq!(run(&f, PROG_FROM_ENDPOINT, &synack), PASS, "reply passes");
    assert_eq!(
        run(&f, PROG_FROM_ENDPOINT, &ack_reply),
        PASS,
        "reply passes"
    );
    let ended = stat(&f, STAT_CT_ENDED);
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    // The connection is over: web's packet to client:45001 is a new egress connection, which
    // this policy does not allow (egress only to 198.51.100.0/24).
    expect(
        &f,
        "reply of an expired connection",
        PROG_FROM_ENDPOINT,
        &ack_reply,
        DROP,
        DIR_EGRESS,
        Some(DROP_POLICY_DENIED),
    );
    assert_eq!(stat(&f, STAT_CT_ENDED), ended + 1);

    // Refreshing traffic keeps a connection alive past one timeout.
    let udp = |sport| ipv4(WEB, [198, 51, 100, 10], 17, &udp_hdr(sport, 53), 0);
    assert_eq!(run(&f, PROG_FROM_ENDPOINT, &udp(45_002)), PASS);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let created = stat(&f, STAT_CT_CREATED);
        assert_eq!(run(&f, PROG_FROM_ENDPOINT, &udp(45_002)), PASS);
        assert_eq!(
            stat(&f, STAT_CT_CREATED),
            created,
            "still the same connection"
        );
    }
}

/// ICMP/ICMPv6 errors (fragmentation needed, packet too big) quoting a packet of a tracked
/// connection pass as related under default deny; errors quoting anything else, or a dropped
/// connection, are policed like any ICMP packet.
#[test]
fn icmp_errors_of_tracked_connections_pass_as_related() {
    if !root_or_skip("icmp_errors_of_tracked_connections_pass_as_related") {
        return;
    }
    let (f, _, _) = fixture("icmperr", POLICY, false);
    let world = [198, 51, 100, 10];
    let router = [203, 0, 113, 1];
    // Fragmentation needed (type 3 code 4, MTU 1400) quoting `quoted`.
    let frag_needed = |quoted: &[u8]| {
        let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        ipv4(router, WEB, 1, &icmp, 0)
    };
    let syn = ipv4(WEB, world, 6, &tcp(46_000, 443, 0x02), 0);
    assert_eq!(run(&f, PROG_FROM_ENDPOINT, &syn), PASS, "egress allowed");
    expect(
        &f,
        "fragmentation needed for a tracked connection",
        PROG_TO_ENDPOINT,
        &frag_needed(&syn),
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    expect(
        &f,
        "fragmentation needed quoting an untracked tuple",
        PROG_TO_ENDPOINT,
        &frag_needed(&ipv4(WEB, world, 6, &tcp(46_001, 443, 0x02), 0)),
        DROP,
        DIR_INGRESS,
        Some(DROP_POLICY_DENIED),
    );

    // IPv6: packet too big about web's reply of an allowed ingress connection.
    let c6: IpAddr = "fd00::10".parse().unwrap();
    let w6: IpAddr = "fd00::11".parse().unwrap();
    let r6: IpAddr = "2001:db8::1".parse().unwrap();
    let too_big = |quoted: &[u8]| {
        let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(&quoted[14..14 + 48]);
        ipv6(r6, w6, 58, &icmp)
    };
    assert_eq!(
        run(
            &f,
            PROG_TO_ENDPOINT,
            &ipv6(c6, w6, 6, &tcp(46_002, 80, 0x02))
        ),
        PASS
    );
    let reply = ipv6(w6, c6, 6, &tcp(80, 46_002, 0x12));
    assert_eq!(run(&f, PROG_FROM_ENDPOINT, &reply), PASS);
    expect(
        &f,
        "packet too big for a tracked connection's reply",
        PROG_TO_ENDPOINT,
        &too_big(&reply),
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    // A connection policy dropped (deny rule on 8080) gets no related errors.
    assert_eq!(
        run(
            &f,
            PROG_TO_ENDPOINT,
            &ipv6(c6, w6, 6, &tcp(46_003, 8080, 0x02))
        ),
        DROP
    );
    expect(
        &f,
        "packet too big about a denied connection",
        PROG_TO_ENDPOINT,
        &too_big(&ipv6(w6, c6, 6, &tcp(8080, 46_003, 0x12))),
        DROP,
        DIR_INGRESS,
        Some(DROP_POLICY_DENIED),
    );
    // Web sends an unreachable about the client's connection: related, from its own address;
    // the same error from a foreign source is a spoof.
    let client_pkt = ipv6(c6, w6, 6, &tcp(46_002, 80, 0x10));
    let unreachable = |src: IpAddr| {
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&client_pkt[14..14 + 48]);
        ipv6(src, c6, 58, &icmp)
    };
    expect(
        &f,
        "port unreachable from the endpoint's own address",
        PROG_FROM_ENDPOINT,
        &unreachable(w6),
        PASS,
        DIR_EGRESS,
        Some(0),
    );
    expect(
        &f,
        "port unreachable from a foreign source",
        PROG_FROM_ENDPOINT,
        &unreachable("fd00::99".parse().unwrap()),
        DROP,
        DIR_EGRESS,
        Some(DROP_INVALID_SOURCE_IP),
    );
}

/// The garbage collector removes expired connections and counts the live ones.
#[test]
fn conntrack_gc_removes_expired_entries() {
    if !root_or_skip("conntrack_gc_removes_expired_entries") {
        return;
    }
    let (mut f, compiled, _) = fixture("ctgc", POLICY, false);
    let mut desired = lo_only(&compiled);
    desired.ct_timeouts.udp_s = 1;
    apply(&mut f.dp, &desired, false).unwrap();
    let mut gc = ConntrackGc::open(&f.pin).unwrap();
    let udp = |sport| ipv4(WEB, [198, 51, 100, 10], 17, &udp_hdr(sport, 53), 0);
    for sport in 47_000..47_010 {
        assert_eq!(run(&f, PROG_FROM_ENDPOINT, &udp(sport)), PASS);
    }
    // A TCP connection (SYN timeout 60 s) stays.
    assert_eq!(
        run(
            &f,
            PROG_TO_ENDPOINT,
            &ipv4(CLIENT, WEB, 6, &tcp(47_100, 80, 0x02), 0)
        ),
        PASS
    );
    let first = gc.sweep().unwrap();
    assert_eq!(
        first,
        GcReport {
            live: 11,
            removed: 0
        }
    );
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    let second = gc.sweep().unwrap();
    assert_eq!(
        second,
        GcReport {
            live: 1,
            removed: 10
        }
    );
}

/// A new TCP connection is decided on its SYN before the reverse conntrack lookup (one lookup
/// when policy allows it). A SYN that policy denies must still find the tracked connection whose
/// reverse tuple it uses and pass as that connection's packet, as before: it may not leave a
/// "dropped" entry that would then shadow the connection's replies.
#[test]
fn a_denied_syn_on_a_tracked_reverse_tuple_does_not_break_the_connection() {
    if !root_or_skip("a_denied_syn_on_a_tracked_reverse_tuple_does_not_break_the_connection") {
        return;
    }
    let (f, _, _) = fixture("revsyn", POLICY, false);
    // client → web:80 is allowed in; web may not open connections to the client.
    let syn_in = ipv4(CLIENT, WEB, 6, &tcp(41_100, 80, 0x02), 0);
    assert_eq!(
        run(&f, PROG_TO_ENDPOINT, &syn_in),
        PASS,
        "client → web:80 allowed"
    );
    let syn_out = ipv4(WEB, CLIENT, 6, &tcp(80, 41_100, 0x02), 0);
    assert_eq!(
        run(&f, PROG_FROM_ENDPOINT, &syn_out),
        PASS,
        "a SYN on the reverse tuple of the tracked connection passes with it"
    );
    let synack = ipv4(WEB, CLIENT, 6, &tcp(80, 41_100, 0x12), 0);
    assert_eq!(
        run(&f, PROG_FROM_ENDPOINT, &synack),
        PASS,
        "the replies still pass"
    );
    let ack_in = ipv4(CLIENT, WEB, 6, &tcp(41_100, 80, 0x10), 0);
    assert_eq!(
        run(&f, PROG_TO_ENDPOINT, &ack_in),
        PASS,
        "the connection still passes"
    );
    // Without a tracked connection the same SYN is a new, denied connection.
    let other = ipv4(WEB, CLIENT, 6, &tcp(80, 41_101, 0x02), 0);
    assert_eq!(
        run(&f, PROG_FROM_ENDPOINT, &other),
        DROP,
        "web → client is denied"
    );
}

const SPLIT: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: split, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDR: [198.51.100.0/24, "2001:db8::/64"]
      toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", endPort: 9099, protocol: TCP}]}]
  ingressDeny:
    - fromCIDR: [198.51.100.20/32, "2001:db8::20/128"]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

/// Single addresses (/32, /128) and one-port policy entries live in exact-match hash maps, the
/// shorter prefixes in the LPM tries; lookups must still answer as one longest-prefix match:
/// a /32 inside an allowed /24 with a deny of its own is denied while its neighbours pass, a
/// port range (trie) and a single port (hash) of the same peer both apply, and the entries read
/// back from the kernel are the ones applied (a second sync changes nothing).
#[test]
fn exact_entries_and_prefixes_answer_as_one_longest_prefix_match() {
    if !root_or_skip("exact_entries_and_prefixes_answer_as_one_longest_prefix_match") {
        return;
    }
    let (mut f, compiled, _) = fixture("exactsplit", SPLIT, false);
    let desired = lo_only(&compiled);
    let v4 = f.dp.ipcache_v4().unwrap();
    assert!(
        v4.iter().any(|(n, _)| n.prefix_len() == 32) && v4.iter().any(|(n, _)| n.prefix_len() < 32),
        "both kinds of ipcache entries read back: {v4:?}"
    );
    let v6 = f.dp.ipcache_v6().unwrap();
    assert!(v6.iter().any(|(n, _)| n.prefix_len() == 128), "{v6:?}");
    let policy = f.dp.policy().unwrap();
    assert!(
        policy.iter().any(|(len, _, _)| *len == 96) && policy.iter().any(|(len, _, _)| *len < 96)
    );
    let again = apply(&mut f.dp, &desired, false).unwrap();
    assert_eq!(
        (again.upserted, again.removed),
        (0, 0),
        "read-back equals the applied state"
    );

    let web6: IpAddr = "fd00::11".parse().unwrap();
    let cases: [(&str, IpAddr, u16, i32, u8); 8] = [
        (
            "/24 peer, port 80 (hash)",
            "198.51.100.21".parse().unwrap(),
            80,
            PASS,
            0,
        ),
        (
            "/24 peer, port in range (trie)",
            "198.51.100.21".parse().unwrap(),
            9050,
            PASS,
            0,
        ),
        (
            "denied /32, port 80",
            "198.51.100.20".parse().unwrap(),
            80,
            DROP,
            DROP_POLICY_DENY,
        ),
        (
            "denied /32, port in range",
            "198.51.100.20".parse().unwrap(),
            9050,
            PASS,
            0,
        ),
        (
            "outside the /24",
            "198.51.101.20".parse().unwrap(),
            80,
            DROP,
            DROP_POLICY_DENIED,
        ),
        (
            "/64 peer, port 80",
            "2001:db8::21".parse().unwrap(),
            80,
            PASS,
            0,
        ),
        (
            "denied /128, port 80",
            "2001:db8::20".parse().unwrap(),
            80,
            DROP,
            DROP_POLICY_DENY,
        ),
        (
            "/64 peer, port 443",
            "2001:db8::21".parse().unwrap(),
            443,
            DROP,
            DROP_POLICY_DENIED,
        ),
    ];
    for (i, (what, peer, port, ret, reason)) in cases.into_iter().enumerate() {
        let l4 = tcp(41_000 + i as u16, port, 0x02);
        let pkt = match peer {
            IpAddr::V4(a) => ipv4(a.octets(), WEB, 6, &l4, 0),
            IpAddr::V6(_) => ipv6(peer, web6, 6, &l4),
        };
        expect(
            &f,
            what,
            PROG_TO_ENDPOINT,
            &pkt,
            ret,
            DIR_INGRESS,
            Some(reason),
        );
    }
}

/// The programs are attached at the TCX hooks (with pinned links where the host allows pinning
/// them, else without links), stay there when the agent is gone, are replaced by a restarted
/// agent's programs (one program per hook, never two), and `uninstall` removes them.
#[test]
fn programs_stay_at_the_tcx_hooks_across_a_restart_and_uninstall_removes_them() {
    use catalyst_agent::datapath::tcx::{self, TCX_EGRESS, TCX_INGRESS};
    if !root_or_skip("programs_stay_at_the_tcx_hooks_across_a_restart_and_uninstall_removes_them") {
        return;
    }
    let id = std::process::id();
    let ns = format!("cat-tcx-{id}");
    let netns = Netns::with_veth(&ns, "tcx0", "tcx1");
    let pin = PathBuf::from(format!("/sys/fs/bpf/catalyst-test-tcx-{id}"));
    let p = pin.clone();
    let result = catalyst_tests::lab::in_netns(&ns, move || {
        let load = || {
            Datapath::load(&LoadOptions {
                pin_path: p.clone(),
                sizes: MapSizes::default(),
                attach_mode: AttachMode::Auto,
            })
            .expect("datapath loads")
        };
        // SAFETY: a NUL-terminated literal.
        let ifindex = unsafe { libc::if_nametoindex(c"tcx0".as_ptr()) };
        let hooks = || {
            [TCX_INGRESS, TCX_EGRESS].map(|t| {
                tcx::query(ifindex, t)
                    .expect("query")
                    .iter()
                    .map(|a| a.prog_id)
                    .collect::<Vec<_>>()
            })
        };
        let mut dp = load();
        dp.attach("tcx0").expect("attach");
        assert_eq!(dp.attach_mode(), AttachMode::Tcx);
        let first = hooks();
        assert!(
            first.iter().all(|h| h.len() == 1),
            "one program per hook: {first:?}"
        );
        drop(dp);
        assert_eq!(hooks(), first, "still attached after the agent is gone");
        let mut dp = load();
        dp.attach("tcx0").expect("attach again");
        let second = hooks();
        assert!(
            second.iter().all(|h| h.len() == 1),
            "replaced, not added: {second:?}"
        );
        assert_ne!(second, first, "the restarted agent's programs run");
        drop(dp);
        uninstall(&p).expect("uninstall");
        hooks()
    });
    let _ = uninstall(&pin);
    drop(netns);
    let after = result.expect("netns");
    assert!(
        after.iter().all(Vec::is_empty),
        "uninstall detaches: {after:?}"
    );
}

/// The event ring buffer as the agent reads it: every committed record is read once and in order
/// across many wrap-arounds of a small ring; when the ring is full the events that do not fit
/// are counted as lost, and reading frees the space for the next ones.
#[test]
fn the_event_reader_reads_every_record_in_order_across_wraps_and_frees_space() {
    use catalyst_agent::flow::decode_event;
    use catalyst_policy::datapath::{EVENT_POLICY_VERDICT, FLOW_EVENT4_SIZE, STAT_EVENTS_LOST};
    const RING: u32 = 16 * 1024;
    if !root_or_skip("the_event_reader_reads_every_record_in_order_across_wraps_and_frees_space") {
        return;
    }
    let pin = fresh_pin("evring");
    let dp = Datapath::load(&LoadOptions {
        pin_path: pin.clone(),
        sizes: MapSizes {
            events_bytes: RING,
            ..MapSizes::default()
        },
        attach_mode: AttachMode::Auto,
    })
    .expect("datapath loads");
    let mut f = Fixture { dp, pin };
    let compiled = compile(&input(POLICY, false)).unwrap();
    apply(&mut f.dp, &lo_only(&compiled), true).unwrap();
    let mut ring = f.dp.take_events().expect("ring buffer");
    let mut drain = move || {
        let mut ports = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(
                item.len(),
                FLOW_EVENT4_SIZE,
                "an IPv4 event's compact record"
            );
            let ev = decode_event(&item).expect("a flow event");
            assert_eq!(ev.kind, EVENT_POLICY_VERDICT);
            ports.push(ev.sport);
        }
        ports
    };
    let lost = |f: &Fixture| counters(f)[STAT_EVENTS_LOST as usize];
    // Each allowed SYN of a new connection sends one verdict event.
    let syns = |f: &Fixture, ports: std::ops::Range<u16>| {
        for sport in ports {
            let pkt = ipv4(CLIENT, WEB, 6, &tcp(sport, 80, 0x02), 0);
            assert_eq!(
                run(f, PROG_TO_ENDPOINT, &pkt),
                PASS,
                "SYN from port {sport}"
            );
        }
    };
    assert!(drain().is_empty());
    // 1,000 records of 64 bytes through a 16 KiB ring: about four wrap-arounds.
    let mut next = 20_000u16;
    for round in 0..10 {
        syns(&f, next..next + 100);
        let want: Vec<u16> = (next..next + 100).collect();
        assert_eq!(drain(), want, "round {round}: every record, once, in order");
        next += 100;
    }
    assert_eq!(lost(&f), 0, "nothing lost while the reader keeps up");
    // A full ring: what does not fit is counted, what fits is read in order.
    syns(&f, next..next + 300);
    let got = drain();
    let lost_now = lost(&f);
    assert_eq!(
        got.len() as u64 + lost_now,
        300,
        "read {} lost {lost_now}",
        got.len()
    );
    // A record is the event and an 8-byte header: 64 bytes for an IPv4 event; the kernel keeps
    // the unread records below the ring's size (at most size - 1 bytes).
    assert_eq!(got.len(), (RING as usize - 1) / 64, "the ring was filled");
    let want: Vec<u16> = (next..next + got.len() as u16).collect();
    assert_eq!(got, want, "the records that fit, in order");
    next += 300;
    // The pass published its position: the ring has room again.
    syns(&f, next..next + 100);
    assert_eq!(drain(), (next..next + 100).collect::<Vec<_>>());
    assert_eq!(
        lost(&f),
        lost_now,
        "no more losses after the ring was drained"
    );
}

/// `bpf_events`: the kinds turned off in the config produce no ring-buffer record, the others
/// still do, and the packets' verdicts and counters do not change.
#[test]
fn event_kinds_turned_off_produce_no_events() {
    use catalyst_agent::flow::decode_event;
    use catalyst_policy::datapath::{
        CFG_F_NO_TRACE_EVENTS, CFG_F_NO_VERDICT_EVENTS, EVENT_DROP, EVENT_POLICY_VERDICT,
    };
    if !root_or_skip("event_kinds_turned_off_produce_no_events") {
        return;
    }
    let (mut f, _, _) = fixture("evkinds", POLICY, false);
    let mut ring = f.dp.take_events().expect("ring buffer");
    let mut drain = move || {
        let mut kinds = Vec::new();
        while let Some(item) = ring.next() {
            let ev = decode_event(&item).expect("a flow event");
            kinds.push(ev.kind);
        }
        kinds
    };
    drain();
    let set_flags = |f: &mut Fixture, flags: u32| {
        let mut cfg = f.dp.config().unwrap();
        cfg.flags = flags;
        f.dp.set_config(cfg).unwrap();
    };
    set_flags(&mut f, CFG_F_NO_VERDICT_EVENTS | CFG_F_NO_TRACE_EVENTS);
    let allowed = ipv4(CLIENT, WEB, 6, &tcp(44_000, 80, 0x02), 0);
    let denied = ipv4(CLIENT, WEB, 6, &tcp(44_001, 22, 0x02), 0);
    expect(
        &f,
        "allowed SYN",
        PROG_TO_ENDPOINT,
        &allowed,
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    expect(
        &f,
        "denied SYN",
        PROG_TO_ENDPOINT,
        &denied,
        DROP,
        DIR_INGRESS,
        Some(DROP_POLICY_DENIED),
    );
    assert_eq!(drain(), [EVENT_DROP], "only the drop is reported");
    set_flags(&mut f, 0);
    let allowed = ipv4(CLIENT, WEB, 6, &tcp(44_002, 80, 0x02), 0);
    expect(
        &f,
        "allowed SYN",
        PROG_TO_ENDPOINT,
        &allowed,
        PASS,
        DIR_INGRESS,
        Some(0),
    );
    assert_eq!(drain(), [EVENT_POLICY_VERDICT], "verdict events are back");
}

/// A deny for every peer (the wildcard identity) beats an allow of the peer's own identity, also
/// where the datapath skips the wildcard lookup after an allowed identity (`EP_F_*_NO_ANY_DENY`:
/// only in a direction without wildcard denies).
#[test]
fn a_wildcard_deny_beats_an_allowed_identity() {
    use catalyst_policy::datapath::{EP_F_EGRESS_NO_ANY_DENY, EP_F_INGRESS_NO_ANY_DENY};
    const WILDCARD_DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]}]
  ingressDeny:
    - fromEntities: [all]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  egress:
    - toEndpoints: [{matchLabels: {app: client}}]
"#;
    if !root_or_skip("a_wildcard_deny_beats_an_allowed_identity") {
        return;
    }
    let (f, compiled, _) = fixture("anydeny", WILDCARD_DENY, false);
    let flags = lo_only(&compiled)
        .endpoints
        .first()
        .map(|(_, info)| info.flags)
        .expect("web's endpoint info");
    assert_eq!(
        flags & EP_F_INGRESS_NO_ANY_DENY,
        0,
        "ingress has a wildcard deny"
    );
    assert_ne!(flags & EP_F_EGRESS_NO_ANY_DENY, 0, "egress has none");
    let mut sport = 40_000;
    for (port, ret, reason) in [(80u16, PASS, None), (443, DROP, Some(DROP_POLICY_DENY))] {
        sport += 1;
        expect(
            &f,
            &format!("client → web:{port}"),
            PROG_TO_ENDPOINT,
            &ipv4(CLIENT, WEB, 6, &tcp(sport, port, 0x02), 0),
            ret,
            DIR_INGRESS,
            reason,
        );
    }
    // Egress: the allowed identity decides alone; a peer nothing allows is denied by default.
    expect(
        &f,
        "web → client:5432",
        PROG_FROM_ENDPOINT,
        &ipv4(WEB, CLIENT, 6, &tcp(40_100, 5432, 0x02), 0),
        PASS,
        DIR_EGRESS,
        None,
    );
    expect(
        &f,
        "web → world:5432",
        PROG_FROM_ENDPOINT,
        &ipv4(WEB, [8, 8, 8, 8], 6, &tcp(40_101, 5432, 0x02), 0),
        DROP,
        DIR_EGRESS,
        Some(DROP_POLICY_DENIED),
    );
}
