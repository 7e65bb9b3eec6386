//! `walship snapshots REPLICA_URL|DB_PATH [--json]`: every snapshot in a replica, oldest
//! first: the restore points a plan can start from.

use super::print_json;
use crate::error::Result;
use crate::restore::plan;
use crate::restore::when::format_ms;
use crate::storage::Replica;
use crate::storage::layout;
use serde::Serialize;

/// The listing flags (`cli::ListingArgs`).
pub type SnapshotsArgs = super::ListingArgs;

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
    let replica = args.open()?;
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
