//! Holding a replica path for either engine's sidecar: the spool directory's lock (one
//! walship per spool on a host), the lease kept renewed with the engine's hooks, and its
//! end within the shutdown deadline (docs/LEASE.md). Never reads a database or the spool's
//! contents.

// Events keep the target they had in `replicate`, where this was first written: log
// lines and filters read as before.

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::metrics::DbLabel;
use crate::storage::{Replica, lease};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// A lease kept renewed by its task until `stop`; the task releases it then, or returns
/// why it was lost.
pub struct LeaseTask {
    pub stop: crate::shutdown::Begin,
    pub task: tokio::task::JoinHandle<std::result::Result<(), String>>,
}

/// Stop a lease task (it releases the lease) and wait for it until `deadline`, but at
/// least a moment: a stalled store must not stretch shutdown past `shutdown-timeout` (a
/// lease not released expires by itself). `None`: given up on.
pub async fn end_lease_task(
    stop: crate::shutdown::Begin,
    task: tokio::task::JoinHandle<std::result::Result<(), String>>,
    deadline: Instant,
) -> Option<std::result::Result<(), String>> {
    stop.begin(deadline);
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let abort = task.abort_handle();
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(_)) => None,
        Err(_) => {
            abort.abort();
            tracing::warn!(target: "walship::replicate",
                "the lease was not released before the shutdown deadline; it expires by itself"
            );
            None
        }
    }
}

/// The path as the lease names it: absolute, so that the same place is the same name.
pub fn absolute(p: &std::path::Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// What keeping a lease does beside renewing it, for either engine: the generation to
/// name in it, what a renewal proves, and how to fence on loss.
pub struct Keeping<G, R, F> {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub label: String,
    /// The generation written now (cleanup elsewhere keeps it), if it is known.
    pub generation: G,
    /// Called after each renewal that the store answered.
    pub renewed: R,
    /// Called once with the reason when the lease is lost.
    pub fence: F,
}

/// Renew the lease every `every` until `stop` (then release it); on loss, fence (the
/// uploader or sidecar stops writing there), tell the caller through `lost` and return
/// why.
pub async fn keep_lease<G, R, F>(
    replica: Arc<Replica>,
    (mut held, every): (lease::Held, Duration),
    k: Keeping<G, R, F>,
    mut stop: crate::shutdown::Shutdown,
    lost: Arc<tokio::sync::Notify>,
) -> std::result::Result<(), String>
where
    G: Fn() -> Option<String>,
    R: Fn(&lease::Held),
    F: Fn(&str),
{
    let label = DbLabel {
        db: k.label.clone(),
    };
    k.metrics.lease_held.get_or_create(&label).set(1);
    if matches!(held.taken, lease::Taken::Expired(_)) {
        k.metrics.lease_takeovers.get_or_create(&label).inc();
    }
    let renewal = |kind: &str| {
        k.metrics
            .lease_renewals
            .get_or_create(&crate::metrics::KindLabel {
                db: k.label.clone(),
                kind: kind.into(),
            })
            .inc();
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.begun() => {
                if let Err(e) = lease::release(&replica, &held).await {
                    tracing::warn!(target: "walship::replicate", db = %k.label, "could not release the lease: {e}; it expires by itself");
                }
                return Ok(());
            }
        }
        held.body.holder.generation = (k.generation)().or(held.body.holder.generation.take());
        let why = match lease::renew(&replica, &mut held, now_ms()).await {
            Ok(()) => {
                renewal("ok");
                (k.renewed)(&held);
                continue;
            }
            Err(lease::RenewError::Store(e)) => {
                // An unreachable store ends no lease: writes wait at the gate (two thirds
                // of the TTL after the last renewal) until a renewal answers, and that
                // compare-and-swap tells whether someone took the path meanwhile.
                renewal("failed");
                tracing::warn!(target: "walship::replicate", db = %k.label, "lease renewal failed: {e}; retrying");
                continue;
            }
            Err(lease::RenewError::Lost(who)) => {
                format!("the lease of replica {} was lost: {who}", replica.url())
            }
        };
        tracing::error!(target: "walship::replicate", db = %k.label, epoch = %held.body.epoch,
            "{why}: this walship stops writing there; what it has not shipped stays in its spool");
        k.metrics.lease_held.get_or_create(&label).set(0);
        k.metrics.error(&k.label, "lease_lost");
        (k.fence)(&why);
        lost.notify_one();
        return Err(why);
    }
}

/// Lock `dir` (created if missing) for this process: a second walship on this host with
/// the same spool directory is refused by name, and a lease left by an earlier process of
/// this spool is known to be that dead process's.
/// With `wait` (`--lease-wait`) it waits that long for the other to exit: a rolling
/// deploy's two pods on one node share the volume, and so the spool.
pub async fn lock_spool(dir: &std::path::Path, wait: Option<Duration>) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("walship.lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let until = wait.map(|w| Instant::now() + w);
    let mut said = false;
    // SAFETY: a valid open descriptor; the lock lasts while `f` is open.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if until.is_some_and(|u| Instant::now() < u) {
            if !said {
                tracing::info!(target: "walship::replicate", spool = %dir.display(),
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
