//! `walship replicate`: for each database, a capture thread (watch -> read -> encode ->
//! spool) and an upload task (spool -> replica), plus the metrics endpoint. Start-up
//! checks every database and replica first and fails with a message naming what is
//! missing; shutdown ships everything committed, within a deadline.

mod behind;
pub mod capture;
pub mod history;
pub mod journal;
mod lanes;
pub mod mirror;
pub mod snapshot;
pub mod spool;
pub mod state;
pub mod tracker;
pub mod upload;
pub mod watch;

pub(crate) mod background;
mod holding;
mod resume;

use crate::shutdown::Shutdown;
use crate::sidecar::holding::{LeaseTask, absolute, end_lease_task, lock_spool};
use crate::sidecar::probe::{probe_replica, refuse_if_any};
use crate::sidecar::retention::Round;
use background::spawn_validator;
use holding::lease_loop;
use resume::{find_resume_point, list_generations, path_history};

use crate::config::{Config, DbConfig};
use crate::error::{Error, Result};
use crate::format::segment::SegmentMeta;
use crate::format::snapshot::SnapshotMeta;
use crate::metrics::{DbLabel, Health, KindLabel, Metrics};
use crate::sqlite::db::{LiveDb, check_database};
use crate::storage::Replica;
use crate::storage::layout::{self, GenerationId};
use crate::storage::lease;
use capture::{Capture, CaptureSettings, ResumePoint};
use spool::Spool;
use state::{DbState, Job, now_ms};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a finished `replicate` run reports.
#[derive(Debug)]
pub struct Outcome {
    /// Jobs that could not be uploaded before the shutdown deadline (kept in the spool).
    pub left_behind: usize,
    /// Databases whose latest transactions are in no queued object (no generation active).
    pub incomplete: Vec<String>,
}

struct Running {
    state: Arc<DbState>,
    stop: Arc<AtomicBool>,
    capture: std::thread::JoinHandle<()>,
    uploader: tokio::task::JoinHandle<usize>,
    /// The other replicas' upload tasks.
    mirror_uploaders: Vec<tokio::task::JoinHandle<usize>>,
    /// The first replica's name, for the per-replica metrics.
    replica_name: String,
}

struct HealthView {
    dbs: Vec<Arc<DbState>>,
    /// Each database's first replica's name.
    names: Vec<String>,
    unhealthy_after: Duration,
    /// Per database: bytes the replica client had sent, and when that last grew.
    progress: Vec<std::sync::Mutex<(u64, u64)>>,
}

impl Health for HealthView {
    fn refresh(&self) {
        let now = now_ms();
        for (s, name) in self.dbs.iter().zip(&self.names) {
            s.report_requests();
            let lag = s.lag_seconds(now);
            s.metrics.lag_seconds.get_or_create(&s.db_label()).set(lag);
            let l = crate::metrics::ReplicaLabel {
                db: s.label.clone(),
                replica: name.clone(),
            };
            let m = &s.metrics;
            m.by_replica_lag.get_or_create(&l).set(lag);
            let up = s.failing_since_ms.load(Ordering::Relaxed) == 0;
            m.by_replica_up.get_or_create(&l).set(i64::from(up));
            let last = s.last_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            m.by_replica_last_sync.get_or_create(&l).set(last);
            for mirror in s.mirrors() {
                mirror.report(s, now);
            }
        }
    }

    /// Unhealthy when a replica has failed for longer than `unhealthy-after`, or when
    /// replication is stalled: a committed transaction has waited that long and nothing
    /// was uploaded meanwhile (whatever the cause, the replica falls behind unseen).
    fn healthy(&self) -> std::result::Result<(), String> {
        // Each replica by name where a database has several.
        let mut since: Vec<(String, u64)> = Vec::new();
        for (s, name) in self.dbs.iter().zip(&self.names) {
            let several = !s.mirrors().is_empty();
            let label = |n: &str| match several {
                true => format!("{} (replica {n})", s.label),
                false => s.label.clone(),
            };
            since.push((label(name), s.failing_since_ms.load(Ordering::Relaxed)));
            for m in s.mirrors() {
                since.push((label(&m.name), m.failing_since_ms.load(Ordering::Relaxed)));
            }
        }
        let failing = crate::metrics::failing_too_long(
            since.iter().map(|(l, t)| (l.as_str(), *t)),
            self.unhealthy_after,
            "replica unreachable",
        );
        let now = now_ms();
        let limit = self.unhealthy_after.as_millis() as u64;
        let mut problems: Vec<String> = failing.err().into_iter().collect();
        for s in &self.dbs {
            if let state::MayWrite::Lost(why) = s.may_write() {
                problems.push(format!("{}: {why}", s.label));
            }
        }
        for (s, p) in self.dbs.iter().zip(&self.progress) {
            let sent = s.requests.put_bytes.load(Ordering::Relaxed);
            let mut p = p.lock().unwrap();
            if sent != p.0 || p.1 == 0 {
                *p = (sent, now);
            }
            let lag_ms = (s.lag_seconds(now) * 1000.0) as u64;
            let idle_ms = now.saturating_sub(p.1);
            if lag_ms > limit && idle_ms > limit && s.failing_since_ms.load(Ordering::Relaxed) == 0
            {
                problems.push(format!(
                    "{}: replication stalled: the oldest unshipped commit is {}s old and \
                     nothing was uploaded for {}s",
                    s.label,
                    lag_ms / 1000,
                    idle_ms / 1000
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Check every database and take its read lock, then check every replica; return each
/// database's locked connections and opened replica. All problems are reported together.
/// The read locks come first, before any network call: from then on no application
/// checkpoint can reset WAL that walship has not read, so the window in which a restart
/// can lose continuity is only the process's own start.
pub async fn preflight(cfg: &Config) -> Result<Vec<(LiveDb, Arc<Replica>, Vec<Arc<Replica>>)>> {
    if cfg.dbs.is_empty() {
        return Err(Error::Config(
            "no databases to replicate: give DB_PATH REPLICA_URL or a config with `dbs`".into(),
        ));
    }
    let mut problems = Vec::new();
    let mut locked = Vec::new();
    for db in &cfg.dbs {
        match lock_database(&db.path) {
            Ok(live) => {
                let after = crate::clock::process_start().elapsed();
                tracing::info!(db = %db.path.display(), ms = after.as_secs_f64() * 1000.0,
                    "read lock held (time since process start)");
                locked.push(Some((live, after)));
            }
            Err(e) => {
                problems.push(e.to_string());
                locked.push(None);
            }
        }
    }
    let mut replicas = Vec::new();
    let tag = format!("{}-{}", snapshot::hostname(), std::process::id());
    for db in &cfg.dbs {
        let mut all = Vec::new();
        for rc in db.replicas() {
            if let Some(r) = probe_replica(rc, &tag, &mut problems).await {
                all.push(r);
            }
        }
        replicas.push(all);
    }
    refuse_if_any(problems)?;
    Ok(locked
        .into_iter()
        .flatten()
        .zip(replicas)
        .map(|((live, _), mut r)| {
            let first = r.remove(0);
            (live, first, r)
        })
        .collect())
}

/// Open a database's connections and begin the long-lived read transaction.
fn lock_database(path: &std::path::Path) -> Result<LiveDb> {
    check_database(path)?;
    let mut live = LiveDb::open(path)?;
    live.begin_read()?;
    Ok(live)
}

/// Running SQLite units: each database's capture thread, uploader, lease keeper and
/// periodic tasks.
pub struct Units {
    running: Vec<Running>,
    leases: Vec<LeaseTask>,
    spool_locks: Vec<std::fs::File>,
    shutdown: Shutdown,
    unhealthy_after: Duration,
}

/// Check every configured SQLite database, take its spool and replica path (docs/LEASE.md)
/// and start its units. `lost` is told when a lease is lost.
pub async fn start(
    cfg: &Config,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    lost: Arc<tokio::sync::Notify>,
) -> Result<Units> {
    let mut units = Units {
        running: Vec::new(),
        leases: Vec::new(),
        spool_locks: Vec::new(),
        shutdown: shutdown.clone(),
        unhealthy_after: cfg.unhealthy_after,
    };
    if cfg.dbs.is_empty() {
        return Ok(units); // a config of PostgreSQL clusters only
    }
    let opened = preflight(cfg).await?;
    // One writer per database and per replica path (docs/LEASE.md): the spool directory
    // is locked for this process, then the path's lease is taken.
    let mut problems = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for db in &cfg.dbs {
        let key = db.path.canonicalize().unwrap_or_else(|_| db.path.clone());
        if let Some(first) = seen.insert(key, db.path.clone()) {
            problems.push(format!(
                "database {} is listed twice (also as {}): one entry per database",
                db.path.display(),
                first.display()
            ));
        }
    }
    refuse_if_any(problems)?;
    for db in &cfg.dbs {
        units
            .spool_locks
            .push(lock_spool(&db.spool_dir, cfg.lease_wait).await?);
    }
    let settings = lease::Settings {
        ttl: cfg.lease_ttl,
        wait: cfg.lease_wait,
    };
    let mut held = Vec::new();
    for (db, (_, replica, more)) in cfg.dbs.iter().zip(&opened) {
        let me = lease::Holder {
            host: lease::hostname(),
            pid: std::process::id(),
            database: absolute(&db.path),
            spool: absolute(&db.spool_dir),
            generation: None,
        };
        let first = lease::acquire(replica, me.clone(), &settings, now_ms).await?;
        let mut others = Vec::new();
        for r in more {
            others.push(lease::acquire(r, me.clone(), &settings, now_ms).await?);
        }
        held.push((first, others));
    }
    for ((db, (live, replica, more)), (h, hm)) in cfg.dbs.iter().zip(opened).zip(held) {
        let names = db.more_replicas.iter().map(|c| c.name());
        let more: Vec<_> = names
            .zip(more)
            .zip(hm)
            .map(|((n, r), h)| (n, r, h))
            .collect();
        let (r, l) = start_db(
            db,
            live,
            (replica, more),
            metrics.clone(),
            shutdown.clone(),
            (h, &settings, lost.clone()),
            cfg.force_new_history,
        )
        .await?;
        units.running.push(r);
        units.leases.extend(l);
    }
    Ok(units)
}

impl Units {
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn health(&self) -> Arc<dyn Health> {
        Arc::new(HealthView {
            dbs: self.running.iter().map(|r| r.state.clone()).collect(),
            names: self
                .running
                .iter()
                .map(|r| r.replica_name.clone())
                .collect(),
            unhealthy_after: self.unhealthy_after,
            progress: self.running.iter().map(|_| Default::default()).collect(),
        })
    }

    /// Once shutdown has begun: stop each capture, let its uploader ship what is spooled
    /// until the shared deadline, then give the paths up.
    pub async fn finish(mut self) -> Result<Outcome> {
        let deadline = self.shutdown.begun().await;
        let mut left = 0;
        let mut incomplete = Vec::new();
        for r in self.running {
            r.stop.store(true, Ordering::Release);
            let _ = tokio::task::spawn_blocking(move || r.capture.join()).await;
            left += r.uploader.await.unwrap_or(0);
            for u in r.mirror_uploaders {
                left += u.await.unwrap_or(0);
            }
            // A replica that lost its line holds less than the others: not "all shipped".
            for m in r.state.mirrors().iter().filter(|m| m.is_behind()) {
                incomplete.push(format!("{} (replica {})", r.state.label, m.name));
            }
            if r.state.primary_behind() {
                incomplete.push(format!("{} (replica {})", r.state.label, r.replica_name));
            }
            if r.state.incomplete.load(Ordering::Acquire) {
                incomplete.push(r.state.label.clone());
            }
        }
        // Everything is shipped (or left in the spool): give the paths up for the next
        // holder.
        let mut lost_why = Vec::new();
        for l in self.leases {
            if let Some(Err(why)) = end_lease_task(l.stop, l.task, deadline).await {
                lost_why.push(why);
            }
        }
        drop(self.spool_locks);
        if !lost_why.is_empty() {
            return Err(Error::Refused(format!(
                "{}; nothing more was written there, and what was not shipped stays in the \
                 spool",
                lost_why.join("; ")
            )));
        }
        Ok(Outcome {
            left_behind: left,
            incomplete,
        })
    }
}

async fn start_db(
    db: &DbConfig,
    live: LiveDb,
    (replica, more): (Arc<Replica>, Vec<lanes::More>),
    metrics: Arc<Metrics>,
    stop: Shutdown,
    (held, settings, lost): (lease::Held, &lease::Settings, Arc<tokio::sync::Notify>),
    force_new_history: bool,
) -> Result<(Running, Vec<LeaseTask>)> {
    let label = db.path.display().to_string();
    let lock_after = crate::clock::process_start().elapsed();
    metrics
        .read_lock_after_start
        .get_or_create(&DbLabel { db: label.clone() })
        .set(lock_after.as_secs_f64());
    let state = Arc::new(DbState::new(
        label,
        db.spool_limit,
        metrics,
        replica.counts.clone(),
    ));
    state.lease.lock().unwrap().good = Some((held.good_at, settings.ttl));
    match &held.taken {
        lease::Taken::Free => {}
        lease::Taken::Own => tracing::info!(db = %state.label, replica = %replica.url(),
            "took over the lease this spool's earlier walship left (it is no longer running)"),
        lease::Taken::Expired(who) => {
            tracing::warn!(db = %state.label, replica = %replica.url(),
                "took over an expired lease from {who}");
        }
    }
    let (mut journal, journaled) = journal::Journal::open(&db.spool_dir, db.journal_fsync)?;
    let (spool, mut leftovers) = Spool::open(&db.spool_dir)?;
    let spool = Arc::new(spool.with_fsync(db.journal_fsync));
    let gens = list_generations(&replica).await?;
    let mut resume = find_resume_point(&replica, &gens, &leftovers).await?;
    // What a killed run had read but not cut yet: the same generation's next segment.
    if let Some(rp) = resume.as_mut()
        && let Some((entry, after)) = journal::recover(&journaled, rp, &spool)?
    {
        leftovers.push(entry);
        *rp = after;
    }
    // How long the killed run saw that state last, if it is the state it ends with.
    if let Some(rp) = resume.as_mut()
        && let Some(w) = &journal.left_watched
        && (&w.generation, w.txid) == (&rp.generation, rp.txid)
    {
        rp.watched_until_ms = Some(w.ms.max(rp.last_commit_ms));
    }
    let left_in_spool = leftovers.clone();
    for e in leftovers {
        state.push(Job::Segment(e));
    }
    // Recovered into the spool, already there, or of a generation that cannot go on.
    journal
        .clear(state.spool_room())
        .map_err(|e| Error::io(journal.path(), e))?;
    // Is this the database whose history the path holds (docs/LEASE.md)?
    let on_path = path_history(&replica, &gens).await?;
    let local = history::read_local(&db.path, &db.spool_dir)?;
    // The WAL's proof is read only when the id alone cannot decide (capture reads it
    // again to resume; this is the rare case).
    let needs_proof = local.is_none() && on_path.as_ref().is_some_and(|p| p.history.is_some());
    let continues = match resume.as_ref() {
        Some(rp) if needs_proof && live.is_reading() => !matches!(
            capture::continuity(&live.files(), rp).map_err(|e| Error::io(&db.path, e))?,
            capture::Continuity::No
        ),
        _ => false,
    };
    let decision = history::decide(
        &state.label,
        &db.spool_dir,
        local,
        on_path.as_ref(),
        continues,
        force_new_history,
    );
    let (history_id, new_history) = match decision {
        history::Decision::Continue { id, .. } => {
            history::keep(&db.path, &db.spool_dir, &id)?;
            (id, false)
        }
        history::Decision::NewHistory(id) => {
            let p = on_path.as_ref().expect("a history to leave");
            tracing::warn!(db = %state.label, history = %id,
                "--force-new-history: starting a new history on a path that holds {}'s (history {}, generation {})",
                p.database, p.history.as_ref().map(|h| h.to_string()).unwrap_or_default(), p.generation);
            history::keep(&db.path, &db.spool_dir, &id)?;
            resume = None;
            (id, true)
        }
        history::Decision::Refuse(why) => {
            if let Err(e) = lease::release(&replica, &held).await {
                tracing::warn!(db = %state.label, "could not release the lease: {e}; it expires by itself");
            }
            return Err(Error::Refused(format!("{}: {why}", replica.url())));
        }
    };
    // Another walship's lease expired: it may be paused, not dead, and still write to its
    // generation. A new generation keeps whatever it writes out of this one's history.
    let fenced_from = match (&held.taken, resume.as_ref().filter(|_| !new_history)) {
        (lease::Taken::Expired(who), Some(rp)) => Some((rp.generation.clone(), who.clone())),
        _ => None,
    };
    if fenced_from.is_some() {
        resume = None;
    }
    // The other replicas join before capture queues anything.
    let mirrors = lanes::open(db, &state, more, resume.as_ref(), left_in_spool).await?;
    let mut capture = Capture::new(
        live,
        state.clone(),
        spool.clone(),
        journal,
        CaptureSettings {
            sync_interval: db.sync_interval,
            spool_limit: db.spool_limit,
            min_checkpoint_pages: db.min_checkpoint_pages,
            snapshot_interval: db.snapshot_interval,
            snapshot_wal_ratio: db.snapshot_wal_ratio,
        },
    );
    capture.set_history(history_id);
    if new_history {
        capture.begin_new_history("a new history (--force-new-history)".into());
    }
    if let Some((parent, who)) = fenced_from {
        capture.begin_after(
            parent,
            format!(
                "took over the replica path from {who}, whose lease expired: a new generation, \
                     so that nothing that walship may still write is taken for this one's history"
            ),
        );
    }
    let stop_capture = Arc::new(AtomicBool::new(false));
    let flag = stop_capture.clone();
    let capture = std::thread::Builder::new()
        .name("walship-capture".into())
        .spawn(move || capture.run(flag, resume))
        .map_err(|e| Error::io(&db.path, e))?;
    if let Some(policy) = db.retention_policy() {
        let (state, replica, shutdown) = (state.clone(), replica.clone(), stop.clone());
        let every = db.retention_check_interval;
        tokio::spawn(async move {
            let live = || match state.may_write() {
                // Not while the lease is in doubt or lost.
                state::MayWrite::Yes => Round::Protect(state.generation.lock().unwrap().clone()),
                _ => Round::Skip,
            };
            let m = (&*state.metrics, state.label.as_str());
            crate::sidecar::retention::every(&replica, &policy, every, m, live, shutdown).await
        });
    }
    let replica_for_lease = replica.clone();
    let (mirror_leases, mirror_uploaders) =
        lanes::spawn(db, &state, &replica, mirrors, settings, (&stop, &lost));
    let uploader = tokio::spawn(upload::run(state.clone(), replica, spool, stop));
    if let Some(every) = db.validation_interval {
        spawn_validator(db, state.metrics.clone(), stop_capture.clone(), every)?;
    }
    let (lease_stop, lease_end) = crate::shutdown::signal();
    let task = tokio::spawn(lease_loop(
        replica_for_lease,
        held,
        settings.renew_every(),
        settings.ttl,
        state.clone(),
        lease_end,
        lost,
    ));
    Ok((
        Running {
            state,
            stop: stop_capture,
            capture,
            uploader,
            mirror_uploaders,
            replica_name: db.replica.name(),
        },
        std::iter::once(LeaseTask {
            stop: lease_stop,
            task,
        })
        .chain(mirror_leases)
        .collect(),
    ))
}
