//! `catalyst-dns serve --config FILE` and `catalyst-dns check-zone FILE`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use catalyst_dns::{
    Config,
    config::LuaConfig,
    failover::FailoverState,
    health::{HealthConfig, Registry},
    lua::Tier,
    zone::{ChunkJoin, Zone, ZoneSource},
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "catalyst-dns",
    version,
    about = "Authoritative DNS with PowerDNS LUA-record-equivalent records"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax); `RUST_LOG` overrides.
    #[arg(long, default_value = "info", global = true)]
    log: String,
    /// Log as JSON.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the zones of a config file.
    Serve {
        /// Config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a zone file; errors name file and line.
    CheckZone {
        /// Zone file.
        file: PathBuf,
        /// Zone apex; default: the file name without a `.zone`/`.db` suffix.
        #[arg(long)]
        origin: Option<String>,
        /// Chunk joining of LUA records (`concat` or `space`).
        #[arg(long, default_value = "concat")]
        chunk_join: String,
        /// List the compiled LUA records.
        #[arg(long)]
        list: bool,
    },
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn default_origin(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = name
        .strip_suffix(".zone")
        .or_else(|| name.strip_suffix(".db"))
        .unwrap_or(&name);
    name.to_string()
}

fn check_zone(file: &Path, origin: Option<String>, join: &str, list: bool) -> anyhow::Result<()> {
    let origin = origin.unwrap_or_else(|| default_origin(file));
    let join = match join {
        "concat" | "no" => ChunkJoin::Concat,
        "space" | "yes" => ChunkJoin::Space,
        other => anyhow::bail!("unknown chunk join mode `{other}` (concat or space)"),
    };
    let version = Arc::default();
    let health = Arc::new(Registry::new(HealthConfig::default(), Arc::clone(&version)));
    let mut next_id = 0;
    let zone = Zone::load(ZoneSource {
        origin: &origin,
        file,
        join,
        health: health.clone(),
        geo: None,
        failover: Arc::new(FailoverState::new(version)),
        next_id: &mut next_id,
        strict: false,
        exec_limit: LuaConfig::default().exec_limit,
    });
    let zone = match zone {
        Ok(z) => z,
        Err(e) => {
            // Every error in the file, each once.
            let messages = e.messages();
            for m in &messages {
                eprintln!("error: {m}");
            }
            anyhow::bail!("{}: {} error(s)", file.display(), messages.len());
        }
    };
    for f in &zone.lua_failures {
        eprintln!("error: {f}");
    }
    let mut records: Vec<_> = zone.lua_records().collect();
    records.sort_by_key(|r| r.line);
    if list {
        for r in &records {
            println!(
                "  line {}: {} {} {} [{}] \"{}\"",
                r.line,
                r.owner_str,
                r.ttl,
                r.rtype,
                r.tier(),
                r.code
            );
        }
    }
    let tiers = |t: Tier| records.iter().filter(|r| r.tier() == t).count();
    println!(
        "{}: zone {}: {} static records, {} LUA records ({} native, {} interpreter, {} failed), {} health checks",
        file.display(),
        zone.origin_str,
        zone.static_records,
        zone.lua_records,
        tiers(Tier::Native),
        tiers(Tier::Interpreter),
        tiers(Tier::Failed),
        health.len()
    );
    if !zone.lua_failures.is_empty() {
        anyhow::bail!(
            "{}: {} LUA record(s) failed to load (they would answer SERVFAIL)",
            file.display(),
            zone.lua_failures.len()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let result = match cli.cmd {
        Cmd::Serve { config } => serve(&config),
        Cmd::CheckZone {
            file,
            origin,
            chunk_join,
            list,
        } => check_zone(&file, origin, &chunk_join, list),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(path).with_context(|| format!("loading {}", path.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("catalyst-dns")
        .build()
        .context("starting the runtime")?;
    rt.block_on(catalyst_dns::run(cfg, Some(path.to_path_buf())))
        .context("serving")
}
