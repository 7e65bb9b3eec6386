//! Unit tests of `config/mod.rs`.

use super::*;

fn env(k: &str) -> Option<String> {
    match k {
        "BUCKET" => Some("b1".into()),
        "KEY" => Some("AKIA".into()),
        _ => None,
    }
}

#[test]
fn litestream_style_config_resolves() {
    let c = parse(
        r#"
addr: ":9090"
dbs:
  - path: /data/app.db
    monitor-interval: 1s
    replicas:
      - type: s3
        bucket: ${BUCKET}
        path: apps/app/
        endpoint: http://127.0.0.1:9000
        region: us-east-1
        force-path-style: true
        access-key-id: ${KEY}
        sync-interval: 10s
        retention: 168h
"#,
        &env,
    )
    .unwrap();
    assert_eq!(c.metrics_addr.unwrap().port(), 9090);
    let db = &c.dbs[0];
    assert_eq!(db.sync_interval, Duration::from_secs(10));
    assert_eq!(db.replica.url(), "s3://b1/apps/app");
    assert_eq!(db.replica.access_key_id.as_deref(), Some("AKIA"));
    assert_eq!(db.spool_dir, PathBuf::from("/data/.app.db-walship"));
    assert_eq!(db.min_checkpoint_pages, DEFAULT_MIN_CHECKPOINT_PAGES);
}

#[test]
fn single_replica_key_and_url_form() {
    let c = parse(
        "dbs:\n  - path: a.db\n    replica:\n      url: file:///tmp/r\n",
        &env,
    )
    .unwrap();
    assert_eq!(
        c.dbs[0].replica.location,
        Location::File {
            dir: "/tmp/r".into()
        }
    );
}

fn err(text: &str) -> String {
    parse(text, &env).unwrap_err().to_string()
}

#[test]
fn unknown_key_is_named() {
    let e = err("dbs:\n  - path: a.db\n    replica: {url: file:///x, synk-interval: 1s}\n");
    assert!(e.contains("synk-interval"), "{e}");
}

#[test]
fn malformed_yaml_is_reported() {
    assert!(err("dbs: [\n").contains("malformed YAML"));
}

#[test]
fn every_missing_variable_is_named() {
    let e = err("dbs:\n  - path: ${DB_PATH}\n    replica: {url: \"s3://${NOPE}/x\"}\n");
    assert!(e.contains("DB_PATH, NOPE"), "{e}");
}

#[test]
fn literal_credentials_are_refused() {
    let e = err("dbs:\n  - path: a\n    replica: {url: s3://b, secret-access-key: hunter2}\n");
    assert!(e.contains("dbs[0].replica.secret-access-key"), "{e}");
    assert!(!e.contains("hunter2"), "the secret must not be echoed: {e}");
}

#[test]
fn bad_values_are_named() {
    assert!(err("dbs:\n  - replica: {url: file:///x}\n").contains("dbs[0].path"));
    assert!(err("dbs:\n  - path: a\n").contains("no replica"));
    assert!(
        err("dbs:\n  - path: a\n    replica: {url: file:///x, sync-interval: soon}\n")
            .contains("sync-interval")
    );
    assert!(err("dbs:\n  - path: a\n    replica: {url: \"ftp://x\"}\n").contains("ftp"));
    assert!(
        err("dbs:\n  - path: a\n    spool-limit: lots\n    replica: {url: file:///x}\n")
            .contains("spool-limit")
    );
}

#[test]
fn snapshot_and_validation_settings() {
    let one = |r: &str| {
        parse(
            &format!("dbs:\n  - path: a\n    replica: {{url: file:///x{r}}}\n"),
            &env,
        )
        .unwrap()
        .dbs
        .remove(0)
    };
    let d = one("");
    assert_eq!(d.snapshot_interval, Some(DEFAULT_SNAPSHOT_INTERVAL));
    assert_eq!(d.snapshot_wal_ratio, DEFAULT_SNAPSHOT_WAL_RATIO);
    assert_eq!(d.validation_interval, None);
    let d = one(", snapshot-interval: 1h, snapshot-wal-ratio: 0.5, validation-interval: 6h");
    assert_eq!(d.snapshot_interval, Some(Duration::from_secs(3600)));
    assert_eq!(d.snapshot_wal_ratio, 0.5);
    assert_eq!(d.validation_interval, Some(Duration::from_secs(6 * 3600)));
    assert_eq!(one(", snapshot-interval: 0s").snapshot_interval, None);
    assert_eq!(d.retention, Some(DEFAULT_RETENTION));
    let d = one(
        ", retention: 168h, retention-check-interval: 10m, retention-tiers: {hourly: 24, daily: 7}",
    );
    assert_eq!(d.retention, Some(Duration::from_secs(168 * 3600)));
    assert_eq!(d.retention_check_interval, Duration::from_secs(600));
    assert_eq!((d.retention_tiers.hourly, d.retention_tiers.daily), (24, 7));
    assert_eq!(one(", retention: 0s").retention, None);
    // YAML numbers: `0` (as the docs write it) and plain seconds refused with the key.
    assert_eq!(one(", retention: 0").retention, None);
    assert_eq!(one(", snapshot-interval: 0").snapshot_interval, None);
    let e = err("dbs:\n  - path: a\n    replica: {url: file:///x, sync-interval: 5}\n");
    assert!(e.contains("sync-interval") && e.contains("10s"), "{e}");
    let d = parse(
        "dbs:\n  - path: a\n    spool-limit: 1000000\n    replica: {url: file:///x}\n",
        &env,
    )
    .unwrap();
    assert_eq!(d.dbs[0].spool_limit, 1_000_000);
    assert!(
        err("dbs:\n  - path: a\n    replica: {url: file:///x, retention-tiers: {yearly: 2}}\n")
            .contains("yearly")
    );
    assert!(
        err("dbs:\n  - path: a\n    replica: {url: file:///x, snapshot-wal-ratio: -1}\n")
            .contains("snapshot-wal-ratio")
    );
}

#[test]
fn sizes_and_locations() {
    assert_eq!(parse_size("k", "256MiB").unwrap(), 256 << 20);
    assert_eq!(parse_size("k", "1GB").unwrap(), 1_000_000_000);
    assert_eq!(parse_size("k", "4096").unwrap(), 4096);
    assert_eq!(
        parse_location("s3://bkt/a/b/").unwrap(),
        Location::S3 {
            bucket: "bkt".into(),
            prefix: "a/b".into()
        }
    );
    assert_eq!(
        parse_location("./rel").unwrap(),
        Location::File {
            dir: "./rel".into()
        }
    );
    assert!(parse_location("s3:///x").is_err());
}

#[test]
fn zero_overflowing_and_impossible_values_name_the_setting() {
    let err = |yaml: &str| match parse(yaml, &env) {
        Err(Error::Config(m)) => m,
        other => panic!("accepted {yaml:?}: {other:?}"),
    };
    let db =
        |extra: &str| format!("dbs:\n  - path: a\n    {extra}\n    replica: {{url: file:///x}}\n");
    let m = err(&db("spool-limit: 0"));
    assert!(
        m.contains("dbs[0].spool-limit") && m.contains("too small"),
        "{m}"
    );
    let m = err(&db("spool-limit: 17179869184GiB"));
    assert!(m.contains("spool-limit") && m.contains("too large"), "{m}");
    let m = err(&db("spool-limit: \"99999999999999999999999\""));
    assert!(m.contains("too large"), "{m}");
    let m = err("unhealthy-after: 0s\ndbs: []\n");
    assert!(m.contains("unhealthy-after must be above zero"), "{m}");
    let m = err("shutdown-timeout: 0\ndbs: []\n");
    assert!(m.contains("shutdown-timeout must be above zero"), "{m}");
    let m = err("shutdown-timeout: 99999999999y\ndbs: []\n");
    assert!(m.contains("shutdown-timeout"), "{m}");
    assert!(parse_duration("k", "200y").is_err());
    assert_eq!(parse_spool_limit("k", "1MB").unwrap(), 1_000_000);
}
