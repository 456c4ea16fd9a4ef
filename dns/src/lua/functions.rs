//! The built-in functions of LUA records, with `PowerDNS`'s semantics. Deterministic pickers use
//! the same hash (lookup2) and the same candidate order as `PowerDNS` so answers match.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use rand::seq::SliceRandom;

use super::{
    CompileEnv, CompileError, Deps, EvalContext, EvalError,
    ast::{Builtin, Expr},
    value::{Table, Value, cpp_stream_double},
};
use crate::{
    failover::FailoverState,
    geo::{GeoDb, GeoInfo},
    hash,
    health::{self, CheckSpec, CheckState, FirstRun, Status, Target},
};

/// Services the functions read at query time.
#[derive(Debug)]
pub struct Env {
    /// Health registry (also used to register checks whose targets are only known per query).
    pub health: Arc<health::Registry>,
    /// Geo databases, if configured.
    pub geo: Option<Arc<GeoDb>>,
    /// Failover state for the `failover()` extension.
    pub failover: Arc<FailoverState>,
    /// Zone being answered (for checks registered per query).
    pub zone: String,
}

/// How a health-checked function picks among available addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    /// One at random.
    Random,
    /// One by hash of bestwho.
    Hashed,
    /// The closest to bestwho.
    PickClosest,
    /// All of them.
    All,
    /// None (backupSelector only): NODATA.
    Empty,
}

impl Selector {
    /// As PowerDNS's `useSelector` (5.1+, for `selector` and `backupSelector` alike): an unknown
    /// name picks at random (PowerDNS logs a warning per query; catalyst-dns once per load).
    fn parse(s: &str) -> Self {
        match s {
            "random" => Self::Random,
            "hashed" => Self::Hashed,
            "pickclosest" => Self::PickClosest,
            "all" => Self::All,
            "empty" => Self::Empty,
            other => {
                tracing::warn!(
                    selector = other,
                    "LUA record uses an unknown selector: random"
                );
                Self::Random
            }
        }
    }
}

/// A health-checked call with its checks registered at load.
#[derive(Debug)]
pub struct HealthPlan {
    /// Candidate groups: the address answered and the check deciding it.
    groups: Vec<Vec<(IpAddr, Arc<CheckState>)>>,
    selector: Selector,
    backup: Selector,
    fail_on_incomplete: bool,
}

fn bad(msg: impl Into<String>) -> CompileError {
    CompileError::bad_call(msg)
}

fn eval_err(msg: impl Into<String>) -> EvalError {
    EvalError::new(msg)
}

/// Compile a call; checks are registered and constant arguments validated here.
pub(super) fn compile_call(
    b: Builtin,
    args: Vec<Expr>,
    env: &CompileEnv<'_>,
) -> Result<Expr, CompileError> {
    let consts: Option<Vec<Value>> = args.iter().map(|a| a.as_const().cloned()).collect();
    match b {
        Builtin::IfPortUp | Builtin::IfUrlUp | Builtin::IfUrlExtUp => {
            if let Some(vals) = consts {
                let plan = plan(b, &vals, |spec| env.health.register(&spec, env.zone))
                    .map_err(|e| bad(e.message))?;
                return Ok(Expr::Health(Arc::new(plan)));
            }
        }
        _ => {
            if let Some(vals) = &consts {
                validate(b, vals)?;
            }
        }
    }
    Ok(Expr::Call(b, args))
}

/// Load-time checks of constant arguments, so zone errors surface at load, not per query.
fn validate(b: Builtin, vals: &[Value]) -> Result<(), CompileError> {
    match b {
        Builtin::PickWHashed
        | Builtin::PickWRandom
        | Builtin::PickNameHashed
        | Builtin::PickCHashed => {
            // A zero or negative constant weight fails every query (as in PowerDNS): report the
            // record at load.
            weighted(vals.first()).map_err(|e| bad(e.message))?;
        }
        // `netmask` and `view` read their netmasks lazily at query time, as PowerDNS does: a
        // malformed netmask only fails the queries that reach it.
        Builtin::NewNmg => {
            nets(vals.first()).map_err(|e| bad(e.message))?;
        }
        _ => {}
    }
    Ok(())
}

fn string_list(v: Option<&Value>) -> Result<Vec<String>, EvalError> {
    match v {
        Some(Value::Table(t)) => t
            .values()
            .map(|v| {
                v.as_string()
                    .ok_or_else(|| eval_err(format!("list holds a {}", v.type_name())))
            })
            .collect(),
        Some(other) => other
            .as_string()
            .map(|s| vec![s])
            .ok_or_else(|| eval_err(format!("expected a list, got {}", other.type_name()))),
        None => Err(eval_err("missing list argument")),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, EvalError> {
    s.trim()
        .parse()
        .map_err(|_| eval_err(format!("`{s}` is not an IP address")))
}

/// A netmask as `PowerDNS`'s `Netmask(string)` reads it: the address must parse, the prefix is
/// an integer taken as a C `uint8_t` and clamped to the family's length (`10.0.0.0/33` is
/// `10.0.0.0/32`); without a prefix, the full length.
fn parse_net(s: &str) -> Result<IpNet, EvalError> {
    let s = s.trim();
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip = parse_ip(addr).map_err(|_| eval_err(format!("`{s}` is not a netmask")))?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => {
            let n: i64 = b
                .trim()
                .parse()
                .map_err(|_| eval_err(format!("`{s}` is not a netmask")))?;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "C uint8_t conversion, reproduced on purpose"
            )]
            let b = n as u8;
            b.min(max)
        }
    };
    Ok(IpNet::new(ip, bits).expect("prefix clamped to the family length"))
}

/// `newCAFromRaw(bytes)`: 4 bytes are an IPv4 address, 16 bytes an IPv6 address.
pub(super) fn addr_from_raw(raw: &[u8]) -> Result<IpAddr, EvalError> {
    match raw.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(raw);
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        n => Err(eval_err(format!(
            "newCAFromRaw needs 4 or 16 bytes, got {n}"
        ))),
    }
}

/// An address argument: an address object or its text.
pub(super) fn address_arg(v: Option<&Value>) -> Result<IpAddr, EvalError> {
    match v {
        Some(Value::Addr(a)) => Ok(*a),
        Some(v) => parse_ip(&v.as_string().unwrap_or_default()),
        None => Err(eval_err("expected an address")),
    }
}

pub(super) fn nets(v: Option<&Value>) -> Result<Vec<IpNet>, EvalError> {
    string_list(v)?.iter().map(|s| parse_net(s)).collect()
}

/// Order in which libstdc++'s `std::unordered_map<int, …>` iterates keys 1..=n inserted in
/// order (`PowerDNS` reads weighted lists into one). Keys never collide (n ≤ bucket count), so the
/// order only depends on when the table rehashes: each insert goes to the front of the node
/// list, and each rehash reverses the list.
pub fn unordered_int_order(n: usize) -> Vec<usize> {
    // Bucket counts libstdc++ grows through: 13 first (the "start with 11" rule rounds to 13),
    // then the next prime of its table at or above double the count.
    const PRIMES: &[usize] = &[
        29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172_933, 351_061,
        712_697,
    ];
    let mut order: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut buckets = 0usize;
    for key in 1..=n {
        if key > buckets {
            buckets = if buckets == 0 {
                13
            } else {
                PRIMES
                    .iter()
                    .copied()
                    .find(|p| *p >= (buckets * 2).max(key + 1))
                    .unwrap_or(buckets * 2 + 1)
            };
            order = order.into_iter().rev().collect();
        }
        order.push_front(key);
    }
    order.into_iter().collect()
}

/// `{{w, v}, …}` as (weight, value) in `PowerDNS`'s iteration order.
fn weighted(v: Option<&Value>) -> Result<Vec<(i64, String)>, EvalError> {
    let Some(Value::Table(t)) = v else {
        return Err(eval_err("expected a list of {weight, value} pairs"));
    };
    let pairs: Vec<&Value> = t.values().collect();
    let mut out = Vec::with_capacity(pairs.len());
    for idx in unordered_int_order(pairs.len()) {
        let Value::Table(p) = pairs[idx - 1] else {
            return Err(eval_err("expected a {weight, value} pair"));
        };
        let w = weight(&p.get(&Value::Num(1.0)))?;
        let val = p
            .get(&Value::Num(2.0))
            .as_string()
            .ok_or_else(|| eval_err("pair without a value"))?;
        out.push((w, val));
    }
    Ok(out)
}

/// A weight as current `PowerDNS` reads it: the Lua value's text through
/// `checked_stoi_nonzero<unsigned int>` (`std::stoull`: leading digits, so `2.5` is 2). Zero,
/// negative (`stoull` wraps it past the range), too large and non-numeric weights are errors:
/// the record answers SERVFAIL.
fn weight(v: &Value) -> Result<i64, EvalError> {
    let text = v.as_string().unwrap_or_default();
    let n = crate::health::stoi_prefix(&text)
        .ok_or_else(|| eval_err(format!("weight `{text}` is not a number")))?;
    if n == 0 {
        return Err(eval_err("weights cannot be 0"));
    }
    if n < 0 || n > i64::from(u32::MAX) {
        return Err(eval_err(format!("weight `{text}` is out of range")));
    }
    Ok(n)
}

fn options(v: Option<&Value>) -> Result<BTreeMap<String, String>, EvalError> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Nil) => {}
        Some(Value::Table(t)) => {
            for (k, v) in t.entries() {
                let k = k
                    .as_string()
                    .ok_or_else(|| eval_err("option name must be a string"))?;
                let v = match v {
                    Value::Table(h) => {
                        // headers = {Foo_Bar = 'x'} → "Foo-Bar: x" lines (`_` becomes `-`).
                        let mut lines = String::new();
                        for (hk, hv) in h.entries() {
                            let hk = hk.as_string().unwrap_or_default().replace('_', "-");
                            let _ = writeln!(lines, "{hk}: {}", hv.as_string().unwrap_or_default());
                        }
                        lines
                    }
                    Value::Bool(b) => b.to_string(),
                    other => other.as_string().ok_or_else(|| {
                        eval_err(format!("option `{k}` has a {}", other.type_name()))
                    })?,
                };
                out.insert(k, v);
            }
        }
        Some(other) => {
            return Err(eval_err(format!(
                "options must be a table, got {}",
                other.type_name()
            )));
        }
    }
    Ok(out)
}

/// Flat list or list of groups of addresses.
fn groups(v: Option<&Value>) -> Result<Vec<Vec<String>>, EvalError> {
    let Some(Value::Table(t)) = v else {
        return Err(eval_err("expected a list of addresses"));
    };
    if t.values().all(|v| matches!(v, Value::Table(_))) && !t.is_empty() {
        t.values().map(|g| string_list(Some(g))).collect()
    } else {
        Ok(vec![string_list(v)?])
    }
}

fn plan(
    b: Builtin,
    vals: &[Value],
    mut register: impl FnMut(CheckSpec) -> Arc<CheckState>,
) -> Result<HealthPlan, EvalError> {
    let opt_index = if b == Builtin::IfUrlExtUp { 1 } else { 2 };
    let all_opts = options(vals.get(opt_index))?;
    let selector = all_opts
        .get("selector")
        .map_or(Selector::Random, |s| Selector::parse(s));
    let backup = all_opts
        .get("backupSelector")
        .map_or(Selector::Random, |s| Selector::parse(s));
    let fail_on_incomplete = all_opts
        .get("failOnIncompleteCheck")
        .is_some_and(|v| v == "true");
    let mut check_opts = all_opts.clone();
    check_opts.retain(|k, _| !health::ANSWER_OPTIONS.contains(&k.as_str()));
    let mut out = Vec::new();
    match b {
        Builtin::IfPortUp => {
            let port = vals
                .first()
                .and_then(Value::as_number)
                .ok_or_else(|| eval_err("ifportup needs a port"))?;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "clamped to the port range as PowerDNS does"
            )]
            let port = port.clamp(0.0, 65535.0) as u16;
            for g in groups(vals.get(1))? {
                let mut group = Vec::new();
                for a in g {
                    let ip = parse_ip(&a)?;
                    let spec = CheckSpec {
                        target: Target::Tcp(SocketAddr::new(ip, port)),
                        opts: check_opts.clone(),
                    };
                    group.push((ip, register(spec)));
                }
                out.push(group);
            }
        }
        Builtin::IfUrlUp => {
            let url = vals
                .first()
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("ifurlup needs a URL"))?;
            health::Url::parse(&url).map_err(|e| eval_err(e.to_string()))?;
            for g in groups(vals.get(1))? {
                let mut group = Vec::new();
                for a in g {
                    let ip = parse_ip(&a)?;
                    let spec = CheckSpec {
                        target: Target::Url {
                            url: url.clone(),
                            pin: Some(ip),
                        },
                        opts: check_opts.clone(),
                    };
                    group.push((ip, register(spec)));
                }
                out.push(group);
            }
        }
        _ => {
            let Some(Value::Table(units)) = vals.first() else {
                return Err(eval_err("ifurlextup needs a list of {ip = url} tables"));
            };
            for unit in units.values() {
                let Value::Table(m) = unit else {
                    return Err(eval_err("ifurlextup needs a list of {ip = url} tables"));
                };
                let mut group = Vec::new();
                for (ip, url) in m.entries() {
                    let ip = parse_ip(&ip.as_string().unwrap_or_default())?;
                    let url = url
                        .as_string()
                        .ok_or_else(|| eval_err("URL must be a string"))?;
                    health::Url::parse(&url).map_err(|e| eval_err(e.to_string()))?;
                    let spec = CheckSpec {
                        target: Target::Url { url, pin: None },
                        opts: check_opts.clone(),
                    };
                    group.push((ip, register(spec)));
                }
                out.push(group);
            }
        }
    }
    Ok(HealthPlan {
        groups: out,
        selector,
        backup,
        fail_on_incomplete,
    })
}

/// Evaluate a health-checked call.
pub(super) fn health(plan: &HealthPlan, cx: &EvalContext<'_>) -> Result<Value, EvalError> {
    cx.note(Deps::HEALTH);
    let first_run = cx.env.health.config().first_run;
    let mut incomplete = true;
    for group in &plan.groups {
        let mut available = Vec::new();
        for (ip, state) in group {
            match state.status_for_query() {
                Status::Up => {
                    incomplete = false;
                    available.push(*ip);
                }
                Status::Down => incomplete = false,
                Status::Pending => {
                    if first_run == FirstRun::Up {
                        available.push(*ip);
                    }
                }
            }
        }
        if !available.is_empty() {
            return select(plan.selector, &available, cx);
        }
    }
    if incomplete && plan.fail_on_incomplete {
        return Err(eval_err("health check has not completed yet"));
    }
    // As PowerDNS 5.1+: the backup selector picks among the candidates of the first non-empty
    // group (4.7's `ifurlup` took all candidates of all groups).
    let Some(first) = plan.groups.iter().find(|g| !g.is_empty()) else {
        return Err(eval_err("the address list cannot be empty"));
    };
    let first: Vec<IpAddr> = first.iter().map(|(ip, _)| *ip).collect();
    select(plan.backup, &first, cx)
}

fn select(s: Selector, cands: &[IpAddr], cx: &EvalContext<'_>) -> Result<Value, EvalError> {
    let one = |ip: IpAddr| Value::list(vec![Value::str(ip.to_string())]);
    Ok(match s {
        Selector::All => Value::list(cands.iter().map(|ip| Value::str(ip.to_string())).collect()),
        Selector::Empty => Value::list(Vec::new()),
        Selector::Random => one(pick_random(cands, cx)?.to_owned()),
        Selector::Hashed => {
            cx.note(Deps::CLIENT);
            one(cands[hash::address_hash(cx.bestwho) as usize % cands.len()])
        }
        Selector::PickClosest => one(closest(cands, cx)?),
    })
}

fn pick_random<'v, T>(items: &'v [T], cx: &EvalContext<'_>) -> Result<&'v T, EvalError> {
    match items.len() {
        0 => Err(eval_err("the items list cannot be empty")),
        1 => Ok(&items[0]),
        n => Ok(&items[cx.uniform_draw(n)]),
    }
}

fn geo(cx: &EvalContext<'_>, ip: IpAddr) -> GeoInfo {
    let mut info = cx
        .env
        .geo
        .as_ref()
        .map(|g| g.lookup(ip))
        .unwrap_or_default();
    // PowerDNS's GeoIP backend hands the location to the Lua functions as text
    // (`std::to_string(lat) + " " + std::to_string(lon)`, six decimals) and reads it back with
    // `atof`: every location-based function (latlon, latlonloc, pickclosest, closestMagic)
    // sees the coordinates rounded to six decimals.
    info.location = info.location.map(|(lat, lon)| (round6(lat), round6(lon)));
    info
}

fn round6(v: f64) -> f64 {
    format!("{v:.6}").parse().unwrap_or(v)
}

fn closest(cands: &[IpAddr], cx: &EvalContext<'_>) -> Result<IpAddr, EvalError> {
    if cands.is_empty() {
        return Err(eval_err("the IP list cannot be empty"));
    }
    cx.note(Deps::CLIENT);
    let (wlat, wlon) = geo(cx, cx.bestwho).location.unwrap_or((0.0, 0.0));
    let mut best = f64::INFINITY;
    let mut ties: Vec<IpAddr> = Vec::new();
    for c in cands {
        let (lat, lon) = geo(cx, *c).location.unwrap_or((0.0, 0.0));
        let latdiff = wlat - lat;
        let mut londiff = wlon - lon;
        // PowerDNS wraps only this side of the antimeridian; kept for identical answers.
        if londiff > 180.0 {
            londiff = 360.0 - londiff;
        }
        let d = latdiff * latdiff + londiff * londiff;
        if d < best {
            best = d;
            ties.clear();
            ties.push(*c);
        } else if (d - best).abs() == 0.0 {
            ties.push(*c);
        }
    }
    pick_random(&ties, cx).copied()
}

/// `view(rules)` as `PowerDNS`: rules in order, each rule's netmasks in order, parsed as they are
/// reached (a malformed netmask after a match is never read; one before it is an error), the
/// first match picks a random result of its rule; no match is an empty answer string.
fn view(v: Option<&Value>, cx: &EvalContext<'_>) -> Result<Value, EvalError> {
    let Some(Value::Table(rules)) = v else {
        return Err(eval_err("view needs a list of {{nets}, {results}} rules"));
    };
    for r in rules.values() {
        let Value::Table(r) = r else {
            return Err(eval_err("Invalid view data"));
        };
        if r.len() < 2 {
            return Err(eval_err("Invalid view data"));
        }
        for mask in string_list(Some(&r.get(&Value::Num(1.0))))? {
            if net_contains(&parse_net(&mask)?, cx.bestwho) {
                let results = string_list(Some(&r.get(&Value::Num(2.0))))?;
                if results.is_empty() {
                    return Err(eval_err(format!(
                        "The IP list cannot be empty (for netmask {mask})"
                    )));
                }
                return Ok(Value::str(pick_random(&results, cx)?.as_str()));
            }
        }
    }
    Ok(Value::str(""))
}

/// `netmask(nets)` as `PowerDNS`: netmasks in order, parsed as they are reached.
fn netmask(v: Option<&Value>, cx: &EvalContext<'_>) -> Result<bool, EvalError> {
    for mask in string_list(v)? {
        if net_contains(&parse_net(&mask)?, cx.bestwho) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn net_contains(n: &IpNet, ip: IpAddr) -> bool {
    match (n, ip) {
        (IpNet::V4(n), IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_some_and(|v4| n.contains(&v4)),
        _ => n.contains(&ip),
    }
}

/// A geo attribute matched against one string or a list (case-insensitive).
fn geo_match(arg: Option<&Value>, actual: Option<String>) -> Result<Value, EvalError> {
    let actual = actual.unwrap_or_else(|| "unknown".into());
    let wanted = string_list(arg)?;
    Ok(Value::Bool(
        wanted.iter().any(|w| w.eq_ignore_ascii_case(&actual)),
    ))
}

fn code_or_unknown(v: Option<String>) -> Value {
    Value::str(v.unwrap_or_else(|| "--".into()))
}

/// Call a built-in with evaluated arguments.
#[expect(
    clippy::too_many_lines,
    reason = "one arm per built-in reads best as a single table"
)]
pub(super) fn call(b: Builtin, args: &[Value], cx: &EvalContext<'_>) -> Result<Value, EvalError> {
    let arg = |i: usize| args.get(i);
    Ok(match b {
        Builtin::PickRandom => {
            let items = string_list(arg(0))?;
            Value::str(pick_random(&items, cx)?.as_str())
        }
        Builtin::PickRandomSample => {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "count clamped below"
            )]
            let n = arg(0).and_then(Value::as_number).unwrap_or(0.0).max(0.0) as usize;
            let mut items = string_list(arg(1))?;
            if items.is_empty() {
                return Err(eval_err("the items list cannot be empty"));
            }
            if items.len() > 1 {
                cx.other_draw();
            }
            items.shuffle(&mut rand::rng());
            items.truncate(n.min(items.len()));
            Value::list(items.into_iter().map(Value::str).collect())
        }
        Builtin::PickHashed => {
            let items = string_list(arg(0))?;
            if items.is_empty() {
                return Err(eval_err("the items list cannot be empty"));
            }
            cx.note(Deps::CLIENT);
            Value::str(items[hash::address_hash(cx.bestwho) as usize % items.len()].as_str())
        }
        Builtin::PickWRandom => {
            let items = weighted(arg(0))?;
            let (sum, firsts) = cumulative32(&items)?;
            let r = if items.len() > 1 {
                cx.weighted_draw(&firsts, sum)
            } else {
                0
            };
            Value::str(upper_bound_pick(&items, &firsts, r)?)
        }
        Builtin::PickWHashed => {
            let items = weighted(arg(0))?;
            let (sum, firsts) = cumulative32(&items)?;
            cx.note(Deps::CLIENT);
            let r = hash::address_hash(cx.bestwho) % sum;
            Value::str(upper_bound_pick(&items, &firsts, r)?)
        }
        Builtin::PickNameHashed => {
            let items = weighted(arg(0))?;
            if items.is_empty() {
                return Err(eval_err("The items list cannot be empty"));
            }
            // PowerDNS sums into a size_t here but keeps 32-bit running sums.
            let mut sum = 0u64;
            let mut firsts = Vec::with_capacity(items.len());
            for (w, _) in &items {
                sum += u64::from(weight_u32(*w));
                #[expect(clippy::cast_possible_truncation, reason = "C unsigned int")]
                firsts.push(sum as u32);
            }
            if sum == 0 {
                return Err(eval_err("The sum of items cannot be zero"));
            }
            cx.note(Deps::QNAME);
            #[expect(clippy::cast_possible_truncation, reason = "C unsigned int")]
            let r = (u64::from(hash::name_hash(cx.qname)) % sum) as u32;
            Value::str(upper_bound_pick(&items, &firsts, r)?)
        }
        Builtin::PickCHashed => {
            let items = weighted(arg(0))?;
            if items.is_empty() {
                return Err(eval_err("the items list cannot be empty"));
            }
            cx.note(Deps::CLIENT);
            Value::str(consistent_pick(&items, hash::address_hash(cx.bestwho)))
        }
        Builtin::PickClosest => {
            let ips: Vec<IpAddr> = string_list(arg(0))?
                .iter()
                .map(|s| parse_ip(s))
                .collect::<Result<_, _>>()?;
            Value::str(closest(&ips, cx)?.to_string())
        }
        Builtin::ClosestMagic => {
            cx.note(Deps::QNAME);
            let mut cands = Vec::new();
            for label in labels(cx.qname) {
                match label.replace('-', ".").parse::<IpAddr>() {
                    Ok(ip) => cands.push(ip),
                    Err(_) => break,
                }
            }
            Value::str(closest(&cands, cx)?.to_string())
        }
        Builtin::LatlonMagic => {
            cx.note(Deps::QNAME);
            let l = labels(cx.qname);
            if l.len() < 4 {
                return Ok(Value::str("unknown"));
            }
            let ip = parse_ip(&format!("{}.{}.{}.{}", l[3], l[2], l[1], l[0]))?;
            let (lat, lon) = geo(cx, ip).location.unwrap_or((0.0, 0.0));
            Value::str(format!("{lat:.6} {lon:.6}"))
        }
        Builtin::All => {
            let items = string_list(arg(0))?;
            if items.is_empty() {
                return Err(eval_err("the IP list cannot be empty"));
            }
            Value::list(items.into_iter().map(Value::str).collect())
        }
        Builtin::View => {
            cx.note(Deps::CLIENT);
            view(arg(0), cx)?
        }
        Builtin::Netmask => {
            cx.note(Deps::CLIENT);
            Value::Bool(netmask(arg(0), cx)?)
        }
        Builtin::NewNmg => Value::list(
            nets(arg(0))?
                .iter()
                .map(|n| Value::str(n.to_string()))
                .collect(),
        ),
        Builtin::Country => {
            cx.note(Deps::CLIENT);
            geo_match(arg(0), geo(cx, cx.bestwho).country)?
        }
        Builtin::CountryCode => {
            cx.note(Deps::CLIENT);
            code_or_unknown(geo(cx, cx.bestwho).country)
        }
        Builtin::Continent => {
            cx.note(Deps::CLIENT);
            geo_match(arg(0), geo(cx, cx.bestwho).continent)?
        }
        Builtin::ContinentCode => {
            cx.note(Deps::CLIENT);
            code_or_unknown(geo(cx, cx.bestwho).continent)
        }
        Builtin::Region => {
            cx.note(Deps::CLIENT);
            geo_match(arg(0), geo(cx, cx.bestwho).region)?
        }
        Builtin::RegionCode => {
            cx.note(Deps::CLIENT);
            code_or_unknown(geo(cx, cx.bestwho).region)
        }
        Builtin::Asnum => {
            cx.note(Deps::CLIENT);
            geo_match(arg(0), geo(cx, cx.bestwho).asn.map(|a| a.to_string()))?
        }
        Builtin::Latlon => {
            cx.note(Deps::CLIENT);
            let (lat, lon) = geo(cx, cx.bestwho).location.unwrap_or((0.0, 0.0));
            Value::str(format!("{lat:.6} {lon:.6}"))
        }
        Builtin::LatlonLoc => {
            cx.note(Deps::CLIENT);
            // An unknown location is "unknown" in PowerDNS, which `atof` reads as 0 0: the
            // LOC text of 0 S 0 W (PowerDNS's hemisphere for 0 is S and W).
            let (lat, lon) = geo(cx, cx.bestwho).location.unwrap_or((0.0, 0.0));
            Value::str(loc_string(lat, lon))
        }
        Builtin::CreateForward => {
            cx.note(Deps::QNAME);
            Value::str(create_forward(cx.qname, cx.owner))
        }
        Builtin::CreateForward6 => {
            cx.note(Deps::QNAME);
            Value::str(create_forward6(cx.qname, cx.owner))
        }
        Builtin::CreateReverse => {
            cx.note(Deps::QNAME);
            let fmt = arg(0)
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("createReverse needs a format"))?;
            Value::str(create_reverse(cx.qname, &fmt, arg(1)))
        }
        Builtin::CreateReverse6 => {
            cx.note(Deps::QNAME);
            let fmt = arg(0)
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("createReverse6 needs a format"))?;
            Value::str(create_reverse6(cx.qname, &fmt, arg(1)))
        }
        Builtin::FilterForward => {
            let addr = arg(0)
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("filterForward needs an address"))?;
            let ip = parse_ip(&addr)?;
            if nets(arg(1))?.iter().any(|n| net_contains(n, ip)) {
                Value::list(vec![Value::str(addr)])
            } else {
                match arg(2).and_then(Value::as_string) {
                    Some(f) if f.is_empty() => Value::list(Vec::new()),
                    Some(f) => Value::list(vec![Value::str(f)]),
                    None => Value::list(vec![Value::str(if ip.is_ipv4() {
                        "0.0.0.0"
                    } else {
                        "::"
                    })]),
                }
            }
        }
        Builtin::IfPortUp | Builtin::IfUrlUp | Builtin::IfUrlExtUp => {
            let zone = cx.env.zone.clone();
            let p = plan(b, args, |spec| cx.env.health.register(&spec, &zone))?;
            health(&p, cx)?
        }
        Builtin::DbLookup => {
            let name = arg(0)
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("dblookup needs a name"))?;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "qtype codes are u16"
            )]
            let qtype = arg(1)
                .and_then(Value::as_number)
                .ok_or_else(|| eval_err("dblookup needs a type"))? as u16;
            Value::list(
                (cx.zone_lookup)(&name, qtype)
                    .into_iter()
                    .map(Value::str)
                    .collect(),
            )
        }
        Builtin::Failover => {
            cx.note(Deps::FAILOVER);
            let group = arg(0)
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("failover needs a group"))?;
            let Some(Value::Table(regions)) = arg(1) else {
                return Err(eval_err("failover needs a {region = {addresses}} table"));
            };
            let active = cx.env.failover.active(&group);
            let chosen = active
                .map(|r| regions.get(&Value::str(r)))
                .filter(|v| !matches!(v, Value::Nil))
                .or_else(|| arg(2).map(|d| regions.get(d)))
                .filter(|v| !matches!(v, Value::Nil))
                .ok_or_else(|| {
                    eval_err(format!(
                        "no active region known for failover group `{group}` and no fallback"
                    ))
                })?;
            Value::list(
                string_list(Some(&chosen))?
                    .into_iter()
                    .map(Value::str)
                    .collect(),
            )
        }
        Builtin::ToString => {
            Value::str(arg(0).map_or_else(|| "nil".to_string(), ToString::to_string))
        }
        Builtin::ToNumber => arg(0)
            .and_then(Value::as_number)
            .map_or(Value::Nil, Value::Num),
        Builtin::NewCa => Value::Addr(address_arg(arg(0))?),
        Builtin::NewCaFromRaw => match arg(0) {
            Some(Value::Str(s)) => Value::Addr(addr_from_raw(s.as_bytes())?),
            _ => return Err(eval_err("newCAFromRaw needs a 4- or 16-byte string")),
        },
        Builtin::NewNetmask => {
            let s = arg(0)
                .and_then(Value::as_string)
                .ok_or_else(|| eval_err("newNetmask needs a netmask"))?;
            Value::Net(parse_net(&s)?)
        }
    })
}

/// A weight (1..=`u32::MAX`, see [`weight`]) as the C `unsigned int` `PowerDNS` sums.
fn weight_u32(w: i64) -> u32 {
    u32::try_from(w).unwrap_or(u32::MAX)
}

/// `PowerDNS`'s running sums of `unsigned int` weights (wrapping at 32 bits, as C does for very
/// large weights) and their total; a zero total is an error (SERVFAIL).
fn cumulative32(items: &[(i64, String)]) -> Result<(u32, Vec<u32>), EvalError> {
    if items.is_empty() {
        return Err(eval_err("The items list cannot be empty"));
    }
    let mut sum = 0u32;
    let mut firsts = Vec::with_capacity(items.len());
    for (w, _) in items {
        sum = sum.wrapping_add(weight_u32(*w));
        firsts.push(sum);
    }
    if sum == 0 {
        return Err(eval_err("The sum of items cannot be zero"));
    }
    Ok((sum, firsts))
}

/// `std::upper_bound(firsts, r)`: a binary search for the first running sum above `r`. The sums
/// are sorted unless very large weights wrapped them, and then the binary search lands where
/// C++'s does. Past the end (undefined in `PowerDNS`) is an error.
fn upper_bound_pick<'a>(
    items: &'a [(i64, String)],
    firsts: &[u32],
    r: u32,
) -> Result<&'a str, EvalError> {
    let (mut first, mut count) = (0usize, firsts.len());
    while count > 0 {
        let step = count / 2;
        let it = first + step;
        if r < firsts[it] {
            count = step;
        } else {
            first = it + 1;
            count -= step + 1;
        }
    }
    items
        .get(first)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| eval_err("weighted pick ran past the end of the list"))
}

/// `PowerDNS`'s consistent hashing: each entry owns `weight` points hash("entry-i"); the client
/// hash picks the entry owning the first point at or after it, wrapping to the lowest point.
pub fn consistent_pick(items: &[(i64, String)], qhash: u32) -> &str {
    let mut best: Option<(u32, &str)> = None;
    let mut first: Option<(u32, &str)> = None;
    for (w, entry) in items {
        let mut points: Vec<u32> = (0..*w)
            .map(|i| hash::burtle(format!("{entry}-{i}").as_bytes(), 0))
            .collect();
        points.sort_unstable();
        let Some(&min) = points.first() else { continue };
        if first.is_none_or(|(m, _)| min < m) {
            first = Some((min, entry));
        }
        let i = points.partition_point(|p| *p < qhash);
        if let Some(&p) = points.get(i)
            && best.is_none_or(|(b, _)| p < b)
        {
            best = Some((p, entry));
        }
    }
    best.or(first).map_or("", |(_, e)| e)
}

fn labels(name: &str) -> Vec<&str> {
    name.trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .collect()
}

fn loc_string(lat: f64, lon: f64) -> String {
    let (lat, lathem) = if lat > 0.0 { (lat, 'N') } else { (-lat, 'S') };
    let (lon, lonhem) = if lon > 0.0 { (lon, 'E') } else { (-lon, 'W') };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "degrees and minutes are small"
    )]
    let part = |v: f64| {
        let deg = v as i32;
        let min = ((v - f64::from(deg)) * 60.0) as i32;
        let sec = ((v - f64::from(deg)) * 60.0 - f64::from(min)) * 60.0;
        (deg, min, sec)
    };
    let (ld, lm, ls) = part(lat);
    let (od, om, os) = part(lon);
    // PowerDNS formats the seconds (doubles) with boost::format `%d`: a C++ stream's default
    // six significant digits, so fractional seconds survive into the LOC record.
    format!(
        "{ld} {lm} {} {lathem} {od} {om} {} {lonhem} 0.00m 1.00m 10000.00m 10.00m",
        cpp_stream_double(ls),
        cpp_stream_double(os)
    )
}

/// Labels of `qname` below the wildcard owner `*.rest` (empty if the owner is no wildcard).
fn relative_labels<'a>(qname: &'a str, owner: &str) -> Option<Vec<&'a str>> {
    let base = owner.strip_prefix("*.")?;
    let q = qname.to_ascii_lowercase();
    let base_l = base.to_ascii_lowercase();
    if !q.ends_with(&base_l) {
        return None;
    }
    let rel = &qname[..qname.len() - base.len()];
    Some(labels(rel))
}

fn create_forward(qname: &str, owner: &str) -> String {
    const ZERO: &str = "0.0.0.0";
    let Some(parts) = relative_labels(qname, owner) else {
        return ZERO.into();
    };
    if parts.len() >= 4 {
        // PowerDNS parses the four labels with `ComboAddress`, i.e. `inet_aton`: octal and hex
        // numbers count (`010` is 8, `0x0a` is 10).
        let dotted = format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[3]);
        return inet_aton4(&dotted).map_or_else(|| ZERO.into(), |a| a.to_string());
    }
    let Some(first) = parts.first() else {
        return ZERO.into();
    };
    let input = first.trim_start_matches(|c: char| !c.is_ascii_hexdigit());
    let ip_parts: Vec<&str> = input.split('-').filter(|p| !p.is_empty()).collect();
    if ip_parts.len() >= 4 {
        // Each of the last four read as `checked_stoi<uint8_t>` with nothing after the number,
        // and printed back as a number (`01` is 1).
        let mut out = Vec::new();
        for octet in &ip_parts[ip_parts.len() - 4..] {
            match octet.parse::<i64>() {
                Ok(v) if (0..=255).contains(&v) => out.push(v.to_string()),
                _ => return ZERO.into(),
            }
        }
        return out.join(".");
    }
    if input.len() >= 8
        && let Some(b) = scan_hex_octets(&input.as_bytes()[input.len() - 8..])
    {
        return Ipv4Addr::from(b).to_string();
    }
    ZERO.into()
}

/// `sscanf(s, "%02x%02x%02x%02x")` returning 4: each field takes one or two hex digits right
/// where the previous one stopped (`0a141e2z` reads 0a 14 1e 2).
fn scan_hex_octets(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut at = 0;
    for o in &mut out {
        let mut n = 0u8;
        let mut digits = 0;
        while digits < 2 {
            let Some(d) = s.get(at).and_then(|c| char::from(*c).to_digit(16)) else {
                break;
            };
            n = n * 16 + u8::try_from(d).ok()?;
            at += 1;
            digits += 1;
        }
        if digits == 0 {
            return None;
        }
        *o = n;
    }
    Some(out)
}

/// An address as PowerDNS's `ComboAddress` reads one without a port: IPv4 by `inet_aton`
/// (four parts), else IPv6.
fn combo_address(s: &str) -> Option<IpAddr> {
    inet_aton4(s)
        .map(IpAddr::V4)
        .or_else(|| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
}

/// IPv4 text as C's `inet_aton` reads four dotted parts: each a decimal, octal (leading `0`) or
/// hex (`0x`) number of at most 255.
fn inet_aton4(s: &str) -> Option<Ipv4Addr> {
    let mut out = [0u8; 4];
    let mut fields = s.split('.');
    for o in &mut out {
        let f = fields.next()?;
        let (digits, radix) = if let Some(h) = f.strip_prefix("0x").or_else(|| f.strip_prefix("0X"))
        {
            (h, 16)
        } else if f.len() > 1 && f.starts_with('0') {
            (&f[1..], 8)
        } else {
            (f, 10)
        };
        if digits.is_empty() || !digits.bytes().all(|c| char::from(c).is_digit(radix)) {
            return None;
        }
        let v = u32::from_str_radix(digits, radix).ok()?;
        *o = u8::try_from(v).ok()?;
    }
    fields.next().is_none().then(|| Ipv4Addr::from(out))
}

fn create_forward6(qname: &str, owner: &str) -> String {
    const ZERO: &str = "::";
    let Some(parts) = relative_labels(qname, owner) else {
        return ZERO.into();
    };
    let parse = |s: &str| {
        s.parse::<Ipv6Addr>()
            .map_or_else(|_| ZERO.to_string(), |a| a.to_string())
    };
    if parts.len() == 8 {
        return parse(&parts.join(":"));
    }
    if parts.len() == 1 {
        let p = parts[0];
        if p.contains('-') {
            return parse(&p.replace('-', ":"));
        }
        if p.len() >= 32 {
            let ip = &p[p.len() - 32..];
            let groups: Vec<&str> = (0..8).map(|i| &ip[i * 4..i * 4 + 4]).collect();
            return parse(&groups.join(":"));
        }
    }
    ZERO.into()
}

/// `boost::format` subset: `%N%` positional, `%s`/`%d` sequential, `%%`.
fn boost_format(fmt: &str, args: &[String]) -> String {
    let mut out = String::new();
    let mut next = 0;
    let mut it = fmt.char_indices().peekable();
    while let Some((_, c)) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.peek().map(|(_, c)| *c) {
            Some('%') => {
                it.next();
                out.push('%');
            }
            Some(d) if d.is_ascii_digit() => {
                let mut n = 0usize;
                while let Some((_, d)) = it.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                    n = n * 10 + (d as usize - '0' as usize);
                    it.next();
                }
                if it.peek().map(|(_, c)| *c) == Some('%') {
                    it.next();
                } else if it.peek().map(|(_, c)| *c) == Some('$') {
                    it.next();
                    it.next();
                }
                if let Some(a) = n.checked_sub(1).and_then(|i| args.get(i)) {
                    out.push_str(a);
                }
            }
            Some(_) => {
                it.next();
                if let Some(a) = args.get(next) {
                    out.push_str(a);
                }
                next += 1;
            }
            None => out.push('%'),
        }
    }
    out
}

fn exceptions(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_table)
        .map(|t: &Table| {
            t.entries()
                .filter_map(|(k, v)| Some((k.as_string()?, v.as_string()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn create_reverse(qname: &str, fmt: &str, exc: Option<&Value>) -> String {
    let l = labels(qname);
    if l.len() < 4 {
        return "unknown".into();
    }
    if exc.is_some_and(|v| v.as_table().is_some()) {
        // With exceptions, PowerDNS parses the name's address and each exception's with
        // `ComboAddress` (`inet_aton` for IPv4); one that does not parse makes the answer
        // "error".
        let Some(req) = inet_aton4(&format!("{}.{}.{}.{}", l[3], l[2], l[1], l[0])) else {
            return "error".into();
        };
        for (a, name) in exceptions(exc) {
            match combo_address(&a) {
                Some(addr) if addr == IpAddr::V4(req) => return name,
                Some(_) => {}
                None => return "error".into(),
            }
        }
    }
    // `%02x` of C's `atoi` of each label, an `int`: 256 prints as 100, -1 as ffffffff.
    let hex = (0..4).rev().fold(String::new(), |mut acc, i| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "C's int conversion and its two's-complement hex, as PowerDNS prints them"
        )]
        let v = crate::health::atoi(l[i]) as i32 as u32;
        let _ = write!(acc, "{v:02x}");
        acc
    });
    let args = vec![
        l[3].to_string(),
        l[2].to_string(),
        l[1].to_string(),
        l[0].to_string(),
        format!("{}-{}-{}-{}", l[3], l[2], l[1], l[0]),
        hex,
    ];
    boost_format(fmt, &args)
}

fn create_reverse6(qname: &str, fmt: &str, exc: Option<&Value>) -> String {
    let l = labels(qname);
    if l.len() < 32 {
        return "unknown".into();
    }
    let mut together = String::new();
    let mut quads = Vec::new();
    for chunk in 0..8 {
        if chunk != 0 {
            together.push(':');
        }
        let mut quad = String::new();
        for q in 0..4 {
            let c = l[31 - chunk * 4 - q].chars().next().unwrap_or('0');
            quad.push(c);
            together.push(c);
        }
        quads.push(quad);
    }
    // A nibble that is not hex: PowerDNS 5.x answers "error" (4.7 answered "unknown").
    let Ok(ip6) = together.parse::<Ipv6Addr>() else {
        return "error".into();
    };
    for (a, name) in exceptions(exc) {
        match combo_address(&a) {
            Some(addr) if addr == IpAddr::V6(ip6) => return name,
            Some(_) => {}
            None => return "error".into(),
        }
    }
    let mut dashed = ip6.to_string().replace(':', "-");
    if dashed.ends_with('-') {
        dashed.push('0');
    }
    if dashed.starts_with('-') || dashed.get(2..4) == Some("--") {
        dashed.insert(0, '0');
    }
    let mut args: Vec<String> = (0..32).rev().map(|i| l[i].to_string()).collect();
    args.push(dashed);
    args.extend(quads);
    boost_format(fmt, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libstdcxx_unordered_order() {
        assert_eq!(unordered_int_order(3), vec![3, 2, 1]);
        assert_eq!(unordered_int_order(13).first(), Some(&13));
        let o14 = unordered_int_order(14);
        assert_eq!(&o14[..3], &[14, 1, 2]);
        assert_eq!(o14.len(), 14);
    }

    #[test]
    fn forward_names() {
        assert_eq!(
            create_forward("1.2.3.4.static.example.", "*.static.example."),
            "1.2.3.4"
        );
        assert_eq!(
            create_forward("ip-10-0-0-1.static.example.", "*.static.example."),
            "10.0.0.1"
        );
        assert_eq!(
            create_forward("ip40414243.static.example.", "*.static.example."),
            "64.65.66.67"
        );
        assert_eq!(
            create_forward("foo.static.example.", "*.static.example."),
            "0.0.0.0"
        );
        assert_eq!(
            create_forward("1.2.3.4.example.", "www.example."),
            "0.0.0.0"
        );
        assert_eq!(
            create_forward6("2001-db8--1.v6.example.", "*.v6.example."),
            "2001:db8::1"
        );
    }

    #[test]
    fn forward_names_read_numbers_as_powerdns() {
        let f = |q: &str| create_forward(&format!("{q}.f.example."), "*.f.example.");
        // Dashed octets: read as numbers and printed back as numbers.
        assert_eq!(f("ip-01-02-03-04"), "1.2.3.4");
        assert_eq!(f("ip-1-2-3-4-5"), "2.3.4.5");
        assert_eq!(f("ip-10-20-30-256"), "0.0.0.0");
        // Four labels: inet_aton (octal with a leading 0, hex with 0x).
        assert_eq!(f("1.2.3.010"), "1.2.3.8");
        assert_eq!(f("0x0a.2.3.4"), "10.2.3.4");
        assert_eq!(f("1.2.3.08"), "0.0.0.0");
        assert_eq!(f("1.2.3.4.5"), "1.2.3.4");
        // Eight hex digits at the end, scanned as sscanf's %02x does.
        assert_eq!(f("0a141e28"), "10.20.30.40");
        assert_eq!(f("ip0a141e2z"), "10.20.30.2");
        assert_eq!(f("x0a141e2"), "0.0.0.0");
        assert_eq!(scan_hex_octets(b"1g000000"), None);
    }

    #[test]
    fn reverse_names() {
        let r = create_reverse("4.3.2.1.in-addr.arpa.", "ip-%5%.example.com", None);
        assert_eq!(r, "ip-1-2-3-4.example.com");
        let r = create_reverse("4.3.2.1.in-addr.arpa.", "%1%.%2%.%3%.%4% %6%", None);
        assert_eq!(r, "1.2.3.4 01020304");
        // %6% is %02x of C's atoi of each label, an int.
        let r = create_reverse("-1.256.12abc.x.in-addr.arpa.", "%6%", None);
        assert_eq!(r, "000c100ffffffff");
        let bad = format!("g{}.ip6.arpa.", ".0".repeat(31));
        assert_eq!(create_reverse6(&bad, "%33%", None), "error");
    }

    #[test]
    fn consistent_hash_ignores_order() {
        let a = vec![
            (10, "a".to_string()),
            (20, "b".to_string()),
            (5, "c".to_string()),
        ];
        let mut b = a.clone();
        b.reverse();
        for q in [0u32, 1, 12345, 0xdead_beef, u32::MAX] {
            assert_eq!(consistent_pick(&a, q), consistent_pick(&b, q));
        }
    }

    #[test]
    fn boost_format_subset() {
        assert_eq!(
            boost_format("%1%-%2%-%%-%s", &["a".into(), "b".into()]),
            "a-b-%-a"
        );
    }
}
