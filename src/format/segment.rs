//! WAL segments: a run of whole committed transactions (frames in WAL order, each commit
//! frame stamped with the time walship saw it) <-> container bytes. Pure.

use super::container::{self, Writer};
use super::{get_position, put_position};
use crate::sqlite::wal::WalPosition;

pub const MAGIC: &[u8; 4] = b"WSEG";
const CHUNK_RAW: usize = 1 << 20;
const FIELDS_LEN: usize = 4 + 4 + 8 * 4 + 4 + 4 + 2 * super::POSITION_LEN;

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
        let start = get_position(&f[48..]);
        let end = get_position(&f[48 + super::POSITION_LEN..]);
        Ok(SegmentMeta {
            page_size: u32_at(0),
            first_txid: u64_at(8),
            last_txid: u64_at(16),
            first_commit_ms: u64_at(24),
            last_commit_ms: u64_at(32),
            frame_count: u32_at(40),
            db_pages: u32_at(44),
            start,
            end,
        })
    }

    /// Parse just the header (e.g. from a ranged GET of the first bytes).
    pub fn parse_header(b: &[u8]) -> Result<Self, String> {
        let h = container::parse_header(b, MAGIC)?;
        Self::decode(&h.fields)
    }

    /// Upper bound on the header's encoded length, for ranged GETs.
    pub const HEADER_LEN: usize = 12 + FIELDS_LEN;
}

/// Accumulates frames of whole transactions in WAL order.
#[derive(Default)]
pub struct SegmentBuilder {
    payload: Vec<u8>,
    frames: u32,
}

impl SegmentBuilder {
    pub fn push(&mut self, pgno: u32, commit: Option<(u32, u64)>, page: &[u8]) {
        self.payload.extend_from_slice(&pgno.to_be_bytes());
        match commit {
            Some((db_pages, ms)) => {
                self.payload.extend_from_slice(&db_pages.to_be_bytes());
                self.payload.extend_from_slice(&ms.to_be_bytes());
            }
            None => self.payload.extend_from_slice(&0u32.to_be_bytes()),
        }
        self.payload.extend_from_slice(page);
        self.frames += 1;
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn raw_len(&self) -> usize {
        self.payload.len()
    }

    /// Drop everything after `len` raw bytes / `frames` frames (an unfinished transaction).
    pub fn truncate(&mut self, len: usize, frames: u32) {
        self.payload.truncate(len);
        self.frames = frames;
    }

    pub fn clear(&mut self) {
        self.payload.clear();
        self.frames = 0;
    }

    /// Encode with `meta`; its frame count is taken from the builder.
    pub fn encode(&self, meta: &SegmentMeta) -> Vec<u8> {
        let meta = SegmentMeta {
            frame_count: self.frames,
            ..*meta
        };
        let mut out = Vec::with_capacity(self.payload.len() / 2 + 256);
        let mut w = Writer::new(MAGIC, &meta.encode(), &mut out);
        for c in self.payload.chunks(CHUNK_RAW) {
            w.chunk(c, &mut out);
        }
        w.finish(&mut out);
        out
    }
}

/// One frame read back from a segment.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub pgno: u32,
    /// `(database pages after commit, commit time ms)` on a commit frame.
    pub commit: Option<(u32, u64)>,
    pub page: &'a [u8],
}

/// A decoded, fully verified segment.
pub struct Segment {
    pub meta: SegmentMeta,
    payload: Vec<u8>,
}

impl Segment {
    /// Decode and verify: container CRCs, then that the frames agree with the header
    /// (count, transaction count, commit times, ends on a commit).
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let (h, payload) = container::decode_all(b, MAGIC)?;
        let meta = SegmentMeta::decode(&h.fields)?;
        if !(512..=65536).contains(&meta.page_size) || !meta.page_size.is_power_of_two() {
            return Err(format!("bad page size {}", meta.page_size));
        }
        if meta.last_txid < meta.first_txid {
            return Err("last txid before first".into());
        }
        let seg = Segment { meta, payload };
        let (mut frames, mut commits, mut last_ms, mut last_was_commit) = (0u32, 0u64, 0u64, false);
        let mut first_ms = None;
        for f in seg.frames_checked() {
            let f = f?;
            frames += 1;
            last_was_commit = f.commit.is_some();
            if let Some((_, ms)) = f.commit {
                commits += 1;
                first_ms.get_or_insert(ms);
                if ms < last_ms {
                    return Err("commit times go backwards".into());
                }
                last_ms = ms;
            }
        }
        let m = &seg.meta;
        if frames != m.frame_count
            || commits != m.last_txid - m.first_txid + 1
            || !last_was_commit
            || first_ms != Some(m.first_commit_ms)
            || last_ms != m.last_commit_ms
        {
            return Err("frames do not match the segment header".into());
        }
        Ok(seg)
    }

    fn frames_checked(&self) -> impl Iterator<Item = Result<Frame<'_>, String>> {
        let page = self.meta.page_size as usize;
        let p = &self.payload;
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at == p.len() {
                return None;
            }
            let take = |at: usize, n: usize| p.get(at..at + n);
            let res = (|| {
                let pgno = u32::from_be_bytes(take(at, 4)?.try_into().unwrap());
                let size = u32::from_be_bytes(take(at + 4, 4)?.try_into().unwrap());
                let (commit, hdr) = if size != 0 {
                    let ms = u64::from_be_bytes(take(at + 8, 8)?.try_into().unwrap());
                    (Some((size, ms)), 16)
                } else {
                    (None, 8)
                };
                let data = take(at + hdr, page)?;
                at += hdr + page;
                Some(Frame {
                    pgno,
                    commit,
                    page: data,
                })
            })();
            match res {
                Some(f) if f.pgno != 0 => Some(Ok(f)),
                _ => {
                    at = p.len();
                    Some(Err("malformed frame record".to_string()))
                }
            }
        })
    }

    /// Frames in WAL order (already verified by `decode`).
    pub fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        self.frames_checked()
            .map(|f| f.expect("verified in decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SegmentMeta, SegmentBuilder) {
        let mut b = SegmentBuilder::default();
        b.push(3, None, &[1u8; 512]);
        b.push(1, Some((5, 1000)), &[2u8; 512]);
        b.push(4, Some((6, 1500)), &[3u8; 512]);
        let pos = WalPosition {
            epoch: 2,
            ckpt_seq: 9,
            salt1: 11,
            salt2: 12,
            big_endian: true,
            frame: 10,
            cksum: [1, 2],
        };
        let meta = SegmentMeta {
            page_size: 512,
            first_txid: 41,
            last_txid: 42,
            first_commit_ms: 1000,
            last_commit_ms: 1500,
            frame_count: 3,
            db_pages: 6,
            start: pos,
            end: WalPosition {
                frame: 13,
                cksum: [3, 4],
                ..pos
            },
        };
        (meta, b)
    }

    #[test]
    fn round_trip() {
        let (meta, b) = sample();
        let bytes = b.encode(&meta);
        let seg = Segment::decode(&bytes).unwrap();
        assert_eq!(seg.meta, meta);
        assert_eq!(SegmentMeta::parse_header(&bytes).unwrap(), meta);
        let frames: Vec<_> = seg.frames().collect();
        assert_eq!(frames.len(), 3);
        assert_eq!((frames[0].pgno, frames[0].commit), (3, None));
        assert_eq!((frames[2].pgno, frames[2].commit), (4, Some((6, 1500))));
        assert_eq!(frames[1].page, &[2u8; 512][..]);
    }

    #[test]
    fn header_that_disagrees_with_frames_is_rejected() {
        let (meta, b) = sample();
        for bad in [
            SegmentMeta {
                last_txid: 43,
                ..meta
            },
            SegmentMeta {
                last_commit_ms: 1400,
                ..meta
            },
        ] {
            assert!(Segment::decode(&b.encode(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn segment_ending_mid_transaction_is_rejected() {
        let (meta, mut b) = sample();
        b.push(7, None, &[0u8; 512]);
        assert!(Segment::decode(&b.encode(&meta)).is_err());
    }
}
