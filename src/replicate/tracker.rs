//! Follows one database's WAL file: consumes whole committed transactions after the
//! current position (salts and checksum chain verified, invariant 2), stamps each commit
//! with the time it was seen, and decides whether a changed WAL header continues the same
//! history or breaks it (invariant 1). Knows nothing of locks or storage: the capture loop
//! tells it, through `ResetPolicy`, what the locks it holds make provable.

use crate::format::journal::RecordRef;
use crate::format::segment::{SegmentBuilder, SegmentMeta};
use crate::sqlite::wal::{FRAME_HEADER_LEN, FrameHeader, WAL_HEADER_LEN, WalHeader, WalPosition};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Which WAL resets, seen from the current position, are proof-safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPolicy {
    /// Any reset would mean frames walship never saw: continuity is lost.
    Forbidden,
    /// Exactly one reset is safe (walship stepped out for an app checkpoint and watched).
    Once,
    /// Any number is safe: the read mark was taken under the write lock at the WAL's end,
    /// and nothing was consumed since, so every reset starts from this position.
    Any,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// `commits` new transactions consumed; `more` when the byte budget stopped the scan
    /// before the end of the WAL.
    Progress { commits: u64, more: bool },
    /// The WAL no longer continues the position; the reason says why.
    Lost(String),
    /// A transaction of `bytes` raw frame bytes, more than `tx_limit`, was consumed
    /// without keeping its frames (position, page index and database size follow it; the
    /// txid does not): it can only ship as a snapshot taken at the new position.
    Large { bytes: u64 },
}

/// Committed frames consumed but not yet handed on as a segment.
struct Pending {
    builder: SegmentBuilder,
    start: WalPosition,
    first_txid: u64,
    first_ms: Option<u64>,
}

pub struct Tracker {
    pub pos: WalPosition,
    /// Last consumed transaction id of the generation.
    pub txid: u64,
    pub page_size: u32,
    /// Database size in pages after the last consumed transaction.
    pub db_pages: u32,
    pub last_commit_ms: u64,
    pub reset_policy: ResetPolicy,
    /// False while skipping frames a snapshot will hold: positions advance, nothing is kept.
    pub collect: bool,
    /// The header of the WAL `pos` is in (`None` while the WAL file is empty).
    pub hdr: Option<WalHeader>,
    /// `(salt1, salt2, mxFrame)` from the WAL-index, set before a scan: frames past
    /// mxFrame are not committed yet (or are stale ones from before a reset), so the scan
    /// need not read them. Used once.
    pub read_hint: Option<(u32, u32, u32)>,
    /// WAL-index samples taken between scans: (salt1, salt2, mxFrame, when read), oldest
    /// first. A commit frame a sample already covered is stamped with that sample's time,
    /// not the scan's: scans are spaced for CPU, samples for the stamps' precision.
    pub seen: Vec<(u32, u32, u32, u64)>,
    /// Largest transaction (raw frame bytes) kept as frames; a larger one is consumed
    /// without its frames (`Scan::Large`), so its size never becomes walship's memory.
    pub tx_limit: usize,
    /// Set when a scan stopped before a transaction larger than `tx_limit`, so that the
    /// transactions before it can be cut first.
    pub large_ahead: bool,
    /// Latest committed frame of each page in the current WAL (for snapshots).
    index: HashMap<u32, u32>,
    pending: Pending,
    buf: Vec<u8>,
}

/// The segment buffer is kept between segments up to this size.
const KEEP_BUFFER: usize = 4 << 20;
/// Frames read per `pread` while scanning.
const READ_FRAMES: usize = 64;

impl Tracker {
    pub fn new(pos: WalPosition, txid: u64, page_size: u32, db_pages: u32, last_ms: u64) -> Self {
        Tracker {
            pos,
            txid,
            page_size,
            db_pages,
            last_commit_ms: last_ms,
            reset_policy: ResetPolicy::Forbidden,
            collect: true,
            hdr: None,
            read_hint: None,
            seen: Vec::new(),
            tx_limit: usize::MAX,
            large_ahead: false,
            index: HashMap::new(),
            pending: Pending {
                builder: SegmentBuilder::new(page_size),
                start: pos,
                first_txid: txid + 1,
                first_ms: None,
            },
            buf: Vec::new(),
        }
    }

    /// Read the WAL header, if the file has a valid one.
    pub fn read_header(wal: &File) -> io::Result<Option<WalHeader>> {
        let mut hb = [0u8; WAL_HEADER_LEN];
        match wal.read_exact_at(&mut hb, 0) {
            Ok(()) => Ok(WalHeader::parse(&hb).ok()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Consume committed transactions after `pos`. Stops at the first frame that does not
    /// continue the checksum chain, or after a commit once `budget` bytes are pending.
    pub fn scan(&mut self, wal: &File, now_ms: u64, budget: usize) -> io::Result<Scan> {
        self.scan_with(wal, now_ms, budget, &mut |_| Ok(()))
    }

    /// `scan`, handing the transactions it consumed (raw frames, commit times) to
    /// `journal` before they are taken into the segment encoding: capture appends them to
    /// its local journal, so that what walship has read survives its own crash.
    pub fn scan_with(
        &mut self,
        wal: &File,
        now_ms: u64,
        budget: usize,
        journal: &mut dyn FnMut(RecordRef<'_>) -> io::Result<()>,
    ) -> io::Result<Scan> {
        self.large_ahead = false;
        let Some(hdr) = Self::read_header(wal)? else {
            // Empty or truncated WAL (e.g. just after a TRUNCATE checkpoint): nothing new.
            return Ok(Scan::Progress {
                commits: 0,
                more: false,
            });
        };
        if !self.pos.same_wal(&hdr) {
            let resets = self.pos.resets_to(&hdr);
            let ok = match (resets, self.reset_policy) {
                // The first header after an empty WAL: nothing can have been skipped as
                // long as the read mark was taken on the empty WAL.
                _ if self.pos.is_empty_wal() => self.reset_policy != ResetPolicy::Forbidden,
                (Some(1), ResetPolicy::Once) | (Some(_), ResetPolicy::Any) => true,
                _ => false,
            };
            if !ok {
                return Ok(Scan::Lost(match resets {
                    Some(n) => format!(
                        "the WAL was reset {n} time(s) where walship could not prove it had \
                         read it to its end"
                    ),
                    None => "the WAL was replaced (its salts do not follow from the last \
                             position)"
                        .into(),
                }));
            }
            if hdr.page_size != self.page_size {
                return Ok(Scan::Lost("the page size changed".into()));
            }
            self.pos = WalPosition::start_of(&hdr, self.pos.epoch + 1);
            self.index.clear();
        }
        self.hdr = Some(hdr);

        let frame_len = hdr.frame_len() as usize;
        // With a hint for this WAL the committed frames are known to be in the file; only
        // without one is its size needed.
        let (limit, len) = match self.read_hint.take() {
            Some((s1, s2, mx)) if (s1, s2) == (hdr.salt1, hdr.salt2) => {
                (mx, hdr.frame_offset(mx.max(1)) + frame_len as u64)
            }
            _ => (u32::MAX, wal.metadata()?.len()),
        };
        let (mut frame, mut running) = (self.pos.frame, self.pos.cksum);
        let scan_start = self.pending.builder.frames();
        let txid_at_start = self.txid;
        let mut keep = scan_start;
        let mut tx_pages: Vec<(u32, u32)> = Vec::new();
        let mut commits = 0u64;
        let mut more = false;
        // Frames of the current (unfinished) transaction, and whether it is being read
        // without keeping its frames because it outgrew `tx_limit`.
        let mut tx_frames = 0usize;
        let mut skipping = !self.collect;
        let mut large: Option<u64> = None;
        'read: loop {
            let off = hdr.frame_offset(frame + 1);
            let avail = (len.saturating_sub(off) as usize / frame_len)
                .min(limit.saturating_sub(frame) as usize);
            if avail == 0 {
                break;
            }
            let n = avail.min(READ_FRAMES);
            // Read straight into the segment being built (or a scratch buffer when
            // skipping), then verify in place: each WAL byte is copied once.
            let base = self.pending.builder.frames();
            let base_bytes = self.pending.builder.raw_len();
            let mut marks: Vec<(u32, u64)> = Vec::new();
            let buf: &mut [u8] = if !skipping {
                self.pending.builder.frames_tail(n)
            } else {
                self.buf.resize(n * frame_len, 0);
                &mut self.buf
            };
            wal.read_exact_at(buf, off)?;
            let mut valid = 0;
            let mut stop = false;
            let mut outgrown = false;
            for f in buf.chunks_exact(frame_len) {
                let fh = FrameHeader::from_slice(f);
                let Some(c) = fh.verify(&hdr, running, &f[FRAME_HEADER_LEN..]) else {
                    stop = true;
                    break;
                };
                valid += 1;
                frame += 1;
                running = c;
                tx_frames += 1;
                tx_pages.push((fh.pgno(), frame));
                if fh.is_commit() {
                    let seen = self
                        .seen
                        .iter()
                        .find(|s| (s.0, s.1) == (hdr.salt1, hdr.salt2) && s.2 >= frame)
                        .map_or(now_ms, |s| s.3.min(now_ms));
                    let ms = seen.max(self.last_commit_ms);
                    self.db_pages = fh.commit_size();
                    self.last_commit_ms = ms;
                    self.pos.frame = frame;
                    self.pos.cksum = running;
                    self.index.extend(tx_pages.drain(..));
                    // Frames were appended after the read mark: no reset can follow now.
                    self.reset_policy = ResetPolicy::Forbidden;
                    commits += 1;
                    if self.collect && skipping {
                        // The transaction that outgrew `tx_limit`: consumed, not kept.
                        large = Some((tx_frames * frame_len) as u64);
                        stop = true;
                        break;
                    }
                    tx_frames = 0;
                    if self.collect {
                        marks.push((base + valid - 1, ms));
                        self.txid += 1;
                        self.pending.first_ms.get_or_insert(ms);
                        keep = base + valid;
                    }
                    if base_bytes + valid as usize * frame_len >= budget && !skipping {
                        more = true;
                        stop = true;
                        break;
                    }
                } else if self.collect && !skipping && tx_frames * frame_len > self.tx_limit {
                    outgrown = true;
                    break;
                }
            }
            if !skipping {
                // Keep what is verified; the rest is re-read next time.
                self.pending.builder.truncate(base + valid);
                for (i, ms) in marks {
                    self.pending.builder.mark_commit(i, ms);
                }
            }
            if outgrown {
                // Drop the big transaction's frames read so far and go on without keeping
                // them; if earlier transactions are pending, stop first so that capture
                // can cut them into a segment of their own.
                self.pending.builder.truncate(keep);
                if keep > 0 {
                    self.large_ahead = true;
                    more = true;
                    break 'read;
                }
                skipping = true;
                continue;
            }
            if stop {
                break 'read;
            }
        }
        if self.collect {
            // Frames after the last commit belong to a transaction still being written.
            self.pending.builder.truncate(keep);
            if keep > scan_start {
                let first = scan_start;
                let rel: Vec<(u32, u64)> = self
                    .pending
                    .builder
                    .commits_from(first)
                    .iter()
                    .map(|&(i, ms)| (i - first, ms))
                    .collect();
                journal(RecordRef {
                    generation: "",
                    page_size: self.page_size,
                    first_txid: txid_at_start + 1,
                    last_txid: self.txid,
                    db_pages: self.db_pages,
                    last_commit_ms: self.last_commit_ms,
                    end: self.pos,
                    commits: &rel,
                    frames: self.pending.builder.raw_frames(first, keep),
                })?;
            }
            self.pending.builder.seal(keep);
        }
        let at = self.pos;
        self.seen
            .retain(|s| (s.0, s.1) == (at.salt1, at.salt2) && s.2 > at.frame);
        if let Some(bytes) = large {
            return Ok(Scan::Large { bytes });
        }
        Ok(Scan::Progress { commits, more })
    }

    pub fn has_pending(&self) -> bool {
        self.pending.builder.frames() > 0
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.builder.raw_len()
    }

    /// Commit times of the consumed transactions not yet handed on, oldest first.
    pub fn pending_commit_times(&self) -> Vec<u64> {
        self.pending
            .builder
            .commits_from(0)
            .iter()
            .map(|&(_, ms)| ms)
            .collect()
    }

    /// Commit time of the oldest consumed transaction not yet handed on.
    pub fn oldest_pending_ms(&self) -> Option<u64> {
        self.pending.first_ms
    }

    /// Encode the pending transactions as one segment, leaving them pending (see
    /// `clear_pending`, once the segment is safely queued).
    pub fn encode_pending(&mut self) -> Option<(SegmentMeta, Vec<u8>)> {
        let first_ms = self.pending.first_ms?;
        let meta = SegmentMeta {
            page_size: self.page_size,
            first_txid: self.pending.first_txid,
            last_txid: self.txid,
            first_commit_ms: first_ms,
            last_commit_ms: self.last_commit_ms,
            frame_count: self.pending.builder.frames(),
            db_pages: self.db_pages,
            start: self.pending.start,
            end: self.pos,
        };
        let bytes = self.pending.builder.encode(&meta);
        Some((meta, bytes))
    }

    /// Forget the pending transactions (they were queued) and start a new segment.
    pub fn clear_pending(&mut self) {
        self.pending.builder.clear(KEEP_BUFFER);
        self.pending.start = self.pos;
        self.pending.first_txid = self.txid + 1;
        self.pending.first_ms = None;
    }

    /// Encode the pending transactions as one segment and start a new one after it.
    pub fn take_segment(&mut self) -> Option<(SegmentMeta, Vec<u8>)> {
        let seg = self.encode_pending()?;
        self.clear_pending();
        Some(seg)
    }

    /// The latest committed frame holding `pgno` in the current WAL, if any.
    pub fn frame_of(&self, pgno: u32) -> Option<u32> {
        self.index.get(&pgno).copied()
    }

    pub fn page_index(&self) -> &HashMap<u32, u32> {
        &self.index
    }

    /// Start collecting from the current position as transaction `txid + 1` (after a
    /// skip, the skipped transactions are inside a snapshot taken at `txid`).
    pub fn start_collecting(&mut self, txid: u64) {
        self.collect = true;
        self.txid = txid;
        self.pending.builder.clear(KEEP_BUFFER);
        self.pending.start = self.pos;
        self.pending.first_txid = txid + 1;
        self.pending.first_ms = None;
    }

    /// Replace the page index (built while verifying a resumed position).
    pub fn set_index(&mut self, hdr: WalHeader, index: HashMap<u32, u32>) {
        self.hdr = Some(hdr);
        self.index = index;
    }
}

/// Check that `wal` (with header `hdr`) still holds the history up to `pos`: same WAL,
/// and the checksum chain over frames 1..=pos.frame ends at pos's checksum on a commit.
/// Returns the page index of those frames when it does.
pub fn verify_position(
    wal: &File,
    hdr: &WalHeader,
    pos: &WalPosition,
) -> io::Result<Option<HashMap<u32, u32>>> {
    if pos.is_empty_wal() || !pos.same_wal(hdr) || pos.big_endian != hdr.big_endian {
        return Ok(None);
    }
    if pos.frame == 0 {
        return Ok((pos.cksum == hdr.cksum).then(HashMap::new));
    }
    let frame_len = hdr.frame_len() as usize;
    if wal.metadata()?.len() < hdr.frame_offset(pos.frame) + frame_len as u64 {
        return Ok(None);
    }
    let mut index = HashMap::new();
    let mut running = hdr.cksum;
    let mut buf = vec![0u8; READ_FRAMES * frame_len];
    let mut n = 1u32;
    let mut last_commit = false;
    while n <= pos.frame {
        let count = ((pos.frame - n + 1) as usize).min(READ_FRAMES);
        let b = &mut buf[..count * frame_len];
        wal.read_exact_at(b, hdr.frame_offset(n))?;
        for f in b.chunks_exact(frame_len) {
            let fh = FrameHeader::from_slice(f);
            let Some(c) = fh.verify(hdr, running, &f[24..]) else {
                return Ok(None);
            };
            running = c;
            index.insert(fh.pgno(), n);
            last_commit = fh.is_commit();
            n += 1;
        }
    }
    Ok((running == pos.cksum && last_commit).then_some(index))
}

/// Whether the WAL on disk proves it was reset exactly once right after `pos`, with
/// nothing appended to the old WAL after `pos`. SQLite resets a WAL only once every frame
/// of it is checkpointed into the database and no reader remains, so the database then
/// holds exactly the state at `pos`, and the new WAL continues it: a walship that was not
/// running during the reset keeps its generation. Proven only when the old WAL's frame
/// after `pos` is still on disk (the file was not truncated, the new WAL has not reached
/// it) and is not a valid continuation of `pos` (old salts, checksum chained from `pos`),
/// which is SQLite's own rule for where a WAL ends.
pub fn reset_right_after(
    wal: &File,
    hdr: &WalHeader,
    pos: &WalPosition,
    page_size: u32,
) -> io::Result<bool> {
    if pos.is_empty_wal()
        || pos.big_endian != hdr.big_endian
        || page_size != hdr.page_size
        || pos.resets_to(hdr) != Some(1)
    {
        return Ok(false);
    }
    let Some(next) = pos.frame.checked_add(1) else {
        return Ok(false);
    };
    let frame_len = hdr.frame_len();
    let off = hdr.frame_offset(next);
    if wal.metadata()?.len() < off + frame_len {
        return Ok(false); // truncated, or never that long: nothing proves where it ended
    }
    let mut b = vec![0u8; frame_len as usize];
    wal.read_exact_at(&mut b, off)?;
    let fh = FrameHeader::from_slice(&b);
    if fh.salts() == (hdr.salt1, hdr.salt2) {
        return Ok(false); // the new WAL reached it
    }
    let old = WalHeader {
        big_endian: pos.big_endian,
        page_size,
        ckpt_seq: pos.ckpt_seq,
        salt1: pos.salt1,
        salt2: pos.salt2,
        cksum: pos.cksum,
    };
    Ok(fh.verify(&old, pos.cksum, &b[FRAME_HEADER_LEN..]).is_none())
}

#[cfg(test)]
mod tests;
