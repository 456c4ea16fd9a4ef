//! The server: owns sockets, the catalog, the health checker and reloads.

pub mod message;
pub mod mmsg;
pub mod tcp;
pub mod udp;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    catalog::Catalog,
    config::Config,
    failover::{self, FailoverState},
    geo::GeoDb,
    health::{self, HealthEvent},
    metrics::DnsMetrics,
    zone::{Zone, ZoneError, ZoneSet, ZoneSource},
};

/// The server failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A zone did not load at start.
    #[error("zone failed to load")]
    Zone(#[from] ZoneError),
    /// Geo database.
    #[error("geo database failed to open")]
    Geo(#[from] crate::geo::GeoError),
    /// Socket.
    #[error("failed to bind `{addr}`")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The metrics listener.
    #[error(
        "failed to bind the metrics listener `{addr}` (setting `metrics.listen`: choose a free port, or null to disable)"
    )]
    MetricsBind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// NATS.
    #[error("failed to connect to NATS at `{url}`: {reason}")]
    Nats { url: String, reason: String },
    /// A limit of the metrics endpoint is out of range.
    #[error("invalid config: metrics.{0}")]
    MetricsLimits(catalyst_policy::http::LimitError),
}

/// Shared services zones are compiled against.
pub struct Services {
    /// Health registry.
    pub health: Arc<health::Registry>,
    /// Geo databases.
    pub geo: Option<Arc<GeoDb>>,
    /// Failover state.
    pub failover: Arc<FailoverState>,
    /// Answer version (health + failover).
    pub version: Arc<AtomicU64>,
}

impl Services {
    /// Build from config (opens geo databases).
    pub fn new(cfg: &Config) -> Result<Self, ServerError> {
        let version = Arc::new(AtomicU64::new(1));
        let health = Arc::new(health::Registry::new(cfg.health.clone(), version.clone()));
        let geo = if cfg.geo.city.is_some() || cfg.geo.asn.is_some() {
            Some(Arc::new(GeoDb::open(
                cfg.geo.city.as_deref(),
                cfg.geo.asn.as_deref(),
            )?))
        } else {
            None
        };
        let failover = Arc::new(FailoverState::new(version.clone()));
        Ok(Self {
            health,
            geo,
            failover,
            version,
        })
    }
}

/// Load every configured zone. With `previous`, a zone that fails keeps its previous version
/// (and the error is returned alongside); without, the first failure is fatal.
pub fn load_zones(
    cfg: &Config,
    svc: &Services,
    previous: Option<&ZoneSet>,
) -> Result<(ZoneSet, Vec<ZoneError>), ZoneError> {
    let mut next_id = 0u32;
    let mut zones = Vec::new();
    let mut errors = Vec::new();
    for z in &cfg.zones {
        let loaded = Zone::load(ZoneSource {
            origin: &z.origin,
            file: &z.file,
            join: cfg.lua.chunk_join,
            health: svc.health.clone(),
            geo: svc.geo.clone(),
            failover: svc.failover.clone(),
            next_id: &mut next_id,
            strict: z.strict(&cfg.lua),
            exec_limit: cfg.lua.exec_limit,
        });
        match loaded {
            Ok(zone) => {
                // Logged once per load, with file:line and the construct.
                for f in &zone.lua_failures {
                    warn!(zone = %zone.origin_str, file = %f.file, line = f.line, owner = %f.owner, rtype = %f.rtype, error = %f.error, "LUA record failed to load; it answers SERVFAIL");
                }
                zones.push(Arc::new(zone));
            }
            Err(e) => {
                let prev = previous.and_then(|p| {
                    p.zones()
                        .iter()
                        .find(|old| {
                            old.origin_str.trim_end_matches('.')
                                == z.origin.trim_end_matches('.').to_ascii_lowercase()
                        })
                        .cloned()
                });
                match prev {
                    Some(old) => {
                        errors.push(e);
                        zones.push(old);
                    }
                    None if previous.is_some() => errors.push(e),
                    None => return Err(e),
                }
            }
        }
    }
    Ok((ZoneSet::new(zones), errors))
}

fn file_mtimes(cfg: &Config) -> HashMap<PathBuf, Option<SystemTime>> {
    cfg.zones
        .iter()
        .map(|z| {
            let m = std::fs::metadata(&z.file).and_then(|m| m.modified()).ok();
            (z.file.clone(), m)
        })
        .collect()
}

/// Reload all zones; failures keep the previous zone and are logged.
pub fn reload(cfg: &Config, svc: &Services, catalog: &Catalog) -> bool {
    let current = catalog.zones();
    match load_zones(cfg, svc, Some(&current)) {
        Ok((set, errors)) => {
            for e in &errors {
                error!(error = %e, "zone reload failed; previous version keeps serving");
            }
            let lua: usize = set.zones().iter().map(|z| z.lua_records).sum();
            let stat: usize = set.zones().iter().map(|z| z.static_records).sum();
            drop(current);
            catalog.metrics.zones_loaded(&set);
            catalog.replace(set);
            svc.health.prune();
            catalog.metrics.reload(errors.is_empty());
            info!(
                zones = catalog.zones().zones().len(),
                lua_records = lua,
                static_records = stat,
                failed = errors.len(),
                "zones reloaded"
            );
            errors.is_empty()
        }
        Err(e) => {
            error!(error = %e, "zone reload failed; previous version keeps serving");
            catalog.metrics.reload(false);
            false
        }
    }
}

#[cfg(feature = "nats")]
async fn connect_nats(n: &crate::config::NatsConfig) -> Result<async_nats::Client, ServerError> {
    catalyst_policy::nats::connect(&n.url, &n.auth(), "catalyst-dns", true)
        .await
        .map_err(|e| ServerError::Nats {
            url: n.url.clone(),
            reason: e.to_string(),
        })
}

/// Subject token of a zone: without the root dot, sanitised like every subject token of the
/// suite (a dot in the zone name cannot add a subject level).
fn subject_token(zone: &str) -> String {
    catalyst_policy::nats::subject_token(zone.trim_end_matches('.'))
}

/// Publish health events to NATS (or log them when NATS is not configured).
async fn publish_events(
    mut rx: mpsc::Receiver<HealthEvent>,
    prefix: String,
    #[cfg(feature = "nats")] client: Option<async_nats::Client>,
) {
    while let Some(ev) = rx.recv().await {
        let subject = format!("{prefix}.{}.{}", subject_token(&ev.zone), ev.target_token);
        let payload = serde_json::to_vec(&ev).unwrap_or_default();
        #[cfg(feature = "nats")]
        if let Some(c) = &client {
            if let Err(e) = c.publish(subject.clone(), payload.into()).await {
                warn!(error = %e, subject, "health event not published");
            }
            continue;
        }
        // The transition itself is logged once where it happens (`health transition`).
        debug!(subject, payload = %String::from_utf8_lossy(&payload), "health event (no NATS configured)");
    }
}

/// Run the server until SIGTERM/SIGINT.
#[expect(
    clippy::too_many_lines,
    reason = "start-up sequence reads top to bottom"
)]
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let svc = Services::new(&cfg)?;
    let mut registry = MetricsRegistry::default();
    let metrics = DnsMetrics::register(registry.sub_registry_with_prefix("catalyst_dns"));
    svc.health.set_metrics(metrics.health.clone());
    registry.sub_registry_with_prefix("catalyst_dns").register(
        "failover_stale_refused",
        "dns-failover values refused because their epoch is older than the one served",
        svc.failover.stale_refused.clone(),
    );

    // Failover state first, so zones compiled below answer from it immediately.
    if let Some(f) = &cfg.failover.file {
        match failover::read_file(f) {
            Ok(all) => svc.failover.replace_all(all),
            Err(e) => warn!(error = %e, "failover file not loaded; static fallbacks apply"),
        }
        tokio::spawn(failover::watch_file(
            svc.failover.clone(),
            f.clone(),
            Duration::from_secs(cfg.failover.poll_interval_secs.max(1)),
        ));
    }

    let (set, _) = load_zones(&cfg, &svc, None)?;
    for z in set.zones() {
        info!(zone = %z.origin_str, file = %z.file.display(), lua_records = z.lua_records, static_records = z.static_records, "zone loaded");
    }
    metrics.zones_loaded(&set);

    // Bounded: a check never waits for NATS, and a NATS outage costs at most
    // `health.events_buffer` events of memory; further events are dropped and counted.
    let (tx, rx) = mpsc::channel(cfg.health.events_buffer.max(1));
    svc.health.set_events(health::EventSink::new(
        tx,
        metrics.health.events_dropped.clone(),
    ));
    svc.health.start(&tokio::runtime::Handle::current());
    info!(checks = svc.health.len(), "health checks registered");

    #[cfg(feature = "nats")]
    let nats = match &cfg.nats {
        Some(n) => {
            let client = connect_nats(n).await?;
            tokio::spawn(failover::watch_kv(
                svc.failover.clone(),
                client.clone(),
                cfg.failover.bucket.clone(),
            ));
            Some(client)
        }
        None => None,
    };
    #[cfg(not(feature = "nats"))]
    if cfg.nats.is_some() {
        warn!("NATS configured but this build has no `nats` feature; running standalone");
    }
    let prefix = cfg.nats.as_ref().map_or_else(
        || "catalyst.health".to_string(),
        |n| n.health_subject.clone(),
    );
    tokio::spawn(publish_events(
        rx,
        prefix,
        #[cfg(feature = "nats")]
        nats,
    ));

    let catalog = Arc::new(
        Catalog::new(set, svc.version.clone(), metrics.clone(), cfg.lua.ecs)
            .with_witness(svc.failover.clone()),
    );

    let workers = if cfg.udp_workers == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        cfg.udp_workers
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut tcp_server = None;
    for addr in &cfg.listen {
        let cache = if cfg.cache.enabled {
            cfg.cache.max_entries
        } else {
            0
        };
        threads.extend(
            udp::spawn(
                &catalog,
                *addr,
                udp::Options {
                    workers,
                    cache_entries: cache,
                    ecs: cfg.lua.ecs,
                    batch: cfg.udp_batch,
                    gso: cfg.udp_gso,
                    shared_socket: cfg.udp_socket == crate::config::UdpSocketMode::Shared,
                },
                &stop,
            )
            .map_err(|source| ServerError::Bind {
                addr: addr.to_string(),
                source,
            })?,
        );
        info!(%addr, workers, "UDP listening");
    }
    if cfg.tcp {
        // One hickory-server per listen address so each handler knows its local address.
        let mut servers = Vec::new();
        for addr in &cfg.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let mut server =
                hickory_server::Server::new(tcp::CatalogHandler::new(catalog.clone(), addr.ip()));
            server.register_listener(listener, Duration::from_secs(cfg.tcp_timeout_secs), 64);
            info!(%addr, "TCP listening");
            servers.push(server);
        }
        tcp_server = Some(servers);
    }

    if let Some(addr) = cfg.metrics.listen {
        let registry = Arc::new(registry);
        let limits = cfg.metrics.limits().map_err(ServerError::MetricsLimits)?;
        let refusals = metrics.http.clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::MetricsBind {
                addr: addr.to_string(),
                source,
            })?;
        info!(%addr, "metrics endpoint listening");
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, registry, limits, refusals).await {
                error!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(
        |source| ServerError::Bind {
            addr: "SIGHUP".into(),
            source,
        },
    )?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ServerError::Bind {
            addr: "SIGTERM".into(),
            source,
        })?;
    let watch = cfg.reload.watch_interval_secs;
    let mut ticker = tokio::time::interval(Duration::from_secs(watch.max(1)));
    let mut mtimes = file_mtimes(&cfg);
    // A change the poller saw, waiting to stay unchanged for `settle` before it is loaded.
    let settle = Duration::from_millis(cfg.reload.settle_ms);
    let mut pending: Option<HashMap<PathBuf, Option<SystemTime>>> = None;
    let settle_timer = tokio::time::sleep(settle);
    tokio::pin!(settle_timer);
    let mut cfg = cfg;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                // Re-read the config's zone list too when we know the file; a bad config keeps the old one.
                if let Some(p) = &config_path {
                    match Config::load(p) {
                        Ok(new) => cfg.zones = new.zones,
                        Err(e) => error!(error = %e, "config reload failed; keeping the previous zone list"),
                    }
                }
                reload(&cfg, &svc, &catalog);
                mtimes = file_mtimes(&cfg);
                pending = None;
            }
            _ = ticker.tick(), if watch > 0 && pending.is_none() => {
                let now = file_mtimes(&cfg);
                if now != mtimes {
                    pending = Some(now);
                    settle_timer.as_mut().reset(tokio::time::Instant::now() + settle);
                }
            }
            () = &mut settle_timer, if pending.is_some() => {
                let now = file_mtimes(&cfg);
                if pending.as_ref() == Some(&now) {
                    info!("zone file changed: reloading");
                    mtimes = now;
                    pending = None;
                    reload(&cfg, &svc, &catalog);
                } else {
                    // Still being written: wait for it to settle.
                    pending = Some(now);
                    settle_timer.as_mut().reset(tokio::time::Instant::now() + settle);
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    if let Some(servers) = tcp_server {
        for mut s in servers {
            let _ = s.shutdown_gracefully().await;
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
