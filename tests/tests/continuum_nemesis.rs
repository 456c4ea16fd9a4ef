//! Continuum lease safety under a nemesis: a 3-node NATS `JetStream` cluster, one catalyst-dns
//! per region and three Continuum controllers (regions without databases, so the run is about
//! the lease, the hand-overs and DNS), with a short lease (TTL 3 s, renew 1 s). For a few tens
//! of seconds a seeded random schedule of faults runs:
//! - SIGSTOP of the lease holder for 0.5–2 × TTL, then SIGCONT (the paused-holder case fencing
//!   exists for) — always first, for 2.5 × TTL, so every run has a takeover to check (the
//!   contenders have 1.5 × TTL or more to take over, also when a NATS fault comes next);
//! - SIGKILL of a controller, restarted 0–TTL later;
//! - SIGKILL of one NATS node, restarted 1–4 s later (the store keeps a quorum);
//! - SIGSTOP of one NATS node for 0.5–3 s;
//! - a manual switchover request to a random region.
//!
//! Afterwards every controller's epoch history and what each catalyst-dns served (polled every
//! 100 ms) go through the checker: no holder acts after a newer epoch was granted, no side effect
//! under an older epoch, no DNS instance goes back to an older epoch; and the faults must have
//! caused several grants (a run in which nothing happened proves nothing).
//!
//! A second test replays the case the nemesis found, deterministically: a write the previous
//! holder based on what it read while its lease was valid, reaching the store only after a
//! takeover, must lose its compare-and-set.
//!
//! `CATALYST_NEMESIS_RUNS` runs (default 2; `cargo xtask bench failover` runs 20),
//! `CATALYST_NEMESIS_SEED` replays one schedule; the seed of every run is printed.
//! Needs nats-server and dig; loopback only (127.0.21.x for DNS, NATS ports 4311-4313, routes
//! 6311-6313, monitoring 5311-5313).

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use catalyst_controllers::continuum::{
    history::{self, Event},
    lease::{LEASE_SCHEMA, LeaseRecord},
    machine::{STATE_SCHEMA, State},
    store::{self, Names, Store},
    witness,
};
use catalyst_tests::{
    continuum::{
        NatsPorts, Procs, dig, observe_dns, request_switchover, start_controller, start_dns,
        start_nats_node, wait_until,
    },
    lab,
    require::{Need, require},
};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};

const REGIONS: [&str; 3] = ["a", "b", "c"];
const NATS: NatsPorts = NatsPorts {
    client: 4311,
    cluster: 6311,
    hosts: ["127.0.0.1"; 3],
};
const TTL_S: u64 = 3;

fn dns_addr(i: usize) -> String {
    format!("127.0.21.{}:5353", i + 1)
}

/// Current lease holder as DNS instance `a` serves it (`ctrl-<region>`).
fn holder() -> Option<String> {
    let txt = dig(&dns_addr(0), "_continuum.orders.nemesis.example", "TXT");
    witness::parse(&txt)
        .map(|s| s.holder)
        .filter(|h| h.starts_with("ctrl-"))
}

/// The Continuum `shop/orders` over `regions` (region i serves 192.0.2.(i+1)), lease TTL
/// [`TTL_S`] renewed every second, optionally witnessed by `witness` (quorum 2).
fn write_manifest(
    dir: &Path,
    regions: &[&str],
    witness: Option<&str>,
    automatic: bool,
) -> anyhow::Result<std::path::PathBuf> {
    use std::fmt::Write as _;
    let mut y = String::from(
        "apiVersion: dr.openova.io/v1\nkind: Continuum\nmetadata: {name: orders, namespace: shop}\nspec:\n  application: orders\n  primary: a\n  regions:\n",
    );
    for (i, r) in regions.iter().enumerate() {
        writeln!(y, "    - {{name: {r}, endpoints: ['192.0.2.{}']}}", i + 1)?;
    }
    writeln!(y, "  lease: {{renewSeconds: 1, ttlSeconds: {TTL_S}}}")?;
    if let Some(w) = witness {
        writeln!(y, "  witness: {{instances: {w}, quorum: 2}}")?;
    }
    writeln!(
        y,
        "  switchover: {{automatic: {automatic}, drainSeconds: 0}}\n  dns: {{zone: nemesis.example, group: orders, record: app.nemesis.example, ttl: 1}}"
    )?;
    let manifest = dir.join("continuum.yaml");
    std::fs::write(&manifest, y)?;
    Ok(manifest)
}

/// Controller options of both tests: fast probes, a 500 ms lease margin.
fn controller_args() -> Vec<String> {
    ["--probe-ms", "200", "--margin-ms", "500"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// What one run saw.
#[derive(Debug)]
struct RunResult {
    seed: u64,
    faults: Vec<String>,
    verdict: history::Verdict,
}

#[expect(clippy::too_many_lines, reason = "the schedule reads top to bottom")]
fn run_once(dir: &Path, seed: u64, duration: Duration) -> anyhow::Result<RunResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut procs = Procs::default();
    for (i, r) in (0u16..).zip(REGIONS) {
        start_nats_node(&mut procs, dir, NATS, i, r)?;
    }
    NATS.wait_ready(None, Duration::from_secs(30))?;
    let nats = NATS.urls();
    start_dns(
        &mut procs,
        dir,
        &REGIONS,
        &(0..3).map(dns_addr).collect::<Vec<_>>(),
        "nemesis.example",
        "$ORIGIN nemesis.example.\n$TTL 1\n@ IN SOA ns.nemesis.example. hostmaster.nemesis.example. 1 60 60 600 1\n@ IN NS ns.nemesis.example.\nns IN A 127.0.21.1\n\
         app IN LUA A \"failover('orders', {a = {'192.0.2.1'}, b = {'192.0.2.2'}, c = {'192.0.2.3'}}, 'a')\"\n",
        NATS,
    )?;
    let witness = format!("['{}', '{}', '{}']", dns_addr(0), dns_addr(1), dns_addr(2));
    let manifest = write_manifest(dir, &REGIONS, Some(&witness), true)?;
    let extra = controller_args();
    for (i, r) in (0u16..).zip(REGIONS) {
        start_controller(&mut procs, dir, &manifest, &NATS.urls_from(i), r, &extra)?;
    }
    wait_until("a first lease holder", Duration::from_secs(30), || {
        holder().is_some()
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let dns_events = Arc::new(Mutex::new(Vec::new()));
    let observer = observe_dns(
        REGIONS
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("dns-{r}"), dns_addr(i)))
            .collect(),
        "_continuum.orders.nemesis.example".into(),
        None,
        stop.clone(),
        dns_events.clone(),
    );

    // The schedule: (when to undo, what) for stops and kills in flight.
    let mut faults = Vec::new();
    let mut undo: Vec<(Instant, String, bool)> = Vec::new(); // (at, process, true = SIGCONT / false = restart)
    let t0 = Instant::now();
    let ttl = Duration::from_secs(TTL_S);
    while t0.elapsed() < duration {
        let now = Instant::now();
        let mut i = 0;
        while i < undo.len() {
            if undo[i].0 <= now {
                let (_, name, cont) = undo.remove(i);
                if cont {
                    procs.signal(&name, libc::SIGCONT);
                } else {
                    procs.restart(&name)?;
                }
            } else {
                i += 1;
            }
        }
        let busy: Vec<String> = undo.iter().map(|u| u.1.clone()).collect();
        let free = |n: &String| !busy.contains(n);
        // The first fault always pauses the holder past its TTL, so every run has at least one
        // takeover to check; the rest are drawn at random.
        let first = faults.is_empty();
        let pick = if first { 0 } else { rng.random_range(0..5u32) };
        let fault = match pick {
            0 => holder().filter(free).map(|h| {
                let d = if first {
                    ttl.mul_f64(2.5)
                } else {
                    ttl.mul_f64(rng.random_range(0.5..2.0))
                };
                procs.signal(&h, libc::SIGSTOP);
                undo.push((now + d, h.clone(), true));
                format!("SIGSTOP {h} for {d:?}")
            }),
            1 => {
                let n = format!("ctrl-{}", REGIONS[rng.random_range(0..3)]);
                free(&n).then(|| {
                    let d = ttl.mul_f64(rng.random_range(0.0..1.0));
                    procs.kill(&n);
                    undo.push((now + d, n.clone(), false));
                    format!("SIGKILL {n}, restart after {d:?}")
                })
            }
            // At most one NATS node down or stopped at a time: the store keeps its quorum.
            2 | 3 if !busy.iter().any(|b| b.starts_with("nats-")) => {
                let n = format!("nats-{}", REGIONS[rng.random_range(0..3)]);
                if pick == 2 {
                    let d = Duration::from_millis(rng.random_range(1_000..4_000));
                    procs.kill(&n);
                    undo.push((now + d, n.clone(), false));
                    Some(format!("SIGKILL {n}, restart after {d:?}"))
                } else {
                    let d = Duration::from_millis(rng.random_range(500..3_000));
                    procs.signal(&n, libc::SIGSTOP);
                    undo.push((now + d, n.clone(), true));
                    Some(format!("SIGSTOP {n} for {d:?}"))
                }
            }
            4 => {
                let to = REGIONS[rng.random_range(0..3)];
                let ok = request_switchover(&manifest, &nats, to).unwrap_or(false);
                Some(format!("switchover to {to} (request accepted: {ok})"))
            }
            _ => None,
        };
        if let Some(f) = fault {
            faults.push(format!("{:>6} ms {f}", t0.elapsed().as_millis()));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1_500)));
    }
    // Heal everything and let the lease settle.
    for (_, name, cont) in std::mem::take(&mut undo) {
        if cont {
            procs.signal(&name, libc::SIGCONT);
        } else {
            procs.restart(&name)?;
        }
    }
    std::thread::sleep(ttl * 2);
    wait_until(
        "a lease holder after the faults",
        Duration::from_secs(30),
        || holder().is_some(),
    )?;
    stop.store(true, Ordering::Relaxed);
    let _ = observer.join();
    drop(procs);
    let mut events: Vec<Event> = dns_events.lock().expect("events").clone();
    for r in REGIONS {
        let f = dir.join(format!("history-{r}.jsonl"));
        if f.exists() {
            events.extend(history::read(&f).with_context(|| f.display().to_string())?);
        }
    }
    Ok(RunResult {
        seed,
        faults,
        verdict: history::check(&events),
    })
}

#[test]
fn no_two_lease_holders_under_pauses_kills_and_store_faults() -> anyhow::Result<()> {
    if !require(
        "no_two_lease_holders_under_pauses_kills_and_store_faults",
        &[Need::NatsServer, Need::Dig],
    ) {
        return Ok(());
    }
    let _lock = lab::lock()?;
    let runs: u64 = std::env::var("CATALYST_NEMESIS_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let secs: u64 = std::env::var("CATALYST_NEMESIS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let base_seed: u64 = std::env::var("CATALYST_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) << 16);
    let mut total_grants = 0;
    let mut failed = Vec::new();
    for n in 0..runs {
        let seed = base_seed + n;
        let dir = std::env::temp_dir().join(format!("catalyst-nemesis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let r = run_once(&dir, seed, Duration::from_secs(secs))
            .with_context(|| format!("nemesis run {n} (seed {seed}, logs in {})", dir.display()))?;
        eprintln!(
            "nemesis run {n} seed {seed}: {} faults, grants {}, overlaps {}, stale {}, dns regressions {}",
            r.faults.len(),
            r.verdict.grants,
            r.verdict.overlaps,
            r.verdict.stale,
            r.verdict.dns_regressions
        );
        total_grants += r.verdict.grants;
        if r.verdict.ok() && r.verdict.grants >= 2 {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("  faults:\n    {}", r.faults.join("\n    "));
            eprintln!(
                "  verdict: {:?}\n  logs kept in {}",
                r.verdict,
                dir.display()
            );
            failed.push((r.seed, r.verdict));
        }
    }
    println!(
        "nemesis_runs={runs} failed_runs={} grants={total_grants}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "runs with overlapping holders, stale effects, DNS regressions or no takeovers: {failed:?}"
    );
    Ok(())
}

/// Create `key` in a fresh bucket, retried while its replicated stream elects a leader (a
/// create that timed out but landed is found by the read); returns the revision.
async fn create<T: serde::Serialize + serde::de::DeserializeOwned>(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    value: &T,
) -> anyhow::Result<u64> {
    let mut last = None;
    for _ in 0..40 {
        match Store::read::<T>(kv, key).await {
            Ok(v) if v.value.is_some() => return Ok(v.revision),
            Ok(_) => match Store::cas(kv, key, value, 0).await {
                Ok(rev) => return Ok(rev),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last
        .expect("an error")
        .context(format!("cannot create `{key}`")))
}

/// The previous holder (`ctrl-gone`, never renewing: paused or partitioned) read the state while
/// its lease was valid and sends a compare-and-set on that revision only after `ctrl-b` took
/// the lease over — as a holder paused between its lease check and its write, or one whose NATS
/// server held the write, does. The write must lose, and the state must carry the new epoch.
#[test]
#[expect(clippy::too_many_lines, reason = "the scenario reads top to bottom")]
fn a_write_based_on_a_read_before_the_takeover_loses() -> anyhow::Result<()> {
    if !require(
        "a_write_based_on_a_read_before_the_takeover_loses",
        &[Need::NatsServer],
    ) {
        return Ok(());
    }
    let _lock = lab::lock()?;
    let dir = std::env::temp_dir().join(format!("catalyst-fence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut procs = Procs::default();
    for (i, r) in (0u16..).zip(REGIONS) {
        start_nats_node(&mut procs, &dir, NATS, i, r)?;
    }
    NATS.wait_ready(None, Duration::from_secs(30))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names = Names {
        replicas: 3,
        ..Names::default()
    };
    let key = store::key("shop", "orders");
    let st = rt.block_on(async {
        let mut last = None;
        for _ in 0..30 {
            match Store::connect(
                &NATS.urls(),
                &catalyst_policy::nats::NatsAuth::default(),
                "fence test",
                names.clone(),
            )
            .await
            {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.expect("an error"))
    })?;
    // The previous holder: lease at epoch = its revision, and the state it works on.
    let old_epoch = rt.block_on(create(
        &st.leases,
        &key,
        &LeaseRecord {
            schema: LEASE_SCHEMA.into(),
            continuum: "shop/orders".into(),
            holder: Some("ctrl-gone".into()),
            region: "a".into(),
            epoch: None,
            ttl_seconds: u32::try_from(TTL_S)?,
            written_at: String::new(),
        },
    ))?;
    let initial = State {
        schema: STATE_SCHEMA.into(),
        active_region: "a".into(),
        epoch: old_epoch,
        spec_primary: "a".into(),
        in_progress: None,
        request: None,
        history: Vec::new(),
    };
    let read_rev = rt.block_on(create(&st.state, &key, &initial))?;

    let manifest = write_manifest(&dir, &["a", "b"], None, false)?;
    let extra = controller_args();
    start_controller(&mut procs, &dir, &manifest, &NATS.urls_from(1), "b", &extra)?;
    let holder_epoch = || {
        rt.block_on(Store::read::<LeaseRecord>(&st.leases, &key))
            .ok()
            .and_then(|v| {
                let r = v.value?;
                (r.holder.as_deref() == Some("ctrl-b")).then(|| r.epoch_at(v.revision))
            })
    };
    wait_until(
        "ctrl-b to take the lease over",
        Duration::from_secs(30),
        || holder_epoch().is_some(),
    )?;
    let new_epoch = holder_epoch().context("lease holder")?;
    assert!(new_epoch > old_epoch, "epoch {new_epoch} after {old_epoch}");
    // The new holder stamps its epoch on the state right after its grant; give it the time.
    wait_until(
        "the new epoch on the state",
        Duration::from_secs(10),
        || {
            rt.block_on(Store::read::<State>(&st.state, &key))
                .ok()
                .and_then(|v| v.value)
                .is_some_and(|s| s.epoch == new_epoch)
        },
    )?;
    // The delayed write of the previous holder, on the revision it had read.
    let mut stale = initial.clone();
    stale.active_region = "b".into();
    let late = rt.block_on(Store::cas(&st.state, &key, &stale, read_rev));
    let now = rt
        .block_on(Store::read::<State>(&st.state, &key))?
        .value
        .context("state")?;
    drop(procs);
    assert!(
        late.is_err(),
        "a write of epoch {old_epoch} landed after epoch {new_epoch} was granted (revision {late:?})"
    );
    assert_eq!(now.active_region, "a", "the stale write changed the state");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
