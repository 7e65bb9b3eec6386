//! The PostgreSQL sidecar (`walship replicate` with `type: postgres`): look-ahead
//! archiving, backups on an interval, a kill mid-upload, and one sidecar for both engines.

use super::*;

pub(crate) fn pg_sidecar(mut pg: Pg, b: &Backend) {
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = sidecar_config(&pg, b, "walship", &addr);
    let cmd = format!(
        "{} wal-push %p --config {}",
        pg.walship.display(),
        cfg.display()
    );
    let set_archive_command = |pg: &Pg, c: &str| {
        pg.psql(&format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            c.replace('\'', "''")
        ));
        pg.psql("SELECT pg_reload_conf()");
    };
    pg.start(
        &[
            ("archive_mode", "on".into()),
            ("archive_command", cmd.clone()),
            ("wal_level", "replica".into()),
        ],
        &b.env,
    );
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    let log_path = pg.root.join("sidecar.log");
    let mut sidecar = start_sidecar(&pg, b, &cfg, &log_path, &[]);
    let sidecar_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let backed_up = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        list_objects(b)
            .keys()
            .any(|k| k.contains("/basebackups/") && k.ends_with("manifest.json"))
    });
    assert!(
        backed_up,
        "no base backup from the sidecar:\n{}",
        sidecar_log()
    );
    // (pg_backup_stop waits for the archiver, so the archiver is held back only now.)
    set_archive_command(&pg, "false");
    for i in 0..24 {
        insert_batch(&pg, 100 + i);
        pg.psql("SELECT pg_switch_wal()");
    }
    let ahead = || sidecar_log().matches("archived ahead").count();
    let shipped = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        ahead() >= 24
    });
    assert!(
        shipped,
        "the sidecar archived only {} ahead (archive_status: {:?}):\n{}\n{}",
        ahead(),
        std::fs::read_dir(pg.pgdata.join("pg_wal/archive_status")).map(|d| d
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect::<Vec<_>>()),
        pg.log(),
        sidecar_log()
    );
    // A base backup cannot finish while the archiver fails: an error naming the cause,
    // within the stop timeout, not a backup that hangs.
    let conn = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let o = walship_in(
        &pg,
        &[
            "pg-backup",
            &b.url,
            "--pgdata",
            pg.pgdata.to_str().unwrap(),
            "--connection",
            &conn,
            "--stop-timeout",
            "3s",
        ],
        b,
    );
    assert!(!o.status.success(), "pg-backup succeeded without archiving");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pg_backup_stop") && err.contains("archive_command"),
        "{err}"
    );
    set_archive_command(&pg, &cmd);
    wait_archived(&pg);
    // The sidecar's own retention runs (a day's window: nothing to delete yet).
    let m = crate::support::http_get(&addr, "/metrics");
    let ok_runs: f64 = m
        .lines()
        .find(|l| l.starts_with("walship_retention_runs_total") && l.contains("kind=\"ok\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(ok_runs >= 1.0, "{m}\n{}", sidecar_log());
    let noted = pg.log().matches("NotedBySidecar").count();
    eprintln!(
        "sidecar: {} WAL files archived ahead; wal-push answered {noted} from notes",
        ahead()
    );
    assert!(
        noted >= 24,
        "wal-push found the sidecar's note {noted} times:\n{}",
        pg.log()
    );
    // A burst with the archiver running beside the sidecar: each file is uploaded once;
    // wal-push waits for the sidecar's note instead of racing it (before upload claims,
    // a quarter of a burst went up twice, each loser paying a GET to compare).
    for i in 0..12 {
        insert_batch(&pg, 200 + i);
        pg.psql("SELECT pg_switch_wal()");
    }
    wait_archived(&pg);
    let log = pg.log();
    assert_eq!(
        log.matches("outcome=AlreadyArchived").count(),
        0,
        "wal-push uploaded a file the sidecar had uploaded:\n{log}"
    );
    let h = table_hash(&pg);
    let markers = pg.root.join(".data-walship/archived");
    let cleaned = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        std::fs::read_dir(&markers).is_ok_and(|d| d.count() == 0)
    });
    assert!(cleaned, "notes left in {}", markers.display());
    let status = sidecar.terminate();
    assert!(
        status.success(),
        "sidecar exit {status}:\n{}",
        sidecar_log()
    );
    assert_eq!(restore_and_hash(&pg, b, "restored", None), h);
}

on_each_backend_pg!(
    pg_sidecar_file,
    pg_sidecar_s3,
    "pgsidecar",
    |pg: Pg, b: &Backend| pg_sidecar(pg, b)
);

/// A sidecar SIGKILLed while it uploads a segment (the store stopped mid-request) leaves
/// its claim; restarted, it takes the claim over at once (the dead owner holds no lock)
/// and archives the segment, instead of waiting 30 s for the claim to go stale.
#[test]
fn pg_sidecar_killed_mid_upload_resumes_at_once() {
    let Some(mut pg) = Pg::init("pg_sidecar_killed_mid_upload_resumes_at_once") else {
        return;
    };
    let Some(s3) = PrivateS3::start("pg_sidecar_killed_mid_upload_resumes_at_once") else {
        return;
    };
    let b = s3.backend(&unique());
    start_without_archiver(&mut pg, &b.env);
    let cfg = pg.root.join("walship.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    type: postgres\n    replica:\n      url: {}\n      endpoint: {}\n",
            pg.pgdata.display(),
            b.url,
            b.flags[1]
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    let log = pg.root.join("sidecar.log");
    let mut sc = start_sidecar(&pg, &b, &cfg, &log, &[]);
    let started = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("PostgreSQL sidecar"))
    });
    assert!(started, "{}", std::fs::read_to_string(&log).unwrap());
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    s3.pause();
    insert_batch(&pg, 1);
    let seg = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let claim = pg
        .root
        .join(format!(".data-walship/archived/{seg}.uploading"));
    let claimed = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        claim.exists()
    });
    assert!(claimed, "{}", std::fs::read_to_string(&log).unwrap());
    sc.kill();
    assert!(claim.exists(), "the killed sidecar's claim is gone");
    s3.resume_paused();
    let restarted = Instant::now();
    let _sc = start_sidecar(&pg, &b, &cfg, &log, &[]);
    let note = pg.root.join(format!(".data-walship/archived/{seg}"));
    let done = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        note.exists()
    });
    let took = restarted.elapsed();
    assert!(done, "{}", std::fs::read_to_string(&log).unwrap());
    eprintln!("segment {seg} archived {took:?} after the restart");
    assert!(
        took < Duration::from_secs(15),
        "the restarted sidecar waited {took:?} for its own dead claim"
    );
    let key = format!("generations/{}/pgwal/{seg}", generation_of_cluster(&pg).1);
    assert!(list_objects(&b).contains_key(&key), "{key} not archived");
}

/// One sidecar for a SQLite database and a PostgreSQL cluster (one config): `/healthz`
/// covers both engines (503 once the cluster's replica is down, though SQLite's is fine),
/// and SIGTERM with both replicas stalled exits within one `shutdown-timeout`, not one per
/// engine.
#[test]
fn one_sidecar_for_both_engines() {
    let Some(mut pg) = Pg::init("one_sidecar_for_both_engines") else {
        return;
    };
    let (Some(s3_sqlite), Some(mut s3_pg)) = (
        PrivateS3::start("one_sidecar_for_both_engines"),
        PrivateS3::start("one_sidecar_for_both_engines"),
    ) else {
        return;
    };
    let (b_sqlite, b_pg) = (s3_sqlite.backend("lite"), s3_pg.backend("pg"));
    start_without_archiver(&mut pg, &b_pg.env);
    let db = pg.root.join("app.db");
    create_db(&db);
    chown_to_postgres(&db);
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = pg.root.join("both.yml");
    std::fs::write(
        &cfg,
        format!(
            "addr: {addr}\nunhealthy-after: 3s\nshutdown-timeout: 4s\ndbs:\n  - path: {}\n    replica:\n      url: {}\n      endpoint: {}\n  - path: {}\n    type: postgres\n    replica:\n      url: {}\n      endpoint: {}\n",
            db.display(),
            b_sqlite.url,
            s3_sqlite.endpoint,
            pg.pgdata.display(),
            b_pg.url,
            s3_pg.endpoint,
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    let log = pg.root.join("both.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut sc = start_sidecar(&pg, &b_pg, &cfg, &log, &[]);
    let up = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        std::net::TcpStream::connect(&addr).is_ok()
            && crate::support::http_get(&addr, "/healthz").starts_with("HTTP/1.1 200")
    });
    assert!(up, "{}", text());
    // The cluster's replica goes away: unhealthy, naming the cluster.
    s3_pg.stop();
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    pg.psql("SELECT pg_switch_wal()");
    let pgdata = pg.pgdata.display().to_string();
    let unhealthy = wait_for(Duration::from_secs(90), Duration::from_millis(500), || {
        let h = crate::support::http_get(&addr, "/healthz");
        h.starts_with("HTTP/1.1 503") && h.contains(&pgdata)
    });
    assert!(
        unhealthy,
        "{}\n{}",
        crate::support::http_get(&addr, "/healthz"),
        text()
    );
    // Both replicas stalled, both engines with something to ship: one deadline.
    s3_sqlite.pause();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute(
        "INSERT INTO items(k, v, n) VALUES ('late', randomblob(200), 1)",
        [],
    )
    .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let status = sc.terminate();
    let took = t.elapsed();
    s3_sqlite.resume_paused();
    eprintln!("both engines stalled: exited {status} {took:?} after SIGTERM");
    assert!(
        !status.success(),
        "unshipped commits, yet exit 0:\n{}",
        text()
    );
    assert!(
        took < Duration::from_millis(6500),
        "shutdown took {took:?} with a 4 s shutdown-timeout:\n{}",
        text()
    );
    assert!(
        text().contains("before the shutdown deadline"),
        "{}",
        text()
    );
}
