//! What a replica path holds beyond one listing's names: the objects walship reads to
//! know a path (a PostgreSQL timeline's history, the path's `cluster.json`) and queries
//! over a listing that several commands share. Reads only; never writes or deletes.

use crate::error::{Error, Result};
use crate::pgformat::walname::WalFile;
use crate::storage::layout::{self, GenerationId, ObjectName};
use crate::storage::{Listed, Replica};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// For a path written before `cluster.json` existed: the cluster whose newest object is
/// the newest (the one still archiving), or `None` for a path without PostgreSQL objects.
pub fn newest_writer(listing: &[Listed]) -> Option<GenerationId> {
    let mut newest: BTreeMap<GenerationId, u64> = BTreeMap::new();
    for o in listing {
        if let Some(ObjectName::PgWal(g, _) | ObjectName::PgBackup(g, _, _)) =
            layout::parse_object(&o.name)
        {
            let e = newest.entry(g).or_default();
            *e = (*e).max(o.modified_ms);
        }
    }
    newest
        .into_iter()
        .max_by_key(|(g, ms)| (*ms, g.clone()))
        .map(|(g, _)| g)
}
