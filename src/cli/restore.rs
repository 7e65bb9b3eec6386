//! `walship restore [-o OUT] REPLICA_URL|DB_PATH`.

use super::{ReplicaFlags, resolve_source};
use crate::error::{Error, Result};
use crate::restore::{self, DEFAULT_PARALLELISM, RestoreOptions};
use crate::storage::Replica;
use crate::storage::layout::GenerationId;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A replica URL, or a database path listed in the config file.
    pub source: String,
    /// Where to write the database (default: the database path, when SOURCE is one).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Restore this generation's newest state instead of the replica's.
    #[arg(long)]
    pub generation: Option<String>,
    /// Downloads in flight.
    #[arg(long, default_value_t = DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Skip `PRAGMA integrity_check` on the result (CRCs are still verified).
    #[arg(long)]
    pub no_integrity_check: bool,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

pub async fn run(args: RestoreArgs) -> Result<()> {
    let (rcfg, db_path) = resolve_source(&args.source, args.config.as_deref(), &args.replica)?;
    let output =
        args.output.clone().or(db_path).ok_or_else(|| {
            Error::Usage("give -o OUTPUT when restoring from a replica URL".into())
        })?;
    let generation = args
        .generation
        .as_deref()
        .map(|g| {
            GenerationId::parse(g)
                .ok_or_else(|| Error::Usage(format!("{g:?} is not a generation id")))
        })
        .transpose()?;
    let replica = Replica::open(&rcfg, false)?;
    let report = restore::restore(
        &replica,
        &RestoreOptions {
            output: output.clone(),
            force: args.force,
            generation,
            parallelism: args.parallelism.max(1),
            integrity_check: !args.no_integrity_check,
        },
    )
    .await?;
    tracing::info!(
        generation = %report.plan.generation,
        txid = report.plan.txid,
        pages = report.pages,
        downloaded = report.downloaded,
        ms = report.elapsed.as_millis() as u64,
        "restored {}",
        output.display()
    );
    Ok(())
}
