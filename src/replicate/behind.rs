//! The first replica of a database that has others, falling behind like them: past
//! `spool-limit` it drops its backlog rather than hold capture (and so every other
//! replica) back, and starts again at the next snapshot. With one replica nothing here
//! applies. Never reads the database or the store.

use super::state::{DbState, Job, Queue, now_ms};
use std::sync::atomic::Ordering;

impl DbState {
    /// The first replica is not following: it waits for a snapshot to start again from.
    pub fn primary_behind(&self) -> bool {
        self.primary_behind_since_ms.load(Ordering::Acquire) != 0
    }

    /// The first replica's backlog need not hold capture back: it is behind already, or
    /// another replica follows that a stall would hold up.
    pub(super) fn primary_may_fall_behind(&self) -> bool {
        let m = self.mirrors();
        !m.is_empty() && (self.primary_behind() || m.iter().any(|m| m.following()))
    }

    /// Whether `job` joins the first replica's queue `q`; a segment that does not is
    /// removed from the spool (the other replicas hold links to it).
    pub(super) fn primary_takes(&self, q: &mut Queue, job: &Job) -> bool {
        if self.mirrors().is_empty() {
            return true;
        }
        match job {
            Job::Segment(e) => {
                if !self.primary_behind() && q.spool_bytes + e.size > self.spool_limit {
                    self.drop_primary_backlog(q, "its backlog passed the spool limit");
                }
                if self.primary_behind() {
                    let _ = std::fs::remove_file(&e.path);
                    return false;
                }
                true
            }
            Job::Snapshot(_) if !self.primary_behind() => true,
            Job::Snapshot(_) if self.failing_since_ms.load(Ordering::Relaxed) != 0 => {
                // It could not take it now: the others must not wait for it to return.
                self.snapshot_active.store(false, Ordering::Release);
                false
            }
            Job::Snapshot(_) => {
                self.primary_behind_since_ms.store(0, Ordering::Release);
                self.primary_resync.store(true, Ordering::Release);
                true
            }
        }
    }

    /// Drop the first replica's queued segments (its line is broken there) and wait for
    /// a snapshot. Snapshots stay: each is a restore point of its own.
    pub(super) fn drop_primary_backlog(&self, q: &mut Queue, why: &str) {
        q.jobs.retain(|j| match j {
            Job::Segment(e) => {
                let _ = std::fs::remove_file(&e.path);
                false
            }
            Job::Snapshot(_) => true,
        });
        q.spool_bytes = 0;
        self.metrics
            .spool_bytes
            .get_or_create(&self.db_label())
            .set(0);
        self.metrics.error(&self.label, "replica_behind");
        let _ = self.primary_behind_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        tracing::warn!(db = %self.label, "the first replica: {why}: it starts again at the next snapshot");
    }
}
