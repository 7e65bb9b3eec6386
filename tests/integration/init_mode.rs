//! The init container's restore: `--if-db-not-exists --if-replica-exists` over
//! {database present, absent} × {replica present, absent} × {first run, re-run after
//! success, re-run after a SIGKILL mid-restore}, against file:// and the real S3 server.
//! Every case ends with the right database and exit code, never a partial file.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INIT: &[&str] = &["--if-db-not-exists", "--if-replica-exists"];

fn init_restore(target: &Path, backend: &Backend) -> std::process::Output {
    let mut args = vec!["restore"];
    args.extend_from_slice(INIT);
    args.extend_from_slice(&["-o", target.to_str().unwrap(), &backend.url]);
    walship(&args, Some(backend))
}

/// A replica of a database big enough (≈ 40 MB, incompressible) that a restore can be
/// interrupted. Returns the source database.
fn make_replica(dir: &Path, backend: &Backend) -> std::path::PathBuf {
    let db = dir.join("source.db");
    create_db(&db);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
             INSERT INTO items(k, v, n) SELECT 'row' || i, randomblob(4000), i FROM n;
             INSERT INTO counters VALUES ('tx', 1);
             COMMIT;",
        )
        .unwrap();
    }
    let rep = Replicator::start(&db, backend, &[], &dir.join("replicate.log"));
    let ok = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        walship(&["generations", "--json", &backend.url], Some(backend))
            .stdout
            .windows(b"\"snapshots\": 1".len())
            .any(|w| w == b"\"snapshots\": 1")
    });
    assert!(ok, "replica did not receive the database");
    assert!(rep.terminate(Duration::from_secs(30)).success());
    db
}

fn tmp_path(target: &Path) -> std::path::PathBuf {
    target.with_file_name(format!(
        ".{}.walship-restore.tmp",
        target.file_name().unwrap().to_string_lossy()
    ))
}

/// Start an init restore and SIGKILL it as soon as its temporary file exists.
fn kill_mid_restore(target: &Path, backend: &Backend) {
    let mut child = Command::new(walship_bin())
        .args(["restore"])
        .args(INIT)
        .args(["-o", target.to_str().unwrap(), &backend.url])
        .args(&backend.flags)
        .envs(backend.env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = tmp_path(target);
    let until = Instant::now() + Duration::from_secs(30);
    while !tmp.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "restore finished before it could be interrupted"
        );
        assert!(Instant::now() < until, "no temporary file appeared");
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !target.exists(),
        "a restore killed midway left a file at the target path"
    );
}

fn init_matrix(backend: Backend, empty: Backend, dir: &Path) {
    let source = make_replica(dir, &backend);

    // Database absent, replica present: first run restores.
    let target = dir.join("a").join("app.db");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    assert_success(&init_restore(&target, &backend), "first init restore");
    assert_same_content(&source, &target);
    // Re-run after success: the database is there now, so nothing happens.
    let before = std::fs::read(&target).unwrap();
    let o = init_restore(&target, &backend);
    assert_success(&o, "init restore over an existing database");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "existing database touched"
    );

    // Re-run after a SIGKILL mid-restore: nothing partial at the target, then a full
    // restore (the stale temporary file is replaced).
    let target = dir.join("b").join("app.db");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    kill_mid_restore(&target, &backend);
    assert_success(
        &init_restore(&target, &backend),
        "init restore after a crash",
    );
    assert_same_content(&source, &target);
    assert!(!tmp_path(&target).exists(), "temporary file left behind");

    // Database present (the app's own data), replica present: untouched, every time.
    let target = dir.join("c").join("app.db");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    create_db(&target);
    let before = dump(&target);
    for _ in 0..2 {
        assert_success(&init_restore(&target, &backend), "init restore, db present");
        assert_eq!(dump(&target), before, "an existing database was replaced");
    }

    // Replica absent: no-op whether or not the database exists, on every run.
    let target = dir.join("d").join("app.db");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    for _ in 0..2 {
        let o = init_restore(&target, &empty);
        assert_success(&o, "init restore, no replica");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("nothing to restore"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !target.exists(),
            "a database appeared from an empty replica"
        );
    }
    create_db(&target);
    let before = dump(&target);
    assert_success(
        &init_restore(&target, &empty),
        "init restore, db present, no replica",
    );
    assert_eq!(dump(&target), before);

    // Without --if-replica-exists an empty replica is an error, not a silent no-op.
    let other = dir.join("e.db");
    let o = walship(
        &["restore", "-o", other.to_str().unwrap(), &empty.url],
        Some(&empty),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no generations") || err.contains("directory does not exist"),
        "{err}"
    );
}

#[test]
fn init_matrix_file() {
    let dir = scratch();
    let backend = Backend::file(&dir.path().join("replica"));
    let empty = Backend::file(&dir.path().join("no-replica-here"));
    init_matrix(backend, empty, dir.path());
    // An existing but empty replica directory is "no replica" too.
    let empty_dir = dir.path().join("empty-replica");
    std::fs::create_dir(&empty_dir).unwrap();
    let target = dir.path().join("f.db");
    assert_success(
        &init_restore(&target, &Backend::file(&empty_dir)),
        "init restore from an empty directory",
    );
    assert!(!target.exists());
}

#[test]
fn init_matrix_s3() {
    let (Some(backend), Some(empty)) = (Backend::s3("init"), Backend::s3("init-empty")) else {
        return;
    };
    let dir = scratch();
    init_matrix(backend, empty, dir.path());
}

/// An unreachable store is an error even with --if-replica-exists: the pod must not start
/// on an empty database because S3 was down.
#[test]
fn init_restore_fails_when_the_store_is_unreachable() {
    let dir = scratch();
    let port = free_port();
    let backend = Backend::s3_at(&format!("http://127.0.0.1:{port}"), "nobucket", "app");
    let target = dir.path().join("app.db");
    let o = init_restore(&target, &backend);
    assert!(!o.status.success(), "succeeded against a closed port");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!target.exists());
}

/// The init container of a Litestream runbook, as written: Go-style single-dash flags
/// (`restore -config F -if-db-not-exists -if-replica-exists DB`). Against an empty replica
/// it does nothing and exits 0; once the replica holds the database it restores it; on a
/// volume that has the database it leaves it alone.
#[test]
fn litestreams_init_container_command_line_runs_unchanged() {
    let dir = scratch();
    let backend = Backend::file(&dir.path().join("replica"));
    let target = dir.path().join("data").join("db.sqlite3");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let cfg = dir.path().join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      url: {}\n",
            target.display(),
            backend.url
        ),
    )
    .unwrap();
    let litestream_form = |extra: &[&str]| {
        let mut args = vec!["restore", "-config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(target.to_str().unwrap());
        walship(&args, None)
    };
    let init = ["-if-db-not-exists", "-if-replica-exists"];
    let o = litestream_form(&init);
    assert_success(&o, "init restore from an empty replica, Litestream's flags");
    assert!(!target.exists(), "nothing to restore: nothing created");

    let source = make_replica(dir.path(), &backend);
    let o = litestream_form(&init);
    assert_success(&o, "init restore, Litestream's flags");
    assert_same_content(&source, &target);

    // The volume has data now: a second run leaves it as it is.
    let before = std::fs::metadata(&target).unwrap().modified().unwrap();
    assert_success(
        &litestream_form(&init),
        "init restore on a volume with data",
    );
    assert_eq!(
        std::fs::metadata(&target).unwrap().modified().unwrap(),
        before
    );
}
