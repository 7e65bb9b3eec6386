//! `walship snapshots REPLICA_URL|DB_PATH [--json]`: every snapshot in a replica, oldest
//! first: the restore points a plan can start from; then Litestream's snapshots at the
//! same path, if any.

use super::print_json;
use crate::catalog::litestream;
use crate::error::Result;
use crate::restore::plan;
use crate::restore::when::format_ms;
use crate::storage::Replica;
use serde::Serialize;

/// The listing flags (`cli::ListingArgs`).
pub type SnapshotsArgs = super::ListingArgs;

#[derive(Debug, Serialize)]
pub struct SnapshotRow {
    /// `walship`, `litestream-0.3` or `litestream-0.5`.
    pub format: &'static str,
    /// walship's or Litestream 0.3's generation id; `ltx` for Litestream 0.5's files.
    pub generation: String,
    /// The transaction it holds (none for Litestream 0.3, whose names carry none).
    pub txid: Option<u64>,
    /// When walship saw transaction `txid` commit (the generation's start for txid 0); for
    /// Litestream's, when the store wrote the object.
    pub time: String,
    pub bytes: u64,
    pub key: String,
}

pub async fn rows(replica: &Replica) -> Result<Vec<SnapshotRow>> {
    let objects = replica.list("").await?;
    let mut rows: Vec<SnapshotRow> = plan::group(&objects)
        .into_iter()
        .flat_map(|(id, g)| {
            g.snapshots.into_iter().map(move |s| SnapshotRow {
                format: "walship",
                generation: id.to_string(),
                txid: Some(s.name.txid),
                time: format_ms(s.name.commit_ms),
                bytes: s.size,
                key: s.key,
            })
        })
        .collect();
    for b in litestream::backups(&objects) {
        rows.extend(b.snapshots.into_iter().map(|s| SnapshotRow {
            format: b.format.as_str(),
            generation: b.name.clone(),
            txid: s.txid,
            time: format_ms(s.modified_ms),
            bytes: s.size,
            key: s.key,
        }));
    }
    Ok(rows)
}

pub async fn run(args: SnapshotsArgs) -> Result<()> {
    let replica = args.open()?;
    let rows = rows(&replica).await?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    let (ours, theirs): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.format == "walship");
    println!(
        "{:<20}  {:>10}  {:<24}  {:>12}",
        "generation", "txid", "time", "bytes"
    );
    let txid = |t: Option<u64>| t.map_or("-".into(), |t| t.to_string());
    for r in ours {
        println!(
            "{:<20}  {:>10}  {:<24}  {:>12}",
            r.generation,
            txid(r.txid),
            r.time,
            r.bytes
        );
    }
    if !theirs.is_empty() {
        println!("\nLitestream's snapshots at this path (time: when the store wrote it):");
        println!(
            "{:<16}  {:<20}  {:>10}  {:<24}  {:>12}  key",
            "format", "generation", "txid", "time", "bytes"
        );
        for r in theirs {
            println!(
                "{:<16}  {:<20}  {:>10}  {:<24}  {:>12}  {}",
                r.format,
                r.generation,
                txid(r.txid),
                r.time,
                r.bytes,
                r.key
            );
        }
    }
    Ok(())
}
