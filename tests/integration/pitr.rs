//! Point-in-time restore under crashes: the writer records (commit time, content hash)
//! after every commit while walship is SIGKILLed and restarted (half of the kills just
//! inside a quiet spell, when the burst's last commits have been read but not yet cut into
//! a segment); restores to recorded instants must equal the recorded state exactly,
//! against file:// and the real S3 server.

use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};
use walship::restore::when::format_ms;

/// The suite runs 1 GB restores beside this test: give shipping on SIGTERM room.
const SHUTDOWN: &[&str] = &["--shutdown-timeout", "75s"];

/// How long after a commit the restore target lies; the writer's quiet spells are longer,
/// so the next commit comes after the target.
const AFTER_COMMIT_MS: u64 = 300;

/// How far before a kill a target may lie and still be refused: the killed walship's
/// watch stamp is at most a re-check step (25 ms) and a stamp interval (20 ms) old, plus
/// scheduling on a loaded machine.
const STAMP_SLACK_MS: u64 = 150;

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
    // Times during which commits may be stamped late: from just before a kill (a commit
    // walship had not read yet is read, or lost with the WAL, after the restart) until
    // the restarted walship has scanned. Commits read before the kill are in its capture
    // journal and keep their stamps.
    let mut blind: Vec<(u64, u64)> = Vec::new();
    let mut kills_at: Vec<u64> = Vec::new();
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
        let ages = match rng.below(3) {
            // Just inside a quiet spell, the burst's last commits read but maybe not cut.
            0 => Some(150..300),
            // Just after a target (300 ms after the last commit): walship saw that state
            // last, and its watch stamp must carry that into the next generation.
            1 => Some(AFTER_COMMIT_MS + 60..AFTER_COMMIT_MS + 180),
            _ => None,
        };
        if let Some(ages) = ages {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let age = read_record(&record)
                    .last()
                    .map(|c| now_ms().saturating_sub(c.ms));
                if age.is_some_and(|a| ages.contains(&a)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let killed = now_ms();
        rep.kill();
        kills += 1;
        kills_at.push(killed);
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        rep = Replicator::start(&db, &backend, SHUTDOWN, &log);
        blind.push((killed.saturating_sub(150), now_ms() + 1000));
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
    // Those within 1.5 s before a kill were read by the walship that was killed, possibly
    // not yet cut into a segment: all of them are checked, plus random others up to 30.
    let near_kill = |j: usize| {
        kills_at
            .iter()
            .any(|&k| commits[j].ms < k && k - commits[j].ms <= 1500)
    };
    let (mut chosen, mut others): (Vec<usize>, Vec<usize>) =
        usable.iter().partition(|&&j| near_kill(j));
    let near = chosen.len();
    assert!(
        near >= 3,
        "only {near} checked instants just before a kill (kills {kills})"
    );
    while chosen.len() < 30 && !others.is_empty() {
        chosen.push(others.swap_remove(rng.below(others.len() as u64) as usize));
    }
    eprintln!(
        "pitr: {} instants, {near} of them just before a kill",
        chosen.len()
    );
    usable = chosen;
    let mut checks: Vec<(u64, &str)> = usable
        .iter()
        .map(|&j| (commits[j].ms + AFTER_COMMIT_MS, commits[j].hash.as_str()))
        .collect();
    checks.push((now_ms(), commits.last().unwrap().hash.as_str()));
    // A kill after which the WAL was reset while walship was down (the application's
    // TRUNCATE checkpoints) ends a generation. Up to the killed walship's last watch stamp
    // (at most a re-check step and WATCHED_EVERY before the kill) the next generation's
    // manifest says nothing followed the old one's last commit, so those instants are
    // exact. Later ones, up to the next generation's first snapshot, are in no object:
    // restore refuses them naming both nearest points (docs/RESTORE.md) instead of
    // guessing, and --allow-older then restores exactly the commit before.
    let near_a_kill = |at: u64| {
        kills_at
            .iter()
            .zip(&blind)
            .any(|(&k, &(_, end))| at + STAMP_SLACK_MS > k && at < end)
    };
    let mut refused = 0;
    for (i, (at, want)) in checks.iter().enumerate() {
        let out = dir.join(format!("pitr-{i}.db"));
        let ts = format_ms(*at);
        let o = restore_at(&backend, &ts, &out);
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                near_a_kill(*at) && e.contains("cannot be restored exactly"),
                "restore --timestamp {ts} failed: {e}"
            );
            assert!(!out.exists());
            refused += 1;
            let from_kill = kills_at
                .iter()
                .map(|&k| *at as i64 - k as i64)
                .min_by_key(|d| d.abs())
                .unwrap_or_default();
            eprintln!("pitr: {ts} refused, {from_kill:+} ms from the nearest kill");
            let o = restore_older_at(&backend, &ts, &out);
            assert_success(&o, &format!("restore --allow-older --timestamp {ts}"));
        }
        assert_eq!(
            &content_hash(&out),
            want,
            "restore at {ts} does not equal the state recorded then"
        );
    }
    let stamped = list_objects(&backend)
        .keys()
        .filter(|k| k.ends_with("manifest.json"))
        .filter(|k| {
            let m: serde_json::Value = serde_json::from_slice(&get_object(&backend, k)).unwrap();
            m["parent_unchanged"]["until_ms"].is_u64()
        })
        .count();
    eprintln!(
        "pitr: {refused} of {} targets refused as between generations; {stamped} \
         generations say until when their parent's last state lasted",
        checks.len()
    );

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

on_each_backend!(
    pitr_under_crashes_file,
    pitr_under_crashes_s3,
    "pitr",
    |b: Backend, dir: &Path| pitr_under_crashes(b, dir)
);
