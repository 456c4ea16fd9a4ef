//! LUA record code: compile, and when it compiles, evaluate against a query. Errors are fine,
//! panics are not.
#![no_main]

use std::{cell::Cell, sync::Arc};

use catalyst_dns::{
    failover::FailoverState,
    health::{HealthConfig, Registry},
    lua::{CompileEnv, Deps, Env, EvalContext, Program},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(code) = std::str::from_utf8(data) else {
        return;
    };
    let version = Arc::default();
    let env = Env {
        health: Arc::new(Registry::new(HealthConfig::default(), Arc::clone(&version))),
        geo: None,
        failover: Arc::new(FailoverState::new(version)),
        zone: "fuzz.test.".into(),
    };
    let include = |label: &str| (label == "cfg").then(|| "x = {'192.0.2.1'}".to_string());
    let Ok(p) = Program::compile(
        code,
        &CompileEnv {
            include: &include,
            health: &env.health,
            zone: "fuzz.test.",
            includes: &Arc::default(),
            exec_limit: 1000,
        },
    ) else {
        return;
    };
    let lookup = |_: &str, _: u16| Vec::new();
    let cx = EvalContext {
        qname: "1.2.3.4.www.fuzz.test.",
        zone: "fuzz.test.",
        owner: "*.www.fuzz.test.",
        who: "192.0.2.9".parse().unwrap(),
        ecs: Some("198.51.100.0/24".parse().unwrap()),
        bestwho: "198.51.100.0".parse().unwrap(),
        localwho: "127.0.0.1".parse().unwrap(),
        tcp: false,
        dnssec_ok: false,
        env: &env,
        zone_lookup: &lookup,
        deps: Cell::new(Deps::default()),
        draws: Cell::default(),
        forced_pick: None,
    };
    let _ = p.run(&cx);
});
