//! `catalyst-controllers`: tenancy (and, as they land, compliance and Continuum) controllers,
//! against the Kubernetes API or on files (standalone).

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{error, info};

use catalyst_controllers::{
    config::{Config, Mode},
    crd,
    metrics::Metrics,
    standalone,
    validate::Validator,
};

#[derive(Parser)]
#[command(
    name = "catalyst-controllers",
    version,
    about = "Catalyst controllers: tenancy isolation, compliance, Continuum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing buys nothing"
)]
enum Command {
    /// Run the controllers (mode from the config: standalone or kubernetes).
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Standalone mode: reconcile once and exit (non-zero when a resource was refused).
        #[arg(long)]
        once: bool,
    },
    /// Print the CRDs (the YAML committed under deploy/crds/).
    Crds,
    /// Validate custom-resource manifests as the API server would (schema and CEL rules).
    Validate {
        /// Manifest files (multi-document YAML).
        files: Vec<PathBuf>,
    },
    /// Continuum: the lease-fenced multi-region switchover controller (standalone mode).
    Continuum {
        #[command(subcommand)]
        command: ContinuumCommand,
    },
}

#[derive(clap::Args, Clone)]
struct ContinuumCommon {
    /// The Continuum manifest (dr.openova.io/v1 YAML).
    #[arg(long)]
    continuum: PathBuf,
    /// NATS server URL(s), comma-separated (JetStream with KV).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// NATS credentials file (`.creds`: user JWT and `NKey` seed).
    #[arg(long)]
    nats_credentials: Option<PathBuf>,
    /// File holding a bare `NKey` user seed (`SU…`); not with --nats-credentials.
    #[arg(long)]
    nats_nkey_seed_file: Option<PathBuf>,
    /// PEM CA bundle for TLS to NATS (requires TLS).
    #[arg(long)]
    nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS to NATS (with --nats-tls-key).
    #[arg(long)]
    nats_tls_cert: Option<PathBuf>,
    /// PEM key of --nats-tls-cert.
    #[arg(long)]
    nats_tls_key: Option<PathBuf>,
    /// Replicas of the KV buckets when this controller creates them (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1)]
    kv_replicas: usize,
}

#[derive(Subcommand)]
enum ContinuumCommand {
    /// Run one region's controller (one per region; the lease decides which acts).
    Run {
        #[command(flatten)]
        common: ContinuumCommon,
        /// This instance's identity (unique).
        #[arg(long)]
        identity: String,
        /// This instance's region (one of spec.regions).
        #[arg(long)]
        region: String,
        /// Append the epoch history (JSON lines) here.
        #[arg(long)]
        history: Option<PathBuf>,
        /// Rewrite this status file (JSON) on every change.
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// PostgreSQL role.
        #[arg(long, default_value = "postgres")]
        pg_user: String,
        /// This region's PostgreSQL data directory (enables rejoining it as standby).
        #[arg(long)]
        pg_data: Option<PathBuf>,
        /// Folder of `pg_ctl` / `pg_rewind` (default: PATH).
        #[arg(long)]
        pg_bin: Option<PathBuf>,
        /// OS user owning --pg-data (tools run as it via runuser).
        #[arg(long)]
        pg_os_user: Option<String>,
        /// Database probe interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        probe_ms: u64,
        /// Failed probes in a row before a region is down.
        #[arg(long, default_value_t = 2)]
        down_after: u32,
        /// The holder stops acting this many milliseconds before its lease TTL ends.
        #[arg(long, default_value_t = 2000)]
        margin_ms: u64,
        /// Use the Kubernetes API (in-cluster config or `KUBECONFIG`): `CloudNativePG` databases,
        /// `HTTPRoute` weights, and the Continuum's status.
        #[arg(long)]
        kube: bool,
    },
    /// Request a manual switchover to a region (the lease holder runs it).
    Switchover {
        #[command(flatten)]
        common: ContinuumCommon,
        /// Target region.
        #[arg(long)]
        to: String,
    },
    /// Check an epoch history file: overlapping holders, stale side effects, DNS regressions.
    Check {
        /// History files (JSON lines), merged.
        files: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", crd::yaml());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Validate { files } => validate(&files),
        Command::Continuum { command } => continuum(command),
        Command::Run { config, once } => {
            let cfg = Config::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(run(cfg, once))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn nats_auth(c: &ContinuumCommon) -> catalyst_policy::nats::NatsAuth {
    let tls = (c.nats_tls_ca.is_some() || c.nats_tls_cert.is_some() || c.nats_tls_key.is_some())
        .then(|| catalyst_policy::nats::NatsTls {
            ca_file: c.nats_tls_ca.clone(),
            cert_file: c.nats_tls_cert.clone(),
            key_file: c.nats_tls_key.clone(),
        });
    catalyst_policy::nats::NatsAuth {
        credentials: c.nats_credentials.clone(),
        nkey_seed_file: c.nats_nkey_seed_file.clone(),
        tls,
    }
}

fn continuum(cmd: ContinuumCommand) -> anyhow::Result<std::process::ExitCode> {
    use catalyst_controllers::continuum::{history, postgres, run, store::Names};
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    let names = |c: &ContinuumCommon| Names {
        replicas: c.kv_replicas,
        ..Names::default()
    };
    match cmd {
        ContinuumCommand::Run {
            common,
            identity,
            region,
            history,
            status_file,
            pg_user,
            pg_data,
            pg_bin,
            pg_os_user,
            probe_ms,
            down_after,
            margin_ms,
            kube,
        } => {
            let rt = rt()?;
            let kube = if kube {
                Some(rt.block_on(catalyst_controllers::continuum::kube::Kube::infer())?)
            } else {
                None
            };
            let opts = run::Options {
                continuum: common.continuum.clone(),
                nats: common.nats.clone(),
                nats_auth: nats_auth(&common),
                names: names(&common),
                identity,
                region,
                history,
                status_file,
                pg: postgres::PgAuth {
                    user: pg_user,
                    ..postgres::PgAuth::default()
                },
                local: pg_data.map(|data| postgres::LocalServer {
                    data,
                    bin: pg_bin,
                    os_user: pg_os_user,
                }),
                probe_every: std::time::Duration::from_millis(probe_ms.max(50)),
                down_after: down_after.max(1),
                margin: std::time::Duration::from_millis(margin_ms),
                kube,
            };
            rt.block_on(run::run(opts))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        ContinuumCommand::Switchover { common, to } => {
            rt()?.block_on(run::request_switchover(
                &common.continuum,
                &common.nats,
                &nats_auth(&common),
                &to,
                names(&common),
            ))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        ContinuumCommand::Check { files } => {
            let mut events = Vec::new();
            for f in &files {
                events.extend(history::read(f)?);
            }
            let v = history::check(&events);
            println!("{}", serde_json::to_string(&v)?);
            Ok(if v.ok() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
    }
}

fn validate(files: &[PathBuf]) -> anyhow::Result<std::process::ExitCode> {
    let validator = Validator::for_catalyst();
    let mut bad = 0usize;
    for file in files {
        let dir = tempdir_with(file)?;
        let (inputs, errors) =
            standalone::load(dir.path(), &validator, &standalone::Inputs::default());
        for e in &errors {
            println!("{}: document {}: {}", file.display(), e.document, e.message);
        }
        bad += errors.len();
        let n = inputs.organizations.len()
            + inputs.environments.len()
            + inputs.environment_policies.len()
            + inputs.continuums.len();
        if errors.is_empty() {
            println!("{}: {n} resource(s) valid", file.display());
        }
    }
    Ok(if bad == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// The loader reads directories; a single file is linked into a private one.
fn tempdir_with(file: &std::path::Path) -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "catalyst-validate-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(file, dir.join("input.yaml"))
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    Ok(TempDir(dir))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct TempDir(PathBuf);
impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(cfg: Config, once: bool) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let listener = tokio::net::TcpListener::bind(cfg.metrics.listen_address)
        .await
        .with_context(|| {
            format!(
                "metrics.listen_address {}: cannot listen",
                cfg.metrics.listen_address
            )
        })?;
    info!(address = %cfg.metrics.listen_address, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(catalyst_controllers::metrics::serve(
        listener,
        metrics.clone(),
        cfg.metrics
            .limits()
            .context("metrics: invalid HTTP limits")?,
        stop_rx.clone(),
    ));
    // Kubernetes mode runs the aggregator under the leader lease (kubernetes.rs).
    let compliance = (cfg.compliance.enabled && cfg.mode == Mode::Standalone).then(|| {
        let files = catalyst_controllers::compliance::Files {
            resources: cfg.standalone.as_ref().map(|s| s.input.clone()),
            output: cfg.standalone.as_ref().map(|s| s.output.clone()),
        };
        tokio::spawn(catalyst_controllers::compliance::run(
            cfg.compliance.clone(),
            files,
            metrics.clone(),
            stop_rx.clone(),
        ))
    });
    let result = match cfg.mode {
        Mode::Standalone => {
            let s = cfg.standalone.clone().context("standalone: missing")?;
            info!(input = %s.input.display(), output = %s.output.display(), "standalone mode");
            standalone::run(
                s,
                cfg.tenancy.clone(),
                metrics.clone(),
                once,
                stop_rx.clone(),
            )
            .await
        }
        Mode::Kubernetes => {
            catalyst_controllers::kubernetes::run(cfg.clone(), metrics.clone(), stop_rx.clone())
                .await
        }
    };
    server.abort();
    if let Some(c) = compliance {
        if once {
            c.abort();
        } else {
            c.await.context("compliance aggregator panicked")??;
        }
    }
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
