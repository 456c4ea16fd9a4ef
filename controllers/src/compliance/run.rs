//! The aggregator's shell: inputs (NATS consumers, files) → [`Aggregator`] → outputs (KV,
//! stream, metrics, SSE, standalone status files), debounced by `publish_interval_ms`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    aggregate::{Aggregator, Publication, Published, Tenants},
    config::ComplianceConfig,
    http::{Change, Hub},
    inputs::{self, now_ms},
    nats::{self, Inbound, Outputs},
    row::Source,
    score::GateState,
    status,
};
use crate::{metrics::Metrics, standalone, validate::Validator};

/// Where the Catalyst resources come from and where status goes (standalone mode).
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// Directory of Organization / Environment / `EnvironmentPolicy` manifests.
    pub resources: Option<PathBuf>,
    /// Output directory (`status/` is written under it).
    pub output: Option<PathBuf>,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dirs: &[Option<&Path>]) -> Fingerprint {
    let mut v = Vec::new();
    for d in dirs.iter().flatten() {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let md = e.metadata().ok();
            v.push((
                e.path(),
                md.as_ref().map_or(0, std::fs::Metadata::len),
                md.and_then(|m| m.modified().ok()),
            ));
        }
    }
    v.sort();
    v
}

/// Runs the aggregator in standalone mode (Catalyst resources, reports and workloads from
/// files) until `shutdown` changes. `ready` is called once the first scores are published
/// (after the NATS inputs have replayed).
///
/// # Errors
/// The listener cannot bind, or NATS cannot be set up.
pub async fn run(
    cfg: ComplianceConfig,
    files: Files,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    Box::pin(run_with(cfg, Resources::Files(files), metrics, shutdown)).await
}

/// Runs the aggregator in Kubernetes mode: reports, workloads, namespaces and the Catalyst
/// resources from the API server's watches; the compliance status patched into the
/// Environments and Organizations as `field_manager`. NATS inputs and outputs as configured.
///
/// # Errors
/// The listener cannot bind, or NATS cannot be set up.
pub async fn run_kubernetes(
    cfg: ComplianceConfig,
    client: kube::Client,
    field_manager: String,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for (key, dir) in [("reports", &cfg.reports), ("workloads", &cfg.workloads)] {
        if let Some(d) = dir {
            warn!(
                setting = key,
                path = %d.display(),
                "compliance.{key} is a standalone-mode setting: Kubernetes mode watches the API server and does not read it"
            );
        }
    }
    let k = KubeMode {
        watch: super::kube::Watch::start(&client),
        writer: super::kube::StatusWriter::new(client, field_manager),
        seen: None,
        tenants_seen: None,
        status_due: true,
        retry_at: None,
        last_errors: Vec::new(),
        rollups: std::collections::BTreeMap::new(),
    };
    Box::pin(run_with(
        cfg,
        Resources::Kube(Box::new(k)),
        metrics,
        shutdown,
    ))
    .await
}

/// Where the Catalyst resources, reports and workloads come from and where status goes.
enum Resources {
    Files(Files),
    Kube(Box<KubeMode>),
}

struct KubeMode {
    watch: super::kube::Watch,
    writer: super::kube::StatusWriter,
    /// The change counters of the last pass.
    seen: Option<(u64, u64)>,
    /// The Catalyst-resource counter the tenants were last computed at.
    tenants_seen: Option<u64>,
    /// The status must be (re)checked: a publication, a resource change, or a failed write.
    status_due: bool,
    /// After a failed write, not before (1 s).
    retry_at: Option<Instant>,
    last_errors: Vec<super::inputs::InputError>,
    /// The roll-up documents last published (status checks between publications).
    rollups: std::collections::BTreeMap<String, super::aggregate::ScoreDoc>,
}

impl KubeMode {
    fn status_retry_due(&self) -> bool {
        self.status_due && self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    fn status_written(&mut self, ok: bool) {
        self.status_due = !ok;
        self.retry_at = (!ok).then(|| Instant::now() + Duration::from_secs(1));
    }

    /// Re-derives the rows when a watched object changed. The whole set is re-evaluated (as the
    /// file pass does), so a deleted object's rows go with it.
    fn pass(&mut self, agg: &mut Aggregator, m: &super::ComplianceMetrics) {
        if !self.watch.synced() {
            return;
        }
        let now_gen = self.watch.generations();
        if self.seen == Some(now_gen) {
            return;
        }
        let objects_changed = self.seen.map(|s| s.0) != Some(now_gen.0);
        let mut tenants_changed = false;
        if self.tenants_seen != Some(now_gen.1) {
            // Also the watch echo of a status write: the tenants are compared, and the rows
            // re-derived only when they differ.
            let t = self.watch.tenants();
            if self.tenants_seen.is_none() || t != *agg.tenants() {
                agg.set_tenants(t);
                tenants_changed = true;
            }
            self.tenants_seen = Some(now_gen.1);
            self.status_due = true;
        }
        self.seen = Some(now_gen);
        if !objects_changed && !tenants_changed {
            return;
        }
        let (reports, workloads) = self.watch.documents();
        let cfg = agg.config();
        let (eval, report_rows, errors) = inputs::object_rows(
            &reports,
            &workloads,
            &cfg.evaluators,
            agg.tenants(),
            &cfg.default_sovereign,
        );
        super::kube::report_errors(&errors, &mut self.last_errors, m);
        m.rows("evaluator", eval.len() as u64);
        m.rows("policy-report", report_rows.len() as u64);
        let now = now_ms();
        agg.replace_source(Source::Evaluator, eval, now);
        agg.replace_source(Source::PolicyReport, report_rows, now);
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the select loop over inputs, files and the publish tick reads as one piece"
)]
async fn run_with(
    cfg: ComplianceConfig,
    mut resources_from: Resources,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let files = match &resources_from {
        Resources::Files(f) => f.clone(),
        Resources::Kube(_) => Files::default(),
    };
    let m = metrics.compliance().clone();
    let hub = Arc::new(Hub::default());
    if let Some(addr) = cfg.listen_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("compliance.listen_address {addr}: cannot listen"))?;
        info!(address = %addr, "compliance dashboard on /, scores on /api/scores, SSE on /api/events");
        tokio::spawn(super::http::serve(
            listener,
            hub.clone(),
            cfg.limits().context("compliance: invalid HTTP limits")?,
            cfg.max_event_streams.max(1),
            m.http.clone(),
            shutdown.clone(),
        ));
    }
    let (tx, mut rx) = mpsc::channel::<Inbound>(65_536);
    let mut pending_sources: BTreeSet<Source> = BTreeSet::new();
    let mut outputs: Option<Outputs> = None;
    let mut published = Published::default();
    if let Some(n) = &cfg.nats {
        let (js, out) = nats::connect(n).await?;
        published = Published::with(out.existing().await?);
        info!(keys = published.values().len(), bucket = %n.bucket, "scores already in the KV");
        outputs = Some(out);
        let inputs_list = [
            (Source::Signal, nats::signals_input(n), n.consumer.clone()),
            (
                Source::Health,
                nats::health_input(n),
                format!("{}-health", n.consumer),
            ),
        ];
        for (source, (stream_cfg, deliver), durable) in inputs_list {
            pending_sources.insert(source);
            let (js, tx) = (js.clone(), tx.clone());
            tokio::spawn(async move {
                // An input that cannot start must not hold the others' scores back: it is
                // reported, counted as caught up, and retried.
                loop {
                    let r = nats::consume(
                        js.clone(),
                        stream_cfg.clone(),
                        durable.clone(),
                        deliver,
                        source,
                        tx.clone(),
                    )
                    .await;
                    match r {
                        Ok(()) => return,
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), source = source.as_str(), "input failed; retrying in 5 s");
                            if tx.send(Inbound::CaughtUp(source)).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
            });
        }
    }
    // The hub starts from what is published, so the dashboard shows it before the first pass.
    hub.apply(
        published
            .values()
            .iter()
            .map(|(k, v)| Change {
                key: k.clone(),
                doc: Some(v.clone()),
            })
            .collect(),
    )
    .await;

    let mut agg = Aggregator::new(cfg.clone());
    let validator = Validator::for_catalyst();
    let mut resources = standalone::Inputs::default();
    let mut last_fp: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.publish_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl_ms = cfg
        .nats
        .as_ref()
        .map_or(0, |n| i64::try_from(n.row_ttl_s).unwrap_or(0) * 1000);
    let mut first_publish = true;
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { continue };
                handle(&mut agg, msg, &m, &mut pending_sources);
                // Drain what is queued before scoring (bulk replay, bursts).
                while let Ok(msg) = rx.try_recv() {
                    handle(&mut agg, msg, &m, &mut pending_sources);
                }
            }
            _ = tick.tick() => {
                match &mut resources_from {
                    Resources::Files(files) => file_pass(files, &cfg, &mut agg, &validator, &mut resources, &mut last_fp, &m),
                    Resources::Kube(k) => k.pass(&mut agg, &m),
                }
                if ttl_ms > 0 {
                    agg.expire(Source::Signal, now_ms() - ttl_ms);
                }
                let kube_synced = match &resources_from {
                    Resources::Kube(k) => k.watch.synced(),
                    Resources::Files(_) => true,
                };
                if !pending_sources.is_empty() || !kube_synced {
                    continue;
                }
                if !(agg.is_dirty() || first_publish) {
                    if let Resources::Kube(k) = &mut resources_from && k.status_retry_due() {
                        let ok = k.writer.write(&k.watch, &k.rollups, &m).await;
                        k.status_written(ok);
                    }
                    continue;
                }
                first_publish = false;
                let started = Instant::now();
                let publication = agg.publication();
                let changes = published.diff(&publication.entries);
                m.scored(started.elapsed().as_secs_f64());
                m.set_held(agg.rows());
                if !changes.is_empty() {
                    publish(&changes, &publication, outputs.as_ref(), &hub, &m, &files).await;
                }
                if let Resources::Kube(k) = &mut resources_from {
                    if !changes.is_empty() || k.status_retry_due() {
                        let ok = k.writer.write(&k.watch, &publication.rollups, &m).await;
                        k.status_written(ok);
                    }
                    k.rollups = publication.rollups;
                }
                metrics.set_ready(true);
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Re-reads the standalone files when the directories changed.
fn file_pass(
    files: &Files,
    cfg: &ComplianceConfig,
    agg: &mut Aggregator,
    validator: &Validator,
    resources: &mut standalone::Inputs,
    last_fp: &mut Option<Fingerprint>,
    m: &super::ComplianceMetrics,
) {
    let fp = fingerprint(&[
        files.resources.as_deref(),
        cfg.reports.as_deref(),
        cfg.workloads.as_deref(),
    ]);
    if last_fp.as_ref() == Some(&fp) {
        return;
    }
    if let Some(dir) = &files.resources {
        let (next, errors) = standalone::load(dir, validator, resources);
        for e in &errors {
            warn!(error = %e, "compliance: resource refused");
        }
        *resources = next;
        agg.set_tenants(Tenants::from_resources(
            &resources.organizations,
            &resources.environments,
            &resources.environment_policies,
        ));
    }
    let (eval, reports, errors) = inputs::file_rows(
        cfg.reports.as_deref(),
        cfg.workloads.as_deref(),
        &cfg.evaluators,
        agg.tenants(),
        &cfg.default_sovereign,
    );
    for e in &errors {
        m.invalid(if e.input.contains("report") {
            "policy-report"
        } else {
            "file"
        });
        warn!(error = %e, "compliance: input refused");
    }
    m.rows("evaluator", eval.len() as u64);
    m.rows("policy-report", reports.len() as u64);
    let now = now_ms();
    agg.replace_source(Source::Evaluator, eval, now);
    agg.replace_source(Source::PolicyReport, reports, now);
    *last_fp = Some(fp);
}

fn handle(
    agg: &mut Aggregator,
    msg: Inbound,
    m: &super::ComplianceMetrics,
    pending: &mut BTreeSet<Source>,
) {
    match msg {
        Inbound::CaughtUp(s) => {
            if pending.remove(&s) {
                info!(source = s.as_str(), "replay complete");
            }
        }
        Inbound::Message {
            source,
            subject,
            payload,
            at_ms,
            caught_up,
        } => {
            let cfg = agg.config();
            let row = match source {
                Source::Health => inputs::health_row(
                    &subject,
                    &payload,
                    &cfg.health_targets,
                    agg.tenants(),
                    &cfg.default_sovereign,
                ),
                _ => inputs::signal_row(&subject, &payload, agg.tenants(), &cfg.default_sovereign)
                    .map(Some),
            };
            match row {
                Ok(Some(r)) => {
                    m.rows(source.as_str(), 1);
                    agg.ingest(r, at_ms);
                }
                Ok(None) => {}
                Err(e) => {
                    m.invalid(source.as_str());
                    warn!(error = %e, "input refused");
                }
            }
            if caught_up && pending.remove(&source) {
                info!(source = source.as_str(), "replay complete");
            }
        }
    }
}

async fn publish(
    changes: &[(String, Option<Bytes>)],
    publication: &Publication,
    outputs: Option<&Outputs>,
    hub: &Hub,
    m: &super::ComplianceMetrics,
    files: &Files,
) {
    if let Some(out) = outputs {
        let writes: Vec<_> = changes
            .iter()
            .map(|(k, v)| {
                let (out, k, v) = (out.clone(), k.clone(), v.clone());
                async move { out.write(&k, v.as_ref()).await }
            })
            .collect();
        let results: Vec<(bool, bool)> = futures_util::stream::iter(writes)
            .buffered(64)
            .collect()
            .await;
        for (kv, stream) in results {
            m.wrote("kv", kv);
            m.wrote("stream", stream);
        }
    }
    let mut hub_changes = Vec::with_capacity(changes.len());
    for (k, v) in changes {
        let entry = publication.entries.get(k);
        m.set_score(
            entry.map_or("", |e| e.level),
            k,
            entry.and_then(|e| e.score),
        );
        if let Some(g) = entry.and_then(|e| e.gate) {
            m.set_gate(
                k,
                match g {
                    GateState::Pass => 1,
                    GateState::Fail => 0,
                    GateState::Disabled | GateState::Pending => -1,
                },
            );
        }
        hub_changes.push(Change {
            key: k.clone(),
            doc: v.clone(),
        });
    }
    hub.apply(hub_changes).await;
    if let Some(out) = &files.output {
        match status::write(out, &publication.rollups) {
            Ok(n) => {
                for _ in 0..n {
                    m.wrote("status", true);
                }
            }
            Err(e) => {
                m.wrote("status", false);
                warn!(error = %format!("{e:#}"), "cannot write status files");
            }
        }
    }
}
