//! `walship replicate`: from a config file, from `DB_PATH REPLICA_URL`, or `--demo`.

use super::ReplicaFlags;
use crate::config::{self, Config, DbConfig};
use crate::error::{Error, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// Database to replicate (single-database form; otherwise use --config).
    pub db_path: Option<PathBuf>,
    /// Where to replicate it: s3://bucket/prefix, gs://, az://, file:///dir.
    pub replica_url: Option<String>,
    /// YAML config file (several databases).
    #[arg(short, long, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run against a demo database in DIR (created if missing) with a local file:// replica.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "walship-demo",
          conflicts_with_all = ["db_path", "config"])]
    pub demo: Option<PathBuf>,
    /// Upper bound between a commit and its upload (default 1s).
    #[arg(long)]
    pub sync_interval: Option<String>,
    /// Time between snapshots within a generation (default 24h; 0 turns it off).
    #[arg(long)]
    pub snapshot_interval: Option<String>,
    /// Also snapshot once the segments stored since the last snapshot exceed this many
    /// times the database size (default 1; 0 turns it off).
    #[arg(long)]
    pub snapshot_wal_ratio: Option<f64>,
    /// Verify the replica (restore to a scratch file and check it) this often (default off).
    #[arg(long)]
    pub validation_interval: Option<String>,
    /// Keep point-in-time restore this far back; older objects and whole old generations
    /// are deleted (default 24h; 0 keeps everything).
    #[arg(long)]
    pub retention: Option<String>,
    /// How often retention runs (default 1h).
    #[arg(long)]
    pub retention_check_interval: Option<String>,
    /// Extra restore points beyond the window, e.g. hourly=24,daily=7.
    #[arg(long)]
    pub retention_tiers: Option<String>,
    /// Serve /metrics and /healthz on this address (e.g. :9090).
    #[arg(long)]
    pub addr: Option<String>,
    /// Directory for segments waiting for upload (default: .<db>-walship beside the db).
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool may hold (default 256MiB, at least 1MB).
    #[arg(long)]
    pub spool_limit: Option<String>,
    /// fsync the capture journal and spool files as written: a node crash, not only a
    /// process crash, then loses nothing walship has read (default off).
    #[arg(long)]
    pub journal_fsync: bool,
    /// WAL size (pages) to keep to: walship checkpoints itself at twice this when the
    /// application's own checkpoints do not keep the WAL below it (default 1000).
    #[arg(long)]
    pub min_checkpoint_pages: Option<u32>,
    /// How long the replica may fail before /healthz reports unhealthy (default 60s).
    #[arg(long)]
    pub unhealthy_after: Option<String>,
    /// Time allowed after SIGTERM to ship what is committed (default 25s).
    #[arg(long)]
    pub shutdown_timeout: Option<String>,
    /// Wait up to this long for another walship holding the replica path to release it
    /// (a rolling deploy); without it a held path is refused at once.
    #[arg(long)]
    pub lease_wait: Option<String>,
    /// The replica path lease's time to live: how long after its holder's last renewal
    /// another walship may take the path over (default 30s).
    #[arg(long)]
    pub lease_ttl: Option<String>,
    /// When a database's history differs from the one its replica path holds (another
    /// database, or this one's spool lost while its WAL was reset), start a new history
    /// there instead of refusing; nothing already on the path is touched. For a
    /// PostgreSQL cluster refused because the path belongs to another cluster, hand the
    /// path (`cluster.json`) to this one.
    #[arg(long)]
    pub force_new_history: bool,
    /// Run the application as walship's child once replication runs (Litestream's -exec):
    /// SIGTERM/SIGINT are passed to it, and when it exits walship ships what is committed
    /// and exits with its exit code. Overrides the config's `exec`.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Log level (trace, debug, info, warn, error); --log takes a full filter.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Restore a database that does not exist from its replica before replicating it, as
    /// `restore --if-db-not-exists --if-replica-exists` would (config: the database's
    /// `restore-if-db-not-exists`).
    #[arg(long)]
    pub restore_if_db_not_exists: bool,
    /// Ship what is committed now, then exit (Litestream 0.5's -once).
    #[arg(long, conflicts_with = "exec")]
    pub once: bool,
    /// Litestream 0.5's -force-snapshot (with -once): accepted, no effect.
    #[arg(long, hide = true)]
    pub force_snapshot: bool,
    /// Litestream 0.5's -enforce-retention (with -once): accepted, no effect.
    #[arg(long, hide = true)]
    pub enforce_retention: bool,
    /// Litestream 0.3's -trace FILE: accepted, no effect.
    #[arg(long, hide = true, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub replica: ReplicaFlags,
}

impl ReplicateArgs {
    /// The effective configuration: the single-database flags, the demo, or the file.
    pub fn config(&self) -> Result<Config> {
        let mut cfg = if let Some(dir) = &self.demo {
            demo_config(dir)?
        } else if let (Some(db), Some(url)) = (&self.db_path, &self.replica_url) {
            if self.config.is_some() {
                return Err(Error::Usage(
                    "give either DB_PATH REPLICA_URL or --config, not both".into(),
                ));
            }
            single(db, self.replica.replica(url)?)
        } else if self.db_path.is_some() {
            return Err(Error::Usage("DB_PATH needs a REPLICA_URL after it".into()));
        } else {
            let path = config::locate(self.config.as_deref());
            config::load(&path)?
        };
        for db in &mut cfg.dbs {
            if let Some(s) = &self.sync_interval {
                db.sync_interval = config::parse_positive_duration("--sync-interval", s)?;
            }
            if let Some(d) = &self.spool_dir {
                db.spool_dir = d.clone();
            }
            if self.journal_fsync {
                db.journal_fsync = true;
            }
            if let Some(s) = &self.spool_limit {
                db.spool_limit = config::parse_spool_limit("--spool-limit", s)?;
            }
            if let Some(n) = self.min_checkpoint_pages {
                db.min_checkpoint_pages = n.max(1);
            }
            if let Some(s) = &self.snapshot_interval {
                db.snapshot_interval = Some(config::parse_duration("--snapshot-interval", s)?)
                    .filter(|d| !d.is_zero());
            }
            if let Some(s) = &self.validation_interval {
                db.validation_interval = Some(config::parse_duration("--validation-interval", s)?)
                    .filter(|d| !d.is_zero());
            }
            if let Some(s) = &self.retention {
                db.retention =
                    Some(config::parse_duration("--retention", s)?).filter(|d| !d.is_zero());
            }
            if let Some(s) = &self.retention_check_interval {
                db.retention_check_interval =
                    config::parse_duration("--retention-check-interval", s)?;
                if db.retention_check_interval.is_zero() {
                    return Err(Error::Usage(
                        "--retention-check-interval must be above zero".into(),
                    ));
                }
            }
            if let Some(s) = &self.retention_tiers {
                db.retention_tiers = crate::retention::Tiers::parse(s)
                    .map_err(|e| Error::Usage(format!("--retention-tiers: {e}")))?;
            }
            if let Some(r) = self.snapshot_wal_ratio {
                if !(r >= 0.0 && r.is_finite()) {
                    return Err(Error::Usage(
                        "--snapshot-wal-ratio must be a number >= 0".into(),
                    ));
                }
                db.snapshot_wal_ratio = r;
            }
        }
        if let Some(a) = &self.addr {
            cfg.metrics_addr = Some(config::parse_listen_addr(a)?);
        }
        if let Some(s) = &self.unhealthy_after {
            cfg.unhealthy_after = config::parse_positive_duration("--unhealthy-after", s)?;
        }
        if let Some(s) = &self.shutdown_timeout {
            cfg.shutdown_timeout = config::parse_positive_duration("--shutdown-timeout", s)?;
        }
        if let Some(s) = &self.lease_wait {
            cfg.lease_wait =
                Some(config::parse_duration("--lease-wait", s)?).filter(|d| !d.is_zero());
        }
        if let Some(s) = &self.lease_ttl {
            cfg.lease_ttl = config::parse_lease_ttl("--lease-ttl", s)?;
        }
        cfg.force_new_history |= self.force_new_history;
        if self.replica.name.is_some() {
            return Err(Error::Usage(
                "--replica NAME selects a replica for restore and the listings; replicate \
                 ships to every replica a database has"
                    .into(),
            ));
        }
        if let Some(e) = &self.exec {
            // As in Litestream, an empty -exec (an unset "$APP") means no application; say so.
            cfg.exec = Some(e.clone()).filter(|e| !e.trim().is_empty());
            if cfg.exec.is_none() {
                cfg.notes.push(
                    "-exec is empty: no application is started; replicating until a signal".into(),
                );
            }
        }
        if self.restore_if_db_not_exists {
            cfg.dbs.iter_mut().for_each(|d| d.restore_if_missing = true);
        }
        for (set, flag, why) in [
            (
                self.force_snapshot,
                "-force-snapshot",
                "walship snapshots by snapshot-interval and snapshot-wal-ratio",
            ),
            (
                self.enforce_retention,
                "-enforce-retention",
                "run `walship cleanup` to apply retention now",
            ),
            (self.trace.is_some(), "-trace", "use -log-level trace"),
        ] {
            if set {
                cfg.notes.push(format!("{flag} has no effect: {why}"));
            }
        }
        Ok(cfg)
    }
}

fn single(db: &Path, replica: config::ReplicaConfig) -> Config {
    Config {
        dbs: vec![DbConfig {
            kind: config::DbKind::Sqlite,
            path: db.to_path_buf(),
            connection: None,
            stream_slot: None,
            replica,
            more_replicas: Vec::new(),
            spool_dir: config::default_spool_dir(db),
            spool_limit: config::DEFAULT_SPOOL_LIMIT,
            journal_fsync: false,
            min_checkpoint_pages: config::DEFAULT_MIN_CHECKPOINT_PAGES,
            sync_interval: config::DEFAULT_SYNC_INTERVAL,
            snapshot_interval: Some(config::DEFAULT_SNAPSHOT_INTERVAL),
            snapshot_wal_ratio: config::DEFAULT_SNAPSHOT_WAL_RATIO,
            validation_interval: None,
            retention: Some(config::DEFAULT_RETENTION),
            retention_check_interval: config::DEFAULT_RETENTION_CHECK_INTERVAL,
            retention_tiers: Default::default(),
            restore_if_missing: false,
        }],
        metrics_addr: None,
        unhealthy_after: config::DEFAULT_UNHEALTHY_AFTER,
        shutdown_timeout: config::DEFAULT_SHUTDOWN_TIMEOUT,
        lease_wait: None,
        lease_ttl: crate::config::DEFAULT_LEASE_TTL,
        force_new_history: false,
        log_json: false,
        log_level: None,
        exec: None,
        notes: Vec::new(),
        source: None,
    }
}

/// The embedded default: `DIR/app.db` (created in WAL mode if missing) replicated to
/// `file://DIR/replica`, metrics on 127.0.0.1:9090.
fn demo_config(dir: &Path) -> Result<Config> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let db = dir.join("app.db");
    if !db.exists() {
        let c = rusqlite::Connection::open(&db).map_err(|e| Error::sqlite(&db, e))?;
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL,
                                              at TEXT NOT NULL DEFAULT (datetime('now')));
             INSERT INTO notes(body) VALUES ('hello from the walship demo');",
        )
        .map_err(|e| Error::sqlite(&db, e))?;
    }
    let mut cfg = single(
        &db,
        config::ReplicaConfig::from_location(config::Location::File {
            dir: dir.join("replica"),
        }),
    );
    cfg.metrics_addr = Some(config::parse_listen_addr("127.0.0.1:9090")?);
    Ok(cfg)
}

impl ReplicateArgs {
    /// What `--demo` prints once it runs: how to write, look, restore and read metrics.
    pub fn banner(&self) -> Option<String> {
        let dir = self.demo.as_ref()?;
        let db = dir.join("app.db");
        Some(format!(
            "walship demo: replicating {db} to file://{rep}\n  write:   sqlite3 {db} \"INSERT INTO notes(body) VALUES ('hi')\"\n  look:    walship generations file://{rep}\n  restore: walship restore -o /tmp/restored.db file://{rep}\n  metrics: curl -s 127.0.0.1:9090/metrics\n  stop:    Ctrl-C",
            db = db.display(),
            rep = dir.join("replica").display()
        ))
    }
}

/// Run the sidecar (`supervisor::run`) until `signal` (the number of the signal that
/// came), or with `-exec` until the application exits, or with `once` until what is
/// committed now is shipped. `banner` (the demo's) prints once the metrics address is
/// bound. The exit code is the application's (0 without one).
pub async fn run(
    cfg: Config,
    banner: Option<String>,
    once: bool,
    signal: impl std::future::Future<Output = i32>,
) -> Result<u8> {
    // A bad -exec is a usage error before anything starts.
    let app = cfg.exec.as_deref().map(super::exec::words).transpose()?;
    cfg.log_notes();
    for (db, r) in cfg
        .dbs
        .iter()
        .flat_map(|d| d.replicas().map(move |r| (d, r)))
    {
        let endpoint = crate::storage::credentials::endpoint(r)
            .ok()
            .flatten()
            .unwrap_or_else(|| "default".into());
        let (kind, bucket, path) = match &r.location {
            config::Location::S3 { bucket, prefix } => ("s3", bucket.as_str(), prefix.clone()),
            config::Location::Gcs { bucket, prefix } => ("gs", bucket.as_str(), prefix.clone()),
            config::Location::Azure { container, prefix } => {
                ("abs", container.as_str(), prefix.clone())
            }
            config::Location::File { dir } => ("file", "", dir.display().to_string()),
        };
        tracing::info!(
            target: "walship::replicate",
            db = %db.path.display(),
            r#type = kind,
            bucket,
            path,
            endpoint = if kind == "file" { "" } else { endpoint.as_str() },
            replica = %r.name(),
            "replicating {} to {}",
            db.path.display(),
            r.url()
        );
    }
    for db in &cfg.dbs {
        if db.kind == config::DbKind::Sqlite && db.restore_if_missing && !db.path.exists() {
            tracing::info!(target: "walship::replicate", db = %db.path.display(), "restore-if-db-not-exists: the database does not exist; restoring it first");
            super::restore::restore_if_missing(db).await?;
        }
    }
    let announce = || {
        if let Some(b) = banner {
            crate::cli::say_err(&b);
        }
    };
    let status = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = status.clone();
    let until = move || -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> {
        if once {
            tracing::info!(target: "walship::replicate", "-once: shipping what is committed, then stopping");
            return Ok(Box::pin(async {}));
        }
        match app {
            None => Ok(Box::pin(async move {
                signal.await;
            })),
            Some(words) => {
                let app = super::exec::App::start(&words)?;
                Ok(Box::pin(async move {
                    let st = app.wait(signal).await;
                    *seen.lock().expect("not poisoned") = Some(st);
                }))
            }
        }
    };
    crate::supervisor::run(cfg, announce, until).await?;
    let st = status.lock().expect("not poisoned").take();
    Ok(st.map(super::exec::code).unwrap_or(0))
}
