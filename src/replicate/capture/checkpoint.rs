//! Walship's own checkpoints (docs/CAPTURE.md, "Walship's own checkpoint, normally
//! without the write lock"): when they are due, the barrier that keeps the WAL from
//! growing without end, and settling on a WAL the application backfilled. Never cuts
//! segments or starts generations.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

impl Capture {
    /// Keep the WAL restarting without walship checkpointing: renew the read mark as the
    /// WAL grows, so the application's own checkpoints can backfill past it; and once the
    /// WAL is fully backfilled, settle the read lock on it (read slot 0) so that the
    /// application's next write restarts the WAL. Two cheap reads of the WAL-index per
    /// tick; the application's checkpoints never find walship holding the checkpoint lock.
    pub(super) fn maintain_wal(&mut self) -> Result<()> {
        let Some(run) = self.run.as_ref() else {
            return Ok(());
        };
        if self.state.snapshot_busy() {
            return Ok(());
        }
        let pos = run.tracker.pos;
        if pos.frame >= self.cursors.mark_frame.saturating_add(REFRESH_FRAMES)
            || pos.frame < self.cursors.mark_frame
        {
            if !self.scan_to_end()? {
                return Ok(());
            }
            self.db.refresh_read()?;
            self.cursors.mark_frame = self.tracker().pos.frame;
        }
        let Some(h) = self.db.shm().header().map_err(|e| self.io(e))? else {
            return Ok(());
        };
        let state = (h.salt1, h.salt2, h.mx_frame);
        if h.mx_frame > 0 && h.n_backfill == h.mx_frame && self.cursors.settled != Some(state) {
            if !self.scan_to_end()? {
                return Ok(());
            }
            self.cursors.settled = Some(state);
            if self.settle_on_backfilled_wal()? {
                self.cursors.mark_frame = 0;
            }
        }
        Ok(())
    }

    /// After a complete scan, with the read lock held since before it: if the WAL-index
    /// still names the WAL the position is in, every frame committed before the scan was
    /// consumed, and any reset from now on starts exactly at the position (frames
    /// committed later could only be reset away after a backfill, which the read lock
    /// blocks). So every later reset is safe: policy `Any`. docs/CAPTURE.md has the proof.
    pub(super) fn try_anchor(&mut self) -> Result<bool> {
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
    pub(super) fn with_write_lock<T>(
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

    /// walship's own checkpoint (invariant 4), normally without the application's write
    /// lock: renew the read mark at the WAL's end (two readers, no gap), backfill with a
    /// PASSIVE checkpoint (repeated while writers append during it), and renew the read
    /// once the WAL is fully backfilled: it then sits on read slot 0, so the next writer
    /// restarts the WAL, from a position walship has read to its end (proof: `try_anchor`).
    /// Under sustained writes this may not converge; past `BARRIER_FACTOR` times the
    /// threshold walship falls back to a brief write-lock barrier. The barrier is the last
    /// resort because an app transaction that upgrades from read to write gets SQLITE_BUSY
    /// at once, without its busy_timeout, while any other connection holds that lock.
    pub(super) fn checkpoint_if_due(&mut self) -> Result<()> {
        let Some(run) = self.run.as_ref() else {
            return Ok(());
        };
        let frames = run.tracker.pos.frame;
        // Past the threshold the application is not checkpointing (or cannot get past
        // walship's read mark): walship does it.
        if frames < self.settings.min_checkpoint_pages.saturating_mul(2)
            || Instant::now() < self.timers.checkpoint_not_before
            || self.state.snapshot_busy()
        {
            return Ok(());
        }
        self.timers.checkpoint_not_before = Instant::now() + Duration::from_millis(500);
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
            && Instant::now() >= self.timers.barrier_not_before
            && self.backfill_left()? <= BARRIER_MAX_FRAMES
        {
            self.timers.barrier_not_before = Instant::now() + BARRIER_EVERY;
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
        tracing::debug!(target: "walship::replicate::capture", db = %self.state.label, kind, frames, "checkpoint");
        Ok(())
    }

    /// If the WAL is fully backfilled and walship has read it to its end, renew the read
    /// lock so that it sits on the backfilled WAL (read slot 0), which lets the next writer
    /// restart the WAL. True when the WAL-index proves it did: unchanged, fully backfilled
    /// and ending at walship's position, before and after.
    pub(super) fn settle_on_backfilled_wal(&mut self) -> Result<bool> {
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

    /// WAL frames not yet backfilled into the database, as the WAL-index says.
    fn backfill_left(&self) -> Result<u32> {
        let h = self
            .db
            .shm()
            .header()
            .map_err(|e| crate::Error::io(self.db.wal_path(), e))?;
        Ok(h.map_or(u32::MAX, |h| h.mx_frame.saturating_sub(h.n_backfill)))
    }

    /// The fallback: hold the write lock for one short scan and a PASSIVE checkpoint of
    /// what is left, and retake the read mark before any writer can append.
    pub(super) fn checkpoint_barrier(&mut self) -> Result<()> {
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
}
