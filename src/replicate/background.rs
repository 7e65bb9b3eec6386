//! The sidecar's periodic tasks beside capture: retention (`retention::apply` with the live
//! generation protected) and the validator that restores samples. Never writes the spool.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

/// `retention`: every `every`, plan and apply retention to this database's replica with
/// the generation being written protected. Ends when shutdown begins.
pub(super) async fn retention_loop(
    state: Arc<DbState>,
    replica: Arc<Replica>,
    policy: crate::retention::Policy,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<Option<Instant>>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if !matches!(state.may_write(), state::MayWrite::Yes) {
            continue; // not while the lease is in doubt or lost
        }
        let live = state.generation.lock().unwrap().clone();
        retention_round(
            &replica,
            &policy,
            live.as_ref(),
            &state.metrics,
            &state.label,
        )
        .await;
    }
}

/// One retention run of a replicator (SQLite or PostgreSQL); the result goes to the log
/// and metrics, a failure is retried at the next interval.
pub async fn retention_round(
    replica: &Replica,
    policy: &crate::retention::Policy,
    live: Option<&GenerationId>,
    metrics: &Metrics,
    db: &str,
) {
    let result = crate::retention::apply(replica, policy, now_ms(), live, false, None).await;
    let kind = match &result {
        Ok(o) => {
            if o.deleted_objects > 0 {
                tracing::info!(target: "walship::replicate",
                    db,
                    objects = o.deleted_objects,
                    bytes = o.deleted_bytes,
                    "retention deleted what the window no longer needs"
                );
            }
            let label = crate::metrics::DbLabel { db: db.into() };
            metrics
                .retention_deleted_objects
                .get_or_create(&label)
                .inc_by(o.deleted_objects as u64);
            metrics
                .retention_deleted_bytes
                .get_or_create(&label)
                .inc_by(o.deleted_bytes);
            "ok"
        }
        Err(e) => {
            tracing::error!(target: "walship::replicate", db, "retention failed: {e}");
            metrics.error(db, "retention");
            "failed"
        }
    };
    metrics
        .retention_runs
        .get_or_create(&KindLabel {
            db: db.into(),
            kind: kind.into(),
        })
        .inc();
}

/// `validation-interval`: every `every`, run `verify` (restore the newest state into
/// `<spool>/validate`, check it and its generation's objects) on a thread of its own, and
/// publish the result as metrics. The thread ends with capture.
pub(super) fn spawn_validator(
    db: &DbConfig,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> Result<()> {
    let rcfg = db.replica.clone();
    let dir = db.spool_dir.join("validate");
    let label = DbLabel {
        db: db.path.display().to_string(),
    };
    std::thread::Builder::new()
        .name("walship-validate".into())
        .spawn(move || {
            // Restore applies pages with block_in_place, which needs a multi-thread runtime.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(target: "walship::replicate", db = %label.db, "validation disabled: {e}");
                    return;
                }
            };
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Acquire) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_secs(1)));
                    continue;
                }
                next = now + every;
                // A run killed midway leaves its scratch copy: start clean.
                let _ = std::fs::remove_dir_all(&dir);
                let result = rt.block_on(async {
                    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                    let replica = Replica::open(&rcfg, false)?;
                    crate::restore::verify::verify(&replica, None, &dir, 4, None).await
                });
                let _ = std::fs::remove_dir_all(&dir);
                metrics
                    .validation_time
                    .get_or_create(&label)
                    .set(now_ms() as f64 / 1000.0);
                let kind = match &result {
                    Ok(r) => {
                        tracing::info!(target: "walship::replicate", db = %label.db, generation = %r.generation, txid = r.txid,
                            objects = r.objects, seconds = r.seconds, "validation passed");
                        "ok"
                    }
                    Err(e) => {
                        tracing::error!(target: "walship::replicate", db = %label.db, "validation failed: {e}");
                        "failed"
                    }
                };
                metrics
                    .validation_ok
                    .get_or_create(&label)
                    .set(result.is_ok() as i64);
                metrics
                    .validations
                    .get_or_create(&KindLabel {
                        db: label.db.clone(),
                        kind: kind.into(),
                    })
                    .inc();
            }
        })
        .map_err(|e| Error::io(&db.path, e))?;
    Ok(())
}
