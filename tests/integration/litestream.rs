//! Litestream's forms, run as a user switching the image would: `-exec`, `-once`, the
//! default `/etc/litestream.yml` (moved by WALSHIP_ETC), `$VAR` configs, `LITESTREAM_*`
//! credentials, `-no-expand-env`, `-replica`, `-v`, `-addr`, `-generation`,
//! `-parallelism`, `version`, and a path that holds Litestream's own backups.

use crate::support::*;
use std::process::{Command, Output};
use std::time::Duration;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn python_app(body: &str) -> String {
    format!("python3 -c \"{body}\"")
}

#[test]
fn exec_returns_the_apps_exit_code_and_what_it_committed_is_restored() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let b = Backend::file(&dir.path().join("replica"));
    let app = python_app(&format!(
        "import sqlite3,sys; c=sqlite3.connect('{}'); c.execute('PRAGMA busy_timeout=5000'); \
         c.execute('INSERT INTO counters VALUES (\\\"from-child\\\", 7)'); c.commit(); sys.exit(3)",
        db.display()
    ));
    let o = walship(
        &["replicate", "-exec", &app, db.to_str().unwrap(), &b.url],
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("everything committed was shipped"),
        "{}",
        stderr(&o)
    );
    let out = dir.path().join("out.db");
    assert_success(&restore(&b, &out), "restore after -exec");
    assert_same_content(&db, &out);
    let c = rusqlite::Connection::open(&out).unwrap();
    let v: i64 = c
        .query_row(
            "SELECT value FROM counters WHERE name = 'from-child'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, 7);
}

#[test]
fn exec_passes_sigterm_to_the_app() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let b = Backend::file(&dir.path().join("replica"));
    // The app commits one last row when told to stop, then exits 5.
    let script = dir.path().join("app.py");
    std::fs::write(
        &script,
        format!(
            "import signal, sqlite3, sys, time\n\
             def stop(sig, frame):\n\
             \x20   c = sqlite3.connect('{db}')\n\
             \x20   c.execute('PRAGMA busy_timeout=5000')\n\
             \x20   c.execute(\"INSERT INTO counters VALUES ('stopped-by', ?)\", (sig,))\n\
             \x20   c.commit()\n\
             \x20   sys.exit(5)\n\
             signal.signal(signal.SIGTERM, stop)\n\
             open('{ready}', 'w').close()\n\
             while True:\n\
             \x20   time.sleep(0.1)\n",
            db = db.display(),
            ready = dir.path().join("ready").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("replicate.log");
    let cmd = format!("python3 {}", script.display());
    let mut rep = Replicator::start(&db, &b, &["-exec", &cmd], &log);
    assert!(
        wait_for(Duration::from_secs(30), Duration::from_millis(100), || dir
            .path()
            .join("ready")
            .exists()),
        "the app did not start: {}",
        rep.log_text()
    );
    unsafe { libc::kill(rep.pid(), libc::SIGTERM) };
    let st = rep.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(5), "{}", rep.log_text());
    let out = dir.path().join("out.db");
    assert_success(&restore(&b, &out), "restore after the app stopped");
    let c = rusqlite::Connection::open(&out).unwrap();
    let v: i64 = c
        .query_row(
            "SELECT value FROM counters WHERE name = 'stopped-by'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        v,
        libc::SIGTERM as i64,
        "the app got SIGTERM and its last commit shipped"
    );
}

#[test]
fn exec_app_never_starts_when_walship_cannot() {
    let dir = scratch();
    let marker = dir.path().join("started");
    let o = walship(
        &[
            "replicate",
            "-exec",
            &format!("touch {}", marker.display()),
            dir.path().join("missing.db").to_str().unwrap(),
            &format!("file://{}", dir.path().join("r").display()),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.db"), "{}", stderr(&o));
    assert!(
        !marker.exists(),
        "the app must not start when walship cannot"
    );
}

/// `/etc/litestream.yml` read when `/etc/walship.yml` is absent, `$VAR` and `${VAR}`
/// expanded, `-once` ships and exits; the log names the file.
#[test]
fn default_litestream_config_with_dollar_variables_runs() {
    let dir = scratch();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let db = dir.path().join("app.db");
    create_db(&db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO counters VALUES ('a', 1)", [])
        .unwrap();
    let rep_dir = dir.path().join("replica");
    std::fs::write(
        etc.join("litestream.yml"),
        "# a comment with $UNSET in it is left alone\n\
         dbs:\n  - path: $DB_PATH\n    monitor-interval: 1s\n    replicas:\n      - url: file://${REPLICA_DIR}\n        sync-interval: 1s\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(walship_bin())
            .args(args)
            .env("WALSHIP_ETC", &etc)
            .env_remove("WALSHIP_CONFIG")
            .env_remove("LITESTREAM_CONFIG")
            .env("DB_PATH", &db)
            .env("REPLICA_DIR", &rep_dir)
            .output()
            .unwrap()
    };
    let o = run(&["replicate", "-once"]);
    assert_success(&o, "replicate -once with the default litestream.yml");
    let err = stderr(&o);
    assert!(
        err.contains("litestream.yml"),
        "the log names the file: {err}"
    );
    assert!(err.contains("monitor-interval has no effect"), "{err}");
    let out = dir.path().join("out.db");
    assert_success(
        &run(&["restore", "-o", out.to_str().unwrap(), db.to_str().unwrap()]),
        "restore by database path through the default config",
    );
    assert_same_content(&db, &out);
    // -no-expand-env takes `$DB_PATH` literally.
    let o = run(&["replicate", "-no-expand-env", "-once"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("$DB_PATH"), "{}", stderr(&o));
}

#[test]
fn litestream_credential_variables_reach_s3() {
    let Some(b) = Backend::s3("ls-creds") else {
        return;
    };
    let (id, secret) = (b.env[0].1.clone(), b.env[1].1.clone());
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let run = |args: &[&str]| {
        Command::new(walship_bin())
            .args(args)
            .args(&b.flags)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
            .env("LITESTREAM_ACCESS_KEY_ID", &id)
            .env("LITESTREAM_SECRET_ACCESS_KEY", &secret)
            .output()
            .unwrap()
    };
    assert_success(
        &run(&["replicate", "-once", db.to_str().unwrap(), &b.url]),
        "replicate with LITESTREAM_* credentials",
    );
    let out = dir.path().join("out.db");
    assert_success(
        &run(&["restore", "-o", out.to_str().unwrap(), &b.url]),
        "restore with LITESTREAM_* credentials",
    );
    assert_same_content(&db, &out);
}

/// The migration trap: a path with Litestream's backups and no walship generation never
/// lets the init container exit 0 with an empty database. Both layouts are read
/// (tests/integration/litestream_backups.rs), so bytes that are not Litestream's format
/// fail as a corrupt object naming it.
#[test]
fn a_path_holding_litestreams_backups_fails_the_init_container() {
    for (layout, name, says) in [
        (
            "0.5",
            "ltx/0/0000000000000001-0000000000000001.ltx",
            "Litestream LTX file",
        ),
        (
            "0.3",
            "generations/0123456789abcdef/snapshots/00000000.snapshot.lz4",
            "Litestream 0.3 object",
        ),
    ] {
        let dir = scratch();
        let rep = dir.path().join("replica");
        let obj = rep.join(name);
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(&obj, b"litestream bytes").unwrap();
        let out = dir.path().join("db.sqlite3");
        let o = init_restore(&Backend::file(&rep), &out);
        assert!(!o.status.success(), "{layout}: must not exit 0");
        let err = stderr(&o);
        assert!(err.contains("Litestream") && err.contains(says), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn replica_name_verbose_and_version_flags() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    let rep_dir = dir.path().join("replica");
    let cfg = dir.path().join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - name: backup\n        url: file://{}\n",
            db.display(),
            rep_dir.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    assert_success(
        &walship(&["replicate", "-config", c, "-once"], None),
        "replicate -once",
    );
    let out = dir.path().join("out.db");
    let o = Command::new(walship_bin())
        .args([
            "restore",
            "-v",
            "-config",
            c,
            "-replica",
            "backup",
            "-o",
            out.to_str().unwrap(),
            db.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .env_remove("WALSHIP_LOG")
        .output()
        .unwrap();
    assert_success(&o, "restore -replica backup -v");
    assert!(stderr(&o).contains("DEBUG"), "-v logs at debug");
    assert_same_content(&db, &out);
    let o = walship(
        &[
            "generations",
            "-config",
            c,
            "-replica",
            "s3",
            db.to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("\"backup\""), "{}", stderr(&o));
    let o = walship(&["version"], None);
    assert_success(&o, "version");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("walship "));
}

/// `-addr` on replicate, `-generation` and `-parallelism` on restore, written the way
/// Litestream's command lines write them.
#[test]
fn addr_generation_and_parallelism_flags() {
    let dir = scratch();
    let db = dir.path().join("app.db");
    create_db(&db);
    run_writer(&db, dir.path(), &["--tx", "60", "--rate", "300"]);
    let rep_dir = dir.path().join("replica");
    let cfg = dir.path().join("litestream.yml");
    let yaml = format!(
        "dbs:\n  - path: {}\n    replicas:\n      - url: file://{}\n",
        db.display(),
        rep_dir.display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let c = cfg.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let args = strs(&["replicate", "-config", c, "-addr", &addr]);
    let rep = Replicator::start_with(&args, &[], &dir.path().join("walship.log"));
    assert!(
        wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            std::net::TcpStream::connect(&addr).is_ok()
                && http_get(&addr, "/metrics")
                    .lines()
                    .any(|l| l.starts_with("walship_replica_lag_seconds{") && l.ends_with(" 0.0"))
        }),
        "-addr: no /metrics there, or nothing shipped: {}",
        rep.log_text()
    );
    assert!(rep.terminate(Duration::from_secs(30)).success());
    let o = walship(
        &["generations", "-config", c, "-json", db.to_str().unwrap()],
        None,
    );
    assert_success(&o, "generations -json");
    let gens: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = gens[0]["generation"].as_str().unwrap().to_string();
    let out = dir.path().join("out.db");
    let restore = |g: &str| {
        let o = out.to_str().unwrap();
        let args = [
            "restore",
            "-config",
            c,
            "-generation",
            g,
            "-parallelism",
            "2",
            "-o",
            o,
        ];
        walship(&[&args[..], &[db.to_str().unwrap()]].concat(), None)
    };
    let o = restore("0000000000000000aaaa");
    assert!(
        !o.status.success() && !out.exists(),
        "an unknown -generation restored"
    );
    assert!(
        stderr(&o).contains("0000000000000000aaaa"),
        "{}",
        stderr(&o)
    );
    assert_success(&restore(&g), "restore -generation -parallelism");
    assert_same_content(&db, &out);
}
