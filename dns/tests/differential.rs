//! Differential test: LUA records generated over the functions, their options and edge-case
//! arguments (negative and zero weights, malformed netmasks, malformed reverse names, interpreter-
//! tier bodies, bodies that do not load), served by catalyst-dns and by pdns_server from the same
//! zone file, compared answer by answer: rcode, AA flag, and every answer record with its TTL.
//! Needs `pdns_server` (installed by `cargo xtask setup`); the differences that remain by design
//! are listed in docs/dns.md.

#![allow(
    clippy::doc_markdown,
    clippy::format_push_string,
    clippy::too_many_lines,
    reason = "test helpers favour brevity; the case table and the comparison read best whole"
)]

mod common;

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use common::*;
use hickory_proto::{op::Message, rr::RecordType};

/// Deterministic generator (xorshift32) so a failure names a reproducible case.
struct Gen(u32);

impl Gen {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
    fn addr(&mut self) -> String {
        format!("192.0.2.{}", 1 + self.below(250))
    }
    fn addrs(&mut self, n: u32) -> String {
        let v: Vec<String> = (0..n).map(|_| format!("'{}'", self.addr())).collect();
        v.join(", ")
    }
    fn weights(&mut self, n: u32) -> String {
        let v: Vec<String> = (0..n)
            .map(|_| {
                // Mostly positive, with zero and negative weights mixed in.
                let w = i64::from(self.below(14)) - 3;
                format!("{{{w}, '{}'}}", self.addr())
            })
            .collect();
        v.join(", ")
    }
    fn net(&mut self) -> String {
        match self.below(10) {
            0 => "'10.0.0.0/33'".into(),
            1 => "'bogus'".into(),
            2 => "'0.0.0.0/0'".into(),
            _ => format!(
                "'{}.0.0.0/{}'",
                [10, 172, 192, 100][self.below(4) as usize],
                [8, 12, 16][self.below(3) as usize]
            ),
        }
    }
}

/// (owner label, LUA type, body as it appears in the zone between the type and end of line).
fn records() -> Vec<(String, &'static str, String)> {
    let mut g = Gen(0x2545_f491);
    let mut out = Vec::new();
    let mut add = |owner: String, t: &'static str, body: String| out.push((owner, t, body));
    for i in 0..12 {
        let n = 1 + g.below(7);
        add(
            format!("ph{i}"),
            "A",
            format!("\"pickhashed({{{}}})\"", g.addrs(n)),
        );
        let n = 1 + g.below(6);
        add(
            format!("pw{i}"),
            "A",
            format!("\"pickwhashed({{{}}})\"", g.weights(n)),
        );
        let n = 1 + g.below(6);
        add(
            format!("pn{i}"),
            "A",
            format!("\"picknamehashed({{{}}})\"", g.weights(n)),
        );
        let rules: Vec<String> = (0..=g.below(3))
            .map(|_| format!("{{{{{}, {}}}, {{'{}'}}}}", g.net(), g.net(), g.addr()))
            .collect();
        add(
            format!("vw{i}"),
            "A",
            format!("\"view({{{}}})\"", rules.join(", ")),
        );
        add(
            format!("nm{i}"),
            "TXT",
            format!(
                "\";if netmask({{{}, {}}}) then return 'in' else return 'out' end\"",
                g.net(),
                g.net()
            ),
        );
    }
    // Interpreter tier: the language beyond the native subset.
    add(
        "loop".into(),
        "A",
        "\";local n = 0 while n < 7 do n = n + 1 end return '192.0.2.' .. n\"".into(),
    );
    add(
        "forloop".into(),
        "TXT",
        "\";local s = '' for i = 1, 5 do s = s .. i end return s\"".into(),
    );
    add(
        "fmt".into(),
        "TXT",
        "\"string.format('%s-%03d-%x', 'a', 7, 255)\"".into(),
    );
    add(
        "fmtq".into(),
        "TXT",
        "\"string.format('%s', qname:toString())\"".into(),
    );
    add(
        "upper".into(),
        "TXT",
        "\"string.upper('abc') .. string.rep('x', 3)\"".into(),
    );
    add(
        "tconcat".into(),
        "TXT",
        "\"table.concat({'a', 'b', 'c'}, '-')\"".into(),
    );
    add(
        "mathf".into(),
        "TXT",
        "\"tostring(math.floor(7.9)) .. tostring(math.max(3, 9))\"".into(),
    );
    add(
        "fn".into(),
        "A",
        "\";local function f(x) return '192.0.2.' .. x end return f(9)\"".into(),
    );
    add("ipairs".into(), "TXT", "\";local t = {} for _, v in ipairs({'x', 'y'}) do t[#t + 1] = v end return table.concat(t)\"".into());
    add(
        "newca".into(),
        "TXT",
        "\"newCA('192.0.2.1'):toString()\"".into(),
    );
    add(
        "newca6".into(),
        "TXT",
        "\"newCA('2001:db8::1'):toString()\"".into(),
    );
    add(
        "netmaskm".into(),
        "TXT",
        "\"tostring(newNetmask('10.0.0.0/8'):match('10.1.2.3'))\"".into(),
    );
    add("chunks".into(), "A", "\"'192.0.2.' .. \" \"'44'\"".into());
    add("list".into(), "A", "\"{'192.0.2.1', '192.0.2.2'}\"".into());
    add("empty".into(), "A", "\"{}\"".into());
    // Bodies that do not load or fail at run time: SERVFAIL for that name only.
    add("broken".into(), "A", "\"ifportup(443, {\"".into());
    add("badaddr".into(), "A", "\"'not an address'\"".into());
    add("nilres".into(), "A", "\"nil\"".into());
    add("err".into(), "A", "\";error('boom')\"".into());
    add("spin".into(), "A", "\";while true do end\"".into());
    add("wrongfam".into(), "A", "\"'2001:db8::1'\"".into());
    // LOC with fractional seconds (PowerDNS keeps milliseconds, truncated).
    add(
        "loc1".into(),
        "LOC",
        "\"'51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m'\"".into(),
    );
    add(
        "loc2".into(),
        "LOC",
        "\"'52 22 23.1 S 4 53 32 W -2.50m 1m 100m 10m'\"".into(),
    );
    add("loc3".into(), "LOC", "\"'1 2 N 3 E'\"".into());
    // Reverse and forward helpers (wildcard owners).
    add("*.f4".into(), "A", "\"createForward()\"".into());
    add("*.f6".into(), "AAAA", "\"createForward6()\"".into());
    add(
        "*.r4".into(),
        "PTR",
        "\"createReverse('ip-%1%-%2%-%3%-%4%.side.test')\"".into(),
    );
    add(
        "*.r6".into(),
        "PTR",
        "\"createReverse6('v6-%33%.side.test')\"".into(),
    );
    add(
        "*.r4h".into(),
        "PTR",
        "\"createReverse('h%6%.side.test')\"".into(),
    );
    add(
        "*.r4e".into(),
        "PTR",
        "\"createReverse('ip-%5%.side.test', {['1.2.3.4']='one.side.test'})\"".into(),
    );
    out
}

fn zone_text() -> String {
    let mut z = String::from(
        "$ORIGIN diff.test.\n$TTL 60\n@ IN SOA ns.diff.test. hm.diff.test. 1 3600 600 604800 60\n\
         @ IN NS ns\nns IN A 127.0.0.1\nwww 120 IN A 192.0.2.10\n\
         sloc IN LOC 51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m\n",
    );
    for (owner, t, body) in records() {
        let _ = writeln!(z, "{owner} 30 IN LUA {t} {body}");
    }
    z
}

/// A type by name; LOC (29) has no hickory-proto variant.
fn rtype(t: &str) -> RecordType {
    if t == "LOC" {
        RecordType::from(29)
    } else {
        t.parse().unwrap()
    }
}

fn answer_key(m: &Message) -> (String, bool, BTreeSet<String>) {
    (
        format!("{:?}", m.metadata.response_code),
        m.metadata.authoritative,
        m.answers
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
            .collect(),
    )
}

#[test]
fn generated_lua_records_match_powerdns() {
    if !require("generated_lua_records_match_powerdns", &[Need::Pdns]) {
        return;
    }
    let dir = scratch("differential");
    let zf = dir.join("diff.test.zone");
    std::fs::write(&zf, zone_text()).unwrap();
    let cport = free_port();
    let pport = free_port();
    let zones: [(&str, &Path); 1] = [("diff.test", &zf)];
    let _pdns = start_pdns(&dir, &zones, pport, "");
    let _cat = start_catalyst(&dir, &config(cport, &zones, ""), cport);
    let mut queries: Vec<(String, RecordType)> = Vec::new();
    for (owner, t, _) in records() {
        let t = rtype(t);
        match owner.as_str() {
            "*.f4" => {
                for q in [
                    "1.2.3.4",
                    "ip-10-20-30-40",
                    "ip0a141e28",
                    "junk",
                    "1.2.3",
                    "300.1.1.1",
                    "a-b-c-d",
                    "1.2.3.4.5",
                    "ip-1-2-3-4-5",
                    "ip-01-02-03-04",
                    "IP-10-20-30-40",
                    "ip-10-20-30-256",
                    "ip--10-20-30-40",
                    "0a141e28",
                    "ip0A141E28",
                    "x0a141e2",
                    "ffffffff",
                    "1.2.3.010",
                    "0x0a.2.3.4",
                    "1.2.3.08",
                    "ip0a141e2z",
                ] {
                    queries.push((format!("{q}.f4.diff.test."), t));
                }
            }
            "*.f6" => {
                for q in [
                    "2001-db8--1",
                    "20010db8000000000000000000000001",
                    "junk",
                    "ip-1-2",
                    "2001-db8-0-0-0-0-0-1",
                    "2001.db8.0.0.0.0.0.1",
                    "2001-DB8--1",
                    "x20010db8000000000000000000000001",
                    "20010db800000000000000000000000z",
                    "2001-db8--1--2",
                ] {
                    queries.push((format!("{q}.f6.diff.test."), t));
                }
            }
            "*.r4" => {
                for q in [
                    "4.3.2.1",
                    "3.2.1",
                    "x.3.2.1",
                    "256.3.2.1",
                    "5.4.3.2.1",
                    "04.3.2.1",
                    "-1.3.2.1",
                ] {
                    queries.push((format!("{q}.r4.diff.test."), t));
                }
            }
            "*.r4h" => {
                // The hex argument is %02x of C's atoi of each label.
                for q in ["4.3.2.1", "256.3.2.1", "-1.3.2.1", "12abc.3.2.1"] {
                    queries.push((format!("{q}.r4h.diff.test."), t));
                }
            }
            "*.r4e" => {
                for q in ["4.3.2.1", "5.3.2.1", "04.3.2.1"] {
                    queries.push((format!("{q}.r4e.diff.test."), t));
                }
            }
            "*.r6" => {
                let full = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2";
                let upper = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2";
                let long = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2";
                for q in [full, "1.0.0.2", "g.0.0.2", upper, long] {
                    queries.push((format!("{q}.r6.diff.test."), t));
                }
            }
            // pdns_server 4.7 never returns from an endless loop (the thread hangs; newer
            // releases stop it at lua-records-exec-limit): checked on catalyst-dns alone below.
            "spin" => {}
            _ => queries.push((format!("{owner}.diff.test."), t)),
        }
    }
    // Where current PowerDNS differs from the installed 4.7, catalyst-dns follows current
    // PowerDNS (docs/dns.md lists each): checked on catalyst-dns alone.
    let mut newer: Vec<(String, RecordType, bool)> = Vec::new();
    for (owner, _, body) in records() {
        let nonpositive = body.contains("{0,") || body.contains("{-");
        if owner.starts_with("pn") || (owner.starts_with("pw") && nonpositive) {
            // picknamehashed is newer than 4.7; zero/negative weights fail in current PowerDNS.
            newer.push((format!("{owner}.diff.test."), RecordType::A, nonpositive));
        }
    }
    for q in [
        "2001-db8--1",
        "20010db8000000000000000000000001",
        "2001-db8-0-0-0-0-0-1",
        "2001.db8.0.0.0.0.0.1",
        "2001-DB8--1",
        "x20010db8000000000000000000000001",
    ] {
        // 4.7's createForward6 answers :: for these (it reads the labels relative to the zone);
        // current PowerDNS parses them.
        newer.push((format!("{q}.f6.diff.test."), RecordType::AAAA, false));
    }
    // PowerDNS 5.x answers "error" where 4.7 failed the query (createReverse with exceptions on
    // a name that is no address: 4.7 let ComboAddress's exception escape) or answered
    // "unknown" (createReverse6 with a nibble that is not hex).
    newer.push(("x.3.2.1.r4e.diff.test.".into(), rtype("PTR"), false));
    let bad6 = "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2";
    newer.push((format!("{bad6}.r6.diff.test."), rtype("PTR"), false));
    for q in ["0a141e28", "ffffffff"] {
        // 4.7's createForward reads hex only as exactly two characters and eight digits;
        // current PowerDNS reads the last eight hex digits after any non-hex prefix.
        newer.push((format!("{q}.f4.diff.test."), RecordType::A, false));
    }
    queries.retain(|(n, t)| !newer.iter().any(|(m, u, _)| m == n && u == t));
    for (name, t, servfail) in &newer {
        let c = query_raw(cport, name, *t, None).expect("catalyst-dns answers");
        let want = if *servfail {
            hickory_proto::op::ResponseCode::ServFail
        } else {
            hickory_proto::op::ResponseCode::NoError
        };
        assert_eq!(c.metadata.response_code, want, "{name} {t}");
        assert_eq!(
            c.answers.is_empty(),
            *servfail,
            "{name} {t}: {:?}",
            c.answers
        );
    }
    queries.push(("www.diff.test.".into(), RecordType::A));
    queries.push(("sloc.diff.test.".into(), rtype("LOC")));
    queries.push(("loop.diff.test.".into(), RecordType::AAAA));
    let ecs_list = [
        None,
        Some("10.1.2.0/24"),
        Some("172.16.9.0/24"),
        Some("192.168.4.0/24"),
        Some("8.8.8.0/24"),
        Some("100.64.1.0/24"),
    ];
    let mut diffs = Vec::new();
    let mut compared = 0;
    for (name, t) in &queries {
        for ecs in ecs_list {
            let c = query_raw(cport, name, *t, ecs).map(|m| answer_key(&m));
            let p = query_raw(pport, name, *t, ecs).map(|m| answer_key(&m));
            compared += 1;
            if c != p {
                diffs.push(format!(
                    "{name} {t} ecs={ecs:?}\n  catalyst {c:?}\n  powerdns {p:?}"
                ));
            }
        }
    }
    let spin = query_raw(cport, "spin.diff.test.", RecordType::A, None).expect("answer");
    assert_eq!(
        spin.metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail,
        "over the instruction budget: SERVFAIL"
    );
    eprintln!(
        "{compared} answers compared with pdns_server, {} checked against current PowerDNS semantics",
        newer.len()
    );
    assert!(
        diffs.is_empty(),
        "{} of {compared} answers differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// PowerDNS 4.7 joins chunks as `lua-records-insert-whitespace=yes` (the default before 5.0):
/// catalyst-dns with `lua.chunk_join: space` answers the same; with `concat` (the 5.0 default)
/// the chunks are concatenated.
#[test]
fn chunk_joining_matches_powerdns_both_ways() {
    if !require("chunk_joining_matches_powerdns_both_ways", &[Need::Pdns]) {
        return;
    }
    let dir = scratch("chunks");
    let zf = dir.join("ch.test.zone");
    std::fs::write(
        &zf,
        "$ORIGIN ch.test.\n$TTL 60\n@ IN SOA ns.ch.test. hm.ch.test. 1 3600 600 604800 60\n\
         @ IN NS ns\nns IN A 127.0.0.1\n\
         c1 IN LUA TXT \"'a\" \"b'\"\n\
         c2 IN LUA TXT \"'x' .. \" \"'y'\"\n\
         c3 IN LUA TXT \"'p\" \"\" \"q'\"\n\
         c4 IN LUA A \"'192.0.2.' .. \" \"'44'\"\n\
         c5 IN LUA TXT \";local s = 'm\" \"n' return s\"\n",
    )
    .unwrap();
    let zones: [(&str, &Path); 1] = [("ch.test", &zf)];
    let pport = free_port();
    let _pdns = start_pdns(&dir, &zones, pport, "");
    let sport = free_port();
    let _space = start_catalyst(
        &dir,
        &config(sport, &zones, "lua: {chunk_join: space}\n"),
        sport,
    );
    let cdir = dir.join("concat");
    std::fs::create_dir_all(&cdir).unwrap();
    let cport = free_port();
    let _concat = start_catalyst(&cdir, &config(cport, &zones, ""), cport);
    let mut diffs = Vec::new();
    for (n, t) in [
        ("c1", RecordType::TXT),
        ("c2", RecordType::TXT),
        ("c3", RecordType::TXT),
        ("c4", RecordType::A),
        ("c5", RecordType::TXT),
    ] {
        let name = format!("{n}.ch.test.");
        let s = query_raw(sport, &name, t, None).map(|m| answer_key(&m));
        let p = query_raw(pport, &name, t, None).map(|m| answer_key(&m));
        if s != p {
            diffs.push(format!("{name}: space {s:?} vs PowerDNS 4.7 {p:?}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let txt = |n: &str| answers(cport, &format!("{n}.ch.test."), RecordType::TXT, None);
    assert_eq!(txt("c1"), vec!["ab"]);
    assert_eq!(txt("c2"), vec!["xy"]);
    assert_eq!(txt("c3"), vec!["pq"]);
    assert_eq!(txt("c5"), vec!["mn"]);
}
