//! Kubernetes mode: endpoints, peers and policies from the API server.
//!
//! [`Source`] runs the watchers ([`watch`]), turns what they hold into the agent's inputs
//! ([`model`], interfaces through [`netlink`]) and publishes them; the main loop wakes on
//! [`Source::changed`] and compiles [`overlay`]'s result exactly as it compiles the files of
//! standalone mode. With NATS configured, label-set identities are allocated cluster-wide
//! ([`crate::identity::NatsAllocator`]) before they reach the compiler.

pub mod crd;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod shared;
pub mod watch;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use catalyst_policy::{Endpoint, LabelSet, PolicySet};
use serde::Deserialize;
use tokio::sync::{Notify, watch as channel};

pub use self::{
    metrics::KubernetesMetrics,
    model::{ClusterView, Inputs, Model, Rejected, Unresolved},
};
use crate::{
    config::AgentConfig,
    identity::{NatsAllocator, Resolved},
    k8s::netlink::RouteTable,
    state,
};

/// `kubernetes:` section of the agent configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Kubeconfig file (relative to the configuration file); `null` (the default) uses the
    /// in-cluster service account, or `$KUBECONFIG` / `~/.kube/config` outside a cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Environment variable holding this node's name (the Helm chart sets it from
    /// `spec.nodeName`); when unset or empty, the top-level `node` is used. Default `NODE_NAME`.
    #[serde(default = "default_node_name_env")]
    pub node_name_env: String,
    /// How pods of other nodes get their identity in the ipcache: `shared` (each agent publishes
    /// its own node's pods to the NATS KV bucket `ipcache.bucket` and learns the others' from it),
    /// `watch` (watch every pod of the cluster on the API server), `none` (only this node's pods
    /// and the configured `peers` are known), or `auto` (the default: `shared` when `nats.url`
    /// is set, else `watch`). The former `true` means `auto`, `false` means `none`.
    #[serde(default)]
    pub remote_pods: RemotePods,
    /// The shared ipcache (`remote_pods: shared`).
    #[serde(default)]
    pub ipcache: shared::IpcacheConfig,
    /// Watch nodes: this node's addresses get the `host` identity, other nodes' addresses
    /// `remote-node`. Default true.
    #[serde(default = "default_true")]
    pub nodes: bool,
    /// Quiet time after an API event before the inputs are rebuilt (coalesces bursts),
    /// milliseconds. Default 20.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// How often local pods whose interface was not found are looked up again, milliseconds.
    /// Default 1000.
    #[serde(default = "default_interface_retry_ms")]
    pub interface_retry_ms: u64,
    /// How often the API is asked again which policy CRDs (Cilium's, Catalyst's) are installed,
    /// seconds. Default 60.
    #[serde(default = "default_discovery_interval_s")]
    pub discovery_interval_s: u64,
    /// NATS KV bucket of cluster-wide identities (used when `nats.url` is set). Default
    /// `catalyst-identities`.
    #[serde(default = "default_identity_bucket")]
    pub identity_bucket: String,
    /// How often identities in use are marked as used in the bucket, seconds. Default 60.
    #[serde(default = "default_identity_touch_s")]
    pub identity_touch_s: u64,
    /// Identities no agent marked as used for this long are released, seconds. Default 900.
    #[serde(default = "default_identity_grace_s")]
    pub identity_grace_s: u64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            node_name_env: default_node_name_env(),
            remote_pods: RemotePods::Auto,
            ipcache: shared::IpcacheConfig::default(),
            nodes: true,
            debounce_ms: default_debounce_ms(),
            interface_retry_ms: default_interface_retry_ms(),
            discovery_interval_s: default_discovery_interval_s(),
            identity_bucket: default_identity_bucket(),
            identity_touch_s: default_identity_touch_s(),
            identity_grace_s: default_identity_grace_s(),
        }
    }
}

/// How remote pods' identities are learnt (`kubernetes.remote_pods`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RemotePods {
    /// `shared` with NATS, `watch` without.
    #[default]
    Auto,
    /// A watch of every pod of other nodes on the API server.
    Watch,
    /// The NATS KV ipcache ([`shared`]).
    Shared,
    /// Not learnt.
    None,
}

impl RemotePods {
    /// The mode in force: `auto` resolved by whether NATS is configured.
    #[must_use]
    pub fn resolve(self, nats_configured: bool) -> Self {
        match self {
            Self::Auto if nats_configured => Self::Shared,
            Self::Auto => Self::Watch,
            other => other,
        }
    }

    /// The configuration spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Watch => "watch",
            Self::Shared => "shared",
            Self::None => "none",
        }
    }
}

impl<'de> Deserialize<'de> for RemotePods {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected one of `auto`, `watch`, `shared`, `none` (or true / false)",
            )
        })? {
            Raw::Bool(true) => Ok(Self::Auto),
            Raw::Bool(false) => Ok(Self::None),
            Raw::Name(n) => match n.as_str() {
                "auto" => Ok(Self::Auto),
                "watch" => Ok(Self::Watch),
                "shared" => Ok(Self::Shared),
                "none" => Ok(Self::None),
                other => Err(serde::de::Error::custom(format!(
                    "unknown mode `{other}`: expected one of `auto`, `watch`, `shared`, `none` \
                     (or true / false)"
                ))),
            },
        }
    }
}

impl KubernetesConfig {
    /// Checks what serde cannot: `shared` needs NATS, the shared ipcache's timings are ordered.
    /// Returns the field and the reason.
    pub fn validate(&self, nats_configured: bool) -> Result<(), (String, String)> {
        if self.remote_pods == RemotePods::Shared && !nats_configured {
            return Err((
                "kubernetes.remote_pods".to_owned(),
                "`shared` needs a NATS server (`nats.url`); use `watch` without NATS".to_owned(),
            ));
        }
        self.ipcache
            .validate()
            .map_err(|(f, m)| (format!("kubernetes.ipcache.{f}"), m))
    }
}

fn default_node_name_env() -> String {
    "NODE_NAME".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_debounce_ms() -> u64 {
    20
}
fn default_interface_retry_ms() -> u64 {
    1000
}
fn default_discovery_interval_s() -> u64 {
    60
}
fn default_identity_bucket() -> String {
    crate::identity::BUCKET.to_owned()
}
fn default_identity_touch_s() -> u64 {
    60
}
fn default_identity_grace_s() -> u64 {
    900
}

/// This node's name in Kubernetes mode.
pub fn node_name(cfg: &AgentConfig) -> String {
    std::env::var(&cfg.kubernetes.node_name_env)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| cfg.node.clone())
}

/// What the source publishes: the inputs and, with NATS, their identities.
#[derive(Debug, Clone)]
pub struct Published {
    /// Endpoints, peers and policies from the API.
    pub inputs: Inputs,
    /// Cluster-wide identities of every label set in the inputs (`None` without NATS).
    pub identities: Option<Resolved>,
    /// When the first API event behind this publication arrived (the start of the policy
    /// implementation delay).
    pub observed: std::time::Instant,
}

impl Published {
    /// Inputs without identities, observed now.
    pub fn new(inputs: Inputs) -> Self {
        Self {
            inputs,
            identities: None,
            observed: std::time::Instant::now(),
        }
    }
}

/// The Kubernetes source of endpoints, peers and policies.
pub struct Source {
    rx: channel::Receiver<Arc<Published>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Source {
    /// Connects to the API server (and NATS for identities), starts the watchers and waits for
    /// their first complete view. `None` in standalone mode.
    pub async fn start_for(cfg: &AgentConfig) -> anyhow::Result<Option<Self>> {
        if cfg.mode != crate::config::Mode::Kubernetes {
            return Ok(None);
        }
        let client = client(&cfg.kubernetes).await?;
        let (identities, shared) = if let Some(url) = &cfg.nats.url {
            // Connects in the background and keeps retrying: NATS may start after the agent.
            let nats = crate::nats::connect(url.as_str(), &cfg.nats.auth())
                .await
                .with_context(|| format!("cannot connect to NATS at {url} for identities"))?;
            let shared =
                (cfg.kubernetes.remote_pods.resolve(true) == RemotePods::Shared).then(|| {
                    tracing::info!(bucket = %cfg.kubernetes.ipcache.bucket,
                        "remote pods from the shared ipcache (NATS KV)");
                    shared::SharedIpcache::start(
                        nats.clone(),
                        &cfg.kubernetes.ipcache,
                        &node_name(cfg),
                    )
                });
            let alloc = NatsAllocator::open_retrying(
                nats,
                &cfg.kubernetes.identity_bucket,
                std::time::Duration::from_secs(1),
            )
            .await;
            tracing::info!(bucket = %cfg.kubernetes.identity_bucket, "cluster-wide identities from NATS KV");
            (Some(alloc), shared)
        } else {
            tracing::info!("no NATS configured: identities are allocated locally");
            (None, None)
        };
        let source =
            Self::start_with(client, cfg, Arc::new(netlink::Netlink), identities, shared).await?;
        Ok(Some(source))
    }

    /// Starts on a given client and route table (tests use a mock API and a fake table), with
    /// remote pods learnt by watching the API server (or not at all); see
    /// [`start_with`](Self::start_with) for the shared ipcache.
    pub async fn start(
        client: kube::Client,
        cfg: &AgentConfig,
        table: Arc<dyn RouteTable + Send + Sync>,
        identities: Option<NatsAllocator>,
    ) -> anyhow::Result<Self> {
        Self::start_with(client, cfg, table, identities, None).await
    }

    /// [`start`](Self::start) with the shared ipcache, which `kubernetes.remote_pods` (resolved)
    /// `shared` needs.
    pub async fn start_with(
        client: kube::Client,
        cfg: &AgentConfig,
        table: Arc<dyn RouteTable + Send + Sync>,
        identities: Option<NatsAllocator>,
        shared: Option<shared::SharedIpcache>,
    ) -> anyhow::Result<Self> {
        let node = node_name(cfg);
        let mode = cfg.kubernetes.remote_pods.resolve(cfg.nats.url.is_some());
        if mode == RemotePods::Shared && shared.is_none() {
            anyhow::bail!(
                "kubernetes.remote_pods: `shared` needs the shared ipcache (a NATS server, `nats.url`)"
            );
        }
        let changed = Arc::new(Notify::new());
        let watchers = watch::Watchers::start(
            client,
            &cfg.kubernetes,
            mode == RemotePods::Watch,
            &node,
            changed.clone(),
        )
        .await;
        tracing::info!(node = %node, remote_pods = mode.as_str(),
            "waiting for the first complete view of the cluster");
        watchers.ready().await;
        if let Some(s) = &shared {
            s.ready().await;
        }
        let static_labels = static_label_sets(cfg);
        let mut builder = Builder {
            model: Model::default(),
            watchers,
            table,
            node,
            identities,
            shared,
            static_labels,
            unresolved: HashSet::new(),
            known: KnownIdentities::default(),
        };
        let first = builder.build(std::time::Instant::now()).await;
        let (tx, rx) = channel::channel(Arc::new(first));
        let k = cfg.kubernetes.clone();
        let mut tasks = Vec::new();
        if let Some(alloc) = builder.identities.clone() {
            tasks.push(tokio::spawn(identity_upkeep(alloc, rx.clone(), k.clone())));
        }
        tasks.push(tokio::spawn(builder.run(changed, tx, k)));
        Ok(Self { rx, tasks })
    }

    /// The latest inputs.
    pub fn current(&self) -> Arc<Published> {
        self.rx.borrow().clone()
    }

    /// Waits until the inputs change (never returns once the source stopped).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn client(cfg: &KubernetesConfig) -> anyhow::Result<kube::Client> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster service account and no kubeconfig")?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Label sets of the endpoints and peers configured in the file (they are compiled too).
fn static_label_sets(cfg: &AgentConfig) -> Vec<LabelSet> {
    let (endpoints, peers) = label_sets(&cfg.endpoints, &cfg.peers);
    endpoints.into_iter().chain(peers).collect()
}

/// The label sets the compiler will ask identities for: endpoints' identity labels, labelled
/// peers' labels (built exactly as `state::build` builds them).
fn label_sets(
    endpoints: &[crate::config::EndpointConfig],
    peers: &[crate::config::PeerConfig],
) -> (Vec<LabelSet>, Vec<LabelSet>) {
    let eps = endpoints
        .iter()
        .filter_map(|e| {
            let l = state::label_set(&e.labels, &e.name).ok()?;
            Some(Endpoint::new(0, &e.name, &e.namespace, l, Vec::new()).identity_labels())
        })
        .collect();
    let peers = peers
        .iter()
        .filter(|p| p.entity.is_none())
        .filter_map(|p| state::label_set(&p.labels, "peer").ok())
        .collect();
    (eps, peers)
}

struct Builder {
    model: Model,
    watchers: watch::Watchers,
    table: Arc<dyn RouteTable + Send + Sync>,
    node: String,
    identities: Option<NatsAllocator>,
    /// Remote pods from NATS KV (`remote_pods: shared`); this node's pods are published there.
    shared: Option<shared::SharedIpcache>,
    static_labels: Vec<LabelSet>,
    /// Local pods reported as without interface (each is logged once until found).
    unresolved: HashSet<String>,
    /// Identities this node resolved and still uses.
    known: KnownIdentities,
}

/// Identities already resolved through NATS. A number stays valid while it is in use: this node
/// marks the identities it uses every `identity_touch_s`, far inside the grace period after
/// which unused ones are released. So only label sets new to this node cost a round trip.
#[derive(Default)]
struct KnownIdentities {
    ids: BTreeMap<LabelSet, u32>,
}

impl KnownIdentities {
    async fn resolve(&mut self, alloc: &NatsAllocator, wanted: BTreeSet<&LabelSet>) -> Resolved {
        let missing: Vec<&LabelSet> = wanted
            .iter()
            .copied()
            .filter(|l| !self.ids.contains_key(*l))
            .collect();
        if !missing.is_empty() {
            match alloc.resolve(missing).await {
                Ok(r) => self
                    .ids
                    .extend(r.entries().iter().map(|(l, id)| (l.clone(), *id))),
                // The compiler then rejects the snapshot for want of an identity and the maps in
                // force stay; the next change retries.
                Err(error) => tracing::error!(%error, "cluster-wide identity allocation failed"),
            }
        }
        self.ids.retain(|l, _| wanted.contains(l));
        self.ids.iter().map(|(l, id)| (l.clone(), *id)).collect()
    }
}

impl Builder {
    async fn build(&mut self, observed: std::time::Instant) -> Published {
        let view = self.watchers.view();
        let mut inputs = self.model.build(&view, &self.node, self.table.as_ref());
        if let Some(shared) = &self.shared {
            shared.publish(model::shared_entries(&view, &self.node));
            inputs.peers.extend(shared.peers());
        }
        let unresolved: HashSet<String> = inputs.unresolved.iter().map(|u| u.pod.clone()).collect();
        for u in &inputs.unresolved {
            if !self.unresolved.contains(&u.pod) {
                tracing::warn!(pod = %u.pod, reason = %u.reason, "pod interface not found yet; retrying");
            }
        }
        for pod in self.unresolved.difference(&unresolved) {
            tracing::info!(%pod, "pod interface found (or pod gone)");
        }
        self.unresolved = unresolved;
        let identities = match &self.identities {
            Some(alloc) => {
                let (eps, peers) = label_sets(&inputs.endpoints, &inputs.peers);
                let all: BTreeSet<&LabelSet> = eps
                    .iter()
                    .chain(&peers)
                    .chain(&self.static_labels)
                    .collect();
                Some(self.known.resolve(alloc, all).await)
            }
            None => None,
        };
        Published {
            inputs,
            identities,
            observed,
        }
    }

    async fn run(
        mut self,
        changed: Arc<Notify>,
        tx: channel::Sender<Arc<Published>>,
        cfg: KubernetesConfig,
    ) {
        let mut retry =
            tokio::time::interval(Duration::from_millis(cfg.interface_retry_ms.max(50)));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rediscover =
            tokio::time::interval(Duration::from_secs(cfg.discovery_interval_s.max(1)));
        rediscover.tick().await;
        let mut unresolved = !tx.borrow().inputs.unresolved.is_empty();
        // Without the shared ipcache, a Notify nobody pokes.
        let shared_changed = self
            .shared
            .as_ref()
            .map_or_else(|| Arc::new(Notify::new()), shared::SharedIpcache::changed);
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = shared_changed.notified() => {}
                _ = retry.tick(), if unresolved => {}
                _ = rediscover.tick() => {
                    if self.watchers.discover_policy_kinds().await == 0 {
                        continue;
                    }
                }
            }
            let observed = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(cfg.debounce_ms)).await;
            let published = self.build(observed).await;
            unresolved = !published.inputs.unresolved.is_empty();
            tx.send_if_modified(|current| {
                if same(current, &published) {
                    return false;
                }
                *current = Arc::new(published);
                true
            });
        }
    }
}

/// Whether two publications compile to the same thing.
fn same(a: &Published, b: &Published) -> bool {
    a.inputs.endpoints == b.inputs.endpoints
        && a.inputs.peers == b.inputs.peers
        && a.inputs.policies == b.inputs.policies
        && a.identities.as_ref().map(Resolved::entries)
            == b.identities.as_ref().map(Resolved::entries)
}

/// Keeps the identities this node uses alive in the bucket and releases those nobody used for
/// the grace period.
async fn identity_upkeep(
    alloc: NatsAllocator,
    rx: channel::Receiver<Arc<Published>>,
    cfg: KubernetesConfig,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.identity_touch_s.max(1)));
    loop {
        tick.tick().await;
        let current = rx.borrow().clone();
        if let Some(r) = &current.identities {
            for labels in r.entries().keys() {
                if let Err(error) = alloc.touch(labels).await {
                    tracing::warn!(%error, "cannot mark identity as used");
                }
            }
        }
        match alloc
            .release_unused(Duration::from_secs(cfg.identity_grace_s))
            .await
        {
            Ok(released) if !released.is_empty() => {
                tracing::info!(count = released.len(), "released unused identities");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "identity garbage collection failed"),
        }
    }
}

/// The configuration and policies to compile: the file's, plus what the API holds. Policies
/// from the API that clash with a policy file are left out (and logged); the files win.
pub fn overlay(
    cfg: &AgentConfig,
    files: PolicySet,
    published: &Published,
) -> (AgentConfig, PolicySet) {
    let mut cfg = cfg.clone();
    cfg.node = node_name(&cfg);
    cfg.endpoints
        .extend(published.inputs.endpoints.iter().cloned());
    cfg.peers.extend(published.inputs.peers.iter().cloned());
    let mut policies = files;
    for p in &published.inputs.policies {
        let reference = p.reference.clone();
        if let Err(error) = policies.extend([p.clone()]) {
            tracing::warn!(policy = %reference, %error, "policy from the API ignored");
        }
    }
    (cfg, policies)
}
