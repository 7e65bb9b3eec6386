//! What a replica path holds: one parse of its listing (`listing`: generations, snapshots,
//! segments, base backups, WAL and the queries over them) and the small objects walship
//! reads to know a path (a generation's manifest, a base backup's manifest, a timeline's
//! history, the path's `cluster.json`). Reads only; never writes or deletes.

mod listing;
pub mod litestream;
pub use listing::{Backup, Catalog, Generation, ManifestState, Obj, sqlite_start_at};

use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::pgbackup::BackupManifest;
use crate::pgformat::walname::WalFile;
use crate::storage::layout::{self, GenerationId};
use crate::storage::{Replica, get_retrying};
use serde::{Deserialize, Serialize};

/// Timeline `timeline`'s history file from the replica, parsed: each ancestor timeline and
/// where the history left it.
pub async fn read_history(
    replica: &Replica,
    generation: &GenerationId,
    timeline: u32,
) -> Result<Vec<(u32, u64)>> {
    let f = WalFile::History { timeline };
    let key = layout::format_pg_wal(generation, &f);
    let raw = crate::format::pgwal::decode(&f, &replica.get(&key).await?)
        .map_err(|r| Error::corrupt(&key, r))?;
    crate::pgformat::history::parse_history(&String::from_utf8_lossy(&raw))
        .map_err(|r| Error::corrupt(&key, r))
}

pub const CLUSTER_KEY: &str = "cluster.json";

/// The PostgreSQL cluster a replica path belongs to (`cluster.json`, written by the first
/// cluster to archive there: `postgres::identity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCluster {
    pub format: u32,
    /// Decimal, as `pg_controldata` prints it.
    pub system_identifier: String,
    pub generation: String,
    pub pgdata: String,
    pub host: String,
    pub since_ms: u64,
}

impl PathCluster {
    pub fn generation_id(&self) -> Option<GenerationId> {
        GenerationId::parse(&self.generation)
    }

    pub fn describe(&self) -> String {
        format!(
            "system identifier {} (generation {}, data directory {} on host {}, since {})",
            self.system_identifier,
            self.generation,
            self.pgdata,
            self.host,
            crate::clock::rfc3339(self.since_ms)
        )
    }
}

/// Parse `cluster.json`; `None` for anything this version does not read.
pub fn parse_cluster(b: &[u8]) -> Option<PathCluster> {
    serde_json::from_slice::<PathCluster>(b)
        .ok()
        .filter(|c| c.format == 1 && c.generation_id().is_some())
}

/// The path's cluster as `cluster.json` names it (`None`: no such object), with its
/// version. Junk is refused by name, never overwritten.
pub async fn read_cluster(replica: &Replica) -> Result<Option<(PathCluster, String)>> {
    match replica.get_versioned(CLUSTER_KEY).await? {
        None => Ok(None),
        Some((b, v)) => match parse_cluster(&b) {
            Some(c) => Ok(Some((c, v))),
            None => Err(Error::Refused(format!(
                "replica {}: {CLUSTER_KEY} is not a cluster record this walship reads; \
                 remove it only if you know which cluster this path belongs to",
                replica.url()
            ))),
        },
    }
}

/// One SQLite generation's manifest, checked (`format::manifest::check`). `Ok(Err(why))`:
/// absent or invalid, naming the object; `Err`: the store could not answer.
pub async fn read_manifest(
    replica: &Replica,
    id: &GenerationId,
) -> Result<std::result::Result<Manifest, String>> {
    let key = layout::format_manifest(id);
    match get_retrying(replica, &key, None).await {
        Ok(b) => Ok(crate::format::manifest::check(&b).map_err(|why| format!("{key}: {why}"))),
        Err(e) if e.is_not_found() => {
            Ok(Err(format!("generation {id}'s manifest {key} is missing")))
        }
        Err(e) => Err(e),
    }
}

/// `read_manifest` as what a planner knows of the generation: absent or invalid is a
/// state of the generation, not an error.
pub async fn manifest_state(replica: &Replica, id: &GenerationId) -> Result<ManifestState> {
    Ok(match read_manifest(replica, id).await? {
        Ok(m) => ManifestState::Valid {
            continues_parent_at: m.continues_parent_at,
            parent_unchanged: m.parent_unchanged,
        },
        Err(why) => ManifestState::Bad(why),
    })
}

/// A PostgreSQL base backup's manifest (`key`), decoded; junk is corrupt by name.
pub async fn read_backup_manifest(replica: &Replica, key: &str) -> Result<BackupManifest> {
    serde_json::from_slice(&get_retrying(replica, key, None).await?)
        .map_err(|e| Error::corrupt(key, format!("manifest: {e}")))
}
