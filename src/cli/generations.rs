//! `walship generations REPLICA_URL|DB_PATH [--json]`: what a replica holds: walship's
//! generations, then any Litestream backups at the same path (which restore reads when the
//! path has no walship data, and cleanup keeps unless `--include-litestream`).

use super::print_json;
use crate::catalog::litestream;
use crate::error::Result;
use crate::restore::plan;
use crate::storage::Replica;
use serde::Serialize;

/// The listing flags (`cli::ListingArgs`).
pub type GenerationsArgs = super::ListingArgs;

#[derive(Debug, Serialize)]
pub struct GenerationRow {
    /// `walship`, `litestream-0.3` or `litestream-0.5`.
    pub format: &'static str,
    /// walship's or Litestream 0.3's generation id; `ltx` for Litestream 0.5's files.
    pub generation: String,
    /// For Litestream's backups, when the store wrote the oldest object.
    pub created: String,
    pub last_write: Option<String>,
    pub snapshots: usize,
    pub segments: usize,
    /// walship: WAL segments' bytes; Litestream: every object's.
    pub wal_bytes: u64,
    pub first_txid: Option<u64>,
    pub last_txid: Option<u64>,
}

use crate::clock::rfc3339;

/// One LIST of the path's root: Litestream 0.5's S3 client writes there, not below
/// `generations/`.
pub async fn rows(replica: &Replica) -> Result<Vec<GenerationRow>> {
    let objects = replica.list("").await?;
    let mut rows: Vec<GenerationRow> = plan::group(&objects)
        .into_iter()
        .map(|(id, g)| GenerationRow {
            format: "walship",
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
        .collect();
    rows.extend(
        litestream::backups(&objects)
            .into_iter()
            .map(|b| GenerationRow {
                format: b.format.as_str(),
                created: rfc3339(b.first_ms()),
                last_write: Some(rfc3339(b.last_ms())),
                snapshots: b.snapshots.len(),
                segments: b.segments,
                wal_bytes: b.bytes(),
                first_txid: b.snapshots.iter().filter_map(|s| s.txid).min(),
                last_txid: b.last_txid,
                generation: b.name,
            }),
    );
    Ok(rows)
}

pub async fn run(args: GenerationsArgs) -> Result<()> {
    let replica = args.open()?;
    let rows = rows(&replica).await?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    let (ours, theirs): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.format == "walship");
    println!(
        "{:<20}  {:<24}  {:<24}  {:>9}  {:>8}  {:>12}  {:>10}",
        "generation", "created", "last write", "snapshots", "segments", "WAL bytes", "last txid"
    );
    for r in ours {
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
    if !theirs.is_empty() {
        println!(
            "\nLitestream's backups at this path (restore reads them when no walship \
             generation holds data; cleanup keeps them unless --include-litestream):"
        );
        println!(
            "{:<16}  {:<20}  {:<24}  {:<24}  {:>9}  {:>8}  {:>12}  {:>10}",
            "format",
            "generation",
            "first written",
            "last written",
            "snapshots",
            "segments",
            "bytes",
            "last txid"
        );
        for r in theirs {
            println!(
                "{:<16}  {:<20}  {:<24}  {:<24}  {:>9}  {:>8}  {:>12}  {:>10}",
                r.format,
                r.generation,
                r.created,
                r.last_write.as_deref().unwrap_or("-"),
                r.snapshots,
                r.segments,
                r.wal_bytes,
                r.last_txid.map_or("-".into(), |t| t.to_string()),
            );
        }
    }
    Ok(())
}
