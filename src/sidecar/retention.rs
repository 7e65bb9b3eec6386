//! The one retention loop of both engines' sidecars: every interval, `retention::apply` to
//! a replica with the generation being written protected, the result logged and counted.
//! The engine says which generation is live (and whether to skip a round); this module
//! never names an engine.

use crate::clock::now_ms;
use crate::metrics::{DbLabel, KindLabel, Metrics};
use crate::retention::Policy;
use crate::shutdown::Shutdown;
use crate::storage::Replica;
use crate::storage::layout::GenerationId;
use std::time::Duration;

/// What the engine says before each round.
pub enum Round {
    /// Run, protecting this generation (`None`: the path's own record decides).
    Protect(Option<GenerationId>),
    /// Not now (the SQLite lease is in doubt or lost).
    Skip,
}

/// Every `every` until shutdown begins: ask `live` what to protect, then run one round.
pub async fn every(
    replica: &Replica,
    policy: &Policy,
    every: Duration,
    (metrics, db): (&Metrics, &str),
    live: impl Fn() -> Round,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.begun() => return,
        }
        if let Round::Protect(g) = live() {
            round(replica, policy, g.as_ref(), metrics, db).await;
        }
    }
}

/// One retention run; the result goes to the log and metrics, a failure is retried at the
/// next interval.
pub async fn round(
    replica: &Replica,
    policy: &Policy,
    live: Option<&GenerationId>,
    metrics: &Metrics,
    db: &str,
) {
    // Events keep the target they had in `replicate`: log filters read as before.
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
            let label = DbLabel { db: db.into() };
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
