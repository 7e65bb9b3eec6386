//! A database with several replicas (Litestream 0.3's `replicas:`): restore takes the one
//! with the newest state, or `-replica NAME`, and falls back to the next when one is
//! unreachable or damaged, saying so; init mode never starts empty while a replica cannot
//! be asked; cleanup cleans each. The replicas are a private S3 server (stopped at will)
//! and a file:// directory, each written by walship.

use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(db: &Path, a: &Backend, b: &Backend) -> String {
    format!(
        "dbs:\n  - path: {}\n    replicas:\n{}      - name: backup\n        url: {}\n",
        db.display(),
        s3_replica("primary", a),
        b.url
    )
}

/// A `replicas:` item for the private S3 server, written out key by key.
fn s3_replica(name: &str, a: &Backend) -> String {
    let rest = a.url.strip_prefix("s3://").unwrap();
    let (bucket, path) = rest.split_once('/').unwrap();
    format!(
        "      - name: {name}\n        type: s3\n        bucket: {bucket}\n        path: \
         {path}\n        endpoint: {}\n        region: us-east-1\n        force-path-style: \
         true\n",
        a.flags[1]
    )
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `walship ARGS --config CFG`, with the S3 credentials.
fn with_config(cfg: &Path, a: &Backend, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(walship_bin());
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "info,object_store=warn")
        .envs(a.env.iter().cloned());
    cmd.output().unwrap()
}

fn ship(db: &Path, b: &Backend) {
    let o = walship(
        &["replicate", "-once", db.to_str().unwrap(), &b.url],
        Some(b),
    );
    assert_success(&o, &format!("replicate -once to {}", b.url));
}

fn write(db: &Path, dir: &Path, n: &str) {
    run_writer(db, dir, &["--tx", n, "--rate", "300"]);
}

#[test]
fn restore_takes_the_newest_replica_and_falls_back_saying_so() {
    let Some(mut s3) = PrivateS3::start("several_replicas") else {
        return;
    };
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let a = s3.backend("app");
    let b = Backend::file(&dir.path().join("backup"));
    let cfg = dir.path().join("walship.yml");
    std::fs::write(&cfg, config(&db, &a, &b)).unwrap();
    let out = |name: &str| dir.path().join(name);
    let restore_to = |o: &Path, extra: &[&str]| {
        let mut args = vec!["restore", "-o", o.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(db.to_str().unwrap());
        with_config(&cfg, &a, &args)
    };

    // Both replicas hold the first state; then only the file:// one the second.
    write(&db, dir.path(), "40");
    ship(&db, &a);
    ship(&db, &b);
    let first = dump(&db);
    write(&db, dir.path(), "30");
    ship(&db, &b);
    let second = dump(&db);
    assert_ne!(first, second);

    let o = restore_to(&out("newest.db"), &[]);
    assert_success(&o, "restore from several replicas");
    assert_eq!(
        dump(&out("newest.db")),
        second,
        "not the newest replica's state"
    );
    assert!(err(&o).contains("restored from this replica") && err(&o).contains("backup"));
    let o = restore_to(&out("named.db"), &["-replica", "primary"]);
    assert_success(&o, "restore -replica primary");
    assert_eq!(
        dump(&out("named.db")),
        first,
        "-replica primary gave another state"
    );
    let o = restore_to(&out("x.db"), &["-replica", "nope"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("\"primary\", \"backup\""), "{}", err(&o));

    // The S3 replica becomes the newest, then stops answering: the file:// one is restored,
    // and the output says which and why.
    write(&db, dir.path(), "20");
    ship(&db, &a);
    let third = dump(&db);
    s3.stop();
    let o = restore_to(&out("fallback.db"), &[]);
    assert_success(&o, "restore with the newest replica down");
    assert_eq!(dump(&out("fallback.db")), second);
    assert!(
        err(&o).contains("restored from replica backup") && err(&o).contains("primary"),
        "{}",
        err(&o)
    );
    // Init mode with the other replica empty: the database is not started empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg2 = dir.path().join("empty.yml");
    std::fs::write(&cfg2, config(&db, &a, &Backend::file(&empty))).unwrap();
    let fresh = out("fresh.db");
    let o = with_config(
        &cfg2,
        &a,
        &[
            "restore",
            "--if-db-not-exists",
            "--if-replica-exists",
            "-o",
            fresh.to_str().unwrap(),
            db.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success(),
        "init mode started empty with a replica down"
    );
    assert!(err(&o).contains("not started empty"), "{}", err(&o));
    assert!(!fresh.exists());

    // Back up, but its snapshots damaged: restore falls back past it, saying so.
    s3.resume();
    let o = restore_to(&out("back.db"), &[]);
    assert_success(&o, "restore with both up");
    assert_eq!(dump(&out("back.db")), third);
    for (k, _) in list_objects(&a) {
        if k.contains("/snapshots/") {
            let mut bytes = get_object(&a, &k);
            let i = bytes.len() / 2;
            bytes[i] ^= 0xff;
            put_object(&a, &k, &bytes);
        }
    }
    // The other holds an older state: that is refused, naming both, unless asked for.
    let o = restore_to(&out("damaged.db"), &[]);
    assert!(!o.status.success(), "an older state was restored unasked");
    assert!(
        err(&o).contains("corrupt") && err(&o).contains("only an older state"),
        "{}",
        err(&o)
    );
    assert!(!out("damaged.db").exists());
    let o = restore_to(&out("damaged.db"), &["--allow-older"]);
    assert_success(&o, "restore --allow-older with the newest replica damaged");
    assert_eq!(dump(&out("damaged.db")), second);
    assert!(
        err(&o).contains("falling back to the next replica"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("restoring an older state"), "{}", err(&o));
    // Once the other holds the newest state, it is restored first, exactly.
    ship(&db, &b);
    let o = restore_to(&out("equal.db"), &[]);
    assert_success(&o, "restore with the other replica caught up");
    assert_eq!(dump(&out("equal.db")), third);

    // cleanup cleans both.
    let o = with_config(&cfg, &a, &["cleanup", "--retention", "1s", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let urls: Vec<&str> = r["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["replica"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 2, "{r}");
    assert!(urls[1].starts_with("file://"), "{r}");
}

#[test]
fn replica_names_must_tell_replicas_apart() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let cfg = dir.path().join("walship.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - url: file://{}/a\n      - url: file://{}/b\n",
            db.display(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let o = walship(
        &[
            "restore",
            "-o",
            "x.db",
            "--config",
            cfg.to_str().unwrap(),
            db.to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(
        err(&o).contains("both named \"file\"") && err(&o).contains("give each a `name`"),
        "{}",
        err(&o)
    );
}

/// One labelled series of the sidecar's `/metrics` (`None` while it has none).
fn replica_metric(addr: &str, name: &str, replica: &str) -> Option<f64> {
    let want = format!("replica=\"{replica}\"");
    http_get(addr, "/metrics")
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&want))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A sidecar running two replicas of `db` (config at `cfg`, /metrics at `addr`), with the
/// S3 credentials of `a`.
struct Lanes {
    db: std::path::PathBuf,
    cfg: std::path::PathBuf,
    addr: String,
    a: Backend,
    rep: Option<Replicator>,
    log: std::path::PathBuf,
}

impl Lanes {
    /// Write `yaml` (after an `addr:` line) and start the sidecar; waits until the replica
    /// `shipping` has synced once.
    fn start(dir: &Path, db: &Path, a: Backend, yaml: &str, shipping: &str) -> Lanes {
        let addr = format!("127.0.0.1:{}", free_port());
        let cfg = dir.join("walship.yml");
        std::fs::write(&cfg, format!("addr: {addr}\n{yaml}")).unwrap();
        let args = strs(&["replicate", "--config", cfg.to_str().unwrap()]);
        let log = dir.join("walship.log");
        let rep = Replicator::start_with(&args, &a.env, &log);
        assert!(
            wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
                std::net::TcpStream::connect(&addr).is_ok()
                    && replica_metric(
                        &addr,
                        "walship_replica_last_sync_timestamp_seconds",
                        shipping,
                    )
                    .is_some_and(|t| t > 0.0)
            }),
            "the sidecar did not start shipping: {}",
            rep.log_text()
        );
        Lanes {
            db: db.to_path_buf(),
            cfg,
            addr,
            a,
            rep: Some(rep),
            log,
        }
    }

    fn lag(&self, replica: &str) -> f64 {
        replica_metric(&self.addr, "walship_replica_lag_seconds", replica).unwrap()
    }

    /// Worst lag of `replica` over `secs` seconds.
    fn worst_lag_for(&self, replica: &str, secs: u64) -> f64 {
        let since = Instant::now();
        let mut worst = 0.0f64;
        while since.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_secs(2));
            worst = worst.max(self.lag(replica));
        }
        worst
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the sidecar exits 0.
    fn stop(&mut self) {
        let rep = self.rep.take().expect("running");
        assert!(
            rep.terminate(Duration::from_secs(30)).success(),
            "{}",
            self.log_text()
        );
    }

    /// Wait until every replica's lag is 0.
    fn catch_up(&self, names: &[&str]) {
        assert!(
            wait_for(Duration::from_secs(90), Duration::from_millis(500), || {
                names.iter().all(|r| {
                    replica_metric(&self.addr, "walship_replica_lag_seconds", r) == Some(0.0)
                })
            }),
            "the replicas did not catch up: {}",
            self.log_text()
        );
    }

    /// `restore -o OUT [ARGS] DB` with the config.
    fn restore(&self, out: &Path, args: &[&str]) -> std::process::Output {
        let o = out.to_str().unwrap();
        let all = [
            &["restore", "-o", o][..],
            args,
            &[self.db.to_str().unwrap()],
        ]
        .concat();
        with_config(&self.cfg, &self.a, &all)
    }

    /// Each replica restored with `-replica NAME` equals the source.
    fn each_restores_equal(&self, dir: &Path, names: &[&str]) {
        for name in names {
            let out = dir.join(format!("{name}.db"));
            assert_success(
                &self.restore(&out, &["-replica", name]),
                &format!("restore -replica {name}"),
            );
            assert_same_content(&self.db, &out);
        }
    }
}

fn write_for_a_while(
    db: &Path,
    dir: &Path,
    tx: &str,
    rate: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let report = dir.join("report.json");
    let args = [
        "--tx",
        tx,
        "--rate",
        rate,
        "--checkpoint-every",
        "150",
        "--report",
    ];
    let w = start_writer(
        db,
        &strs(&[&args[..], &[report.to_str().unwrap()]].concat()),
    );
    (w, report)
}

/// The sidecar with two replicas: the first (S3) stopped for 60 s while the application
/// writes; the file:// one keeps its lag meanwhile, the S3 one catches up from the spool
/// once back; both restore equal to the source, and restore falls back when the first is
/// unreachable.
#[test]
fn one_replica_stopped_for_60s_the_other_keeps_its_lag() {
    let Some(mut s3) = PrivateS3::start("one_replica_stopped") else {
        return;
    };
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let a = s3.backend("app");
    let b = Backend::file(&dir.path().join("backup"));
    let yaml = format!("unhealthy-after: 20s\n{}", config(&db, &a, &b));
    let mut l = Lanes::start(dir.path(), &db, a, &yaml, "primary");
    let (writer, report) = write_for_a_while(&db, dir.path(), "750", "10");
    std::thread::sleep(Duration::from_secs(5));
    s3.stop();
    let worst = l.worst_lag_for("backup", 60);
    let (behind, up) = (
        l.lag("primary"),
        replica_metric(&l.addr, "walship_replica_reachable", "primary"),
    );
    eprintln!("during the outage: backup's worst lag {worst:.1}s, primary's {behind:.1}s");
    assert!(
        worst < 5.0,
        "the file:// replica fell behind ({worst}s) while S3 was down"
    );
    assert!(
        behind > 30.0 && up == Some(0.0),
        "the S3 replica did not notice the outage"
    );
    let health = http_get(&l.addr, "/healthz");
    assert!(
        health.contains("503") && health.contains("(replica primary): replica unreachable"),
        "/healthz does not name the unreachable replica: {health}"
    );
    assert!(
        !health.contains("(replica backup)"),
        "/healthz blames the healthy one: {health}"
    );
    s3.resume();
    finish_writer(writer, &report);
    l.catch_up(&["primary", "backup"]);
    let health = http_get(&l.addr, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200"),
        "/healthz after the catch-up: {health}"
    );
    l.stop();
    l.each_restores_equal(dir.path(), &["primary", "backup"]);
    s3.stop();
    let out = dir.path().join("fallback.db");
    let o = l.restore(&out, &[]);
    assert_success(&o, "restore with the first replica down");
    assert!(
        err(&o).contains("restored from replica backup"),
        "{}",
        err(&o)
    );
    assert_same_content(&db, &out);
}

/// A replica that is away longer than its backlog can hold (1 MB here) drops the backlog,
/// asks for a snapshot once it is back and starts its line again there; the other never
/// waits for it, and both restore equal to the source. The one away is the second here.
#[test]
fn a_replica_away_past_the_spool_limit_starts_again_at_a_snapshot() {
    away_past_the_spool_limit(false);
}

/// The same with the one away first: capture does not wait for it either.
#[test]
fn the_first_replica_away_past_the_spool_limit_holds_no_one_back() {
    away_past_the_spool_limit(true);
}

fn away_past_the_spool_limit(away_first: bool) {
    let Some(mut s3) = PrivateS3::start("replica_past_limit") else {
        return;
    };
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let a = s3.backend("app");
    let first = Backend::file(&dir.path().join("first"));
    let other = format!("      - name: first\n        url: {}\n", first.url);
    let away = s3_replica("away", &a);
    let (one, two) = if away_first {
        (away, other)
    } else {
        (other, away)
    };
    let yaml = format!(
        "dbs:\n  - path: {}\n    spool-limit: 1MB\n    replicas:\n{one}{two}",
        db.display()
    );
    let mut l = Lanes::start(dir.path(), &db, a, &yaml, "away");
    let (writer, report) = write_for_a_while(&db, dir.path(), "900", "30");
    std::thread::sleep(Duration::from_secs(3));
    s3.stop();
    let worst = l.worst_lag_for("first", 20);
    eprintln!("while the other was away: worst lag {worst:.1}s");
    assert!(
        worst < 5.0,
        "the first replica waited for the one away ({worst}s)"
    );
    let in_gap = walship::restore::when::format_ms(now_ms() - 1000);
    s3.resume();
    finish_writer(writer, &report);
    l.catch_up(&["first", "away"]);
    l.stop();
    let text = l.log_text();
    assert!(
        text.contains("its backlog passed the spool limit: it starts again at the next snapshot"),
        "the replica away never passed the limit, so this test proves nothing: {text}"
    );
    l.each_restores_equal(dir.path(), &["first", "away"]);
    // A moment the replica away never received: refused, naming what is missing, never
    // the state before the gap handed back as that moment's.
    let out = dir.path().join("gap.db");
    let o = l.restore(&out, &["-timestamp", &in_gap, "-replica", "away"]);
    assert!(
        !o.status.success() && !out.exists(),
        "restored inside the gap: {}",
        err(&o)
    );
    let e = err(&o);
    assert!(
        e.contains("does not hold transactions") && e.contains("Nothing was restored"),
        "{e}"
    );
    let o = l.restore(&out, &["-timestamp", &in_gap, "-replica", "first"]);
    assert_success(&o, "restore -timestamp from the first replica");
}
