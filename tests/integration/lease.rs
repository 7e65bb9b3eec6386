//! One writer per replica path (docs/LEASE.md), as a user meets it: a rolling deploy
//! where the new walship starts while the old one still runs, a second walship refused
//! by name, a paused holder whose lease expired and was taken over, a killed holder's
//! successor, the same database listed twice. Every restore is compared with the state the
//! writer recorded.

use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};
use walship::restore::when::format_ms;

fn wait_log(rep: &Replicator, what: &str, within: Duration) -> bool {
    wait_for(within, Duration::from_millis(50), || {
        rep.log_text().contains(what)
    })
}

/// Started replicating: it began or resumed a generation.
fn replicating(rep: &Replicator) -> bool {
    let t = rep.log_text();
    t.contains("new generation") || t.contains("resuming generation")
}

/// Restore at `at` and compare with the recorded state then.
fn check_at(backend: &Backend, dir: &Path, name: &str, at: u64, want: &str) {
    let out = dir.join(name);
    let ts = format_ms(at);
    let o = restore_at(backend, &ts, &out);
    assert_success(&o, &format!("restore --timestamp {ts}"));
    assert_eq!(content_hash(&out), want, "restore at {ts}");
}

/// Rolling deploy, 10 rounds: each new walship (its own spool, as a new pod has) starts
/// 10 s before the old one gets SIGTERM, with `--lease-wait`, and starts replicating only
/// once the old one released the path; a third without `--lease-wait` is refused naming
/// the holder. After every round the newest state restores to at least what the old one
/// had when it stopped; at the end the newest state and point-in-time targets equal the
/// writer's record.
fn rolling_deploy(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let record = dir.join("record.txt");
    let report = dir.join("report.json");
    let writer = start_writer(
        &db,
        &strs(&[
            "--tx",
            "5000",
            "--rate",
            "200",
            "--quiet-every",
            "40",
            "--quiet-ms",
            "500",
            "--checkpoint-every",
            "700",
            "--record",
            record.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let pod = |k: usize| {
        let spool = dir.join(format!("spool-{k}"));
        (
            vec![
                "--lease-wait".to_string(),
                "60s".to_string(),
                "--spool-dir".to_string(),
                spool.display().to_string(),
            ],
            dir.join(format!("walship-{k}.log")),
        )
    };
    let start = |k: usize| {
        let (args, log) = pod(k);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Replicator::start(&db, &backend, &a, &log)
    };
    let mut old = start(0);
    assert!(
        wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            replicating(&old)
        }),
        "first walship never started: {}",
        old.log_text()
    );
    // Hand-overs: commits made after the old walship's last scan and before the new one's
    // first carry the time the new one first saw them (docs/LEASE.md), like commits made
    // while walship is down; targets just after them are not exact and are not checked.
    let mut blind: Vec<(u64, u64)> = Vec::new();
    for round in 1..=10 {
        let new = start(round);
        std::thread::sleep(Duration::from_secs(10));
        assert!(
            new.log_text().contains("waiting for the lease") && !replicating(&new),
            "round {round}: the new walship did not wait for the old one: {}",
            new.log_text()
        );
        if round == 5 {
            // Without --lease-wait: refused at once, naming the holder.
            let o = walship(
                &[
                    "replicate",
                    db.to_str().unwrap(),
                    &backend.url,
                    "--spool-dir",
                    dir.join("spool-x").to_str().unwrap(),
                ],
                Some(&backend),
            );
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "a second writer was accepted: {e}");
            assert!(
                e.contains(&format!("walship pid {} on host", old.pid()))
                    && e.contains("--lease-wait"),
                "{e}"
            );
        }
        let shipped = read_record(&record).len();
        let old_log = dir.join(format!("walship-{}.log", round - 1));
        let handover_from = now_ms();
        let status = old.terminate(Duration::from_secs(60));
        assert!(
            status.success(),
            "round {round}: old walship exited {status}"
        );
        assert!(
            wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
                replicating(&new)
            }),
            "round {round}: the new walship did not start after the old one released: {}",
            new.log_text()
        );
        blind.push((handover_from.saturating_sub(150), now_ms() + 1000));
        // The newest state holds at least everything the old one had when it stopped.
        let out = dir.join(format!("round-{round}.db"));
        let o = restore(&backend, &out);
        assert_success(&o, &format!("round {round}: restore"));
        let got = content_hash(&out);
        let commits = read_record(&record);
        let at = commits.iter().rposition(|c| c.hash == got);
        assert!(
            at.is_some_and(|i| i + 1 >= shipped),
            "round {round}: the newest state restored is {:?} of {} commits, the old walship \
             had {shipped} when it got SIGTERM; its log:\n{}",
            at.map(|i| i + 1),
            commits.len(),
            std::fs::read_to_string(&old_log).unwrap_or_default()
        );
        old = new;
    }
    finish_writer(writer, &report);
    std::thread::sleep(Duration::from_millis(500));
    let status = old.terminate(Duration::from_secs(60));
    assert!(status.success());
    let commits = read_record(&record);
    assert_eq!(commits.len(), 5000);
    let out = dir.join("final.db");
    assert_success(&restore(&backend, &out), "final restore");
    assert_eq!(content_hash(&out), commits.last().unwrap().hash);
    // Point-in-time targets 300 ms after a commit followed by a quiet spell, spread over
    // the whole run (and so over every hand-over).
    let quiet: Vec<usize> = (0..commits.len() - 1)
        .filter(|&j| commits[j + 1].ms >= commits[j].ms + 450)
        .filter(|&j| !blind.iter().any(|&(a, b)| (a..=b).contains(&commits[j].ms)))
        .collect();
    assert!(quiet.len() >= 12, "only {} quiet spells", quiet.len());
    let step = quiet.len() / 12;
    for (n, &j) in quiet.iter().step_by(step.max(1)).take(12).enumerate() {
        check_at(
            &backend,
            dir,
            &format!("pitr-{n}.db"),
            commits[j].ms + 300,
            &commits[j].hash,
        );
    }
}

on_each_backend!(
    rolling_deploy_file,
    rolling_deploy_s3,
    "lease-rolling",
    |b: Backend, dir: &Path| rolling_deploy(b, dir)
);

/// A walship with a 2 s lease that waits for the path (its own spool): it must take over
/// the expired lease of the one before and begin a new generation.
fn take_over(db: &Path, backend: &Backend, spool: &str, log: &Path) -> Replicator {
    let rep = Replicator::start(
        db,
        backend,
        &[
            "--lease-ttl",
            "2s",
            "--lease-wait",
            "30s",
            "--spool-dir",
            spool,
        ],
        log,
    );
    assert!(
        wait_log(&rep, "took over an expired lease", Duration::from_secs(20)),
        "{}",
        rep.log_text()
    );
    assert!(wait_log(&rep, "new generation", Duration::from_secs(10)));
    rep
}

/// Every object name of the replica.
fn names(backend: &Backend) -> Vec<String> {
    list_objects(backend).into_keys().collect()
}

/// A SIGSTOPped holder's lease expires and another walship takes the path over (a new
/// generation); after SIGCONT the old one says it lost the lease, exits non-zero, and
/// writes nothing more; every restore equals the record. Then a SIGKILLed holder: its
/// successor on another spool is refused while the lease is fresh and takes over after
/// expiry with --lease-wait; a restart on the holder's own spool takes over at once.
fn lost_lease(backend: Backend, dir: &Path) {
    let db = dir.join("app.db");
    create_db(&db);
    let record = dir.join("record.txt");
    let report = dir.join("report.json");
    let writer = start_writer(
        &db,
        &strs(&[
            "--tx",
            "2400",
            "--rate",
            "200",
            "--quiet-every",
            "40",
            "--quiet-ms",
            "500",
            "--record",
            record.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]),
    );
    let spool = |k: &str| dir.join(format!("spool-{k}")).display().to_string();
    let (sa, sb, sc) = (spool("a"), spool("b"), spool("c"));
    let a = Replicator::start(
        &db,
        &backend,
        &["--lease-ttl", "2s", "--spool-dir", &sa],
        &dir.join("a.log"),
    );
    assert!(wait_log(&a, "new generation", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(2));
    unsafe { libc::kill(a.pid(), libc::SIGSTOP) };
    let stopped_at = Instant::now();
    let b = take_over(&db, &backend, &sb, &dir.join("b.log"));
    assert!(
        stopped_at.elapsed() >= Duration::from_secs(2),
        "taken before expiry"
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = names(&backend);
    unsafe { libc::kill(a.pid(), libc::SIGCONT) };
    let mut a = a;
    let status = a.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "the fenced walship exited 0");
    assert!(
        a.log_text().contains("lease of replica"),
        "{}",
        a.log_text()
    );
    assert!(a.log_text().contains("was lost"), "{}", a.log_text());
    // Nothing from the fenced walship after it woke: every new object is b's generation's.
    let gen_of = |n: &str| n.split('/').nth(1).map(str::to_string);
    let b_gen = {
        let t = b.log_text();
        let i = t.rfind("capture: new generation").unwrap();
        t[i..]
            .split("generation=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    std::thread::sleep(Duration::from_secs(1));
    for n in names(&backend) {
        if !before.contains(&n) && n.starts_with("generations/") {
            assert_eq!(
                gen_of(&n),
                Some(b_gen.clone()),
                "{n} appeared after SIGCONT"
            );
        }
    }
    // b is SIGKILLed: a successor on another spool is refused while its lease is fresh...
    b.kill();
    let o = walship(
        &[
            "replicate",
            db.to_str().unwrap(),
            &backend.url,
            "--spool-dir",
            &sc,
        ],
        Some(&backend),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("being written by another walship"),
        "{e}"
    );
    // ... and takes over after expiry with --lease-wait.
    let c = take_over(&db, &backend, &sc, &dir.join("c.log"));
    std::thread::sleep(Duration::from_secs(1));
    // c is SIGKILLed and restarted on its own spool: the lease is its own, at once.
    c.kill();
    let restarted = Instant::now();
    let c2 = Replicator::start(
        &db,
        &backend,
        &["--lease-ttl", "2s", "--spool-dir", &sc],
        &dir.join("c2.log"),
    );
    assert!(
        wait_log(&c2, "earlier walship left", Duration::from_secs(10)),
        "{}",
        c2.log_text()
    );
    assert!(restarted.elapsed() < Duration::from_secs(2));
    finish_writer(writer, &report);
    std::thread::sleep(Duration::from_millis(500));
    assert!(c2.terminate(Duration::from_secs(60)).success());
    let commits = read_record(&record);
    let out = dir.join("final.db");
    assert_success(&restore(&backend, &out), "final restore");
    assert_eq!(content_hash(&out), commits.last().unwrap().hash);
}

on_each_backend!(
    lost_lease_file,
    lost_lease_s3,
    "lease-lost",
    |b: Backend, dir: &Path| lost_lease(b, dir)
);

/// The same database listed twice in one config is refused at start-up, naming it.
#[test]
fn the_same_database_twice_is_refused() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let cfg = dir.path().join("walship.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {0}\n    replica: {{url: file://{1}/r1}}\n  - path: {0}\n    \
             replica: {{url: file://{1}/r2}}\n",
            db.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let o = walship(&["replicate", "--config", cfg.to_str().unwrap()], None);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("listed twice") && e.contains("app.db"), "{e}");
}

/// The same on a store that ignores conditional writes, as Garage does (walship told to
/// assume so): the lease falls back to write, wait and read back, and still refuses a
/// second writer, fences a paused one and takes over an expired lease.
#[test]
fn lost_lease_s3_without_conditional_writes() {
    let Some(mut backend) = Backend::s3("lease-garage") else {
        return;
    };
    backend
        .env
        .push(("WALSHIP_ASSUME_NO_CONDITIONAL_WRITES".into(), "1".into()));
    let dir = scratch();
    lost_lease(backend, dir.path());
}

/// One committed row, as the application would write it.
fn insert(db: &Path, k: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute(
        "INSERT INTO items(k, v, n) VALUES (?1, randomblob(200), 1)",
        [k],
    )
    .unwrap();
}

/// Replicate `db` until it has begun or resumed, commit one more row, SIGTERM (which ships
/// everything); the log.
fn replicate_once(db: &Path, backend: &Backend, extra: &[&str], log: &Path) -> String {
    let r = Replicator::start(db, backend, extra, log);
    assert!(
        wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            replicating(&r)
        }),
        "{}",
        r.log_text()
    );
    insert(db, "more");
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(r.terminate(Duration::from_secs(60)).success(), "{}", text());
    text()
}

fn newest_equals(backend: &Backend, dir: &Path, name: &str, source: &Path) {
    let out = dir.join(name);
    assert_success(&restore(backend, &out), &format!("restore ({name})"));
    assert_eq!(dump(&out), dump(source), "{name}: newest state");
}

fn objects_but_the_lease(backend: &Backend) -> std::collections::BTreeMap<String, u64> {
    let mut o = list_objects(backend);
    o.retain(|k, _| !k.ends_with("lease.json"));
    o
}

/// Two databases on one replica path (a copy-pasted manifest): the second is refused,
/// naming both, and writes nothing; the first goes on; a copy restored from the path
/// continues its history; --force-new-history starts a new one deliberately, after which
/// the first database is the one refused.
fn different_database(backend: Backend, dir: &Path) {
    let [a, b, c] = ["a", "b", "c"].map(|d| {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        dir.join(d).join("app.db")
    });
    create_db(&a);
    insert(&a, "a1");
    replicate_once(&a, &backend, &[], &dir.join("a1.log"));
    newest_equals(&backend, dir, "r1.db", &a);

    create_db(&b);
    insert(&b, "b1");
    let before = objects_but_the_lease(&backend);
    let mut rb = Replicator::start(&b, &backend, &[], &dir.join("b1.log"));
    let st = rb.wait_exit(Duration::from_secs(30));
    let log = rb.log_text();
    assert_eq!(st.code(), Some(2), "{log}");
    for want in [
        a.display().to_string(),
        b.display().to_string(),
        "another database's history".into(),
        "--force-new-history".into(),
    ] {
        assert!(log.contains(&want), "{want:?} not in: {log}");
    }
    assert_eq!(
        objects_but_the_lease(&backend),
        before,
        "the refused walship wrote"
    );

    let log = replicate_once(&a, &backend, &[], &dir.join("a2.log"));
    assert!(log.contains("resuming generation"), "{log}");
    newest_equals(&backend, dir, "r2.db", &a);

    // Restored from the path (its spool beside it gets the history id): not refused.
    assert_success(&restore(&backend, &c), "restore to c");
    insert(&c, "c1");
    replicate_once(&c, &backend, &[], &dir.join("c1.log"));
    newest_equals(&backend, dir, "r3.db", &c);

    let log = replicate_once(&b, &backend, &["--force-new-history"], &dir.join("b2.log"));
    assert!(log.contains("a new history (--force-new-history)"), "{log}");
    newest_equals(&backend, dir, "r4.db", &b);
    let mut ra = Replicator::start(&a, &backend, &[], &dir.join("a3.log"));
    let st = ra.wait_exit(Duration::from_secs(30));
    let log = ra.log_text();
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains(&b.display().to_string()), "{log}");
    newest_equals(&backend, dir, "r5.db", &b);
    // Restored through the first database's config, the path gives back that database's
    // history (continued by its restored copy), not the newest generation, b's.
    let cfg = dir.join("a.yml");
    let endpoint = endpoint_yaml(&backend);
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      url: {}{endpoint}\n",
            a.display(),
            backend.url
        ),
    )
    .unwrap();
    let out = dir.join("r6.db");
    let o = walship(
        &[
            "restore",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            a.to_str().unwrap(),
        ],
        // (the config has the endpoint; the credentials come from the environment)
        Some(&Backend {
            flags: vec![],
            ..backend.clone()
        }),
    );
    assert_success(&o, "restore a's history through its config");
    assert_eq!(dump(&out), dump(&c), "the configured database's history");
    assert_ne!(dump(&out), dump(&b));
}

on_each_backend!(
    a_different_database_on_the_path_is_refused_file,
    a_different_database_on_the_path_is_refused_s3,
    "lease-identity",
    |b: Backend, dir: &Path| different_database(b, dir)
);

/// A rolling deploy's two pods on one node share the volume, so the spool: with
/// --lease-wait the new walship waits for the old one to exit instead of being refused.
#[test]
fn a_shared_spool_is_waited_for_with_lease_wait() {
    let dir = scratch();
    let backend = Backend::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    create_db(&db);
    insert(&db, "first");
    let old = Replicator::start(&db, &backend, &[], &dir.path().join("old.log"));
    assert!(
        wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            replicating(&old)
        }),
        "{}",
        old.log_text()
    );
    let mut refused = Replicator::start(&db, &backend, &[], &dir.path().join("refused.log"));
    let st = refused.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(2), "{}", refused.log_text());
    assert!(refused.log_text().contains("is in use by another walship"));
    let new = Replicator::start(
        &db,
        &backend,
        &["--lease-wait", "60s"],
        &dir.path().join("new.log"),
    );
    assert!(wait_log(
        &new,
        "waiting for it to exit",
        Duration::from_secs(20)
    ));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!replicating(&new), "{}", new.log_text());
    insert(&db, "second");
    assert!(old.terminate(Duration::from_secs(60)).success());
    assert!(
        wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            replicating(&new)
        }),
        "{}",
        new.log_text()
    );
    insert(&db, "third");
    std::thread::sleep(Duration::from_millis(300));
    assert!(new.terminate(Duration::from_secs(60)).success());
    newest_equals(&backend, dir.path(), "r.db", &db);
}
