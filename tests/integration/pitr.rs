//! Point-in-time restore under crashes: the writer records (commit time, content hash)
//! after every commit while walship is SIGKILLed and restarted; restores to recorded
//! instants must equal the recorded state exactly, against file:// and the real S3 server.

use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};
use walship::restore::when::format_ms;

/// The suite runs 1 GB restores beside this test: give shipping on SIGTERM room.
const SHUTDOWN: &[&str] = &["--shutdown-timeout", "75s"];

/// How long after a commit the restore target lies; the writer's quiet spells are longer,
/// so the next commit comes after the target.
const AFTER_COMMIT_MS: u64 = 300;

fn pitr_under_crashes(backend: Backend, dir: &Path) {
    let seed = seed();
    eprintln!("pitr seed={seed} replica={}", backend.url);
    let mut rng = Lcg(seed);
    let db = dir.join("app.db");
    create_db(&db);
    let (record, report, log) = (
        dir.join("record.txt"),
        dir.join("report.json"),
        dir.join("walship.log"),
    );
    let writer = start_writer(
        &db,
        &strs(&[
            "--tx",
            "5000",
            "--seed",
            &(seed % 1000).to_string(),
            "--rate",
            "400",
            "--checkpoint-every",
            "500",
            "--quiet-every",
            "50",
            "--quiet-ms",
            "500",
            "--record",
            record.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let mut writer = Some(writer);
    let mut rep = Replicator::start(&db, &backend, SHUTDOWN, &log);
    // Times during which commits may be stamped late: from a little more than one sync
    // interval before a kill (transactions seen but not yet cut into a segment are read
    // again after the restart) until the restarted walship has scanned.
    let mut blind: Vec<(u64, u64)> = Vec::new();
    let mut kills = 0;
    loop {
        let until = Instant::now() + Duration::from_millis(4000 + rng.below(4000));
        let mut done = false;
        while Instant::now() < until {
            if writer.as_mut().unwrap().try_wait().unwrap().is_some() {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if done {
            break;
        }
        let killed = now_ms();
        rep.kill();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        rep = Replicator::start(&db, &backend, SHUTDOWN, &log);
        blind.push((killed.saturating_sub(1500), now_ms() + 1000));
    }
    finish_writer(writer.take().unwrap(), &report);
    let status = rep.terminate(Duration::from_secs(90));
    assert!(
        status.success(),
        "walship exited {status} on SIGTERM; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        kills >= 5,
        "only {kills} kills: the workload ended too soon"
    );

    let commits = read_record(&record);
    assert_eq!(commits.len(), 5000);
    // Instants AFTER_COMMIT_MS after a commit that was followed by a quiet spell and not
    // made while walship could not see it.
    let mut usable: Vec<usize> = (0..commits.len() - 1)
        .filter(|&j| commits[j + 1].ms >= commits[j].ms + AFTER_COMMIT_MS + 150)
        .filter(|&j| !blind.iter().any(|&(a, b)| (a..=b).contains(&commits[j].ms)))
        .collect();
    assert!(
        usable.len() >= 30,
        "only {} usable instants (kills {kills}); the workload needs more quiet spells",
        usable.len()
    );
    // A random 30 of them, plus the newest state.
    while usable.len() > 30 {
        usable.swap_remove(rng.below(usable.len() as u64) as usize);
    }
    let mut checks: Vec<(u64, &str)> = usable
        .iter()
        .map(|&j| (commits[j].ms + AFTER_COMMIT_MS, commits[j].hash.as_str()))
        .collect();
    checks.push((now_ms(), commits.last().unwrap().hash.as_str()));
    for (i, (at, want)) in checks.iter().enumerate() {
        let out = dir.join(format!("pitr-{i}.db"));
        let ts = format_ms(*at);
        let o = walship(
            &[
                "restore",
                "--timestamp",
                &ts,
                "-o",
                out.to_str().unwrap(),
                &backend.url,
            ],
            Some(&backend),
        );
        assert_success(&o, &format!("restore --timestamp {ts}"));
        assert_eq!(
            &content_hash(&out),
            want,
            "restore at {ts} does not equal the state recorded then"
        );
    }

    // The plan alone: JSON, and nothing written.
    let out = dir.join("dry.db");
    let ts = format_ms(checks[0].0);
    let o = walship(
        &[
            "restore",
            "--timestamp",
            &ts,
            "--dry-run",
            "--json",
            "-o",
            out.to_str().unwrap(),
            &backend.url,
        ],
        Some(&backend),
    );
    assert_success(&o, "restore --dry-run --json");
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(plan["bytes"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["plan"]["generation"].is_string(), "{plan}");
    assert!(!out.exists(), "--dry-run wrote the output");

    // Before anything was replicated: an error stating the window that exists.
    let early = format_ms(commits[0].ms - 3_600_000);
    let o = walship(
        &[
            "restore",
            "--timestamp",
            &early,
            "-o",
            out.to_str().unwrap(),
            &backend.url,
        ],
        Some(&backend),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "restore before the window succeeded");
    assert!(
        err.contains("before the oldest restorable point") && err.contains("can restore from"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn pitr_under_crashes_file() {
    let dir = scratch();
    let backend = Backend::file(&dir.path().join("replica"));
    pitr_under_crashes(backend, dir.path());
}

#[test]
fn pitr_under_crashes_s3() {
    let Some(backend) = Backend::s3("pitr") else {
        return;
    };
    let dir = scratch();
    pitr_under_crashes(backend, dir.path());
}
