//! The SQLite sidecar's hold on its replica path: the lease named with the generation
//! capture writes, renewed through `sidecar::holding` and fenced on loss (docs/LEASE.md).
//! Never reads the database.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

/// The SQLite sidecar's lease: named with the generation capture writes; a renewal opens
/// the write gate for another TTL; a loss fences the uploader, even mid-upload.
pub(super) async fn lease_loop(
    replica: Arc<Replica>,
    held: lease::Held,
    every: Duration,
    ttl: Duration,
    state: Arc<DbState>,
    stop: crate::shutdown::Shutdown,
    lost: Arc<tokio::sync::Notify>,
) -> std::result::Result<(), String> {
    let k = crate::sidecar::holding::Keeping {
        metrics: state.metrics.clone(),
        label: state.label.clone(),
        generation: || {
            state
                .generation
                .lock()
                .unwrap()
                .as_ref()
                .map(|g| g.to_string())
        },
        renewed: |h: &lease::Held| state.lease.lock().unwrap().good = Some((h.good_at, ttl)),
        fence: |why: &str| {
            state.lease.lock().unwrap().lost = Some(why.to_string());
            state.lease_lost.notify_one();
        },
    };
    crate::sidecar::holding::keep_lease(replica, (held, every), k, stop, lost).await
}
