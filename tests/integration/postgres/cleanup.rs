//! Retention of a cluster's replica: `walship cleanup` on base backups and WAL.

use super::*;

/// `cleanup --json` of the replica; the report's only database.
pub(crate) fn pg_cleanup(pg: &Pg, b: &Backend, retention: &str) -> serde_json::Value {
    let o = walship_in(
        pg,
        &["cleanup", "--json", "--retention", retention, &b.url],
        b,
    );
    assert_success(&o, &format!("cleanup --retention {retention}"));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["failed"], 0, "{rep}");
    rep["databases"][0].clone()
}

/// The WAL segment file name holding `lsn` (`X/Y`) on `timeline`, 16 MB segments.
pub(crate) fn segment_of(timeline: u32, lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lo = u32::from_str_radix(lo, 16).unwrap();
    format!(
        "{timeline:08X}{:08X}{:08X}",
        u32::from_str_radix(hi, 16).unwrap(),
        lo >> 24
    )
}

/// Retention of a cluster's replica: three base backups with WAL between them, a window
/// starting between the second and the third: the first backup and the WAL before the
/// second's first segment go, nothing else; an instant in the window and the newest state
/// restore exactly, one before it is refused naming the oldest backup. Then a new cluster
/// (another system identifier) takes over the replica path: once it holds the window, the
/// old cluster's generation goes whole.
pub(crate) fn postgres_cleanup(mut pg: Pg, b: &Backend) {
    start_archiving(&mut pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    pg_backup(&pg, b);
    let t1 = now_ms();
    for i in 2..4 {
        insert_batch(&pg, i);
        pg.psql("SELECT pg_switch_wal()");
    }
    pg_backup(&pg, b);
    insert_batch(&pg, 4);
    let (h4, t4) = (table_hash(&pg), now_ms());
    std::thread::sleep(Duration::from_millis(2000));
    insert_batch(&pg, 5);
    pg.psql("SELECT pg_switch_wal()");
    pg_backup(&pg, b);
    insert_batch(&pg, 6);
    let h6 = table_hash(&pg);
    wait_archived(&pg);

    let o = walship_in(&pg, &["backups", "--json", &b.url], b);
    assert_success(&o, "backups --json");
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = l["backups"].as_array().unwrap().clone();
    assert_eq!(backups.len(), 3, "{l}");
    let dir_of = |bk: &serde_json::Value| {
        let lsn = bk["start_lsn"].as_str().unwrap();
        let (hi, lo) = lsn.split_once('/').unwrap();
        let lsn =
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        format!("/basebackups/{lsn:016x}-")
    };
    let first_kept = segment_of(1, backups[1]["start_lsn"].as_str().unwrap());
    let before = list_objects(b);
    let pgwal = |k: &str| k.split("/pgwal/").nth(1).map(str::to_string);
    // What the window no longer needs, from names: the first backup, and WAL files (the
    // first backup's label among them) named before the second backup's first segment.
    let want_gone: std::collections::BTreeSet<String> = before
        .keys()
        .filter(|k| {
            k.contains(&dir_of(&backups[0]))
                || pgwal(k).is_some_and(|f| !f.ends_with(".history") && f < first_kept)
        })
        .cloned()
        .collect();
    assert!(
        want_gone.iter().filter(|k| k.contains("/pgwal/")).count() >= 3,
        "WAL before the second backup: {want_gone:?}"
    );

    // The window starts half a second after t4: after the second backup, before the third.
    let window = now_ms() - (t4 + 500);
    let db = pg_cleanup(&pg, b, &format!("{window}ms"));
    let after = list_objects(b);
    let gone: std::collections::BTreeSet<String> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(gone, want_gone, "{db}");
    assert_eq!(db["deleted_objects"], want_gone.len(), "{db}");
    assert_eq!(
        db["deleted_bytes"],
        want_gone.iter().map(|k| before[k]).sum::<u64>(),
        "{db}"
    );
    // An instant inside the window and the newest state restore exactly.
    assert_eq!(restore_and_hash(&pg, b, "in-window", Some(t4 + 1000)), h4);
    assert_eq!(restore_and_hash(&pg, b, "newest", None), h6);
    // Before the window: refused, naming where the replica starts.
    let early = pg.root.join("early");
    let o = walship_in(
        &pg,
        &[
            "pg-restore",
            "--timestamp",
            &walship::restore::when::format_ms(t1),
            early.to_str().unwrap(),
            &b.url,
        ],
        b,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("oldest base backup started at"), "{err}");
    assert!(!early.exists());
    // A second run has nothing to do.
    let again = pg_cleanup(&pg, b, &format!("{}ms", now_ms() - (t4 + 500)));
    assert_eq!(again["deleted_objects"], 0, "{again}");
    pg.stop();

    // A new cluster writes to the same replica path.
    let old_generation = gone
        .iter()
        .next()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let mut pg2 = Pg::init("postgres_cleanup (second cluster)").unwrap();
    start_archiving(&mut pg2, b);
    // The path is the first cluster's (cluster.json): handed over on purpose.
    let cfg2 = sidecar_config(&pg2, b, "walship", &format!("127.0.0.1:{}", free_port()));
    let log2 = pg2.root.join("sidecar.log");
    let mut sc = start_sidecar(&pg2, b, &cfg2, &log2, &["--force-new-history"]);
    let handed = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        std::fs::read_to_string(&log2).is_ok_and(|l| l.contains("now belongs to this cluster"))
    });
    assert!(handed, "{}", std::fs::read_to_string(&log2).unwrap());
    assert!(sc.terminate().success());
    pg2.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg2, 7);
    pg_backup(&pg2, b);
    insert_batch(&pg2, 8);
    let h8 = table_hash(&pg2);
    wait_archived(&pg2);
    pg2.stop();
    // An hour later, with a 30-minute window: the new cluster's backup starts the window,
    // the old cluster's last write is long past the live grace.
    let later = Backend {
        env: [
            b.env.clone(),
            vec![("WALSHIP_CLOCK_OFFSET".to_string(), "+1h".to_string())],
        ]
        .concat(),
        ..b.clone()
    };
    let db = pg_cleanup(&pg2, &later, "30m");
    let gens = db["plan"]["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2, "{db}");
    assert_eq!(gens[0]["generation"], old_generation.as_str(), "{db}");
    assert_eq!(gens[0]["action"], "delete", "{db}");
    let left = list_objects(b);
    assert!(
        left.keys().all(|k| !k.contains(&old_generation)),
        "the old cluster's objects are all gone: {left:?}"
    );
    assert!(left.keys().any(|k| k.contains("/basebackups/")), "{left:?}");
    assert_eq!(restore_and_hash(&pg2, b, "second-cluster", None), h8);
    // A damaged timeline history: cleanup fails naming it and deletes nothing.
    let new_generation = left
        .keys()
        .find(|k| k.starts_with("generations/"))
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap();
    let bad = format!("generations/{new_generation}/pgwal/00000009.history");
    put_object(b, &bad, b"not a walship object");
    let before = list_objects(b);
    let o = walship_in(&pg2, &["cleanup", "--retention", "1ms", &b.url], b);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&bad) && out.contains("corrupt"), "{out}");
    assert_eq!(list_objects(b), before);
}

on_each_backend_pg!(
    postgres_cleanup_file,
    postgres_cleanup_s3,
    "pgcleanup",
    |pg: Pg, b: &Backend| postgres_cleanup(pg, b)
);
