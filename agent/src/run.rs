//! The agent's main loop and the small one-shot commands.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuArray};
use catalyst_policy::datapath::{
    COUNTER_REASONS, DIR_EGRESS, DIR_INGRESS, MAP_COUNTERS, STAT_AUDIT, STAT_CT_CREATED,
    STAT_CT_ENDED, STAT_CT_REEVALUATED, STAT_EVENTS_LOST, STAT_EVENTS_SENT, STAT_NO_ENDPOINT,
    STAT_NOT_POLICED, counter_index,
};

use crate::{
    api::flow::LostEventSource,
    config::AgentConfig,
    datapath::{self, Datapath, LoadOptions},
    flow::{Enricher, FlowRing, FlowSink, Pipeline, drop_reason_name, run_reader},
    metrics::Metrics,
    observer::{self, Listeners, ObserverService},
    signals::{self, FlowCounts},
    state::{self, Allocators, Snapshot},
};

fn sink_for(cfg: &AgentConfig) -> anyhow::Result<FlowSink> {
    Ok(match cfg.flow_log.as_str() {
        "stdout" => FlowSink::stdout(),
        "none" => FlowSink::None,
        path => FlowSink::json_file(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open flow log {path}"))?,
        ),
    })
}

fn watched(config_path: &Path, cfg: &AgentConfig) -> Vec<PathBuf> {
    let mut v = vec![config_path.to_owned()];
    v.extend(cfg.policy_paths.iter().cloned());
    v
}

/// Applies a snapshot: maps first (diff against what this process applied last, or against the
/// pinned maps on the first sync), then attachments. Returns the policy revision.
fn apply_snapshot(
    dp: &mut Datapath,
    previous: Option<&datapath::DesiredState>,
    snap: &Snapshot,
    first: bool,
) -> anyhow::Result<u32> {
    let report = datapath::apply_diff(dp, previous, &snap.desired, first)?;
    for iface in &snap.interfaces {
        if first || !dp_attached(dp, iface) {
            dp.attach(iface)?;
        }
    }
    let removed = dp.detach_others(&snap.interfaces)?;
    if first {
        tracing::info!(mode = ?dp.attach_mode(), "programs attached");
    }
    for r in removed {
        tracing::info!(link = %r, "detached from interface no longer configured");
    }
    tracing::info!(
        revision = report.revision,
        upserted = report.upserted,
        removed = report.removed,
        unchanged = report.unchanged,
        policies = snap.policies,
        endpoints = snap.interfaces.len(),
        recompiled = snap.stats.endpoints_recompiled,
        "datapath in sync"
    );
    for m in &snap.missing {
        tracing::warn!(interface = %m, "endpoint interface does not exist yet; retrying");
    }
    Ok(report.revision)
}

fn dp_attached(dp: &Datapath, iface: &str) -> bool {
    dp.is_attached(iface)
}

/// `catalyst-agent run`.
#[expect(
    clippy::too_many_lines,
    reason = "the main loop reads best in one place"
)]
pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let mut k8s = crate::k8s::Source::start_for(&AgentConfig::load(&config_path)?).await?;
    let mut alloc = Allocators::default();
    let (mut cfg, mut policies, snap) = reload(
        &config_path,
        &mut alloc,
        k8s.as_ref().map(crate::k8s::Source::current).as_deref(),
    )?;

    let mut dp = Datapath::load(&LoadOptions {
        pin_path: cfg.pin_path.clone(),
        sizes: cfg.maps.clone(),
        attach_mode: cfg.attach_mode,
    })?;
    tracing::info!(pin_path = %cfg.pin_path.display(), "datapath loaded");
    let revision = apply_snapshot(&mut dp, None, &snap, true)?;
    // What this process last wrote to the maps; `None` forces a re-read (after a failed apply).
    let mut applied = Some(snap.desired.clone());

    let metrics = Metrics::new(cfg.metrics.max_ports);
    if let Some(source) = &k8s {
        metrics.kubernetes.observe(&source.current().inputs);
    }
    metrics.datapath.set_revision(revision);
    metrics
        .datapath
        .set_policy_entries(snap.desired.policy_len());
    spawn_conntrack_gc(&cfg, &metrics)?;
    let ring = FlowRing::new(cfg.observer.ring_capacity);
    let enricher = Enricher::new(snap.enrich.clone());
    let events = dp
        .take_events()
        .context("event ring buffer already taken")?;
    // One NATS connection for flows and signals; it connects and reconnects in the background.
    let client = if let Some(url) = &cfg.nats.url {
        crate::nats::connect(url, &cfg.nats.auth())
            .await
            .inspect_err(|error| {
                tracing::error!(%error, %url, "invalid NATS configuration: nothing is exported");
            })
            .ok()
    } else {
        tracing::info!(subject = %crate::nats::subject(&cfg.nats.cluster, &cfg.node),
            "NATS not configured: flows are not exported");
        None
    };
    let (export, export_task) = client
        .clone()
        .map(|c| crate::nats::start_flows(c, &cfg.nats, &cfg.node, metrics.nats.clone()))
        .map_or((None, None), |(e, t)| (Some(e), Some(t)));
    let counts = Arc::new(FlowCounts::default());
    let signals = cfg.signals.enabled.then(|| {
        signals::start(
            &cfg,
            signals::Inputs::from_snapshot(&cfg, &snap, revision),
            client.clone(),
            counts.clone(),
            metrics.signals.clone(),
        )
    });
    let pipeline = Pipeline::new(
        enricher.clone(),
        sink_for(&cfg)?,
        ring.clone(),
        metrics.clone(),
    )
    .with_export(export)
    .with_counts(signals.is_some().then(|| counts.recorder()));
    let reader = tokio::spawn(run_reader(events, pipeline));
    let servers = start_servers(&cfg, &ring, &metrics).await;

    let mut fp = state::fingerprint(&watched(&config_path, &cfg));
    let mut missing = snap.missing.clone();
    let mut lost_seen = dp
        .counters()
        .ok()
        .and_then(|c| c.get(STAT_EVENTS_LOST as usize).copied())
        .unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.watch_interval_ms.max(50)));
    // inotify makes edits take effect at once; the poll above stays as the fallback.
    let mut files = match crate::watch::FileWatch::new(&watched(&config_path, &cfg)) {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(%error, "inotify unavailable; noticing file changes by polling only");
            None
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut lost_tick = tokio::time::interval(Duration::from_millis(
        cfg.observer.lost_events_interval_ms.max(100),
    ));
    let mut counters_tick = tokio::time::interval(Duration::from_millis(
        cfg.metrics.counters_interval_ms.max(100),
    ));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = counters_tick.tick() => {
                if let Ok(c) = dp.counters() {
                    metrics.datapath.update_counters(&c);
                }
                metrics.datapath.set_ring_flows(ring.len());
            }
            _ = lost_tick.tick() => {
                if let Ok(c) = dp.counters() {
                    let lost = c.get(STAT_EVENTS_LOST as usize).copied().unwrap_or(0);
                    if lost > lost_seen {
                        let n = lost - lost_seen;
                        tracing::warn!(lost = n, total = lost, "datapath events lost (ring buffer full)");
                        ring.push_lost(observer::lost_event(LostEventSource::PerfEventRingBuffer, n));
                        metrics.flows.lost("perf_event_ring_buffer", n);
                        lost_seen = lost;
                    }
                }
            }
            changed = async {
                match &files {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(error) = changed {
                    tracing::warn!(%error, "inotify failed; noticing file changes by polling only");
                    files = None;
                }
                tick.reset_immediately();
            }
            api_changed = next_wake(&mut tick, k8s.as_mut()) => {
                let now = state::fingerprint(&watched(&config_path, &cfg));
                let interfaces_appeared = missing.iter().any(|m| state::ifindex(m) != 0);
                if now == fp && !interfaces_appeared && !api_changed {
                    continue;
                }
                fp = now;
                if let Some(source) = &k8s {
                    metrics.kubernetes.observe(&source.current().inputs);
                }
                // In Kubernetes mode the change was observed when its first API event arrived.
                let observed = k8s
                    .as_ref()
                    .filter(|_| api_changed)
                    .map_or_else(std::time::Instant::now, |s| s.current().observed);
                // Compilation and map updates run on a blocking thread: flow reading, gRPC and
                // signals keep being served on the runtime while a large change is applied.
                let published = k8s.as_ref().map(crate::k8s::Source::current);
                let job = {
                    let config_path = config_path.clone();
                    let mut alloc = std::mem::take(&mut alloc);
                    let previous = applied.take();
                    let mut dp_owned = dp;
                    tokio::task::spawn_blocking(move || {
                        let outcome = match reload(&config_path, &mut alloc, published.as_deref()) {
                            Ok((new_cfg, new_policies, snap)) => {
                                match apply_snapshot(&mut dp_owned, previous.as_ref(), &snap, false) {
                                    Ok(revision) => Ok(Ok((new_cfg, new_policies, snap, revision))),
                                    Err(e) => Ok(Err(e)),
                                }
                            }
                            Err(e) => Err(e),
                        };
                        (dp_owned, alloc, previous, outcome)
                    })
                };
                let (dp_back, alloc_back, previous, outcome) =
                    job.await.context("policy update thread panicked")?;
                dp = dp_back;
                alloc = alloc_back;
                applied = previous;
                match outcome {
                    Ok(Err(e)) => {
                        tracing::error!(error = format!("{e:#}"), "applying the new state failed; will re-read the maps and retry");
                        applied = None;
                        fp.clear();
                    }
                    Ok(Ok((new_cfg, new_policies, snap, revision))) => {
                        if new_cfg.pin_path != cfg.pin_path || new_cfg.maps != cfg.maps {
                            tracing::warn!("pin_path and map sizes take effect after a restart");
                        }
                        if new_cfg.observer != cfg.observer || new_cfg.metrics != cfg.metrics
                            || new_cfg.nats != cfg.nats || new_cfg.signals != cfg.signals {
                            tracing::warn!("observer, metrics, nats and signals settings take effect after a restart");
                        }
                        metrics.datapath.set_revision(revision);
                        metrics.datapath.policy_applied(observed.elapsed(), snap.desired.policy_len());
                        // After the maps are updated (and outside the delay measured above).
                        if let Some(s) = &signals {
                            s.update(signals::Inputs::from_snapshot(&new_cfg, &snap, revision));
                        }
                        applied = Some(snap.desired.clone());
                        enricher.replace(snap.enrich.clone());
                        missing.clone_from(&snap.missing);
                        cfg = new_cfg;
                        policies = new_policies;
                        if let Some(w) = &mut files {
                            w.set(&watched(&config_path, &cfg));
                        }
                    }
                    Err(e) => {
                        metrics.datapath.policy_rejected();
                        tracing::error!(error = format!("{e:#}"), policies = policies.policies().len(),
                            "rejected configuration or policy change; the policy in force stays");
                    }
                }
            }
        }
    }
    reader.abort();
    if let Some(t) = export_task {
        t.abort();
    }
    if let Some(s) = &signals {
        s.abort();
    }
    for s in servers {
        s.abort();
    }
    tracing::info!(
        flows = metrics.processed(),
        "stopping; programs and maps stay pinned, enforcement continues"
    );
    Ok(())
}

/// Starts the conntrack garbage collector on a thread of its own (a sweep walks the whole table
/// through syscalls; it must not hold up the runtime).
fn spawn_conntrack_gc(cfg: &AgentConfig, metrics: &Metrics) -> anyhow::Result<()> {
    let mut gc = datapath::ConntrackGc::open(&cfg.pin_path)?;
    let every = Duration::from_millis(cfg.conntrack_gc_interval_ms.max(1_000));
    let metrics = metrics.datapath.clone();
    std::thread::Builder::new()
        .name("conntrack-gc".into())
        .spawn(move || {
            loop {
                let swept = gc.sweep();
                if let Ok(r) = &swept {
                    metrics.conntrack_swept(r.live, r.removed);
                    tracing::debug!(live = r.live, removed = r.removed, "conntrack swept");
                }
                if let Err(error) = &swept {
                    tracing::warn!(error = format!("{error:#}"), "conntrack sweep failed");
                }
                std::thread::sleep(every);
            }
        })
        .context("cannot start the conntrack garbage collector")?;
    Ok(())
}

/// Binds and spawns the Observer gRPC server and the metrics endpoint. A listener that cannot
/// be bound is logged and left out: observability never stops enforcement.
async fn start_servers(
    cfg: &AgentConfig,
    ring: &FlowRing,
    metrics: &Metrics,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    match Listeners::bind(
        cfg.observer.listen_address,
        cfg.observer.unix_socket.as_deref(),
    )
    .await
    {
        Ok(mut listeners) if listeners.tcp.is_some() || listeners.unix.is_some() => {
            // TLS that cannot be loaded never falls back to plaintext: the TCP listener is left
            // out (the UNIX socket still serves).
            let tls = match cfg
                .observer
                .tls
                .as_ref()
                .map(observer::tls_config)
                .transpose()
            {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::error!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "observer TCP listener not started"
                    );
                    listeners.tcp = None;
                    None
                }
            };
            let address = listeners
                .tcp_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            tracing::info!(tcp = %address, tls = tls.is_some(), unix = ?cfg.observer.unix_socket,
                ring = cfg.observer.ring_capacity, "observer API listening");
            let service =
                ObserverService::new(ring.clone(), &cfg.node, &address).with_config(&cfg.observer);
            tasks.push(tokio::spawn(async move {
                if let Err(error) = observer::serve(service, listeners, tls).await {
                    tracing::error!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "observer API stopped"
                    );
                }
            }));
        }
        Ok(_) => tracing::info!("observer API disabled"),
        Err(error) => tracing::error!(
            error = format!("{:#}", anyhow::Error::from(error)),
            "observer API not started; enforcement continues"
        ),
    }
    if let Some(addr) = cfg.metrics.listen_address {
        // Checked when the configuration was loaded.
        let limits = cfg.metrics.limits().unwrap_or_default();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "metrics listening on /metrics");
                let m = metrics.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(error) = crate::metrics::serve(l, m, limits).await {
                        tracing::error!(%error, "metrics endpoint stopped");
                    }
                }));
            }
            Err(error) => {
                tracing::error!(%error, %addr, "metrics endpoint not started; enforcement continues");
            }
        }
    }
    tasks
}

/// Waits for the next poll tick (`false`) or, in Kubernetes mode, a change of the API's
/// inputs (`true`), whichever comes first.
async fn next_wake(tick: &mut tokio::time::Interval, k8s: Option<&mut crate::k8s::Source>) -> bool {
    if let Some(source) = k8s {
        tokio::select! {
            _ = tick.tick() => false,
            () = source.changed() => true,
        }
    } else {
        tick.tick().await;
        false
    }
}

/// Environment variable naming the IP address the Observer gRPC and metrics listeners bind to,
/// in place of the configured one (ports stay as configured). The Helm chart sets it to the
/// pod's own address (`status.podIP`) so neither listener binds every address of the node.
pub const BIND_ADDRESS_ENV: &str = "CATALYST_BIND_ADDRESS";

/// Rebinds the TCP listeners of `cfg` to `ip` (the value of [`BIND_ADDRESS_ENV`]); unset or
/// empty leaves the configuration as it is.
pub fn bind_to(cfg: &mut AgentConfig, ip: Option<&str>) -> anyhow::Result<()> {
    let Some(ip) = ip.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .with_context(|| format!("{BIND_ADDRESS_ENV}=`{ip}` is not an IP address"))?;
    for addr in [
        cfg.observer.listen_address.as_mut(),
        cfg.metrics.listen_address.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        addr.set_ip(ip);
    }
    Ok(())
}

fn reload(
    config_path: &Path,
    alloc: &mut Allocators,
    k8s: Option<&crate::k8s::Published>,
) -> anyhow::Result<(AgentConfig, catalyst_policy::PolicySet, Snapshot)> {
    let mut cfg = AgentConfig::load(config_path)?;
    bind_to(&mut cfg, std::env::var(BIND_ADDRESS_ENV).ok().as_deref())?;
    let policies = alloc.load_policies(&cfg)?;
    let (cfg, policies) = match k8s {
        Some(published) => {
            alloc.set_cluster(published.identities.clone());
            crate::k8s::overlay(&cfg, policies, published)
        }
        None => (cfg, policies),
    };
    let snap = state::build(&cfg, &policies, alloc)?;
    Ok((cfg, policies, snap))
}

/// `catalyst-agent check`.
pub fn check(config: Option<&Path>, policies: &[PathBuf]) -> anyhow::Result<()> {
    let mut n = 0;
    if let Some(c) = config {
        let cfg = AgentConfig::load(c)?;
        let set = state::load_policies(&cfg)?;
        let snap = state::build(&cfg, &set, &mut Allocators::default())?;
        println!(
            "{}: ok ({} endpoints, {} policies, {} policy entries)",
            c.display(),
            cfg.endpoints.len(),
            set.policies().len(),
            snap.desired.policy_len()
        );
        n += 1;
    }
    if !policies.is_empty() {
        let set = catalyst_policy::PolicySet::load_files(policies)?;
        println!("{} policies ok", set.policies().len());
        n += 1;
    }
    anyhow::ensure!(
        n > 0,
        "nothing to check: pass --config FILE or policy paths"
    );
    Ok(())
}

/// `catalyst-agent counters`.
pub fn print_counters(pin_path: &Path, json: bool) -> anyhow::Result<()> {
    let path = pin_path.join("maps").join(MAP_COUNTERS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let c = datapath::read_counters_of(&map)?;
    let mut rows: Vec<(String, u64)> = Vec::new();
    for (dir, name) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
        for reason in 0..COUNTER_REASONS {
            let v = c[counter_index(dir, reason as u8) as usize];
            if v == 0 && reason != 0 {
                continue;
            }
            let what = if reason == 0 {
                "forwarded".to_owned()
            } else {
                format!("dropped {}", drop_reason_name(reason as u8))
            };
            rows.push((format!("{name} {what}"), v));
        }
    }
    for (slot, name) in [
        (STAT_CT_CREATED, "conntrack entries created"),
        (STAT_CT_REEVALUATED, "conntrack re-evaluations"),
        (STAT_CT_ENDED, "conntrack entries ended (timeout or reuse)"),
        (STAT_AUDIT, "audited (would drop)"),
        (STAT_EVENTS_SENT, "events sent"),
        (STAT_EVENTS_LOST, "events lost"),
        (STAT_NO_ENDPOINT, "packets without endpoint"),
        (STAT_NOT_POLICED, "packets not policed (ARP/ND)"),
    ] {
        rows.push((name.to_owned(), c[slot as usize]));
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = rows
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect();
        println!("{}", serde_json::Value::Object(obj));
    } else {
        for (k, v) in rows {
            println!("{k:<45} {v}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod bind_tests {
    use std::path::Path;

    use super::{AgentConfig, bind_to};

    fn cfg() -> AgentConfig {
        AgentConfig::parse(
            Path::new("agent.yaml"),
            "observer: {listen_address: 0.0.0.0:4244}\nmetrics: {listen_address: 0.0.0.0:9965}\n",
        )
        .unwrap()
    }

    #[test]
    fn bind_address_replaces_the_ip_of_both_listeners() {
        let mut c = cfg();
        bind_to(&mut c, Some("10.1.2.3")).unwrap();
        assert_eq!(
            c.observer.listen_address.unwrap().to_string(),
            "10.1.2.3:4244"
        );
        assert_eq!(
            c.metrics.listen_address.unwrap().to_string(),
            "10.1.2.3:9965"
        );
        let mut c = cfg();
        bind_to(&mut c, Some("fd00::7")).unwrap();
        assert_eq!(
            c.metrics.listen_address.unwrap().to_string(),
            "[fd00::7]:9965"
        );
    }

    #[test]
    fn bind_address_unset_keeps_the_config_and_garbage_is_an_error() {
        let mut c = cfg();
        bind_to(&mut c, None).unwrap();
        bind_to(&mut c, Some("")).unwrap();
        assert_eq!(
            c.observer.listen_address.unwrap().to_string(),
            "0.0.0.0:4244"
        );
        assert!(bind_to(&mut c, Some("node-1")).is_err());
    }
}
