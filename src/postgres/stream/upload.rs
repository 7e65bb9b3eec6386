//! The stream's store side: WAL received and not yet stored (`Shared`), and the task that
//! cuts it into chunks and stores them (`Uploader`): the leading edge at once, then at most
//! one cut per `sync-interval`, a chunk never crossing a segment's end, a completed segment
//! also stored whole. Knows nothing of the connection: the receive loop owns it.

use super::super::sidecar::PgState;
use crate::error::{Error, Result, StoreErrorKind};
use crate::format::pgwal;
use crate::metrics::{DbLabel, Metrics};
use crate::pgformat::walname::WalFile;
use crate::storage::layout::{self, ChunkName, GenerationId};
use crate::storage::{PutOutcome, Replica};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

struct Pending {
    /// WAL from `stored` (the store's end) to the received end.
    bytes: BytesMut,
    /// When the oldest of those bytes arrived.
    since: Option<Instant>,
}

/// What the receive loop and the uploader share.
pub struct Shared {
    pending: Mutex<Pending>,
    stored: AtomicU64,
    received: AtomicU64,
    closing: AtomicBool,
    data: Notify,
    acked: Notify,
}

impl Shared {
    pub fn new(start: u64) -> Shared {
        Shared {
            pending: Mutex::new(Pending {
                bytes: BytesMut::new(),
                since: None,
            }),
            stored: AtomicU64::new(start),
            received: AtomicU64::new(start),
            closing: AtomicBool::new(false),
            data: Notify::new(),
            acked: Notify::new(),
        }
    }

    pub fn push(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut p = self.pending.lock().unwrap();
        p.bytes.extend_from_slice(data);
        p.since.get_or_insert_with(Instant::now);
        self.received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        drop(p);
        self.data.notify_one();
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap().bytes.len()
    }

    /// How long the oldest WAL not stored has waited.
    pub fn lag(&self) -> Option<Duration> {
        self.pending.lock().unwrap().since.map(|t| t.elapsed())
    }

    /// Resolves when the store acknowledged a chunk.
    pub async fn acked(&self) {
        self.acked.notified().await
    }

    /// No more WAL comes: the uploader stores what it has, then ends.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.data.notify_one();
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// The pending WAL from the store's end, up to the end of the segment it starts in.
    fn cut(&self, seg_size: u64) -> Option<(u64, Bytes)> {
        let p = self.pending.lock().unwrap();
        if p.bytes.is_empty() {
            return None;
        }
        let start = self.stored();
        let room = (seg_size - start % seg_size) as usize;
        let n = p.bytes.len().min(room);
        Some((start, Bytes::copy_from_slice(&p.bytes[..n])))
    }

    fn stored_to(&self, n: usize) {
        let mut p = self.pending.lock().unwrap();
        p.bytes.advance(n);
        p.since = if p.bytes.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        self.stored.fetch_add(n as u64, Ordering::Relaxed);
        drop(p);
        self.acked.notify_one();
    }
}

/// Stores the stream's WAL for one session.
pub struct Uploader {
    pub replica: Arc<Replica>,
    pub generation: GenerationId,
    pub metrics: Arc<Metrics>,
    pub state: Arc<PgState>,
    pub timeline: u32,
    pub seg_size: u64,
    pub sync_interval: Duration,
    /// The current segment's bytes from its first, when known (to store it whole once
    /// complete); `None` when streaming began inside it without its start.
    pub segment_so_far: Option<Vec<u8>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Uploader {
    fn label(&self) -> DbLabel {
        DbLabel {
            db: self.state.label.clone(),
        }
    }

    /// Until the session closes and everything received is stored.
    pub async fn run(mut self, sh: Arc<Shared>) {
        let mut last_cut: Option<Instant> = None;
        loop {
            // Registered before looking, so a push in between is not missed.
            let notified = sh.data.notified();
            if sh.pending_len() == 0 {
                if sh.closing() {
                    return;
                }
                notified.await;
                continue;
            }
            drop(notified);
            if let Some(t) = last_cut {
                let next = t + self.sync_interval;
                while Instant::now() < next && !sh.closing() {
                    let n = sh.data.notified();
                    tokio::select! {
                        _ = tokio::time::sleep_until(next.into()) => {}
                        _ = n => {}
                    }
                }
            }
            last_cut = Some(Instant::now());
            // Everything pending, cut at segment ends.
            let upto = sh.received();
            while sh.stored() < upto {
                let Some((start, bytes)) = sh.cut(self.seg_size) else {
                    break;
                };
                let n = bytes.len().min((upto - start) as usize);
                let bytes = bytes.slice(..n);
                self.store(&sh, start, bytes).await;
            }
        }
    }

    /// Store the chunk at `start` until the store takes it (backing off, the failure
    /// reported), then move the store's end past it.
    async fn store(&mut self, sh: &Shared, start: u64, bytes: Bytes) {
        let (segment, off) = super::segment_of(self.timeline, start, self.seg_size);
        let c = ChunkName {
            segment,
            start: off,
            end: off + bytes.len() as u32,
        };
        let key = layout::format_pg_chunk(&self.generation, &c);
        let encoded = {
            let (c, b) = (c, bytes.clone());
            tokio::task::spawn_blocking(move || {
                Bytes::from(pgwal::encode_chunk(&c.segment, c.start, c.end, &b))
            })
            .await
            .expect("encode task")
        };
        let mut wait = BACKOFF_MIN;
        loop {
            self.metrics.put_requests.get_or_create(&self.label()).inc();
            match put_chunk(&self.replica, &key, &c, encoded.clone(), &bytes).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(target: "walship::postgres::stream", db = %self.state.label,
                        chunk = %key, "storing a chunk: {e}; trying again");
                    self.metrics.error(&self.state.label, "stream");
                    self.state.stream_failed();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
        let l = self.label();
        self.metrics.uploaded_objects.get_or_create(&l).inc();
        self.metrics
            .uploaded_bytes
            .get_or_create(&l)
            .inc_by(encoded.len() as u64);
        self.metrics
            .last_sync_seconds
            .get_or_create(&l)
            .set(crate::clock::now_ms() as f64 / 1e3);
        sh.stored_to(bytes.len());
        // The server streams and the store takes it: healthy.
        self.state
            .stream_failing_since_ms
            .store(0, Ordering::Relaxed);
        tracing::debug!(target: "walship::postgres::stream", chunk = %key, bytes = bytes.len(), "stored");
        if let Some(so_far) = &mut self.segment_so_far {
            so_far.extend_from_slice(&bytes);
        }
        if u64::from(c.end) == self.seg_size {
            let whole = self.segment_so_far.replace(Vec::new());
            if let Some(raw) = whole.filter(|r| r.len() as u64 == self.seg_size) {
                self.store_whole(segment, raw);
            }
        }
    }

    /// A completed segment, stored whole under archive mode's name (beside `wal-push`, the
    /// same object), so a restore reads it with one GET. In the background: its chunks
    /// already hold it.
    fn store_whole(&self, segment: WalFile, raw: Vec<u8>) {
        let (replica, generation, metrics, label) = (
            self.replica.clone(),
            self.generation.clone(),
            self.metrics.clone(),
            self.state.label.clone(),
        );
        tokio::spawn(async move {
            let mut wait = BACKOFF_MIN;
            for _ in 0..8 {
                match super::super::archive::push_bytes(&replica, &generation, &segment, &raw).await
                {
                    Ok(_) => {
                        tracing::debug!(target: "walship::postgres::stream", file = %segment, "segment stored whole");
                        return;
                    }
                    Err(e) => {
                        metrics.error(&label, "stream_segment");
                        tracing::warn!(target: "walship::postgres::stream", file = %segment,
                            "storing the whole segment: {e} (its chunks hold it)");
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        });
    }
}

/// PUT a chunk, never overwriting: the same bytes already there (an earlier attempt that
/// was not answered) is success; different bytes are an error naming it.
async fn put_chunk(
    replica: &Replica,
    key: &str,
    c: &ChunkName,
    encoded: Bytes,
    raw: &[u8],
) -> Result<()> {
    match replica.put_new(key, encoded).await {
        Ok(PutOutcome::Created | PutOutcome::AlreadyPresent) => Ok(()),
        Err(Error::Store {
            kind: StoreErrorKind::AlreadyExists,
            ..
        }) => match pgwal::decode_chunk(&c.segment, c.start, c.end, &replica.get(key).await?) {
            Ok(old) if old == raw => Ok(()),
            _ => Err(Error::Replica {
                replica: replica.url().to_string(),
                reason: format!("{key} is already stored with different WAL; not overwriting it"),
            }),
        },
        Err(e) => Err(e),
    }
}
