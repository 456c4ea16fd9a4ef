//! Side by side with PowerDNS (pdns_server, bind backend, enable-lua-records): the same zone file
//! in both servers, the same queries, the same answers, for every deterministic function the
//! installed PowerDNS has, and for health-checked records with targets the test starts and
//! stops on loopback addresses (the check options: `timeout`, `useragent`, `stringmatch`,
//! `source`, the selectors, address groups; and, on catalyst-dns alone with the answers current
//! PowerDNS gives, the options PowerDNS 4.7 does not have: `byteslimit`, `interval`,
//! `minimumFailures`, `failOnIncompleteCheck`, `backupSelector = 'empty'`).

#![allow(
    clippy::doc_markdown,
    clippy::format_push_string,
    clippy::many_single_char_names,
    clippy::single_match_else,
    clippy::too_many_lines,
    reason = "test helpers favour brevity; a side-by-side test reads best as one timeline"
)]

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    time::Duration,
};

use common::*;
use hickory_proto::rr::RecordType;

const ZONE: &str = r#"$ORIGIN side.test.
$TTL 60
@        IN SOA ns.side.test. hm.side.test. 1 3600 600 604800 60
@        IN NS  ns
ns       IN A   127.0.0.1
www      IN A   192.0.2.10
alias    IN CNAME www
h3       IN LUA A "pickhashed({'192.0.2.1', '192.0.2.2', '192.0.2.3'})"
h7       IN LUA A "pickhashed({'192.0.2.1','192.0.2.2','192.0.2.3','192.0.2.4','192.0.2.5','192.0.2.6','192.0.2.7'})"
w3       IN LUA A "pickwhashed({{10, '192.0.2.1'}, {20, '192.0.2.2'}, {70, '192.0.2.3'}})"
w5       IN LUA A "pickwhashed({{1,'10.0.0.1'},{2,'10.0.0.2'},{3,'10.0.0.3'},{4,'10.0.0.4'},{5,'10.0.0.5'}})"
w14      IN LUA A "pickwhashed({{1,'10.0.0.1'},{2,'10.0.0.2'},{3,'10.0.0.3'},{4,'10.0.0.4'},{5,'10.0.0.5'},{6,'10.0.0.6'},{7,'10.0.0.7'},{8,'10.0.0.8'},{9,'10.0.0.9'},{10,'10.0.0.10'},{11,'10.0.0.11'},{12,'10.0.0.12'},{13,'10.0.0.13'},{14,'10.0.0.14'}})"
all      IN LUA A "all({'192.0.2.1', '192.0.2.2'})"
view     IN LUA A "view({ {{'10.0.0.0/8'}, {'192.0.2.10'}}, {{'192.168.0.0/16'}, {'192.0.2.20'}}, {{'0.0.0.0/0'}, {'192.0.2.30'}} })"
nm       IN LUA TXT ";if netmask({'10.0.0.0/8', '172.16.0.0/12'}) then return 'private' else return 'public' end"
concat   IN LUA TXT "'a' .. 'b' .. 1 + 2"
cn       IN LUA CNAME "'www.side.test.'"
*.f4     IN LUA A "createForward()"
*.r4     IN LUA PTR "createReverse('ip-%5%.side.test')"
*.r4b    IN LUA PTR "createReverse('%1%.%2%.%3%.%4%.x.side.test', {['1.2.3.4'] = 'exception.side.test'})"
*.r6     IN LUA PTR "createReverse6('v6-%33%.side.test')"
ff       IN LUA A "filterForward('192.0.2.5', newNMG({'192.0.2.0/24'}))"
ff2      IN LUA A "filterForward('10.1.1.1', newNMG({'192.0.2.0/24'}))"
stmt     IN LUA A ";local x = 'a' if x == 'a' then return '192.0.2.77' else return '192.0.2.78' end"
"#;

fn compare(
    cport: u16,
    pport: u16,
    name: &str,
    t: RecordType,
    ecs: Option<&str>,
) -> Result<(), String> {
    let c = query_raw(cport, name, t, ecs).ok_or("catalyst-dns timed out")?;
    let p = query_raw(pport, name, t, ecs).ok_or("PowerDNS timed out")?;
    let set = |m: &hickory_proto::op::Message| -> BTreeSet<String> {
        m.answers
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
            .collect()
    };
    if c.metadata.response_code != p.metadata.response_code || set(&c) != set(&p) {
        return Err(format!(
            "{name} {t} ecs={ecs:?}: catalyst {:?} {:?} vs PowerDNS {:?} {:?}",
            c.metadata.response_code,
            set(&c),
            p.metadata.response_code,
            set(&p)
        ));
    }
    Ok(())
}

fn servers(
    name: &str,
    zone: &str,
    origin: &str,
    extra_cfg: &str,
) -> Option<(Proc, Proc, u16, u16)> {
    if !require(name, &[Need::Pdns]) {
        return None;
    }
    let dir = scratch(name);
    let zf = dir.join(format!("{origin}.zone"));
    std::fs::write(&zf, zone).unwrap();
    let cport = free_port();
    let pport = free_port();
    let zones: [(&str, &Path); 1] = [(origin, &zf)];
    let pdns = start_pdns(&dir, &zones, pport, "");
    let cat = start_catalyst(&dir, &config(cport, &zones, extra_cfg), cport);
    Some((cat, pdns, cport, pport))
}

#[test]
fn deterministic_functions_match_powerdns() {
    let Some((_c, _p, cport, pport)) = servers("pdns_deterministic", ZONE, "side.test", "") else {
        return;
    };
    let mut errors = Vec::new();
    let mut check = |name: &str, t: RecordType, ecs: Option<&str>| {
        if let Err(e) = compare(cport, pport, name, t, ecs) {
            errors.push(e);
        }
    };
    for (name, t) in [
        ("www.side.test.", RecordType::A),
        ("alias.side.test.", RecordType::A),
        ("nope.side.test.", RecordType::A),
        ("www.side.test.", RecordType::MX),
        ("all.side.test.", RecordType::A),
        ("concat.side.test.", RecordType::TXT),
        ("cn.side.test.", RecordType::A),
        ("stmt.side.test.", RecordType::A),
        ("1.2.3.4.f4.side.test.", RecordType::A),
        ("ip-10-20-30-40.f4.side.test.", RecordType::A),
        ("ip0a141e28.f4.side.test.", RecordType::A),
        ("junk.f4.side.test.", RecordType::A),
        ("4.3.2.1.r4.side.test.", RecordType::PTR),
        ("4.3.2.1.r4b.side.test.", RecordType::PTR),
        ("5.3.2.1.r4b.side.test.", RecordType::PTR),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.r6.side.test.",
            RecordType::PTR,
        ),
        ("ff.side.test.", RecordType::A),
        ("ff2.side.test.", RecordType::A),
    ] {
        check(name, t, None);
    }
    // Client-dependent functions over many client subnets (bestwho = ECS network).
    let mut x: u32 = 0x1234_5678;
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let ip = std::net::Ipv4Addr::from(x);
        let prefix = [32, 24, 16][(x % 3) as usize];
        let ecs = format!("{ip}/{prefix}");
        for name in ["h3", "h7", "w3", "w5", "w14", "view", "nm"] {
            let t = if name == "nm" {
                RecordType::TXT
            } else {
                RecordType::A
            };
            check(&format!("{name}.side.test."), t, Some(&ecs));
        }
    }
    for ecs in [
        "10.1.2.0/24",
        "192.168.1.0/24",
        "172.16.5.0/24",
        "8.8.8.0/24",
    ] {
        check("view.side.test.", RecordType::A, Some(ecs));
        check("nm.side.test.", RecordType::TXT, Some(ecs));
    }
    assert!(
        errors.is_empty(),
        "{} differences:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

fn http_target(
    ip: &str,
    port: u16,
    status: &'static str,
    body: &'static str,
) -> std::thread::JoinHandle<()> {
    let l = TcpListener::bind((ip, port)).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

#[test]
fn health_checked_records_match_powerdns() {
    let tport = free_port();
    let hport = free_port();
    let up = TcpTarget::start("127.0.0.31", tport);
    // 127.0.0.32: nothing listening (down).
    let _ok = http_target("127.0.0.33", hport, "200 OK", "all is ok");
    let _bad = http_target("127.0.0.34", hport, "500 Internal Server Error", "broken");
    let _nomatch = http_target("127.0.0.35", hport, "200 OK", "something else");
    let zone = format!(
        "$ORIGIN hc.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
         p1 LUA A \"ifportup({tport}, {{'127.0.0.31', '127.0.0.32'}}, {{selector = 'all', backupSelector = 'all'}})\"\n\
         p2 LUA A \"ifportup({tport}, {{{{'127.0.0.32'}}, {{'127.0.0.31'}}}})\"\n\
         p3 LUA A \"ifportup({tport}, {{'127.0.0.32', '127.0.0.36'}}, {{backupSelector = 'all'}})\"\n\
         u1 LUA A \"ifurlup('http://web.hc.test:{hport}/health', {{'127.0.0.33', '127.0.0.34', '127.0.0.35'}}, {{selector = 'all', stringmatch = 'ok'}})\"\n\
         u2 LUA A \"ifurlup('http://web.hc.test:{hport}/', {{{{'127.0.0.34'}}, {{'127.0.0.33'}}}})\"\n"
    );
    let Some((_c, _p, cport, pport)) = servers(
        "pdns_health",
        &zone,
        "hc.test",
        "health: {interval_secs: 1}\n",
    ) else {
        return;
    };
    // p2 and u2 use address groups, which PowerDNS 4.7's ifportup/ifurlup do not take: they are
    // checked against the expected answers only.
    let names = ["p1", "p3", "u1"];
    let mut errors = Vec::new();
    // Both servers start a check on the first query of its record (health.start: first_query):
    // the first answer comes from the backup selector ('all': every candidate).
    if let Err(e) = compare(cport, pport, "p1.hc.test.", RecordType::A, None) {
        errors.push(format!("first answer: {e}"));
    }
    for n in ["p1", "p2", "p3", "u1", "u2"] {
        let _ = query_raw(pport, &format!("{n}.hc.test."), RecordType::A, None);
        let _ = query_raw(cport, &format!("{n}.hc.test."), RecordType::A, None);
    }
    std::thread::sleep(Duration::from_secs(3));
    for n in names {
        if let Err(e) = compare(cport, pport, &format!("{n}.hc.test."), RecordType::A, None) {
            errors.push(e);
        }
    }
    assert_eq!(
        answers(cport, "p2.hc.test.", RecordType::A, None),
        vec!["127.0.0.31"]
    );
    assert_eq!(
        answers(cport, "u2.hc.test.", RecordType::A, None),
        vec!["127.0.0.33"]
    );
    assert_eq!(
        answers(cport, "u1.hc.test.", RecordType::A, None),
        vec!["127.0.0.33"]
    );
    // Take the TCP target down: both servers fall back the same way.
    drop(up);
    std::thread::sleep(Duration::from_secs(3));
    for n in ["p1", "p3"] {
        if let Err(e) = compare(cport, pport, &format!("{n}.hc.test."), RecordType::A, None) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Sorted `name ttl type data` lines and the rcode of one answer.
fn answer_of(port: u16, name: &str, ecs: Option<&str>) -> (String, Vec<String>) {
    let m = query_raw(port, name, RecordType::A, ecs)
        .unwrap_or_else(|| panic!("no answer for {name} on {port}"));
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {}", r.ttl, r.data))
        .collect();
    v.sort();
    (format!("{:?}", m.metadata.response_code), v)
}

/// `(rcode, ["60 address", …])` as catalyst-dns should answer.
fn expect_a(addrs: &[&str]) -> (String, Vec<String>) {
    let mut v: Vec<String> = addrs.iter().map(|a| format!("60 {a}")).collect();
    v.sort();
    ("NoError".into(), v)
}

/// 127.0.0.41: answers after 3 s (up only with a `timeout` above that).
fn slow(_: &str) -> HttpReply {
    (Duration::from_secs(3), "200 OK", "all is ok".into())
}

/// 127.0.0.42: 200 only for the User-Agent `catalyst-probe/1`, else 403.
fn ua_only(req: &str) -> HttpReply {
    let ok = req
        .lines()
        .any(|l| l.eq_ignore_ascii_case("user-agent: catalyst-probe/1"));
    if ok {
        (Duration::ZERO, "200 OK", "all is ok".into())
    } else {
        (Duration::ZERO, "403 Forbidden", "who are you".into())
    }
}

/// 127.0.0.43: a short body holding every string the records match.
fn short(_: &str) -> HttpReply {
    (Duration::ZERO, "200 OK", "all is ok HEAD TAIL-MARK".into())
}

/// 127.0.0.44: `HEAD`, 200 kB, then `TAIL-MARK` (beyond any small `byteslimit`).
fn long(_: &str) -> HttpReply {
    (
        Duration::ZERO,
        "200 OK",
        format!("HEAD{}TAIL-MARK", "x".repeat(200_000)),
    )
}

/// The records of `health_check_options_match_powerdns`: URL checks on port `h`, TCP checks on
/// port `t`.
fn option_records(h: u16, t: u16) -> Vec<(&'static str, String)> {
    let u = format!("'http://web.opt.test:{h}/health'");
    vec![
        // timeout: the 3 s target is down with 1 s and the default (2 s), up with 5 s.
        (
            "to1",
            format!(
                "ifurlup({u}, {{'127.0.0.41', '127.0.0.43'}}, {{timeout = '1', selector = 'all'}})"
            ),
        ),
        (
            "todef",
            format!("ifurlup({u}, {{'127.0.0.41', '127.0.0.43'}}, {{selector = 'all'}})"),
        ),
        (
            "to5",
            format!(
                "ifurlup({u}, {{'127.0.0.41', '127.0.0.43'}}, {{timeout = 5, selector = 'all'}})"
            ),
        ),
        // useragent: 127.0.0.42 wants its own; neither default User-Agent is it.
        (
            "ua",
            format!(
                "ifurlup({u}, {{'127.0.0.42', '127.0.0.43'}}, {{useragent = 'catalyst-probe/1', selector = 'all'}})"
            ),
        ),
        (
            "uano",
            format!("ifurlup({u}, {{'127.0.0.42', '127.0.0.43'}}, {{selector = 'all'}})"),
        ),
        // stringmatch over a long body and a short one.
        (
            "sm",
            format!(
                "ifurlup({u}, {{'127.0.0.43', '127.0.0.44'}}, {{stringmatch = 'TAIL-MARK', selector = 'all'}})"
            ),
        ),
        (
            "smok",
            format!(
                "ifurlup({u}, {{'127.0.0.43', '127.0.0.44'}}, {{stringmatch = 'ok', selector = 'all'}})"
            ),
        ),
        (
            "smnone",
            format!(
                "ifurlup({u}, {{'127.0.0.43', '127.0.0.44'}}, {{stringmatch = 'absent', backupSelector = 'all'}})"
            ),
        ),
        // byteslimit with a match inside the limit (both servers up).
        (
            "blhead",
            format!(
                "ifurlup({u}, {{'127.0.0.43', '127.0.0.44'}}, {{stringmatch = 'HEAD', byteslimit = '1000', selector = 'all'}})"
            ),
        ),
        // selectors: hashed among the up addresses, hashed backup, unknown name, pickclosest.
        (
            "hsel",
            format!(
                "ifurlup({u}, {{'127.0.0.42', '127.0.0.43', '127.0.0.44'}}, {{selector = 'hashed'}})"
            ),
        ),
        (
            "hback",
            format!(
                "ifportup({t}, {{'127.0.0.48', '127.0.0.49', '127.0.0.50'}}, {{backupSelector = 'hashed'}})"
            ),
        ),
        (
            "unk",
            format!("ifurlup({u}, {{'127.0.0.42', '127.0.0.43'}}, {{selector = 'bogus'}})"),
        ),
        (
            "pc",
            format!("ifportup({t}, {{'127.0.0.45', '127.0.0.48'}}, {{selector = 'pickclosest'}})"),
        ),
        (
            "src",
            format!(
                "ifportup({t}, {{'127.0.0.45', '127.0.0.48'}}, {{source = '127.0.0.1', selector = 'all'}})"
            ),
        ),
        // address groups (4.7.3's ifurlup takes them): the first group with an address up.
        (
            "grp",
            format!(
                "ifurlup({u}, {{{{'127.0.0.41'}}, {{'127.0.0.44', '127.0.0.42'}}, {{'127.0.0.43'}}}}, {{timeout = '1'}})"
            ),
        ),
        // Only in later releases (catalyst-dns alone):
        (
            "bl",
            format!(
                "ifurlup({u}, {{'127.0.0.43', '127.0.0.44'}}, {{stringmatch = 'TAIL-MARK', byteslimit = '1000', selector = 'all'}})"
            ),
        ),
        (
            "blbad",
            format!(
                "ifurlup({u}, {{'127.0.0.43', '127.0.0.44'}}, {{byteslimit = 'lots', backupSelector = 'empty'}})"
            ),
        ),
        (
            "empty",
            format!("ifportup({t}, {{'127.0.0.48', '127.0.0.49'}}, {{backupSelector = 'empty'}})"),
        ),
        (
            "grpback",
            format!(
                "ifurlup({u}, {{{{'127.0.0.48'}}, {{'127.0.0.49', '127.0.0.50'}}}}, {{backupSelector = 'all'}})"
            ),
        ),
        (
            "foic",
            format!(
                "ifurlup({u}, {{'127.0.0.41'}}, {{timeout = '1', failOnIncompleteCheck = 'true'}})"
            ),
        ),
    ]
}

/// The ifurlup/ifportup options PowerDNS 4.7.3 has (`timeout`, `useragent`, `stringmatch`,
/// `source`, `selector`/`backupSelector` with `all`, `random`, `hashed`, `pickclosest` and an
/// unknown name, address groups of `ifurlup`), answer for answer against pdns_server; the
/// options only later releases have (`byteslimit`, `failOnIncompleteCheck`,
/// `backupSelector = 'empty'`, the backup of grouped addresses) against the answers current
/// PowerDNS gives, where 4.7.3 (which ignores unknown options) answers otherwise.
#[test]
fn health_check_options_match_powerdns() {
    if !require("health_check_options_match_powerdns", &[Need::Pdns]) {
        return;
    }
    let h = free_port();
    let t = free_port();
    let _slow = HttpTarget::start("127.0.0.41", h, slow);
    let _ua = HttpTarget::start("127.0.0.42", h, ua_only);
    let _short = HttpTarget::start("127.0.0.43", h, short);
    let _long = HttpTarget::start("127.0.0.44", h, long);
    let _tcp = TcpTarget::start("127.0.0.45", t);
    // 127.0.0.48-50: nothing listens (down).
    let records = option_records(h, t);
    let mut zone = String::from(
        "$ORIGIN opt.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n",
    );
    for (n, code) in &records {
        zone.push_str(&format!("{n} LUA A \"{code}\"\n"));
    }
    let Some((_c, _p, cport, pport)) = servers(
        "pdns_options",
        &zone,
        "opt.test",
        "health: {interval_secs: 1}\n",
    ) else {
        return;
    };
    let name = |n: &str| format!("{n}.opt.test.");
    let mut errors = Vec::new();
    // failOnIncompleteCheck: SERVFAIL while the record's only check has not completed (the
    // first query starts it).
    let first = answer_of(cport, &name("foic"), None);
    if first.0 != "ServFail" {
        errors.push(format!(
            "foic before its check completed: {first:?}, want ServFail"
        ));
    }
    // Every record's first query starts its checks in both servers.
    for (n, _) in &records {
        let _ = query_raw(pport, &name(n), RecordType::A, None);
        let _ = query_raw(cport, &name(n), RecordType::A, None);
    }
    // Bounded wait: PowerDNS 4.7 checks on its next 1 s round and waits for the slowest check
    // (3 s) before the next one.
    std::thread::sleep(Duration::from_secs(7));
    for n in [
        "to1", "todef", "to5", "ua", "uano", "sm", "smok", "smnone", "blhead", "unk", "pc", "src",
        "grp",
    ] {
        if let Err(e) = compare(cport, pport, &name(n), RecordType::A, None) {
            errors.push(e);
        }
    }
    for ecs in [
        "10.0.0.0/24",
        "10.1.2.0/24",
        "192.0.2.0/24",
        "198.51.100.7/32",
        "203.0.113.0/24",
        "172.16.9.0/24",
    ] {
        for n in ["hsel", "hback"] {
            if let Err(e) = compare(cport, pport, &name(n), RecordType::A, Some(ecs)) {
                errors.push(e);
            }
        }
    }
    // What the comparison above saw, spelled out (both servers agree on these).
    for (n, want) in [
        ("to1", &["127.0.0.43"][..]),
        ("todef", &["127.0.0.43"]),
        ("to5", &["127.0.0.41", "127.0.0.43"]),
        ("ua", &["127.0.0.42", "127.0.0.43"]),
        ("uano", &["127.0.0.43"]),
        ("sm", &["127.0.0.43", "127.0.0.44"]),
        ("smok", &["127.0.0.43"]),
        ("smnone", &["127.0.0.43", "127.0.0.44"]),
        ("blhead", &["127.0.0.43", "127.0.0.44"]),
        ("unk", &["127.0.0.43"]),
        ("pc", &["127.0.0.45"]),
        ("src", &["127.0.0.45"]),
        ("grp", &["127.0.0.44"]),
        // Current PowerDNS (5.0+: byteslimit; 5.1+: 'empty', backup of the first group); 4.7.3
        // ignores the options it does not know.
        ("bl", &["127.0.0.43"]),
        ("blbad", &[]),
        ("empty", &[]),
        ("grpback", &["127.0.0.48"]),
        ("foic", &["127.0.0.41"]),
    ] {
        let got = answer_of(cport, &name(n), None);
        if got != expect_a(want) {
            errors.push(format!("catalyst {n}: {got:?}, want {:?}", expect_a(want)));
        }
    }
    // The 4.7.3 answers that differ, so the list in docs/dns.md stays true.
    for (n, want) in [
        ("bl", &["127.0.0.43", "127.0.0.44"][..]),
        ("grpback", &["127.0.0.48", "127.0.0.49", "127.0.0.50"]),
    ] {
        let got = answer_of(pport, &name(n), None);
        if got != expect_a(want) {
            errors.push(format!(
                "PowerDNS 4.7.3 {n}: {got:?}, want {:?}",
                expect_a(want)
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "{} differences:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// A TCP target that goes down and comes back: `minimumFailures` and `interval` (catalyst-dns
/// alone, as current PowerDNS answers: 4.7.3 has neither option) and the plain record against
/// pdns_server.
#[test]
fn flapping_target_interval_and_minimum_failures() {
    if !require(
        "flapping_target_interval_and_minimum_failures",
        &[Need::Pdns],
    ) {
        return;
    }
    let t = free_port();
    let mut flap = Some(TcpTarget::start("127.0.0.51", t));
    let _steady = TcpTarget::start("127.0.0.52", t);
    let zone = format!(
        "$ORIGIN flap.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
         fl LUA A \"ifportup({t}, {{'127.0.0.51', '127.0.0.52'}}, {{selector = 'all'}})\"\n\
         mf LUA A \"ifportup({t}, {{'127.0.0.51', '127.0.0.52'}}, {{selector = 'all', minimumFailures = 4}})\"\n\
         iv LUA A \"ifportup({t}, {{'127.0.0.51', '127.0.0.52'}}, {{selector = 'all', interval = 10}})\"\n"
    );
    let Some((_c, _p, cport, pport)) = servers(
        "pdns_flap",
        &zone,
        "flap.test",
        "health: {interval_secs: 1}\n",
    ) else {
        return;
    };
    let both = expect_a(&["127.0.0.51", "127.0.0.52"]);
    let one = expect_a(&["127.0.0.52"]);
    let mut errors = Vec::new();
    let want = |errors: &mut Vec<String>, n: &str, w: &(String, Vec<String>), when: &str| {
        let got = answer_of(cport, &format!("{n}.flap.test."), None);
        if &got != w {
            errors.push(format!("{when}: catalyst {n}: {got:?}, want {w:?}"));
        }
    };
    // t0: the first queries start the checks (each catalyst check runs at once, then every
    // `interval`); the target is up.
    let t0 = std::time::Instant::now();
    for n in ["fl", "mf", "iv"] {
        let _ = query_raw(pport, &format!("{n}.flap.test."), RecordType::A, None);
        let _ = query_raw(cport, &format!("{n}.flap.test."), RecordType::A, None);
    }
    let at = |s: f64| {
        let d = Duration::from_secs_f64(s).saturating_sub(t0.elapsed());
        std::thread::sleep(d);
    };
    at(1.2);
    want(&mut errors, "iv", &both, "t0+1.2 s");
    drop(flap.take());
    // t0+4: the 1 s checks failed at least twice: plain records are down in both servers; the
    // minimumFailures = 4 record has not failed 4 times; the interval = 10 record has not been
    // checked since t0.
    at(4.0);
    if let Err(e) = compare(cport, pport, "fl.flap.test.", RecordType::A, None) {
        errors.push(format!("t0+4 s: {e}"));
    }
    want(&mut errors, "fl", &one, "t0+4 s");
    want(&mut errors, "mf", &both, "t0+4 s");
    want(&mut errors, "iv", &both, "t0+4 s");
    // t0+8: four failures in a row take mf down; iv still waits for t0+10.
    at(8.0);
    want(&mut errors, "mf", &one, "t0+8 s");
    want(&mut errors, "iv", &both, "t0+8 s");
    // t0+12: the t0+10 check of iv failed. The target comes back.
    at(12.0);
    want(&mut errors, "iv", &one, "t0+12 s");
    flap = Some(TcpTarget::start("127.0.0.51", t));
    // t0+15: one success brings fl and mf back (both servers); iv waits for t0+20.
    at(15.0);
    if let Err(e) = compare(cport, pport, "fl.flap.test.", RecordType::A, None) {
        errors.push(format!("t0+15 s: {e}"));
    }
    want(&mut errors, "fl", &both, "t0+15 s");
    want(&mut errors, "mf", &both, "t0+15 s");
    want(&mut errors, "iv", &one, "t0+15 s");
    drop(flap);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
