//! What a Hubble client sees, over gRPC, of the fidelity items: `peer.Peer/Notify`, the
//! policy-verdict events of denied connections, trace sub-types, uuids, policies with labels
//! and revision, cluster names and workloads, refused filter fields and field-mask paths, gzip.

use std::{collections::BTreeMap, time::Duration};

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, EV_F_NEW, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE,
    FLOW_EVENT_SIZE, FlowEvent, MATCH_L3_L4, PROTO_TCP, TRACE_ESTABLISHED, TRACE_NEW,
    VERDICT_DROPPED, VERDICT_FORWARDED,
};
use tonic::{Code, codec::CompressionEncoding};

use super::{Listeners, ObserverService, PeerInfo, serve};
use crate::{
    api::{
        flow::{self as pb, FlowFilter},
        observer::{
            GetFlowsRequest, get_flows_response::ResponseTypes, observer_client::ObserverClient,
        },
        peer::{ChangeNotificationType, NotifyRequest, peer_client::PeerClient},
    },
    client,
    config::ObserverConfig,
    flow::{EndpointMeta, EnrichState, Enricher, FlowRing, FlowSink, Pipeline, PolicyRefOut},
    metrics::Metrics,
};

fn bytes(ev: &FlowEvent) -> [u8; FLOW_EVENT_SIZE] {
    let mut out = [0u8; FLOW_EVENT_SIZE];
    // SAFETY: FlowEvent is repr(C) plain old data without padding (layout-tested in the policy
    // crate); copying its bytes reads only initialised memory.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::from_ref(ev).cast::<u8>(),
            out.as_mut_ptr(),
            FLOW_EVENT_SIZE,
        );
    }
    out
}

fn state() -> EnrichState {
    EnrichState {
        node: "lab-node".into(),
        cluster: "eu1".into(),
        endpoints: [(
            7,
            EndpointMeta {
                name: "client-0".into(),
                namespace: "shop".into(),
                interface: "veth7".into(),
                workloads: vec![("client".into(), "Deployment".into())],
            },
        )]
        .into(),
        identities: [
            (300, vec!["k8s:app=client".into()]),
            (301, vec!["k8s:app=db".into()]),
        ]
        .into(),
        origins: vec![
            vec![],
            vec![PolicyRefOut {
                name: "deny-db".into(),
                namespace: "shop".into(),
                kind: "CiliumNetworkPolicy".into(),
            }],
            vec![PolicyRefOut {
                name: "allow-web".into(),
                namespace: "shop".into(),
                kind: "CiliumNetworkPolicy".into(),
            }],
        ],
        interfaces: BTreeMap::new(),
        by_ip: BTreeMap::new(),
        revision: 0,
    }
}

fn event(kind: u8, verdict: u8, reason: u8, dir: u8, flags: u8, rule: u32) -> FlowEvent {
    FlowEvent {
        ts_ns: 1_000,
        kind,
        verdict,
        drop_reason: reason,
        direction: dir,
        family: 4,
        protocol: PROTO_TCP,
        tcp_flags: 0x02,
        flags,
        match_type: MATCH_L3_L4,
        trace_reason: TRACE_NEW,
        ifindex: 7,
        endpoint_id: 7,
        src_identity: 300,
        dst_identity: 301,
        rule_id: rule,
        saddr: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
        daddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
        sport: 40_000,
        dport: 5432,
        ..FlowEvent::default()
    }
}

async fn serve_ring(ring: &FlowRing, cfg: &ObserverConfig) -> (String, super::PeerRegistry) {
    let listeners = Listeners::bind(Some("127.0.0.1:0".parse().expect("addr")), None)
        .await
        .expect("bind");
    let addr = listeners.tcp_addr().expect("tcp").to_string();
    let svc = ObserverService::new(ring.clone(), "lab-node", &addr).with_config(cfg);
    let peers = svc.peers().clone();
    tokio::spawn(serve(svc, listeners, None));
    (addr, peers)
}

async fn flows(addr: &str, req: GetFlowsRequest) -> Result<Vec<pb::Flow>, tonic::Status> {
    let ch = client::connect(addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut s = ObserverClient::new(ch)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .get_flows(req)
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await? {
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            out.push(f);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn peer_notify_announces_the_node_then_its_changes() {
    let ring = FlowRing::new(16);
    let cfg = ObserverConfig {
        cluster_name: "eu1".into(),
        ..ObserverConfig::default()
    };
    let (addr, peers) = serve_ring(&ring, &cfg).await;
    let ch = client::connect(&addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut s = PeerClient::new(ch)
        .notify(NotifyRequest {})
        .await
        .expect("Notify")
        .into_inner();
    let first = s.message().await.expect("stream").expect("a peer");
    assert_eq!(first.r#type(), ChangeNotificationType::PeerAdded);
    assert_eq!(first.name, "eu1/lab-node");
    assert_eq!(first.address, addr);
    assert_eq!(first.tls, None, "plaintext listener announces no TLS");
    // An address change reaches open streams as PEER_UPDATED, with the TLS server name Cilium
    // uses.
    peers.upsert(PeerInfo::node("lab-node", "eu1", "192.0.2.7:4244", true));
    let upd = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("update in time")
        .expect("stream")
        .expect("a change");
    assert_eq!(upd.r#type(), ChangeNotificationType::PeerUpdated);
    assert_eq!(upd.address, "192.0.2.7:4244");
    assert_eq!(
        upd.tls.expect("tls").server_name,
        "lab-node.eu1.hubble-grpc.cilium.io"
    );
    peers.remove("eu1/lab-node");
    let gone = s.message().await.expect("stream").expect("a change");
    assert_eq!(gone.r#type(), ChangeNotificationType::PeerDeleted);
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, asserted field by field"
)]
async fn denied_connection_is_a_dropped_policy_verdict_and_a_drop() {
    let ring = FlowRing::new(64);
    let metrics = Metrics::new(16);
    let enricher = Enricher::new(EnrichState::default());
    enricher.replace(state());
    let mut p = Pipeline::new(enricher, FlowSink::None, ring.clone(), metrics.clone());
    // Denied by a deny rule (egress), allowed by a rule (ingress), an established trace in
    // each direction, and a connection in a direction no policy enforces.
    p.process(&bytes(&event(
        EVENT_DROP,
        VERDICT_DROPPED,
        181,
        DIR_EGRESS,
        EV_F_NEW,
        1,
    )));
    p.process(&bytes(&event(
        EVENT_POLICY_VERDICT,
        VERDICT_FORWARDED,
        0,
        DIR_INGRESS,
        EV_F_NEW,
        2,
    )));
    let mut est = event(EVENT_TRACE, VERDICT_FORWARDED, 0, DIR_EGRESS, 0, 2);
    est.trace_reason = TRACE_ESTABLISHED;
    p.process(&bytes(&est));
    est.direction = DIR_INGRESS;
    p.process(&bytes(&est));
    let mut unenforced = event(
        EVENT_POLICY_VERDICT,
        VERDICT_FORWARDED,
        0,
        DIR_INGRESS,
        EV_F_NEW,
        0,
    );
    unenforced.match_type = 0;
    p.process(&bytes(&unenforced));

    let (addr, _) = serve_ring(&ring, &ObserverConfig::default()).await;
    let all = flows(&addr, GetFlowsRequest::default())
        .await
        .expect("flows");
    assert_eq!(all.len(), 6, "one derived verdict + five datapath events");
    let mut uuids: Vec<_> = all.iter().map(|f| f.uuid.clone()).collect();
    assert!(uuids.iter().all(|u| u.len() == 36), "{uuids:?}");
    uuids.dedup();
    assert_eq!(uuids.len(), 6, "uuids are unique");

    let verdicts = flows(
        &addr,
        GetFlowsRequest {
            whitelist: vec![FlowFilter {
                event_type: vec![pb::EventTypeFilter {
                    r#type: 5,
                    ..Default::default()
                }],
                verdict: vec![pb::Verdict::Dropped.into()],
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        },
    )
    .await
    .expect("flows");
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    let v = &verdicts[0];
    assert_eq!(v.drop_reason_desc, pb::DropReason::PolicyDeny as i32);
    assert_eq!(v.policy_match_type, 2);
    assert_eq!(v.traffic_direction, pb::TrafficDirection::Egress as i32);
    let deny = &v.egress_denied_by[0];
    assert_eq!(deny.name, "deny-db");
    assert!(deny.revision >= 1);
    assert!(
        deny.labels
            .contains(&"k8s:io.cilium.k8s.policy.name=deny-db".to_owned()),
        "{:?}",
        deny.labels
    );
    let src = v.source.as_ref().expect("source");
    assert_eq!(src.cluster_name, "eu1");
    assert_eq!(
        src.workloads,
        [pb::Workload {
            name: "client".into(),
            kind: "Deployment".into()
        }]
    );
    // The drop follows its verdict, with the deny policy and no match type.
    let drop = all
        .iter()
        .find(|f| f.event_type.as_ref().is_some_and(|e| e.r#type == 1))
        .expect("drop");
    assert_eq!(drop.event_type.as_ref().expect("type").sub_type, 181);
    assert_eq!(drop.policy_match_type, 0);
    assert_eq!(drop.egress_denied_by[0].name, "deny-db");

    // Trace events: sub-type from-endpoint (5) for egress, to-endpoint (0) for ingress, no
    // match type or allowed-by; the unenforced direction shows as a trace, not a verdict.
    let traces: Vec<_> = all
        .iter()
        .filter(|f| f.event_type.as_ref().is_some_and(|e| e.r#type == 4))
        .collect();
    assert_eq!(traces.len(), 3);
    for t in &traces {
        let sub = t.event_type.as_ref().expect("type").sub_type;
        let want = if t.traffic_direction == pb::TrafficDirection::Egress as i32 {
            5
        } else {
            0
        };
        assert_eq!(sub, want);
        assert_eq!(t.policy_match_type, 0);
        assert!(t.ingress_allowed_by.is_empty() && t.egress_allowed_by.is_empty());
    }
    let allowed: Vec<_> = all
        .iter()
        .filter(|f| f.event_type.as_ref().is_some_and(|e| e.r#type == 5))
        .filter(|f| f.verdict == pb::Verdict::Forwarded as i32)
        .collect();
    assert_eq!(
        allowed.len(),
        1,
        "only the enforced direction has a verdict"
    );
    assert_eq!(allowed[0].ingress_allowed_by[0].name, "allow-web");

    let text = metrics.encode();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle) && l.contains("action=\"dropped\""))
            .map(str::to_owned)
    };
    let dropped = line("hubble_policy_verdicts_total").expect(&text);
    assert!(dropped.ends_with(" 1"), "{dropped}");
    let drops: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("hubble_drop_total{"))
        .collect();
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert!(drops[0].ends_with(" 1"), "the drop counts once: {drops:?}");
}

#[tokio::test]
async fn unsupported_filters_and_unknown_mask_paths_are_invalid_arguments() {
    let ring = FlowRing::new(4);
    let (addr, _) = serve_ring(&ring, &ObserverConfig::default()).await;
    let cel = FlowFilter {
        experimental: Some(pb::flow_filter::Experimental {
            cel_expression: vec!["_flow.verdict == 2".into()],
        }),
        ..FlowFilter::default()
    };
    let bad_node = FlowFilter {
        node_name: vec!["a/b/c".into()],
        ..FlowFilter::default()
    };
    for (f, field) in [
        (cel, "experimental.cel_expression"),
        (bad_node, "node_name"),
    ] {
        let e = flows(
            &addr,
            GetFlowsRequest {
                blacklist: vec![f],
                ..GetFlowsRequest::default()
            },
        )
        .await
        .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(field), "{}", e.message());
    }
    let e = flows(
        &addr,
        GetFlowsRequest {
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["source.pod_name".into(), "source.no_such".into()],
            }),
            ..GetFlowsRequest::default()
        },
    )
    .await
    .expect_err("unknown path");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("source.no_such"), "{}", e.message());
    // The CLI's default compact mask (with fields this agent never fills, such as `l7`) is fine.
    let ok = flows(
        &addr,
        GetFlowsRequest {
            field_mask: Some(prost_types::FieldMask {
                paths: [
                    "time",
                    "source.identity",
                    "source.namespace",
                    "source.pod_name",
                    "destination.pod_name",
                    "l4",
                    "IP",
                    "ethernet",
                    "l7",
                    "Type",
                    "node_name",
                    "is_reply",
                    "event_type",
                    "verdict",
                    "Summary",
                ]
                .map(str::to_owned)
                .to_vec(),
            }),
            ..GetFlowsRequest::default()
        },
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
}
