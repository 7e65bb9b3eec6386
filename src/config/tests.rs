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
fn unknown_key_is_a_note_but_a_walship_typo_is_named() {
    let c = parse(
        "dbs:\n  - path: a.db\n    replica: {url: file:///x, synk-interval: 1s}\n",
        &env,
    )
    .unwrap();
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("synk-interval") && n.contains("sync-interval")),
        "{:?}",
        c.notes
    );
    let e = err("dbs:\n  - path: a.db\n    journal-fsynk: true\n    replica: {url: file:///x}\n");
    assert!(
        e.contains("journal-fsynk") && e.contains("journal-fsync"),
        "{e}"
    );
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
fn literal_credentials_warn_and_strict_secrets_refuses_them() {
    let text = "dbs:\n  - path: a\n    replica: {url: s3://b, secret-access-key: hunter2, access-key-id: AKIA1}\n";
    let c = parse(text, &env).unwrap();
    assert_eq!(
        c.dbs[0].replica.secret_access_key.as_deref(),
        Some("hunter2")
    );
    let warn: Vec<_> = c.notes.iter().filter(|n| n.contains("literal")).collect();
    assert_eq!(warn.len(), 2, "{:?}", c.notes);
    assert!(
        warn.iter()
            .all(|n| !n.contains("hunter2") && !n.contains("AKIA1"))
    );
    assert!(warn[0].contains("AWS_") && warn[0].contains("strict-secrets"));
    let e = err(&format!("strict-secrets: true\n{text}"));
    assert!(e.contains("dbs[0].replica.secret-access-key"), "{e}");
    assert!(!e.contains("hunter2"), "the secret must not be echoed: {e}");
    // A `$VAR` reference is not a literal.
    let c = parse(
        "strict-secrets: true\ndbs:\n  - path: a\n    replica: {url: s3://b, access-key-id: $KEY}\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.dbs[0].replica.access_key_id.as_deref(), Some("AKIA"));
}

#[test]
fn litestream_05_top_level_settings_are_honoured() {
    let c = parse(
        r#"
access-key-id: $KEY
secret-access-key: ${KEY}
bucket: $BUCKET
endpoint: fly.storage.tigris.dev
sync-interval: 5s
snapshot: {interval: 2h, retention: 72h}
validation: {interval: 12h}
logging: {level: debug, type: json, stderr: true}
exec: "node server.js"
shutdown-sync-timeout: 9s
socket: {enabled: true, path: /var/run/litestream.sock}
dbs:
  - path: /data/a.db
    replica: {type: s3, path: a}
  - path: /data/b.db
    snapshot: {retention: 1h}
    replica: {url: s3://other/b, sync-interval: 1s, snapshot-interval: 0}
"#,
        &env,
    )
    .unwrap();
    let (a, b) = (&c.dbs[0], &c.dbs[1]);
    assert_eq!(a.replica.url(), "s3://b1/a");
    assert_eq!(
        a.replica.endpoint.as_deref(),
        Some("fly.storage.tigris.dev")
    );
    assert_eq!(a.sync_interval, Duration::from_secs(5));
    assert_eq!(a.snapshot_interval, Some(Duration::from_secs(7200)));
    assert_eq!(a.retention, Some(Duration::from_secs(72 * 3600)));
    assert_eq!(a.validation_interval, Some(Duration::from_secs(12 * 3600)));
    assert_eq!(b.replica.url(), "s3://other/b");
    assert_eq!(b.sync_interval, Duration::from_secs(1));
    assert_eq!(b.snapshot_interval, None);
    assert_eq!(b.retention, Some(Duration::from_secs(3600)));
    assert!(c.log_json);
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert_eq!(c.exec.as_deref(), Some("node server.js"));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(9));
    assert!(
        c.notes
            .iter()
            .any(|n| n.starts_with("socket has no effect"))
    );
    assert!(
        c.notes
            .iter()
            .any(|n| n.starts_with("logging.stderr has no effect"))
    );
    let off = parse(
        "retention: {enabled: false}\ndbs:\n  - path: a\n    replica: {url: file:///x, retention: 1h}\n",
        &env,
    )
    .unwrap();
    assert_eq!(
        off.dbs[0].retention, None,
        "retention.enabled: false deletes nothing"
    );
}

#[test]
fn replica_url_query_is_honoured_and_unknown_query_is_refused() {
    let c = parse(
        "dbs:\n  - path: a\n    replica:\n      url: s3://bkt/db?endpoint=minio:9000&region=eu-1&force-path-style=true\n",
        &env,
    )
    .unwrap();
    let r = &c.dbs[0].replica;
    assert_eq!(r.url(), "s3://bkt/db");
    assert_eq!(r.endpoint.as_deref(), Some("minio:9000"));
    assert_eq!(r.region.as_deref(), Some("eu-1"));
    assert_eq!(r.force_path_style, Some(true));
    let e = err("dbs:\n  - path: a\n    replica: {url: \"s3://b/x?endpont=h\"}\n");
    assert!(e.contains("endpont"), "{e}");
}

#[test]
fn anchors_and_merge_keys_work_and_the_holder_key_is_a_note() {
    let c = parse(
        r#"
replica_defaults: &r
  type: s3
  bucket: $BUCKET
  sync-interval: 3s
dbs:
  - path: /data/a.db
    replica:
      <<: *r
      path: a
"#,
        &env,
    )
    .unwrap();
    assert_eq!(c.dbs[0].replica.url(), "s3://b1/a");
    assert_eq!(c.dbs[0].sync_interval, Duration::from_secs(3));
    assert!(c.notes.iter().any(|n| n.contains("replica_defaults")));
}

#[test]
fn typed_values_from_variables() {
    let env = |k: &str| match k {
        "PAGES" => Some("2000".to_string()),
        "FPS" => Some("true".to_string()),
        "BAD" => Some("many".to_string()),
        _ => None,
    };
    let c = parse(
        "dbs:\n  - path: a\n    min-checkpoint-page-count: ${PAGES}\n    replica: {url: s3://b, force-path-style: $FPS}\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.dbs[0].min_checkpoint_pages, 2000);
    assert_eq!(c.dbs[0].replica.force_path_style, Some(true));
    let e = parse(
        "dbs:\n  - path: a\n    min-checkpoint-page-count: $BAD\n    replica: {url: s3://b}\n",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("dbs[0].min-checkpoint-page-count") && e.contains("many"),
        "{e}"
    );
}

#[test]
fn every_schema_key_that_is_honoured_reaches_serde() {
    // A key the schema keeps but the raw structs lack would fail every config using it.
    fn sample(keys: schema::Keys) -> serde_yaml_ng::Value {
        let mut m = serde_yaml_ng::Mapping::new();
        for key in keys.iter().flat_map(|t| t.iter()) {
            if !matches!(key.use_, schema::Use::Both | schema::Use::Walship) {
                continue;
            }
            let v = match key.ty {
                schema::Ty::Map(sub) => sample(sub),
                schema::Ty::Maps(sub) => serde_yaml_ng::Value::Sequence(vec![sample(sub)]),
                schema::Ty::Bool => true.into(),
                schema::Ty::Int => 5.into(),
                schema::Ty::Float => 0.5.into(),
                schema::Ty::Duration => "1s".into(),
                schema::Ty::Any => continue,
                schema::Ty::Text | schema::Ty::Scalar => "x".into(),
            };
            m.insert(key.name.into(), v);
        }
        serde_yaml_ng::Value::Mapping(m)
    }
    let tree = sample(schema::TOP);
    if let Err(e) = serde_yaml_ng::from_value::<RawConfig>(tree) {
        panic!("{e}");
    }
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

#[test]
fn several_replicas_are_kept_in_order_and_named() {
    let c = parse(
        "dbs:\n  - path: a.db\n    replicas:\n      - url: file:///tmp/r1\n      - name: far\n        url: s3://b/p\n",
        &env,
    )
    .unwrap();
    let names: Vec<String> = c.dbs[0].replicas().map(|r| r.name()).collect();
    assert_eq!(names, ["file", "far"]);
    assert_eq!(c.dbs[0].more_replicas[0].url(), "s3://b/p");
    let one = c.dbs[0].clone().only(c.dbs[0].more_replicas[0].clone());
    assert_eq!(
        (one.replica.url().as_str(), one.more_replicas.len()),
        ("s3://b/p", 0)
    );
    let e =
        err("dbs:\n  - path: a.db\n    replicas:\n      - url: s3://b/1\n      - url: s3://b/2\n");
    assert!(e.contains("both named \"s3\""), "{e}");
    let e = err(
        "dbs:\n  - path: /pg\n    type: postgres\n    replicas:\n      - url: s3://b/1\n      - name: x\n        url: s3://b/2\n",
    );
    assert!(e.contains("PostgreSQL cluster archives to one"), "{e}");
}

#[test]
fn postgres_stream_mode_and_slot_are_checked() {
    let load = |db: &str| {
        parse(
            &format!("dbs:\n  - path: /pg\n{db}    replica:\n      url: file:///r\n"),
            &env,
        )
    };
    let c = load("    type: postgres\n    mode: stream\n").unwrap();
    assert_eq!(c.dbs[0].stream_slot.as_deref(), Some("walship"));
    let c = load("    type: postgres\n    mode: stream\n    slot: pg_1\n").unwrap();
    assert_eq!(c.dbs[0].stream_slot.as_deref(), Some("pg_1"));
    assert_eq!(
        load("    type: postgres\n").unwrap().dbs[0].stream_slot,
        None
    );
    for (db, says) in [
        (
            "    type: postgres\n    mode: streaming\n",
            "is not a PostgreSQL mode",
        ),
        (
            "    type: postgres\n    mode: stream\n    slot: Bad-Name\n",
            "a slot name is",
        ),
        (
            "    type: postgres\n    slot: s\n",
            "archive mode uses no slot",
        ),
        ("    mode: stream\n", "are PostgreSQL settings"),
    ] {
        let m = load(db).unwrap_err().to_string();
        assert!(m.contains(says), "{db:?}: {m}");
    }
}
