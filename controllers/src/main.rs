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
        stop_rx.clone(),
    ));
    let compliance = cfg.compliance.enabled.then(|| {
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
