//! The bounded in-memory flow ring that `GetFlows` reads from.
//!
//! The ring keeps what the datapath sent plus the enrichment state in force at the time (shared,
//! not copied), and builds the `flow.Flow` message only when a reader asks for it. That keeps
//! the reader's per-event cost to a copy and a reference count, and a 65,536-flow ring to a few
//! MiB instead of one heap-allocated message per flow.
//!
//! Entries carry a sequence number; a follower remembers the next number it wants, so a reader
//! that falls behind by more than the capacity learns exactly how many entries it missed (reported
//! as a `HUBBLE_RING_BUFFER` lost event). Writers never wait for readers long: a reader copies
//! at most [`COPY_CHUNK`] entries per hold of the lock and releases it between chunks, so a
//! `GetFlows --last 65536` (or sixteen of them at once) delays an insert by one chunk's copy,
//! not by the copy of the whole ring. What a reader gets is the entries with sequence numbers
//! from where it started to the end it saw first; entries overwritten while it copied are
//! skipped (counted as missed by a follower).

use std::{
    borrow::Cow,
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use catalyst_policy::datapath::FlowEvent;
use tokio::sync::watch;

use super::{
    convert::{timestamp_ns, to_proto},
    decode::{EnrichState, enrich_with},
};
use crate::api::flow::{Flow, LostEvent};

/// A datapath event as stored: the raw event, its wall-clock time and the enrichment state
/// that was in force when it arrived.
#[derive(Debug, Clone)]
pub struct StoredFlow {
    /// The kernel event.
    pub event: FlowEvent,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub wall_ns: i128,
    /// Enrichment state at arrival.
    pub state: Arc<EnrichState>,
}

/// One entry of the ring.
#[derive(Debug, Clone)]
pub enum RingEvent {
    /// A datapath flow, enriched on read.
    Stored(StoredFlow),
    /// A flow that is already a message (tests, other producers).
    Flow(Arc<Flow>),
    /// Events lost upstream of the ring (kernel ring buffer, pipeline), with when it was noticed.
    Lost(Arc<LostEvent>),
}

impl RingEvent {
    /// Wall-clock time of the entry in nanoseconds since the epoch.
    pub fn time_ns(&self) -> i128 {
        match self {
            Self::Stored(s) => s.wall_ns,
            Self::Flow(f) => f.time.as_ref().map_or(0, timestamp_ns),
            Self::Lost(l) => l.last.as_ref().map_or(0, timestamp_ns),
        }
    }

    /// The flow message of a flow entry.
    pub fn flow(&self) -> Option<Cow<'_, Flow>> {
        match self {
            Self::Stored(s) => Some(Cow::Owned(to_proto(enrich_with(
                &s.state, &s.event, s.wall_ns,
            )))),
            Self::Flow(f) => Some(Cow::Borrowed(f)),
            Self::Lost(_) => None,
        }
    }

    /// Whether the entry is a flow (not a lost-events marker).
    pub fn is_flow(&self) -> bool {
        !matches!(self, Self::Lost(_))
    }
}

/// Entries a reader copies per hold of the ring's lock.
pub const COPY_CHUNK: usize = 1024;

#[derive(Debug)]
struct Inner {
    entries: VecDeque<RingEvent>,
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    /// Flows ever written (lost-event entries excluded).
    seen_flows: u64,
    /// Flows currently held.
    flows: usize,
}

/// A bounded ring of flows and lost-event markers, shared by the reader and the API.
#[derive(Debug, Clone)]
pub struct FlowRing {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
    /// Sequence number one past the newest entry; followers wait on it.
    next_seq: watch::Sender<u64>,
    started: Instant,
}

/// What a read returned.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Entries from the requested sequence number on, oldest first.
    pub events: Vec<RingEvent>,
    /// Entries that were overwritten before the reader got to them.
    pub missed: u64,
    /// Sequence number to ask for next.
    pub next: u64,
}

impl FlowRing {
    /// An empty ring holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (next_seq, _) = watch::channel(0);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: VecDeque::with_capacity(capacity.min(1 << 16)),
                first_seq: 0,
                seen_flows: 0,
                flows: 0,
            })),
            capacity,
            next_seq,
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent deque; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a datapath flow, evicting the oldest entry when full.
    pub fn push_stored(&self, flow: StoredFlow) {
        self.push(RingEvent::Stored(flow));
    }

    /// Appends a flow message.
    pub fn push_flow(&self, flow: Flow) {
        self.push(RingEvent::Flow(Arc::new(flow)));
    }

    /// Appends a lost-events marker.
    pub fn push_lost(&self, lost: LostEvent) {
        self.push(RingEvent::Lost(Arc::new(lost)));
    }

    fn push(&self, ev: RingEvent) {
        let is_flow = ev.is_flow();
        let (next, evicted) = {
            let mut g = self.lock();
            let evicted = if g.entries.len() == self.capacity {
                g.first_seq += 1;
                let old = g.entries.pop_front();
                g.flows -= usize::from(old.as_ref().is_some_and(RingEvent::is_flow));
                old
            } else {
                None
            };
            g.entries.push_back(ev);
            g.seen_flows += u64::from(is_flow);
            g.flows += usize::from(is_flow);
            (g.first_seq + g.entries.len() as u64, evicted)
        };
        // Dropped outside the lock.
        drop(evicted);
        // The value only wakes followers (they track their own position), so skip the wake-up
        // when nobody follows.
        if self.next_seq.receiver_count() > 0 {
            self.next_seq.send_replace(next);
        }
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Flows currently held.
    pub fn len(&self) -> usize {
        self.lock().flows
    }

    /// Whether the ring holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flows ever written.
    pub fn seen_flows(&self) -> u64 {
        self.lock().seen_flows
    }

    /// Time since the ring was created.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Every entry currently held, oldest first, and the sequence number after the newest.
    /// Copied in chunks of [`COPY_CHUNK`] with the lock released between them; entries
    /// overwritten meanwhile are left out, entries written meanwhile are not included.
    pub fn snapshot(&self) -> (Vec<RingEvent>, u64) {
        let (from, end) = {
            let g = self.lock();
            (g.first_seq, g.first_seq + g.entries.len() as u64)
        };
        let (events, _, _) = self.copy_range(from, end, usize::MAX, || {});
        (events, end)
    }

    /// Entries from sequence number `from` on (at most `max`), copied as [`Self::snapshot`]
    /// does.
    pub fn read_from(&self, from: u64, max: usize) -> ReadBatch {
        let end = {
            let g = self.lock();
            g.first_seq + g.entries.len() as u64
        };
        let (events, missed, next) = self.copy_range(from, end, max, || {});
        ReadBatch {
            events,
            missed,
            next,
        }
    }

    /// Copies entries with sequence numbers in `from..end` (at most `max`), [`COPY_CHUNK`] per
    /// lock hold, calling `between` with the lock released after each chunk. Returns the
    /// entries, how many of the range were overwritten before they were copied, and the
    /// sequence number after the last one returned (or the first one not yet written).
    fn copy_range(
        &self,
        from: u64,
        end: u64,
        max: usize,
        mut between: impl FnMut(),
    ) -> (Vec<RingEvent>, u64, u64) {
        let mut events = Vec::with_capacity(
            usize::try_from(end.saturating_sub(from))
                .unwrap_or(usize::MAX)
                .min(max)
                .min(self.capacity),
        );
        let mut missed = 0;
        let mut next = from;
        while next < end && events.len() < max {
            {
                let g = self.lock();
                if next < g.first_seq {
                    // Overwritten before this reader got to them.
                    let gone = g.first_seq.min(end) - next;
                    missed += gone;
                    next += gone;
                }
                let skip = usize::try_from(next - g.first_seq).unwrap_or(usize::MAX);
                let want = usize::try_from(end - next)
                    .unwrap_or(usize::MAX)
                    .min(max - events.len())
                    .min(COPY_CHUNK);
                let before = events.len();
                events.extend(g.entries.iter().skip(skip).take(want).cloned());
                next += (events.len() - before) as u64;
                if events.len() == before {
                    break;
                }
            }
            between();
        }
        (events, missed, next)
    }

    /// A receiver that changes whenever an entry is written.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.next_seq.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: i64) -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: n,
                nanos: 0,
            }),
            ..Flow::default()
        }
    }

    #[test]
    fn evicts_oldest_and_reports_what_a_slow_reader_missed() {
        let ring = FlowRing::new(3);
        for i in 0..5 {
            ring.push_flow(flow(i));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.seen_flows(), 5);
        let b = ring.read_from(0, 10);
        assert_eq!(b.missed, 2);
        assert_eq!(b.next, 5);
        let times: Vec<i128> = b.events.iter().map(RingEvent::time_ns).collect();
        assert_eq!(times, vec![2_000_000_000, 3_000_000_000, 4_000_000_000]);
        let b = ring.read_from(5, 10);
        assert!(b.events.is_empty());
        assert_eq!(b.missed, 0);
        ring.push_lost(LostEvent::default());
        assert_eq!(
            ring.len(),
            2,
            "a lost-events marker evicted a flow and is not one"
        );
    }

    #[test]
    fn a_full_ring_reader_lets_writers_in_between_chunks() {
        let ring = FlowRing::new(4 * COPY_CHUNK);
        for i in 0..4 * COPY_CHUNK {
            ring.push_flow(flow(i64::try_from(i).expect("small")));
        }
        let (from, end) = (0, (4 * COPY_CHUNK) as u64);
        // Each time the reader releases the lock, a writer pushes one entry (a writer that
        // had to wait for the whole copy would deadlock here: the mutex is not reentrant).
        let mut pushed = 0;
        let (events, missed, next) = ring.copy_range(from, end, usize::MAX, || {
            ring.push_flow(flow(-1));
            pushed += 1;
        });
        assert!(
            pushed >= 3,
            "the lock was released between chunks ({pushed})"
        );
        // What the writers overwrote is reported, never returned; nothing newer than `end`.
        assert_eq!(events.len() as u64 + missed, end - from);
        assert_eq!(next, end);
        assert!(events.iter().all(|e| e.time_ns() >= 0));
        let (snap, after) = ring.snapshot();
        assert_eq!(snap.len(), 4 * COPY_CHUNK);
        assert_eq!(after, end + pushed);
    }

    #[test]
    fn stored_flows_are_enriched_on_read_with_the_state_of_their_time() {
        let ring = FlowRing::new(4);
        let mut st = EnrichState {
            node: "n1".into(),
            ..EnrichState::default()
        };
        st.identities.insert(300, vec!["k8s:app=web".into()]);
        let ev = FlowEvent {
            family: 4,
            kind: 5,
            verdict: 1,
            direction: 1,
            dst_identity: 300,
            ..FlowEvent::default()
        };
        ring.push_stored(StoredFlow {
            event: ev,
            wall_ns: 5,
            state: Arc::new(st),
        });
        let (snap, _) = ring.snapshot();
        let f = snap[0].flow().expect("a flow");
        assert_eq!(f.node_name, "n1");
        assert_eq!(
            f.destination.as_ref().expect("destination").labels,
            ["k8s:app=web"]
        );
        assert_eq!(snap[0].time_ns(), 5);
    }
}
