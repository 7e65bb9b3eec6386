//! Retention for PostgreSQL generations: which base backups and WAL files of a cluster's
//! replica may be deleted. Pure like `plan`, whose window, tiers and live rules it shares;
//! its own part is finding where a base backup's WAL starts from names alone.
//!
//! - The *anchor* is the newest complete base backup (one with a manifest) started at or
//!   before the window's start, in the newest generation that has one: the backup a
//!   `pg-restore` at that instant starts from (`postgres::restore::choose` picks alike).
//! - In the anchor's generation, backups started before the anchor go (unless a tier keeps
//!   them), and WAL before the oldest kept backup's first segment goes: segments,
//!   `.partial` files and backup labels of its timeline and the ones before it. Timeline
//!   history files stay (they are tiny and restores need them to pick a timeline).
//! - The first segment is the one the backup's label file (`<segment>.<offset>.backup`,
//!   archived by `pg_backup_stop`) names; the label is matched to the backup by its start
//!   position. Without a matching label, or when a newer timeline branched off before that
//!   segment (history files tell), nothing of the generation is deleted: a restore of the
//!   newer timeline may start from an older backup and need its WAL.
//! - Older generations (other clusters that wrote here before) go whole unless live;
//!   newer ones are kept whole.

use super::plan::{Action, Doomed, GenerationPlan, Policy, What, tier_rescue};
use crate::catalog::Catalog;
use crate::pgformat::walname::WalFile;
use crate::storage::layout::{BackupName, GenerationId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Parsed timeline history files: for (generation, timeline), each ancestor timeline and
/// the position where the history switched away from it.
pub type Histories = HashMap<(GenerationId, u32), Vec<(u32, u64)>>;

type Obj = crate::catalog::Obj<()>;
type PgGen = crate::catalog::Generation;

/// The cluster's WAL segment size (a power of two, 1 MB to 1 GB; names do not carry it):
/// the one under which the most backup label files name the start of a complete backup,
/// among those every segment name fits. `None` if no label fits or two sizes tie.
fn segment_size(g: &PgGen) -> Option<u64> {
    let max_seg = g
        .wal
        .iter()
        .filter_map(|(f, _)| match *f {
            WalFile::Segment { seg, .. }
            | WalFile::Partial { seg, .. }
            | WalFile::BackupLabel { seg, .. } => Some(u64::from(seg)),
            WalFile::History { .. } => None,
        })
        .max()
        .unwrap_or(0);
    let starts: HashSet<u64> = g.complete_backups().iter().map(|b| b.start_lsn).collect();
    let mut best: Option<(usize, u64)> = None;
    let mut tie = false;
    for size in (20..=30).map(|bits| 1u64 << bits) {
        if max_seg >= (1u64 << 32) / size {
            continue;
        }
        let n = labels(g)
            .filter(|&(_, log, seg, off)| {
                u64::from(off) < size && starts.contains(&position(log, seg, size, off))
            })
            .count();
        match best {
            _ if n == 0 => {}
            Some((m, _)) if n < m => {}
            Some((m, _)) if n == m => tie = true,
            _ => {
                best = Some((n, size));
                tie = false;
            }
        }
    }
    best.filter(|_| !tie).map(|(_, size)| size)
}

fn labels(g: &PgGen) -> impl Iterator<Item = (u32, u32, u32, u32)> + '_ {
    g.wal.iter().filter_map(|(f, _)| match *f {
        WalFile::BackupLabel {
            timeline,
            log,
            seg,
            offset,
        } => Some((timeline, log, seg, offset)),
        _ => None,
    })
}

fn position(log: u32, seg: u32, size: u64, offset: u32) -> u64 {
    (u64::from(log) << 32) + u64::from(seg) * size + u64::from(offset)
}

/// The first WAL segment of a backup, from the label file that names its start: timeline,
/// (log, seg), and the segment's start position. Backups on different timelines can start
/// at the same position (a timeline that branched off before it); timelines only grow, so
/// the k-th oldest such backup is the one whose label has the k-th lowest timeline. `None`
/// if the labels and backups at that position do not pair up.
fn first_segment(g: &PgGen, b: &BackupName) -> Option<(u32, (u32, u32), u64)> {
    let size = segment_size(g)?;
    let mut fits: Vec<(u32, u32, u32)> = labels(g)
        .filter(|&(_, log, seg, off)| position(log, seg, size, off) == b.start_lsn)
        .map(|(tli, log, seg, _)| (tli, log, seg))
        .collect();
    fits.sort_unstable();
    let same: Vec<BackupName> = g
        .complete_backups()
        .into_iter()
        .filter(|o| o.start_lsn == b.start_lsn)
        .collect();
    if fits.len() != same.len() {
        return None;
    }
    let k = same.iter().position(|o| o == b)?;
    let (tli, log, seg) = fits[k];
    Some((tli, (log, seg), position(log, seg, size, 0)))
}

/// Whether WAL of timelines up to `tli` before `start` (a segment's start position) is
/// needed by no newer timeline: each newer timeline's history must be known and leave
/// `tli` at or after `start`.
fn lineage_allows_cut(
    id: &GenerationId,
    g: &PgGen,
    tli: u32,
    start: u64,
    histories: &Histories,
) -> Result<(), String> {
    let newer: HashSet<u32> = g
        .wal
        .iter()
        .map(|(f, _)| f.timeline())
        .filter(|&t| t > tli)
        .collect();
    for t in newer {
        let Some(h) = histories.get(&(id.clone(), t)) else {
            return Err(format!("timeline {t}'s history is not known"));
        };
        match h.iter().find(|(parent, _)| *parent == tli) {
            Some(&(_, switch)) if switch >= start => {}
            _ => {
                return Err(format!(
                    "timeline {t} branched off before the oldest kept backup's first segment"
                ));
            }
        }
    }
    Ok(())
}

/// Plan every PostgreSQL generation of `catalog` (which holds no SQLite one).
pub(super) fn plan(
    catalog: &Catalog,
    policy: &Policy,
    now_ms: u64,
    window_start_ms: u64,
    live: Option<&GenerationId>,
    histories: &Histories,
) -> Vec<GenerationPlan> {
    let gens = &catalog.generations;
    let newest = gens.keys().next_back().cloned();
    // The backup a `pg-restore` at the window's start uses (the catalog's rule, which
    // `postgres::restore::choose` calls too).
    let anchor: Option<(GenerationId, BackupName)> =
        catalog.backup_at_or_before(None, Some(window_start_ms));

    // What each generation keeps before tiers: Some(backups kept) for a trimmed one,
    // None for one kept whole; an empty set means deleted whole.
    let mut kept: BTreeMap<GenerationId, (Option<HashSet<BackupName>>, String)> = BTreeMap::new();
    for (id, g) in gens {
        // A cluster's last write is its newest object, WAL included (WAL names carry no
        // time): judged by backups alone, a cluster that archives but was backed up long
        // ago looked old, and a newer, idle cluster's window deleted it whole.
        let activity = g
            .backups
            .keys()
            .map(|b| b.start_ms)
            .chain(g.pg_objects().map(|o| o.modified_ms))
            .max()
            .unwrap_or(0)
            .max(id.created_ms());
        let live_now = Some(id) == newest.as_ref()
            || Some(id) == live
            || activity + policy.live_grace.as_millis() as u64 > now_ms;
        let entry = if g.complete_backups().is_empty() {
            if live_now {
                (None, "live, no complete base backup yet".to_string())
            } else {
                (
                    Some(HashSet::new()),
                    "no complete base backup: nothing can be restored from it".into(),
                )
            }
        } else {
            match &anchor {
                Some((a, _)) if id < a && live_now => (
                    None,
                    format!(
                        "an older cluster, but written to recently (live; last write {})",
                        crate::clock::rfc3339(activity)
                    ),
                ),
                // Its last write is inside the window: instants of it are still to be kept.
                Some((a, _)) if id < a && activity >= window_start_ms => (
                    None,
                    format!(
                        "an older cluster written to inside the window (last write {})",
                        crate::clock::rfc3339(activity)
                    ),
                ),
                Some((a, _)) if id < a => (
                    Some(HashSet::new()),
                    format!(
                        "an older cluster: its last write ({}) is before the window",
                        crate::clock::rfc3339(activity)
                    ),
                ),
                Some((a, ab)) if id == a => (
                    Some(
                        g.backups
                            .keys()
                            .filter(|b| b.start_ms >= ab.start_ms)
                            .copied()
                            .collect(),
                    ),
                    format!(
                        "holds the window's start: kept from the base backup started at {}",
                        crate::clock::rfc3339(ab.start_ms)
                    ),
                ),
                _ => (None, "inside the window".into()),
            }
        };
        kept.insert(id.clone(), entry);
    }

    // Tiers pick among complete backups started before the window.
    let mut before: Vec<(u64, (GenerationId, BackupName))> = gens
        .iter()
        .flat_map(|(id, g)| g.complete_backups().into_iter().map(move |b| (id, b)))
        .filter(|(_, b)| b.start_ms < window_start_ms)
        .map(|(id, b)| (b.start_ms, (id.clone(), b)))
        .collect();
    before.sort_unstable_by(|a, b| b.cmp(a));
    let rescued = tier_rescue(&before, &policy.tiers, |(id, b)| {
        kept.get(id)
            .and_then(|(k, _)| k.as_ref())
            .is_some_and(|k| !k.contains(b))
    });

    let mut out = Vec::new();
    for (id, g) in gens {
        let (keep, mut why) = kept.remove(id).expect("every generation was classified");
        let total_objects = g.pg_objects().count();
        let total_bytes: u64 = g.pg_objects().map(|o| o.size).sum();
        let mut action = Action::Keep;
        let mut delete = Vec::new();
        let mut tier_snapshots = 0;
        if let Some(mut keep) = keep {
            let tiers: Vec<BackupName> = rescued
                .iter()
                .filter(|(rid, _)| rid == id)
                .map(|(_, b)| *b)
                .collect();
            tier_snapshots = tiers.len();
            keep.extend(tiers);
            action = if keep.is_empty() {
                Action::Delete
            } else {
                Action::Trim
            };
            if tier_snapshots > 0 {
                why = format!("{why}; {tier_snapshots} base backup(s) kept for tiers");
            }
            for (b, files) in &g.backups {
                if keep.contains(b) {
                    continue;
                }
                delete.extend(
                    files
                        .manifest
                        .iter()
                        .map(|o| doomed(o, What::BackupManifest)),
                );
                delete.extend(files.parts.iter().map(|o| doomed(o, What::BackupPart)));
            }
            if keep.is_empty() {
                delete.extend(g.chunks.iter().map(|(_, o)| doomed(o, What::Wal)));
                delete.extend(g.wal.iter().map(|(f, o)| {
                    let what = if matches!(f, WalFile::History { .. }) {
                        What::History
                    } else {
                        What::Wal
                    };
                    doomed(o, what)
                }));
            } else {
                let oldest = keep
                    .iter()
                    .filter(|b| g.backups[b].manifest.is_some())
                    .min_by_key(|b| (b.start_ms, b.start_lsn))
                    .expect("a trimmed generation keeps a complete backup");
                let cut = first_segment(g, oldest)
                    .ok_or_else(|| {
                        "its first WAL segment is not known (no matching .backup label archived)"
                            .to_string()
                    })
                    .and_then(|(tli, seg, start)| {
                        lineage_allows_cut(id, g, tli, start, histories).map(|()| (tli, seg))
                    });
                match cut {
                    Ok((tli, (log, seg))) => delete.extend(
                        g.chunks
                            .iter()
                            .filter_map(|(c, o)| {
                                let WalFile::Segment {
                                    timeline,
                                    log: l,
                                    seg: s,
                                } = c.segment
                                else {
                                    return None;
                                };
                                (timeline <= tli && (l, s) < (log, seg))
                                    .then(|| doomed(o, What::Wal))
                            })
                            .chain(g.wal.iter().filter_map(|(f, o)| {
                                let before = match *f {
                                    WalFile::Segment {
                                        timeline,
                                        log: l,
                                        seg: s,
                                    }
                                    | WalFile::Partial {
                                        timeline,
                                        log: l,
                                        seg: s,
                                    }
                                    | WalFile::BackupLabel {
                                        timeline,
                                        log: l,
                                        seg: s,
                                        ..
                                    } => timeline <= tli && (l, s) < (log, seg),
                                    WalFile::History { .. } => false,
                                };
                                before.then(|| doomed(o, What::Wal))
                            })),
                    ),
                    // Without a sure cut, older backups may be what a restore of a newer
                    // timeline starts from: keep the generation whole.
                    Err(reason) => {
                        delete.clear();
                        why = format!("{why}; kept whole: {reason}");
                    }
                }
            }
            if delete.is_empty() {
                action = Action::Keep;
            }
        }
        // A streamed chunk whose whole segment is stored is a copy: restores read the
        // segment. Whatever else the generation keeps.
        if action != Action::Delete {
            let whole: std::collections::BTreeSet<WalFile> =
                g.wal.iter().map(|(f, _)| *f).collect();
            let already: HashSet<&str> = delete.iter().map(|d| d.key.as_str()).collect();
            let copies: Vec<Doomed> = g
                .chunks
                .iter()
                .filter(|(c, o)| whole.contains(&c.segment) && !already.contains(o.key.as_str()))
                .map(|(_, o)| doomed(o, What::Wal))
                .collect();
            if !copies.is_empty() && action == Action::Keep {
                action = Action::Trim;
            }
            delete.extend(copies);
        }
        let gone: u64 = delete.iter().map(|d| d.size).sum();
        out.push(GenerationPlan {
            generation: id.clone(),
            action,
            why,
            kept_objects: total_objects - delete.len(),
            kept_bytes: total_bytes - gone,
            delete,
            tier_snapshots,
        });
    }
    out
}

fn doomed(o: &Obj, what: What) -> Doomed {
    Doomed::new(o.key.clone(), o.size, what)
}

#[cfg(test)]
mod tests;
