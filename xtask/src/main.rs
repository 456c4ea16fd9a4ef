//! `cargo xtask …`: toolchain setup, builds, the netns lab, the demo, the test suite and the
//! benchmarks. Every step that can fail says what failed and how to fix it.
#![allow(
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    reason = "developer tool: panics are bugs, tasks read top to bottom"
)]

mod bench;
mod demo;
mod fuzz;
mod setup;
mod soak;
mod test;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Catalyst developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what builds and tests need (idempotent): rust-src, bpf-linker, cargo-deny, Debian and `PyPI` packages.
    Setup {
        /// Skip the eBPF toolchain (userspace-only machines).
        #[arg(long)]
        no_ebpf: bool,
        /// Skip apt-get and pip.
        #[arg(long)]
        no_packages: bool,
    },
    /// Build every program (the agent embeds the eBPF object).
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// Create or remove the network-namespace lab.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Build, bring up the lab, run the agent with example policies, drive traffic, print flows.
    Demo,
    /// Continuum live: a 3-node NATS cluster, three catalyst-dns, a PostgreSQL sync pair and three
    /// controllers on loopback; a manual switchover, a primary loss, a region loss and a crash in
    /// the middle of a switchover, with a writer counting acknowledged rows throughout.
    DemoFailover,
    /// Run every test suite: unit, integration, and (as root) the lab end-to-end suites.
    Test {
        /// Only userspace tests that need neither root nor the eBPF toolchain.
        #[arg(long)]
        unit_only: bool,
    },
    /// Soak: traffic, policy churn and DNS queries for N minutes; RSS, open descriptors and map
    /// sizes of the agent and catalyst-dns must stay flat (figures to docs/benchmarks.md).
    Soak {
        /// Length of the run in minutes (the first fifth, at most 60 s, is warm-up).
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Bounded fuzzing smoke: every target (or the named ones) for N seconds on a copy of the
    /// committed seeds (fuzz/seeds/); fails on a crash and prints how to reproduce it.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets (default: all).
        targets: Vec<String>,
    },
    /// Benchmarks (figures to docs/benchmarks.md).
    Bench {
        /// Which benchmark: datapath, policy, flows, dns, dns-cache, controllers, compliance, failover, ipcache, all.
        which: String,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Create the lab namespaces (tears down an existing lab first).
    Up,
    /// Remove the lab namespaces.
    Down,
}

/// Workspace root (the directory above xtask/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_owned()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The developer's lab (`lab up|down`, demo, benchmarks) has fixed names (`cat-node`, …) so
    // `lab down` in another process finds what `lab up` made; test runs use their PID instead.
    catalyst_tests::lab::set_run_id("")?;
    match cli.command {
        Command::Setup {
            no_ebpf,
            no_packages,
        } => setup::setup(!no_ebpf, !no_packages),
        Command::Build { release } => {
            setup::ensure_ebpf_toolchain()?;
            setup::cargo_build(release).map(|_| ())
        }
        Command::Lab {
            action: LabAction::Up,
        } => {
            catalyst_tests::lab::up()?;
            println!(
                "lab up: node namespace {}, pods {:?}",
                catalyst_tests::lab::node_ns(),
                catalyst_tests::lab::PODS
                    .iter()
                    .map(catalyst_tests::lab::Pod::netns)
                    .collect::<Vec<_>>()
            );
            Ok(())
        }
        Command::Lab {
            action: LabAction::Down,
        } => catalyst_tests::lab::down(),
        Command::Demo => demo::demo(),
        Command::DemoFailover => demo::demo_failover(),
        Command::Test { unit_only } => test::test(unit_only),
        Command::Soak { minutes } => soak::soak(minutes),
        Command::Fuzz { seconds, targets } => fuzz::fuzz(seconds, &targets),
        Command::Bench { which } => match which.as_str() {
            "datapath" => bench::datapath(),
            "policy" => bench::policy(),
            "dns" => bench::dns(),
            "dns-cache" => bench::dns_cache_flood(),
            "flows" => bench::flows(),
            "controllers" => bench::controllers(),
            "compliance" => bench::compliance(),
            "failover" => bench::failover(),
            "ipcache" => bench::ipcache(),
            "all" => bench::datapath()
                .and_then(|()| bench::policy())
                .and_then(|()| bench::flows())
                .and_then(|()| bench::dns())
                .and_then(|()| bench::controllers())
                .and_then(|()| bench::compliance())
                .and_then(|()| bench::failover())
                .and_then(|()| bench::ipcache()),
            other => {
                anyhow::bail!(
                    "unknown benchmark `{other}` (available: datapath, policy, flows, dns, dns-cache, controllers, compliance, failover, ipcache, all)"
                )
            }
        },
    }
}
