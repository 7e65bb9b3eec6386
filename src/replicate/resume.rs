//! Where a restarted walship resumes: the path's generations, the newest segment it can
//! continue from, and the path's history. Reads the replica only.

use super::*;

/// Where to continue: the newest generation in the replica, if it has a snapshot, at its
/// last segment (or at its snapshot), or further along if the spool holds later segments.
pub(super) async fn find_resume_point(
    replica: &Replica,
    gens: &[GenerationId],
    spooled: &[spool::SpoolEntry],
) -> Result<Option<ResumePoint>> {
    let Some(generation) = gens.last().cloned() else {
        return Ok(None);
    };
    let objects = replica
        .list(&layout::format_generation_dir(&generation))
        .await?;
    let catalog = crate::catalog::Catalog::of(&objects);
    let g = catalog.generations.get(&generation);
    let snapshot = g
        .and_then(|g| g.snapshots.last())
        .map(|s| (s.name, s.key.clone()));
    let last_segment = g
        .and_then(|g| g.segments.last())
        .map(|s| (s.name, s.key.clone()));
    let Some((snap, snap_name)) = snapshot else {
        return Ok(None);
    };
    // The spool is ahead of the replica when it holds this generation's later segments.
    if let Some(e) = spooled.iter().rev().find(|e| e.generation == generation) {
        let bytes = std::fs::read(&e.path).map_err(|err| Error::io(&e.path, err))?;
        let m = SegmentMeta::parse_header(&bytes)
            .map_err(|r| Error::corrupt(e.path.display().to_string(), r))?;
        return Ok(Some(resume_from_segment(generation, &m)));
    }
    if let Some((seg, name)) = last_segment.filter(|(s, _)| s.last_txid > snap.txid) {
        let head = replica
            .get_range(&name, 0..SegmentMeta::HEADER_LEN as u64)
            .await?;
        let m = SegmentMeta::parse_header(&head).map_err(|r| Error::corrupt(&name, r))?;
        debug_assert_eq!(m.last_txid, seg.last_txid);
        return Ok(Some(resume_from_segment(generation, &m)));
    }
    let head = replica
        .get_range(&snap_name, 0..SnapshotMeta::HEADER_LEN as u64)
        .await?;
    let m = SnapshotMeta::parse_header(&head).map_err(|r| Error::corrupt(&snap_name, r))?;
    Ok(Some(ResumePoint {
        generation,
        txid: m.txid,
        pos: m.position,
        page_size: m.page_size,
        db_pages: m.page_count,
        last_commit_ms: m.commit_ms,
        watched_until_ms: None,
    }))
}

/// The path's generations, oldest first.
pub(super) async fn list_generations(replica: &Replica) -> Result<Vec<GenerationId>> {
    let mut gens: Vec<GenerationId> = replica
        .list_dirs(layout::GENERATIONS)
        .await?
        .iter()
        .filter_map(|g| GenerationId::parse(g))
        .collect();
    gens.sort();
    Ok(gens)
}

/// The history the path's newest SQLite generation with a readable manifest names (a
/// manifest still being uploaded, or damaged, is passed over for the one before it).
pub(super) async fn path_history(
    replica: &Replica,
    gens: &[GenerationId],
) -> Result<Option<history::OnPath>> {
    for g in gens.iter().rev().take(4) {
        let Ok(m) = crate::catalog::read_manifest(replica, g).await? else {
            continue;
        };
        return Ok(Some(history::OnPath {
            generation: g.to_string(),
            history: m.history.as_deref().and_then(history::HistoryId::parse),
            database: m.database,
            host: m.host,
            created: m.created,
        }));
    }
    Ok(None)
}

pub(super) fn resume_from_segment(generation: GenerationId, m: &SegmentMeta) -> ResumePoint {
    ResumePoint {
        generation,
        txid: m.last_txid,
        pos: m.end,
        page_size: m.page_size,
        db_pages: m.db_pages,
        last_commit_ms: m.last_commit_ms,
        watched_until_ms: None,
    }
}
