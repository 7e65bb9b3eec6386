//! SQLite capture's promises to the user: every commit is stamped within 100 ms of the
//! moment it was made (point-in-time restore's precision), a transaction larger than the
//! spool ships with the commits behind it, and the sidecar neither dies nor lies on small
//! things (a closed stderr, a metrics address in use, settings that make replication
//! impossible).

use crate::support::http_get;
use crate::support::*;
use std::path::Path;
use std::time::Duration;
use walship::format::segment::Segment;
use walship::restore::when::format_ms;

/// Every commit's stamp, in txid order, from a file:// replica's segments.
fn stamps(replica: &Path) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    let gens = replica.join("generations");
    let mut names: Vec<_> = std::fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for g in names {
        let mut segs: Vec<_> = std::fs::read_dir(gens.join(&g).join("wal"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_else(|_| Vec::new());
        segs.sort();
        let mut times = Vec::new();
        for s in segs {
            let seg = Segment::decode(&std::fs::read(&s).unwrap()).unwrap();
            times.extend(seg.frames().filter_map(|f| f.commit.map(|c| c.1)));
        }
        out.push((g, times));
    }
    out
}

/// Bursts of commits, each followed by a quiet spell: every commit's stamp (when walship
/// saw it, in the segment's commit table) is within 100 ms of the writer's own clock read
/// right after COMMIT returned. The last commit of a burst used to be stamped only at the
/// periodic scan, up to half a sync interval late, when the scan woken by its write read
/// the WAL-index before SQLite had updated it.
#[test]
fn stamps_within_100ms_of_the_commit() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let replica = dir.path().join("replica");
    let backend = Backend::file(&replica);
    let rep = Replicator::start(&db, &backend, &[], &dir.path().join("w.log"));
    assert!(
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            replica.join("generations").exists() && rep.log_text().contains("new generation")
        }),
        "no generation: {}",
        rep.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    let record = dir.path().join("record.txt");
    run_writer(
        &db,
        dir.path(),
        &[
            "--tx",
            "240",
            "--seed",
            "3",
            "--rate",
            "150",
            "--quiet-every",
            "6",
            "--quiet-ms",
            "700",
            "--checkpoint-every",
            "15",
            "--synchronous",
            "FULL",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    let status = rep.terminate(Duration::from_secs(30));
    assert!(status.success());
    let commits = read_record(&record);
    let gens = stamps(&replica);
    assert_eq!(gens.len(), 1, "one generation expected");
    let stamped = &gens[0].1;
    assert_eq!(stamped.len(), commits.len(), "every commit in the replica");
    let mut late = Vec::new();
    let mut worst = 0i64;
    for (i, (c, &s)) in commits.iter().zip(stamped).enumerate() {
        let d = s as i64 - c.ms as i64;
        worst = worst.max(d);
        if !(-50..=100).contains(&d) {
            late.push(format!("commit {} stamped {d:+} ms", i + 1));
        }
    }
    eprintln!("stamps: latest {worst:+} ms after the writer's clock");
    assert!(
        late.is_empty(),
        "{} of {} stamps off: {late:?}",
        late.len(),
        commits.len()
    );
}

/// A transaction larger than the whole spool (4.5 MB against a 2 MB spool-limit), with
/// commits before and behind it: all of it ships, the state after it as the snapshot of a
/// generation that continues the old one exactly; every state before, after and at the
/// end restores; the log names the size and the setting.
fn transaction_larger_than_the_spool(backend: &Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let log = dir.join("w.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let rep = Replicator::start(
        &db,
        backend,
        &["--spool-limit", "2MB", "--addr", &addr],
        &log,
    );
    std::thread::sleep(Duration::from_millis(800));
    let phase = |name: &str, args: &[&str]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        run_writer(&db, &d, args);
        std::thread::sleep(Duration::from_millis(700));
        let at = now_ms();
        std::thread::sleep(Duration::from_millis(300));
        (at, content_hash(&db))
    };
    let before = phase("a", &["--tx", "40", "--seed", "1", "--rate", "200"]);
    let big = phase("b", &["--tx", "1", "--seed", "2", "--big-tx-at", "0"]);
    let after = phase("c", &["--tx", "40", "--seed", "3", "--rate", "200"]);
    let health = http_get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let status = rep.terminate(Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status}: {text}");
    assert!(text.contains("everything committed was shipped"), "{text}");
    assert!(
        text.contains("large transaction") && text.contains("raise spool-limit"),
        "{text}"
    );
    for (i, (at, want)) in [before, big].iter().enumerate() {
        let out = dir.join(format!("pitr-{i}.db"));
        let ts = format_ms(*at);
        let o = restore_at(backend, &ts, &out);
        assert_success(&o, &format!("restore --timestamp {ts}"));
        assert_eq!(&content_hash(&out), want, "state at {ts}");
    }
    let out = dir.join("newest.db");
    assert_success(&restore(backend, &out), "restore");
    assert_eq!(content_hash(&out), after.1);
    assert_same_content(&db, &out);
    // Two generations, the second continuing the first exactly.
    let o = walship(&["generations", "--json", &backend.url], Some(backend));
    assert_success(&o, "generations");
    let gens: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(gens.as_array().map(|a| a.len()), Some(2), "{gens}");
}

on_each_backend!(
    transaction_larger_than_the_spool_file,
    transaction_larger_than_the_spool_s3,
    "large_tx",
    |b: Backend, dir: &Path| transaction_larger_than_the_spool(&b, dir)
);

/// `walship replicate … 2>&1 | head -c 1`: the log reader goes away; replication goes on,
/// and SIGTERM still ships and exits 0 (it aborted with exit 134 on the first log line).
#[test]
fn closed_stderr_never_stops_replication() {
    use std::process::{Command, Stdio};
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let replica = dir.path().join("replica");
    let mut child = Command::new(walship_bin())
        .args(["replicate", db.to_str().unwrap()])
        .arg(format!("file://{}", replica.display()))
        .env("RUST_LOG", "debug,object_store=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Read;
        let mut err = child.stderr.take().unwrap();
        let mut one = [0u8; 1];
        err.read_exact(&mut one).unwrap();
    } // the pipe's reader is gone
    run_writer(
        &db,
        dir.path(),
        &["--tx", "200", "--seed", "5", "--rate", "400"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "walship died");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let out = dir.path().join("restored.db");
    assert_success(
        &restore(&Backend::file(&replica), &out),
        "restore after a closed stderr",
    );
    assert_same_content(&db, &out);
}

/// A metrics address already in use is a start-up error naming it, not a log line while
/// the sidecar runs without its endpoint.
#[test]
fn metrics_address_in_use_is_a_startup_error() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let url = format!("file://{}", dir.path().join("replica").display());
    let o = walship(
        &["replicate", db.to_str().unwrap(), &url, "--addr", &addr],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&addr) && err.contains("--addr"), "{err}");
}

/// Sizes and durations that are zero, overflow, or make replication impossible are
/// refused at start-up with the setting's name.
#[test]
fn impossible_settings_are_refused_by_name() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let url = format!("file://{}", dir.path().join("replica").display());
    for (flag, value, says) in [
        ("--spool-limit", "0", "too small"),
        ("--spool-limit", "17179869184GiB", "too large"),
        ("--spool-limit", "100KB", "too small"),
        ("--sync-interval", "0s", "above zero"),
        ("--shutdown-timeout", "0s", "above zero"),
        ("--unhealthy-after", "0s", "above zero"),
        ("--sync-interval", "500y", "too long"),
    ] {
        let o = walship(
            &["replicate", db.to_str().unwrap(), &url, flag, value],
            None,
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
    assert!(
        !dir.path().join("replica").exists(),
        "nothing may be written"
    );
}
