//! Planning a restore to a point in time: the generation and snapshot whose span holds
//! the target, and the segments up to the last commit at or before it.

use super::*;
use crate::format::manifest::Unchanged;

pub(super) fn time_plan(
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
    // The newest generation that existed at `t` (retention keeps the same one).
    let Some((id, g)) = crate::catalog::sqlite_start_at(pool.iter().copied(), t) else {
        return Err(format!(
            "{} is before the oldest restorable point; {}",
            rfc3339(t),
            window()
        )
        .into());
    };
    need(id, g)?;
    let snapshot = g.snapshot_at_or_before(t).expect("the oldest qualifies");
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
    let next_ms = usable_pool
        .iter()
        .take_while(|(i, _)| *i != id)
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
