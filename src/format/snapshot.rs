//! Snapshots: every page of the database as of one transaction, in page order, cut into
//! fixed-size chunks so a restore can fetch and write them in parallel by range. Pure.

use super::container::{self, Trailer, Writer};
use super::{get_position, put_position};
use crate::sqlite::wal::WalPosition;
use std::ops::Range;

pub const MAGIC: &[u8; 4] = b"WSNP";
/// Raw bytes per chunk: big enough that a ranged GET is worth its latency, small enough
/// that a handful in flight stay within a few MiB of memory.
pub const CHUNK_RAW: usize = 2 << 20;
const FIELDS_LEN: usize = 4 * 4 + 8 + 8 + super::POSITION_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub page_size: u32,
    pub page_count: u32,
    pub pages_per_chunk: u32,
    /// The database as of this transaction of the generation (0: the generation's start).
    pub txid: u64,
    pub commit_ms: u64,
    /// The WAL position the pages were read at; capture resumes right after it.
    pub position: WalPosition,
}

impl SnapshotMeta {
    pub fn pages_per_chunk_for(page_size: u32) -> u32 {
        (CHUNK_RAW / page_size as usize).max(1) as u32
    }

    pub fn chunk_count(&self) -> u32 {
        self.page_count.div_ceil(self.pages_per_chunk)
    }

    /// The pages (1-based, half-open) chunk `i` holds.
    pub fn chunk_pages(&self, i: u32) -> Range<u32> {
        let first = i * self.pages_per_chunk + 1;
        first..(first + self.pages_per_chunk).min(self.page_count + 1)
    }

    fn encode(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(FIELDS_LEN);
        for v in [self.page_size, 0, self.page_count, self.pages_per_chunk] {
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&self.txid.to_be_bytes());
        f.extend_from_slice(&self.commit_ms.to_be_bytes());
        put_position(&mut f, &self.position);
        f
    }

    fn decode(f: &[u8]) -> Result<Self, String> {
        if f.len() != FIELDS_LEN {
            return Err(format!("snapshot header has {} bytes of fields", f.len()));
        }
        let u32_at = |at: usize| u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
        let m = SnapshotMeta {
            page_size: u32_at(0),
            page_count: u32_at(8),
            pages_per_chunk: u32_at(12),
            txid: u64_at(16),
            commit_ms: u64_at(24),
            position: get_position(&f[32..]),
        };
        if !(512..=65536).contains(&m.page_size)
            || !m.page_size.is_power_of_two()
            || m.pages_per_chunk == 0
            || m.pages_per_chunk as usize * m.page_size as usize > container::MAX_CHUNK_RAW
        {
            return Err("implausible page size or chunk size".into());
        }
        Ok(m)
    }

    pub fn parse_header(b: &[u8]) -> Result<Self, String> {
        Self::decode(&container::parse_header(b, MAGIC)?.fields)
    }

    pub const HEADER_LEN: usize = 12 + FIELDS_LEN;
}

/// Streams a snapshot out chunk by chunk; callers feed whole chunks of pages in order.
pub struct SnapshotEncoder {
    meta: SnapshotMeta,
    writer: Writer,
    next_chunk: u32,
}

impl SnapshotEncoder {
    pub fn new(meta: SnapshotMeta) -> (Self, Vec<u8>) {
        let mut out = Vec::new();
        let writer = Writer::new(MAGIC, &meta.encode(), &mut out);
        (
            SnapshotEncoder {
                meta,
                writer,
                next_chunk: 0,
            },
            out,
        )
    }

    /// Encode the next chunk; `pages` must be exactly the pages `chunk_pages` names.
    pub fn chunk(&mut self, pages: &[u8]) -> Vec<u8> {
        self.push(&container::encode_chunk(pages))
    }

    /// Append the next chunk, encoded elsewhere (see `container::encode_chunk`).
    pub fn push(&mut self, c: &container::EncodedChunk) -> Vec<u8> {
        let want = self.meta.chunk_pages(self.next_chunk).len() * self.meta.page_size as usize;
        assert_eq!(
            c.raw_len, want,
            "chunk {} has the wrong size",
            self.next_chunk
        );
        let mut out = Vec::with_capacity(c.bytes.len());
        self.writer.push(c, &mut out);
        self.next_chunk += 1;
        out
    }

    pub fn finish(self) -> Vec<u8> {
        assert_eq!(
            self.next_chunk,
            self.meta.chunk_count(),
            "snapshot is missing chunks"
        );
        let mut out = Vec::new();
        self.writer.finish(&mut out);
        out
    }
}

/// Byte range of chunk `i` inside the object, from its trailer.
pub fn chunk_range(t: &Trailer, i: usize) -> Range<u64> {
    let end = t.offsets.get(i + 1).copied().unwrap_or(t.offset - 4);
    t.offsets[i]..end
}

/// Checks a snapshot's chunks as they arrive (in any order of download, fed in order):
/// each chunk's CRC, the page count, and at the end the whole-payload CRC of the trailer.
/// Decode chunk `i` of a snapshot described by `meta` from exactly its bytes, checking its
/// CRC and size. Pure, so chunks can be decoded in parallel.
pub fn decode_chunk_at(
    meta: &SnapshotMeta,
    i: u32,
    encoded: &[u8],
) -> Result<container::Chunk, String> {
    let c =
        container::decode_chunk(encoded)?.ok_or_else(|| "unexpected end of chunks".to_string())?;
    let want = meta.chunk_pages(i).len() * meta.page_size as usize;
    if c.encoded_len != encoded.len() || c.raw.len() != want {
        return Err(format!("chunk {i} has the wrong size"));
    }
    Ok(c)
}

pub struct SnapshotVerifier {
    meta: SnapshotMeta,
    trailer: Trailer,
    crc: crc32fast::Hasher,
    next: u32,
}

impl SnapshotVerifier {
    pub fn new(meta: SnapshotMeta, trailer: Trailer) -> Result<Self, String> {
        if trailer.offsets.len() != meta.chunk_count() as usize
            || trailer.total_raw != meta.page_count as u64 * meta.page_size as u64
        {
            return Err("trailer does not match the header's page count".into());
        }
        Ok(SnapshotVerifier {
            meta,
            trailer,
            crc: crc32fast::Hasher::new(),
            next: 0,
        })
    }

    pub fn chunk_range(&self, i: u32) -> Range<u64> {
        chunk_range(&self.trailer, i as usize)
    }

    /// Decode chunk `next` from exactly its bytes; returns its raw pages.
    pub fn accept(&mut self, encoded: &[u8]) -> Result<Vec<u8>, String> {
        let c = decode_chunk_at(&self.meta, self.next, encoded)?;
        self.accept_decoded(&c);
        Ok(c.raw)
    }

    /// Take chunk `next`, already decoded (in any thread) by `decode_chunk_at`: chunks must
    /// arrive in order for the payload CRC.
    pub fn accept_decoded(&mut self, c: &container::Chunk) {
        self.crc.combine(&c.crc_hasher());
        self.next += 1;
    }

    pub fn finish(self) -> Result<(), String> {
        if self.next != self.meta.chunk_count() {
            return Err("snapshot ended early".into());
        }
        if self.crc.finalize() != self.trailer.crc {
            return Err("payload CRC32 mismatch".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pages: u32) -> SnapshotMeta {
        SnapshotMeta {
            page_size: 512,
            page_count: pages,
            pages_per_chunk: 3,
            txid: 7,
            commit_ms: 99,
            position: WalPosition {
                frame: 4,
                salt1: 1,
                ..Default::default()
            },
        }
    }

    fn encode(m: SnapshotMeta) -> Vec<u8> {
        let (mut enc, mut out) = SnapshotEncoder::new(m);
        for i in 0..m.chunk_count() {
            let pages: Vec<u8> = m.chunk_pages(i).flat_map(|p| vec![p as u8; 512]).collect();
            out.extend(enc.chunk(&pages));
        }
        out.extend(enc.finish());
        out
    }

    #[test]
    fn chunks_cover_every_page_once() {
        let m = meta(7);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_pages(0), 1..4);
        assert_eq!(m.chunk_pages(2), 7..8);
        assert_eq!(meta(0).chunk_count(), 0);
    }

    #[test]
    fn ranged_decode_round_trip() {
        let m = meta(7);
        let obj = encode(m);
        assert_eq!(SnapshotMeta::parse_header(&obj).unwrap(), m);
        let t_off = container::parse_footer(&obj[obj.len() - container::FOOTER_LEN..]).unwrap();
        let t = container::parse_trailer(&obj[t_off as usize..], t_off).unwrap();
        let mut v = SnapshotVerifier::new(m, t).unwrap();
        let mut pages = Vec::new();
        for i in 0..m.chunk_count() {
            let r = v.chunk_range(i);
            pages.extend(v.accept(&obj[r.start as usize..r.end as usize]).unwrap());
        }
        v.finish().unwrap();
        assert_eq!(pages.len(), 7 * 512);
        assert_eq!(pages[6 * 512], 7);
        // The whole-object decoder agrees.
        let (_, payload) = container::decode_all(&obj, MAGIC).unwrap();
        assert_eq!(payload, pages);
    }

    #[test]
    fn swapped_chunks_fail_the_payload_crc_or_size() {
        let m = meta(6);
        let obj = encode(m);
        let t_off = container::parse_footer(&obj).unwrap();
        let t = container::parse_trailer(&obj[t_off as usize..], t_off).unwrap();
        let mut v = SnapshotVerifier::new(m, t.clone()).unwrap();
        let r1 = chunk_range(&t, 1);
        let r0 = chunk_range(&t, 0);
        v.accept(&obj[r1.start as usize..r1.end as usize]).unwrap();
        v.accept(&obj[r0.start as usize..r0.end as usize]).unwrap();
        assert!(v.finish().is_err());
    }
}
