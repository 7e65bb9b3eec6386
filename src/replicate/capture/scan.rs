//! Reading the WAL (docs/CAPTURE.md, "The capture journal", "Stamps within 100 ms",
//! "Transactions larger than the spool"): scans and follow-ups, the journal, cutting
//! segments into the spool. Never checkpoints or steps aside.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

impl Capture {
    pub(super) fn tracker(&mut self) -> &mut Tracker {
        &mut self.run.as_mut().expect("running").tracker
    }

    /// Consume new transactions; cut segments as the budget fills (while the spool has
    /// room: when it has none, transactions wait in the WAL, which walship's read lock keeps).
    pub(super) fn scan(&mut self) -> Result<()> {
        self.timers.last_scan = Instant::now();
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
    pub(super) fn tracker_scan(&mut self, budget: usize) -> Result<Option<Scan>> {
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
                .timers
                .journal_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            self.timers.journal_warned = Some(Instant::now());
            self.report(&crate::Error::io(self.journal.path(), e));
        }
        Ok(Some(scan))
    }

    pub(super) fn start_followups(&mut self) {
        let now = Instant::now();
        self.timers.followup = Some((now + FOLLOWUP_FIRST, FOLLOWUP_FIRST, now + FOLLOWUP_FOR));
    }

    /// Empty the journal (its transactions are spooled, or their generation ended),
    /// keeping spool and journal together within spool-limit.
    pub(super) fn clear_journal(&mut self) {
        let room = self.state.spool_room();
        if let Err(e) = self.journal.clear(room) {
            // Harmless for correctness: start-up skips journaled txids the spool has.
            tracing::warn!(target: "walship::replicate::capture", db = %self.state.label, "cannot empty the capture journal: {e}");
        }
    }

    pub(super) fn tracker_pos(&self) -> Option<WalPosition> {
        self.run.as_ref().map(|r| r.tracker.pos)
    }

    /// Time until the next WAL-index re-check (rounded up to a millisecond, so the wait
    /// never spins), or the probe interval if none is scheduled.
    pub(super) fn followup_due_in(&self) -> Duration {
        match self.timers.followup {
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
    pub(super) fn large_transaction(&mut self, bytes: u64) {
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
        tracing::warn!(target: "walship::replicate::capture", db = %self.state.label, generation = %old, tx_bytes = bytes,
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
    pub(super) fn nothing_new(&self, h: Option<ShmHeader>) -> bool {
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
    pub(super) fn mark_watched(&mut self, at: u64) {
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
            tracing::debug!(target: "walship::replicate::capture", db = %self.state.label, "cannot write the watch stamp: {e}");
        }
    }

    /// Between scans, with writes pending: how far the WAL-index says commits reach, and
    /// when (read after the header, so never before those commits were visible).
    pub(super) fn sample_index(&mut self) {
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
    pub(super) fn set_read_hint(&mut self) -> Result<()> {
        let h = self.db.shm().header().map_err(|e| self.io(e))?;
        self.hint(h);
        Ok(())
    }

    pub(super) fn hint(&mut self, h: Option<ShmHeader>) {
        if let Some(run) = self.run.as_mut() {
            run.tracker.read_hint = h.map(|h| (h.salt1, h.salt2, h.mx_frame));
        }
    }

    pub(super) fn publish_oldest(&self) {
        let oldest = self
            .run
            .as_ref()
            .and_then(|r| r.tracker.oldest_pending_ms())
            .unwrap_or(0);
        self.state
            .oldest_unqueued_ms
            .store(oldest, Ordering::Relaxed);
    }

    /// Scan with no budget. False if continuity was lost.
    pub(super) fn scan_to_end(&mut self) -> Result<bool> {
        self.scan_within(usize::MAX).map(|end| end == Some(true))
    }

    /// Scan until the end of the WAL or until `budget` bytes are pending: `Some(true)` at
    /// the end, `Some(false)` when the budget stopped it, `None` if continuity was lost.
    pub(super) fn scan_within(&mut self, budget: usize) -> Result<Option<bool>> {
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
    pub(super) fn cut(&mut self) -> Result<bool> {
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
                self.cursors.cut_blocked = true;
                return Ok(false);
            }
        }
        self.cursors.cut_blocked = false;
        let mut entry = self.spool.write(&run.generation, &meta, &bytes)?;
        entry.commits = run.tracker.pending_commit_times().into();
        run.tracker.clear_pending();
        self.timers.last_cut = Some(Instant::now());
        self.clear_journal();
        // Counted as stored: what a restore downloads is what its work scales with.
        self.cursors.wal_since_snapshot += bytes.len() as u64;
        self.state.push(Job::Segment(entry));
        self.publish_oldest();
        Ok(true)
    }

    /// Time until pending transactions fall due (a sync interval after the last cut, a
    /// little after so that they are due when walship wakes), or the probe interval if
    /// none are pending.
    pub(super) fn cut_due_in(&self) -> Duration {
        let pending = self.run.as_ref().is_some_and(|r| r.tracker.has_pending());
        let left = match self.timers.last_cut {
            None => Duration::ZERO,
            Some(t) => self.settings.sync_interval.saturating_sub(t.elapsed()),
        };
        match (pending, left.is_zero()) {
            (false, _) => PROBE_INTERVAL,
            // Due now; if the spool had no room, retry at the probe rate, not in a spin.
            (true, true) if self.cursors.cut_blocked => PROBE_INTERVAL,
            (true, true) => Duration::ZERO,
            (true, false) => left + Duration::from_millis(1),
        }
    }

    /// Leading edge: a commit after a quiet sync interval is cut (and uploaded) at once;
    /// under continuous writes at most one segment per sync interval (or per segment
    /// budget of frames).
    pub(super) fn cut_if_due(&mut self) -> Result<()> {
        let due = self.run.as_ref().is_some_and(|r| {
            r.tracker.has_pending()
                && (self
                    .timers
                    .last_cut
                    .is_none_or(|t| t.elapsed() >= self.settings.sync_interval)
                    || r.tracker.pending_bytes() >= self.segment_budget)
        });
        if due {
            self.cut()?;
        }
        Ok(())
    }
}
