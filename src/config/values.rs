//! Values as configs and flags write them: durations (`0`, `15m`), sizes (`64MiB`), lease
//! TTLs, listen addresses, and YAML's numbers-or-text. Each error names the key.

use super::*;

/// Durations and sizes as YAML writes them: `retention: 0` and `spool-limit: 1000000` are
/// numbers to YAML, not strings; both are read as their text and parsed like strings.
pub(super) fn number_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
    }
    Ok(
        <Option<Scalar> as serde::Deserialize>::deserialize(d)?.map(|v| match v {
            Scalar::Text(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
        }),
    )
}

pub fn parse_duration(key: &str, s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        Error::Config(format!(
            "{key}: {s:?} is not a duration ({e}); use e.g. 10s, 1h, 168h"
        ))
    })?;
    if d > MAX_DURATION {
        return Err(Error::Config(format!(
            "{key}: {s:?} is too long (at most 100 years)"
        )));
    }
    Ok(d)
}

/// A duration that must be above zero (a zero one would make the setting meaningless).
pub fn parse_positive_duration(key: &str, s: &str) -> Result<Duration> {
    let d = parse_duration(key, s)?;
    if d.is_zero() {
        return Err(Error::Config(format!("{key} must be above zero")));
    }
    Ok(d)
}

/// `spool-limit`: a size of at least `MIN_SPOOL_LIMIT`; with less nothing could ever be
/// queued for upload.
pub fn parse_spool_limit(key: &str, s: &str) -> Result<u64> {
    let n = parse_size(key, s)?;
    if n < MIN_SPOOL_LIMIT {
        return Err(Error::Config(format!(
            "{key}: {s:?} is too small: the spool must hold at least 1MB, or nothing can be \
             queued for upload"
        )));
    }
    Ok(n)
}

/// Sizes like `256MiB`, `1GB`, `512M`, or a plain byte count.
pub fn parse_size(key: &str, s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => 0,
    };
    match num.parse::<u64>() {
        Ok(n) if mult > 0 => n.checked_mul(mult).ok_or_else(|| {
            Error::Config(format!("{key}: {s:?} is too large (it overflows 64 bits)"))
        }),
        Err(e) if mult > 0 && *e.kind() == std::num::IntErrorKind::PosOverflow => Err(
            Error::Config(format!("{key}: {s:?} is too large (it overflows 64 bits)")),
        ),
        _ => Err(Error::Config(format!(
            "{key}: {s:?} is not a size; use e.g. 256MiB or 1GB"
        ))),
    }
}

/// A lease TTL: at least a second (renewals come every sixth of it).
pub fn parse_lease_ttl(what: &str, s: &str) -> Result<Duration> {
    let d = parse_positive_duration(what, s)?;
    if d < Duration::from_secs(1) {
        return Err(Error::Config(format!(
            "{what}: {s} is too short for a lease (at least 1s; the default is 30s)"
        )));
    }
    Ok(d)
}

/// `:9090` and `0.0.0.0:9090` (Litestream style) as well as full socket addresses.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| Error::Config(format!("addr: {s:?} is not a listen address like :9090")))
}

/// A database's `mode:` and `slot:`: the replication slot when it streams (PostgreSQL only).
pub fn stream_slot(at: &str, postgres: bool, db: &super::RawDb) -> Result<Option<String>> {
    let mode = db.mode.as_deref();
    if !postgres && (mode.is_some() || db.slot.is_some()) {
        return Err(Error::Config(format!(
            "{at}.mode and {at}.slot are PostgreSQL settings (type: postgres)"
        )));
    }
    match mode {
        None | Some("archive") if db.slot.is_some() => Err(Error::Config(format!(
            "{at}.slot is set but {at}.mode is not `stream`: archive mode uses no slot"
        ))),
        None | Some("archive") => Ok(None),
        Some("stream") => {
            let slot = db.slot.clone().unwrap_or_else(|| "walship".into());
            // PostgreSQL's own rule for slot names.
            let ok = !slot.is_empty()
                && slot.len() <= 63
                && slot
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
            if !ok {
                return Err(Error::Config(format!(
                    "{at}.slot {slot:?}: a slot name is 1 to 63 lower-case letters, digits \
                     or underscores"
                )));
            }
            Ok(Some(slot))
        }
        Some(other) => Err(Error::Config(format!(
            "{at}.mode {other:?} is not a PostgreSQL mode (archive, stream)"
        ))),
    }
}
