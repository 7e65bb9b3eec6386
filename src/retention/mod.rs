//! Retention: plan (pure, `plan`) and carry out deletions for one database's replica, then
//! list again to prove they happened. Used by `walship cleanup` and the replicator.

pub mod litestream;
pub mod pgplan;
pub mod plan;

use crate::error::{Error, Result};
use crate::storage::layout::{self, GenerationId};
use crate::storage::{Listed, Replica};
pub use plan::{Policy, RetentionPlan, Tiers};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub replica: String,
    pub dry_run: bool,
    pub plan: RetentionPlan,
    pub deleted_objects: usize,
    pub deleted_bytes: u64,
    /// Requests this run made: LISTs (the plan's and the check after deleting) and
    /// DELETE requests (batches of up to 1,000 keys on S3).
    pub list_requests: u64,
    pub delete_requests: u64,
    /// GETs: the lease, and for PostgreSQL clusters `cluster.json` and the timeline
    /// history files.
    pub get_requests: u64,
    /// Litestream's backups at the path (`cleanup --include-litestream` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub litestream: Option<litestream::LitestreamOutcome>,
}

/// Plan and apply retention to one database's replica. `listing` is a LIST of its
/// `generations/` already made (prefix mode lists once for every database); without it,
/// this lists. Deletes in plan order (snapshots, segments, manifests), then lists again and
/// fails if a deleted object is still there: a store that answers success and deletes
/// nothing must not go unnoticed.
pub async fn apply(
    replica: &Replica,
    policy: &Policy,
    now_ms: u64,
    live: Option<&GenerationId>,
    dry_run: bool,
    listing: Option<Vec<Listed>>,
) -> Result<Outcome> {
    let (list0, del0, get0) = (
        replica.counts.list.load(Ordering::Relaxed),
        replica.counts.delete.load(Ordering::Relaxed),
        replica.counts.get.load(Ordering::Relaxed),
    );
    let listing = match listing {
        Some(l) => l,
        None => replica.list(layout::GENERATIONS).await?,
    };
    let catalog = crate::catalog::Catalog::of(&listing);
    let histories = histories(replica, &catalog).await?;
    // A current lease names the generation its holder writes, and a PostgreSQL path names
    // its cluster (`cluster.json`): neither is deleted, whatever the ids' order says.
    let path_live = match live {
        None => path_live(replica, catalog.has_postgres(), now_ms).await?,
        Some(_) => None,
    };
    let live = live.or(path_live.as_ref());
    let plan = plan::plan_of(&catalog, policy, now_ms, live, &histories).map_err(|reason| {
        Error::Replica {
            replica: replica.url().to_string(),
            reason,
        }
    })?;
    let doomed = plan.deletions();
    let (deleted_objects, deleted_bytes) = (doomed.len(), plan.deleted_bytes());
    if !dry_run && !doomed.is_empty() {
        for phase in [
            plan::Phase::RestorePoints,
            plan::Phase::Data,
            plan::Phase::Descriptions,
        ] {
            let keys: Vec<String> = doomed
                .iter()
                .filter(|d| d.phase == phase)
                .map(|d| d.key.clone())
                .collect();
            replica.delete_many(&keys).await?;
        }
        let after = replica.list(layout::GENERATIONS).await?;
        let still = still_listed(&doomed, &after);
        if let Some(first) = still.first() {
            return Err(Error::Replica {
                replica: replica.url().to_string(),
                reason: format!(
                    "the store accepted the deletion of {} objects but {} of them are still \
                     listed (e.g. {first}): it answered success without deleting",
                    doomed.len(),
                    still.len()
                ),
            });
        }
    }
    Ok(Outcome {
        replica: replica.url().to_string(),
        dry_run,
        deleted_objects,
        deleted_bytes,
        list_requests: replica.counts.list.load(Ordering::Relaxed) - list0,
        delete_requests: replica.counts.delete.load(Ordering::Relaxed) - del0,
        get_requests: replica.counts.get.load(Ordering::Relaxed) - get0,
        plan,
        litestream: None,
    })
}

/// The timeline history files of the PostgreSQL clusters in `catalog` (tiny; a cluster
/// rarely has more than a few), read so the planner knows where each timeline branched.
async fn histories(
    replica: &Replica,
    catalog: &crate::catalog::Catalog,
) -> Result<pgplan::Histories> {
    let wanted = catalog.histories();
    let parsed = futures::future::try_join_all(
        wanted
            .iter()
            .map(|(g, t)| crate::catalog::read_history(replica, g, *t)),
    )
    .await?;
    Ok(wanted.into_iter().zip(parsed).collect())
}

/// Deleted objects that a LIST made afterwards still shows.
fn still_listed<'a>(deleted: &[&plan::Doomed], after: &'a [Listed]) -> Vec<&'a str> {
    let gone: HashSet<&str> = deleted.iter().map(|d| d.key.as_str()).collect();
    after
        .iter()
        .map(|o| o.name.as_str())
        .filter(|n| gone.contains(n))
        .collect()
}

/// The generation a path says is live: a PostgreSQL path's `cluster.json`'s, else a
/// current lease's.
async fn path_live(replica: &Replica, pg: bool, now_ms: u64) -> Result<Option<GenerationId>> {
    if pg && let Some((c, _)) = crate::catalog::read_cluster(replica).await? {
        return Ok(c.generation_id());
    }
    Ok(crate::storage::lease::live_generation(replica, now_ms)
        .await?
        .and_then(|g| GenerationId::parse(&g)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_keeps_deleted_objects_is_caught() {
        let d = |k: &str| plan::Doomed::new(k.into(), 1, plan::What::Segment);
        let (a, b) = (d("generations/x/wal/a"), d("generations/x/wal/b"));
        let listed = |names: &[&str]| -> Vec<Listed> {
            names
                .iter()
                .map(|n| Listed {
                    name: n.to_string(),
                    size: 1,
                    modified_ms: 0,
                })
                .collect()
        };
        let after = listed(&["generations/x/wal/b", "generations/x/wal/c"]);
        assert_eq!(still_listed(&[&a, &b], &after), vec!["generations/x/wal/b"]);
        assert!(still_listed(&[&a], &after).is_empty());
    }

    /// `cleanup` (no caller generation) reads the path's lease: the generation its holder
    /// writes is kept whole, even one that would otherwise go (no snapshot yet, older than
    /// the live grace, not the newest).
    #[tokio::test]
    async fn the_generation_a_current_lease_names_is_kept() {
        use crate::config::{Location, ReplicaConfig};
        use crate::storage::layout::{SegmentName, SnapshotName};
        use crate::storage::lease;
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(
            &ReplicaConfig::from_location(Location::File {
                dir: dir.path().to_path_buf(),
            }),
            true,
        )
        .unwrap();
        const H: u64 = 3_600_000;
        let now = crate::clock::now_ms();
        let (old, new) = (
            GenerationId::new(now - 50 * H, 1),
            GenerationId::new(now - 40 * H, 2),
        );
        let put = |k: String| {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        put(layout::format_segment(
            &old,
            &SegmentName {
                first_txid: 1,
                last_txid: 2,
                first_commit_ms: now - 50 * H,
                last_commit_ms: now - 50 * H,
            },
        ));
        put(layout::format_snapshot(
            &new,
            &SnapshotName {
                txid: 5,
                commit_ms: now - 40 * H,
            },
        ));
        put(layout::format_manifest(&new));
        let policy = Policy::new(std::time::Duration::from_secs(3600));
        let gone = |o: &Outcome| {
            o.plan
                .deletions()
                .iter()
                .any(|d| d.key.contains(old.as_str()))
        };
        let o = apply(&r, &policy, now, None, true, None).await.unwrap();
        assert!(gone(&o), "without a lease the old generation goes");
        let held = lease::acquire(
            &r,
            lease::Holder {
                host: "h".into(),
                pid: 1,
                database: "/d/app.db".into(),
                spool: "/s".into(),
                generation: Some(old.to_string()),
            },
            &lease::Settings {
                ttl: std::time::Duration::from_secs(30),
                wait: None,
            },
            crate::clock::now_ms,
        )
        .await
        .unwrap();
        let o = apply(&r, &policy, now, None, true, None).await.unwrap();
        assert!(!gone(&o), "the lease's generation was planned away");
        lease::release(&r, &held).await.unwrap();
    }
}
