//! Failover state for the `failover(group, regions, fallback)` extension: the active region of
//! each failover group, as the controllers publish it in NATS KV `dns-failover` (one key per
//! group, JSON `{"active_region": …, "epoch": …, "lease_holder": …}`), or from a file in
//! standalone mode. A change bumps the answer version so cached answers are recomputed without
//! a reload.
//!
//! Epochs are fencing tokens (the Continuum lease revision under which the value was written):
//! a value whose epoch is older than the one already served for its group is refused, logged
//! and counted (`catalyst_dns_failover_stale_refused_total`), so DNS never goes back to an
//! older epoch — not after a delete either (the highest epoch seen per group is remembered).
//! Each instance serves what it holds as a TXT record `_continuum.<group>.<zone>` for
//! Continuum's witness quorum (see [`FailoverState::witness_txt`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::metrics::counter::Counter;
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
        source: serde_norway::Error,
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

/// Parse a KV value: a JSON record (docs/schemas/dns-failover.v1.json) or a bare region name
/// (letters, digits, `-`, `_`, `.`). Anything else — a record without a region, a negative
/// epoch, other JSON — is refused rather than read as a region name.
pub fn parse_record(value: &[u8]) -> Option<FailoverRecord> {
    // Only an object is a record (serde would also read a JSON array positionally).
    if value.trim_ascii_start().starts_with(b"{") {
        let r = serde_json::from_slice::<FailoverRecord>(value).ok()?;
        let ok = !r.active_region.is_empty() && !r.active_region.contains(char::is_whitespace);
        return ok.then_some(r);
    }
    let s = std::str::from_utf8(value).ok()?.trim().trim_matches('"');
    let token = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (!s.is_empty() && s.chars().all(token)).then(|| FailoverRecord {
        active_region: s.to_string(),
        epoch: 0,
        lease_holder: None,
    })
}

/// Active regions by group.
#[derive(Debug)]
pub struct FailoverState {
    groups: RwLock<Groups>,
    version: Arc<AtomicU64>,
    /// Values refused because their epoch is older than the one served.
    pub stale_refused: Counter,
}

#[derive(Debug, Default)]
struct Groups {
    records: HashMap<String, FailoverRecord>,
    /// Highest epoch seen per group (survives deletes).
    floor: HashMap<String, u64>,
}

impl Groups {
    /// Whether `r` may replace what `group` holds (its epoch is not older).
    fn admits(&self, group: &str, r: &FailoverRecord) -> bool {
        self.floor.get(group).is_none_or(|&f| r.epoch >= f)
    }

    fn insert(&mut self, group: &str, r: FailoverRecord) -> bool {
        let f = self.floor.entry(group.to_string()).or_insert(0);
        *f = (*f).max(r.epoch);
        let changed = self.records.get(group) != Some(&r);
        self.records.insert(group.to_string(), r);
        changed
    }
}

impl FailoverState {
    /// Empty state; `version` is bumped on every change.
    pub fn new(version: Arc<AtomicU64>) -> Self {
        Self {
            groups: RwLock::new(Groups::default()),
            version,
            stale_refused: Counter::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Groups> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Active region of a group, if known.
    pub fn active(&self, group: &str) -> Option<String> {
        self.read()
            .records
            .get(group)
            .map(|r| r.active_region.clone())
    }

    /// A group's whole record, if known.
    pub fn record(&self, group: &str) -> Option<FailoverRecord> {
        self.read().records.get(group).cloned()
    }

    /// The witness TXT string of a group: `active=<region> epoch=<n> holder=<id>` (holder `-`
    /// when unknown), or `None` for a group this instance has no record of.
    pub fn witness_txt(&self, group: &str) -> Option<String> {
        self.record(group).map(|r| {
            format!(
                "active={} epoch={} holder={}",
                r.active_region,
                r.epoch,
                r.lease_holder.as_deref().unwrap_or("-")
            )
        })
    }

    fn refuse(&self, group: &str, r: &FailoverRecord, floor: Option<u64>) {
        self.stale_refused.inc();
        warn!(
            group,
            epoch = r.epoch,
            served_epoch = floor,
            active = r.active_region,
            "refusing failover value with an older epoch than the one served"
        );
    }

    /// Set (or with `None`, forget) a group's record.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "callers hand over a fresh record"
    )]
    pub fn set(&self, group: &str, record: Option<FailoverRecord>) {
        let mut g = self
            .groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = match &record {
            Some(r) if !g.admits(group, r) => {
                let floor = g.floor.get(group).copied();
                drop(g);
                self.refuse(group, r, floor);
                return;
            }
            Some(r) => g.insert(group, r.clone()),
            None => g.records.remove(group).is_some(),
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

    /// Replace all groups (file source). A group whose new epoch is older than the one served
    /// keeps its record (refused and counted like a KV value).
    pub fn replace_all(&self, all: HashMap<String, FailoverRecord>) {
        let mut g = self
            .groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut refused = Vec::new();
        let mut next = HashMap::with_capacity(all.len());
        for (group, r) in all {
            if g.admits(&group, &r) {
                next.insert(group, r);
            } else if let Some(old) = g.records.get(&group) {
                refused.push((group.clone(), r, g.floor.get(&group).copied()));
                next.insert(group, old.clone());
            } else {
                refused.push((group, r, None));
            }
        }
        let changed = g.records != next;
        if changed {
            for (group, r) in &next {
                let f = g.floor.entry(group.clone()).or_insert(0);
                *f = (*f).max(r.epoch);
            }
            g.records = next;
        }
        drop(g);
        for (group, r, floor) in &refused {
            self.refuse(group, r, *floor);
        }
        if changed {
            self.version.fetch_add(1, Ordering::AcqRel);
            info!("failover state reloaded from file");
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Record(FailoverRecord),
    Region(String),
}

/// Read a file source: YAML/JSON map of group → record or region name.
pub fn read_file(path: &Path) -> Result<HashMap<String, FailoverRecord>, FailoverError> {
    let text = std::fs::read_to_string(path).map_err(|source| FailoverError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let raw: HashMap<String, Entry> =
        serde_norway::from_str(&text).map_err(|source| FailoverError::Parse {
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
                    async_nats::jetstream::kv::Operation::Put => {
                        if let Some(r) = parse_record(&e.value) {
                            state.set(&e.key, Some(r));
                        } else {
                            warn!(key = e.key, "ignoring unparsable failover record");
                        }
                    }
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
        // A bare region name has epoch 0: older than the served epoch 2, refused.
        s.set("g", parse_record(b"us"));
        assert_eq!(s.active("g").as_deref(), Some("eu"));
        assert_eq!(s.stale_refused.get(), 1);
        s.set(
            "g",
            parse_record(br#"{"active_region":"us","epoch":3,"lease_holder":"y"}"#),
        );
        assert_eq!(s.active("g").as_deref(), Some("us"));
        assert_eq!(
            s.witness_txt("g").as_deref(),
            Some("active=us epoch=3 holder=y")
        );
        assert_eq!(s.witness_txt("other"), None);
    }

    #[test]
    fn never_back_to_an_older_epoch_after_delete_or_file_reload() {
        let s = FailoverState::new(Arc::default());
        s.set("g", parse_record(br#"{"active_region":"eu","epoch":7}"#));
        s.set("g", None);
        assert_eq!(s.active("g"), None);
        s.set("g", parse_record(br#"{"active_region":"us","epoch":6}"#));
        assert_eq!(s.active("g"), None, "older epoch after a delete");
        s.replace_all(HashMap::from([(
            "g".to_string(),
            FailoverRecord {
                active_region: "us".into(),
                epoch: 5,
                lease_holder: None,
            },
        )]));
        assert_eq!(s.active("g"), None, "older epoch from the file");
        s.replace_all(HashMap::from([(
            "g".to_string(),
            FailoverRecord {
                active_region: "ap".into(),
                epoch: 8,
                lease_holder: None,
            },
        )]));
        assert_eq!(s.active("g").as_deref(), Some("ap"));
        assert_eq!(s.stale_refused.get(), 2);
    }

    /// What is neither a record with a region nor a bare region name is refused, not read as
    /// a region called `{"epoch":3}`.
    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            &br#"{"epoch":3}"#[..],
            br#"{"active_region":"eu","epoch":-1}"#,
            br#"{"active_region":"","epoch":1}"#,
            br#"["eu"]"#,
            b"eu west",
            b"",
        ] {
            assert_eq!(parse_record(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse_record(b" \"eu-west.1\" ").map(|r| r.active_region),
            Some("eu-west.1".into())
        );
    }
}
