//! Starting a database's other replicas (`mirror`): whether what each holds continues
//! into what capture writes next (else it starts again at the next snapshot), then its
//! upload task, its lease kept renewed, and its retention. Never reads the database.

use super::capture::ResumePoint;
use super::mirror::{self, Mirror};
use super::spool::SpoolEntry;
use super::state::DbState;
use crate::config::DbConfig;
use crate::error::Result;
use crate::shutdown::Shutdown;
use crate::sidecar::holding::LeaseTask;
use crate::sidecar::retention::Round;
use crate::storage::layout;
use crate::storage::{Replica, lease};
use std::sync::Arc;

/// Another replica as start-up opened it: its name, client and the lease taken on it.
pub type More = (String, Arc<Replica>, lease::Held);

/// Open each other replica, queue what an earlier run left for it when that continues
/// what it holds, and attach them to `state` (before capture queues anything).
pub(super) async fn open(
    db: &DbConfig,
    state: &Arc<DbState>,
    more: Vec<More>,
    resume: Option<&ResumePoint>,
    in_spool: Vec<SpoolEntry>,
) -> Result<Vec<(Arc<Mirror>, lease::Held)>> {
    let mut out = Vec::new();
    for (name, replica, held) in more {
        let (m, left) = Mirror::open(name, replica.clone(), &db.spool_dir, db.spool_limit)?;
        let m = Arc::new(m);
        let stale: Vec<std::path::PathBuf> = left.iter().map(|e| e.path.clone()).collect();
        let next = match resume {
            // A new generation starts: this replica follows it from its first snapshot.
            None => Some(Vec::new()),
            Some(rp) => {
                let listing = replica.list(layout::GENERATIONS).await?;
                let all: Vec<SpoolEntry> = left.into_iter().chain(in_spool.clone()).collect();
                mirror::continuing(&listing, &rp.generation, rp.txid, all)
            }
        };
        match next {
            Some(entries) => {
                // Links not queued again are of nothing this replica still needs.
                for p in stale
                    .iter()
                    .filter(|p| !entries.iter().any(|x| &x.path == *p))
                {
                    let _ = std::fs::remove_file(p);
                }
                tracing::info!(db = %state.label, replica = %m.name, url = %m.replica.url(),
                    queued = entries.len(), "another replica: continues the generation");
                m.resume(entries, state);
            }
            None => {
                for p in &stale {
                    let _ = std::fs::remove_file(p);
                }
                m.start_behind(&format!(
                    "replica {} ({}) does not hold the generation up to where capture goes on",
                    m.name,
                    m.replica.url()
                ));
            }
        }
        out.push((m, held));
    }
    let _ = state
        .mirrors
        .set(out.iter().map(|(m, _)| m.clone()).collect());
    Ok(out)
}

/// Start each other replica's upload task, lease keeper and retention loop.
pub(super) fn spawn(
    db: &DbConfig,
    state: &Arc<DbState>,
    primary: &Arc<Replica>,
    mirrors: Vec<(Arc<Mirror>, lease::Held)>,
    settings: &lease::Settings,
    (stop, lost): (&Shutdown, &Arc<tokio::sync::Notify>),
) -> (Vec<LeaseTask>, Vec<tokio::task::JoinHandle<usize>>) {
    let mut leases = Vec::new();
    let mut uploaders = Vec::new();
    for (m, held) in mirrors {
        m.lease.lock().unwrap().good = Some((held.good_at, settings.ttl));
        uploaders.push(tokio::spawn(mirror::run(
            m.clone(),
            state.clone(),
            primary.clone(),
            stop.clone(),
        )));
        let (lease_stop, lease_end) = crate::shutdown::signal();
        let (ttl, every) = (settings.ttl, settings.renew_every());
        let (mm, st, lost) = (m.clone(), state.clone(), lost.clone());
        let task = tokio::spawn(async move {
            let k = crate::sidecar::holding::Keeping {
                metrics: st.metrics.clone(),
                label: format!("{} ({})", st.label, mm.name),
                generation: || {
                    st.generation
                        .lock()
                        .unwrap()
                        .as_ref()
                        .map(|g| g.to_string())
                },
                renewed: |h: &lease::Held| mm.lease.lock().unwrap().good = Some((h.good_at, ttl)),
                fence: |why: &str| {
                    mm.lease.lock().unwrap().lost = Some(why.to_string());
                    mm.lease_lost.notify_one();
                },
            };
            crate::sidecar::holding::keep_lease(
                mm.replica.clone(),
                (held, every),
                k,
                lease_end,
                lost,
            )
            .await
        });
        leases.push(LeaseTask {
            stop: lease_stop,
            task,
        });
        if let Some(policy) = db.retention_policy() {
            let (st, m, shutdown) = (state.clone(), m.clone(), stop.clone());
            let every = db.retention_check_interval;
            tokio::spawn(async move {
                let live = || match m.may_write() {
                    super::state::MayWrite::Yes => {
                        Round::Protect(st.generation.lock().unwrap().clone())
                    }
                    _ => Round::Skip,
                };
                let label = format!("{} ({})", st.label, m.name);
                let metrics = (&*st.metrics, label.as_str());
                crate::sidecar::retention::every(
                    &m.replica, &policy, every, metrics, live, shutdown,
                )
                .await
            });
        }
    }
    (leases, uploaders)
}
