//! `catalyst-agent bench-flows`: the flow pipeline's throughput on one core (DESIGN.md §7: at
//! least 500,000 events/s decoded and enriched). Synthetic datapath events in their kernel byte
//! form go through the same code as the ring-buffer reader.

use std::time::Instant;

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, EV_F_REPLY, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE,
    FLOW_EVENT_SIZE, FlowEvent, PROTO_TCP, PROTO_UDP, TRACE_NEW, TRACE_REPLY, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};

use crate::{
    flow::{
        EndpointMeta, EnrichState, Enricher, FlowRing, FlowSink, Pipeline, PolicyRefOut,
        decode_event,
    },
    metrics::Metrics,
};

/// Enrichment state of a node with `n` endpoints, one identity each, and a policy per endpoint.
pub fn synthetic_state(n: u32) -> EnrichState {
    let mut st = EnrichState {
        node: "bench-node".into(),
        ..EnrichState::default()
    };
    st.origins.push(Vec::new());
    for i in 0..n {
        let id = 1000 + i;
        st.endpoints.insert(
            id,
            EndpointMeta {
                name: format!("pod-{i}"),
                namespace: format!("ns-{}", i % 16),
                interface: format!("veth{i}"),
            },
        );
        st.identities.insert(
            256 + i,
            vec![
                format!("k8s:app=app-{}", i % 50),
                format!("k8s:io.kubernetes.pod.namespace=ns-{}", i % 16),
                "k8s:openova.io/organization=acme".to_owned(),
            ],
        );
        st.interfaces.insert(id, format!("veth{i}"));
        st.origins.push(vec![PolicyRefOut {
            name: format!("policy-{i}"),
            namespace: format!("ns-{}", i % 16),
            kind: "CiliumNetworkPolicy".into(),
        }]);
    }
    st
}

/// A mix of events: policy verdicts, drops, traces and replies over `endpoints` endpoints.
pub fn synthetic_events(count: usize, endpoints: u32) -> Vec<[u8; FLOW_EVENT_SIZE]> {
    (0..count)
        .map(|i| {
            let i32_ = u32::try_from(i).unwrap_or(u32::MAX);
            let ep = i32_ % endpoints.max(1);
            let peer = (i32_ / 7) % endpoints.max(1);
            let (kind, verdict, drop_reason, flags, trace) = match i % 4 {
                0 => (EVENT_POLICY_VERDICT, VERDICT_FORWARDED, 0, 0, TRACE_NEW),
                1 => (EVENT_DROP, VERDICT_DROPPED, 133, 0, TRACE_NEW),
                2 => (EVENT_TRACE, VERDICT_FORWARDED, 0, EV_F_REPLY, TRACE_REPLY),
                _ => (EVENT_TRACE, VERDICT_FORWARDED, 0, 0, TRACE_NEW),
            };
            let ev = FlowEvent {
                ts_ns: 1_000_000 + i as u64,
                kind,
                verdict,
                drop_reason,
                direction: if i % 2 == 0 { DIR_INGRESS } else { DIR_EGRESS },
                family: 4,
                protocol: if i % 5 == 0 { PROTO_UDP } else { PROTO_TCP },
                tcp_flags: 0x02,
                flags,
                match_type: 2,
                trace_reason: trace,
                ifindex: 1000 + ep,
                endpoint_id: 1000 + ep,
                src_identity: 256 + peer,
                dst_identity: 256 + ep,
                rule_id: ep + 1,
                saddr: [
                    u32::from_ne_bytes([10, 0, (peer >> 8) as u8, peer as u8]),
                    0,
                    0,
                    0,
                ],
                daddr: [
                    u32::from_ne_bytes([10, 0, (ep >> 8) as u8, ep as u8]),
                    0,
                    0,
                    0,
                ],
                sport: 30_000 + (i % 20_000) as u16,
                dport: [80, 443, 5432, 8080][i % 4],
                ..FlowEvent::default()
            };
            // SAFETY: FlowEvent is repr(C) plain old data without padding (layout-tested in
            // catalyst-policy), so its bytes are initialised.
            unsafe { std::mem::transmute::<FlowEvent, [u8; FLOW_EVENT_SIZE]>(ev) }
        })
        .collect()
}

/// Runs the benchmark and prints events/s for decode+enrich and for the whole pipeline.
pub fn flows(events: u64, ring: usize, json: bool) -> anyhow::Result<()> {
    const ENDPOINTS: u32 = 1000;
    let n = usize::try_from(events)?;
    let input = synthetic_events(n.min(1 << 20), ENDPOINTS);
    let enricher = Enricher::new(synthetic_state(ENDPOINTS));

    // Decode + enrich only.
    let start = Instant::now();
    let mut sink = 0usize;
    for i in 0..n {
        let ev = decode_event(&input[i % input.len()]).expect("well-formed");
        sink = sink.wrapping_add(enricher.enrich(&ev).summary.len());
    }
    let enrich_s = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);

    // The reader's full path: decode, enrich, convert to flow.Flow, metrics, flow ring.
    let mut pipeline = Pipeline {
        enricher,
        sink: FlowSink::None,
        ring: FlowRing::new(ring),
        metrics: Metrics::new(256),
    };
    let start = Instant::now();
    for i in 0..n {
        pipeline.process(&input[i % input.len()]);
    }
    let full_s = start.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let (enrich_rate, full_rate) = (n as f64 / enrich_s, n as f64 / full_s);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "events": n,
                "decode_enrich_events_per_s": enrich_rate.round(),
                "pipeline_events_per_s": full_rate.round(),
                "ring_capacity": ring,
                "bar_events_per_s": 500_000,
            })
        );
    } else {
        println!("flow pipeline, one core, {n} events, {ENDPOINTS} endpoints, ring {ring}:");
        println!("  decode + enrich:                         {enrich_rate:>12.0} events/s");
        println!("  decode + enrich + proto + metrics + ring: {full_rate:>12.0} events/s");
        println!(
            "  bar:                                     {:>12} events/s",
            500_000
        );
    }
    Ok(())
}
