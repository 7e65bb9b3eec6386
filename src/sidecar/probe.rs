//! Start-up checks both engines' sidecars make before they write: the replica reachable
//! and writable, and every problem reported at once. Never writes beyond its probe object.

use crate::error::{Error, Result};
use crate::storage::Replica;
use std::sync::Arc;
use std::time::Duration;

/// Every start-up problem at once, one line each, or nothing.
pub fn refuse_if_any(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "start-up check failed:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Open a replica and prove it reachable and writable (LIST, then a probe object written
/// and deleted); a problem, named, is added to `problems` instead.
pub async fn probe_replica(
    cfg: &crate::config::ReplicaConfig,
    tag: &str,
    problems: &mut Vec<String>,
) -> Option<Arc<Replica>> {
    let r = match Replica::open(cfg, true) {
        Ok(r) => r,
        Err(e) => {
            problems.push(e.to_string());
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), r.check_writable(tag)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(e.to_string()),
        Err(_) => problems.push(format!(
            "replica {}: no answer within 30s (endpoint unreachable, or waiting for \
             credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            r.url()
        )),
    }
    Some(Arc::new(r))
}
