//! `restore` from a path that holds Litestream's backups and no walship generation: 0.5's
//! LTX files or 0.3's generations, exactly the state asked for or an error naming what is
//! missing. The formats are read by `restore::litestream` and `restore::litestream03`; this
//! prints plans and summaries. Never writes to the replica.

use super::restore::{RestoreArgs, Summary, mb, refuse_existing};
use crate::error::{Error, Result};
use crate::restore::plan::Target;
use crate::restore::when::format_ms;
use crate::restore::{self};
use crate::storage::Replica;
use std::time::Instant;

/// Restore from the LTX files Litestream 0.5 left at the path (no walship generation is
/// there): exactly the state asked for, or an error naming what is missing.
pub(super) async fn ltx(
    args: &RestoreArgs,
    replica: &Replica,
    mut files: Vec<restore::litestream::LtxFile>,
    target: Target,
    output: &std::path::Path,
    started: Instant,
) -> Result<()> {
    use restore::litestream as ls;
    if args.generation.is_some() {
        return Err(Error::Usage(format!(
            "{} holds Litestream 0.5's LTX files, which have no generations: drop --generation",
            replica.url()
        )));
    }
    if matches!(target, Target::Time(_)) {
        ls::read_times(replica, &mut files, args.parallelism).await?;
    }
    let replica_err = |reason: String| Error::Replica {
        replica: replica.url().to_string(),
        reason,
    };
    let plan = ls::plan(&files, target, args.allow_older).map_err(replica_err)?;
    let bytes: u64 = plan.files.iter().map(|f| f.size).sum();
    if args.dry_run {
        println!(
            "restore plan for {} -> {} (Litestream 0.5's LTX files)",
            replica.url(),
            output.display()
        );
        for f in &plan.files {
            println!(
                "  level {}  transactions {}..={}  {}  {}",
                f.level,
                f.min,
                f.max,
                mb(f.size),
                f.rel
            );
        }
        println!("  restores    transaction {}", plan.txid);
        println!(
            "  download    {} in {} objects",
            mb(bytes),
            plan.files.len()
        );
        return Ok(());
    }
    if let Some(older) = &plan.older {
        crate::cli::say_err(&format!(
            "walship: restoring an older state (--allow-older): {older}"
        ));
    }
    refuse_existing(output, args.force)?;
    tracing::info!(
        files = plan.files.len(),
        txid = plan.txid,
        "{} holds Litestream 0.5's backups and no walship generation: restoring from them",
        replica.url()
    );
    let check = !args.no_integrity_check;
    let r = ls::restore(replica, &plan, output, args.parallelism, check).await?;
    tracing::info!(
        txid = r.txid,
        replicated = %format_ms(r.commit_ms),
        pages = r.pages,
        files = r.files,
        downloaded = r.downloaded,
        ms = started.elapsed().as_millis() as u64,
        "restored {} from Litestream's LTX files",
        output.display()
    );
    summary(
        args,
        output,
        Some(r.txid),
        Some(format_ms(r.commit_ms)),
        r.pages,
        r.downloaded,
        started,
    );
    Ok(())
}

/// Restore from Litestream 0.3's generations (no walship generation is there): its newest
/// state only; its names carry no transaction time to aim at.
pub(super) async fn v03(
    args: &RestoreArgs,
    replica: &Replica,
    objects: &[restore::litestream03::V3Object],
    target: Target,
    output: &std::path::Path,
    started: Instant,
) -> Result<()> {
    use restore::litestream03 as v3;
    if !matches!(target, Target::Latest) || args.generation.is_some() {
        return Err(Error::Usage(format!(
            "{} holds Litestream 0.3's backups: walship restores their newest state only; \
             drop --timestamp, --txid and --generation (or use `litestream restore` for an \
             older one)",
            replica.url()
        )));
    }
    let plan = v3::plan(objects).map_err(|reason| Error::Replica {
        replica: replica.url().to_string(),
        reason,
    })?;
    let bytes = plan.snapshot.size + plan.segments.iter().map(|s| s.size).sum::<u64>();
    if args.dry_run {
        println!(
            "restore plan for {} -> {} (Litestream 0.3's generation {})",
            replica.url(),
            output.display(),
            plan.generation
        );
        println!(
            "  snapshot    {}  {}",
            mb(plan.snapshot.size),
            plan.snapshot.rel
        );
        println!("  segments    {}", plan.segments.len());
        println!(
            "  download    {} in {} objects",
            mb(bytes),
            1 + plan.segments.len()
        );
        return Ok(());
    }
    refuse_existing(output, args.force)?;
    tracing::info!(
        generation = %plan.generation,
        segments = plan.segments.len(),
        "{} holds Litestream 0.3's backups and no walship generation: restoring from them",
        replica.url()
    );
    let check = !args.no_integrity_check;
    let r = v3::restore(replica, &plan, output, args.parallelism, check).await?;
    tracing::info!(
        transactions = r.transactions,
        pages = r.pages,
        downloaded = r.downloaded,
        ms = started.elapsed().as_millis() as u64,
        "restored {} from Litestream 0.3's generation {}",
        output.display(),
        plan.generation
    );
    summary(args, output, None, None, r.pages, r.downloaded, started);
    Ok(())
}

/// `--json`: what was restored.
fn summary(
    args: &RestoreArgs,
    output: &std::path::Path,
    txid: Option<u64>,
    commit_time: Option<String>,
    pages: u32,
    downloaded: u64,
    started: Instant,
) {
    if args.json {
        let s = Summary {
            restored: true,
            output,
            reason: None,
            generation: None,
            txid,
            commit_time,
            pages: Some(pages),
            downloaded_bytes: Some(downloaded),
            seconds: Some(started.elapsed().as_secs_f64()),
        };
        println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
    }
}
