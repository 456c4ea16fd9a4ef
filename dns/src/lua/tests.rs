//! Unit tests of the language and of every built-in function.

use std::{cell::Cell, collections::HashMap, net::IpAddr, sync::Arc};

use super::*;
use crate::{
    failover::{FailoverRecord, FailoverState},
    health::{HealthConfig, Registry},
};

struct Fixture {
    env: Env,
    includes: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Self {
        let version = Arc::default();
        Self {
            env: Env {
                health: Arc::new(Registry::new(HealthConfig::default(), Arc::clone(&version))),
                geo: None,
                failover: Arc::new(FailoverState::new(version)),
                zone: "example.org.".into(),
            },
            includes: HashMap::new(),
        }
    }

    fn compile(&self, code: &str) -> Result<Program, CompileError> {
        let inc = |l: &str| self.includes.get(l).cloned();
        Program::compile(
            code,
            &CompileEnv {
                include: &inc,
                health: &self.env.health,
                zone: "example.org.",
                includes: &Arc::default(),
                exec_limit: 1000,
            },
        )
    }

    fn run_as(
        &self,
        code: &str,
        qname: &str,
        owner: &str,
        who: &str,
        ecs: Option<&str>,
    ) -> (Result<Vec<String>, EvalError>, Deps) {
        let p = self.compile(code).unwrap_or_else(|e| panic!("{code}: {e}"));
        let who: IpAddr = who.parse().unwrap();
        let ecs: Option<IpNet> = ecs.map(|e| e.parse().unwrap());
        let lookup = |name: &str, t: u16| {
            if name.trim_end_matches('.') == "www.example.org" && t == 1 {
                vec!["192.0.2.10".to_string()]
            } else {
                vec![]
            }
        };
        let cx = EvalContext {
            qname,
            zone: "example.org.",
            owner,
            who,
            ecs,
            bestwho: ecs.map_or(who, |n| n.network()),
            localwho: "127.0.0.1".parse().unwrap(),
            tcp: false,
            dnssec_ok: false,
            env: &self.env,
            zone_lookup: &lookup,
            deps: Cell::new(Deps::default()),
            draws: Cell::default(),
            forced_pick: None,
        };
        let r = p.run(&cx);
        (r, cx.deps.get())
    }

    fn run(&self, code: &str) -> Vec<String> {
        self.run_as(
            code,
            "q.example.org.",
            "q.example.org.",
            "192.0.2.200",
            None,
        )
        .0
        .unwrap_or_else(|e| panic!("{code}: {e}"))
    }

    fn run_from(&self, code: &str, who: &str) -> Vec<String> {
        self.run_as(code, "q.example.org.", "q.example.org.", who, None)
            .0
            .unwrap()
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

#[test]
fn expressions_and_statements() {
    let f = Fixture::new();
    assert_eq!(f.run("'a' .. 'b' .. 1 + 2"), s(&["ab3"]));
    assert_eq!(f.run("{'x', 'y'}"), s(&["x", "y"]));
    assert_eq!(f.run("({a = 'k'}).a"), s(&["k"]));
    assert_eq!(f.run("7 % 3 == 1 and 'yes' or 'no'"), s(&["yes"]));
    assert_eq!(f.run(";local t = {'a', 'b'} return t[2]"), s(&["b"]));
    assert_eq!(
        f.run(";local x = 2 if x > 3 then return 'big' elseif x > 1 then return 'mid' else return 'small' end"),
        s(&["mid"])
    );
    assert_eq!(f.run(";x = 'g' local y = x .. 'h' return y"), s(&["gh"]));
    assert_eq!(f.run("#{'a','b','c'} .. ''"), s(&["3"]));
    assert_eq!(f.run("tostring(10 / 4)"), s(&["2.5"]));
    assert_eq!(f.run("qname:toString()"), s(&["q.example.org."]));
    assert_eq!(f.run("zone"), s(&["example.org."]));
    assert_eq!(f.run("qname:getRawLabels()[1]"), s(&["q"]));
    assert_eq!(
        f.run(";if qname:isPartOf('example.org') then return 'in' end return 'out'"),
        s(&["in"])
    );
    assert_eq!(f.run("who:toString()"), s(&["192.0.2.200"]));
    assert_eq!(
        f.run(";if ecswho == nil then return 'none' end return 'ecs'"),
        s(&["none"])
    );
    assert_eq!(f.run("tostring(pdns.AAAA)"), s(&["28"]));
}

#[test]
fn unsupported_constructs_are_load_errors() {
    let f = Fixture::new();
    for (code, needle) in [
        (";for i = 1, 3 do end return 'x'", "`for` statement"),
        (";while true do end", "`while` statement"),
        ("function() return 1 end", "function definition"),
        ("os.execute('rm')", "library call `os.execute`"),
        ("string.format('%s', 'a')", "library call `string.format`"),
        ("nosuchfunction(1)", "unknown function `nosuchfunction`"),
        ("undefinedvar", "undefined variable `undefinedvar`"),
        ("1 // 2", "operator `//`"),
        (";t = {} t.x = 1 return t.x", "assignment to a table field"),
        ("'unterminated", "unfinished string"),
        (";include('missing') return 'x'", "include('missing')"),
    ] {
        let e = f.compile(code).expect_err(code).to_string();
        assert!(e.contains(needle), "{code}: {e}");
    }
}

/// Found by the `lua_compile` fuzz target (CI, 2026-12-07): 868 nested `{` overflowed the
/// native compiler's stack. Past 64 levels the native tier leaves code to the interpreter tier,
/// where Lua 5.1's own limit (200 syntax levels, as in `PowerDNS`) decides: deeper code fails to
/// load, shallower code runs. Nothing crashes.
#[test]
fn deep_nesting_goes_to_the_interpreter_tier_and_past_lua_limit_fails_to_load() {
    let f = Fixture::new();
    let inc = |_: &str| None;
    let env = CompileEnv {
        include: &inc,
        health: &f.env.health,
        zone: "example.org.",
        includes: &Arc::default(),
        exec_limit: 1000,
    };
    let too_deep = [
        "{".repeat(868),
        format!("{}1{}", "{".repeat(300), "}".repeat(300)),
        format!("{}1{}", "(".repeat(300), ")".repeat(300)),
        format!("{}1", "- ".repeat(300)),
        format!("'a'{}", " .. 'a'".repeat(300)),
        format!(
            ";{}return 1{}",
            "if true then ".repeat(300),
            " end".repeat(300)
        ),
    ];
    for code in &too_deep {
        let e = f.compile(code).expect_err(code).to_string();
        assert!(e.contains("nesting deeper than 64 levels"), "{e}");
        let e = Compiled::compile(code, &env).expect_err(code).to_string();
        assert!(
            e.contains("syntax levels") || e.contains("overflow"),
            "interpreter: {e}"
        );
    }
    // Between the two limits: the interpreter tier runs it.
    let mid = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    assert!(f.compile(&mid).is_err());
    let c = Compiled::compile(&mid, &env).expect("100 levels load in the interpreter tier");
    assert_eq!(c.tier(), Tier::Interpreter);
    // Within the native limit: native.
    let shallow = format!("{}'192.0.2.1'{}", "(".repeat(40), ")".repeat(40));
    assert_eq!(f.run(&shallow), s(&["192.0.2.1"]));
    // Chains built in a loop nest the tree as deeply (a 1,000-term sum overflowed the stack
    // when evaluated): long ones go to the interpreter tier, short ones stay native.
    let sum = |n: usize| {
        format!(
            ";local x = 1 if who then x = 2 end return x{}",
            "+x".repeat(n)
        )
    };
    for code in [sum(5_000), format!("qname{}", ":toString()".repeat(5_000))] {
        let e = f.compile(&code).expect_err("native").to_string();
        assert!(e.contains("nesting deeper than 64 levels"), "{e}");
        let c = Compiled::compile(&code, &env).expect("the interpreter tier loads it");
        assert_eq!(c.tier(), Tier::Interpreter);
    }
    assert_eq!(f.run(&sum(50)), s(&["102"]));
}

#[test]
fn include_inlines_settings_and_registers_checks_at_load() {
    let mut f = Fixture::new();
    f.includes.insert(
        "config".into(),
        "settings = {selector = 'all'} ips = {'192.0.2.1', '192.0.2.2'}".into(),
    );
    f.compile(";include('config') return ifportup(443, ips, settings)")
        .unwrap();
    assert_eq!(
        f.env.health.len(),
        2,
        "checks registered at load from included constants"
    );
    // Pending checks read as down (PowerDNS first run): the backup selector answers from all.
    let r = f.run(";include('config') return ifportup(443, ips, {backupSelector = 'all'})");
    assert_eq!(r, s(&["192.0.2.1", "192.0.2.2"]));
    let (r, _) = f.run_as(
        "ifportup(443, {'192.0.2.1'}, {failOnIncompleteCheck = true})",
        "q.example.org.",
        "q.example.org.",
        "192.0.2.200",
        None,
    );
    assert!(r.is_err(), "SERVFAIL while no check completed");
    let r = f.run("ifportup(443, {'192.0.2.1', '192.0.2.2'}, {backupSelector = 'empty'})");
    assert!(r.is_empty(), "empty backup selector fails closed");
    // As PowerDNS's useSelector: an unknown selector picks at random instead of failing.
    for _ in 0..10 {
        let r = f.run("ifportup(443, {'192.0.2.1', '192.0.2.2'}, {backupSelector = 'bogus'})");
        assert_eq!(r.len(), 1);
        assert!(["192.0.2.1", "192.0.2.2"].contains(&r[0].as_str()));
    }
    // As PowerDNS 5.1+: with everything down the backup selector reads the first non-empty
    // group only.
    let r = f.run(
        "ifportup(443, {{}, {'192.0.2.1', '192.0.2.2'}, {'192.0.2.3'}}, {backupSelector = 'all'})",
    );
    assert_eq!(r, s(&["192.0.2.1", "192.0.2.2"]));
}

#[test]
fn random_pickers_stay_in_their_lists() {
    let f = Fixture::new();
    for _ in 0..50 {
        let r = f.run("pickrandom({'a', 'b', 'c'})");
        assert!(["a", "b", "c"].contains(&r[0].as_str()));
        let r = f.run("pickwrandom({{1, 'a'}, {3, 'b'}})");
        assert!(["a", "b"].contains(&r[0].as_str()));
        let r = f.run("pickrandomsample(2, {'a', 'b', 'c'})");
        assert_eq!(r.len(), 2);
        assert_ne!(r[0], r[1]);
    }
    let (_, d) = f.run_as("pickrandom({'a', 'b'})", "q.", "q.", "192.0.2.1", None);
    assert!(d.has(Deps::RANDOM), "random answers are not cached");
    let (_, d) = f.run_as("pickrandom({'a'})", "q.", "q.", "192.0.2.1", None);
    assert!(
        !d.has(Deps::RANDOM),
        "a single candidate is not a random choice"
    );
    assert!(
        f.run_as("pickrandom({})", "q.", "q.", "192.0.2.1", None)
            .0
            .is_err()
    );
    // Current PowerDNS reads weights with checked_stoi_nonzero<unsigned int>: zero and negative
    // weights fail the record (at load here, when the list is constant).
    for code in [
        "pickwrandom({{0, 'a'}})",
        "pickwhashed({{1, 'a'}, {-1, 'b'}})",
        "picknamehashed({{0, 'a'}, {2, 'b'}})",
    ] {
        assert!(f.compile(code).is_err(), "{code}");
    }
    assert_eq!(
        f.run("pickwhashed({{2.9, 'a'}})"),
        s(&["a"]),
        "2.9 reads as 2"
    );
}

#[test]
fn hashed_pickers_are_deterministic_and_use_bestwho() {
    let f = Fixture::new();
    let list = "{'a', 'b', 'c', 'd', 'e'}";
    let who = "198.51.100.23";
    let idx = crate::hash::address_hash(who.parse().unwrap()) as usize % 5;
    assert_eq!(
        f.run_from(&format!("pickhashed({list})"), who),
        s(&[["a", "b", "c", "d", "e"][idx]])
    );
    // With ECS the network address is hashed, not the resolver.
    let (r, d) = f.run_as(
        &format!("pickhashed({list})"),
        "q.",
        "q.",
        "192.0.2.1",
        Some("198.51.100.0/24"),
    );
    let idx = crate::hash::address_hash("198.51.100.0".parse().unwrap()) as usize % 5;
    assert_eq!(r.unwrap(), s(&[["a", "b", "c", "d", "e"][idx]]));
    assert!(d.has(Deps::CLIENT));
    // pickwhashed: PowerDNS's order for 3 pairs is reversed (libstdc++ unordered_map).
    let code = "pickwhashed({{10, 'a'}, {20, 'b'}, {70, 'c'}})";
    for i in 0..40u8 {
        let who = format!("203.0.113.{i}");
        let r = i64::from(crate::hash::address_hash(who.parse().unwrap())) % 100;
        let want = if r < 70 {
            "c"
        } else if r < 90 {
            "b"
        } else {
            "a"
        };
        assert_eq!(f.run_from(code, &who), s(&[want]), "{who}");
    }
    let code = "picknamehashed({{1, 'a'}, {1, 'b'}})";
    let (r, d) = f.run_as(
        code,
        "Host.Example.Org.",
        "host.example.org.",
        "192.0.2.1",
        None,
    );
    let h = crate::hash::name_hash("host.example.org.") % 2;
    assert_eq!(r.unwrap(), s(&[if h == 0 { "b" } else { "a" }]));
    assert!(d.has(Deps::QNAME) && !d.has(Deps::CLIENT));
    // Consistent hashing: a reordered list gives the same answer for every client.
    for i in 0..40u8 {
        let who = format!("203.0.113.{i}");
        assert_eq!(
            f.run_from("pickchashed({{10, 'a'}, {20, 'b'}, {5, 'c'}})", &who),
            f.run_from("pickchashed({{5, 'c'}, {10, 'a'}, {20, 'b'}})", &who)
        );
    }
}

#[test]
fn all_view_netmask_filter() {
    let f = Fixture::new();
    assert_eq!(f.run("all({'a', 'b'})"), s(&["a", "b"]));
    assert!(
        f.run_as("all({})", "q.", "q.", "192.0.2.1", None)
            .0
            .is_err()
    );
    let view = "view({ {{'10.0.0.0/8'}, {'inner'}}, {{'0.0.0.0/0'}, {'outer'}} })";
    assert_eq!(f.run_from(view, "10.1.2.3"), s(&["inner"]));
    assert_eq!(f.run_from(view, "192.0.2.1"), s(&["outer"]));
    assert_eq!(
        f.run_from("view({ {{'10.0.0.0/8'}, {'x'}} })", "192.0.2.1"),
        s(&[""])
    );
    assert_eq!(
        f.run_from(
            "netmask({'10.0.0.0/8', '192.0.2.0/24'}) and 'y' or 'n'",
            "192.0.2.9"
        ),
        s(&["y"])
    );
    assert_eq!(
        f.run_from("netmask({'10.0.0.0/8'}) and 'y' or 'n'", "192.0.2.9"),
        s(&["n"])
    );
    assert_eq!(
        f.run("filterForward('192.0.2.5', newNMG({'192.0.2.0/24'}))"),
        s(&["192.0.2.5"])
    );
    assert_eq!(
        f.run("filterForward('10.0.0.5', newNMG({'192.0.2.0/24'}))"),
        s(&["0.0.0.0"])
    );
    assert_eq!(
        f.run("filterForward('2001:db8::1', {'192.0.2.0/24'})"),
        s(&["::"])
    );
    assert_eq!(
        f.run("filterForward('10.0.0.5', {'192.0.2.0/24'}, 'fallback.example.')"),
        s(&["fallback.example."])
    );
    assert!(
        f.run("filterForward('10.0.0.5', {'192.0.2.0/24'}, '')")
            .is_empty()
    );
}

#[test]
fn forward_and_reverse_names() {
    let f = Fixture::new();
    let fwd = |q: &str| {
        f.run_as("createForward()", q, "*.ip.example.org.", "192.0.2.1", None)
            .0
            .unwrap()
    };
    assert_eq!(fwd("1.2.3.4.ip.example.org."), s(&["1.2.3.4"]));
    assert_eq!(fwd("host-10-0-0-1.ip.example.org."), s(&["10.0.0.1"]));
    assert_eq!(fwd("0a000001.ip.example.org."), s(&["10.0.0.1"]));
    assert_eq!(fwd("nothing.ip.example.org."), s(&["0.0.0.0"]));
    assert_eq!(fwd("1-2-3-999.ip.example.org."), s(&["0.0.0.0"]));
    let fwd6 = |q: &str| {
        f.run_as(
            "createForward6()",
            q,
            "*.v6.example.org.",
            "192.0.2.1",
            None,
        )
        .0
        .unwrap()
    };
    assert_eq!(fwd6("2001-db8--1.v6.example.org."), s(&["2001:db8::1"]));
    assert_eq!(
        fwd6("20010db8000000000000000000000001.v6.example.org."),
        s(&["2001:db8::1"])
    );
    assert_eq!(
        fwd6("2001.db8.0.0.0.0.0.1.v6.example.org."),
        s(&["2001:db8::1"])
    );
    let rev = |q: &str, code: &str| {
        f.run_as(code, q, "*.in-addr.arpa.", "192.0.2.1", None)
            .0
            .unwrap()
    };
    assert_eq!(
        rev(
            "4.3.2.1.in-addr.arpa.",
            "createReverse('ip-%5%.example.org')"
        ),
        s(&["ip-1-2-3-4.example.org"])
    );
    assert_eq!(
        rev(
            "4.3.2.1.in-addr.arpa.",
            "createReverse('%6%.hex', {['1.2.3.4'] = 'special.example.org'})"
        ),
        s(&["special.example.org"])
    );
    assert_eq!(
        rev("4.3.2.1.in-addr.arpa.", "createReverse('%6%.hex')"),
        s(&["01020304.hex"])
    );
    let q6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.";
    assert_eq!(
        rev(q6, "createReverse6('v6-%33%.example.org')"),
        s(&["v6-2001-db8--1.example.org"])
    );
    assert_eq!(rev(q6, "createReverse6('%34%-%41%')"), s(&["2001-0001"]));
}

#[test]
fn geo_functions_without_a_database_are_unknown() {
    let f = Fixture::new();
    assert_eq!(f.run("countryCode()"), s(&["--"]));
    assert_eq!(f.run("continentCode()"), s(&["--"]));
    assert_eq!(f.run("regionCode()"), s(&["--"]));
    assert_eq!(f.run("country('nl') and 'y' or 'n'"), s(&["n"]));
    assert_eq!(f.run("latlon()"), s(&["0.000000 0.000000"]));
    // Unknown locations count as 0,0: all candidates tie.
    let r = f.run("pickclosest({'192.0.2.1', '198.51.100.1'})");
    assert!(r == s(&["192.0.2.1"]) || r == s(&["198.51.100.1"]));
    let r = f
        .run_as(
            "closestMagic()",
            "192-0-2-1.198-51-100-1.example.org.",
            "*.example.org.",
            "192.0.2.9",
            None,
        )
        .0
        .unwrap();
    assert!(r == s(&["192.0.2.1"]) || r == s(&["198.51.100.1"]));
}

#[test]
fn dblookup_and_failover() {
    let f = Fixture::new();
    assert_eq!(
        f.run("dblookup('www.example.org', pdns.A)"),
        s(&["192.0.2.10"])
    );
    assert!(f.run("dblookup('nope.example.org', 1)").is_empty());
    let code = "failover('app', {eu = {'192.0.2.1'}, us = {'198.51.100.1', '198.51.100.2'}}, 'eu')";
    assert_eq!(
        f.run(code),
        s(&["192.0.2.1"]),
        "unknown state: static fallback"
    );
    f.env.failover.set(
        "app",
        Some(FailoverRecord {
            active_region: "us".into(),
            epoch: 3,
            lease_holder: None,
        }),
    );
    assert_eq!(f.run(code), s(&["198.51.100.1", "198.51.100.2"]));
    let (_, d) = f.run_as(code, "q.", "q.", "192.0.2.1", None);
    assert!(d.has(Deps::FAILOVER));
    f.env.failover.set(
        "app",
        Some(FailoverRecord {
            active_region: "mars".into(),
            epoch: 4,
            lease_holder: None,
        }),
    );
    assert_eq!(
        f.run(code),
        s(&["192.0.2.1"]),
        "unknown region: static fallback"
    );
}
