//! The PostgreSQL driver (standalone mode and the lab): a primary with a synchronous standby
//! (`synchronous_commit = remote_apply`), switched with PostgreSQL's own mechanisms.
//!
//! - **Probe**: `pg_is_in_recovery()` and replication lag (primary's `pg_current_wal_lsn()`
//!   minus the standby's replay LSN; without the primary, received minus replayed).
//! - **Demote** (fence the old primary): `ALTER SYSTEM SET default_transaction_read_only = on`,
//!   reload, terminate client sessions — from here the old primary takes no writes — then read
//!   `pg_current_wal_lsn()`, the position the new primary must have replayed.
//! - **Promote**: wait for the standby's replay LSN to reach the demotion LSN (bounded), then
//!   `pg_promote(wait => true)`; drop `synchronous_standby_names` (no standby yet, commits would
//!   hang) and the read-only default.
//! - **Rejoin** (run by each region's own controller on its local server, `--pg-data`): a server
//!   that is a primary while another region is active is stopped, rewound with `pg_rewind`
//!   against the active primary, and restarted as its standby (`standby.signal`,
//!   `primary_conninfo`); the active primary then gets `synchronous_standby_names = '*'` back
//!   once the standby streams. A server is only ever rewound onto a primary on a newer timeline
//!   than its own ([`rejoin_allowed`]): a rewind onto an older or the same timeline would
//!   discard writes the local server took as a primary, so it is refused and logged instead.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use super::machine::RegionView;

/// How to reach a region's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Credentials and timeouts shared by all targets.
#[derive(Clone, Debug)]
pub struct PgAuth {
    /// Role (a superuser or one allowed `pg_promote`, `ALTER SYSTEM`, `pg_terminate_backend`).
    pub user: String,
    /// Password (from `CATALYST_PG_PASSWORD`), if any.
    pub password: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl Default for PgAuth {
    fn default() -> Self {
        Self {
            user: "postgres".into(),
            password: std::env::var("CATALYST_PG_PASSWORD").ok(),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// Connect (the connection task is spawned and ends with the client).
pub async fn connect(t: &PgTarget, auth: &PgAuth) -> anyhow::Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&auth.user)
        .dbname("postgres")
        .application_name("catalyst-continuum")
        .connect_timeout(auth.connect_timeout);
    if let Some(p) = &auth.password {
        cfg.password(p);
    }
    let (client, conn) = tokio::time::timeout(auth.connect_timeout * 2, cfg.connect(NoTls))
        .await
        .with_context(|| format!("connect to {}:{} timed out", t.host, t.port))?
        .with_context(|| format!("cannot connect to PostgreSQL at {}:{}", t.host, t.port))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Run statements one by one (`ALTER SYSTEM` refuses the implicit transaction of a batch).
async fn each(c: &Client, stmts: &[&str]) -> anyhow::Result<()> {
    for st in stmts {
        c.batch_execute(st)
            .await
            .with_context(|| (*st).to_string())?;
    }
    Ok(())
}

async fn lsn(c: &Client, sql: &str) -> anyhow::Result<Option<String>> {
    let row = c.query_one(sql, &[]).await.context(sql.to_string())?;
    Ok(row.try_get::<_, Option<String>>(0)?)
}

/// Probe one server: up, standby or primary, and its lag (when `primary` is reachable).
pub async fn probe(t: &PgTarget, primary: Option<&PgTarget>, auth: &PgAuth) -> RegionView {
    let Ok(c) = connect(t, auth).await else {
        return RegionView::default();
    };
    let probe = async {
        let standby: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .try_get(0)?;
        let mut lag = None;
        if standby {
            let replay = lsn(&c, "SELECT pg_last_wal_replay_lsn()::text").await?;
            let remote = match primary.filter(|p| *p != t) {
                Some(p) => match connect(p, auth).await {
                    Ok(pc) => lsn(&pc, "SELECT pg_current_wal_lsn()::text")
                        .await
                        .ok()
                        .flatten(),
                    Err(_) => None,
                },
                None => None,
            };
            let head = match remote {
                Some(h) => Some(h),
                None => lsn(&c, "SELECT pg_last_wal_receive_lsn()::text").await?,
            };
            if let (Some(h), Some(r)) = (head, replay) {
                let d: Option<f64> = c
                    .query_one(
                        "SELECT greatest(pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn), 0)::float8",
                        &[&h, &r],
                    )
                    .await?
                    .try_get(0)?;
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a non-negative byte distance"
                )]
                {
                    lag = d.map(|x| x as u64);
                }
            }
        }
        anyhow::Ok((standby, lag))
    };
    match tokio::time::timeout(auth.connect_timeout * 3, probe).await {
        Ok(Ok((standby, lag))) => RegionView {
            up: true,
            standby: Some(standby),
            lag_bytes: lag,
        },
        _ => RegionView::default(),
    }
}

/// Fence the old primary (no more writes) and return the WAL position the new primary must
/// reach. A server already fenced or already a standby is fine (idempotent).
pub async fn demote(t: &PgTarget, auth: &PgAuth) -> anyhow::Result<String> {
    let c = connect(t, auth).await?;
    each(
        &c,
        &[
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
        ],
    )
    .await
    .context("fence the old primary read-only")?;
    // Sessions that opened a read-write transaction before the reload: end them.
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .context("terminate client sessions on the old primary")?;
    // A checkpoint after the fence and before the standby's promotion: the last checkpoint
    // both timelines share is then this one, close to the divergence, so `pg_rewind` of this
    // server later needs only the WAL since here (with `wal_keep_size` covering it).
    c.batch_execute("CHECKPOINT")
        .await
        .context("checkpoint on the old primary")?;
    let standby: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .try_get(0)?;
    let sql = if standby {
        "SELECT pg_last_wal_replay_lsn()::text"
    } else {
        "SELECT pg_current_wal_lsn()::text"
    };
    lsn(&c, sql)
        .await?
        .context("old primary reported no WAL position")
}

/// Promote `t` once it has replayed `wait_lsn` (at most `catch_up`); idempotent.
pub async fn promote(
    t: &PgTarget,
    wait_lsn: Option<&str>,
    catch_up: Duration,
    auth: &PgAuth,
) -> anyhow::Result<()> {
    let c = connect(t, auth).await?;
    let standby: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .try_get(0)?;
    if standby {
        if let Some(target) = wait_lsn {
            let deadline = tokio::time::Instant::now() + catch_up;
            loop {
                let behind: bool = c
                    .query_one(
                        "SELECT coalesce(pg_last_wal_replay_lsn() < $1::text::pg_lsn, true)",
                        &[&target],
                    )
                    .await?
                    .try_get(0)?;
                if !behind {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "standby {}:{} did not replay up to {target} within {catch_up:?}; not promoting",
                        t.host,
                        t.port
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let ok: bool = c
            .query_one("SELECT pg_promote(true, 30)", &[])
            .await
            .context("pg_promote")?
            .try_get(0)?;
        if !ok {
            bail!(
                "pg_promote on {}:{} did not finish within 30 s",
                t.host,
                t.port
            );
        }
        info!(host = t.host, port = t.port, "promoted");
    }
    each(
        &c,
        &[
            "ALTER SYSTEM SET synchronous_standby_names = ''",
            "ALTER SYSTEM RESET default_transaction_read_only",
            "SELECT pg_reload_conf()",
        ],
    )
    .await
    .context("open the new primary for writes")?;
    Ok(())
}

/// The timeline a primary writes on: the first 8 hex digits of its current WAL file name
/// (a freshly promoted server reports its new timeline at once, unlike its control file, which
/// changes only at the next checkpoint). An error for a standby.
pub async fn primary_timeline(t: &PgTarget, auth: &PgAuth) -> anyhow::Result<u32> {
    let c = connect(t, auth).await?;
    let row = tokio::time::timeout(
        auth.connect_timeout * 3,
        c.query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
             ELSE pg_walfile_name(pg_current_wal_lsn()) END",
            &[],
        ),
    )
    .await
    .with_context(|| format!("timeline of {}:{} timed out", t.host, t.port))??;
    let name: Option<String> = row.try_get(0)?;
    let name = name.with_context(|| format!("{}:{} is a standby", t.host, t.port))?;
    wal_name_timeline(&name)
        .with_context(|| format!("{}:{}: unexpected WAL file name `{name}`", t.host, t.port))
}

/// The timeline of a WAL segment (`000000030000000000000004`) or history file
/// (`00000003.history`) name.
fn wal_name_timeline(name: &str) -> Option<u32> {
    let hex = match name.strip_suffix(".history") {
        Some(tli) if tli.len() == 8 => tli,
        None if name.len() == 24 => &name[..8],
        Some(_) | None => return None,
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// The newest timeline a data directory has WAL or history for (`pg_wal/`): a promotion writes
/// the new timeline's history file at once, so this holds for a running, a stopped and a
/// crashed server alike.
pub fn local_timeline(data: &Path) -> anyhow::Result<u32> {
    let dir = data.join("pg_wal");
    let mut newest = None;
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if let Some(t) = entry.file_name().to_str().and_then(wal_name_timeline) {
            newest = newest.max(Some(t));
        }
    }
    newest.with_context(|| format!("{} holds no WAL or history file", dir.display()))
}

/// Whether a server on `local` may be rewound onto a primary on `active`: only onto a newer
/// timeline. The active primary was promoted after the local server stopped being primary
/// exactly when its timeline is newer; on the same or an older one, the local server holds
/// writes the active primary does not (a rewind would discard them) — or the controller acted
/// on a stale view of which region is active.
pub fn rejoin_allowed(local: u32, active: u32) -> bool {
    active > local
}

/// On the active primary: turn synchronous replication back on once a standby streams.
pub async fn ensure_sync(t: &PgTarget, auth: &PgAuth) -> anyhow::Result<bool> {
    let c = connect(t, auth).await?;
    let names: String = c
        .query_one("SHOW synchronous_standby_names", &[])
        .await?
        .try_get(0)?;
    let streaming: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await?
        .try_get(0)?;
    if names.trim().is_empty() && streaming > 0 {
        each(
            &c,
            &[
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
                "SELECT pg_reload_conf()",
            ],
        )
        .await?;
        info!(host = t.host, "synchronous replication restored");
        return Ok(true);
    }
    Ok(false)
}

/// Local control of this region's server (`--pg-data`, `--pg-bin`), for rejoining as standby.
#[derive(Clone, Debug)]
pub struct LocalServer {
    /// Data directory.
    pub data: PathBuf,
    /// Folder with `pg_ctl` and `pg_rewind` (empty: from `PATH`).
    pub bin: Option<PathBuf>,
    /// Run the tools as this OS user (the owner of the data directory), via `runuser`.
    pub os_user: Option<String>,
}

impl LocalServer {
    async fn tool(&self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self
            .bin
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |b| b.join(name));
        let mut cmd = match &self.os_user {
            Some(u) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => tokio::process::Command::new(&exe),
        };
        cmd.args(args).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_mins(2), cmd.output())
            .await
            .with_context(|| format!("{name} timed out"))?
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{name} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Whether a postmaster runs on the data directory (`pg_ctl status`).
    pub async fn running(&self) -> bool {
        self.tool("pg_ctl", &["-D", &self.data.to_string_lossy(), "status"])
            .await
            .is_ok()
    }

    /// Stop (or, after a crash, recover), rewind against `primary` and start as its standby.
    /// Idempotent.
    pub async fn rejoin(&self, primary: &PgTarget, auth: &PgAuth) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy().to_string();
        warn!(
            primary = primary.host,
            "local server is a primary while another region is active; rejoining as standby"
        );
        if self.running().await {
            self.tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
                .await?;
        } else if self.data.join("postmaster.pid").exists() {
            // Crashed (killed, power loss): pg_rewind needs a clean shutdown, so let
            // single-user mode run crash recovery and shut down with a checkpoint.
            warn!("local server was not shut down cleanly; crash recovery in single-user mode");
            self.tool("postgres", &["--single", "-D", &data, "postgres"])
                .await
                .context("crash recovery in single-user mode")?;
        }
        // A freshly promoted primary updates its control file's timeline at its next
        // checkpoint; pg_rewind reads it, so force one (else it sees no divergence).
        connect(primary, auth)
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT on the active primary before pg_rewind")?;
        let src = format!(
            "host={} port={} user={} dbname=postgres",
            primary.host, primary.port, auth.user
        );
        // pg_rewind copies the source's configuration files over ours (its listen address,
        // its hba rules): keep this server's own and put them back afterwards.
        let own: Vec<(PathBuf, Vec<u8>)> = LOCAL_CONFIG
            .iter()
            .map(|f| self.data.join(f))
            .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
            .collect();
        let rewound = self
            .tool(
                "pg_rewind",
                &["-D", &data, "--source-server", &src, "--no-ensure-shutdown"],
            )
            .await;
        match rewound {
            Ok(()) => {}
            // "no rewind required" exits 0; say so when it is reported as an error too.
            Err(e) if e.to_string().contains("no rewind required") => {}
            // A rewind that completed but whose start failed leaves a server that was not shut
            // down cleanly; it is already a standby of the new timeline (standby.signal is
            // written only after a successful rewind): start it as such.
            Err(e)
                if e.to_string().contains("shut down cleanly")
                    && self.data.join("standby.signal").exists() => {}
            Err(e) => return Err(e),
        }
        for (p, b) in &own {
            std::fs::write(p, b).with_context(|| format!("cannot restore {}", p.display()))?;
        }
        write_standby_config(&self.data, &src)?;
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &format!("{data}/rejoin.log"),
                "-w",
                "start",
            ],
        )
        .await?;
        info!("rejoined as standby");
        Ok(())
    }
}

/// Configuration files of a data directory that belong to the server, not to its timeline.
const LOCAL_CONFIG: [&str; 3] = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"];

/// `standby.signal` plus `primary_conninfo` in `postgresql.auto.conf` (what `pg_basebackup -R`
/// writes), and the read-only default removed.
fn write_standby_config(data: &Path, conninfo: &str) -> anyhow::Result<()> {
    let auto = data.join("postgresql.auto.conf");
    let old = std::fs::read_to_string(&auto).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| {
            let k = l.split('=').next().unwrap_or("").trim();
            !matches!(
                k,
                "primary_conninfo" | "default_transaction_read_only" | "synchronous_standby_names"
            )
        })
        .map(str::to_string)
        .collect();
    lines.push(format!(
        "primary_conninfo = '{} application_name=catalyst'",
        conninfo.replace('\'', "''")
    ));
    std::fs::write(&auto, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", auto.display()))?;
    std::fs::write(data.join("standby.signal"), b"")
        .with_context(|| format!("cannot write standby.signal in {}", data.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_come_from_wal_and_history_file_names() {
        assert_eq!(wal_name_timeline("000000030000000000000004"), Some(3));
        assert_eq!(wal_name_timeline("0000000A.history"), Some(10));
        assert_eq!(wal_name_timeline("000000010000000000000001.partial"), None);
        assert_eq!(wal_name_timeline("archive_status"), None);
        assert_eq!(wal_name_timeline("0000000G0000000000000004"), None);
        assert_eq!(wal_name_timeline("003.history"), None);
    }

    #[test]
    fn the_local_timeline_is_the_newest_in_pg_wal() {
        let dir = std::env::temp_dir().join(format!("catalyst-tli-{}", std::process::id()));
        let wal = dir.join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).expect("mkdir");
        for f in [
            "000000010000000000000003",
            "000000020000000000000003",
            "00000002.history",
            "00000003.history",
        ] {
            std::fs::write(wal.join(f), b"").expect("write");
        }
        assert_eq!(local_timeline(&dir).expect("timeline"), 3);
        std::fs::remove_dir_all(wal.join("archive_status")).expect("rm");
        for f in std::fs::read_dir(&wal).expect("ls") {
            std::fs::remove_file(f.expect("entry").path()).expect("rm");
        }
        let err = local_timeline(&dir).expect_err("empty pg_wal");
        assert!(err.to_string().contains("holds no WAL"), "{err:#}");
        std::fs::remove_dir_all(&dir).expect("rm");
        let err = local_timeline(&dir).expect_err("no pg_wal");
        assert!(err.to_string().contains("cannot list"), "{err:#}");
    }

    #[test]
    fn a_server_is_rewound_only_onto_a_newer_timeline() {
        assert!(rejoin_allowed(2, 3));
        assert!(!rejoin_allowed(3, 3));
        assert!(!rejoin_allowed(3, 2));
    }
}
