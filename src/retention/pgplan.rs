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

use super::plan::{Action, Doomed, GenerationPlan, Phase, Policy, tier_rescue};
use crate::pgformat::walname::WalFile;
use crate::storage::Listed;
use crate::storage::layout::{self, BackupFile, BackupName, GenerationId, ObjectName};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Parsed timeline history files: for (generation, timeline), each ancestor timeline and
/// the position where the history switched away from it.
pub type Histories = HashMap<(GenerationId, u32), Vec<(u32, u64)>>;

struct Obj {
    key: String,
    size: u64,
    modified_ms: u64,
}

#[derive(Default)]
struct Backup {
    manifest: Option<Obj>,
    parts: Vec<Obj>,
}

#[derive(Default)]
struct PgGen {
    backups: BTreeMap<BackupName, Backup>,
    wal: Vec<(WalFile, Obj)>,
}

impl PgGen {
    /// Complete backups, oldest start first.
    fn complete(&self) -> Vec<BackupName> {
        let mut v: Vec<BackupName> = self
            .backups
            .iter()
            .filter(|(_, b)| b.manifest.is_some())
            .map(|(n, _)| *n)
            .collect();
        v.sort_by_key(|b| (b.start_ms, b.start_lsn));
        v
    }

    fn objects(&self) -> impl Iterator<Item = &Obj> {
        self.backups
            .values()
            .flat_map(|b| b.manifest.iter().chain(&b.parts))
            .chain(self.wal.iter().map(|(_, o)| o))
    }
}

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
    let starts: HashSet<u64> = g.complete().iter().map(|b| b.start_lsn).collect();
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
        .complete()
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

fn group(listing: &[Listed]) -> BTreeMap<GenerationId, PgGen> {
    let mut gens: BTreeMap<GenerationId, PgGen> = BTreeMap::new();
    for o in listing {
        let obj = || Obj {
            key: o.name.clone(),
            size: o.size,
            modified_ms: o.modified_ms,
        };
        match layout::parse_object(&o.name) {
            Some(ObjectName::PgBackup(g, b, f)) => {
                let e = gens.entry(g).or_default().backups.entry(b).or_default();
                match f {
                    BackupFile::Manifest => e.manifest = Some(obj()),
                    BackupFile::Part(_) => e.parts.push(obj()),
                }
            }
            Some(ObjectName::PgWal(g, f)) => gens.entry(g).or_default().wal.push((f, obj())),
            _ => {}
        }
    }
    gens
}

/// Plan every PostgreSQL generation of `listing` (which holds no SQLite one).
pub(super) fn plan(
    listing: &[Listed],
    policy: &Policy,
    now_ms: u64,
    window_start_ms: u64,
    live: Option<&GenerationId>,
    histories: &Histories,
) -> Vec<GenerationPlan> {
    let gens = group(listing);
    let newest = gens.keys().next_back().cloned();
    let anchor: Option<(GenerationId, BackupName)> = gens.iter().rev().find_map(|(id, g)| {
        g.complete()
            .into_iter()
            .rev()
            .find(|b| b.start_ms <= window_start_ms)
            .map(|b| (id.clone(), b))
    });

    // What each generation keeps before tiers: Some(backups kept) for a trimmed one,
    // None for one kept whole; an empty set means deleted whole.
    let mut kept: BTreeMap<GenerationId, (Option<HashSet<BackupName>>, String)> = BTreeMap::new();
    for (id, g) in &gens {
        // A cluster's last write is its newest object, WAL included (WAL names carry no
        // time): judged by backups alone, a cluster that archives but was backed up long
        // ago looked old, and a newer, idle cluster's window deleted it whole.
        let activity = g
            .backups
            .keys()
            .map(|b| b.start_ms)
            .chain(g.objects().map(|o| o.modified_ms))
            .max()
            .unwrap_or(0)
            .max(id.created_ms());
        let live_now = Some(id) == newest.as_ref()
            || Some(id) == live
            || activity + policy.live_grace.as_millis() as u64 > now_ms;
        let entry = if g.complete().is_empty() {
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
        .flat_map(|(id, g)| g.complete().into_iter().map(move |b| (id, b)))
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
    for (id, g) in &gens {
        let (keep, mut why) = kept.remove(id).expect("every generation was classified");
        let total_objects = g.objects().count();
        let total_bytes: u64 = g.objects().map(|o| o.size).sum();
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
                delete.extend(files.manifest.iter().map(|o| doomed(o, Phase::Snapshot)));
                delete.extend(files.parts.iter().map(|o| doomed(o, Phase::Segment)));
            }
            if keep.is_empty() {
                delete.extend(g.wal.iter().map(|(f, o)| {
                    let phase = if matches!(f, WalFile::History { .. }) {
                        Phase::Manifest
                    } else {
                        Phase::Segment
                    };
                    doomed(o, phase)
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
                    Ok((tli, (log, seg))) => delete.extend(g.wal.iter().filter_map(|(f, o)| {
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
                        before.then(|| doomed(o, Phase::Segment))
                    })),
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

fn doomed(o: &Obj, phase: Phase) -> Doomed {
    Doomed {
        key: o.key.clone(),
        size: o.size,
        phase,
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Tiers, plan, plan_with};
    use super::*;
    use crate::postgres::restore::{catalog, choose};
    use crate::restore::plan::fixtures::g;
    use std::time::Duration;

    const H: u64 = 3_600_000;
    const MB16: u64 = 16 << 20;

    fn obj(name: String, size: u64) -> Listed {
        Listed {
            name,
            size,
            modified_ms: 0,
        }
    }

    fn wal(id: &GenerationId, f: WalFile) -> Listed {
        obj(layout::format_pg_wal(id, &f), 16)
    }

    /// Segments `from..=to` of a timeline (16 MB segments, log 0).
    fn segs(id: &GenerationId, timeline: u32, from: u32, to: u32) -> Vec<Listed> {
        (from..=to)
            .map(|seg| {
                wal(
                    id,
                    WalFile::Segment {
                        timeline,
                        log: 0,
                        seg,
                    },
                )
            })
            .collect()
    }

    /// A backup starting in segment `seg` (offset 0x28) at `ms`, its parts, its manifest if
    /// `complete`, and the label file `pg_backup_stop` archives.
    fn backup(id: &GenerationId, timeline: u32, seg: u32, ms: u64, complete: bool) -> Vec<Listed> {
        backup_sized(id, timeline, seg, ms, complete, MB16)
    }

    fn backup_sized(
        id: &GenerationId,
        timeline: u32,
        seg: u32,
        ms: u64,
        complete: bool,
        seg_size: u64,
    ) -> Vec<Listed> {
        let name = BackupName {
            start_lsn: u64::from(seg) * seg_size + 0x28,
            start_ms: ms,
        };
        let dir = layout::format_backup_dir(id, &name);
        let mut v = vec![
            obj(format!("{dir}/part-00000.pack"), 1000),
            obj(format!("{dir}/part-00001.pack"), 1000),
        ];
        if complete {
            v.push(obj(format!("{dir}/manifest.json"), 10));
            v.push(wal(
                id,
                WalFile::BackupLabel {
                    timeline,
                    log: 0,
                    seg,
                    offset: 0x28,
                },
            ));
        }
        v
    }

    fn history(id: &GenerationId, timeline: u32) -> Listed {
        wal(id, WalFile::History { timeline })
    }

    fn policy(window_h: u64) -> Policy {
        Policy::new(Duration::from_millis(window_h * H))
    }

    fn after(listing: &[Listed], p: &super::super::RetentionPlan) -> Vec<Listed> {
        let gone: HashSet<String> = p.deletions().iter().map(|d| d.key.clone()).collect();
        listing
            .iter()
            .filter(|o| !gone.contains(&o.name))
            .cloned()
            .collect()
    }

    fn names(l: &[Listed]) -> HashSet<String> {
        l.iter().map(|o| o.name.clone()).collect()
    }

    /// Every instant of the window picks the same backup before and after, and every WAL
    /// file of its cluster from the backup's first segment on is still there.
    fn assert_window_intact(listing: &[Listed], p: &super::super::RetentionPlan) {
        let (before, left) = (listing, after(listing, p));
        let kept = names(&left);
        let mut t = p.window_start_ms;
        while t <= p.now_ms {
            let a = choose(&catalog(before), Some(t));
            let b = choose(&catalog(&left), Some(t));
            assert_eq!(a, b, "at {t}");
            if let Ok((id, bk)) = a {
                let first = bk.start_lsn / MB16;
                for o in before {
                    if let Some(ObjectName::PgWal(oid, WalFile::Segment { seg, .. })) =
                        layout::parse_object(&o.name)
                        && oid == id
                        && u64::from(seg) >= first
                    {
                        assert!(kept.contains(&o.name), "at {t}: {} is gone", o.name);
                    }
                }
            }
            t += H / 4;
        }
    }

    /// Backups at 10h, 30h, 50h starting in segments 2, 10, 20; WAL 1..=30.
    fn cluster(id: &GenerationId) -> Vec<Listed> {
        let mut l = segs(id, 1, 1, 30);
        l.extend(backup(id, 1, 2, 10 * H, true));
        l.extend(backup(id, 1, 10, 30 * H, true));
        l.extend(backup(id, 1, 20, 50 * H, true));
        l
    }

    #[test]
    fn backups_and_wal_before_the_anchor_go() {
        let a = g(H);
        let l = cluster(&a);
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        assert_eq!(p.generations.len(), 1);
        assert_eq!(p.generations[0].action, Action::Trim);
        let gone = names(&l)
            .difference(&names(&after(&l, &p)))
            .cloned()
            .collect::<HashSet<_>>();
        let mut want: HashSet<String> = names(&segs(&a, 1, 1, 9));
        want.extend(names(&backup(&a, 1, 2, 10 * H, true)));
        assert_eq!(gone, want);
        assert_window_intact(&l, &p);
        let total: u64 = l.iter().map(|o| o.size).sum();
        assert_eq!(p.kept_bytes() + p.deleted_bytes(), total);
        assert_eq!(p.kept_objects() + gone.len(), l.len());
        // The backup's manifest goes first (it stops being a backup), its parts and WAL
        // after.
        let d = p.deletions();
        assert!(d[0].key.ends_with("manifest.json"));
        assert!(d[1..].iter().all(|x| x.phase == Phase::Segment));
    }

    #[test]
    fn without_its_label_the_anchors_wal_is_kept() {
        let a = g(H);
        let label = wal(
            &a,
            WalFile::BackupLabel {
                timeline: 1,
                log: 0,
                seg: 10,
                offset: 0x28,
            },
        );
        let l: Vec<Listed> = cluster(&a)
            .into_iter()
            .filter(|o| o.name != label.name)
            .collect();
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        assert!(p.generations[0].why.contains("no matching .backup label"));
        assert!(p.deletions().is_empty());
    }

    #[test]
    fn the_first_segment_is_found_for_any_segment_size() {
        let a = g(H);
        // 64 MB segments: a backup starting at 0/C000028 is in segment 3, not 12.
        let mut l = segs(&a, 1, 1, 8);
        l.extend(backup_sized(&a, 1, 1, 10 * H, true, 64 << 20));
        l.extend(backup_sized(&a, 1, 3, 30 * H, true, 64 << 20));
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        let mut wal_gone: Vec<String> = p
            .deletions()
            .iter()
            .filter(|d| d.key.contains("/pgwal/"))
            .map(|d| d.key.rsplit('/').next().unwrap().to_string())
            .collect();
        wal_gone.sort();
        assert_eq!(
            wal_gone,
            vec![
                "000000010000000000000001",
                "000000010000000000000001.00000028.backup",
                "000000010000000000000002"
            ]
        );
    }

    #[test]
    fn newer_timelines_need_their_history_to_cut() {
        let a = g(H);
        let mut l = cluster(&a);
        // Timeline 2 branched from timeline 1 in segment 25, after the anchor's start (10).
        l.push(history(&a, 2));
        l.extend(segs(&a, 2, 25, 28));
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        assert!(
            p.generations[0].why.contains("timeline 2's history"),
            "{}",
            p.generations[0].why
        );
        assert!(p.deletions().is_empty());

        let mut h = Histories::new();
        h.insert((a.clone(), 2), vec![(1, 25 * MB16 + 0x100)]);
        let p = plan_with(&l, &policy(60), 100 * H, None, &h).unwrap();
        let left = names(&after(&l, &p));
        assert!(left.contains(&history(&a, 2).name));
        assert!(names(&segs(&a, 2, 25, 28)).is_subset(&left));
        assert!(names(&segs(&a, 1, 1, 9)).is_disjoint(&left));
        assert_window_intact(&l, &p);

        // Branched before the anchor's first segment (a restore from the old backup, then
        // promotion): timeline 2 may need timeline 1's older WAL, so it stays.
        h.insert((a.clone(), 2), vec![(1, 5 * MB16)]);
        let p = plan_with(&l, &policy(60), 100 * H, None, &h).unwrap();
        assert!(p.generations[0].why.contains("branched off before"));
        assert!(p.deletions().is_empty());
    }

    #[test]
    fn backups_at_one_position_on_two_timelines_pair_with_their_labels() {
        // Timeline 2 left 1 in segment 3; backups at 10h (timeline 1) and 30h (timeline
        // 2) both start at 0/4000028.
        let a = g(H);
        let mut l = segs(&a, 1, 1, 6);
        l.extend(backup(&a, 1, 4, 10 * H, true));
        l.push(history(&a, 2));
        l.extend(segs(&a, 2, 3, 8));
        l.extend(backup(&a, 2, 4, 30 * H, true));
        let mut h = Histories::new();
        h.insert((a.clone(), 2), vec![(1, 3 * MB16 + 0x200)]);
        let p = plan_with(&l, &policy(60), 100 * H, None, &h).unwrap();
        let left = names(&after(&l, &p));
        // Timeline 2's backup anchors: timeline 1's backup and WAL before segment 4 go,
        // timeline 2's segment 3 too; timeline 1's segments 4.. stay (not before the cut).
        let old_backup: HashSet<String> = names(&backup(&a, 1, 4, 10 * H, true))
            .into_iter()
            .filter(|n| n.contains("/basebackups/"))
            .collect();
        assert!(old_backup.is_disjoint(&left), "{}", p.generations[0].why);
        assert!(names(&backup(&a, 2, 4, 30 * H, true)).is_subset(&left));
        assert!(names(&segs(&a, 1, 1, 3)).is_disjoint(&left));
        assert!(names(&segs(&a, 2, 3, 3)).is_disjoint(&left));
        assert!(names(&segs(&a, 2, 4, 8)).is_subset(&left));
        assert!(left.contains(&history(&a, 2).name));
    }

    #[test]
    fn an_older_cluster_goes_whole_once_the_newer_one_holds_the_window() {
        let (a, b) = (g(H), g(20 * H));
        let mut l = cluster(&a);
        l.push(history(&a, 2));
        let mut lb = segs(&b, 1, 2, 5);
        lb.extend(backup(&b, 1, 2, 52 * H, true));
        l.extend(lb.clone());
        // Window from 60h: b's backup at 52h is the anchor; all of a goes, history too.
        let p = plan(&l, &policy(40), 100 * H, None).unwrap();
        let actions: Vec<Action> = p.generations.iter().map(|g| g.action).collect();
        assert_eq!(actions, vec![Action::Delete, Action::Keep]);
        assert_eq!(names(&after(&l, &p)), names(&lb));
        assert_window_intact(&l, &p);
        // Window from 40h: a's backup at 30h is the anchor, b is newer and kept whole.
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        let actions: Vec<Action> = p.generations.iter().map(|g| g.action).collect();
        // (a's timeline 2 history is not given, so a is kept whole rather than trimmed.)
        assert_eq!(actions, vec![Action::Keep, Action::Keep]);
        assert_window_intact(&l, &p);
        // An older cluster that took a backup within the live grace is live: kept.
        let p = plan(&l, &policy(40), 50 * H + 60_000, None).unwrap();
        assert!(p.deletions().is_empty(), "{:?}", p.generations[0].why);
        // And so is the one the calling sidecar writes.
        let p = plan(&l, &policy(40), 100 * H, Some(&a)).unwrap();
        assert!(p.generations[0].delete.is_empty());
    }

    /// Two clusters on one path, the older one (by initdb) the one still archiving: its
    /// newest object, not its backups or initdb time, says it is live, however stale its
    /// only backup and however short the window.
    #[test]
    fn an_older_cluster_still_archiving_is_kept_whole() {
        let (a, b) = (g(H), g(20 * H));
        let mut l = cluster(&a);
        let mut fresh = segs(&a, 1, 40, 41);
        for o in &mut fresh {
            o.modified_ms = 100 * H - 5_000; // archived seconds ago
        }
        l.extend(fresh);
        l.extend(segs(&b, 1, 2, 5));
        l.extend(backup(&b, 1, 2, 52 * H, true));
        let window = Policy::new(Duration::from_secs(60));
        let p = plan(&l, &window, 100 * H, None).unwrap();
        assert_eq!(
            p.generations[0].action,
            Action::Keep,
            "{}",
            p.generations[0].why
        );
        assert!(
            p.generations[0].why.contains("written to recently"),
            "{}",
            p.generations[0].why
        );
        // Written inside a long window but not within the live grace: kept too.
        let p = plan(&l, &policy(2), 100 * H + H, None).unwrap();
        assert!(
            p.generations[0].delete.is_empty(),
            "{}",
            p.generations[0].why
        );
        assert!(
            p.generations[0].why.contains("inside the window"),
            "{}",
            p.generations[0].why
        );
        // Once its last write is before the window, it goes, and the reason says why.
        let p = plan(&l, &policy(2), 103 * H, None).unwrap();
        assert_eq!(p.generations[0].action, Action::Delete);
        assert!(
            p.generations[0].why.contains("last write"),
            "{}",
            p.generations[0].why
        );
    }

    #[test]
    fn incomplete_backups_go_only_before_the_anchor() {
        let a = g(H);
        let mut l = cluster(&a);
        let stale = backup(&a, 1, 5, 20 * H, false);
        let running = backup(&a, 1, 29, 99 * H, false);
        l.extend(stale.clone());
        l.extend(running.clone());
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        let left = names(&after(&l, &p));
        assert!(names(&stale).is_disjoint(&left));
        assert!(names(&running).is_subset(&left));
    }

    #[test]
    fn a_cluster_without_a_complete_backup() {
        let (a, b) = (g(H), g(20 * H));
        let mut l = segs(&a, 1, 1, 3);
        l.extend(backup(&a, 1, 2, 2 * H, false));
        l.extend(cluster(&b));
        // The older one holds nothing restorable and is not live: it goes.
        let p = plan(&l, &policy(60), 100 * H, None).unwrap();
        assert_eq!(p.generations[0].action, Action::Delete);
        assert!(p.generations[0].why.contains("no complete base backup"));
        // The newest is live however old its start: kept.
        let l = segs(&a, 1, 1, 3);
        assert!(
            plan(&l, &policy(1), 1000 * H, None)
                .unwrap()
                .deletions()
                .is_empty()
        );
    }

    #[test]
    fn tiers_keep_older_backups_and_the_wal_after_them() {
        let a = g(H);
        let mut l = segs(&a, 1, 1, 80);
        // A backup every 12 hours, in segment 2i+1.
        for i in 0..8u32 {
            l.extend(backup(&a, 1, 2 * i + 1, u64::from(i) * 12 * H + H, true));
        }
        let mut p = policy(12);
        p.tiers = Tiers::parse("daily=3").unwrap();
        let now = 90 * H;
        let plan = plan(&l, &p, now, None).unwrap();
        let c = catalog(&after(&l, &plan));
        let starts: Vec<u64> = c
            .backups
            .values()
            .flatten()
            .map(|b| b.start_ms / H)
            .collect();
        // Window from 78h: the 73h backup anchors it; 85h is inside. Days: 3 (73h, taken
        // by the anchor), 2 (61h), 1 (37h).
        assert_eq!(starts, vec![37, 61, 73, 85]);
        assert_eq!(plan.generations[0].tier_snapshots, 2);
        // WAL goes only before the oldest kept backup (segment 7).
        let left = names(&after(&l, &plan));
        assert!(names(&segs(&a, 1, 1, 6)).is_disjoint(&left));
        assert!(names(&segs(&a, 1, 7, 80)).is_subset(&left));
    }

    #[test]
    fn sqlite_and_postgres_generations_in_one_replica_are_refused() {
        let a = g(H);
        let mut l = cluster(&a);
        l.push(crate::restore::plan::fixtures::manifest(&g(2 * H)));
        l.push(crate::restore::plan::fixtures::snap_at(&g(2 * H), 0, 2 * H));
        let e = plan(&l, &policy(60), 100 * H, None).unwrap_err();
        assert!(e.contains("both SQLite and PostgreSQL"), "{e}");
    }
}
