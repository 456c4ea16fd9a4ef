//! Time ordering of the responses of several agents.

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    time::{Duration, Instant},
};

use super::wire::WireResponse;
use crate::{api::observer::GetFlowsResponse, flow::timestamp_ns};

/// What the merge reads of a response: its time.
pub trait Timed {
    /// `time`, nanoseconds since the epoch (0 when absent).
    fn time_ns(&self) -> i128;
}

impl Timed for GetFlowsResponse {
    fn time_ns(&self) -> i128 {
        self.time.as_ref().map_or(0, timestamp_ns)
    }
}

impl Timed for WireResponse {
    fn time_ns(&self) -> i128 {
        WireResponse::time_ns(self)
    }
}

fn time_of<T: Timed>(r: &T) -> i128 {
    r.time_ns()
}

struct Entry<T> {
    time: i128,
    seq: u64,
    arrived: Instant,
    response: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// The follow-mode sort buffer: responses wait up to `window` for older ones from slower
/// agents, and at most `capacity` wait at once (the oldest goes out when it is full).
pub struct SortBuffer<T = GetFlowsResponse> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    capacity: usize,
    window: Duration,
    seq: u64,
}

impl<T: Timed> SortBuffer<T> {
    /// An empty buffer.
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            heap: BinaryHeap::new(),
            capacity: capacity.max(1),
            window,
            seq: 0,
        }
    }

    /// Adds a response that arrived at `now`; returns what must go out to stay within capacity
    /// and what has waited long enough.
    pub fn push(&mut self, response: T, now: Instant) -> Vec<T> {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            time: time_of(&response),
            seq: self.seq,
            arrived: now,
            response,
        }));
        let mut out = Vec::new();
        while self.heap.len() > self.capacity {
            if let Some(Reverse(e)) = self.heap.pop() {
                out.push(e.response);
            }
        }
        out.extend(self.drain_due(now));
        out
    }

    /// The oldest responses that have waited `window`, in time order.
    pub fn drain_due(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(Reverse(e)) = self.heap.peek() {
            if now.duration_since(e.arrived) < self.window {
                break;
            }
            if let Some(Reverse(e)) = self.heap.pop() {
                out.push(e.response);
            }
        }
        out
    }

    /// Everything still held, in time order.
    pub fn drain_all(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(Reverse(e)) = self.heap.pop() {
            out.push(e.response);
        }
        out
    }

    /// Responses held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
