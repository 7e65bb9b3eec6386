//! The sidecar's hold on its replica path: the spool lock, the lease (renewed until
//! shutdown, fenced on loss) and the path's cluster (`identity::check`), taken before
//! anything is written. Never archives or backs up.

use super::*;

/// Take this cluster's spool and the lease of its replica path, then make sure the path
/// is this cluster's (`identity::check`); on refusal the lease is given back at once.
pub async fn take_path(
    db: &DbConfig,
    replica: &Replica,
    settings: &lease::Settings,
    force_new_history: bool,
) -> Result<(std::fs::File, lease::Held)> {
    let lock = crate::replicate::holding::lock_spool(&db.spool_dir, settings.wait).await?;
    let sysid = system_identifier(&db.path)?;
    let generation = generation_of(sysid);
    if !force_new_history {
        identity::refuse_other(replica, &db.path, sysid).await?;
    }
    let me = lease::Holder {
        host: crate::replicate::snapshot::hostname(),
        pid: std::process::id(),
        database: crate::replicate::holding::absolute(&db.path),
        spool: crate::replicate::holding::absolute(&db.spool_dir),
        generation: Some(generation.to_string()),
    };
    let held = lease::acquire(replica, me, settings, crate::clock::now_ms).await?;
    match &held.taken {
        lease::Taken::Free => {}
        lease::Taken::Own => tracing::info!(pgdata = %db.path.display(), replica = %replica.url(),
            "took over the lease this spool's earlier walship left (it is no longer running)"),
        lease::Taken::Expired(who) => tracing::warn!(pgdata = %db.path.display(),
            replica = %replica.url(), "took over an expired lease from {who}"),
    }
    if let Err(e) = identity::check(replica, &db.path, sysid, force_new_history).await {
        let _ = lease::release(replica, &held).await;
        return Err(e);
    }
    identity::note_checked(&db.spool_dir, replica, &generation);
    Ok((lock, held))
}

/// Renew the lease every `every` until `stop` (then release it); on loss, fence the
/// sidecar (`PgState::lease_lost`) and tell the caller through `lost`.
pub async fn lease_loop(
    replica: Arc<Replica>,
    (mut held, every): (lease::Held, Duration),
    metrics: Arc<Metrics>,
    state: Arc<PgState>,
    stop: Arc<tokio::sync::Notify>,
    lost: Arc<tokio::sync::Notify>,
) -> std::result::Result<(), String> {
    let label = DbLabel {
        db: state.label.clone(),
    };
    metrics.lease_held.get_or_create(&label).set(1);
    if matches!(held.taken, lease::Taken::Expired(_)) {
        metrics.lease_takeovers.get_or_create(&label).inc();
    }
    let renewal = |kind: &str| {
        metrics
            .lease_renewals
            .get_or_create(&crate::metrics::KindLabel {
                db: state.label.clone(),
                kind: kind.into(),
            })
            .inc();
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.notified() => {
                if let Err(e) = lease::release(&replica, &held).await {
                    tracing::warn!(db = %state.label, "could not release the lease: {e}; it expires by itself");
                }
                return Ok(());
            }
        }
        match lease::renew(&replica, &mut held, crate::clock::now_ms()).await {
            Ok(()) => renewal("ok"),
            Err(lease::RenewError::Store(e)) => {
                renewal("failed");
                tracing::warn!(db = %state.label, "lease renewal failed: {e}; retrying");
            }
            Err(lease::RenewError::Lost(who)) => {
                let why = format!("the lease of replica {} was lost: {who}", replica.url());
                tracing::error!(db = %state.label, epoch = %held.body.epoch,
                    "{why}: this sidecar stops writing there");
                metrics.lease_held.get_or_create(&label).set(0);
                metrics.error(&state.label, "lease_lost");
                *state.lease_lost.lock().unwrap() = Some(why.clone());
                lost.notify_one();
                return Err(why);
            }
        }
    }
}
