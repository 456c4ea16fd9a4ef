//! Flow pipeline: datapath events → decoded, enriched [`Flow`](record::Flow) records → the flow
//! ring, metrics and sinks; Hubble filters and printers for the API and the CLI.

mod convert;
mod decode;
pub mod filter;
pub mod print;
mod reader;
mod record;
mod ring;
mod verdict;

pub use self::{
    convert::{EMITTER, timestamp, timestamp_ns, to_proto},
    decode::{EndpointMeta, EnrichState, Enricher, decode_event, drop_reason_name, rfc3339_nanos},
    reader::{FlowSink, Pipeline, run_reader},
    record::PolicyRefOut,
    ring::{FlowRing, RingEvent, StoredFlow},
};
