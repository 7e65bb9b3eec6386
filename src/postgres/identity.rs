//! Which PostgreSQL cluster a replica path belongs to: the object `cluster.json` at the
//! path's root (`catalog::PathCluster`) names it (system identifier, generation, data directory, host), written
//! once by the first cluster to archive there. Every writer checks it before writing, and
//! a different cluster is refused, naming both; `--force-new-history` hands the path over.
//! Never deletes anything, and knows nothing of WAL contents (docs/POSTGRES.md,
//! "One cluster per path").

use super::control::generation_of;
use crate::catalog::{CLUSTER_KEY, Catalog, PathCluster, read_cluster as read};
use crate::error::{Error, Result};
use crate::storage::layout::{self, GenerationId};
use crate::storage::{Replica, Swap};
use std::path::Path;
use std::time::Duration;

/// How long a `wal-push` trusts the spool's note that the path was found to be this
/// cluster's: a GET every few minutes instead of one per WAL file.
const CHECKED_FOR: Duration = Duration::from_secs(300);

/// This cluster's record, as it would be written.
pub fn record(system_identifier: u64, pgdata: &Path) -> PathCluster {
    PathCluster {
        format: 1,
        system_identifier: system_identifier.to_string(),
        generation: generation_of(system_identifier).to_string(),
        pgdata: pgdata
            .canonicalize()
            .unwrap_or_else(|_| pgdata.to_path_buf())
            .display()
            .to_string(),
        host: crate::storage::lease::hostname(),
        since_ms: crate::clock::now_ms(),
    }
}

/// Make sure the path is this cluster's before anything of it is written: `cluster.json`
/// names it (written now if the path has none and no other cluster's objects are the
/// newest there), or, with `force`, is replaced by this cluster's. A different cluster is
/// an `Error::Refused` naming both.
pub async fn check(
    replica: &Replica,
    pgdata: &Path,
    system_identifier: u64,
    force: bool,
) -> Result<PathCluster> {
    let me = record(system_identifier, pgdata);
    for _ in 0..3 {
        let (current, version) = match read(replica).await? {
            Some((c, v)) => (Some(c), Some(v)),
            None => (None, None),
        };
        let expect = match &current {
            Some(c) if c.generation == me.generation => return Ok(c.clone()),
            Some(c) if !force => return Err(refusal(replica, &c.describe(), &me)),
            Some(c) => {
                tracing::warn!(replica = %replica.url(), previous = %c.describe(),
                    "--force-new-history: this replica path now belongs to this cluster");
                version
            }
            None => {
                let listing = replica.list(layout::GENERATIONS).await?;
                match Catalog::of(&listing).newest_writer() {
                    Some(g) if g.as_str() != me.generation && !force => {
                        return Err(refusal(
                            replica,
                            &format!("generation {g} (written most recently; no {CLUSTER_KEY})"),
                            &me,
                        ));
                    }
                    _ => None,
                }
            }
        };
        let body = bytes::Bytes::from(serde_json::to_vec_pretty(&me).expect("plain struct"));
        match replica
            .put_versioned(
                CLUSTER_KEY,
                body,
                expect.as_deref(),
                Duration::from_millis(500),
            )
            .await?
        {
            Swap::Done(_) => {
                tracing::info!(replica = %replica.url(), cluster = %me.describe(),
                    "this replica path now names this cluster ({CLUSTER_KEY})");
                return Ok(me);
            }
            // Another writer got there first: look again.
            Swap::Conflict => continue,
        }
    }
    Err(Error::Replica {
        replica: replica.url().to_string(),
        reason: format!("{CLUSTER_KEY} keeps changing under this walship: another writer?"),
    })
}

/// `check` without writing: a path `cluster.json` names as another cluster's is refused,
/// before a lease is even asked for (the refusal naming both clusters is the useful one).
pub async fn refuse_other(replica: &Replica, pgdata: &Path, system_identifier: u64) -> Result<()> {
    let me = record(system_identifier, pgdata);
    match read(replica).await? {
        Some((c, _)) if c.generation != me.generation => Err(refusal(replica, &c.describe(), &me)),
        _ => Ok(()),
    }
}

fn refusal(replica: &Replica, theirs: &str, me: &PathCluster) -> Error {
    Error::Refused(format!(
        "replica {} belongs to another PostgreSQL cluster: {theirs}; this is system \
         identifier {} (data directory {}). One cluster per replica path: give this cluster \
         a path of its own, or run the sidecar once with --force-new-history to hand the path \
         to this cluster (the other's objects stay until retention removes them)",
        replica.url(),
        me.system_identifier,
        me.pgdata
    ))
}

/// Where a spool remembers that a path was found to be this cluster's.
fn checked_note(spool: &Path) -> std::path::PathBuf {
    spool.join("cluster-checked")
}

fn note_line(replica: &Replica, generation: &GenerationId) -> String {
    format!("{} {generation}\n", replica.url())
}

/// Whether this spool found the path to be `generation`'s within `CHECKED_FOR`.
pub fn recently_checked(spool: &Path, replica_url: &str, generation: &GenerationId) -> bool {
    let p = checked_note(spool);
    let fresh = std::fs::metadata(&p)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < CHECKED_FOR));
    fresh && std::fs::read_to_string(&p).is_ok_and(|s| s == format!("{replica_url} {generation}\n"))
}

/// Remember a successful `check` (best effort: without the note the next call checks).
pub fn note_checked(spool: &Path, replica: &Replica, generation: &GenerationId) {
    let p = checked_note(spool);
    let tmp = p.with_extension(format!("tmp.{}", std::process::id()));
    if std::fs::create_dir_all(spool).is_ok()
        && std::fs::write(&tmp, note_line(replica, generation)).is_ok()
    {
        let _ = std::fs::rename(&tmp, &p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, ReplicaConfig};
    use crate::storage::Listed;

    fn file_replica(dir: &Path) -> Replica {
        let cfg = ReplicaConfig::from_location(Location::File {
            dir: dir.to_path_buf(),
        });
        Replica::open(&cfg, true).unwrap()
    }

    fn sysid(initdb_s: u64) -> u64 {
        (initdb_s << 32) | 12345
    }

    #[tokio::test]
    async fn the_first_cluster_names_the_path_and_a_second_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let r = file_replica(dir.path());
        let (a, b) = (sysid(1_700_000_000), sysid(1_700_000_100));
        let got = check(&r, Path::new("/pg/a"), a, false).await.unwrap();
        assert_eq!(got.system_identifier, a.to_string());
        // Again: the same cluster goes on.
        check(&r, Path::new("/pg/a"), a, false).await.unwrap();
        let e = check(&r, Path::new("/pg/b"), b, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&a.to_string()) && e.contains(&b.to_string()) && e.contains("/pg/a"),
            "{e}"
        );
        assert!(e.contains("--force-new-history"), "{e}");
        // Forced: the path is b's, and a is refused from then on.
        check(&r, Path::new("/pg/b"), b, true).await.unwrap();
        assert!(check(&r, Path::new("/pg/a"), a, false).await.is_err());
        // Junk is refused by name and left alone.
        std::fs::write(dir.path().join(CLUSTER_KEY), b"{nope").unwrap();
        let e = check(&r, Path::new("/pg/b"), b, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.json is not a cluster record"), "{e}");
        assert_eq!(
            std::fs::read(dir.path().join(CLUSTER_KEY)).unwrap(),
            b"{nope"
        );
    }

    #[test]
    fn without_a_record_the_cluster_written_most_recently_owns_the_path() {
        let (a, b) = (generation_of(sysid(100)), generation_of(sysid(200)));
        let wal = |g: &GenerationId, n: &str, ms| Listed {
            name: format!("generations/{g}/pgwal/{n}"),
            size: 1,
            modified_ms: ms,
        };
        // b initdb'd later, but a is the one archiving.
        let l = vec![
            wal(&a, "000000010000000000000001", 10),
            wal(&b, "000000010000000000000001", 20),
            wal(&a, "000000010000000000000002", 30),
        ];
        assert_eq!(Catalog::of(&l).newest_writer(), Some(a));
        assert_eq!(Catalog::of(&[]).newest_writer(), None);
    }
}
