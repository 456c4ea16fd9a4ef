//! Time ordering of the responses of several agents.

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    time::{Duration, Instant},
};

use crate::{
    api::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes},
    flow::timestamp_ns,
};

fn time_of(r: &GetFlowsResponse) -> i128 {
    r.time.as_ref().map_or(0, timestamp_ns)
}

fn is_flow(r: &GetFlowsResponse) -> bool {
    matches!(r.response_types, Some(ResponseTypes::Flow(_)))
}

/// The historic answer of several agents as one: every response in time order, limited to
/// `number` flows (the oldest with `first`, else the newest) as one agent would limit them.
/// Lost events and node status go along and do not count.
pub fn merge_history(
    mut all: Vec<GetFlowsResponse>,
    req: &GetFlowsRequest,
) -> Vec<GetFlowsResponse> {
    // Stable: responses of one agent with equal times keep their order.
    all.sort_by_key(time_of);
    let flows = all.iter().filter(|r| is_flow(r)).count();
    let limit = match req.number {
        0 => flows,
        n => usize::try_from(n).unwrap_or(usize::MAX).min(flows),
    };
    let skip_flows = if req.first { 0 } else { flows - limit };
    let mut seen = 0usize;
    all.into_iter()
        .filter(|r| {
            if !is_flow(r) {
                return true;
            }
            seen += 1;
            seen > skip_flows && seen <= skip_flows + limit
        })
        .collect()
}

struct Entry {
    time: i128,
    seq: u64,
    arrived: Instant,
    response: GetFlowsResponse,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// The follow-mode sort buffer: responses wait up to `window` for older ones from slower
/// agents, and at most `capacity` wait at once (the oldest goes out when it is full).
pub struct SortBuffer {
    heap: BinaryHeap<Reverse<Entry>>,
    capacity: usize,
    window: Duration,
    seq: u64,
}

impl SortBuffer {
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
    pub fn push(&mut self, response: GetFlowsResponse, now: Instant) -> Vec<GetFlowsResponse> {
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
    pub fn drain_due(&mut self, now: Instant) -> Vec<GetFlowsResponse> {
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
    pub fn drain_all(&mut self) -> Vec<GetFlowsResponse> {
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
