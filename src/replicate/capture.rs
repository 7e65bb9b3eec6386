//! The capture loop of one database, on its own thread: holds the read lock, follows the
//! WAL (tracker), cuts segments into the spool, runs walship's own checkpoints behind a
//! brief write-lock barrier, steps aside for the application's blocking checkpoints, and
//! starts a new generation (with a snapshot) whenever continuity cannot be proven.
//! The algorithm and why it cannot lose a commit: docs/CAPTURE.md.

use super::journal::{Journal, WatchedUntil};
use super::snapshot::{Manifest, SnapshotJob, hostname};
use super::spool::Spool;
use super::state::{DbState, Job, now_ms};
use super::tracker::{ResetPolicy, Scan, Tracker, verify_position};
use super::watch::WalWatch;
use crate::error::Result;
use crate::format::snapshot::SnapshotMeta;
use crate::sqlite::db::{DbFiles, LiveDb};
use crate::sqlite::shm::{self, ShmHeader};
use crate::sqlite::wal::{WalHeader, WalPosition};
use crate::storage::layout::GenerationId;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the -shm locks are probed for a waiting application checkpoint. Wake-ups are
/// most of the sidecar's CPU under load; 50 ms keeps an app checkpoint's wait under 60 ms.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Least time between two WAL scans triggered by file events: bounds the scans' work under
/// load. Two probe intervals, so scans fall on probe wake-ups (each wake-up costs tens of
/// microseconds here: a 20 ms sampler cost a third more CPU). The probes between scans
/// sample the WAL-index, and a commit is stamped at the first sample or scan that saw it:
/// within about one probe interval of the commit (point-in-time restore's 100 ms).
const MIN_SCAN_GAP: Duration = Duration::from_millis(100);
/// Raw bytes of transactions per segment before one is cut regardless of age (at most a
/// quarter of `spool-limit`, so that a segment always fits an empty spool).
const SEGMENT_BUDGET: usize = 16 << 20;
/// Largest transaction kept as frames in memory and shipped as a segment (at most half of
/// `spool-limit`); a larger one ships as the snapshot of a new generation that continues
/// the old one exactly (`large_transaction`), so its size never becomes walship's memory.
const LARGE_TX_MAX: usize = 64 << 20;
/// After a scan woken by a WAL write, the WAL-index is looked at again this long after,
/// then at doubling gaps up to `FOLLOWUP_MAX_STEP`, for `FOLLOWUP_FOR`, while no further
/// write comes: SQLite updates the index only after the commit frame's write and its
/// fsync (which a busy disk can stretch to hundreds of milliseconds), so the scan right
/// after the write event can find nothing yet, and no event follows the index update.
/// Without these re-checks the last commit before a quiet spell waited for the periodic
/// scan (up to half the sync interval) and was stamped that late. Each re-check is a
/// header compare; under continuous writes the writes' own events drive the scans and no
/// re-check runs.
/// Least time between two watch stamps of the same state: a kill loses at most this much
/// of the quiet time a restore can reach exactly.
const WATCHED_EVERY_MS: u64 = 20;
const FOLLOWUP_FIRST: Duration = Duration::from_millis(3);
const FOLLOWUP_MAX_STEP: Duration = Duration::from_millis(25);
const FOLLOWUP_FOR: Duration = Duration::from_secs(1);
/// A blocking checkpoint must be seen this long, unchanged, before walship steps aside.
/// Short: stepping aside costs walship two read renewals and keeps its read lock.
const STEPOUT_CONFIRM: Duration = Duration::from_millis(4);
const STEPOUT_POLL: Duration = Duration::from_micros(250);
/// How long the hand-over waits for the checkpoint to backfill to walship's position:
/// longer than SQLite's longest busy-handler sleep (100 ms), so a checkpointer that has
/// waited long gets a retry in.
const HANDOVER_MAX: Duration = Duration::from_millis(250);
const STEPOUT_MAX: Duration = Duration::from_secs(5);
/// After stepping aside, how long before walship steps aside again (a checkpointer that
/// still waits is waiting for another reader, not for walship).
const STEPOUT_COOLDOWN: Duration = Duration::from_millis(20);
/// Most bytes of consumed transactions held in memory when stepping aside for an app
/// checkpoint while the spool is full; past it the generation ends instead.
const STEPOUT_MEMORY_MAX: usize = 64 << 20;
/// Renew the read mark after this many new WAL frames, so application checkpoints can
/// backfill behind it.
const REFRESH_FRAMES: u32 = 256;
/// The WAL may grow to this many times the checkpoint threshold before walship takes the
/// application's write lock to force a checkpoint through.
const BARRIER_FACTOR: u32 = 8;
/// PASSIVE checkpoints per attempt, each catching up with what writers appended during
/// the previous one (fsync-bound, so they shrink fast).
const CHECKPOINT_ROUNDS: usize = 4;
/// Longest walship waits for the application's write lock (it holds it far shorter).
const LOCK_WAIT: Duration = Duration::from_millis(100);
/// The WAL-size trigger for a snapshot never fires below this many segment bytes: a small,
/// hot database would otherwise be snapshotted every few seconds.
const SNAPSHOT_WAL_FLOOR: u64 = 64 << 20;

/// Where a generation left off, found in the spool or the replica at start-up.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    pub generation: GenerationId,
    pub txid: u64,
    pub pos: WalPosition,
    pub page_size: u32,
    pub db_pages: u32,
    pub last_commit_ms: u64,
    /// Until when the run that left this point saw nothing follow it (its watch stamp).
    pub watched_until_ms: Option<u64>,
}

pub struct CaptureSettings {
    pub sync_interval: Duration,
    pub spool_limit: u64,
    pub min_checkpoint_pages: u32,
    pub snapshot_interval: Option<Duration>,
    pub snapshot_wal_ratio: f64,
}

struct Run {
    generation: GenerationId,
    tracker: Tracker,
}

pub struct Capture {
    db: LiveDb,
    watch: WalWatch,
    state: Arc<DbState>,
    spool: Arc<Spool>,
    journal: Journal,
    settings: CaptureSettings,
    segment_budget: usize,
    tx_limit: usize,
    /// When the last segment was cut: the next is cut at once if that was a sync interval
    /// ago (leading edge), else when it is.
    last_cut: Option<Instant>,
    /// The last cut found no room in the spool (the replica is behind).
    cut_blocked: bool,
    /// The next WAL-index re-check after a write-woken scan, the gap before it, and until
    /// when re-checks go on.
    followup: Option<(Instant, Duration, Instant)>,
    /// Last time a journal append failure was logged.
    journal_warned: Option<Instant>,
    run: Option<Run>,
    /// The snapshot this generation started with, until the replica has it.
    snapshot: Option<Arc<SnapshotJob>>,
    /// Why the next generation starts, and which one it follows.
    next_reason: String,
    parent: Option<GenerationId>,
    history: Option<super::history::HistoryId>,
    /// The parent's last txid and until when nothing was seen to follow it, for the next
    /// generation's manifest (restore between the two is exact up to then).
    parent_watched: Option<(u64, u64)>,
    last_scan: Instant,
    /// The last scan a WAL write woke: `MIN_SCAN_GAP` counts from it, not from re-checks
    /// and periodic scans, so the first commit after a quiet spell is read at once.
    last_write_scan: Instant,
    last_identity_check: Instant,
    not_before: Instant,
    stepout_not_before: Instant,
    checkpoint_not_before: Instant,
    /// WAL frame at which the read mark was last renewed (roughly where it stands).
    mark_frame: u32,
    /// The fully backfilled WAL state walship last settled its read lock on.
    settled: Option<(u32, u32, u32)>,
    /// Since the last snapshot of this generation (or walship's start): when, its txid,
    /// and the segment bytes (compressed, as stored) queued after it.
    last_snapshot_at: Instant,
    snapshot_txid: u64,
    wal_since_snapshot: u64,
}

impl Capture {
    pub fn new(
        db: LiveDb,
        state: Arc<DbState>,
        spool: Arc<Spool>,
        journal: Journal,
        settings: CaptureSettings,
    ) -> Self {
        let now = Instant::now();
        let limit = usize::try_from(settings.spool_limit).unwrap_or(usize::MAX);
        Capture {
            watch: WalWatch::new(&db.wal_path()),
            db,
            state,
            spool,
            journal,
            segment_budget: SEGMENT_BUDGET.min(limit / 4).max(1),
            tx_limit: LARGE_TX_MAX.min(limit / 2).max(1),
            last_cut: None,
            cut_blocked: false,
            followup: None,
            journal_warned: None,
            settings,
            run: None,
            snapshot: None,
            next_reason: "first start".into(),
            parent: None,
            history: None,
            parent_watched: None,
            last_scan: now,
            last_write_scan: now,
            last_identity_check: now,
            not_before: now,
            stepout_not_before: now,
            checkpoint_not_before: now,
            mark_frame: 0,
            settled: None,
            last_snapshot_at: now,
            snapshot_txid: 0,
            wal_since_snapshot: 0,
        }
    }

    /// Run until `stop` is set, then queue what was consumed and release the database.
    pub fn run(mut self, stop: Arc<AtomicBool>, resume: Option<ResumePoint>) {
        if let Err(e) = self.start(resume) {
            self.report(&e);
        }
        let mut wal_dirty = true;
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Acquire) {
            // One wake-up per probe interval, or earlier when the WAL changes and a scan is
            // allowed; file events meanwhile stay merged in the kernel.
            // Also wake when the pending segment falls due, not at the next probe after.
            let probe_left = PROBE_INTERVAL
                .saturating_sub(last_tick.elapsed())
                .min(self.cut_due_in());
            let gap_left = self
                .scan_gap()
                .saturating_sub(self.last_write_scan.elapsed());
            let followup_left = self.followup_due_in();
            if !wal_dirty && followup_left < gap_left.min(probe_left) {
                // Until the re-check, woken early by a write: then the write's own event
                // drives the next scan and the re-check is moot.
                wal_dirty = self.watch.wait(followup_left);
                if wal_dirty {
                    self.followup = None;
                }
            } else if wal_dirty || !gap_left.is_zero() {
                // Until the next scan may run; then (if nothing is pending) on inotify.
                std::thread::sleep(gap_left.min(probe_left));
            } else {
                wal_dirty = self.watch.wait(probe_left.min(followup_left));
            }
            last_tick = Instant::now();
            if Instant::now() < self.not_before {
                continue;
            }
            if let Err(e) = self.tick(&mut wal_dirty) {
                self.report(&e);
                let _ = self.db.unlock_write();
                self.not_before = Instant::now() + Duration::from_secs(1);
            }
        }
        self.shutdown();
    }

    /// A sync interval shorter than the usual gap asks for faster scans (and pays for them).
    fn scan_gap(&self) -> Duration {
        MIN_SCAN_GAP.min(self.settings.sync_interval)
    }

    fn report(&self, e: &crate::Error) {
        tracing::error!(db = %self.state.label, "{e}");
        self.state.metrics.error(&self.state.label, e.kind_label());
    }

    fn start(&mut self, resume: Option<ResumePoint>) -> Result<()> {
        // Normally held since before start-up's first network call (replicate::run).
        if !self.db.is_reading() {
            self.db.begin_read()?;
        }
        if let Some(rp) = resume {
            let files = self.db.files();
            // Reset while walship was down, right after what it had shipped: the database
            // holds exactly that state and the new WAL continues it. The tracker starts at
            // the old position and steps over that one reset, as it does for a reset it
            // sees live (segments span resets).
            let found = continuity(&files, &rp).map_err(|e| self.io(e))?;
            let mut t = Tracker::new(
                rp.pos,
                rp.txid,
                rp.page_size,
                rp.db_pages,
                rp.last_commit_ms,
            );
            t.tx_limit = self.tx_limit;
            let how = match found {
                Continuity::Holds(hdr, index) => {
                    t.set_index(hdr, index);
                    Some("")
                }
                Continuity::ResetRightAfter => {
                    t.reset_policy = ResetPolicy::Once;
                    Some(": the WAL was reset right after its last transaction")
                }
                Continuity::No => None,
            };
            match how {
                Some(how) => {
                    tracing::info!(db = %self.state.label, generation = %rp.generation, txid = rp.txid,
                        "resuming generation{how}");
                    self.state.set_generation(&rp.generation);
                    self.snapshot_txid = rp.txid;
                    self.run = Some(Run {
                        generation: rp.generation,
                        tracker: t,
                    });
                    return Ok(());
                }
                None => {
                    self.next_reason = format!(
                        "the WAL no longer continues generation {} at txid {} (it was reset or \
                         replaced while walship was not running)",
                        rp.generation, rp.txid
                    );
                    self.parent_watched = rp.watched_until_ms.map(|ms| (rp.txid, ms));
                    self.parent = Some(rp.generation);
                }
            }
        }
        self.start_generation()
    }

    /// The history id the generations this run begins carry in their manifest.
    pub fn set_history(&mut self, id: super::history::HistoryId) {
        self.history = Some(id);
    }

    /// Begin a new history (`--force-new-history`): a generation with no parent.
    pub fn begin_new_history(&mut self, reason: String) {
        self.parent = None;
        self.parent_watched = None;
        self.next_reason = reason;
    }

    /// Begin a new generation after `parent` for `reason` instead of resuming it.
    pub fn begin_after(&mut self, parent: GenerationId, reason: String) {
        self.parent = Some(parent);
        self.next_reason = reason;
    }

    fn io(&self, e: std::io::Error) -> crate::Error {
        crate::Error::io(self.db.wal_path(), e)
    }

    fn tick(&mut self, wal_dirty: &mut bool) -> Result<()> {
        let abandoned = self.state.abandoned.lock().unwrap().clone();
        if abandoned.is_some() && abandoned.as_ref() == self.run.as_ref().map(|r| &r.generation) {
            self.lose("the replica could not take this generation's objects".into());
        }
        if !self.state.snapshot_active.load(Ordering::Acquire) {
            self.snapshot = None;
        }
        if self.run.is_some() && !self.db.is_reading() {
            // An error left walship without its read lock: nothing proves continuity now.
            self.lose("the read lock could not be retaken".into());
        }
        if self.run.is_none() {
            // Wait for a working replica: a snapshot holds the read lock until it lands.
            if self.state.failing_since_ms.load(Ordering::Relaxed) != 0 {
                return Ok(());
            }
            return self.start_generation();
        }
        if Instant::now() >= self.stepout_not_before
            && let Some(pid) = self
                .db
                .shm()
                .blocking_checkpointer()
                .map_err(|e| self.io(e))?
        {
            if !self.state.snapshot_active.load(Ordering::Acquire) {
                self.step_out(pid)?;
            } else if self.cancel_optional_snapshot("the application is checkpointing") {
                // Stepped aside at the next probe, once the uploader has dropped it.
            } else if self.state.failing_since_ms.load(Ordering::Relaxed) != 0 {
                // A snapshot that cannot upload must not hold the app's checkpoint
                // hostage for the whole outage: give up this generation for now.
                self.lose("the replica became unreachable during the first snapshot".into());
                return Ok(());
            }
        }
        let since = self.last_scan.elapsed();
        let followup_due = self.followup.is_some_and(|(at, ..)| Instant::now() >= at);
        if *wal_dirty && self.last_write_scan.elapsed() >= self.scan_gap() {
            *wal_dirty = false;
            self.last_write_scan = Instant::now();
            self.scan()?;
            self.start_followups();
        } else if since >= self.settings.sync_interval / 2 {
            self.scan()?;
        } else if *wal_dirty {
            // Woken by the probe while writes wait for the scan gap: a WAL-index sample
            // stamps the commits it shows (a header read on a wake-up already paid for).
            self.sample_index();
        } else if followup_due && !*wal_dirty {
            // No write since the last scan: only an index update that trailed its write
            // can be new. A header compare when there is none.
            let (_, step, until) = self.followup.take().expect("due");
            let before = self.tracker_pos();
            self.scan()?;
            let now = Instant::now();
            let step = (step * 2).min(FOLLOWUP_MAX_STEP);
            if self.tracker_pos() != before {
                self.start_followups();
            } else if now + step <= until {
                self.followup = Some((now + step, step, until));
            }
        }
        if self.last_identity_check.elapsed() >= Duration::from_secs(1) {
            self.last_identity_check = Instant::now();
            if self.db.replaced() {
                self.watch.rewatch();
                self.lose("the database or WAL file was replaced".into());
                return Ok(());
            }
        }
        self.cut_if_due()?;
        if self.state.failing_since_ms.load(Ordering::Relaxed) != 0 {
            self.cancel_optional_snapshot("the replica is unreachable");
        }
        self.snapshot_if_due()?;
        self.maintain_wal()?;
        self.checkpoint_if_due()
    }

    /// Cancel an in-flight snapshot taken within a generation (not one that starts a
    /// generation, which the generation needs). True if there was one.
    fn cancel_optional_snapshot(&mut self, why: &str) -> bool {
        match &self.snapshot {
            Some(job) if job.manifest.is_none() => {
                if !job.cancelled.swap(true, Ordering::AcqRel) {
                    tracing::info!(db = %self.state.label, txid = job.meta.txid,
                        "snapshot cancelled: {why}; a later one replaces it");
                }
                true
            }
            _ => false,
        }
    }

    /// Snapshots within a generation: every `snapshot_interval`, or once the segments queued
    /// since the last one (as stored) exceed the database size times `snapshot_wal_ratio`
    /// (at least `SNAPSHOT_WAL_FLOOR`), so a restore never downloads unbounded WAL. Never while idle:
    /// no new transaction, no snapshot.
    fn snapshot_if_due(&mut self) -> Result<()> {
        let Some(run) = self.run.as_ref() else {
            return Ok(());
        };
        if self.state.snapshot_active.load(Ordering::Acquire)
            || self.state.failing_since_ms.load(Ordering::Relaxed) != 0
        {
            return Ok(());
        }
        let t = &run.tracker;
        let Some(reason) = snapshot_due(
            self.wal_since_snapshot,
            t.db_pages as u64 * t.page_size as u64,
            &self.settings,
            self.last_snapshot_at.elapsed(),
        ) else {
            return Ok(());
        };
        if t.txid == self.snapshot_txid {
            self.last_snapshot_at = Instant::now();
            return Ok(());
        }
        // Renew the read mark after a complete scan, then scan to the end under the new
        // mark: the snapshot position is at or past the mark, so no checkpoint can copy a
        // page newer than the position into the database file while it is read.
        if !self.scan_to_end()? {
            return Ok(());
        }
        self.db.refresh_read()?;
        if !self.scan_to_end()? || !self.cut()? {
            return Ok(());
        }
        let files = self.db.files();
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        self.mark_frame = run.tracker.pos.frame;
        let t = &run.tracker;
        let meta = SnapshotMeta {
            page_size: t.page_size,
            page_count: t.db_pages,
            pages_per_chunk: SnapshotMeta::pages_per_chunk_for(t.page_size),
            txid: t.txid,
            commit_ms: t.last_commit_ms,
            position: t.pos,
        };
        let job = Arc::new(SnapshotJob {
            generation: run.generation.clone(),
            manifest: None,
            meta,
            files,
            index: t.page_index().clone(),
            wal: t.hdr,
            cancelled: Default::default(),
        });
        tracing::info!(db = %self.state.label, generation = %run.generation, txid = t.txid,
            pages = t.db_pages, wal_bytes = self.wal_since_snapshot,
            reason, "snapshot");
        self.last_snapshot_at = Instant::now();
        self.snapshot_txid = t.txid;
        self.wal_since_snapshot = 0;
        self.snapshot = Some(job.clone());
        self.state.snapshot_active.store(true, Ordering::Release);
        self.state.push(Job::Snapshot(job));
        Ok(())
    }

    /// Keep the WAL restarting without walship checkpointing: renew the read mark as the
    /// WAL grows, so the application's own checkpoints can backfill past it; and once the
    /// WAL is fully backfilled, settle the read lock on it (read slot 0) so that the
    /// application's next write restarts the WAL. Two cheap reads of the WAL-index per
    /// tick; the application's checkpoints never find walship holding the checkpoint lock.
    fn maintain_wal(&mut self) -> Result<()> {
        let Some(run) = self.run.as_ref() else {
            return Ok(());
        };
        if self.state.snapshot_active.load(Ordering::Acquire) {
            return Ok(());
        }
        let pos = run.tracker.pos;
        if pos.frame >= self.mark_frame.saturating_add(REFRESH_FRAMES)
            || pos.frame < self.mark_frame
        {
            if !self.scan_to_end()? {
                return Ok(());
            }
            self.db.refresh_read()?;
            self.mark_frame = self.tracker().pos.frame;
        }
        let Some(h) = self.db.shm().header().map_err(|e| self.io(e))? else {
            return Ok(());
        };
        let state = (h.salt1, h.salt2, h.mx_frame);
        if h.mx_frame > 0 && h.n_backfill == h.mx_frame && self.settled != Some(state) {
            if !self.scan_to_end()? {
                return Ok(());
            }
            self.settled = Some(state);
            if self.settle_on_backfilled_wal()? {
                self.mark_frame = 0;
            }
        }
        Ok(())
    }

    fn tracker(&mut self) -> &mut Tracker {
        &mut self.run.as_mut().expect("running").tracker
    }

    /// Consume new transactions; cut segments as the budget fills (while the spool has
    /// room: when it has none, transactions wait in the WAL, which walship's read lock keeps).
    fn scan(&mut self) -> Result<()> {
        self.last_scan = Instant::now();
        let at = now_ms();
        let mut shm = self.db.shm().header().map_err(|e| self.io(e))?;
        if self.nothing_new(shm) {
            self.mark_watched(at);
            return Ok(());
        }
        loop {
            let Some(run) = self.run.as_mut() else {
                return Ok(());
            };
            if (run.tracker.pending_bytes() >= self.segment_budget || run.tracker.large_ahead)
                && !self.cut()?
            {
                return Ok(());
            }
            match shm.take() {
                Some(h) => self.hint(Some(h)),
                None => self.set_read_hint()?,
            }
            let Some(scan) = self.tracker_scan(self.segment_budget)? else {
                return Ok(());
            };
            self.publish_oldest();
            match scan {
                Scan::Lost(reason) => {
                    self.lose(reason);
                    return Ok(());
                }
                Scan::Large { bytes } => {
                    self.large_transaction(bytes);
                    return Ok(());
                }
                Scan::Progress { more: true, .. } => continue,
                Scan::Progress { more: false, .. } => break,
            }
        }
        self.try_anchor()?;
        Ok(())
    }

    /// One tracker scan with the journal attached: the transactions it consumes are
    /// appended to the local journal before it returns. A journal that cannot be written
    /// (disk full) is an error in the log and metrics, not a reason to stop capturing.
    fn tracker_scan(&mut self, budget: usize) -> Result<Option<Scan>> {
        let wal = self.db.files();
        let Some(run) = self.run.as_mut() else {
            return Ok(None);
        };
        let journal = &mut self.journal;
        let generation = &run.generation;
        let mut failed = None;
        // The journal counts toward spool-limit: while the spool is full it takes only what
        // fits, and the rest waits in the WAL as before (docs/CAPTURE.md).
        let room = self.state.spool_room();
        let scan = run
            .tracker
            .scan_with(&wal.wal, now_ms(), budget, &mut |r| {
                if journal.size_with(r.encoded_len()) > room {
                    journal.skip();
                } else if let Err(e) = journal.append(generation, r) {
                    failed = Some(e);
                }
                Ok(())
            })
            .map_err(|e| crate::Error::io(self.db.wal_path(), e))?;
        if let Some(e) = failed
            && self
                .journal_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            self.journal_warned = Some(Instant::now());
            self.report(&crate::Error::io(self.journal.path(), e));
        }
        Ok(Some(scan))
    }

    fn start_followups(&mut self) {
        let now = Instant::now();
        self.followup = Some((now + FOLLOWUP_FIRST, FOLLOWUP_FIRST, now + FOLLOWUP_FOR));
    }

    /// Empty the journal (its transactions are spooled, or their generation ended),
    /// keeping spool and journal together within spool-limit.
    fn clear_journal(&mut self) {
        let room = self.state.spool_room();
        if let Err(e) = self.journal.clear(room) {
            // Harmless for correctness: start-up skips journaled txids the spool has.
            tracing::warn!(db = %self.state.label, "cannot empty the capture journal: {e}");
        }
    }

    fn tracker_pos(&self) -> Option<WalPosition> {
        self.run.as_ref().map(|r| r.tracker.pos)
    }

    /// Time until the next WAL-index re-check (rounded up to a millisecond, so the wait
    /// never spins), or the probe interval if none is scheduled.
    fn followup_due_in(&self) -> Duration {
        match self.followup {
            Some((at, ..)) => {
                let left = at.saturating_duration_since(Instant::now());
                Duration::from_millis(left.as_micros().div_ceil(1000) as u64)
            }
            None => PROBE_INTERVAL,
        }
    }

    /// A transaction larger than `tx_limit` was consumed without its frames: the
    /// transactions before it are cut, so the generation is complete up to it. Its state
    /// ships as the snapshot of a new generation taken at the position right after it,
    /// under the read lock held all along: nothing committed is skipped, and the new
    /// generation continues the old one exactly.
    fn large_transaction(&mut self, bytes: u64) {
        let Some(run) = self.run.as_ref() else {
            return;
        };
        let (old, old_txid) = (run.generation.clone(), run.tracker.txid);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let reason = format!(
            "a transaction of {:.1} MiB is larger than the {:.1} MiB a segment may hold \
             (half of spool-limit, at most 64 MiB): the state after it ships as this \
             generation's snapshot, continuing generation {old} after txid {old_txid}",
            mib(bytes),
            mib(self.tx_limit as u64),
        );
        tracing::warn!(db = %self.state.label, generation = %old, tx_bytes = bytes,
            "large transaction: {reason}; raise spool-limit to ship transactions this size \
             as segments");
        self.state
            .metrics
            .error(&self.state.label, "large_transaction");
        self.parent = Some(old);
        self.next_reason = reason;
        let now = now_ms();
        let run = self.run.as_mut().expect("checked");
        run.generation = GenerationId::new(now, random_u32());
        let commit_ms = run.tracker.last_commit_ms;
        self.queue_first_snapshot(Some(old_txid), commit_ms);
    }

    /// The WAL-index says the WAL holds nothing past the position (no read needed).
    fn nothing_new(&self, h: Option<ShmHeader>) -> bool {
        let Some(run) = self.run.as_ref() else {
            return true;
        };
        let pos = run.tracker.pos;
        h.is_some_and(|h| {
            !pos.is_empty_wal()
                && (h.salt1, h.salt2, h.mx_frame) == (pos.salt1, pos.salt2, pos.frame)
        })
    }

    /// The WAL-index showed nothing past the tracker at `at`: stamp it (every
    /// `WATCHED_EVERY`), once the files are proven the database's still, so that a stamp
    /// never outlives a replacement that the once-a-second identity check has yet to see.
    fn mark_watched(&mut self, at: u64) {
        let Some(run) = self.run.as_ref() else {
            return;
        };
        let (g, txid) = (&run.generation, run.tracker.txid);
        if !self.journal.watched.due(g, txid, at, WATCHED_EVERY_MS) || self.db.replaced() {
            return;
        }
        let w = WatchedUntil {
            generation: g.clone(),
            txid,
            ms: at,
        };
        if let Err(e) = self.journal.watched.write(w) {
            tracing::debug!(db = %self.state.label, "cannot write the watch stamp: {e}");
        }
    }

    /// Between scans, with writes pending: how far the WAL-index says commits reach, and
    /// when (read after the header, so never before those commits were visible).
    fn sample_index(&mut self) {
        let Ok(Some(h)) = self.db.shm().header() else {
            return;
        };
        let ms = now_ms();
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let t = &mut run.tracker;
        let key = (h.salt1, h.salt2, h.mx_frame);
        let ahead = (key.0, key.1) != (t.pos.salt1, t.pos.salt2) || key.2 > t.pos.frame;
        if ahead && t.seen.len() < 64 && t.seen.last().is_none_or(|s| (s.0, s.1, s.2) != key) {
            t.seen.push((key.0, key.1, key.2, ms));
        }
    }

    /// Tell the tracker where the committed frames end, per the WAL-index.
    fn set_read_hint(&mut self) -> Result<()> {
        let h = self.db.shm().header().map_err(|e| self.io(e))?;
        self.hint(h);
        Ok(())
    }

    fn hint(&mut self, h: Option<ShmHeader>) {
        if let Some(run) = self.run.as_mut() {
            run.tracker.read_hint = h.map(|h| (h.salt1, h.salt2, h.mx_frame));
        }
    }

    fn publish_oldest(&self) {
        let oldest = self
            .run
            .as_ref()
            .and_then(|r| r.tracker.oldest_pending_ms())
            .unwrap_or(0);
        self.state
            .oldest_unqueued_ms
            .store(oldest, Ordering::Relaxed);
    }

    /// After a complete scan, with the read lock held since before it: if the WAL-index
    /// still names the WAL the position is in, every frame committed before the scan was
    /// consumed, and any reset from now on starts exactly at the position (frames
    /// committed later could only be reset away after a backfill, which the read lock
    /// blocks). So every later reset is safe: policy `Any`. docs/CAPTURE.md has the proof.
    fn try_anchor(&mut self) -> Result<bool> {
        let Some(run) = self.run.as_mut() else {
            return Ok(false);
        };
        if run.tracker.reset_policy == ResetPolicy::Any {
            return Ok(true);
        }
        let pos = run.tracker.pos;
        let ok = pos.is_empty_wal()
            || self
                .db
                .shm()
                .header()
                .map_err(|e| crate::Error::io(self.db.wal_path(), e))?
                .is_some_and(|h| (h.salt1, h.salt2) == (pos.salt1, pos.salt2));
        if ok {
            run.tracker.reset_policy = ResetPolicy::Any;
        }
        Ok(ok)
    }

    /// Run `f` holding SQLite's write lock (no writer can append meanwhile); the lock is
    /// released whatever `f` returns. `None` when the lock was not free within `wait`.
    fn with_write_lock<T>(
        &mut self,
        wait: Duration,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        if !self.db.try_lock_write(wait)? {
            return Ok(None);
        }
        let r = f(self);
        let unlocked = self.db.unlock_write();
        let v = r?;
        unlocked?;
        Ok(Some(v))
    }

    /// Scan with no budget. False if continuity was lost.
    fn scan_to_end(&mut self) -> Result<bool> {
        self.scan_within(usize::MAX).map(|end| end == Some(true))
    }

    /// Scan until the end of the WAL or until `budget` bytes are pending: `Some(true)` at
    /// the end, `Some(false)` when the budget stopped it, `None` if continuity was lost.
    fn scan_within(&mut self, budget: usize) -> Result<Option<bool>> {
        self.set_read_hint()?;
        let Some(scan) = self.tracker_scan(budget)? else {
            return Ok(None);
        };
        match scan {
            Scan::Lost(reason) => {
                self.lose(reason);
                Ok(None)
            }
            Scan::Large { bytes } => {
                // The old generation ended at the transaction before it; callers stop as
                // they do for a lost one, and the next scan goes on in the new generation.
                self.large_transaction(bytes);
                Ok(None)
            }
            Scan::Progress { more, .. } => {
                self.publish_oldest();
                if !more {
                    self.try_anchor()?;
                }
                Ok(Some(!more))
            }
        }
    }

    /// Queue the pending transactions as a segment. False when the spool is full.
    fn cut(&mut self) -> Result<bool> {
        let Some(run) = self.run.as_mut() else {
            return Ok(true);
        };
        if !run.tracker.has_pending() {
            return Ok(true);
        }
        let (meta, bytes) = run.tracker.encode_pending().expect("has pending");
        // Until the segment is durable the journal holds the same transactions: both must
        // fit in spool-limit at once (a stale tail beyond the journal's records can go).
        let z = bytes.len() as u64;
        if !self.state.spool_has_room(z + self.journal.file_len) {
            let _ = self.journal.trim();
            if !self.state.spool_has_room(z + self.journal.file_len) {
                self.cut_blocked = true;
                return Ok(false);
            }
        }
        self.cut_blocked = false;
        let mut entry = self.spool.write(&run.generation, &meta, &bytes)?;
        entry.commits = run.tracker.pending_commit_times().into();
        run.tracker.clear_pending();
        self.last_cut = Some(Instant::now());
        self.clear_journal();
        // Counted as stored: what a restore downloads is what its work scales with.
        self.wal_since_snapshot += bytes.len() as u64;
        self.state.push(Job::Segment(entry));
        self.publish_oldest();
        Ok(true)
    }

    /// Time until pending transactions fall due (a sync interval after the last cut, a
    /// little after so that they are due when walship wakes), or the probe interval if
    /// none are pending.
    fn cut_due_in(&self) -> Duration {
        let pending = self.run.as_ref().is_some_and(|r| r.tracker.has_pending());
        let left = match self.last_cut {
            None => Duration::ZERO,
            Some(t) => self.settings.sync_interval.saturating_sub(t.elapsed()),
        };
        match (pending, left.is_zero()) {
            (false, _) => PROBE_INTERVAL,
            // Due now; if the spool had no room, retry at the probe rate, not in a spin.
            (true, true) if self.cut_blocked => PROBE_INTERVAL,
            (true, true) => Duration::ZERO,
            (true, false) => left + Duration::from_millis(1),
        }
    }

    /// Leading edge: a commit after a quiet sync interval is cut (and uploaded) at once;
    /// under continuous writes at most one segment per sync interval (or per segment
    /// budget of frames).
    fn cut_if_due(&mut self) -> Result<()> {
        let due = self.run.as_ref().is_some_and(|r| {
            r.tracker.has_pending()
                && (self
                    .last_cut
                    .is_none_or(|t| t.elapsed() >= self.settings.sync_interval)
                    || r.tracker.pending_bytes() >= self.segment_budget)
        });
        if due {
            self.cut()?;
        }
        Ok(())
    }

    /// walship's own checkpoint (invariant 4), normally without the application's write
    /// lock: renew the read mark at the WAL's end (two readers, no gap), backfill with a
    /// PASSIVE checkpoint (repeated while writers append during it), and renew the read
    /// once the WAL is fully backfilled: it then sits on read slot 0, so the next writer
    /// restarts the WAL, from a position walship has read to its end (proof: `try_anchor`).
    /// Under sustained writes this may not converge; past `BARRIER_FACTOR` times the
    /// threshold walship falls back to a brief write-lock barrier. The barrier is the last
    /// resort because an app transaction that upgrades from read to write gets SQLITE_BUSY
    /// at once, without its busy_timeout, while any other connection holds that lock.
    fn checkpoint_if_due(&mut self) -> Result<()> {
        let Some(run) = self.run.as_ref() else {
            return Ok(());
        };
        let frames = run.tracker.pos.frame;
        // Past the threshold the application is not checkpointing (or cannot get past
        // walship's read mark): walship does it.
        if frames < self.settings.min_checkpoint_pages.saturating_mul(2)
            || Instant::now() < self.checkpoint_not_before
            || self.state.snapshot_active.load(Ordering::Acquire)
        {
            return Ok(());
        }
        self.checkpoint_not_before = Instant::now() + Duration::from_millis(500);
        // Frames a checkpoint lets SQLite reset away are held in memory until queued at
        // the next sync; while the spool is full (replica down) the WAL, kept by the read
        // lock, stays the buffer instead.
        let pending = self.tracker().pending_bytes() as u64;
        if !self.state.spool_has_room(pending) || !self.scan_to_end()? {
            return Ok(());
        }
        // Every read-lock renewal follows a complete scan made under the lock it replaces:
        // that is what keeps `try_anchor`'s proof valid across renewals.
        let mut restarted = false;
        for _ in 0..CHECKPOINT_ROUNDS {
            self.db.refresh_read()?;
            if !self.scan_to_end()? {
                return Ok(());
            }
            self.db.checkpoint_passive()?;
            if !self.scan_to_end()? {
                return Ok(());
            }
            if self.settle_on_backfilled_wal()? {
                restarted = true;
                break;
            }
        }
        if !self.scan_to_end()? {
            return Ok(());
        }
        let kind = if restarted {
            "walship"
        } else if frames
            >= self
                .settings
                .min_checkpoint_pages
                .saturating_mul(BARRIER_FACTOR)
        {
            self.checkpoint_barrier()?;
            "walship_barrier"
        } else {
            return Ok(()); // writers kept appending; try again shortly
        };
        self.state
            .metrics
            .checkpoints
            .get_or_create(&crate::metrics::KindLabel {
                db: self.state.label.clone(),
                kind: kind.into(),
            })
            .inc();
        tracing::debug!(db = %self.state.label, kind, frames, "checkpoint");
        Ok(())
    }

    /// If the WAL is fully backfilled and walship has read it to its end, renew the read
    /// lock so that it sits on the backfilled WAL (read slot 0), which lets the next writer
    /// restart the WAL. True when the WAL-index proves it did: unchanged, fully backfilled
    /// and ending at walship's position, before and after.
    fn settle_on_backfilled_wal(&mut self) -> Result<bool> {
        let shm_err = |c: &Self, e| crate::Error::io(c.db.wal_path(), e);
        let Some(before) = self.db.shm().header().map_err(|e| shm_err(self, e))? else {
            return Ok(false);
        };
        let pos = self.tracker().pos;
        if before.n_backfill != before.mx_frame
            || before.mx_frame != pos.frame
            || (before.salt1, before.salt2) != (pos.salt1, pos.salt2)
        {
            return Ok(false);
        }
        self.db.refresh_read()?;
        let after = self.db.shm().header().map_err(|e| shm_err(self, e))?;
        Ok(after.is_some_and(|a| {
            (a.salt1, a.salt2, a.mx_frame, a.n_backfill)
                == (
                    before.salt1,
                    before.salt2,
                    before.mx_frame,
                    before.n_backfill,
                )
        }))
    }

    /// The fallback: hold the write lock for one short scan and a PASSIVE checkpoint of
    /// what is left, and retake the read mark before any writer can append.
    fn checkpoint_barrier(&mut self) -> Result<()> {
        self.with_write_lock(LOCK_WAIT, |c| {
            if !c.scan_to_end()? {
                return Ok(());
            }
            c.db.end_read()?;
            let ck = c.db.checkpoint_passive();
            if let Err(e) = c.db.begin_read() {
                c.lose(format!(
                    "could not retake the read lock after a checkpoint: {e}"
                ));
                return Ok(());
            }
            c.tracker().reset_policy = ResetPolicy::Any;
            ck.map(drop)
        })
        .map(drop)
    }

    /// An application checkpoint (FULL/RESTART/TRUNCATE) holds the checkpoint and writer
    /// locks and waits for walship's read lock. The WAL cannot grow meanwhile: consume it
    /// to its end, then hand the read lock over rather than drop it (`hand_over`), so that
    /// no instant passes without one; only if that does not let the checkpoint through
    /// does walship drop its lock and watch (`release_and_watch`).
    fn step_out(&mut self, pid: i32) -> Result<()> {
        if self.run.is_none() {
            return Ok(());
        }
        let shm = self.db.shm();
        let Some(h0) = shm.header().map_err(|e| self.io(e))? else {
            return Ok(());
        };
        let confirm_until = Instant::now() + STEPOUT_CONFIRM;
        while Instant::now() < confirm_until {
            std::thread::sleep(Duration::from_millis(2));
            let shm = self.db.shm();
            let h = shm.header().map_err(|e| self.io(e))?;
            if shm.blocking_checkpointer().map_err(|e| self.io(e))? != Some(pid)
                || h.map(|h| (h.mx_frame, h.salt1, h.salt2))
                    != Some((h0.mx_frame, h0.salt1, h0.salt2))
            {
                return Ok(()); // a writer, not a waiting checkpointer
            }
        }
        let reached_end = match self.scan_within(STEPOUT_MEMORY_MAX)? {
            None => return Ok(()),
            Some(end) => end,
        };
        if !reached_end && !self.cut()? {
            // The replica has been unreachable long enough to fill the spool: let the app
            // checkpoint, and start over with a snapshot once the replica is back.
            self.lose("the local spool is full while the replica is unreachable".into());
            return Ok(());
        }
        if !reached_end && !self.scan_to_end()? {
            return Ok(());
        }
        let pos = self.tracker().pos;
        if pos.frame != h0.mx_frame || (pos.salt1, pos.salt2) != (h0.salt1, h0.salt2) {
            // The WAL file and the index disagree: do not guess; the app's checkpoint waits.
            self.stepout_not_before = Instant::now() + STEPOUT_COOLDOWN;
            return Ok(());
        }
        let how = if self.hand_over(pid, pos)? {
            "hand-over"
        } else {
            self.release_and_watch(pid, pos)?;
            "release"
        };
        self.stepout_not_before = Instant::now() + STEPOUT_COOLDOWN;
        self.state
            .metrics
            .checkpoints
            .get_or_create(&crate::metrics::KindLabel {
                db: self.state.label.clone(),
                kind: "app_stepout".into(),
            })
            .inc();
        tracing::debug!(db = %self.state.label, pid, how, "stepped aside for an application checkpoint");
        Ok(())
    }

    /// Let a waiting checkpoint through without an instant of no read lock: a read begun
    /// on the frozen WAL marks its end, so the checkpoint can backfill all of it; once it
    /// has (nBackfill = mxFrame), a read begun then sits on slot 0, which lets the
    /// checkpoint reset the WAL, at the position, but blocks every later backfill and so
    /// every later reset until walship has read the new WAL. Each renewal follows a
    /// complete scan under the lock it replaces, so policy `Any` stays valid. False when
    /// the backfill did not reach the position in time (another reader holds it back, or
    /// no read slot could mark the WAL's end).
    fn hand_over(&mut self, pid: i32, pos: WalPosition) -> Result<bool> {
        self.db.refresh_read()?;
        let until = Instant::now() + HANDOVER_MAX;
        while Instant::now() < until {
            std::thread::sleep(STEPOUT_POLL);
            let shm = self.db.shm();
            let h = shm.header().map_err(|e| self.io(e))?;
            if shm
                .exclusive_holder(shm::CKPT_LOCK)
                .map_err(|e| self.io(e))?
                != Some(pid)
            {
                return Ok(true); // done (a FULL checkpoint needs no reset)
            }
            let Some(h) = h else { continue };
            if (h.salt1, h.salt2, h.mx_frame) != (pos.salt1, pos.salt2, pos.frame) {
                // Reset (walship's read was already on slot 0) or written after the
                // checkpoint: it is past walship either way.
                return Ok(true);
            }
            if h.n_backfill == h.mx_frame {
                // `settle_on_backfilled_wal` re-checks this under its renewal and scans
                // nothing new: the writer lock is the checkpointer's.
                if !self.scan_to_end()? {
                    return Ok(true); // continuity lost: a new generation follows
                }
                if self.settle_on_backfilled_wal()? {
                    self.settled = Some((h.salt1, h.salt2, h.mx_frame));
                    self.mark_frame = 0;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The fallback: release the read lock, watch the WAL-index until the checkpoint has
    /// released its lock, and retake the read lock at once, accepting one WAL reset only if
    /// nothing was appended to the old WAL while walship was out.
    fn release_and_watch(&mut self, pid: i32, pos: WalPosition) -> Result<()> {
        self.db.end_read()?;
        let mut appended = false;
        let out_until = Instant::now() + STEPOUT_MAX;
        while Instant::now() < out_until {
            std::thread::sleep(STEPOUT_POLL);
            let shm = self.db.shm();
            if let Some(h) = shm.header().map_err(|e| self.io(e))? {
                if (h.salt1, h.salt2) == (pos.salt1, pos.salt2) {
                    appended |= h.mx_frame != pos.frame;
                } else {
                    break; // reset done
                }
            }
            if shm
                .exclusive_holder(shm::CKPT_LOCK)
                .map_err(|e| self.io(e))?
                != Some(pid)
            {
                break;
            }
        }
        // Back in at once: every moment out lets the app reset the WAL again. The first
        // scan accepts one reset only if the watch saw nothing appended to the old WAL.
        self.db.begin_read()?;
        self.tracker().reset_policy = if appended {
            ResetPolicy::Forbidden
        } else {
            ResetPolicy::Once
        };
        self.scan_to_end()?;
        Ok(())
    }

    /// Continuity cannot be proven: queue what was consumed (valid history), drop the read
    /// lock, and start a new generation as soon as the replica is reachable.
    fn lose(&mut self, reason: String) {
        match self.cut() {
            Ok(_) => {}
            // What the journal holds stays there for the next start-up.
            Err(e) => self.report(&e),
        }
        if let Some(run) = self.run.take() {
            if run.tracker.has_pending() {
                // The spool is full (the replica is down): within its limit there is no
                // room for them. Their state is in the next generation's snapshot.
                tracing::warn!(db = %self.state.label, generation = %run.generation,
                    first_txid = run.tracker.txid + 1 - run.tracker.pending_commit_times().len() as u64,
                    last_txid = run.tracker.txid,
                    "spool full: the last transactions of the generation are not in its \
                     segments; the next generation's snapshot holds their state");
            }
            tracing::warn!(db = %self.state.label, generation = %run.generation,
                "starting a new generation: {reason}");
            self.parent_watched = self
                .journal
                .watched
                .last()
                .filter(|w| w.generation == run.generation)
                .map(|w| (w.txid, w.ms));
            self.parent = Some(run.generation);
        }
        if let Some(job) = self.snapshot.take() {
            // Its pages are only consistent under the read lock released below.
            job.cancelled.store(true, Ordering::Release);
        }
        self.state.oldest_unqueued_ms.store(0, Ordering::Relaxed);
        self.next_reason = reason;
        let _ = self.db.end_read();
    }

    /// Begin a generation: take the read lock, skip to the end of the WAL, and queue a
    /// snapshot of exactly that state.
    fn start_generation(&mut self) -> Result<()> {
        self.db.end_read()?;
        self.db.begin_read()?;
        let files = self.db.files();
        let hdr = Tracker::read_header(&files.wal).map_err(|e| self.io(e))?;
        let (db_page_size, db_pages) = read_db_header(&files.db).map_err(|e| self.io(e))?;
        let page_size = hdr.map(|h| h.page_size).or(db_page_size).unwrap_or(4096);
        let pos = match &hdr {
            Some(h) => WalPosition::start_of(h, 0),
            None => WalPosition::empty_wal(0),
        };
        let mut t = Tracker::new(pos, 0, page_size, db_pages, now_ms());
        t.collect = false;
        t.tx_limit = self.tx_limit;
        if let Some(h) = hdr {
            t.set_index(h, Default::default());
        }
        let generation = GenerationId::new(now_ms(), random_u32());
        let parent = self.parent.clone();
        self.run = Some(Run {
            generation: generation.clone(),
            tracker: t,
        });
        self.scan_to_end()?;
        if !self
            .run
            .as_ref()
            .is_some_and(|r| r.tracker.reset_policy == ResetPolicy::Any)
        {
            // The WAL changed under the first scan: nothing was announced; retry.
            self.run = None;
            self.parent = parent;
            self.not_before = Instant::now() + Duration::from_millis(200);
            return Ok(());
        }
        self.queue_first_snapshot(None, now_ms());
        Ok(())
    }

    /// Queue the snapshot a generation begins with: the database as of the tracker's
    /// position, which the read lock keeps stable until the replica has it. `continues`
    /// names the parent's last txid when nothing lies between it and this snapshot but
    /// one transaction too large for a segment.
    fn queue_first_snapshot(&mut self, continues: Option<u64>, commit_ms: u64) {
        let files = self.db.files();
        let run = self.run.as_mut().expect("a run to snapshot");
        let generation = run.generation.clone();
        let t = &mut run.tracker;
        let now = now_ms();
        let meta = SnapshotMeta {
            page_size: t.page_size,
            page_count: t.db_pages,
            pages_per_chunk: SnapshotMeta::pages_per_chunk_for(t.page_size),
            txid: 0,
            commit_ms,
            position: t.pos,
        };
        let job = SnapshotJob {
            generation: generation.clone(),
            manifest: Some(Manifest {
                format: 1,
                engine: "sqlite".into(),
                page_size: t.page_size,
                created: crate::clock::rfc3339(now),
                created_ms: now,
                host: hostname(),
                database: self.state.label.clone(),
                parent: self.parent.as_ref().map(|g| g.to_string()),
                reason: self.next_reason.clone(),
                continues_parent_at: continues,
                parent_unchanged: match continues {
                    Some(_) => None,
                    None => self.parent_watched.take().map(|(txid, until_ms)| {
                        crate::format::manifest::Unchanged { txid, until_ms }
                    }),
                },
                history: self.history.as_ref().map(|h| h.to_string()),
            }),
            meta,
            files,
            index: t.page_index().clone(),
            wal: t.hdr,
            cancelled: Default::default(),
        };
        t.start_collecting(0);
        t.last_commit_ms = commit_ms;
        self.clear_journal();
        self.last_snapshot_at = Instant::now();
        self.snapshot_txid = 0;
        self.wal_since_snapshot = 0;
        tracing::info!(db = %self.state.label, generation = %generation, pages = meta.page_count,
            reason = %self.next_reason, "new generation");
        let job = Arc::new(job);
        self.snapshot = Some(job.clone());
        self.state.snapshot_active.store(true, Ordering::Release);
        self.state.push(Job::Snapshot(job));
        self.state.set_generation(&generation);
    }

    fn shutdown(mut self) {
        if self.run.is_none() && self.state.failing_since_ms.load(Ordering::Relaxed) == 0 {
            // Nothing is being captured (continuity was lost): a snapshot now still ships
            // everything committed, if the replica takes it before the deadline.
            if let Err(e) = self.start_generation() {
                self.report(&e);
            }
        }
        if self.run.is_none() {
            tracing::error!(db = %self.state.label,
                "no generation is active: what was committed since the last one is not in the replica");
            self.state.incomplete.store(true, Ordering::Release);
        }
        if self.run.is_some() {
            // Whatever is queued and the deadline leaves unsent is counted and reported
            // by the caller; what finds no room in the spool stays in the WAL (and the
            // journal) for the next run, and the exit says so.
            match self.scan_to_end().and_then(|_| self.cut()) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(db = %self.state.label,
                        "spool full at shutdown: the newest transactions stay in the WAL");
                    self.state.incomplete.store(true, Ordering::Release);
                }
                Err(e) => {
                    self.report(&e);
                    self.state.incomplete.store(true, Ordering::Release);
                }
            }
        }
        let _ = self.db.unlock_write();
        let _ = self.db.end_read();
        self.state.oldest_unqueued_ms.store(0, Ordering::Relaxed);
        self.state.capture_done.store(true, Ordering::Release);
        self.state.wake_uploader.notify_one();
    }
}

/// Page size and page count from the database header (count 0 when unknown).
/// How the WAL on disk relates to a resume point.
pub enum Continuity {
    /// It still holds the history up to the point (with its frames' page index).
    Holds(WalHeader, HashMap<u32, u32>),
    /// It was reset once, right after the point (`tracker::reset_right_after`).
    ResetRightAfter,
    /// Neither: the generation cannot go on from this WAL.
    No,
}

pub fn continuity(files: &DbFiles, rp: &ResumePoint) -> std::io::Result<Continuity> {
    let Some(hdr) = Tracker::read_header(&files.wal)? else {
        return Ok(Continuity::No);
    };
    if let Some(index) = verify_position(&files.wal, &hdr, &rp.pos)? {
        return Ok(Continuity::Holds(hdr, index));
    }
    Ok(
        match super::tracker::reset_right_after(&files.wal, &hdr, &rp.pos, rp.page_size)? {
            true => Continuity::ResetRightAfter,
            false => Continuity::No,
        },
    )
}

fn read_db_header(db: &std::fs::File) -> std::io::Result<(Option<u32>, u32)> {
    let mut h = [0u8; 100];
    let len = db.metadata()?.len();
    if len < 100 {
        return Ok((None, 0));
    }
    db.read_exact_at(&mut h, 0)?;
    let raw = u16::from_be_bytes([h[16], h[17]]) as u32;
    let ps = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() {
        return Ok((None, 0));
    }
    let be = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap());
    // The in-header size is valid when "version-valid-for" matches the change counter.
    let count = if be(92) == be(24) && be(28) > 0 {
        be(28)
    } else {
        (len / ps as u64) as u32
    };
    Ok((Some(ps), count))
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(t.map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// Why a snapshot is due within a generation, if it is: `wal` segment bytes queued since
/// the last snapshot, a database of `db_bytes`, `elapsed` since the last snapshot.
fn snapshot_due(
    wal: u64,
    db_bytes: u64,
    s: &CaptureSettings,
    elapsed: Duration,
) -> Option<&'static str> {
    let limit = (s.snapshot_wal_ratio * db_bytes as f64).max(SNAPSHOT_WAL_FLOOR as f64);
    if s.snapshot_wal_ratio > 0.0 && wal as f64 >= limit {
        Some("the WAL since the last snapshot outgrew the database")
    } else if s.snapshot_interval.is_some_and(|i| elapsed >= i) {
        Some("snapshot-interval")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_triggers() {
        let s = |interval: Option<u64>, ratio: f64| CaptureSettings {
            sync_interval: Duration::from_secs(1),
            spool_limit: 256 << 20,
            min_checkpoint_pages: 1000,
            snapshot_interval: interval.map(Duration::from_secs),
            snapshot_wal_ratio: ratio,
        };
        let gb = 1 << 30;
        let hour = Duration::from_secs(3600);
        // WAL beyond the database size (1 GB db): due; below it: not.
        assert!(snapshot_due(gb + 1, gb, &s(None, 1.0), hour).is_some());
        assert_eq!(snapshot_due(gb - 1, gb, &s(None, 1.0), hour), None);
        assert!(snapshot_due(gb / 2 + 1, gb, &s(None, 0.5), hour).is_some());
        // A small database: the floor applies.
        assert_eq!(snapshot_due(10 << 20, 1 << 20, &s(None, 1.0), hour), None);
        assert!(snapshot_due(SNAPSHOT_WAL_FLOOR, 1 << 20, &s(None, 1.0), hour).is_some());
        // Ratio 0 turns the WAL trigger off; the interval still applies.
        assert_eq!(snapshot_due(u64::MAX / 2, gb, &s(None, 0.0), hour), None);
        assert_eq!(snapshot_due(0, gb, &s(Some(7200), 1.0), hour), None);
        assert_eq!(
            snapshot_due(0, gb, &s(Some(3600), 1.0), hour),
            Some("snapshot-interval")
        );
    }
}
