//! `walship backups REPLICA_URL|PGDATA [--json]`: a PostgreSQL replica's base backups
//! (oldest first, from their manifests) and, per cluster and timeline, the WAL archived
//! (first and last segment): together, the range a point-in-time restore can reach.

use super::print_json;
use crate::catalog::Catalog;
use crate::error::Result;
use crate::pgformat::walname::WalFile;
use crate::restore::when::format_ms;
use crate::storage::Replica;
use crate::storage::layout;
use serde::Serialize;
use std::collections::BTreeMap;

/// The listing flags (`cli::ListingArgs`).
pub type BackupsArgs = super::ListingArgs;

#[derive(Debug, Serialize)]
pub struct BackupRow {
    pub generation: String,
    pub timeline: u32,
    pub started: String,
    pub finished: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct WalRange {
    pub generation: String,
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: usize,
    pub history: bool,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub backups: Vec<BackupRow>,
    pub wal: Vec<WalRange>,
}

pub async fn listing(replica: &Replica) -> Result<Listing> {
    let catalog = Catalog::of(&replica.list(layout::GENERATIONS).await?);
    let mut backups = Vec::new();
    let mut wal = Vec::new();
    for (g, gen_) in &catalog.generations {
        for b in gen_.backups.values() {
            let Some(mo) = &b.manifest else { continue };
            let m = crate::catalog::read_backup_manifest(replica, &mo.key).await?;
            backups.push(BackupRow {
                generation: g.to_string(),
                timeline: m.timeline,
                started: format_ms(m.start_ms),
                finished: format_ms(m.stop_ms),
                start_lsn: m.start_lsn,
                stop_lsn: m.stop_lsn,
                files: m.files.len(),
                bytes: m.bytes,
            });
        }
        // timeline -> (segment names in order, history archived)
        let mut per: BTreeMap<u32, (Vec<String>, bool)> = BTreeMap::new();
        for (f, _) in &gen_.wal {
            let e = per.entry(f.timeline()).or_default();
            match f {
                WalFile::History { .. } => e.1 = true,
                WalFile::Segment { .. } | WalFile::Partial { .. } => e.0.push(f.to_string()),
                _ => {}
            }
        }
        wal.extend(per.into_iter().map(|(timeline, (mut segs, history))| {
            segs.sort();
            WalRange {
                generation: g.to_string(),
                timeline,
                first: segs.first().cloned().unwrap_or_default(),
                last: segs.last().cloned().unwrap_or_default(),
                segments: segs.len(),
                history,
            }
        }));
    }
    backups.sort_by(|a, b| (&a.generation, &a.started).cmp(&(&b.generation, &b.started)));
    Ok(Listing { backups, wal })
}

pub async fn run(args: BackupsArgs) -> Result<()> {
    let replica = args.open()?;
    let l = listing(&replica).await?;
    if args.json {
        print_json(&l);
        return Ok(());
    }
    println!(
        "{:<20}  {:>2}  {:<24}  {:<24}  {:>12}  {:>12}  {:>6}  {:>12}",
        "generation", "tl", "started", "finished", "start lsn", "stop lsn", "files", "bytes"
    );
    for b in &l.backups {
        println!(
            "{:<20}  {:>2}  {:<24}  {:<24}  {:>12}  {:>12}  {:>6}  {:>12}",
            b.generation,
            b.timeline,
            b.started,
            b.finished,
            b.start_lsn,
            b.stop_lsn,
            b.files,
            b.bytes
        );
    }
    println!();
    println!(
        "{:<20}  {:>2}  {:<32}  {:<32}  {:>8}  history",
        "WAL of generation", "tl", "first", "last", "segments"
    );
    for w in &l.wal {
        println!(
            "{:<20}  {:>2}  {:<32}  {:<32}  {:>8}  {}",
            w.generation,
            w.timeline,
            w.first,
            w.last,
            w.segments,
            if w.history { "yes" } else { "-" }
        );
    }
    Ok(())
}
