//! Reads that outlast a store's blips: a GET retried with backoff on transient failures.
//! Used by every reader that must not give up on a restore (restore, verify, wal-fetch,
//! pg-restore, the catalog's reads). Never writes.

use super::Replica;
use crate::error::{Error, Result};
use std::time::Duration;

/// Transient failures are retried here too (object_store retries a few times itself),
/// with backoff, so a restore survives a store that blips for tens of seconds.
const GET_ATTEMPTS: u32 = 6;

fn transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            kind: crate::error::StoreErrorKind::Unreachable | crate::error::StoreErrorKind::Other,
            ..
        }
    )
}

/// One GET (or a ranged GET), retried with backoff while the store is unreachable.
pub async fn get_retrying(
    replica: &Replica,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Result<bytes::Bytes> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let r = match &range {
            Some(r) => replica.get_range(key, r.clone()).await,
            None => replica.get(key).await,
        };
        match r {
            Err(e) if transient(&e) && attempt < GET_ATTEMPTS => {
                // Logged under restore's target, where this lived and where log filters expect it.
                tracing::warn!(target: "walship::restore", "{e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            r => return r,
        }
    }
}
