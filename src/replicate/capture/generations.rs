//! Generations and snapshots within them (docs/CAPTURE.md, "Continuity on start, and new
//! generations", "Snapshots within a generation"): losing continuity, starting a
//! generation, queueing snapshots. Never scans the WAL.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

impl Capture {
    /// Cancel an in-flight snapshot taken within a generation (not one that starts a
    /// generation, which the generation needs). True if there was one.
    pub(super) fn cancel_optional_snapshot(&mut self, why: &str) -> bool {
        match &self.snapshot {
            Some(job) if job.manifest.is_none() => {
                if !job.cancelled.swap(true, Ordering::AcqRel) {
                    tracing::info!(target: "walship::replicate::capture", db = %self.state.label, txid = job.meta.txid,
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
    pub(super) fn snapshot_if_due(&mut self) -> Result<()> {
        let Some(run) = self.run.as_ref() else {
            return Ok(());
        };
        // An unreachable first replica holds snapshots back, unless it is behind: then
        // the others take it without it.
        let failing = self.state.failing_since_ms.load(Ordering::Relaxed) != 0;
        if self.state.snapshot_busy() || (failing && !self.state.primary_behind()) {
            return Ok(());
        }
        let t = &run.tracker;
        // Another replica lost its line (it was unreachable, or fell behind): a snapshot
        // now starts it again, whatever the schedule.
        let wanted = self.state.snapshot_wanted.swap(false, Ordering::AcqRel);
        let due = snapshot_due(
            self.cursors.wal_since_snapshot,
            t.db_pages as u64 * t.page_size as u64,
            &self.settings,
            self.cursors.last_snapshot_at.elapsed(),
        );
        let Some(reason) = due.or(wanted.then_some("another replica starts again from it")) else {
            return Ok(());
        };
        if !wanted && t.txid == self.cursors.snapshot_txid {
            self.cursors.last_snapshot_at = Instant::now();
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
        self.cursors.mark_frame = run.tracker.pos.frame;
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
        tracing::info!(target: "walship::replicate::capture", db = %self.state.label, generation = %run.generation, txid = t.txid,
            pages = t.db_pages, wal_bytes = self.cursors.wal_since_snapshot,
            reason, "snapshot");
        self.cursors.last_snapshot_at = Instant::now();
        self.cursors.snapshot_txid = t.txid;
        self.cursors.wal_since_snapshot = 0;
        self.snapshot = Some(job.clone());
        self.state.snapshot_active.store(true, Ordering::Release);
        self.state.push(Job::Snapshot(job));
        Ok(())
    }

    /// Continuity cannot be proven: queue what was consumed (valid history), drop the read
    /// lock, and start a new generation as soon as the replica is reachable.
    pub(super) fn lose(&mut self, reason: String) {
        match self.cut() {
            Ok(_) => {}
            // What the journal holds stays there for the next start-up.
            Err(e) => self.report(&e),
        }
        if let Some(run) = self.run.take() {
            if run.tracker.has_pending() {
                // The spool is full (the replica is down): within its limit there is no
                // room for them. Their state is in the next generation's snapshot.
                tracing::warn!(target: "walship::replicate::capture", db = %self.state.label, generation = %run.generation,
                    first_txid = run.tracker.txid + 1 - run.tracker.pending_commit_times().len() as u64,
                    last_txid = run.tracker.txid,
                    "spool full: the last transactions of the generation are not in its \
                     segments; the next generation's snapshot holds their state");
            }
            tracing::warn!(target: "walship::replicate::capture", db = %self.state.label, generation = %run.generation,
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
    pub(super) fn start_generation(&mut self) -> Result<()> {
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
            self.timers.not_before = Instant::now() + Duration::from_millis(200);
            return Ok(());
        }
        self.queue_first_snapshot(None, now_ms());
        Ok(())
    }

    /// Queue the snapshot a generation begins with: the database as of the tracker's
    /// position, which the read lock keeps stable until the replica has it. `continues`
    /// names the parent's last txid when nothing lies between it and this snapshot but
    /// one transaction too large for a segment.
    pub(super) fn queue_first_snapshot(&mut self, continues: Option<u64>, commit_ms: u64) {
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
        self.cursors.last_snapshot_at = Instant::now();
        self.cursors.snapshot_txid = 0;
        self.cursors.wal_since_snapshot = 0;
        tracing::info!(target: "walship::replicate::capture", db = %self.state.label, generation = %generation, pages = meta.page_count,
            reason = %self.next_reason, "new generation");
        let job = Arc::new(job);
        self.snapshot = Some(job.clone());
        self.state.snapshot_active.store(true, Ordering::Release);
        self.state.push(Job::Snapshot(job));
        self.state.set_generation(&generation);
    }
}
