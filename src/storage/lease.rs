//! The lease of one replica path: the object `lease.json` naming the one walship that may
//! write there, taken with create-if-absent, renewed by compare-and-swap on its version,
//! released on shutdown. Knows nothing of databases or capture: `replicate` decides what a
//! lost lease stops (docs/LEASE.md).

use super::replica::{Replica, Swap};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub const LEASE_KEY: &str = "lease.json";
/// On a store that ignores conditional writes, how long a lease write is left to settle
/// before it is read back: a second writer's write within it is seen.
const SETTLE: Duration = Duration::from_millis(500);

/// Who holds a lease. The same host and spool directory is the same holder restarted:
/// walship's lock on its spool directory proves the earlier process has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub database: String,
    pub spool: String,
    /// The generation it writes, where that is fixed (a PostgreSQL cluster's): cleanup
    /// elsewhere never deletes it while the lease is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

impl Holder {
    pub fn same_place(&self, o: &Holder) -> bool {
        (&self.host, &self.spool) == (&o.host, &o.spool)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    pub format: u32,
    pub holder: Holder,
    /// Random per taking: objects and logs name the epoch whose holder wrote them.
    pub epoch: String,
    pub since_ms: u64,
    pub renewed_ms: u64,
    pub ttl_ms: u64,
}

impl LeaseBody {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).expect("plain struct"))
    }

    /// "walship pid 12 on host web-1 (database /data/app.db), since T, renewed 3 s ago".
    pub fn describe(&self, now_ms: u64) -> String {
        format!(
            "walship pid {} on host {} (database {}, spool {}), holding since {}, renewed {:.1} s \
             ago",
            self.holder.pid,
            self.holder.host,
            self.holder.database,
            self.holder.spool,
            rfc3339(self.since_ms),
            now_ms.saturating_sub(self.renewed_ms) as f64 / 1000.0
        )
    }
}

/// How a lease was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Nobody held it (or its holder released it).
    Free,
    /// This holder's own, left by an earlier process of it (a crash or a kill).
    Own,
    /// Another holder's, expired: its description. That holder may still be alive (paused),
    /// so what it might still write must not be taken for the new holder's history.
    Expired(String),
}

pub struct Held {
    pub body: LeaseBody,
    version: String,
    pub taken: Taken,
    /// When the lease was last known good (taken or renewed): it is valid until `ttl` after.
    pub good_at: Instant,
}

pub struct Settings {
    pub ttl: Duration,
    /// How long to wait for another holder to release or expire; `None`: refuse at once.
    pub wait: Option<Duration>,
}

impl Settings {
    /// Renewals come this often: three per expiry, so a failed request is retried twice
    /// before anyone may take the path over, at one PUT per 10 s by default (the one
    /// request an idle walship makes).
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }
}

fn parse(b: &[u8]) -> Option<LeaseBody> {
    serde_json::from_slice::<LeaseBody>(b)
        .ok()
        .filter(|l| l.format == 1)
}

/// Take the lease of `replica` for `me`, waiting per `s.wait` for another holder to
/// release it or let it expire. Expiry is judged on this process's own clock: a lease is
/// expired once its version has stayed unchanged for `ttl` while watched (or its renewal
/// stamp is more than twice `ttl` old, for a holder long gone), so clock skew between
/// hosts cannot shorten it.
pub async fn acquire(
    replica: &Replica,
    me: Holder,
    s: &Settings,
    now_ms: impl Fn() -> u64,
) -> Result<Held> {
    let started = Instant::now();
    let epoch = format!("{:016x}", random_u64());
    let mut watched: Option<(String, Instant)> = None;
    let mut announced = false;
    loop {
        let current = replica.get_versioned(LEASE_KEY).await?;
        let now = now_ms();
        let body = |since_ms| LeaseBody {
            format: 1,
            holder: me.clone(),
            epoch: epoch.clone(),
            since_ms,
            renewed_ms: now,
            ttl_ms: s.ttl.as_millis() as u64,
        };
        let (expect, taken) = match &current {
            None => (None, Taken::Free),
            Some((bytes, version)) => match parse(bytes) {
                // Not a lease this walship understands: never overwritten silently.
                None => {
                    return Err(Error::Refused(format!(
                        "replica {}: {LEASE_KEY} is not a walship lease this version reads; \
                         remove it only if no other writer uses this path",
                        replica.url()
                    )));
                }
                Some(l) if l.holder.same_place(&me) => (Some(version.clone()), Taken::Own),
                Some(l) => {
                    let seen_for = match &watched {
                        Some((v, since)) if v == version => since.elapsed(),
                        _ => {
                            watched = Some((version.clone(), Instant::now()));
                            Duration::ZERO
                        }
                    };
                    let ttl = Duration::from_millis(l.ttl_ms);
                    let long_gone = now.saturating_sub(l.renewed_ms) > l.ttl_ms.saturating_mul(2);
                    if seen_for >= ttl || long_gone {
                        (Some(version.clone()), Taken::Expired(l.describe(now)))
                    } else {
                        let waited = started.elapsed();
                        match s.wait {
                            Some(w) if waited < w => {
                                if !announced {
                                    tracing::info!(replica = %replica.url(), holder = %l.describe(now),
                                        "waiting for the lease of this replica path (lease-wait {})",
                                        humantime::format_duration(w));
                                    announced = true;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                            _ => {
                                return Err(Error::Refused(format!(
                                    "replica {} is being written by another walship: {}. Only \
                                     one writer per replica path; stop that one, or give \
                                     --lease-wait DURATION (lease-wait in the config) to wait \
                                     for it to release the path{}",
                                    replica.url(),
                                    l.describe(now),
                                    match s.wait {
                                        Some(w) =>
                                            format!(" (waited {})", humantime::format_duration(w)),
                                        None => String::new(),
                                    }
                                )));
                            }
                        }
                    }
                }
            },
        };
        let since = match (&taken, &current) {
            (Taken::Own, Some((b, _))) => parse(b).map_or(now, |l| l.since_ms),
            _ => now,
        };
        let new = body(since);
        match replica
            .put_versioned(LEASE_KEY, new.encode(), expect.as_deref(), SETTLE)
            .await?
        {
            Swap::Done(version) => {
                return Ok(Held {
                    body: new,
                    version,
                    taken,
                    good_at: Instant::now(),
                });
            }
            // Someone else wrote it meanwhile: look again.
            Swap::Conflict => {
                watched = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A random epoch: std's per-process random hash keys, with the time and pid mixed in.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::clock::now_ms());
    h.write_u32(std::process::id());
    h.finish()
}

/// Why a renewal failed.
#[derive(Debug)]
pub enum RenewError {
    /// Another walship holds the path now (its description), or the lease is gone.
    Lost(String),
    /// The store did not answer; the lease may still be ours until it expires.
    Store(Error),
}

/// Renew `held` (compare-and-swap on its version).
pub async fn renew(
    replica: &Replica,
    held: &mut Held,
    now_ms: u64,
) -> std::result::Result<(), RenewError> {
    let mut next = held.body.clone();
    next.renewed_ms = now_ms;
    let asked = Instant::now();
    match replica
        .put_versioned(LEASE_KEY, next.encode(), Some(&held.version), SETTLE)
        .await
    {
        Ok(Swap::Done(v)) => {
            held.version = v;
            held.body = next;
            held.good_at = asked;
            Ok(())
        }
        Ok(Swap::Conflict) => {
            let who = match replica.get_versioned(LEASE_KEY).await {
                Ok(Some((b, _))) => match parse(&b) {
                    Some(l) => l.describe(now_ms),
                    None => format!("{LEASE_KEY} now holds something else"),
                },
                Ok(None) => format!("{LEASE_KEY} was deleted"),
                Err(e) => format!("{LEASE_KEY} changed (and cannot be read now: {e})"),
            };
            Err(RenewError::Lost(who))
        }
        Err(e) => Err(RenewError::Store(e)),
    }
}

/// The generation a current lease (renewed within twice its TTL, by the store's clock
/// as the holder stamped it) says is being written, if it names one.
pub async fn live_generation(replica: &Replica, now_ms: u64) -> Result<Option<String>> {
    Ok(read(replica)
        .await?
        .filter(|l| now_ms.saturating_sub(l.renewed_ms) <= l.ttl_ms.saturating_mul(2))
        .and_then(|l| l.holder.generation))
}

/// The lease as it stands (`None`: no lease, or not one this version reads).
pub async fn read(replica: &Replica) -> Result<Option<LeaseBody>> {
    Ok(replica
        .get_versioned(LEASE_KEY)
        .await?
        .and_then(|(b, _)| parse(&b)))
}

/// Give the lease up, if it is still ours.
pub async fn release(replica: &Replica, held: &Held) -> Result<()> {
    if let Some((_, v)) = replica.get_versioned(LEASE_KEY).await?
        && v == held.version
    {
        replica.delete(LEASE_KEY).await?;
    }
    Ok(())
}

/// This host's name, as a lease holder names it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        std::env::var("HOSTNAME").unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, ReplicaConfig};

    fn file_replica(dir: &std::path::Path) -> Replica {
        let cfg = ReplicaConfig::from_location(Location::File {
            dir: dir.to_path_buf(),
        });
        Replica::open(&cfg, true).unwrap()
    }

    fn holder(host: &str, spool: &str) -> Holder {
        Holder {
            host: host.into(),
            pid: 7,
            database: "/d/app.db".into(),
            spool: spool.into(),
            generation: None,
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_on_a_file_replica() {
        let dir = tempfile::tempdir().unwrap();
        let r = file_replica(dir.path());
        let s = Settings {
            ttl: Duration::from_millis(600),
            wait: None,
        };
        let clock = crate::clock::now_ms;
        let mut a = acquire(&r, holder("a", "/s"), &s, clock).await.unwrap();
        assert_eq!(a.taken, Taken::Free);
        // Another holder is refused, naming the holder.
        let e = acquire(&r, holder("b", "/s"), &s, clock)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("pid 7 on host a") && e.contains("--lease-wait"),
            "{e}"
        );
        // The same place restarted takes it at once.
        let mut a2 = acquire(&r, holder("a", "/s"), &s, clock).await.unwrap();
        assert_eq!(a2.taken, Taken::Own);
        // The old process's renewal now fails: its version is gone.
        assert!(matches!(
            renew(&r, &mut a, clock()).await,
            Err(RenewError::Lost(_))
        ));
        renew(&r, &mut a2, clock()).await.unwrap();
        // Waiting: taken once the holder's renewals stop for a TTL.
        let waiting = Settings {
            wait: Some(Duration::from_secs(10)),
            ..s
        };
        let b = acquire(&r, holder("b", "/s"), &waiting, clock)
            .await
            .unwrap();
        assert!(matches!(&b.taken, Taken::Expired(d) if d.contains("host a")));
        // Released: free for the next.
        release(&r, &b).await.unwrap();
        let c = acquire(&r, holder("c", "/s"), &s, clock).await.unwrap();
        assert_eq!(c.taken, Taken::Free);
    }

    /// A lease object walship did not write is refused by name, never overwritten; an
    /// absurd TTL is a lease that does not expire, not an overflow.
    #[tokio::test]
    async fn hostile_lease_objects() {
        let dir = tempfile::tempdir().unwrap();
        let r = file_replica(dir.path());
        let s = Settings {
            ttl: Duration::from_secs(1),
            wait: None,
        };
        for junk in [&b"not json"[..], b"", b"{\"format\": 9}", b"\xff\xfe"] {
            std::fs::write(dir.path().join(LEASE_KEY), junk).unwrap();
            let e = acquire(&r, holder("a", "/s"), &s, crate::clock::now_ms)
                .await
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("lease.json is not a walship lease"), "{e}");
            assert_eq!(std::fs::read(dir.path().join(LEASE_KEY)).unwrap(), junk);
        }
        let mut l = LeaseBody {
            format: 1,
            holder: holder("b", "/s"),
            epoch: "e".into(),
            since_ms: 0,
            renewed_ms: u64::MAX,
            ttl_ms: u64::MAX,
        };
        std::fs::write(dir.path().join(LEASE_KEY), l.encode()).unwrap();
        let e = acquire(&r, holder("a", "/s"), &s, crate::clock::now_ms)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("being written by another walship"), "{e}");
        l.renewed_ms = 0;
        std::fs::write(dir.path().join(LEASE_KEY), l.encode()).unwrap();
        assert!(
            acquire(&r, holder("a", "/s"), &s, crate::clock::now_ms)
                .await
                .is_err()
        );
    }
}
