//! Hubble `FlowFilter`s as a client sends them: the input is a protobuf `GetFlowsRequest`
//! (`blacklist` = 5, `whitelist` = 6; other fields are skipped), optionally carrying flows to match
//! in field 100 (not part of the API). The agent's compiler (`agent/src/flow/filter.rs`) must refuse
//! bad filters with an error that names the field or value, never panic; a compiled filter must
//! match deterministically, and one filter as the whitelist must pass exactly the flows it fails
//! as the blacklist.
#![no_main]

use catalyst_fuzz::{
    api::flow::{self as pb, Flow, FlowFilter, layer4::Protocol},
    filter::FlowFilters,
};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

#[derive(Clone, PartialEq, prost::Message)]
struct Request {
    #[prost(message, repeated, tag = "5")]
    blacklist: Vec<FlowFilter>,
    #[prost(message, repeated, tag = "6")]
    whitelist: Vec<FlowFilter>,
    #[prost(message, repeated, tag = "100")]
    flows: Vec<Flow>,
}

fn sample_flows() -> Vec<Flow> {
    vec![
        Flow {
            uuid: "u-1".into(),
            verdict: pb::Verdict::Dropped.into(),
            drop_reason_desc: pb::DropReason::PolicyDeny.into(),
            ip: Some(pb::Ip {
                source: "10.244.0.10".into(),
                destination: "10.244.0.12".into(),
                ip_version: pb::IpVersion::IPv4.into(),
                ..pb::Ip::default()
            }),
            l4: Some(pb::Layer4 {
                protocol: Some(Protocol::Tcp(pb::Tcp {
                    source_port: 40000,
                    destination_port: 5432,
                    flags: Some(pb::TcpFlags {
                        syn: true,
                        ..pb::TcpFlags::default()
                    }),
                })),
            }),
            source: Some(pb::Endpoint {
                identity: 300,
                namespace: "shop".into(),
                labels: vec![
                    "k8s:app=client".into(),
                    "k8s:io.kubernetes.pod.namespace=shop".into(),
                ],
                pod_name: "client".into(),
                ..pb::Endpoint::default()
            }),
            destination: Some(pb::Endpoint {
                identity: 302,
                namespace: "shop".into(),
                labels: vec!["k8s:app=db".into(), "k8s:tier=data".into()],
                pod_name: "db-0".into(),
                workloads: vec![pb::Workload {
                    name: "db".into(),
                    kind: "StatefulSet".into(),
                }],
                ..pb::Endpoint::default()
            }),
            node_name: "lab-node".into(),
            event_type: Some(pb::CiliumEventType {
                r#type: 1,
                sub_type: 181,
            }),
            traffic_direction: pb::TrafficDirection::Egress.into(),
            is_reply: Some(false),
            interface: Some(pb::NetworkInterface {
                index: 7,
                name: "cat-client".into(),
            }),
            ..Flow::default()
        },
        Flow {
            verdict: pb::Verdict::Forwarded.into(),
            ip: Some(pb::Ip {
                source: "198.51.100.10".into(),
                destination: "fd00::1".into(),
                ip_version: pb::IpVersion::IPv6.into(),
                ..pb::Ip::default()
            }),
            l4: Some(pb::Layer4 {
                protocol: Some(Protocol::IcmPv6(pb::IcmPv6 {
                    r#type: 129,
                    code: 0,
                })),
            }),
            source: Some(pb::Endpoint {
                identity: 2,
                labels: vec!["reserved:world".into()],
                ..pb::Endpoint::default()
            }),
            destination: Some(pb::Endpoint::default()),
            node_name: "other-node".into(),
            event_type: Some(pb::CiliumEventType {
                r#type: 4,
                sub_type: 0,
            }),
            traffic_direction: pb::TrafficDirection::Ingress.into(),
            is_reply: Some(true),
            ..Flow::default()
        },
        Flow::default(),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::decode(data) else {
        return;
    };
    let filters = match FlowFilters::new(&req.whitelist, &req.blacklist) {
        Ok(f) => f,
        Err(e) => {
            // The error reaches the client as InvalidArgument: it must say what is wrong.
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let mut flows = sample_flows();
    flows.extend(req.flows.iter().take(8).cloned());
    for flow in &flows {
        let m = filters.matches(flow);
        assert_eq!(m, filters.matches(flow), "matching is deterministic");
    }
    // One filter at a time: whitelist and blacklist are each other's complement.
    for f in req.whitelist.iter().chain(&req.blacklist).take(4) {
        let only = FlowFilters::new(std::slice::from_ref(f), &[]).expect("compiled in the list");
        let except = FlowFilters::new(&[], std::slice::from_ref(f)).expect("compiled in the list");
        for flow in &flows {
            assert_ne!(
                only.matches(flow),
                except.matches(flow),
                "filter {f:?} on flow {flow:?}"
            );
        }
    }
});
