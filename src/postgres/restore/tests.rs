//! Unit tests of `postgres/restore.rs`.

use super::*;
use crate::storage::Listed;

fn l(name: String) -> Listed {
    Listed {
        name,
        size: 1,
        modified_ms: 0,
    }
}

#[test]
fn files_stream_through_parts() {
    use super::super::backup::FileEntry;
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..5u8).collect();
    let b: Vec<u8> = (0..30u8).map(|i| i * 7).collect();
    let c = b"xyz".to_vec();
    let e = |path: &str, data: &[u8], part, offset| FileEntry {
        path: path.into(),
        size: data.len() as u64,
        mode: 0o600,
        part,
        offset,
        crc: crc32fast::hash(data),
    };
    // Parts of 16 bytes: a, then b over three parts, an empty file, c.
    let stream = [&a[..], &b[..], &c[..]].concat();
    let parts: Vec<&[u8]> = stream.chunks(16).collect();
    let files = vec![
        e("a", &a, 0, 0),
        e("base/1/b", &b, 0, 5),
        e("empty", b"", 2, 3),
        e("c", &c, 2, 3),
    ];
    let mut u = Unpacker::new(dir.path(), &files);
    for (i, p) in parts.iter().enumerate() {
        u.part(i as u32, p).unwrap();
    }
    u.finish().unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), a);
    assert_eq!(std::fs::read(dir.path().join("base/1/b")).unwrap(), b);
    assert_eq!(std::fs::read(dir.path().join("c")).unwrap(), c);
    assert!(std::fs::read(dir.path().join("empty")).unwrap().is_empty());

    // A damaged byte in the middle part is caught by the spanning file's CRC; a
    // missing last part by finish.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = parts[1].to_vec();
    bad[3] ^= 1;
    let mut u = Unpacker::new(dir.path(), &files);
    u.part(0, parts[0]).unwrap();
    let err = u
        .part(1, &bad)
        .and_then(|()| u.part(2, parts[2]))
        .unwrap_err();
    assert!(err.contains("base/1/b") && err.contains("CRC32"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let mut u = Unpacker::new(dir.path(), &files);
    u.part(0, parts[0]).unwrap();
    u.part(1, parts[1]).unwrap();
    let err = u.finish().unwrap_err();
    assert!(
        err.contains("base/1/b") && err.contains("last part"),
        "{err}"
    );
}

#[test]
fn an_earlier_restores_settings_are_dropped() {
    let t = "# Do not edit\nwork_mem = '8MB'\n\n# written by walship pg-restore\n\
                 restore_command = 'walship wal-fetch %f %p'\nrecovery_target_timeline = 'latest'\n\
                 recovery_target_time='2026-11-21 14:02:00+00'\n  Recovery_Target_Action = 'promote'\n";
    let out = without_recovery_settings(t);
    assert!(out.contains("work_mem = '8MB'"));
    for l in out
        .lines()
        .filter(|l| l.contains("recovery") || l.contains("restore_command"))
    {
        assert!(l.starts_with('#'), "{l}");
    }
    assert_eq!(out.lines().count(), t.lines().count());
}

#[test]
fn backups_on_the_latest_timelines_history() {
    // Timeline 3 left 2 at 0/9000000, which had left 1 at 0/5000000.
    let ancestry = [(1, 0x500_0000), (2, 0x900_0000)];
    assert!(on_lineage(3, 0xA00_0000, 3, &ancestry));
    assert!(on_lineage(2, 0x800_0000, 3, &ancestry));
    assert!(on_lineage(1, 0x400_0000, 3, &ancestry));
    // Ended after its timeline was left: not on the history.
    assert!(!on_lineage(1, 0x600_0000, 3, &ancestry));
    assert!(!on_lineage(2, 0x900_0100, 3, &ancestry));
    // A timeline that is no ancestor at all.
    assert!(!on_lineage(4, 0x100, 3, &ancestry));
}

#[test]
fn timestamps_postgres_parses() {
    assert_eq!(
        pg_timestamp(1_795_323_600_123),
        "2026-11-22 05:00:00.123+00"
    );
}

#[test]
fn newest_cluster_with_a_backup_before_the_target() {
    let (a, b) = (GenerationId::new(1000, 1), GenerationId::new(2000, 2));
    let bk = |ms| BackupName {
        start_lsn: ms,
        start_ms: ms,
    };
    let m = |g: &GenerationId, n| {
        l(format!(
            "{}/manifest.json",
            layout::format_backup_dir(g, &n)
        ))
    };
    let listing = vec![
        m(&a, bk(10)),
        m(&b, bk(100)),
        m(&b, bk(200)),
        // A backup without its manifest (still running, or failed) does not count.
        l(format!(
            "{}/part-00000.pack",
            layout::format_backup_dir(&b, &bk(300))
        )),
    ];
    let c = Catalog::of(&listing);
    assert_eq!(choose(&c, None).unwrap(), (b.clone(), bk(200)));
    assert_eq!(choose(&c, Some(150)).unwrap(), (b.clone(), bk(100)));
    // Before the newer cluster's first backup: the older cluster's.
    assert_eq!(choose(&c, Some(50)).unwrap(), (a.clone(), bk(10)));
    let e = choose(&c, Some(5)).unwrap_err();
    assert!(e.contains("cannot restore earlier"), "{e}");
    assert!(
        choose(&Catalog::of(&[]), None)
            .unwrap_err()
            .contains("no base backup")
    );
}
