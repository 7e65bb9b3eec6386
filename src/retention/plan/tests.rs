//! Unit tests of `retention/plan.rs`.

use super::*;
use crate::restore::plan::fixtures::{g, manifest, seg_at, snap_at};
use crate::restore::plan::group;
use crate::restore::plan::{Target, fixtures::plan_trusting as restore_plan};
use crate::storage::layout;
use std::time::Duration;

const H: u64 = 3_600_000;

fn hours(n: u64) -> Duration {
    Duration::from_millis(n * H)
}

fn deleted(p: &RetentionPlan) -> HashSet<String> {
    p.deletions().iter().map(|d| d.key.clone()).collect()
}

fn after(listing: &[Listed], p: &RetentionPlan) -> Vec<Listed> {
    let gone = deleted(p);
    listing
        .iter()
        .filter(|o| !gone.contains(&o.name))
        .cloned()
        .collect()
}

/// Every instant from the window's start to now restores the same before and after.
fn assert_window_intact(listing: &[Listed], p: &RetentionPlan) {
    let (before, after) = (group(listing), group(&after(listing, p)));
    let mut t = p.window_start_ms;
    while t <= p.now_ms {
        let a = restore_plan(&before, None, Target::Time(t));
        let b = restore_plan(&after, None, Target::Time(t));
        match (a, b) {
            (Ok(a), Ok(b)) => {
                let keys = |p: &crate::restore::plan::Plan| {
                    (
                        p.segments.iter().map(|s| s.key.clone()).collect::<Vec<_>>(),
                        p.txid,
                    )
                };
                assert_eq!(a.generation, b.generation, "at {t}");
                assert_eq!(a.stop, b.stop, "at {t}");
                let (sa, sb) = (keys(&a), keys(&b));
                // The same end, from the same or a newer snapshot.
                assert_eq!(sa.1, sb.1, "at {t}");
                assert!(sb.0.iter().all(|k| sa.0.contains(k)), "at {t}");
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("at {t}: before {:?}, after {:?}", a.is_ok(), b.is_ok()),
        }
        t += H / 4;
    }
}

/// g1: history at 10..20h; g2: snapshots at 30h and 50h, writes to 70h; g3: from 80h.
fn week() -> Vec<Listed> {
    let (a, b, c) = (g(10 * H), g(30 * H), g(80 * H));
    vec![
        manifest(&a),
        snap_at(&a, 0, 10 * H),
        seg_at(&a, 1, 5, 11 * H, 20 * H),
        manifest(&b),
        snap_at(&b, 0, 30 * H),
        seg_at(&b, 1, 9, 31 * H, 45 * H),
        snap_at(&b, 9, 50 * H),
        seg_at(&b, 10, 12, 51 * H, 55 * H),
        seg_at(&b, 13, 20, 61 * H, 70 * H),
        manifest(&c),
        snap_at(&c, 0, 80 * H),
        seg_at(&c, 1, 30, 81 * H, 99 * H),
    ]
}

#[test]
fn empty_replica_plans_nothing() {
    let p = plan(&[], &Policy::new(hours(24)), 100 * H, None).unwrap();
    assert!(p.generations.is_empty() && p.deletions().is_empty());
}

#[test]
fn old_generations_go_whole_and_the_window_generation_is_trimmed() {
    let l = week();
    let p = plan(&l, &Policy::new(hours(40)), 100 * H, None).unwrap();
    assert_eq!(p.window_start_ms, 60 * H);
    let actions: Vec<Action> = p.generations.iter().map(|g| g.action).collect();
    assert_eq!(actions, vec![Action::Delete, Action::Trim, Action::Keep]);
    let gone = deleted(&p);
    let (a, b) = (g(10 * H), g(30 * H));
    for o in &l {
        let want_gone = o.name.contains(a.as_str())
            || o.name
                == layout::format_snapshot(
                    &b,
                    &layout::SnapshotName {
                        txid: 0,
                        commit_ms: 30 * H,
                    },
                )
            || o.name.contains("0000000000000001-0000000000000009");
        assert_eq!(gone.contains(&o.name), want_gone, "{}", o.name);
    }
    assert_window_intact(&l, &p);
    let total: u64 = l.iter().map(|o| o.size).sum();
    assert_eq!(p.kept_bytes() + p.deleted_bytes(), total);
    assert_eq!(p.kept_objects() + gone.len(), l.len());
    // Snapshots, then segments, then manifests.
    let phases: Vec<Phase> = p.deletions().iter().map(|d| d.phase).collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
    assert_eq!(phases.last(), Some(&Phase::Descriptions));
}

#[test]
fn a_window_covering_everything_deletes_nothing() {
    let l = week();
    let p = plan(&l, &Policy::new(hours(95)), 100 * H, None).unwrap();
    assert!(p.deletions().is_empty());
    assert!(p.generations.iter().all(|g| g.action == Action::Keep));
}

#[test]
fn an_idle_replica_keeps_its_newest_snapshot_whatever_the_age() {
    let a = g(H);
    let l = vec![
        manifest(&a),
        snap_at(&a, 0, H),
        seg_at(&a, 1, 10, 2 * H, 3 * H),
        snap_at(&a, 10, 4 * H),
        seg_at(&a, 11, 12, 5 * H, 6 * H),
    ];
    let p = plan(&l, &Policy::new(hours(24)), 1000 * H, None).unwrap();
    let kept: Vec<String> = after(&l, &p).into_iter().map(|o| o.name).collect();
    assert_eq!(
        kept,
        vec![l[0].name.clone(), l[3].name.clone(), l[4].name.clone()]
    );
    // The newest state still restores, exactly as before.
    let newest = restore_plan(&group(&after(&l, &p)), None, Target::Latest).unwrap();
    assert_eq!(newest.txid, 12);
    assert_window_intact(&l, &p);
}

#[test]
fn a_single_old_snapshot_is_kept() {
    let a = g(H);
    let l = vec![manifest(&a), snap_at(&a, 0, H)];
    let p = plan(&l, &Policy::new(hours(1)), 500 * H, None).unwrap();
    assert!(p.deletions().is_empty());
}

#[test]
fn generations_without_a_snapshot() {
    // a: abandoned start (crashed before its snapshot), b: good, c: being started now.
    let (a, b, c) = (g(10 * H), g(20 * H), g(99 * H));
    let l = vec![
        manifest(&a),
        seg_at(&a, 1, 2, 10 * H, 11 * H),
        manifest(&b),
        snap_at(&b, 0, 20 * H),
        seg_at(&b, 1, 2, 21 * H, 98 * H),
        manifest(&c),
    ];
    let p = plan(&l, &Policy::new(hours(24)), 100 * H, None).unwrap();
    let actions: Vec<Action> = p.generations.iter().map(|g| g.action).collect();
    assert_eq!(actions, vec![Action::Delete, Action::Keep, Action::Keep]);
    assert!(p.generations[0].why.contains("no snapshot"));
    // Still being written to recently (live grace): not deleted even without a snapshot.
    let mut policy = Policy::new(hours(24));
    policy.live_grace = hours(90);
    let p = plan(&l, &policy, 100 * H, None).unwrap();
    assert!(p.deletions().is_empty());
}

#[test]
fn the_callers_live_generation_is_never_deleted_whole() {
    let l = week();
    let a = g(10 * H);
    let p = plan(&l, &Policy::new(hours(40)), 100 * H, Some(&a)).unwrap();
    assert_eq!(p.generations[0].action, Action::Keep);
    assert!(p.generations[0].delete.is_empty());
}

#[test]
fn tiers_keep_the_newest_snapshot_of_each_bucket_beyond_the_window() {
    // One generation with a snapshot every 30 minutes for 3 days, writes in between.
    let a = g(0);
    let mut l = vec![manifest(&a)];
    for i in 0..144u64 {
        l.push(snap_at(&a, i * 10, i * H / 2 + 1));
        l.push(seg_at(
            &a,
            i * 10 + 1,
            i * 10 + 10,
            i * H / 2 + 2,
            i * H / 2 + 3,
        ));
    }
    let now = 72 * H;
    let mut policy = Policy::new(hours(6));
    policy.tiers = Tiers::parse("hourly=4, daily=2").unwrap();
    let p = plan(&l, &policy, now, None).unwrap();
    let left = after(&l, &p);
    let snaps: Vec<u64> = group(&left)
        .values()
        .flat_map(|g| g.snapshots.iter().map(|s| s.name.commit_ms))
        .collect();
    let beyond: Vec<u64> = snaps.iter().copied().filter(|&ms| ms < 66 * H).collect();
    // Window start 66h: snapshot at 65.5h starts the window (and takes hour 65);
    // hours 64, 63, 62 give 64.5h, 63.5h, 62.5h; days 2 (the same 65.5h) and 1
    // (47.5h).
    let want: Vec<u64> = [47, 62, 63, 64, 65]
        .iter()
        .map(|h| h * H + H / 2 + 1)
        .collect();
    assert_eq!(beyond, want);
    assert_eq!(p.generations[0].tier_snapshots, 4);
    // A tier point restores exactly; a time between tier points is refused.
    let gens = group(&left);
    let tp = restore_plan(&gens, None, Target::Time(62 * H + H / 2 + 1)).unwrap();
    assert_eq!(tp.txid, 125 * 10);
    assert!(restore_plan(&gens, None, Target::Time(50 * H)).is_err());
    assert_window_intact(&l, &p);
}

#[test]
fn tier_flag_parsing() {
    assert_eq!(
        Tiers::parse("hourly=6,twelve-hourly=4,daily=5").unwrap(),
        Tiers {
            hourly: 6,
            twelve_hourly: 4,
            daily: 5,
            weekly: 0
        }
    );
    assert!(Tiers::parse("yearly=1").unwrap_err().contains("yearly"));
    assert!(Tiers::parse("hourly").is_err());
    assert!(Tiers::parse("").unwrap().is_empty());
}

#[test]
fn unknown_objects_inside_a_generation_refuse_foreign_ones_are_left_alone() {
    let mut l = week();
    l.push(Listed {
        name: "generations/abc/whatever".into(),
        size: 5,
        modified_ms: 0,
    });
    l.push(Listed {
        name: "notes.txt".into(),
        size: 5,
        modified_ms: 0,
    });
    let p = plan(&l, &Policy::new(hours(40)), 100 * H, None).unwrap();
    assert_eq!(p.foreign_objects, 2);
    assert!(deleted(&p).iter().all(|k| k.starts_with("generations/0")));
    l.push(Listed {
        name: format!("generations/{}/wal/x.seg", g(30 * H)),
        size: 5,
        modified_ms: 0,
    });
    let e = plan(&l, &Policy::new(hours(40)), 100 * H, None).unwrap_err();
    assert!(e.contains("wal/x.seg") && e.contains("refusing"), "{e}");
}
