//! Command-line interface: flag definitions (clap) and one file per subcommand, each
//! turning flags into one library call. No replication logic lives here.

pub mod backups;
pub mod cleanup;
pub mod exec;
pub mod generations;
pub mod gostyle;
pub mod replicate;
pub mod restore;
mod restore_litestream;
mod restore_many;
pub mod snapshots;
pub mod verify;
pub mod wal;

use crate::config::{self, Location, ReplicaConfig};
use crate::error::{Error, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "walship",
    version,
    about = "Continuously replicate SQLite databases to object storage, and restore them",
    propagate_version = true
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "WALSHIP_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log filter (e.g. info, debug, walship=debug); RUST_LOG also works.
    #[arg(long, global = true, env = "WALSHIP_LOG")]
    pub log: Option<String>,
    /// Verbose: log at debug level (Litestream 0.3's -v).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Take the config file as written: no $VAR expansion (Litestream's -no-expand-env).
    #[arg(long, global = true)]
    pub no_expand_env: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replicate databases until SIGTERM/SIGINT (the sidecar).
    Replicate(Box<replicate::ReplicateArgs>),
    /// Restore a replica's newest state, or a point in time, into a database file.
    Restore(restore::RestoreArgs),
    /// List the generations in a replica.
    Generations(generations::GenerationsArgs),
    /// List the snapshots in a replica (the restore points plans start from).
    Snapshots(snapshots::SnapshotsArgs),
    /// Restore the newest state to a scratch file and check it and its generation's
    /// objects; non-zero exit on any problem.
    Verify(verify::VerifyArgs),
    /// Delete what retention no longer needs, whole old generations included (the
    /// CronJob); over a config's databases or every database below a URL prefix.
    Cleanup(cleanup::CleanupArgs),
    /// PostgreSQL archive_command: archive one WAL file (`walship wal-push %p`).
    WalPush(wal::WalPushArgs),
    /// PostgreSQL restore_command: fetch one WAL file (`walship wal-fetch %f %p`); exits 1
    /// quietly when the replica does not have it.
    WalFetch(wal::WalFetchArgs),
    /// PostgreSQL: take a base backup now (pg_backup_start/stop; files read from PGDATA).
    PgBackup(wal::PgBackupArgs),
    /// PostgreSQL: restore a base backup into an empty data directory, set up to recover
    /// from the archive (to its end, or --timestamp).
    PgRestore(wal::PgRestoreArgs),
    /// PostgreSQL: list the base backups and, per timeline, the WAL archived.
    Backups(backups::BackupsArgs),
    /// Print walship's version.
    Version,
}

/// Settings for a replica given by URL on the command line.
#[derive(Debug, Clone, Args, Default)]
pub struct ReplicaFlags {
    /// S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region (default: AWS_REGION, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style S3 requests (most S3-compatible servers need them).
    #[arg(long)]
    pub force_path_style: bool,
    /// Accept any TLS certificate (testing only).
    #[arg(long)]
    pub skip_verify: bool,
    /// With a config: the database's replica of this name (Litestream 0.3's -replica; a
    /// replica without a `name` is named by its type, e.g. s3).
    #[arg(long = "replica", value_name = "NAME")]
    pub name: Option<String>,
}

impl ReplicaFlags {
    pub fn replica(&self, url: &str) -> Result<ReplicaConfig> {
        // A flag wins over the URL's query (`?endpoint=…&region=…`, Litestream's form).
        let (location, q) = config::location::parse_url(url)?;
        let mut r = ReplicaConfig::from_location(location);
        r.endpoint = self.endpoint.clone().or(q.endpoint);
        r.region = self.region.clone().or(q.region);
        r.force_path_style = self.force_path_style.then_some(true).or(q.force_path_style);
        r.skip_verify = self.skip_verify || q.skip_verify == Some(true);
        Ok(r)
    }
}

/// The `--generation` flag, checked.
pub fn parse_generation(g: Option<&str>) -> Result<Option<crate::storage::layout::GenerationId>> {
    g.map(|g| {
        crate::storage::layout::GenerationId::parse(g)
            .ok_or_else(|| Error::Usage(format!("{g:?} is not a generation id")))
    })
    .transpose()
}

/// A replica URL, or the path of a database listed in the config file.
/// The replica a listing command reads: a URL, or the replica of a database in the config.
/// The flags of every listing command (`generations`, `snapshots`, `backups`).
#[derive(Debug, Args)]
pub struct ListingArgs {
    /// A replica URL, or a database path (a data directory for `backups`) listed in the
    /// config file.
    pub source: String,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

impl ListingArgs {
    pub fn open(&self) -> Result<crate::storage::Replica> {
        open_source(&self.source, self.config.as_deref(), &self.replica)
    }
}

pub fn open_source(
    source: &str,
    config_path: Option<&Path>,
    flags: &ReplicaFlags,
) -> Result<crate::storage::Replica> {
    let (rcfg, _) = resolve_source(source, config_path, flags)?;
    crate::storage::Replica::open(&rcfg, false)
}

/// A listing command's `--json` output.
pub fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("listings serialise")
    );
}

pub fn resolve_source(
    source: &str,
    config_path: Option<&Path>,
    flags: &ReplicaFlags,
) -> Result<(ReplicaConfig, Option<PathBuf>)> {
    let (r, db) = resolve_db(source, config_path, flags)?;
    Ok((r, db.map(|d| d.path)))
}

/// `resolve_source`, with the whole configured database when SOURCE names one.
pub fn resolve_db(
    source: &str,
    config_path: Option<&Path>,
    flags: &ReplicaFlags,
) -> Result<(ReplicaConfig, Option<config::DbConfig>)> {
    if source.contains("://") {
        if flags.name.is_some() {
            tracing::info!("--replica has no effect with a replica URL: the URL names the replica");
        }
        return Ok((flags.replica(source)?, None));
    }
    let cfg_path = config::locate(config_path);
    if !cfg_path.exists() {
        // A bare path with no config file: treat it as a local replica directory.
        if config_path.is_none() && Path::new(source).is_dir() {
            return Ok((
                ReplicaConfig::from_location(Location::File { dir: source.into() }),
                None,
            ));
        }
        return Err(Error::Config(format!(
            "{source} is not a replica URL, and config file {} does not exist to look it up",
            cfg_path.display()
        )));
    }
    let cfg = config::load(&cfg_path)?;
    cfg.log_notes();
    let want = canonical(Path::new(source));
    let db = cfg
        .dbs
        .into_iter()
        .find(|d| canonical(&d.path) == want)
        .ok_or_else(|| {
            Error::Config(format!(
                "database {source} is not listed in {}",
                cfg_path.display()
            ))
        })?;
    if let Some(want) = &flags.name {
        let Some(r) = db
            .replicas()
            .find(|r| r.name().eq_ignore_ascii_case(want))
            .cloned()
        else {
            let has: Vec<String> = db.replicas().map(|r| format!("{:?}", r.name())).collect();
            return Err(Error::Usage(format!(
                "database {source} has no replica named {want:?} (its replicas: {})",
                has.join(", ")
            )));
        };
        return Ok((r.clone(), Some(db.only(r))));
    }
    Ok((db.replica.clone(), Some(db)))
}

/// A replica's name: its `name`, else its type as Litestream names types.
pub fn replica_name(r: &ReplicaConfig) -> String {
    r.name()
}

/// Absolute form of a path that may not exist yet (its directory usually does).
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// Write a line to stderr, ignoring a closed pipe: a sidecar whose log reader went away
/// keeps replicating (`eprintln!` would panic, and the release build aborts on a panic).
pub fn say_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
