//! The capture journal: one local append-only file beside the spool. Every WAL scan's
//! whole transactions are appended to it before capture moves on, and it is emptied each
//! time they are cut into a spool segment. After a crash, start-up turns what it holds
//! into the segment the dead process never cut, in the same generation (invariant 9).
//! Beside it, the watch stamp: until when capture last proved that nothing followed its
//! newest transaction. Knows nothing of the object store; record bytes are
//! `format::journal`'s.

use super::capture::ResumePoint;
use super::spool::{Spool, SpoolEntry};
use crate::error::{Error, Result};
use crate::format::journal::{self, Record, RecordRef};
use crate::format::segment::{Segment, SegmentBuilder, SegmentMeta};
use crate::storage::layout::GenerationId;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "journal.wjnl";

pub struct Journal {
    path: PathBuf,
    file: File,
    /// fsync after every append (`journal-fsync`): survives a node crash, not only a
    /// process crash, at one fsync per scan that found commits.
    fsync: bool,
    /// Bytes appended since the last clear (the journal holds at most one segment's worth):
    /// where the next record goes. The file is overwritten in place from its start.
    pub bytes: u64,
    /// This run of records: bumped at every clear, so that what an earlier run left beyond
    /// the current tail is never read as part of it.
    epoch: u64,
    /// A record was left out (no room within spool-limit): later ones would not continue
    /// the journal, so none is appended until the next clear.
    skipping: bool,
    /// The file's length: its high-water mark, since it is overwritten, not truncated.
    pub file_len: u64,
    /// The watch stamp beside it, and what an earlier run left in it.
    pub watched: Watched,
    pub left_watched: Option<WatchedUntil>,
}

impl Journal {
    /// Open (creating) the journal in `dir` and return the whole records an earlier run
    /// left in it, in order. A torn tail (the process died mid-append) is reported and
    /// ignored: those transactions had not been handed on yet.
    pub fn open(dir: &Path, fsync: bool) -> Result<(Journal, Vec<Record>)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let old = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let (records, torn) = journal::decode_all(&old);
        if let Some(why) = torn {
            tracing::warn!(file = %path.display(), records = records.len(),
                "capture journal ends in a partial record ({why}); it is ignored");
        }
        let file = open_rw(&path)?;
        let epoch = records.iter().map(|r| r.epoch).max().unwrap_or(0) ^ random_u64();
        let (watched, left_watched) = Watched::open(dir)?;
        // `bytes` at the old length: a `clear` (the caller's, once it has recovered the
        // records) must run before anything is appended over them.
        let j = Journal {
            path,
            file,
            fsync,
            bytes: old.len() as u64,
            epoch,
            skipping: false,
            file_len: old.len() as u64,
            watched,
            left_watched,
        };
        Ok((j, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one scan's transactions, for `generation`.
    pub fn append(&mut self, generation: &GenerationId, r: RecordRef<'_>) -> std::io::Result<()> {
        if self.skipping {
            return Ok(());
        }
        let r = RecordRef {
            generation: generation.as_str(),
            ..r
        };
        // Three writes rather than one copy of the frames into a record buffer.
        let (head, crc) = r.encode_parts(self.epoch);
        let mut at = self.bytes;
        self.file.write_all_at(&head, at)?;
        at += head.len() as u64;
        self.file.write_all_at(r.frames, at)?;
        at += r.frames.len() as u64;
        self.file.write_all_at(&crc.to_be_bytes(), at)?;
        at += 4;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.bytes = at;
        self.file_len = self.file_len.max(at);
        Ok(())
    }

    /// Drop the file's stale tail beyond the current records (always safe).
    pub fn trim(&mut self) -> std::io::Result<()> {
        if self.file_len > self.bytes {
            self.file.set_len(self.bytes)?;
            self.file_len = self.bytes;
        }
        Ok(())
    }

    /// Disk the journal takes once a record of `len` bytes is appended.
    pub fn size_with(&self, len: usize) -> u64 {
        self.file_len.max(self.bytes + len as u64)
    }

    /// Leave this record and every later one out until the next clear: what was appended
    /// stays a valid prefix for recovery.
    pub fn skip(&mut self) {
        self.skipping = true;
    }

    /// Forget everything appended: it is in a spool segment (or belongs to a generation
    /// that ended) now. The file keeps its blocks (re-allocating them at every append cost
    /// more CPU than the journal's writes) unless they would not fit in `room`, the part
    /// of spool-limit the spool leaves; zeros at its start end the journal until the next
    /// record, and a new epoch keeps older records out of the next run.
    pub fn clear(&mut self, room: u64) -> std::io::Result<()> {
        self.skipping = false;
        if self.file_len > room {
            self.file.set_len(0)?;
            self.file_len = 0;
            self.bytes = 0;
            self.epoch = self.epoch.wrapping_add(1);
            return Ok(());
        }
        if self.bytes == 0 {
            return Ok(());
        }
        self.file.write_all_at(&[0u8; 4], 0)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.bytes = 0;
        self.epoch = self.epoch.wrapping_add(1);
        Ok(())
    }
}

/// Turn the records a killed run left into the segment it never cut: the records of the
/// resume point's generation that continue it exactly (txid after txid), rebuilt into one
/// segment, verified end to end (SQLite's checksum chain from the resume position), and
/// written to the spool. Returns the spool entry and the resume point after it, or `None`
/// when no record continues `rp`.
pub fn recover(
    records: &[Record],
    rp: &ResumePoint,
    spool: &Spool,
) -> Result<Option<(SpoolEntry, ResumePoint)>> {
    let mut next = rp.txid + 1;
    let mut chain: Vec<&Record> = Vec::new();
    let foreign = records
        .iter()
        .filter(|r| r.generation != rp.generation.as_str())
        .count();
    if foreign > 0 {
        tracing::warn!(generation = %rp.generation, records = foreign,
            "capture journal records of a generation that cannot be continued; ignored");
    }
    for r in records {
        if r.generation != rp.generation.as_str() || r.last_txid < next {
            continue; // another generation's, or already in the spool or the replica
        }
        if r.first_txid != next || r.page_size != rp.page_size {
            tracing::warn!(generation = %rp.generation, txid = next,
                "capture journal does not continue the generation at txid {next}; ignored");
            break;
        }
        next = r.last_txid + 1;
        chain.push(r);
    }
    let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
        return Ok(None);
    };
    let mut b = SegmentBuilder::new(rp.page_size);
    for r in &chain {
        let base = b.frames();
        b.frames_tail(r.frames.len() / frame_len(rp.page_size))
            .copy_from_slice(&r.frames);
        for &(i, ms) in &r.commits {
            b.mark_commit(base + i, ms);
        }
        b.seal(b.frames());
    }
    let meta = SegmentMeta {
        page_size: rp.page_size,
        first_txid: rp.txid + 1,
        last_txid: last.last_txid,
        first_commit_ms: first.commits[0].1,
        last_commit_ms: last.last_commit_ms,
        frame_count: b.frames(),
        db_pages: last.db_pages,
        start: rp.pos,
        end: last.end,
    };
    let bytes = b.encode(&meta);
    if let Err(e) = Segment::decode(&bytes) {
        tracing::warn!(generation = %rp.generation,
            "capture journal does not verify against the generation's position ({e}); ignored");
        return Ok(None);
    }
    let entry = spool.write(&rp.generation, &meta, &bytes)?;
    tracing::info!(generation = %rp.generation, first_txid = meta.first_txid,
        last_txid = meta.last_txid, "recovered transactions from the capture journal");
    Ok(Some((
        entry,
        ResumePoint {
            generation: rp.generation.clone(),
            txid: meta.last_txid,
            pos: meta.end,
            page_size: meta.page_size,
            db_pages: meta.db_pages,
            last_commit_ms: meta.last_commit_ms,
            watched_until_ms: None,
        },
    )))
}

const WATCHED_FILE: &str = "watched";
/// The stamp's fixed size: one `pwrite` of it replaces the last (atomic for a SIGKILL).
const WATCHED_LEN: usize = 128;

/// Capture's last proof that no commit followed transaction `txid` of `generation`: a
/// WAL-index check at `ms`, with the read lock held, that found nothing new. When a restart
/// must begin a new generation (the WAL was reset while walship was down), that
/// generation's manifest carries it, and a restore between the two generations is exact
/// up to `ms` instead of refused (docs/CAPTURE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedUntil {
    pub generation: GenerationId,
    pub txid: u64,
    pub ms: u64,
}

impl WatchedUntil {
    fn encode(&self) -> [u8; WATCHED_LEN] {
        let body = format!(
            "walship-watched 1 {} {} {}",
            self.generation, self.txid, self.ms
        );
        let line = format!("{body} {:08x}\n", crc32fast::hash(body.as_bytes()));
        let mut b = [b' '; WATCHED_LEN];
        b[..line.len()].copy_from_slice(line.as_bytes());
        b
    }

    /// `None` for anything but a whole stamp of this format: a stamp only ever narrows
    /// what restore refuses, so a doubtful one is dropped.
    fn decode(b: &[u8]) -> Option<WatchedUntil> {
        let line = std::str::from_utf8(b).ok()?.lines().next()?;
        let (body, crc) = line.rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
            return None;
        }
        let mut f = body.split(' ');
        if (f.next()?, f.next()?) != ("walship-watched", "1") {
            return None;
        }
        let w = WatchedUntil {
            generation: GenerationId::parse(f.next()?)?,
            txid: f.next()?.parse().ok()?,
            ms: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(w)
    }
}

/// The watch stamp's file beside the journal, rewritten in place.
pub struct Watched {
    file: File,
    last: Option<WatchedUntil>,
}

impl Watched {
    /// Open (creating) the stamp in `dir`, returning what an earlier run left.
    pub fn open(dir: &Path) -> Result<(Watched, Option<WatchedUntil>)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(WATCHED_FILE);
        let file = open_rw(&path)?;
        let mut b = [0u8; WATCHED_LEN];
        let n = file.read_at(&mut b, 0).map_err(|e| Error::io(&path, e))?;
        let left = WatchedUntil::decode(&b[..n]);
        Ok((Watched { file, last: None }, left))
    }

    /// Whether a stamp at `ms` is worth writing: a new state, or `every_ms` after the last.
    pub fn due(&self, generation: &GenerationId, txid: u64, ms: u64, every_ms: u64) -> bool {
        self.last.as_ref().is_none_or(|l| {
            (&l.generation, l.txid) != (generation, txid) || ms >= l.ms.saturating_add(every_ms)
        })
    }

    pub fn write(&mut self, w: WatchedUntil) -> std::io::Result<()> {
        self.file.write_all_at(&w.encode(), 0)?;
        self.last = Some(w);
        Ok(())
    }

    /// The last stamp this run wrote.
    pub fn last(&self) -> Option<&WatchedUntil> {
        self.last.as_ref()
    }
}

/// Open `path` for reading and writing, creating it, keeping what it holds.
pub(super) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

fn frame_len(page_size: u32) -> usize {
    crate::sqlite::wal::FRAME_HEADER_LEN + page_size as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::tracker::Tracker;
    use crate::sqlite::wal::{FrameHeader, WalHeader, WalPosition};
    use std::io::Write;

    /// A WAL with `n` single-frame transactions, and a tracker at its start.
    fn wal(n: u32) -> (tempfile::NamedTempFile, WalHeader) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let raw = WalHeader::encode(false, 512, 0, 7, 9);
        f.write_all(&raw).unwrap();
        let hdr = WalHeader::parse(&raw).unwrap();
        let mut running = hdr.cksum;
        for i in 0..n {
            let page = vec![i as u8; 512];
            let (fh, c) = FrameHeader::encode(&hdr, running, 2 + i, 2 + i, &page);
            f.write_all(&fh.0).unwrap();
            f.write_all(&page).unwrap();
            running = c;
        }
        (f, hdr)
    }

    #[test]
    fn the_watch_stamp_survives_a_restart_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, left) = Watched::open(dir.path()).unwrap();
        assert_eq!(left, None);
        let g = GenerationId::new(1000, 1);
        let at = |txid, ms| WatchedUntil {
            generation: g.clone(),
            txid,
            ms,
        };
        assert!(w.due(&g, 5, 100, 20));
        w.write(at(5, 100)).unwrap();
        assert!(!w.due(&g, 5, 110, 20), "too soon after the last");
        assert_eq!(Watched::open(dir.path()).unwrap().1, Some(at(5, 100)));
        assert!(w.due(&g, 6, 111, 20), "a new transaction");
        assert!(w.due(&g, 5, 120, 20));
        w.write(at(6, 131)).unwrap();
        drop(w);
        assert_eq!(Watched::open(dir.path()).unwrap().1, Some(at(6, 131)));
        // A flipped digit fails the checksum; a foreign or short file is no stamp.
        let path = dir.path().join(WATCHED_FILE);
        let good = std::fs::read(&path).unwrap();
        let text = String::from_utf8(good.clone())
            .unwrap()
            .replace(" 131 ", " 931 ");
        for bad in [text.as_bytes(), b"hello", &good[..40], b""] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(Watched::open(dir.path()).unwrap().1, None);
        }
    }

    #[test]
    fn a_killed_runs_journal_becomes_the_segment_it_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let g = GenerationId::new(1000, 1);
        let (mut journal, old) = Journal::open(dir.path(), false).unwrap();
        assert!(old.is_empty());
        let (f, hdr) = wal(5);
        let start = WalPosition::start_of(&hdr, 0);
        let mut t = Tracker::new(start, 0, 512, 1, 0);
        // Two scans' worth, appended as capture does; then the process "dies".
        for (mx, now) in [(2u32, 100u64), (5, 200)] {
            t.read_hint = Some((7, 9, mx));
            t.scan_with(f.as_file(), now, usize::MAX, &mut |r| journal.append(&g, r))
                .unwrap();
        }
        let want = t.take_segment().unwrap().1;
        drop(journal);
        let (_, records) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(records.len(), 2);
        let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
        let rp = ResumePoint {
            generation: g.clone(),
            txid: 0,
            pos: start,
            page_size: 512,
            db_pages: 1,
            last_commit_ms: 0,
            watched_until_ms: None,
        };
        let (entry, after) = recover(&records, &rp, &spool).unwrap().unwrap();
        assert_eq!((after.txid, after.pos), (5, t.pos));
        let got = Segment::decode(&std::fs::read(&entry.path).unwrap()).unwrap();
        let want = Segment::decode(&want).unwrap();
        assert_eq!(got.meta, want.meta);
        assert_eq!(
            got.frames().map(|f| f.page.to_vec()).collect::<Vec<_>>(),
            want.frames().map(|f| f.page.to_vec()).collect::<Vec<_>>()
        );
        // Already spooled (a crash after the cut, before the journal was emptied): nothing.
        assert!(recover(&records, &after, &spool).unwrap().is_none());
        // Another generation's records continue nothing.
        let other = ResumePoint {
            generation: GenerationId::new(2000, 2),
            ..rp.clone()
        };
        assert!(recover(&records, &other, &spool).unwrap().is_none());
        // Records that do not start right after the resume point are not glued on.
        let gap = ResumePoint { txid: 1, ..rp };
        assert!(recover(&records[1..], &gap, &spool).unwrap().is_none());
    }
}
