//! Restore planning from object names alone (one LIST): group a replica's objects by
//! generation, then choose the snapshot and the unbroken chain of segments after it.
//! Pure: no I/O, so every edge case is a unit test.

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

/// Everything a replica holds for one generation, each list sorted.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub has_manifest: bool,
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
    for g in gens.values_mut() {
        g.snapshots.sort_by_key(|s| s.name);
        g.segments.sort_by_key(|s| s.name);
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
    /// Set when segments exist past a missing range: the plan stops before the gap.
    pub gap_after: Option<u64>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.snapshot.size + self.segments.iter().map(|s| s.size).sum::<u64>()
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

/// The generations a restore may use, newest first: `only`, or every one with a snapshot.
fn candidates<'a>(
    gens: &'a BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
) -> Result<Vec<(&'a GenerationId, &'a Generation)>, String> {
    let list: Vec<_> = match only {
        Some(id) => {
            let (id, g) = gens
                .get_key_value(id)
                .ok_or_else(|| format!("generation {id} does not exist"))?;
            if g.snapshots.is_empty() {
                return Err(format!("generation {id} has no snapshot"));
            }
            vec![(id, g)]
        }
        None => gens
            .iter()
            .rev()
            .filter(|(_, g)| !g.snapshots.is_empty())
            .collect(),
    };
    if list.is_empty() {
        return Err(if gens.is_empty() {
            "no generations: nothing has been replicated here".into()
        } else {
            "no generation has a snapshot yet".into()
        });
    }
    Ok(list)
}

/// Plan a restore of `target` from one LIST's worth of names. `only` restricts the choice
/// to one generation. Errors say why, and for a time outside the replica, which window
/// exists.
pub fn plan(
    gens: &BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
    target: Target,
) -> Result<Plan, String> {
    let cands = candidates(gens, only)?;
    match target {
        Target::Latest => {
            // The newest generation with a snapshot (newer ones without one are still being
            // started), its newest snapshot, and every segment after it up to a gap.
            let (id, g) = cands[0];
            let snapshot = g.snapshots.last().expect("candidates have snapshots");
            let (segments, gap_after) = chain_after(&g.segments, snapshot.name.txid);
            let txid = segments
                .last()
                .map_or(snapshot.name.txid, |s| s.name.last_txid);
            Ok(Plan {
                target,
                generation: id.clone(),
                snapshot: snapshot.clone(),
                segments,
                txid,
                stop: None,
                gap_after,
            })
        }
        Target::Txid(n) => {
            let (id, g) = cands[0];
            let snapshot = g
                .snapshots
                .iter()
                .rev()
                .find(|s| s.name.txid <= n)
                .ok_or_else(|| {
                    format!(
                        "transaction {n} is before generation {id}'s oldest snapshot \
                         (transaction {})",
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
                        "generation {id} is missing transactions after {at}: transaction {n} \
                         cannot be restored"
                    ),
                    _ => format!("generation {id} holds transactions up to {end}, not {n}"),
                });
            }
            Ok(Plan {
                target,
                generation: id.clone(),
                snapshot: snapshot.clone(),
                segments,
                txid: n,
                stop: (end > n).then_some(Stop::Txid(n)),
                gap_after: None,
            })
        }
        Target::Time(t) => {
            let oldest = cands
                .iter()
                .map(|(_, g)| g.snapshots[0].name.commit_ms)
                .min()
                .expect("non-empty");
            let newest = cands
                .iter()
                .filter_map(|(_, g)| g.last_write_ms())
                .max()
                .unwrap_or(oldest);
            // The newest generation that existed at `t`: its oldest snapshot is not later.
            let Some(&(id, g)) = cands
                .iter()
                .find(|(_, g)| g.snapshots[0].name.commit_ms <= t)
            else {
                return Err(format!(
                    "{} is before the oldest restorable point; this replica can restore \
                     from {} to {}",
                    rfc3339(t),
                    rfc3339(oldest),
                    rfc3339(newest)
                ));
            };
            let snapshot = g
                .snapshots
                .iter()
                .rev()
                .find(|s| s.name.commit_ms <= t)
                .expect("the oldest qualifies");
            let (chain, _) = chain_after(&g.segments, snapshot.name.txid);
            let (chain_txid, chain_ms) = chain
                .last()
                .map_or((snapshot.name.txid, snapshot.name.commit_ms), |s| {
                    (s.name.last_txid, s.name.last_commit_ms)
                });
            let segments: Vec<_> = chain
                .into_iter()
                .take_while(|s| s.name.first_commit_ms <= t)
                .collect();
            let (end_txid, end_ms) = segments
                .last()
                .map_or((snapshot.name.txid, snapshot.name.commit_ms), |s| {
                    (s.name.last_txid, s.name.last_commit_ms)
                });
            // Transactions the chain cannot reach (lost, or removed by retention beyond its
            // window) that may have committed by `t`: refuse rather than restore something
            // older than asked. They committed between the chain's end and the next object.
            if t > chain_ms {
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
                    return Err(format!(
                        "generation {id} does not hold transactions {}..{} (lost, or removed \
                         by retention), which committed between {} and {}; {} cannot be \
                         restored exactly: the nearest restore points are {} and {}",
                        chain_txid.saturating_add(1),
                        next_txid - 1,
                        rfc3339(chain_ms),
                        rfc3339(next_ms),
                        rfc3339(t),
                        rfc3339(chain_ms),
                        rfc3339(next_ms)
                    ));
                }
            }
            Ok(Plan {
                target,
                generation: id.clone(),
                snapshot: snapshot.clone(),
                segments,
                txid: end_txid,
                stop: (end_ms > t).then_some(Stop::Time(t)),
                gap_after: None,
            })
        }
    }
}

/// The newest restorable state (`plan` with `Target::Latest`).
pub fn plan_latest(
    gens: &BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
) -> Result<Plan, String> {
    plan(gens, only, Target::Latest)
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
        }
    }

    pub fn manifest(g_id: &GenerationId) -> Listed {
        Listed {
            name: layout::format_manifest(g_id),
            size: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

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
        let p = plan_latest(&group(&objs), None).unwrap();
        assert_eq!(p.txid, 300);
        assert_eq!(p.gap_after, None);
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
        let gens = group(&objs);
        let p = plan_latest(&gens, None).unwrap();
        assert_eq!(p.txid, 4);
        let (chain, _) = chain_after(&gens[&a].segments, u64::MAX);
        assert!(chain.is_empty());
    }

    #[test]
    fn empty_replica_explains_itself() {
        let e = plan_latest(&group(&[]), None).unwrap_err();
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
            // c is being started: no snapshot yet
            seg(&c, 1, 2),
        ];
        let p = plan_latest(&group(&objs), None).unwrap();
        assert_eq!(p.generation, b);
        assert_eq!(p.snapshot.name.txid, 4, "newest snapshot");
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.txid, 9);
        assert_eq!(p.gap_after, None);
        assert_eq!(p.bytes(), 110);
    }

    #[test]
    fn chain_stops_at_a_gap_and_says_so() {
        let a = g(1);
        let objs = vec![snap(&a, 0), seg(&a, 1, 3), seg(&a, 6, 8)];
        let p = plan_latest(&group(&objs), None).unwrap();
        assert_eq!(p.txid, 3);
        assert_eq!(p.gap_after, Some(3));
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
        let p = plan_latest(&group(&objs), None).unwrap();
        let firsts: Vec<u64> = p.segments.iter().map(|s| s.name.first_txid).collect();
        assert_eq!(firsts, vec![1, 7]);
        assert_eq!(p.txid, 7);
    }

    #[test]
    fn explicit_generation_must_exist_and_have_a_snapshot() {
        let a = g(1);
        let gens = group(&[seg(&a, 1, 1)]);
        assert!(
            plan_latest(&gens, Some(&g(9)))
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            plan_latest(&gens, Some(&a))
                .unwrap_err()
                .contains("no snapshot")
        );
        assert!(
            plan_latest(&gens, None)
                .unwrap_err()
                .contains("no generation has a snapshot")
        );
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
        (a, b, group(&objs))
    }

    #[test]
    fn time_inside_a_segment_stops_within_it() {
        let (a, _, gens) = history();
        let p = plan(&gens, None, Target::Time(1550)).unwrap();
        assert_eq!(p.generation, a);
        assert_eq!(p.snapshot.name.txid, 0);
        assert_eq!(p.segments.len(), 2, "1..4 whole, 5..10 up to the stop");
        assert_eq!(p.stop, Some(Stop::Time(1550)));
        // Between two segments: the first whole, nothing of the second.
        let p = plan(&gens, None, Target::Time(1450)).unwrap();
        assert_eq!((p.segments.len(), p.txid, p.stop), (1, 4, None));
        assert!(Stop::Time(1450).includes(5, 1450) && !Stop::Time(1450).includes(6, 1451));
    }

    #[test]
    fn time_uses_the_newest_snapshot_at_or_before_it() {
        let (a, _, gens) = history();
        let p = plan(&gens, None, Target::Time(2500)).unwrap();
        assert_eq!((p.generation, p.snapshot.name.txid), (a, 10));
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.stop, Some(Stop::Time(2500)));
        // Exactly at a segment's last commit: whole segment, no stop.
        let p = plan(&gens, None, Target::Time(3000)).unwrap();
        assert_eq!((p.txid, p.stop), (20, None));
    }

    #[test]
    fn time_between_generations_restores_the_older_ones_end() {
        let (a, b, gens) = history();
        let p = plan(&gens, None, Target::Time(4000)).unwrap();
        assert_eq!((p.generation, p.txid, p.stop), (a, 20, None));
        let p = plan(&gens, None, Target::Time(5000)).unwrap();
        assert_eq!((p.generation, p.txid, p.segments.len()), (b.clone(), 0, 0));
        // After the newest commit: the newest state, not an error.
        let p = plan(&gens, None, Target::Time(99_999)).unwrap();
        assert_eq!((p.generation, p.txid, p.stop), (b, 5, None));
    }

    #[test]
    fn time_before_the_oldest_point_names_the_window() {
        let (_, _, gens) = history();
        let e = plan(&gens, None, Target::Time(999)).unwrap_err();
        assert!(e.contains("before the oldest restorable point"), "{e}");
        assert!(e.contains("1970-01-01T00:00:01.000Z"), "{e}");
        assert!(e.contains("1970-01-01T00:00:05.500Z"), "{e}");
    }

    #[test]
    fn time_past_a_gap_is_refused_with_the_last_good_point() {
        let a = g(1);
        let gens = group(&[
            snap_at(&a, 0, 100),
            seg_at(&a, 1, 3, 110, 130),
            seg_at(&a, 7, 9, 170, 190),
        ]);
        assert_eq!(plan(&gens, None, Target::Time(130)).unwrap().txid, 3);
        // 4..6 committed somewhere in 130..170: neither 150 nor 180 is known exactly.
        for t in [150, 180] {
            let e = plan(&gens, None, Target::Time(t)).unwrap_err();
            assert!(e.contains("does not hold transactions 4..6"), "{e}");
            assert!(e.contains("00:00:00.130Z"), "{e}");
        }
    }

    #[test]
    fn time_between_a_kept_tier_snapshot_and_the_window_is_refused() {
        // Retention kept snapshot 10 (a tier point) and the window from snapshot 50.
        let a = g(1);
        let gens = group(&[
            snap_at(&a, 10, 1000),
            snap_at(&a, 50, 5000),
            seg_at(&a, 51, 60, 5100, 6000),
        ]);
        let p = plan(&gens, None, Target::Time(1000)).unwrap();
        assert_eq!((p.snapshot.name.txid, p.txid), (10, 10));
        let e = plan(&gens, None, Target::Time(3000)).unwrap_err();
        assert!(e.contains("does not hold transactions 11..49"), "{e}");
        assert_eq!(plan(&gens, None, Target::Time(5500)).unwrap().txid, 60);
    }

    #[test]
    fn txid_target_within_one_generation() {
        let (a, b, gens) = history();
        let p = plan(&gens, Some(&a), Target::Txid(7)).unwrap();
        assert_eq!((p.snapshot.name.txid, p.segments.len()), (0, 2));
        assert_eq!((p.txid, p.stop), (7, Some(Stop::Txid(7))));
        let p = plan(&gens, Some(&a), Target::Txid(10)).unwrap();
        assert_eq!(
            (p.snapshot.name.txid, p.segments.len(), p.stop),
            (10, 0, None)
        );
        // Without --generation: the newest one.
        assert_eq!(plan(&gens, None, Target::Txid(5)).unwrap().generation, b);
        let e = plan(&gens, None, Target::Txid(6)).unwrap_err();
        assert!(e.contains("up to 5"), "{e}");
    }
}
