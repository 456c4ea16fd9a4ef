//! End-to-end tests against a running catalyst-dns: dig and hickory-proto clients on loopback.

#![allow(
    clippy::doc_markdown,
    clippy::format_push_string,
    clippy::many_single_char_names,
    clippy::single_match_else,
    reason = "test helpers favour brevity"
)]

mod common;

use std::{
    io::{Read, Write},
    net::UdpSocket,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{
        RecordType,
        rdata::opt::{EdnsCode, EdnsOption},
    },
};

fn example_zone() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dns/example.org.zone")
}

fn example_server(name: &str) -> (Proc, u16, PathBuf) {
    let dir = scratch(name);
    let port = free_port();
    let zone = example_zone();
    let failover =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dns/failover.yaml");
    let cfg = config(
        port,
        &[("example.org", &zone)],
        &format!("failover: {{file: {}}}\n", failover.display()),
    );
    (start_catalyst(&dir, &cfg, port), port, dir)
}

#[test]
fn example_config_loads() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dns/catalyst-dns.yaml");
    let cfg = catalyst_dns::Config::load(&path).expect("example config loads");
    assert_eq!(cfg.zones.len(), 1);
    assert!(
        cfg.zones[0].file.exists(),
        "zone file path resolves next to the config"
    );
}

#[test]
fn dig_answers_example_zone() {
    if !require("dig_answers_example_zone", &[Need::Dig]) {
        return;
    }
    let (_srv, port, _) = example_server("dig");
    let p = port.to_string();
    let d = |args: &[&str]| {
        let mut a = vec!["@127.0.0.1", "-p", &p, "+norec", "+time=2", "+tries=1"];
        a.extend_from_slice(args);
        dig(&a)
    };
    let www = d(&["www.example.org", "A"]);
    assert!(www.contains("flags: qr aa;"), "authoritative answer: {www}");
    assert!(www.contains("192.0.2.10"), "{www}");
    let chain = d(&["+short", "alias2.example.org", "A"]);
    assert_eq!(
        chain.lines().collect::<Vec<_>>(),
        vec!["alias.example.org.", "www.example.org.", "192.0.2.10"]
    );
    let nx = d(&["nope.example.org", "A"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("SOA"),
        "{nx}"
    );
    let nodata = d(&["www.example.org", "MX"]);
    assert!(
        nodata.contains("status: NOERROR")
            && nodata.contains("ANSWER: 0")
            && nodata.contains("SOA"),
        "{nodata}"
    );
    let referral = d(&["host.child.example.org", "A"]);
    assert!(
        referral.contains("flags: qr;"),
        "referral is not authoritative: {referral}"
    );
    assert!(
        referral.contains("ns.child.example.org.") && referral.contains("192.0.2.53"),
        "glue: {referral}"
    );
    let wild = d(&["+short", "anything.wild.example.org", "A"]);
    assert_eq!(wild.trim(), "192.0.2.99");
    let any = d(&["www.example.org", "ANY"]);
    assert!(
        any.contains("192.0.2.10") && any.contains("2001:db8::10") && any.contains("v=spf1"),
        "{any}"
    );
    let tcp = d(&["+tcp", "+short", "app.example.org", "A"]);
    assert!(
        tcp.trim().starts_with("127.0.0.1"),
        "LUA answer over TCP: {tcp}"
    );
    let forward = d(&["+short", "10.1.2.3.ip.example.org", "A"]);
    assert_eq!(forward.trim(), "10.1.2.3");
    let txt = d(&["+short", "inside.example.org", "TXT"]);
    assert_eq!(txt.trim(), "\"loopback\"");
    let refused = d(&["example.com", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
}

#[test]
fn ecs_is_echoed_with_scope() {
    let (_srv, port, _) = example_server("ecs");
    let ecs_of = |m: &Message| -> (u8, u8) {
        match m.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
            Some(EdnsOption::Subnet(s)) => (s.source_prefix(), s.scope_prefix()),
            other => panic!("no ECS echoed: {other:?}"),
        }
    };
    let m = query_raw(
        port,
        "whashed.example.org.",
        RecordType::A,
        Some("198.51.100.77/24"),
    )
    .unwrap();
    assert_eq!(
        ecs_of(&m),
        (24, 24),
        "client-dependent answer scoped to the subnet"
    );
    let m = query_raw(
        port,
        "www.example.org.",
        RecordType::A,
        Some("198.51.100.77/24"),
    )
    .unwrap();
    assert_eq!(ecs_of(&m), (24, 0), "static answer valid for everyone");
    // Same subnet, same answer; the cache must not leak answers across subnets.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..64u8 {
        let a = answers(
            port,
            "whashed.example.org.",
            RecordType::A,
            Some(&format!("10.{i}.0.0/16")),
        );
        let b = answers(
            port,
            "whashed.example.org.",
            RecordType::A,
            Some(&format!("10.{i}.0.0/16")),
        );
        assert_eq!(a, b);
        seen.insert(a);
    }
    assert!(
        seen.len() > 1,
        "different subnets hash to different answers"
    );
}

fn send_raw(port: u16, pkt: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    s.send_to(pkt, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn malformed_and_oversized_queries() {
    let (srv, port, _) = example_server("malformed");
    // Too short for a header: dropped.
    assert!(send_raw(port, &[1, 2, 3]).is_none());
    // Header claims a question that is not there: FORMERR with the id echoed.
    let r = send_raw(port, &[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("FORMERR");
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0xabcd, ResponseCode::FormErr)
    );
    // A label running past the end.
    assert!(
        send_raw(port, &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a', b'b'])
            .is_some_and(|r| r[3] & 0x0f == 1)
    );
    // Compression loop in the question.
    let r = send_raw(
        port,
        &[0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
    );
    assert!(r.is_none_or(|r| r[3] & 0x0f == 1));
    // A question whose name ends in a pointer into the header (found by the dns_message fuzz
    // target): answered alike the second time, when the answer comes from the cache, whose
    // question used to be copied from the query's bytes — the pointer then pointed at the
    // response's flags.
    let compressed = [
        0x12, 0x34, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', 0xc0, 0xc0, 2, 0, 1, 0, 1,
    ];
    let first = send_raw(port, &compressed).expect("answered");
    let second = send_raw(port, &compressed).expect("answered again");
    for r in [&first, &second] {
        let m = Message::from_vec(r).expect("the answer parses");
        assert_eq!(m.metadata.id, 0x1234);
    }
    assert_eq!(first, second);
    // UPDATE opcode: NOTIMP.
    let r = send_raw(port, &[0, 3, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]).expect("NOTIMP");
    assert_eq!(r[3] & 0x0f, 4);
    // Responses are ignored (no reflection loops).
    assert!(send_raw(port, &[0, 4, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    // Oversized junk.
    let mut big = vec![0u8, 5, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    big.extend(std::iter::repeat_n(0xffu8, 4000));
    let _ = send_raw(port, &big);
    // Zone transfers are not offered.
    let m = query_raw(port, "example.org.", RecordType::AXFR, None).expect("AXFR answered");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // Random garbage does not take the server down.
    let mut x: u32 = 12345;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..2000 {
        let mut pkt = vec![0u8; 12 + (x % 200) as usize];
        for b in &mut pkt {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        pkt[2] &= 0x7f;
        s.send_to(&pkt, ("127.0.0.1", port)).unwrap();
    }
    assert_eq!(
        answers(port, "www.example.org.", RecordType::A, None),
        vec!["192.0.2.10"]
    );
    drop(srv);
}

#[test]
fn large_answers_truncate_over_udp_and_succeed_over_tcp() {
    let dir = scratch("trunc");
    let port = free_port();
    let mut zone = String::from(
        "$ORIGIN big.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n",
    );
    for i in 0..120 {
        zone.push_str(&format!("many A 10.0.{}.{}\n", i / 200, i % 200 + 1));
    }
    let zf = dir.join("big.zone");
    std::fs::write(&zf, zone).unwrap();
    let _srv = start_catalyst(&dir, &config(port, &[("big.test", &zf)], ""), port);
    let m = query_raw(port, "many.big.test.", RecordType::A, None).unwrap();
    assert!(m.metadata.truncation, "1232-byte limit forces TC");
    if require(
        "large_answers_truncate_over_udp_and_succeed_over_tcp (dig part)",
        &[Need::Dig],
    ) {
        let out = dig(&[
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tcp",
            "+short",
            "many.big.test",
            "A",
        ]);
        assert_eq!(out.lines().count(), 120);
    }
}

fn health_zone(dir: &std::path::Path, port_a: u16) -> PathBuf {
    let zone = format!(
        "$ORIGIN hc.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
         svc LUA A \"ifportup({port_a}, {{{{'127.0.0.21'}}, {{'127.0.0.22'}}}}, {{interval = 1, timeout = 1}})\"\n"
    );
    let zf = dir.join("hc.zone");
    std::fs::write(&zf, zone).unwrap();
    zf
}

#[test]
fn health_flip_within_one_interval() {
    let dir = scratch("health");
    let port = free_port();
    let target_port = free_port();
    let a = TcpTarget::start("127.0.0.21", target_port);
    let _b = TcpTarget::start("127.0.0.22", target_port);
    let zf = health_zone(&dir, target_port);
    let srv = start_catalyst(
        &dir,
        &config(port, &[("hc.test", &zf)], "health: {interval_secs: 1}\n"),
        port,
    );
    let q = || answers(port, "svc.hc.test.", RecordType::A, None);
    let until = |want: &str, limit: Duration| -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if q() == vec![want.to_string()] {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    };
    assert!(
        until("127.0.0.21", Duration::from_secs(3)).is_some(),
        "first group up: {:?}",
        q()
    );
    drop(a);
    let took = until("127.0.0.22", Duration::from_secs(5)).expect("flip to the second group");
    assert!(
        took <= Duration::from_secs(2),
        "flipped after {took:?}, bar is one interval + 1 s"
    );
    let _a = TcpTarget::start("127.0.0.21", target_port);
    let took = until("127.0.0.21", Duration::from_secs(5)).expect("flip back");
    assert!(
        took <= Duration::from_secs(2),
        "flipped back after {took:?}"
    );
    assert!(wait_log(&srv, "health transition", Duration::from_secs(1)));
}

#[test]
fn reload_under_load_never_fails_a_query() {
    let dir = scratch("reload");
    let port = free_port();
    let zf = dir.join("r.zone");
    let zone = |ip: &str| {
        format!(
            "$ORIGIN r.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\nwww A {ip}\n"
        )
    };
    std::fs::write(&zf, zone("192.0.2.1")).unwrap();
    let srv = start_catalyst(
        &dir,
        &config(
            port,
            &[("r.test", &zf)],
            "reload: {watch_interval_secs: 0}\n",
        ),
        port,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let (mut ok, mut bad) = (0u32, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match query_raw(port, "www.r.test.", RecordType::A, None) {
                Some(m)
                    if m.metadata.response_code == ResponseCode::NoError
                        && m.answers.len() == 1 =>
                {
                    ok += 1;
                }
                other => bad.push(format!("{other:?}")),
            }
        }
        (ok, bad)
    });
    for i in 2..8 {
        std::thread::sleep(Duration::from_millis(150));
        std::fs::write(&zf, zone(&format!("192.0.2.{i}"))).unwrap();
        srv.signal("HUP");
    }
    std::thread::sleep(Duration::from_millis(300));
    // A broken zone keeps the previous version serving and says why.
    std::fs::write(
        &zf,
        "$ORIGIN r.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\nwww A 300.1.1.1\n",
    )
    .unwrap();
    srv.signal("HUP");
    assert!(
        wait_log(
            &srv,
            "previous version keeps serving",
            Duration::from_secs(3)
        ),
        "{}",
        srv.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = load.join().unwrap();
    assert!(
        bad.is_empty(),
        "{} failed queries during reloads: {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    assert!(ok > 100, "only {ok} queries ran");
    assert_eq!(
        answers(port, "www.r.test.", RecordType::A, None),
        vec!["192.0.2.7"]
    );
    let log = srv.log_text();
    assert!(
        log.contains("r.zone:4") && log.contains("invalid A record"),
        "reason names file:line and construct: {log}"
    );
}

#[test]
fn zone_file_change_reloads_without_signal() {
    let dir = scratch("watch");
    let port = free_port();
    let zf = dir.join("w.zone");
    std::fs::write(
        &zf,
        "$ORIGIN w.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\nwww A 192.0.2.1\n",
    )
    .unwrap();
    let _srv = start_catalyst(
        &dir,
        &config(
            port,
            &[("w.test", &zf)],
            "reload: {watch_interval_secs: 1}\n",
        ),
        port,
    );
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &zf,
        "$ORIGIN w.test.\n$TTL 60\n@ SOA ns hm 2 2 3 4 5\nwww A 192.0.2.2\n",
    )
    .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if answers(port, "www.w.test.", RecordType::A, None) == vec!["192.0.2.2"] {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("file change not picked up");
}

#[test]
fn failover_file_switches_answers_without_reload() {
    let dir = scratch("failover");
    let port = free_port();
    let zf = dir.join("f.zone");
    std::fs::write(
        &zf,
        "$ORIGIN f.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n\
         app LUA A \"failover('app', {eu = {'192.0.2.1'}, us = {'198.51.100.1'}}, 'eu')\"\n",
    )
    .unwrap();
    let ff = dir.join("failover.yaml");
    std::fs::write(&ff, "app: us\n").unwrap();
    let _srv = start_catalyst(
        &dir,
        &config(
            port,
            &[("f.test", &zf)],
            &format!(
                "failover: {{file: {}, poll_interval_secs: 1}}\n",
                ff.display()
            ),
        ),
        port,
    );
    assert_eq!(
        answers(port, "app.f.test.", RecordType::A, None),
        vec!["198.51.100.1"]
    );
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&ff, "app: {active_region: eu, epoch: 2}\n").unwrap();
    let start = Instant::now();
    while answers(port, "app.f.test.", RecordType::A, None) != vec!["192.0.2.1"] {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "failover change not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Unknown group state: static fallback.
    std::fs::write(&ff, "{}\n").unwrap();
    let start = Instant::now();
    while answers(port, "app.f.test.", RecordType::A, None) != vec!["192.0.2.1"] {
        assert!(start.elapsed() < Duration::from_secs(4));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_endpoint_counts_queries() {
    let dir = scratch("metrics");
    let port = free_port();
    let mport = free_port();
    let cfg = config(port, &[("example.org", &example_zone())], "").replace(
        "metrics: {listen: null}",
        &format!("metrics: {{listen: \"127.0.0.1:{mport}\"}}"),
    );
    let _srv = start_catalyst(&dir, &cfg, port);
    for _ in 0..3 {
        answers(port, "www.example.org.", RecordType::A, None);
    }
    answers(port, "nope.example.org.", RecordType::A, None);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("catalyst_dns_queries_total{rcode=\"NOERROR\",qtype=\"A\"}"),
        "{body}"
    );
    assert!(
        body.contains("catalyst_dns_queries_total{rcode=\"NXDOMAIN\",qtype=\"A\"} 1"),
        "{body}"
    );
    assert!(body.contains("catalyst_dns_cache_hits_total"), "{body}");
    assert!(body.contains("catalyst_dns_lua_records 12"), "{body}");
}

#[test]
fn check_zone_reports_file_and_line() {
    let dir = scratch("checkzone");
    let zf = dir.join("bad.test.zone");
    std::fs::write(
        &zf,
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\n\nx LUA A \"ifportup(443, {\"\ny LUA A \"pickwhashed({{0, '192.0.2.1'}})\"\n\
         z LUA A \";local n = 0 while n < 2 do n = n + 1 end return '192.0.2.' .. n\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_catalyst-dns"))
        .arg("check-zone")
        .arg(&zf)
        .arg("--list")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Every error once, with file:line and the construct.
    assert_eq!(err.matches("bad.test.zone:4:").count(), 1, "{err}");
    assert_eq!(err.matches("bad.test.zone:5:").count(), 1, "{err}");
    assert!(
        err.contains("near '<eof>'") && err.contains("cannot be 0"),
        "{err}"
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("z.bad.test. 60 A [interpreter]"),
        "{listing}"
    );
    assert!(listing.contains("1 interpreter, 2 failed"), "{listing}");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_catalyst-dns"))
        .arg("check-zone")
        .arg(example_zone())
        .arg("--origin")
        .arg("example.org")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn serves_ipv6_and_several_listen_addresses() {
    let dir = scratch("ipv6");
    let port = free_port();
    let port2 = free_port();
    let cfg = config(port, &[("example.org", &example_zone())], "").replace(
        &format!("listen: [\"127.0.0.1:{port}\"]"),
        &format!("listen: [\"127.0.0.1:{port}\", \"[::1]:{port}\", \"127.0.0.1:{port2}\"]"),
    );
    let _srv = start_catalyst(&dir, &cfg, port);
    assert_eq!(
        answers(port2, "www.example.org.", RecordType::AAAA, None),
        vec!["2001:db8::10"]
    );
    let s = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut m = Message::query();
    m.metadata.id = 77;
    m.add_query(hickory_proto::op::Query::query(
        "www.example.org.".parse().unwrap(),
        RecordType::A,
    ));
    s.send_to(&m.to_vec().unwrap(), ("::1", port)).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.metadata.id, 77);
    assert_eq!(r.answers[0].data.to_string(), "192.0.2.10");
    // IPv6 client address is `who`: the netmask view answers from the v6 rule.
    if require(
        "serves_ipv6_and_several_listen_addresses (dig part)",
        &[Need::Dig],
    ) {
        let out = dig(&[
            "@::1",
            "-p",
            &port.to_string(),
            "+short",
            "views.example.org",
            "A",
        ]);
        assert_eq!(out.trim(), "192.0.2.1");
        let out = dig(&[
            "@::1",
            "-p",
            &port.to_string(),
            "+tcp",
            "+short",
            "www.example.org",
            "A",
        ]);
        assert_eq!(out.trim(), "192.0.2.10");
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// A zone with a LUA record that cannot load serves every other name; the record answers
/// SERVFAIL, is logged once with file:line and counted per zone. A second instance on the same
/// metrics port stops with an error naming the setting.
#[test]
fn failing_lua_record_is_isolated_and_metrics_port_conflicts_name_the_setting() {
    let dir = scratch("isolation");
    let zf = dir.join("m.zone");
    std::fs::write(
        &zf,
        "$ORIGIN m.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
         ok A 192.0.2.1\nbroken LUA A \"ifportup(443, {\"\n\
         loop LUA A \";local n = 0 while n < 4 do n = n + 1 end return '192.0.2.' .. n\"\n",
    )
    .unwrap();
    let port = free_port();
    let mport = free_port();
    let srv = start_catalyst(
        &dir,
        &format!(
            "listen: [\"127.0.0.1:{port}\"]\nudp_workers: 1\nmetrics: {{listen: \"127.0.0.1:{mport}\"}}\n\
             zones:\n  - {{origin: m.test, file: {}}}\n",
            zf.display()
        ),
        port,
    );
    assert_eq!(
        answers(port, "ok.m.test.", RecordType::A, None),
        vec!["192.0.2.1"]
    );
    assert_eq!(
        answers(port, "loop.m.test.", RecordType::A, None),
        vec!["192.0.2.4"]
    );
    let broken = query_raw(port, "broken.m.test.", RecordType::A, None).unwrap();
    assert_eq!(broken.metadata.response_code, ResponseCode::ServFail);
    let metrics = http_get(mport, "/metrics");
    assert!(
        metrics.contains("catalyst_dns_lua_records_failed{zone=\"m.test.\"} 1"),
        "{metrics}"
    );
    // Without the terminal colour codes the structured fields read `line=7`.
    let mut log = String::new();
    let mut in_escape = false;
    for c in srv.log_text().chars() {
        match c {
            '\u{1b}' => in_escape = true,
            'm' if in_escape => in_escape = false,
            _ if in_escape => {}
            c => log.push(c),
        }
    }
    assert_eq!(log.matches("LUA record failed to load").count(), 1, "{log}");
    assert!(log.contains("m.zone line=7 owner=broken.m.test."), "{log}");

    let dir2 = dir.join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let cfg2 = dir2.join("catalyst-dns.yaml");
    std::fs::write(
        &cfg2,
        format!(
            "listen: [\"127.0.0.1:{}\"]\nudp_workers: 1\nmetrics: {{listen: \"127.0.0.1:{mport}\"}}\n\
             zones:\n  - {{origin: m.test, file: {}}}\n",
            free_port(),
            zf.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_catalyst-dns"))
        .args(["serve", "--config"])
        .arg(&cfg2)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.listen") && err.contains(&mport.to_string()),
        "{err}"
    );
}

/// `pickrandom` answers stay uniformly random (as PowerDNS, which evaluates every query) while
/// the answer cache serves them: after each worker has filled one slot per candidate, queries
/// stop evaluating the record. A weighted pick (`pickwrandom`) keeps its weights the same way.
#[test]
fn pickrandom_is_uniform_and_served_from_the_choice_cache() {
    let dir = scratch("choice");
    let port = free_port();
    let mport = free_port();
    let zf = dir.join("rand.zone");
    std::fs::write(
        &zf,
        "$ORIGIN rand.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
         r LUA A \"pickrandom({'192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4'})\"\n\
         w LUA A \"pickwrandom({{1, '192.0.2.1'}, {3, '192.0.2.2'}})\"\n",
    )
    .unwrap();
    let cfg = config(port, &[("rand.test", &zf)], "").replace(
        "metrics: {listen: null}",
        &format!("metrics: {{listen: \"127.0.0.1:{mport}\"}}"),
    );
    let _srv = start_catalyst(&dir, &cfg, port);
    let evaluations = || {
        let body = http_get(mport, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("catalyst_dns_lua_evaluations_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no lua_evaluations in {body}"))
    };
    let before = evaluations();
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..2_000 {
        let a = answers(port, "r.rand.test.", RecordType::A, None);
        assert_eq!(a.len(), 1, "one address per answer: {a:?}");
        *counts.entry(a[0].clone()).or_default() += 1;
    }
    let evaluated = evaluations() - before;
    // Uniform over 4: 500 each expected, σ ≈ 19; 400..600 is beyond 5σ.
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|&n| (400..=600).contains(&n)),
        "{counts:?}"
    );
    // Each worker thread fills each of the 4 slots once (a few more when a worker's first
    // queries race): far fewer evaluations than queries.
    assert!(
        evaluated < 200.0,
        "{evaluated} evaluations for 2,000 queries"
    );

    let before = evaluations();
    let mut heavy = 0;
    for _ in 0..400 {
        let a = answers(port, "w.rand.test.", RecordType::A, None);
        heavy += u32::from(a == ["192.0.2.2"]);
    }
    let evaluated = evaluations() - before;
    assert!(
        evaluated < 100.0,
        "{evaluated} evaluations of the weighted pick for 400 queries"
    );
    // Weight 3 of 4: 300 expected, σ ≈ 8.7.
    assert!((250..=350).contains(&heavy), "{heavy} of 400");
}

/// Both ways of spreading UDP over workers (`udp_socket: shared`, whose workers take turns
/// receiving, and `per_worker` sockets) answer every query of bursts from many clients, and the
/// query counter (added per batch from each worker's tally) counts each exactly once.
#[test]
fn both_udp_socket_modes_answer_every_query_and_count_each_once() {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 10;
    const BURST: usize = 50;
    for mode in ["shared", "per_worker"] {
        let dir = scratch(&format!("udp-{mode}"));
        let port = free_port();
        let mport = free_port();
        let cfg = config(port, &[("example.org", &example_zone())], "")
            .replace(
                "udp_workers: 1",
                &format!("udp_workers: 3\nudp_socket: {mode}"),
            )
            .replace(
                "metrics: {listen: null}",
                &format!("metrics: {{listen: \"127.0.0.1:{mport}\"}}"),
            );
        let _srv = start_catalyst(&dir, &cfg, port);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                std::thread::spawn(move || {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut answered = 0usize;
                    for round in 0..ROUNDS {
                        let mut want = std::collections::BTreeSet::new();
                        for i in 0..BURST {
                            let id = u16::try_from(c * ROUNDS * BURST + round * BURST + i)
                                .expect("ids fit");
                            let mut m = Message::query();
                            m.metadata.id = id;
                            m.add_query(Query::query(
                                "www.example.org.".parse::<Name>().unwrap(),
                                RecordType::AAAA,
                            ));
                            s.send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
                                .unwrap();
                            want.insert(id);
                        }
                        let mut buf = [0u8; 1500];
                        while !want.is_empty() {
                            let Ok(n) = s.recv(&mut buf) else {
                                panic!("client {c} round {round}: {} answers missing", want.len());
                            };
                            let id = u16::from_be_bytes([buf[0], buf[1]]);
                            assert!(want.remove(&id), "client {c}: unexpected answer id {id}");
                            assert!(Message::from_vec(&buf[..n]).is_ok(), "answer parses");
                            answered += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        let answered: usize = clients.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(answered, CLIENTS * ROUNDS * BURST, "{mode}");
        let total = CLIENTS * ROUNDS * BURST;
        let line =
            format!("catalyst_dns_queries_total{{rcode=\"NOERROR\",qtype=\"AAAA\"}} {total}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut metrics = http_get(mport, "/metrics");
        while !metrics.contains(&line) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            metrics = http_get(mport, "/metrics");
        }
        assert!(
            metrics.contains(&line),
            "{mode}: want `{line}` in\n{metrics}"
        );
    }
}
