//! Health checker for `ifportup`, `ifurlup` and `ifurlextup`.
//!
//! Checks are registered when a zone is compiled, keyed by target and options so identical
//! targets share one check across records and zones, and each runs on its own interval. A check
//! starts when a query first reads it, as in `PowerDNS` (`health.start: first_query`, the
//! default), or at zone load (`health.start: load`: faster failover after a restart). State is one atomic per check, read lock-free on the query path; every
//! transition bumps a version that invalidates cached answers, updates metrics and is published
//! as a health event.

mod http;
mod tcp;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{runtime::Handle, sync::mpsc, task::AbortHandle};
use tracing::{debug, info, warn};

pub use self::http::{HttpError, Url};

/// What a check probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// TCP connect to the address and port.
    Tcp(SocketAddr),
    /// HTTP(S) GET of the URL, connecting to `pin` when set (Host/SNI stay from the URL), or to
    /// the URL's host resolved normally (`ifurlextup`).
    Url {
        /// The URL.
        url: String,
        /// Address to connect to instead of resolving the host.
        pin: Option<IpAddr>,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::Url { url, pin: Some(p) } => write!(f, "{url} via {p}"),
            Target::Url { url, pin: None } => f.write_str(url),
        }
    }
}

/// A check: its target and the options that change how it is probed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    /// What is probed.
    pub target: Target,
    /// Check options (timeout, interval, stringmatch, ...), as strings.
    pub opts: BTreeMap<String, String>,
}

/// Options that only steer the answer, not the probe; they are not part of a check's identity.
pub const ANSWER_OPTIONS: &[&str] = &["selector", "backupSelector", "failOnIncompleteCheck"];

/// Health of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No check has completed yet.
    Pending,
    /// Up.
    Up,
    /// Down.
    Down,
}

/// How targets whose first check has not completed are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstRun {
    /// As `PowerDNS`: treated as down, so the backup selector answers.
    #[default]
    Down,
    /// Treated as up until the first check says otherwise.
    Up,
}

/// When checks start running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStart {
    /// As `PowerDNS`: when a query first reads the check (the first answers come from the
    /// backup selector, or SERVFAIL with `failOnIncompleteCheck`).
    #[default]
    FirstQuery,
    /// At zone load: states are known before the first query, so failover after a restart is
    /// faster.
    Load,
}

/// Health checker settings (the `health` section of the config).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Check period when a record sets no `interval`, in seconds. Default 5 (`PowerDNS`'s
    /// `lua-health-checks-interval`).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Check timeout when a record sets no `timeout`, in seconds. Default 2.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Consecutive successes before a down target is up again (damps flaps), when a record sets
    /// no `minimumSuccesses`. Default 1.
    #[serde(default = "default_one")]
    pub minimum_successes: u32,
    /// Answer for targets not checked yet: `down` (`PowerDNS`) or `up`. Default `down`.
    #[serde(default)]
    pub first_run: FirstRun,
    /// When a check starts: `first_query` (`PowerDNS`) or `load`. Default `first_query`.
    #[serde(default)]
    pub start: CheckStart,
    /// Verify TLS certificates of HTTPS checks. Default false (as `PowerDNS`).
    #[serde(default)]
    pub verify_tls: bool,
    /// User-Agent of URL checks when a record sets no `useragent`. Default `catalyst-dns`.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Redirects followed by URL checks. Default 5.
    #[serde(default = "default_redirects")]
    pub max_redirects: u32,
    /// Health events queued for the publisher (NATS) before further events are dropped and
    /// counted in `catalyst_dns_health_events_dropped_total`, events. Default 1024.
    #[serde(default = "default_events_buffer")]
    pub events_buffer: usize,
}

fn default_interval() -> u64 {
    5
}
fn default_timeout() -> u64 {
    2
}
fn default_one() -> u32 {
    1
}
fn default_user_agent() -> String {
    "catalyst-dns".into()
}
fn default_redirects() -> u32 {
    5
}
fn default_events_buffer() -> usize {
    1024
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: default_interval(),
            timeout_secs: default_timeout(),
            minimum_successes: default_one(),
            first_run: FirstRun::default(),
            start: CheckStart::default(),
            verify_tls: false,
            user_agent: default_user_agent(),
            max_redirects: default_redirects(),
            events_buffer: default_events_buffer(),
        }
    }
}

const PENDING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Shared state of one check.
#[derive(Debug)]
pub struct CheckState {
    /// The check.
    pub spec: CheckSpec,
    status: AtomicU8,
    failures: AtomicU32,
    successes: AtomicU32,
    zones: Mutex<BTreeSet<String>>,
    /// A query has read the check (it runs from then on with `CheckStart::FirstQuery`).
    queried: AtomicBool,
    shared: Arc<Shared>,
}

impl CheckState {
    /// Status for answering a query: the first read starts the check when checks start on
    /// first query.
    pub fn status_for_query(self: &Arc<Self>) -> Status {
        // Read before starting the check: the query that starts it answers from the state before
        // the first result (as PowerDNS), even when a fast loopback check would finish first.
        let status = self.status();
        if !self.queried.load(Ordering::Relaxed) && !self.queried.swap(true, Ordering::AcqRel) {
            self.shared.spawn(self);
        }
        status
    }

    /// Current status.
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Relaxed) {
            PENDING => Status::Pending,
            UP => Status::Up,
            _ => Status::Down,
        }
    }

    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.spec.opts.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// `minimumFailures` as PowerDNS reads it: `std::atoi` of the text into an `unsigned int`
    /// (so `2.5` is 2, a negative value wraps to a huge count), at least 1.
    fn minimum_failures(&self) -> u32 {
        self.spec.opts.get("minimumFailures").map_or(1, |v| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "C's int → unsigned int conversion, as PowerDNS"
            )]
            let n = atoi(v) as i32 as u32;
            n.max(1)
        })
    }
}

/// `interval` / `timeout` of a check: whole seconds, `std::atoi` of the option's text as
/// PowerDNS reads them (`1.5` is 1 s); a value between 0 and 1 exclusive — which PowerDNS
/// reads as 0 — is taken as the fraction of a second it says (an extension for fast checks:
/// no PowerDNS zone means anything else by it). `None` (the configured default) for a missing,
/// zero, negative or non-numeric value.
pub fn option_duration(v: Option<&str>) -> Option<Duration> {
    let v = v?;
    if let Ok(f) = v.trim().parse::<f64>()
        && f > 0.0
        && f < 1.0
    {
        return Some(Duration::from_secs_f64(f));
    }
    u64::try_from(atoi(v))
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
}

/// C's `atoi` (what PowerDNS applies to `timeout`, `interval` and `minimumFailures`): leading
/// white space, an optional sign, then the leading digits; 0 when there are none. Saturates
/// where C's is undefined.
pub fn atoi(s: &str) -> i64 {
    stoi_prefix(s).unwrap_or(0)
}

/// `std::stoll`'s reading (what PowerDNS's `checked_stoi` applies to `byteslimit` and
/// `httpcode`): leading white space, an optional sign and at least one digit; None without
/// digits (PowerDNS throws, and the check fails). Saturates at the `i64` range.
pub fn stoi_prefix(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let n = digits[..end].parse::<i64>().unwrap_or(i64::MAX);
    Some(if negative { -n } else { n })
}

/// A health transition, published on NATS as `catalyst.health.<zone>.<target>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthEvent {
    /// Zone whose records use the target.
    pub zone: String,
    /// Target in display form.
    pub target: String,
    /// Subject-safe target token.
    pub target_token: String,
    /// `up` or `down`.
    pub status: String,
    /// Previous status (`pending`, `up`, `down`).
    pub previous: String,
    /// Why (the error of a failed check).
    pub reason: Option<String>,
    /// Unix time in seconds.
    pub at: u64,
}

fn status_name(s: u8) -> &'static str {
    match s {
        PENDING => "pending",
        UP => "up",
        _ => "down",
    }
}

/// Subject token for a target: dots, colons and slashes are not allowed in NATS tokens.
pub fn target_token(t: &Target) -> String {
    t.to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How often a full event queue is reported in the log at most (the metric counts every drop).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The bounded queue from the checks to the health-event publisher: a check never waits for
/// NATS; when the queue is full the event is dropped, counted
/// (`catalyst_dns_health_events_dropped_total`) and logged at most every 10 s.
#[derive(Debug)]
pub struct EventSink {
    tx: mpsc::Sender<HealthEvent>,
    dropped: prometheus_client::metrics::counter::Counter,
    logged: Mutex<Option<std::time::Instant>>,
}

impl EventSink {
    /// A sink into `tx` (made with capacity `health.events_buffer`) counting drops in
    /// `dropped`.
    pub fn new(
        tx: mpsc::Sender<HealthEvent>,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            tx,
            dropped,
            logged: Mutex::new(None),
        }
    }

    /// Queues `event`; false (and counted) when the queue is full or the publisher is gone.
    pub fn send(&self, event: HealthEvent) -> bool {
        let Err(e) = self.tx.try_send(event) else {
            return true;
        };
        let total = self.dropped.inc() + 1;
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
            *logged = Some(std::time::Instant::now());
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue full (health.events_buffer)",
                mpsc::error::TrySendError::Closed(_) => "publisher stopped",
            };
            warn!(reason, dropped_total = total, "health event dropped");
        }
        false
    }
}

struct Shared {
    cfg: HealthConfig,
    version: Arc<AtomicU64>,
    events: Mutex<Option<Arc<EventSink>>>,
    metrics: Mutex<Option<crate::metrics::HealthMetrics>>,
    tasks: Mutex<HashMap<CheckSpec, AbortHandle>>,
    runtime: Mutex<Option<Handle>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Run `state` from now on (once), if the checker has started.
    fn spawn(self: &Arc<Self>, state: &Arc<CheckState>) {
        let rt = self
            .runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(rt) = rt else {
            return;
        };
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tasks.contains_key(&state.spec) {
            return;
        }
        debug!(target = %state.spec.target, "health check started");
        let task = rt.spawn(run_check(self.clone(), state.clone()));
        tasks.insert(state.spec.clone(), task.abort_handle());
    }

    /// Whether a check should run now.
    fn due(&self, state: &CheckState) -> bool {
        self.cfg.start == CheckStart::Load || state.queried.load(Ordering::Relaxed)
    }
}

/// All registered checks.
pub struct Registry {
    shared: Arc<Shared>,
    checks: Mutex<HashMap<CheckSpec, Arc<CheckState>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry that runs no checks until [`Registry::start`].
    pub fn new(cfg: HealthConfig, version: Arc<AtomicU64>) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg,
                version,
                events: Mutex::new(None),
                metrics: Mutex::new(None),
                tasks: Mutex::new(HashMap::new()),
                runtime: Mutex::new(None),
            }),
            checks: Mutex::new(HashMap::new()),
        }
    }

    /// Settings.
    pub fn config(&self) -> &HealthConfig {
        &self.shared.cfg
    }

    /// Version bumped on every transition.
    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// Send transitions to this sink.
    pub fn set_events(&self, sink: EventSink) {
        *self
            .shared
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(sink));
    }

    /// Export state through these metrics.
    pub fn set_metrics(&self, m: crate::metrics::HealthMetrics) {
        *self
            .shared
            .metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(m);
    }

    /// Register (or find) a check used by `zone`.
    pub fn register(&self, spec: &CheckSpec, zone: &str) -> Arc<CheckState> {
        let mut checks = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = checks
            .entry(spec.clone())
            .or_insert_with(|| {
                Arc::new(CheckState {
                    spec: spec.clone(),
                    status: AtomicU8::new(PENDING),
                    failures: AtomicU32::new(0),
                    successes: AtomicU32::new(0),
                    zones: Mutex::new(BTreeSet::new()),
                    queried: AtomicBool::new(false),
                    shared: self.shared.clone(),
                })
            })
            .clone();
        drop(checks);
        state
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(zone.to_string());
        if self.shared.due(&state) {
            self.shared.spawn(&state);
        }
        state
    }

    /// Start the checker on `rt`: every check that is due now (all of them with
    /// `CheckStart::Load`), and each later one when it becomes due.
    pub fn start(&self, rt: &Handle) {
        *self
            .shared
            .runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rt.clone());
        let checks: Vec<_> = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for state in checks {
            if self.shared.due(&state) {
                self.shared.spawn(&state);
            }
        }
    }

    /// Drop checks no compiled zone refers to any more (after a reload).
    pub fn prune(&self) {
        let mut checks = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tasks = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        checks.retain(|spec, state| {
            // References: this map, a running task, and the compiled records using it.
            let held = 1 + usize::from(tasks.contains_key(spec));
            let used = Arc::strong_count(state) > held;
            if !used {
                debug!(target = %spec.target, "health check no longer used");
                if let Some(t) = tasks.remove(spec) {
                    t.abort();
                }
            }
            used
        });
    }

    /// Number of registered checks.
    pub fn len(&self) -> usize {
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// True if no checks are registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of all checks and their status.
    pub fn snapshot(&self) -> Vec<(CheckSpec, Status)> {
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|s| (s.spec.clone(), s.status()))
            .collect()
    }
}

async fn run_check(shared: Arc<Shared>, state: Arc<CheckState>) {
    let secs = |key: &str, default: u64| -> Duration {
        option_duration(state.spec.opts.get(key).map(String::as_str))
            .unwrap_or(Duration::from_secs(default))
    };
    let interval = secs("interval", shared.cfg.interval_secs);
    let timeout = secs("timeout", shared.cfg.timeout_secs);
    loop {
        let started = tokio::time::Instant::now();
        let result = match &state.spec.target {
            Target::Tcp(addr) => tcp::check(*addr, &state.spec.opts, timeout).await,
            Target::Url { url, pin } => {
                http::check(url, *pin, &state.spec.opts, timeout, &shared.cfg).await
            }
        };
        update(&shared, &state, result);
        tokio::time::sleep_until(started + interval).await;
    }
}

fn update(shared: &Shared, state: &CheckState, result: Result<(), String>) {
    let before = state.status.load(Ordering::Relaxed);
    let after = if let Ok(()) = &result {
        state.failures.store(0, Ordering::Relaxed);
        let n = state.successes.fetch_add(1, Ordering::Relaxed) + 1;
        let need = state
            .opt_u32("minimumSuccesses")
            .unwrap_or(shared.cfg.minimum_successes)
            .max(1);
        if before == UP || n >= need || before == PENDING {
            UP
        } else {
            before
        }
    } else {
        state.successes.store(0, Ordering::Relaxed);
        let n = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let need = state.minimum_failures();
        if n >= need {
            DOWN
        } else if before == PENDING {
            // PowerDNS exposes "failed, but not minimumFailures times yet" targets as up.
            UP
        } else {
            before
        }
    };
    if let Some(m) = shared
        .metrics
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        m.observe(&state.spec.target, result.is_ok(), after == UP);
    }
    if after == before {
        return;
    }
    state.status.store(after, Ordering::Release);
    shared.version.fetch_add(1, Ordering::AcqRel);
    let reason = result.err();
    info!(target = %state.spec.target, from = status_name(before), to = status_name(after), reason = reason.as_deref().unwrap_or(""), "health transition");
    let tx = shared
        .events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(sink) = tx {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for zone in state
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            sink.send(HealthEvent {
                zone: zone.clone(),
                target: state.spec.target.to_string(),
                target_token: target_token(&state.spec.target),
                status: status_name(after).into(),
                previous: status_name(before).into(),
                reason: reason.clone(),
                at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(opts: &[(&str, &str)]) -> CheckSpec {
        CheckSpec {
            target: Target::Tcp("127.0.0.1:1".parse().unwrap()),
            opts: opts
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn a_full_event_queue_drops_and_counts_and_never_blocks_the_check() {
        let r = Registry::new(HealthConfig::default(), Arc::default());
        let (tx, mut rx) = mpsc::channel(2);
        let dropped = prometheus_client::metrics::counter::Counter::default();
        r.set_events(EventSink::new(tx, dropped.clone()));
        let s = r.register(&spec(&[]), "z.");
        // Nobody reads the queue (NATS down): five transitions, two queued, three dropped.
        for ok in [true, false, true, false, true] {
            update(&r.shared, &s, if ok { Ok(()) } else { Err("x".into()) });
        }
        assert_eq!(s.status(), Status::Up);
        assert_eq!(dropped.get(), 3);
        assert_eq!(rx.try_recv().unwrap().status, "up");
        assert_eq!(rx.try_recv().unwrap().status, "down");
        assert!(rx.try_recv().is_err());
        // Room again: the next transition is queued.
        update(&r.shared, &s, Err("x".into()));
        assert_eq!(rx.try_recv().unwrap().status, "down");
        assert_eq!(dropped.get(), 3);
    }

    #[test]
    fn identical_targets_share_state() {
        let r = Registry::new(HealthConfig::default(), Arc::default());
        let a = r.register(&spec(&[]), "a.");
        let b = r.register(&spec(&[]), "b.");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(r.len(), 1);
        drop((a, b));
        r.prune();
        assert!(r.is_empty());
    }

    #[test]
    fn minimum_failures_and_successes_damp_flaps() {
        let r = Registry::new(HealthConfig::default(), Arc::default());
        let s = r.register(
            &spec(&[("minimumFailures", "2"), ("minimumSuccesses", "2")]),
            "z.",
        );
        update(&r.shared, &s, Ok(()));
        assert_eq!(s.status(), Status::Up);
        update(&r.shared, &s, Err("x".into()));
        assert_eq!(s.status(), Status::Up);
        update(&r.shared, &s, Err("x".into()));
        assert_eq!(s.status(), Status::Down);
        update(&r.shared, &s, Ok(()));
        assert_eq!(s.status(), Status::Down);
        let v = r.version();
        update(&r.shared, &s, Ok(()));
        assert_eq!(s.status(), Status::Up);
        assert_eq!(r.version(), v + 1);
    }

    fn running(r: &Registry) -> usize {
        r.shared
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    #[test]
    fn checks_start_on_first_query_by_default() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = Registry::new(HealthConfig::default(), Arc::default());
        let s = r.register(&spec(&[]), "z.");
        r.start(rt.handle());
        assert_eq!(running(&r), 0, "registered at load, not started");
        assert_eq!(
            s.status_for_query(),
            Status::Pending,
            "first answer: not checked yet"
        );
        assert_eq!(running(&r), 1, "started by the first query");
        s.status_for_query();
        assert_eq!(running(&r), 1, "started once");
        // A check registered after start (a reload) also waits for its first query.
        let t = r.register(&spec(&[("interval", "3")]), "z.");
        assert_eq!(running(&r), 1);
        t.status_for_query();
        assert_eq!(running(&r), 2);
    }

    #[test]
    fn checks_start_at_load_when_configured() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = HealthConfig {
            start: CheckStart::Load,
            ..HealthConfig::default()
        };
        let r = Registry::new(cfg, Arc::default());
        let s = r.register(&spec(&[]), "z.");
        assert_eq!(running(&r), 0, "nothing runs before the checker starts");
        r.start(rt.handle());
        assert_eq!(running(&r), 1, "started at load");
        drop(s);
        r.prune();
        assert!(r.is_empty(), "a running check no record uses is stopped");
        assert_eq!(running(&r), 0);
    }

    #[test]
    fn check_intervals_are_whole_seconds_as_powerdns_with_sub_second_values_kept() {
        let d = |v: &str| option_duration(Some(v));
        assert_eq!(d("2.5"), Some(Duration::from_secs(2)));
        assert_eq!(d("10"), Some(Duration::from_secs(10)));
        assert_eq!(d("0.2"), Some(Duration::from_millis(200)));
        assert_eq!(d("0"), None);
        assert_eq!(d("-3"), None);
        assert_eq!(d("soon"), None);
        assert_eq!(option_duration(None), None);
    }

    #[test]
    fn numeric_options_are_read_as_powerdns_reads_them() {
        assert_eq!(atoi(" 12abc"), 12);
        assert_eq!(atoi("2.9"), 2);
        assert_eq!(atoi("-3"), -3);
        assert_eq!(atoi("abc"), 0);
        assert_eq!(stoi_prefix("abc"), None);
        assert_eq!(stoi_prefix("+40x"), Some(40));
        let r = Registry::new(HealthConfig::default(), Arc::default());
        let mf = |v: &str| {
            r.register(&spec(&[("minimumFailures", v)]), "z.")
                .minimum_failures()
        };
        assert_eq!(mf("2.5"), 2);
        assert_eq!(mf("0"), 1);
        assert_eq!(mf("junk"), 1);
        assert_eq!(mf("-1"), u32::MAX);
    }

    #[test]
    fn first_failure_below_minimum_reads_up_like_powerdns() {
        let r = Registry::new(HealthConfig::default(), Arc::default());
        let s = r.register(&spec(&[("minimumFailures", "3")]), "z.");
        assert_eq!(s.status(), Status::Pending);
        update(&r.shared, &s, Err("refused".into()));
        assert_eq!(s.status(), Status::Up);
    }
}
