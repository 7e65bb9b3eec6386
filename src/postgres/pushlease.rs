//! The replica path's lease as `wal-push` honours it. `wal-push` does not take the lease:
//! PostgreSQL runs one per WAL file, and a lease left by each would hold a restored and
//! promoted cluster (same system identifier, new timeline) off the path for two TTLs after
//! its predecessor died. It refuses to write while another place's walship (host and
//! spool) holds a current lease, and makes no request for it when the sidecar on its own
//! spool runs (that sidecar's lock on `<spool>/walship.lock` shows it alive) or when it
//! looked within the last third of a TTL. Knows nothing of WAL contents or `cluster.json`
//! (docs/LEASE.md, "PostgreSQL").

use crate::error::{Error, Result};
use crate::storage::layout::GenerationId;
use crate::storage::{Replica, lease};
use std::path::Path;
use std::time::Duration;

/// Whether a walship sidecar holds this spool (its lock file is locked by a live process).
pub fn sidecar_holds(spool: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(spool.join("walship.lock")) else {
        return false;
    };
    // SAFETY: a valid open descriptor; a shared lock taken here is dropped with `f`.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

fn note(spool: &Path) -> std::path::PathBuf {
    spool.join("lease-checked")
}

/// Refuse (`Error::Refused`, naming the holder) while another place holds a current lease
/// on the path; otherwise go on.
pub async fn cover(
    replica: &Replica,
    pgdata: &Path,
    spool: &Path,
    generation: &GenerationId,
    ttl: Duration,
) -> Result<()> {
    if sidecar_holds(spool) {
        return Ok(());
    }
    let every = lease::Settings { ttl, wait: None }.renew_every();
    let recent = std::fs::metadata(note(spool))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < every));
    if recent {
        return Ok(());
    }
    let me = lease::Holder {
        host: crate::storage::lease::hostname(),
        pid: std::process::id(),
        database: crate::sidecar::holding::absolute(pgdata),
        spool: crate::sidecar::holding::absolute(spool),
        generation: Some(generation.to_string()),
    };
    let now = crate::clock::now_ms();
    if let Some(l) = lease::read(replica).await?
        && !l.holder.same_place(&me)
        && now.saturating_sub(l.renewed_ms) <= l.ttl_ms
    {
        return Err(Error::Refused(format!(
            "replica {} is being written by another walship: {}. Only one writer per replica \
             path: wal-push archives here once that one stops (its lease lapses {} s after \
             its last renewal)",
            replica.url(),
            l.describe(now),
            l.ttl_ms / 1000
        )));
    }
    let _ = std::fs::create_dir_all(spool);
    let _ = std::fs::write(note(spool), b"");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, ReplicaConfig};

    #[tokio::test]
    async fn wal_push_is_refused_while_another_place_holds_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(
            &ReplicaConfig::from_location(Location::File {
                dir: dir.path().join("replica"),
            }),
            true,
        )
        .unwrap();
        let (spool, other) = (dir.path().join("spool"), dir.path().join("other"));
        let g = GenerationId::new(1_700_000_000_000, 1);
        let ttl = Duration::from_secs(30);
        // Nobody holds it: go on, writing no lease.
        cover(&r, Path::new("/pg"), &spool, &g, ttl).await.unwrap();
        assert!(!dir.path().join("replica/lease.json").exists());
        // A sidecar elsewhere holds it: refused, naming it.
        let held = lease::acquire(
            &r,
            lease::Holder {
                host: "db-2".into(),
                pid: 77,
                database: "/pg".into(),
                spool: other.display().to_string(),
                generation: Some(g.to_string()),
            },
            &lease::Settings { ttl, wait: None },
            crate::clock::now_ms,
        )
        .await
        .unwrap();
        std::fs::remove_file(note(&spool)).unwrap();
        let e = cover(&r, Path::new("/pg"), &spool, &g, ttl)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("pid 77 on host db-2"), "{e}");
        // This spool's own sidecar running: no request, no refusal.
        std::fs::create_dir_all(&spool).unwrap();
        let lock = std::fs::File::create(spool.join("walship.lock")).unwrap();
        {
            use std::os::fd::AsRawFd;
            assert_eq!(
                unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
                0
            );
        }
        // (flock locks belong to open files: another descriptor in this process sees it.)
        assert!(sidecar_holds(&spool));
        cover(&r, Path::new("/pg"), &spool, &g, ttl).await.unwrap();
        drop(lock);
        assert!(!sidecar_holds(&spool));
        // Released: free again.
        lease::release(&r, &held).await.unwrap();
        cover(&r, Path::new("/pg"), &spool, &g, ttl).await.unwrap();
    }
}
