//! `walship verify REPLICA_URL|DB_PATH`: restore the newest state into a scratch directory
//! and check it and every other object of its generation; exits non-zero naming the
//! problem, so it can run as a CronJob.

use super::{ReplicaFlags, resolve_source};
use crate::error::Result;
use crate::restore::DEFAULT_PARALLELISM;
use crate::restore::verify::verify;
use crate::restore::when::format_ms;
use crate::storage::Replica;
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
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

pub async fn run(args: VerifyArgs) -> Result<()> {
    let (rcfg, _) = resolve_source(&args.source, args.config.as_deref(), &args.replica)?;
    let generation = super::parse_generation(args.generation.as_deref())?;
    let replica = Replica::open(&rcfg, false)?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let r = verify(&replica, generation.as_ref(), &dir, args.parallelism.max(1)).await?;
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
    }
    Ok(())
}
