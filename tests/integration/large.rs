//! A replica of a 1 GB database plus more than 1,000 segments restores to the source's
//! exact content, with the restoring process's memory bounded (peak RSS measured with
//! wait4). Against file:// and the real S3 server.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Peak RSS bound for the restore of a 1 GB database: downloads in flight and decode
/// buffers, not the database, decide it.
const RSS_LIMIT_MIB: i64 = 256;

fn large_restore(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let report = dir.join("fill.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--fill-mb",
            "1024",
            "--tx",
            "0",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    finish_writer(w, &report);
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size >= 1_000_000_000, "database is only {size} bytes");

    // One segment per transaction: a 10 ms sync interval (walship then scans every 10 ms)
    // and 20 transactions a second.
    let rep = Replicator::start(
        &db,
        &backend,
        &["--sync-interval", "10ms"],
        &dir.join("w.log"),
    );
    let report = dir.join("report.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "1050",
            "--rate",
            "20",
            "--single-row",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    finish_writer(w, &report);
    assert!(rep.terminate(Duration::from_secs(120)).success());
    let o = walship(&["generations", "--json", &backend.url], Some(&backend));
    let gens: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let segments: u64 = gens.iter().map(|g| g["segments"].as_u64().unwrap()).sum();
    assert!(segments >= 1000, "only {segments} segments");

    let out = dir.join("restored.db");
    let started = Instant::now();
    let log = dir.join("restore.log");
    // Reaped by wait4 below, which also reports the child's peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(walship_bin())
        .args(["restore", "-o", out.to_str().unwrap(), &backend.url])
        .args(&backend.flags)
        .envs(backend.env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(r, child.id() as i32);
    let secs = started.elapsed().as_secs_f64();
    let rss_mib = usage.ru_maxrss / 1024;
    eprintln!(
        "restore of {:.0} MB + {segments} segments from {}: {secs:.1} s, peak RSS {rss_mib} MiB",
        size as f64 / 1e6,
        backend.url
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "restore failed"
    );
    assert!(rss_mib < RSS_LIMIT_MIB, "restore peak RSS {rss_mib} MiB");
    assert_eq!(
        content_hash(&out),
        content_hash(&db),
        "restored content differs"
    );
}

on_each_backend!(
    large_restore_file,
    large_restore_s3,
    "large",
    |b: Backend, dir: &Path| large_restore(b, dir)
);
