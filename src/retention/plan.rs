//! The retention planner: which objects of one database's replica may be deleted, from one
//! LIST, a policy and "now". Pure, shared by the replicator's periodic retention and
//! `walship cleanup`, so every rule is a unit test.
//!
//! Rules (docs/RETENTION.md has the reasoning):
//! - the window is `[now - retention, now]`; every instant in it stays restorable: the
//!   generation a restore at the window's start would use keeps its newest snapshot at or
//!   before that start and everything after it; newer generations are kept whole;
//! - older generations are deleted whole (manifest included), and so are generations with
//!   no snapshot (nothing can be restored from them) that are not live;
//! - the live generation is never deleted whole: the newest one, the one the calling
//!   replicator writes, and any written to within `live_grace`;
//! - tiers keep the newest snapshot of each of the last N hours/days/... beyond the window;
//! - only listed objects are ever named, so nothing newer than the listing is touched.

pub use super::pgplan::Histories;
use crate::catalog::{Catalog, Generation};
use crate::storage::Listed;
use crate::storage::layout::GenerationId;
use serde::Serialize;
use std::collections::HashSet;

pub use crate::policy::{DEFAULT_LIVE_GRACE, Policy, Tiers};

/// Deletions run in this order, so that every state between two requests is restorable:
/// first what a restore starts from (a generation or backup without it is simply not a
/// restore candidate), then the data nothing can reach any more, then what describes a
/// generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    RestorePoints,
    Data,
    Descriptions,
}

/// What a deletion removes, in each engine's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// SQLite: a snapshot (a restore point).
    Snapshot,
    /// SQLite: a WAL segment.
    Segment,
    /// SQLite: a generation's manifest.
    Manifest,
    /// PostgreSQL: a base backup's manifest (what makes it a backup).
    BackupManifest,
    /// PostgreSQL: a base backup's data part.
    BackupPart,
    /// PostgreSQL: a WAL segment, `.partial` file or backup label.
    Wal,
    /// PostgreSQL: a timeline history file.
    History,
}

impl What {
    pub fn phase(self) -> Phase {
        match self {
            What::Snapshot | What::BackupManifest => Phase::RestorePoints,
            What::Segment | What::BackupPart | What::Wal => Phase::Data,
            What::Manifest | What::History => Phase::Descriptions,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Doomed {
    pub key: String,
    pub size: u64,
    pub what: What,
    pub phase: Phase,
}

impl Doomed {
    pub fn new(key: String, size: u64, what: What) -> Doomed {
        Doomed {
            key,
            size,
            what,
            phase: what.phase(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    /// Objects older than the window's first restore point go.
    Trim,
    /// Every instant is outside the window (or it has no snapshot): all of it goes,
    /// except snapshots a tier keeps.
    Delete,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationPlan {
    pub generation: GenerationId,
    pub action: Action,
    pub why: String,
    pub delete: Vec<Doomed>,
    pub kept_objects: usize,
    pub kept_bytes: u64,
    /// Snapshots kept only because a tier asks for them.
    pub tier_snapshots: usize,
}

impl GenerationPlan {
    pub fn deleted_bytes(&self) -> u64 {
        self.delete.iter().map(|d| d.size).sum()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionPlan {
    pub now_ms: u64,
    pub window_start_ms: u64,
    pub generations: Vec<GenerationPlan>,
    /// Objects outside any walship generation directory, left alone.
    pub foreign_objects: usize,
}

impl RetentionPlan {
    /// Every deletion, in the order they must be made.
    pub fn deletions(&self) -> Vec<&Doomed> {
        let mut all: Vec<&Doomed> = self.generations.iter().flat_map(|g| &g.delete).collect();
        all.sort_by_key(|d| d.phase);
        all
    }

    pub fn deleted_bytes(&self) -> u64 {
        self.generations.iter().map(|g| g.deleted_bytes()).sum()
    }

    pub fn kept_bytes(&self) -> u64 {
        self.generations.iter().map(|g| g.kept_bytes).sum()
    }

    pub fn kept_objects(&self) -> usize {
        self.generations.iter().map(|g| g.kept_objects).sum()
    }
}

/// The newest time a generation's names show a write at (its creation if nothing else).
fn activity_ms(id: &GenerationId, g: &Generation) -> u64 {
    g.last_write_ms().unwrap_or(0).max(id.created_ms())
}

/// Plan deletions for the replica whose objects (names relative to its root) are
/// `listing`. `live` is the generation the caller itself is writing, if any. Errs on
/// objects inside a walship generation that walship cannot name: a replica it does not
/// fully understand (a newer format?) is not cleaned.
pub fn plan(
    listing: &[Listed],
    policy: &Policy,
    now_ms: u64,
    live: Option<&GenerationId>,
) -> Result<RetentionPlan, String> {
    plan_with(listing, policy, now_ms, live, &Histories::new())
}

/// `plan`, given the parsed timeline history files of PostgreSQL generations (without
/// them, WAL of a cluster with more than one timeline is kept).
pub fn plan_with(
    listing: &[Listed],
    policy: &Policy,
    now_ms: u64,
    live: Option<&GenerationId>,
    histories: &Histories,
) -> Result<RetentionPlan, String> {
    plan_of(&Catalog::of(listing), policy, now_ms, live, histories)
}

/// `plan_with` over a listing already parsed.
pub fn plan_of(
    catalog: &Catalog,
    policy: &Policy,
    now_ms: u64,
    live: Option<&GenerationId>,
    histories: &Histories,
) -> Result<RetentionPlan, String> {
    let window_start_ms = now_ms.saturating_sub(policy.window.as_millis() as u64);
    if let Some(o) = catalog.unknown.first() {
        return Err(format!(
            "unrecognised object {o} inside a generation; refusing to clean a replica \
             this walship does not fully understand (written by a newer version?)"
        ));
    }
    let foreign_objects = catalog.foreign;
    let gens = &catalog.generations;
    let postgres = gens.values().filter(|g| g.is_postgres()).count();
    if postgres > 0 {
        if postgres < gens.len() {
            return Err(
                "this replica holds both SQLite and PostgreSQL generations; refusing to clean \
                 a replica path shared by two kinds of database"
                    .into(),
            );
        }
        return Ok(RetentionPlan {
            now_ms,
            window_start_ms,
            generations: super::pgplan::plan(
                catalog,
                policy,
                now_ms,
                window_start_ms,
                live,
                histories,
            ),
            foreign_objects,
        });
    }
    let newest = gens.keys().next_back().cloned();
    // The generation a restore at the window's start uses (the catalog's rule, which
    // restore's time plan calls too).
    let anchor = crate::catalog::sqlite_start_at(gens.iter().rev(), window_start_ms)
        .map(|(id, _)| id.clone());

    let mut out = Vec::new();
    for (id, g) in gens {
        let live_now = Some(id) == newest.as_ref()
            || Some(id) == live
            || activity_ms(id, g) + policy.live_grace.as_millis() as u64 > now_ms;
        let (action, why, cut_txid) = if g.snapshots.is_empty() {
            if live_now {
                (Action::Keep, "live, no snapshot yet".to_string(), None)
            } else {
                (
                    Action::Delete,
                    "no snapshot: nothing can be restored from it".into(),
                    Some(u64::MAX),
                )
            }
        } else {
            match anchor.as_ref().map(|a| id.cmp(a)) {
                None | Some(std::cmp::Ordering::Greater) => {
                    (Action::Keep, "inside the window".into(), None)
                }
                Some(std::cmp::Ordering::Less) if live_now => (
                    Action::Keep,
                    "older than the window but written to recently (live)".into(),
                    None,
                ),
                Some(std::cmp::Ordering::Less) => (
                    Action::Delete,
                    "every instant is before the window".into(),
                    Some(u64::MAX),
                ),
                Some(std::cmp::Ordering::Equal) => {
                    let first = g
                        .snapshot_at_or_before(window_start_ms)
                        .expect("the anchor has a snapshot at or before the start");
                    (
                        Action::Trim,
                        format!(
                            "holds the window's start: kept from transaction {}",
                            first.name.txid
                        ),
                        Some(first.name.txid),
                    )
                }
            }
        };
        let mut delete = Vec::new();
        if let Some(cut) = cut_txid {
            let whole = cut == u64::MAX;
            delete.extend(
                g.snapshots
                    .iter()
                    .filter(|s| whole || s.name.txid < cut)
                    .map(|s| Doomed::new(s.key.clone(), s.size, What::Snapshot)),
            );
            delete.extend(
                g.segments
                    .iter()
                    .filter(|s| whole || s.name.last_txid <= cut)
                    .map(|s| Doomed::new(s.key.clone(), s.size, What::Segment)),
            );
            if whole && let Some(m) = &g.manifest_obj {
                delete.push(Doomed::new(m.key.clone(), m.size, What::Manifest));
            }
        }
        let total_objects = g.snapshots.len() + g.segments.len() + usize::from(g.has_manifest());
        let total_bytes = g.snapshots.iter().map(|s| s.size).sum::<u64>()
            + g.wal_bytes()
            + g.manifest_obj.as_ref().map_or(0, |m| m.size);
        out.push((id.clone(), action, why, delete, total_objects, total_bytes));
    }

    // Tiers: over every snapshot before the window, newest first, keep the first one seen
    // in each new bucket until the tier has its count. Snapshots kept anyway (the window's
    // first restore point) take their bucket too.
    let doomed: HashSet<&str> = out
        .iter()
        .flat_map(|(_, _, _, d, _, _)| d.iter().map(|d| d.key.as_str()))
        .collect();
    let mut before: Vec<(u64, &str)> = gens
        .values()
        .flat_map(|g| &g.snapshots)
        .filter(|s| s.name.commit_ms < window_start_ms)
        .map(|s| (s.name.commit_ms, s.key.as_str()))
        .collect();
    before.sort_unstable_by(|a, b| b.cmp(a));
    let rescued: HashSet<String> = tier_rescue(&before, &policy.tiers, |k| doomed.contains(k))
        .into_iter()
        .map(str::to_string)
        .collect();

    let generations = out
        .into_iter()
        .map(|(id, mut action, mut why, mut delete, objects, bytes)| {
            let before = delete.len();
            delete.retain(|d| !rescued.contains(&d.key));
            let tier_snapshots = before - delete.len();
            if tier_snapshots > 0 {
                // A generation holding a tier point keeps its manifest.
                delete.retain(|d| d.what != What::Manifest);
                if action == Action::Delete {
                    action = Action::Trim;
                    why = format!("{why}; {tier_snapshots} snapshot(s) kept for tiers");
                }
            }
            if delete.is_empty() {
                action = Action::Keep;
            }
            let gone: u64 = delete.iter().map(|d| d.size).sum();
            GenerationPlan {
                generation: id,
                action,
                why,
                kept_objects: objects - delete.len(),
                kept_bytes: bytes - gone,
                delete,
                tier_snapshots,
            }
        })
        .collect();
    Ok(RetentionPlan {
        now_ms,
        window_start_ms,
        generations,
        foreign_objects,
    })
}

/// Tiers over restore points before the window (`(time, id)`, newest first): the first
/// one seen in each new bucket, until the tier has its count, is rescued if `doomed` says
/// it would be deleted. Points kept anyway take their bucket too.
pub(super) fn tier_rescue<K: Clone + Eq + std::hash::Hash>(
    before: &[(u64, K)],
    tiers: &Tiers,
    doomed: impl Fn(&K) -> bool,
) -> HashSet<K> {
    let mut rescued = HashSet::new();
    for (len, count) in tiers.buckets() {
        let mut seen = HashSet::new();
        for (ms, key) in before {
            if seen.len() as u32 >= count {
                break;
            }
            if seen.insert(ms / len) && doomed(key) {
                rescued.insert(key.clone());
            }
        }
    }
    rescued
}

#[cfg(test)]
mod tests;
