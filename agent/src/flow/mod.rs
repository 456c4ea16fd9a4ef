//! Flow pipeline: datapath events → decoded, enriched [`Flow`] records → sinks.

mod decode;
mod reader;
mod record;

pub use self::{
    decode::{EndpointMeta, EnrichState, Enricher, drop_reason_name},
    reader::{FlowSink, run_reader},
    record::PolicyRefOut,
};
