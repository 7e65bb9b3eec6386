//! Restore planning from object names alone (one LIST): group a replica's objects by
//! generation, then choose the snapshot and the unbroken chain of segments after it.
//! Pure: no I/O, so every edge case is a unit test.

use crate::format::manifest::Unchanged;
use crate::storage::Listed;
use crate::storage::layout::{self, GenerationId, ObjectName, SegmentName, SnapshotName};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Obj<N> {
    #[serde(flatten)]
    pub name: N,
    pub key: String,
    pub size: u64,
}

/// What is known of a generation's manifest: the listing says whether it exists; its
/// content is read (one GET) only for a generation a plan would use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ManifestState {
    /// Listed, not read yet.
    #[default]
    Unread,
    /// Read and valid, with what it says of the parent (`format::manifest`).
    Valid {
        continues_parent_at: Option<u64>,
        parent_unchanged: Option<Unchanged>,
    },
    /// Missing, unreadable, or not a format this walship reads: why, naming the object.
    Bad(String),
}

/// Everything a replica holds for one generation, each list sorted.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub has_manifest: bool,
    pub manifest: ManifestState,
    pub snapshots: Vec<Obj<SnapshotName>>,
    pub segments: Vec<Obj<SegmentName>>,
    /// PostgreSQL WAL files: a cluster's generation, not a SQLite one.
    pub postgres_objects: usize,
}

impl Generation {
    /// Time of the newest transaction the generation holds.
    pub fn last_write_ms(&self) -> Option<u64> {
        let seg = self.segments.iter().map(|s| s.name.last_commit_ms).max();
        let snap = self.snapshots.iter().map(|s| s.name.commit_ms).max();
        seg.max(snap)
    }

    pub fn wal_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Whether the generation holds any SQLite data (a snapshot or a segment).
    pub fn has_data(&self) -> bool {
        !self.snapshots.is_empty() || !self.segments.is_empty()
    }

    /// Why this generation cannot be restored although it holds data, from what the
    /// objects prove (docs/RESTORE.md): segments are uploaded only after the generation's
    /// first snapshot, so segments without any snapshot mean the snapshots are gone; and a
    /// generation's manifest is written before anything else in it.
    pub fn damage(&self, id: &GenerationId) -> Option<String> {
        if !self.has_data() {
            return None;
        }
        if let ManifestState::Bad(why) = &self.manifest {
            return Some(why.clone());
        }
        if self.snapshots.is_empty() {
            let first = self.segments.iter().min_by_key(|s| s.name.first_txid)?;
            let last = self.segments.iter().max_by_key(|s| s.name.last_txid)?;
            return Some(format!(
                "generation {id} holds {} segment(s) (transactions {}..{}, committed {} to {}) \
                 but no snapshot under {}/snapshots/: its snapshots are missing",
                self.segments.len(),
                first.name.first_txid,
                last.name.last_txid,
                rfc3339(first.name.first_commit_ms),
                rfc3339(last.name.last_commit_ms),
                layout::format_generation_dir(id)
            ));
        }
        None
    }
}

pub fn group(objects: &[Listed]) -> BTreeMap<GenerationId, Generation> {
    let mut gens: BTreeMap<GenerationId, Generation> = BTreeMap::new();
    for o in objects {
        match layout::parse_object(&o.name) {
            Some(ObjectName::Manifest(g)) => gens.entry(g).or_default().has_manifest = true,
            Some(ObjectName::Snapshot(g, name)) => gens.entry(g).or_default().snapshots.push(Obj {
                name,
                key: o.name.clone(),
                size: o.size,
            }),
            Some(ObjectName::Segment(g, name)) => gens.entry(g).or_default().segments.push(Obj {
                name,
                key: o.name.clone(),
                size: o.size,
            }),
            Some(ObjectName::PgWal(g, _) | ObjectName::PgBackup(g, ..)) => {
                gens.entry(g).or_default().postgres_objects += 1
            }
            None => {}
        }
    }
    for (id, g) in gens.iter_mut() {
        g.snapshots.sort_by_key(|s| s.name);
        g.segments.sort_by_key(|s| s.name);
        if !g.has_manifest && g.has_data() {
            g.manifest = ManifestState::Bad(format!(
                "generation {id}'s manifest {} is missing",
                layout::format_manifest(id)
            ));
        }
    }
    gens
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
    !g.snapshots.is_empty() && !matches!(g.manifest, ManifestState::Bad(_))
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
        let starting = gens.iter().rev().find(|(_, g)| g.has_manifest);
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

fn time_plan(
    pool: &[(&GenerationId, &Generation)],
    t: u64,
    allow_older: bool,
) -> Result<Plan, PlanError> {
    let usable_pool: Vec<_> = pool.iter().copied().filter(|(_, g)| usable(g)).collect();
    let window = || {
        let oldest = usable_pool
            .iter()
            .map(|(_, g)| g.snapshots[0].name.commit_ms)
            .min();
        let newest = usable_pool
            .iter()
            .filter_map(|(_, g)| g.last_write_ms())
            .max();
        match (oldest, newest) {
            (Some(a), Some(b)) => format!(
                "this replica can restore from {} to {}",
                rfc3339(a),
                rfc3339(b)
            ),
            _ => "this replica holds no restorable generation".into(),
        }
    };
    // The newest generation that existed at `t`: its oldest snapshot is not later.
    let Some(pos) = usable_pool
        .iter()
        .position(|(_, g)| g.snapshots[0].name.commit_ms <= t)
    else {
        return Err(format!(
            "{} is before the oldest restorable point; {}",
            rfc3339(t),
            window()
        )
        .into());
    };
    let (id, g) = usable_pool[pos];
    need(id, g)?;
    let snapshot = g
        .snapshots
        .iter()
        .rev()
        .find(|s| s.name.commit_ms <= t)
        .expect("the oldest qualifies");
    let (chain, chain_txid, chain_ms, _) = chain_end(g, snapshot);
    let segments: Vec<_> = chain
        .iter()
        .take_while(|s| s.name.first_commit_ms <= t)
        .cloned()
        .collect();
    let (end_txid, end_ms) = segments
        .last()
        .map_or((snapshot.name.txid, snapshot.name.commit_ms), |s| {
            (s.name.last_txid, s.name.last_commit_ms)
        });
    let exact = Plan {
        target: Target::Time(t),
        generation: id.clone(),
        snapshot: snapshot.clone(),
        segments,
        txid: end_txid,
        stop: (end_ms > t).then_some(Stop::Time(t)),
        older: None,
    };
    if t <= chain_ms {
        return Ok(exact);
    }
    // `t` is past the chain's end: exact only if nothing can have committed in between.
    let refuse = |what: String, after_ms: Option<u64>| -> Result<Plan, PlanError> {
        let after = after_ms.map_or("no later restorable point".to_string(), rfc3339);
        let earlier = format!(
            "transaction {chain_txid} of generation {id} ({})",
            rfc3339(chain_ms)
        );
        if allow_older {
            let mut p = exact.clone();
            p.older = Some(format!(
                "{what}; restoring the nearest earlier point, {earlier}, {:.1} s before {}",
                t.saturating_sub(chain_ms) as f64 / 1000.0,
                rfc3339(t)
            ));
            return Ok(p);
        }
        Err(PlanError::Refused(format!(
            "{what}; {} cannot be restored exactly: the nearest restore points are {} and \
             {after}. Nothing was restored; pass --allow-older to restore {earlier}",
            rfc3339(t),
            rfc3339(chain_ms)
        )))
    };
    // 1. Inside the generation: transactions the chain cannot reach (lost, or removed by
    // retention beyond its window) may have committed by `t`.
    let next = g
        .segments
        .iter()
        .filter(|s| s.name.first_txid > chain_txid.saturating_add(1))
        .map(|s| (s.name.first_txid, s.name.first_commit_ms))
        .chain(
            g.snapshots
                .iter()
                .filter(|s| s.name.txid > chain_txid.saturating_add(1))
                .map(|s| (s.name.txid, s.name.commit_ms)),
        )
        .min();
    if let Some((next_txid, next_ms)) = next {
        let next_point = g
            .snapshots
            .iter()
            .find(|s| s.name.txid > chain_txid)
            .map(|s| s.name.commit_ms);
        return refuse(
            format!(
                "generation {id} does not hold transactions {}..{} (lost, or removed by \
                 retention), which committed between {} and {}",
                chain_txid.saturating_add(1),
                next_txid - 1,
                rfc3339(chain_ms),
                rfc3339(next_ms)
            ),
            next_point,
        );
    }
    // 2. Between generations: the next newer one began because continuity was lost, so
    // commits between this one's end and its first snapshot are in no object, unless its
    // manifest says it continues this generation exactly.
    let Some(&(nid, ng)) = pool.iter().rev().find(|(nid, _)| *nid > id) else {
        return Ok(exact); // after the newest commit: the newest state
    };
    need(nid, ng)?;
    if let ManifestState::Valid {
        continues_parent_at,
        parent_unchanged,
    } = &ng.manifest
        && usable(ng)
    {
        // It continues this generation exactly, or walship saw nothing follow this
        // generation's last transaction until after `t`.
        let seen = |u: &Unchanged| u.txid == chain_txid && t <= u.until_ms;
        if *continues_parent_at == Some(chain_txid) || parent_unchanged.as_ref().is_some_and(seen) {
            return Ok(exact);
        }
    }
    let next_ms = usable_pool[..pos]
        .iter()
        .map(|(_, g)| g.snapshots[0].name.commit_ms)
        .min();
    let why = match ng.damage(nid) {
        Some(d) => format!("; {d}"),
        None => String::new(),
    };
    refuse(
        format!(
            "{} lies after generation {id}'s last commit ({}) and before generation {nid} \
             began; what committed in between is in no object (continuity was lost){why}",
            rfc3339(t),
            rfc3339(chain_ms)
        ),
        next_ms,
    )
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
pub(crate) mod fixtures {
    use super::*;

    pub fn g(n: u64) -> GenerationId {
        GenerationId::new(n, 0)
    }

    pub fn snap_at(g_id: &GenerationId, txid: u64, ms: u64) -> Listed {
        Listed {
            name: layout::format_snapshot(
                g_id,
                &SnapshotName {
                    txid,
                    commit_ms: ms,
                },
            ),
            size: 100,
            modified_ms: ms,
        }
    }

    pub fn seg_at(g_id: &GenerationId, a: u64, b: u64, ta: u64, tb: u64) -> Listed {
        Listed {
            name: layout::format_segment(
                g_id,
                &SegmentName {
                    first_txid: a,
                    last_txid: b,
                    first_commit_ms: ta,
                    last_commit_ms: tb,
                },
            ),
            size: 10,
            modified_ms: tb,
        }
    }

    /// `plan` with every listed manifest taken as read and valid (planner logic only).
    pub fn plan_trusting(
        gens: &BTreeMap<GenerationId, Generation>,
        only: Option<&GenerationId>,
        target: Target,
    ) -> Result<Plan, PlanError> {
        let mut gens = gens.clone();
        for g in gens.values_mut() {
            if g.manifest == ManifestState::Unread {
                g.manifest = ManifestState::Valid {
                    continues_parent_at: None,
                    parent_unchanged: None,
                };
            }
        }
        plan(&gens, only, target, false)
    }

    pub fn manifest(g_id: &GenerationId) -> Listed {
        Listed {
            name: layout::format_manifest(g_id),
            size: 1,
            modified_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    /// The listing with a manifest for every generation, each read and valid.
    fn ok(objs: &[Listed]) -> BTreeMap<GenerationId, Generation> {
        let mut gens = group(objs);
        for g in gens.values_mut() {
            g.has_manifest = true;
            g.manifest = ManifestState::Valid {
                continues_parent_at: None,
                parent_unchanged: None,
            };
        }
        gens
    }

    /// Names whose commit times equal their txids.
    fn snap(g_id: &GenerationId, txid: u64) -> Listed {
        snap_at(g_id, txid, txid)
    }

    fn seg(g_id: &GenerationId, a: u64, b: u64) -> Listed {
        seg_at(g_id, a, b, a, b)
    }

    /// Regression (two writers on one path): a long segment nothing continues must not
    /// hide the complete chain through shorter ones.
    #[test]
    fn chain_search_passes_a_dead_end() {
        let a = g(1);
        let objs = vec![
            snap(&a, 0),
            seg(&a, 1, 188),
            seg(&a, 189, 215), // dead end: nothing starts at 216
            seg(&a, 189, 209),
            seg(&a, 210, 300),
        ];
        let p = plan_latest(&ok(&objs), None).unwrap();
        assert_eq!(p.txid, 300);
        assert_eq!(p.older, None);
        let ends: Vec<u64> = p.segments.iter().map(|s| s.name.last_txid).collect();
        assert_eq!(ends, vec![188, 209, 300]);
    }

    /// Regression (fuzzing): ranges that wrap u64 or run backwards made the walk loop
    /// forever with growing memory.
    #[test]
    fn chain_search_ends_on_wrapping_and_reversed_ranges() {
        let a = g(1);
        let objs = vec![
            snap(&a, 0),
            seg(&a, 1, u64::MAX),
            seg(&a, 0, 4),
            seg_at(&a, 5, 3, 5, 5),
            seg(&a, 1, 2),
            seg(&a, 3, 4),
        ];
        let gens = ok(&objs);
        let p = plan_latest(&gens, None).unwrap();
        assert_eq!(p.txid, 4);
        let (chain, _) = chain_after(&gens[&a].segments, u64::MAX);
        assert!(chain.is_empty());
    }

    #[test]
    fn empty_replica_explains_itself() {
        let e = plan_latest(&ok(&[]), None).unwrap_err().to_string();
        assert!(e.contains("no generations"), "{e}");
    }

    #[test]
    fn newest_generation_with_snapshot_and_full_chain() {
        let (a, b, c) = (g(1), g(2), g(3));
        let objs = vec![
            snap(&a, 0),
            seg(&a, 1, 5),
            snap(&b, 0),
            seg(&b, 1, 3),
            seg(&b, 4, 4),
            snap(&b, 4),
            seg(&b, 5, 9),
            // c is being started: its manifest is there, its first snapshot not yet
            manifest(&c),
        ];
        let p = plan_latest(&ok(&objs), None).unwrap();
        assert_eq!(p.generation, b);
        assert_eq!(p.snapshot.name.txid, 4, "newest snapshot");
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.txid, 9);
        assert_eq!(p.older, None);
        assert_eq!(p.bytes(), 110);
    }

    #[test]
    fn chain_stops_at_a_gap_and_says_so() {
        let a = g(1);
        let objs = vec![snap(&a, 0), seg(&a, 1, 3), seg(&a, 6, 8)];
        let gens = ok(&objs);
        let e = plan_latest(&gens, None).unwrap_err().to_string();
        assert!(
            e.contains("cannot be assembled") && e.contains("transactions 4..5"),
            "{e}"
        );
        assert!(e.contains("--allow-older to restore transaction 3"), "{e}");
        let p = plan(&gens, None, Target::Latest, true).unwrap();
        assert_eq!(p.txid, 3);
        assert!(p.older.unwrap().contains("behind"));
    }

    #[test]
    fn overlapping_segments_take_the_longest_step() {
        let a = g(1);
        let objs = vec![
            snap(&a, 0),
            seg(&a, 1, 2),
            seg(&a, 1, 6),
            seg(&a, 3, 4),
            seg(&a, 7, 7),
        ];
        let p = plan_latest(&ok(&objs), None).unwrap();
        let firsts: Vec<u64> = p.segments.iter().map(|s| s.name.first_txid).collect();
        assert_eq!(firsts, vec![1, 7]);
        assert_eq!(p.txid, 7);
    }

    #[test]
    fn explicit_generation_must_exist_and_have_a_snapshot() {
        let a = g(1);
        let gens = ok(&[manifest(&a)]);
        let e = plan_latest(&gens, Some(&g(9))).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = plan_latest(&gens, Some(&a)).unwrap_err().to_string();
        assert!(e.contains("no snapshot"), "{e}");
        let e = plan_latest(&gens, None).unwrap_err().to_string();
        assert!(e.contains("no generation has a snapshot yet") && e.contains("being started"));
    }

    /// Issue case 2: the newest generation's snapshot is gone but its segments are there.
    /// Not "being started" (segments are uploaded only after the first snapshot): damage.
    #[test]
    fn newest_generation_without_its_snapshot_is_damage_not_an_older_state() {
        let (a, b) = (g(1), g(2));
        let objs = vec![
            snap(&a, 0),
            seg(&a, 1, 5),
            seg_at(&b, 1, 9, 20, 90),
            seg_at(&b, 10, 12, 95, 120),
        ];
        let gens = ok(&objs);
        let e = plan_latest(&gens, None).unwrap_err().to_string();
        assert!(e.contains("cannot be assembled"), "{e}");
        assert!(e.contains(&format!(
            "generation {b} holds 2 segment(s) (transactions 1..12"
        )));
        assert!(e.contains("its snapshots are missing"), "{e}");
        assert!(
            e.contains("--allow-older to restore transaction 5 of generation"),
            "{e}"
        );
        let p = plan(&gens, None, Target::Latest, true).unwrap();
        assert_eq!((p.generation.clone(), p.txid), (a.clone(), 5));
        assert!(p.older.unwrap().contains("0.1 s behind"), "115 ms");
        // Every snapshot gone (issue case 3): nothing older to fall back to either.
        let gens = ok(&[seg(&a, 1, 5), seg(&b, 1, 3)]);
        let e = plan(&gens, None, Target::Latest, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no older generation can be restored"), "{e}");
        // A time target inside the damaged generation is refused with the nearest points.
        let gens = ok(&objs);
        let e = plan(&gens, None, Target::Time(100), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its snapshots are missing"), "{e}");
        assert!(e.contains("no later restorable point"), "{e}");
    }

    /// Issue case 6: a manifest that is missing or bad makes its generation unusable; the
    /// planner asks for each manifest it would use, once.
    #[test]
    fn manifests_are_read_before_use_and_bad_ones_are_damage() {
        let (a, b) = (g(1), g(2));
        let objs = vec![
            manifest(&a),
            snap(&a, 0),
            seg(&a, 1, 5),
            manifest(&b),
            snap(&b, 0),
            seg(&b, 1, 3),
        ];
        let mut gens = group(&objs);
        assert_eq!(
            plan_latest(&gens, None).unwrap_err(),
            PlanError::NeedManifest(b.clone())
        );
        gens.get_mut(&b).unwrap().manifest =
            ManifestState::Bad("generations/b/manifest.json: manifest format 2 is newer".into());
        let e = plan_latest(&gens, None).unwrap_err().to_string();
        assert_eq!(e, PlanError::NeedManifest(a.clone()).to_string());
        gens.get_mut(&a).unwrap().manifest = ManifestState::Valid {
            continues_parent_at: None,
            parent_unchanged: None,
        };
        let e = plan_latest(&gens, None).unwrap_err().to_string();
        assert!(
            e.contains("format 2 is newer") && e.contains("--allow-older"),
            "{e}"
        );
        // No manifest listed at all: damage named by its key, with no GET.
        let bare: Vec<Listed> = objs
            .iter()
            .filter(|o| !o.name.ends_with("manifest.json"))
            .cloned()
            .collect();
        let gens = group(&bare);
        let e = plan(&gens, None, Target::Latest, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("manifest generations/"), "{e}");
        assert!(e.contains("is missing"), "{e}");
    }

    /// Generation a: snapshot at 1000, txs 1..=10 at 1100..=2000, snapshot of tx 10, txs
    /// 11..=20 at 2100..=3000. Generation b (after a lost continuity): snapshot at 5000,
    /// txs 1..=5 at 5100..=5500.
    fn history() -> (
        GenerationId,
        GenerationId,
        BTreeMap<GenerationId, Generation>,
    ) {
        let (a, b) = (g(1), g(2));
        let objs = vec![
            snap_at(&a, 0, 1000),
            seg_at(&a, 1, 4, 1100, 1400),
            seg_at(&a, 5, 10, 1500, 2000),
            snap_at(&a, 10, 2000),
            seg_at(&a, 11, 20, 2100, 3000),
            snap_at(&b, 0, 5000),
            seg_at(&b, 1, 5, 5100, 5500),
        ];
        (a, b, ok(&objs))
    }

    #[test]
    fn time_inside_a_segment_stops_within_it() {
        let (a, _, gens) = history();
        let p = plan(&gens, None, Target::Time(1550), false).unwrap();
        assert_eq!(p.generation, a);
        assert_eq!(p.snapshot.name.txid, 0);
        assert_eq!(p.segments.len(), 2, "1..4 whole, 5..10 up to the stop");
        assert_eq!(p.stop, Some(Stop::Time(1550)));
        // Between two segments: the first whole, nothing of the second.
        let p = plan(&gens, None, Target::Time(1450), false).unwrap();
        assert_eq!((p.segments.len(), p.txid, p.stop), (1, 4, None));
        assert!(Stop::Time(1450).includes(5, 1450) && !Stop::Time(1450).includes(6, 1451));
    }

    #[test]
    fn time_uses_the_newest_snapshot_at_or_before_it() {
        let (a, _, gens) = history();
        let p = plan(&gens, None, Target::Time(2500), false).unwrap();
        assert_eq!((p.generation, p.snapshot.name.txid), (a, 10));
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.stop, Some(Stop::Time(2500)));
        // Exactly at a segment's last commit: whole segment, no stop.
        let p = plan(&gens, None, Target::Time(3000), false).unwrap();
        assert_eq!((p.txid, p.stop), (20, None));
    }

    /// Issue case 4: between a generation's end and the next one's first snapshot the
    /// state is unknown (the next began because continuity was lost): an error naming both
    /// nearest points; the earlier with the opt-in; exact when the next continues it.
    #[test]
    fn time_between_generations_is_a_gap_unless_the_next_continues() {
        let (a, b, mut gens) = history();
        let e = plan(&gens, None, Target::Time(4000), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be restored exactly"), "{e}");
        assert!(
            e.contains("00:00:03.000Z and 1970-01-01T00:00:05.000Z"),
            "{e}"
        );
        let p = plan(&gens, None, Target::Time(4000), true).unwrap();
        assert_eq!(
            (p.generation.clone(), p.txid, p.stop),
            (a.clone(), 20, None)
        );
        assert!(p.older.unwrap().contains("1.0 s before"));
        // Walship saw nothing follow transaction 20 until 4.5 s: exact up to then only,
        // and only for the state that stamp names.
        for (txid, at, exact) in [(20, 4000, true), (20, 4500, true), (20, 4501, false)]
            .into_iter()
            .chain([(19, 4000, false)])
        {
            gens.get_mut(&b).unwrap().manifest = ManifestState::Valid {
                continues_parent_at: None,
                parent_unchanged: Some(Unchanged {
                    txid,
                    until_ms: 4500,
                }),
            };
            let p = plan(&gens, None, Target::Time(at), false);
            match exact {
                true => assert_eq!(p.map(|p| (p.txid, p.older)), Ok((20, None)), "{at}"),
                false => assert!(p.is_err(), "{txid} {at}"),
            }
        }
        gens.get_mut(&b).unwrap().manifest = ManifestState::Valid {
            continues_parent_at: Some(20),
            parent_unchanged: None,
        };
        let p = plan(&gens, None, Target::Time(4000), false).unwrap();
        assert_eq!((p.generation, p.txid, p.older), (a, 20, None));
        let p = plan(&gens, None, Target::Time(5000), false).unwrap();
        assert_eq!((p.generation, p.txid, p.segments.len()), (b.clone(), 0, 0));
        // After the newest commit: the newest state, not an error.
        let p = plan(&gens, None, Target::Time(99_999), false).unwrap();
        assert_eq!((p.generation, p.txid, p.stop), (b, 5, None));
    }

    #[test]
    fn time_before_the_oldest_point_names_the_window() {
        let (_, _, gens) = history();
        let e = plan(&gens, None, Target::Time(999), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("before the oldest restorable point"), "{e}");
        assert!(e.contains("1970-01-01T00:00:01.000Z"), "{e}");
        assert!(e.contains("1970-01-01T00:00:05.500Z"), "{e}");
    }

    #[test]
    fn time_past_a_gap_is_refused_with_the_last_good_point() {
        let a = g(1);
        let gens = ok(&[
            snap_at(&a, 0, 100),
            seg_at(&a, 1, 3, 110, 130),
            seg_at(&a, 7, 9, 170, 190),
        ]);
        assert_eq!(plan(&gens, None, Target::Time(130), false).unwrap().txid, 3);
        // 4..6 committed somewhere in 130..170: neither 150 nor 180 is known exactly.
        for t in [150, 180] {
            let e = plan(&gens, None, Target::Time(t), false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not hold transactions 4..6"), "{e}");
            assert!(e.contains("00:00:00.130Z"), "{e}");
        }
    }

    #[test]
    fn time_between_a_kept_tier_snapshot_and_the_window_is_refused() {
        // Retention kept snapshot 10 (a tier point) and the window from snapshot 50.
        let a = g(1);
        let gens = ok(&[
            snap_at(&a, 10, 1000),
            snap_at(&a, 50, 5000),
            seg_at(&a, 51, 60, 5100, 6000),
        ]);
        let p = plan(&gens, None, Target::Time(1000), false).unwrap();
        assert_eq!((p.snapshot.name.txid, p.txid), (10, 10));
        let e = plan(&gens, None, Target::Time(3000), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold transactions 11..49"), "{e}");
        assert_eq!(
            plan(&gens, None, Target::Time(5500), false).unwrap().txid,
            60
        );
    }

    #[test]
    fn txid_target_within_one_generation() {
        let (a, b, gens) = history();
        let p = plan(&gens, Some(&a), Target::Txid(7), false).unwrap();
        assert_eq!((p.snapshot.name.txid, p.segments.len()), (0, 2));
        assert_eq!((p.txid, p.stop), (7, Some(Stop::Txid(7))));
        let p = plan(&gens, Some(&a), Target::Txid(10), false).unwrap();
        assert_eq!(
            (p.snapshot.name.txid, p.segments.len(), p.stop),
            (10, 0, None)
        );
        // Without --generation: the newest one.
        assert_eq!(
            plan(&gens, None, Target::Txid(5), false)
                .unwrap()
                .generation,
            b
        );
        let e = plan(&gens, None, Target::Txid(6), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("up to 5"), "{e}");
    }
}
