//! Unit tests of `catalog/listing.rs`.

use super::*;
use crate::restore::plan::fixtures::{g, manifest, seg_at, snap_at};

fn obj(name: String, modified_ms: u64) -> Listed {
    Listed {
        name,
        size: 7,
        modified_ms,
    }
}

fn backup(id: &GenerationId, start_ms: u64, complete: bool, at: u64) -> Vec<Listed> {
    let b = BackupName {
        start_lsn: start_ms * 16,
        start_ms,
    };
    let dir = layout::format_backup_dir(id, &b);
    let mut v = vec![obj(format!("{dir}/part-00000.pack"), at)];
    if complete {
        v.push(obj(format!("{dir}/manifest.json"), at));
    }
    v
}

#[test]
fn one_parse_sorts_every_kind_and_counts_what_it_cannot_name() {
    let (a, p) = (g(1), g(2));
    let mut l = vec![
        seg_at(&a, 11, 20, 110, 200),
        snap_at(&a, 10, 100),
        manifest(&a),
        snap_at(&a, 5, 50),
        obj("lease.json".into(), 0),
        obj(format!("generations/{a}/notours.bin"), 0),
    ];
    l.extend(backup(&p, 3_000, true, 9));
    l.extend(backup(&p, 1_000, true, 5));
    l.extend(backup(&p, 2_000, false, 7));
    let seg = WalFile::Segment {
        timeline: 1,
        log: 0,
        seg: 3,
    };
    l.push(obj(layout::format_pg_wal(&p, &seg), 11));
    l.push(obj(
        layout::format_pg_wal(&p, &WalFile::History { timeline: 2 }),
        4,
    ));
    let c = Catalog::of(&l);
    assert_eq!(c.foreign, 1);
    assert_eq!(c.unknown, vec![format!("generations/{a}/notours.bin")]);
    let ga = &c.generations[&a];
    assert!(ga.has_manifest() && !ga.is_postgres());
    let snaps: Vec<u64> = ga.snapshots.iter().map(|s| s.name.txid).collect();
    assert_eq!(snaps, vec![5, 10]);
    assert_eq!(ga.last_write_ms(), Some(200));
    let gp = &c.generations[&p];
    assert!(gp.is_postgres() && c.has_postgres());
    let starts: Vec<u64> = gp.complete_backups().iter().map(|b| b.start_ms).collect();
    assert_eq!(
        starts,
        vec![1_000, 3_000],
        "the incomplete backup is no backup"
    );
    assert_eq!(gp.pg_objects().count(), 7);
    assert_eq!(c.histories(), vec![(p.clone(), 2)]);
    assert_eq!(c.newest_writer(), Some(p));
}

#[test]
fn where_a_restore_starts_is_one_rule() {
    let (a, b, c) = (g(1), g(2), g(3));
    let l = vec![
        manifest(&a),
        snap_at(&a, 1, 100),
        snap_at(&a, 9, 900),
        manifest(&b),
        snap_at(&b, 1, 1_000),
        // c has data but no manifest: never a starting point.
        snap_at(&c, 1, 500),
    ];
    let cat = Catalog::of(&l);
    let start = |t| sqlite_start_at(cat.generations.iter().rev(), t).map(|(id, _)| id.clone());
    assert_eq!(start(99), None);
    assert_eq!(
        start(600),
        Some(a.clone()),
        "c is skipped: its manifest is missing"
    );
    assert_eq!(start(1_000), Some(b.clone()));
    let ga = &cat.generations[&a];
    assert_eq!(ga.snapshot_at_or_before(899).map(|s| s.name.txid), Some(1));
    assert_eq!(ga.snapshot_at_or_before(900).map(|s| s.name.txid), Some(9));
    assert!(cat.generations[&c].damage(&c).unwrap().contains("manifest"));
}

#[test]
fn where_a_postgres_restore_starts_is_one_rule() {
    let (a, b) = (g(1), g(2));
    let mut l = backup(&a, 1_000, true, 0);
    l.extend(backup(&a, 5_000, true, 0));
    l.extend(backup(&b, 3_000, true, 0));
    l.extend(backup(&b, 4_000, false, 0));
    let c = Catalog::of(&l);
    let at = |only: Option<&GenerationId>, t| {
        c.backup_at_or_before(only, t).map(|(g, b)| (g, b.start_ms))
    };
    assert_eq!(
        at(None, None),
        Some((b.clone(), 3_000)),
        "the newest cluster's newest"
    );
    assert_eq!(at(None, Some(2_999)), Some((a.clone(), 1_000)));
    assert_eq!(at(Some(&a), None), Some((a.clone(), 5_000)));
    assert_eq!(at(None, Some(999)), None);
}
