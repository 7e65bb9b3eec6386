//! PostgreSQL subcommands: `wal-push %p` (the `archive_command`), `wal-fetch %f %p` (the
//! `restore_command`), `pg-backup` and `pg-restore`. The replica is the `type: postgres`
//! database of the config whose `path` is the data directory (or the only one), or a URL
//! given after the other arguments.

use super::ReplicaFlags;
use crate::config::{self, DbKind, ReplicaConfig};
use crate::error::{Error, Result};
use crate::postgres::archive;
use crate::storage::Replica;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct PgArgs {
    /// The replica URL (default: from the config).
    pub replica_url: Option<String>,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The data directory (default: PGDATA, else the working directory, which is where
    /// Postgres runs archive_command and restore_command).
    #[arg(long, env = "PGDATA")]
    pub pgdata: Option<PathBuf>,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// `%p`: the WAL file's path, relative to the data directory.
    pub wal_path: PathBuf,
    #[command(flatten)]
    pub pg: PgArgs,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// `%f`: the WAL file's name.
    pub wal_name: String,
    /// `%p`: where to write it, relative to the data directory.
    pub dest: PathBuf,
    #[command(flatten)]
    pub pg: PgArgs,
}

impl PgArgs {
    fn pgdata(&self) -> Result<PathBuf> {
        match &self.pgdata {
            Some(p) => Ok(p.clone()),
            None => std::env::current_dir().map_err(|e| Error::io(".", e)),
        }
    }

    fn replica(&self, pgdata: &Path) -> Result<ReplicaConfig> {
        self.replica_and_spool(pgdata).map(|(r, _)| r)
    }

    /// The replica, and the spool directory where the sidecar leaves its notes (beside the
    /// data directory unless the config says otherwise).
    fn replica_and_spool(&self, pgdata: &Path) -> Result<(ReplicaConfig, PathBuf)> {
        self.replica_spool_ttl(pgdata).map(|(r, s, _)| (r, s))
    }

    /// `replica_and_spool`, and the lease TTL (the config's, else the default).
    fn replica_spool_ttl(
        &self,
        pgdata: &Path,
    ) -> Result<(ReplicaConfig, PathBuf, std::time::Duration)> {
        if let Some(url) = &self.replica_url {
            return Ok((
                self.replica.replica(url)?,
                config::default_spool_dir(pgdata),
                crate::config::DEFAULT_LEASE_TTL,
            ));
        }
        let (db, ttl) = self.db_and_ttl(pgdata)?;
        Ok((db.replica, db.spool_dir, ttl))
    }

    /// The config's entry for this cluster.
    fn db(&self, pgdata: &Path) -> Result<config::DbConfig> {
        self.db_and_ttl(pgdata).map(|(d, _)| d)
    }

    /// The config's entry for this cluster, and the config's lease TTL.
    fn db_and_ttl(&self, pgdata: &Path) -> Result<(config::DbConfig, std::time::Duration)> {
        let path = config::locate(self.config.as_deref());
        let cfg = config::load(&path)?;
        cfg.log_notes();
        let want = pgdata
            .canonicalize()
            .unwrap_or_else(|_| pgdata.to_path_buf());
        let pg: Vec<_> = cfg
            .dbs
            .into_iter()
            .filter(|d| d.kind == DbKind::Postgres)
            .collect();
        let matching = pg
            .iter()
            .find(|d| d.path.canonicalize().is_ok_and(|p| p == want))
            .or(if pg.len() == 1 { pg.first() } else { None });
        matching
            .cloned()
            .map(|d| (d, cfg.lease_ttl))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{} has no `type: postgres` database with path {} (and no replica URL was \
                 given)",
                    path.display(),
                    pgdata.display()
                ))
            })
    }
}

pub async fn push(args: WalPushArgs) -> Result<()> {
    let pgdata = args.pg.pgdata()?;
    let (rcfg, spool, ttl) = args.pg.replica_spool_ttl(&pgdata)?;
    let markers = archive::marker_dir(&spool);
    let open = || Replica::open(&rcfg, false);
    let outcome = archive::push(open, &pgdata, &args.wal_path, Some(&markers), ttl).await?;
    tracing::info!(file = %args.wal_path.display(), ?outcome, "archived");
    Ok(())
}

/// `wal-fetch`'s exit status for every failure but a file proven absent (exit 1):
/// PostgreSQL aborts recovery when `restore_command` exits above 125 (PostgreSQL's
/// `wait_result_is_any_signal`), instead of ending it and promoting.
pub const FETCH_FATAL_EXIT: u8 = 255;

/// `Ok(false)`: the file is beyond the end of the archive (exit 1, nothing printed).
pub async fn fetch(args: WalFetchArgs) -> Result<bool> {
    let pgdata = args.pg.pgdata()?;
    let replica = Replica::open(&args.pg.replica(&pgdata)?, false)?;
    archive::fetch(&replica, &pgdata, &args.wal_name, &args.dest).await
}

#[derive(Debug, Args)]
pub struct PgBackupArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    /// Connection URL (default: the config's `connection`, else PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, PGDATABASE).
    #[arg(long, env = "WALSHIP_PG_CONNECTION")]
    pub connection: Option<String>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Longest wait in pg_backup_stop for the backup's WAL to be archived.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub stop_timeout: std::time::Duration,
}

pub async fn backup(args: PgBackupArgs) -> Result<()> {
    let pgdata = args.pg.pgdata()?;
    let (rcfg, conn) = match &args.pg.replica_url {
        Some(url) => (args.pg.replica.replica(url)?, args.connection.clone()),
        None => {
            let db = args.pg.db(&pgdata)?;
            (db.replica, args.connection.clone().or(db.connection))
        }
    };
    let replica = std::sync::Arc::new(Replica::open(&rcfg, false)?);
    let conn = crate::postgres::backup::connection(conn.as_deref())?;
    let r = crate::postgres::backup::backup(&replica, &pgdata, &conn, args.stop_timeout).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serialises"));
    } else {
        println!(
            "base backup of {} to {}: generation {}, WAL {}..{}, {} files, {:.1} MB read, \
             {:.1} MB stored, {:.1} s",
            pgdata.display(),
            r.replica,
            r.generation,
            r.start_lsn,
            r.stop_lsn,
            r.files,
            r.raw_bytes as f64 / 1e6,
            r.stored_bytes as f64 / 1e6,
            r.seconds
        );
    }
    Ok(())
}

/// The cluster `pg-restore` restores: `--generation`; else the configured cluster's (its
/// data directory, when it is not the target and can be read); else the one the path
/// names; else `None` (the newest with a backup, for paths older than `cluster.json`).
async fn which_cluster(
    args: &PgRestoreArgs,
    replica: &Replica,
) -> Result<Option<crate::storage::layout::GenerationId>> {
    use crate::storage::layout::GenerationId;
    if let Some(g) = &args.generation {
        return GenerationId::parse(g).map(Some).ok_or_else(|| {
            Error::Usage(format!(
                "--generation {g:?} is not a generation id (20 hex digits, as `walship \
                 generations` lists them)"
            ))
        });
    }
    let configured = args.pg.pgdata.clone().or_else(|| {
        args.pg
            .replica_url
            .is_none()
            .then(|| args.pg.db(&args.target).ok().map(|d| d.path))
            .flatten()
    });
    if let Some(p) = configured
        && p.canonicalize().ok() != args.target.canonicalize().ok()
        && let Ok(id) = crate::postgres::control::system_identifier(&p)
    {
        return Ok(Some(crate::postgres::control::generation_of(id)));
    }
    Ok(crate::catalog::read_cluster(replica)
        .await?
        .and_then(|(c, _)| c.generation_id()))
}

#[derive(Debug, Args)]
pub struct PgRestoreArgs {
    /// The data directory to restore into (absent or empty).
    pub target: PathBuf,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Recover to this time (RFC 3339, `14:02` UTC, or `15m` ago); default: the end of
    /// the archive.
    #[arg(long)]
    pub timestamp: Option<String>,
    /// A non-empty target is left alone (exit 0): the init-container mode.
    #[arg(long)]
    pub if_pgdata_empty: bool,
    /// No base backup in the replica: do nothing (exit 0), the cluster starts fresh.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// The walship binary the restored server runs as restore_command (default: this
    /// one; in Kubernetes, where the init container copied it for the server).
    #[arg(long)]
    pub walship_path: Option<PathBuf>,
    /// Restore this cluster's generation (as `walship generations` lists it). Default: the
    /// configured cluster's, when its data directory is readable, else the one the
    /// replica path names (`cluster.json`), else the newest cluster with a backup.
    #[arg(long)]
    pub generation: Option<String>,
}

pub async fn restore(args: PgRestoreArgs) -> Result<()> {
    use crate::postgres::restore as pgr;
    if args.if_pgdata_empty && !pgr::is_empty_pgdata(&args.target)? {
        println!("{} is not empty: left as it is", args.target.display());
        return Ok(());
    }
    let rcfg = args.pg.replica(&args.target)?;
    let replica = Replica::open(&rcfg, false)?;
    let generation = which_cluster(&args, &replica).await?;
    if args.if_replica_exists {
        let listing = replica.list(crate::storage::layout::GENERATIONS).await?;
        if !crate::catalog::Catalog::of(&listing)
            .generations
            .values()
            .any(|g| !g.complete_backups().is_empty())
        {
            println!(
                "replica {} holds no base backup: nothing to restore",
                replica.url()
            );
            return Ok(());
        }
    }
    let bin = match &args.walship_path {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("walship", e))?,
    };
    let mut cmd = format!("{} wal-fetch %f %p", bin.display());
    match &args.pg.replica_url {
        Some(url) => {
            cmd.push_str(&format!(" {url}"));
            let f = &args.pg.replica;
            if let Some(e) = &f.endpoint {
                cmd.push_str(&format!(" --endpoint {e}"));
            }
            if let Some(r) = &f.region {
                cmd.push_str(&format!(" --region {r}"));
            }
            if f.force_path_style {
                cmd.push_str(" --force-path-style");
            }
            if f.skip_verify {
                cmd.push_str(" --skip-verify");
            }
        }
        None => {
            let cfg = config::locate(args.pg.config.as_deref());
            cmd.push_str(&format!(" --config {}", cfg.display()));
        }
    }
    let target_ms = args
        .timestamp
        .as_deref()
        .map(|t| crate::restore::when::parse_time(t, crate::clock::now_ms()).map_err(Error::Usage))
        .transpose()?;
    let o = pgr::restore(
        &replica,
        &args.target,
        &pgr::Options {
            target_ms,
            restore_command: cmd,
            generation,
        },
    )
    .await?;
    println!(
        "restored base backup {:016x} of generation {} ({} files, {:.1} MB) into {}; start \
         PostgreSQL to recover{}",
        o.backup.start_lsn,
        o.generation,
        o.files,
        o.bytes as f64 / 1e6,
        args.target.display(),
        match (target_ms, o.newest_instead) {
            (Some(t), Some(last)) => format!(
                " to the end of the archive: the target {} is after its last transaction ({})",
                crate::clock::rfc3339(t),
                crate::clock::rfc3339(last)
            ),
            (Some(t), None) => format!(" to {}", crate::clock::rfc3339(t)),
            (None, _) => " to the end of the archive".into(),
        }
    );
    if let Some((seg, upto)) = &o.wal.joined {
        println!(
            "WAL segment {seg} is not complete in the store: it is joined from streamed chunks, \
             WAL to byte {upto}; recovery ends at the last stored chunk"
        );
    }
    Ok(())
}
