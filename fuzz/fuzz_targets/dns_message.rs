//! DNS messages: any datagram through the UDP handler (parse, cache, resolve, encode) against the
//! example zone. No panic; when the handler answers, the answer is a well-formed DNS response
//! that carries the query's ID; the second pass (answered from the cache when cacheable) too.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use catalyst_dns::{
    Catalog, ZoneSet,
    failover::FailoverState,
    health::{HealthConfig, Registry},
    metrics::DnsMetrics,
    server::udp,
    zone::{ChunkJoin, Zone, ZoneSource, parser},
};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

const ZONE: &str = include_str!("../../deploy/examples/dns/example.org.zone");

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| {
        let version = Arc::default();
        let health = Arc::new(Registry::new(HealthConfig::default(), Arc::clone(&version)));
        let mut next_id = 0;
        let zone = Zone::from_raw(
            parser::parse_str(ZONE, "example.org.").expect("example zone parses"),
            ZoneSource {
                origin: "example.org.",
                file: std::path::Path::new("example.org.zone"),
                join: ChunkJoin::Concat,
                health,
                geo: None,
                failover: Arc::new(FailoverState::new(Arc::clone(&version))),
                next_id: &mut next_id,
                strict: false,
                exec_limit: 1000,
            },
        )
        .expect("example zone loads");
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = DnsMetrics::register(&mut registry);
        Catalog::new(ZoneSet::new(vec![Arc::new(zone)]), version, metrics, true)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let src: SocketAddr = "192.0.2.7:5353".parse().unwrap();
    let mut worker = udp::Worker::new(catalog(), src.ip(), true, 64);
    for _ in 0..2 {
        out.clear();
        let reply = worker.handle(data, src, &mut out);
        worker.flush();
        if !reply {
            continue;
        }
        assert!(out.len() >= 12, "answer shorter than a header: {out:?}");
        assert_eq!(out[..2], data[..2], "answer ID differs from the query's");
        assert!(out[2] & 0x80 != 0, "answer without the QR bit");
        if let Err(e) = Message::from_vec(&out) {
            panic!("answer does not parse ({e}): {out:?}");
        }
    }
});
