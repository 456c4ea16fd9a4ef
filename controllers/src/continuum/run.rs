//! The Continuum controller loop (standalone mode: the Continuum from a file, NATS for the lease,
//! the state and DNS, PostgreSQL reached directly). One process per region; the lease decides
//! which one acts.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use super::{
    history::{Kind, Log, now_ms},
    kube,
    lease::{self, ExpiryTracker, Held, LEASE_SCHEMA, LeaseAction, LeaseRecord, Observed},
    machine::{self, Decision, Reason, RegionView, State, Step},
    postgres::{self, LocalServer, PgAuth, PgTarget},
    store::{self, Names, Store},
    wire::{AUDIT_SCHEMA, Audit, FailoverValue},
    witness,
};
use crate::crd::{
    Condition, ConditionStatus, Continuum, ContinuumSpec, ContinuumStatus, DatabaseKind,
    SwitchoverProgress, set_condition,
};

/// Options of `catalyst-controllers continuum run`.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Continuum (YAML manifest).
    pub continuum: PathBuf,
    /// NATS URL(s), comma-separated.
    pub nats: String,
    /// How to authenticate to NATS.
    pub nats_auth: catalyst_policy::nats::NatsAuth,
    /// This controller's identity (unique per instance).
    pub identity: String,
    /// This controller's region.
    pub region: String,
    /// Epoch history (JSON lines), for audits and the lab's checker.
    pub history: Option<PathBuf>,
    /// Status file (JSON), rewritten on change.
    pub status_file: Option<PathBuf>,
    /// Bucket names and replicas.
    pub names: Names,
    /// PostgreSQL credentials.
    pub pg: PgAuth,
    /// This region's server, controlled locally (rejoin as standby).
    pub local: Option<LocalServer>,
    /// Probe interval (the health interval of the failover bar).
    pub probe_every: Duration,
    /// Consecutive failed probes before a region is down.
    pub down_after: u32,
    /// Safety margin: the holder stops acting this long before its TTL ends.
    pub margin: Duration,
    /// The Kubernetes API (`--kube`): `CloudNativePG` databases, `HTTPRoute` weights, status.
    pub kube: Option<kube::Kube>,
}

/// Load a Continuum manifest.
pub fn load(path: &std::path::Path) -> anyhow::Result<Continuum> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read Continuum `{}`", path.display()))?;
    let de = serde_norway::Deserializer::from_str(&text);
    let c: Continuum = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
    if !c.spec.regions.iter().any(|r| r.name == c.spec.primary) {
        bail!(
            "{}: spec.primary `{}` is not one of spec.regions",
            path.display(),
            c.spec.primary
        );
    }
    Ok(c)
}

/// The `CloudNativePG` Cluster (`namespace/name`) of `region`, when its database is one.
fn cnpg_ref(spec: &ContinuumSpec, region: &str) -> Option<String> {
    let db = spec
        .regions
        .iter()
        .find(|r| r.name == region)?
        .database
        .as_ref()?;
    (db.kind == DatabaseKind::CloudNativePG)
        .then(|| db.cluster.clone())
        .flatten()
}

fn routes_of(spec: &ContinuumSpec, region: &str) -> Vec<String> {
    spec.regions
        .iter()
        .find(|r| r.name == region)
        .map(|r| r.http_routes.clone())
        .unwrap_or_default()
}

fn pg_target(spec: &ContinuumSpec, region: &str) -> Option<PgTarget> {
    let db = spec
        .regions
        .iter()
        .find(|r| r.name == region)?
        .database
        .as_ref()?;
    (db.kind == DatabaseKind::PostgreSQL).then(|| PgTarget {
        host: db.host.clone().unwrap_or_default(),
        port: db.port,
    })
}

/// Test hook: the name of a switchover step after which the controller exits (status
/// [`CRASH_EXIT_CODE`]) once that step is persisted, to prove a switchover resumes after a crash.
pub const CRASH_AFTER_ENV: &str = "CATALYST_CONTINUUM_CRASH_AFTER";
/// Exit status of [`CRASH_AFTER_ENV`].
pub const CRASH_EXIT_CODE: i32 = 86;

/// What a demotion hands to the promotion: PostgreSQL's WAL position to replay, or
/// `CloudNativePG`'s demotion token.
enum Demoted {
    Lsn(String),
    Token(String),
}

/// Longest one controller pass may take (a rejoin with `pg_rewind` can take a while).
const PASS_TIMEOUT: Duration = Duration::from_mins(1);

struct Controller {
    opts: Options,
    spec: ContinuumSpec,
    name: String,
    key: String,
    store: Store,
    log: Log,
    held: Option<Held>,
    last_renew: Option<Instant>,
    tracker: ExpiryTracker,
    failures: BTreeMap<String, u32>,
    views: BTreeMap<String, RegionView>,
    last_probe: Option<Instant>,
    last_blocked: Option<String>,
    witnesses: Vec<SocketAddr>,
    /// The epoch last stamped on the state and `dns-failover` by us.
    fenced: Option<u64>,
    /// The last rejoin refused (local timeline, active primary's timeline, active region): said
    /// once, not every pass.
    refused_rejoin: Option<(Option<u32>, Option<u32>, String)>,
    /// `metadata.generation` of the Continuum.
    generation: i64,
    /// Conditions last computed for the CR status (transition times kept across writes).
    cr_conditions: Vec<Condition>,
}

/// Run until SIGTERM/SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let c = load(&opts.continuum)?;
    let ns = c
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = c
        .metadata
        .name
        .clone()
        .context("the Continuum has no metadata.name")?;
    if !c.spec.regions.iter().any(|r| r.name == opts.region) {
        bail!(
            "--region `{}` is not one of the Continuum's regions",
            opts.region
        );
    }
    let witnesses = c
        .spec
        .witness
        .as_ref()
        .map(|w| {
            w.instances
                .iter()
                .map(|s| {
                    s.parse::<SocketAddr>().with_context(|| {
                        format!("spec.witness.instances: `{s}` is not address:port")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    let store = Store::connect(
        &opts.nats,
        &opts.nats_auth,
        &format!("catalyst-controllers continuum {}", opts.identity),
        opts.names.clone(),
    )
    .await?;
    let log = Log::open(opts.history.as_deref(), &opts.identity)
        .context("cannot open the history file")?;
    let mut ctl = Controller {
        key: store::key(&ns, &name),
        name: format!("{ns}/{name}"),
        spec: c.spec,
        store,
        log,
        held: None,
        last_renew: None,
        tracker: ExpiryTracker::default(),
        failures: BTreeMap::new(),
        views: BTreeMap::new(),
        last_probe: None,
        last_blocked: None,
        witnesses,
        fenced: None,
        refused_rejoin: None,
        generation: c.metadata.generation.unwrap_or(0),
        cr_conditions: Vec::new(),
        opts,
    };
    info!(
        continuum = ctl.name,
        identity = ctl.opts.identity,
        region = ctl.opts.region,
        "continuum controller started"
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        // A pass never blocks the loop for long (a store that lost its stream leader can leave
        // a request hanging); safety does not depend on it: the lease's validity is checked on
        // the local clock before every side effect.
        match tokio::time::timeout(PASS_TIMEOUT, ctl.tick()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = format!("{e:#}"), "continuum pass failed; retrying"),
            Err(_) => warn!(
                seconds = PASS_TIMEOUT.as_secs(),
                "continuum pass timed out; retrying"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!(
        "continuum controller stopping (the lease expires on its own; no release without a handoff)"
    );
    Ok(())
}

impl Controller {
    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.lease.ttl_seconds))
    }

    fn record(&self, holder: Option<&str>, region: &str, epoch: Option<u64>) -> LeaseRecord {
        LeaseRecord {
            schema: LEASE_SCHEMA.into(),
            continuum: self.name.clone(),
            holder: holder.map(str::to_string),
            region: region.to_string(),
            epoch,
            ttl_seconds: self.spec.lease.ttl_seconds,
            written_at: jiff::Timestamp::now().to_string(),
        }
    }

    /// Whether we may act now.
    fn acting(&self) -> Option<Held> {
        self.held.filter(|h| h.valid(Instant::now()))
    }

    /// The Kubernetes API, required by `CloudNativePG` databases.
    fn kube(&self) -> anyhow::Result<kube::Kube> {
        self.opts
            .kube
            .clone()
            .context("a CloudNativePG database needs the Kubernetes API: run with --kube")
    }

    /// Stamp our epoch on the state and on `dns-failover` once per epoch, retried every pass
    /// until both land (a store still electing its stream leaders refuses the first attempts).
    /// Returns whether they have: a holder acts only once its epoch is stamped on both.
    async fn ensure_fenced(&mut self, epoch: u64) -> bool {
        if self.fenced == Some(epoch) {
            return true;
        }
        let stamped = match self.fence_state(epoch).await {
            Ok(()) => self.fence_dns(epoch).await,
            Err(e) => Err(e),
        };
        match stamped {
            Ok(()) => {
                self.fenced = Some(epoch);
                true
            }
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    epoch,
                    "could not stamp the new epoch on the state and dns-failover yet; retrying"
                );
                false
            }
        }
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        self.lease().await;
        self.probe().await;
        match self.acting() {
            Some(h) => {
                if self.ensure_fenced(h.epoch).await {
                    self.act(h).await
                } else {
                    Ok(())
                }
            }
            None => self.follow().await,
        }
    }

    /// Before taking the lease over: rewrite the state as it is, so its revision moves. A state
    /// write the previous holder issued while its lease was still valid but that reaches the
    /// store only now (its process or its NATS server paused in between) was based on an older
    /// revision and loses its compare-and-set, instead of landing after our grant. Harmless when
    /// our takeover then loses: only the revision moved. A state that does not exist yet is
    /// created (the initial one), so a pending create loses too. `dns-failover` needs no such
    /// step: catalyst-dns never goes back to an older epoch, and a late DNS write of the
    /// previous holder is overwritten by our stamp ([`Self::fence_dns`]) with the region it
    /// names, which the state machine then completes or moves on from.
    async fn prefence(&mut self) -> anyhow::Result<()> {
        let state = Store::read::<State>(&self.store.state, &self.key).await?;
        let value = state.value.unwrap_or_else(|| State::initial(&self.spec));
        Store::cas(&self.store.state, &self.key, &value, state.revision).await?;
        Ok(())
    }

    /// Acquire, renew, or notice we lost the lease.
    async fn lease(&mut self) {
        let now = Instant::now();
        let obs = match Store::read::<LeaseRecord>(&self.store.leases, &self.key).await {
            Ok(v) => Observed {
                record: v.value,
                revision: v.revision,
            },
            Err(e) => {
                self.store_unreachable(&e).await;
                return;
            }
        };
        let unchanged = self.tracker.observe(obs.revision, now);
        let action = lease::decide(&self.opts.identity, &self.opts.region, &obs, unchanged);
        let ttl = self.ttl();
        let margin = self.opts.margin;
        match action {
            LeaseAction::Create | LeaseAction::TakeOver { .. } => {
                let base = match action {
                    LeaseAction::TakeOver { revision } => revision,
                    _ => 0,
                };
                if let Err(e) = self.prefence().await {
                    // Another contender's pre-fence moved a revision under us (it will take
                    // over, or we retry next pass), or the store is unreachable.
                    info!(
                        error = format!("{e:#}"),
                        "lease takeover deferred: the state could not be fenced"
                    );
                    return;
                }
                let start = Instant::now();
                let rec = self.record(Some(&self.opts.identity), &self.opts.region, None);
                match Store::cas(&self.store.leases, &self.key, &rec, base).await {
                    Ok(rev) => {
                        self.held = Some(Held::new(rev, rev, start, ttl, margin));
                        self.last_renew = Some(start);
                        self.log.record(Kind::Grant, rev, &self.opts.region);
                        info!(epoch = rev, "lease acquired");
                        self.fenced = None;
                        self.ensure_fenced(rev).await;
                    }
                    Err(e) => info!(error = format!("{e:#}"), "lease taken by someone else"),
                }
            }
            LeaseAction::Renew { revision, epoch } => {
                let due = self.held.is_none()
                    || self.last_renew.is_none_or(|t| {
                        now.duration_since(t)
                            >= Duration::from_secs(u64::from(self.spec.lease.renew_seconds))
                    });
                if !due {
                    return;
                }
                let start = Instant::now();
                let rec = self.record(Some(&self.opts.identity), &self.opts.region, Some(epoch));
                match Store::cas(&self.store.leases, &self.key, &rec, revision).await {
                    Ok(rev) => {
                        self.held = Some(Held::new(epoch, rev, start, ttl, margin));
                        self.last_renew = Some(start);
                        self.log.record(Kind::Renew, epoch, "");
                    }
                    Err(e) => {
                        warn!(error = format!("{e:#}"), "lease renewal lost");
                        self.held = None;
                    }
                }
            }
            LeaseAction::Wait => {
                if self.held.take().is_some() {
                    warn!("lease held by someone else now; stopped acting");
                }
            }
        }
    }

    /// The lease store is unreachable: keep acting only while the lease is valid and a witness
    /// quorum confirms us as holder at our epoch. A non-holder never takes over without the
    /// store: it could neither fence nor move DNS (catalyst-dns reads the store).
    async fn store_unreachable(&mut self, error: &anyhow::Error) {
        let Some(h) = self.acting() else {
            warn!(
                error = format!("{error:#}"),
                "lease store unreachable; not acting"
            );
            return;
        };
        let Some(settings) = &self.spec.witness else {
            return;
        };
        let need = usize::try_from(settings.quorum).unwrap_or(usize::MAX);
        let seen = witness::quorum(
            &self.witnesses,
            &self.spec.dns.group,
            &self.spec.dns.zone,
            need,
            Duration::from_millis(500),
        )
        .await;
        match seen {
            Some(s) if s.epoch == h.epoch && s.holder == self.opts.identity => {
                warn!(
                    epoch = h.epoch,
                    "lease store unreachable; witness quorum confirms us until the lease ends"
                );
            }
            other => {
                warn!(
                    ?other,
                    "lease store unreachable and no witness quorum for us; stopped acting"
                );
                self.held = None;
            }
        }
    }

    /// Probe every region's database (once per probe interval).
    async fn probe(&mut self) {
        if self
            .last_probe
            .is_some_and(|t| t.elapsed() < self.opts.probe_every)
        {
            return;
        }
        self.last_probe = Some(Instant::now());
        let active = Store::read::<State>(&self.store.state, &self.key)
            .await
            .ok()
            .and_then(|v| v.value)
            .map_or_else(|| self.spec.primary.clone(), |s| s.active_region);
        let primary = pg_target(&self.spec, &active);
        let regions: Vec<String> = self.spec.regions.iter().map(|r| r.name.clone()).collect();
        let probes = regions.iter().map(|r| {
            let t = pg_target(&self.spec, r);
            let cnpg = cnpg_ref(&self.spec, r);
            let kube = self.opts.kube.clone();
            let p = primary.clone();
            let auth = self.opts.pg.clone();
            async move {
                match (t, cnpg, kube) {
                    (Some(t), _, _) => postgres::probe(&t, p.as_ref(), &auth).await,
                    (None, Some(c), Some(k)) => k.cnpg_probe(&c).await,
                    // A CloudNativePG database without --kube cannot be seen: down, so it is
                    // never chosen.
                    (None, Some(_), None) => RegionView::default(),
                    // No database: the region is as healthy as its absence of evidence.
                    (None, None, _) => RegionView {
                        up: true,
                        standby: None,
                        lag_bytes: None,
                    },
                }
            }
        });
        let results = futures_util::future::join_all(probes).await;
        for (r, v) in regions.into_iter().zip(results) {
            let f = self.failures.entry(r.clone()).or_default();
            *f = if v.up { 0 } else { f.saturating_add(1) };
            let up = *f < self.opts.down_after;
            let prev = self.views.get(&r).copied().unwrap_or_default();
            let view = if v.up { v } else { RegionView { up, ..prev } };
            if prev.up != view.up {
                info!(region = r, up = view.up, "region database health changed");
            }
            self.views.insert(r, view);
        }
    }

    async fn load_state(&mut self, epoch: u64) -> anyhow::Result<(State, u64)> {
        let v = Store::read::<State>(&self.store.state, &self.key).await?;
        if let Some(s) = v.value {
            if s.epoch > epoch {
                self.held = None;
                bail!(
                    "the state was written at epoch {} > ours {epoch}; we are stale",
                    s.epoch
                );
            }
            return Ok((s, v.revision));
        }
        let mut s = State::initial(&self.spec);
        s.epoch = epoch;
        let rev = Store::cas(&self.store.state, &self.key, &s, v.revision).await?;
        Ok((s, rev))
    }

    async fn save(&mut self, s: &State, rev: u64, epoch: u64, what: &str) -> anyhow::Result<u64> {
        self.guard()?;
        let r = Store::cas(&self.store.state, &self.key, s, rev).await?;
        self.log
            .record(Kind::Effect, epoch, &format!("state:{what}"));
        self.write_status(s);
        if let Some(k) = self.opts.kube.clone() {
            let status = self.cr_status(s);
            let (ns, name) = self.name.split_once('/').unwrap_or(("default", &self.name));
            if let Err(e) = k.write_status(ns, name, &status).await {
                warn!(
                    error = format!("{e:#}"),
                    "cannot write the Continuum status"
                );
            }
        }
        Ok(r)
    }

    /// The Continuum's status as the API server holds it (written by the lease holder).
    fn cr_status(&mut self, s: &State) -> ContinuumStatus {
        let now = jiff::Timestamp::now().to_string();
        let active_up = self.views.get(&s.active_region).is_some_and(|v| v.up);
        let cond = |type_: &str, ok: bool, reason: &str, message: String| Condition {
            type_: type_.into(),
            status: if ok {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time: now.clone(),
        };
        let held = cond(
            "LeaseHeld",
            true,
            "Held",
            format!(
                "{} holds the lease at epoch {}",
                self.opts.identity, s.epoch
            ),
        );
        let (ok, reason) = match (&s.in_progress, active_up) {
            (Some(_), _) => (false, "SwitchoverInProgress"),
            (None, true) => (true, "Serving"),
            (None, false) => (false, "ActiveRegionDown"),
        };
        let ready = cond(
            "Ready",
            ok,
            reason,
            format!("region {} is active", s.active_region),
        );
        set_condition(&mut self.cr_conditions, held);
        set_condition(&mut self.cr_conditions, ready);
        ContinuumStatus {
            observed_generation: self.generation,
            active_region: Some(s.active_region.clone()),
            lease_holder: Some(self.opts.identity.clone()),
            epoch: s.epoch,
            replication_lag_bytes: self
                .views
                .values()
                .filter(|v| v.standby == Some(true))
                .filter_map(|v| v.lag_bytes)
                .max(),
            in_progress: s.in_progress.as_ref().map(|w| SwitchoverProgress {
                step: w.step.as_str().into(),
                from: w.from.clone(),
                to: w.to.clone(),
                reason: w.reason.as_str().into(),
                started: i64::try_from(w.started_ms)
                    .ok()
                    .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                epoch: w.epoch,
            }),
            history: s.history.clone(),
            conditions: self.cr_conditions.clone(),
        }
    }

    /// Refuse to act once the lease is no longer valid.
    fn guard(&self) -> anyhow::Result<Held> {
        self.acting()
            .context("lease no longer valid; side effect not performed")
    }

    async fn act(&mut self, h: Held) -> anyhow::Result<()> {
        let (mut state, mut rev) = self.load_state(h.epoch).await?;
        if state.in_progress.is_none() {
            match machine::decide(&self.spec, &state, &self.views) {
                Decision::Steady => {
                    self.last_blocked = None;
                    if let Some(t) = pg_target(&self.spec, &state.active_region)
                        && self.views.get(&state.active_region).is_some_and(|v| v.up)
                        && let Err(e) = postgres::ensure_sync(&t, &self.opts.pg).await
                    {
                        warn!(
                            error = format!("{e:#}"),
                            "cannot check synchronous replication"
                        );
                    }
                    return Ok(());
                }
                Decision::Blocked(why) => {
                    if self.last_blocked.as_deref() != Some(&why) {
                        warn!(reason = why, "switchover blocked");
                        self.last_blocked = Some(why);
                    }
                    return Ok(());
                }
                Decision::Start { from, to, reason } => {
                    info!(
                        from,
                        to,
                        reason = reason.as_str(),
                        epoch = h.epoch,
                        "switchover starts"
                    );
                    machine::begin(&mut state, &self.spec, from, to, reason, h.epoch, now_ms());
                    rev = self.save(&state, rev, h.epoch, "begin").await?;
                }
                Decision::Resume => {}
            }
        }
        // Run steps until done or the lease moves away.
        while let Some(sw) = state.in_progress.clone() {
            let h = self.guard()?;
            let step = sw.step;
            let handoff = self.step(&mut state, step, h).await?;
            machine::complete(
                &mut state,
                h.epoch,
                now_ms(),
                jiff::Timestamp::now().to_string(),
            );
            rev = self.save(&state, rev, h.epoch, step.as_str()).await?;
            info!(
                step = step.as_str(),
                epoch = h.epoch,
                "switchover step done"
            );
            // Fault injection for the lab (docs/continuum.md): die right after this step was
            // persisted, as a crash between two steps would.
            if std::env::var(CRASH_AFTER_ENV).is_ok_and(|v| v == step.as_str()) {
                warn!(
                    step = step.as_str(),
                    "{CRASH_AFTER_ENV} set: exiting after this step"
                );
                std::process::exit(CRASH_EXIT_CODE);
            }
            if handoff {
                self.release(h, &sw.to).await?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Perform one step's side effect; `true` when the lease must now move to the target.
    #[expect(clippy::too_many_lines, reason = "one arm per step, read in order")]
    async fn step(&mut self, state: &mut State, step: Step, h: Held) -> anyhow::Result<bool> {
        let sw = state
            .in_progress
            .as_mut()
            .context("no switchover in progress")?;
        let epoch = h.epoch;
        match step {
            Step::Validate => {
                if sw.reason != Reason::PrimaryLost && state.active_region != sw.from {
                    bail!(
                        "switchover from `{}` but `{}` is active",
                        sw.from,
                        state.active_region
                    );
                }
            }
            Step::Demote => {
                let primary_lost = sw.reason == Reason::PrimaryLost;
                // Each driver fences the old primary and returns what the promotion needs.
                let demoted = if let Some(old) = pg_target(&self.spec, &sw.from) {
                    let mut auth = self.opts.pg.clone();
                    if primary_lost {
                        auth.connect_timeout = Duration::from_millis(300);
                    }
                    self.guard()?;
                    Some(postgres::demote(&old, &auth).await.map(Demoted::Lsn))
                } else if let (Some(old), Some(new)) =
                    (cnpg_ref(&self.spec, &sw.from), cnpg_ref(&self.spec, &sw.to))
                {
                    let k = self.kube()?;
                    let wait = if primary_lost {
                        Duration::from_secs(5)
                    } else {
                        Duration::from_mins(1)
                    };
                    self.guard()?;
                    Some(k.cnpg_demote(&old, &new, wait).await.map(Demoted::Token))
                } else {
                    None
                };
                match demoted {
                    None => {}
                    Some(Ok(d)) => {
                        match d {
                            Demoted::Lsn(lsn) => sw.demoted_lsn = Some(lsn),
                            Demoted::Token(token) => sw.promotion_token = Some(token),
                        }
                        sw.old_reachable = Some(true);
                        self.log
                            .record(Kind::Effect, epoch, &format!("demote:{}", sw.from));
                    }
                    Some(Err(e)) if primary_lost => {
                        warn!(
                            error = format!("{e:#}"),
                            "old primary not demoted; fenced by DNS (and, PostgreSQL, by its own rejoin)"
                        );
                        sw.old_reachable = Some(false);
                    }
                    Some(Err(e)) => return Err(e.context("demote the old primary")),
                }
                sw.writes_stopped_ms
                    .get_or_insert(if sw.reason == Reason::PrimaryLost {
                        sw.started_ms
                    } else {
                        now_ms()
                    });
            }
            Step::Drain | Step::Restore => {
                let region = if step == Step::Drain {
                    &sw.from
                } else {
                    &sw.to
                };
                let routes = routes_of(&self.spec, region);
                match (&self.opts.kube, routes.is_empty()) {
                    (_, true) => {}
                    (None, false) => warn!(
                        "HTTPRoute weights are drained and restored with --kube only; skipped"
                    ),
                    (Some(k), false) => {
                        let k = k.clone();
                        self.guard()?;
                        if step == Step::Drain {
                            let over =
                                Duration::from_secs(u64::from(self.spec.switchover.drain_seconds));
                            k.drain(&routes, over).await.context("drain HTTPRoutes")?;
                        } else {
                            k.restore(&routes).await.context("restore HTTPRoutes")?;
                        }
                        self.log.record(
                            Kind::Effect,
                            epoch,
                            &format!("{}:{region}", step.as_str().to_lowercase()),
                        );
                    }
                }
            }
            Step::FlipDns => {
                let to = sw.to.clone();
                self.flip_dns(&to, epoch).await?;
            }
            Step::MoveLease => return Ok(sw.to != self.opts.region),
            Step::Promote => {
                if let Some(new) = pg_target(&self.spec, &sw.to) {
                    self.guard()?;
                    postgres::promote(
                        &new,
                        sw.demoted_lsn.as_deref(),
                        Duration::from_secs(10),
                        &self.opts.pg,
                    )
                    .await
                    .context("promote the new primary")?;
                    self.log
                        .record(Kind::Effect, epoch, &format!("promote:{}", sw.to));
                } else if let Some(new) = cnpg_ref(&self.spec, &sw.to) {
                    let k = self.kube()?;
                    self.guard()?;
                    k.cnpg_promote(&new, sw.promotion_token.as_deref())
                        .await
                        .context("promote the new primary's Cluster")?;
                    self.log
                        .record(Kind::Effect, epoch, &format!("promote:{}", sw.to));
                }
                sw.writes_resumed_ms.get_or_insert(now_ms());
            }
            Step::Audit => {
                let gap = match (sw.writes_stopped_ms, sw.writes_resumed_ms) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => 0,
                };
                let ev = Audit {
                    schema: AUDIT_SCHEMA.into(),
                    kind: "continuum".into(),
                    continuum: self.name.clone(),
                    who: self.opts.identity.clone(),
                    epoch,
                    action: "switchover".into(),
                    reason: sw.reason.as_str().into(),
                    before: serde_json::json!({ "active_region": sw.from }),
                    after: serde_json::json!({ "active_region": sw.to }),
                    duration_ms: now_ms().saturating_sub(sw.started_ms),
                    write_gap_ms: gap,
                    at: jiff::Timestamp::now().to_string(),
                };
                self.store.audit(&ev).await?;
                self.log.record(Kind::Effect, epoch, "audit");
            }
        }
        Ok(false)
    }

    /// Write `dns-failover` for our group: CAS, never over a newer epoch.
    async fn flip_dns(&mut self, to: &str, epoch: u64) -> anyhow::Result<()> {
        let group = self.spec.dns.group.clone();
        let cur = Store::read::<FailoverValue>(&self.store.dns, &group).await?;
        if let Some(v) = &cur.value
            && v.epoch > epoch
        {
            self.held = None;
            bail!(
                "dns-failover already at epoch {} > ours {epoch}; we are stale",
                v.epoch
            );
        }
        let val = FailoverValue {
            active_region: to.to_string(),
            epoch,
            lease_holder: Some(self.opts.identity.clone()),
        };
        self.guard()?;
        Store::cas(&self.store.dns, &group, &val, cur.revision).await?;
        self.log.record(Kind::Effect, epoch, &format!("dns:{to}"));
        info!(group, active = to, epoch, "DNS failover state written");
        Ok(())
    }

    /// On a new grant: stamp our epoch on the state, so that every holder of an older epoch
    /// that reads it from now on sees itself stale ([`Self::load_state`]); one that finds a
    /// newer epoch there is stale itself and stops acting.
    async fn fence_state(&mut self, epoch: u64) -> anyhow::Result<()> {
        let v = Store::read::<State>(&self.store.state, &self.key).await?;
        let mut s = v.value.unwrap_or_else(|| State::initial(&self.spec));
        if s.epoch > epoch {
            self.held = None;
            bail!(
                "the state is already at epoch {} > ours {epoch}; we are stale",
                s.epoch
            );
        }
        if s.epoch == epoch && v.revision != 0 {
            return Ok(());
        }
        s.epoch = epoch;
        self.guard()?;
        Store::cas(&self.store.state, &self.key, &s, v.revision).await?;
        self.log.record(Kind::Effect, epoch, "state:fence");
        Ok(())
    }

    /// On a new grant: stamp our epoch on the DNS value (same region) so a stale holder's
    /// pending write loses its compare-and-set.
    async fn fence_dns(&mut self, epoch: u64) -> anyhow::Result<()> {
        let state = Store::read::<State>(&self.store.state, &self.key).await?;
        let dns = Store::read::<FailoverValue>(&self.store.dns, &self.spec.dns.group).await?;
        let active = dns
            .value
            .as_ref()
            .map(|v| v.active_region.clone())
            .or(state.value.map(|s| s.active_region))
            .unwrap_or_else(|| self.spec.primary.clone());
        self.flip_dns(&active, epoch).await
    }

    async fn release(&mut self, h: Held, to: &str) -> anyhow::Result<()> {
        let rec = self.record(None, to, Some(h.epoch));
        Store::cas(&self.store.leases, &self.key, &rec, h.revision).await?;
        self.log.record(Kind::Release, h.epoch, to);
        self.held = None;
        info!(to, epoch = h.epoch, "lease released to the new region");
        Ok(())
    }

    /// Not the holder: keep the local server in line with the active region.
    async fn follow(&mut self) -> anyhow::Result<()> {
        let Some(local) = self.opts.local.clone() else {
            return Ok(());
        };
        let Ok(v) = Store::read::<State>(&self.store.state, &self.key).await else {
            return Ok(());
        };
        let Some(state) = v.value else {
            return Ok(());
        };
        if state.active_region == self.opts.region || state.in_progress.is_some() {
            return Ok(());
        }
        let (Some(me), Some(primary)) = (
            pg_target(&self.spec, &self.opts.region),
            pg_target(&self.spec, &state.active_region),
        ) else {
            return Ok(());
        };
        let mine = postgres::probe(&me, None, &self.opts.pg).await;
        let theirs = postgres::probe(&primary, None, &self.opts.pg).await;
        let local_is_orphan = mine.up && mine.standby == Some(false);
        // Stopped or crashed; a server still starting (crash recovery) counts as running.
        let local_down = !mine.up && !local.running().await;
        if !((local_is_orphan || local_down) && theirs.up && theirs.standby == Some(false)) {
            return Ok(());
        }
        // A rewind discards what the local server wrote since the histories diverged: only
        // onto a primary promoted after it (a newer timeline). A stale view of the state (an
        // old stream leader that has not yet seen the new term answers reads until it does)
        // could otherwise name the wrong region active and rewind the newest primary.
        let local_tli = postgres::local_timeline(&local.data);
        let active_tli = postgres::primary_timeline(&primary, &self.opts.pg).await;
        match (local_tli, active_tli) {
            (Ok(l), Ok(a)) if postgres::rejoin_allowed(l, a) => {}
            (l, a) => {
                let seen = (
                    l.as_ref().ok().copied(),
                    a.as_ref().ok().copied(),
                    state.active_region.clone(),
                );
                if self.refused_rejoin.as_ref() != Some(&seen) {
                    warn!(
                        local_timeline = ?l.map_err(|e| format!("{e:#}")),
                        active = state.active_region,
                        active_timeline = ?a.map_err(|e| format!("{e:#}")),
                        "not rejoining as standby: the active region's primary is not on a \
                         newer timeline than the local server (a rewind would discard local \
                         writes); the controller retries while this lasts"
                    );
                    self.refused_rejoin = Some(seen);
                }
                return Ok(());
            }
        }
        // Read barrier: the state is rewritten unchanged at the revision read. Only a current
        // stream leader with a quorum accepts it, so it proves the state read was the newest.
        if let Err(e) = Store::cas(&self.store.state, &self.key, &state, v.revision).await {
            info!(
                error = format!("{e:#}"),
                "rejoin deferred: the state read could not be confirmed as current"
            );
            return Ok(());
        }
        self.refused_rejoin = None;
        local.rejoin(&primary, &self.opts.pg).await
    }

    fn write_status(&self, s: &State) {
        let Some(p) = &self.opts.status_file else {
            return;
        };
        let status = serde_json::json!({
            "continuum": self.name,
            "activeRegion": s.active_region,
            "leaseHolder": self.opts.identity,
            "epoch": s.epoch,
            "inProgress": s.in_progress.as_ref().map(|w| serde_json::json!({
                "step": w.step.as_str(), "from": w.from, "to": w.to, "reason": w.reason.as_str(),
                "startedMs": w.started_ms, "epoch": w.epoch })),
            "history": s.history,
            "regions": self.views.iter().map(|(k, v)| (k.clone(), serde_json::json!({
                "up": v.up, "standby": v.standby, "lagBytes": v.lag_bytes }))).collect::<BTreeMap<_, _>>(),
        });
        let tmp = p.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec_pretty(&status).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, p))
            .is_err()
        {
            warn!(path = %p.display(), "cannot write the status file");
        }
    }
}

/// `catalyst-controllers continuum switchover`: record a manual request in the state.
pub async fn request_switchover(
    continuum: &std::path::Path,
    nats: &str,
    nats_auth: &catalyst_policy::nats::NatsAuth,
    to: &str,
    names: Names,
) -> anyhow::Result<()> {
    let c = load(continuum)?;
    if !c.spec.regions.iter().any(|r| r.name == to) {
        bail!("--to `{to}` is not one of the Continuum's regions");
    }
    let ns = c
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = c
        .metadata
        .name
        .clone()
        .context("the Continuum has no metadata.name")?;
    let key = store::key(&ns, &name);
    let store = Store::connect(
        nats,
        nats_auth,
        "catalyst-controllers continuum switchover",
        names,
    )
    .await?;
    for _ in 0..10 {
        let v = Store::read::<State>(&store.state, &key).await?;
        let mut s = v.value.unwrap_or_else(|| State::initial(&c.spec));
        if s.active_region == to && s.in_progress.is_none() {
            println!("{ns}/{name}: `{to}` is already active");
            return Ok(());
        }
        s.request = Some(machine::Request {
            to: to.to_string(),
            at_ms: now_ms(),
        });
        if Store::cas(&store.state, &key, &s, v.revision).await.is_ok() {
            println!("{ns}/{name}: switchover to `{to}` requested");
            return Ok(());
        }
    }
    bail!("could not record the request: the state kept changing")
}
