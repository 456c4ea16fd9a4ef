//! catalyst-agent as a library: the pieces the binary wires together, public so integration
//! tests (`BPF_PROG_TEST_RUN` against the real programs) and benchmarks can drive them.

pub mod config;
pub mod datapath;
pub mod flow;
pub mod identity;
pub mod run;
pub mod state;
