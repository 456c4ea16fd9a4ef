//! Zone tests: master-file round trips (property test) and lookup behaviour.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;

use super::*;
use crate::{
    failover::FailoverState,
    health::{HealthConfig, Registry},
    lua::{Deps, Tier},
};

fn load(text: &str) -> Result<Zone, ZoneError> {
    load_with(text, false, 1000)
}

fn load_with(text: &str, strict: bool, exec_limit: u32) -> Result<Zone, ZoneError> {
    let version = Arc::default();
    let mut next_id = 0;
    Zone::from_raw(
        parser::parse_str(text, "t.test.")?,
        ZoneSource {
            origin: "t.test.",
            file: Path::new("<text>"),
            join: ChunkJoin::Concat,
            health: Arc::new(Registry::new(HealthConfig::default(), Arc::clone(&version))),
            geo: None,
            failover: Arc::new(FailoverState::new(version)),
            next_id: &mut next_id,
            strict,
            exec_limit,
        },
    )
}

#[derive(Clone, Debug)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
    Mx(u16, String),
}

impl Data {
    fn rtype(&self) -> u16 {
        match self {
            Data::A(_) => 1,
            Data::Aaaa(_) => 28,
            Data::Txt(_) => 16,
            Data::Mx(..) => 15,
        }
    }
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        any::<u32>().prop_map(|v| Data::A(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| Data::Aaaa(Ipv6Addr::from(v))),
        "[a-zA-Z0-9 =;()-]{0,40}".prop_map(Data::Txt),
        (any::<u16>(), "[a-z]{1,8}").prop_map(|(p, n)| Data::Mx(p, n)),
    ]
}

/// One record rendered in one of several equivalent spellings.
fn render(owner: &str, ttl: u32, d: &Data, style: u8) -> String {
    let owner_s = match style % 3 {
        0 => owner.to_string(),
        1 => format!("{owner}.t.test."),
        _ => owner.to_ascii_uppercase(),
    };
    let ttl_s = if style & 4 == 0 {
        format!("{ttl} IN")
    } else {
        format!("IN {ttl}")
    };
    let rdata = match d {
        Data::A(a) => format!("A {a}"),
        Data::Aaaa(a) => format!("AAAA {a}"),
        Data::Txt(t) => {
            let esc = t.replace('\\', "\\\\").replace('"', "\\\"");
            format!("TXT \"{esc}\"")
        }
        Data::Mx(p, n) if style & 8 == 0 => format!("MX {p} {n}"),
        Data::Mx(p, n) => format!("MX ( {p} ; preference\n  {n}.t.test. )"),
    };
    format!("{owner_s} {ttl_s} {rdata} ; comment {style}\n")
}

fn expected(d: &Data) -> String {
    match d {
        Data::A(a) => a.to_string(),
        Data::Aaaa(a) => a.to_string(),
        Data::Txt(t) => {
            hickory_proto::rr::RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![t.clone()]))
                .to_string()
        }
        Data::Mx(p, n) => format!("{p} {n}.t.test."),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever spelling a record is written in, the zone serves exactly its data.
    #[test]
    fn master_file_round_trip(records in prop::collection::vec(("[a-z][a-z0-9-]{0,10}", 1u32..100_000, data(), any::<u8>()), 1..25)) {
        let mut text = String::from("$ORIGIN t.test.\n$TTL 300\n@ IN SOA ns hm 1 2 3 4 5\n");
        for (owner, ttl, d, style) in &records {
            text.push_str(&render(owner, *ttl, d, *style));
        }
        let zone = load(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        for (owner, _, d, _) in &records {
            let got = zone.db_lookup(&format!("{owner}.t.test."), d.rtype());
            prop_assert!(got.contains(&expected(d)), "{owner} {d:?}: {got:?}\n{text}");
        }
    }
}

#[test]
fn cname_and_other_data_is_an_error() {
    let e = load("$TTL 60\n@ SOA ns hm 1 2 3 4 5\nx CNAME y\nx A 192.0.2.1\n").unwrap_err();
    assert!(e.to_string().contains("CNAME and other data"), "{e}");
}

#[test]
fn records_outside_the_zone_are_errors() {
    let e = load("$TTL 60\n@ SOA ns hm 1 2 3 4 5\nwww.other.test. A 192.0.2.1\n").unwrap_err();
    assert!(e.to_string().contains("outside the zone"), "{e}");
}

#[test]
fn lookups_follow_rfc1034() {
    let zone = load(
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\na.b.c A 192.0.2.1\n\
         *.w A 192.0.2.2\nl LUA A \"'192.0.2.3'\"\ne LUA A \"{}\"\nbad LUA A \"'not an address'\"\n",
    )
    .unwrap();
    let client = ClientInfo {
        who: "192.0.2.9".parse().unwrap(),
        ecs: None,
        local: "127.0.0.1".parse().unwrap(),
        tcp: false,
        dnssec_ok: false,
        forced_pick: None,
    };
    let q = |n: &str, t: RecordType| zone.answer(&Name::from_str(n).unwrap(), t, &client);
    assert_eq!(
        q("b.c.t.test.", RecordType::A).outcome,
        Outcome::NoData,
        "empty non-terminal"
    );
    assert_eq!(q("x.b.c.t.test.", RecordType::A).outcome, Outcome::NxDomain);
    let wild = q("anything.w.t.test.", RecordType::A);
    assert_eq!(wild.answers[0].name.to_ascii(), "anything.w.t.test.");
    let l = q("l.t.test.", RecordType::A);
    assert!(
        l.dynamic && l.deps == Deps::default(),
        "constant LUA answer depends on nothing"
    );
    assert_eq!(q("l.t.test.", RecordType::AAAA).outcome, Outcome::NoData);
    let e = q("e.t.test.", RecordType::A);
    assert_eq!(
        (e.outcome, e.answers.len()),
        (Outcome::NoData, 0),
        "empty result: NOERROR, no data"
    );
    assert_eq!(q("bad.t.test.", RecordType::A).outcome, Outcome::ServFail);
    let any = q("l.t.test.", RecordType::ANY);
    assert_eq!(any.answers.len(), 1, "ANY runs the LUA records");
}

fn client() -> ClientInfo {
    ClientInfo {
        who: "192.0.2.9".parse().unwrap(),
        ecs: None,
        local: "127.0.0.1".parse().unwrap(),
        tcp: false,
        dnssec_ok: false,
        forced_pick: None,
    }
}

fn answer_strings(zone: &Zone, name: &str, t: RecordType) -> (Outcome, Vec<String>) {
    let a = zone.answer(&Name::from_str(name).unwrap(), t, &client());
    (
        a.outcome,
        a.answers.iter().map(|r| r.data.to_string()).collect(),
    )
}

/// A zone like the issue's: native records, interpreter-tier bodies and bodies neither tier
/// can load, side by side.
const MIXED: &str = "$TTL 60\n@ SOA ns hm 1 2 3 4 5\nok A 192.0.2.1\n\
    native LUA A \"'192.0.2.2'\"\n\
    loop LUA A \";local n = 0 while n < 3 do n = n + 1 end return '192.0.2.' .. n\"\n\
    fmt LUA TXT \"string.format('%s-%03d', 'x', 7)\"\n\
    raw LUA A \"newCAFromRaw('\\\\192\\\\000\\\\002\\\\004'):toString()\"\n\
    broken LUA A \"ifportup(443, {\"\n\
    negative LUA A \"pickwhashed({{-1, '192.0.2.5'}, {2, '192.0.2.6'}})\"\n\
    counter LUA TXT \";hits = (hits or 0) + 1 return tostring(hits)\"\n\
    spin LUA A \";while true do end\"\n";

#[test]
fn failing_lua_records_answer_servfail_and_the_zone_serves() {
    let zone = load(MIXED).unwrap();
    let failed: Vec<_> = zone
        .lua_failures
        .iter()
        .map(|f| (f.owner.as_str(), f.line))
        .collect();
    assert_eq!(
        failed,
        [("broken.t.test.", 8), ("negative.t.test.", 9)],
        "each failing record once, with its line"
    );
    assert!(
        zone.lua_failures[0]
            .to_string()
            .starts_with("<text>:8: LUA record `broken.t.test.` (A): "),
        "{}",
        zone.lua_failures[0]
    );
    assert!(zone.lua_failures[1].to_string().contains("out of range"));
    let q = |n: &str, t| answer_strings(&zone, n, t);
    assert_eq!(q("broken.t.test.", RecordType::A).0, Outcome::ServFail);
    assert_eq!(q("negative.t.test.", RecordType::A).0, Outcome::ServFail);
    assert_eq!(
        q("ok.t.test.", RecordType::A),
        (Outcome::Data, vec!["192.0.2.1".into()])
    );
    assert_eq!(
        q("native.t.test.", RecordType::A),
        (Outcome::Data, vec!["192.0.2.2".into()])
    );
}

#[test]
fn tiers_are_chosen_per_record() {
    let zone = load(MIXED).unwrap();
    let tier = |owner: &str| {
        zone.lua_records()
            .find(|r| r.owner_str == owner)
            .map(|r| r.tier())
            .unwrap()
    };
    assert_eq!(tier("native.t.test."), Tier::Native);
    for owner in [
        "loop.t.test.",
        "fmt.t.test.",
        "raw.t.test.",
        "counter.t.test.",
    ] {
        assert_eq!(tier(owner), Tier::Interpreter, "{owner}");
    }
    assert_eq!(tier("broken.t.test."), Tier::Failed);
}

#[test]
fn interpreter_tier_runs_full_lua() {
    let zone = load(MIXED).unwrap();
    let q = |n: &str, t| answer_strings(&zone, n, t);
    assert_eq!(
        q("loop.t.test.", RecordType::A),
        (Outcome::Data, vec!["192.0.2.3".into()])
    );
    assert_eq!(
        q("fmt.t.test.", RecordType::TXT),
        (Outcome::Data, vec!["x-007".into()])
    );
    assert_eq!(
        q("raw.t.test.", RecordType::A),
        (Outcome::Data, vec!["192.0.2.4".into()])
    );
    // Globals persist between queries within a worker (PowerDNS `shared` mode).
    let first = q("counter.t.test.", RecordType::TXT).1[0].clone();
    let second = q("counter.t.test.", RecordType::TXT).1[0].clone();
    let n = |s: &str| s.parse::<u32>().unwrap();
    assert_eq!(n(&second), n(&first) + 1);
    // Interpreted answers are never cached.
    let a = zone.answer(
        &Name::from_str("loop.t.test.").unwrap(),
        RecordType::A,
        &client(),
    );
    assert!(a.deps.has(Deps::IMPURE));
}

#[test]
fn over_budget_interpreted_records_answer_servfail() {
    let zone = load_with(MIXED, false, 10_000).unwrap();
    let before = crate::lua::interp::exec_limit_counter().get();
    assert_eq!(
        answer_strings(&zone, "spin.t.test.", RecordType::A).0,
        Outcome::ServFail
    );
    assert!(
        crate::lua::interp::exec_limit_counter().get() > before,
        "counted"
    );
    // The worker's state still answers afterwards.
    assert_eq!(
        answer_strings(&zone, "loop.t.test.", RecordType::A).1,
        vec!["192.0.2.3".to_string()]
    );
}

#[test]
fn strict_zones_refuse_to_load_and_list_every_failure() {
    let e = load_with(MIXED, true, 1000).unwrap_err();
    let messages = e.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with("<text>:8: "), "{messages:?}");
    assert!(messages[1].starts_with("<text>:9: "), "{messages:?}");
}

#[test]
fn every_record_error_is_reported_once() {
    let e =
        load("$TTL 60\n@ SOA ns hm 1 2 3 4 5\na A 300.1.1.1\nb MX x\nc LUA A \"'192.0.2.1'\"\n")
            .unwrap_err();
    let messages = e.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with("<text>:3: "), "{messages:?}");
    assert!(messages[1].starts_with("<text>:4: "), "{messages:?}");
}

#[test]
fn interpreter_cannot_reach_the_host() {
    let zone = load(
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\nx LUA TXT \";os.execute('touch /tmp/x') return 'ran'\"\n\
         y LUA TXT \";return io.open('/etc/passwd')\"\nz LUA TXT \"tostring(os.time() > 0)\"\n",
    )
    .unwrap();
    assert_eq!(
        answer_strings(&zone, "x.t.test.", RecordType::TXT).0,
        Outcome::ServFail
    );
    assert_eq!(
        answer_strings(&zone, "y.t.test.", RecordType::TXT).0,
        Outcome::ServFail
    );
    assert_eq!(
        answer_strings(&zone, "z.t.test.", RecordType::TXT).1,
        vec!["true".to_string()]
    );
}

#[test]
fn loc_records_static_and_lua() {
    let zone = load(
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\ns LOC 51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m\n\
         l LUA LOC \"'51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m'\"\n\
         bad LUA LOC \"'91 0 0 N 0 0 0 E'\"\nx LUA FOO \"'1'\"\n",
    );
    let e = zone.unwrap_err();
    assert!(e.to_string().contains("unsupported type `FOO`"), "{e}");
    let zone = load(
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\ns LOC 51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m\n\
         l LUA LOC \"'51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m'\"\n\
         bad LUA LOC \"'91 0 0 N 0 0 0 E'\"\n",
    )
    .unwrap();
    let loc = loc::loc_type();
    let s = zone.answer(&Name::from_str("s.t.test.").unwrap(), loc, &client());
    let l = zone.answer(&Name::from_str("l.t.test.").unwrap(), loc, &client());
    assert_eq!(s.answers.len(), 1);
    assert_eq!(s.answers[0].data, l.answers[0].data, "LUA LOC = static LOC");
    let bad = zone.answer(&Name::from_str("bad.t.test.").unwrap(), loc, &client());
    assert_eq!(bad.outcome, Outcome::ServFail);
}
