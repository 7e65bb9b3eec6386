//! Two clusters on one replica path: the second is refused, `--force-new-history` hands
//! the path over, and restore picks the configured cluster.

use super::*;

/// Start `pg` with archiving on but its command failing: only a sidecar archives.
pub(crate) fn start_without_archiver(pg: &mut Pg, env: &[(String, String)]) {
    pg.start(
        &[
            ("archive_mode", "on".into()),
            ("archive_command", "false".into()),
            ("wal_level", "replica".into()),
        ],
        env,
    );
}

/// `pg-restore` into a sibling with these arguments after the target (the backend's
/// flags follow), started, recovered, and `TABLE_HASH` answered.
pub(crate) fn restore_with_args(pg: &Pg, b: &Backend, name: &str, args: &[&str]) -> String {
    restore_with_args_query(pg, b, name, args, TABLE_HASH)
}

/// `restore_with_args` answering `sql`.
pub(crate) fn restore_with_args_query(
    pg: &Pg,
    b: &Backend,
    name: &str,
    args: &[&str],
    sql: &str,
) -> String {
    let mut r = pg.sibling(name);
    let mut argv = vec!["pg-restore", r.pgdata.to_str().unwrap()];
    argv.extend_from_slice(args);
    let o = walship_in(pg, &argv, b);
    assert_success(&o, &format!("pg-restore {name}"));
    eprintln!(
        "pg-restore {name}: {}",
        String::from_utf8_lossy(&o.stdout).trim()
    );
    r.start(&[("archive_mode", "off".into())], &b.env);
    let done = wait_for(Duration::from_secs(90), Duration::from_millis(250), || {
        r.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert!(done, "{name}: recovery did not finish:\n{}", r.log());
    let h = r.psql(sql);
    r.stop();
    h
}

pub(crate) fn generation_of_cluster(pg: &Pg) -> (u64, String) {
    let id = walship::postgres::control::system_identifier(&pg.pgdata).unwrap();
    (
        id,
        walship::postgres::control::generation_of(id).to_string(),
    )
}

/// Two clusters, one replica path. The first to archive names the path (`cluster.json`);
/// a second one's `wal-push` and sidecar are refused, naming both system identifiers,
/// and write nothing. Handed over with `--force-new-history`, the path holds both: then
/// `pg-restore` restores the configured cluster (not the one initdb'd later), the path's
/// cluster without a config, either by `--generation`; `cleanup` keeps the older cluster,
/// still archiving, whole.
pub(crate) fn two_clusters_on_one_path(mut a: Pg, b: &Backend) {
    let (a_id, a_gen) = generation_of_cluster(&a);
    start_archiving(&mut a, b);
    a.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&a, 1);
    pg_backup(&a, b);
    let rec: serde_json::Value = serde_json::from_slice(&get_object(b, "cluster.json")).unwrap();
    assert_eq!(rec["system_identifier"], a_id.to_string(), "{rec}");
    std::thread::sleep(Duration::from_millis(1100)); // a later initdb second
    let mut c = Pg::init("two_clusters_second").unwrap();
    let (c_id, c_gen) = generation_of_cluster(&c);
    assert_ne!(a_gen, c_gen);
    let c_objects = |b: &Backend| {
        list_objects(b)
            .into_keys()
            .filter(|k| k.contains(&c_gen))
            .count()
    };
    // The second cluster's archive_command is refused, naming both.
    let o = walship_in(
        &c,
        &["wal-push", "pg_wal/000000010000000000000001", &b.url],
        b,
    );
    assert!(!o.status.success(), "a second cluster's wal-push succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&a_id.to_string())
            && err.contains(&c_id.to_string())
            && err.contains("--force-new-history"),
        "{err}"
    );
    // So is its sidecar: exit 2, naming both, nothing written.
    c.start(
        &[
            ("archive_mode", "on".into()),
            (
                "archive_command",
                format!(
                    "{} wal-push %p {} {}",
                    c.walship.display(),
                    b.url,
                    b.flags.join(" ")
                ),
            ),
            ("wal_level", "replica".into()),
        ],
        &b.env,
    );
    c.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&c, 7);
    let cfg_c = sidecar_config(&c, b, "walship", &format!("127.0.0.1:{}", free_port()));
    let log_c = c.root.join("sidecar.log");
    let mut sc = start_sidecar(&c, b, &cfg_c, &log_c, &[]);
    let status = sc.wait_exit(Duration::from_secs(30));
    let text = std::fs::read_to_string(&log_c).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(
        text.contains("belongs to another PostgreSQL cluster")
            && text.contains(&a_id.to_string())
            && text.contains(&c_id.to_string()),
        "{text}"
    );
    assert_eq!(c_objects(b), 0, "the refused cluster wrote objects");
    // Handed over on purpose: the sidecar takes its base backup, its archiver works.
    let mut sc = start_sidecar(&c, b, &cfg_c, &log_c, &["--force-new-history"]);
    let backed_up = wait_for(Duration::from_secs(90), Duration::from_millis(300), || {
        list_objects(b)
            .keys()
            .any(|k| k.contains(&c_gen) && k.ends_with("manifest.json"))
    });
    assert!(backed_up, "{}", std::fs::read_to_string(&log_c).unwrap());
    wait_archived(&c);
    let hc = table_hash(&c);
    assert!(sc.terminate().success());
    let rec: serde_json::Value = serde_json::from_slice(&get_object(b, "cluster.json")).unwrap();
    assert_eq!(rec["system_identifier"], c_id.to_string(), "{rec}");
    // The first cluster goes on archiving (its spool checked the path minutes ago).
    insert_batch(&a, 2);
    wait_archived(&a);
    let ha = table_hash(&a);
    assert_ne!(ha, hc);
    // The configured cluster is restored, not the newest-created one.
    let cfg_a = sidecar_config(&a, b, "a", &format!("127.0.0.1:{}", free_port()));
    assert_eq!(
        restore_with_args(&a, b, "by_config", &["--config", cfg_a.to_str().unwrap()]),
        ha
    );
    assert_eq!(restore_with_args(&a, b, "by_path", &[&b.url]), hc);
    assert_eq!(
        restore_with_args(&a, b, "by_generation", &[&b.url, "--generation", &a_gen]),
        ha
    );
    // Cleanup with a one-second window keeps the cluster still archiving whole.
    let before: Vec<String> = list_objects(b)
        .into_keys()
        .filter(|k| k.contains(&a_gen))
        .collect();
    let rep = pg_cleanup(&a, b, "1s");
    let after: Vec<String> = list_objects(b)
        .into_keys()
        .filter(|k| k.contains(&a_gen))
        .collect();
    assert_eq!(before, after, "{rep}");
    assert!(rep.to_string().contains("written to recently"), "{rep}");
    assert!(c_objects(b) > 0);
}

#[test]
fn two_clusters_on_one_path_file() {
    let Some(pg) = Pg::init("two_clusters_on_one_path_file") else {
        return;
    };
    // Both clusters' users must write it: a directory outside either cluster's.
    let dir = tempfile::Builder::new()
        .prefix("walship-pg-shared-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    chown_to_postgres(dir.path());
    two_clusters_on_one_path(pg, &Backend::file(dir.path()));
}

#[test]
fn two_clusters_on_one_path_s3() {
    let Some(pg) = Pg::init("two_clusters_on_one_path_s3") else {
        return;
    };
    let Some(b) = Backend::s3("two_clusters_on_one_path_s3") else {
        return;
    };
    two_clusters_on_one_path(pg, &b);
}

/// The same on a store that ignores conditional writes (Garage): `cluster.json` is
/// written with walship's check-write-read-back fallback.
#[test]
fn two_clusters_on_one_path_s3_without_conditional_writes() {
    let Some(pg) = Pg::init("two_clusters_on_one_path_s3_without_conditional_writes") else {
        return;
    };
    let Some(mut b) = Backend::s3("two_clusters_garage") else {
        return;
    };
    b.env
        .push(("WALSHIP_ASSUME_NO_CONDITIONAL_WRITES".into(), "1".into()));
    two_clusters_on_one_path(pg, &b);
}
