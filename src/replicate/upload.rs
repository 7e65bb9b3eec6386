//! The upload task of one database: takes jobs from the front of the queue in order,
//! sends each with never-overwrite semantics, and only then removes it (the replica's
//! position advances on acknowledgement only, invariant 3). Retries with backoff for as
//! long as the store is down; stops when told, reporting what is left.

use super::spool::Spool;
use super::state::{DbState, Job, MayWrite, now_ms};
use crate::error::{Error, StoreErrorKind};
use crate::shutdown::Shutdown;
use crate::storage::Replica;
use crate::storage::layout::{self, GenerationId};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Run until the queue is empty after capture stopped, or until the shutdown's deadline
/// passes. Returns the number of jobs left unsent.
pub async fn run(
    state: Arc<DbState>,
    replica: Arc<Replica>,
    spool: Arc<Spool>,
    mut stop: Shutdown,
) -> usize {
    let mut backoff = MIN_BACKOFF;
    let mut last_warn: Option<Instant> = None;
    loop {
        let deadline = stop.deadline();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return state.queue_len();
        }
        match state.may_write() {
            MayWrite::Yes => {}
            // Fenced: everything stays in the spool for a later start.
            MayWrite::Lost(_) => return state.queue_len(),
            MayWrite::Wait => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let front = {
            let q = state.queue.lock().unwrap();
            q.jobs.front().map(|j| match j {
                Job::Segment(e) => Job::Segment(e.clone()),
                Job::Snapshot(s) => Job::Snapshot(s.clone()),
            })
        };
        if let Some(j) = &front
            && state.abandoned.lock().unwrap().as_ref() == Some(j.generation())
        {
            abandon_generation(&state, &spool, &j.generation().clone());
            continue;
        }
        let Some(job) = front else {
            if state.capture_done.load(Ordering::Acquire) && state.queue_len() == 0 {
                return 0;
            }
            if state.failing_since_ms.load(Ordering::Relaxed) != 0 {
                // Nothing to send, but capture waits for a working replica before it starts
                // a generation: find out with a LIST (never a PUT while idle).
                match replica.list_dirs(layout::GENERATIONS).await {
                    Ok(_) => state.store_ok(),
                    Err(e) => state.store_failed(e.kind_label()),
                }
            } else if state.primary_behind() {
                state.snapshot_wanted.store(true, Ordering::Release);
            }
            tokio::select! {
                _ = state.wake_uploader.notified() => {}
                // Woken once when shutdown begins, never again (no spinning after).
                _ = stop.begun(), if stop.deadline().is_none() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let started = Instant::now();
        let upload = async {
            match &job {
                Job::Segment(e) => upload_segment(&replica, e).await,
                Job::Snapshot(s) => s.upload(&replica).await,
            }
        };
        // A lost lease, or the shutdown deadline, stops an upload in flight (a store that
        // stalls must not hold shutdown for the request timeout): a multipart snapshot
        // dropped unfinished leaves nothing visible, and the job stays in the spool.
        let mut passes = stop.clone();
        let deadline_passes = passes.deadline_passed();
        let result = tokio::select! {
            r = upload => r,
            _ = state.lease_lost.notified() => return state.queue_len(),
            _ = deadline_passes => return state.queue_len(),
        };
        let dropped = || {
            !state
                .queue
                .lock()
                .unwrap()
                .jobs
                .front()
                .is_some_and(|f| f.same(&job))
        };
        if result.is_err() && dropped() {
            // Dropped while in flight (the first replica fell behind): its file may be gone.
            continue;
        }
        match result {
            Ok(bytes) => {
                backoff = MIN_BACKOFF;
                finish_front(&state, &spool, &job, bytes);
                tracing::debug!(
                    db = %state.label,
                    ms = started.elapsed().as_millis() as u64,
                    "uploaded {}",
                    describe(&job)
                );
            }
            Err(e)
                if matches!(&job, Job::Snapshot(s) if s.manifest.is_none())
                    && (is_generation_fatal(&e)
                        || matches!(&job, Job::Snapshot(s) if s.cancelled.load(Ordering::Acquire))) =>
            {
                // A snapshot within a generation is an optimisation: the segments before
                // and after it still chain, so the generation goes on without it.
                tracing::warn!(db = %state.label, "{}: {e}; skipped", describe(&job));
                drop_front(&state, &job);
            }
            Err(e) if is_generation_fatal(&e) => {
                tracing::error!(db = %state.label, "{}: {e}; starting a new generation", describe(&job));
                state.metrics.error(&state.label, e.kind_label());
                abandon_generation(&state, &spool, &job.generation().clone());
            }
            Err(e) => {
                state.store_failed(e.kind_label());
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(
                        db = %state.label,
                        "{} failed, will retry (queue {}): {e}",
                        describe(&job),
                        state.queue_len()
                    );
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

/// PUT one spooled segment under its name, never over another object.
pub(super) async fn upload_segment(
    replica: &Replica,
    e: &super::spool::SpoolEntry,
) -> crate::Result<u64> {
    let bytes = tokio::fs::read(&e.path)
        .await
        .map_err(|err| Error::io(&e.path, err))?;
    let n = bytes.len() as u64;
    replica
        .put_new(
            &layout::format_segment(&e.generation, &e.name),
            Bytes::from(bytes),
        )
        .await?;
    Ok(n)
}

fn describe(job: &Job) -> String {
    match job {
        Job::Segment(e) => format!(
            "segment {} txid {}..={}",
            e.generation, e.name.first_txid, e.name.last_txid
        ),
        Job::Snapshot(s) => format!("snapshot {} txid {}", s.generation, s.meta.txid),
    }
}

/// A different object under our name, or a snapshot that cannot be read: this generation
/// cannot be continued, but nothing already in the replica is touched.
fn is_generation_fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            kind: StoreErrorKind::AlreadyExists,
            ..
        } | Error::Io { .. }
    )
}

fn finish_front(state: &DbState, spool: &Spool, job: &Job, bytes: u64) {
    let label = state.db_label();
    let m = &state.metrics;
    {
        let mut q = state.queue.lock().unwrap();
        // Dropped meanwhile (the first replica fell behind): acknowledged all the same.
        if q.jobs.front().is_some_and(|f| f.same(job)) {
            q.jobs.pop_front();
            if let Job::Segment(e) = job {
                q.spool_bytes -= e.size;
            }
        }
        m.spool_bytes
            .get_or_create(&label)
            .set(q.spool_bytes as i64);
    }
    match job {
        Job::Segment(e) => {
            spool.remove(e);
            m.transactions
                .get_or_create(&label)
                .inc_by(e.name.last_txid - e.name.first_txid + 1);
            let now = now_ms();
            let h = m.commit_to_ack.get_or_create(&label);
            for &read in e.commits.iter() {
                h.observe(now.saturating_sub(read) as f64 / 1000.0);
            }
        }
        Job::Snapshot(_) => {
            state.snapshot_active.store(false, Ordering::Release);
            state.primary_resync.store(false, Ordering::Release);
        }
    }
    m.uploaded_objects.get_or_create(&label).inc();
    m.uploaded_bytes.get_or_create(&label).inc_by(bytes);
    let now = now_ms();
    state.last_sync_ms.store(now, Ordering::Relaxed);
    m.last_sync_seconds
        .get_or_create(&label)
        .set(now as f64 / 1000.0);
    state.store_ok();
}

/// Remove the front job (an optional snapshot) without counting it as uploaded; when it
/// was to start the first replica's line again, that replica waits for another.
fn drop_front(state: &DbState, job: &Job) {
    let mut q = state.queue.lock().unwrap();
    if q.jobs.front().is_some_and(|f| f.same(job)) {
        q.jobs.pop_front();
    }
    if state.primary_resync.swap(false, Ordering::AcqRel) {
        state.drop_primary_backlog(&mut q, "its snapshot to start again from was dropped");
    }
    drop(q);
    state.snapshot_active.store(false, Ordering::Release);
}

/// Drop every queued job of `generation` (their spool files too) and ask capture for a new
/// generation.
fn abandon_generation(state: &DbState, spool: &Spool, generation: &GenerationId) {
    let mut q = state.queue.lock().unwrap();
    let jobs = std::mem::take(&mut q.jobs);
    for job in jobs {
        if job.generation() != generation {
            q.jobs.push_back(job);
            continue;
        }
        match job {
            Job::Segment(e) => {
                q.spool_bytes -= e.size;
                spool.remove(&e);
            }
            Job::Snapshot(_) => state.snapshot_active.store(false, Ordering::Release),
        }
    }
    drop(q);
    *state.abandoned.lock().unwrap() = Some(generation.clone());
}
