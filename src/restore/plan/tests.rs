//! Unit tests of `restore/plan.rs`.

use super::fixtures::*;
use super::*;
use crate::format::manifest::Unchanged;
use crate::storage::layout;

/// The listing with a manifest for every generation, each read and valid.
fn ok(objs: &[Listed]) -> BTreeMap<GenerationId, Generation> {
    let mut gens = group(objs);
    for (id, g) in gens.iter_mut() {
        g.manifest_obj = Some(Obj {
            name: (),
            key: layout::format_manifest(id),
            size: 0,
            modified_ms: 0,
        });
        g.manifest = ManifestState::Valid {
            continues_parent_at: None,
            parent_unchanged: None,
        };
    }
    gens
}

/// Names whose commit times equal their txids.
fn snap(g_id: &GenerationId, txid: u64) -> Listed {
    snap_at(g_id, txid, txid)
}

fn seg(g_id: &GenerationId, a: u64, b: u64) -> Listed {
    seg_at(g_id, a, b, a, b)
}

/// Regression (two writers on one path): a long segment nothing continues must not
/// hide the complete chain through shorter ones.
#[test]
fn chain_search_passes_a_dead_end() {
    let a = g(1);
    let objs = vec![
        snap(&a, 0),
        seg(&a, 1, 188),
        seg(&a, 189, 215), // dead end: nothing starts at 216
        seg(&a, 189, 209),
        seg(&a, 210, 300),
    ];
    let p = plan_latest(&ok(&objs), None).unwrap();
    assert_eq!(p.txid, 300);
    assert_eq!(p.older, None);
    let ends: Vec<u64> = p.segments.iter().map(|s| s.name.last_txid).collect();
    assert_eq!(ends, vec![188, 209, 300]);
}

/// Regression (fuzzing): ranges that wrap u64 or run backwards made the walk loop
/// forever with growing memory.
#[test]
fn chain_search_ends_on_wrapping_and_reversed_ranges() {
    let a = g(1);
    let objs = vec![
        snap(&a, 0),
        seg(&a, 1, u64::MAX),
        seg(&a, 0, 4),
        seg_at(&a, 5, 3, 5, 5),
        seg(&a, 1, 2),
        seg(&a, 3, 4),
    ];
    let gens = ok(&objs);
    let p = plan_latest(&gens, None).unwrap();
    assert_eq!(p.txid, 4);
    let (chain, _) = chain_after(&gens[&a].segments, u64::MAX);
    assert!(chain.is_empty());
}

#[test]
fn empty_replica_explains_itself() {
    let e = plan_latest(&ok(&[]), None).unwrap_err().to_string();
    assert!(e.contains("no generations"), "{e}");
}

#[test]
fn newest_generation_with_snapshot_and_full_chain() {
    let (a, b, c) = (g(1), g(2), g(3));
    let objs = vec![
        snap(&a, 0),
        seg(&a, 1, 5),
        snap(&b, 0),
        seg(&b, 1, 3),
        seg(&b, 4, 4),
        snap(&b, 4),
        seg(&b, 5, 9),
        // c is being started: its manifest is there, its first snapshot not yet
        manifest(&c),
    ];
    let p = plan_latest(&ok(&objs), None).unwrap();
    assert_eq!(p.generation, b);
    assert_eq!(p.snapshot.name.txid, 4, "newest snapshot");
    assert_eq!(p.segments.len(), 1);
    assert_eq!(p.txid, 9);
    assert_eq!(p.older, None);
    assert_eq!(p.bytes(), 110);
}

#[test]
fn chain_stops_at_a_gap_and_says_so() {
    let a = g(1);
    let objs = vec![snap(&a, 0), seg(&a, 1, 3), seg(&a, 6, 8)];
    let gens = ok(&objs);
    let e = plan_latest(&gens, None).unwrap_err().to_string();
    assert!(
        e.contains("cannot be assembled") && e.contains("transactions 4..5"),
        "{e}"
    );
    assert!(e.contains("--allow-older to restore transaction 3"), "{e}");
    let p = plan(&gens, None, Target::Latest, true).unwrap();
    assert_eq!(p.txid, 3);
    assert!(p.older.unwrap().contains("behind"));
}

#[test]
fn overlapping_segments_take_the_longest_step() {
    let a = g(1);
    let objs = vec![
        snap(&a, 0),
        seg(&a, 1, 2),
        seg(&a, 1, 6),
        seg(&a, 3, 4),
        seg(&a, 7, 7),
    ];
    let p = plan_latest(&ok(&objs), None).unwrap();
    let firsts: Vec<u64> = p.segments.iter().map(|s| s.name.first_txid).collect();
    assert_eq!(firsts, vec![1, 7]);
    assert_eq!(p.txid, 7);
}

#[test]
fn explicit_generation_must_exist_and_have_a_snapshot() {
    let a = g(1);
    let gens = ok(&[manifest(&a)]);
    let e = plan_latest(&gens, Some(&g(9))).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = plan_latest(&gens, Some(&a)).unwrap_err().to_string();
    assert!(e.contains("no snapshot"), "{e}");
    let e = plan_latest(&gens, None).unwrap_err().to_string();
    assert!(e.contains("no generation has a snapshot yet") && e.contains("being started"));
}

/// Issue case 2: the newest generation's snapshot is gone but its segments are there.
/// Not "being started" (segments are uploaded only after the first snapshot): damage.
#[test]
fn newest_generation_without_its_snapshot_is_damage_not_an_older_state() {
    let (a, b) = (g(1), g(2));
    let objs = vec![
        snap(&a, 0),
        seg(&a, 1, 5),
        seg_at(&b, 1, 9, 20, 90),
        seg_at(&b, 10, 12, 95, 120),
    ];
    let gens = ok(&objs);
    let e = plan_latest(&gens, None).unwrap_err().to_string();
    assert!(e.contains("cannot be assembled"), "{e}");
    assert!(e.contains(&format!(
        "generation {b} holds 2 segment(s) (transactions 1..12"
    )));
    assert!(e.contains("its snapshots are missing"), "{e}");
    assert!(
        e.contains("--allow-older to restore transaction 5 of generation"),
        "{e}"
    );
    let p = plan(&gens, None, Target::Latest, true).unwrap();
    assert_eq!((p.generation.clone(), p.txid), (a.clone(), 5));
    assert!(p.older.unwrap().contains("0.1 s behind"), "115 ms");
    // Every snapshot gone (issue case 3): nothing older to fall back to either.
    let gens = ok(&[seg(&a, 1, 5), seg(&b, 1, 3)]);
    let e = plan(&gens, None, Target::Latest, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no older generation can be restored"), "{e}");
    // A time target inside the damaged generation is refused with the nearest points.
    let gens = ok(&objs);
    let e = plan(&gens, None, Target::Time(100), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("its snapshots are missing"), "{e}");
    assert!(e.contains("no later restorable point"), "{e}");
}

/// Issue case 6: a manifest that is missing or bad makes its generation unusable; the
/// planner asks for each manifest it would use, once.
#[test]
fn manifests_are_read_before_use_and_bad_ones_are_damage() {
    let (a, b) = (g(1), g(2));
    let objs = vec![
        manifest(&a),
        snap(&a, 0),
        seg(&a, 1, 5),
        manifest(&b),
        snap(&b, 0),
        seg(&b, 1, 3),
    ];
    let mut gens = group(&objs);
    assert_eq!(
        plan_latest(&gens, None).unwrap_err(),
        PlanError::NeedManifest(b.clone())
    );
    gens.get_mut(&b).unwrap().manifest =
        ManifestState::Bad("generations/b/manifest.json: manifest format 2 is newer".into());
    let e = plan_latest(&gens, None).unwrap_err().to_string();
    assert_eq!(e, PlanError::NeedManifest(a.clone()).to_string());
    gens.get_mut(&a).unwrap().manifest = ManifestState::Valid {
        continues_parent_at: None,
        parent_unchanged: None,
    };
    let e = plan_latest(&gens, None).unwrap_err().to_string();
    assert!(
        e.contains("format 2 is newer") && e.contains("--allow-older"),
        "{e}"
    );
    // No manifest listed at all: damage named by its key, with no GET.
    let bare: Vec<Listed> = objs
        .iter()
        .filter(|o| !o.name.ends_with("manifest.json"))
        .cloned()
        .collect();
    let gens = group(&bare);
    let e = plan(&gens, None, Target::Latest, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest generations/"), "{e}");
    assert!(e.contains("is missing"), "{e}");
}

/// Generation a: snapshot at 1000, txs 1..=10 at 1100..=2000, snapshot of tx 10, txs
/// 11..=20 at 2100..=3000. Generation b (after a lost continuity): snapshot at 5000,
/// txs 1..=5 at 5100..=5500.
fn history() -> (
    GenerationId,
    GenerationId,
    BTreeMap<GenerationId, Generation>,
) {
    let (a, b) = (g(1), g(2));
    let objs = vec![
        snap_at(&a, 0, 1000),
        seg_at(&a, 1, 4, 1100, 1400),
        seg_at(&a, 5, 10, 1500, 2000),
        snap_at(&a, 10, 2000),
        seg_at(&a, 11, 20, 2100, 3000),
        snap_at(&b, 0, 5000),
        seg_at(&b, 1, 5, 5100, 5500),
    ];
    (a, b, ok(&objs))
}

#[test]
fn time_inside_a_segment_stops_within_it() {
    let (a, _, gens) = history();
    let p = plan(&gens, None, Target::Time(1550), false).unwrap();
    assert_eq!(p.generation, a);
    assert_eq!(p.snapshot.name.txid, 0);
    assert_eq!(p.segments.len(), 2, "1..4 whole, 5..10 up to the stop");
    assert_eq!(p.stop, Some(Stop::Time(1550)));
    // Between two segments: the first whole, nothing of the second.
    let p = plan(&gens, None, Target::Time(1450), false).unwrap();
    assert_eq!((p.segments.len(), p.txid, p.stop), (1, 4, None));
    assert!(Stop::Time(1450).includes(5, 1450) && !Stop::Time(1450).includes(6, 1451));
}

#[test]
fn time_uses_the_newest_snapshot_at_or_before_it() {
    let (a, _, gens) = history();
    let p = plan(&gens, None, Target::Time(2500), false).unwrap();
    assert_eq!((p.generation, p.snapshot.name.txid), (a, 10));
    assert_eq!(p.segments.len(), 1);
    assert_eq!(p.stop, Some(Stop::Time(2500)));
    // Exactly at a segment's last commit: whole segment, no stop.
    let p = plan(&gens, None, Target::Time(3000), false).unwrap();
    assert_eq!((p.txid, p.stop), (20, None));
}

/// Issue case 4: between a generation's end and the next one's first snapshot the
/// state is unknown (the next began because continuity was lost): an error naming both
/// nearest points; the earlier with the opt-in; exact when the next continues it.
#[test]
fn time_between_generations_is_a_gap_unless_the_next_continues() {
    let (a, b, mut gens) = history();
    let e = plan(&gens, None, Target::Time(4000), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be restored exactly"), "{e}");
    assert!(
        e.contains("00:00:03.000Z and 1970-01-01T00:00:05.000Z"),
        "{e}"
    );
    let p = plan(&gens, None, Target::Time(4000), true).unwrap();
    assert_eq!(
        (p.generation.clone(), p.txid, p.stop),
        (a.clone(), 20, None)
    );
    assert!(p.older.unwrap().contains("1.0 s before"));
    // Walship saw nothing follow transaction 20 until 4.5 s: exact up to then only,
    // and only for the state that stamp names.
    for (txid, at, exact) in [(20, 4000, true), (20, 4500, true), (20, 4501, false)]
        .into_iter()
        .chain([(19, 4000, false)])
    {
        gens.get_mut(&b).unwrap().manifest = ManifestState::Valid {
            continues_parent_at: None,
            parent_unchanged: Some(Unchanged {
                txid,
                until_ms: 4500,
            }),
        };
        let p = plan(&gens, None, Target::Time(at), false);
        match exact {
            true => assert_eq!(p.map(|p| (p.txid, p.older)), Ok((20, None)), "{at}"),
            false => assert!(p.is_err(), "{txid} {at}"),
        }
    }
    gens.get_mut(&b).unwrap().manifest = ManifestState::Valid {
        continues_parent_at: Some(20),
        parent_unchanged: None,
    };
    let p = plan(&gens, None, Target::Time(4000), false).unwrap();
    assert_eq!((p.generation, p.txid, p.older), (a, 20, None));
    let p = plan(&gens, None, Target::Time(5000), false).unwrap();
    assert_eq!((p.generation, p.txid, p.segments.len()), (b.clone(), 0, 0));
    // After the newest commit: the newest state, not an error.
    let p = plan(&gens, None, Target::Time(99_999), false).unwrap();
    assert_eq!((p.generation, p.txid, p.stop), (b, 5, None));
}

#[test]
fn time_before_the_oldest_point_names_the_window() {
    let (_, _, gens) = history();
    let e = plan(&gens, None, Target::Time(999), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("before the oldest restorable point"), "{e}");
    assert!(e.contains("1970-01-01T00:00:01.000Z"), "{e}");
    assert!(e.contains("1970-01-01T00:00:05.500Z"), "{e}");
}

#[test]
fn time_past_a_gap_is_refused_with_the_last_good_point() {
    let a = g(1);
    let gens = ok(&[
        snap_at(&a, 0, 100),
        seg_at(&a, 1, 3, 110, 130),
        seg_at(&a, 7, 9, 170, 190),
    ]);
    assert_eq!(plan(&gens, None, Target::Time(130), false).unwrap().txid, 3);
    // 4..6 committed somewhere in 130..170: neither 150 nor 180 is known exactly.
    for t in [150, 180] {
        let e = plan(&gens, None, Target::Time(t), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold transactions 4..6"), "{e}");
        assert!(e.contains("00:00:00.130Z"), "{e}");
    }
}

#[test]
fn time_between_a_kept_tier_snapshot_and_the_window_is_refused() {
    // Retention kept snapshot 10 (a tier point) and the window from snapshot 50.
    let a = g(1);
    let gens = ok(&[
        snap_at(&a, 10, 1000),
        snap_at(&a, 50, 5000),
        seg_at(&a, 51, 60, 5100, 6000),
    ]);
    let p = plan(&gens, None, Target::Time(1000), false).unwrap();
    assert_eq!((p.snapshot.name.txid, p.txid), (10, 10));
    let e = plan(&gens, None, Target::Time(3000), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not hold transactions 11..49"), "{e}");
    assert_eq!(
        plan(&gens, None, Target::Time(5500), false).unwrap().txid,
        60
    );
}

#[test]
fn txid_target_within_one_generation() {
    let (a, b, gens) = history();
    let p = plan(&gens, Some(&a), Target::Txid(7), false).unwrap();
    assert_eq!((p.snapshot.name.txid, p.segments.len()), (0, 2));
    assert_eq!((p.txid, p.stop), (7, Some(Stop::Txid(7))));
    let p = plan(&gens, Some(&a), Target::Txid(10), false).unwrap();
    assert_eq!(
        (p.snapshot.name.txid, p.segments.len(), p.stop),
        (10, 0, None)
    );
    // Without --generation: the newest one.
    assert_eq!(
        plan(&gens, None, Target::Txid(5), false)
            .unwrap()
            .generation,
        b
    );
    let e = plan(&gens, None, Target::Txid(6), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("up to 5"), "{e}");
}
