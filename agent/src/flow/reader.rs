//! Ring-buffer reader: drains datapath events without ever blocking the kernel side; events the
//! kernel could not queue are counted there (`STAT_EVENTS_LOST`) and reported by the agent.

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{
    decode::{Enricher, decode_event},
    record::Flow,
};

/// Where flow records go.
pub enum FlowSink {
    /// Compact Hubble-style lines on stdout.
    Stdout,
    /// JSON lines appended to a file.
    JsonFile(std::fs::File),
    /// Nowhere (counted only).
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

/// Reads events until the task is cancelled. `processed` and `malformed` count what was seen.
pub async fn run_reader(
    ring: RingBuf<MapData>,
    enricher: Enricher,
    mut sink: FlowSink,
    processed: Arc<AtomicU64>,
    malformed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped, so
    // the registration never outlives the descriptor.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot register ring buffer fd: {e}"))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Some(ev) => {
                    let flow = enricher.enrich(&ev);
                    processed.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = sink.write(&flow) {
                        tracing::warn!(error = %e, "flow sink write failed");
                    }
                }
                None => {
                    malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        guard.clear_ready();
    }
}
