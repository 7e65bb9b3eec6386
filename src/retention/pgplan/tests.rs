//! Unit tests of `retention/pgplan.rs`.

use super::super::plan::{Tiers, plan, plan_with};
use super::*;
use crate::catalog::Catalog;
use crate::postgres::restore::choose;
use crate::restore::plan::fixtures::g;
use crate::storage::Listed;
use crate::storage::layout::{self, ObjectName};
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
        let a = choose(&Catalog::of(before), Some(t));
        let b = choose(&Catalog::of(&left), Some(t));
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
    assert!(
        d[1..]
            .iter()
            .all(|x| x.phase == super::super::plan::Phase::Data)
    );
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
    let c = Catalog::of(&after(&l, &plan));
    let starts: Vec<u64> = c
        .generations
        .values()
        .flat_map(|g| g.complete_backups())
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
