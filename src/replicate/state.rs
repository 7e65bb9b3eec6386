//! State one database's capture thread and upload task share: the ordered upload queue
//! (segments in the spool, snapshots to stream), flags each raises for the other, and the
//! figures the metrics and health endpoint read.

use super::snapshot::SnapshotJob;
use super::spool::SpoolEntry;
pub use crate::clock::now_ms;
use crate::metrics::{DbLabel, GenerationLabel, Metrics};
use crate::storage::layout::GenerationId;
use crate::storage::replica::RequestCounts;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upload work, in the order it must reach the replica.
pub enum Job {
    Segment(SpoolEntry),
    Snapshot(Arc<SnapshotJob>),
}

impl Job {
    /// The same job (not an equal one): what an uploader took is still the front.
    pub fn same(&self, other: &Job) -> bool {
        match (self, other) {
            (Job::Segment(a), Job::Segment(b)) => a.path == b.path,
            (Job::Snapshot(a), Job::Snapshot(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    pub fn generation(&self) -> &GenerationId {
        match self {
            Job::Segment(e) => &e.generation,
            Job::Snapshot(s) => &s.generation,
        }
    }

    /// Commit time of the oldest transaction this job carries, for the lag gauge.
    pub fn oldest_commit_ms(&self) -> Option<u64> {
        match self {
            Job::Segment(e) => Some(e.name.first_commit_ms),
            Job::Snapshot(_) => None,
        }
    }
}

#[derive(Default)]
pub struct Queue {
    pub jobs: VecDeque<Job>,
    /// Bytes of spool files in `jobs`.
    pub spool_bytes: u64,
}

pub struct DbState {
    /// The database path, as the `db` label of every metric.
    pub label: String,
    pub spool_limit: u64,
    pub queue: Mutex<Queue>,
    pub wake_uploader: tokio::sync::Notify,
    /// A snapshot is being streamed: capture must keep its read lock where it is.
    pub snapshot_active: AtomicBool,
    /// Set by the uploader when a generation cannot go on (a conflicting object, a
    /// snapshot that could not be read): capture starts a new one if it is still on it.
    pub abandoned: Mutex<Option<GenerationId>>,
    /// Capture has stopped and queued everything it consumed.
    pub capture_done: AtomicBool,
    /// Capture stopped without an active generation: committed transactions are missing.
    pub incomplete: AtomicBool,
    /// Commit time of the oldest transaction capture consumed but has not queued (0: none).
    pub oldest_unqueued_ms: AtomicU64,
    pub last_sync_ms: AtomicU64,
    /// When the replica started failing (0: the last request succeeded).
    pub failing_since_ms: AtomicU64,
    pub generation: Mutex<Option<GenerationId>>,
    pub metrics: Arc<Metrics>,
    /// The replica client's request counters, and how many PUTs metrics already show.
    pub requests: Arc<RequestCounts>,
    puts_reported: AtomicU64,
    /// The replica path's lease as the uploader sees it (docs/LEASE.md).
    pub lease: Mutex<LeaseGate>,
    pub lease_lost: tokio::sync::Notify,
    /// The other replicas (`mirror`), offered every job before the first one's queue.
    pub mirrors: std::sync::OnceLock<Vec<Arc<super::mirror::Mirror>>>,
    /// Snapshots the other replicas have queued and not finished or dropped: capture
    /// keeps its read lock where they need it meanwhile.
    pub mirror_snapshots: std::sync::atomic::AtomicUsize,
    /// Another replica waits for a snapshot to start its line again from.
    pub snapshot_wanted: AtomicBool,
    /// With other replicas: since when the first one waits for a snapshot (`behind`).
    pub primary_behind_since_ms: AtomicU64,
    /// The first replica's queued snapshot starts its line again: dropping it means
    /// waiting for another.
    pub primary_resync: AtomicBool,
}

/// Whether this walship may write to the replica: it holds the lease, renewed recently
/// enough that no one else can have taken it over.
#[derive(Debug, Default)]
pub struct LeaseGate {
    /// When the lease was last known good, and its time to live; `None`: no lease kept.
    pub good: Option<(std::time::Instant, std::time::Duration)>,
    /// Why it was lost: nothing may be written from then on.
    pub lost: Option<String>,
}

impl LeaseGate {
    /// Writes stop at two thirds of the lease's life without a renewal: well before anyone
    /// else may take it over.
    pub fn may_write(&self) -> MayWrite {
        if let Some(why) = &self.lost {
            return MayWrite::Lost(why.clone());
        }
        match self.good {
            Some((at, ttl)) if at.elapsed() >= ttl * 2 / 3 => MayWrite::Wait,
            _ => MayWrite::Yes,
        }
    }
}

/// The uploader's answer from the lease gate.
pub enum MayWrite {
    Yes,
    /// Not renewed for a while (a slow store, or this process was paused): wait for the
    /// renewal, which either refreshes the lease or finds it lost.
    Wait,
    Lost(String),
}

impl DbState {
    pub fn new(
        label: String,
        spool_limit: u64,
        metrics: Arc<Metrics>,
        requests: Arc<RequestCounts>,
    ) -> Self {
        metrics
            .replica_up
            .get_or_create(&DbLabel { db: label.clone() })
            .set(1);
        DbState {
            label,
            spool_limit,
            queue: Mutex::default(),
            wake_uploader: tokio::sync::Notify::new(),
            snapshot_active: AtomicBool::new(false),
            abandoned: Mutex::new(None),
            capture_done: AtomicBool::new(false),
            incomplete: AtomicBool::new(false),
            oldest_unqueued_ms: AtomicU64::new(0),
            last_sync_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            generation: Mutex::new(None),
            metrics,
            requests,
            puts_reported: AtomicU64::new(0),
            lease: Mutex::default(),
            lease_lost: tokio::sync::Notify::new(),
            mirrors: Default::default(),
            mirror_snapshots: Default::default(),
            snapshot_wanted: AtomicBool::new(false),
            primary_behind_since_ms: AtomicU64::new(0),
            primary_resync: AtomicBool::new(false),
        }
    }

    pub fn may_write(&self) -> MayWrite {
        self.lease.lock().unwrap().may_write()
    }

    /// A snapshot is being streamed to some replica: capture keeps its read lock.
    pub fn snapshot_busy(&self) -> bool {
        self.snapshot_active.load(Ordering::Acquire)
            || self.mirror_snapshots.load(Ordering::Acquire) > 0
    }

    /// The other replicas (none for most databases).
    pub fn mirrors(&self) -> &[Arc<super::mirror::Mirror>] {
        self.mirrors.get().map_or(&[], |m| m.as_slice())
    }

    /// Bring the PUT-request counter up to date with the replica client's count.
    pub fn report_requests(&self) {
        let now = self.requests.put.load(Ordering::Relaxed);
        let before = self.puts_reported.swap(now, Ordering::Relaxed);
        self.metrics
            .put_requests
            .get_or_create(&self.db_label())
            .inc_by(now.saturating_sub(before));
    }

    pub fn db_label(&self) -> DbLabel {
        DbLabel {
            db: self.label.clone(),
        }
    }

    pub fn push(&self, job: Job) {
        for m in self.mirrors() {
            m.offer(&job, self);
        }
        let mut q = self.queue.lock().unwrap();
        if !self.primary_takes(&mut q, &job) {
            return;
        }
        if let Job::Segment(e) = &job {
            q.spool_bytes += e.size;
        }
        q.jobs.push_back(job);
        self.metrics
            .spool_bytes
            .get_or_create(&self.db_label())
            .set(q.spool_bytes as i64);
        drop(q);
        self.wake_uploader.notify_one();
    }

    /// Room for `bytes` more in the spool?
    pub fn spool_has_room(&self, bytes: u64) -> bool {
        self.primary_may_fall_behind()
            || self.queue.lock().unwrap().spool_bytes + bytes <= self.spool_limit
    }

    /// Bytes left under the spool limit (what the capture journal may take).
    pub fn spool_room(&self) -> u64 {
        if self.primary_may_fall_behind() {
            return self.spool_limit;
        }
        self.spool_limit
            .saturating_sub(self.queue.lock().unwrap().spool_bytes)
    }

    pub fn queue_len(&self) -> usize {
        self.queue.lock().unwrap().jobs.len()
    }

    pub fn set_generation(&self, g: &GenerationId) {
        let mut cur = self.generation.lock().unwrap();
        if let Some(old) = cur.take() {
            self.metrics.generation.remove(&GenerationLabel {
                db: self.label.clone(),
                generation: old.to_string(),
            });
        }
        self.metrics
            .generation
            .get_or_create(&GenerationLabel {
                db: self.label.clone(),
                generation: g.to_string(),
            })
            .set(1);
        *cur = Some(g.clone());
    }

    /// Age in seconds of the oldest committed transaction the replica has not acknowledged.
    pub fn lag_seconds(&self, now: u64) -> f64 {
        let unqueued = self.oldest_unqueued_ms.load(Ordering::Relaxed);
        let queued = self
            .queue
            .lock()
            .unwrap()
            .jobs
            .iter()
            .find_map(Job::oldest_commit_ms);
        let behind = self.primary_behind_since_ms.load(Ordering::Acquire);
        let oldest = [
            Some(unqueued).filter(|&m| m > 0),
            queued,
            Some(behind).filter(|&m| m > 0),
        ]
        .into_iter()
        .flatten()
        .min();
        oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0)
    }

    pub fn store_ok(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
        self.metrics
            .replica_up
            .get_or_create(&self.db_label())
            .set(1);
    }

    pub fn store_failed(&self, kind: &str) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.metrics
            .replica_up
            .get_or_create(&self.db_label())
            .set(0);
        self.metrics.error(&self.label, kind);
    }
}
