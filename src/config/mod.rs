//! Configuration: where the file is (`/etc/walship.yml`, else `/etc/litestream.yml`), the
//! raw YAML shape (every key of walship's and Litestream's checked by `schema`), `$VAR`
//! interpolation (pure, see `interp`), and the validated `Config` the rest of walship uses.
//! Defaults are the `DEFAULT_*` consts. Never opens a replica or a database.

pub mod location;
pub use location::{Location, ReplicaConfig, parse_location};

mod values;
use values::number_or_text;
pub use values::{
    parse_duration, parse_lease_ttl, parse_listen_addr, parse_positive_duration, parse_size,
    parse_spool_limit,
};

pub mod interp;
mod load;
pub use load::{load, locate, parse, set_expand_env};
mod schema;

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/walship.yml";
/// Litestream's default, read when walship's own is absent: a pod whose image changed from
/// Litestream to walship keeps its ConfigMap mounted where it was.
pub const LITESTREAM_CONFIG_PATH: &str = "/etc/litestream.yml";
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Same as SQLite's own autocheckpoint threshold: the WAL stays as small as it would be
/// without walship.
pub const DEFAULT_MIN_CHECKPOINT_PAGES: u32 = 1000;
pub const DEFAULT_SPOOL_LIMIT: u64 = 256 << 20;
/// A snapshot a day bounds restore work for databases that change slowly, at the cost of
/// one object a day (Litestream's effective default too: its retention check snapshots).
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// A snapshot also once the segments stored since the last one exceed the database's size
/// (times this ratio): a restore then never downloads more WAL than one database's worth.
pub const DEFAULT_SNAPSHOT_WAL_RATIO: f64 = 1.0;
/// Litestream's default: a day of point-in-time restore, checked hourly.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Kubernetes gives 30 s by default between SIGTERM and SIGKILL; leave a margin.
/// A replica path's lease lives this long after its holder's last renewal (docs/LEASE.md).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default)]
    pub dbs: Vec<RawDb>,
    /// Metrics and health listen address (Litestream's key).
    pub addr: Option<String>,
    // Replica defaults (Litestream 0.5's top-level replica settings).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub force_path_style: Option<bool>,
    pub skip_verify: Option<bool>,
    pub sync_interval: Option<String>,
    pub validation_interval: Option<String>,
    pub snapshot: Option<RawSnapshot>,
    pub validation: Option<RawValidation>,
    pub retention: Option<RawRetentionSwitch>,
    /// `replicate` runs this as its child (Litestream's `exec`; `-exec` overrides it).
    pub exec: Option<String>,
    pub logging: Option<RawLogging>,
    /// Refuse literal credentials in the config instead of warning about them.
    pub strict_secrets: Option<bool>,
    /// Litestream 0.5's name for the time a stopping replicator keeps shipping.
    pub shutdown_sync_timeout: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub unhealthy_after: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub shutdown_timeout: Option<String>,
    /// How long a starting walship waits for another holder of a replica path's lease.
    #[serde(default, deserialize_with = "number_or_text")]
    pub lease_wait: Option<String>,
    /// The lease's time to live: how long after its holder's last renewal another walship
    /// may take the path over.
    #[serde(default, deserialize_with = "number_or_text")]
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLogging {
    pub level: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// Litestream 0.5's `snapshot:` (top level or per database): the replicas' snapshot
/// interval and retention window.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSnapshot {
    pub interval: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawValidation {
    pub interval: Option<String>,
}

/// Litestream 0.5's top-level `retention: {enabled: false}`: delete nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRetentionSwitch {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDb {
    /// `sqlite` (default) or `postgres` (then `path` is the data directory).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    /// PostgreSQL: a connection URL for base backups (default: the PG* variables).
    pub connection: Option<String>,
    /// PostgreSQL: `archive` (default) or `stream`, and the stream's slot.
    pub mode: Option<String>,
    pub slot: Option<String>,
    pub replicas: Option<Vec<RawReplica>>,
    pub replica: Option<RawReplica>,
    /// Litestream's local state directory; walship keeps its spool there.
    pub meta_path: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub spool_limit: Option<String>,
    pub journal_fsync: Option<bool>,
    pub min_checkpoint_page_count: Option<u32>,
    pub snapshot: Option<RawSnapshot>,
    /// Litestream 0.5: `replicate` restores a missing database from its replica first.
    pub restore_if_db_not_exists: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawReplica {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub skip_verify: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub sync_interval: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub snapshot_interval: Option<String>,
    pub snapshot_wal_ratio: Option<f64>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub retention: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub retention_check_interval: Option<String>,
    pub retention_tiers: Option<crate::policy::Tiers>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub validation_interval: Option<String>,
}

// ---------------------------------------------------------------- resolved

#[derive(Debug, Clone)]
pub struct Config {
    pub dbs: Vec<DbConfig>,
    pub metrics_addr: Option<SocketAddr>,
    pub unhealthy_after: Duration,
    pub shutdown_timeout: Duration,
    /// `None`: a replica path held by another walship is refused at once.
    pub lease_wait: Option<Duration>,
    pub lease_ttl: Duration,
    /// `--force-new-history`: a database whose history differs from its replica path's
    /// starts a new history there instead of being refused (only a flag: a setting left in
    /// a config would hide the next mistake).
    pub force_new_history: bool,
    pub log_json: bool,
    pub log_level: Option<String>,
    /// `replicate`'s child command (`exec:`), as written.
    pub exec: Option<String>,
    /// One line per key that was ignored or is risky (literal credentials), for the log.
    pub notes: Vec<String>,
    /// The file this came from (`None`: flags only).
    pub source: Option<PathBuf>,
}

impl Config {
    /// Say in the log which file was read and what in it has no effect here.
    pub fn log_notes(&self) {
        if let Some(p) = &self.source {
            tracing::info!(target: "walship::config", "config file {}", p.display());
        }
        for n in &self.notes {
            tracing::warn!(target: "walship::config", "{n}");
        }
    }
}

#[derive(Debug, Clone)]
pub struct DbConfig {
    pub kind: DbKind,
    /// The SQLite database file, or the PostgreSQL data directory.
    pub path: PathBuf,
    /// PostgreSQL: connection URL for base backups.
    pub connection: Option<String>,
    /// PostgreSQL streaming mode: its replication slot (`None`: archive mode).
    pub stream_slot: Option<String>,
    /// The first replica: the one `replicate` writes first (settings are its).
    pub replica: ReplicaConfig,
    /// The other replicas (Litestream 0.3's `replicas:` beyond the first), same content.
    pub more_replicas: Vec<ReplicaConfig>,
    pub spool_dir: PathBuf,
    pub spool_limit: u64,
    /// fsync the capture journal and spool files as they are written, so that a node
    /// crash (not only a process crash) loses nothing walship read (default off).
    pub journal_fsync: bool,
    pub min_checkpoint_pages: u32,
    pub sync_interval: Duration,
    /// Time between snapshots within a generation (`None`: only when a generation starts).
    pub snapshot_interval: Option<Duration>,
    /// Snapshot when the segments stored since the last snapshot exceed this × the
    /// database size (0: never for this reason).
    pub snapshot_wal_ratio: f64,
    /// Run `verify` against the replica this often (off when `None`).
    pub validation_interval: Option<Duration>,
    /// Keep point-in-time restore this far back (`None`: keep everything).
    pub retention: Option<Duration>,
    pub retention_check_interval: Duration,
    pub retention_tiers: crate::policy::Tiers,
    /// `replicate` restores the database from its replica first when the file is missing.
    pub restore_if_missing: bool,
}

impl DbConfig {
    /// This database with `replica` as its only one (`-replica NAME`).
    pub fn only(mut self, replica: ReplicaConfig) -> DbConfig {
        self.replica = replica;
        self.more_replicas.clear();
        self
    }

    /// Every replica, the first first.
    pub fn replicas(&self) -> impl Iterator<Item = &ReplicaConfig> {
        std::iter::once(&self.replica).chain(&self.more_replicas)
    }

    /// What retention keeps for this database (`None`: keep everything): the policy both
    /// sidecars' retention loops and `walship cleanup` apply.
    pub fn retention_policy(&self) -> Option<crate::policy::Policy> {
        self.retention.map(|w| crate::policy::Policy {
            tiers: self.retention_tiers,
            ..crate::policy::Policy::new(w)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// Longest duration any setting takes: beyond it deadlines overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Smallest spool that holds a segment of ordinary transactions (segments are cut at a
/// quarter of the limit, see `replicate::capture`).
pub const MIN_SPOOL_LIMIT: u64 = 1_000_000;

fn resolve(raw: RawConfig) -> Result<Config> {
    let metrics_addr = raw
        .addr
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(parse_listen_addr)
        .transpose()?;
    let mut dbs = Vec::new();
    for (i, db) in raw.dbs.iter().enumerate() {
        dbs.push(resolve_db(&raw, db, i)?);
    }
    let shutdown_timeout = raw
        .shutdown_timeout
        .as_ref()
        .map(|s| ("shutdown-timeout", s))
        .or(raw
            .shutdown_sync_timeout
            .as_ref()
            .map(|s| ("shutdown-sync-timeout", s)));
    Ok(Config {
        dbs,
        metrics_addr,
        unhealthy_after: match &raw.unhealthy_after {
            Some(s) => parse_positive_duration("unhealthy-after", s)?,
            None => DEFAULT_UNHEALTHY_AFTER,
        },
        shutdown_timeout: match shutdown_timeout {
            Some((key, s)) => parse_positive_duration(key, s)?,
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        },
        lease_wait: match &raw.lease_wait {
            Some(s) => Some(parse_duration("lease-wait", s)?).filter(|d| !d.is_zero()),
            None => None,
        },
        lease_ttl: match &raw.lease_ttl {
            Some(s) => parse_lease_ttl("lease-ttl", s)?,
            None => DEFAULT_LEASE_TTL,
        },
        force_new_history: false,
        log_json: raw
            .logging
            .as_ref()
            .and_then(|l| l.kind.as_deref())
            .is_some_and(|t| t.eq_ignore_ascii_case("json")),
        log_level: raw.logging.as_ref().and_then(|l| l.level.clone()),
        exec: raw.exec.clone().filter(|e| !e.trim().is_empty()),
        notes: Vec::new(),
        source: None,
    })
}

fn resolve_db(top: &RawConfig, db: &RawDb, i: usize) -> Result<DbConfig> {
    let at = format!("dbs[{i}]");
    let path = PathBuf::from(
        db.path
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::Config(format!("{at}.path is missing")))?,
    );
    let kind = match db.kind.as_deref() {
        None | Some("sqlite") => DbKind::Sqlite,
        Some("postgres") => DbKind::Postgres,
        Some(other) => {
            return Err(Error::Config(format!(
                "{at}.type: {other:?} is not a database type (sqlite, postgres)"
            )));
        }
    };
    let (replica, more) = match (&db.replica, db.replicas.as_deref()) {
        (Some(r), None) => (r.clone(), &[][..]),
        (None, Some([r, more @ ..])) => (r.clone(), more),
        (None, None) | (None, Some([])) => {
            return Err(Error::Config(format!("{at} has no replica")));
        }
        (Some(_), Some(_)) => {
            return Err(Error::Config(format!(
                "{at} has both `replica` and `replicas`; use one"
            )));
        }
    };
    if kind == DbKind::Postgres && !more.is_empty() {
        return Err(Error::Config(format!(
            "{at} lists several replicas: a PostgreSQL cluster archives to one"
        )));
    }
    let rat = format!("{at}.replica");
    // A replica's own setting, else its database's `snapshot:`, else the top level's.
    let pick = |own: &Option<String>,
                key: &str,
                of_snapshot: fn(&RawSnapshot) -> &Option<String>,
                sub: &str|
     -> Option<(String, String)> {
        if let Some(v) = own {
            return Some((format!("{rat}.{key}"), v.clone()));
        }
        if let Some(v) = db.snapshot.as_ref().and_then(|s| of_snapshot(s).clone()) {
            return Some((format!("{at}.snapshot.{sub}"), v));
        }
        top.snapshot
            .as_ref()
            .and_then(|s| of_snapshot(s).clone())
            .map(|v| (format!("snapshot.{sub}"), v))
    };
    let snapshot_interval = match pick(
        &replica.snapshot_interval,
        "snapshot-interval",
        |s| &s.interval,
        "interval",
    ) {
        Some((key, s)) => Some(parse_duration(&key, &s)?).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_SNAPSHOT_INTERVAL),
    };
    let snapshot_wal_ratio = replica
        .snapshot_wal_ratio
        .unwrap_or(DEFAULT_SNAPSHOT_WAL_RATIO);
    if !(snapshot_wal_ratio >= 0.0 && snapshot_wal_ratio.is_finite()) {
        return Err(Error::Config(format!(
            "{rat}.snapshot-wal-ratio must be a number >= 0 (0 turns it off)"
        )));
    }
    let validation = replica
        .validation_interval
        .as_ref()
        .map(|v| (format!("{rat}.validation-interval"), v))
        .or(top
            .validation_interval
            .as_ref()
            .map(|v| ("validation-interval".to_string(), v)))
        .or(top
            .validation
            .as_ref()
            .and_then(|v| v.interval.as_ref())
            .map(|v| ("validation.interval".to_string(), v)));
    let validation_interval = match validation {
        Some((key, s)) => Some(parse_duration(&key, s)?).filter(|d| !d.is_zero()),
        None => None,
    };
    let retention = match pick(
        &replica.retention,
        "retention",
        |s| &s.retention,
        "retention",
    ) {
        Some((key, v)) => Some(parse_duration(&key, &v)?).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_RETENTION),
    };
    let retention = if top.retention.as_ref().and_then(|r| r.enabled) == Some(false) {
        None
    } else {
        retention
    };
    let retention_check_interval = match &replica.retention_check_interval {
        Some(v) => parse_positive_duration(&format!("{rat}.retention-check-interval"), v)?,
        None => DEFAULT_RETENTION_CHECK_INTERVAL,
    };
    let sync_interval = match (&replica.sync_interval, &top.sync_interval) {
        (Some(s), _) => parse_positive_duration(&format!("{rat}.sync-interval"), s)?,
        (None, Some(s)) => parse_positive_duration("sync-interval", s)?,
        (None, None) => DEFAULT_SYNC_INTERVAL,
    };
    let min_checkpoint_pages = db
        .min_checkpoint_page_count
        .unwrap_or(DEFAULT_MIN_CHECKPOINT_PAGES);
    if min_checkpoint_pages == 0 {
        return Err(Error::Config(format!(
            "{at}.min-checkpoint-page-count must be above zero"
        )));
    }
    let spool_limit = match &db.spool_limit {
        Some(s) => parse_spool_limit(&format!("{at}.spool-limit"), s)?,
        None => DEFAULT_SPOOL_LIMIT,
    };
    let out = DbConfig {
        kind,
        connection: db.connection.clone(),
        stream_slot: values::stream_slot(&at, kind == DbKind::Postgres, db)?,
        spool_dir: match &db.meta_path {
            Some(p) => PathBuf::from(p),
            None => default_spool_dir(&path),
        },
        more_replicas: more
            .iter()
            .enumerate()
            .map(|(k, r)| resolve_replica(top, r, &format!("{at}.replicas[{}]", k + 1)))
            .collect::<Result<_>>()?,
        replica: resolve_replica(top, &replica, &rat)?,
        path,
        spool_limit,
        journal_fsync: db.journal_fsync.unwrap_or(false),
        min_checkpoint_pages,
        sync_interval,
        snapshot_interval,
        snapshot_wal_ratio,
        validation_interval,
        retention,
        retention_check_interval,
        retention_tiers: replica.retention_tiers.unwrap_or_default(),
        restore_if_missing: db.restore_if_db_not_exists.unwrap_or(false),
    };
    // `-replica NAME` and the metrics tell replicas apart by name, as Litestream does.
    let mut seen = std::collections::HashMap::new();
    for (k, r) in out.replicas().enumerate() {
        if let Some(j) = seen.insert(r.name(), k) {
            return Err(Error::Config(format!(
                "{at}.replicas[{j}] and [{k}] are both named {:?}: give each a `name`",
                r.name()
            )));
        }
    }
    Ok(out)
}

/// `<dir>/.<file>-walship`, beside the database (like Litestream's `.<file>-litestream`).
pub fn default_spool_dir(db: &Path) -> PathBuf {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    db.with_file_name(format!(".{name}-walship"))
}

fn resolve_replica(top: &RawConfig, r: &RawReplica, at: &str) -> Result<ReplicaConfig> {
    let mut from_url = location::UrlSettings::default();
    let location = if let Some(url) = &r.url {
        if r.bucket.is_some() {
            return Err(Error::Config(format!(
                "{at} has both `url` and `bucket`; use one"
            )));
        }
        let (location, query) = location::parse_url(url)?;
        from_url = query;
        location
    } else {
        let bucket = r.bucket.clone().or_else(|| top.bucket.clone());
        let kind = r
            .kind
            .as_deref()
            .unwrap_or(if bucket.is_some() { "s3" } else { "file" });
        let prefix = r
            .path
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let bucket = || {
            bucket
                .clone()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| Error::Config(format!("{at}.bucket is missing (type {kind})")))
        };
        match kind {
            "s3" => Location::S3 {
                bucket: bucket()?,
                prefix,
            },
            "gs" | "gcs" => Location::Gcs {
                bucket: bucket()?,
                prefix,
            },
            "abs" | "az" | "azure" => Location::Azure {
                container: bucket()?,
                prefix,
            },
            "file" => Location::File {
                dir: r
                    .path
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .ok_or_else(|| Error::Config(format!("{at}.path is missing (type file)")))?,
            },
            other => {
                return Err(Error::Config(format!(
                    "{at}.type {other:?} is not supported (use s3, gs, abs or file)"
                )));
            }
        }
    };
    Ok(ReplicaConfig {
        location,
        name: r.name.clone().filter(|n| !n.is_empty()),
        endpoint: r
            .endpoint
            .clone()
            .or(from_url.endpoint)
            .or_else(|| top.endpoint.clone()),
        region: r
            .region
            .clone()
            .or(from_url.region)
            .or_else(|| top.region.clone()),
        force_path_style: r
            .force_path_style
            .or(from_url.force_path_style)
            .or(top.force_path_style),
        skip_verify: r
            .skip_verify
            .or(from_url.skip_verify)
            .or(top.skip_verify)
            .unwrap_or(false),
        access_key_id: r
            .access_key_id
            .clone()
            .or_else(|| top.access_key_id.clone()),
        secret_access_key: r
            .secret_access_key
            .clone()
            .or_else(|| top.secret_access_key.clone()),
    })
}

#[cfg(test)]
mod tests;
