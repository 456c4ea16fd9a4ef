//! Continuum end to end, with real parts: a 3-node NATS JetStream cluster (one node per
//! region), catalyst-dns per region (witness TXT, `failover()` answers from KV `dns-failover`), a
//! Continuum controller per region, a PostgreSQL 15 primary with a synchronous standby
//! (`remote_apply`), and a writer that resolves the primary through catalyst-dns and inserts
//! numbered rows continuously.
//!
//! Scenario: (1) manual switchover a → b (`continuum switchover`), the old primary rejoins as
//! standby on its own; (2) primary loss: b's postmaster `SIGKILLed`, its controller fails over to a
//! and the crashed b is recovered, rewound and rejoined as a's standby; (3) region loss: a's
//! controller (the lease holder) and postmaster `SIGKILLed` together, the lease expires and b takes
//! over; (4) b's controller crashes right after persisting the `FlipDns` step of a switchover back to
//! a, is restarted, and finishes it. Checks: DNS flips, every acknowledged row is on the final primary, the epoch history
//! (controllers + what each DNS instance served) has no overlapping holders, no stale side
//! effects and no DNS regression. Prints the `cargo xtask bench failover` figures line.
//!
//! Regions live on loopback addresses (127.0.10.x databases, 127.0.20.x DNS); partitions
//! between regions need network namespaces and are not part of this suite yet.
//! Needs root (runs PostgreSQL as `postgres`); `cargo xtask test` runs it.

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use catalyst_controllers::continuum::{
    history::{self, Event},
    run::{CRASH_AFTER_ENV, CRASH_EXIT_CODE},
};
use catalyst_tests::{
    continuum::{
        NatsPorts, PgSite, Procs, Writer, dig, kill_postmaster, observe_dns, pg_controller_args,
        psql, request_switchover, setup_pg, start_controller, start_dns, start_nats_node,
        wait_until,
    },
    lab,
    require::{Need, require},
};

const REGIONS: [&str; 3] = ["a", "b", "c"];
const NATS: NatsPorts = NatsPorts {
    client: 4301,
    cluster: 6301,
    hosts: ["127.0.0.1"; 3],
};

fn db_addr(r: &str) -> &'static str {
    match r {
        "a" => "127.0.10.1",
        "b" => "127.0.10.2",
        _ => "127.0.10.3",
    }
}
fn dns_addr(i: usize) -> String {
    format!("127.0.20.{}:5353", i + 1)
}

#[test]
fn continuum_switchover_and_failover_with_postgres_nats_cluster_and_dns() -> anyhow::Result<()> {
    if !require(
        "continuum_switchover_and_failover_with_postgres_nats_cluster_and_dns",
        &[Need::Root, Need::NatsServer, Need::Dig, Need::Postgres],
    ) {
        return Ok(());
    }
    let _lock = lab::lock()?;
    let ttl: u32 = std::env::var("CATALYST_FAILOVER_TTL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let renew = (ttl / 3).max(1);
    let dir = std::env::temp_dir().join(format!("catalyst-continuum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&dir)
        .status()?;
    let result = run(&dir, ttl, renew);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        catalyst_tests::continuum::print_controller_log_tails(&dir, 12);
        eprintln!("logs kept in {}", dir.display());
    }
    result
}

#[expect(clippy::too_many_lines, reason = "the scenario reads top to bottom")]
fn run(dir: &Path, ttl: u32, renew: u32) -> anyhow::Result<()> {
    let pg = setup_pg(
        dir,
        &PgSite {
            region: "a",
            ip: db_addr("a"),
            netns: None,
        },
        &PgSite {
            region: "b",
            ip: db_addr("b"),
            netns: None,
        },
        "127.0.0.0/8",
    )?;
    let mut procs = Procs::default();
    // 3-node NATS JetStream cluster.
    for (i, r) in (0u16..).zip(REGIONS) {
        start_nats_node(&mut procs, dir, NATS, i, r)?;
    }
    NATS.wait_ready(None, Duration::from_secs(30))?;
    let nats_all = NATS.urls();
    let nats_all = nats_all.as_str();
    // catalyst-dns per region, each on its own NATS node.
    start_dns(
        &mut procs,
        dir,
        &REGIONS,
        &(0..3).map(dns_addr).collect::<Vec<_>>(),
        "lab.example",
        "$ORIGIN lab.example.\n$TTL 1\n@ IN SOA ns.lab.example. hostmaster.lab.example. 1 60 60 600 1\n@ IN NS ns.lab.example.\nns IN A 127.0.20.1\n\
         db IN LUA A \"failover('orders', {a = {'127.0.10.1'}, b = {'127.0.10.2'}}, 'a')\"\n",
        NATS,
    )?;
    wait_until("catalyst-dns answering", Duration::from_secs(30), || {
        dig(&dns_addr(0), "db.lab.example", "A") == db_addr("a")
    })?;
    // The Continuum.
    let manifest = dir.join("continuum.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: dr.openova.io/v1\nkind: Continuum\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  application: orders\n  primary: a\n  regions:\n\
             \x20   - {{name: a, endpoints: ['127.0.10.1'], database: {{kind: PostgreSQL, host: '127.0.10.1'}}}}\n\
             \x20   - {{name: b, endpoints: ['127.0.10.2'], database: {{kind: PostgreSQL, host: '127.0.10.2'}}}}\n\
             \x20   - {{name: c, endpoints: ['127.0.10.3']}}\n\
             \x20 lease: {{renewSeconds: {renew}, ttlSeconds: {ttl}}}\n\
             \x20 witness: {{instances: ['{}', '{}', '{}'], quorum: 2}}\n\
             \x20 switchover: {{automatic: true, drainSeconds: 0}}\n\
             \x20 dns: {{zone: lab.example, group: orders, record: db.lab.example, ttl: 1}}\n",
            dns_addr(0),
            dns_addr(1),
            dns_addr(2)
        ),
    )?;
    for (i, r) in (0u16..).zip(REGIONS) {
        let extra = pg_controller_args(dir, r, r != "c");
        start_controller(&mut procs, dir, &manifest, &NATS.urls_from(i), r, &extra)?;
        // Region a's controller first, so it holds the first lease.
        if r == "a" {
            wait_until("first lease", Duration::from_secs(30), || {
                dig(&dns_addr(0), "_continuum.orders.lab.example", "TXT").contains("holder=ctrl-a")
            })?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let dns_events = Arc::new(Mutex::new(Vec::new()));
    let observer = observe_dns(
        (0..3)
            .map(|i| (format!("dns-{}", REGIONS[i]), dns_addr(i)))
            .collect(),
        "_continuum.orders.lab.example".into(),
        None,
        stop.clone(),
        dns_events.clone(),
    );
    let writer = Writer::start(dns_addr(1), "db.lab.example", None);
    wait_until("writer acknowledged rows", Duration::from_secs(20), || {
        writer.count() > 50
    })?;

    // 1. Manual switchover a → b.
    let t_req = Instant::now();
    assert!(
        request_switchover(&manifest, nats_all, "b")?,
        "continuum switchover failed"
    );
    let dns_flip = wait_until("DNS answers b", Duration::from_secs(30), || {
        dig(&dns_addr(2), "db.lab.example", "A") == db_addr("b")
    })?;
    wait_until("writes on b", Duration::from_secs(30), || {
        psql(None, db_addr("b"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "f")
            && writer.first_ack_after(t_req + dns_flip).is_some()
    })?;
    let resumed = writer
        .first_ack_after(t_req + dns_flip)
        .context("no write after the flip")?;
    let switchover = resumed.duration_since(t_req);
    let switchover_gap = writer.gap(t_req, resumed);
    eprintln!(
        "switchover: dns flip {dns_flip:?}, writes resumed after {switchover:?}, write gap {switchover_gap:?}"
    );
    // The old primary rejoins as a synchronous standby of b on its own.
    wait_until("a rejoins as standby", Duration::from_mins(1), || {
        psql(None, db_addr("a"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "t")
    })?;
    wait_until(
        "sync replication back on b",
        Duration::from_secs(30),
        || {
            psql(
                None,
                db_addr("b"),
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .is_ok_and(|s| s == "1")
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));

    // 2. Primary loss: SIGKILL b's postmaster; b's controller (the lease holder) sees it down
    // after `down_after` probes and fails over to a (hand-over, no lease expiry).
    let t_kill = Instant::now();
    kill_postmaster(dir, "b")?;
    let primary_loss_flip = wait_until("DNS answers a again", Duration::from_mins(1), || {
        dig(&dns_addr(0), "db.lab.example", "A") == db_addr("a")
    })?;
    wait_until("writes on a", Duration::from_mins(1), || {
        writer.first_ack_after(t_kill + primary_loss_flip).is_some()
    })?;
    eprintln!("primary loss: dns flip {primary_loss_flip:?}");
    // The crashed old primary is recovered, rewound and rejoined as a standby by its controller.
    wait_until("b rejoins as standby", Duration::from_secs(90), || {
        psql(None, db_addr("b"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "t")
    })?;
    wait_until(
        "sync replication back on a",
        Duration::from_secs(30),
        || {
            psql(
                None,
                db_addr("a"),
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .is_ok_and(|s| s == "1")
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));

    // 3. Region a lost: SIGKILL a's controller (the lease holder) and a's postmaster at once.
    // Region b's (or c's) controller must wait for the lease to expire (TTL on its own clock),
    // take it with a new epoch and fail over to b.
    let t_kill = Instant::now();
    procs.kill("ctrl-a");
    kill_postmaster(dir, "a")?;
    let failover_flip = wait_until("DNS answers b", Duration::from_mins(2), || {
        dig(&dns_addr(2), "db.lab.example", "A") == db_addr("b")
    })?;
    wait_until("writes on b", Duration::from_mins(1), || {
        writer.first_ack_after(t_kill + failover_flip).is_some()
    })?;
    let failover = writer
        .first_ack_after(t_kill + failover_flip)
        .context("no write after failover")?
        .duration_since(t_kill);
    eprintln!("region loss: dns flip {failover_flip:?}, writes resumed after {failover:?}");

    // 4. A crash in the middle of a switchover resumes where it stopped. Region a comes back
    // (its controller recovers, rewinds and rejoins the crashed server as b's standby); b's
    // controller, the holder, is restarted with a fault hook that exits right after the FlipDns
    // step is persisted; a manual switchover to a is requested; once it died, it is started
    // again without the hook and must finish the switchover (MoveLease, Promote, …).
    procs.restart("ctrl-a")?;
    wait_until("a rejoins as standby of b", Duration::from_secs(90), || {
        psql(None, db_addr("a"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "t")
    })?;
    wait_until("sync replication on b", Duration::from_secs(30), || {
        psql(
            None,
            db_addr("b"),
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        )
        .is_ok_and(|s| s == "1")
    })?;
    procs.set_env("ctrl-b", CRASH_AFTER_ENV, Some("FlipDns"));
    procs.restart("ctrl-b")?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        request_switchover(&manifest, nats_all, "a")?,
        "continuum switchover failed"
    );
    let mut crashed = None;
    wait_until(
        "b's controller exits after FlipDns",
        Duration::from_mins(1),
        || {
            crashed = procs.exited("ctrl-b");
            crashed.is_some()
        },
    )?;
    assert_eq!(
        crashed.and_then(|s| s.code()),
        Some(CRASH_EXIT_CODE),
        "ctrl-b ended otherwise than by the fault hook"
    );
    let t_restart = Instant::now();
    procs.set_env("ctrl-b", CRASH_AFTER_ENV, None);
    procs.restart("ctrl-b")?;
    wait_until(
        "a promoted after the resumed switchover",
        Duration::from_secs(90),
        || {
            psql(None, db_addr("a"), "SELECT pg_is_in_recovery()").is_ok_and(|s| s == "f")
                && dig(&dns_addr(0), "db.lab.example", "A") == db_addr("a")
        },
    )?;
    wait_until("writes on a", Duration::from_mins(1), || {
        writer.first_ack_after(t_restart).is_some()
    })?;
    eprintln!(
        "crash after FlipDns: switchover finished {:?} after the restart",
        t_restart.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));

    let acked = writer.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = observer.join();
    let present: BTreeSet<u64> = psql(None, db_addr("a"), "SELECT id FROM rows")?
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
        "switchover_ms={} failover_ms={} dns_flip_ms={} write_gap_ms={} lost_rows={} overlaps={} primary_loss_flip_ms={} acked_rows={} grants={} ttl_s={ttl}",
        switchover.as_millis(),
        failover.as_millis(),
        dns_flip.as_millis(),
        switchover_gap.as_millis(),
        lost.len(),
        verdict.overlaps,
        primary_loss_flip.as_millis(),
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
        verdict.grants >= 4,
        "expected grants for a, b (hand-over), a (hand-over) and b (expiry): {verdict:?}"
    );
    Ok(())
}
