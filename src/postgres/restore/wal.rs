//! What recovery will read, checked before a restore hands over: every WAL segment from the
//! backup's start to the target (or the archive's end) is archived and decodes; and the
//! time of the archive's last transaction. Reads the replica only.

use super::*;

// Events name the parent module as their target: log lines read as they did before the
// module was split out.

/// The WAL `check_wal` read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalChecked {
    pub segments: usize,
    pub bytes: u64,
    pub first: String,
    pub last: String,
    /// The last segment read was joined from streamed chunks: its name and how far.
    pub joined: Option<(String, u32)>,
}

/// The segment the backup's WAL starts in, from its label's `START WAL LOCATION: … (file
/// <name>)` line.
pub(super) fn start_file(label: &str) -> Option<WalFile> {
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let name = line.split("(file ").nth(1)?.split(')').next()?;
    match WalFile::parse(name)? {
        f @ WalFile::Segment { .. } => Some(f),
        _ => None,
    }
}

/// Before anything is handed to PostgreSQL: every WAL segment recovery will read, from
/// the backup's start along the latest timeline's line to the target (or the archive's
/// end), is archived, and each decodes (CRC, its own name inside). A gap or a damaged
/// object is refused by name: recovery would end there and promote without the rest.
pub(super) async fn check_wal(
    replica: &Replica,
    catalog: &crate::catalog::Catalog,
    generation: &GenerationId,
    manifest: &BackupManifest,
    target_ms: Option<u64>,
) -> Result<WalChecked> {
    use futures::StreamExt;
    let refuse = |reason: String| Error::Replica {
        replica: replica.url().to_string(),
        reason,
    };
    let first = start_file(&manifest.backup_label)
        .ok_or_else(|| refuse("the backup's label names no START WAL LOCATION file".to_string()))?;
    let empty = crate::catalog::Generation::default();
    let gen_ = catalog.generations.get(generation).unwrap_or(&empty);
    let wal = &gen_.wal[..];
    let mut archived: BTreeMap<u32, std::collections::BTreeSet<(u32, u32)>> = BTreeMap::new();
    // Segments stored whole, and those a streaming sidecar stored chunks of from their
    // first byte (joined, the last one padded: recovery ends in it).
    let joinable = gen_
        .chunks
        .iter()
        .map(|(c, _)| c.segment)
        .filter(|f| crate::postgres::chunks::joined_upto(gen_, f) > 0);
    for f in wal.iter().map(|(f, _)| *f).chain(joinable) {
        if let WalFile::Segment { timeline, log, seg } = f {
            archived.entry(timeline).or_default().insert((log, seg));
        }
    }
    // The latest timeline, as recovery (`recovery_target_timeline = 'latest'`) finds it.
    let latest = wal
        .iter()
        .map(|(f, _)| f.timeline())
        .chain([first.timeline()])
        .max()
        .unwrap_or(1);
    let ancestry = if latest > first.timeline() {
        crate::catalog::read_history(replica, generation, latest).await?
    } else {
        Vec::new()
    };
    // The segment size, from the start segment's own page header.
    let fetch = |f: WalFile| async move {
        let whole = wal.iter().any(|(w, _)| *w == f);
        let chunks = crate::postgres::chunks::of_segment(gen_, &f);
        match crate::postgres::chunks::read(replica, generation, f, whole, &chunks).await {
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
            Ok(Some(s)) => return Ok::<_, Error>((f, s.stored, s.raw, s.joined)),
            Ok(None) => {}
        }
        Err(Error::Replica {
            replica: replica.url().to_string(),
            reason: format!(
                "WAL segment {f} ({}) is listed but cannot be read: deleted meanwhile?",
                layout::format_pg_wal(generation, &f)
            ),
        })
    };
    let WalFile::Segment { log, seg, .. } = first else {
        unreachable!("start_file returns segments")
    };
    if !archived
        .get(&first.timeline())
        .is_some_and(|s| s.contains(&(log, seg)))
    {
        return Err(refuse(format!(
            "WAL segment {first} ({}), where the base backup's recovery starts, is not \
             archived. Nothing was restored",
            layout::format_pg_wal(generation, &first)
        )));
    }
    // Read once: its page header gives the segment size, and it is the first checked.
    let mut head = Some(fetch(first).await?);
    let seg_size = head
        .as_ref()
        .and_then(|(_, _, raw, _)| crate::postgres::chunks::segment_size(raw))
        .ok_or_else(|| {
            Error::corrupt(
                layout::format_pg_wal(generation, &first),
                "no valid WAL segment size in its first page header",
            )
        })? as u64;
    let per_log = (1u64 << 32) / seg_size;
    let abs = |log: u32, seg: u32| log as u64 * per_log + seg as u64;
    // The line recovery follows: the backup's timeline and each later one of the latest
    // timeline's history, each from where the previous one left (segment numbers).
    let mut line: Vec<(u32, u64)> = vec![(first.timeline(), abs(log, seg))];
    for (i, &(tli, switch)) in ancestry.iter().enumerate() {
        if tli >= first.timeline() {
            let child = ancestry.get(i + 1).map_or(latest, |&(t, _)| t);
            line.push((child, switch / seg_size));
        }
    }
    let mut expected: Vec<WalFile> = Vec::new();
    for (i, &(tli, from)) in line.iter().enumerate() {
        let to = match line.get(i + 1) {
            Some(&(_, next_from)) => next_from.saturating_sub(1),
            None => archived
                .get(&tli)
                .and_then(|s| s.iter().next_back())
                .map_or(0, |&(l, s)| abs(l, s)),
        };
        if from <= to {
            expected.extend((from..=to).map(|n| WalFile::Segment {
                timeline: tli,
                log: (n / per_log) as u32,
                seg: (n % per_log) as u32,
            }));
        }
    }
    let mut checked = WalChecked {
        segments: 0,
        bytes: 0,
        first: first.to_string(),
        last: first.to_string(),
        joined: None,
    };
    let mut prev = first;
    let archived = &archived;
    let mut reads = futures::stream::iter(expected.iter().filter(|f| **f != first).map(|f| {
        let f = *f;
        async move {
            let WalFile::Segment { timeline, log, seg } = f else {
                unreachable!()
            };
            if !archived
                .get(&timeline)
                .is_some_and(|s| s.contains(&(log, seg)))
            {
                return Ok(None);
            }
            fetch(f).await.map(Some)
        }
    }))
    .buffered(4);
    for f in &expected {
        let got = match head.take_if(|(h, _, _, _)| h == f) {
            Some(h) => Some(h),
            None => reads.next().await.expect("one result per file")?,
        };
        let Some((_, n, raw, joined)) = got else {
            let upto = expected.last().expect("non-empty");
            return Err(refuse(format!(
                "WAL segment {f} ({}) is missing from the archive: recovery from the base \
                 backup (WAL from {first}) needs every segment to {upto}, and would stop \
                 after {prev} and promote without the transactions after it. Nothing was \
                 restored",
                layout::format_pg_wal(generation, f)
            )));
        };
        if let Some((_, upto)) = joined
            && u64::from(upto) < seg_size
            && Some(f) != expected.last()
        {
            return Err(refuse(format!(
                "WAL segment {f} is stored only to byte {upto} (streamed chunks, {}.*), but \
                 later WAL of its line is stored: the chunks after it are missing, and \
                 recovery would stop there. Nothing was restored",
                layout::format_pg_wal(generation, f)
            )));
        }
        if let Some((n, upto)) = joined {
            tracing::info!(target: "walship::postgres::restore", file = %f, chunks = n, bytes = upto,
                "WAL segment {f} is joined from {n} streamed chunk(s), WAL to byte {upto}");
        }
        checked.joined = joined.map(|(_, upto)| (f.to_string(), upto));
        checked.segments += 1;
        checked.bytes += n;
        checked.last = f.to_string();
        prev = *f;
        if let (Some(t), WalFile::Segment { log, seg, .. }) = (target_ms, *f)
            && let LastXact::At(ms) = crate::pgformat::walrecords::last_xact_end(&raw, log, seg)
            && ms >= t
        {
            break; // recovery stops in this segment
        }
    }
    Ok(checked)
}

/// Archived segments read, newest first, looking for the last transaction end.
pub(super) const LAST_XACT_SEGMENTS: usize = 4;

/// The time of the last commit or abort in `generation`'s archive, on its newest timeline
/// with segments: read from its newest segments, newest first. `None` when that cannot be
/// told for sure (then the target is left to PostgreSQL).
pub async fn last_archived_xact_ms(
    replica: &Replica,
    catalog: &crate::catalog::Catalog,
    generation: &GenerationId,
) -> Result<Option<u64>> {
    let empty = crate::catalog::Generation::default();
    let g = catalog.generations.get(generation).unwrap_or(&empty);
    let mut segs: Vec<WalFile> = g
        .wal
        .iter()
        .filter_map(|(f, _)| matches!(f, WalFile::Segment { .. }).then_some(*f))
        .chain(g.chunks.iter().map(|(c, _)| c.segment))
        .collect();
    segs.sort();
    segs.dedup();
    let Some(newest_tl) = segs.last().map(WalFile::timeline) else {
        return Ok(None);
    };
    for f in segs
        .iter()
        .rev()
        .filter(|f| f.timeline() == newest_tl)
        .take(LAST_XACT_SEGMENTS)
    {
        let whole = g.wal.iter().any(|(w, _)| w == f);
        let chunks = crate::postgres::chunks::of_segment(g, f);
        let Some(read) =
            crate::postgres::chunks::read(replica, generation, *f, whole, &chunks).await?
        else {
            continue; // chunks that do not start at the segment's start
        };
        let raw = read.raw;
        let WalFile::Segment { log, seg, .. } = *f else {
            continue;
        };
        let found = crate::pgformat::walrecords::last_xact_end(&raw, log, seg);
        tracing::debug!(target: "walship::postgres::restore", file = %f, ?found, "last transaction end");
        match found {
            LastXact::At(ms) => return Ok(Some(ms)),
            LastXact::NoneHere => continue,
            LastXact::Unknown => return Ok(None),
        }
    }
    Ok(None)
}
