//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics: a candidate
//! takes the lease when it is free or expired (`renewTime + leaseDurationSeconds` in the past),
//! the holder renews every retry period, updates use the lease's resourceVersion (optimistic
//! concurrency: a 409 means another candidate won), and a leader that cannot renew within the
//! renew deadline gives up. On shutdown the leader releases the lease so a standby takes over at
//! once instead of after the lease duration.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

use crate::config::LeaderElectionConfig;

/// A candidate for the lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    cfg: LeaderElectionConfig,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// A candidate named `identity` for the configured lease in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        identity: String,
        cfg: LeaderElectionConfig,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: cfg.lease_name.clone(),
            identity,
            cfg,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to acquire or renew. `Ok(true)` while this candidate holds the lease.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let duration = i32::try_from(self.cfg.lease_duration_seconds).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine {
            let held_for = spec.lease_duration_seconds.unwrap_or(duration);
            let expired = spec.renew_time.as_ref().is_none_or(|t| {
                t.0.checked_add(jiff::SignedDuration::from_secs(i64::from(held_for)))
                    .is_ok_and(|until| until < jiff::Timestamp::now())
            });
            if holder.is_some() && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(duration);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads (or `stop` fires: `false`).
    pub async fn acquire(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        let retry = Duration::from_secs(u64::from(self.cfg.retry_period_seconds));
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, lease = %self.name, "leader election: cannot read or write the lease");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Renews while leading; returns when the lease was lost (another holder, or no successful
    /// renewal within the renew deadline) or `stop` fired (then the lease is released).
    pub async fn hold(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> Held {
        let retry = Duration::from_secs(u64::from(self.cfg.retry_period_seconds));
        let deadline = Duration::from_secs(u64::from(self.cfg.renew_deadline_seconds));
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                _ = stop.changed() => {
                    self.release().await;
                    return Held::Stopped;
                }
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renew = Instant::now(),
                Ok(false) => return Held::Lost("another candidate holds the lease".into()),
                Err(e) => {
                    warn!(error = %e, "leader election: renewal failed");
                    if last_renew.elapsed() >= deadline {
                        return Held::Lost(format!("no renewal for {} s: {e}", deadline.as_secs()));
                    }
                }
            }
        }
    }

    /// Gives the lease up (holder cleared, duration 1 s) so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(e) => warn!(error = %e, "cannot release the leader lease"),
        }
    }
}

/// How leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// Shutdown requested; the lease was released.
    Stopped,
    /// The lease was lost.
    Lost(String),
}
