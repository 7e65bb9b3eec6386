//! Where a replica lives (`file://`, `s3://`, …) and how to reach it: the parsed location,
//! the replica's settings and the URL they print as.

use super::*;

/// Where a replica lives. `prefix` never starts or ends with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
    File { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub location: Location,
    /// The replica's `name` (Litestream 0.3), for `-replica NAME`.
    pub name: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub skip_verify: bool,
    /// Credentials named in the config as `${VAR}` references, already expanded.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl ReplicaConfig {
    /// Its `name`, else its type as Litestream names types (`s3`, `gcs`, `abs`, `file`):
    /// what `-replica NAME` and the per-replica metrics call it.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            match self.location {
                Location::S3 { .. } => "s3",
                Location::Gcs { .. } => "gcs",
                Location::Azure { .. } => "abs",
                Location::File { .. } => "file",
            }
            .to_string()
        })
    }

    pub fn from_location(location: Location) -> Self {
        ReplicaConfig {
            location,
            name: None,
            endpoint: None,
            region: None,
            force_path_style: None,
            skip_verify: false,
            access_key_id: None,
            secret_access_key: None,
        }
    }

    /// The same store, rooted at `sub` below this root (prefix mode of `cleanup`).
    pub fn below(&self, sub: &str) -> ReplicaConfig {
        let sub = sub.trim_matches('/');
        let join = |p: &str| match (p.is_empty(), sub.is_empty()) {
            (_, true) => p.to_string(),
            (true, false) => sub.to_string(),
            (false, false) => format!("{p}/{sub}"),
        };
        let location = match &self.location {
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: join(prefix),
            },
            Location::Gcs { bucket, prefix } => Location::Gcs {
                bucket: bucket.clone(),
                prefix: join(prefix),
            },
            Location::Azure { container, prefix } => Location::Azure {
                container: container.clone(),
                prefix: join(prefix),
            },
            Location::File { dir } => Location::File { dir: dir.join(sub) },
        };
        ReplicaConfig {
            location,
            ..self.clone()
        }
    }

    /// The replica as a URL, for messages and metrics labels.
    pub fn url(&self) -> String {
        match &self.location {
            Location::S3 { bucket, prefix } => join_url("s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => join_url("gs", bucket, prefix),
            Location::Azure { container, prefix } => join_url("az", container, prefix),
            Location::File { dir } => format!("file://{}", dir.display()),
        }
    }
}

pub(super) fn join_url(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

/// Settings a replica URL's query carries (Litestream's documented form
/// `s3://bucket/path?endpoint=host:port&region=r&force-path-style=true`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UrlSettings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub skip_verify: Option<bool>,
}

/// A replica URL with its query: the location, and the settings the query names. An
/// unknown query key is an error naming it (it would otherwise become part of the path).
pub fn parse_url(s: &str) -> Result<(Location, UrlSettings)> {
    let Some((base, query)) = s.split_once('?').filter(|_| s.contains("://")) else {
        return Ok((parse_location(s)?, UrlSettings::default()));
    };
    let mut out = UrlSettings::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let flag = |v: &str| match v.to_ascii_lowercase().as_str() {
            "" | "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(Error::Config(format!(
                "replica URL {s:?}: {k}={v:?} is not true or false"
            ))),
        };
        match k.as_ref() {
            "endpoint" => out.endpoint = Some(v.into_owned()).filter(|e| !e.is_empty()),
            "region" => out.region = Some(v.into_owned()).filter(|e| !e.is_empty()),
            "force-path-style" | "forcePathStyle" => out.force_path_style = Some(flag(&v)?),
            "skip-verify" | "skipVerify" => out.skip_verify = Some(flag(&v)?),
            other => {
                return Err(Error::Config(format!(
                    "replica URL {s:?}: unknown query setting {other:?} (endpoint, region, \
                     force-path-style and skip-verify are understood)"
                )));
            }
        }
    }
    Ok((parse_location(base)?, out))
}

/// Parse a replica URL (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///dir`, or a
/// plain directory path), without a query (`parse_url` reads one).
pub fn parse_location(s: &str) -> Result<Location> {
    let bad = |why: &str| Error::Config(format!("replica URL {s:?}: {why}"));
    let Some((scheme, rest)) = s.split_once("://") else {
        if s.is_empty() {
            return Err(bad("empty"));
        }
        return Ok(Location::File { dir: s.into() });
    };
    let split = |rest: &str| -> Result<(String, String)> {
        let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
        if b.is_empty() {
            return Err(bad("no bucket"));
        }
        Ok((b.to_string(), p.trim_matches('/').to_string()))
    };
    match scheme {
        "s3" | "s3a" => split(rest).map(|(bucket, prefix)| Location::S3 { bucket, prefix }),
        "gs" | "gcs" => split(rest).map(|(bucket, prefix)| Location::Gcs { bucket, prefix }),
        "az" | "abs" | "azure" => {
            split(rest).map(|(container, prefix)| Location::Azure { container, prefix })
        }
        "file" => {
            if rest.is_empty() {
                return Err(bad("no path"));
            }
            Ok(Location::File { dir: rest.into() })
        }
        other => Err(bad(&format!(
            "unsupported scheme {other:?} (use s3://, gs://, az:// or file://)"
        ))),
    }
}
