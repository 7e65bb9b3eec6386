//! Restoring a replica that Litestream 0.3 wrote: `generations/<16 hex>/snapshots/<index>
//! .snapshot.lz4` (the whole database, one LZ4 frame) and `…/wal/<index>_<offset>.wal.lz4`
//! (a WAL's bytes from that offset; 0.3.0–0.3.4 wrote `wal/<index>/<offset>.wal.lz4`).
//! The newest snapshot of the newest generation, then every WAL after it, frame by frame:
//! each frame's checksum chain checked, committed transactions applied, a damaged or
//! missing piece an error. Only reads the replica.

use super::TempFile;
use crate::error::{Error, Result};
use crate::sqlite::wal::{FrameHeader, WalHeader};
use crate::storage::{Listed, Replica};
use futures::StreamExt;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const FRAME_HEADER: usize = 24;
const WAL_HEADER: usize = 32;

/// One Litestream 0.3 object of a listing of `generations/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Object {
    pub rel: String,
    pub generation: String,
    pub index: u32,
    /// `None` for a snapshot; a WAL segment's byte offset in its WAL.
    pub offset: Option<u64>,
    pub size: u64,
    pub modified_ms: u64,
}

/// A name below the replica path, if it is one of Litestream 0.3's: (generation, WAL
/// index, byte offset for a WAL segment).
pub use crate::catalog::litestream::parse_v03_name as parse_name;

pub fn objects(listing: &[Listed]) -> Vec<V3Object> {
    let mut v: Vec<V3Object> = listing
        .iter()
        .filter_map(|o| {
            let (generation, index, offset) = parse_name(&o.name)?;
            Some(V3Object {
                rel: o.name.clone(),
                generation,
                index,
                offset,
                size: o.size,
                modified_ms: o.modified_ms,
            })
        })
        .collect();
    v.sort_by(|a, b| (&a.generation, a.index, a.offset).cmp(&(&b.generation, b.index, b.offset)));
    v
}

/// The snapshot and the WAL segments after it, in order.
#[derive(Debug, Clone)]
pub struct V3Plan {
    pub generation: String,
    pub snapshot: V3Object,
    pub segments: Vec<V3Object>,
}

/// The newest state: the generation written last, its newest snapshot, and every WAL
/// segment from the snapshot's index on, which must run without a gap (each WAL index
/// starting at offset 0, indexes consecutive).
pub fn plan(all: &[V3Object]) -> Result<V3Plan, String> {
    let generation = all
        .iter()
        .max_by_key(|o| (o.modified_ms, o.generation.clone()))
        .map(|o| o.generation.clone())
        .ok_or("no Litestream 0.3 objects")?;
    let mine: Vec<&V3Object> = all.iter().filter(|o| o.generation == generation).collect();
    let snapshot = mine
        .iter()
        .filter(|o| o.offset.is_none())
        .max_by_key(|o| o.index)
        .map(|o| (*o).clone())
        .ok_or_else(|| {
            format!("Litestream 0.3 generation {generation} holds WAL segments but no snapshot")
        })?;
    let segments: Vec<V3Object> = mine
        .iter()
        .filter(|o| o.offset.is_some() && o.index >= snapshot.index)
        .map(|o| (*o).clone())
        .collect();
    let mut want = snapshot.index;
    for s in &segments {
        if s.offset == Some(0) {
            if s.index != want {
                return Err(format!(
                    "generation {generation}: WAL index {want:08x} is missing (the next one is \
                     {:08x})",
                    s.index
                ));
            }
            want += 1;
        } else if s.index + 1 != want {
            return Err(format!(
                "generation {generation}: WAL index {:08x} has no segment at offset 0",
                s.index
            ));
        }
    }
    Ok(V3Plan {
        generation,
        snapshot,
        segments,
    })
}

fn corrupt(replica: &Replica, rel: &str, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        object: replica.path(rel).to_string(),
        reason: format!("Litestream 0.3 object: {}", reason.into()),
    }
}

fn unlz4(replica: &Replica, rel: &str, b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    lz4_flex::frame::FrameDecoder::new(b)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(replica, rel, format!("LZ4: {e}")))?;
    Ok(out)
}

/// What a restore did.
#[derive(Debug)]
pub struct V3Report {
    pub pages: u32,
    pub downloaded: u64,
    pub transactions: u64,
}

/// Download the plan, apply it into a temporary file beside `output`, check, move into
/// place.
pub async fn restore(
    replica: &Replica,
    plan: &V3Plan,
    output: &Path,
    parallelism: usize,
    integrity_check: bool,
) -> Result<V3Report> {
    let tmp = TempFile::create(output)?;
    let snap = replica.get(&plan.snapshot.rel).await?;
    let mut downloaded = snap.len() as u64;
    let db = unlz4(replica, &plan.snapshot.rel, &snap)?;
    if db.len() < 100 || &db[..16] != b"SQLite format 3\0" {
        return Err(corrupt(
            replica,
            &plan.snapshot.rel,
            "not an SQLite database",
        ));
    }
    let raw = u16::from_be_bytes([db[16], db[17]]);
    let ps: u64 = if raw == 1 { 65536 } else { raw as u64 };
    if !(512..=65536).contains(&ps)
        || !ps.is_power_of_two()
        || !(db.len() as u64).is_multiple_of(ps)
    {
        return Err(corrupt(
            replica,
            &plan.snapshot.rel,
            format!("page size {ps} and {} bytes do not fit", db.len()),
        ));
    }
    let file = tmp.file();
    file.write_all_at(&db, 0)
        .map_err(|e| Error::io(tmp.path(), e))?;
    let mut len = db.len() as u64;
    drop(db);
    let mut downloads = futures::stream::iter(
        plan.segments
            .iter()
            .map(|s| async move { Ok::<_, Error>((s, replica.get(&s.rel).await?)) }),
    )
    .buffered(parallelism.max(1));
    // The WAL being assembled, and where each of its segments starts in it.
    let mut wal: Vec<u8> = Vec::new();
    let mut parts: Vec<(u64, String)> = Vec::new();
    let mut transactions = 0;
    let mut current: Option<u32> = None;
    while let Some(got) = downloads.next().await {
        let (s, bytes) = got?;
        downloaded += bytes.len() as u64;
        if current != Some(s.index) {
            if current.is_some() {
                transactions += apply_wal(replica, &parts, &wal, ps, (file, tmp.path()), &mut len)?;
            }
            wal.clear();
            parts.clear();
            current = Some(s.index);
        }
        if s.offset != Some(wal.len() as u64) {
            return Err(corrupt(
                replica,
                &s.rel,
                format!(
                    "starts at byte {} of its WAL, but the segments before it end at {}",
                    s.offset.unwrap_or(0),
                    wal.len()
                ),
            ));
        }
        parts.push((wal.len() as u64, s.rel.clone()));
        wal.extend(unlz4(replica, &s.rel, &bytes)?);
    }
    if current.is_some() {
        transactions += apply_wal(replica, &parts, &wal, ps, (file, tmp.path()), &mut len)?;
    }
    tmp.finish(len, integrity_check, output)?;
    Ok(V3Report {
        pages: (len / ps) as u32,
        downloaded,
        transactions,
    })
}

/// Apply one WAL's committed transactions (checksum chain checked frame by frame); frames
/// after the last commit are not applied. `parts`: where each segment starts in `wal`, to
/// name the one that holds a bad byte; the database file being built, and its path for
/// messages. Returns the transactions applied.
fn apply_wal(
    replica: &Replica,
    parts: &[(u64, String)],
    wal: &[u8],
    ps: u64,
    (file, path): (&std::fs::File, &Path),
    len: &mut u64,
) -> Result<u64> {
    let at = |byte: u64| {
        parts
            .iter()
            .rev()
            .find(|(start, _)| *start <= byte)
            .or(parts.first())
            .map_or("", |(_, r)| r.as_str())
    };
    let bad = |byte: u64, why: String| corrupt(replica, at(byte), why);
    let hdr = WalHeader::parse(wal).map_err(|e| bad(0, format!("WAL header: {e}")))?;
    if hdr.page_size as u64 != ps {
        return Err(bad(
            0,
            format!(
                "WAL page size {} differs from the snapshot's {ps}",
                hdr.page_size
            ),
        ));
    }
    let frame = FRAME_HEADER + ps as usize;
    let body = &wal[WAL_HEADER..];
    if !body.len().is_multiple_of(frame) {
        return Err(bad(
            wal.len() as u64 - 1,
            format!("the WAL's {} bytes are not whole frames", wal.len()),
        ));
    }
    let mut sum = hdr.cksum;
    let mut pending: Vec<(u32, &[u8])> = Vec::new();
    let mut applied = 0;
    for (n, f) in body.chunks(frame).enumerate() {
        let fh = FrameHeader::from_slice(&f[..FRAME_HEADER]);
        let page = &f[FRAME_HEADER..];
        let byte = (WAL_HEADER + n * frame) as u64;
        sum = fh.verify(&hdr, sum, page).ok_or_else(|| {
            bad(
                byte,
                format!(
                    "WAL frame {} fails its checksum or salt (damaged, or not of this WAL)",
                    n + 1
                ),
            )
        })?;
        pending.push((fh.pgno(), page));
        if fh.is_commit() {
            for (pgno, data) in pending.drain(..) {
                file.write_all_at(data, (pgno as u64 - 1) * ps)
                    .map_err(|e| Error::io(path, e))?;
            }
            *len = fh.commit_size() as u64 * ps;
            file.set_len(*len).map_err(|e| Error::io(path, e))?;
            applied += 1;
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(rel: &str, ms: u64) -> V3Object {
        let (generation, index, offset) = parse_name(rel).unwrap();
        V3Object {
            rel: rel.into(),
            generation,
            index,
            offset,
            size: 1,
            modified_ms: ms,
        }
    }

    #[test]
    fn names_of_both_wal_layouts() {
        assert_eq!(
            parse_name("generations/0123456789abcdef/wal/00000002_00001000.wal.lz4"),
            Some(("0123456789abcdef".into(), 2, Some(0x1000)))
        );
        assert_eq!(
            parse_name("generations/0123456789abcdef/wal/00000002/00001000.wal.lz4"),
            Some(("0123456789abcdef".into(), 2, Some(0x1000)))
        );
        assert_eq!(
            parse_name("generations/0123456789abcdef/snapshots/00000001.snapshot.lz4"),
            Some(("0123456789abcdef".into(), 1, None))
        );
        for bad in [
            "generations/0123456789abcdef01234/snapshots/00000001.snapshot.lz4",
            "generations/0123456789abcdef/snapshots/1.snapshot.lz4",
            "generations/0123456789abcdef/wal/00000002.wal",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_newest_generation_its_newest_snapshot_and_every_wal_after() {
        let g1 = "generations/1111111111111111";
        let g2 = "generations/2222222222222222";
        let all = objects(&[]);
        assert!(plan(&all).is_err());
        let all = vec![
            o(&format!("{g1}/snapshots/00000000.snapshot.lz4"), 1),
            o(&format!("{g2}/snapshots/00000000.snapshot.lz4"), 5),
            o(&format!("{g2}/snapshots/00000002.snapshot.lz4"), 8),
            o(&format!("{g2}/wal/00000001_00000000.wal.lz4"), 6),
            o(&format!("{g2}/wal/00000002_00000000.wal.lz4"), 8),
            o(&format!("{g2}/wal/00000002_00001000.wal.lz4"), 9),
            o(&format!("{g2}/wal/00000003_00000000.wal.lz4"), 10),
        ];
        let p = plan(&all).unwrap();
        assert_eq!(p.generation, "2222222222222222");
        assert_eq!(p.snapshot.index, 2);
        let segs: Vec<(u32, Option<u64>)> =
            p.segments.iter().map(|s| (s.index, s.offset)).collect();
        assert_eq!(segs, [(2, Some(0)), (2, Some(0x1000)), (3, Some(0))]);
        let gap = vec![
            o(&format!("{g2}/snapshots/00000000.snapshot.lz4"), 5),
            o(&format!("{g2}/wal/00000001_00000000.wal.lz4"), 6),
        ];
        assert!(plan(&gap).unwrap_err().contains("00000000 is missing"));
        let no_start = vec![
            o(&format!("{g2}/snapshots/00000000.snapshot.lz4"), 5),
            o(&format!("{g2}/wal/00000000_00000100.wal.lz4"), 6),
        ];
        assert!(
            plan(&no_start)
                .unwrap_err()
                .contains("no segment at offset 0")
        );
    }
}
