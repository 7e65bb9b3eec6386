//! One database's replica: an `object_store` client rooted at the database's prefix, with
//! typed operations (never-overwrite puts, ranged gets, listings relative to the root),
//! request counters for metrics, and errors that name the bucket, credential or
//! permission that is missing.

mod local;
use local::{local_swap, local_version};

#[cfg(test)]
mod conformance;
mod errors;
pub use errors::store_error;

use super::credentials;
use crate::config::{Location, ReplicaConfig};
use crate::error::{Error, Result, StoreErrorKind};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Requests made, by kind: the request-count metrics and the "no PUT while idle" check.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub put: AtomicU64,
    pub put_bytes: AtomicU64,
    pub get: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The object was already there with the same bytes (an earlier attempt succeeded).
    AlreadyPresent,
}

/// A listed object, its name relative to the replica root.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// When the store last wrote it (Unix ms): how retention and restore tell a live
    /// PostgreSQL cluster from an old one, whose WAL names carry no time.
    pub modified_ms: u64,
}

pub struct Replica {
    store: Arc<dyn ObjectStore>,
    root: String,
    url: String,
    /// False once the store was seen to ignore `If-None-Match` (Garage does).
    conditional_put: AtomicBool,
    /// The directory of a file:// replica: its compare-and-swap is a locked local
    /// read-compare-rename, since object_store's local store has no `PutMode::Update`.
    local_dir: Option<std::path::PathBuf>,
    pub counts: Arc<RequestCounts>,
}

/// The outcome of a compare-and-swap write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Written; the object's new version.
    Done(String),
    /// The object was not in the expected state (another writer changed it).
    Conflict,
}

/// Set (to anything) to treat the store as one that ignores conditional writes, as Garage
/// does: the test suite's way to run the fallback against a store that honours them.
pub const IGNORES_CONDITIONAL_VAR: &str = "WALSHIP_ASSUME_NO_CONDITIONAL_WRITES";
const IGNORES_CONDITIONAL_WARNING: &str = "walship checks before each write and takes the \
     replica path's lease by writing it and reading it back after half a second \
     (docs/LEASE.md), which detects a second writer but cannot stop two that start within \
     that half second";

/// Client tuning shared by every cloud backend.
fn client_options(cfg: &ReplicaConfig) -> ClientOptions {
    let mut o = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
        .with_allow_invalid_certificates(cfg.skip_verify);
    // AWS_CA_BUNDLE names extra trusted roots for https endpoints; plain-http endpoints
    // never look at it, so it is safe to have set either way.
    for cert in credentials::ca_bundle() {
        o = o.with_root_certificate(cert);
    }
    if cfg
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        o = o.with_allow_http(true);
    }
    o
}

fn retry() -> RetryConfig {
    // Short: walship's own loops retry with backoff for as long as it takes.
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

impl Replica {
    /// Build the client. `create` makes a missing local directory (replicate); restore
    /// and listing pass false so a typo is an error, not an empty replica.
    pub fn open(cfg: &ReplicaConfig, create: bool) -> Result<Self> {
        let url = cfg.url();
        let cfg_err = |m: String| Error::Config(format!("replica {url}: {m}"));
        let mut local_dir = None;
        let (store, root): (Arc<dyn ObjectStore>, String) = match &cfg.location {
            Location::File { dir } => {
                if create {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                } else if !dir.is_dir() {
                    return Err(Error::Replica {
                        replica: url,
                        reason: "directory does not exist".into(),
                    });
                }
                let abs = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
                local_dir = Some(abs.clone());
                let fs =
                    LocalFileSystem::new_with_prefix(&abs).map_err(|e| cfg_err(e.to_string()))?;
                (Arc::new(fs), String::new())
            }
            Location::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client_options(cfg))
                    .with_retry(retry());
                let endpoint = credentials::endpoint(cfg).map_err(&cfg_err)?;
                if let Some(ep) = &endpoint {
                    b = b.with_endpoint(ep);
                    if ep.starts_with("http://") {
                        b = b.with_allow_http(true);
                    }
                }
                // Over TLS the transport already protects the body, and every walship object
                // carries its own CRC32: skip hashing each body with SHA-256 for the
                // signature (UNSIGNED-PAYLOAD, as AWS's SDKs do over HTTPS), which costs
                // client and server CPU per byte. Plain HTTP keeps the signed hash.
                let tls = endpoint
                    .as_deref()
                    .is_none_or(|ep| !ep.starts_with("http://"));
                b = b.with_unsigned_payload(tls);
                b = b.with_region(
                    cfg.region
                        .clone()
                        .or_else(credentials::env_region)
                        .unwrap_or_else(|| "us-east-1".into()),
                );
                if let Some(force) = cfg.force_path_style {
                    b = b.with_virtual_hosted_style_request(!force);
                }
                // Without static keys, from_env's web identity, container or instance
                // credentials apply.
                if let Some(k) = credentials::static_keys(cfg)? {
                    b = b
                        .with_access_key_id(k.access_key_id)
                        .with_secret_access_key(k.secret_access_key);
                    if let Some(t) = k.session_token {
                        b = b.with_token(t);
                    }
                }
                (
                    Arc::new(b.build().map_err(|e| cfg_err(e.to_string()))?),
                    prefix.clone(),
                )
            }
            Location::Gcs { bucket, prefix } => {
                let b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client_options(cfg))
                    .with_retry(retry());
                (
                    Arc::new(b.build().map_err(|e| cfg_err(e.to_string()))?),
                    prefix.clone(),
                )
            }
            Location::Azure { container, prefix } => {
                let b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_client_options(client_options(cfg))
                    .with_retry(retry());
                (
                    Arc::new(b.build().map_err(|e| cfg_err(e.to_string()))?),
                    prefix.clone(),
                )
            }
        };
        Ok(Replica {
            store,
            root,
            url,
            conditional_put: AtomicBool::new(true),
            local_dir,
            counts: Arc::default(),
        })
    }

    /// Whether the store honours conditional writes (known after `check_writable`).
    pub fn conditional_writes(&self) -> bool {
        self.conditional_put.load(Ordering::Relaxed)
    }

    /// An object's bytes and version (its ETag; for file://, a checksum of the bytes), or
    /// `None` when it does not exist.
    pub async fn get_versioned(&self, rel: &str) -> Result<Option<(Bytes, String)>> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        if let Some(dir) = &self.local_dir {
            let path = dir.join(rel);
            return match std::fs::read(&path) {
                Ok(b) => {
                    let v = local_version(&b);
                    Ok(Some((Bytes::from(b), v)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(&path, e)),
            };
        }
        let what = || format!("GET {rel}");
        let r = match self.store.get(&self.path(rel)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(what(), e)),
        };
        let version = r.meta.e_tag.clone().unwrap_or_default();
        let b = r.bytes().await.map_err(|e| self.err(what(), e))?;
        Ok(Some((b, version)))
    }

    /// Write `bytes` at `rel` only if the object is still at version `expect` (`None`:
    /// only if it does not exist). On a store that ignores conditional writes this is a
    /// check, a write and a read-back after `settle`: it detects a second writer but
    /// cannot stop two racing within that time.
    pub async fn put_versioned(
        &self,
        rel: &str,
        bytes: Bytes,
        expect: Option<&str>,
        settle: Duration,
    ) -> Result<Swap> {
        self.count_put(bytes.len());
        if let Some(dir) = self.local_dir.clone() {
            let rel = rel.to_string();
            let expect = expect.map(str::to_string);
            return tokio::task::spawn_blocking(move || local_swap(&dir, &rel, &bytes, expect))
                .await
                .map_err(|e| Error::io(&self.url, std::io::Error::other(e)))?;
        }
        let path = self.path(rel);
        if !self.conditional_writes() {
            let now = self.get_versioned(rel).await?.map(|(_, v)| v);
            if now.as_deref() != expect {
                return Ok(Swap::Conflict);
            }
            self.store
                .put(&path, PutPayload::from(bytes.clone()))
                .await
                .map_err(|e| self.err(format!("PUT {rel}"), e))?;
            tokio::time::sleep(settle).await;
            return Ok(match self.get_versioned(rel).await? {
                Some((b, v)) if b == bytes => Swap::Done(v),
                _ => Swap::Conflict,
            });
        }
        let mode = match expect {
            None => PutMode::Create,
            Some(v) => PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(v.to_string()),
                version: None,
            }),
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), PutOptions::from(mode))
            .await
        {
            Ok(r) => Ok(Swap::Done(r.e_tag.unwrap_or_default())),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            ) => Ok(Swap::Conflict),
            Err(e) => Err(self.err(format!("PUT {rel}"), e)),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store path of a name relative to the root.
    pub fn path(&self, rel: &str) -> Path {
        if self.root.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.root))
        }
    }

    fn rel<'a>(&self, p: &'a str) -> &'a str {
        if self.root.is_empty() {
            p
        } else {
            p.strip_prefix(&self.root)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(p)
        }
    }

    pub fn err(&self, what: impl Into<String>, e: object_store::Error) -> Error {
        store_error(&self.url, what.into(), e)
    }

    /// Write `bytes` at `rel` unless an object is already there. An existing object with
    /// the same bytes is success (an earlier attempt landed); different bytes are an error.
    pub async fn put_new(&self, rel: &str, bytes: Bytes) -> Result<PutOutcome> {
        let path = self.path(rel);
        if !self.conditional_put.load(Ordering::Relaxed) {
            // Fallback for stores that ignore If-None-Match: check first (racy, logged at
            // start-up as such), then write.
            if let Some(outcome) = self.compare_existing(rel, &bytes).await? {
                return Ok(outcome);
            }
        }
        self.count_put(bytes.len());
        let mode = if self.conditional_put.load(Ordering::Relaxed) {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        match self
            .store
            .put_opts(
                &path,
                PutPayload::from(bytes.clone()),
                PutOptions::from(mode),
            )
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.compare_existing(rel, &bytes).await? {
                    Some(o) => Ok(o),
                    None => Err(self.err(
                        format!("PUT {rel}"),
                        object_store::Error::Generic {
                            store: "walship",
                            source: "reported as existing but then not found".into(),
                        },
                    )),
                }
            }
            Err(e) => Err(self.err(format!("PUT {rel}"), e)),
        }
    }

    /// `Some(AlreadyPresent)` if `rel` holds exactly `bytes`, `None` if it is absent, and a
    /// conflict error if it holds something else.
    async fn compare_existing(&self, rel: &str, bytes: &Bytes) -> Result<Option<PutOutcome>> {
        match self.get(rel).await {
            Ok(existing) if existing == *bytes => Ok(Some(PutOutcome::AlreadyPresent)),
            Ok(_) => Err(Error::Store {
                replica: self.url.clone(),
                what: format!("PUT {rel}"),
                message: "a different object already exists under this name; another \
                          writer is using this replica path"
                    .into(),
                kind: StoreErrorKind::AlreadyExists,
            }),
            Err(Error::Store {
                kind: StoreErrorKind::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn count_put(&self, n: usize) {
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        self.counts.put_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Start a streamed upload of a large object (snapshots).
    pub async fn upload(&self, rel: &str) -> Result<Upload<'_>> {
        let up = self
            .store
            .put_multipart(&self.path(rel))
            .await
            .map_err(|e| self.err(format!("start upload {rel}"), e))?;
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        Ok(Upload {
            replica: self,
            rel: rel.to_string(),
            writer: Some(WriteMultipart::new_with_chunk_size(up, 8 << 20)),
        })
    }

    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let what = || format!("GET {rel}");
        let r = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(|e| self.err(what(), e))?;
        r.bytes().await.map_err(|e| self.err(what(), e))
    }

    pub async fn get_range(&self, rel: &str, range: Range<u64>) -> Result<Bytes> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        self.store
            .get_range(&self.path(rel), range)
            .await
            .map_err(|e| self.err(format!("GET {rel}"), e))
    }

    /// Every object below `rel_prefix` (recursive), names relative to the root.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<Listed>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let prefix = self.path(rel_prefix);
        let items: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(format!("LIST {rel_prefix}"), e))?;
        let mut out: Vec<Listed> = items
            .into_iter()
            .map(|m| Listed {
                name: self.rel(m.location.as_ref()).to_string(),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
            })
            .collect();
        // S3 lists in name order, file:// in directory order: every caller sees S3's.
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The immediate "directories" below `rel_prefix` (their last name component).
    pub async fn list_dirs(&self, rel_prefix: &str) -> Result<Vec<String>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let prefix = self.path(rel_prefix);
        let r = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.err(format!("LIST {rel_prefix}/"), e))?;
        Ok(r.common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        self.counts.delete.fetch_add(1, Ordering::Relaxed);
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("DELETE {rel}"), e)),
        }
    }

    /// Delete `keys` with the store's batch API (S3 DeleteObjects: up to 1,000 keys per
    /// request), counting requests. Keys already gone are fine; any other failure is an
    /// error naming the first key it hit.
    pub async fn delete_many(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let per_request = if self.url.starts_with("s3://") {
            1000
        } else {
            1
        };
        self.counts
            .delete
            .fetch_add(keys.len().div_ceil(per_request) as u64, Ordering::Relaxed);
        let paths: Vec<object_store::Result<Path>> =
            keys.iter().map(|k| Ok(self.path(k))).collect();
        let results: Vec<_> = self
            .store
            .delete_stream(futures::stream::iter(paths).boxed())
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(format!("DELETE ({} objects)", keys.len()), e)),
            }
        }
        Ok(())
    }

    /// Start-up check: the replica is reachable and writable. Writes a probe object twice
    /// with never-overwrite semantics to learn whether the store honours conditional puts
    /// (falling back to check-then-write, with a warning, when it does not), then deletes it.
    pub async fn check_writable(&self, tag: &str) -> Result<()> {
        // LIST first: some S3-compatible servers create a missing bucket on PUT, which
        // would hide a typo in the bucket name.
        self.list_dirs("").await?;
        if std::env::var_os(IGNORES_CONDITIONAL_VAR).is_some() {
            // Tests: behave as on a store that ignores conditional writes (Garage).
            tracing::warn!(replica = %self.url, "{IGNORES_CONDITIONAL_VAR} is set: {IGNORES_CONDITIONAL_WARNING}");
            self.conditional_put.store(false, Ordering::Relaxed);
        }
        let rel = format!("{}/probe-{tag}", crate::storage::layout::PROBE_DIR);
        let body = Bytes::from(format!("walship write probe {tag}\n"));
        let path = self.path(&rel);
        let create = || PutOptions::from(PutMode::Create);
        self.count_put(body.len());
        let first = self
            .store
            .put_opts(&path, PutPayload::from(body.clone()), create())
            .await;
        match first {
            Ok(_) => {}
            Err(object_store::Error::NotImplemented { .. }) => {
                self.conditional_put.store(false, Ordering::Relaxed);
                self.count_put(body.len());
                self.store
                    .put(&path, PutPayload::from(body.clone()))
                    .await
                    .map_err(|e| self.err("write probe", e))?;
            }
            Err(e) => return Err(self.err("write probe", e)),
        }
        if self.conditional_put.load(Ordering::Relaxed) {
            self.count_put(body.len());
            match self
                .store
                .put_opts(&path, PutPayload::from(body.clone()), create())
                .await
            {
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Ok(_) => {
                    tracing::warn!(replica = %self.url,
                        "this store ignores conditional writes (If-None-Match): {IGNORES_CONDITIONAL_WARNING}");
                    self.conditional_put.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.err("write probe", e)),
            }
        }
        self.delete(&rel).await
    }
}

/// A streamed multipart upload; dropping it without `finish` leaves nothing visible.
pub struct Upload<'a> {
    replica: &'a Replica,
    rel: String,
    writer: Option<WriteMultipart>,
}

impl Upload<'_> {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.writer.as_mut().expect("not finished");
        w.wait_for_capacity(2)
            .await
            .map_err(|e| self.replica.err(format!("upload {}", self.rel), e))?;
        w.write(bytes);
        self.replica
            .counts
            .put_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub async fn finish(mut self) -> Result<()> {
        let w = self.writer.take().expect("not finished");
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.replica.err(format!("upload {}", self.rel), e))
    }

    pub async fn abort(mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.abort().await;
        }
    }
}
