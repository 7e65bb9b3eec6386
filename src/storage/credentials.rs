//! Where S3 credentials and endpoint settings come from, besides the config: the standard
//! `AWS_*` variables (and Litestream's `LITESTREAM_*` pair), and the shared credentials
//! file. Never reads the config file itself.

use crate::config::ReplicaConfig;
use crate::error::{Error, Result};
use std::path::PathBuf;

pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn env_endpoint() -> Option<String> {
    var("AWS_ENDPOINT_URL_S3")
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .or_else(|| var("AWS_ENDPOINT"))
}

/// The replica's endpoint (its config, else the AWS variables), as `endpoint_url` checks it.
pub fn endpoint(cfg: &ReplicaConfig) -> std::result::Result<Option<String>, String> {
    cfg.endpoint
        .clone()
        .or_else(env_endpoint)
        .map(|e| endpoint_url(&e))
        .transpose()
}

/// An endpoint as object_store needs it: written without a scheme (`s3.example.com`, as
/// fly.io, Backblaze and Tigris configs do) it means `https://`, as in Litestream. Anything
/// that is then not an http(s) URL with a host is refused, naming it (object_store panics
/// on such a value).
pub fn endpoint_url(raw: &str) -> std::result::Result<String, String> {
    let raw = raw.trim();
    let full = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    match url::Url::parse(&full) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(full)
        }
        _ => Err(format!(
            "endpoint {raw:?} is not a URL (expected https://host[:port], or host[:port])"
        )),
    }
}

pub fn env_region() -> Option<String> {
    var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION"))
}

/// Extra trusted roots from `AWS_CA_BUNDLE` (a PEM bundle), if set and readable.
pub fn ca_bundle() -> Vec<object_store::Certificate> {
    let Some(path) = var("AWS_CA_BUNDLE") else {
        return Vec::new();
    };
    match std::fs::read(&path).map(|pem| object_store::Certificate::from_pem_bundle(&pem)) {
        Ok(Ok(certs)) => certs,
        Ok(Err(e)) => {
            tracing::warn!("AWS_CA_BUNDLE={path}: not a PEM bundle ({e}); ignored");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("AWS_CA_BUNDLE={path}: {e}; ignored");
            Vec::new()
        }
    }
}

/// Static keys, in order: the config's keys, `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, `LITESTREAM_ACCESS_KEY_ID` and `LITESTREAM_SECRET_ACCESS_KEY`,
/// then the shared credentials file. `None` leaves the other
/// providers (web identity, container, instance metadata) to object_store.
pub fn static_keys(cfg: &ReplicaConfig) -> Result<Option<StaticKeys>> {
    let pair = |id: Option<String>, secret: Option<String>, id_name: &str, secret_name: &str| match (
        id, secret,
    ) {
        (Some(a), Some(s)) => Ok(Some((a, s))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Config(format!(
            "{id_name} is set but {secret_name} is not; set both"
        ))),
        (None, Some(_)) => Err(Error::Config(format!(
            "{secret_name} is set but {id_name} is not; set both"
        ))),
    };
    if let Some((a, s)) = pair(
        cfg.access_key_id.clone().filter(|v| !v.is_empty()),
        cfg.secret_access_key.clone().filter(|v| !v.is_empty()),
        "access-key-id",
        "secret-access-key",
    )? {
        return Ok(Some(StaticKeys {
            access_key_id: a,
            secret_access_key: s,
            session_token: var("AWS_SESSION_TOKEN"),
        }));
    }
    // Litestream's own pair stands in for the AWS one (less confusing on non-AWS stores).
    for (id, secret) in [
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"),
    ] {
        if let Some((a, s)) = pair(var(id), var(secret), id, secret)? {
            return Ok(Some(StaticKeys {
                access_key_id: a,
                secret_access_key: s,
                session_token: var("AWS_SESSION_TOKEN"),
            }));
        }
    }
    shared_file_keys()
}

fn shared_file_keys() -> Result<Option<StaticKeys>> {
    let explicit = var("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from);
    let path = match explicit.clone() {
        Some(p) => p,
        None => match var("HOME") {
            Some(h) => PathBuf::from(h).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::Config(format!(
                "AWS_SHARED_CREDENTIALS_FILE {}: {e}",
                path.display()
            )));
        }
    };
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let keys = parse_credentials_file(&text, &profile);
    match keys {
        Some(k) => Ok(Some(k)),
        None if explicit.is_some() || var("AWS_PROFILE").is_some() => Err(Error::Config(format!(
            "{}: profile [{profile}] has no aws_access_key_id/aws_secret_access_key",
            path.display()
        ))),
        None => Ok(None),
    }
}

/// The INI-style `~/.aws/credentials` format: `[profile]` sections of `key = value`.
pub fn parse_credentials_file(text: &str, profile: &str) -> Option<StaticKeys> {
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut in_profile = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(StaticKeys {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_scheme_means_https() {
        let ok = |e: &str| endpoint_url(e).unwrap();
        assert_eq!(
            ok("s3.us-west-002.backblazeb2.com"),
            "https://s3.us-west-002.backblazeb2.com"
        );
        assert_eq!(
            ok(" fly.storage.tigris.dev "),
            "https://fly.storage.tigris.dev"
        );
        assert_eq!(ok("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        // Hostile or empty values are refused by name, never handed to object_store.
        for bad in ["", " ", "://", "https://", "x y", "ftp://x"] {
            let e = endpoint_url(bad).unwrap_err();
            assert!(e.contains("is not a URL"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn reads_the_named_profile_only() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    [other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        let d = parse_credentials_file(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("A", "B")
        );
        let o = parse_credentials_file(text, "other").unwrap();
        assert_eq!(o.session_token.as_deref(), Some("T"));
        assert!(parse_credentials_file(text, "missing").is_none());
    }
}
