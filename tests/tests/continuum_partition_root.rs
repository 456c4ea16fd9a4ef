//! Continuum under network partitions: three regions in their own network namespaces, joined by
//! a router namespace where links are cut with nftables (`catalyst_tests::continuum::RegionNet`).
//! Each region runs a NATS node (one 3-node `JetStream` cluster), a catalyst-dns and a Continuum
//! controller; a and b run the PostgreSQL pair (b a synchronous standby, `remote_apply`). A
//! writer in the router namespace resolves the primary through region c's catalyst-dns and
//! inserts numbered rows.
//!
//! 1. Region a (lease holder and primary) is cut off both ways. Its controller cannot renew (its
//!    NATS node is in the minority) and has no witness quorum, so it stops acting before its
//!    lease ends; the majority takes the lease after the TTL with a new epoch, finds a's
//!    database unreachable and fails over to b. a's primary cannot commit meanwhile (its
//!    synchronous standby is unreachable), so nothing acknowledged is lost.
//! 2. Healed: a's controller rejoins a as b's standby (`pg_rewind`).
//! 3. One-way partition: b (now holder and primary) can receive but not send. Same outcome:
//!    failover to a.
//! 4. Healed, b rejoins.
//!
//! Checks: every acknowledged row is on the final primary; the epoch history of all controllers
//! plus what each DNS instance served has no overlapping holders, no stale side effect, no DNS
//! regression. Prints `partition_failover_ms=… one_way_failover_ms=…`.
//! Needs root (namespaces, nftables), nats-server, dig, PostgreSQL 15.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use catalyst_controllers::continuum::history::{self, Event};
use catalyst_tests::{
    continuum::{
        NatsPorts, PgSite, Procs, RegionNet, Writer, dig_in, observe_dns, pg_controller_args, psql,
        setup_pg, start_controller, start_dns, start_nats_node, wait_until,
    },
    lab,
    require::{Need, require},
};

const REGIONS: [&str; 3] = ["a", "b", "c"];
const NATS: NatsPorts = NatsPorts {
    client: 4321,
    cluster: 6321,
    hosts: RegionNet::HOSTS,
};
const ZONE: &str = "part.example";

fn host(r: &str) -> &'static str {
    RegionNet::HOSTS[REGIONS.iter().position(|x| *x == r).unwrap_or(0)]
}

fn dns(r: &str) -> String {
    format!("{}:5353", host(r))
}

#[test]
fn continuum_fails_over_across_partitions_without_losing_rows() -> anyhow::Result<()> {
    if !require(
        "continuum_fails_over_across_partitions_without_losing_rows",
        &[Need::Root, Need::NatsServer, Need::Dig, Need::Postgres],
    ) {
        return Ok(());
    }
    let _lock = lab::lock()?;
    let ttl: u32 = std::env::var("CATALYST_FAILOVER_TTL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let dir = std::env::temp_dir().join(format!("catalyst-partition-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&dir)
        .status()?;
    let net = RegionNet::up(&REGIONS)?;
    let result = run(&dir, &net, ttl);
    if result.is_ok() && std::env::var_os("CATALYST_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        catalyst_tests::continuum::print_controller_log_tails(&dir, 12);
        eprintln!("logs kept in {}", dir.display());
    }
    drop(net);
    result
}

#[expect(clippy::too_many_lines, reason = "the scenario reads top to bottom")]
fn run(dir: &Path, net: &RegionNet, ttl: u32) -> anyhow::Result<()> {
    let wan = Some(net.wan.as_str());
    let site = |r: &'static str| PgSite {
        region: r,
        ip: host(r),
        netns: Some(net.ns(r).to_owned()),
    };
    let pg = setup_pg(dir, &site("a"), &site("b"), "10.77.0.0/16")?;
    let mut procs = Procs::default();
    for (r, ns) in &net.regions {
        procs.netns.insert(r.clone(), ns.clone());
    }
    for (i, r) in (0u16..).zip(REGIONS) {
        start_nats_node(&mut procs, dir, NATS, i, r)?;
    }
    NATS.wait_ready(wan, Duration::from_secs(30))?;
    start_dns(
        &mut procs,
        dir,
        &REGIONS,
        &REGIONS.map(dns),
        ZONE,
        &format!(
            "$ORIGIN {ZONE}.\n$TTL 1\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 600 1\n@ IN NS ns.{ZONE}.\nns IN A {}\n\
             db IN LUA A \"failover('orders', {{a = {{'{}'}}, b = {{'{}'}}}}, 'a')\"\n",
            host("c"),
            host("a"),
            host("b")
        ),
        NATS,
    )?;
    wait_until("catalyst-dns answering", Duration::from_secs(30), || {
        dig_in(wan, &dns("c"), &format!("db.{ZONE}"), "A") == host("a")
    })?;
    let manifest = dir.join("continuum.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: dr.openova.io/v1\nkind: Continuum\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  application: orders\n  primary: a\n  regions:\n\
             \x20   - {{name: a, endpoints: ['{a}'], database: {{kind: PostgreSQL, host: '{a}'}}}}\n\
             \x20   - {{name: b, endpoints: ['{b}'], database: {{kind: PostgreSQL, host: '{b}'}}}}\n\
             \x20   - {{name: c, endpoints: ['{c}']}}\n\
             \x20 lease: {{renewSeconds: {renew}, ttlSeconds: {ttl}}}\n\
             \x20 witness: {{instances: ['{da}', '{db}', '{dc}'], quorum: 2}}\n\
             \x20 switchover: {{automatic: true, drainSeconds: 0}}\n\
             \x20 dns: {{zone: {ZONE}, group: orders, record: db.{ZONE}, ttl: 1}}\n",
            a = host("a"),
            b = host("b"),
            c = host("c"),
            renew = (ttl / 3).max(1),
            da = dns("a"),
            db = dns("b"),
            dc = dns("c"),
        ),
    )?;
    for (i, r) in (0u16..).zip(REGIONS) {
        let extra = pg_controller_args(dir, r, r != "c");
        start_controller(&mut procs, dir, &manifest, &NATS.urls_from(i), r, &extra)?;
        if r == "a" {
            wait_until("first lease", Duration::from_secs(30), || {
                dig_in(wan, &dns("c"), &format!("_continuum.orders.{ZONE}"), "TXT")
                    .contains("holder=ctrl-a")
            })?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let dns_events = Arc::new(Mutex::new(Vec::new()));
    let observer = observe_dns(
        REGIONS
            .iter()
            .map(|r| (format!("dns-{r}"), dns(r)))
            .collect(),
        format!("_continuum.orders.{ZONE}"),
        Some(net.wan.clone()),
        stop.clone(),
        dns_events.clone(),
    );
    let writer = Writer::start(dns("c"), &format!("db.{ZONE}"), Some(net.wan.clone()));
    wait_until("writer acknowledged rows", Duration::from_secs(20), || {
        writer.count() > 50
    })?;

    // 1. Region a cut off both ways.
    let t_cut = Instant::now();
    net.isolate("a")?;
    let flip = wait_until("DNS (c) answers b", Duration::from_mins(2), || {
        dig_in(wan, &dns("c"), &format!("db.{ZONE}"), "A") == host("b")
    })?;
    wait_until("writes on b", Duration::from_mins(1), || {
        writer.first_ack_after(t_cut + flip).is_some()
    })?;
    let partition_failover = writer
        .first_ack_after(t_cut + flip)
        .context("no write after the failover")?
        .duration_since(t_cut);
    eprintln!("partition: dns flip {flip:?}, writes on b after {partition_failover:?}");
    // 2. Heal: a rejoins as b's standby.
    net.heal()?;
    wait_until(
        "a rejoins as standby",
        Duration::from_mins(1) + Duration::from_secs(30),
        || psql(wan, host("a"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "t"),
    )?;
    wait_until(
        "sync replication back on b",
        Duration::from_secs(30),
        || {
            psql(
                wan,
                host("b"),
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .is_ok_and(|s| s == "1")
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));

    // 3. One-way partition: b can receive but not send to a or c.
    let t_cut = Instant::now();
    net.cut("b", "a")?;
    net.cut("b", "c")?;
    let flip = wait_until("DNS (c) answers a", Duration::from_mins(2), || {
        dig_in(wan, &dns("c"), &format!("db.{ZONE}"), "A") == host("a")
    })?;
    wait_until("writes on a", Duration::from_mins(1), || {
        writer.first_ack_after(t_cut + flip).is_some()
    })?;
    let one_way_failover = writer
        .first_ack_after(t_cut + flip)
        .context("no write after the one-way failover")?
        .duration_since(t_cut);
    eprintln!("one-way partition: dns flip {flip:?}, writes on a after {one_way_failover:?}");
    // 4. Heal: b rejoins.
    net.heal()?;
    wait_until(
        "b rejoins as standby",
        Duration::from_mins(1) + Duration::from_secs(30),
        || psql(wan, host("b"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "t"),
    )?;
    std::thread::sleep(Duration::from_secs(1));

    let acked = writer.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = observer.join();
    let present: BTreeSet<u64> = psql(wan, host("a"), "SELECT id FROM rows")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<u64> = acked.difference(&present).copied().collect();
    let mut events: Vec<Event> = dns_events.lock().expect("events").clone();
    for r in REGIONS {
        events.extend(history::read(&dir.join(format!("history-{r}.jsonl")))?);
    }
    let verdict = history::check(&events);
    drop(procs);
    drop(pg);
    println!(
        "partition_failover_ms={} one_way_failover_ms={} lost_rows={} overlaps={} acked_rows={} grants={} ttl_s={ttl}",
        partition_failover.as_millis(),
        one_way_failover.as_millis(),
        lost.len(),
        verdict.overlaps,
        acked.len(),
        verdict.grants
    );
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the final primary: {:?}",
        &lost[..lost.len().min(20)]
    );
    assert!(verdict.ok(), "history check failed: {verdict:?}");
    assert!(
        verdict.grants >= 3,
        "expected grants for a, a new holder after the cut, and one after the one-way cut: {verdict:?}"
    );
    Ok(())
}
