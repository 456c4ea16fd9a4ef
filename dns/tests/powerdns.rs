//! Side by side with PowerDNS (pdns_server, bind backend, enable-lua-records): the same zone file
//! in both servers, the same queries, the same answers, for every deterministic function the
//! installed PowerDNS has, and for health-checked records with targets the test starts and
//! stops on loopback addresses.

#![allow(
    clippy::doc_markdown,
    clippy::format_push_string,
    clippy::many_single_char_names,
    clippy::single_match_else,
    reason = "test helpers favour brevity"
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
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
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
