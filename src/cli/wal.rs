//! `walship wal-push %p` (PostgreSQL's `archive_command`) and `walship wal-fetch %f %p`
//! (its `restore_command`). Both run with the data directory as working directory; the
//! replica is the `type: postgres` database of the config whose `path` is that directory,
//! or a URL given after the file arguments.

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
        if let Some(url) = &self.replica_url {
            return self.replica.replica(url);
        }
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
        let cfg = config::load(&path)?;
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
        matching.map(|d| d.replica.clone()).ok_or_else(|| {
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
    let replica = Replica::open(&args.pg.replica(&pgdata)?, false)?;
    let outcome = archive::push(&replica, &pgdata, &args.wal_path).await?;
    tracing::info!(file = %args.wal_path.display(), ?outcome, "archived");
    Ok(())
}

/// `Ok(false)`: the replica does not have the file (exit 1, nothing printed).
pub async fn fetch(args: WalFetchArgs) -> Result<bool> {
    let pgdata = args.pg.pgdata()?;
    let replica = Replica::open(&args.pg.replica(&pgdata)?, false)?;
    archive::fetch(&replica, &pgdata, &args.wal_name, &args.dest).await
}
