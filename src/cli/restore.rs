//! `walship restore [-o OUT] REPLICA_URL|DB_PATH`: newest state or a point in time, a
//! printed plan (`--dry-run`), and the init-container guards (`--if-db-not-exists`,
//! `--if-replica-exists`; semantics in init/README.md).

use super::{ReplicaFlags, resolve_db};
use crate::error::{Error, Result};
use crate::restore::plan::{self, Plan, Stop, Target};
use crate::restore::when::{format_ms, parse_time};
use crate::restore::{self, DEFAULT_PARALLELISM, RestoreOptions};
use crate::storage::Replica;
use crate::storage::layout::{self, GenerationId};
use clap::Args;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Default, Args)]
pub struct RestoreArgs {
    /// A replica URL, or a database path listed in the config file.
    pub source: String,
    /// Where to write the database (default: the database path, when SOURCE is one).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long, conflicts_with = "if_db_not_exists")]
    pub force: bool,
    /// Restore the last transaction committed at or before this time: RFC 3339
    /// (2026-11-21T14:02:00Z), a UTC time of day (14:02), or a duration ago (15m).
    #[arg(long, conflicts_with = "txid")]
    pub timestamp: Option<String>,
    /// Restore exactly this transaction of the generation (--generation, default newest).
    #[arg(long)]
    pub txid: Option<u64>,
    /// Restore from this generation only.
    #[arg(long)]
    pub generation: Option<String>,
    /// Print the plan (generation, snapshot, segments, bytes) and restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// When the newest state cannot be assembled (an object is missing), restore the newest
    /// state that can be and say how far behind it is, instead of failing.
    #[arg(long)]
    pub allow_older: bool,
    /// Machine-readable output (the plan with --dry-run, else a summary).
    #[arg(long)]
    pub json: bool,
    /// Init containers: do nothing (exit 0) if the output database already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,
    /// Init containers: do nothing (exit 0) if the replica holds nothing to restore.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// Downloads in flight.
    #[arg(long, default_value_t = DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Skip `PRAGMA integrity_check` on the result (CRCs are still verified).
    #[arg(long)]
    pub no_integrity_check: bool,
    /// Litestream 0.5's form: `none` is --no-integrity-check; `quick` and `full` run
    /// walship's check (a full `PRAGMA integrity_check`), which is the default.
    #[arg(long, value_name = "none|quick|full", value_parser = ["none", "quick", "full"])]
    pub integrity_check: Option<String>,
    /// Litestream 0.3's WAL index target: refused with the flag to use instead.
    #[arg(long, hide = true)]
    pub index: Option<String>,
    /// Litestream 0.5's follow mode: refused (walship restores once; run it again).
    #[arg(short = 'f', long, hide = true)]
    pub follow: bool,
    #[arg(long, hide = true)]
    pub follow_interval: Option<String>,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

#[derive(Serialize)]
struct DryRun<'a> {
    replica: &'a str,
    output: &'a std::path::Path,
    plan: &'a Plan,
    objects: usize,
    bytes: u64,
}

#[derive(Serialize)]
pub(super) struct Summary<'a> {
    pub(super) restored: bool,
    pub(super) output: &'a std::path::Path,
    pub(super) reason: Option<String>,
    pub(super) generation: Option<&'a GenerationId>,
    pub(super) txid: Option<u64>,
    pub(super) commit_time: Option<String>,
    pub(super) pages: Option<u32>,
    pub(super) downloaded_bytes: Option<u64>,
    pub(super) seconds: Option<f64>,
}

fn skipped(json: bool, output: &std::path::Path, reason: String) {
    tracing::info!("{reason}; nothing to restore");
    if json {
        let s = Summary {
            restored: false,
            output,
            reason: Some(reason),
            generation: None,
            txid: None,
            commit_time: None,
            pages: None,
            downloaded_bytes: None,
            seconds: None,
        };
        println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
    }
}

/// Plans made again when an object vanishes between LIST and GET.
const REPLAN_ATTEMPTS: u32 = 3;

pub async fn run(mut args: RestoreArgs) -> Result<()> {
    let started = Instant::now();
    if args.index.is_some() {
        return Err(Error::Usage(
            "-index (a Litestream 0.3 WAL index) names nothing in a walship replica: give \
             -timestamp TIME, or -txid N (see `walship snapshots`)"
                .into(),
        ));
    }
    if args.follow || args.follow_interval.is_some() {
        return Err(Error::Usage(
            "follow mode (-f) is not supported: walship restores once; for a read replica \
             that follows, run restore again (or use the sidecar's validation)"
                .into(),
        ));
    }
    if args.integrity_check.as_deref() == Some("none") {
        args.no_integrity_check = true;
    }
    let (rcfg, db) = resolve_db(&args.source, args.config.as_deref(), &args.replica)?;
    match db {
        Some(d) if !d.more_replicas.is_empty() => {
            super::restore_many::restore(args, d, started).await
        }
        db => restore_resolved(args, rcfg, db, started).await,
    }
}

/// `replicate`'s `restore-if-db-not-exists`: what `restore --if-db-not-exists
/// --if-replica-exists DB` does, for a database the sidecar already has the config of.
pub async fn restore_if_missing(db: &crate::config::DbConfig) -> Result<()> {
    let args = RestoreArgs {
        source: db.path.display().to_string(),
        if_db_not_exists: true,
        if_replica_exists: true,
        parallelism: DEFAULT_PARALLELISM,
        ..Default::default()
    };
    if !db.more_replicas.is_empty() {
        return super::restore_many::restore(args, db.clone(), Instant::now()).await;
    }
    restore_resolved(args, db.replica.clone(), Some(db.clone()), Instant::now()).await
}

pub(super) async fn restore_resolved(
    args: RestoreArgs,
    rcfg: crate::config::ReplicaConfig,
    db: Option<crate::config::DbConfig>,
    started: Instant,
) -> Result<()> {
    let output = args
        .output
        .clone()
        .or(db.as_ref().map(|d| d.path.clone()))
        .ok_or_else(|| Error::Usage("give -o OUTPUT when restoring from a replica URL".into()))?;
    // Where a walship replicating the output will keep its spool (and the history id).
    let spool_dir = match &db {
        Some(d) if args.output.is_none() => d.spool_dir.clone(),
        _ => crate::config::default_spool_dir(&output),
    };
    let generation = super::parse_generation(args.generation.as_deref())?;
    let target = match (&args.timestamp, args.txid) {
        (Some(t), _) => Target::Time(parse_time(t, crate::clock::now_ms()).map_err(Error::Usage)?),
        (None, Some(n)) => Target::Txid(n),
        (None, None) => Target::Latest,
    };
    if args.if_db_not_exists && output.exists() {
        skipped(
            args.json,
            &output,
            format!("{} already exists", output.display()),
        );
        return Ok(());
    }
    if args.if_replica_exists
        && let crate::config::Location::File { dir } = &rcfg.location
        && !dir.exists()
    {
        skipped(
            args.json,
            &output,
            format!("replica directory {} does not exist", dir.display()),
        );
        return Ok(());
    }
    let replica = Replica::open(&rcfg, false)?;
    // A store that cannot be reached is an error even with --if-replica-exists: an init
    // container must not start an empty database because S3 was down.
    // A plan is made from one LIST; if an object it names disappears before it is read
    // (retention or `cleanup` removed it meanwhile), plan again from a fresh LIST.
    let mut attempt = 1;
    let mut history;
    let report = loop {
        let objects = replica.list(layout::GENERATIONS).await?;
        let mut gens = plan::group(&objects);
        // The day of the switch from Litestream: the path holds Litestream's backups and
        // no walship generation. Starting the app empty would be silently wrong.
        if !gens.values().any(|g| g.has_data()) {
            // Litestream's S3 client writes its levels at the path's root: list it all
            // (only a path without walship data gets here).
            let ltx = restore::litestream::files(&replica.list("").await?);
            let v03 = restore::litestream03::objects(&objects);
            use super::restore_litestream as ls;
            let foreign = if !ltx.is_empty() {
                Some(ls::ltx(&args, &replica, ltx, target, &output, started).await)
            } else if !v03.is_empty() {
                Some(ls::v03(&args, &replica, &v03, target, &output, started).await)
            } else {
                None
            };
            match foreign {
                Some(Err(e)) if e.is_not_found() && attempt < REPLAN_ATTEMPTS => {
                    tracing::warn!("{e}; it was deleted after the listing: planning again");
                    attempt += 1;
                    continue;
                }
                Some(r) => return r,
                None => {}
            }
        }
        // Init mode skips only a replica with nothing committed in it: no generation, or
        // only generations whose first snapshot has not landed (a replicator that died
        // while uploading it left nothing to restore, and a pod that waited for it would
        // never start). Segments without a snapshot are damage, not "nothing".
        if args.if_replica_exists && !gens.values().any(|g| g.has_data()) {
            let what = if gens.is_empty() {
                "holds no generations"
            } else {
                "holds no snapshot yet (a generation's first snapshot has not landed)"
            };
            skipped(
                args.json,
                &output,
                format!("replica {} {what}", replica.url()),
            );
            return Ok(());
        }
        let by_identity = match (&generation, &db) {
            (None, Some(d)) => configured_history_generation(&replica, d, &gens).await?,
            _ => None,
        };
        let plan = restore::plan_checked(
            &replica,
            &mut gens,
            generation.as_ref().or(by_identity.as_ref()),
            target,
            args.allow_older,
        )
        .await?;
        if args.dry_run {
            print_plan(&replica, &output, &plan, args.json);
            return Ok(());
        }
        // Exactly the state asked for, or an error naming what is missing (docs/RESTORE.md);
        // an older state only when opted into, and then said.
        if let Some(older) = &plan.older {
            tracing::warn!(generation = %plan.generation, "--allow-older: {older}");
            crate::cli::say_err(&format!(
                "walship: restoring an older state (--allow-older): {older}"
            ));
        }
        refuse_existing(&output, args.force)?;
        history = history_of(&replica, &plan.generation).await?;
        let result = restore::restore_plan(
            &replica,
            plan,
            &RestoreOptions {
                output: output.clone(),
                parallelism: args.parallelism.max(1),
                integrity_check: !args.no_integrity_check,
                progress: std::io::stderr().is_terminal() && !args.json,
            },
            started,
        )
        .await;
        match result {
            Err(e) if e.is_not_found() && attempt < REPLAN_ATTEMPTS => {
                tracing::warn!(
                    "{e}; it was deleted after the listing (retention?): planning again"
                );
                attempt += 1;
            }
            r => break r?,
        }
    };
    if let Some(id) = &history {
        crate::replicate::history::keep(&output, &spool_dir, id)?;
    }
    tracing::info!(
        generation = %report.plan.generation,
        txid = report.txid,
        committed = %format_ms(report.commit_ms),
        pages = report.pages,
        downloaded = report.downloaded,
        ms = report.elapsed.as_millis() as u64,
        "restored {}",
        output.display()
    );
    if args.json {
        let s = Summary {
            restored: true,
            output: &output,
            reason: None,
            generation: Some(&report.plan.generation),
            txid: Some(report.txid),
            commit_time: Some(format_ms(report.commit_ms)),
            pages: Some(report.pages),
            downloaded_bytes: Some(report.downloaded),
            seconds: Some(report.elapsed.as_secs_f64()),
        };
        println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
    }
    Ok(())
}

/// For a configured database whose history id is known here (on its file or in its
/// spool): the newest generation of that history, when it is not the newest generation of
/// the path (a path handed to another database with `--force-new-history`). `None`: the
/// newest generation, as without a config. Reads manifests newest first until one matches.
async fn configured_history_generation(
    replica: &Replica,
    db: &crate::config::DbConfig,
    gens: &std::collections::BTreeMap<GenerationId, crate::restore::plan::Generation>,
) -> Result<Option<GenerationId>> {
    let Some(mine) = crate::replicate::history::read_local(&db.path, &db.spool_dir)
        .ok()
        .flatten()
    else {
        return Ok(None);
    };
    for (i, g) in gens.keys().rev().enumerate() {
        // A generation without a readable manifest is the planner's to judge.
        if let Ok(Some(h)) = history_of(replica, g).await
            && h == mine
        {
            if i > 0 {
                tracing::info!(generation = %g, history = %mine,
                    "restoring the configured database's history, not the path's newest generation");
            }
            return Ok((i > 0).then(|| g.clone()));
        }
    }
    Ok(None)
}

/// The history id of the generation restored from. The restored database continues that
/// history: after the restore the id goes into the spool directory, so that walship
/// replicating it to the same path does not refuse it as another database (docs/LEASE.md).
async fn history_of(
    replica: &Replica,
    generation: &GenerationId,
) -> Result<Option<crate::replicate::history::HistoryId>> {
    let m = crate::catalog::read_manifest(replica, generation)
        .await?
        .map_err(|why| Error::Replica {
            replica: replica.url().to_string(),
            reason: why,
        })?;
    Ok(m.history
        .as_deref()
        .and_then(crate::replicate::history::HistoryId::parse))
}

/// An existing output is replaced only with `--force`.
pub(super) fn refuse_existing(output: &std::path::Path, force: bool) -> Result<()> {
    if output.exists() && !force {
        return Err(Error::Refused(format!(
            "{} already exists; pass --force to replace it",
            output.display()
        )));
    }
    Ok(())
}

pub(super) fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn print_plan(replica: &Replica, output: &std::path::Path, plan: &Plan, json: bool) {
    let objects = 1 + plan.segments.len();
    if json {
        let d = DryRun {
            replica: replica.url(),
            output,
            plan,
            objects,
            bytes: plan.bytes(),
        };
        println!("{}", serde_json::to_string_pretty(&d).expect("serialises"));
        return;
    }
    let target = match plan.target {
        Target::Latest => "the newest state".to_string(),
        Target::Time(t) => format!("the last transaction at or before {}", format_ms(t)),
        Target::Txid(n) => format!("transaction {n}"),
    };
    println!("restore plan for {} -> {}", replica.url(), output.display());
    println!("  target      {target}");
    println!(
        "  generation  {} (created {})",
        plan.generation,
        format_ms(plan.generation.created_ms())
    );
    println!(
        "  snapshot    transaction {} of {}, {}  {}",
        plan.snapshot.name.txid,
        format_ms(plan.snapshot.name.commit_ms),
        mb(plan.snapshot.size),
        plan.snapshot.key
    );
    match (plan.segments.first(), plan.segments.last()) {
        (Some(a), Some(b)) => println!(
            "  segments    {}: transactions {}..={} ({} .. {}), {}",
            plan.segments.len(),
            a.name.first_txid,
            b.name.last_txid,
            format_ms(a.name.first_commit_ms),
            format_ms(b.name.last_commit_ms),
            mb(plan.segments.iter().map(|s| s.size).sum())
        ),
        _ => println!("  segments    none"),
    }
    let ends = match plan.stop {
        None => format!("transaction {}", plan.txid),
        Some(Stop::Txid(n)) => format!("transaction {n} (inside the last segment)"),
        Some(Stop::Time(t)) => format!(
            "the last commit at or before {} (inside the last segment, at most transaction {})",
            format_ms(t),
            plan.txid
        ),
    };
    println!("  restores    {ends}");
    println!("  download    {} in {objects} objects", mb(plan.bytes()));
}
