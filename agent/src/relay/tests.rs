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

    // `number` applies to the merged stream: the newest 4, oldest first; `first`: the oldest 2.
    let last4 = flows(
        &get(
            &addr,
            GetFlowsRequest {
                number: 4,
                ..GetFlowsRequest::default()
            },
        )
        .await,
    );
    let t: Vec<i128> = last4.iter().map(|(_, t)| (t - T0) / 1_000_000).collect();
    assert_eq!(t, [60, 70, 80, 90]);
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
    assert_eq!(t, [0, 10]);

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
