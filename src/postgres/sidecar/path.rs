//! The sidecar's hold on its replica path: the spool lock, the lease (renewed until
//! shutdown, fenced on loss) and the path's cluster (`identity::check`), taken before
//! anything is written. Never archives or backs up.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

/// Take this cluster's spool and the lease of its replica path, then make sure the path
/// is this cluster's (`identity::check`); on refusal the lease is given back at once.
pub async fn take_path(
    db: &DbConfig,
    replica: &Replica,
    settings: &lease::Settings,
    force_new_history: bool,
    sysid: u64,
) -> Result<(std::fs::File, lease::Held)> {
    let lock = crate::sidecar::holding::lock_spool(&db.spool_dir, settings.wait).await?;
    let generation = generation_of(sysid);
    if !force_new_history {
        identity::refuse_other(replica, &db.path, sysid).await?;
    }
    let me = lease::Holder {
        host: crate::storage::lease::hostname(),
        pid: std::process::id(),
        database: crate::sidecar::holding::absolute(&db.path),
        spool: crate::sidecar::holding::absolute(&db.spool_dir),
        generation: Some(generation.to_string()),
    };
    let held = lease::acquire(replica, me, settings, crate::clock::now_ms).await?;
    match &held.taken {
        lease::Taken::Free => {}
        lease::Taken::Own => {
            tracing::info!(target: "walship::postgres::sidecar", pgdata = %db.path.display(), replica = %replica.url(),
            "took over the lease this spool's earlier walship left (it is no longer running)")
        }
        lease::Taken::Expired(who) => {
            tracing::warn!(target: "walship::postgres::sidecar", pgdata = %db.path.display(),
            replica = %replica.url(), "took over an expired lease from {who}")
        }
    }
    if let Err(e) = identity::check(replica, &db.path, sysid, force_new_history).await {
        let _ = lease::release(replica, &held).await;
        return Err(e);
    }
    identity::note_checked(&db.spool_dir, replica, &generation);
    Ok((lock, held))
}

/// The sidecar's lease, named with its cluster's generation; a loss fences the sidecar
/// (`PgState::lease_lost`).
pub async fn lease_loop(
    replica: Arc<Replica>,
    held_every: (lease::Held, Duration),
    metrics: Arc<Metrics>,
    state: Arc<PgState>,
    stop: crate::shutdown::Shutdown,
    lost: Arc<tokio::sync::Notify>,
) -> std::result::Result<(), String> {
    let k = crate::sidecar::holding::Keeping {
        metrics,
        label: state.label.clone(),
        generation: || None,
        renewed: |_: &lease::Held| {},
        fence: |why: &str| *state.lease_lost.lock().unwrap() = Some(why.to_string()),
    };
    crate::sidecar::holding::keep_lease(replica, held_every, k, stop, lost).await
}
