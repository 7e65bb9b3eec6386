//! The PostgreSQL sidecar (`walship replicate` with a `type: postgres` database). It
//! shares the data directory with the server and does two things: look-ahead archiving,
//! uploading each WAL file as soon as Postgres marks it ready
//! (`pg_wal/archive_status/*.ready`), several at a time, and noting it (`archive::write_marker`)
//! so that `wal-push` finds it archived and returns without a request, and `pg_wal` does not
//! pile up under a burst; and base backups whenever the newest is older than
//! `snapshot-interval` (at start too, so a new cluster has a restore point at once).

mod path;
mod units;
pub use path::{lease_loop, take_path};
pub use units::{PgUnits, start};

use super::archive::{self, Pushed};
use super::backup;
use super::control::{generation_of, system_identifier};
use super::identity;
use crate::config::DbConfig;
use crate::error::{Error, Result};
use crate::metrics::{DbLabel, Metrics};
use crate::pgformat::walname::WalFile;
use crate::shutdown::Shutdown;
use crate::sidecar::retention::Round;
use crate::storage::Replica;
use crate::storage::{layout, lease};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How often `archive_status` is listed: a readdir, so cheap; Postgres calls
/// `archive_command` at once when a segment is ready, and the sidecar should be first.
const POLL: Duration = Duration::from_millis(200);
/// WAL files uploaded at once (each is one PUT of up to 16 MiB, compressed).
const PARALLEL: usize = 4;
/// How often the sidecar compares the server's timeline with its newest backup's (a
/// directory listing of `pg_wal`).
const TIMELINE_CHECK: Duration = Duration::from_secs(5);
/// After a failed base backup, wait this long before the next attempt.
const BACKUP_RETRY: Duration = Duration::from_secs(60);

/// What the health endpoint needs from a running sidecar: for archiving and for base
/// backups apart (one succeeding must not hide the other failing), the Unix ms of the
/// first failure of the current run of failures (0: not failing).
#[derive(Default)]
pub struct PgState {
    pub label: String,
    pub archive_failing_since_ms: AtomicU64,
    pub backup_failing_since_ms: AtomicU64,
    /// Streaming mode: the connection or the store failing.
    pub stream_failing_since_ms: AtomicU64,
    /// Streaming mode: the slot is in place and WAL flows (base backups wait for it, so
    /// their WAL is streamed).
    pub streaming: std::sync::atomic::AtomicBool,
    /// Why the replica path's lease was lost: the sidecar writes nothing more.
    pub lease_lost: std::sync::Mutex<Option<String>>,
}

impl PgState {
    /// Since when this cluster has been failing at anything (0: it is not).
    pub fn failing_since_ms(&self) -> u64 {
        [
            &self.archive_failing_since_ms,
            &self.backup_failing_since_ms,
            &self.stream_failing_since_ms,
        ]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .filter(|&t| t != 0)
        .min()
        .unwrap_or(0)
    }

    /// Note that streaming is failing (the first failure of a run counts).
    pub fn stream_failed(&self) {
        let _ = self.stream_failing_since_ms.compare_exchange(
            0,
            crate::clock::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn clock(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Archive => &self.archive_failing_since_ms,
            Kind::Backup => &self.backup_failing_since_ms,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Archive,
    Backup,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Archive => "archive",
            Kind::Backup => "backup",
        }
    }
}

/// Check every cluster's data directory and replica before anything starts; all problems
/// together, each naming what is missing.
/// Each cluster's replica and system identifier (from `pg_control`, or in streaming mode
/// from the server).
pub async fn preflight(dbs: &[DbConfig]) -> Result<Vec<(Arc<Replica>, u64)>> {
    let mut replicas = Vec::new();
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    for db in dbs {
        let local = system_identifier(&db.path);
        if db.stream_slot.is_some() {
            match (super::stream::preflight(db).await, local) {
                (Err(e), _) => problems.push(e.to_string()),
                (Ok(id), Ok(l)) if l != id.system_identifier => problems.push(format!(
                    "{}: the data directory is cluster {l} but the server streams cluster {}",
                    db.path.display(),
                    id.system_identifier
                )),
                (Ok(id), Ok(_)) => ids.push(id.system_identifier),
                (Ok(id), Err(_)) => {
                    if db.snapshot_interval.is_some() {
                        tracing::warn!(target: "walship::postgres::sidecar", pgdata = %db.path.display(),
                            "streaming without the data directory mounted: no base backups are \
                             taken (mount PGDATA into the sidecar, or take them with pg-backup)");
                    }
                    ids.push(id.system_identifier)
                }
            }
        } else {
            match local {
                Ok(id) => ids.push(id),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if db.snapshot_interval.is_some()
            && let Err(e) = backup::connection(db.connection.as_deref())
        {
            problems.push(e.to_string());
        }
        let tag = format!("pg-{}", std::process::id());
        if let Some(r) =
            crate::sidecar::probe::probe_replica(&db.replica, &tag, &mut problems).await
        {
            replicas.push(r);
        }
    }
    crate::sidecar::probe::refuse_if_any(problems).map(|()| replicas.into_iter().zip(ids).collect())
}

/// WAL files Postgres has marked ready, `.history` files first (a timeline's history must
/// be in the replica before its WAL), then in name order (oldest first).
fn ready_files(status_dir: &Path) -> std::io::Result<Vec<(WalFile, String, SystemTime)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(status_dir)? {
        let e = e?;
        let n = e.file_name();
        let Some(name) = n.to_str().and_then(|n| n.strip_suffix(".ready")) else {
            continue;
        };
        let Some(wal) = WalFile::parse(name) else {
            continue;
        };
        // A .ready that vanished meanwhile was archived by wal-push: nothing to do.
        let Ok(meta) = e.metadata() else { continue };
        out.push((wal, name.to_string(), meta.modified()?));
    }
    out.sort_by_key(|(w, n, _)| (!matches!(w, WalFile::History { .. }), n.clone()));
    Ok(out)
}

struct Sidecar {
    db: DbConfig,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    state: Arc<PgState>,
    markers: PathBuf,
    status_dir: PathBuf,
    /// Names uploaded and noted, while Postgres still lists them as ready.
    noted: BTreeSet<String>,
    /// Look-ahead archiving (archive mode; streaming ships the WAL itself).
    archive: bool,
}

/// Run until shutdown begins: look-ahead archiving every `POLL`, base backups when due.
pub async fn run(
    db: DbConfig,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    state: Arc<PgState>,
    mut stop: Shutdown,
) {
    let mut s = Sidecar {
        markers: archive::marker_dir(&db.spool_dir),
        status_dir: db.path.join("pg_wal/archive_status"),
        archive: db.stream_slot.is_none(),
        db,
        replica,
        metrics,
        state,
        noted: BTreeSet::new(),
    };
    if let Some(policy) = s.db.retention_policy() {
        let (pgdata, replica, metrics) = (s.db.path.clone(), s.replica.clone(), s.metrics.clone());
        let (label, every, shutdown) = (
            s.state.label.clone(),
            s.db.retention_check_interval,
            stop.clone(),
        );
        tokio::spawn(async move {
            // Read each time: a restored cluster keeps its identifier, a new one does not.
            let live = || Round::Protect(system_identifier(&pgdata).ok().map(generation_of));
            let m = (&*metrics, label.as_str());
            crate::sidecar::retention::every(&replica, &policy, every, m, live, shutdown).await
        });
    }
    let mut backup_task: Option<tokio::task::JoinHandle<Result<backup::BackupReport>>> = None;
    // The newest backup's timeline: after a restore and promotion the cluster is on a
    // new timeline that no backup is on yet, and restores of it replay from older
    // backups (or cannot start at all), so a backup is due at once.
    let mut backup_timeline = None;
    let mut next_backup = match s.backup_due_in().await {
        Ok((d, tl)) => {
            backup_timeline = tl;
            Instant::now() + d
        }
        Err(e) => {
            s.failed(Kind::Backup, &e);
            Instant::now() + BACKUP_RETRY
        }
    };
    let mut timeline_checked = Instant::now();
    loop {
        if s.fenced() {
            break;
        }
        s.drop_prefetch_after_recovery();
        if !s.archive && !s.state.streaming.load(Ordering::Relaxed) {
            // A backup taken before the slot holds its WAL could not be restored.
            tokio::select! {
                _ = tokio::time::sleep(POLL) => continue,
                _ = stop.begun() => break,
            }
        }
        if s.archive {
            match s.archive_ready().await {
                Ok(()) => s.succeeded(Kind::Archive),
                Err(e) => s.failed(Kind::Archive, &e),
            }
        }
        if let Some(t) = &backup_task
            && t.is_finished()
        {
            let t = backup_task.take().expect("checked");
            next_backup = Instant::now()
                + match t.await {
                    Ok(Ok(r)) => {
                        s.succeeded(Kind::Backup);
                        backup_timeline = Some(r.timeline);
                        tracing::info!(db = %s.state.label, generation = %r.generation,
                            start_lsn = %r.start_lsn, stop_lsn = %r.stop_lsn, files = r.files,
                            mb = r.stored_bytes as f64 / 1e6, seconds = r.seconds, "base backup");
                        s.db.snapshot_interval.unwrap_or(Duration::MAX / 4)
                    }
                    Ok(Err(e)) => {
                        s.failed(Kind::Backup, &e);
                        BACKUP_RETRY
                    }
                    Err(e) => {
                        tracing::error!(db = %s.state.label, "base backup task: {e}");
                        BACKUP_RETRY
                    }
                };
        }
        if backup_task.is_none()
            && s.db.snapshot_interval.is_some()
            && timeline_checked.elapsed() >= TIMELINE_CHECK
        {
            timeline_checked = Instant::now();
            if let (Some(now_tl), Some(b_tl)) = (s.current_timeline(), backup_timeline)
                && now_tl > b_tl
                && next_backup > Instant::now()
                // A failing backup keeps its retry delay.
                && s.state.backup_failing_since_ms.load(Ordering::Relaxed) == 0
            {
                tracing::info!(db = %s.state.label, timeline = now_tl, backup_timeline = b_tl,
                    "on a timeline no base backup is on: taking one now");
                next_backup = Instant::now();
            }
        }
        if backup_task.is_none()
            && s.db.snapshot_interval.is_some()
            && Instant::now() >= next_backup
        {
            backup_task = Some(s.spawn_backup());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.begun() => break,
        }
    }
    // Whatever Postgres marked ready is shipped before exit (not once the lease is lost);
    // a backup in progress is abandoned (its manifest is written last, so it never
    // counts as a backup).
    if !s.fenced()
        && s.archive
        && let Err(e) = s.archive_ready().await
    {
        s.failed(Kind::Archive, &e);
    }
    if let Some(t) = backup_task {
        t.abort();
    }
}

impl Sidecar {
    /// The lease is lost: nothing more is written (wal-push still archives, each file
    /// once, never overwriting).
    fn fenced(&self) -> bool {
        self.state.lease_lost.lock().unwrap().is_some()
    }

    fn label(&self) -> DbLabel {
        DbLabel {
            db: self.state.label.clone(),
        }
    }

    /// `wal-fetch` leaves up to a few fetched-ahead files when recovery ends; once the
    /// cluster is out of recovery (no `recovery.signal`) they are of no use.
    fn drop_prefetch_after_recovery(&self) {
        let dir = archive::prefetch_dir(&self.db.path);
        if !self.db.path.join("recovery.signal").exists() && dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn failed(&self, kind: Kind, e: &Error) {
        tracing::error!(db = %self.state.label, "{}: {e}", kind.label());
        self.metrics.error(&self.state.label, kind.label());
        let _ = self.state.clock(kind).compare_exchange(
            0,
            crate::clock::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn succeeded(&self, kind: Kind) {
        self.state.clock(kind).store(0, Ordering::Relaxed);
    }

    /// Upload every ready file not uploaded yet, in parallel, and note each. Notes of files
    /// Postgres no longer lists as ready (it archived them, through `wal-push`) are removed.
    async fn archive_ready(&mut self) -> Result<()> {
        let ready = match ready_files(&self.status_dir) {
            Ok(r) => r,
            Err(e) => return Err(Error::io(&self.status_dir, e)),
        };
        let names: BTreeSet<String> = ready.iter().map(|r| r.1.clone()).collect();
        for gone in self.noted.difference(&names).cloned().collect::<Vec<_>>() {
            let _ = std::fs::remove_file(self.markers.join(&gone));
            self.noted.remove(&gone);
        }
        let todo: Vec<_> = ready
            .into_iter()
            .filter(|r| !self.noted.contains(&r.1))
            .collect();
        let oldest = todo.iter().map(|r| r.2).min();
        self.metrics
            .lag_seconds
            .get_or_create(&self.label())
            .set(oldest.map_or(0.0, |t| t.elapsed().unwrap_or_default().as_secs_f64()));
        if todo.is_empty() {
            return Ok(());
        }
        let generation = generation_of(system_identifier(&self.db.path)?);
        let (histories, segments): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .partition(|r| matches!(r.0, WalFile::History { .. }));
        let mut first_err = None;
        // Histories one by one and before any segment; then segments, PARALLEL at a time.
        for batch in [(histories, 1), (segments, PARALLEL)] {
            // Each file is noted as soon as it is acknowledged, so only `PARALLEL` files'
            // bytes are in memory at once, however many are ready.
            let results: Vec<_> = futures::stream::iter(batch.0)
                .map(|(wal, name, _)| {
                    let (replica, generation) = (self.replica.clone(), generation.clone());
                    let path = self.db.path.join("pg_wal").join(&name);
                    let markers = &self.markers;
                    async move {
                        // wal-push is uploading it (the archiver got there first): leave it.
                        let Some(claim) = archive::claim(markers, &name) else {
                            return (name, Ok(None));
                        };
                        let raw = match std::fs::read(&path) {
                            Ok(r) => r,
                            // Archived and recycled meanwhile: not ours to ship any more.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                return (name, Ok(None));
                            }
                            Err(e) => return (name, Err(Error::io(&path, e))),
                        };
                        let r = match archive::push_bytes(&replica, &generation, &wal, &raw).await {
                            Ok(p) => archive::write_marker(markers, &name, &raw)
                                .map(|()| Some((p, raw.len() as u64))),
                            Err(e) => Err(e),
                        };
                        // After the note: a waiting wal-push finds it once the claim is gone.
                        drop(claim);
                        (name, r)
                    }
                })
                .buffer_unordered(batch.1)
                .collect()
                .await;
            for (name, r) in results {
                match r {
                    Ok(Some((pushed, len))) => {
                        self.noted.insert(name.clone());
                        if pushed == Pushed::Uploaded {
                            let l = self.label();
                            self.metrics.uploaded_objects.get_or_create(&l).inc();
                            self.metrics.uploaded_bytes.get_or_create(&l).inc_by(len);
                        }
                        self.metrics
                            .last_sync_seconds
                            .get_or_create(&self.label())
                            .set(crate::clock::now_ms() as f64 / 1e3);
                        tracing::debug!(db = %self.state.label, file = %name, ?pushed, "archived ahead");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if first_err.is_some() {
                break; // no segment before its timeline's history
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Time until the next base backup (none yet, or the newest older than the interval,
    /// means now), and the newest backup's timeline.
    async fn backup_due_in(&self) -> Result<(Duration, Option<u32>)> {
        let Some(every) = self.db.snapshot_interval else {
            return Ok((Duration::MAX / 4, None));
        };
        let generation = generation_of(system_identifier(&self.db.path)?);
        let listing = self
            .replica
            .list(&layout::format_pg_backups_dir(&generation))
            .await?;
        let Some(newest) = crate::catalog::Catalog::of(&listing)
            .generations
            .get(&generation)
            .and_then(|g| g.complete_backups().last().copied())
        else {
            return Ok((Duration::ZERO, None));
        };
        let key = format!(
            "{}/manifest.json",
            layout::format_backup_dir(&generation, &newest)
        );
        let m = crate::catalog::read_backup_manifest(&self.replica, &key).await?;
        let age = Duration::from_millis(crate::clock::now_ms().saturating_sub(newest.start_ms));
        Ok((every.saturating_sub(age), Some(m.timeline)))
    }

    /// The server's current timeline as `pg_wal` shows it (its newest WAL files), once
    /// recovery is over; `None` while recovering.
    fn current_timeline(&self) -> Option<u32> {
        if self.db.path.join("recovery.signal").exists() {
            return None;
        }
        std::fs::read_dir(self.db.path.join("pg_wal"))
            .ok()?
            .flatten()
            .filter_map(|e| WalFile::parse(e.file_name().to_str()?).map(|w| w.timeline()))
            .max()
    }

    fn spawn_backup(&self) -> tokio::task::JoinHandle<Result<backup::BackupReport>> {
        let (replica, pgdata, conn) = (
            self.replica.clone(),
            self.db.path.clone(),
            self.db.connection.clone(),
        );
        tokio::spawn(async move {
            let conn = backup::connection(conn.as_deref())?;
            backup::backup(&replica, &pgdata, &conn, backup::DEFAULT_STOP_WAIT).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_that_works_does_not_hide_failing_backups() {
        let s = PgState::default();
        assert_eq!(s.failing_since_ms(), 0);
        s.backup_failing_since_ms.store(500, Ordering::Relaxed);
        s.archive_failing_since_ms.store(0, Ordering::Relaxed); // an archive round succeeded
        assert_eq!(s.failing_since_ms(), 500);
        s.archive_failing_since_ms.store(300, Ordering::Relaxed);
        assert_eq!(s.failing_since_ms(), 300, "the older failure counts");
    }

    #[test]
    fn ready_files_put_histories_first_then_oldest() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "000000020000000000000005.ready",
            "000000010000000000000004.done",
            "00000002.history.ready",
            "000000010000000000000005.partial.ready",
            "000000010000000000000003.ready",
            "junk.ready",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let names: Vec<_> = ready_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(
            names,
            [
                "00000002.history",
                "000000010000000000000003",
                "000000010000000000000005.partial",
                "000000020000000000000005"
            ]
        );
    }
}
