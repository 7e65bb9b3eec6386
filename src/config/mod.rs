//! Configuration: the raw YAML shape (serde, unknown keys rejected by name, the common
//! keys of a `litestream.yml` accepted), `${VAR}` interpolation (pure, see `interp`), and
//! the validated `Config` the rest of walship uses. Defaults are the `DEFAULT_*` consts.

mod location;
pub use location::{Location, ReplicaConfig, parse_location};

mod values;
use values::number_or_text;
pub use values::{
    parse_duration, parse_lease_ttl, parse_listen_addr, parse_positive_duration, parse_size,
    parse_spool_limit,
};

pub mod interp;

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/walship.yml";
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
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub logging: Option<RawLogging>,
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
    pub stderr: Option<bool>,
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
    pub replicas: Option<Vec<RawReplica>>,
    pub replica: Option<RawReplica>,
    /// Litestream's local state directory; walship keeps its spool there.
    pub meta_path: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub spool_limit: Option<String>,
    pub journal_fsync: Option<bool>,
    pub min_checkpoint_page_count: Option<u32>,
    // Litestream keys whose job walship does differently; accepted so configs carry over.
    #[serde(default, deserialize_with = "number_or_text")]
    pub monitor_interval: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub checkpoint_interval: Option<String>,
    pub max_checkpoint_page_count: Option<u32>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub busy_timeout: Option<String>,
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
}

#[derive(Debug, Clone)]
pub struct DbConfig {
    pub kind: DbKind,
    /// The SQLite database file, or the PostgreSQL data directory.
    pub path: PathBuf,
    /// PostgreSQL: connection URL for base backups.
    pub connection: Option<String>,
    pub replica: ReplicaConfig,
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
}

impl DbConfig {
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

/// Read, interpolate and validate a config file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    parse(&text, &|k| std::env::var(k).ok()).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        e => e,
    })
}

/// Parse config text with the given environment (pure).
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let mut tree: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| Error::Config(format!("malformed YAML: {e}")))?;
    if tree.is_null() {
        tree = serde_yaml_ng::Value::Mapping(Default::default());
    }
    check_credentials_are_references(&tree)?;
    let missing = interp::interpolate(&mut tree, env);
    if !missing.is_empty() {
        let names: Vec<_> = missing.into_iter().collect();
        return Err(Error::Config(format!(
            "undefined environment variable{}: {}",
            if names.len() > 1 { "s" } else { "" },
            names.join(", ")
        )));
    }
    let raw: RawConfig =
        serde_yaml_ng::from_value(tree).map_err(|e| Error::Config(e.to_string()))?;
    resolve(raw)
}

/// Credentials may only be `${VAR}` references: a config file is not a secret store.
fn check_credentials_are_references(tree: &serde_yaml_ng::Value) -> Result<()> {
    fn visit(v: &serde_yaml_ng::Value, at: &str) -> Result<()> {
        match v {
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, val) in m {
                    let key = k.as_str().unwrap_or("?");
                    let here = if at.is_empty() {
                        key.to_string()
                    } else {
                        format!("{at}.{key}")
                    };
                    if matches!(key, "access-key-id" | "secret-access-key")
                        && let Some(s) = val.as_str()
                        && !interp::is_single_reference(s)
                    {
                        let var = if key == "access-key-id" {
                            "AWS_ACCESS_KEY_ID"
                        } else {
                            "AWS_SECRET_ACCESS_KEY"
                        };
                        return Err(Error::Config(format!(
                            "{here} holds a literal credential; walship reads \
                                     credentials from the environment only: write \
                                     `{key}: ${{{var}}}` (or leave the key out and set {var})"
                        )));
                    }
                    visit(val, &here)?;
                }
            }
            serde_yaml_ng::Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    visit(item, &format!("{at}[{i}]"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    visit(tree, "")
}

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
    Ok(Config {
        dbs,
        metrics_addr,
        unhealthy_after: match &raw.unhealthy_after {
            Some(s) => parse_positive_duration("unhealthy-after", s)?,
            None => DEFAULT_UNHEALTHY_AFTER,
        },
        shutdown_timeout: match &raw.shutdown_timeout {
            Some(s) => parse_positive_duration("shutdown-timeout", s)?,
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
    let replica = match (&db.replica, db.replicas.as_deref()) {
        (Some(r), None) => r.clone(),
        (None, Some([r])) => r.clone(),
        (None, None) | (None, Some([])) => {
            return Err(Error::Config(format!("{at} has no replica")));
        }
        (None, Some(_)) => {
            return Err(Error::Config(format!(
                "{at} lists several replicas; walship replicates each database to one replica"
            )));
        }
        (Some(_), Some(_)) => {
            return Err(Error::Config(format!(
                "{at} has both `replica` and `replicas`; use one"
            )));
        }
    };
    let rat = format!("{at}.replica");
    let snapshot_interval = match &replica.snapshot_interval {
        Some(s) => {
            Some(parse_duration(&format!("{rat}.snapshot-interval"), s)?).filter(|d| !d.is_zero())
        }
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
    let validation_interval = match &replica.validation_interval {
        Some(s) => {
            Some(parse_duration(&format!("{rat}.validation-interval"), s)?).filter(|d| !d.is_zero())
        }
        None => None,
    };
    let retention = match &replica.retention {
        Some(v) => Some(parse_duration(&format!("{rat}.retention"), v)?).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_RETENTION),
    };
    let retention_check_interval = match &replica.retention_check_interval {
        Some(v) => parse_duration(&format!("{rat}.retention-check-interval"), v)?,
        None => DEFAULT_RETENTION_CHECK_INTERVAL,
    };
    if retention_check_interval.is_zero() {
        return Err(Error::Config(format!(
            "{rat}.retention-check-interval must be above zero"
        )));
    }
    for (key, v) in [
        ("monitor-interval", &db.monitor_interval),
        ("checkpoint-interval", &db.checkpoint_interval),
        ("busy-timeout", &db.busy_timeout),
    ] {
        if let Some(v) = v {
            parse_duration(&format!("{at}.{key}"), v)?;
        }
    }
    let sync_interval = match &replica.sync_interval {
        Some(s) => parse_duration(&format!("{rat}.sync-interval"), s)?,
        None => DEFAULT_SYNC_INTERVAL,
    };
    if sync_interval.is_zero() {
        return Err(Error::Config(format!(
            "{rat}.sync-interval must be above zero"
        )));
    }
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
    Ok(DbConfig {
        kind,
        connection: db.connection.clone(),
        spool_dir: match &db.meta_path {
            Some(p) => PathBuf::from(p),
            None => default_spool_dir(&path),
        },
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
    })
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
    let location = if let Some(url) = &r.url {
        if r.bucket.is_some() {
            return Err(Error::Config(format!(
                "{at} has both `url` and `bucket`; use one"
            )));
        }
        parse_location(url)?
    } else {
        let kind = r
            .kind
            .as_deref()
            .unwrap_or(if r.bucket.is_some() { "s3" } else { "file" });
        let prefix = r
            .path
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let bucket = || {
            r.bucket
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
        endpoint: r.endpoint.clone().or_else(|| top.endpoint.clone()),
        region: r.region.clone().or_else(|| top.region.clone()),
        force_path_style: r.force_path_style.or(top.force_path_style),
        skip_verify: r.skip_verify.unwrap_or(false),
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
