//! `walship cleanup`: apply retention once (the CronJob) to the databases of a config, one
//! database, or every database found below a URL prefix. One database's failure is
//! reported and the others still run; the exit status is non-zero if any failed.

use super::{ReplicaFlags, resolve_db};
use crate::config::{self, ReplicaConfig};
use crate::error::{Error, Result};
use crate::retention::{self, Outcome, Policy, Tiers};
use crate::storage::layout::{self, GenerationId};
use crate::storage::{Listed, Replica};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// A URL (every database below it is cleaned: prefix mode) or a database path listed
    /// in the config. Without it, every database in the config.
    pub source: Option<String>,
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Keep point-in-time restore this far back (required with a URL; overrides the
    /// config's `retention`).
    #[arg(long)]
    pub retention: Option<String>,
    /// Extra restore points beyond the window, e.g. hourly=24,daily=7 (overrides the
    /// config's `retention-tiers`).
    #[arg(long)]
    pub tiers: Option<String>,
    /// Print the plan; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the Litestream backups at each path (left from before the switch)
    /// once the store wrote none of their objects inside the window and walship keeps a
    /// restorable generation there. Without it they are never touched.
    #[arg(long)]
    pub include_litestream: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

/// One database to clean.
struct Target {
    replica: ReplicaConfig,
    policy: Policy,
    /// Its objects from the prefix-mode listing (names relative to its root).
    listing: Option<Vec<Listed>>,
}

#[derive(Debug, Serialize)]
struct Report {
    databases: Vec<DbReport>,
    failed: usize,
    list_requests: u64,
    delete_requests: u64,
    get_requests: u64,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum DbReport {
    Done(Box<Outcome>),
    Failed { replica: String, error: String },
}

fn policy_override(args: &CleanupArgs, base: Option<Policy>) -> Result<Option<Policy>> {
    let window = match &args.retention {
        Some(s) => Some(config::parse_duration("--retention", s)?),
        None => None,
    };
    let mut p = match (window, base) {
        (Some(w), Some(b)) => Policy { window: w, ..b },
        (Some(w), None) => Policy::new(w),
        (None, b) => match b {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    if let Some(t) = &args.tiers {
        p.tiers = Tiers::parse(t).map_err(|e| Error::Usage(format!("--tiers: {e}")))?;
    }
    Ok(Some(p))
}

/// Every walship database below `replica`'s root, from one recursive LIST: a database is
/// a prefix holding `generations/<walship generation id>/…`.
fn discover(objects: Vec<Listed>) -> BTreeMap<String, Vec<Listed>> {
    let mut dbs: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
    for o in objects {
        let parts: Vec<&str> = o.name.split('/').collect();
        let at = (0..parts.len().saturating_sub(2)).find(|&i| {
            parts[i] == layout::GENERATIONS && GenerationId::parse(parts[i + 1]).is_some()
        });
        if let Some(i) = at {
            dbs.entry(parts[..i].join("/")).or_default().push(Listed {
                name: parts[i..].join("/"),
                size: o.size,
                modified_ms: o.modified_ms,
            });
        }
    }
    dbs
}

async fn targets(args: &CleanupArgs) -> Result<Vec<Target>> {
    match args.source.as_deref() {
        Some(url) if url.contains("://") => {
            let policy = policy_override(args, None)?.ok_or_else(|| {
                Error::Usage(
                    "--retention is required with a URL (how far back point-in-time restore \
                     must keep working, e.g. 168h)"
                        .into(),
                )
            })?;
            let root = args.replica.replica(url)?;
            let store = Replica::open(&root, false)?;
            let found = discover(store.list("").await?);
            if found.is_empty() {
                return Err(Error::Replica {
                    replica: store.url().to_string(),
                    reason: "no walship replica below this prefix (nothing has \
                             generations/<id>/): check the URL"
                        .into(),
                });
            }
            Ok(found
                .into_iter()
                .map(|(sub, listing)| Target {
                    replica: root.below(&sub),
                    policy: policy.clone(),
                    listing: Some(listing),
                })
                .collect())
        }
        Some(path) => {
            let (replica, db) = resolve_db(path, args.config.as_deref(), &args.replica)?;
            // Every replica of the database (one with -replica NAME), by its retention.
            let (replicas, base) = match db {
                Some(d) => (d.replicas().cloned().collect(), d.retention_policy()),
                None => (vec![replica], None),
            };
            let policy = policy_override(args, base)?.ok_or_else(|| {
                Error::Usage(format!(
                    "{path}: retention is off (0) and no --retention given"
                ))
            })?;
            Ok(replicas
                .into_iter()
                .map(|replica| Target {
                    replica,
                    policy: policy.clone(),
                    listing: None,
                })
                .collect())
        }
        None => {
            let path = config::locate(args.config.as_deref());
            let cfg = config::load(&path)?;
            cfg.log_notes();
            let mut out = Vec::new();
            for db in cfg.dbs {
                let replicas: Vec<ReplicaConfig> = db.replicas().cloned().collect();
                // A database with retention off is left alone unless --retention says.
                if let Some(policy) = policy_override(args, db_policy(db))? {
                    out.extend(replicas.into_iter().map(|replica| Target {
                        replica,
                        policy: policy.clone(),
                        listing: None,
                    }));
                }
            }
            Ok(out)
        }
    }
}

fn db_policy(db: config::DbConfig) -> Option<Policy> {
    db.retention_policy()
}

pub async fn run(args: CleanupArgs) -> Result<()> {
    let targets = targets(&args).await?;
    let now = crate::clock::now_ms();
    let mut report = Report {
        databases: Vec::new(),
        failed: 0,
        list_requests: u64::from(args.source.as_deref().is_some_and(|s| s.contains("://"))),
        delete_requests: 0,
        get_requests: 0,
    };
    for t in targets {
        let url = t.replica.url();
        let result = async {
            let replica = Replica::open(&t.replica, false)?;
            let mut o =
                retention::apply(&replica, &t.policy, now, None, args.dry_run, t.listing).await?;
            if args.include_litestream {
                use std::sync::atomic::Ordering::Relaxed;
                let c = &replica.counts;
                let (l0, d0) = (c.list.load(Relaxed), c.delete.load(Relaxed));
                let ours = o.plan.deletions().iter().map(|d| d.key.clone()).collect();
                let ls = retention::litestream::apply(
                    &replica,
                    &ours,
                    o.plan.window_start_ms,
                    args.dry_run,
                )
                .await?;
                o.list_requests += c.list.load(Relaxed) - l0;
                o.delete_requests += c.delete.load(Relaxed) - d0;
                o.deleted_objects += ls.deleted_objects;
                o.deleted_bytes += ls.deleted_bytes;
                o.litestream = Some(ls);
            }
            Ok::<_, Error>(o)
        }
        .await;
        match result {
            Ok(o) => {
                report.list_requests += o.list_requests;
                report.delete_requests += o.delete_requests;
                report.get_requests += o.get_requests;
                if !args.json {
                    print_outcome(&o);
                }
                report.databases.push(DbReport::Done(Box::new(o)));
            }
            Err(e) => {
                report.failed += 1;
                tracing::error!("cleanup of {url} failed: {e}");
                if !args.json {
                    println!("{url}: FAILED: {e}");
                }
                report.databases.push(DbReport::Failed {
                    replica: url,
                    error: e.to_string(),
                });
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        println!(
            "{} database(s), {} failed; requests: {} LIST, {} DELETE{}",
            report.databases.len(),
            report.failed,
            report.list_requests,
            report.delete_requests,
            if report.get_requests > 0 {
                format!(", {} GET", report.get_requests)
            } else {
                String::new()
            }
        );
    }
    if report.failed > 0 {
        let names: Vec<&str> = report
            .databases
            .iter()
            .filter_map(|d| match d {
                DbReport::Failed { replica, .. } => Some(replica.as_str()),
                DbReport::Done(_) => None,
            })
            .collect();
        return Err(Error::Replica {
            replica: names.join(", "),
            reason: format!(
                "cleanup failed for {} of {} database(s)",
                report.failed,
                report.databases.len()
            ),
        });
    }
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn print_outcome(o: &Outcome) {
    let p = &o.plan;
    let verb = if o.dry_run { "would delete" } else { "deleted" };
    println!(
        "{}: {verb} {} objects ({}); kept {} objects ({}); window from {}",
        o.replica,
        o.deleted_objects,
        mb(o.deleted_bytes),
        p.kept_objects(),
        mb(p.kept_bytes()),
        crate::clock::rfc3339(p.window_start_ms),
    );
    for g in &p.generations {
        let action = match g.action {
            retention::plan::Action::Keep => "keep",
            retention::plan::Action::Trim => "trim",
            retention::plan::Action::Delete => "delete",
        };
        println!(
            "  {}  {action:<6}  {:>6} objects {:>10} deleted, {:>6} kept  {}",
            g.generation,
            g.delete.len(),
            mb(g.deleted_bytes()),
            g.kept_objects,
            g.why
        );
    }
    if let Some(ls) = &o.litestream {
        for b in &ls.backups {
            let action = match b.action {
                retention::litestream::Action::Keep => "keep",
                retention::litestream::Action::Delete => "delete",
            };
            println!(
                "  {} {}  {action:<6}  {:>6} objects {:>10}  {}",
                b.format.as_str(),
                b.generation,
                b.objects,
                mb(b.bytes),
                b.why
            );
        }
    }
    if p.foreign_objects > 0 {
        println!(
            "  {} object(s) outside walship's generations left alone",
            p.foreign_objects
        );
    }
}
