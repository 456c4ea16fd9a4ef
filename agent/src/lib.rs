//! catalyst-agent as a library: the pieces the binary wires together, public so integration
//! tests (`BPF_PROG_TEST_RUN` against the real programs) and benchmarks can drive them.

pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod datapath;
pub mod flow;
pub mod identity;
pub mod k8s;
pub mod metrics;
pub mod nats;
pub mod observer;
pub mod relay;
pub mod run;
pub mod signals;
pub mod state;
pub mod watch;
