//! `catalyst-agent bench-flows`: the flow pipeline's throughput on one core (DESIGN.md §7: at
//! least 500,000 events/s decoded and enriched). Synthetic datapath events in their kernel byte
//! form go through the same code as the ring-buffer reader.

use std::{sync::Arc, time::Instant};

use anyhow::Context as _;

use catalyst_policy::datapath::{
    DIR_EGRESS, DIR_INGRESS, EV_F_REPLY, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE,
    FLOW_EVENT_SIZE, FlowEvent, PROTO_TCP, PROTO_UDP, TRACE_NEW, TRACE_REPLY, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};

use crate::{
    flow::{
        EndpointMeta, EnrichState, Enricher, FlowRing, FlowSink, Pipeline, PolicyRefOut,
        decode_event, to_proto,
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
                workloads: Vec::new(),
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

/// Resident set size of this process in KiB (0 when /proc is unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rate(n: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let r = n as f64 / start.elapsed().as_secs_f64();
    r
}

/// Ingest rate (events/s) of the pipeline while `readers` threads each take `--last <capacity>`
/// snapshots of the ring in a loop, as concurrent `GetFlows --last 65536` clients do. Same ring
/// capacity, same input, so the figures for 0, 1 and 16 readers compare directly.
fn ingest_with_readers(
    n: usize,
    ring: usize,
    input: &[[u8; FLOW_EVENT_SIZE]],
    enricher: &Enricher,
    readers: usize,
) -> (f64, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let flow_ring = FlowRing::new(ring);
    let mut pipeline = Pipeline::new(
        enricher.clone(),
        FlowSink::None,
        flow_ring.clone(),
        Metrics::new(256),
    );
    // Fill the ring first, so every reader copies a full one.
    for i in 0..ring {
        pipeline.process(&input[i % input.len()]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let (r, stop, reads) = (flow_ring.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (held, _) = r.snapshot();
                    std::hint::black_box(held.len());
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let ingest = rate(n, || {
        for i in 0..n {
            pipeline.process(&input[i % input.len()]);
        }
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    (ingest, reads.load(Ordering::Relaxed))
}

/// `GetFlows` with `follow` to a gRPC client over TCP loopback while the pipeline ingests `n`
/// events on another thread as fast as it can: flows delivered per second, and how many the
/// client missed (reported to it as `HUBBLE_RING_BUFFER` lost events).
fn follow(
    n: usize,
    ring: usize,
    input: Arc<Vec<[u8; FLOW_EVENT_SIZE]>>,
    enricher: Enricher,
) -> anyhow::Result<(f64, u64, u64)> {
    use crate::{
        api::observer::{
            GetFlowsRequest, get_flows_response::ResponseTypes, observer_client::ObserverClient,
        },
        observer::{Listeners, ObserverService, serve},
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let flow_ring = FlowRing::new(ring);
        let listeners =
            Listeners::bind(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))), None).await?;
        let addr = listeners.tcp_addr().context("bound")?;
        tokio::spawn(serve(
            ObserverService::new(flow_ring.clone(), "bench-node", &addr.to_string()),
            listeners,
            None,
        ));
        let channel =
            crate::client::connect(&addr.to_string(), std::time::Duration::from_secs(5)).await?;
        let mut stream = ObserverClient::new(channel)
            .get_flows(GetFlowsRequest {
                follow: true,
                ..GetFlowsRequest::default()
            })
            .await?
            .into_inner();
        let start = Instant::now();
        let producer = std::thread::spawn(move || {
            let mut p = Pipeline::new(enricher, FlowSink::None, flow_ring, Metrics::new(256));
            for i in 0..n {
                p.process(&input[i % input.len()]);
            }
        });
        let (mut got, mut lost) = (0u64, 0u64);
        while got + lost < n as u64 {
            match stream.message().await? {
                Some(r) => match r.response_types {
                    Some(ResponseTypes::Flow(_)) => got += 1,
                    Some(ResponseTypes::LostEvents(l)) => lost += l.num_events_lost,
                    _ => {}
                },
                None => break,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))?;
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = got as f64 / secs;
        Ok((rate, got, lost))
    })
}

/// What [`relay_vs_direct`] measured, flows/s, best of three rounds each.
struct RelayRates {
    /// One agent's full ring straight from the agent.
    direct: f64,
    /// The same through a relay in front of that agent.
    relay: f64,
    /// Two agents holding half the flows each (interleaved in time), merged by a relay: the
    /// newest `flows` of both, the answer `hubble observe --last N` gets from a cluster.
    relay_two: f64,
}

/// Historic `GetFlows` of a full ring (`flows` flows) straight from one agent, through a relay
/// in front of it, and merged by a relay from two agents holding half of them each;
/// alternating, three rounds each, same process and run. What the relay adds is the second
/// gRPC hop and its merge.
fn relay_vs_direct(
    flows: usize,
    input: &[[u8; FLOW_EVENT_SIZE]],
    enricher: &Enricher,
) -> anyhow::Result<RelayRates> {
    use crate::{
        api::observer::{
            GetFlowsRequest, get_flows_response::ResponseTypes, observer_client::ObserverClient,
        },
        observer::{Listeners, ObserverService, serve},
        relay::{self, RelayArgs, RelayService},
    };
    let filled = |pick: &dyn Fn(usize) -> bool| {
        let ring = FlowRing::new(flows);
        let mut p = Pipeline::new(
            enricher.clone(),
            FlowSink::None,
            ring.clone(),
            Metrics::new(256),
        );
        for i in (0..flows).filter(|i| pick(*i)) {
            p.process(&input[i % input.len()]);
        }
        ring
    };
    let (full, even, odd) = (
        filled(&|_| true),
        filled(&|i| i % 2 == 0),
        filled(&|i| i % 2 == 1),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = |ring: FlowRing, node: &'static str| async move {
            let listeners =
                Listeners::bind(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))), None)
                    .await?;
            let addr = listeners.tcp_addr().context("bound")?.to_string();
            tokio::spawn(serve(
                ObserverService::new(ring, node, &addr),
                listeners,
                None,
            ));
            anyhow::Ok(addr)
        };
        let relay = |peers: Vec<(String, String)>| async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            tokio::spawn(relay::serve(
                RelayService::new(RelayArgs {
                    static_peers: peers,
                    ..RelayArgs::default()
                }),
                l,
            ));
            anyhow::Ok(addr)
        };
        let direct_addr = agent(full, "bench-node").await?;
        let relay_addr = relay(vec![("bench-node".into(), direct_addr.clone())]).await?;
        let (a, b) = (agent(even, "bench-a").await?, agent(odd, "bench-b").await?);
        let relay_two_addr = relay(vec![("bench-a".into(), a), ("bench-b".into(), b)]).await?;
        let fetch = |addr: String| async move {
            let ch = crate::client::connect(&addr, std::time::Duration::from_secs(5)).await?;
            let start = Instant::now();
            let mut s = ObserverClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .get_flows(GetFlowsRequest {
                    number: flows as u64,
                    ..GetFlowsRequest::default()
                })
                .await?
                .into_inner();
            let (mut got, mut last) = (0usize, None);
            while let Some(r) = s.message().await? {
                if matches!(r.response_types, Some(ResponseTypes::Flow(_))) {
                    got += 1;
                    let t = r.time.as_ref().map(crate::flow::timestamp_ns);
                    anyhow::ensure!(last <= t, "{addr}: flows out of time order");
                    last = t;
                }
            }
            anyhow::ensure!(got == flows, "{addr}: {got} of {flows} flows");
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let rate = got as f64 / start.elapsed().as_secs_f64();
            anyhow::Ok(rate)
        };
        let (mut direct, mut relayed, mut relay_two) = (0f64, 0f64, 0f64);
        for _ in 0..3 {
            direct = direct.max(fetch(direct_addr.clone()).await?);
            relayed = relayed.max(fetch(relay_addr.clone()).await?);
            relay_two = relay_two.max(fetch(relay_two_addr.clone()).await?);
        }
        anyhow::Ok(RelayRates {
            direct,
            relay: relayed,
            relay_two,
        })
    })
}

/// Runs the benchmark and prints events/s for three paths: the reader's ingest (what bounds the
/// kernel ring's drain rate), decode + enrich into the flow record, and decode + enrich + the
/// `flow.Flow` message (what a `GetFlows` reader pays per flow).
///
/// # Panics
///
/// If a synthetic event does not decode (a bug in the benchmark itself).
#[expect(
    clippy::too_many_lines,
    reason = "one benchmark run, phase after phase, printed as one report"
)]
pub fn flows(events: u64, ring: usize, json: bool) -> anyhow::Result<()> {
    const ENDPOINTS: u32 = 1000;
    let n = usize::try_from(events)?;
    let input = synthetic_events(n.min(1 << 20), ENDPOINTS);
    let enricher = Enricher::new(synthetic_state(ENDPOINTS));

    let rss_before = rss_kib();
    let pipeline_ring = FlowRing::new(ring);
    // As in the agent: per-endpoint counts for the compliance signals included.
    let mut pipeline = Pipeline::new(
        enricher.clone(),
        FlowSink::None,
        pipeline_ring.clone(),
        Metrics::new(256),
    )
    .with_counts(Some(
        Arc::new(crate::signals::FlowCounts::default()).recorder(),
    ));
    let ingest = rate(n, || {
        for i in 0..n {
            pipeline.process(&input[i % input.len()]);
        }
    });
    // What the full ring (and the metrics) added to the process; the synthetic input is excluded.
    let ring_kib = rss_kib().saturating_sub(rss_before);
    // What a GetFlows reader pays: build every held flow's message once.
    let (held, _) = pipeline_ring.snapshot();
    let read = rate(held.len(), || {
        let n: usize = held
            .iter()
            .filter_map(crate::flow::RingEvent::flow)
            .map(|f| f.summary.len())
            .sum();
        std::hint::black_box(n);
    });
    let mut sink = 0usize;
    let enrich = rate(n, || {
        for i in 0..n {
            let ev = decode_event(&input[i % input.len()]).expect("well-formed");
            sink = sink.wrapping_add(enricher.enrich(&ev).summary.len());
        }
    });
    let message = rate(n, || {
        for i in 0..n {
            let ev = decode_event(&input[i % input.len()]).expect("well-formed");
            sink = sink.wrapping_add(to_proto(enricher.enrich(&ev)).summary.len());
        }
    });
    std::hint::black_box(sink);
    let contended: Vec<(usize, f64, u64)> = [0, 1, 16]
        .into_iter()
        .map(|readers| {
            let (r, reads) = ingest_with_readers(n, ring, &input, &enricher, readers);
            (readers, r, reads)
        })
        .collect();
    let rates = relay_vs_direct(ring, &input, &enricher)?;
    let (direct_rate, relay_rate, relay_two_rate) = (rates.direct, rates.relay, rates.relay_two);
    let relay_cost = 100.0 * (1.0 - relay_rate / direct_rate);
    let relay_two_cost = 100.0 * (1.0 - relay_two_rate / direct_rate);
    let (follow_rate, follow_got, follow_lost) = follow(n, ring, Arc::new(input), enricher)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "events": n,
                "endpoints": ENDPOINTS,
                "ring_capacity": ring,
                "ingest_events_per_s": ingest.round(),
                "decode_enrich_events_per_s": enrich.round(),
                "decode_enrich_message_events_per_s": message.round(),
                "ring_read_flows_per_s": read.round(),
                "ring_rss_kib": ring_kib,
                "follow_flows_per_s": follow_rate.round(),
                "follow_delivered": follow_got,
                "follow_lost": follow_lost,
                "history_direct_flows_per_s": direct_rate.round(),
                "history_relay_flows_per_s": relay_rate.round(),
                "relay_cost_percent": (relay_cost * 10.0).round() / 10.0,
                "history_relay_two_agents_flows_per_s": relay_two_rate.round(),
                "relay_two_agents_cost_percent": (relay_two_cost * 10.0).round() / 10.0,
                "bar_events_per_s": 500_000,
                "ingest_with_last_readers": contended.iter().map(|(readers, r, reads)| {
                    serde_json::json!({
                        "readers": readers,
                        "ingest_events_per_s": r.round(),
                        "snapshots_taken": reads,
                    })
                }).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("flow pipeline, one core, {n} events, {ENDPOINTS} endpoints, ring {ring}:");
        println!("  ingest (decode, metrics, counts, ring): {ingest:>12.0} events/s");
        println!("  decode + enrich (flow record):          {enrich:>12.0} events/s");
        println!("  decode + enrich + flow.Flow message:    {message:>12.0} events/s");
        println!("  ring read (flow.Flow from held flows):  {read:>12.0} flows/s");
        println!("  RSS added by the full ring:             {ring_kib:>12} KiB");
        for (readers, r, reads) in &contended {
            println!(
                "  ingest with {readers:>2} `--last {ring}` readers:  {r:>12.0} events/s ({reads} snapshots)"
            );
        }
        println!("  GetFlows follow to a client (TCP):      {follow_rate:>12.0} flows/s");
        println!(
            "    ({follow_got} delivered, {follow_lost} reported lost: ingest ran at full speed)"
        );
        println!("  GetFlows history, one agent direct:     {direct_rate:>12.0} flows/s");
        println!(
            "  GetFlows history through the relay:     {relay_rate:>12.0} flows/s ({relay_cost:.1} % cost, bar 20 %)"
        );
        println!(
            "  the same, two agents merged by the relay: {relay_two_rate:>10.0} flows/s ({relay_two_cost:.1} % cost, bar 20 %)"
        );
        println!(
            "  bar (decoded and enriched):             {:>12} events/s",
            500_000
        );
    }
    Ok(())
}
