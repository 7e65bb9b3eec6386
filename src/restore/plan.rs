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
            None => {}
        }
    }
    for g in gens.values_mut() {
        g.snapshots.sort_by_key(|s| s.name);
        g.segments.sort_by_key(|s| s.name);
    }
    gens
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub generation: GenerationId,
    pub snapshot: Obj<SnapshotName>,
    pub segments: Vec<Obj<SegmentName>>,
    /// The last transaction the restored database will hold.
    pub txid: u64,
    /// Set when segments exist past a missing range: the plan stops before the gap.
    pub gap_after: Option<u64>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.snapshot.size + self.segments.iter().map(|s| s.size).sum::<u64>()
    }
}

/// The newest restorable state: the newest generation that has a snapshot (newer ones
/// without a snapshot are still being started), its newest snapshot, and every segment
/// after it up to the first gap. `only` restricts the choice to one generation.
pub fn plan_latest(
    gens: &BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
) -> Result<Plan, String> {
    let candidates: Vec<_> = match only {
        Some(id) => vec![(
            id,
            gens.get(id)
                .ok_or_else(|| format!("generation {id} does not exist"))?,
        )],
        None => gens.iter().rev().collect(),
    };
    for (id, g) in candidates {
        let Some(snapshot) = g.snapshots.last() else {
            continue;
        };
        let (segments, gap_after) = chain_after(&g.segments, snapshot.name.txid);
        let txid = segments
            .last()
            .map_or(snapshot.name.txid, |s| s.name.last_txid);
        return Ok(Plan {
            generation: id.clone(),
            snapshot: snapshot.clone(),
            segments,
            txid,
            gap_after,
        });
    }
    Err(match only {
        Some(id) => format!("generation {id} has no snapshot"),
        None if gens.is_empty() => "no generations: nothing has been replicated here".into(),
        None => "no generation has a snapshot yet".into(),
    })
}

/// Segments continuing from `txid` without a hole. Where several start at the same
/// transaction, the one reaching furthest wins. Returns the chain and, if segments exist
/// beyond a hole, the txid the chain stops at.
pub fn chain_after(
    segments: &[Obj<SegmentName>],
    txid: u64,
) -> (Vec<Obj<SegmentName>>, Option<u64>) {
    let mut chain = Vec::new();
    let mut next = txid + 1;
    loop {
        let best = segments
            .iter()
            .filter(|s| s.name.first_txid == next)
            .max_by_key(|s| s.name.last_txid);
        match best {
            Some(s) => {
                chain.push(s.clone());
                next = s.name.last_txid + 1;
            }
            None => break,
        }
    }
    let gap = segments
        .iter()
        .any(|s| s.name.first_txid > next)
        .then_some(next - 1);
    (chain, gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u64) -> GenerationId {
        GenerationId::new(n, 0)
    }

    fn snap(g_id: &GenerationId, txid: u64) -> Listed {
        Listed {
            name: layout::format_snapshot(
                g_id,
                &SnapshotName {
                    txid,
                    commit_ms: txid,
                },
            ),
            size: 100,
        }
    }

    fn seg(g_id: &GenerationId, a: u64, b: u64) -> Listed {
        Listed {
            name: layout::format_segment(
                g_id,
                &SegmentName {
                    first_txid: a,
                    last_txid: b,
                    first_commit_ms: a,
                    last_commit_ms: b,
                },
            ),
            size: 10,
        }
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
}
