//! Bad input gets a clear error naming the problem and a non-zero exit, and nothing in the
//! replica or at the restore target is damaged.

use crate::support::*;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

#[track_caller]
fn assert_fails_naming(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr does not name {n:?}:\n{err}");
    }
}

fn replicate_with_config(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Output {
    let cfg = dir.join("walship.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut cmd = std::process::Command::new(walship_bin());
    cmd.args(["replicate", "--config", cfg.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn malformed_yaml_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = replicate_with_config(dir.path(), "dbs:\n  - path: [unclosed\n", &[]);
    assert_fails_naming(&o, &["malformed YAML", "walship.yml"]);
}

#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = replicate_with_config(
        dir.path(),
        "dbs:\n  - path: /tmp/x.db\n    spool-limt: 1MB\n    replica:\n      url: file:///tmp/r\n",
        &[],
    );
    // A near-miss of a walship-only key is an error naming it and the key meant.
    assert_fails_naming(&o, &["spool-limt", "spool-limit"]);
}

#[test]
fn missing_variables_are_all_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = replicate_with_config(
        dir.path(),
        "dbs:\n  - path: ${WALSHIP_T_DB}\n    replica:\n      url: s3://${WALSHIP_T_BUCKET}/x\n",
        &[],
    );
    assert_fails_naming(&o, &["WALSHIP_T_BUCKET", "WALSHIP_T_DB"]);
}

#[test]
fn literal_secret_in_config_is_refused_with_strict_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let o = replicate_with_config(
        dir.path(),
        "strict-secrets: true\ndbs:\n  - path: /tmp/x.db\n    replica:\n      url: s3://b/x\n      secret-access-key: sekrit\n",
        &[],
    );
    assert_fails_naming(&o, &["secret-access-key", "AWS_SECRET_ACCESS_KEY"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("sekrit"));
}

#[test]
fn database_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    let b = Backend::file(&dir.path().join("r"));
    let o = walship(&["replicate", db.to_str().unwrap(), &b.url], None);
    assert_fails_naming(&o, &["missing.db", "does not exist"]);
    assert!(!db.exists(), "walship must not create the database");
}

#[test]
fn database_not_in_wal_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rollback.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let b = Backend::file(&dir.path().join("r"));
    let o = walship(&["replicate", db.to_str().unwrap(), &b.url], None);
    assert_fails_naming(
        &o,
        &["rollback.db", "not in WAL mode", "journal_mode=delete"],
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "walship must not change the journal mode");
}

#[test]
fn unreachable_endpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_db(&db);
    let port = free_port(); // nothing listens there
    let b = Backend::s3_at(&format!("http://127.0.0.1:{port}"), "bucket", "x");
    let o = walship(&["replicate", db.to_str().unwrap(), &b.url], Some(&b));
    assert_fails_naming(&o, &["s3://bucket/x", "unreachable"]);
}

#[test]
fn missing_bucket_is_named() {
    let Some(real) = Backend::s3("missing_bucket") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_db(&db);
    let b = Backend {
        url: format!("s3://walship-no-such-bucket-{}/x", unique()),
        ..real
    };
    let o = walship(&["replicate", db.to_str().unwrap(), &b.url], Some(&b));
    assert_fails_naming(&o, &["walship-no-such-bucket", "bucket does not exist"]);
}

#[test]
fn wrong_credentials_are_named() {
    let Some(real) = Backend::s3("wrong_credentials") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_db(&db);
    let b = Backend {
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), "walship".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()),
        ],
        ..real
    };
    let o = walship(&["replicate", db.to_str().unwrap(), &b.url], Some(&b));
    assert_fails_naming(&o, &["credentials were refused", "AWS_SECRET_ACCESS_KEY"]);
}

#[test]
fn restore_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let (db, backend) = replicated(dir.path(), Backend::file(&dir.path().join("r")));
    let out = dir.path().join("existing.db");
    std::fs::write(&out, b"precious").unwrap();
    let o = restore(&backend, &out);
    assert_fails_naming(&o, &["existing.db", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let o = walship(
        &[
            "restore",
            "--force",
            "-o",
            out.to_str().unwrap(),
            &backend.url,
        ],
        Some(&backend),
    );
    assert_success(&o, "restore --force");
    assert_same_content(&db, &out);
}

/// Replicate a small database and stop cleanly; returns its path and the backend.
fn replicated(dir: &Path, backend: Backend) -> (std::path::PathBuf, Backend) {
    replicated_with(dir, backend, &[], "300")
}

fn replicated_with(
    dir: &Path,
    backend: Backend,
    extra: &[&str],
    tx: &str,
) -> (std::path::PathBuf, Backend) {
    let db = dir.join("app.db");
    create_db(&db);
    let rep = Replicator::start(&db, &backend, extra, &dir.join("w.log"));
    let report = dir.join("report.json");
    let w = start_writer(
        &db,
        &[
            "--tx",
            tx,
            "--rate",
            "300",
            "--report",
            report.to_str().unwrap(),
        ]
        .map(String::from),
    );
    finish_writer(w, &report);
    assert!(rep.terminate(std::time::Duration::from_secs(30)).success());
    (db, backend)
}

/// Damage the first object (in name order) whose name ends with `suffix`; returns its
/// file name.
fn damage_first(backend: &Backend, suffix: &str, damage: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let store = object_store_for(backend);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let (store, prefix) = &store;
        let mut all: Vec<_> = store.list(Some(prefix)).try_collect().await.unwrap();
        all.sort_by(|a, b| a.location.cmp(&b.location));
        let obj = all
            .iter()
            .map(|m| m.location.clone())
            .find(|l| l.as_ref().ends_with(suffix))
            .expect("an object to damage");
        let bytes = store.get(&obj).await.unwrap().bytes().await.unwrap();
        store.put(&obj, damage(&bytes).into()).await.unwrap();
        obj.as_ref().rsplit('/').next().unwrap().to_string()
    })
}

/// A damaged object makes restore fail naming that object, and leaves no file behind.
fn corrupt_object_named(backend: Backend, dir: &Path, damage: impl Fn(&[u8]) -> Vec<u8>) {
    let (_, backend) = replicated(dir, backend);
    let key = damage_first(&backend, ".seg", damage);
    let out = dir.join("out.db");
    let o = restore(&backend, &out);
    assert_fails_naming(&o, &["corrupt object", &key]);
    assert!(
        !out.exists(),
        "a failed restore must not leave a file at the target"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("walship-restore"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary restore files left: {leftovers:?}"
    );
}

fn flip_middle(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    let i = v.len() / 2;
    v[i] ^= 0x55;
    v
}

fn truncate_tail(b: &[u8]) -> Vec<u8> {
    b[..b.len() - 7].to_vec()
}

on_each_backend!(
    corrupt_segment_is_named_file,
    corrupt_segment_is_named_s3,
    "corrupt",
    |b: Backend, dir: &Path| corrupt_object_named(b, dir, flip_middle)
);

on_each_backend!(
    truncated_segment_is_named_file,
    truncated_segment_is_named_s3,
    "truncated",
    |b: Backend, dir: &Path| corrupt_object_named(b, dir, truncate_tail)
);

#[test]
fn restore_of_empty_replica_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("r")).unwrap();
    let b = Backend::file(&dir.path().join("r"));
    let o = restore(&b, &dir.path().join("out.db"));
    assert_fails_naming(&o, &["no generations"]);
}

/// `verify` passes on a sound replica, and fails naming the object when an older snapshot
/// (one the newest restore does not even read) or a segment is damaged.
fn verify_finds_damage(backend: Backend, dir: &Path) {
    let (_, backend) = replicated_with(dir, backend, &["--snapshot-interval", "1s"], "1200");
    let o = walship(&["verify", "--json", &backend.url], Some(&backend));
    assert_success(&o, "verify of a sound replica");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["objects"].as_u64().unwrap() >= 4, "{r}");
    let snaps = walship(&["snapshots", "--json", &backend.url], Some(&backend));
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&snaps.stdout).unwrap();
    assert!(snaps.len() >= 2, "need an older snapshot: {snaps:?}");

    let key = damage_first(&backend, ".snap", flip_middle);
    let out = dir.join("still-fine.db");
    assert_success(
        &restore(&backend, &out),
        "restore does not read the old snapshot",
    );
    let o = walship(&["verify", &backend.url], Some(&backend));
    assert_fails_naming(&o, &["corrupt object", &key]);
}

fn verify_finds_a_damaged_segment(backend: Backend, dir: &Path) {
    let (_, backend) = replicated(dir, backend);
    assert_success(
        &walship(&["verify", &backend.url], Some(&backend)),
        "verify",
    );
    let key = damage_first(&backend, ".seg", truncate_tail);
    let o = walship(&["verify", &backend.url], Some(&backend));
    assert_fails_naming(&o, &["corrupt object", &key]);
}

#[test]
fn verify_finds_damage_file() {
    let dir = tempfile::tempdir().unwrap();
    verify_finds_damage(Backend::file(&dir.path().join("r")), dir.path());
    let dir = tempfile::tempdir().unwrap();
    verify_finds_a_damaged_segment(Backend::file(&dir.path().join("r")), dir.path());
}

#[test]
fn verify_finds_damage_s3() {
    let (Some(a), Some(b)) = (Backend::s3("verify-snap"), Backend::s3("verify-seg")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    verify_finds_damage(a, dir.path());
    let dir = tempfile::tempdir().unwrap();
    verify_finds_a_damaged_segment(b, dir.path());
}

/// `validation-interval` in the sidecar: the metrics say the replica verifies, then, once
/// a segment is damaged, that it does not, and the log names the object.
#[test]
fn validation_interval_reports_damage() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::file(&dir.path().join("r"));
    let db = dir.path().join("app.db");
    create_db(&db);
    let addr = format!("127.0.0.1:{}", free_port());
    let rep = Replicator::start(
        &db,
        &backend,
        &["--validation-interval", "1s", "--addr", &addr],
        &dir.path().join("w.log"),
    );
    let report = dir.path().join("report.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "300",
            "--rate",
            "300",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    finish_writer(w, &report);
    let ok = |want: f64| {
        wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            crate::sqlite_core::metric(&addr, "walship_validation_ok") == want
        })
    };
    assert!(ok(1.0), "validation never passed: {}", rep.log_text());
    let key = damage_first(&backend, ".seg", flip_middle);
    assert!(ok(0.0), "damage not reported: {}", rep.log_text());
    assert!(rep.log_text().contains(&key), "log does not name {key}");
    assert!(rep.terminate(Duration::from_secs(30)).success());
}

/// `verify --live` beside a running replicator: equal to the live database at the same
/// WAL position; after a page of the live file is changed behind SQLite's back (a table
/// the application no longer writes, so its page is in the file, not the WAL), it fails
/// naming the table, and the replica is untouched.
fn verify_compares_with_live(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE ledger(id INTEGER PRIMARY KEY, note TEXT NOT NULL);
         INSERT INTO ledger(note) VALUES ('walship-tamper-marker-AAAA');
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(c);
    let log = dir.join("walship.log");
    let rep = Replicator::start(&db, &backend, &["--sync-interval", "200ms"], &log);
    run_writer(&db, dir, &["--tx", "400", "--seed", "5", "--rate", "0"]);
    let live = db.to_str().unwrap();
    // Shipped within the sync interval; verify tries again itself if it was not yet.
    std::thread::sleep(Duration::from_millis(1500));
    let o = walship(
        &["verify", "--json", "--live", live, &backend.url],
        Some(&backend),
    );
    assert_success(&o, "verify --live");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["live"]["result"], "equal", "{r}");
    assert!(r["live"]["rows"].as_u64().unwrap() > 400, "{r}");

    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes
        .windows(26)
        .position(|w| w == b"walship-tamper-marker-AAAA")
        .expect("the ledger row is in the database file");
    bytes[at + 22..at + 26].copy_from_slice(b"BBBB");
    std::fs::write(&db, &bytes).unwrap();
    let o = walship(&["verify", "--live", live, &backend.url], Some(&backend));
    assert_fails_naming(&o, &["differs from the replica", "ledger", live]);
    // --no-live skips the comparison: the replica itself is sound.
    let o = walship(
        &["verify", "--no-live", "--live", live, &backend.url],
        Some(&backend),
    );
    assert!(
        !o.status.success(),
        "--live and --no-live together must be refused"
    );
    assert_success(
        &walship(&["verify", &backend.url], Some(&backend)),
        "verify without the live database",
    );
    drop(rep);
}

on_each_backend!(
    verify_compares_with_live_file,
    verify_compares_with_live_s3,
    "verifylive",
    |b: Backend, dir: &Path| verify_compares_with_live(b, dir)
);

/// A segment missing in the middle of the newest generation: restore (and the init
/// container) fails naming the missing transactions and the objects around them, writes
/// nothing, and only with --allow-older restores the newest state that can be assembled,
/// saying how far behind it is. It used to exit 0 with a WARN and an older state.
fn missing_middle_segment(backend: &Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let rep = Replicator::start(
        &db,
        backend,
        &["--sync-interval", "200ms"],
        &dir.join("w.log"),
    );
    std::thread::sleep(Duration::from_millis(800));
    for seed in 1..=4 {
        let d = dir.join(format!("w{seed}"));
        std::fs::create_dir_all(&d).unwrap();
        run_writer(
            &db,
            &d,
            &["--tx", "30", "--seed", &seed.to_string(), "--rate", "300"],
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(rep.terminate(Duration::from_secs(30)).success());
    let segs: Vec<String> = list_objects(backend)
        .into_keys()
        .filter(|k| k.ends_with(".seg"))
        .collect();
    assert!(segs.len() >= 3, "{segs:?}");
    let victim = &segs[segs.len() / 2];
    delete_object(backend, victim);
    let out = dir.join("restored.db");
    let o = restore(backend, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "restore with a missing segment succeeded: {err}"
    );
    assert!(
        err.contains("cannot be assembled")
            && err.contains("missing transactions")
            && err.contains("--allow-older"),
        "{err}"
    );
    assert!(!out.exists(), "nothing may be written");
    // The init container obeys the same rule: the pod fails rather than start on old data.
    let init = init_restore(backend, &out);
    assert!(!init.status.success(), "init mode restored an older state");
    assert!(!out.exists());
    // Opted in: the newest state that can be assembled, and how far behind it is.
    let o = walship(
        &[
            "restore",
            "--allow-older",
            "-o",
            out.to_str().unwrap(),
            &backend.url,
        ],
        Some(backend),
    );
    assert_success(&o, "restore --allow-older");
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("older state") && said.contains("behind"),
        "{said}"
    );
    let at: u64 = said
        .split("; restoring transaction ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no txid in: {said}"));
    let generation = victim.split('/').nth(1).unwrap();
    let exact = dir.join("exact.db");
    let o = walship(
        &[
            "restore",
            "--generation",
            generation,
            "--txid",
            &at.to_string(),
            "-o",
            exact.to_str().unwrap(),
            &backend.url,
        ],
        Some(backend),
    );
    assert_success(&o, "restore --txid");
    assert_same_content(&exact, &out);
}

on_each_backend!(
    missing_middle_segment_file,
    missing_middle_segment_s3,
    "missing_segment",
    |b: Backend, dir: &Path| missing_middle_segment(&b, dir)
);

/// Real fly.io, Backblaze and Tigris configs write the endpoint without a scheme: it means
/// `https://` (as in Litestream), never a panic. Against a closed local port the error
/// names the endpoint it tried.
#[test]
fn an_endpoint_without_a_scheme_is_https() {
    let port = free_port();
    let o = std::process::Command::new(walship_bin())
        .args([
            "generations",
            "s3://bucket/p",
            "--endpoint",
            &format!("127.0.0.1:{port}"),
        ])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .output()
        .unwrap();
    assert_ne!(
        o.status.code(),
        Some(134),
        "a panic: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_fails_naming(&o, &[&format!("https://127.0.0.1:{port}"), "unreachable"]);
    // Values that are no URL at all are refused by name (they panicked object_store).
    for bad in ["", "https://", "x y"] {
        let o = std::process::Command::new(walship_bin())
            .args(["generations", "s3://bucket/p", "--endpoint", bad])
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_fails_naming(&o, &[&format!("endpoint {bad:?} is not a URL")]);
    }
}
