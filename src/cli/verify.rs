//! `walship verify REPLICA_URL|DB_PATH`: restore the newest state into a scratch directory
//! and check it and every other object of its generation; exits non-zero naming the
//! problem, so it can run as a CronJob.

use super::{ReplicaFlags, resolve_source};
use crate::error::Result;
use crate::restore::DEFAULT_PARALLELISM;
use crate::restore::when::format_ms;
use crate::storage::Replica;
use crate::verify::live::LiveComparison;
use crate::verify::verify;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A replica URL, or a database path listed in the config file.
    pub source: String,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Verify this generation instead of the newest one.
    #[arg(long)]
    pub generation: Option<String>,
    /// Where to build the scratch copy (default: the system temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Downloads in flight.
    #[arg(long, default_value_t = DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Also compare with this live database at the same WAL position (default: the
    /// database itself when SOURCE is a database path from the config and it exists here).
    /// The comparison reads the live database in one read transaction, like any reader.
    #[arg(long, conflicts_with = "no_live")]
    pub live: Option<PathBuf>,
    /// Do not compare with the live database.
    #[arg(long)]
    pub no_live: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

pub async fn run(args: VerifyArgs) -> Result<()> {
    let (rcfg, db) = resolve_source(&args.source, args.config.as_deref(), &args.replica)?;
    let live = if args.no_live {
        None
    } else {
        args.live.clone().or(db.filter(|p| p.exists()))
    };
    let generation = super::parse_generation(args.generation.as_deref())?;
    let replica = Replica::open(&rcfg, false)?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let r = verify(
        &replica,
        generation.as_ref(),
        &dir,
        args.parallelism.max(1),
        live.as_deref(),
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serialises"));
    } else {
        println!(
            "ok: {} generation {} restores to transaction {} ({}), {} pages, integrity_check ok; \
             {} objects ({:.1} MB) checked in {:.1} s",
            r.replica,
            r.generation,
            r.txid,
            format_ms(r.commit_ms),
            r.pages,
            r.objects,
            r.bytes as f64 / 1e6,
            r.seconds
        );
        match &r.live {
            Some(LiveComparison::Equal { tables, rows }) => println!(
                "ok: equal to the live database {} at the same WAL position ({tables} tables, \
                 {rows} rows compared)",
                live.as_ref().expect("compared").display()
            ),
            Some(LiveComparison::NotCompared { reason }) => println!(
                "not compared with the live database {}: {reason}",
                live.as_ref().expect("asked").display()
            ),
            None => {}
        }
    }
    Ok(())
}
