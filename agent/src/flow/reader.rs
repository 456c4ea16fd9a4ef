//! Ring-buffer reader: drains datapath events without ever blocking the kernel side; events the
//! kernel could not queue are counted there (`STAT_EVENTS_LOST`) and reported by the agent.

use std::{io::Write as _, sync::atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{
    decode::{Enricher, decode_event, enrich_with},
    record::Flow,
    ring::{FlowRing, StoredFlow},
    verdict::VerdictEvents,
};
use crate::{
    metrics::{FlowRecorder, Metrics},
    nats::FlowExport,
    signals::CountRecorder,
};

/// Where flow records go besides the ring. Writes are buffered and flushed once per batch of
/// events read from the ring buffer, not once per flow.
pub enum FlowSink {
    /// Compact Hubble-style lines on stdout.
    Stdout(std::io::BufWriter<std::io::Stdout>),
    /// JSON lines appended to a file.
    JsonFile(std::io::BufWriter<std::fs::File>),
    /// Nowhere (the ring and metrics only).
    None,
}

impl FlowSink {
    /// Compact lines on stdout.
    pub fn stdout() -> Self {
        Self::Stdout(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ))
    }

    /// JSON lines appended to `file`.
    pub fn json_file(file: std::fs::File) -> Self {
        Self::JsonFile(std::io::BufWriter::with_capacity(64 * 1024, file))
    }

    fn write(&mut self, flow: &Flow) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => writeln!(out, "{}", flow.compact()),
            Self::JsonFile(f) => {
                let line = serde_json::to_string(flow).map_err(std::io::Error::other)?;
                writeln!(f, "{line}")
            }
            Self::None => Ok(()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::JsonFile(f) => f.flush(),
            Self::None => Ok(()),
        }
    }
}

/// Decode → sink, metrics and the flow ring, for one raw ring-buffer record. The flow message
/// itself is built when a reader asks for it (see [`FlowRing`]).
pub struct Pipeline {
    enricher: Enricher,
    sink: FlowSink,
    ring: FlowRing,
    metrics: Metrics,
    recorder: FlowRecorder,
    export: Option<FlowExport>,
    counts: Option<CountRecorder>,
    verdicts: VerdictEvents,
}

impl Pipeline {
    /// A pipeline writing to `ring`, `metrics` and `sink`.
    pub fn new(enricher: Enricher, sink: FlowSink, ring: FlowRing, metrics: Metrics) -> Self {
        let recorder = metrics.flows.recorder();
        Self {
            enricher,
            sink,
            ring,
            metrics,
            recorder,
            export: None,
            counts: None,
            verdicts: VerdictEvents::default(),
        }
    }

    /// Also counts flows and policy drops per endpoint (for compliance signals).
    #[must_use]
    pub fn with_counts(mut self, counts: Option<CountRecorder>) -> Self {
        self.counts = counts;
        self
    }

    /// Also hands every flow to an exporter.
    #[must_use]
    pub fn with_export(mut self, export: Option<FlowExport>) -> Self {
        self.export = export;
        self
    }

    /// Flushes the sink's buffered lines (after each batch of events).
    pub fn flush(&mut self) {
        if let Err(error) = self.sink.flush() {
            tracing::warn!(%error, "flow sink flush failed");
        }
    }

    /// Processes one ring-buffer record (one or two Hubble events, see [`VerdictEvents`]).
    pub fn process(&mut self, bytes: &[u8]) {
        let Some(ev) = decode_event(bytes) else {
            self.metrics.datapath.malformed();
            return;
        };
        let (verdict, ev) = self.verdicts.expand(ev);
        if let Some(v) = verdict {
            self.record(v, false);
        }
        self.record(ev, true);
    }

    /// Sink, metrics, export and ring for one event; `datapath` is false for derived events
    /// (they are not counted again for compliance signals).
    fn record(&mut self, ev: catalyst_policy::datapath::FlowEvent, datapath: bool) {
        let state = self.enricher.current();
        let wall_ns = self.enricher.wall_ns(&ev);
        if !matches!(self.sink, FlowSink::None) {
            let flow = enrich_with(&state, &ev, wall_ns);
            if let Err(error) = self.sink.write(&flow) {
                tracing::warn!(%error, "flow sink write failed");
            }
        }
        self.recorder.observe(&ev);
        if datapath && let Some(counts) = &mut self.counts {
            counts.observe(&ev);
        }
        self.metrics.processed.fetch_add(1, Ordering::Relaxed);
        let stored = StoredFlow {
            event: ev,
            wall_ns,
            state,
        };
        if let Some(export) = &mut self.export {
            export.offer(&stored);
        }
        self.ring.push_stored(stored);
    }
}

/// Reads events until the task is cancelled.
pub async fn run_reader(ring: RingBuf<MapData>, mut pipeline: Pipeline) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped, so
    // the registration never outlives the descriptor.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot register ring buffer fd: {e}"))?;
    loop {
        // The programs wake this reader only when an eighth of the ring is waiting (agent-ebpf
        // `wakeup`); below that it drains the ring every `EVENTS_POLL`.
        match tokio::time::timeout(EVENTS_POLL, fd.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut pipeline);
                guard.clear_ready();
            }
            Err(_) => drain(fd.get_mut(), &mut pipeline),
        }
    }
}

/// How long an event may wait in the ring for the reader when no wakeup comes.
const EVENTS_POLL: std::time::Duration = std::time::Duration::from_millis(10);

fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) {
    let mut any = false;
    while let Some(item) = ring.next() {
        pipeline.process(&item);
        any = true;
    }
    if any {
        pipeline.flush();
    }
}
