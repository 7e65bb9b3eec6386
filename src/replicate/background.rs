//! The SQLite sidecar's validator beside capture: it restores samples and checks them
//! (retention runs in `sidecar::retention`, shared with PostgreSQL). Never writes the
//! spool.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

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
                    crate::verify::verify(&replica, None, &dir, 4, None).await
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
