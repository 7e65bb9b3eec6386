//! The byte container shared by segments and snapshots: a self-checking header, a run of
//! independently decodable lz4 chunks each with the CRC32 of its raw bytes, and a trailer
//! with the CRC32 of the whole raw payload plus a chunk index, so a reader can verify
//! everything, or fetch chunks by range in parallel. Layout in docs/FORMAT.md. Pure.

use lz4_flex::block;

pub const VERSION: u16 = 1;
/// Bit 31 of a chunk's stored length: the bytes are raw (lz4 would not have shrunk them).
const STORED_RAW: u32 = 1 << 31;
const FOOTER_MAGIC: &[u8; 4] = b"WEND";
pub const FOOTER_LEN: usize = 12;
const CHUNK_HEAD_LEN: usize = 12;
/// A chunk never holds more than this many raw bytes (guards allocations on bad input).
pub const MAX_CHUNK_RAW: usize = 64 << 20;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// One chunk, compressed and checksummed, ready to append. Encoding is the expensive part
/// and needs no writer state, so callers may encode chunks on several threads.
pub struct EncodedChunk {
    pub bytes: Vec<u8>,
    pub raw_len: usize,
    pub crc: u32,
}

thread_local! {
    /// lz4's worst-case output buffer, reused: a fresh megabyte per chunk would cost page
    /// faults on every segment.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Compress `raw` (non-empty) into a chunk; stored raw when lz4 would not shrink it.
pub fn encode_chunk(raw: &[u8]) -> EncodedChunk {
    assert!(!raw.is_empty() && raw.len() <= MAX_CHUNK_RAW);
    let crc = crc32fast::hash(raw);
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(block::get_maximum_output_size(raw.len()), 0);
        let n = block::compress_into(raw, scratch).expect("buffer sized by lz4");
        let (body, stored) = if n < raw.len() {
            (&scratch[..n], n as u32)
        } else {
            (raw, raw.len() as u32 | STORED_RAW)
        };
        let mut bytes = Vec::with_capacity(CHUNK_HEAD_LEN + body.len());
        bytes.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&stored.to_be_bytes());
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(body);
        EncodedChunk {
            bytes,
            raw_len: raw.len(),
            crc,
        }
    })
}

/// Writes a container incrementally: `new` gives the header bytes, `push`/`chunk` append
/// chunks, `finish` the trailer. The caller decides where the bytes go.
pub struct Writer {
    offset: u64,
    offsets: Vec<u64>,
    total_raw: u64,
    crc: crc32fast::Hasher,
}

impl Writer {
    pub fn new(magic: &[u8; 4], fields: &[u8], out: &mut Vec<u8>) -> Self {
        let header_len = 4 + 2 + 2 + fields.len() + 4;
        let start = out.len();
        out.extend_from_slice(magic);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(header_len as u16).to_be_bytes());
        out.extend_from_slice(fields);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
        Writer {
            offset: header_len as u64,
            offsets: Vec::new(),
            total_raw: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Compress `raw` (non-empty) and append it as the next chunk.
    pub fn chunk(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.push(&encode_chunk(raw), out);
    }

    /// Append an already encoded chunk.
    pub fn push(&mut self, c: &EncodedChunk, out: &mut Vec<u8>) {
        // The payload CRC is the chunk CRCs combined: no second pass over the bytes.
        self.crc.combine(&crc32fast::Hasher::new_with_initial_len(
            c.crc,
            c.raw_len as u64,
        ));
        out.extend_from_slice(&c.bytes);
        self.offsets.push(self.offset);
        self.offset += c.bytes.len() as u64;
        self.total_raw += c.raw_len as u64;
    }

    /// Bytes written so far, header included.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn finish(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0u32.to_be_bytes()); // end of chunks
        let trailer_offset = self.offset + 4;
        out.extend_from_slice(&self.total_raw.to_be_bytes());
        out.extend_from_slice(&self.crc.finalize().to_be_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
        for o in &self.offsets {
            out.extend_from_slice(&o.to_be_bytes());
        }
        out.extend_from_slice(&trailer_offset.to_be_bytes());
        out.extend_from_slice(FOOTER_MAGIC);
    }
}

/// A parsed, checksum-verified header.
#[derive(Debug, Clone)]
pub struct Header {
    pub magic: [u8; 4],
    pub version: u16,
    pub len: usize,
    pub fields: Vec<u8>,
}

pub fn parse_header(b: &[u8], magic: &[u8; 4]) -> Result<Header, String> {
    if b.len() < 12 {
        return Err(format!(
            "truncated: {} bytes, shorter than a header",
            b.len()
        ));
    }
    if &b[..4] != magic {
        return Err(format!(
            "wrong magic {:?}, expected {:?}",
            String::from_utf8_lossy(&b[..4]),
            String::from_utf8_lossy(magic)
        ));
    }
    let version = be16(b, 4);
    if version != VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let len = be16(b, 6) as usize;
    if len < 12 || b.len() < len {
        return Err(format!("truncated header ({} of {len} bytes)", b.len()));
    }
    if crc32fast::hash(&b[..len - 4]) != be32(b, len - 4) {
        return Err("header checksum mismatch".into());
    }
    Ok(Header {
        magic: *magic,
        version,
        len,
        fields: b[8..len - 4].to_vec(),
    })
}

/// One decoded chunk: its raw bytes (CRC-checked), its CRC, and its encoded length.
pub struct Chunk {
    pub raw: Vec<u8>,
    pub crc: u32,
    pub encoded_len: usize,
}

/// Decode one chunk at the start of `b`, or `None` at the end-of-chunks marker.
pub fn decode_chunk(b: &[u8]) -> Result<Option<Chunk>, String> {
    if b.len() < 4 {
        return Err("truncated chunk".into());
    }
    let raw_len = be32(b, 0) as usize;
    if raw_len == 0 {
        return Ok(None);
    }
    if raw_len > MAX_CHUNK_RAW || b.len() < CHUNK_HEAD_LEN {
        return Err(format!("bad chunk header (raw length {raw_len})"));
    }
    let stored = be32(b, 4);
    let raw_stored = stored & STORED_RAW != 0;
    let stored_len = (stored & !STORED_RAW) as usize;
    let want_crc = be32(b, 8);
    let body = b
        .get(CHUNK_HEAD_LEN..CHUNK_HEAD_LEN + stored_len)
        .ok_or_else(|| "truncated chunk body".to_string())?;
    let raw = if raw_stored {
        if stored_len != raw_len {
            return Err("raw chunk length mismatch".into());
        }
        body.to_vec()
    } else {
        let mut raw = vec![0u8; raw_len];
        let n = block::decompress_into(body, &mut raw).map_err(|e| format!("lz4: {e}"))?;
        if n != raw_len {
            return Err(format!(
                "chunk decompressed to {n} bytes, expected {raw_len}"
            ));
        }
        raw
    };
    if crc32fast::hash(&raw) != want_crc {
        return Err("chunk CRC32 mismatch".into());
    }
    Ok(Some(Chunk {
        raw,
        crc: want_crc,
        encoded_len: CHUNK_HEAD_LEN + stored_len,
    }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub total_raw: u64,
    pub crc: u32,
    pub offsets: Vec<u64>,
    /// Where the trailer starts; the end-of-chunks marker is the 4 bytes before it.
    pub offset: u64,
}

/// Read the trailer offset from the last `FOOTER_LEN` bytes of an object.
pub fn parse_footer(b: &[u8]) -> Result<u64, String> {
    if b.len() < FOOTER_LEN || &b[b.len() - 4..] != FOOTER_MAGIC {
        return Err("missing end-of-object marker (truncated upload?)".into());
    }
    Ok(be64(b, b.len() - FOOTER_LEN))
}

/// Parse a trailer from `b`, which starts at the trailer and runs to the object's end.
pub fn parse_trailer(b: &[u8], offset: u64) -> Result<Trailer, String> {
    if b.len() < 16 + FOOTER_LEN {
        return Err("truncated trailer".into());
    }
    let count = be32(b, 12) as usize;
    if b.len() != 16 + count * 8 + FOOTER_LEN {
        return Err(format!("trailer size does not match its {count} chunks"));
    }
    Ok(Trailer {
        total_raw: be64(b, 0),
        crc: be32(b, 8),
        offsets: (0..count).map(|i| be64(b, 16 + i * 8)).collect(),
        offset,
    })
}

/// Decode a whole container held in memory, verifying every checksum; returns the header
/// and the concatenated raw payload.
pub fn decode_all(b: &[u8], magic: &[u8; 4]) -> Result<(Header, Vec<u8>), String> {
    let header = parse_header(b, magic)?;
    let trailer_offset = parse_footer(b)?;
    if trailer_offset as usize > b.len() || (trailer_offset as usize) < header.len + 4 {
        return Err("trailer offset out of range".into());
    }
    let trailer = parse_trailer(&b[trailer_offset as usize..], trailer_offset)?;
    let mut payload = Vec::with_capacity(trailer.total_raw.min(1 << 30) as usize);
    let mut at = header.len;
    let mut chunks = 0usize;
    while let Some(c) = decode_chunk(&b[at..trailer_offset as usize])? {
        if trailer.offsets.get(chunks) != Some(&(at as u64)) {
            return Err("chunk index does not match chunk layout".into());
        }
        payload.extend_from_slice(&c.raw);
        at += c.encoded_len;
        chunks += 1;
    }
    if at + 4 != trailer_offset as usize || chunks != trailer.offsets.len() {
        return Err("chunk count does not match trailer".into());
    }
    if payload.len() as u64 != trailer.total_raw || crc32fast::hash(&payload) != trailer.crc {
        return Err("payload CRC32 mismatch".into());
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(b"TEST", &[1, 2, 3], &mut out);
        for c in chunks {
            w.chunk(c, &mut out);
        }
        w.finish(&mut out);
        out
    }

    #[test]
    fn round_trip_compressible_and_incompressible() {
        let zeros = vec![0u8; 70_000];
        let noise: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let obj = build(&[&zeros, &noise, b"tail"]);
        let (h, payload) = decode_all(&obj, b"TEST").unwrap();
        assert_eq!(h.fields, vec![1, 2, 3]);
        let mut want = zeros.clone();
        want.extend_from_slice(&noise);
        want.extend_from_slice(b"tail");
        assert_eq!(payload, want);
        assert!(obj.len() < want.len(), "zeros must compress");
    }

    #[test]
    fn empty_payload_round_trips() {
        let (_, payload) = decode_all(&build(&[]), b"TEST").unwrap();
        assert!(payload.is_empty());
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let obj = build(&[&[9u8; 3000], b"hello world"]);
        for i in 0..obj.len() {
            let mut bad = obj.clone();
            bad[i] ^= 0x40;
            assert!(decode_all(&bad, b"TEST").is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let obj = build(&[&[9u8; 3000]]);
        for n in 0..obj.len() {
            assert!(decode_all(&obj[..n], b"TEST").is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn trailer_index_points_at_chunks() {
        let obj = build(&[&[1u8; 100], &[2u8; 100]]);
        let t_off = parse_footer(&obj).unwrap();
        let t = parse_trailer(&obj[t_off as usize..], t_off).unwrap();
        assert_eq!(t.offsets.len(), 2);
        let c = decode_chunk(&obj[t.offsets[1] as usize..])
            .unwrap()
            .unwrap();
        assert_eq!(c.raw, vec![2u8; 100]);
    }
}
