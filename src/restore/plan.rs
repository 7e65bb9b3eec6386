//! Restore planning from object names alone (one LIST): group a replica's objects by
//! generation, then choose the snapshot and the unbroken chain of segments after it.
//! Pure: no I/O, so every edge case is a unit test.

mod time;
use time::time_plan;

use crate::storage::Listed;
use crate::storage::layout::{GenerationId, SegmentName, SnapshotName};
use serde::Serialize;
use std::collections::BTreeMap;

pub use crate::catalog::{Generation, ManifestState, Obj};

/// A listing grouped by generation (`catalog::Catalog`): what the planner plans over.
pub fn group(objects: &[Listed]) -> BTreeMap<GenerationId, Generation> {
    crate::catalog::Catalog::of(objects).generations
}

/// What a restore aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The newest state.
    Latest,
    /// The last transaction committed (seen by walship) at or before this Unix time in ms.
    Time(u64),
    /// Exactly this transaction of the chosen generation.
    Txid(u64),
}

/// Where the last segment is cut short (it also holds transactions past the target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After the last commit at or before this time (ms).
    Time(u64),
    /// After this transaction.
    Txid(u64),
}

impl Stop {
    /// Whether a commit of transaction `txid` at `ms` is restored.
    pub fn includes(&self, txid: u64, ms: u64) -> bool {
        match *self {
            Stop::Time(t) => ms <= t,
            Stop::Txid(n) => txid <= n,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub target: Target,
    pub generation: GenerationId,
    pub snapshot: Obj<SnapshotName>,
    pub segments: Vec<Obj<SegmentName>>,
    /// The last transaction the restored database will hold; with `stop` set, the most it
    /// can hold (the commit table of the last segment decides).
    pub txid: u64,
    /// Set when the last segment is applied only in part.
    pub stop: Option<Stop>,
    /// Set only with `allow_older`, when this plan restores an older state than asked:
    /// what is missing, and how far behind the restored state is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub older: Option<String>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.snapshot.size + self.segments.iter().map(|s| s.size).sum::<u64>()
    }
}

/// Why no plan was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Read this generation's manifest (into `Generation::manifest`) and plan again: a plan
    /// never uses a generation whose manifest it has not checked.
    NeedManifest(GenerationId),
    /// The state asked for cannot be restored exactly: what is missing, by object name and
    /// by the transactions and times it covers, and what `allow_older` would restore.
    Refused(String),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::NeedManifest(g) => write!(f, "generation {g}'s manifest is not read"),
            PlanError::Refused(r) => f.write_str(r),
        }
    }
}

impl From<String> for PlanError {
    fn from(s: String) -> Self {
        PlanError::Refused(s)
    }
}

use crate::clock::rfc3339;

/// What is missing after `at` in `g` (the chain's end): the transaction range, the objects
/// on either side, and when those transactions committed; plus how far the newest object
/// lies past `at`, for the message that `--allow-older` restores that much less.
pub fn describe_gap(g: &Generation, at: u64) -> (String, String) {
    let before = g
        .segments
        .iter()
        .filter(|s| s.name.last_txid == at)
        .map(|s| (s.key.as_str(), s.name.last_commit_ms))
        .next()
        .or_else(|| {
            g.snapshots
                .iter()
                .find(|s| s.name.txid == at)
                .map(|s| (s.key.as_str(), s.name.commit_ms))
        });
    let after = g
        .segments
        .iter()
        .filter(|s| s.name.first_txid > at.saturating_add(1))
        .min_by_key(|s| s.name.first_txid);
    let newest = g.segments.iter().max_by_key(|s| s.name.last_txid);
    let missing = match (before, after) {
        (Some((bk, bms)), Some(a)) => format!(
            "transactions {}..{} (committed between {} and {}): nothing continues {bk}; the \
             next object is {}",
            at.saturating_add(1),
            a.name.first_txid - 1,
            rfc3339(bms),
            rfc3339(a.name.first_commit_ms),
            a.key
        ),
        _ => format!("the transactions after {at}"),
    };
    let behind = match (newest, before) {
        (Some(n), Some((_, bms))) => format!(
            "{} transaction(s) and {:.1} s behind the newest object's transaction {} ({})",
            n.name.last_txid.saturating_sub(at),
            n.name.last_commit_ms.saturating_sub(bms) as f64 / 1000.0,
            n.name.last_txid,
            rfc3339(n.name.last_commit_ms)
        ),
        _ => "behind the newest object".into(),
    };
    (missing, behind)
}

fn need(id: &GenerationId, g: &Generation) -> Result<(), PlanError> {
    match g.manifest {
        ManifestState::Unread if g.has_data() => Err(PlanError::NeedManifest(id.clone())),
        _ => Ok(()),
    }
}

/// A generation restore can start from: a snapshot and a manifest not known to be bad.
fn usable(g: &Generation) -> bool {
    g.restorable()
}

/// The end of the chain from `snap`: its segments, last txid and commit time, and the
/// txid it stops at when segments exist beyond a hole.
fn chain_end(
    g: &Generation,
    snap: &Obj<SnapshotName>,
) -> (Vec<Obj<SegmentName>>, u64, u64, Option<u64>) {
    let (chain, gap) = chain_after(&g.segments, snap.name.txid);
    let (txid, ms) = chain
        .last()
        .map_or((snap.name.txid, snap.name.commit_ms), |s| {
            (s.name.last_txid, s.name.last_commit_ms)
        });
    (chain, txid, ms, gap)
}

/// Plan a restore of `target` from one LIST's worth of names, plus the manifests it asks
/// for (`PlanError::NeedManifest`). `only` restricts the choice to one generation.
/// The rule (docs/RESTORE.md): exactly the state asked for, or `Refused` naming what is
/// missing; with `allow_older`, the nearest older state that can be assembled, its plan's
/// `older` saying how far behind.
pub fn plan(
    gens: &BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
    target: Target,
    allow_older: bool,
) -> Result<Plan, PlanError> {
    if let Some(id) = only {
        let g = gens
            .get(id)
            .ok_or_else(|| format!("generation {id} does not exist"))?;
        if let Some(why) = g.damage(id).filter(|_| g.manifest != ManifestState::Unread) {
            return Err(PlanError::Refused(why));
        }
        if g.snapshots.is_empty() {
            return Err(format!("generation {id} has no snapshot").into());
        }
    }
    let pool: Vec<(&GenerationId, &Generation)> = gens
        .iter()
        .rev()
        .filter(|(id, g)| g.has_data() && only.is_none_or(|o| o == *id))
        .collect();
    if pool.is_empty() {
        let starting = gens.iter().rev().find(|(_, g)| g.has_manifest());
        return Err(match starting {
            None if gens.is_empty() => "no generations: nothing has been replicated here"
                .to_string()
                .into(),
            Some((id, _)) => format!(
                "no generation has a snapshot yet: generation {id} is being started (its \
                 manifest is there, its first snapshot has not landed)"
            )
            .into(),
            None => "no generation has a snapshot yet".to_string().into(),
        });
    }
    match target {
        Target::Latest => latest(&pool, allow_older),
        Target::Txid(n) => txid_plan(pool[0], n),
        Target::Time(t) => time_plan(&pool, t, allow_older),
    }
}

fn latest(pool: &[(&GenerationId, &Generation)], allow_older: bool) -> Result<Plan, PlanError> {
    let mut problems: Vec<String> = Vec::new();
    // The newest object of the generations passed over: how far behind a fallback is.
    let mut newest: Option<(&GenerationId, u64, u64)> = None;
    for &(id, g) in pool {
        need(id, g)?;
        if let Some(why) = g.damage(id) {
            problems.push(why);
            if newest.is_none() {
                let txid = g
                    .segments
                    .iter()
                    .map(|s| s.name.last_txid)
                    .max()
                    .unwrap_or(0);
                newest = Some((id, txid, g.last_write_ms().unwrap_or(0)));
            }
            continue;
        }
        let snapshot = g
            .snapshots
            .last()
            .expect("undamaged with data has a snapshot");
        let (segments, txid, ms, gap) = chain_end(g, snapshot);
        let mut behind = match newest {
            Some((nid, ntxid, nms)) => format!(
                "{:.1} s behind the newest object, transaction {ntxid} of generation {nid} \
                 ({})",
                nms.saturating_sub(ms) as f64 / 1000.0,
                rfc3339(nms)
            ),
            None => String::new(),
        };
        if let Some(at) = gap {
            let (missing, b) = describe_gap(g, at);
            problems.push(format!("generation {id} is missing {missing}"));
            if behind.is_empty() {
                behind = b;
            }
        }
        let mut plan = Plan {
            target: Target::Latest,
            generation: id.clone(),
            snapshot: snapshot.clone(),
            segments,
            txid,
            stop: None,
            older: None,
        };
        if problems.is_empty() {
            return Ok(plan);
        }
        let older = format!(
            "transaction {txid} of generation {id} ({}), {behind}",
            rfc3339(ms)
        );
        if allow_older {
            plan.older = Some(format!("{}; restoring {older}", problems.join("; ")));
            return Ok(plan);
        }
        return Err(PlanError::Refused(format!(
            "the newest state cannot be assembled: {}. Nothing was restored; pass \
             --allow-older to restore {older} instead",
            problems.join("; ")
        )));
    }
    Err(PlanError::Refused(format!(
        "the newest state cannot be assembled: {}; no older generation can be restored \
         either",
        problems.join("; ")
    )))
}

fn txid_plan((id, g): (&GenerationId, &Generation), n: u64) -> Result<Plan, PlanError> {
    need(id, g)?;
    if let Some(why) = g.damage(id) {
        return Err(PlanError::Refused(why));
    }
    let snapshot = g
        .snapshots
        .iter()
        .rev()
        .find(|s| s.name.txid <= n)
        .ok_or_else(|| {
            format!(
                "transaction {n} is before generation {id}'s oldest snapshot (transaction {})",
                g.snapshots[0].name.txid
            )
        })?;
    let (chain, gap) = chain_after(&g.segments, snapshot.name.txid);
    let segments: Vec<_> = chain
        .into_iter()
        .take_while(|s| s.name.first_txid <= n)
        .collect();
    let end = segments
        .last()
        .map_or(snapshot.name.txid, |s| s.name.last_txid);
    if end < n {
        return Err(match gap {
            Some(at) if at < n => format!(
                "generation {id} is missing transactions after {at}: transaction {n} cannot \
                 be restored"
            ),
            _ => format!("generation {id} holds transactions up to {end}, not {n}"),
        }
        .into());
    }
    Ok(Plan {
        target: Target::Txid(n),
        generation: id.clone(),
        snapshot: snapshot.clone(),
        segments,
        txid: n,
        stop: (end > n).then_some(Stop::Txid(n)),
        older: None,
    })
}

/// The newest restorable state (`plan` with `Target::Latest`, no older state).
pub fn plan_latest(
    gens: &BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
) -> Result<Plan, PlanError> {
    plan(gens, only, Target::Latest, false)
}

/// Segments continuing from `txid` without a hole, reaching as far as any such chain
/// does: a search, not a greedy walk, so a dead end (a long segment nothing continues)
/// never hides a complete chain through shorter ones. Where chains tie, the one with the
/// longest segment at each step wins. Returns the chain and, if segments exist beyond a
/// hole, the txid the chain stops at. Ranges that are reversed or would overflow are
/// ignored: the search only moves forward, so it ends on any input.
pub fn chain_after(
    segments: &[Obj<SegmentName>],
    txid: u64,
) -> (Vec<Obj<SegmentName>>, Option<u64>) {
    use std::collections::BTreeMap;
    let Some(first) = txid.checked_add(1) else {
        return (Vec::new(), None);
    };
    let mut by_start: BTreeMap<u64, Vec<&Obj<SegmentName>>> = BTreeMap::new();
    for s in segments {
        if s.name.first_txid >= first
            && s.name.last_txid >= s.name.first_txid
            && s.name.last_txid < u64::MAX
        {
            by_start.entry(s.name.first_txid).or_default().push(s);
        }
    }
    // From the last start back: how far a chain from each start reaches, and through
    // which segment (every edge goes forward, so each start's answer is final).
    let mut reach: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for (&start, segs) in by_start.iter().rev() {
        let mut best: Option<(u64, u64, usize)> = None; // (reach, segment end, index)
        for (i, s) in segs.iter().enumerate() {
            let after = s.name.last_txid + 1;
            let r = reach.get(&after).map_or(s.name.last_txid, |&(r, _)| r);
            let cand = (r, s.name.last_txid, i);
            if best.is_none_or(|b| (cand.0, cand.1) > (b.0, b.1)) {
                best = Some(cand);
            }
        }
        if let Some((r, _, i)) = best {
            reach.insert(start, (r, i));
        }
    }
    let mut chain = Vec::new();
    let mut next = first;
    while let Some(&(_, i)) = reach.get(&next) {
        let s = by_start[&next][i];
        chain.push(s.clone());
        next = s.name.last_txid + 1;
    }
    let gap = segments
        .iter()
        .any(|s| s.name.first_txid > next)
        .then_some(next - 1);
    (chain, gap)
}

/// Listings built from names, for planner tests here and in `retention`.
#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
