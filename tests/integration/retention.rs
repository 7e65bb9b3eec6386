//! Retention and `walship cleanup`, against file:// and the real S3 server: a simulated week
//! of generations (walship's clock shifted with WALSHIP_CLOCK_OFFSET, no real waiting)
//! cleaned to a 72 h window; cleanup racing a replicator and restores; prefix mode with
//! one database walship cannot read.

use crate::support::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use walship::restore::when::format_ms;

const H: u64 = 3_600_000;

fn with_clock(b: &Backend, hours_ago: u64) -> Backend {
    let mut b = b.clone();
    b.env
        .push(("WALSHIP_CLOCK_OFFSET".into(), format!("-{hours_ago}h")));
    b
}

/// One stretch of history: walship runs with its clock `hours_ago` behind while the writer
/// makes `tx` commits, then stops. Returns the commits stamped in walship's clock.
fn phase(
    db: &Path,
    backend: &Backend,
    dir: &Path,
    k: usize,
    hours_ago: u64,
    tx: u32,
) -> Vec<Commit> {
    let b = with_clock(backend, hours_ago);
    let log = dir.join(format!("walship-{k}.log"));
    let rep = Replicator::start(
        db,
        &b,
        &["--snapshot-interval", "1s", "--retention", "0s"],
        &log,
    );
    // Commits made before walship's first look are stamped when it first sees them.
    std::thread::sleep(Duration::from_millis(1000));
    let (record, report) = (
        dir.join(format!("record-{k}.txt")),
        dir.join(format!("report-{k}.json")),
    );
    let w = start_writer(
        db,
        &strs(&[
            "--tx",
            &tx.to_string(),
            "--seed",
            &k.to_string(),
            "--rate",
            "40",
            "--quiet-every",
            "8",
            "--quiet-ms",
            "500",
            "--record",
            record.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    finish_writer(w, &report);
    std::thread::sleep(Duration::from_millis(1500));
    let status = rep.terminate(Duration::from_secs(30));
    assert!(status.success(), "walship exited {status}");
    read_record(&record)
        .into_iter()
        .map(|c| Commit {
            ms: c.ms - hours_ago * H,
            hash: c.hash,
        })
        .collect()
}

/// The app resets its WAL while walship is down: the next run cannot prove continuity and
/// starts a new generation.
fn reset_wal(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

fn generation_ids(b: &Backend) -> Vec<String> {
    let o = walship(&["generations", "--json", &b.url], Some(b));
    assert_success(&o, "generations");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_str().unwrap().to_string())
        .collect()
}

fn cleanup_json(b: &Backend, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["cleanup", "--json"];
    args.extend_from_slice(extra);
    args.push(&b.url);
    let o = walship(&args, Some(b));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        o.status.success(),
        v,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn restore_at(b: &Backend, out: &Path, ms: u64) -> std::process::Output {
    let _ = std::fs::remove_file(out);
    walship(
        &[
            "restore",
            "--timestamp",
            &format_ms(ms),
            "-o",
            out.to_str().unwrap(),
            &b.url,
        ],
        Some(b),
    )
}

fn simulated_week(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    // (hours ago, a new generation?): six runs, five generations; the third generation
    // spans 96 h and 80 h ago, across the 72 h window's start.
    let phases = [
        (168, true),
        (132, true),
        (96, true),
        (80, false),
        (48, true),
        (12, true),
    ];
    let mut commits = Vec::new();
    for (k, &(hours, new_generation)) in phases.iter().enumerate() {
        if new_generation && k > 0 {
            reset_wal(&db);
        }
        commits.push(phase(&db, &backend, dir, k, hours, 40));
    }
    let gens = generation_ids(&backend);
    assert_eq!(gens.len(), 5, "{gens:?}");
    let before = list_objects(&backend);

    // Dry run: a plan, nothing deleted.
    let (ok, dry, err) = cleanup_json(&backend, &["--retention", "72h", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(dry["databases"][0]["deleted_objects"].as_u64().unwrap() > 0);
    assert_eq!(
        list_objects(&backend),
        before,
        "a dry run deleted something"
    );

    let (ok, rep, err) = cleanup_json(&backend, &["--retention", "72h"]);
    assert!(ok, "{err}");
    let d = &rep["databases"][0];
    let plan = &d["plan"];
    let actions: Vec<&str> = plan["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["delete", "delete", "trim", "keep", "keep"],
        "{plan}"
    );
    let window_start = plan["window_start_ms"].as_u64().unwrap();
    eprintln!(
        "week {}: deleted {} objects ({} bytes) in {} DELETE and {} LIST requests",
        backend.url,
        d["deleted_objects"],
        d["deleted_bytes"],
        rep["delete_requests"],
        rep["list_requests"]
    );

    // The bucket holds exactly what the plan keeps.
    let after = list_objects(&backend);
    let deleted: HashSet<String> = plan["generations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["delete"].as_array().unwrap())
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeMap<String, u64> = before
        .iter()
        .filter(|(k, _)| !deleted.contains(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(after, expected);
    let kept_bytes: u64 = plan["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["kept_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(after.values().sum::<u64>(), kept_bytes);
    assert_eq!(
        before.values().sum::<u64>() - kept_bytes,
        d["deleted_bytes"].as_u64().unwrap()
    );
    // Nothing outside the window remains: the two old generations are gone whole, and
    // the third keeps one snapshot at or before the window's start.
    for g in &gens[..2] {
        assert!(!after.keys().any(|k| k.contains(g.as_str())), "{g} remains");
    }
    let snaps: Vec<&String> = after
        .keys()
        .filter(|k| k.contains(gens[2].as_str()) && k.contains("/snapshots/"))
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");

    // Every instant inside the window restores exactly: commits followed by a quiet
    // spell in the two runs inside it, and the window's start itself (the state the
    // third generation had then: the end of the run 80 h ago).
    let out = dir.join("restored.db");
    let mut checked = 0;
    for run in commits.iter().skip(4) {
        let quiet: Vec<&Commit> = run
            .windows(2)
            .filter(|w| w[1].ms >= w[0].ms + 450)
            .map(|w| &w[0])
            .chain(run.last())
            .collect();
        for c in quiet {
            let _ = std::fs::remove_file(&out);
            let o = restore_at(&backend, &out, c.ms + 300);
            // After a run's last commit, when the next run began a new generation (the
            // WAL reset while walship was down), the instant is in no generation; it is
            // exact anyway because the old walship watched the WAL for more than 300 ms
            // after that commit before its SIGTERM, and the next generation's manifest
            // carries that watch stamp (docs/RESTORE.md). The window's start, below, lies
            // past any stamp and is refused.
            assert_success(&o, "restore inside the window");
            assert_eq!(content_hash(&out), c.hash, "at {}", format_ms(c.ms + 300));
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} instants checked");
    // The window's start lies after the third generation's end (80 h ago) and before the
    // fourth began (the WAL was reset meanwhile): refused, and --allow-older restores the
    // nearest earlier point, the third generation's end, which retention kept.
    let o = restore_at(&backend, &out, window_start);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("cannot be restored exactly"), "{e}");
    let o = restore_older_at(&backend, &format_ms(window_start), &out);
    assert_success(&o, "restore --allow-older at the window's start");
    assert_eq!(content_hash(&out), commits[3].last().unwrap().hash);
    // Before the window: an error stating the window that exists.
    let o = restore_at(&backend, &out, commits[2][10].ms);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("before the oldest restorable point"), "{e}");
    // The newest state, and a second cleanup has nothing to do.
    assert_success(
        &restore(&backend, &{
            let _ = std::fs::remove_file(&out);
            out.clone()
        }),
        "restore",
    );
    assert_eq!(content_hash(&out), content_hash(&db));
    let (ok, again, err) = cleanup_json(&backend, &["--retention", "72h"]);
    assert!(ok, "{err}");
    assert_eq!(again["databases"][0]["deleted_objects"], 0);
}

on_each_backend!(
    cleanup_over_a_simulated_week_file,
    cleanup_over_a_simulated_week_s3,
    "week",
    |b: Backend, dir: &Path| simulated_week(b, dir)
);

/// 100 rounds of `cleanup` with a 3 s window beside a replicator (snapshots every second,
/// its own retention with a 6 s window every second too) and restores of the newest state
/// and of a second ago: nothing fails, every restore is a state the writer recorded.
fn races(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let mut states: HashSet<String> = HashSet::from([content_hash(&db)]);
    let (record, log) = (dir.join("record.txt"), dir.join("walship.log"));
    let rep = Replicator::start(
        &db,
        &backend,
        &[
            "--snapshot-interval",
            "1s",
            "--retention",
            "6s",
            "--retention-check-interval",
            "1s",
        ],
        &log,
    );
    let mut writer = start_writer(
        &db,
        &strs(&[
            "--tx",
            "1000000",
            "--rate",
            "50",
            "--record",
            record.to_str().unwrap(),
        ]),
    );
    std::thread::sleep(Duration::from_secs(4));
    let mut deleted = 0;
    for round in 0..100 {
        // Paced so that the rounds span about 40 s of snapshots crossing the window.
        let paced = std::time::Instant::now() + Duration::from_millis(400);
        let cleanup = Command::new(walship_bin())
            .args(["cleanup", "--json", "--retention", "3s", &backend.url])
            .args(&backend.flags)
            .envs(backend.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = dir.join(format!("r{round}.db"));
        let o = if round % 2 == 0 {
            restore(&backend, &out)
        } else {
            restore_at(&backend, &out, now_ms() - 1000)
        };
        assert_success(&o, &format!("restore in round {round}"));
        let c = cleanup.wait_with_output().unwrap();
        assert!(
            c.status.success(),
            "cleanup in round {round}: {}",
            String::from_utf8_lossy(&c.stderr)
        );
        let v: Value = serde_json::from_slice(&c.stdout).unwrap();
        deleted += u32::from(v["databases"][0]["deleted_objects"].as_u64().unwrap() > 0);
        let h = content_hash(&out);
        if !states.contains(&h) {
            states.extend(read_record(&record).into_iter().map(|c| c.hash));
        }
        assert!(
            states.contains(&h),
            "round {round}: the restored database is no state the writer made"
        );
        std::fs::remove_file(&out).unwrap();
        std::thread::sleep(paced.saturating_duration_since(std::time::Instant::now()));
    }
    eprintln!(
        "races {}: cleanup deleted objects in {deleted} of 100 rounds",
        backend.url
    );
    let _ = writer.kill();
    let _ = writer.wait();
    std::thread::sleep(Duration::from_millis(1500));
    let text = rep.log_text();
    let status = rep.terminate(Duration::from_secs(30));
    assert!(status.success(), "walship exited {status}");
    assert!(
        !text.contains("ERROR"),
        "the replicator logged errors:\n{text}"
    );
    assert!(
        deleted >= 15,
        "cleanup deleted something in only {deleted} rounds: no race tested"
    );
    let out = dir.join("final.db");
    assert_success(&restore(&backend, &out), "final restore");
    assert_same_content(&db, &out);
}

on_each_backend!(
    cleanup_races_replicate_and_restore_file,
    cleanup_races_replicate_and_restore_s3,
    "race",
    |b: Backend, dir: &Path| races(b, dir)
);

/// Three databases below one prefix, each with generations from 100 h and 50 h ago and one
/// from now; one holds an object walship cannot read. The other two are cleaned, the third is
/// named, the exit status is non-zero.
fn prefix_mode(root: Backend, dir: &Path) {
    let sub = |name: &str| Backend {
        url: format!("{}/{name}", root.url),
        ..root.clone()
    };
    for name in ["a", "b", "c"] {
        let db = dir.join(format!("{name}.db"));
        create_db(&db);
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, hours) in [100, 50, 0].into_iter().enumerate() {
            if k > 0 {
                reset_wal(&db);
            }
            phase(&db, &sub(name), &d, k, hours, 10);
        }
        assert_eq!(generation_ids(&sub(name)).len(), 3);
    }
    let b_gen = generation_ids(&sub("b"))[0].clone();
    put_object(
        &sub("b"),
        &format!("generations/{b_gen}/wal/notes.txt"),
        b"not walship's",
    );
    put_object(&root, "README.txt", b"foreign objects are left alone");
    let o = walship(&["cleanup", "--retention", "24h", &root.url], Some(&root));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "cleanup succeeded:\n{out}");
    let b_url = sub("b").url;
    assert!(
        out.contains(&format!("{b_url}: FAILED")) && out.contains("notes.txt"),
        "{out}"
    );
    assert!(err.contains(&b_url), "the error names the database: {err}");
    // The generation from 100 h ago goes; the one from 50 h ago holds the window's start.
    for name in ["a", "c"] {
        let g = generation_ids(&sub(name));
        assert_eq!(g.len(), 2, "{name} was not cleaned: {g:?}");
    }
    assert_eq!(generation_ids(&sub("b")).len(), 3, "b was touched");
    assert!(list_objects(&root).contains_key("README.txt"));
}

on_each_backend!(
    cleanup_prefix_mode_file,
    cleanup_prefix_mode_s3,
    "prefix",
    |b: Backend, dir: &Path| prefix_mode(b, dir)
);

/// The replicator's own retention (2 s window, checked every second) trims its generation
/// while it runs; the newest state still restores.
fn replicator_retention(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let rep = Replicator::start(
        &db,
        &backend,
        &[
            "--snapshot-interval",
            "1s",
            "--retention",
            "2s",
            "--retention-check-interval",
            "1s",
        ],
        &dir.join("walship.log"),
    );
    let report = dir.join("report.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "400",
            "--rate",
            "50",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    finish_writer(w, &report);
    std::thread::sleep(Duration::from_millis(2500));
    let status = rep.terminate(Duration::from_secs(30));
    assert!(status.success(), "walship exited {status}");
    let objects = list_objects(&backend);
    let snaps: Vec<&String> = objects
        .keys()
        .filter(|k| k.contains("/snapshots/"))
        .collect();
    // About 8 s of writes made about 8 snapshots; a 2 s window keeps 2 or 3 of them.
    assert!(
        !snaps.is_empty() && snaps.len() <= 4,
        "retention did not trim: {snaps:?}"
    );
    assert!(
        !snaps
            .iter()
            .any(|k| k.contains("/snapshots/0000000000000000-")),
        "the generation's first snapshot is still there: {snaps:?}"
    );
    let out = dir.join("restored.db");
    assert_success(&restore(&backend, &out), "restore");
    assert_same_content(&db, &out);
}

on_each_backend!(
    replicator_applies_retention_file,
    replicator_applies_retention_s3,
    "repret",
    |b: Backend, dir: &Path| replicator_retention(b, dir)
);
