//! The Hubble Observer gRPC API (`observer.Observer`) and `grpc.health.v1`, served on TCP and a
//! UNIX socket (specs/hubble-observer-api.md).

mod authority;
mod fieldmask;
mod peer;
mod serve;

use std::{collections::BTreeSet, pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    api::{
        flow::{LostEvent, LostEventSource},
        observer::{
            self as pb, GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes,
            observer_server::Observer,
        },
        relay::NodeState,
    },
    flow::{FlowRing, RingEvent, filter::FlowFilters, timestamp, timestamp_ns},
};

pub use self::{
    fieldmask::FlowMask,
    peer::{PeerInfo, PeerRegistry, PeerService, peer_name, tls_server_name},
    serve::{Listeners, ObserverServerError, TransportLimits, serve, tls_config},
};

/// Name of the health-checked service (what `hubble status` asks for).
pub const HEALTH_SERVICE: &str = "hubble.server.Observer";

/// Environment variable that overrides `observer.advertise_address` (the Helm chart sets it to
/// the node IP and port).
pub const ADVERTISE_ENV: &str = "CATALYST_OBSERVER_ADVERTISE_ADDRESS";

/// Entries read from the ring per follow step.
const FOLLOW_BATCH: usize = 1024;

/// Responses buffered per `GetFlows` stream before the server waits for the client.
const STREAM_BUFFER: usize = 256;

/// The Observer service over a [`FlowRing`].
#[derive(Clone)]
pub struct ObserverService {
    ring: FlowRing,
    node: Arc<str>,
    cluster: Arc<str>,
    address: Arc<str>,
    version: Arc<str>,
    peers: PeerRegistry,
    limits: TransportLimits,
}

impl ObserverService {
    /// A service answering for node `node` of cluster `default`, reachable at `address`
    /// (reported by `GetNodes` and announced by `peer.Peer`).
    pub fn new(ring: FlowRing, node: &str, address: &str) -> Self {
        Self {
            ring,
            node: node.into(),
            cluster: "default".into(),
            address: address.into(),
            version: format!("{}/{}", crate::flow::EMITTER, env!("CARGO_PKG_VERSION")).into(),
            peers: PeerRegistry::new([PeerInfo::node(node, "default", address, false)]),
            limits: TransportLimits::default(),
        }
    }

    /// Applies the cluster name, advertised address and transport limits of `cfg`.
    #[must_use]
    pub fn with_config(mut self, cfg: &crate::config::ObserverConfig) -> Self {
        self.cluster = cfg.cluster_name.as_str().into();
        let from_env = std::env::var(ADVERTISE_ENV).ok().filter(|a| !a.is_empty());
        if let Some(a) = from_env.as_ref().or(cfg.advertise_address.as_ref()) {
            self.address = a.as_str().into();
        }
        self.limits = TransportLimits::from_config(cfg);
        self.peers = PeerRegistry::new([self.self_peer(false)]);
        self
    }

    /// This node as `peer.Peer` announces it.
    fn self_peer(&self, tls: bool) -> PeerInfo {
        PeerInfo::node(&self.node, &self.cluster, &self.address, tls)
    }

    /// The peers this service announces (this node); changes reach `Notify` callers.
    pub fn peers(&self) -> &PeerRegistry {
        &self.peers
    }

    /// Sets the announced address of this node (`PEER_UPDATED` for `Notify` callers).
    pub fn set_address(&mut self, address: &str, tls: bool) {
        self.address = address.into();
        self.peers.upsert(self.self_peer(tls));
    }
}

/// The parts of a `GetFlows` request that decide which entries go out.
struct Query {
    filters: FlowFilters,
    mask: FlowMask,
    since: Option<i128>,
    until: Option<i128>,
}

impl Query {
    fn in_window(&self, t: i128) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// The response for a ring entry, or `None` when it is filtered out.
    fn response(&self, ev: &RingEvent, node: &str) -> Option<GetFlowsResponse> {
        let t = ev.time_ns();
        if !self.in_window(t) {
            return None;
        }
        if let RingEvent::Lost(l) = ev {
            return Some(lost_response(**l, node));
        }
        let f = ev.flow()?;
        if !self.filters.matches(&f) {
            return None;
        }
        Some(GetFlowsResponse {
            node_name: f.node_name.clone(),
            time: f.time,
            response_types: Some(ResponseTypes::Flow(self.mask.apply_cow(f))),
        })
    }
}

fn lost_response(l: LostEvent, node: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.to_owned(),
        time: l.last,
        response_types: Some(ResponseTypes::LostEvents(l)),
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Refuses a request that [`ObserverService`] would refuse (`first` with `follow`, bad
/// filters, bad field-mask paths, `since` after `until`); the relay checks before fanning out.
pub fn validate_request(req: &GetFlowsRequest) -> Result<(), Status> {
    query(req).map(|_| ())
}

/// Validates a request and compiles its filters.
fn query(req: &GetFlowsRequest) -> Result<Query, Status> {
    if req.first && req.follow {
        return Err(Status::invalid_argument(
            "first cannot be specified together with follow",
        ));
    }
    let filters = FlowFilters::new(&req.whitelist, &req.blacklist)
        .map_err(|e| Status::invalid_argument(format!("invalid filter: {e}")))?;
    let since = req.since.as_ref().map(timestamp_ns);
    let until = req.until.as_ref().map(timestamp_ns);
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(Status::invalid_argument("since is after until"));
    }
    let mask = FlowMask::new(req.field_mask.as_ref().map_or(&[][..], |m| &m.paths[..]))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Query {
        filters,
        mask,
        since,
        until,
    })
}

/// The historic part of a `GetFlows` answer: entries of `snapshot` that pass, limited to `number`
/// flows (the oldest with `first`, else the newest), oldest first. Lost events inside the
/// selected span go along and do not count.
fn history(
    snapshot: &[RingEvent],
    q: &Query,
    req: &GetFlowsRequest,
    node: &str,
) -> Vec<GetFlowsResponse> {
    let limit = match (req.number, req.follow, req.since.is_some()) {
        (0, true, false) => 0,
        (0, _, _) => usize::MAX,
        (n, _, _) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    if limit == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut flows = 0usize;
    let mut take = |ev: &RingEvent| {
        if flows >= limit {
            return false;
        }
        if let Some(r) = q.response(ev, node) {
            flows += usize::from(matches!(r.response_types, Some(ResponseTypes::Flow(_))));
            out.push(r);
        }
        true
    };
    if req.first {
        for ev in snapshot {
            if !take(ev) {
                break;
            }
        }
    } else {
        for ev in snapshot.iter().rev() {
            if !take(ev) {
                break;
            }
        }
        out.reverse();
    }
    out
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::GetAgentEventsResponse, Status>> + Send>>;
    type GetDebugEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::GetDebugEventsResponse, Status>> + Send>>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        let req = request.into_inner();
        let q = query(&req)?;
        tracing::debug!(
            number = req.number,
            first = req.first,
            follow = req.follow,
            whitelist = req.whitelist.len(),
            blacklist = req.blacklist.len(),
            "GetFlows"
        );
        let mut rx_seq = self.ring.subscribe();
        let (snapshot, mut next) = self.ring.snapshot();
        let ring = self.ring.clone();
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            for r in history(&snapshot, &q, &req, &node) {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            drop(snapshot);
            if !req.follow {
                return;
            }
            loop {
                let batch = ring.read_from(next, FOLLOW_BATCH);
                next = batch.next;
                if batch.missed > 0 {
                    // This follower fell behind the ring: say how much it missed.
                    let t = timestamp(now_ns());
                    let lost = LostEvent {
                        source: LostEventSource::HubbleRingBuffer.into(),
                        num_events_lost: batch.missed,
                        cpu: None,
                        first: Some(t),
                        last: Some(t),
                    };
                    if tx.send(Ok(lost_response(lost, &node))).await.is_err() {
                        return;
                    }
                }
                for ev in &batch.events {
                    if q.until.is_some_and(|u| ev.time_ns() > u) {
                        return;
                    }
                    if let Some(r) = q.response(ev, &node)
                        && tx.send(Ok(r)).await.is_err()
                    {
                        return;
                    }
                }
                if batch.events.len() < FOLLOW_BATCH {
                    tokio::select! {
                        changed = rx_seq.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_agent_events(
        &self,
        _request: Request<pb::GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "agent events are not produced by catalyst-agent",
        ))
    }

    async fn get_debug_events(
        &self,
        _request: Request<pb::GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented(
            "debug events are not produced by catalyst-agent",
        ))
    }

    async fn get_nodes(
        &self,
        _request: Request<pb::GetNodesRequest>,
    ) -> Result<Response<pb::GetNodesResponse>, Status> {
        let node = pb::Node {
            name: peer_name(&self.cluster, &self.node),
            version: self.version.to_string(),
            address: self.address.to_string(),
            state: NodeState::NodeConnected.into(),
            tls: Some(
                self.peers
                    .peers()
                    .into_iter()
                    .find(|p| p.name == peer_name(&self.cluster, &self.node))
                    .and_then(|p| p.tls_server_name)
                    .map_or_else(pb::Tls::default, |server_name| pb::Tls {
                        enabled: true,
                        server_name,
                    }),
            ),
            uptime_ns: u64::try_from(self.ring.uptime().as_nanos()).unwrap_or(u64::MAX),
            num_flows: self.ring.len() as u64,
            max_flows: self.ring.capacity() as u64,
            seen_flows: self.ring.seen_flows(),
        };
        Ok(Response::new(pb::GetNodesResponse { nodes: vec![node] }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<pb::GetNamespacesRequest>,
    ) -> Result<Response<pb::GetNamespacesResponse>, Status> {
        let (snapshot, _) = self.ring.snapshot();
        let mut seen = BTreeSet::new();
        for ev in &snapshot {
            if let Some(f) = ev.flow() {
                for e in [&f.source, &f.destination].into_iter().flatten() {
                    if !e.namespace.is_empty() {
                        seen.insert((e.cluster_name.clone(), e.namespace.clone()));
                    }
                }
            }
        }
        let namespaces = seen
            .into_iter()
            .map(|(cluster, namespace)| pb::Namespace { cluster, namespace })
            .collect();
        Ok(Response::new(pb::GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        _request: Request<pb::ServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatusResponse>, Status> {
        // Rate over the last minute of flows held in the ring.
        let (snapshot, _) = self.ring.snapshot();
        let horizon = now_ns() - 60 * 1_000_000_000;
        let recent = snapshot
            .iter()
            .rev()
            .take_while(|e| e.time_ns() >= horizon)
            .filter(|e| e.is_flow())
            .count();
        let num_flows = snapshot.iter().filter(|e| e.is_flow()).count();
        Ok(Response::new(pb::ServerStatusResponse {
            num_flows: num_flows as u64,
            max_flows: self.ring.capacity() as u64,
            seen_flows: self.ring.seen_flows(),
            uptime_ns: u64::try_from(self.ring.uptime().as_nanos()).unwrap_or(u64::MAX),
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: self.version.to_string(),
            flows_rate: f64::from(u32::try_from(recent).unwrap_or(u32::MAX)) / 60.0,
        }))
    }
}

/// A lost-events ring entry for `n` events lost at `source`, noticed now.
pub fn lost_event(source: LostEventSource, n: u64) -> LostEvent {
    let t = timestamp(now_ns());
    LostEvent {
        source: source.into(),
        num_events_lost: n,
        cpu: None,
        first: Some(t),
        last: Some(t),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fidelity_tests;
