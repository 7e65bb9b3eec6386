//! The PostgreSQL clusters of a config as units under the supervisor: started together
//! (checks, the path's hold, the lease keeper, the sidecar loop), seen through one health
//! view, and finished within the shared shutdown deadline. Never touches SQLite units.

use super::*;
use crate::shutdown::Shutdown;
use crate::sidecar::holding::LeaseTask;

/// Running PostgreSQL units.
pub struct PgUnits {
    states: Vec<Arc<PgState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    leases: Vec<LeaseTask>,
    locks: Vec<std::fs::File>,
    shutdown: Shutdown,
}

/// Check every cluster, take each path (spool lock, cluster identity, lease) and start its
/// lease keeper and sidecar loop. `lost` is told when a lease is lost.
pub async fn start(
    dbs: Vec<DbConfig>,
    settings: &lease::Settings,
    force_new_history: bool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    lost: Arc<tokio::sync::Notify>,
) -> Result<PgUnits> {
    let checked = preflight(&dbs).await?;
    let mut taken = Vec::new();
    for (db, (replica, sysid)) in dbs.iter().zip(&checked) {
        taken.push(take_path(db, replica, settings, force_new_history, *sysid).await?);
    }
    let mut u = PgUnits {
        states: Vec::new(),
        tasks: Vec::new(),
        leases: Vec::new(),
        locks: Vec::new(),
        shutdown: shutdown.clone(),
    };
    for ((db, (replica, sysid)), (lock, held)) in dbs.into_iter().zip(checked).zip(taken) {
        let state = Arc::new(PgState {
            label: db.path.display().to_string(),
            ..Default::default()
        });
        u.states.push(state.clone());
        u.locks.push(lock);
        let (lease_stop, lease_end) = crate::shutdown::signal();
        u.leases.push(LeaseTask {
            stop: lease_stop,
            task: tokio::spawn(lease_loop(
                replica.clone(),
                (held, settings.renew_every()),
                metrics.clone(),
                state.clone(),
                lease_end,
                lost.clone(),
            )),
        });
        tracing::info!(target: "walship::cli::replicate", pgdata = %db.path.display(), replica = replica.url(),
            mode = if db.stream_slot.is_some() { "stream" } else { "archive" }, "PostgreSQL sidecar");
        if db.stream_slot.is_some() {
            let s = crate::postgres::stream::Stream {
                db: db.clone(),
                replica: replica.clone(),
                metrics: metrics.clone(),
                state: state.clone(),
                generation: generation_of(sysid),
                system_identifier: sysid,
            };
            u.tasks.push(tokio::spawn(s.run(shutdown.clone())));
        }
        // Base backups and retention (and archive mode's look-ahead archiving) read PGDATA.
        if db.stream_slot.is_none() || system_identifier(&db.path).is_ok() {
            u.tasks.push(tokio::spawn(run(
                db,
                replica,
                metrics.clone(),
                state,
                shutdown.clone(),
            )));
        }
    }
    Ok(u)
}

impl PgUnits {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn health(&self, unhealthy_after: Duration) -> Arc<dyn crate::metrics::Health> {
        Arc::new(PgHealth {
            dbs: self.states.clone(),
            unhealthy_after,
        })
    }

    /// Once shutdown has begun: wait for each sidecar loop (it ships what Postgres marked
    /// ready) until the shared deadline, then give the paths up. Errs when a lease was
    /// lost, naming why.
    pub async fn finish(mut self) -> Result<()> {
        let until = self.shutdown.begun().await;
        let deadline = tokio::time::sleep_until(until.into());
        tokio::pin!(deadline);
        for t in std::mem::take(&mut self.tasks) {
            tokio::select! {
                _ = t => {}
                _ = &mut deadline => {
                    tracing::warn!(target: "walship::cli::replicate", "PostgreSQL sidecar: shutdown deadline passed; wal-push archives the rest");
                    break;
                }
            }
        }
        // Shipped what it could: the paths are given up for the next holder.
        let mut lost_why = Vec::new();
        for l in std::mem::take(&mut self.leases) {
            if let Some(Err(why)) =
                crate::sidecar::holding::end_lease_task(l.stop, l.task, until).await
            {
                lost_why.push(why);
            }
        }
        self.locks.clear();
        if !lost_why.is_empty() {
            return Err(Error::Refused(format!(
                "{}; the sidecar wrote nothing more there (wal-push still archives each file \
                 once, never overwriting)",
                lost_why.join("; ")
            )));
        }
        Ok(())
    }
}

/// `/healthz` over a config's PostgreSQL clusters: unhealthy when a lease was lost, or a
/// sidecar has been failing (archiving or backups) for longer than `unhealthy-after`.
struct PgHealth {
    dbs: Vec<Arc<PgState>>,
    unhealthy_after: Duration,
}

impl crate::metrics::Health for PgHealth {
    fn refresh(&self) {}

    fn healthy(&self) -> std::result::Result<(), String> {
        if let Some(why) = self
            .dbs
            .iter()
            .find_map(|s| s.lease_lost.lock().unwrap().clone())
        {
            return Err(why);
        }
        crate::metrics::failing_too_long(
            self.dbs
                .iter()
                .map(|s| (s.label.as_str(), s.failing_since_ms())),
            self.unhealthy_after,
            "failing",
        )
    }
}
