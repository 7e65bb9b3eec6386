//! Stepping aside for the application's checkpoint (docs/CAPTURE.md, "Stepping aside"):
//! releasing the read lock so a waiting checkpointer can finish, then taking it back at
//! the same position. Never reads frames or writes the spool.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

impl Capture {
    /// An application checkpoint (FULL/RESTART/TRUNCATE) holds the checkpoint and writer
    /// locks and waits for walship's read lock. The WAL cannot grow meanwhile: consume it
    /// to its end, then hand the read lock over rather than drop it (`hand_over`), so that
    /// no instant passes without one; only if that does not let the checkpoint through
    /// does walship drop its lock and watch (`release_and_watch`).
    pub(super) fn step_out(&mut self, pid: i32) -> Result<()> {
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
            self.timers.stepout_not_before = Instant::now() + STEPOUT_COOLDOWN;
            return Ok(());
        }
        let how = if self.hand_over(pid, pos)? {
            "hand-over"
        } else {
            self.release_and_watch(pid, pos)?;
            "release"
        };
        self.timers.stepout_not_before = Instant::now() + STEPOUT_COOLDOWN;
        self.state
            .metrics
            .checkpoints
            .get_or_create(&crate::metrics::KindLabel {
                db: self.state.label.clone(),
                kind: "app_stepout".into(),
            })
            .inc();
        tracing::debug!(target: "walship::replicate::capture", db = %self.state.label, pid, how, "stepped aside for an application checkpoint");
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
    pub(super) fn hand_over(&mut self, pid: i32, pos: WalPosition) -> Result<bool> {
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
                    self.cursors.settled = Some((h.salt1, h.salt2, h.mx_frame));
                    self.cursors.mark_frame = 0;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The fallback: release the read lock, watch the WAL-index until the checkpoint has
    /// released its lock, and retake the read lock at once, accepting one WAL reset only if
    /// nothing was appended to the old WAL while walship was out.
    pub(super) fn release_and_watch(&mut self, pid: i32, pos: WalPosition) -> Result<()> {
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
}
