//! Hubble's peer service (`peer.Peer/Notify`): how hubble-relay discovers the agents.
//!
//! An agent knows one peer, itself; a relay in standalone mode serves its static list the same
//! way. A call first gets every known peer as `PEER_ADDED`, then each change (`PEER_UPDATED`
//! when the address or TLS server name of a known name changes, `PEER_DELETED`, `PEER_ADDED`),
//! and the stream stays open until the client goes or the server stops.

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::peer::{
    ChangeNotification, ChangeNotificationType, NotifyRequest, Tls, peer_server::Peer,
};

/// The DNS suffix of Hubble server names (Cilium's `hubble-grpc.cilium.io`).
pub const TLS_NAME_SUFFIX: &str = "hubble-grpc.cilium.io";

/// One peer as `peer.Peer` announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// `<node>`, or `<cluster>/<node>` when the cluster is not `default`.
    pub name: String,
    /// `host:port` of its Hubble gRPC service.
    pub address: String,
    /// TLS server name to verify; `None` when the peer serves plaintext.
    pub tls_server_name: Option<String>,
}

impl PeerInfo {
    /// The peer entry of node `node` in cluster `cluster` at `address`, with Cilium's server
    /// name `<node>.<cluster>.hubble-grpc.cilium.io` when it serves TLS (dots in the node name
    /// become dashes, as Cilium does, so the name stays one DNS label).
    pub fn node(node: &str, cluster: &str, address: &str, tls: bool) -> Self {
        Self {
            name: peer_name(cluster, node),
            address: address.to_owned(),
            tls_server_name: tls.then(|| tls_server_name(node, cluster)),
        }
    }

    fn notification(&self, kind: ChangeNotificationType) -> ChangeNotification {
        ChangeNotification {
            name: self.name.clone(),
            address: self.address.clone(),
            r#type: kind.into(),
            tls: self.tls_server_name.as_ref().map(|s| Tls {
                server_name: s.clone(),
            }),
        }
    }
}

/// A node's name as peers and flows show it: `<cluster>/<node>` unless the cluster is `default`.
pub fn peer_name(cluster: &str, node: &str) -> String {
    if cluster.is_empty() || cluster == "default" {
        node.to_owned()
    } else {
        format!("{cluster}/{node}")
    }
}

/// Cilium's TLS server name of a node's Hubble server.
pub fn tls_server_name(node: &str, cluster: &str) -> String {
    let cluster = if cluster.is_empty() {
        "default"
    } else {
        cluster
    };
    format!("{}.{cluster}.{TLS_NAME_SUFFIX}", node.replace('.', "-"))
}

/// The set of peers, shared by the service and whoever learns about changes.
#[derive(Debug, Clone)]
pub struct PeerRegistry {
    tx: Arc<watch::Sender<BTreeMap<String, PeerInfo>>>,
}

impl PeerRegistry {
    /// A registry holding `peers`.
    pub fn new(peers: impl IntoIterator<Item = PeerInfo>) -> Self {
        let map = peers.into_iter().map(|p| (p.name.clone(), p)).collect();
        Self {
            tx: Arc::new(watch::channel(map).0),
        }
    }

    /// Adds or replaces a peer (subscribers see `PEER_ADDED` or `PEER_UPDATED`).
    pub fn upsert(&self, peer: PeerInfo) {
        self.tx.send_if_modified(|m| {
            if m.get(&peer.name) == Some(&peer) {
                return false;
            }
            m.insert(peer.name.clone(), peer);
            true
        });
    }

    /// Removes a peer by name (subscribers see `PEER_DELETED`).
    pub fn remove(&self, name: &str) {
        self.tx.send_if_modified(|m| m.remove(name).is_some());
    }

    /// The current peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.tx.borrow().values().cloned().collect()
    }

    fn subscribe(&self) -> watch::Receiver<BTreeMap<String, PeerInfo>> {
        self.tx.subscribe()
    }
}

/// The changes that turn `old` into `new`, in name order.
fn diff(
    old: &BTreeMap<String, PeerInfo>,
    new: &BTreeMap<String, PeerInfo>,
) -> Vec<ChangeNotification> {
    let mut out = Vec::new();
    for (name, p) in old {
        if !new.contains_key(name) {
            out.push(p.notification(ChangeNotificationType::PeerDeleted));
        }
    }
    for (name, p) in new {
        match old.get(name) {
            None => out.push(p.notification(ChangeNotificationType::PeerAdded)),
            Some(o) if o != p => out.push(p.notification(ChangeNotificationType::PeerUpdated)),
            Some(_) => {}
        }
    }
    out
}

/// The `peer.Peer` service over a [`PeerRegistry`].
#[derive(Debug, Clone)]
pub struct PeerService {
    registry: PeerRegistry,
}

impl PeerService {
    /// Serves `registry`.
    pub fn new(registry: PeerRegistry) -> Self {
        Self { registry }
    }
}

type NotifyStream = Pin<Box<dyn Stream<Item = Result<ChangeNotification, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = NotifyStream;

    async fn notify(
        &self,
        _request: Request<NotifyRequest>,
    ) -> Result<Response<NotifyStream>, Status> {
        let mut rx = self.registry.subscribe();
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut known = BTreeMap::new();
            loop {
                let now = rx.borrow_and_update().clone();
                for n in diff(&known, &now) {
                    if tx.send(Ok(n)).await.is_err() {
                        return;
                    }
                }
                known = now;
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_cilium() {
        assert_eq!(peer_name("default", "n1"), "n1");
        assert_eq!(peer_name("eu1", "n1"), "eu1/n1");
        assert_eq!(
            tls_server_name("node-1.example.com", "eu1"),
            "node-1-example-com.eu1.hubble-grpc.cilium.io"
        );
        let p = PeerInfo::node("n1", "default", "10.0.0.1:4244", false);
        assert_eq!(p.tls_server_name, None);
    }

    #[test]
    fn diff_reports_added_updated_deleted() {
        let a = PeerInfo::node("a", "default", "10.0.0.1:4244", false);
        let b = PeerInfo::node("b", "default", "10.0.0.2:4244", false);
        let old: BTreeMap<_, _> = [(a.name.clone(), a.clone()), (b.name.clone(), b.clone())].into();
        let a2 = PeerInfo::node("a", "default", "10.0.0.9:4244", true);
        let c = PeerInfo::node("c", "default", "10.0.0.3:4244", false);
        let new: BTreeMap<_, _> = [(a2.name.clone(), a2), (c.name.clone(), c)].into();
        let kinds: Vec<_> = diff(&old, &new)
            .into_iter()
            .map(|n| (n.name.clone(), n.r#type()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("b".to_owned(), ChangeNotificationType::PeerDeleted),
                ("a".to_owned(), ChangeNotificationType::PeerUpdated),
                ("c".to_owned(), ChangeNotificationType::PeerAdded),
            ]
        );
    }
}
