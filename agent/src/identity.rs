//! Cluster-wide security identities in a NATS `JetStream` KV bucket (`catalyst-identities`).
//!
//! Keys:
//! - `id.<n>`: the claim of number `n`; value = the canonical label string. Created with
//!   compare-and-set (`create` fails when the key exists), so two label sets can never hold one
//!   number.
//! - `ls.<sha256 of labels>`: value = JSON `{id, labels, last_used}`. Also created with
//!   compare-and-set: when two allocators race for one label set, the one whose `ls.` create
//!   fails adopts the winner's number and gives its own claim back.
//!
//! Identities not used for a grace period are released by [`NatsAllocator::release_unused`]:
//! the `ls.` entry is deleted only at the revision that was read (a concurrent touch wins), then
//! the `id.` claim. Numbers start at a position derived from the label hash, so the same label
//! set tends to get the same number in every cluster.
//!
//! The compiler's allocator is synchronous; the agent resolves every label set here first and
//! hands the compiler a [`Resolved`] allocator built from the answers.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, kv};
use catalyst_policy::{
    IdentityAllocator, IdentityError, LabelSet,
    datapath::{IDENTITY_LOCAL_SCOPE, IDENTITY_USER_MIN},
    identity::reserved_identity,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Default bucket name (DESIGN.md §4.5).
pub const BUCKET: &str = "catalyst-identities";

/// Errors of the cluster allocator.
#[derive(Debug, thiserror::Error)]
pub enum ClusterIdentityError {
    /// A NATS operation failed.
    #[error("identity store: {op} failed: {message}")]
    Store {
        /// Operation.
        op: &'static str,
        /// Cause.
        message: String,
    },
    /// The store holds something that is not an identity record.
    #[error("identity store: key `{key}` holds an invalid record: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Why.
        message: String,
    },
    /// Every number of the label-set scope is taken.
    #[error("identity store: no free identity number")]
    Exhausted,
}

fn store_err(op: &'static str, e: impl std::fmt::Display) -> ClusterIdentityError {
    ClusterIdentityError::Store {
        op,
        message: e.to_string(),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: u32,
    labels: String,
    last_used: u64,
}

fn canonical(labels: &LabelSet) -> String {
    labels
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn digest(canonical: &str) -> [u8; 32] {
    Sha256::digest(canonical.as_bytes()).into()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Numbers handed out: [`IDENTITY_USER_MIN`], up to (not including) the local (CIDR) scope.
const SPAN: u32 = IDENTITY_LOCAL_SCOPE - IDENTITY_USER_MIN;

/// Allocates label-set identities cluster-wide.
#[derive(Clone)]
pub struct NatsAllocator {
    kv: kv::Store,
}

impl NatsAllocator {
    /// Opens (creating when missing) the identity bucket.
    /// [`open`](Self::open) on a client that may not be connected yet (see
    /// [`crate::nats::connect`]), retrying until it works: in Kubernetes mode NATS may come up
    /// after the agent, and the agent keeps trying instead of exiting. Waits `first` after the
    /// first failure, doubling up to 30 s.
    pub async fn open_retrying(
        client: async_nats::Client,
        bucket: &str,
        first: std::time::Duration,
    ) -> Self {
        let mut wait = first;
        loop {
            match Self::open(client.clone(), bucket).await {
                Ok(me) => return me,
                Err(error) => {
                    tracing::warn!(%error, bucket, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "identity bucket not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
    }

    /// Opens (or creates) the identity bucket.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
    ) -> Result<Self, ClusterIdentityError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| store_err("create bucket", e))?,
        };
        Ok(Self { kv })
    }

    /// The identity of `labels`, allocating one when the cluster has none yet. Reserved label
    /// sets (`reserved:host`, …) map to their reserved numbers without touching the store.
    pub async fn allocate(&self, labels: &LabelSet) -> Result<u32, ClusterIdentityError> {
        if let Some(id) = reserved_identity(labels) {
            return Ok(id);
        }
        let canon = canonical(labels);
        let d = digest(&canon);
        let ls_key = format!("ls.{}", hex(&d));
        if let Some(id) = self.lookup(&ls_key, &canon).await? {
            return Ok(id);
        }
        let start = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % SPAN;
        for step in 0..SPAN.min(4096) {
            let n = IDENTITY_USER_MIN + (start + step) % SPAN;
            let id_key = format!("id.{n}");
            match self.kv.create(&id_key, canon.clone().into()).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(store_err("claim number", e)),
            }
            let rec = Record {
                id: n,
                labels: canon.clone(),
                last_used: now_secs(),
            };
            let body = serde_json::to_vec(&rec).map_err(|e| store_err("encode record", e))?;
            match self.kv.create(&ls_key, body.into()).await {
                Ok(_) => return Ok(n),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Lost the race for this label set: adopt the winner's number, free ours.
                    let _ = self.kv.delete(&id_key).await;
                    return self
                        .lookup(&ls_key, &canon)
                        .await?
                        .ok_or_else(|| store_err("read winner", "label-set record vanished"));
                }
                Err(e) => {
                    let _ = self.kv.delete(&id_key).await;
                    return Err(store_err("record label set", e));
                }
            }
        }
        Err(ClusterIdentityError::Exhausted)
    }

    async fn lookup(&self, ls_key: &str, canon: &str) -> Result<Option<u32>, ClusterIdentityError> {
        let Some(raw) = self
            .kv
            .get(ls_key)
            .await
            .map_err(|e| store_err("read label set", e))?
        else {
            return Ok(None);
        };
        let rec: Record =
            serde_json::from_slice(&raw).map_err(|e| ClusterIdentityError::Corrupt {
                key: ls_key.to_owned(),
                message: e.to_string(),
            })?;
        if rec.labels != canon {
            return Err(ClusterIdentityError::Corrupt {
                key: ls_key.to_owned(),
                message: format!(
                    "hash collision: holds `{}`, asked for `{canon}`",
                    rec.labels
                ),
            });
        }
        Ok(Some(rec.id))
    }

    /// Marks `labels` as in use now (keeps it from being released).
    pub async fn touch(&self, labels: &LabelSet) -> Result<(), ClusterIdentityError> {
        let canon = canonical(labels);
        let ls_key = format!("ls.{}", hex(&digest(&canon)));
        let Some(entry) = self
            .kv
            .entry(&ls_key)
            .await
            .map_err(|e| store_err("read label set", e))?
        else {
            return Ok(());
        };
        let mut rec: Record =
            serde_json::from_slice(&entry.value).map_err(|e| ClusterIdentityError::Corrupt {
                key: ls_key.clone(),
                message: e.to_string(),
            })?;
        rec.last_used = now_secs();
        let body = serde_json::to_vec(&rec).map_err(|e| store_err("encode record", e))?;
        // A concurrent touch or release wins; either way the record is fresh or gone.
        let _ = self.kv.update(&ls_key, body.into(), entry.revision).await;
        Ok(())
    }

    /// Releases identities not used for `grace`; returns the numbers released.
    pub async fn release_unused(&self, grace: Duration) -> Result<Vec<u32>, ClusterIdentityError> {
        let cutoff = now_secs().saturating_sub(grace.as_secs());
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| store_err("list keys", e))?;
        let mut stale = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| store_err("list keys", e))?;
            if k.starts_with("ls.") {
                stale.push(k);
            }
        }
        let mut released = Vec::new();
        for key in stale {
            let Some(entry) = self
                .kv
                .entry(&key)
                .await
                .map_err(|e| store_err("read label set", e))?
            else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<Record>(&entry.value) else {
                continue;
            };
            if rec.last_used >= cutoff {
                continue;
            }
            if self
                .kv
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .is_ok()
            {
                self.kv
                    .delete(format!("id.{}", rec.id))
                    .await
                    .map_err(|e| store_err("release number", e))?;
                released.push(rec.id);
            }
        }
        Ok(released)
    }

    /// Resolves every label set; the result serves the compiler synchronously.
    pub async fn resolve<'a>(
        &self,
        label_sets: impl IntoIterator<Item = &'a LabelSet>,
    ) -> Result<Resolved, ClusterIdentityError> {
        let mut map = BTreeMap::new();
        for l in label_sets {
            if !map.contains_key(l) {
                map.insert(l.clone(), self.allocate(l).await?);
            }
        }
        Ok(Resolved { map })
    }
}

/// A synchronous allocator over identities resolved in advance by [`NatsAllocator::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    map: BTreeMap<LabelSet, u32>,
}

impl FromIterator<(LabelSet, u32)> for Resolved {
    fn from_iter<T: IntoIterator<Item = (LabelSet, u32)>>(iter: T) -> Self {
        Self {
            map: iter.into_iter().collect(),
        }
    }
}

impl Resolved {
    /// Label set → identity, for every label set resolved.
    pub fn entries(&self) -> &BTreeMap<LabelSet, u32> {
        &self.map
    }
}

impl IdentityAllocator for Resolved {
    fn allocate(&mut self, labels: &LabelSet) -> Result<u32, IdentityError> {
        if let Some(id) = reserved_identity(labels) {
            return Ok(id);
        }
        self.map
            .get(labels)
            .copied()
            .ok_or(IdentityError::Exhausted {
                scope: "cluster (label set not resolved in advance)",
            })
    }
}

#[cfg(test)]
mod retry_tests {
    use std::time::Duration;

    use catalyst_tests::require::{Need, require};

    use super::NatsAllocator;
    use crate::nats::test_server::NatsServer;

    /// Issue 16 item 2: in Kubernetes mode NATS absent at start must not stop the agent; it keeps
    /// retrying and opens the identity bucket once the server is up.
    #[tokio::test]
    async fn identities_open_once_nats_comes_up_needs_nats_server() {
        if !require(
            "identities_open_once_nats_comes_up_needs_nats_server",
            &[Need::NatsServer],
        ) {
            return;
        }
        let mut server = NatsServer::start("late");
        server.kill();
        let client =
            crate::nats::connect(&server.url(), &catalyst_policy::nats::NatsAuth::default())
                .await
                .expect("client");
        let opening = tokio::spawn(async move {
            NatsAllocator::open_retrying(client, "catalyst-identities", Duration::from_millis(200))
                .await
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!opening.is_finished(), "opened without a server");
        server.restart();
        tokio::time::timeout(Duration::from_secs(30), opening)
            .await
            .expect("opened within 30 s of the server starting")
            .expect("task");
    }
}
