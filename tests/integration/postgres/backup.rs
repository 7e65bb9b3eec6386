//! Base backups and point-in-time restores: `pg-backup`, `pg-restore` to an instant, a
//! timeline switch, and a pgbench workload restored to recorded instants.

use super::*;

pub(crate) const TABLE_HASH: &str =
    "SELECT md5(coalesce(string_agg(id || ':' || v, ',' ORDER BY id), '')) FROM t";

pub(crate) fn table_hash(pg: &Pg) -> String {
    pg.psql(TABLE_HASH)
}

/// A table of about 45 MB: its file spans several parts of a base backup.
pub(crate) const BIG_HASH: &str = "SELECT md5(string_agg(g || ':' || v, ',' ORDER BY g)) FROM big";

pub(crate) fn insert_batch(pg: &Pg, i: u32) {
    pg.psql(&format!(
        "INSERT INTO t(v) SELECT md5(g::text || '{i}') FROM generate_series(1, 500) g"
    ));
}

pub(crate) fn start_archiving(pg: &mut Pg, b: &Backend) {
    let cmd = format!(
        "{} wal-push %p {} {}",
        pg.walship.display(),
        b.url,
        b.flags.join(" ")
    );
    pg.start(
        &[
            ("archive_mode", "on".into()),
            ("archive_command", cmd),
            ("wal_level", "replica".into()),
        ],
        &b.env,
    );
}

/// Restore into a sibling directory as the `postgres` user, start it (not archiving),
/// wait for recovery to end, and return the restored table's hash.
pub(crate) fn restore_and_hash(pg: &Pg, b: &Backend, name: &str, timestamp: Option<u64>) -> String {
    restore_and_query(pg, b, name, timestamp, TABLE_HASH)
}

/// `restore_and_hash` with the query to answer from the restored cluster.
pub(crate) fn restore_and_query(
    pg: &Pg,
    b: &Backend,
    name: &str,
    timestamp: Option<u64>,
    sql: &str,
) -> String {
    let mut args = vec![b.url.clone()];
    if let Some(t) = timestamp {
        args.push("--timestamp".into());
        args.push(walship::restore::when::format_ms(t));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    restore_with_args_query(pg, b, name, &argv, sql)
}

/// A base backup through the server, run as the cluster's own user (which can read its
/// files), as the sidecar would; returns when it finished (Unix ms).
pub(crate) fn pg_backup(pg: &Pg, b: &Backend) -> u64 {
    let conn = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let o = walship_in(
        pg,
        &[
            "pg-backup",
            &b.url,
            "--pgdata",
            pg.pgdata.to_str().unwrap(),
            "--connection",
            &conn,
        ],
        b,
    );
    assert_success(&o, "pg-backup");
    now_ms()
}

/// Archiving on, table `t` with batch 1, a base backup, batch 2 (its hash and time
/// recorded), 1.2 s later batch 3: returns (hash after 2, time after 2, hash after 3).
pub(crate) fn backup_between_batches(
    pg: &mut Pg,
    b: &Backend,
    setup: &str,
) -> (String, u64, String) {
    start_archiving(pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    if !setup.is_empty() {
        pg.psql(setup);
    }
    insert_batch(pg, 1);
    pg_backup(pg, b);
    insert_batch(pg, 2);
    let (h2, t2) = (table_hash(pg), now_ms());
    std::thread::sleep(Duration::from_millis(1200));
    insert_batch(pg, 3);
    let h3 = table_hash(pg);
    assert_ne!(h2, h3);
    (h2, t2, h3)
}

/// A base backup taken through the server while it archives, writes after it, then
/// restores of the newest state and of an instant between two batches, each started with
/// PostgreSQL and compared with the recorded table contents.
pub(crate) fn backup_and_restore(mut pg: Pg, b: &Backend) {
    let (h2, t2, h3) = backup_between_batches(
        &mut pg,
        b,
        "CREATE TABLE big AS SELECT g, md5(g::text) || repeat('y', 20) AS v \
         FROM generate_series(1, 600000) g",
    );
    let big = pg.psql(BIG_HASH);
    wait_archived(&pg);
    assert_eq!(restore_and_hash(&pg, b, "latest", None), h3, "newest state");
    // Its relation file spans several backup parts and comes back whole.
    assert_eq!(restore_and_query(&pg, b, "latest-big", None, BIG_HASH), big);
    assert_eq!(
        restore_and_hash(&pg, b, "pitr", Some(t2 + 500)),
        h2,
        "point in time"
    );
    // A target after the archive's last transaction: the newest state (PostgreSQL alone
    // would stop with "recovery ended before configured recovery target was reached").
    assert_eq!(
        restore_and_hash(&pg, b, "after-the-end", Some(now_ms() + 60_000)),
        h3,
        "a target after the last transaction"
    );
    // A non-empty target is refused, and left as it is.
    let latest = pg.root.join("latest");
    let o = walship_in(&pg, &["pg-restore", latest.to_str().unwrap(), &b.url], b);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    // Init-container matrix. Non-empty target: untouched, exit 0 (also a second run
    // after a successful restore).
    let init = ["pg-restore", "--if-pgdata-empty", "--if-replica-exists"];
    let control = std::fs::read(latest.join("global/pg_control")).unwrap();
    let o = walship_in(
        &pg,
        &[&init[..], &[latest.to_str().unwrap(), &b.url]].concat(),
        b,
    );
    assert_success(&o, "pg-restore --if-pgdata-empty on a non-empty directory");
    assert_eq!(
        std::fs::read(latest.join("global/pg_control")).unwrap(),
        control
    );
    // Empty target and a backup: restored (started above); an existing empty directory is
    // filled too.
    let empty = pg.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    chown_to_postgres(&empty);
    let o = walship_in(
        &pg,
        &[&init[..], &[empty.to_str().unwrap(), &b.url]].concat(),
        b,
    );
    assert_success(&o, "pg-restore --if-pgdata-empty into an empty directory");
    assert!(empty.join("backup_label").exists() && empty.join("recovery.signal").exists());
    // No backup in the replica: nothing done, exit 0, no directory created.
    let none = Backend {
        url: format!("{}-nothing-here", b.url),
        ..b.clone()
    };
    if let Some(dir) = none.url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).unwrap();
        chown_to_postgres(Path::new(dir));
    }
    let fresh = pg.root.join("fresh");
    let o = walship_in(
        &pg,
        &[&init[..], &[fresh.to_str().unwrap(), &none.url]].concat(),
        &none,
    );
    assert_success(&o, "pg-restore --if-replica-exists without a backup");
    assert!(
        !fresh.exists(),
        "a data directory was created without a backup"
    );
    // Without --if-replica-exists that is an error naming what is missing.
    let o = walship_in(
        &pg,
        &["pg-restore", fresh.to_str().unwrap(), &none.url],
        &none,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no base backup"));
}

on_each_backend_pg!(
    base_backup_and_restore_file,
    base_backup_and_restore_s3,
    "pgbackup",
    |pg: Pg, b: &Backend| backup_and_restore(pg, b)
);

pub(crate) fn wait_archived(pg: &Pg) {
    let last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let archived = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= last
    });
    assert!(archived, "{last} was not archived:\n{}", pg.log());
}

/// Timelines: a point-in-time restore, promoted, archives on timeline 2 into the same
/// generation (its `.history` file first), and a later restore of the newest state
/// follows that timeline rather than the abandoned end of timeline 1.
pub(crate) fn timeline_switch(mut pg: Pg, b: &Backend) {
    // Batch 3 is on timeline 1 only: the restore below leaves it behind; so is a second
    // base backup taken after it.
    let (h2, t2, h3) = backup_between_batches(&mut pg, b, "");
    pg_backup(&pg, b);
    wait_archived(&pg);
    pg.stop();

    let mut promoted = pg.sibling("promoted");
    let at = walship::restore::when::format_ms(t2 + 500);
    let o = walship_in(
        &pg,
        &[
            "pg-restore",
            "--timestamp",
            &at,
            promoted.pgdata.to_str().unwrap(),
            &b.url,
        ],
        b,
    );
    assert_success(&o, "pg-restore --timestamp");
    start_archiving(&mut promoted, b);
    let done = wait_for(Duration::from_secs(90), Duration::from_millis(250), || {
        promoted.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert!(done, "recovery did not finish:\n{}", promoted.log());
    assert_eq!(table_hash(&promoted), h2, "the point in time");
    assert_eq!(
        promoted.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    insert_batch(&promoted, 4);
    let h4 = table_hash(&promoted);
    assert_ne!(h4, h3);
    wait_archived(&promoted);

    let objects = list_objects(b);
    let history: Vec<_> = objects
        .keys()
        .filter(|k| k.contains("00000002.history"))
        .collect();
    assert_eq!(
        history.len(),
        1,
        "the new timeline's history in the bucket: {objects:?}"
    );
    // One generation: the promoted cluster keeps the system identifier.
    let gens: std::collections::BTreeSet<_> = objects
        .keys()
        .filter_map(|k| k.split("generations/").nth(1)?.split('/').next())
        .collect();
    assert_eq!(gens.len(), 1, "{gens:?}");
    // `backups`: the two base backups (timeline 1) and the WAL archived on each timeline.
    let o = walship_in(&pg, &["backups", "--json", &b.url], b);
    assert_success(&o, "backups --json");
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = l["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{l}");
    assert_eq!(
        (&backups[0]["timeline"], &backups[1]["timeline"]),
        (&1.into(), &1.into())
    );
    assert!(backups[0]["files"].as_u64().unwrap() > 100, "{l}");
    let wal = l["wal"].as_array().unwrap();
    let tl = |t: u64| {
        wal.iter()
            .find(|w| w["timeline"] == t)
            .unwrap_or_else(|| panic!("{l}"))
    };
    assert!(tl(1)["segments"].as_u64().unwrap() >= 2, "{l}");
    assert_eq!(tl(2)["history"], true, "{l}");
    assert!(
        tl(2)["last"].as_str().unwrap().starts_with("00000002"),
        "{l}"
    );
    // Cleanup with the window starting now: the second backup anchors it, but timeline
    // 2's history (read from the bucket) shows it left timeline 1 before that backup, so
    // a restore of timeline 2 needs the first backup and its WAL: nothing is deleted.
    let db = pg_cleanup(&pg, b, "1ms");
    let why = db["plan"]["generations"][0]["why"].as_str().unwrap();
    assert!(
        why.contains("branched off before"),
        "{db}\n{:?}",
        list_objects(b)
            .keys()
            .filter(|k| k.contains("/pgwal/"))
            .collect::<Vec<_>>()
    );
    assert!(db["get_requests"].as_u64().unwrap() >= 1, "{db}");
    assert_eq!(db["deleted_objects"], 0, "{db}");
    // The newest state follows timeline 2, from the first backup: the second is not on
    // timeline 2's history and PostgreSQL would refuse to start from it.
    assert_eq!(
        restore_and_hash(&pg, b, "latest", None),
        h4,
        "newest state follows timeline 2"
    );
    // The sidecar sees the cluster on a timeline no backup is on and takes one at once,
    // not an hour after the last.
    let cfg = sidecar_config(&promoted, b, "walship-promoted", "");
    let log_path = promoted.root.join("sidecar-promoted.log");
    let mut sidecar = start_sidecar(&promoted, b, &cfg, &log_path, &[]);
    let on_tl2 = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let o = walship_in(&pg, &["backups", "--json", &b.url], b);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|l| {
            l["backups"]
                .as_array()
                .is_some_and(|v| v.iter().any(|b| b["timeline"] == 2))
        })
    });
    assert!(
        on_tl2,
        "no base backup on timeline 2:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    // (Its label file is archived after its last segment when both are in one segment.)
    wait_archived(&promoted);
    assert!(sidecar.terminate().success());
    promoted.stop();
    // Now that backup anchors the window: the timeline-1 backups and the WAL before its
    // first segment go; the history stays; the newest state still restores.
    let before = list_objects(b);
    let db = pg_cleanup(&pg, b, "1ms");
    let after = list_objects(b);
    assert!(
        db["deleted_objects"].as_u64().unwrap() > 0,
        "{db}\n{:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert!(
        after.keys().any(|k| k.ends_with("00000002.history")),
        "{db}"
    );
    let backups_left: std::collections::BTreeSet<_> = after
        .keys()
        .filter_map(|k| k.split("/basebackups/").nth(1)?.split('/').next())
        .collect();
    assert_eq!(backups_left.len(), 1, "{backups_left:?} {db}");
    assert!(after.len() < before.len());
    assert_eq!(restore_and_hash(&pg, b, "latest-after-cleanup", None), h4);
}

on_each_backend_pg!(
    timeline_switch_file,
    timeline_switch_s3,
    "pgtimeline",
    |pg: Pg, b: &Backend| timeline_switch(pg, b)
);

/// Every pgbench table's content, in one hash.
pub(crate) const PGBENCH_HASH: &str = "md5(\
    (SELECT string_agg(aid || ':' || abalance, ',' ORDER BY aid) FROM pgbench_accounts) || \
    (SELECT string_agg(bid || ':' || bbalance, ',' ORDER BY bid) FROM pgbench_branches) || \
    (SELECT string_agg(tid || ':' || tbalance, ',' ORDER BY tid) FROM pgbench_tellers) || \
    coalesce((SELECT string_agg(concat_ws(':', tid, bid, aid, delta, mtime), ',' \
        ORDER BY tid, bid, aid, delta, mtime) FROM pgbench_history), ''))";

/// (commit-time ms, hash) of an instant with no commit near it: the tables are locked
/// against writers (readers go on), the time is taken 2 ms after the lock was granted (so
/// every earlier commit is older) and the lock is released only after the hash.
pub(crate) fn record_instant(pg: &Pg) -> (u64, String) {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atq",
        ])
        .args(["-p", &pg.port.to_string(), "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "BEGIN"])
        .args([
            "-c",
            "LOCK TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history \
             IN EXCLUSIVE MODE",
        ])
        .args([
            "-c",
            &format!(
                "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint || ' ' || \
                 {PGBENCH_HASH} FROM pg_sleep(0.002)"
            ),
        ])
        .args(["-c", "COMMIT"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let (ms, hash) = out.trim().split_once(' ').unwrap();
    (ms.parse().unwrap(), hash.to_string())
}

/// The acceptance: `pgbench -i`, then 60 s of pgbench with a base backup taken
/// mid-way and `pg_switch_wal()` calls, a recorder noting (time, content hash of the
/// pgbench tables) every second; restores to instants on both sides of the second backup,
/// each started with PostgreSQL, equal the recorded state.
#[test]
fn pgbench_point_in_time_s3() {
    let Some(b) = Backend::s3("pgbench") else {
        return;
    };
    let Some(mut pg) = Pg::init("pgbench_point_in_time_s3") else {
        return;
    };
    start_archiving(&mut pg, &b);
    let bench = Path::new(PG_BIN).join("pgbench");
    let port = pg.port.to_string();
    let conn_args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let o = Command::new(&bench)
        .args(conn_args)
        .args(["-i", "-s", "1", "-q", "postgres"])
        .output()
        .unwrap();
    assert_success(&o, "pgbench -i");
    pg_backup(&pg, &b);
    let mut load = Command::new(&bench)
        .args(conn_args)
        .args(["-T", "60", "-c", "2", "-R", "150", "-n", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut record = Vec::new();
    let mut backup2 = None;
    let mut switches = 0;
    while load.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1000));
        record.push(record_instant(&pg));
        if record.len() % 7 == 0 {
            pg.psql("SELECT pg_switch_wal()");
            switches += 1;
        }
        if backup2.is_none() && started.elapsed() >= Duration::from_secs(30) {
            backup2 = Some(pg_backup(&pg, &b));
        }
    }
    let status = load.wait().unwrap();
    assert!(status.success(), "pgbench failed");
    let backup2 = backup2.expect("the workload ended before the mid-way backup");
    wait_archived(&pg);
    let distinct: std::collections::BTreeSet<_> = record.iter().map(|r| &r.1).collect();
    assert!(
        record.len() >= 40 && distinct.len() >= 40 && switches >= 5,
        "{} instants ({} distinct), {switches} WAL switches",
        record.len(),
        distinct.len()
    );
    eprintln!(
        "pgbench: {} recorded instants ({} distinct), {switches} WAL switches, backups at start and {} s",
        record.len(),
        distinct.len(),
        (backup2 - record[0].0) / 1000
    );
    // Two instants before the mid-way backup, three after it (one the last with a commit
    // after it), and the last recorded one, after the workload ended.
    let live: Vec<_> = record
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| &w[0])
        .collect();
    let before: Vec<_> = live.iter().filter(|r| r.0 < backup2).collect();
    let after: Vec<_> = live.iter().filter(|r| r.0 > backup2 + 1000).collect();
    let picks = [
        before[before.len() / 3],
        before[before.len() * 2 / 3],
        after[after.len() / 4],
        after[after.len() * 3 / 4],
        after[after.len() - 1],
        // After the workload's last commit: walship restores the newest state.
        record.last().unwrap(),
    ];
    let mut prefetched = 0;
    for (i, (ms, hash)) in picks.iter().enumerate() {
        let (got, hits) = restore_and_pgbench_hash(&pg, &b, &format!("at{i}"), *ms);
        assert_eq!(
            &got,
            hash,
            "restore to {}",
            walship::restore::when::format_ms(*ms)
        );
        prefetched += hits;
    }
    // Recovery asks for WAL one file at a time; wal-fetch fetched the next ones ahead.
    eprintln!("pgbench: {prefetched} WAL files handed over from wal-fetch's prefetch");
    assert!(prefetched > 0, "no WAL file was prefetched");
}

/// Restore to `ms`, start, and return the pgbench tables' hash and how many WAL files
/// recovery got from wal-fetch's prefetch.
pub(crate) fn restore_and_pgbench_hash(
    pg: &Pg,
    b: &Backend,
    name: &str,
    ms: u64,
) -> (String, usize) {
    let mut r = pg.sibling(name);
    let at = walship::restore::when::format_ms(ms);
    let o = walship_in(
        pg,
        &[
            "pg-restore",
            "--timestamp",
            &at,
            r.pgdata.to_str().unwrap(),
            &b.url,
        ],
        b,
    );
    assert_success(&o, &format!("pg-restore {name}"));
    r.start(&[("archive_mode", "off".into())], &b.env);
    let done = wait_for(Duration::from_secs(120), Duration::from_millis(250), || {
        r.try_psql("SELECT pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert!(done, "{name}: recovery did not finish:\n{}", r.log());
    let h = r.psql(&format!("SELECT {PGBENCH_HASH}"));
    r.stop();
    (h, r.log().matches("fetched from the prefetch").count())
}
