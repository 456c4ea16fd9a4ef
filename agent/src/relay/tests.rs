//! Several agents (real Observer servers on loopback, each with its own flow ring) behind one
//! relay, seen by a client as hubble-relay's clients see it.

use std::time::Duration;

use super::{RelayArgs, RelayService, serve};
use crate::{
    api::{
        flow as fpb,
        observer::{
            GetFlowsRequest, GetFlowsResponse, GetNodesRequest, ServerStatusRequest,
            get_flows_response::ResponseTypes, observer_client::ObserverClient,
        },
        relay::NodeState,
    },
    client,
    flow::{FlowRing, timestamp, timestamp_ns},
    observer::{Listeners, ObserverService},
};

const T0: i128 = 1_795_651_200_000_000_000;

/// An agent named `node` whose ring holds flows at T0 + `offsets_ms`.
async fn agent(node: &str, offsets_ms: &[i128]) -> (String, FlowRing) {
    let ring = FlowRing::new(1024);
    for (i, off) in offsets_ms.iter().enumerate() {
        ring.push_flow(fpb::Flow {
            time: Some(timestamp(T0 + off * 1_000_000)),
            node_name: node.to_owned(),
            uuid: format!("{node}-{i}"),
            verdict: fpb::Verdict::Forwarded.into(),
            ..fpb::Flow::default()
        });
    }
    let listeners = Listeners::bind(Some("127.0.0.1:0".parse().expect("addr")), None)
        .await
        .expect("bind");
    let addr = listeners.tcp_addr().expect("tcp").to_string();
    tokio::spawn(crate::observer::serve(
        ObserverService::new(ring.clone(), node, &addr),
        listeners,
        None,
    ));
    (addr, ring)
}

async fn relay(args: RelayArgs) -> (String, RelayService) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let svc = RelayService::new(args);
    tokio::spawn(serve(svc.clone(), l));
    (addr, svc)
}

async fn get(addr: &str, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let ch = client::connect(addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut s = ObserverClient::new(ch)
        .get_flows(req)
        .await
        .expect("GetFlows")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("stream") {
        out.push(r);
    }
    out
}

fn flows(rs: &[GetFlowsResponse]) -> Vec<(String, i128)> {
    rs.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => {
                Some((r.node_name.clone(), f.time.as_ref().map_or(0, timestamp_ns)))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn three_agents_merge_into_one_time_ordered_stream() {
    let (a, _) = agent("node-a", &[0, 30, 60, 90]).await;
    let (b, _) = agent("node-b", &[10, 40, 70]).await;
    let (c, _) = agent("node-c", &[20, 50, 80]).await;
    let (dead, ()) = {
        // A listener that is bound and closed again: nothing answers there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        (l.local_addr().expect("addr").to_string(), drop(l))
    };
    let (addr, _) = relay(RelayArgs {
        static_peers: vec![
            ("node-a".into(), a),
            ("node-b".into(), b),
            ("node-c".into(), c),
            ("node-gone".into(), dead),
        ],
        dial_timeout_ms: 2000,
        ..RelayArgs::default()
    })
    .await;
    let rs = get(&addr, GetFlowsRequest::default()).await;
    let got = flows(&rs);
    assert_eq!(got.len(), 10, "{got:?}");
    let times: Vec<i128> = got.iter().map(|(_, t)| (t - T0) / 1_000_000).collect();
    assert_eq!(times, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
    let nodes: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&nodes[..3], ["node-a", "node-b", "node-c"]);
    // The unreachable agent is reported, the others are connected.
    let status: Vec<_> = rs
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::NodeStatus(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let connected = status
        .iter()
        .find(|s| s.state_change == NodeState::NodeConnected as i32)
        .expect("connected event");
    assert_eq!(connected.node_names.len(), 3);
    let down = status
        .iter()
        .find(|s| s.state_change == NodeState::NodeUnavailable as i32)
        .expect("unavailable event");
    assert_eq!(down.node_names, ["node-gone"]);

    // As hubble-relay (`hubble observe --last/--first`: "N flows per instance of Hubble
    // connected to that Relay"), `number` goes to every agent: the newest 2 of each, merged in
    // time order; `first`: the oldest 2 of each.
    let last2 = flows(
        &get(
            &addr,
            GetFlowsRequest {
                number: 2,
                ..GetFlowsRequest::default()
            },
        )
        .await,
    );
    let t: Vec<i128> = last2.iter().map(|(_, t)| (t - T0) / 1_000_000).collect();
    assert_eq!(t, [40, 50, 60, 70, 80, 90]);
    let first2 = flows(
        &get(
            &addr,
            GetFlowsRequest {
                number: 2,
                first: true,
                ..GetFlowsRequest::default()
            },
        )
        .await,
    );
    let t: Vec<i128> = first2.iter().map(|(_, t)| (t - T0) / 1_000_000).collect();
    assert_eq!(t, [0, 10, 20, 30, 40, 50]);

    // Status and nodes add the agents up.
    let ch = client::connect(&addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut c = ObserverClient::new(ch);
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.num_flows, 10);
    assert_eq!(st.num_connected_nodes, Some(3));
    assert_eq!(st.unavailable_nodes, ["node-gone"]);
    let nodes = c
        .get_nodes(GetNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes
            .iter()
            .filter(|n| n.state == NodeState::NodeConnected as i32)
            .count()
            == 3
    );
}

#[tokio::test]
async fn follow_merges_live_flows_and_discovers_agents_through_peer() {
    let (a, ring_a) = agent("node-a", &[]).await;
    let (b, ring_b) = agent("node-b", &[]).await;
    // Discovery: one agent is found through its peer.Peer service, the other is static.
    let (addr, svc) = relay(RelayArgs {
        peer_services: vec![a.clone()],
        static_peers: vec![("node-b".into(), b)],
        sort_window_ms: 200,
        ..RelayArgs::default()
    })
    .await;
    let _discovery = svc.discover();
    tokio::time::timeout(Duration::from_secs(5), async {
        while svc.peers().peers().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node-a discovered through peer.Peer");
    assert!(svc.peers().peers().iter().any(|p| p.address == a));

    let ch = client::connect(&addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut s = ObserverClient::new(ch)
        .get_flows(GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        })
        .await
        .expect("GetFlows")
        .into_inner();
    // Wait until both agents' streams are up.
    let mut connected = 0;
    while connected < 2 {
        let r = s.message().await.expect("stream").expect("response");
        if let Some(ResponseTypes::NodeStatus(st)) = r.response_types {
            assert_eq!(st.state_change, NodeState::NodeConnected as i32);
            connected += st.node_names.len();
        }
    }
    // node-b's flow is older but arrives later: the sort buffer puts it first.
    let now = crate::flow::timestamp_ns(&crate::flow::timestamp(
        i128::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos(),
        )
        .expect("fits"),
    ));
    let flow = |node: &str, t: i128| fpb::Flow {
        time: Some(timestamp(t)),
        node_name: node.into(),
        ..fpb::Flow::default()
    };
    ring_a.push_flow(flow("node-a", now));
    tokio::time::sleep(Duration::from_millis(20)).await;
    ring_b.push_flow(flow("node-b", now - 50_000_000));
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("response");
        if matches!(r.response_types, Some(ResponseTypes::Flow(_))) {
            got.push(r.node_name);
        }
    }
    assert_eq!(got, ["node-b", "node-a"]);
}

#[test]
fn sort_buffer_is_bounded_and_time_ordered() {
    use super::SortBuffer;
    let resp = |t: i128| GetFlowsResponse {
        time: Some(timestamp(t)),
        response_types: Some(ResponseTypes::Flow(fpb::Flow::default())),
        ..GetFlowsResponse::default()
    };
    let now = std::time::Instant::now();
    let mut b = SortBuffer::new(3, Duration::from_mins(1));
    assert!(b.push(resp(30), now).is_empty());
    assert!(b.push(resp(10), now).is_empty());
    assert!(b.push(resp(20), now).is_empty());
    let out = b.push(resp(40), now);
    assert_eq!(out.len(), 1, "over capacity the oldest goes out");
    assert_eq!(out[0].time.as_ref().map(timestamp_ns), Some(10));
    let later = now + Duration::from_mins(2);
    let rest: Vec<_> = b
        .drain_due(later)
        .iter()
        .map(|r| r.time.as_ref().map_or(0, timestamp_ns))
        .collect();
    assert_eq!(rest, [20, 30, 40]);
    assert!(b.is_empty());
}

#[test]
fn wire_responses_keep_the_agents_bytes_and_read_time_and_kind() {
    use prost::Message as _;

    use super::{Kind, WireResponse};
    let r = GetFlowsResponse {
        node_name: "node-a".into(),
        time: Some(timestamp(T0 + 42)),
        response_types: Some(ResponseTypes::Flow(fpb::Flow {
            uuid: "u-1".into(),
            time: Some(timestamp(T0 + 42)),
            ..fpb::Flow::default()
        })),
    };
    let mut bytes = r.encode_to_vec();
    // A field this build does not know (as a newer agent may send) is passed on untouched.
    bytes.extend_from_slice(&[0xf8, 0x3e, 0x07]); // field 1007, varint 7
    let w = WireResponse::parse(bytes.clone().into()).expect("parses");
    assert_eq!(w.time_ns(), T0 + 42);
    assert_eq!(w.kind(), Kind::Flow);
    assert_eq!(&w.bytes()[..], &bytes[..]);
    assert_eq!(w.decode().expect("decodes"), r);
    assert!(WireResponse::parse(vec![0x0a, 0x05, 0x01].into()).is_err());
}

/// How a [`ScriptedAgent`]'s `GetFlows` stream ends after its flows.
#[derive(Clone)]
enum End {
    /// It stays open (an agent still sending a large ring, or a stuck one).
    Open,
    /// It fails with this message.
    Error(&'static str),
}

/// An agent that answers every `GetFlows` with flows at T0 + `offsets_ms`, then ends as told.
#[derive(Clone)]
struct ScriptedAgent {
    node: &'static str,
    offsets_ms: Vec<i128>,
    end: End,
}

type Boxed<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl crate::api::observer::observer_server::Observer for ScriptedAgent {
    type GetFlowsStream = Boxed<GetFlowsResponse>;
    type GetAgentEventsStream = Boxed<crate::api::observer::GetAgentEventsResponse>;
    type GetDebugEventsStream = Boxed<crate::api::observer::GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        _: tonic::Request<GetFlowsRequest>,
    ) -> Result<tonic::Response<Self::GetFlowsStream>, tonic::Status> {
        use futures_util::StreamExt as _;
        let node = self.node;
        let flows: Vec<_> = self
            .offsets_ms
            .iter()
            .map(|off| {
                let t = T0 + off * 1_000_000;
                Ok(GetFlowsResponse {
                    node_name: node.into(),
                    time: Some(timestamp(t)),
                    response_types: Some(ResponseTypes::Flow(fpb::Flow {
                        time: Some(timestamp(t)),
                        node_name: node.into(),
                        ..fpb::Flow::default()
                    })),
                })
            })
            .collect();
        let head = futures_util::stream::iter(flows);
        let s: Self::GetFlowsStream = match self.end {
            End::Open => Box::pin(head.chain(futures_util::stream::pending())),
            End::Error(msg) => Box::pin(head.chain(futures_util::stream::iter([Err(
                tonic::Status::internal(msg),
            )]))),
        };
        Ok(tonic::Response::new(s))
    }
    async fn get_agent_events(
        &self,
        _: tonic::Request<crate::api::observer::GetAgentEventsRequest>,
    ) -> Result<tonic::Response<Self::GetAgentEventsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn get_debug_events(
        &self,
        _: tonic::Request<crate::api::observer::GetDebugEventsRequest>,
    ) -> Result<tonic::Response<Self::GetDebugEventsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn get_nodes(
        &self,
        _: tonic::Request<GetNodesRequest>,
    ) -> Result<tonic::Response<crate::api::observer::GetNodesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn get_namespaces(
        &self,
        _: tonic::Request<crate::api::observer::GetNamespacesRequest>,
    ) -> Result<tonic::Response<crate::api::observer::GetNamespacesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn server_status(
        &self,
        _: tonic::Request<ServerStatusRequest>,
    ) -> Result<tonic::Response<crate::api::observer::ServerStatusResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
}

/// Serves `agent` on a loopback port.
async fn scripted(agent: ScriptedAgent) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(crate::api::observer::observer_server::ObserverServer::new(
                agent,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

/// The flows of a `GetFlows` answer read until `want` flows arrived, within 5 s (the stream
/// may stay open after them).
async fn first_flows(addr: &str, req: GetFlowsRequest, want: usize) -> Vec<(String, i128)> {
    let ch = client::connect(addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut s = ObserverClient::new(ch)
        .get_flows(req)
        .await
        .expect("GetFlows")
        .into_inner();
    let mut got = Vec::new();
    let read = async {
        while got.len() < want {
            match s.message().await.expect("stream") {
                Some(r) => got.extend(flows(&[r])),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the relay held flows back until an agent's stream ended");
    got.into_iter()
        .map(|(n, t)| (n, (t - T0) / 1_000_000))
        .collect()
}

/// With one agent answering, its last `number` flows go out as they arrive: the relay does not
/// hold the answer back until the agent's stream ends.
#[tokio::test]
async fn single_agent_history_streams_before_the_agent_finishes() {
    let slow = scripted(ScriptedAgent {
        node: "node-slow",
        offsets_ms: vec![0, 10],
        end: End::Open,
    })
    .await;
    let (addr, _) = relay(RelayArgs {
        static_peers: vec![("node-slow".into(), slow)],
        ..RelayArgs::default()
    })
    .await;
    let req = GetFlowsRequest {
        number: 100,
        ..GetFlowsRequest::default()
    };
    let got = first_flows(&addr, req, 2).await;
    assert_eq!(got, [("node-slow".into(), 0), ("node-slow".into(), 10)]);
}

/// With several agents and `first`, the merge sends the oldest response it holds before it
/// waits for that agent's next one: an agent whose stream stays open does not hold back what is
/// already known to be next.
#[tokio::test]
async fn merged_first_streams_in_time_order_past_a_stuck_agent() {
    let stuck = scripted(ScriptedAgent {
        node: "node-stuck",
        offsets_ms: vec![5, 25],
        end: End::Open,
    })
    .await;
    let (a, _) = agent("node-a", &[0, 10, 20, 30]).await;
    let (addr, _) = relay(RelayArgs {
        static_peers: vec![("node-a".into(), a), ("node-stuck".into(), stuck)],
        ..RelayArgs::default()
    })
    .await;
    let req = GetFlowsRequest {
        number: 5,
        first: true,
        ..GetFlowsRequest::default()
    };
    let got = first_flows(&addr, req.clone(), 5).await;
    let want: Vec<(String, i128)> = [
        ("node-a", 0),
        ("node-stuck", 5),
        ("node-a", 10),
        ("node-a", 20),
        ("node-stuck", 25),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t))
    .collect();
    assert_eq!(got, want);
}

/// An agent whose stream fails midway is reported as hubble-relay reports it (`NODE_ERROR`
/// naming it, with the error), its flows up to there stay in the answer and the other agents'
/// flows all arrive, in time order.
#[tokio::test]
async fn an_agent_failing_midway_is_a_node_error_and_the_rest_is_merged() {
    let bad = scripted(ScriptedAgent {
        node: "node-bad",
        offsets_ms: vec![15],
        end: End::Error("ring read failed"),
    })
    .await;
    let (a, _) = agent("node-a", &[0, 10, 20, 30]).await;
    let (b, _) = agent("node-b", &[5, 25]).await;
    let (addr, _) = relay(RelayArgs {
        static_peers: vec![
            ("node-a".into(), a),
            ("node-b".into(), b),
            ("node-bad".into(), bad),
        ],
        ..RelayArgs::default()
    })
    .await;
    for number in [0, 100] {
        let rs = get(
            &addr,
            GetFlowsRequest {
                number,
                ..GetFlowsRequest::default()
            },
        )
        .await;
        let times: Vec<i128> = flows(&rs)
            .iter()
            .map(|(_, t)| (t - T0) / 1_000_000)
            .collect();
        assert_eq!(times, [0, 5, 10, 15, 20, 25, 30], "number {number}");
        let error = rs
            .iter()
            .find_map(|r| match &r.response_types {
                Some(ResponseTypes::NodeStatus(s))
                    if s.state_change == NodeState::NodeError as i32 =>
                {
                    Some(s.clone())
                }
                _ => None,
            })
            .expect("a NODE_ERROR event");
        assert_eq!(error.node_names, ["node-bad"]);
        assert!(
            error.message.contains("ring read failed"),
            "{}",
            error.message
        );
        // Every response carries a time; flows carry their agent's node name.
        assert!(rs.iter().all(|r| r.time.is_some()));
        for r in &rs {
            if let Some(ResponseTypes::Flow(f)) = &r.response_types {
                assert_eq!(r.node_name, f.node_name);
                assert!(!r.node_name.is_empty());
            }
        }
    }
}

#[tokio::test]
async fn the_relay_refuses_a_request_over_its_message_size_limit() {
    let (a, _) = agent("node-a", &[0, 10]).await;
    let (relay_addr, _) = relay(RelayArgs {
        static_peers: vec![("node-a".into(), a)],
        max_message_bytes: 1024,
        ..RelayArgs::default()
    })
    .await;
    let ch = client::connect(&relay_addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut c = ObserverClient::new(ch);
    // A request within the limit is served.
    let ok = get(
        &relay_addr,
        GetFlowsRequest {
            number: 10,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    assert_eq!(flows(&ok).len(), 2);
    // A filter list of 4 KiB is over the 1 KiB limit: refused before it reaches any agent.
    let big = GetFlowsRequest {
        number: 10,
        whitelist: vec![crate::api::flow::FlowFilter {
            source_pod: (0..256).map(|i| format!("ns/pod-{i:04}")).collect(),
            ..crate::api::flow::FlowFilter::default()
        }],
        ..GetFlowsRequest::default()
    };
    let status = match c.get_flows(big).await {
        Err(s) => s,
        Ok(r) => r
            .into_inner()
            .message()
            .await
            .expect_err("an oversized request is refused"),
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
}
