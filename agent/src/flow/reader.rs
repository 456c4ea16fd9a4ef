//! Ring-buffer reader: drains datapath events without ever blocking the kernel side; events the
//! kernel could not queue are counted there (`STAT_EVENTS_LOST`) and reported by the agent.

use std::{io::Write as _, sync::atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{
    convert::to_proto,
    decode::{Enricher, decode_event},
    record::Flow,
    ring::FlowRing,
};
use crate::metrics::Metrics;

/// Where flow records go besides the ring.
pub enum FlowSink {
    /// Compact Hubble-style lines on stdout.
    Stdout,
    /// JSON lines appended to a file.
    JsonFile(std::fs::File),
    /// Nowhere (the ring and metrics only).
    None,
}

impl FlowSink {
    fn write(&mut self, flow: &Flow) -> std::io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", flow.compact())?;
                out.flush()
            }
            Self::JsonFile(f) => {
                let line = serde_json::to_string(flow).map_err(std::io::Error::other)?;
                writeln!(f, "{line}")
            }
            Self::None => Ok(()),
        }
    }
}

/// Decode → enrich → sink, ring and metrics, for one raw ring-buffer record.
pub struct Pipeline {
    /// Enrichment state.
    pub enricher: Enricher,
    /// Optional log sink.
    pub sink: FlowSink,
    /// The flow ring `GetFlows` reads.
    pub ring: FlowRing,
    /// Metrics.
    pub metrics: Metrics,
}

impl Pipeline {
    /// Processes one ring-buffer record.
    pub fn process(&mut self, bytes: &[u8]) {
        let Some(ev) = decode_event(bytes) else {
            self.metrics.datapath.malformed();
            return;
        };
        let flow = self.enricher.enrich(&ev);
        if let Err(error) = self.sink.write(&flow) {
            tracing::warn!(%error, "flow sink write failed");
        }
        let pb = to_proto(flow);
        self.metrics.flows.observe(&pb);
        self.metrics.processed.fetch_add(1, Ordering::Relaxed);
        self.ring.push_flow(pb);
    }
}

/// Reads events until the task is cancelled.
pub async fn run_reader(ring: RingBuf<MapData>, mut pipeline: Pipeline) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped, so
    // the registration never outlives the descriptor.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("cannot register ring buffer fd: {e}"))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            pipeline.process(&item);
        }
        guard.clear_ready();
    }
}
