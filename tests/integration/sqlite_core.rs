//! Acceptance tests of the core issue, each against file:// and the real S3 server:
//! crash/restart under load, the application's TRUNCATE checkpoints, no PUTs while idle,
//! and a 30 s S3 outage within the local disk cap.

use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// ≥ 20,000 transactions of random sizes (one > 1,000 pages), the writer's own TRUNCATE
/// checkpoints at random moments, walship SIGKILLed and restarted ≥ 10 times; after a
/// final SIGTERM the restore equals the source, table by table, row by row.
fn crash_restarts(backend: Backend, dir: &Path) {
    let seed = seed();
    eprintln!("crash_restarts seed={seed} replica={}", backend.url);
    let mut rng = Lcg(seed);
    let db = dir.join("app.db");
    create_db(&db);
    let report = dir.join("report.json");
    let log = dir.join("walship.log");
    let writer = start_writer(
        &db,
        &strs(&[
            "--tx",
            "20000",
            "--seed",
            &(seed % 1000).to_string(),
            "--big-tx-at",
            "9000",
            "--checkpoint-every",
            "400",
            "--rate",
            "1000",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let mut writer = Some(writer);
    let mut rep = Replicator::start(&db, &backend, &[], &log);
    let mut kills = 0;
    let started = Instant::now();
    loop {
        let pause = Duration::from_millis(200 + rng.below(1600));
        let until = Instant::now() + pause;
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
        rep.kill();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        rep = Replicator::start(&db, &backend, &[], &log);
    }
    let r = finish_writer(writer.take().unwrap(), &report);
    std::thread::sleep(Duration::from_millis(300)); // let the last start get going
    let ckpts = r["checkpoints"].as_array().unwrap().len();
    eprintln!(
        "writer done after {:.1}s: {kills} SIGKILLs, {ckpts} app TRUNCATE checkpoints",
        secs(started)
    );
    assert!(
        kills >= 10,
        "only {kills} kills happened; the workload was too short"
    );
    assert!(ckpts > 0, "the writer made no checkpoint");
    let status = rep.terminate(Duration::from_secs(60));
    assert!(status.success(), "walship exit after SIGTERM: {status}");
    let out = dir.join("restored.db");
    assert_success(&restore(&backend, &out), "restore");
    assert_same_content(&db, &out);
    if std::env::var("WALSHIP_TEST_SHOW_LOG").is_ok() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap());
    }
    let gens = walship(&["generations", "--json", &backend.url], Some(&backend));
    let gens: serde_json::Value = serde_json::from_slice(&gens.stdout).unwrap();
    eprintln!(
        "generations in the replica: {}",
        gens.as_array().unwrap().len()
    );
}

on_each_backend!(
    crash_restarts_file,
    crash_restarts_s3,
    "crash",
    |b: Backend, dir: &Path| crash_restarts(b, dir)
);

/// The application's own `wal_checkpoint(TRUNCATE)` (busy_timeout 5 s) succeeds and
/// truncates the WAL while walship runs, and nothing is lost.
fn app_truncate(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let log = dir.join("walship.log");
    let rep = Replicator::start(&db, &backend, &[], &log);
    std::thread::sleep(Duration::from_millis(500));
    let report = dir.join("report.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "3000",
            "--seed",
            "3",
            "--checkpoint-every",
            "40",
            "--rate",
            "600",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let r = finish_writer(w, &report);
    let ckpts = r["checkpoints"].as_array().unwrap();
    assert!(
        ckpts.len() >= 20,
        "expected many checkpoints, got {}",
        ckpts.len()
    );
    let mut secs: Vec<f64> = Vec::new();
    for c in ckpts {
        assert_eq!(c["busy"], 0, "app checkpoint was blocked: {c}");
        assert_eq!(c["wal_bytes_after"], 0, "WAL not truncated: {c}");
        secs.push(c["seconds"].as_f64().unwrap());
    }
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "app TRUNCATE checkpoints with walship running ({}): n={} median={:.1}ms p90={:.1}ms max={:.1}ms",
        backend.url,
        secs.len(),
        secs[secs.len() / 2] * 1e3,
        secs[secs.len() * 9 / 10] * 1e3,
        secs[secs.len() - 1] * 1e3
    );
    let status = rep.terminate(Duration::from_secs(60));
    assert!(status.success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log_text.contains("new generation") || log_text.matches("new generation").count() == 1,
        "stepping aside for app checkpoints must not cost a new generation:\n{log_text}"
    );
    let out = dir.join("restored.db");
    assert_success(&restore(&backend, &out), "restore");
    assert_same_content(&db, &out);
}

on_each_backend!(
    app_truncate_checkpoint_file,
    app_truncate_checkpoint_s3,
    "truncate",
    |b: Backend, dir: &Path| app_truncate(b, dir)
);

pub fn metric(addr: &str, name: &str) -> f64 {
    let body = http_get(addr, "/metrics");
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
}

/// Over 30 s of idleness after the last write, walship makes no PUT request (counted by
/// its request counter) and the replica's object listing does not change.
fn idle_no_puts(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let rep = Replicator::start(&db, &backend, &["--addr", &addr], &dir.join("w.log"));
    let report = dir.join("report.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "500",
            "--rate",
            "500",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    finish_writer(w, &report);
    assert!(
        wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            metric(&addr, "walship_replication_lag_seconds") == 0.0
                && metric(&addr, "walship_spool_bytes") == 0.0
        }),
        "walship did not catch up"
    );
    // Every transaction's read-to-acknowledged time is in the histogram, and the read lock
    // was held within a second of the process's start.
    assert_eq!(metric(&addr, "walship_commit_to_ack_seconds_count"), 500.0);
    let lock = metric(&addr, "walship_read_lock_after_start_seconds");
    assert!(lock > 0.0 && lock < 1.0, "read lock after {lock} s");
    let listing = || walship(&["generations", "--json", &backend.url], Some(&backend)).stdout;
    // The lease's renewals (one PUT per third of lease-ttl, docs/LEASE.md) are the only
    // requests an idle walship makes.
    let renewals = || metric_sum(&addr, "walship_lease_renewals_total");
    let (puts0, leases0, list0) = (
        metric(&addr, "walship_put_requests_total"),
        renewals(),
        listing(),
    );
    std::thread::sleep(Duration::from_secs(30));
    let (puts1, leases1, list1) = (
        metric(&addr, "walship_put_requests_total"),
        renewals(),
        listing(),
    );
    eprintln!(
        "idle 30 s on {}: PUT requests {puts0} -> {puts1}, of them lease renewals {leases0} -> \
         {leases1}",
        backend.url
    );
    assert_eq!(
        puts1 - puts0,
        leases1 - leases0,
        "walship made PUT requests other than lease renewals while the database was idle"
    );
    assert!(
        (2.0..=4.0).contains(&(leases1 - leases0)),
        "{} lease renewals in 30 s (one per 10 s expected)",
        leases1 - leases0
    );
    assert_eq!(
        list0, list1,
        "the replica changed while the database was idle"
    );
    assert!(rep.terminate(Duration::from_secs(30)).success());
}

on_each_backend!(
    idle_makes_no_puts_file,
    idle_makes_no_puts_s3,
    "idle",
    |b: Backend, dir: &Path| idle_no_puts(b, dir)
);

/// A SIGKILLed walship restarted while the WAL was not reset resumes its generation (no
/// new snapshot), and nothing is lost across the restarts.
fn resume_after_kill(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let log = dir.join("w.log");
    let report = dir.join("report.json");
    // Slow single-row writes: the WAL stays far below any checkpoint threshold.
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "400",
            "--rate",
            "50",
            "--single-row",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let mut rep = Replicator::start(&db, &backend, &[], &log);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1800));
        rep.kill();
        rep = Replicator::start(&db, &backend, &[], &log);
    }
    finish_writer(w, &report);
    assert!(rep.terminate(Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("resuming generation").count(), 3, "{text}");
    assert_eq!(text.matches("new generation").count(), 1, "{text}");
    let out = dir.join("restored.db");
    assert_success(&restore(&backend, &out), "restore");
    assert_same_content(&db, &out);
}

on_each_backend!(
    resume_after_kill_file,
    resume_after_kill_s3,
    "resume",
    |b: Backend, dir: &Path| resume_after_kill(b, dir)
);

/// The config-file form: `${VAR}` expansion (bucket, credentials as references), a
/// litestream.yml-style replica block, several databases.
#[test]
fn replicate_from_config_file_s3() {
    let Some(b) = Backend::s3("config") else {
        return;
    };
    let dir = scratch();
    let (db1, db2) = (dir.path().join("one.db"), dir.path().join("two.db"));
    create_db(&db1);
    create_db(&db2);
    let (bucket, prefix) = b
        .url
        .strip_prefix("s3://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let cfg = dir.path().join("walship.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      type: s3\n      bucket: ${{TEST_BUCKET}}\n      path: {prefix}/one\n      endpoint: {}\n      force-path-style: true\n      access-key-id: ${{TEST_KEY}}\n      secret-access-key: ${{TEST_SECRET}}\n      sync-interval: 500ms\n  - path: {}\n    replicas:\n      - url: s3://${{TEST_BUCKET}}/{prefix}/two\n        endpoint: {}\n",
            db1.display(),
            b.flags[1],
            db2.display(),
            b.flags[1]
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("w.log")).unwrap();
    let mut child = std::process::Command::new(walship_bin())
        .args(["replicate", "--config", cfg.to_str().unwrap()])
        .env("TEST_BUCKET", bucket)
        .env("TEST_KEY", &b.env[0].1)
        .env("TEST_SECRET", &b.env[1].1)
        .envs(b.env.iter().cloned())
        .stderr(log)
        .spawn()
        .unwrap();
    for db in [&db1, &db2] {
        let report = dir.path().join("r.json");
        let w = start_writer(
            db,
            &strs(&[
                "--tx",
                "200",
                "--rate",
                "200",
                "--report",
                report.to_str().unwrap(),
            ]),
        );
        finish_writer(w, &report);
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    for (db, sub) in [(&db1, "one"), (&db2, "two")] {
        let rb = Backend {
            url: format!("{}/{sub}", b.url),
            ..b.clone()
        };
        let out = dir.path().join(format!("{sub}-restored.db"));
        assert_success(&restore(&rb, &out), "restore");
        assert_same_content(db, &out);
    }
}

/// The S3 server is down for 30 s mid-workload (the app checkpointing meanwhile): walship
/// keeps the app working, stays within its local disk cap, catches up when the server
/// returns, and the restore equals the source.
#[test]
fn s3_outage_30s() {
    let Some(mut s3) = PrivateS3::start("s3_outage_30s") else {
        return;
    };
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let backend = s3.backend("outage");
    let spool = dir.path().join("spool");
    let cap: u64 = 4 << 20;
    let addr = format!("127.0.0.1:{}", free_port());
    let rep = Replicator::start(
        &db,
        &backend,
        &[
            "--spool-dir",
            spool.to_str().unwrap(),
            "--spool-limit",
            "4MiB",
            "--addr",
            &addr,
            "--unhealthy-after",
            "5s",
        ],
        &dir.path().join("w.log"),
    );
    let report = dir.path().join("report.json");
    let w = start_writer(
        &db,
        &strs(&[
            "--tx",
            "30000",
            "--seed",
            "11",
            "--checkpoint-every",
            "2000",
            "--rate",
            "500",
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, spool) = (stop.clone(), spool.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(dir_bytes(&spool));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"),
        "healthy before the outage"
    );
    s3.stop();
    eprintln!("S3 stopped");
    std::thread::sleep(Duration::from_secs(15));
    let during = http_get(&addr, "/healthz");
    assert!(
        during.starts_with("HTTP/1.1 503") && during.contains("unreachable"),
        "/healthz must fail after 5 s of outage:\n{during}"
    );
    assert!(
        metric(&addr, "walship_replication_lag_seconds") > 5.0,
        "lag must show the outage"
    );
    std::thread::sleep(Duration::from_secs(15));
    s3.resume();
    eprintln!("S3 back");
    assert!(
        wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            http_get(&addr, "/healthz").starts_with("HTTP/1.1 200")
        }),
        "/healthz must recover once the replica is back"
    );
    let r = finish_writer(w, &report);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    eprintln!(
        "outage: writer p99 {:.2} ms; spool peak {peak} bytes (cap {cap})",
        r["latency_p99_ms"].as_f64().unwrap()
    );
    assert!(
        peak <= cap,
        "spool grew to {peak} bytes, over its {cap}-byte cap"
    );
    // walship must never hold an app checkpoint for its busy_timeout (5 s), outage or not.
    for c in r["checkpoints"].as_array().unwrap() {
        assert!(
            c["seconds"].as_f64().unwrap() < 1.0,
            "app checkpoint held up during the outage: {c}"
        );
    }
    assert!(rep.terminate(Duration::from_secs(60)).success());
    let out = dir.path().join("restored.db");
    let o = restore(&backend, &out);
    assert_success(&o, "restore");
    // On a difference, what walship did and what restore chose (this failed once in CI
    // under full-suite load and never alone).
    if std::panic::catch_unwind(|| assert_same_content(&db, &out)).is_err() {
        let log = std::fs::read_to_string(dir.path().join("w.log")).unwrap_or_default();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
            .collect();
        panic!(
            "restored content differs from the source\nrestore: {}\nreplicator log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            notable.join("\n")
        );
    }
}
