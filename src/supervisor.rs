//! The one supervisor of `walship replicate`: every unit of a config (SQLite capture and
//! upload, PostgreSQL archiving and backups, each with its lease, retention and
//! validation) started under one shutdown signal with one deadline, seen through one
//! health view, and the metrics endpoint. Owns ordering and the final verdict; never
//! touches a database, the spool or the store itself.

use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::metrics::{AllOf, Health, Metrics};
use crate::shutdown;
use std::sync::Arc;
use std::time::Instant;

/// Bind the metrics address first (an address that cannot be bound is a start-up error),
/// then `announce` (the demo's banner), start every unit, call `until` (which may start
/// the application: everything replicates by then) and run until its future resolves or a
/// lease is lost; then stop every unit within one `shutdown-timeout`.
pub async fn run<F: std::future::Future<Output = ()>>(
    mut cfg: Config,
    announce: impl FnOnce(),
    until: impl FnOnce() -> Result<F>,
) -> Result<()> {
    let listener = match cfg.metrics_addr {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    announce();
    let (pg, sqlite): (Vec<_>, Vec<_>) = cfg
        .dbs
        .drain(..)
        .partition(|d| d.kind == config::DbKind::Postgres);
    if pg.is_empty() && sqlite.is_empty() {
        return Err(Error::Config(
            "no databases to replicate: give DB_PATH REPLICA_URL or a config with `dbs`".into(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let (begin, shutdown) = shutdown::signal();
    let lost = Arc::new(tokio::sync::Notify::new());
    let settings = crate::storage::lease::Settings {
        ttl: cfg.lease_ttl,
        wait: cfg.lease_wait,
    };
    // PostgreSQL clusters first: their checks name a missing data directory before any
    // SQLite database's lease is taken.
    let pg_units = crate::postgres::sidecar::start(
        pg,
        &settings,
        cfg.force_new_history,
        metrics.clone(),
        shutdown.clone(),
        lost.clone(),
    )
    .await?;
    cfg.dbs = sqlite;
    let sqlite_units =
        crate::replicate::start(&cfg, metrics.clone(), shutdown.clone(), lost.clone()).await?;

    // One health view over both engines: unhealthy when either is.
    let mut views: Vec<Arc<dyn Health>> = Vec::new();
    if !sqlite_units.is_empty() {
        views.push(sqlite_units.health());
    }
    if !pg_units.is_empty() {
        views.push(pg_units.health(cfg.unhealthy_after));
    }
    let (end_http, http) = shutdown::signal();
    if let Some(listener) = listener {
        crate::metrics::spawn_endpoint(listener, metrics.clone(), Arc::new(AllOf(views)), http);
    }

    let mut failed = None;
    match until() {
        Ok(signal) => tokio::select! {
            _ = signal => tracing::info!(target: "walship::replicate", "shutting down: shipping what is committed"),
            _ = lost.notified() => tracing::error!(target: "walship::replicate", "shutting down: a replica path's lease was lost"),
        },
        Err(e) => failed = Some(e),
    }
    begin.begin(Instant::now() + cfg.shutdown_timeout);
    // Both engines drain at once, against the one deadline.
    let (sqlite_done, pg_done) = tokio::join!(sqlite_units.finish(), pg_units.finish());
    end_http.begin(Instant::now());
    if let Some(e) = failed {
        return Err(e);
    }
    let only_pg = cfg.dbs.is_empty();
    let outcome = match (sqlite_done, pg_done) {
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        (Ok(o), Ok(())) => o,
    };
    if only_pg {
        tracing::info!(target: "walship::cli::replicate", "PostgreSQL sidecar stopped");
        return Ok(());
    }
    if !outcome.incomplete.is_empty() {
        return Err(Error::Replica {
            replica: outcome.incomplete.join(", "),
            reason: "the newest transactions could not be shipped there (no generation could \
                     be started: the replica was unreachable; or, for another replica, it \
                     waits for a snapshot to start again from); walship takes one at its next \
                     run"
            .into(),
        });
    }
    if outcome.left_behind > 0 {
        return Err(Error::Replica {
            replica: "spool".into(),
            reason: format!(
                "{} object(s) were not uploaded before the shutdown deadline; they stay in the \
                 spool and are uploaded at the next start",
                outcome.left_behind
            ),
        });
    }
    tracing::info!(target: "walship::cli::replicate", "everything committed was shipped");
    Ok(())
}
