//! Per-workload compliance signals (DESIGN.md §4.5, `docs/signals.md`).
//!
//! For every local endpoint the agent evaluates the checks of [`CHECKS`] at the end of each
//! window (`signals.interval_ms`) and at once whenever the policy or the endpoints change, and
//! publishes JSON [`Signal`]s to `JetStream` subjects `catalyst.signals.<org>.<env>.<app>`
//! (stream `CATALYST_SIGNALS`). Only signals whose result or stable evidence changed are
//! published, plus every signal once per heartbeat (`signals.heartbeat_ms`). Without NATS the
//! signals are logged instead.
//!
//! Publishing goes through the bounded export queue of [`crate::nats`]: a NATS outage drops
//! and counts signals (`catalyst_signals_dropped_total`), it never stalls the engine or the
//! flow pipeline.

mod checks;
mod counts;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::watch;

pub use self::{
    checks::{
        APPLICATION, AUDIT_MODE, CHECKS, CheckResult, EGRESS_DEFAULT_DENY,
        EGRESS_WORLD_UNRESTRICTED, ENVIRONMENT, Evidence, FLOWS_OBSERVED, INGRESS_DEFAULT_DENY,
        LABELS_COMPLETE, ORGANIZATION, Outcome, POLICY_DROPS, PolicyFacts, Subject, Window,
        Workload, evaluate, subject_of, token, workload_names, world_egress_allows,
    },
    counts::{CountRecorder, Counts, FlowCounts},
};
use crate::{
    config::{AgentConfig, SignalsConfig},
    flow::rfc3339_nanos,
    nats::{self, ExportMetrics, Queue, StreamSpec},
    state::Snapshot,
};

/// `schema` of every signal; bumped on an incompatible change of the JSON.
pub const SCHEMA: &str = "catalyst.signal/v1";

/// Why a signal was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// First evaluation after the agent started.
    Start,
    /// The policy or the endpoints changed (evaluated as soon as the maps were updated).
    Change,
    /// A window ended and the result (or its stable evidence) changed.
    Window,
    /// Unchanged; republished because the heartbeat interval passed.
    Heartbeat,
}

/// One compliance signal as published (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signal {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Check id (one of [`CHECKS`]).
    pub check: &'static str,
    /// `pass`, `fail` or `n-a`.
    pub result: Outcome,
    /// The workload.
    pub subject: Subject,
    /// What the check saw.
    pub evidence: Evidence,
    /// When the check was evaluated (RFC 3339, UTC).
    pub observed_at: String,
    /// Node of the agent.
    pub node: String,
    /// Cluster (`nats.cluster`).
    pub cluster: String,
    /// Policy revision in force in the datapath.
    pub policy_revision: u32,
    /// Why it was published.
    pub trigger: Trigger,
}

impl Signal {
    /// The NATS subject: `catalyst.signals.<org>.<env>.<app>`.
    pub fn nats_subject(&self) -> String {
        subject_of(&self.subject)
    }
}

/// What the engine evaluates: the workloads and global settings of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Local workloads (endpoints whose interface exists).
    pub workloads: Vec<Workload>,
    /// Global audit mode.
    pub global_audit: bool,
    /// Policy revision in force.
    pub revision: u32,
}

impl Inputs {
    /// The inputs of a snapshot that is in force at `revision`.
    pub fn from_snapshot(cfg: &AgentConfig, snap: &Snapshot, revision: u32) -> Self {
        let facts = world_egress_allows(&snap.desired, &snap.enrich.origins);
        let labels_by_interface: HashMap<&str, &std::collections::BTreeMap<String, String>> = cfg
            .endpoints
            .iter()
            .map(|e| (e.interface.as_str(), &e.labels))
            .collect();
        let workloads = snap
            .desired
            .endpoints
            .iter()
            .filter_map(|(ifindex, info)| {
                let id = &info.endpoint_id;
                let meta = snap.enrich.endpoints.get(ifindex)?;
                let labels = labels_by_interface.get(meta.interface.as_str())?;
                let ([organization, environment, application], missing_labels) =
                    workload_names(labels);
                let f = facts.get(id).cloned().unwrap_or_default();
                Some(Workload {
                    subject: Subject {
                        organization,
                        environment,
                        application,
                        namespace: meta.namespace.clone(),
                        pod: meta.name.clone(),
                        interface: meta.interface.clone(),
                        endpoint_id: *id,
                        identity: info.identity,
                    },
                    flags: info.flags,
                    missing_labels,
                    ingress_policies: f.ingress,
                    egress_policies: f.egress,
                    world_allows: f.world_allows,
                })
            })
            .collect();
        Self {
            workloads,
            global_audit: cfg.audit,
            revision,
        }
    }
}

/// Evaluates the checks and decides what to publish. Pure apart from reading the counters, so
/// it is tested without a runtime.
#[derive(Debug)]
pub struct Engine {
    node: String,
    cluster: String,
    heartbeat: Duration,
    inputs: Arc<Inputs>,
    counts: Arc<FlowCounts>,
    /// Counter totals at the end of the last window.
    totals: HashMap<u32, Counts>,
    /// Growth over the last completed window, and its length.
    window: Option<(HashMap<u32, Counts>, u64)>,
    /// Last published (result, stable evidence) per (endpoint, check).
    last: HashMap<(u32, &'static str), (Outcome, Evidence)>,
    last_heartbeat: Option<Instant>,
}

impl Engine {
    /// An engine with no workloads yet.
    pub fn new(node: &str, cluster: &str, cfg: &SignalsConfig, counts: Arc<FlowCounts>) -> Self {
        Self {
            node: node.to_owned(),
            cluster: cluster.to_owned(),
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            inputs: Arc::default(),
            counts,
            totals: HashMap::new(),
            window: None,
            last: HashMap::new(),
            last_heartbeat: None,
        }
    }

    /// Replaces the inputs; forgets endpoints that are gone.
    pub fn set_inputs(&mut self, inputs: Arc<Inputs>) {
        let ids: std::collections::HashSet<u32> = inputs
            .workloads
            .iter()
            .map(|w| w.subject.endpoint_id)
            .collect();
        self.counts.retain(|id| ids.contains(&id));
        self.totals.retain(|id, _| ids.contains(id));
        self.last.retain(|(id, _), _| ids.contains(id));
        self.inputs = inputs;
    }

    /// Closes the current window (of `ms` milliseconds): its counts become the evidence of the
    /// window checks until the next one closes.
    pub fn end_window(&mut self, ms: u64) {
        let now = self.counts.read();
        let growth = now
            .iter()
            .map(|(id, c)| {
                (
                    *id,
                    c.since(&self.totals.get(id).copied().unwrap_or_default()),
                )
            })
            .collect();
        self.totals = now;
        self.window = Some((growth, ms));
    }

    /// Evaluates every workload and returns the signals to publish: those that changed since
    /// they were last published, or all of them when the heartbeat is due.
    pub fn evaluate(&mut self, trigger: Trigger, now: Instant, wall_ns: i128) -> Vec<Signal> {
        let heartbeat_due = self
            .last_heartbeat
            .is_none_or(|t| now.duration_since(t) >= self.heartbeat);
        if heartbeat_due {
            self.last_heartbeat = Some(now);
        }
        let observed_at = rfc3339_nanos(wall_ns);
        let mut out = Vec::new();
        let inputs = self.inputs.clone();
        for w in &inputs.workloads {
            let id = w.subject.endpoint_id;
            let window = self.window.as_ref().map(|(counts, ms)| Window {
                counts: counts.get(&id).copied().unwrap_or_default(),
                ms: *ms,
            });
            for r in evaluate(w, window, inputs.global_audit) {
                let key = (r.outcome, r.evidence.stable());
                let changed = self.last.get(&(id, r.check)) != Some(&key);
                if !changed && !heartbeat_due {
                    continue;
                }
                self.last.insert((id, r.check), key);
                out.push(Signal {
                    schema: SCHEMA,
                    check: r.check,
                    result: r.outcome,
                    subject: w.subject.clone(),
                    evidence: r.evidence,
                    observed_at: observed_at.clone(),
                    node: self.node.clone(),
                    cluster: self.cluster.clone(),
                    policy_revision: inputs.revision,
                    trigger: if changed { trigger } else { Trigger::Heartbeat },
                });
            }
        }
        out
    }
}

/// Where signals go.
#[derive(Debug)]
pub enum Output {
    /// The `JetStream` export queue.
    Nats(Queue<Signal>),
    /// The log (standalone without NATS): changed signals at info, heartbeats at debug.
    Log,
}

impl Output {
    fn emit(&self, signals: Vec<Signal>) {
        for s in signals {
            match self {
                Self::Nats(q) => {
                    q.offer(s);
                }
                Self::Log => {
                    let subject = s.nats_subject();
                    let json = serde_json::to_string(&s).unwrap_or_default();
                    if s.trigger == Trigger::Heartbeat {
                        tracing::debug!(%subject, signal = %json, "compliance signal (NATS not configured)");
                    } else {
                        tracing::info!(%subject, signal = %json, "compliance signal (NATS not configured)");
                    }
                }
            }
        }
    }
}

/// The running signal engine: send new inputs through [`Handle::update`].
#[derive(Debug)]
pub struct Handle {
    inputs: watch::Sender<Arc<Inputs>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// New inputs (after the maps were updated): evaluated and published at once.
    pub fn update(&self, inputs: Inputs) {
        self.inputs.send_replace(Arc::new(inputs));
    }

    /// Stops the engine and its publisher.
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Starts the engine with its first inputs. With a NATS client the signals are published to
/// the stream `cfg.signals.stream` over it; without, they are logged.
pub fn start(
    cfg: &AgentConfig,
    inputs: Inputs,
    client: Option<async_nats::Client>,
    counts: Arc<FlowCounts>,
    metrics: ExportMetrics,
) -> Handle {
    let mut tasks = Vec::new();
    let output = if let Some(client) = client {
        let spec = StreamSpec {
            name: cfg.signals.stream.clone(),
            subjects: vec!["catalyst.signals.>".to_owned()],
            max_age: Duration::from_secs(cfg.signals.max_age_s),
        };
        let (queue, task) = nats::spawn_export(
            client,
            spec,
            cfg.signals.buffer,
            |s: Signal| Some((s.nats_subject(), serde_json::to_vec(&s).ok()?)),
            metrics,
        );
        tasks.push(task);
        Output::Nats(queue)
    } else {
        tracing::info!("NATS not configured: compliance signals are logged");
        Output::Log
    };
    let mut engine = Engine::new(&cfg.node, &cfg.nats.cluster, &cfg.signals, counts);
    let (tx, mut rx) = watch::channel(Arc::new(inputs));
    let interval = Duration::from_millis(cfg.signals.interval_ms.max(100));
    tasks.push(tokio::spawn(async move {
        engine.set_inputs(rx.borrow_and_update().clone());
        output.emit(engine.evaluate(Trigger::Start, Instant::now(), wall_ns()));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut window_start = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    let ms = u64::try_from(now.duration_since(window_start).as_millis()).unwrap_or(u64::MAX);
                    window_start = now;
                    engine.end_window(ms);
                    output.emit(engine.evaluate(Trigger::Window, now, wall_ns()));
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    engine.set_inputs(rx.borrow_and_update().clone());
                    output.emit(engine.evaluate(Trigger::Change, Instant::now(), wall_ns()));
                }
            }
        }
    }));
    Handle { inputs: tx, tasks }
}

#[cfg(test)]
mod tests;
