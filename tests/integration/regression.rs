//! Regression tests, each named after the bug it pins.

use crate::support::*;
use std::time::Duration;

/// CI, 2026-11-22: `app_truncate_checkpoint_file` saw "the WAL was reset 3 time(s) where
/// walship could not prove it had read it to its end". walship used to drop its read lock
/// for an application checkpoint and take it back when it saw the checkpoint end; when its
/// thread was descheduled in between, the application wrote and checkpointed again, and
/// walship had to start a new generation. Here walship is frozen (SIGSTOP) at random
/// moments, far longer than any scheduler delay, while the application checkpoints every
/// few transactions: the hand-over keeps a read lock throughout, so one generation holds
/// everything, every app checkpoint still succeeds, and the restore equals the source.
#[test]
fn descheduled_during_app_checkpoint_keeps_the_generation() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let backend = Backend::file(&dir.path().join("replica"));
    let log = dir.path().join("walship.log");
    let rep = Replicator::start(&db, &backend, &[], &log);
    std::thread::sleep(Duration::from_millis(500));
    let report = dir.path().join("report.json");
    let mut w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "2500",
            "--seed",
            "11",
            "--checkpoint-every",
            "12",
            "--rate",
            "500",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let mut rng = Lcg(seed());
    let mut freezes = 0;
    while w.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20 + rng.below(100)));
        unsafe { libc::kill(rep.pid(), libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
        unsafe { libc::kill(rep.pid(), libc::SIGCONT) };
        freezes += 1;
    }
    let r = finish_writer(w, &report);
    let ckpts = r["checkpoints"].as_array().unwrap();
    assert!(
        freezes >= 20 && ckpts.len() >= 100,
        "too little: {freezes} freezes, {} checkpoints",
        ckpts.len()
    );
    for c in ckpts {
        assert_eq!(c["busy"], 0, "app checkpoint was blocked: {c}");
        assert_eq!(c["wal_bytes_after"], 0, "WAL not truncated: {c}");
    }
    let status = rep.terminate(Duration::from_secs(60));
    assert!(status.success(), "walship exit after SIGTERM: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("new generation").count(),
        1,
        "an app checkpoint cost a new generation:\n{text}"
    );
    let out = dir.path().join("restored.db");
    assert_success(&restore(&backend, &out), "restore");
    assert_same_content(&db, &out);
}
