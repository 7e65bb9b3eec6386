//! PostgreSQL archiving against a real PostgreSQL 15 (Debian's package) and the real S3
//! server: `wal-push`'s never-overwrite rule, `wal-fetch`'s quiet miss, and a running
//! cluster archiving through `archive_command`. Clusters are created with `initdb` in temp
//! directories and run as the `postgres` user when the suite runs as root.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `cmd` as the unprivileged `postgres` user when running as root (initdb and postgres
/// refuse root), with `env` set explicitly since runuser does not pass everything on.
fn as_postgres(cmd: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(cmd);
        c
    } else {
        let mut c = Command::new(cmd);
        c.envs(env.iter().cloned());
        c
    };
    c.args(args);
    c
}

fn chown_to_postgres(p: &Path) {
    if is_root() {
        let o = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// A throwaway cluster: its own temp directory (owned by `postgres`), a copy of the walship
/// binary that user can execute, a port of its own on 127.0.0.1.
pub struct Pg {
    /// The owner of `root` (a restored cluster lives inside its source's directory).
    _dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub pgdata: PathBuf,
    pub walship: PathBuf,
    pub port: u16,
    running: bool,
}

impl Pg {
    /// `None` (noted) when PostgreSQL 15 is not installed outside CI; in CI it must be.
    pub fn init(test: &str) -> Option<Pg> {
        let initdb = Path::new(PG_BIN).join("initdb");
        if !initdb.exists() {
            assert!(!in_ci(), "CI=true but {} is missing", initdb.display());
            eprintln!("SKIP {test}: PostgreSQL 15 is not installed (tests/run.sh installs it)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("walship-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let walship = root.join("walship");
        std::fs::copy(walship_bin(), &walship).unwrap();
        std::fs::set_permissions(&walship, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_postgres(&root);
        let pgdata = root.join("data");
        let o = as_postgres(
            &initdb,
            &[
                "-D",
                pgdata.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            &[],
        )
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Some(Pg {
            _dir: Some(dir),
            root,
            pgdata,
            walship,
            port: free_port(),
            running: false,
        })
    }

    /// A cluster to be restored into `<root>/<name>` (not created yet).
    pub fn sibling(&self, name: &str) -> Pg {
        Pg {
            _dir: None,
            root: self.root.clone(),
            pgdata: self.root.join(name),
            walship: self.walship.clone(),
            port: free_port(),
            running: false,
        }
    }

    /// Start with extra `postgresql.conf` settings and environment.
    pub fn start(&mut self, conf: &[(&str, String)], env: &[(String, String)]) {
        let mut text = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            self.port,
            self.root.display()
        );
        for (k, v) in conf {
            text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let conf_path = self.pgdata.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path).unwrap();
        all.push_str(&text);
        std::fs::write(&conf_path, all).unwrap();
        let log = self.pgdata.with_extension("log");
        let o = as_postgres(
            &Path::new(PG_BIN).join("pg_ctl"),
            &[
                "-D",
                self.pgdata.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
            env,
        )
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    pub fn psql(&self, sql: &str) -> String {
        let o = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atq",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// `None` while the server does not answer (starting, or gone: see `log`).
    pub fn try_psql(&self, sql: &str) -> Option<String> {
        let o = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atq",
            ])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.pgdata.with_extension("log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_postgres(
                &Path::new(PG_BIN).join("pg_ctl"),
                &[
                    "-D",
                    self.pgdata.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "stop",
                ],
                &[],
            )
            .output();
            self.running = false;
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run the copied walship in the data directory, as Postgres would.
fn walship_in(pg: &Pg, args: &[&str], backend: &Backend) -> Output {
    as_postgres(&pg.walship, args, &backend.env)
        .args(&backend.flags)
        .current_dir(&pg.pgdata)
        .output()
        .unwrap()
}

/// A replica the `postgres` user may write: file:// inside the cluster's directory.
/// A PostgreSQL scenario run on each backend as two tests, `$file` and `$s3`, each with a
/// throwaway cluster of its own: on file:// the replica is a directory the cluster's user
/// owns; on S3 a prefix of its own (`$prefix`) of the shared server.
macro_rules! on_each_backend_pg {
    ($file:ident, $s3:ident, $prefix:literal, $scenario:expr) => {
        #[test]
        fn $file() {
            let Some(pg) = Pg::init(stringify!($file)) else {
                return;
            };
            let b = file_backend(&pg);
            ($scenario)(pg, &b);
        }

        #[test]
        fn $s3() {
            let Some(b) = Backend::s3($prefix) else {
                return;
            };
            let Some(pg) = Pg::init(stringify!($s3)) else {
                return;
            };
            ($scenario)(pg, &b);
        }
    };
}

fn file_backend(pg: &Pg) -> Backend {
    let dir = pg.root.join("replica");
    std::fs::create_dir_all(&dir).unwrap();
    chown_to_postgres(&dir);
    Backend::file(&dir)
}

fn push_fetch_semantics(pg: &Pg, b: &Backend) {
    let seg = "000000010000000000000001";
    let original = std::fs::read(pg.pgdata.join("pg_wal").join(seg)).unwrap();
    let wal_path = format!("pg_wal/{seg}");
    for attempt in ["first", "again"] {
        let o = walship_in(pg, &["wal-push", &wal_path, &b.url], b);
        assert_success(&o, &format!("wal-push ({attempt})"));
    }
    // Different bytes under the same name: refused, and the archived object is unchanged.
    let other = pg.root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut changed = original.clone();
    changed[100] ^= 0xff;
    std::fs::write(other.join(seg), &changed).unwrap();
    chown_to_postgres(&other);
    let o = walship_in(
        pg,
        &["wal-push", other.join(seg).to_str().unwrap(), &b.url],
        b,
    );
    assert!(!o.status.success(), "a different segment was accepted");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("different content") && e.contains(seg), "{e}");
    // Fetch returns the original bytes.
    let o = walship_in(pg, &["wal-fetch", seg, "pg_wal/RECOVERYXLOG", &b.url], b);
    assert_success(&o, "wal-fetch");
    let fetched = pg.pgdata.join("pg_wal/RECOVERYXLOG");
    assert_eq!(std::fs::read(&fetched).unwrap(), original);
    std::fs::remove_file(fetched).unwrap();
    // A file the archive does not have: exit 1, nothing on stderr (Postgres probes).
    for missing in ["000000010000000000000009", "00000002.history"] {
        let o = walship_in(
            pg,
            &["wal-fetch", missing, "pg_wal/RECOVERYXLOG", &b.url],
            b,
        );
        assert_eq!(o.status.code(), Some(1), "wal-fetch {missing}");
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Not a WAL file name: a usage error naming it.
    let o = walship_in(pg, &["wal-push", "postgresql.conf", &b.url], b);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("postgresql.conf"));
}

on_each_backend_pg!(
    wal_push_and_fetch_file,
    wal_push_and_fetch_s3,
    "walpush",
    |pg: Pg, b: &Backend| push_fetch_semantics(&pg, b)
);

/// A running cluster with `archive_command = 'walship wal-push %p …'`: every switched
/// segment reaches the replica and the archiver reports no failure.
fn archive_command(mut pg: Pg, b: &Backend) {
    start_archiving(&mut pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    let mut switched = Vec::new();
    for i in 0..3 {
        pg.psql(&format!(
            "INSERT INTO t(v) SELECT md5(g::text || '{i}') FROM generate_series(1, 2000) g"
        ));
        switched.push(pg.psql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let archived = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let n: u64 = pg
            .psql("SELECT archived_count FROM pg_stat_archiver")
            .parse()
            .unwrap();
        n >= switched.len() as u64
    });
    let failed = pg.psql("SELECT failed_count FROM pg_stat_archiver");
    assert!(archived, "archiver did not catch up:\n{}", pg.log());
    assert_eq!(failed, "0", "archive_command failed:\n{}", pg.log());
    let objects = list_objects(b);
    for seg in &switched {
        assert!(
            objects
                .keys()
                .any(|k| k.ends_with(&format!("/pgwal/{seg}"))),
            "{seg} not in the replica: {:?}",
            objects.keys().collect::<Vec<_>>()
        );
    }
}

on_each_backend_pg!(
    archive_command_ships_segments_file,
    archive_command_ships_segments_s3,
    "archive",
    |pg: Pg, b: &Backend| archive_command(pg, b)
);

const TABLE_HASH: &str =
    "SELECT md5(coalesce(string_agg(id || ':' || v, ',' ORDER BY id), '')) FROM t";

fn table_hash(pg: &Pg) -> String {
    pg.psql(TABLE_HASH)
}

/// A table of about 45 MB: its file spans several parts of a base backup.
const BIG_HASH: &str = "SELECT md5(string_agg(g || ':' || v, ',' ORDER BY g)) FROM big";

fn insert_batch(pg: &Pg, i: u32) {
    pg.psql(&format!(
        "INSERT INTO t(v) SELECT md5(g::text || '{i}') FROM generate_series(1, 500) g"
    ));
}

fn start_archiving(pg: &mut Pg, b: &Backend) {
    let cmd = format!(
        "{} wal-push %p {} {}",
        pg.walship.display(),
        b.url,
        b.flags.join(" ")
    );
    pg.start(
        &[
            ("archive_mode", "on".into()),
            ("archive_command", cmd),
            ("wal_level", "replica".into()),
        ],
        &b.env,
    );
}

/// Restore into a sibling directory as the `postgres` user, start it (not archiving),
/// wait for recovery to end, and return the restored table's hash.
fn restore_and_hash(pg: &Pg, b: &Backend, name: &str, timestamp: Option<u64>) -> String {
    restore_and_query(pg, b, name, timestamp, TABLE_HASH)
}

/// `restore_and_hash` with the query to answer from the restored cluster.
fn restore_and_query(
    pg: &Pg,
    b: &Backend,
    name: &str,
    timestamp: Option<u64>,
    sql: &str,
) -> String {
    let mut args = vec![b.url.clone()];
    if let Some(t) = timestamp {
        args.push("--timestamp".into());
        args.push(walship::restore::when::format_ms(t));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    restore_with_args_query(pg, b, name, &argv, sql)
}

/// A base backup through the server, run as the cluster's own user (which can read its
/// files), as the sidecar would; returns when it finished (Unix ms).
fn pg_backup(pg: &Pg, b: &Backend) -> u64 {
    let conn = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let o = walship_in(
        pg,
        &[
            "pg-backup",
            &b.url,
            "--pgdata",
            pg.pgdata.to_str().unwrap(),
            "--connection",
            &conn,
        ],
        b,
    );
    assert_success(&o, "pg-backup");
    now_ms()
}

/// Archiving on, table `t` with batch 1, a base backup, batch 2 (its hash and time
/// recorded), 1.2 s later batch 3: returns (hash after 2, time after 2, hash after 3).
fn backup_between_batches(pg: &mut Pg, b: &Backend, setup: &str) -> (String, u64, String) {
    start_archiving(pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    if !setup.is_empty() {
        pg.psql(setup);
    }
    insert_batch(pg, 1);
    pg_backup(pg, b);
    insert_batch(pg, 2);
    let (h2, t2) = (table_hash(pg), now_ms());
    std::thread::sleep(Duration::from_millis(1200));
    insert_batch(pg, 3);
    let h3 = table_hash(pg);
    assert_ne!(h2, h3);
    (h2, t2, h3)
}

/// A base backup taken through the server while it archives, writes after it, then
/// restores of the newest state and of an instant between two batches, each started with
/// PostgreSQL and compared with the recorded table contents.
fn backup_and_restore(mut pg: Pg, b: &Backend) {
    let (h2, t2, h3) = backup_between_batches(
        &mut pg,
        b,
        "CREATE TABLE big AS SELECT g, md5(g::text) || repeat('y', 20) AS v \
         FROM generate_series(1, 600000) g",
    );
    let big = pg.psql(BIG_HASH);
    wait_archived(&pg);
    assert_eq!(restore_and_hash(&pg, b, "latest", None), h3, "newest state");
    // Its relation file spans several backup parts and comes back whole.
    assert_eq!(restore_and_query(&pg, b, "latest-big", None, BIG_HASH), big);
    assert_eq!(
        restore_and_hash(&pg, b, "pitr", Some(t2 + 500)),
        h2,
        "point in time"
    );
    // A target after the archive's last transaction: the newest state (PostgreSQL alone
    // would stop with "recovery ended before configured recovery target was reached").
    assert_eq!(
        restore_and_hash(&pg, b, "after-the-end", Some(now_ms() + 60_000)),
        h3,
        "a target after the last transaction"
    );
    // A non-empty target is refused, and left as it is.
    let latest = pg.root.join("latest");
    let o = walship_in(&pg, &["pg-restore", latest.to_str().unwrap(), &b.url], b);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    // Init-container matrix. Non-empty target: untouched, exit 0 (also a second run
    // after a successful restore).
    let init = ["pg-restore", "--if-pgdata-empty", "--if-replica-exists"];
    let control = std::fs::read(latest.join("global/pg_control")).unwrap();
    let o = walship_in(
        &pg,
        &[&init[..], &[latest.to_str().unwrap(), &b.url]].concat(),
        b,
    );
    assert_success(&o, "pg-restore --if-pgdata-empty on a non-empty directory");
    assert_eq!(
        std::fs::read(latest.join("global/pg_control")).unwrap(),
        control
    );
    // Empty target and a backup: restored (started above); an existing empty directory is
    // filled too.
    let empty = pg.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    chown_to_postgres(&empty);
    let o = walship_in(
        &pg,
        &[&init[..], &[empty.to_str().unwrap(), &b.url]].concat(),
        b,
    );
    assert_success(&o, "pg-restore --if-pgdata-empty into an empty directory");
    assert!(empty.join("backup_label").exists() && empty.join("recovery.signal").exists());
    // No backup in the replica: nothing done, exit 0, no directory created.
    let none = Backend {
        url: format!("{}-nothing-here", b.url),
        ..b.clone()
    };
    if let Some(dir) = none.url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).unwrap();
        chown_to_postgres(Path::new(dir));
    }
    let fresh = pg.root.join("fresh");
    let o = walship_in(
        &pg,
        &[&init[..], &[fresh.to_str().unwrap(), &none.url]].concat(),
        &none,
    );
    assert_success(&o, "pg-restore --if-replica-exists without a backup");
    assert!(
        !fresh.exists(),
        "a data directory was created without a backup"
    );
    // Without --if-replica-exists that is an error naming what is missing.
    let o = walship_in(
        &pg,
        &["pg-restore", fresh.to_str().unwrap(), &none.url],
        &none,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no base backup"));
}

on_each_backend_pg!(
    base_backup_and_restore_file,
    base_backup_and_restore_s3,
    "pgbackup",
    |pg: Pg, b: &Backend| backup_and_restore(pg, b)
);

fn wait_archived(pg: &Pg) {
    let last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let archived = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= last
    });
    assert!(archived, "{last} was not archived:\n{}", pg.log());
}

/// Timelines: a point-in-time restore, promoted, archives on timeline 2 into the same
/// generation (its `.history` file first), and a later restore of the newest state
/// follows that timeline rather than the abandoned end of timeline 1.
fn timeline_switch(mut pg: Pg, b: &Backend) {
    // Batch 3 is on timeline 1 only: the restore below leaves it behind; so is a second
    // base backup taken after it.
    let (h2, t2, h3) = backup_between_batches(&mut pg, b, "");
    pg_backup(&pg, b);
    wait_archived(&pg);
    pg.stop();

    let mut promoted = pg.sibling("promoted");
    let at = walship::restore::when::format_ms(t2 + 500);
    let o = walship_in(
        &pg,
        &[
            "pg-restore",
            "--timestamp",
            &at,
            promoted.pgdata.to_str().unwrap(),
            &b.url,
        ],
        b,
    );
    assert_success(&o, "pg-restore --timestamp");
    start_archiving(&mut promoted, b);
    let done = wait_for(Duration::from_secs(90), Duration::from_millis(250), || {
        promoted.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert!(done, "recovery did not finish:\n{}", promoted.log());
    assert_eq!(table_hash(&promoted), h2, "the point in time");
    assert_eq!(
        promoted.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    insert_batch(&promoted, 4);
    let h4 = table_hash(&promoted);
    assert_ne!(h4, h3);
    wait_archived(&promoted);

    let objects = list_objects(b);
    let history: Vec<_> = objects
        .keys()
        .filter(|k| k.contains("00000002.history"))
        .collect();
    assert_eq!(
        history.len(),
        1,
        "the new timeline's history in the bucket: {objects:?}"
    );
    // One generation: the promoted cluster keeps the system identifier.
    let gens: std::collections::BTreeSet<_> = objects
        .keys()
        .filter_map(|k| k.split("generations/").nth(1)?.split('/').next())
        .collect();
    assert_eq!(gens.len(), 1, "{gens:?}");
    // `backups`: the two base backups (timeline 1) and the WAL archived on each timeline.
    let o = walship_in(&pg, &["backups", "--json", &b.url], b);
    assert_success(&o, "backups --json");
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = l["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{l}");
    assert_eq!(
        (&backups[0]["timeline"], &backups[1]["timeline"]),
        (&1.into(), &1.into())
    );
    assert!(backups[0]["files"].as_u64().unwrap() > 100, "{l}");
    let wal = l["wal"].as_array().unwrap();
    let tl = |t: u64| {
        wal.iter()
            .find(|w| w["timeline"] == t)
            .unwrap_or_else(|| panic!("{l}"))
    };
    assert!(tl(1)["segments"].as_u64().unwrap() >= 2, "{l}");
    assert_eq!(tl(2)["history"], true, "{l}");
    assert!(
        tl(2)["last"].as_str().unwrap().starts_with("00000002"),
        "{l}"
    );
    // Cleanup with the window starting now: the second backup anchors it, but timeline
    // 2's history (read from the bucket) shows it left timeline 1 before that backup, so
    // a restore of timeline 2 needs the first backup and its WAL: nothing is deleted.
    let db = pg_cleanup(&pg, b, "1ms");
    let why = db["plan"]["generations"][0]["why"].as_str().unwrap();
    assert!(
        why.contains("branched off before"),
        "{db}\n{:?}",
        list_objects(b)
            .keys()
            .filter(|k| k.contains("/pgwal/"))
            .collect::<Vec<_>>()
    );
    assert!(db["get_requests"].as_u64().unwrap() >= 1, "{db}");
    assert_eq!(db["deleted_objects"], 0, "{db}");
    // The newest state follows timeline 2, from the first backup: the second is not on
    // timeline 2's history and PostgreSQL would refuse to start from it.
    assert_eq!(
        restore_and_hash(&pg, b, "latest", None),
        h4,
        "newest state follows timeline 2"
    );
    // The sidecar sees the cluster on a timeline no backup is on and takes one at once,
    // not an hour after the last.
    let cfg = sidecar_config(&promoted, b, "walship-promoted", "");
    let log_path = promoted.root.join("sidecar-promoted.log");
    let mut sidecar = start_sidecar(&promoted, b, &cfg, &log_path, &[]);
    let on_tl2 = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let o = walship_in(&pg, &["backups", "--json", &b.url], b);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|l| {
            l["backups"]
                .as_array()
                .is_some_and(|v| v.iter().any(|b| b["timeline"] == 2))
        })
    });
    assert!(
        on_tl2,
        "no base backup on timeline 2:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    // (Its label file is archived after its last segment when both are in one segment.)
    wait_archived(&promoted);
    assert!(sidecar.terminate().success());
    promoted.stop();
    // Now that backup anchors the window: the timeline-1 backups and the WAL before its
    // first segment go; the history stays; the newest state still restores.
    let before = list_objects(b);
    let db = pg_cleanup(&pg, b, "1ms");
    let after = list_objects(b);
    assert!(
        db["deleted_objects"].as_u64().unwrap() > 0,
        "{db}\n{:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert!(
        after.keys().any(|k| k.ends_with("00000002.history")),
        "{db}"
    );
    let backups_left: std::collections::BTreeSet<_> = after
        .keys()
        .filter_map(|k| k.split("/basebackups/").nth(1)?.split('/').next())
        .collect();
    assert_eq!(backups_left.len(), 1, "{backups_left:?} {db}");
    assert!(after.len() < before.len());
    assert_eq!(restore_and_hash(&pg, b, "latest-after-cleanup", None), h4);
}

on_each_backend_pg!(
    timeline_switch_file,
    timeline_switch_s3,
    "pgtimeline",
    |pg: Pg, b: &Backend| timeline_switch(pg, b)
);

/// Every pgbench table's content, in one hash.
const PGBENCH_HASH: &str = "md5(\
    (SELECT string_agg(aid || ':' || abalance, ',' ORDER BY aid) FROM pgbench_accounts) || \
    (SELECT string_agg(bid || ':' || bbalance, ',' ORDER BY bid) FROM pgbench_branches) || \
    (SELECT string_agg(tid || ':' || tbalance, ',' ORDER BY tid) FROM pgbench_tellers) || \
    coalesce((SELECT string_agg(concat_ws(':', tid, bid, aid, delta, mtime), ',' \
        ORDER BY tid, bid, aid, delta, mtime) FROM pgbench_history), ''))";

/// (commit-time ms, hash) of an instant with no commit near it: the tables are locked
/// against writers (readers go on), the time is taken 2 ms after the lock was granted (so
/// every earlier commit is older) and the lock is released only after the hash.
fn record_instant(pg: &Pg) -> (u64, String) {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atq",
        ])
        .args(["-p", &pg.port.to_string(), "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "BEGIN"])
        .args([
            "-c",
            "LOCK TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history \
             IN EXCLUSIVE MODE",
        ])
        .args([
            "-c",
            &format!(
                "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint || ' ' || \
                 {PGBENCH_HASH} FROM pg_sleep(0.002)"
            ),
        ])
        .args(["-c", "COMMIT"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let (ms, hash) = out.trim().split_once(' ').unwrap();
    (ms.parse().unwrap(), hash.to_string())
}

/// The acceptance: `pgbench -i`, then 60 s of pgbench with a base backup taken
/// mid-way and `pg_switch_wal()` calls, a recorder noting (time, content hash of the
/// pgbench tables) every second; restores to instants on both sides of the second backup,
/// each started with PostgreSQL, equal the recorded state.
#[test]
fn pgbench_point_in_time_s3() {
    let Some(b) = Backend::s3("pgbench") else {
        return;
    };
    let Some(mut pg) = Pg::init("pgbench_point_in_time_s3") else {
        return;
    };
    start_archiving(&mut pg, &b);
    let bench = Path::new(PG_BIN).join("pgbench");
    let port = pg.port.to_string();
    let conn_args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let o = Command::new(&bench)
        .args(conn_args)
        .args(["-i", "-s", "1", "-q", "postgres"])
        .output()
        .unwrap();
    assert_success(&o, "pgbench -i");
    pg_backup(&pg, &b);
    let mut load = Command::new(&bench)
        .args(conn_args)
        .args(["-T", "60", "-c", "2", "-R", "150", "-n", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut record = Vec::new();
    let mut backup2 = None;
    let mut switches = 0;
    while load.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1000));
        record.push(record_instant(&pg));
        if record.len() % 7 == 0 {
            pg.psql("SELECT pg_switch_wal()");
            switches += 1;
        }
        if backup2.is_none() && started.elapsed() >= Duration::from_secs(30) {
            backup2 = Some(pg_backup(&pg, &b));
        }
    }
    let status = load.wait().unwrap();
    assert!(status.success(), "pgbench failed");
    let backup2 = backup2.expect("the workload ended before the mid-way backup");
    wait_archived(&pg);
    let distinct: std::collections::BTreeSet<_> = record.iter().map(|r| &r.1).collect();
    assert!(
        record.len() >= 40 && distinct.len() >= 40 && switches >= 5,
        "{} instants ({} distinct), {switches} WAL switches",
        record.len(),
        distinct.len()
    );
    eprintln!(
        "pgbench: {} recorded instants ({} distinct), {switches} WAL switches, backups at start and {} s",
        record.len(),
        distinct.len(),
        (backup2 - record[0].0) / 1000
    );
    // Two instants before the mid-way backup, three after it (one the last with a commit
    // after it), and the last recorded one, after the workload ended.
    let live: Vec<_> = record
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| &w[0])
        .collect();
    let before: Vec<_> = live.iter().filter(|r| r.0 < backup2).collect();
    let after: Vec<_> = live.iter().filter(|r| r.0 > backup2 + 1000).collect();
    let picks = [
        before[before.len() / 3],
        before[before.len() * 2 / 3],
        after[after.len() / 4],
        after[after.len() * 3 / 4],
        after[after.len() - 1],
        // After the workload's last commit: walship restores the newest state.
        record.last().unwrap(),
    ];
    let mut prefetched = 0;
    for (i, (ms, hash)) in picks.iter().enumerate() {
        let (got, hits) = restore_and_pgbench_hash(&pg, &b, &format!("at{i}"), *ms);
        assert_eq!(
            &got,
            hash,
            "restore to {}",
            walship::restore::when::format_ms(*ms)
        );
        prefetched += hits;
    }
    // Recovery asks for WAL one file at a time; wal-fetch fetched the next ones ahead.
    eprintln!("pgbench: {prefetched} WAL files handed over from wal-fetch's prefetch");
    assert!(prefetched > 0, "no WAL file was prefetched");
}

/// Restore to `ms`, start, and return the pgbench tables' hash and how many WAL files
/// recovery got from wal-fetch's prefetch.
fn restore_and_pgbench_hash(pg: &Pg, b: &Backend, name: &str, ms: u64) -> (String, usize) {
    let mut r = pg.sibling(name);
    let at = walship::restore::when::format_ms(ms);
    let o = walship_in(
        pg,
        &[
            "pg-restore",
            "--timestamp",
            &at,
            r.pgdata.to_str().unwrap(),
            &b.url,
        ],
        b,
    );
    assert_success(&o, &format!("pg-restore {name}"));
    r.start(&[("archive_mode", "off".into())], &b.env);
    let done = wait_for(Duration::from_secs(120), Duration::from_millis(250), || {
        r.try_psql("SELECT pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert!(done, "{name}: recovery did not finish:\n{}", r.log());
    let h = r.psql(&format!("SELECT {PGBENCH_HASH}"));
    r.stop();
    (h, r.log().matches("fetched from the prefetch").count())
}

/// A walship process run as the `postgres` user (through runuser when the suite runs as
/// root); killed when the test ends, however it ends.
struct AsPostgres {
    child: std::process::Child,
    cmdline_tag: String,
}

impl AsPostgres {
    /// SIGTERM to walship itself (runuser would re-raise it on itself and hide walship's
    /// exit code, which it otherwise passes on).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let me = self.child.id().to_string();
        let o = Command::new("pgrep").args(["-P", &me]).output().unwrap();
        let pid = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .map_or(me, str::to_string);
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl AsPostgres {
    /// SIGKILL walship (and runuser around it).
    fn kill(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.cmdline_tag])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < within,
                "walship did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AsPostgres {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &self.cmdline_tag])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Postgres sidecar (`replicate --config` with a `type: postgres` database, running as
/// the cluster's user, sharing its data directory): a base backup at start since the
/// replica has none; a burst of segments that the archiver cannot ship (its command fails,
/// as when the store is slow) is uploaded by the sidecar ahead of it, so once the archiver
/// runs `wal-push` every file is answered from the sidecar's notes without a request;
/// notes go once Postgres is done with them; SIGTERM exits 0; a restore from the
/// sidecar's backup equals the source.
/// A sidecar config for `pg` beside it (`<name>.yml`): metrics on `addr`, a base backup
/// an hour, a day's retention checked every second.
fn sidecar_config(pg: &Pg, b: &Backend, name: &str, addr: &str) -> PathBuf {
    let cfg = pg.root.join(format!("{name}.yml"));
    let endpoint = endpoint_yaml(b);
    std::fs::write(
        &cfg,
        format!(
            "addr: {addr}\ndbs:\n  - path: {}\n    type: postgres\n    connection: postgres://postgres@127.0.0.1:{}/postgres\n    replica:\n      url: {}{endpoint}\n      snapshot-interval: 1h\n      retention: 24h\n      retention-check-interval: 1s\n",
            pg.pgdata.display(),
            pg.port,
            b.url
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    cfg
}

/// `walship replicate --config cfg` (and `extra`) as the `postgres` user, its log in
/// `log_path`.
fn start_sidecar(pg: &Pg, b: &Backend, cfg: &Path, log_path: &Path, extra: &[&str]) -> AsPostgres {
    let log = std::fs::File::create(log_path).unwrap();
    let mut args = vec!["replicate", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = as_postgres(&pg.walship, &args, &b.env)
        .env("RUST_LOG", "walship=debug")
        .stderr(log)
        .spawn()
        .unwrap();
    AsPostgres {
        child,
        cmdline_tag: cfg.display().to_string(),
    }
}

fn pg_sidecar(mut pg: Pg, b: &Backend) {
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = sidecar_config(&pg, b, "walship", &addr);
    let cmd = format!(
        "{} wal-push %p --config {}",
        pg.walship.display(),
        cfg.display()
    );
    let set_archive_command = |pg: &Pg, c: &str| {
        pg.psql(&format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            c.replace('\'', "''")
        ));
        pg.psql("SELECT pg_reload_conf()");
    };
    pg.start(
        &[
            ("archive_mode", "on".into()),
            ("archive_command", cmd.clone()),
            ("wal_level", "replica".into()),
        ],
        &b.env,
    );
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    let log_path = pg.root.join("sidecar.log");
    let mut sidecar = start_sidecar(&pg, b, &cfg, &log_path, &[]);
    let sidecar_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let backed_up = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        list_objects(b)
            .keys()
            .any(|k| k.contains("/basebackups/") && k.ends_with("manifest.json"))
    });
    assert!(
        backed_up,
        "no base backup from the sidecar:\n{}",
        sidecar_log()
    );
    // (pg_backup_stop waits for the archiver, so the archiver is held back only now.)
    set_archive_command(&pg, "false");
    for i in 0..24 {
        insert_batch(&pg, 100 + i);
        pg.psql("SELECT pg_switch_wal()");
    }
    let ahead = || sidecar_log().matches("archived ahead").count();
    let shipped = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        ahead() >= 24
    });
    assert!(
        shipped,
        "the sidecar archived only {} ahead (archive_status: {:?}):\n{}\n{}",
        ahead(),
        std::fs::read_dir(pg.pgdata.join("pg_wal/archive_status")).map(|d| d
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect::<Vec<_>>()),
        pg.log(),
        sidecar_log()
    );
    // A base backup cannot finish while the archiver fails: an error naming the cause,
    // within the stop timeout, not a backup that hangs.
    let conn = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let o = walship_in(
        &pg,
        &[
            "pg-backup",
            &b.url,
            "--pgdata",
            pg.pgdata.to_str().unwrap(),
            "--connection",
            &conn,
            "--stop-timeout",
            "3s",
        ],
        b,
    );
    assert!(!o.status.success(), "pg-backup succeeded without archiving");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pg_backup_stop") && err.contains("archive_command"),
        "{err}"
    );
    set_archive_command(&pg, &cmd);
    wait_archived(&pg);
    // The sidecar's own retention runs (a day's window: nothing to delete yet).
    let m = crate::sqlite_core::http_get(&addr, "/metrics");
    let ok_runs: f64 = m
        .lines()
        .find(|l| l.starts_with("walship_retention_runs_total") && l.contains("kind=\"ok\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(ok_runs >= 1.0, "{m}\n{}", sidecar_log());
    let noted = pg.log().matches("NotedBySidecar").count();
    eprintln!(
        "sidecar: {} WAL files archived ahead; wal-push answered {noted} from notes",
        ahead()
    );
    assert!(
        noted >= 24,
        "wal-push found the sidecar's note {noted} times:\n{}",
        pg.log()
    );
    // A burst with the archiver running beside the sidecar: each file is uploaded once;
    // wal-push waits for the sidecar's note instead of racing it (before upload claims,
    // a quarter of a burst went up twice, each loser paying a GET to compare).
    for i in 0..12 {
        insert_batch(&pg, 200 + i);
        pg.psql("SELECT pg_switch_wal()");
    }
    wait_archived(&pg);
    let log = pg.log();
    assert_eq!(
        log.matches("outcome=AlreadyArchived").count(),
        0,
        "wal-push uploaded a file the sidecar had uploaded:\n{log}"
    );
    let h = table_hash(&pg);
    let markers = pg.root.join(".data-walship/archived");
    let cleaned = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        std::fs::read_dir(&markers).is_ok_and(|d| d.count() == 0)
    });
    assert!(cleaned, "notes left in {}", markers.display());
    let status = sidecar.terminate();
    assert!(
        status.success(),
        "sidecar exit {status}:\n{}",
        sidecar_log()
    );
    assert_eq!(restore_and_hash(&pg, b, "restored", None), h);
}

on_each_backend_pg!(
    pg_sidecar_file,
    pg_sidecar_s3,
    "pgsidecar",
    |pg: Pg, b: &Backend| pg_sidecar(pg, b)
);

/// `cleanup --json` of the replica; the report's only database.
fn pg_cleanup(pg: &Pg, b: &Backend, retention: &str) -> serde_json::Value {
    let o = walship_in(
        pg,
        &["cleanup", "--json", "--retention", retention, &b.url],
        b,
    );
    assert_success(&o, &format!("cleanup --retention {retention}"));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["failed"], 0, "{rep}");
    rep["databases"][0].clone()
}

/// The WAL segment file name holding `lsn` (`X/Y`) on `timeline`, 16 MB segments.
fn segment_of(timeline: u32, lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lo = u32::from_str_radix(lo, 16).unwrap();
    format!(
        "{timeline:08X}{:08X}{:08X}",
        u32::from_str_radix(hi, 16).unwrap(),
        lo >> 24
    )
}

/// Retention of a cluster's replica: three base backups with WAL between them, a window
/// starting between the second and the third: the first backup and the WAL before the
/// second's first segment go, nothing else; an instant in the window and the newest state
/// restore exactly, one before it is refused naming the oldest backup. Then a new cluster
/// (another system identifier) takes over the replica path: once it holds the window, the
/// old cluster's generation goes whole.
fn postgres_cleanup(mut pg: Pg, b: &Backend) {
    start_archiving(&mut pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    pg_backup(&pg, b);
    let t1 = now_ms();
    for i in 2..4 {
        insert_batch(&pg, i);
        pg.psql("SELECT pg_switch_wal()");
    }
    pg_backup(&pg, b);
    insert_batch(&pg, 4);
    let (h4, t4) = (table_hash(&pg), now_ms());
    std::thread::sleep(Duration::from_millis(2000));
    insert_batch(&pg, 5);
    pg.psql("SELECT pg_switch_wal()");
    pg_backup(&pg, b);
    insert_batch(&pg, 6);
    let h6 = table_hash(&pg);
    wait_archived(&pg);

    let o = walship_in(&pg, &["backups", "--json", &b.url], b);
    assert_success(&o, "backups --json");
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = l["backups"].as_array().unwrap().clone();
    assert_eq!(backups.len(), 3, "{l}");
    let dir_of = |bk: &serde_json::Value| {
        let lsn = bk["start_lsn"].as_str().unwrap();
        let (hi, lo) = lsn.split_once('/').unwrap();
        let lsn =
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        format!("/basebackups/{lsn:016x}-")
    };
    let first_kept = segment_of(1, backups[1]["start_lsn"].as_str().unwrap());
    let before = list_objects(b);
    let pgwal = |k: &str| k.split("/pgwal/").nth(1).map(str::to_string);
    // What the window no longer needs, from names: the first backup, and WAL files (the
    // first backup's label among them) named before the second backup's first segment.
    let want_gone: std::collections::BTreeSet<String> = before
        .keys()
        .filter(|k| {
            k.contains(&dir_of(&backups[0]))
                || pgwal(k).is_some_and(|f| !f.ends_with(".history") && f < first_kept)
        })
        .cloned()
        .collect();
    assert!(
        want_gone.iter().filter(|k| k.contains("/pgwal/")).count() >= 3,
        "WAL before the second backup: {want_gone:?}"
    );

    // The window starts half a second after t4: after the second backup, before the third.
    let window = now_ms() - (t4 + 500);
    let db = pg_cleanup(&pg, b, &format!("{window}ms"));
    let after = list_objects(b);
    let gone: std::collections::BTreeSet<String> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(gone, want_gone, "{db}");
    assert_eq!(db["deleted_objects"], want_gone.len(), "{db}");
    assert_eq!(
        db["deleted_bytes"],
        want_gone.iter().map(|k| before[k]).sum::<u64>(),
        "{db}"
    );
    // An instant inside the window and the newest state restore exactly.
    assert_eq!(restore_and_hash(&pg, b, "in-window", Some(t4 + 1000)), h4);
    assert_eq!(restore_and_hash(&pg, b, "newest", None), h6);
    // Before the window: refused, naming where the replica starts.
    let early = pg.root.join("early");
    let o = walship_in(
        &pg,
        &[
            "pg-restore",
            "--timestamp",
            &walship::restore::when::format_ms(t1),
            early.to_str().unwrap(),
            &b.url,
        ],
        b,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("oldest base backup started at"), "{err}");
    assert!(!early.exists());
    // A second run has nothing to do.
    let again = pg_cleanup(&pg, b, &format!("{}ms", now_ms() - (t4 + 500)));
    assert_eq!(again["deleted_objects"], 0, "{again}");
    pg.stop();

    // A new cluster writes to the same replica path.
    let old_generation = gone
        .iter()
        .next()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let mut pg2 = Pg::init("postgres_cleanup (second cluster)").unwrap();
    start_archiving(&mut pg2, b);
    // The path is the first cluster's (cluster.json): handed over on purpose.
    let cfg2 = sidecar_config(&pg2, b, "walship", &format!("127.0.0.1:{}", free_port()));
    let log2 = pg2.root.join("sidecar.log");
    let mut sc = start_sidecar(&pg2, b, &cfg2, &log2, &["--force-new-history"]);
    let handed = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        std::fs::read_to_string(&log2).is_ok_and(|l| l.contains("now belongs to this cluster"))
    });
    assert!(handed, "{}", std::fs::read_to_string(&log2).unwrap());
    assert!(sc.terminate().success());
    pg2.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg2, 7);
    pg_backup(&pg2, b);
    insert_batch(&pg2, 8);
    let h8 = table_hash(&pg2);
    wait_archived(&pg2);
    pg2.stop();
    // An hour later, with a 30-minute window: the new cluster's backup starts the window,
    // the old cluster's last write is long past the live grace.
    let later = Backend {
        env: [
            b.env.clone(),
            vec![("WALSHIP_CLOCK_OFFSET".to_string(), "+1h".to_string())],
        ]
        .concat(),
        ..b.clone()
    };
    let db = pg_cleanup(&pg2, &later, "30m");
    let gens = db["plan"]["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2, "{db}");
    assert_eq!(gens[0]["generation"], old_generation.as_str(), "{db}");
    assert_eq!(gens[0]["action"], "delete", "{db}");
    let left = list_objects(b);
    assert!(
        left.keys().all(|k| !k.contains(&old_generation)),
        "the old cluster's objects are all gone: {left:?}"
    );
    assert!(left.keys().any(|k| k.contains("/basebackups/")), "{left:?}");
    assert_eq!(restore_and_hash(&pg2, b, "second-cluster", None), h8);
    // A damaged timeline history: cleanup fails naming it and deletes nothing.
    let new_generation = left
        .keys()
        .find(|k| k.starts_with("generations/"))
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap();
    let bad = format!("generations/{new_generation}/pgwal/00000009.history");
    put_object(b, &bad, b"not a walship object");
    let before = list_objects(b);
    let o = walship_in(&pg2, &["cleanup", "--retention", "1ms", &b.url], b);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&bad) && out.contains("corrupt"), "{out}");
    assert_eq!(list_objects(b), before);
}

on_each_backend_pg!(
    postgres_cleanup_file,
    postgres_cleanup_s3,
    "pgcleanup",
    |pg: Pg, b: &Backend| postgres_cleanup(pg, b)
);

/// Start a restored cluster and wait for the outcome of its recovery: `Ok(hash)` once it
/// promoted, `Err(log)` when the server stopped during recovery (a fatal restore_command).
fn recover(r: &mut Pg, b: &Backend) -> Result<String, String> {
    let mut text = format!(
        "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\narchive_mode = off\n",
        r.port,
        r.root.display()
    );
    text.push('\n');
    let conf_path = r.pgdata.join("postgresql.conf");
    let mut all = std::fs::read_to_string(&conf_path).unwrap();
    if !all.contains(&format!("port = {}", r.port)) {
        all.push_str(&text);
        std::fs::write(&conf_path, all).unwrap();
    }
    let log = r.pgdata.with_extension("log");
    // Without -w: the server may stop before it ever accepts connections.
    let o = as_postgres(
        &Path::new(PG_BIN).join("pg_ctl"),
        &[
            "-D",
            r.pgdata.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-W",
            "start",
        ],
        &b.env,
    )
    .output()
    .unwrap();
    assert!(
        o.status.success(),
        "pg_ctl start: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        r.log()
    );
    r.running = true;
    let pid_file = r.pgdata.join("postmaster.pid");
    let started = Instant::now();
    let mut seen = false;
    while started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(250));
        if r.try_psql("SELECT pg_is_in_recovery()").as_deref() == Some("f") {
            return Ok(r.psql(TABLE_HASH));
        }
        seen |= pid_file.exists();
        let gone = !pid_file.exists() && (seen || started.elapsed() > Duration::from_secs(10));
        if gone && r.try_psql("SELECT 1").is_none() {
            r.running = false;
            return Err(r.log());
        }
    }
    panic!("recovery neither ended nor stopped:\n{}", r.log());
}

/// Archived WAL segments (24 hex digits) by key, in name order.
fn archived_segments(b: &Backend) -> Vec<String> {
    list_objects(b)
        .into_keys()
        .filter(|k| {
            k.contains("/pgwal/")
                && k.rsplit('/')
                    .next()
                    .is_some_and(|n| n.len() == 24 && n.bytes().all(|c| c.is_ascii_hexdigit()))
        })
        .collect()
}

/// Issue "never silently wrong", case 7: a damaged WAL segment in the middle of the
/// archive (a byte flipped, truncated, replaced by the previous segment's object, deleted).
/// `pg-restore` refuses naming the object; a cluster restored before the damage refuses
/// to promote (wal-fetch exits fatally, recovery stops) instead of promoting a truncated
/// history; with the object back, the newest state comes back whole.
fn damaged_middle_segment(mut pg: Pg, b: &Backend, outage: Option<&mut PrivateS3>) {
    start_archiving(&mut pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    pg_backup(&pg, b);
    for i in 2..=6 {
        insert_batch(&pg, i);
        pg.psql("SELECT pg_switch_wal()");
    }
    insert_batch(&pg, 7);
    let final_hash = table_hash(&pg);
    wait_archived(&pg);
    let segs = archived_segments(b);
    assert!(segs.len() >= 6, "{segs:?}");
    let victim = segs[segs.len() - 3].clone();
    let previous = segs[segs.len() - 4].clone();
    let original = get_object(b, &victim);
    let seg_name = victim.rsplit('/').next().unwrap().to_string();

    // A cluster restored while the archive was whole, started only after the damage.
    let restore_into = |name: &str| -> (Pg, Output) {
        let r = pg.sibling(name);
        let o = walship_in(&pg, &["pg-restore", r.pgdata.to_str().unwrap(), &b.url], b);
        (r, o)
    };
    let (mut before_damage, o) = restore_into("before-damage");
    assert_success(&o, "pg-restore (archive whole)");
    let (mut before_outage, o) = restore_into("before-outage");
    assert_success(&o, "pg-restore (archive whole)");

    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    let damages: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("flipped", Some(flipped), "corrupt"),
        (
            "truncated",
            Some(original[..original.len() / 2].to_vec()),
            "corrupt",
        ),
        ("replaced", Some(get_object(b, &previous)), "not 0000"),
        ("deleted", None, "missing from the archive"),
    ];
    for (what, bytes, want) in &damages {
        match bytes {
            Some(bytes) => put_object(b, &victim, bytes),
            None => delete_object(b, &victim),
        }
        let (r, o) = restore_into(&format!("after-{what}"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "pg-restore with a {what} segment: {err}"
        );
        assert!(
            err.contains(&seg_name) && err.contains(want),
            "{what}: {err}"
        );
        assert!(
            !r.pgdata.exists(),
            "{what}: pg-restore left a data directory"
        );
    }
    // The object still deleted: the cluster restored before cannot promote past it.
    let log = recover(&mut before_damage, b).expect_err("promoted without a segment");
    assert!(
        log.contains("could not restore file") && log.contains("exit code 255"),
        "{log}"
    );
    assert!(log.contains("missing from the archive"), "{log}");
    assert!(!log.contains("selected new timeline ID"), "{log}");
    assert!(!log.contains("archive recovery complete"), "{log}");
    // Flipped byte: the same.
    put_object(b, &victim, &damages[0].1.clone().unwrap());
    let log = recover(&mut before_damage, b).expect_err("promoted past a corrupt segment");
    assert!(!log.contains("selected new timeline ID"), "{log}");
    // Whole again: that same cluster recovers to the newest state.
    put_object(b, &victim, &original);
    assert_eq!(recover(&mut before_damage, b).unwrap(), final_hash);
    before_damage.stop();

    // The store unreachable during recovery: wal-fetch retries, then fails fatally; once
    // the store is back, recovery goes on to the newest state.
    if let Some(s3) = outage {
        s3.stop();
        let t = Instant::now();
        let log = recover(&mut before_outage, b).expect_err("promoted while S3 was down");
        assert!(!log.contains("selected new timeline ID"), "{log}");
        assert!(
            t.elapsed() >= Duration::from_secs(5),
            "gave up without retrying"
        );
        s3.resume();
        assert_eq!(recover(&mut before_outage, b).unwrap(), final_hash);
    }
    assert_eq!(restore_and_hash(&pg, b, "whole", None), final_hash);
}

#[test]
fn damaged_middle_segment_file() {
    let Some(pg) = Pg::init("damaged_middle_segment_file") else {
        return;
    };
    let b = file_backend(&pg);
    damaged_middle_segment(pg, &b, None);
}

#[test]
fn damaged_middle_segment_s3() {
    let Some(mut s3) = PrivateS3::start("damaged_middle_segment_s3") else {
        return;
    };
    let Some(pg) = Pg::init("damaged_middle_segment_s3") else {
        return;
    };
    let b = s3.backend("pgdamage");
    damaged_middle_segment(pg, &b, Some(&mut s3));
}

/// Start `pg` with archiving on but its command failing: only a sidecar archives.
fn start_without_archiver(pg: &mut Pg, env: &[(String, String)]) {
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
fn restore_with_args(pg: &Pg, b: &Backend, name: &str, args: &[&str]) -> String {
    restore_with_args_query(pg, b, name, args, TABLE_HASH)
}

/// `restore_with_args` answering `sql`.
fn restore_with_args_query(pg: &Pg, b: &Backend, name: &str, args: &[&str], sql: &str) -> String {
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

fn generation_of_cluster(pg: &Pg) -> (u64, String) {
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
fn two_clusters_on_one_path(mut a: Pg, b: &Backend) {
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

/// A sidecar SIGKILLed while it uploads a segment (the store stopped mid-request) leaves
/// its claim; restarted, it takes the claim over at once (the dead owner holds no lock)
/// and archives the segment, instead of waiting 30 s for the claim to go stale.
#[test]
fn pg_sidecar_killed_mid_upload_resumes_at_once() {
    let Some(mut pg) = Pg::init("pg_sidecar_killed_mid_upload_resumes_at_once") else {
        return;
    };
    let Some(s3) = PrivateS3::start("pg_sidecar_killed_mid_upload_resumes_at_once") else {
        return;
    };
    let b = s3.backend(&unique());
    start_without_archiver(&mut pg, &b.env);
    let cfg = pg.root.join("walship.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    type: postgres\n    replica:\n      url: {}\n      endpoint: {}\n",
            pg.pgdata.display(),
            b.url,
            b.flags[1]
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    let log = pg.root.join("sidecar.log");
    let mut sc = start_sidecar(&pg, &b, &cfg, &log, &[]);
    let started = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("PostgreSQL sidecar"))
    });
    assert!(started, "{}", std::fs::read_to_string(&log).unwrap());
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    s3.pause();
    insert_batch(&pg, 1);
    let seg = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let claim = pg
        .root
        .join(format!(".data-walship/archived/{seg}.uploading"));
    let claimed = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        claim.exists()
    });
    assert!(claimed, "{}", std::fs::read_to_string(&log).unwrap());
    sc.kill();
    assert!(claim.exists(), "the killed sidecar's claim is gone");
    s3.resume_paused();
    let restarted = Instant::now();
    let _sc = start_sidecar(&pg, &b, &cfg, &log, &[]);
    let note = pg.root.join(format!(".data-walship/archived/{seg}"));
    let done = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        note.exists()
    });
    let took = restarted.elapsed();
    assert!(done, "{}", std::fs::read_to_string(&log).unwrap());
    eprintln!("segment {seg} archived {took:?} after the restart");
    assert!(
        took < Duration::from_secs(15),
        "the restarted sidecar waited {took:?} for its own dead claim"
    );
    let key = format!("generations/{}/pgwal/{seg}", generation_of_cluster(&pg).1);
    assert!(list_objects(&b).contains_key(&key), "{key} not archived");
}

/// One sidecar for a SQLite database and a PostgreSQL cluster (one config): `/healthz`
/// covers both engines (503 once the cluster's replica is down, though SQLite's is fine),
/// and SIGTERM with both replicas stalled exits within one `shutdown-timeout`, not one per
/// engine.
#[test]
fn one_sidecar_for_both_engines() {
    let Some(mut pg) = Pg::init("one_sidecar_for_both_engines") else {
        return;
    };
    let (Some(s3_sqlite), Some(mut s3_pg)) = (
        PrivateS3::start("one_sidecar_for_both_engines"),
        PrivateS3::start("one_sidecar_for_both_engines"),
    ) else {
        return;
    };
    let (b_sqlite, b_pg) = (s3_sqlite.backend("lite"), s3_pg.backend("pg"));
    start_without_archiver(&mut pg, &b_pg.env);
    let db = pg.root.join("app.db");
    create_db(&db);
    chown_to_postgres(&db);
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = pg.root.join("both.yml");
    std::fs::write(
        &cfg,
        format!(
            "addr: {addr}\nunhealthy-after: 3s\nshutdown-timeout: 4s\ndbs:\n  - path: {}\n    replica:\n      url: {}\n      endpoint: {}\n  - path: {}\n    type: postgres\n    replica:\n      url: {}\n      endpoint: {}\n",
            db.display(),
            b_sqlite.url,
            s3_sqlite.endpoint,
            pg.pgdata.display(),
            b_pg.url,
            s3_pg.endpoint,
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    let log = pg.root.join("both.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut sc = start_sidecar(&pg, &b_pg, &cfg, &log, &[]);
    let up = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        std::net::TcpStream::connect(&addr).is_ok()
            && crate::sqlite_core::http_get(&addr, "/healthz").starts_with("HTTP/1.1 200")
    });
    assert!(up, "{}", text());
    // The cluster's replica goes away: unhealthy, naming the cluster.
    s3_pg.stop();
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    pg.psql("SELECT pg_switch_wal()");
    let pgdata = pg.pgdata.display().to_string();
    let unhealthy = wait_for(Duration::from_secs(90), Duration::from_millis(500), || {
        let h = crate::sqlite_core::http_get(&addr, "/healthz");
        h.starts_with("HTTP/1.1 503") && h.contains(&pgdata)
    });
    assert!(
        unhealthy,
        "{}\n{}",
        crate::sqlite_core::http_get(&addr, "/healthz"),
        text()
    );
    // Both replicas stalled, both engines with something to ship: one deadline.
    s3_sqlite.pause();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute(
        "INSERT INTO items(k, v, n) VALUES ('late', randomblob(200), 1)",
        [],
    )
    .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let status = sc.terminate();
    let took = t.elapsed();
    s3_sqlite.resume_paused();
    eprintln!("both engines stalled: exited {status} {took:?} after SIGTERM");
    assert!(
        !status.success(),
        "unshipped commits, yet exit 0:\n{}",
        text()
    );
    assert!(
        took < Duration::from_millis(6500),
        "shutdown took {took:?} with a 4 s shutdown-timeout:\n{}",
        text()
    );
    assert!(
        text().contains("before the shutdown deadline"),
        "{}",
        text()
    );
}
