//! `walship snapshots REPLICA_URL|DB_PATH [--json]`: every snapshot in a replica, oldest
//! first: the restore points a plan can start from.

use super::{ReplicaFlags, open_source, print_json};
use crate::error::Result;
use crate::restore::plan;
use crate::restore::when::format_ms;
use crate::storage::Replica;
use crate::storage::layout;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// A replica URL, or a database path listed in the config file.
    pub source: String,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

#[derive(Debug, Serialize)]
pub struct SnapshotRow {
    pub generation: String,
    pub txid: u64,
    /// When walship saw transaction `txid` commit (the generation's start for txid 0).
    pub time: String,
    pub bytes: u64,
    pub key: String,
}

pub async fn rows(replica: &Replica) -> Result<Vec<SnapshotRow>> {
    let objects = replica.list(layout::GENERATIONS).await?;
    Ok(plan::group(&objects)
        .into_iter()
        .flat_map(|(id, g)| {
            g.snapshots.into_iter().map(move |s| SnapshotRow {
                generation: id.to_string(),
                txid: s.name.txid,
                time: format_ms(s.name.commit_ms),
                bytes: s.size,
                key: s.key,
            })
        })
        .collect())
}

pub async fn run(args: SnapshotsArgs) -> Result<()> {
    let replica = open_source(&args.source, args.config.as_deref(), &args.replica)?;
    let rows = rows(&replica).await?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    println!(
        "{:<20}  {:>10}  {:<24}  {:>12}",
        "generation", "txid", "time", "bytes"
    );
    for r in rows {
        println!(
            "{:<20}  {:>10}  {:<24}  {:>12}",
            r.generation, r.txid, r.time, r.bytes
        );
    }
    Ok(())
}
