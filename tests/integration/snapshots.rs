//! Snapshots within a generation (`snapshot-interval`), taken from a consistent read while
//! the application writes and checkpoints: they are listed by `walship snapshots`, restore
//! plans start from the newest one at or before the target, and every restore equals the
//! recorded state. Against file:// and the real S3 server.

use crate::support::*;
use std::path::Path;
use std::time::Duration;
use walship::restore::when::format_ms;

fn snapshots_at_an_interval(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let (record, report) = (dir.join("record.txt"), dir.join("report.json"));
    let writer = start_writer(
        &db,
        &strs(&[
            "--tx",
            "3000",
            "--rate",
            "300",
            "--seed",
            "7",
            "--checkpoint-every",
            "300",
            "--quiet-every",
            "60",
            "--quiet-ms",
            "500",
            "--record",
            record.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let rep = Replicator::start(
        &db,
        &backend,
        &["--snapshot-interval", "2s"],
        &dir.join("walship.log"),
    );
    let report = finish_writer(writer, &report);
    assert!(rep.terminate(Duration::from_secs(30)).success());
    for c in report["checkpoints"].as_array().unwrap() {
        assert_eq!(c["busy"], 0, "app checkpoint blocked during snapshots: {c}");
    }

    let o = walship(&["snapshots", "--json", &backend.url], Some(&backend));
    assert_success(&o, "snapshots");
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let txids: Vec<u64> = snaps.iter().map(|s| s["txid"].as_u64().unwrap()).collect();
    assert!(
        txids.len() >= 4,
        "expected a snapshot every 2 s over ~15 s of writes, got {txids:?}"
    );
    assert!(txids.windows(2).all(|w| w[0] < w[1]), "{txids:?}");
    assert!(
        snaps
            .iter()
            .all(|s| s["generation"] == snaps[0]["generation"])
    );

    let out = dir.join("latest.db");
    assert_success(&restore(&backend, &out), "restore");
    assert_same_content(&db, &out);

    // Instants 300 ms after commits followed by a quiet spell, spread over the run: the
    // plan starts from the newest snapshot at or before each, and the result equals the
    // state recorded then.
    let lines: Vec<(u64, String)> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].parse().unwrap(), f[2].to_string())
        })
        .collect();
    let quiet: Vec<usize> = (0..lines.len() - 1)
        .filter(|&j| lines[j + 1].0 >= lines[j].0 + 450)
        .collect();
    assert!(quiet.len() >= 6, "too few quiet spells: {}", quiet.len());
    let mut from_interval_snapshot = 0;
    for &j in quiet.iter().step_by(quiet.len() / 6) {
        let ts = format_ms(lines[j].0 + 300);
        let out = dir.join(format!("at-{j}.db"));
        let plan = walship(
            &[
                "restore",
                "--timestamp",
                &ts,
                "--dry-run",
                "--json",
                "-o",
                "x",
                &backend.url,
            ],
            Some(&backend),
        );
        assert_success(&plan, "dry run");
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let snap = plan["plan"]["snapshot"]["txid"].as_u64().unwrap();
        let newest_before = snaps
            .iter()
            .filter(|s| {
                walship::restore::when::parse_time(s["time"].as_str().unwrap(), 0).unwrap()
                    <= lines[j].0 + 300
            })
            .map(|s| s["txid"].as_u64().unwrap())
            .max()
            .unwrap();
        assert_eq!(
            snap, newest_before,
            "plan for {ts} does not start from the newest snapshot"
        );
        from_interval_snapshot += (snap > 0) as usize;
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
        assert_success(&o, &format!("restore at {ts}"));
        assert_eq!(content_hash(&out), lines[j].1, "restore at {ts}");
    }
    assert!(
        from_interval_snapshot >= 2,
        "no plan started from an interval snapshot"
    );
}

on_each_backend!(
    snapshots_at_an_interval_file,
    snapshots_at_an_interval_s3,
    "snapshots",
    |b: Backend, dir: &Path| snapshots_at_an_interval(b, dir)
);
