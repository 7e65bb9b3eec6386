//! WAL segments: a run of whole committed transactions <-> container bytes. The payload
//! is the WAL frames as SQLite wrote them (24-byte frame header + page), followed by a
//! table giving the time walship saw each commit. Keeping SQLite's frame headers lets
//! decode re-verify SQLite's own checksum chain, end to end. A page that is written again
//! by a later frame starting in the same 1 MiB chunk is stored XORed with that later
//! version (the last version in the chunk stays whole): a hot page changes a few bytes per
//! transaction, so lz4 then sees mostly zeros (smaller objects, faster compression). The
//! XOR is applied as each transaction commits, while its frames are still in cache. Pure.

use super::container::{self, Writer};
use super::{get_position, put_position};
use crate::sqlite::wal::{FRAME_HEADER_LEN, FrameHeader, WalHeader, WalPosition};

pub const MAGIC: &[u8; 4] = b"WSEG";
const CHUNK_RAW: usize = 1 << 20;
const FIELDS_LEN: usize = 4 + 4 + 8 * 4 + 4 + 4 + 2 * super::POSITION_LEN;
/// One commit-table entry: frame index in the segment (u32) and commit time (u64 ms).
const COMMIT_ENTRY: usize = 12;
/// The payload chunk frame `i` starts in: the scope of delta bases.
fn chunk_of(i: u32, frame_len: usize) -> usize {
    i as usize * frame_len / CHUNK_RAW
}

/// `page ^= base` (8-byte words, so it vectorises).
fn xor_into(page: &mut [u8], base: &[u8]) {
    for (p, b) in page.chunks_exact_mut(8).zip(base.chunks_exact(8)) {
        let x =
            u64::from_ne_bytes(p.try_into().unwrap()) ^ u64::from_ne_bytes(b.try_into().unwrap());
        p.copy_from_slice(&x.to_ne_bytes());
    }
}

/// Everything a segment's header says. `start` is the position before its first frame,
/// `end` the position after its last (a commit frame); they name different WALs when the
/// segment spans a WAL reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub page_size: u32,
    pub first_txid: u64,
    pub last_txid: u64,
    pub first_commit_ms: u64,
    pub last_commit_ms: u64,
    pub frame_count: u32,
    /// Database size in pages after the last transaction.
    pub db_pages: u32,
    pub start: WalPosition,
    pub end: WalPosition,
}

impl SegmentMeta {
    #[cfg(test)]
    fn default_for_tests(start: WalPosition) -> Self {
        SegmentMeta {
            page_size: 4096,
            first_txid: 1,
            last_txid: 1,
            first_commit_ms: 0,
            last_commit_ms: 0,
            frame_count: 0,
            db_pages: 1,
            start,
            end: start,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(FIELDS_LEN);
        f.extend_from_slice(&self.page_size.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes()); // flags, reserved
        for v in [
            self.first_txid,
            self.last_txid,
            self.first_commit_ms,
            self.last_commit_ms,
        ] {
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&self.frame_count.to_be_bytes());
        f.extend_from_slice(&self.db_pages.to_be_bytes());
        put_position(&mut f, &self.start);
        put_position(&mut f, &self.end);
        f
    }

    fn decode(f: &[u8]) -> Result<Self, String> {
        if f.len() != FIELDS_LEN {
            return Err(format!("segment header has {} bytes of fields", f.len()));
        }
        let u32_at = |at: usize| u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
        Ok(SegmentMeta {
            page_size: u32_at(0),
            first_txid: u64_at(8),
            last_txid: u64_at(16),
            first_commit_ms: u64_at(24),
            last_commit_ms: u64_at(32),
            frame_count: u32_at(40),
            db_pages: u32_at(44),
            start: get_position(&f[48..]),
            end: get_position(&f[48 + super::POSITION_LEN..]),
        })
    }

    /// Parse just the header (e.g. from a ranged GET of the first bytes).
    pub fn parse_header(b: &[u8]) -> Result<Self, String> {
        let h = container::parse_header(b, MAGIC)?;
        Self::decode(&h.fields)
    }

    /// The header's encoded length, for ranged GETs.
    pub const HEADER_LEN: usize = 12 + FIELDS_LEN;
}

/// Accumulates whole transactions: WAL frames as raw bytes, plus commit times. Frames are
/// written straight into the buffer (`frames_tail`) so that capture copies each byte once;
/// committed frames are compressed a chunk at a time as they accumulate (`seal`), so a
/// segment never sits uncompressed in memory. The raw buffer keeps its initialised length
/// across segments (`used` is the live part): reusing it costs no zero-filling.
pub struct SegmentBuilder {
    frame_len: usize,
    sealed: Vec<container::EncodedChunk>,
    sealed_bytes: usize,
    raw: Vec<u8>,
    used: usize,
    commits: Vec<(u32, u64)>,
    /// Frames (from the segment's start) already taken into the delta encoding.
    deltas_done: u32,
    /// Each page's latest frame in the current chunk (still whole in `raw`).
    latest: std::collections::HashMap<u32, u32>,
    latest_chunk: usize,
}

impl SegmentBuilder {
    pub fn new(page_size: u32) -> Self {
        SegmentBuilder {
            frame_len: FRAME_HEADER_LEN + page_size as usize,
            sealed: Vec::new(),
            sealed_bytes: 0,
            raw: Vec::new(),
            used: 0,
            commits: Vec::new(),
            deltas_done: 0,
            latest: std::collections::HashMap::new(),
            latest_chunk: 0,
        }
    }

    /// Take committed frames `deltas_done..committed` into the delta encoding: each
    /// replaces its page's previous frame in the same chunk by `previous ^ this`. Only
    /// committed frames are used, so no XOR ever involves a frame that is later dropped.
    pub fn commit_frames(&mut self, committed: u32) {
        let fl = self.frame_len;
        while self.deltas_done < committed {
            let k = self.deltas_done;
            let chunk = chunk_of(k, fl);
            if chunk != self.latest_chunk {
                self.latest.clear();
                self.latest_chunk = chunk;
            }
            let at = k as usize * fl - self.sealed_bytes;
            let pgno = FrameHeader::from_slice(&self.raw[at..]).pgno();
            if let Some(j) = self.latest.insert(pgno, k) {
                let bt = j as usize * fl - self.sealed_bytes;
                let (before, rest) = self.raw.split_at_mut(at);
                xor_into(
                    &mut before[bt + FRAME_HEADER_LEN..bt + fl],
                    &rest[FRAME_HEADER_LEN..fl],
                );
            }
            self.deltas_done += 1;
        }
    }

    /// Room for `n` more frames at the end; fill it, then `truncate` to what is valid.
    pub fn frames_tail(&mut self, n: usize) -> &mut [u8] {
        let (at, end) = (self.used, self.used + n * self.frame_len);
        if self.raw.len() < end {
            self.raw.resize(end, 0);
        }
        self.used = end;
        &mut self.raw[at..end]
    }

    /// Append one frame (header + page) by copy.
    pub fn push(&mut self, header: &FrameHeader, page: &[u8], commit_ms: Option<u64>) {
        let tail = self.frames_tail(1);
        tail[..FRAME_HEADER_LEN].copy_from_slice(&header.0);
        tail[FRAME_HEADER_LEN..].copy_from_slice(page);
        if let Some(ms) = commit_ms {
            self.mark_commit(self.frames() - 1, ms);
        }
    }

    /// Record that frame `index` (a commit frame) was seen committed at `ms`.
    pub fn mark_commit(&mut self, index: u32, ms: u64) {
        self.commits.push((index, ms));
    }

    pub fn frames(&self) -> u32 {
        ((self.sealed_bytes + self.used) / self.frame_len) as u32
    }

    /// The raw bytes of frames `from..to` as read from the WAL. Valid only for frames not
    /// yet taken into the delta encoding (`seal`/`commit_frames` rewrite earlier frames):
    /// the capture journal copies a scan's frames out before it seals them.
    pub fn raw_frames(&self, from: u32, to: u32) -> &[u8] {
        debug_assert!(from >= self.deltas_done || from == to);
        let fl = self.frame_len;
        let a = from as usize * fl - self.sealed_bytes;
        let b = to as usize * fl - self.sealed_bytes;
        &self.raw[a..b]
    }

    /// Commit-table entries for frames at or after `from`.
    pub fn commits_from(&self, from: u32) -> &[(u32, u64)] {
        let at = self.commits.partition_point(|&(i, _)| i < from);
        &self.commits[at..]
    }

    pub fn raw_len(&self) -> usize {
        self.sealed_bytes + self.used + self.commits.len() * COMMIT_ENTRY
    }

    /// Keep only the first `frames` frames (drop an unfinished transaction). Sealed
    /// (committed) frames are never dropped.
    pub fn truncate(&mut self, frames: u32) {
        let total = (frames as usize * self.frame_len).max(self.sealed_bytes);
        self.used = self.used.min(total - self.sealed_bytes);
        self.commits.retain(|&(i, _)| i < frames);
    }

    /// Compress the chunks that are final: every frame starting in them committed and
    /// taken into the delta encoding, and a later frame already started past them (no
    /// later version of their pages can join the chunk any more).
    pub fn seal(&mut self, committed: u32) {
        self.commit_frames(committed);
        let started = (committed.saturating_sub(1) as usize) * self.frame_len;
        let mut ready = (started / CHUNK_RAW * CHUNK_RAW).saturating_sub(self.sealed_bytes);
        if ready < CHUNK_RAW {
            return;
        }
        let mut at = 0;
        while ready >= CHUNK_RAW {
            self.sealed.push(container::encode_sparse_chunk(
                &self.raw[at..at + CHUNK_RAW],
            ));
            at += CHUNK_RAW;
            ready -= CHUNK_RAW;
        }
        // One move of what is left, to the front.
        self.raw.copy_within(at..self.used, 0);
        self.used -= at;
        self.sealed_bytes += at;
    }

    /// Empty the builder. Its buffer is kept for the next segment unless it grew past
    /// `keep` bytes (one huge transaction should not pin memory for good).
    pub fn clear(&mut self, keep: usize) {
        self.used = 0;
        self.sealed.clear();
        self.sealed_bytes = 0;
        self.commits.clear();
        self.deltas_done = 0;
        self.latest.clear();
        self.latest_chunk = 0;
        if self.raw.len() > keep {
            self.raw = Vec::new();
        }
    }

    /// Encode with `meta` (every frame held must be committed); its frame count is taken
    /// from the builder.
    /// Every frame held must be committed (it is: capture truncates unfinished
    /// transactions before it encodes).
    pub fn encode(&mut self, meta: &SegmentMeta) -> Vec<u8> {
        let meta = SegmentMeta {
            frame_count: self.frames(),
            ..*meta
        };
        let mut table = Vec::with_capacity(self.commits.len() * COMMIT_ENTRY);
        for &(i, ms) in &self.commits {
            table.extend_from_slice(&i.to_be_bytes());
            table.extend_from_slice(&ms.to_be_bytes());
        }
        self.commit_frames(self.frames());
        let tail = &self.raw[..self.used];
        let sealed: usize = self.sealed.iter().map(|c| c.bytes.len()).sum();
        let mut out = Vec::with_capacity(sealed + self.used / 4 + 256);
        let mut w = Writer::new(MAGIC, &meta.encode(), &mut out);
        for c in &self.sealed {
            w.push(c, &mut out);
        }
        for c in tail.chunks(CHUNK_RAW) {
            w.sparse_chunk(c, &mut out);
        }
        if !table.is_empty() {
            w.chunk(&table, &mut out);
        }
        w.finish(&mut out);
        out
    }
}

/// One frame read back from a segment.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub pgno: u32,
    /// `(database pages after commit, commit time ms)` on a commit frame.
    pub commit: Option<(u32, u64)>,
    pub page: &'a [u8],
}

/// A decoded, fully verified segment.
pub struct Segment {
    pub meta: SegmentMeta,
    payload: Vec<u8>,
    /// Commit time by frame index.
    commits: Vec<(u32, u64)>,
}

impl Segment {
    /// Decode and verify: container CRCs; frames agree with the header (count, commits,
    /// times, ends on a commit); and SQLite's own checksum chain holds from the start
    /// position through every frame to the end position.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let (h, payload) = container::decode_all(b, MAGIC)?;
        let meta = SegmentMeta::decode(&h.fields)?;
        if !(512..=65536).contains(&meta.page_size) || !meta.page_size.is_power_of_two() {
            return Err(format!("bad page size {}", meta.page_size));
        }
        if meta.last_txid < meta.first_txid {
            return Err("last txid before first".into());
        }
        let frame_len = FRAME_HEADER_LEN + meta.page_size as usize;
        let frames_len = meta.frame_count as usize * frame_len;
        let table = payload
            .get(frames_len..)
            .filter(|t| t.len().is_multiple_of(COMMIT_ENTRY))
            .ok_or("payload size does not match the frame count")?;
        let commits: Vec<(u32, u64)> = table
            .chunks_exact(COMMIT_ENTRY)
            .map(|e| {
                (
                    u32::from_be_bytes(e[0..4].try_into().unwrap()),
                    u64::from_be_bytes(e[4..12].try_into().unwrap()),
                )
            })
            .collect();
        let mut seg = Segment {
            meta,
            payload,
            commits,
        };
        seg.undo_deltas();
        seg.verify()?;
        Ok(seg)
    }

    /// Undo the delta encoding in place: chunk by chunk, last frame first, so the later
    /// version each frame was XORed with is already whole.
    fn undo_deltas(&mut self) {
        let fl = FRAME_HEADER_LEN + self.meta.page_size as usize;
        let n = self.meta.frame_count;
        let mut latest: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut next: Vec<Option<u32>> = Vec::new();
        let mut first = 0;
        while first < n {
            let chunk = chunk_of(first, fl);
            let mut last = first;
            while last < n && chunk_of(last, fl) == chunk {
                last += 1;
            }
            latest.clear();
            next.clear();
            next.resize((last - first) as usize, None);
            for k in first..last {
                let pgno = FrameHeader::from_slice(&self.payload[k as usize * fl..]).pgno();
                if let Some(j) = latest.insert(pgno, k) {
                    next[(j - first) as usize] = Some(k);
                }
            }
            for j in (first..last).rev() {
                if let Some(k) = next[(j - first) as usize] {
                    let (at, bt) = (j as usize * fl, k as usize * fl);
                    let (before, rest) = self.payload.split_at_mut(bt);
                    xor_into(
                        &mut before[at + FRAME_HEADER_LEN..at + fl],
                        &rest[FRAME_HEADER_LEN..fl],
                    );
                }
            }
            first = last;
        }
    }

    fn verify(&self) -> Result<(), String> {
        let m = &self.meta;
        let txs = m
            .last_txid
            .checked_sub(m.first_txid)
            .and_then(|d| d.checked_add(1));
        if Some(self.commits.len() as u64) != txs {
            return Err("commit count does not match the transaction range".into());
        }
        if self
            .commits
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            || self.commits.first().map(|c| c.1) != Some(m.first_commit_ms)
            || self.commits.last().map(|c| c.1) != Some(m.last_commit_ms)
            || self.commits.last().and_then(|c| c.0.checked_add(1)) != Some(m.frame_count)
        {
            return Err("commit table does not match the header".into());
        }
        // SQLite's checksum chain: from the start position through each frame. A frame
        // with new salts opens a WAL after a reset; its seed (that WAL header's checksum)
        // is not stored, so the chain is picked up again from that frame.
        let mut salts = (m.start.salt1, m.start.salt2);
        let mut running = m.start.cksum;
        let mut chained = !m.start.is_empty_wal();
        let mut next_commit = self.commits.iter().peekable();
        for (i, f) in self.raw_frames().enumerate() {
            let (fh, page) = f;
            let hdr = WalHeader {
                big_endian: m.start.big_endian,
                page_size: m.page_size,
                ckpt_seq: 0,
                salt1: fh.salts().0,
                salt2: fh.salts().1,
                cksum: [0, 0],
            };
            if fh.salts() != salts {
                salts = fh.salts();
                chained = false;
            }
            if chained && fh.verify(&hdr, running, page).is_none() {
                return Err(format!("frame {i} breaks SQLite's checksum chain"));
            }
            running = fh.cksum();
            chained = true;
            let is_commit = next_commit.peek().is_some_and(|c| c.0 as usize == i);
            if is_commit != fh.is_commit() || fh.pgno() == 0 {
                return Err(format!("frame {i} disagrees with the commit table"));
            }
            if is_commit {
                next_commit.next();
            }
        }
        // The end may also be the start of the next WAL (frame 0 of a WAL with other salts):
        // capture adopted a restarted WAL's header before any of its frames. Its checksum
        // is that header's, which no frame here carries; the next segment starts from it.
        let at_next_wal = m.end.frame == 0 && (m.end.salt1, m.end.salt2) != salts;
        if !at_next_wal && (running != m.end.cksum || salts != (m.end.salt1, m.end.salt2)) {
            return Err("frames do not end at the end position".into());
        }
        Ok(())
    }

    fn raw_frames(&self) -> impl Iterator<Item = (FrameHeader, &[u8])> {
        let frame_len = FRAME_HEADER_LEN + self.meta.page_size as usize;
        self.payload[..self.meta.frame_count as usize * frame_len]
            .chunks_exact(frame_len)
            .map(|f| (FrameHeader::from_slice(f), &f[FRAME_HEADER_LEN..]))
    }

    /// Frames in WAL order (verified by `decode`).
    pub fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        let mut commits = self.commits.iter().peekable();
        self.raw_frames()
            .enumerate()
            .map(move |(i, (header, page))| {
                let commit = match commits.peek() {
                    Some(&&(at, ms)) if at as usize == i => {
                        commits.next();
                        Some((header.commit_size(), ms))
                    }
                    _ => None,
                };
                Frame {
                    header,
                    pgno: header.pgno(),
                    commit,
                    page,
                }
            })
    }
}

#[cfg(test)]
mod tests;
