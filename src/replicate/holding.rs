//! Holding a database's place while it is replicated: the spool directory's lock (one
//! walship per spool on a host) and the replica path's lease, renewed until shutdown and
//! released then, or lost and fenced (docs/LEASE.md). Never reads the database.

use super::*;

/// Stop a lease task (it releases the lease) and wait for it until `deadline`, but at
/// least a moment: a stalled store must not stretch shutdown past `shutdown-timeout` (a
/// lease not released expires by itself). `None`: given up on.
pub(crate) async fn end_lease_task(
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<std::result::Result<(), String>>,
    deadline: Instant,
) -> Option<std::result::Result<(), String>> {
    stop.notify_one();
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let abort = task.abort_handle();
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(_)) => None,
        Err(_) => {
            abort.abort();
            tracing::warn!(
                "the lease was not released before the shutdown deadline; it expires by itself"
            );
            None
        }
    }
}

/// The path as the lease names it: absolute, so that the same place is the same name.
pub(crate) fn absolute(p: &std::path::Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// A lease kept renewed by its task until `stop`; the task releases it then, or returns
/// why it was lost.
pub(super) struct LeaseTask {
    pub(super) stop: Arc<tokio::sync::Notify>,
    pub(super) task: tokio::task::JoinHandle<std::result::Result<(), String>>,
}

/// Renew the lease every `renew_every`; on loss, fence this database's writes (the
/// uploader stops, even mid-upload) and tell `run` to shut down.
pub(super) async fn lease_loop(
    replica: Arc<Replica>,
    mut held: lease::Held,
    every: Duration,
    ttl: Duration,
    state: Arc<DbState>,
    stop: Arc<tokio::sync::Notify>,
    lost: Arc<tokio::sync::Notify>,
) -> std::result::Result<(), String> {
    let label = state.db_label();
    state.metrics.lease_held.get_or_create(&label).set(1);
    let renewal = |kind: &str| {
        state
            .metrics
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
        // The lease names the generation written now: cleanup elsewhere keeps it.
        held.body.holder.generation = state
            .generation
            .lock()
            .unwrap()
            .as_ref()
            .map(|g| g.to_string());
        let why = match lease::renew(&replica, &mut held, now_ms()).await {
            Ok(()) => {
                renewal("ok");
                state.lease.lock().unwrap().good = Some((held.good_at, ttl));
                continue;
            }
            Err(lease::RenewError::Store(e)) => {
                // An unreachable store ends no lease: writes wait at the gate (two thirds
                // of the TTL after the last renewal) until a renewal answers, and that
                // compare-and-swap tells whether someone took the path meanwhile.
                renewal("failed");
                tracing::warn!(db = %state.label, "lease renewal failed: {e}; retrying");
                continue;
            }
            Err(lease::RenewError::Lost(who)) => {
                format!("the lease of replica {} was lost: {who}", replica.url())
            }
        };
        tracing::error!(db = %state.label, epoch = %held.body.epoch,
            "{why}: this walship stops writing there; what it has not shipped stays in its spool");
        state.metrics.lease_held.get_or_create(&label).set(0);
        state.metrics.error(&state.label, "lease_lost");
        state.lease.lock().unwrap().lost = Some(why.clone());
        state.lease_lost.notify_one();
        lost.notify_one();
        return Err(why);
    }
}

/// Lock `dir` (created if missing) for this process: a second walship on this host with
/// the same spool directory is refused by name, and a lease left by an earlier process of
/// this spool is known to be that dead process's.
/// With `wait` (`--lease-wait`) it waits that long for the other to exit: a rolling
/// deploy's two pods on one node share the volume, and so the spool.
pub(crate) async fn lock_spool(
    dir: &std::path::Path,
    wait: Option<Duration>,
) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("walship.lock");
    let mut f = journal::open_rw(&path)?;
    let until = wait.map(|w| Instant::now() + w);
    let mut said = false;
    // SAFETY: a valid open descriptor; the lock lasts while `f` is open.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if until.is_some_and(|u| Instant::now() < u) {
            if !said {
                tracing::info!(spool = %dir.display(),
                    "spool directory in use by another walship on this host: waiting for it to exit (--lease-wait)");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(Error::Refused(format!(
            "spool directory {} is in use by another walship on this host (pid {}): one \
                     walship per database",
            dir.display(),
            pid.trim()
        )));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(f)
}
