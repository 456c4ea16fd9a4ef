//! A Continuum controller never rewinds its region's server onto a primary on an older timeline.
//!
//! Found by the partition suite: right after a partition healed, a stream leader that had not
//! yet seen the new term answered a read with the state from before the failover (the old region
//! active). The new primary's controller, no longer holder for a moment, took that state for the
//! truth and rewound its own, newest primary onto the old one — discarding the writes it had
//! taken since the failover.
//!
//! Here the same view is set up without waiting for a race: region b's standby is promoted by
//! hand (timeline 2) and takes a row, while the Continuum state names a (still a primary on
//! timeline 1) active. b's controller must refuse to rewind b, saying why once, and keep b's
//! write. (The controller's switchover refuses to promote a region that is not a standby, so
//! this split brain is left to the operator, as it should be.)
//!
//! Real parts: PostgreSQL 15 (as `postgres`), a 3-node NATS `JetStream` cluster, the
//! `catalyst-controllers` binary. Needs root; `cargo xtask test` runs it.

use std::{path::Path, process::Command, time::Duration};

use catalyst_tests::{
    continuum::{
        NatsPorts, PgSite, Procs, pg_controller_args, psql, setup_pg, start_controller,
        start_nats_node, wait_until,
    },
    lab,
    require::{Need, require},
};

const REGIONS: [&str; 3] = ["a", "b", "c"];
const NATS: NatsPorts = NatsPorts {
    client: 4331,
    cluster: 6331,
    hosts: ["127.0.0.1"; 3],
};

fn db(r: &str) -> &'static str {
    match r {
        "a" => "127.0.12.1",
        "b" => "127.0.12.2",
        _ => "127.0.12.3",
    }
}

/// A row only the hand-promoted b has.
const B_ROW: &str = "424242";

#[test]
fn a_stale_view_never_rewinds_the_newer_primary() -> anyhow::Result<()> {
    if !require(
        "a_stale_view_never_rewinds_the_newer_primary",
        &[Need::Root, Need::NatsServer, Need::Postgres],
    ) {
        return Ok(());
    }
    let _lock = lab::lock()?;
    let dir = std::env::temp_dir().join(format!("catalyst-rejoin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&dir)
        .status()?;
    let result = run(&dir);
    if result.is_ok() && std::env::var_os("CATALYST_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        catalyst_tests::continuum::print_controller_log_tails(&dir, 12);
        eprintln!("logs kept in {}", dir.display());
    }
    result
}

fn log_of(dir: &Path, r: &str) -> String {
    std::fs::read_to_string(dir.join(format!("ctrl-{r}.log"))).unwrap_or_default()
}

fn run(dir: &Path) -> anyhow::Result<()> {
    let site = |r: &'static str| PgSite {
        region: r,
        ip: db(r),
        netns: None,
    };
    let pg = setup_pg(dir, &site("a"), &site("b"), "127.0.0.0/8")?;
    // b promoted behind the Continuum's back: timeline 2, and a write a does not have. a stays
    // a primary on timeline 1.
    psql(None, db("b"), "SELECT pg_promote(true, 30)")?;
    psql(
        None,
        db("b"),
        &format!("INSERT INTO rows (id) VALUES ({B_ROW})"),
    )?;
    let mut procs = Procs::default();
    for (i, r) in (0u16..).zip(REGIONS) {
        start_nats_node(&mut procs, dir, NATS, i, r)?;
    }
    NATS.wait_ready(None, Duration::from_secs(30))?;
    let manifest = dir.join("continuum.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: dr.openova.io/v1\nkind: Continuum\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  application: orders\n  primary: a\n  regions:\n\
             \x20   - {{name: a, endpoints: ['{a}'], database: {{kind: PostgreSQL, host: '{a}'}}}}\n\
             \x20   - {{name: b, endpoints: ['{b}'], database: {{kind: PostgreSQL, host: '{b}'}}}}\n\
             \x20   - {{name: c, endpoints: ['{c}']}}\n\
             \x20 lease: {{renewSeconds: 2, ttlSeconds: 6}}\n\
             \x20 switchover: {{automatic: false, drainSeconds: 0}}\n\
             \x20 dns: {{zone: rejoin.example, group: orders, record: db.rejoin.example, ttl: 1}}\n",
            a = db("a"),
            b = db("b"),
            c = db("c"),
        ),
    )?;
    // a's controller holds the lease and writes the state: a active.
    start_controller(
        &mut procs,
        dir,
        &manifest,
        &NATS.urls_from(0),
        "a",
        &pg_controller_args(dir, "a", true),
    )?;
    wait_until("a holds the lease", Duration::from_secs(30), || {
        std::fs::read_to_string(dir.join("history-a.jsonl"))
            .is_ok_and(|h| h.contains("state:fence"))
    })?;
    // b's controller follows: its server is a primary while a is active — but on a newer
    // timeline than a's. It must not rewind it.
    start_controller(
        &mut procs,
        dir,
        &manifest,
        &NATS.urls_from(1),
        "b",
        &pg_controller_args(dir, "b", true),
    )?;
    wait_until(
        "b's controller refuses to rewind b",
        Duration::from_secs(30),
        || log_of(dir, "b").contains("not rejoining as standby"),
    )?;
    // Several more probe intervals (500 ms) and passes (200 ms): still refused.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        psql(None, db("b"), "SELECT pg_is_in_recovery()")?,
        "f",
        "b was rewound onto a's older timeline:\n{}",
        log_of(dir, "b")
    );
    assert_eq!(
        psql(
            None,
            db("b"),
            &format!("SELECT count(*) FROM rows WHERE id = {B_ROW}")
        )?,
        "1",
        "b lost the write it took on timeline 2"
    );
    assert_eq!(
        log_of(dir, "b").matches("not rejoining as standby").count(),
        1,
        "the refusal is logged once while it lasts"
    );
    assert!(
        !log_of(dir, "b").contains("rejoined as standby"),
        "{}",
        log_of(dir, "b")
    );

    // The allowed direction (an orphan on an older timeline rewound onto the newer primary)
    // is what continuum_lab_root and continuum_partition_root do after every failover.
    drop(procs);
    drop(pg);
    Ok(())
}
