//! `restore` of a database with several replicas (Litestream 0.3's `replicas:`): one LIST
//! of each ranks them by the newest state they hold; the restore runs from the first and
//! falls back to the next when one is unreachable, damaged or cannot give the state asked
//! for, saying so. Never writes to a replica.

use super::restore::RestoreArgs;
use crate::config::{DbConfig, ReplicaConfig};
use crate::error::{Error, Result};
use crate::storage::Replica;
use crate::storage::layout;
use std::time::Instant;

/// What one LIST says of a replica: when its newest restorable state was committed (0:
/// it holds none), or why it could not be listed.
struct Ranked {
    replica: ReplicaConfig,
    newest_ms: std::result::Result<u64, Error>,
}

async fn rank(r: &ReplicaConfig) -> std::result::Result<u64, Error> {
    let store = Replica::open(r, false)?;
    let objects = store.list(layout::GENERATIONS).await?;
    Ok(crate::restore::plan::group(&objects)
        .values()
        .filter(|g| g.restorable())
        .filter_map(|g| g.last_write_ms())
        .max()
        .unwrap_or(0))
}

/// Errors about a replica's reachability or content, after which another replica may do.
fn another_may_do(e: &Error) -> bool {
    matches!(
        e,
        Error::Store { .. } | Error::Corrupt { .. } | Error::Replica { .. }
    )
}

/// Restore `db` from the replica with the newest state, falling back in that order.
pub(super) async fn restore(args: RestoreArgs, db: DbConfig, started: Instant) -> Result<()> {
    let mut ranked = Vec::new();
    for r in db.replicas() {
        ranked.push(Ranked {
            replica: r.clone(),
            newest_ms: rank(r).await,
        });
    }
    // Newest first; unreachable ones last; ties keep the config's order.
    ranked.sort_by_key(|r| match &r.newest_ms {
        Ok(ms) => (0, std::cmp::Reverse(*ms)),
        Err(_) => (1, std::cmp::Reverse(0)),
    });
    for r in &ranked {
        match &r.newest_ms {
            Ok(0) => tracing::info!(replica = %r.replica.name(), url = %r.replica.url(),
                "holds no walship state"),
            Ok(ms) => tracing::info!(replica = %r.replica.name(), url = %r.replica.url(),
                newest = %crate::clock::rfc3339(*ms), "newest state"),
            Err(e) => tracing::warn!(replica = %r.replica.name(), "cannot be listed: {e}"),
        }
    }
    // Init mode on a database no reachable replica holds data of: only when every
    // replica answered may it start empty (an unreachable one may hold the backup).
    if args.if_replica_exists
        && ranked.iter().all(|r| matches!(r.newest_ms, Ok(0) | Err(_)))
        && let Some(down) = ranked.iter().find(|r| r.newest_ms.is_err())
    {
        let e = down.newest_ms.as_ref().expect_err("an error");
        return Err(Error::Replica {
            replica: down.replica.url(),
            reason: format!(
                "cannot be reached ({e}), and the other replicas hold nothing to restore: \
                 it may hold the backup, so the database is not started empty"
            ),
        });
    }
    // The ones that could not be listed are named whichever replica restores.
    let mut failures: Vec<String> = ranked
        .iter()
        .filter_map(|r| r.newest_ms.as_ref().err().map(|e| (r, e)))
        .map(|(r, e)| format!("{} ({}): {e}", r.replica.name(), r.replica.url()))
        .collect();
    let reachable: Vec<Ranked> = ranked.into_iter().filter(|r| r.newest_ms.is_ok()).collect();
    let n = reachable.len();
    // The newest state a replica that failed holds: another replica's older newest state
    // is an older state (the rule of docs/RESTORE.md), given only with --allow-older.
    let latest = args.timestamp.is_none() && args.txid.is_none();
    let mut failed_newest: Option<(String, u64)> = None;
    for (i, r) in reachable.into_iter().enumerate() {
        let name = r.replica.name();
        let url = r.replica.url();
        let newest = *r.newest_ms.as_ref().expect("reachable");
        if let Some((other, ms)) = &failed_newest
            && latest
            && newest < *ms
        {
            if !args.allow_older {
                failures.push(format!(
                    "{name} ({url}) holds only an older state (newest at {}, {other}'s at {}): give --allow-older to restore it",
                    crate::clock::rfc3339(newest),
                    crate::clock::rfc3339(*ms)
                ));
                break;
            }
            crate::cli::say_err(&format!(
                "walship: restoring an older state (--allow-older): replica {name}'s newest (at {}) is {:.1}s behind {other}'s, which cannot be restored",
                crate::clock::rfc3339(newest),
                (*ms - newest) as f64 / 1000.0
            ));
        }
        let one = db.clone().only(r.replica.clone());
        match super::restore::restore_resolved(args.clone(), r.replica, Some(one), started).await {
            Ok(()) => {
                if !failures.is_empty() {
                    crate::cli::say_err(&format!(
                        "walship: restored from replica {name} ({url}) after: {}",
                        failures.join("; ")
                    ));
                }
                tracing::info!(replica = %name, url = %url, "restored from this replica");
                return Ok(());
            }
            Err(e) if another_may_do(&e) && i + 1 < n => {
                tracing::warn!(replica = %name, "{e}; falling back to the next replica");
                crate::cli::say_err(&format!(
                    "walship: replica {name} ({url}): {e}; falling back to the next replica"
                ));
                failures.push(format!("{name} ({url}): {e}"));
                if failed_newest.is_none() {
                    failed_newest = Some((name, newest));
                }
            }
            Err(e) if failures.is_empty() && i == 0 && !another_may_do(&e) => return Err(e),
            Err(e) => {
                failures.push(format!("{name} ({url}): {e}"));
                break;
            }
        }
    }
    Err(Error::Replica {
        replica: db
            .replicas()
            .map(|r| r.url())
            .collect::<Vec<_>>()
            .join(", "),
        reason: format!("no replica could be restored from: {}", failures.join("; ")),
    })
}
