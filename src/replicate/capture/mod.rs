//! The capture loop of one database, on its own thread: holds the read lock, follows the
//! WAL (tracker), cuts segments into the spool, runs walship's own checkpoints behind a
//! brief write-lock barrier, steps aside for the application's blocking checkpoints, and
//! starts a new generation (with a snapshot) whenever continuity cannot be proven.
//! The algorithm and why it cannot lose a commit: docs/CAPTURE.md.

mod checkpoint;
mod generations;
mod scan;
mod stepout;

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
/// The WAL may grow to this many times the checkpoint threshold (64,000 frames by default,
/// about 250 MB of 4 KiB pages) before walship takes the application's write lock to force
/// a checkpoint through: a last resort, for the reason below.
const BARRIER_FACTOR: u32 = 64;
/// The barrier holds the application's write lock, and an application transaction that
/// upgrades from a read gets SQLITE_BUSY at once while it is held: at most one barrier per
/// this interval, and only when what is left to backfill under it is small.
const BARRIER_EVERY: Duration = Duration::from_secs(10);
const BARRIER_MAX_FRAMES: u32 = 1024;
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
    timers: Timers,
    cursors: Cursors,
}

/// When capture last did, or may next do, each of its timed steps.
struct Timers {
    /// When the last segment was cut: the next is cut at once if that was a sync interval
    /// ago (leading edge), else when it is.
    last_cut: Option<Instant>,
    /// The next WAL-index re-check after a write-woken scan, the gap before it, and until
    /// when re-checks go on.
    followup: Option<(Instant, Duration, Instant)>,
    /// Last time a journal append failure was logged.
    journal_warned: Option<Instant>,
    last_scan: Instant,
    /// The last scan a WAL write woke: `MIN_SCAN_GAP` counts from it, not from re-checks
    /// and periodic scans, so the first commit after a quiet spell is read at once.
    last_write_scan: Instant,
    last_identity_check: Instant,
    not_before: Instant,
    stepout_not_before: Instant,
    checkpoint_not_before: Instant,
    barrier_not_before: Instant,
}

/// Where capture stands between scans: the read mark, the spool, and the WAL since the
/// last snapshot.
struct Cursors {
    /// The last cut found no room in the spool (the replica is behind).
    cut_blocked: bool,
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
            settings,
            run: None,
            snapshot: None,
            next_reason: "first start".into(),
            parent: None,
            history: None,
            parent_watched: None,
            timers: Timers {
                last_cut: None,
                followup: None,
                journal_warned: None,
                last_scan: now,
                last_write_scan: now,
                last_identity_check: now,
                not_before: now,
                stepout_not_before: now,
                checkpoint_not_before: now,
                barrier_not_before: now,
            },
            cursors: Cursors {
                cut_blocked: false,
                mark_frame: 0,
                settled: None,
                last_snapshot_at: now,
                snapshot_txid: 0,
                wal_since_snapshot: 0,
            },
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
                .saturating_sub(self.timers.last_write_scan.elapsed());
            let followup_left = self.followup_due_in();
            if !wal_dirty && followup_left < gap_left.min(probe_left) {
                // Until the re-check, woken early by a write: then the write's own event
                // drives the next scan and the re-check is moot.
                wal_dirty = self.watch.wait(followup_left);
                if wal_dirty {
                    self.timers.followup = None;
                }
            } else if wal_dirty || !gap_left.is_zero() {
                // Until the next scan may run; then (if nothing is pending) on inotify.
                std::thread::sleep(gap_left.min(probe_left));
            } else {
                wal_dirty = self.watch.wait(probe_left.min(followup_left));
            }
            last_tick = Instant::now();
            if Instant::now() < self.timers.not_before {
                continue;
            }
            if let Err(e) = self.tick(&mut wal_dirty) {
                self.report(&e);
                let _ = self.db.unlock_write();
                self.timers.not_before = Instant::now() + Duration::from_secs(1);
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
                    self.cursors.snapshot_txid = rp.txid;
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
        if !self.state.snapshot_busy() {
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
        if Instant::now() >= self.timers.stepout_not_before
            && let Some(pid) = self
                .db
                .shm()
                .blocking_checkpointer()
                .map_err(|e| self.io(e))?
        {
            if !self.state.snapshot_busy() {
                self.step_out(pid)?;
            } else if self.cancel_optional_snapshot("the application is checkpointing") {
                // Stepped aside at the next probe, once the uploader has dropped it.
            } else if !self.state.snapshot_active.load(Ordering::Acquire)
                && let Some(s) = &self.snapshot
            {
                // Only another replica still streams it: that one starts again later
                // rather than hold the application's checkpoint.
                s.cancelled.store(true, Ordering::Release);
            } else if self.state.failing_since_ms.load(Ordering::Relaxed) != 0 {
                // A snapshot that cannot upload must not hold the app's checkpoint
                // hostage for the whole outage: give up this generation for now.
                self.lose("the replica became unreachable during the first snapshot".into());
                return Ok(());
            }
        }
        let since = self.timers.last_scan.elapsed();
        let followup_due = self
            .timers
            .followup
            .is_some_and(|(at, ..)| Instant::now() >= at);
        if *wal_dirty && self.timers.last_write_scan.elapsed() >= self.scan_gap() {
            *wal_dirty = false;
            self.timers.last_write_scan = Instant::now();
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
            let (_, step, until) = self.timers.followup.take().expect("due");
            let before = self.tracker_pos();
            self.scan()?;
            let now = Instant::now();
            let step = (step * 2).min(FOLLOWUP_MAX_STEP);
            if self.tracker_pos() != before {
                self.start_followups();
            } else if now + step <= until {
                self.timers.followup = Some((now + step, step, until));
            }
        }
        if self.timers.last_identity_check.elapsed() >= Duration::from_secs(1) {
            self.timers.last_identity_check = Instant::now();
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
