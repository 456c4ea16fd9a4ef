//! The shared ipcache: pods of other nodes learnt through a NATS KV bucket instead of a watch of
//! every pod of the cluster on the API server (`kubernetes.remote_pods: shared`).
//!
//! Each agent publishes its own node's pods and watches the bucket for everybody else's — the
//! idea of Cilium's kvstore mode, on the NATS server the suite already runs. Bucket
//! `catalyst-ipcache` (`kubernetes.ipcache.bucket`), history 1, keys:
//!
//! - `pod.<node>.<namespace>.<pod>`: value = JSON [`PodEntry`] (addresses, the identity labels a
//!   remote agent needs — namespace labels and service account included —, node, `namespace/pod`).
//!   Put when the pod appears or changes, deleted when it goes. Every token goes through
//!   [`subject_token`]; Kubernetes names never contain `_`, so the mapping is one-to-one.
//! - `node.<node>`: the node's heartbeat, put every `heartbeat_s`. A pod entry counts only while
//!   its node's heartbeat is younger than `node_ttl_s`, measured against the newest heartbeat in
//!   the bucket (the server's clock; while NATS is unreachable nothing ages out): the entries of a
//!   node whose agent is gone leave every other ipcache within `node_ttl_s + heartbeat_s` (the
//!   check runs every `heartbeat_s`), without any other agent writing to the bucket.
//!
//! The bucket's `max_age` (`max_age_s`, one day by default) bounds its storage: entries of nodes
//! that never come back are removed by the server; each agent puts its entries again every
//! `max_age_s / 2` so live pods never age out. An agent that starts reads the bucket first, then
//! deletes the entries of its node that no longer have a pod (pods that went while it was down)
//! and puts what changed.
//!
//! The watch is a `JetStream` ordered consumer (last value per key, then every change); when it
//! fails the agent watches again from scratch and swaps the new state in once it has caught up,
//! so remote peers do not disappear during a resync. NATS absent at start is retried (1 s
//! doubling to 30 s).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, kv};
use catalyst_policy::nats::subject_token;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::config::PeerConfig;

/// Default bucket name.
pub const BUCKET: &str = "catalyst-ipcache";
/// Largest value the bucket accepts, bytes (a pod with a few hundred labels fits).
const MAX_VALUE_BYTES: i32 = 64 * 1024;

/// `kubernetes.ipcache:` — the shared ipcache.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpcacheConfig {
    /// NATS KV bucket of the shared ipcache. Default `catalyst-ipcache`.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// How often this node's heartbeat is put, seconds. Default 30.
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    /// A node whose heartbeat is older than this is gone: its pods leave the ipcache, seconds.
    /// Worst-case staleness of a dead node's entries is `node_ttl_s + heartbeat_s`. Default 120.
    #[serde(default = "default_node_ttl_s")]
    pub node_ttl_s: u64,
    /// The bucket's `max_age` (set when this agent creates the bucket): entries of nodes that
    /// never come back are removed by the server after it; live entries are put again every
    /// half of it, seconds. Default 86400.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
}

impl Default for IpcacheConfig {
    fn default() -> Self {
        Self {
            bucket: default_bucket(),
            heartbeat_s: default_heartbeat_s(),
            node_ttl_s: default_node_ttl_s(),
            max_age_s: default_max_age_s(),
        }
    }
}

fn default_bucket() -> String {
    BUCKET.to_owned()
}
fn default_heartbeat_s() -> u64 {
    30
}
fn default_node_ttl_s() -> u64 {
    120
}
fn default_max_age_s() -> u64 {
    86_400
}

impl IpcacheConfig {
    /// Field (relative to `kubernetes.ipcache`) and reason of the first invalid setting.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.bucket.is_empty()
            || !self
                .bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                "bucket".to_owned(),
                format!(
                    "`{}` is not a valid bucket name (letters, digits, `-`, `_`)",
                    self.bucket
                ),
            ));
        }
        if self.heartbeat_s == 0 {
            return Err((
                "heartbeat_s".to_owned(),
                "0 is below the minimum of 1 second".to_owned(),
            ));
        }
        if self.node_ttl_s <= self.heartbeat_s {
            return Err((
                "node_ttl_s".to_owned(),
                format!(
                    "{} must be greater than heartbeat_s ({}): a live node would expire between \
                     two heartbeats",
                    self.node_ttl_s, self.heartbeat_s
                ),
            ));
        }
        if self.max_age_s <= 2 * self.node_ttl_s {
            return Err((
                "max_age_s".to_owned(),
                format!(
                    "{} must be greater than twice node_ttl_s ({})",
                    self.max_age_s, self.node_ttl_s
                ),
            ));
        }
        Ok(())
    }
}

/// What an agent publishes for one pod of its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodEntry {
    /// The node's name.
    pub node: String,
    /// `namespace/name`.
    pub pod: String,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// Identity labels, `source:key` → value (as `peers[].labels`).
    pub labels: BTreeMap<String, String>,
}

/// Key of a pod's entry.
#[must_use]
pub fn pod_key(node: &str, namespace: &str, name: &str) -> String {
    format!(
        "pod.{}.{}.{}",
        subject_token(node),
        subject_token(namespace),
        subject_token(name)
    )
}

/// Key of a node's heartbeat.
#[must_use]
pub fn node_key(node: &str) -> String {
    format!("node.{}", subject_token(node))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One pod entry as held: its peers are built once, when it arrives.
#[derive(Debug)]
struct Held {
    node: String,
    revision: u64,
    entry: PodEntry,
}

/// The bucket as this agent knows it.
#[derive(Debug, Default)]
pub struct BucketState {
    /// Pod entries by key (sorted, so peers come out in a stable order).
    pods: BTreeMap<String, Held>,
    /// Heartbeats: node token → put time (Unix seconds, the server's clock).
    heartbeats: HashMap<String, i64>,
    /// Entries that did not decode (logged once per key).
    rejected: usize,
}

impl BucketState {
    /// Applies one watched entry; whether anything changed.
    pub fn apply(
        &mut self,
        key: &str,
        delete: bool,
        value: &[u8],
        revision: u64,
        created: i64,
    ) -> bool {
        if let Some(node) = key.strip_prefix("node.") {
            if delete {
                return self.heartbeats.remove(node).is_some();
            }
            let before = self.heartbeats.insert(node.to_owned(), created);
            // A heartbeat changes the peers when it revives a node (the periodic check notices
            // the nodes it ages out).
            return before.is_none();
        }
        let Some(rest) = key.strip_prefix("pod.") else {
            return false;
        };
        if delete {
            return self.pods.remove(key).is_some();
        }
        let node = rest.split('.').next().unwrap_or_default();
        match decode(value) {
            Ok(entry) => {
                let changed = self.pods.get(key).is_none_or(|h| h.entry != entry);
                self.pods.insert(
                    key.to_owned(),
                    Held {
                        node: node.to_owned(),
                        revision,
                        entry,
                    },
                );
                changed
            }
            Err(error) => {
                self.rejected += 1;
                tracing::warn!(key, %error, "shared ipcache entry ignored");
                self.pods.remove(key).is_some()
            }
        }
    }

    /// The bucket's clock: the newest heartbeat (Unix seconds, the NATS server's clock). Ages
    /// are measured against it, not against this host's clock: while NATS is unreachable no
    /// heartbeat arrives and nothing ages out (the remote peers freeze instead of emptying), and
    /// clock skew between hosts does not matter. This node's own heartbeat keeps it moving.
    fn clock(&self) -> i64 {
        self.heartbeats.values().copied().max().unwrap_or(0)
    }

    /// Node tokens whose heartbeat is younger than `ttl` by the bucket's clock.
    fn live_nodes(&self, ttl: Duration) -> Vec<&str> {
        let now = self.clock();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut live: Vec<&str> = self
            .heartbeats
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) < ttl)
            .map(|(n, _)| n.as_str())
            .collect();
        live.sort_unstable();
        live
    }

    /// Peers of the pods of live nodes other than `me` (a node token). An address claimed by
    /// two entries (a pod on a node that died, its address reused elsewhere) goes to the newer.
    pub fn peers(&self, me: &str, ttl: Duration) -> Vec<PeerConfig> {
        let live = self.live_nodes(ttl);
        let mut by_ip: HashMap<IpAddr, (u64, &PodEntry)> = HashMap::new();
        let mut order: Vec<IpAddr> = Vec::new();
        for h in self.pods.values() {
            if h.node == me || live.binary_search(&h.node.as_str()).is_err() {
                continue;
            }
            for ip in &h.entry.ips {
                match by_ip.get_mut(ip) {
                    Some(slot) if slot.0 < h.revision => *slot = (h.revision, &h.entry),
                    Some(_) => {}
                    None => {
                        by_ip.insert(*ip, (h.revision, &h.entry));
                        order.push(*ip);
                    }
                }
            }
        }
        order
            .into_iter()
            .map(|ip| PeerConfig {
                prefix: ip.into(),
                entity: None,
                labels: by_ip[&ip].1.labels.clone(),
            })
            .collect()
    }

    /// Entries of node `me` (a node token): key → entry.
    fn own(&self, me: &str) -> impl Iterator<Item = (&String, &PodEntry)> {
        self.pods
            .iter()
            .filter(move |(_, h)| h.node == me)
            .map(|(k, h)| (k, &h.entry))
    }

    /// Pod entries held (every node).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod entry is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

fn decode(value: &[u8]) -> Result<PodEntry, String> {
    let entry: PodEntry = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if entry.ips.is_empty() {
        return Err("no address".to_owned());
    }
    // The labels must make a label set, or the whole snapshot would fail to compile.
    crate::state::label_set(&entry.labels, "shared ipcache entry").map_err(|e| e.to_string())?;
    Ok(entry)
}

/// The shared ipcache of one agent: the watch of the bucket and the publisher of this node's
/// pods. Dropping it stops both.
pub struct SharedIpcache {
    state: Arc<Mutex<BucketState>>,
    me: String,
    node_ttl: Duration,
    changed: Arc<Notify>,
    ready: watch::Receiver<bool>,
    desired: watch::Sender<Arc<BTreeMap<String, PodEntry>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SharedIpcache {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SharedIpcache {
    /// Starts watching the bucket and publishing for `node` on `client` (which may not be
    /// connected yet: everything is retried). Returns at once; see [`ready`](Self::ready).
    #[must_use]
    pub fn start(client: async_nats::Client, cfg: &IpcacheConfig, node: &str) -> Self {
        let state = Arc::new(Mutex::new(BucketState::default()));
        let changed = Arc::new(Notify::new());
        let (ready_tx, ready) = watch::channel(false);
        let (desired, desired_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (kv_tx, kv_rx) = watch::channel(None);
        let me = subject_token(node);
        let node_ttl = Duration::from_secs(cfg.node_ttl_s);
        let tasks = vec![
            tokio::spawn(watch_bucket(
                client,
                cfg.clone(),
                state.clone(),
                changed.clone(),
                ready_tx,
                kv_tx,
            )),
            tokio::spawn(publish(
                cfg.clone(),
                node.to_owned(),
                state.clone(),
                ready.clone(),
                kv_rx,
                desired_rx,
            )),
            tokio::spawn(expire(
                state.clone(),
                me.clone(),
                node_ttl,
                Duration::from_secs(cfg.heartbeat_s),
                changed.clone(),
            )),
        ];
        Self {
            state,
            me,
            node_ttl,
            changed,
            ready,
            desired,
            tasks,
        }
    }

    /// Waits until the bucket has been read once.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|ready| *ready).await;
    }

    /// Notified when the peers may have changed.
    #[must_use]
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Peers of other nodes' pods, now.
    ///
    /// # Panics
    /// When a thread panicked while holding the state (a bug).
    #[must_use]
    pub fn peers(&self) -> Vec<PeerConfig> {
        self.state
            .lock()
            .expect("shared ipcache state poisoned")
            .peers(&self.me, self.node_ttl)
    }

    /// Pod entries held (every node, live or not).
    ///
    /// # Panics
    /// When a thread panicked while holding the state (a bug).
    #[must_use]
    pub fn held(&self) -> usize {
        self.state
            .lock()
            .expect("shared ipcache state poisoned")
            .len()
    }

    /// This node's pods as they should be in the bucket (key → entry, see [`pod_key`]).
    pub fn publish(&self, entries: BTreeMap<String, PodEntry>) {
        self.desired.send_if_modified(|current| {
            if **current == entries {
                return false;
            }
            *current = Arc::new(entries);
            true
        });
    }
}

/// Opens (or creates) the bucket, retrying.
async fn open(client: &async_nats::Client, cfg: &IpcacheConfig) -> kv::Store {
    let js = jetstream::new(client.clone());
    let mut wait = Duration::from_secs(1);
    loop {
        let opened = match js.get_key_value(&cfg.bucket).await {
            Ok(kv) => Ok(kv),
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: cfg.bucket.clone(),
                    description: "Catalyst shared ipcache: pods of every node".to_owned(),
                    history: 1,
                    max_age: Duration::from_secs(cfg.max_age_s),
                    max_value_size: MAX_VALUE_BYTES,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        };
        match opened {
            Ok(kv) => return kv,
            Err(error) => {
                tracing::warn!(%error, bucket = %cfg.bucket,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "shared ipcache bucket not reachable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Reads the bucket, then follows it; on failure starts over (the old state stays in force
/// until the new read has caught up).
async fn watch_bucket(
    client: async_nats::Client,
    cfg: IpcacheConfig,
    state: Arc<Mutex<BucketState>>,
    changed: Arc<Notify>,
    ready: watch::Sender<bool>,
    kv_tx: watch::Sender<Option<kv::Store>>,
) {
    let mut wait = Duration::from_secs(1);
    loop {
        let kv = open(&client, &cfg).await;
        let _ = kv_tx.send(Some(kv.clone()));
        match follow(&kv, &state, &changed, &ready, &mut wait).await {
            Ok(()) => {
                tracing::warn!(bucket = %cfg.bucket, "shared ipcache watch ended; watching again");
            }
            Err(error) => {
                tracing::warn!(%error, bucket = %cfg.bucket, "shared ipcache watch failed; watching again");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

async fn follow(
    kv: &kv::Store,
    state: &Mutex<BucketState>,
    changed: &Notify,
    ready: &watch::Sender<bool>,
    wait: &mut Duration,
) -> Result<(), String> {
    let status = kv.status().await.map_err(|e| e.to_string())?;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    // Caught up: the bucket was empty, or an entry with nothing pending after it arrived.
    let mut fresh = Some(BucketState::default());
    let caught_up = |fresh: &mut Option<BucketState>| {
        if let Some(new) = fresh.take() {
            let mut s = state.lock().expect("shared ipcache state poisoned");
            *s = new;
            drop(s);
            ready.send_replace(true);
            changed.notify_one();
            tracing::info!(bucket = %status.bucket, "shared ipcache read");
        }
    };
    if status.info.state.messages == 0 {
        caught_up(&mut fresh);
    }
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        *wait = Duration::from_secs(1);
        let delete = !matches!(entry.operation, kv::Operation::Put);
        let created = entry.created.unix_timestamp();
        if let Some(new) = &mut fresh {
            new.apply(&entry.key, delete, &entry.value, entry.revision, created);
            if entry.delta == 0 {
                caught_up(&mut fresh);
            }
        } else if state.lock().expect("shared ipcache state poisoned").apply(
            &entry.key,
            delete,
            &entry.value,
            entry.revision,
            created,
        ) {
            changed.notify_one();
        }
    }
    Ok(())
}

/// Pokes `changed` when the set of live nodes changes (a node's heartbeat aged out).
async fn expire(
    state: Arc<Mutex<BucketState>>,
    me: String,
    ttl: Duration,
    every: Duration,
    changed: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        let live: Vec<String> = state
            .lock()
            .expect("shared ipcache state poisoned")
            .live_nodes(ttl)
            .into_iter()
            .filter(|n| *n != me)
            .map(str::to_owned)
            .collect();
        if live != before {
            for gone in before.iter().filter(|n| !live.contains(n)) {
                tracing::info!(node = %gone, "node heartbeat expired; its pods left the ipcache");
            }
            before = live;
            changed.notify_one();
        }
    }
}

/// Keeps this node's entries and heartbeat in the bucket.
async fn publish(
    cfg: IpcacheConfig,
    node: String,
    state: Arc<Mutex<BucketState>>,
    mut ready: watch::Receiver<bool>,
    mut kv_rx: watch::Receiver<Option<kv::Store>>,
    mut desired: watch::Receiver<Arc<BTreeMap<String, PodEntry>>>,
) {
    // The bucket is read first: what is there already is not put again, and entries of pods
    // that went while this agent was down are deleted.
    let _ = ready.wait_for(|r| *r).await;
    let Ok(kv) = kv_rx.wait_for(Option::is_some).await.map(|k| k.clone()) else {
        return;
    };
    let Some(mut kv) = kv else { return };
    let me = subject_token(&node);
    let mut published: HashMap<String, PodEntry> = state
        .lock()
        .expect("shared ipcache state poisoned")
        .own(&me)
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    let heartbeat_key = node_key(&node);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(cfg.heartbeat_s));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut republish = tokio::time::interval(Duration::from_secs(cfg.max_age_s / 2));
    republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    republish.tick().await;
    loop {
        if let Some(k) = kv_rx.borrow_and_update().clone() {
            kv = k;
        }
        let want = desired.borrow_and_update().clone();
        for (key, entry) in want.iter() {
            if published.get(key) == Some(entry) {
                continue;
            }
            let body = match serde_json::to_vec(entry) {
                Ok(b) => b,
                Err(error) => {
                    tracing::error!(key, %error, "cannot encode shared ipcache entry");
                    continue;
                }
            };
            match kv.put(key, body.into()).await {
                Ok(_) => {
                    published.insert(key.clone(), entry.clone());
                }
                Err(error) => {
                    tracing::warn!(key, %error, "cannot publish pod to the shared ipcache; retrying");
                }
            }
        }
        let gone: Vec<String> = published
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            match kv.delete(&key).await {
                Ok(()) => {
                    published.remove(&key);
                }
                Err(error) => {
                    tracing::warn!(key, %error, "cannot delete pod from the shared ipcache; retrying");
                }
            }
        }
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(error) = kv.put(&heartbeat_key, unix_now().to_string().into()).await {
                    tracing::warn!(%error, "cannot put the shared ipcache heartbeat; retrying");
                }
            }
            _ = republish.tick() => published.clear(),
            r = desired.changed() => if r.is_err() { return },
            _ = kv_rx.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, pod: &str, ip: &str, app: &str) -> Vec<u8> {
        serde_json::to_vec(&PodEntry {
            node: node.to_owned(),
            pod: pod.to_owned(),
            ips: vec![ip.parse().unwrap()],
            labels: BTreeMap::from([("k8s:app".to_owned(), app.to_owned())]),
        })
        .unwrap()
    }

    #[test]
    fn keys_are_valid_tokens_and_one_to_one() {
        assert_eq!(
            pod_key("node.a", "shop", "web-1.x"),
            "pod.node_a.shop.web-1_x"
        );
        assert_eq!(
            node_key("ip-10-0-0-1.ec2.internal"),
            "node.ip-10-0-0-1_ec2_internal"
        );
    }

    #[test]
    fn peers_are_the_live_remote_nodes_pods() {
        let ttl = Duration::from_mins(2);
        let mut s = BucketState::default();
        assert!(s.apply("node.n1", false, b"", 1, 1000));
        assert!(s.apply("node.n2", false, b"", 2, 1000));
        s.apply(
            "pod.n1.shop.web",
            false,
            &entry("n1", "shop/web", "10.0.1.5", "web"),
            3,
            1000,
        );
        s.apply(
            "pod.n2.shop.fe",
            false,
            &entry("n2", "shop/fe", "10.0.2.7", "fe"),
            4,
            1000,
        );
        s.apply(
            "pod.n3.shop.db",
            false,
            &entry("n3", "shop/db", "10.0.3.9", "db"),
            5,
            1000,
        );
        let p = s.peers("n1", ttl);
        // n1 is this node, n3 has no heartbeat.
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].prefix.to_string(), "10.0.2.7/32");
        assert_eq!(p[0].labels["k8s:app"], "fe");
        // n2's heartbeat ages out by the bucket's clock (n1's newer heartbeat), not by this
        // host's.
        s.apply("node.n1", false, b"", 6, 1000 + 119);
        assert_eq!(s.peers("n1", ttl).len(), 1);
        s.apply("node.n1", false, b"", 7, 1000 + 120);
        assert!(s.peers("n1", ttl).is_empty());
        s.apply("node.n2", false, b"", 8, 1000 + 120);
        assert_eq!(s.peers("n1", ttl).len(), 1);
        // Deleted → gone.
        assert!(s.apply("pod.n2.shop.fe", true, b"", 9, 1000));
        assert!(s.peers("n1", ttl).is_empty());
    }

    #[test]
    fn reused_address_goes_to_the_newer_entry_and_bad_entries_are_ignored() {
        let ttl = Duration::from_mins(2);
        let mut s = BucketState::default();
        s.apply("node.n2", false, b"", 1, 1000);
        s.apply("node.n3", false, b"", 2, 1000);
        s.apply(
            "pod.n3.a.new",
            false,
            &entry("n3", "a/new", "10.0.0.1", "new"),
            9,
            1000,
        );
        s.apply(
            "pod.n2.a.old",
            false,
            &entry("n2", "a/old", "10.0.0.1", "old"),
            3,
            1000,
        );
        let p = s.peers("n1", ttl);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].labels["k8s:app"], "new");
        assert!(!s.apply("pod.n2.a.bad", false, b"{not json", 10, 1000));
        let bad_labels = br#"{"node":"n2","pod":"a/x","ips":["10.0.0.2"],"labels":{"k8s:":"x"}}"#;
        assert!(!s.apply("pod.n2.a.x", false, bad_labels, 11, 1000));
        assert_eq!(s.rejected, 2);
        assert_eq!(s.peers("n1", ttl).len(), 1);
    }

    #[test]
    fn settings_are_checked_with_the_field_named() {
        let ok = IpcacheConfig::default();
        assert!(ok.validate().is_ok());
        let e = IpcacheConfig {
            node_ttl_s: 30,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "node_ttl_s");
        let e = IpcacheConfig {
            bucket: "a.b".into(),
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "bucket");
        let e = IpcacheConfig {
            max_age_s: 200,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "max_age_s");
    }

    #[test]
    fn remote_pods_modes_parse_and_shared_needs_nats() {
        use crate::{config::AgentConfig, k8s::RemotePods};
        let parse = |k8s: &str, nats: bool| {
            let nats = if nats {
                "nats:\n  url: nats://127.0.0.1:4222\n"
            } else {
                ""
            };
            AgentConfig::parse(
                std::path::Path::new("agent.yaml"),
                &format!("node: n1\nmode: kubernetes\n{nats}kubernetes:\n  {k8s}\n"),
            )
        };
        for (text, mode) in [
            ("remote_pods: true", RemotePods::Auto),
            ("remote_pods: false", RemotePods::None),
            ("remote_pods: watch", RemotePods::Watch),
            ("remote_pods: none", RemotePods::None),
            ("nodes: true", RemotePods::Auto),
        ] {
            assert_eq!(
                parse(text, false).unwrap().kubernetes.remote_pods,
                mode,
                "{text}"
            );
        }
        assert_eq!(RemotePods::Auto.resolve(true), RemotePods::Shared);
        assert_eq!(RemotePods::Auto.resolve(false), RemotePods::Watch);
        assert!(parse("remote_pods: shared", true).is_ok());
        let e = parse("remote_pods: shared", false).unwrap_err().to_string();
        assert!(
            e.contains("kubernetes.remote_pods") && e.contains("nats.url"),
            "{e}"
        );
        let e = parse("remote_pods: everything", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("remote_pods") && e.contains("`everything`"),
            "{e}"
        );
        let e = parse("ipcache:\n    heartbeat_s: 0", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubernetes.ipcache.heartbeat_s"), "{e}");
    }
}
