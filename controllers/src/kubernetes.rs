//! Kubernetes mode: one client, leader election, and the controllers against the API server.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::{Client, runtime::events::Reporter};
use tracing::{error, info};

use crate::{
    compliance,
    config::Config,
    leader::{Elector, Held},
    metrics::Metrics,
    tenancy,
};

/// The controllers' identity in leases and Events: the pod name (downward API `POD_NAME`), else
/// the host name, with the process id.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "catalyst-controllers".into(), |s| s.trim().to_owned());
            format!("{host}-{}", std::process::id())
        })
}

async fn client(cfg: &Config) -> anyhow::Result<Client> {
    let config = match &cfg.kubernetes.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).with_context(|| {
                format!("kubernetes.kubeconfig `{}`: cannot read", path.display())
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubernetes.kubeconfig `{}`: invalid", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration and no kubeconfig")?,
    };
    Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Runs the controllers until `stop` fires. Losing the leader lease is an error (the process
/// exits and its replacement starts from a clean state, as controller-runtime does).
pub async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = client(&cfg).await?;
    let identity = identity();
    let le = &cfg.kubernetes.leader_election;
    let elector = if le.enabled {
        let ns = le
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "catalyst-system".into());
        let e = Elector::new(client.clone(), &ns, identity.clone(), le.clone());
        info!(identity = %identity, lease = %le.lease_name, namespace = %ns, "waiting to lead");
        if !e.acquire(&mut stop).await {
            return Ok(());
        }
        metrics.set_leader(true);
        Some(e)
    } else {
        None
    };
    let (ctl_stop_tx, ctl_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = Reporter {
        controller: "catalyst-controllers".into(),
        instance: Some(identity),
    };
    // The compliance aggregator runs on the leader only: one writer of the KV and the status.
    let compliance = cfg.compliance.enabled.then(|| {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(compliance::run_kubernetes(
            cfg.compliance.clone(),
            client.clone(),
            cfg.kubernetes.field_manager.clone(),
            metrics.clone(),
            stop_rx,
        ));
        (stop_tx, task)
    });
    let mut controllers = tokio::spawn({
        let client = client.clone();
        let tenancy_cfg = cfg.tenancy.clone();
        let fm = cfg.kubernetes.field_manager.clone();
        let resync = Duration::from_secs(cfg.kubernetes.resync_seconds);
        let metrics = metrics.clone();
        async move {
            if tenancy_cfg.enabled {
                metrics.set_ready(true);
                tenancy::kube::run(client, tenancy_cfg, fm, resync, metrics, reporter, async {
                    let _ = ctl_stop_rx.await;
                })
                .await;
            } else {
                let _ = ctl_stop_rx.await;
            }
        }
    });
    let lost = match &elector {
        Some(e) => {
            let mut stop2 = stop.clone();
            tokio::select! {
                held = e.hold(&mut stop2) => match held { Held::Stopped => None, Held::Lost(why) => Some(why) },
                _ = &mut controllers => None,
            }
        }
        None => {
            tokio::select! {
                _ = stop.changed() => None,
                _ = &mut controllers => None,
            }
        }
    };
    let _ = ctl_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), controllers).await;
    if let Some((stop_tx, task)) = compliance {
        let _ = stop_tx.send(true);
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Err(e))) => error!(error = %format!("{e:#}"), "compliance aggregator failed"),
            Ok(Err(e)) => error!(error = %e, "compliance aggregator panicked"),
            _ => {}
        }
    }
    metrics.set_leader(false);
    if let Some(why) = lost {
        error!(%why, "leader election lost; exiting");
        anyhow::bail!("leader election lost: {why}");
    }
    Ok(())
}
