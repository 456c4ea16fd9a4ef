//! catalyst-agent: eBPF policy enforcement and flow observability for one node.
//!
//! `catalyst-agent run --config FILE` loads the datapath, keeps the maps in sync with the
//! configuration and policy files (hot reload, fail closed on bad input), attaches to every
//! workload interface and turns datapath events into flow records.

use std::{io::IsTerminal as _, path::PathBuf};

use catalyst_agent::{bench, client, datapath, relay, run};

use clap::{Parser, Subcommand};

/// `--version`: also says whether the eBPF object is in this binary (tests and operators check).
const LONG_VERSION: &str = if cfg!(catalyst_no_ebpf) {
    concat!(
        env!("CARGO_PKG_VERSION"),
        "\neBPF datapath: not built in (the eBPF toolchain was missing at build time; \
         `cargo xtask setup`, then rebuild)"
    )
} else {
    concat!(env!("CARGO_PKG_VERSION"), "\neBPF datapath: embedded")
};

#[derive(Parser)]
#[command(
    name = "catalyst-agent",
    version,
    long_version = LONG_VERSION,
    about = "Catalyst node agent: eBPF flow policy and flow observability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (endpoints and policies from files, or from the Kubernetes API with
    /// `mode: kubernetes`).
    Run {
        /// Agent configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate policy manifests and a configuration without touching the datapath.
    Check {
        /// Agent configuration file (YAML); its policy paths are checked too.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Policy files or directories.
        policies: Vec<PathBuf>,
    },
    /// Print the datapath counters from the pinned maps.
    Counters {
        /// bpffs directory the agent pins to.
        #[arg(long, default_value = "/sys/fs/bpf/catalyst")]
        pin_path: PathBuf,
        /// Output JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show flows from the Observer API, like `hubble observe`.
    Observe(Box<client::ObserveArgs>),
    /// Show the Observer API's health and flow ring, like `hubble status`.
    Status(client::ServerArgs),
    /// Serve a cluster-wide Observer API over several agents, like hubble-relay.
    Relay(Box<relay::RelayArgs>),
    /// Measure the flow pipeline: events decoded, enriched and stored per second on one core.
    #[command(hide = true)]
    BenchFlows {
        /// Events to process.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// Flow ring capacity.
        #[arg(long, default_value_t = 65_536)]
        ring: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the CRDs of Catalyst's own policy kinds (policy.catalyst.openova.io/v1) as YAML.
    Crds,
    /// Detach every program and remove every pinned map and link (stops enforcement).
    Uninstall {
        /// bpffs directory the agent pins to.
        #[arg(long, default_value = "/sys/fs/bpf/catalyst")]
        pin_path: PathBuf,
    },
}

fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("CATALYST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    // `observe --not FLAG VALUE` negates one filter flag, as `hubble observe --not` does.
    let cli = Cli::parse_from(client::split_not(std::env::args().collect())?);
    init_tracing();
    match cli.command {
        Command::Run { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run::run(config))
        }
        Command::Observe(args) => current_thread()?.block_on(client::observe(*args)),
        Command::Status(args) => current_thread()?.block_on(client::status(args)),
        Command::Relay(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(relay::run(*args)),
        Command::BenchFlows { events, ring, json } => bench::flows(events, ring, json),
        Command::Check { config, policies } => run::check(config.as_deref(), &policies),
        Command::Counters { pin_path, json } => run::print_counters(&pin_path, json),
        Command::Crds => {
            print!("{}", catalyst_agent::k8s::crd::definitions_yaml());
            Ok(())
        }
        Command::Uninstall { pin_path } => {
            let n = datapath::uninstall(&pin_path)?;
            println!("removed {n} pinned objects under {}", pin_path.display());
            Ok(())
        }
    }
}
