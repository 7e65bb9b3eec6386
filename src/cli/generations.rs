//! `walship generations REPLICA_URL|DB_PATH [--json]`: what a replica holds.

use super::print_json;
use crate::error::Result;
use crate::restore::plan;
use crate::storage::Replica;
use crate::storage::layout;
use serde::Serialize;

/// The listing flags (`cli::ListingArgs`).
pub type GenerationsArgs = super::ListingArgs;

#[derive(Debug, Serialize)]
pub struct GenerationRow {
    pub generation: String,
    pub created: String,
    pub last_write: Option<String>,
    pub snapshots: usize,
    pub segments: usize,
    pub wal_bytes: u64,
    pub first_txid: Option<u64>,
    pub last_txid: Option<u64>,
}

use crate::clock::rfc3339;

pub async fn rows(replica: &Replica) -> Result<Vec<GenerationRow>> {
    let objects = replica.list(layout::GENERATIONS).await?;
    Ok(plan::group(&objects)
        .into_iter()
        .map(|(id, g)| GenerationRow {
            created: rfc3339(id.created_ms()),
            last_write: g.last_write_ms().map(rfc3339),
            snapshots: g.snapshots.len(),
            segments: g.segments.len(),
            wal_bytes: g.wal_bytes(),
            first_txid: g.snapshots.first().map(|s| s.name.txid),
            last_txid: g
                .segments
                .last()
                .map(|s| s.name.last_txid)
                .or(g.snapshots.last().map(|s| s.name.txid)),
            generation: id.to_string(),
        })
        .collect())
}

pub async fn run(args: GenerationsArgs) -> Result<()> {
    let replica = args.open()?;
    let rows = rows(&replica).await?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    println!(
        "{:<20}  {:<24}  {:<24}  {:>9}  {:>8}  {:>12}  {:>10}",
        "generation", "created", "last write", "snapshots", "segments", "WAL bytes", "last txid"
    );
    for r in rows {
        println!(
            "{:<20}  {:<24}  {:<24}  {:>9}  {:>8}  {:>12}  {:>10}",
            r.generation,
            r.created,
            r.last_write.as_deref().unwrap_or("-"),
            r.snapshots,
            r.segments,
            r.wal_bytes,
            r.last_txid.map_or("-".into(), |t| t.to_string()),
        );
    }
    Ok(())
}
