//! The keys a config may hold, level by level: walship's own and every key of Litestream
//! 0.3's and 0.5's `litestream.yml`. One pass over the parsed tree (after interpolation,
//! before serde) turns text a `${VAR}` produced into the type its key takes, drops the keys
//! that have no effect here with one note each saying why, warns about keys nobody knows
//! (Litestream ignores them too) and refuses a near-miss of a walship-only key. Never reads
//! the environment or a file.

use crate::error::{Error, Result};
use serde_yaml_ng::{Mapping, Value};

#[derive(Clone, Copy)]
pub(super) enum Ty {
    Text,
    Bool,
    Int,
    Float,
    /// A duration (`10s`, or a number of seconds... as YAML writes it), checked here.
    Duration,
    /// Number or text, parsed later (sizes).
    Scalar,
    Map(Keys),
    /// A list of maps (`dbs`, `replicas`).
    Maps(Keys),
    /// Left to serde (`retention-tiers`) or not looked at (an ignored key's value).
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// Litestream's key, honoured.
    Both,
    /// walship's own: a near-miss of it is an error, not a warning.
    Walship,
    /// Litestream's key with no effect here; the text says why.
    Ignored(&'static str),
    /// Litestream's key whose meaning walship cannot give; going on would be silently wrong.
    Refused(&'static str),
}

/// A level's keys, as a list of tables (the replica settings are shared by two levels).
pub(super) type Keys = &'static [&'static [Key]];

#[derive(Clone, Copy)]
pub(super) struct Key {
    pub name: &'static str,
    pub ty: Ty,
    pub use_: Use,
}

const fn k(name: &'static str, ty: Ty, use_: Use) -> Key {
    Key { name, ty, use_ }
}

use Ty::*;
use Use::*;

const CHECKPOINTS: &str = "walship watches the WAL with inotify and decides its checkpoints \
                           itself (min-checkpoint-page-count is honoured)";
const NO_LTX: &str = "walship ships WAL segments, not LTX files, and has no compaction levels \
                      (retention and retention-tiers decide what is kept)";
const S3_CLIENT: &str = "walship's S3 client sets this itself (every object carries its own \
                         CRC32; uploads are single PUTs or 16 MiB parts)";
const OTHER_TYPES: &str = "it belongs to Litestream's sftp, webdav and nats replicas, which \
                           walship does not support";
const ENCRYPTION: &str = "walship cannot encrypt this way yet; it refuses rather than store \
                          the database unencrypted (use the bucket's default encryption)";

/// What every replica takes, and what the top level takes as the replicas' default.
const SETTINGS: &[Key] = &[
    k("sync-interval", Duration, Both),
    k("validation-interval", Duration, Both),
    k("access-key-id", Text, Both),
    k("secret-access-key", Text, Both),
    k("region", Text, Both),
    k("bucket", Text, Both),
    k("endpoint", Text, Both),
    k("force-path-style", Bool, Both),
    k("skip-verify", Bool, Both),
    k("max-sync-ltx-files", Any, Ignored(NO_LTX)),
    k(
        "auto-recover",
        Any,
        Ignored("walship starts a new generation by itself when continuity is lost"),
    ),
    k("sign-payload", Any, Ignored(S3_CLIENT)),
    k("require-content-md5", Any, Ignored(S3_CLIENT)),
    k("part-size", Any, Ignored(S3_CLIENT)),
    k("concurrency", Any, Ignored(S3_CLIENT)),
    k(
        "storage-class",
        Any,
        Ignored(
            "walship writes the bucket's default storage class (set a lifecycle rule to move objects)",
        ),
    ),
    k("sse-customer-algorithm", Any, Refused(ENCRYPTION)),
    k("sse-customer-key", Any, Refused(ENCRYPTION)),
    k("sse-customer-key-path", Any, Refused(ENCRYPTION)),
    k("sse-kms-key-id", Any, Refused(ENCRYPTION)),
    k("age", Any, Refused(ENCRYPTION)),
    k(
        "account-name",
        Any,
        Ignored(
            "walship reads Azure credentials from AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
        ),
    ),
    k(
        "account-key",
        Any,
        Ignored(
            "walship reads Azure credentials from AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
        ),
    ),
    k(
        "sas-token",
        Any,
        Ignored("walship reads Azure credentials from the AZURE_STORAGE_* variables"),
    ),
    k("host", Any, Ignored(OTHER_TYPES)),
    k("user", Any, Ignored(OTHER_TYPES)),
    k("password", Any, Ignored(OTHER_TYPES)),
    k("key-path", Any, Ignored(OTHER_TYPES)),
    k("host-key", Any, Ignored(OTHER_TYPES)),
    k("concurrent-writes", Any, Ignored(OTHER_TYPES)),
    k("webdav-url", Any, Ignored(OTHER_TYPES)),
    k("webdav-username", Any, Ignored(OTHER_TYPES)),
    k("webdav-password", Any, Ignored(OTHER_TYPES)),
    k("jwt", Any, Ignored(OTHER_TYPES)),
    k("seed", Any, Ignored(OTHER_TYPES)),
    k("creds", Any, Ignored(OTHER_TYPES)),
    k("nkey", Any, Ignored(OTHER_TYPES)),
    k("username", Any, Ignored(OTHER_TYPES)),
    k("token", Any, Ignored(OTHER_TYPES)),
    k("tls", Any, Ignored(OTHER_TYPES)),
    k("root-cas", Any, Ignored(OTHER_TYPES)),
    k("client-cert", Any, Ignored(OTHER_TYPES)),
    k("client-key", Any, Ignored(OTHER_TYPES)),
    k("max-reconnects", Any, Ignored(OTHER_TYPES)),
    k("reconnect-wait", Any, Ignored(OTHER_TYPES)),
    k("timeout", Any, Ignored(OTHER_TYPES)),
];

const SNAPSHOT: Keys = &[&[
    k("interval", Duration, Both),
    k("retention", Duration, Both),
]];
const LOGGING: Keys = &[&[
    k("level", Text, Both),
    k("type", Text, Both),
    k("stderr", Bool, Ignored("walship always logs to stderr")),
    k(
        "source",
        Any,
        Ignored("walship's log lines name their module instead of a source line"),
    ),
]];

pub(super) const REPLICA: Keys = &[
    &[
        k("type", Text, Both),
        k("name", Text, Both),
        k("path", Text, Both),
        k("url", Text, Both),
        k("retention", Duration, Both),
        k("retention-check-interval", Duration, Both),
        k("snapshot-interval", Duration, Both),
        k("snapshot-wal-ratio", Float, Walship),
        k("retention-tiers", Any, Walship),
    ],
    SETTINGS,
];

pub(super) const DB: Keys = &[&[
    k("path", Text, Both),
    k("type", Text, Walship),
    k("connection", Text, Walship),
    k("mode", Text, Walship),
    k("slot", Text, Walship),
    k("meta-path", Text, Both),
    k("spool-limit", Scalar, Walship),
    k("journal-fsync", Bool, Walship),
    k("min-checkpoint-page-count", Int, Both),
    k("snapshot", Map(SNAPSHOT), Both),
    k("restore-if-db-not-exists", Bool, Both),
    k("replica", Map(REPLICA), Both),
    k("replicas", Maps(REPLICA), Both),
    k("monitor-interval", Duration, Ignored(CHECKPOINTS)),
    k("checkpoint-interval", Duration, Ignored(CHECKPOINTS)),
    k("busy-timeout", Duration, Ignored(CHECKPOINTS)),
    k("max-checkpoint-page-count", Int, Ignored(CHECKPOINTS)),
    k("truncate-page-n", Int, Ignored(CHECKPOINTS)),
    k("max-sync-wal-bytes", Any, Ignored(NO_LTX)),
    k("dir", Any, Refused(DIRECTORIES)),
    k("pattern", Any, Refused(DIRECTORIES)),
    k("recursive", Any, Refused(DIRECTORIES)),
    k("watch", Any, Refused(DIRECTORIES)),
    k("meta-dir", Any, Refused(DIRECTORIES)),
]];

const DIRECTORIES: &str = "walship replicates the databases listed by `path`; it does not scan \
                           directories for them: list each database";

pub(super) const TOP: Keys = &[
    &[
        k("dbs", Maps(DB), Both),
        k("addr", Text, Both),
        k("exec", Text, Both),
        k("logging", Map(LOGGING), Both),
        k("snapshot", Map(SNAPSHOT), Both),
        k("validation", Map(&[&[k("interval", Duration, Both)]]), Both),
        k("retention", Map(&[&[k("enabled", Bool, Both)]]), Both),
        k("shutdown-sync-timeout", Duration, Both),
        k("unhealthy-after", Duration, Walship),
        k("shutdown-timeout", Duration, Walship),
        k("lease-wait", Duration, Walship),
        k("lease-ttl", Duration, Walship),
        k("strict-secrets", Bool, Walship),
        k(
            "socket",
            Any,
            Ignored("walship has no control socket: its subcommands read the replica itself"),
        ),
        k("levels", Any, Ignored(NO_LTX)),
        k("l0-retention", Duration, Ignored(NO_LTX)),
        k("l0-retention-check-interval", Duration, Ignored(NO_LTX)),
        k("verify-compaction", Any, Ignored(NO_LTX)),
        k(
            "shutdown-sync-interval",
            Duration,
            Ignored("walship retries uploads with its own backoff until shutdown-timeout"),
        ),
        k(
            "heartbeat-url",
            Any,
            Ignored(
                "walship sends no heartbeat: alert on its /metrics instead (alert rules in sidecar-examples/)",
            ),
        ),
        k(
            "heartbeat-interval",
            Any,
            Ignored("walship sends no heartbeat: alert on its /metrics instead"),
        ),
        k("mcp-addr", Any, Ignored("walship has no MCP server")),
    ],
    SETTINGS,
];

/// Normalise `tree` (the top level) in place; `notes` gets one line per ignored or unknown
/// key.
pub(super) fn normalize(tree: &mut Value, notes: &mut Vec<String>) -> Result<()> {
    level(tree, TOP, "", notes)
}

fn level(v: &mut Value, keys: Keys, at: &str, notes: &mut Vec<String>) -> Result<()> {
    let Value::Mapping(m) = v else {
        let what = if at.is_empty() { "the config" } else { at };
        return Err(Error::Config(format!("{what} must be a map of keys")));
    };
    let names: Vec<Value> = m.keys().cloned().collect();
    for name in names {
        let Some(key) = name.as_str() else {
            let at = if at.is_empty() { "top level" } else { at };
            let kind = match &name {
                Value::Sequence(_) => "a list".to_string(),
                Value::Mapping(_) => "a map".to_string(),
                other => serde_yaml_ng::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            return Err(Error::Config(format!(
                "{at}: a key must be text, not {kind}"
            )));
        };
        let here = join(at, key);
        let Some(spec) = keys.iter().flat_map(|t| t.iter()).find(|s| s.name == key) else {
            unknown(m, &name, key, keys, &here, notes)?;
            continue;
        };
        if let Refused(why) = spec.use_ {
            return Err(Error::Config(format!("{here}: not supported: {why}")));
        }
        let val = m.get_mut(&name).expect("key listed");
        if val.is_null() {
            m.remove(&name);
            continue;
        }
        coerce(val, spec.ty, &here, notes)?;
        if let Ignored(why) = spec.use_ {
            notes.push(format!("{here} has no effect: {why}"));
            m.remove(&name);
        }
    }
    Ok(())
}

fn coerce(val: &mut Value, ty: Ty, here: &str, notes: &mut Vec<String>) -> Result<()> {
    let text = val.as_str().map(|s| s.trim().to_string());
    let shown = match &*val {
        Value::String(s) => format!("{s:?}"),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    let bad = |what: &str| Error::Config(format!("{here}: {shown} is not {what}"));
    match ty {
        Text => match val {
            Value::String(_) => {}
            Value::Number(n) => *val = Value::String(n.to_string()),
            Value::Bool(b) => *val = Value::String(b.to_string()),
            _ => return Err(bad("text")),
        },
        Bool => {
            if let Some(t) = text {
                let b = match t.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => return Err(bad("true or false")),
                };
                *val = Value::Bool(b);
            } else if !val.is_bool() {
                return Err(bad("true or false"));
            }
        }
        Int => {
            if let Some(t) = text {
                let n: u32 = t.parse().map_err(|_| bad("a whole number"))?;
                *val = Value::Number(n.into());
            } else if val.as_u64().is_none_or(|n| n > u32::MAX as u64) {
                return Err(bad("a whole number"));
            }
        }
        Float => {
            if let Some(t) = text {
                let x: f64 = t.parse().map_err(|_| bad("a number"))?;
                *val = Value::Number(x.into());
            } else if !val.is_number() {
                return Err(bad("a number"));
            }
        }
        Duration => {
            let t = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad("a duration")),
            };
            super::parse_duration(here, &t)?;
            *val = Value::String(t);
        }
        Scalar => {
            if !(val.is_string() || val.is_number()) {
                return Err(bad("a number or text"));
            }
        }
        Map(keys) => level(val, keys, here, notes)?,
        Maps(keys) => {
            let Value::Sequence(items) = val else {
                return Err(bad("a list"));
            };
            for (i, item) in items.iter_mut().enumerate() {
                level(item, keys, &format!("{here}[{i}]"), notes)?;
            }
        }
        Any => {}
    }
    Ok(())
}

/// A key neither walship nor Litestream knows. Litestream ignores it; walship does too,
/// saying so, unless it is within two edits of a walship-only key (a typo there would
/// silently change what walship does, and no Litestream config can hold it).
fn unknown(
    m: &mut Mapping,
    name: &Value,
    key: &str,
    keys: Keys,
    here: &str,
    notes: &mut Vec<String>,
) -> Result<()> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
    let nearest = keys
        .iter()
        .flat_map(|t| t.iter())
        .map(|s| (strsim::levenshtein(&norm(key), &norm(s.name)), s))
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((d, s)) if d <= 2 && s.use_ == Walship => Err(Error::Config(format!(
            "{here} is not a key walship knows; did you mean {}?",
            s.name
        ))),
        Some((d, s)) if d <= 3 => {
            notes.push(format!(
                "{here} is not a key walship or Litestream knows, and is ignored (as \
                 Litestream ignores it); did you mean {}?",
                s.name
            ));
            m.remove(name);
            Ok(())
        }
        _ => {
            notes.push(format!(
                "{here} is not a key walship or Litestream knows, and is ignored (as \
                 Litestream ignores it; a key that only holds a YAML anchor is fine)"
            ));
            m.remove(name);
            Ok(())
        }
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> (Result<Value>, Vec<String>) {
        let mut v: Value = serde_yaml_ng::from_str(text).unwrap();
        let mut notes = Vec::new();
        let r = normalize(&mut v, &mut notes).map(|()| v);
        (r, notes)
    }

    #[test]
    fn text_from_a_variable_takes_its_keys_type() {
        let (v, notes) = norm(
            "dbs:\n- path: /a\n  min-checkpoint-page-count: \"1000\"\n  replica:\n    force-path-style: \"true\"\n    snapshot-wal-ratio: \"0.5\"\n",
        );
        let v = v.unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        let db = &v["dbs"][0];
        assert_eq!(db["min-checkpoint-page-count"], Value::Number(1000.into()));
        assert_eq!(db["replica"]["force-path-style"], Value::Bool(true));
        assert_eq!(
            db["replica"]["snapshot-wal-ratio"],
            Value::Number(0.5.into())
        );
    }

    #[test]
    fn a_bad_typed_value_names_its_key() {
        let e = norm("dbs:\n- path: /a\n  min-checkpoint-page-count: lots\n")
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dbs[0].min-checkpoint-page-count") && e.contains("whole number"),
            "{e}"
        );
        let e = norm("sync-interval: soon\n").0.unwrap_err().to_string();
        assert!(e.contains("sync-interval") && e.contains("duration"), "{e}");
    }

    #[test]
    fn ignored_keys_go_with_a_note_naming_them() {
        let (v, notes) = norm(
            "socket: {enabled: true}\nlevels: [{interval: 5m}]\ndbs:\n- path: /a\n  monitor-interval: 1s\n  replica: {url: 's3://b/p', sign-payload: true}\n",
        );
        let v = v.unwrap();
        assert!(v.get("socket").is_none() && v.get("levels").is_none());
        assert!(v["dbs"][0].get("monitor-interval").is_none());
        assert!(v["dbs"][0]["replica"].get("sign-payload").is_none());
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("dbs[0].replica.sign-payload has no effect"))
        );
    }

    #[test]
    fn unknown_keys_warn_with_the_nearest_but_walship_typos_fail() {
        let (v, notes) = norm("forcePathStyle: true\nreplica_defaults: {type: s3}\n");
        let v = v.unwrap();
        assert!(v.get("forcePathStyle").is_none());
        assert!(notes[0].contains("forcePathStyle") && notes[0].contains("force-path-style"));
        assert!(notes[1].contains("replica_defaults"), "{notes:?}");
        let e = norm("dbs:\n- path: /a\n  spool-limt: 1MB\n")
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dbs[0].spool-limt") && e.contains("spool-limit"),
            "{e}"
        );
    }

    #[test]
    fn refused_keys_say_why() {
        let e = norm("dbs:\n- dir: /data\n  pattern: '*.db'\n")
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dbs[0].dir") && e.contains("list each database"),
            "{e}"
        );
        let e = norm("dbs:\n- path: /a\n  replica: {url: 's3://b', sse-kms-key-id: k}\n")
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sse-kms-key-id") && e.contains("unencrypted"),
            "{e}"
        );
    }
}
