//! `catalyst-agent relay`: a cluster-wide Observer, as hubble-relay is.
//!
//! The relay learns the agents from `peer.Peer/Notify` on one or more agents (and from a static
//! list in standalone mode), forwards each `GetFlows` request to every known agent and serves the
//! merged, time-ordered stream on its own `observer.Observer` API (default port 4245). Agents
//! that cannot be reached or fail are reported in the stream as `relay.NodeStatusEvent`
//! (`NODE_UNAVAILABLE`, `NODE_ERROR`), never silently left out. Buffering is bounded: each
//! agent's stream feeds one bounded channel, and the follow-mode sort buffer holds at most
//! `sort_buffer` responses for at most `sort_window` before they go out in time order.

mod merge;
mod wire;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{
    Request, Response, Status,
    codec::{CompressionEncoding, EnabledCompressionEncodings},
    codegen::{GrpcMethod, Service, http},
    server::NamedService,
    transport::{Channel, Endpoint},
};

use crate::{
    api::{
        observer::{
            self as pb, GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes,
            observer_client::ObserverClient, observer_server::Observer,
            observer_server::ObserverServer,
        },
        peer::{ChangeNotificationType, NotifyRequest, peer_client::PeerClient},
        relay::{NodeState, NodeStatusEvent},
    },
    observer::{PeerInfo, PeerRegistry, TransportLimits},
};

use self::wire::{AgentCodec, ClientCodec};
pub use self::{
    merge::{SortBuffer, Timed},
    wire::{Kind, WireResponse},
};

/// `catalyst-agent relay` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RelayArgs {
    /// Address the relay's Observer API listens on.
    #[arg(long, default_value = "127.0.0.1:4245")]
    pub listen_address: SocketAddr,
    /// Agents whose `peer.Peer` service lists the agents to relay (`host:port`, repeatable;
    /// in Kubernetes: the `hubble-peer` Service).
    #[arg(long = "peer-service")]
    pub peer_services: Vec<String>,
    /// A static agent (`name=host:port`, repeatable), for standalone set-ups without peer
    /// discovery.
    #[arg(long = "static-peer", value_parser = parse_static_peer)]
    pub static_peers: Vec<(String, String)>,
    /// Responses buffered per agent stream before the relay stops reading from that agent.
    #[arg(long, default_value_t = 1024)]
    pub node_buffer: usize,
    /// Most responses held in the follow-mode sort buffer.
    #[arg(long, default_value_t = 4096)]
    pub sort_buffer: usize,
    /// How long a followed response may wait in the sort buffer for older ones, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub sort_window_ms: u64,
    /// Timeout for connecting to an agent and for its unary calls, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub dial_timeout_ms: u64,
    /// Largest gRPC message the relay's own server decodes from or encodes to its clients,
    /// bytes (as the agent's `observer.max_message_bytes`); larger requests are refused with
    /// `OUT_OF_RANGE`.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams (RPCs) per client connection.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval on idle client connections, milliseconds (0: no pings).
    #[arg(long, default_value_t = 30_000)]
    pub keepalive_interval_ms: u64,
    /// How long a keepalive ping may go unanswered before the connection is closed,
    /// milliseconds.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout_ms: u64,
}

impl RelayArgs {
    /// The limits of the relay's own gRPC server (the Observer server's, from these flags).
    pub fn limits(&self) -> TransportLimits {
        TransportLimits {
            max_message_bytes: self.max_message_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: (self.keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(self.keepalive_interval_ms)),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
        }
    }
}

impl Default for RelayArgs {
    fn default() -> Self {
        Self {
            listen_address: SocketAddr::from(([127, 0, 0, 1], 4245)),
            peer_services: Vec::new(),
            static_peers: Vec::new(),
            node_buffer: 1024,
            sort_buffer: 4096,
            sort_window_ms: 1000,
            dial_timeout_ms: 5000,
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 256,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

fn parse_static_peer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, addr)) if !name.is_empty() && !addr.is_empty() => {
            Ok((name.to_owned(), addr.to_owned()))
        }
        _ => Err(format!("`{s}`: expected `name=host:port`")),
    }
}

/// The relay's Observer service.
#[derive(Clone)]
pub struct RelayService {
    peers: PeerRegistry,
    channels: Arc<Mutex<HashMap<String, (String, Channel)>>>,
    args: Arc<RelayArgs>,
}

impl RelayService {
    /// A relay over the static peers of `args` (discovery is started by [`RelayService::discover`]).
    pub fn new(args: RelayArgs) -> Self {
        let peers = PeerRegistry::new(args.static_peers.iter().map(|(name, address)| PeerInfo {
            name: name.clone(),
            address: address.clone(),
            tls_server_name: None,
        }));
        Self {
            peers,
            channels: Arc::default(),
            args: Arc::new(args),
        }
    }

    /// The peers the relay currently knows.
    pub fn peers(&self) -> &PeerRegistry {
        &self.peers
    }

    /// Follows `peer.Peer/Notify` on every `--peer-service` until the task is dropped,
    /// reconnecting after errors.
    pub fn discover(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.args
            .peer_services
            .iter()
            .map(|addr| {
                let (addr, peers, timeout) = (addr.clone(), self.peers.clone(), self.dial());
                tokio::spawn(async move {
                    loop {
                        if let Err(error) = follow_peers(&addr, &peers, timeout).await {
                            tracing::warn!(peer_service = %addr, error = format!("{error:#}"),
                                "peer discovery interrupted; retrying");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                })
            })
            .collect()
    }

    fn dial(&self) -> Duration {
        Duration::from_millis(self.args.dial_timeout_ms)
    }

    /// A (lazily connecting, cached) channel to `peer`.
    fn channel(&self, peer: &PeerInfo) -> Result<Channel, Status> {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((addr, ch)) = map.get(&peer.name)
            && *addr == peer.address
        {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{}", peer.address))
            .map_err(|e| Status::internal(format!("bad peer address `{}`: {e}", peer.address)))?
            .connect_timeout(self.dial())
            .connect_lazy();
        map.insert(peer.name.clone(), (peer.address.clone(), ch.clone()));
        Ok(ch)
    }

    fn client(&self, peer: &PeerInfo) -> Result<ObserverClient<Channel>, Status> {
        // No gzip towards the agents: on the cluster network it costs more CPU than it saves.
        Ok(ObserverClient::new(self.channel(peer)?).max_decoding_message_size(64 << 20))
    }
}

async fn follow_peers(addr: &str, peers: &PeerRegistry, timeout: Duration) -> anyhow::Result<()> {
    let ch = crate::client::connect(addr, timeout).await?;
    let mut s = PeerClient::new(ch)
        .notify(NotifyRequest {})
        .await
        .with_context(|| format!("peer.Peer/Notify on {addr}"))?
        .into_inner();
    while let Some(n) = s.message().await? {
        let info = PeerInfo {
            name: n.name.clone(),
            address: n.address.clone(),
            tls_server_name: n.tls.as_ref().map(|t| t.server_name.clone()),
        };
        match n.r#type() {
            ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated => {
                peers.upsert(info);
            }
            ChangeNotificationType::PeerDeleted => peers.remove(&n.name),
            ChangeNotificationType::Unknown => {}
        }
    }
    anyhow::bail!("peer.Peer/Notify stream on {addr} ended")
}

fn status_response(state: NodeState, names: Vec<String>, message: String) -> WireResponse {
    WireResponse::encode(&GetFlowsResponse {
        node_name: String::new(),
        time: Some(crate::flow::timestamp(now_ns())),
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state.into(),
            node_names: names,
            message,
        })),
    })
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// One agent's part of a `GetFlows` call.
enum NodeItem {
    Response(WireResponse),
    /// The agent's stream could not start or broke (`NODE_UNAVAILABLE` / `NODE_ERROR`).
    Failed(String, NodeState, String),
    /// The agent's stream started.
    Connected(String),
    /// The agent's stream ended.
    Done,
}

impl RelayService {
    /// Starts `GetFlows` on every known agent; each agent's items arrive on its own bounded
    /// channel (a slow agent never holds up the reading of the others).
    fn fan_out(&self, req: &GetFlowsRequest) -> Vec<mpsc::Receiver<NodeItem>> {
        let peers = self.peers.peers();
        let mut receivers = Vec::with_capacity(peers.len());
        for peer in &peers {
            let (tx, rx) = mpsc::channel(self.args.node_buffer.max(1));
            receivers.push(rx);
            let (req, name) = (req.clone(), peer.name.clone());
            let channel = self.channel(peer);
            tokio::spawn(async move {
                let failed = |state, msg: String| NodeItem::Failed(name.clone(), state, msg);
                let channel = match channel {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx
                            .send(failed(NodeState::NodeUnavailable, e.message().to_owned()))
                            .await;
                        return;
                    }
                };
                let mut s = match agent_flows(channel, req).await {
                    Ok(s) => s,
                    Err(e) => {
                        let state = if e.code() == tonic::Code::Unavailable {
                            NodeState::NodeUnavailable
                        } else {
                            NodeState::NodeError
                        };
                        let _ = tx.send(failed(state, e.message().to_owned())).await;
                        return;
                    }
                };
                if tx.send(NodeItem::Connected(name.clone())).await.is_err() {
                    return;
                }
                loop {
                    match s.message().await {
                        Ok(Some(r)) => {
                            if tx.send(NodeItem::Response(r)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send(NodeItem::Done).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx
                                .send(failed(NodeState::NodeError, e.message().to_owned()))
                                .await;
                            return;
                        }
                    }
                }
            });
        }
        receivers
    }
}

/// `GetFlows` on one agent, its responses left encoded.
async fn agent_flows(
    channel: Channel,
    req: GetFlowsRequest,
) -> Result<tonic::codec::Streaming<WireResponse>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        // The channel not becoming ready is a connection failure: `NODE_UNAVAILABLE`.
        .map_err(|e| Status::unavailable(format!("cannot reach the agent: {e}")))?;
    let mut req = Request::new(req);
    req.extensions_mut()
        .insert(GrpcMethod::new("observer.Observer", "GetFlows"));
    let path = http::uri::PathAndQuery::from_static("/observer.Observer/GetFlows");
    Ok(grpc
        .server_streaming(req, path, AgentCodec)
        .await?
        .into_inner())
}

type Tx = mpsc::Sender<Result<WireResponse, Status>>;

/// The next response of an agent (a failure mid-stream becomes a status event).
async fn next(rx: &mut mpsc::Receiver<NodeItem>, tx: &Tx) -> Option<WireResponse> {
    loop {
        match rx.recv().await? {
            NodeItem::Response(r) => return Some(r),
            NodeItem::Failed(name, state, msg) => {
                let _ = tx.send(Ok(status_response(state, vec![name], msg))).await;
                return None;
            }
            NodeItem::Done => return None,
            NodeItem::Connected(_) => {}
        }
    }
}

/// The historic answer: a status event naming the agents that answered and one per agent that
/// did not, then the agents' responses merged in time order. As hubble-relay, the request goes
/// to every agent unchanged, so `number` (with or without `first`) is per agent: N agents answer
/// up to N × `number` flows. Each agent's stream is already in time order, so the merge holds one
/// response per agent and sends the oldest of them before it waits for that agent's next: the
/// answer streams, and memory is one response per agent.
async fn history_merged(mut nodes: Vec<mpsc::Receiver<NodeItem>>, tx: Tx) {
    let (mut connected, mut failures) = (Vec::new(), Vec::new());
    for rx in &mut nodes {
        match rx.recv().await {
            Some(NodeItem::Connected(name)) => connected.push(name),
            Some(NodeItem::Failed(name, state, msg)) => {
                failures.push(status_response(state, vec![name], msg));
            }
            _ => {}
        }
    }
    let mut status = Vec::new();
    if !connected.is_empty() {
        status.push(status_response(
            NodeState::NodeConnected,
            connected,
            String::new(),
        ));
    }
    status.extend(failures);
    for r in status {
        if tx.send(Ok(r)).await.is_err() {
            return;
        }
    }
    let mut heads: Vec<Option<WireResponse>> = Vec::with_capacity(nodes.len());
    for rx in &mut nodes {
        heads.push(next(rx, &tx).await);
    }
    while let Some(i) = heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|r| (i, r.time_ns())))
        .min_by_key(|(_, t)| *t)
        .map(|(i, _)| i)
    {
        let r = heads[i].take().expect("chosen head is present");
        // Out before the agent's next is awaited: a slow agent must not hold back what is
        // already known to be next.
        if tx.send(Ok(r)).await.is_err() {
            return;
        }
        heads[i] = next(&mut nodes[i], &tx).await;
    }
}

/// The follow answer: status events as agents connect or fail, flows through the sort buffer.
async fn follow_merged(
    nodes: Vec<mpsc::Receiver<NodeItem>>,
    tx: Tx,
    mut sorter: SortBuffer<WireResponse>,
    window: Duration,
) {
    let (all_tx, mut rx) = mpsc::channel(nodes.len().max(1) * 64);
    let mut pending = nodes.len();
    for mut node in nodes {
        let all_tx = all_tx.clone();
        tokio::spawn(async move {
            while let Some(item) = node.recv().await {
                if all_tx.send(item).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(all_tx);
    let mut tick = tokio::time::interval(window.max(Duration::from_millis(10)) / 4);
    while pending > 0 {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = tick.tick() => {
                for r in sorter.drain_due(Instant::now()) {
                    if tx.send(Ok(r)).await.is_err() { return; }
                }
                continue;
            }
            () = tx.closed() => return,
        };
        let Some(item) = item else { break };
        let out = match item {
            NodeItem::Connected(name) => vec![status_response(
                NodeState::NodeConnected,
                vec![name],
                String::new(),
            )],
            NodeItem::Failed(name, state, msg) => {
                pending -= 1;
                vec![status_response(state, vec![name], msg)]
            }
            NodeItem::Done => {
                pending -= 1;
                Vec::new()
            }
            NodeItem::Response(r) => sorter.push(r, Instant::now()),
        };
        for r in out {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
    for r in sorter.drain_all() {
        if tx.send(Ok(r)).await.is_err() {
            return;
        }
    }
}

impl RelayService {
    /// The merged `GetFlows` answer, responses as the agents encoded them.
    fn flows(&self, req: &GetFlowsRequest) -> Result<WireRx, Status> {
        // Refuse what every agent would refuse, before fanning out.
        crate::observer::validate_request(req)?;
        let nodes = self.fan_out(req);
        let (tx, out) = mpsc::channel(self.args.node_buffer.max(1));
        let window = Duration::from_millis(self.args.sort_window_ms);
        let cap = self.args.sort_buffer.max(1);
        let follow = req.follow;
        tokio::spawn(async move {
            if follow {
                follow_merged(nodes, tx, SortBuffer::new(cap, window), window).await;
            } else {
                history_merged(nodes, tx).await;
            }
        });
        Ok(out)
    }
}

type WireRx = mpsc::Receiver<Result<WireResponse, Status>>;

/// The relay's `observer.Observer` as served: `GetFlows` passes the agents' encoded responses
/// on (see `wire`), the other methods are [`RelayService`]'s generated server.
#[derive(Clone)]
pub struct RelayServer {
    service: RelayService,
    generated: ObserverServer<RelayService>,
    max_message_bytes: usize,
}

impl RelayServer {
    /// The service with gzip accepted and sent to clients that accept it, and messages of at
    /// most `--max-message-bytes` either way.
    pub fn new(service: RelayService) -> Self {
        let max_message_bytes = service.args.max_message_bytes;
        let generated = ObserverServer::new(service.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Self {
            service,
            generated,
            max_message_bytes,
        }
    }
}

impl NamedService for RelayServer {
    const NAME: &'static str = "observer.Observer";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct GetFlowsWire(RelayService);

impl tonic::server::ServerStreamingService<GetFlowsRequest> for GetFlowsWire {
    type Response = WireResponse;
    type ResponseStream = ReceiverStream<Result<WireResponse, Status>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<GetFlowsRequest>) -> Self::Future {
        let out = self
            .0
            .flows(&request.into_inner())
            .map(|rx| Response::new(ReceiverStream::new(rx)));
        Box::pin(std::future::ready(out))
    }
}

impl Service<http::Request<tonic::body::Body>> for RelayServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != "/observer.Observer/GetFlows" {
            return self.generated.call(req);
        }
        let method = GetFlowsWire(self.service.clone());
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(ClientCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::GetAgentEventsResponse, Status>> + Send>>;
    type GetDebugEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::GetDebugEventsResponse, Status>> + Send>>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        // Served by `RelayServer` without decoding; this is for callers of the trait.
        let out = self.flows(&request.into_inner())?;
        Ok(Response::new(Box::pin(ReceiverStream::new(out).map(|r| {
            r.and_then(|w| {
                w.decode()
                    .map_err(|e| Status::internal(format!("malformed agent response: {e}")))
            })
        }))))
    }

    async fn get_agent_events(
        &self,
        _request: Request<pb::GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("agent events are not relayed"))
    }

    async fn get_debug_events(
        &self,
        _request: Request<pb::GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("debug events are not relayed"))
    }

    async fn get_nodes(
        &self,
        _request: Request<pb::GetNodesRequest>,
    ) -> Result<Response<pb::GetNodesResponse>, Status> {
        let mut nodes = Vec::new();
        for peer in self.peers.peers() {
            let mut node = pb::Node {
                name: peer.name.clone(),
                address: peer.address.clone(),
                state: NodeState::NodeUnavailable.into(),
                tls: Some(
                    peer.tls_server_name
                        .clone()
                        .map_or_else(pb::Tls::default, |s| pb::Tls {
                            enabled: true,
                            server_name: s,
                        }),
                ),
                ..pb::Node::default()
            };
            if let Ok(mut c) = self.client(&peer)
                && let Ok(Ok(st)) =
                    tokio::time::timeout(self.dial(), c.server_status(pb::ServerStatusRequest {}))
                        .await
            {
                let st = st.into_inner();
                node.state = NodeState::NodeConnected.into();
                node.version = st.version;
                node.uptime_ns = st.uptime_ns;
                node.num_flows = st.num_flows;
                node.max_flows = st.max_flows;
                node.seen_flows = st.seen_flows;
            }
            nodes.push(node);
        }
        Ok(Response::new(pb::GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<pb::GetNamespacesRequest>,
    ) -> Result<Response<pb::GetNamespacesResponse>, Status> {
        let mut seen = BTreeSet::new();
        for peer in self.peers.peers() {
            if let Ok(mut c) = self.client(&peer)
                && let Ok(Ok(r)) =
                    tokio::time::timeout(self.dial(), c.get_namespaces(pb::GetNamespacesRequest {}))
                        .await
            {
                for ns in r.into_inner().namespaces {
                    seen.insert((ns.cluster, ns.namespace));
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
        let mut total = pb::ServerStatusResponse {
            version: format!("catalyst-relay/{}", env!("CARGO_PKG_VERSION")),
            ..pb::ServerStatusResponse::default()
        };
        let (mut connected, mut unavailable) = (0u32, BTreeMap::new());
        for peer in self.peers.peers() {
            let answer = match self.client(&peer) {
                Ok(mut c) => {
                    tokio::time::timeout(self.dial(), c.server_status(pb::ServerStatusRequest {}))
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
            match answer {
                Some(st) => {
                    let st = st.into_inner();
                    connected += 1;
                    total.num_flows += st.num_flows;
                    total.max_flows += st.max_flows;
                    total.seen_flows += st.seen_flows;
                    total.uptime_ns = total.uptime_ns.max(st.uptime_ns);
                    total.flows_rate += st.flows_rate;
                }
                None => {
                    unavailable.insert(peer.name.clone(), ());
                }
            }
        }
        total.num_connected_nodes = Some(connected);
        total.num_unavailable_nodes = Some(u32::try_from(unavailable.len()).unwrap_or(u32::MAX));
        total.unavailable_nodes = unavailable.into_keys().collect();
        Ok(Response::new(total))
    }
}

/// Serves the relay on `listener` (with the health service for `hubble status`) until it fails,
/// with the transport limits of its flags (message size, concurrent streams, keepalive).
pub async fn serve(service: RelayService, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let limits = service.args.limits();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            crate::observer::HEALTH_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    limits
        .builder()
        .add_service(health)
        .add_service(RelayServer::new(service))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .context("relay server failed")
}

/// `catalyst-agent relay`: discovers agents and serves the merged Observer API until stopped.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    if args.peer_services.is_empty() && args.static_peers.is_empty() {
        anyhow::bail!("no agents to relay: give --peer-service and/or --static-peer");
    }
    if args.max_message_bytes == 0 {
        anyhow::bail!("--max-message-bytes: must be at least 1");
    }
    let listener = tokio::net::TcpListener::bind(args.listen_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen_address))?;
    tracing::info!(listen = %args.listen_address, peer_services = ?args.peer_services,
        static_peers = args.static_peers.len(), "relay listening");
    let service = RelayService::new(args);
    let _discovery = service.discover();
    tokio::select! {
        r = serve(service, listener) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests;
