//! The watchers: kube-runtime watchers feeding reflector stores, each poking one [`Notify`] on
//! every event so the model is rebuilt.
//!
//! Watched: this node's pods (`fieldSelector spec.nodeName=<node>`), other nodes' pods
//! (`spec.nodeName!=<node>`, for the ipcache, only with `remote_pods: watch`), namespaces, nodes, `NetworkPolicy`, and the custom
//! policy kinds the API server has: `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy`
//! (cilium.io/v2) and Catalyst's own (policy.catalyst.openova.io/v1), found by discovery. A kind
//! whose CRD is not installed is skipped with a log line and looked for again later.

use std::{fmt::Debug, sync::Arc};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt as _,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle};

use crate::k8s::{
    KubernetesConfig,
    model::{CUSTOM_POLICY_SOURCES, ClusterView, PolicySource},
};

/// The running watchers and their stores.
pub struct Watchers {
    client: Client,
    changed: Arc<Notify>,
    local_pods: Store<Pod>,
    remote_pods: Option<Store<Pod>>,
    namespaces: Store<Namespace>,
    nodes: Option<Store<Node>>,
    network_policies: Store<NetworkPolicy>,
    custom: Vec<(PolicySource, Store<DynamicObject>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a watcher + reflector for `api`; the store fills as events arrive.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    what: String,
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => {
                    tracing::warn!(%error, resource = %what, "watch failed; retrying with backoff");
                }
            }
        }
    });
    (store, task)
}

/// Whether the API server serves `source` (its CRD is installed).
async fn served(
    client: &Client,
    source: &PolicySource,
) -> Result<Option<ApiResource>, kube::Error> {
    let (group, version) = source
        .api_version
        .split_once('/')
        .unwrap_or(("", source.api_version));
    let gvk = GroupVersionKind::gvk(group, version, source.kind.as_str());
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((ar, _)) => Ok(Some(ar)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(kube::Error::Discovery(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Watchers {
    /// Starts every watcher and discovers the custom policy kinds.
    pub async fn start(
        client: Client,
        cfg: &KubernetesConfig,
        watch_remote_pods: bool,
        node: &str,
        changed: Arc<Notify>,
    ) -> Self {
        let mut tasks = Vec::new();
        let (local_pods, t) = spawn_watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            (),
            "pods (this node)".into(),
            changed.clone(),
        );
        tasks.push(t);
        let remote_pods = watch_remote_pods.then(|| {
            let (s, t) = spawn_watch(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName!={node}")),
                (),
                "pods (other nodes)".into(),
                changed.clone(),
            );
            tasks.push(t);
            s
        });
        let (namespaces, t) = spawn_watch(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            (),
            "namespaces".into(),
            changed.clone(),
        );
        tasks.push(t);
        let nodes = cfg.nodes.then(|| {
            let (s, t) = spawn_watch(
                Api::<Node>::all(client.clone()),
                watcher::Config::default(),
                (),
                "nodes".into(),
                changed.clone(),
            );
            tasks.push(t);
            s
        });
        let (network_policies, t) = spawn_watch(
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default(),
            (),
            "networkpolicies".into(),
            changed.clone(),
        );
        tasks.push(t);
        let mut w = Self {
            client,
            changed,
            local_pods,
            remote_pods,
            namespaces,
            nodes,
            network_policies,
            custom: Vec::new(),
            tasks,
        };
        w.discover_policy_kinds().await;
        w
    }

    /// Starts watchers for custom policy kinds that are served and not watched yet; returns how
    /// many were started.
    pub async fn discover_policy_kinds(&mut self) -> usize {
        let mut started = 0;
        for source in CUSTOM_POLICY_SOURCES {
            if self.custom.iter().any(|(s, _)| *s == source) {
                continue;
            }
            match served(&self.client, &source).await {
                Ok(Some(ar)) => {
                    let (store, t) = spawn_watch(
                        Api::<DynamicObject>::all_with(self.client.clone(), &ar),
                        watcher::Config::default(),
                        ar,
                        format!("{} ({})", source.kind, source.api_version),
                        self.changed.clone(),
                    );
                    self.tasks.push(t);
                    self.custom.push((source, store));
                    tracing::info!(kind = %source.kind, api_version = source.api_version, "watching policy kind");
                    started += 1;
                }
                Ok(None) => {
                    tracing::info!(kind = %source.kind, api_version = source.api_version,
                        "policy kind not served by the API server (CRD not installed); skipped");
                }
                Err(error) => {
                    tracing::warn!(%error, kind = %source.kind, "policy kind discovery failed; will retry");
                }
            }
        }
        if started > 0 {
            // The new stores need their initial list before the next rebuild means anything.
            for (_, s) in &self.custom {
                let _ = s.wait_until_ready().await;
            }
        }
        started
    }

    /// Waits until every store has its initial list.
    pub async fn ready(&self) {
        let _ = self.local_pods.wait_until_ready().await;
        if let Some(s) = &self.remote_pods {
            let _ = s.wait_until_ready().await;
        }
        let _ = self.namespaces.wait_until_ready().await;
        if let Some(s) = &self.nodes {
            let _ = s.wait_until_ready().await;
        }
        let _ = self.network_policies.wait_until_ready().await;
        for (_, s) in &self.custom {
            let _ = s.wait_until_ready().await;
        }
    }

    /// What the stores hold now.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            local_pods: self.local_pods.state(),
            remote_pods: self
                .remote_pods
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            namespaces: self.namespaces.state(),
            nodes: self.nodes.as_ref().map(Store::state).unwrap_or_default(),
            network_policies: self.network_policies.state(),
            custom_policies: self
                .custom
                .iter()
                .map(|(s, store)| (*s, store.state()))
                .collect(),
        }
    }
}
