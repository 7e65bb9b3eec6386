//! Snapshots of a live database: every page as of one committed WAL position, read from
//! the database file with the WAL's newer committed frames laid over it, while the
//! capture thread's read lock keeps both stable (nothing past the position can be
//! checkpointed into the file, and the WAL cannot be reset). Streamed to the replica with
//! bounded memory; never holds the application's write lock.

use crate::error::{Error, Result};
use crate::format::container;
use crate::format::snapshot::{SnapshotEncoder, SnapshotMeta};
use crate::sqlite::db::DbFiles;
use crate::sqlite::wal::WalHeader;
use crate::storage::Replica;
use crate::storage::layout::{self, GenerationId, SnapshotName};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub use crate::format::manifest::Manifest;

pub struct SnapshotJob {
    pub generation: GenerationId,
    pub manifest: Option<Manifest>,
    pub meta: SnapshotMeta,
    pub files: Arc<DbFiles>,
    /// Latest committed frame, at or before the position, of each page held in the WAL.
    pub index: HashMap<u32, u32>,
    pub wal: Option<WalHeader>,
    /// Set by capture when it gave up the read lock the pages depend on.
    pub cancelled: std::sync::atomic::AtomicBool,
}

/// Above this many compressed bytes a snapshot is sent as a multipart upload.
const SINGLE_PUT_MAX: usize = 8 << 20;

impl SnapshotJob {
    pub fn object_name(&self) -> String {
        layout::format_snapshot(
            &self.generation,
            &SnapshotName {
                txid: self.meta.txid,
                commit_ms: self.meta.commit_ms,
            },
        )
    }

    /// Read chunk `i`'s pages: the database file, with WAL frames laid over it.
    fn read_chunk(&self, i: u32) -> std::io::Result<Vec<u8>> {
        let ps = self.meta.page_size as usize;
        let pages = self.meta.chunk_pages(i);
        let mut buf = vec![0u8; pages.len() * ps];
        let start = (pages.start as u64 - 1) * ps as u64;
        let mut got = 0usize;
        while got < buf.len() {
            let n = self.files.db.read_at(&mut buf[got..], start + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        for (k, pgno) in pages.enumerate() {
            let slot = &mut buf[k * ps..(k + 1) * ps];
            match (self.index.get(&pgno), &self.wal) {
                (Some(&frame), Some(h)) => {
                    self.files
                        .wal
                        .read_exact_at(slot, h.frame_offset(frame) + 24)?;
                }
                _ if (k + 1) * ps > got => {
                    return Err(std::io::Error::other(format!(
                        "page {pgno} is past the end of the database file and not in the WAL"
                    )));
                }
                _ => {}
            }
        }
        Ok(buf)
    }

    /// The pages read so far are still the database at the position: capture has not let
    /// go of its read lock, and the WAL whose frames were laid over the file was not
    /// restarted (which could have overwritten them while they were read).
    fn still_consistent(&self) -> std::io::Result<bool> {
        if self.cancelled.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        let Some(h) = &self.wal else { return Ok(true) };
        if self.index.is_empty() {
            return Ok(true);
        }
        let mut b = [0u8; crate::sqlite::wal::WAL_HEADER_LEN];
        self.files.wal.read_exact_at(&mut b, 0)?;
        Ok(WalHeader::parse(&b).is_ok_and(|now| now == *h))
    }

    /// Stream the snapshot (and the manifest, first) to the replica.
    pub async fn upload(self: &Arc<Self>, replica: &Replica) -> Result<u64> {
        let inconsistent = || {
            Error::io(
                self.manifest_db(),
                std::io::Error::other("the database changed under the snapshot; retaking it"),
            )
        };
        if self.cancelled.load(std::sync::atomic::Ordering::Acquire) {
            return Err(inconsistent());
        }
        if let Some(m) = &self.manifest {
            let json = serde_json::to_vec_pretty(m).expect("manifest serialises");
            replica
                .put_new(
                    &layout::format_manifest(&self.generation),
                    Bytes::from(json),
                )
                .await?;
        }
        let name = self.object_name();
        let (mut enc, header) = SnapshotEncoder::new(self.meta);
        let mut buffered = header;
        let mut upload = None;
        let mut total = 0u64;
        // Read and compress two chunks at a time on blocking threads, in order.
        let mut chunks = futures::stream::iter(0..self.meta.chunk_count())
            .map(|i| {
                let job = self.clone();
                tokio::task::spawn_blocking(move || {
                    job.read_chunk(i).map(|raw| container::encode_chunk(&raw))
                })
            })
            .buffered(2);
        while let Some(joined) = chunks.next().await {
            let encoded = joined
                .map_err(|e| Error::Usage(format!("snapshot worker: {e}")))?
                .map_err(|e| Error::io(format!("snapshot of {}", self.manifest_db()), e))?;
            buffered.extend(enc.push(&encoded));
            if buffered.len() >= SINGLE_PUT_MAX {
                if upload.is_none() {
                    upload = Some(replica.upload(&name).await?);
                }
                let up = upload.as_mut().expect("just set");
                if let Err(e) = up.write(&buffered).await {
                    upload.take().expect("set").abort().await;
                    return Err(e);
                }
                total += buffered.len() as u64;
                buffered.clear();
            }
        }
        buffered.extend(enc.finish());
        total += buffered.len() as u64;
        if !self
            .still_consistent()
            .map_err(|e| Error::io(self.manifest_db(), e))?
        {
            if let Some(up) = upload {
                up.abort().await;
            }
            return Err(inconsistent());
        }
        match upload {
            None => {
                replica.put_new(&name, Bytes::from(buffered)).await?;
            }
            Some(mut up) => {
                if let Err(e) = up.write(&buffered).await {
                    up.abort().await;
                    return Err(e);
                }
                up.finish().await?;
            }
        }
        Ok(total)
    }

    fn manifest_db(&self) -> String {
        self.manifest
            .as_ref()
            .map(|m| m.database.clone())
            .unwrap_or_default()
    }
}

pub use crate::storage::lease::hostname;
