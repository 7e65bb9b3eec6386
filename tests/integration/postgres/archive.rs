//! `wal-push` and `wal-fetch` semantics, and a running cluster archiving through
//! `archive_command`.

use super::*;

pub(crate) fn push_fetch_semantics(pg: &Pg, b: &Backend) {
    let seg = "000000010000000000000001";
    let original = std::fs::read(pg.pgdata.join("pg_wal").join(seg)).unwrap();
    let wal_path = format!("pg_wal/{seg}");
    for attempt in ["first", "again"] {
        let o = walship_in(pg, &["wal-push", &wal_path, &b.url], b);
        assert_success(&o, &format!("wal-push ({attempt})"));
    }
    // Different bytes under the same name: refused, and the archived object is unchanged.
    let other = pg.root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut changed = original.clone();
    changed[100] ^= 0xff;
    std::fs::write(other.join(seg), &changed).unwrap();
    chown_to_postgres(&other);
    let o = walship_in(
        pg,
        &["wal-push", other.join(seg).to_str().unwrap(), &b.url],
        b,
    );
    assert!(!o.status.success(), "a different segment was accepted");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("different content") && e.contains(seg), "{e}");
    // Fetch returns the original bytes.
    let o = walship_in(pg, &["wal-fetch", seg, "pg_wal/RECOVERYXLOG", &b.url], b);
    assert_success(&o, "wal-fetch");
    let fetched = pg.pgdata.join("pg_wal/RECOVERYXLOG");
    assert_eq!(std::fs::read(&fetched).unwrap(), original);
    std::fs::remove_file(fetched).unwrap();
    // A file the archive does not have: exit 1, nothing on stderr (Postgres probes).
    for missing in ["000000010000000000000009", "00000002.history"] {
        let o = walship_in(
            pg,
            &["wal-fetch", missing, "pg_wal/RECOVERYXLOG", &b.url],
            b,
        );
        assert_eq!(o.status.code(), Some(1), "wal-fetch {missing}");
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Not a WAL file name: a usage error naming it.
    let o = walship_in(pg, &["wal-push", "postgresql.conf", &b.url], b);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("postgresql.conf"));
}

on_each_backend_pg!(
    wal_push_and_fetch_file,
    wal_push_and_fetch_s3,
    "walpush",
    |pg: Pg, b: &Backend| push_fetch_semantics(&pg, b)
);

/// A running cluster with `archive_command = 'walship wal-push %p …'`: every switched
/// segment reaches the replica and the archiver reports no failure.
pub(crate) fn archive_command(mut pg: Pg, b: &Backend) {
    start_archiving(&mut pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    let mut switched = Vec::new();
    for i in 0..3 {
        pg.psql(&format!(
            "INSERT INTO t(v) SELECT md5(g::text || '{i}') FROM generate_series(1, 2000) g"
        ));
        switched.push(pg.psql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let archived = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let n: u64 = pg
            .psql("SELECT archived_count FROM pg_stat_archiver")
            .parse()
            .unwrap();
        n >= switched.len() as u64
    });
    let failed = pg.psql("SELECT failed_count FROM pg_stat_archiver");
    assert!(archived, "archiver did not catch up:\n{}", pg.log());
    assert_eq!(failed, "0", "archive_command failed:\n{}", pg.log());
    let objects = list_objects(b);
    for seg in &switched {
        assert!(
            objects
                .keys()
                .any(|k| k.ends_with(&format!("/pgwal/{seg}"))),
            "{seg} not in the replica: {:?}",
            objects.keys().collect::<Vec<_>>()
        );
    }
}

on_each_backend_pg!(
    archive_command_ships_segments_file,
    archive_command_ships_segments_s3,
    "archive",
    |pg: Pg, b: &Backend| archive_command(pg, b)
);
