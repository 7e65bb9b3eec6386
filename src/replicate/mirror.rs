//! The other replicas of one database (`replicas:` beyond the first): each takes the jobs
//! capture queues, through a directory of its own holding hard links into the spool (so a
//! killed process loses nothing it had not acknowledged), and uploads them at its own pace
//! with its own lease. One that is unreachable never holds capture back: it drops a
//! snapshot it cannot take at once, and past its backlog limit drops the backlog, then asks
//! capture for a snapshot to start its line again from. Never reads the database.

use super::snapshot::SnapshotJob;
use super::spool::{Spool, SpoolEntry};
use super::state::{DbState, Job, LeaseGate, MayWrite, now_ms};
use crate::error::{Error, StoreErrorKind};
use crate::metrics::ReplicaLabel;
use crate::shutdown::Shutdown;
use crate::storage::Replica;
use crate::storage::layout::{self, GenerationId};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::upload::{MAX_BACKOFF, MIN_BACKOFF};

/// A queued snapshot, and whether this replica's line starts at it (its generation's
/// first, or the one it waited for): dropping that one means waiting for another.
struct Queued {
    job: Job,
    starts_line: bool,
}

#[derive(Default)]
struct Backlog {
    jobs: VecDeque<Queued>,
    bytes: u64,
}

pub struct Mirror {
    pub name: String,
    pub replica: Arc<Replica>,
    dir: PathBuf,
    limit: u64,
    backlog: Mutex<Backlog>,
    wake: tokio::sync::Notify,
    pub failing_since_ms: AtomicU64,
    pub last_sync_ms: AtomicU64,
    /// Not following: waiting for a snapshot to start again from (since when, ms; 0: no).
    behind_since_ms: AtomicU64,
    pub lease: Mutex<LeaseGate>,
    pub lease_lost: tokio::sync::Notify,
    /// Generations whose manifest this replica is known to hold.
    manifests: Mutex<HashSet<GenerationId>>,
}

/// The directory of a replica's links, inside the spool (which ignores directories).
pub fn dir_of(spool_dir: &std::path::Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    spool_dir.join(format!("replica-{safe}"))
}

impl Mirror {
    /// Open the replica's link directory; returns what an earlier run left there.
    pub fn open(
        name: String,
        replica: Arc<Replica>,
        spool_dir: &std::path::Path,
        limit: u64,
    ) -> crate::Result<(Mirror, Vec<SpoolEntry>)> {
        let dir = dir_of(spool_dir, &name);
        let (_, left) = Spool::open(&dir)?;
        Ok((
            Mirror {
                name,
                replica,
                dir,
                limit,
                backlog: Mutex::default(),
                wake: tokio::sync::Notify::new(),
                failing_since_ms: AtomicU64::new(0),
                last_sync_ms: AtomicU64::new(0),
                behind_since_ms: AtomicU64::new(0),
                lease: Mutex::default(),
                lease_lost: tokio::sync::Notify::new(),
                manifests: Mutex::default(),
            },
            left,
        ))
    }

    fn label(&self, state: &DbState) -> ReplicaLabel {
        ReplicaLabel {
            db: state.label.clone(),
            replica: self.name.clone(),
        }
    }

    /// Reachable and following capture: a stall of the first replica would hold it up.
    pub fn following(&self) -> bool {
        !self.is_behind() && !self.failing()
    }

    pub fn is_behind(&self) -> bool {
        self.behind_since_ms.load(Ordering::Acquire) != 0
    }

    /// Start behind: nothing it holds continues into what capture queues next.
    pub fn start_behind(&self, why: &str) {
        tracing::warn!(replica = %self.name, "{why}: it starts again at the next snapshot");
        let _ =
            self.behind_since_ms
                .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Queue segments an earlier run left (already in order and continuing what the
    /// replica holds), linking those that are only in the spool.
    pub fn resume(&self, entries: Vec<SpoolEntry>, state: &DbState) {
        for e in entries {
            self.offer(&Job::Segment(e), state);
        }
    }

    /// Take a job capture queued (called before the first replica's queue gets it, so the
    /// spool file is still there to link).
    pub fn offer(&self, job: &Job, state: &DbState) {
        let mut b = self.backlog.lock().unwrap();
        match job {
            Job::Segment(e) => {
                if self.is_behind() {
                    return;
                }
                if b.bytes + e.size > self.limit {
                    drop(b);
                    self.fall_behind(state, "its backlog passed the spool limit");
                    return;
                }
                let link = self
                    .dir
                    .join(e.path.file_name().expect("a spool file name"));
                if link != e.path
                    && let Err(err) = std::fs::hard_link(&e.path, &link)
                    && err.kind() != std::io::ErrorKind::AlreadyExists
                {
                    drop(b);
                    self.fall_behind(state, &format!("cannot link {}: {err}", link.display()));
                    return;
                }
                b.bytes += e.size;
                b.jobs.push_back(Queued {
                    job: Job::Segment(SpoolEntry {
                        path: link,
                        ..e.clone()
                    }),
                    starts_line: false,
                });
            }
            Job::Snapshot(s) => {
                let starts_line = self.is_behind() || s.manifest.is_some();
                self.behind_since_ms.store(0, Ordering::Release);
                state.mirror_snapshots.fetch_add(1, Ordering::AcqRel);
                b.jobs.push_back(Queued {
                    job: Job::Snapshot(s.clone()),
                    starts_line,
                });
            }
        }
        drop(b);
        self.wake.notify_one();
    }

    /// Drop the whole backlog and wait for a snapshot to start again from.
    fn fall_behind(&self, state: &DbState, why: &str) {
        let mut b = self.backlog.lock().unwrap();
        for q in b.jobs.drain(..) {
            match q.job {
                Job::Segment(e) => {
                    let _ = std::fs::remove_file(&e.path);
                }
                Job::Snapshot(_) => {
                    state.mirror_snapshots.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        b.bytes = 0;
        drop(b);
        state.metrics.error(&state.label, "replica_behind");
        self.start_behind(why);
    }

    pub fn queued(&self) -> usize {
        self.backlog.lock().unwrap().jobs.len()
    }

    /// Age of the oldest committed transaction this replica has not acknowledged.
    pub fn lag_seconds(&self, state: &DbState, now: u64) -> f64 {
        let behind = self.behind_since_ms.load(Ordering::Acquire);
        let queued = self
            .backlog
            .lock()
            .unwrap()
            .jobs
            .iter()
            .find_map(|q| q.job.oldest_commit_ms());
        let unqueued = state.oldest_unqueued_ms.load(Ordering::Relaxed);
        let oldest = [
            Some(behind).filter(|&m| m > 0),
            queued,
            Some(unqueued).filter(|&m| m > 0),
        ]
        .into_iter()
        .flatten()
        .min();
        oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0)
    }

    /// Refresh this replica's gauges.
    pub fn report(&self, state: &DbState, now: u64) {
        let l = self.label(state);
        let m = &state.metrics;
        m.by_replica_lag
            .get_or_create(&l)
            .set(self.lag_seconds(state, now));
        let up = self.failing_since_ms.load(Ordering::Relaxed) == 0;
        m.by_replica_up.get_or_create(&l).set(i64::from(up));
        m.by_replica_last_sync
            .get_or_create(&l)
            .set(self.last_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0);
    }

    pub fn may_write(&self) -> MayWrite {
        self.lease.lock().unwrap().may_write()
    }

    fn failing(&self) -> bool {
        self.failing_since_ms.load(Ordering::Relaxed) != 0
    }

    fn store_ok(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    fn store_failed(&self, state: &DbState, kind: &str) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        state.metrics.error(&state.label, kind);
    }

    fn front(&self) -> Option<(Job, bool)> {
        let b = self.backlog.lock().unwrap();
        b.jobs.front().map(|q| {
            let job = match &q.job {
                Job::Segment(e) => Job::Segment(e.clone()),
                Job::Snapshot(s) => Job::Snapshot(s.clone()),
            };
            (job, q.starts_line)
        })
    }

    fn is_front(&self, job: &Job) -> bool {
        let b = self.backlog.lock().unwrap();
        b.jobs.front().is_some_and(|q| q.job.same(job))
    }

    /// Remove the front job, acknowledged or dropped, unless the backlog was dropped
    /// from under it meanwhile (it falls behind).
    fn pop(&self, state: &DbState, job: &Job) {
        let mut b = self.backlog.lock().unwrap();
        if !b.jobs.front().is_some_and(|q| q.job.same(job)) {
            return;
        }
        match b.jobs.pop_front().map(|q| q.job) {
            Some(Job::Segment(e)) => {
                b.bytes -= e.size;
                let _ = std::fs::remove_file(&e.path);
            }
            Some(Job::Snapshot(_)) => {
                state.mirror_snapshots.fetch_sub(1, Ordering::AcqRel);
            }
            None => {}
        }
    }

    /// A snapshot this replica cannot take now: skipped when its line goes on without it,
    /// else the line is broken and it waits for another.
    fn drop_snapshot(&self, state: &DbState, job: &Job, starts_line: bool, why: &str) {
        if starts_line {
            self.fall_behind(state, why);
        } else {
            tracing::warn!(replica = %self.name, "{why}: snapshot skipped on this replica");
            self.pop(state, job);
        }
    }

    /// A snapshot taken within a generation needs the generation's manifest beside it:
    /// copied from the first replica when this one lacks it.
    async fn ensure_manifest(&self, primary: &Replica, g: &GenerationId) -> crate::Result<()> {
        if self.manifests.lock().unwrap().contains(g) {
            return Ok(());
        }
        let key = layout::format_manifest(g);
        match self.replica.get(&key).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                let bytes = primary.get(&key).await?;
                self.replica.put_new(&key, bytes).await?;
            }
            Err(e) => return Err(e),
        }
        self.manifests.lock().unwrap().insert(g.clone());
        Ok(())
    }

    async fn upload(&self, primary: &Replica, job: &Job) -> crate::Result<u64> {
        match job {
            Job::Segment(e) => super::upload::upload_segment(&self.replica, e).await,
            Job::Snapshot(s) => {
                if s.manifest.is_none() {
                    self.ensure_manifest(primary, &s.generation).await?;
                }
                let n = SnapshotJob::upload(s, &self.replica).await?;
                self.manifests.lock().unwrap().insert(s.generation.clone());
                Ok(n)
            }
        }
    }
}

/// Upload `m`'s backlog until capture is done and it is empty, or the shutdown deadline
/// passes; returns the jobs left (in its directory, for the next run).
pub async fn run(
    m: Arc<Mirror>,
    state: Arc<DbState>,
    primary: Arc<Replica>,
    mut stop: Shutdown,
) -> usize {
    let mut backoff = MIN_BACKOFF;
    let mut last_warn: Option<Instant> = None;
    loop {
        if stop.deadline().is_some_and(|d| Instant::now() >= d) {
            return m.queued();
        }
        match m.may_write() {
            MayWrite::Yes => {}
            MayWrite::Lost(_) => return m.queued(),
            MayWrite::Wait => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let Some((job, starts_line)) = m.front() else {
            if state.capture_done.load(Ordering::Acquire) {
                return 0;
            }
            if m.failing() {
                match m.replica.list_dirs(layout::GENERATIONS).await {
                    Ok(_) => m.store_ok(),
                    Err(e) => m.store_failed(&state, e.kind_label()),
                }
            } else if m.is_behind() {
                state.snapshot_wanted.store(true, Ordering::Release);
            }
            tokio::select! {
                _ = m.wake.notified() => {}
                _ = stop.begun(), if stop.deadline().is_none() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        // An unreachable replica must not keep capture's read lock where a snapshot needs it.
        if matches!(job, Job::Snapshot(_)) && m.failing() {
            m.drop_snapshot(&state, &job, starts_line, "the replica is unreachable");
            continue;
        }
        let mut passes = stop.clone();
        let deadline_passes = passes.deadline_passed();
        let result = tokio::select! {
            r = m.upload(&primary, &job) => r,
            _ = m.lease_lost.notified() => return m.queued(),
            _ = deadline_passes => return m.queued(),
        };
        if result.is_err() && !m.is_front(&job) {
            // Dropped while in flight (it fell behind): its link may be gone.
            continue;
        }
        match result {
            Ok(_) => {
                backoff = MIN_BACKOFF;
                m.pop(&state, &job);
                m.last_sync_ms.store(now_ms(), Ordering::Relaxed);
                m.store_ok();
            }
            Err(e) if matches!(job, Job::Snapshot(_)) && !e.is_not_found() => {
                m.drop_snapshot(&state, &job, starts_line, &e.to_string());
                if !matches!(
                    e,
                    Error::Io { .. }
                        | Error::Store {
                            kind: StoreErrorKind::AlreadyExists,
                            ..
                        }
                ) {
                    m.store_failed(&state, e.kind_label());
                }
            }
            Err(
                e @ (Error::Store {
                    kind: StoreErrorKind::AlreadyExists,
                    ..
                }
                | Error::Io { .. }),
            ) => {
                // A different object under the name, or the spool file gone: this
                // replica's line cannot go on from here.
                m.fall_behind(&state, &e.to_string());
            }
            Err(e) => {
                m.store_failed(&state, e.kind_label());
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(replica = %m.name, db = %state.label,
                        "upload failed, will retry (queue {}): {e}", m.queued());
                    last_warn = Some(Instant::now());
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.begun(), if stop.deadline().is_none() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Of the segments an earlier run left (the spool's and this replica's own links), those
/// that continue what the replica holds of `generation` up to `upto` (where capture goes
/// on), in order; `None` when they cannot (a gap, another generation, no snapshot there).
pub fn continuing(
    listing: &[crate::storage::Listed],
    generation: &GenerationId,
    upto: u64,
    mut left: Vec<SpoolEntry>,
) -> Option<Vec<SpoolEntry>> {
    let gens = crate::catalog::Catalog::of(listing).generations;
    let g = gens.get(generation).filter(|g| g.restorable())?;
    let mut have = g
        .segments
        .iter()
        .map(|s| s.name.last_txid)
        .chain(g.snapshots.iter().map(|s| s.name.txid))
        .max()?;
    left.retain(|e| &e.generation == generation && e.name.last_txid > have);
    left.sort_by_key(|e| e.name.first_txid);
    left.dedup_by_key(|e| e.name.first_txid);
    for e in &left {
        if e.name.first_txid != have + 1 {
            return None;
        }
        have = e.name.last_txid;
    }
    (have == upto).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Listed;
    use crate::storage::layout::{SegmentName, SnapshotName};

    fn seg(first: u64, last: u64) -> SegmentName {
        SegmentName {
            first_txid: first,
            last_txid: last,
            first_commit_ms: first,
            last_commit_ms: last,
        }
    }

    /// What a replica holds, as names, and the spool's entries.
    #[test]
    fn a_backlog_continues_only_without_a_gap_up_to_where_capture_goes_on() {
        let g = GenerationId::new(1, 1);
        let l = |name: String| Listed {
            name,
            size: 1,
            modified_ms: 0,
        };
        let mut listing = vec![
            l(layout::format_manifest(&g)),
            l(layout::format_snapshot(
                &g,
                &SnapshotName {
                    txid: 0,
                    commit_ms: 1,
                },
            )),
            l(layout::format_segment(&g, &seg(1, 4))),
        ];
        let e = |first, last| SpoolEntry {
            generation: g.clone(),
            name: seg(first, last),
            path: format!("/s/{first}").into(),
            size: 1,
            commits: Default::default(),
        };
        let firsts = |v: Option<Vec<SpoolEntry>>| {
            v.map(|v| v.iter().map(|e| e.name.first_txid).collect::<Vec<_>>())
        };
        // Held up to 4; the spool has 3..=4 (held already), 5..=6 and 7..=9, twice.
        let left = vec![e(7, 9), e(3, 4), e(5, 6), e(7, 9)];
        assert_eq!(
            firsts(continuing(&listing, &g, 9, left.clone())),
            Some(vec![5, 7])
        );
        // Capture goes on after 12: 10..=12 are in no spool.
        assert_eq!(firsts(continuing(&listing, &g, 12, left.clone())), None);
        // A gap: 5..=6 is gone.
        assert_eq!(firsts(continuing(&listing, &g, 9, vec![e(7, 9)])), None);
        // Caught up, nothing to queue.
        assert_eq!(firsts(continuing(&listing, &g, 4, vec![])), Some(vec![]));
        // Another generation, or one without its snapshot, is not continued.
        assert_eq!(
            firsts(continuing(&listing, &GenerationId::new(2, 2), 4, vec![])),
            None
        );
        listing.remove(1);
        assert_eq!(firsts(continuing(&listing, &g, 4, vec![])), None);
    }
}
