//! One parse of a replica listing: every walship object of a path, by generation (SQLite
//! manifest, snapshots and segments; PostgreSQL base backups and WAL files), and the
//! queries restore, retention and the listing commands share, so that what retention
//! keeps and what restore picks are one rule. Pure; never reads or writes the store.

use crate::clock::rfc3339;
use crate::format::manifest::Unchanged;
use crate::pgformat::walname::WalFile;
use crate::storage::Listed;
use crate::storage::layout::{
    self, BackupFile, BackupName, GenerationId, ObjectName, SegmentName, SnapshotName,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// One listed object: what its name says, its key and size, and when the store last
/// wrote it (0 where the store does not say).
#[derive(Debug, Clone, Serialize)]
pub struct Obj<N> {
    #[serde(flatten)]
    pub name: N,
    pub key: String,
    pub size: u64,
    #[serde(skip)]
    pub modified_ms: u64,
}

impl<N> Obj<N> {
    fn of(name: N, o: &Listed) -> Self {
        Obj {
            name,
            key: o.name.clone(),
            size: o.size,
            modified_ms: o.modified_ms,
        }
    }
}

/// What is known of a generation's manifest: the listing says whether it exists; its
/// content is read (one GET, `catalog::read_manifest`) only for a generation a plan would
/// use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ManifestState {
    /// Listed, not read yet.
    #[default]
    Unread,
    /// Read and valid, with what it says of the parent (`format::manifest`).
    Valid {
        continues_parent_at: Option<u64>,
        parent_unchanged: Option<Unchanged>,
    },
    /// Missing, unreadable, or not a format this walship reads: why, naming the object.
    Bad(String),
}

/// A PostgreSQL base backup's objects; complete once its manifest is there.
#[derive(Debug, Clone, Default)]
pub struct Backup {
    pub manifest: Option<Obj<()>>,
    pub parts: Vec<Obj<()>>,
}

/// Everything a replica holds for one generation, each list sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// The listed manifest object.
    pub manifest_obj: Option<Obj<()>>,
    /// What its content is known to say.
    pub manifest: ManifestState,
    pub snapshots: Vec<Obj<SnapshotName>>,
    pub segments: Vec<Obj<SegmentName>>,
    /// A PostgreSQL cluster's generation holds these instead.
    pub backups: BTreeMap<BackupName, Backup>,
    pub wal: Vec<(WalFile, Obj<()>)>,
    /// Streamed pieces of segments (`postgres::stream`), sorted by name.
    pub chunks: Vec<(layout::ChunkName, Obj<()>)>,
}

impl Generation {
    pub fn has_manifest(&self) -> bool {
        self.manifest_obj.is_some()
    }

    /// Whether this is a PostgreSQL cluster's generation.
    pub fn is_postgres(&self) -> bool {
        !self.backups.is_empty() || !self.wal.is_empty() || !self.chunks.is_empty()
    }

    /// Whether the generation holds any SQLite data (a snapshot or a segment).
    pub fn has_data(&self) -> bool {
        !self.snapshots.is_empty() || !self.segments.is_empty()
    }

    /// Whether a restore may start from it, as far as names and the manifest read so far
    /// tell: it has a snapshot and its manifest is not known to be bad.
    pub fn restorable(&self) -> bool {
        !self.snapshots.is_empty() && !matches!(self.manifest, ManifestState::Bad(_))
    }

    /// The snapshot a restore to `t` starts from: the newest taken at or before `t`.
    pub fn snapshot_at_or_before(&self, t: u64) -> Option<&Obj<SnapshotName>> {
        self.snapshots.iter().rev().find(|s| s.name.commit_ms <= t)
    }

    /// Time of the newest transaction the generation's SQLite objects hold.
    pub fn last_write_ms(&self) -> Option<u64> {
        let seg = self.segments.iter().map(|s| s.name.last_commit_ms).max();
        let snap = self.snapshots.iter().map(|s| s.name.commit_ms).max();
        seg.max(snap)
    }

    pub fn wal_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Complete base backups (with a manifest), oldest start first. By start time, not
    /// position: after a restore and promotion, positions on the new timeline start below
    /// the old timeline's newest backup.
    pub fn complete_backups(&self) -> Vec<BackupName> {
        let mut v: Vec<BackupName> = self
            .backups
            .iter()
            .filter(|(_, b)| b.manifest.is_some())
            .map(|(n, _)| *n)
            .collect();
        v.sort_by_key(|b| (b.start_ms, b.start_lsn));
        v
    }

    /// Every PostgreSQL object of the generation.
    pub fn pg_objects(&self) -> impl Iterator<Item = &Obj<()>> {
        self.backups
            .values()
            .flat_map(|b| b.manifest.iter().chain(&b.parts))
            .chain(self.wal.iter().map(|(_, o)| o))
            .chain(self.chunks.iter().map(|(_, o)| o))
    }

    /// Timelines whose history file is archived.
    pub fn history_timelines(&self) -> impl Iterator<Item = u32> + '_ {
        self.wal.iter().filter_map(|(f, _)| match *f {
            WalFile::History { timeline } => Some(timeline),
            _ => None,
        })
    }

    /// Why this generation cannot be restored although it holds data, from what the
    /// objects prove (docs/RESTORE.md): segments are uploaded only after the generation's
    /// first snapshot, so segments without any snapshot mean the snapshots are gone; and a
    /// generation's manifest is written before anything else in it.
    pub fn damage(&self, id: &GenerationId) -> Option<String> {
        if !self.has_data() {
            return None;
        }
        if let ManifestState::Bad(why) = &self.manifest {
            return Some(why.clone());
        }
        if self.snapshots.is_empty() {
            let first = self.segments.iter().min_by_key(|s| s.name.first_txid)?;
            let last = self.segments.iter().max_by_key(|s| s.name.last_txid)?;
            return Some(format!(
                "generation {id} holds {} segment(s) (transactions {}..{}, committed {} to {}) \
                 but no snapshot under {}/snapshots/: its snapshots are missing",
                self.segments.len(),
                first.name.first_txid,
                last.name.last_txid,
                rfc3339(first.name.first_commit_ms),
                rfc3339(last.name.last_commit_ms),
                layout::format_generation_dir(id)
            ));
        }
        None
    }
}

/// A replica path's objects, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub generations: BTreeMap<GenerationId, Generation>,
    /// Objects inside a generation's directory that this walship cannot name (a newer
    /// format?): whoever deletes must refuse a path it does not fully understand.
    pub unknown: Vec<String>,
    /// Objects outside walship's generations: the lease, `cluster.json`, other tools'.
    pub foreign: usize,
}

impl Catalog {
    pub fn of(listing: &[Listed]) -> Catalog {
        let mut c = Catalog::default();
        for o in listing {
            let Some(parsed) = layout::parse_object(&o.name) else {
                if in_generation_dir(&o.name) {
                    c.unknown.push(o.name.clone());
                } else {
                    c.foreign += 1;
                }
                continue;
            };
            match parsed {
                ObjectName::Manifest(g) => {
                    c.generations.entry(g).or_default().manifest_obj = Some(Obj::of((), o))
                }
                ObjectName::Snapshot(g, n) => c
                    .generations
                    .entry(g)
                    .or_default()
                    .snapshots
                    .push(Obj::of(n, o)),
                ObjectName::Segment(g, n) => c
                    .generations
                    .entry(g)
                    .or_default()
                    .segments
                    .push(Obj::of(n, o)),
                ObjectName::PgBackup(g, b, f) => {
                    let e = c
                        .generations
                        .entry(g)
                        .or_default()
                        .backups
                        .entry(b)
                        .or_default();
                    match f {
                        BackupFile::Manifest => e.manifest = Some(Obj::of((), o)),
                        BackupFile::Part(_) => e.parts.push(Obj::of((), o)),
                    }
                }
                ObjectName::PgWal(g, f) => c
                    .generations
                    .entry(g)
                    .or_default()
                    .wal
                    .push((f, Obj::of((), o))),
                ObjectName::PgChunk(g, n) => c
                    .generations
                    .entry(g)
                    .or_default()
                    .chunks
                    .push((n, Obj::of((), o))),
            }
        }
        for (id, g) in c.generations.iter_mut() {
            g.snapshots.sort_by_key(|s| s.name);
            g.segments.sort_by_key(|s| s.name);
            g.wal.sort_by(|a, b| a.1.key.cmp(&b.1.key));
            g.chunks.sort_by_key(|c| c.0);
            if !g.has_manifest() && g.has_data() {
                g.manifest = ManifestState::Bad(format!(
                    "generation {id}'s manifest {} is missing",
                    layout::format_manifest(id)
                ));
            }
        }
        c
    }

    /// Whether any generation is a PostgreSQL cluster's.
    pub fn has_postgres(&self) -> bool {
        self.generations.values().any(Generation::is_postgres)
    }

    /// The complete base backup a PostgreSQL restore to `t` (`None`: the newest state)
    /// starts from, in `only`'s generation or else in the newest generation that has one:
    /// the newest started at or before `t`. Retention's anchor is the same backup.
    pub fn backup_at_or_before(
        &self,
        only: Option<&GenerationId>,
        t: Option<u64>,
    ) -> Option<(GenerationId, BackupName)> {
        self.generations
            .iter()
            .rev()
            .filter(|(id, _)| only.is_none_or(|o| o == *id))
            .find_map(|(id, g)| {
                g.complete_backups()
                    .into_iter()
                    .rev()
                    .find(|b| t.is_none_or(|t| b.start_ms <= t))
                    .map(|b| (id.clone(), b))
            })
    }

    /// For a path written before `cluster.json` existed: the cluster whose newest object
    /// is the newest (the one still archiving), or `None` for a path without PostgreSQL
    /// objects.
    pub fn newest_writer(&self) -> Option<GenerationId> {
        self.generations
            .iter()
            .filter(|(_, g)| g.is_postgres())
            .map(|(id, g)| {
                let ms = g.pg_objects().map(|o| o.modified_ms).max().unwrap_or(0);
                (ms, id.clone())
            })
            .max()
            .map(|(_, id)| id)
    }

    /// (generation, timeline) of every archived timeline history file.
    pub fn histories(&self) -> Vec<(GenerationId, u32)> {
        self.generations
            .iter()
            .flat_map(|(id, g)| g.history_timelines().map(move |t| (id.clone(), t)))
            .collect()
    }
}

/// The SQLite generation a restore to `t` starts from, among `newest_first`: the newest
/// restorable one whose oldest snapshot is at or before `t` (a generation holds no
/// instant before its first snapshot). Retention's anchor is the same generation.
pub fn sqlite_start_at<'a>(
    newest_first: impl IntoIterator<Item = (&'a GenerationId, &'a Generation)>,
    t: u64,
) -> Option<(&'a GenerationId, &'a Generation)> {
    newest_first
        .into_iter()
        .filter(|(_, g)| g.restorable())
        .find(|(_, g)| g.snapshots[0].name.commit_ms <= t)
}

fn in_generation_dir(rel: &str) -> bool {
    rel.strip_prefix(layout::GENERATIONS)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(g, _)| GenerationId::parse(g).is_some())
}

#[cfg(test)]
mod tests;
