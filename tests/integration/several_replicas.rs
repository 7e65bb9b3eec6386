//! A database with several replicas (Litestream 0.3's `replicas:`): restore takes the one
//! with the newest state, or `-replica NAME`, and falls back to the next when one is
//! unreachable or damaged, saying so; init mode never starts empty while a replica cannot
//! be asked; cleanup cleans each. The replicas are a private S3 server (stopped at will)
//! and a file:// directory, each written by walship.

use crate::support::*;
use std::path::Path;

fn config(db: &Path, a: &Backend, b: &Backend) -> String {
    let rest = a.url.strip_prefix("s3://").unwrap();
    let (bucket, path) = rest.split_once('/').unwrap();
    format!(
        "dbs:\n  - path: {}\n    replicas:\n      - name: primary\n        type: s3\n        \
         bucket: {bucket}\n        path: {path}\n        endpoint: {}\n        region: \
         us-east-1\n        force-path-style: true\n      - name: backup\n        url: {}\n",
        db.display(),
        a.flags[1],
        b.url
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

    // replicate writes one replica per database in this version: refused, named.
    let o = with_config(&cfg, &a, &["replicate", "-once"]);
    assert!(!o.status.success(), "replicate accepted several replicas");
    assert!(err(&o).contains("lists 2 replicas"), "{}", err(&o));

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
