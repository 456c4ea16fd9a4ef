//! Failover state for the `failover(group, regions, fallback)` extension: the active region of
//! each failover group, as the controllers publish it in NATS KV `dns-failover` (one key per
//! group, JSON `{"active_region": …, "epoch": …, "lease_holder": …}`), or from a file in
//! standalone mode. A change bumps the answer version so cached answers are recomputed without
//! a reload.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tracing::{info, warn};

/// Failure reading a failover document.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// The file could not be read.
    #[error("failed to read failover file `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The document is not valid.
    #[error("invalid failover document `{what}`")]
    Parse {
        what: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// One group's record (the KV value).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct FailoverRecord {
    /// Region whose addresses are answered.
    #[serde(alias = "activeRegion", alias = "active")]
    pub active_region: String,
    /// Monotonic epoch of the switchover.
    #[serde(default)]
    pub epoch: u64,
    /// Lease holder that wrote the record.
    #[serde(default, alias = "leaseHolder")]
    pub lease_holder: Option<String>,
}

/// Parse a KV value: a JSON record or a bare region name.
pub fn parse_record(value: &[u8]) -> Option<FailoverRecord> {
    if let Ok(r) = serde_json::from_slice::<FailoverRecord>(value) {
        return Some(r);
    }
    let s = std::str::from_utf8(value).ok()?.trim().trim_matches('"');
    (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| FailoverRecord {
        active_region: s.to_string(),
        epoch: 0,
        lease_holder: None,
    })
}

/// Active regions by group.
#[derive(Debug)]
pub struct FailoverState {
    groups: RwLock<HashMap<String, FailoverRecord>>,
    version: Arc<AtomicU64>,
}

impl FailoverState {
    /// Empty state; `version` is bumped on every change.
    pub fn new(version: Arc<AtomicU64>) -> Self {
        Self {
            groups: RwLock::new(HashMap::new()),
            version,
        }
    }

    /// Active region of a group, if known.
    pub fn active(&self, group: &str) -> Option<String> {
        self.groups
            .read()
            .expect("lock")
            .get(group)
            .map(|r| r.active_region.clone())
    }

    /// Set (or with `None`, forget) a group's record.
    pub fn set(&self, group: &str, record: Option<FailoverRecord>) {
        let mut g = self.groups.write().expect("lock");
        let changed = match &record {
            Some(r) => g.insert(group.to_string(), r.clone()).as_ref() != Some(r),
            None => g.remove(group).is_some(),
        };
        drop(g);
        if changed {
            info!(
                group,
                active = record.as_ref().map(|r| r.active_region.as_str()),
                "failover state changed"
            );
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Replace all groups (file source).
    pub fn replace_all(&self, all: HashMap<String, FailoverRecord>) {
        let mut g = self.groups.write().expect("lock");
        if *g != all {
            *g = all;
            drop(g);
            self.version.fetch_add(1, Ordering::AcqRel);
            info!("failover state reloaded from file");
        }
    }
}

/// Read a file source: YAML/JSON map of group → record or region name.
pub fn read_file(path: &Path) -> Result<HashMap<String, FailoverRecord>, FailoverError> {
    let text = std::fs::read_to_string(path).map_err(|source| FailoverError::Read {
        path: path.display().to_string(),
        source,
    })?;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Record(FailoverRecord),
        Region(String),
    }
    let raw: HashMap<String, Entry> =
        serde_yaml::from_str(&text).map_err(|source| FailoverError::Parse {
            what: path.display().to_string(),
            source,
        })?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let r = match v {
                Entry::Record(r) => r,
                Entry::Region(s) => FailoverRecord {
                    active_region: s,
                    epoch: 0,
                    lease_holder: None,
                },
            };
            (k, r)
        })
        .collect())
}

/// Poll a file source for changes; a bad file keeps the previous state and logs why.
pub async fn watch_file(state: Arc<FailoverState>, path: PathBuf, every: Duration) {
    let mut last: Option<SystemTime> = None;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime != last {
            last = mtime;
            match read_file(&path) {
                Ok(all) => state.replace_all(all),
                Err(error) => warn!(%error, "failover file not applied; keeping previous state"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Watch NATS KV bucket `bucket` with history, so the current values arrive first, then every
/// change. Reconnects are handled by the client; on a lost watch we re-open it.
#[cfg(feature = "nats")]
pub async fn watch_kv(state: Arc<FailoverState>, client: async_nats::Client, bucket: String) {
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(client);
    loop {
        let store = match js.get_key_value(&bucket).await {
            Ok(s) => s,
            Err(error) => {
                warn!(%error, bucket, "failover KV bucket not available; using static fallbacks");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let mut watch = match store.watch_all_from_revision(1).await {
            Ok(w) => w,
            Err(error) => {
                warn!(%error, bucket, "failover KV watch failed");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) => match e.operation {
                    async_nats::jetstream::kv::Operation::Put => match parse_record(&e.value) {
                        Some(r) => state.set(&e.key, Some(r)),
                        None => warn!(key = e.key, "ignoring unparsable failover record"),
                    },
                    _ => state.set(&e.key, None),
                },
                Err(error) => {
                    warn!(%error, "failover KV watch error");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_versions() {
        let v = Arc::new(AtomicU64::new(0));
        let s = FailoverState::new(v.clone());
        assert_eq!(s.active("g"), None);
        s.set(
            "g",
            parse_record(br#"{"active_region":"eu","epoch":2,"lease_holder":"x"}"#),
        );
        assert_eq!(s.active("g").as_deref(), Some("eu"));
        assert_eq!(v.load(Ordering::Relaxed), 1);
        s.set(
            "g",
            parse_record(br#"{"active_region":"eu","epoch":2,"lease_holder":"x"}"#),
        );
        assert_eq!(v.load(Ordering::Relaxed), 1);
        s.set("g", parse_record(b"us"));
        assert_eq!(s.active("g").as_deref(), Some("us"));
    }
}
