//! The byte container shared by segments and snapshots: a self-checking header, a run of
//! independently decodable lz4 chunks each with the CRC32 of its body, and a trailer with
//! the chunk CRCs combined plus a chunk index, so a reader can verify everything, or fetch
//! chunks by range in parallel. Layout in docs/FORMAT.md. Pure.

use lz4_flex::block;

pub const VERSION: u16 = 1;
/// Bit 31 of a chunk's stored length: the bytes are raw (lz4 would not have shrunk them).
const STORED_RAW: u32 = 1 << 31;
/// Bit 30: the body is the zero-elided form of the raw bytes (see `elide`).
const ZERO_ELIDED: u32 = 1 << 30;
const LEN_MASK: u32 = !(STORED_RAW | ZERO_ELIDED);
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
    /// CRC32 of the body before compression, and that body's length.
    pub crc: u32,
    pub crc_len: usize,
}

thread_local! {
    /// lz4's worst-case output buffer, reused: a fresh megabyte per chunk would cost page
    /// faults on every segment.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The zero-elided form, reused likewise.
    static ELIDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn word(b: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Result<usize, String> {
    let mut v = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at).ok_or("truncated zero-elided chunk")?;
        *at += 1;
        v |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("bad varint in zero-elided chunk".into())
}

/// The zero-elided form of `raw` into `out`, or false when it would not save an eighth.
/// Records of (zero words, literal words, literal bytes) over 8-byte words, then the
/// `raw.len() % 8` tail verbatim. Delta-encoded WAL pages are mostly zero words: skipping
/// them here is far cheaper than letting lz4 and CRC32 walk them.
fn elide(raw: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let words = raw.len() / 8;
    let limit = raw.len() - raw.len() / 8;
    let mut i = 0;
    while i < words {
        let z = i;
        while i + 4 <= words
            && (word(raw, i) | word(raw, i + 1) | word(raw, i + 2) | word(raw, i + 3)) == 0
        {
            i += 4;
        }
        while i < words && word(raw, i) == 0 {
            i += 1;
        }
        let l = i;
        while i < words && word(raw, i) != 0 {
            i += 1;
        }
        put_varint(out, l - z);
        put_varint(out, i - l);
        out.extend_from_slice(&raw[l * 8..i * 8]);
        if out.len() > limit {
            return false;
        }
    }
    out.extend_from_slice(&raw[words * 8..]);
    out.len() <= limit
}

/// Undo `elide`: `body` back into exactly `raw_len` bytes.
fn expand(body: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let mut raw = vec![0u8; raw_len];
    let words = raw_len / 8;
    let (mut i, mut at) = (0usize, 0usize);
    while i < words {
        let z = get_varint(body, &mut at)?;
        let l = get_varint(body, &mut at)?;
        let lit = body.get(at..at + l * 8);
        match (i.checked_add(z).and_then(|v| v.checked_add(l)), lit) {
            (Some(end), Some(lit)) if end <= words => {
                raw[(i + z) * 8..end * 8].copy_from_slice(lit);
                i = end;
                at += l * 8;
            }
            _ => return Err("zero-elided chunk overruns its length".into()),
        }
    }
    if body.len() - at != raw_len % 8 {
        return Err("zero-elided chunk does not end at its length".into());
    }
    raw[words * 8..].copy_from_slice(&body[at..]);
    Ok(raw)
}

/// Compress `raw` (non-empty) into a chunk; stored raw when lz4 would not shrink it.
pub fn encode_chunk(raw: &[u8]) -> EncodedChunk {
    encode_body(raw, raw, 0)
}

/// Like `encode_chunk`, but first drops runs of zero words when that saves enough: for
/// payloads that are mostly zeros (delta-encoded WAL frames).
pub fn encode_sparse_chunk(raw: &[u8]) -> EncodedChunk {
    ELIDED.with_borrow_mut(|elided| {
        if elide(raw, elided) {
            encode_body(raw, elided, ZERO_ELIDED)
        } else {
            encode_body(raw, raw, 0)
        }
    })
}

fn encode_body(raw: &[u8], body: &[u8], flags: u32) -> EncodedChunk {
    assert!(!raw.is_empty() && raw.len() <= MAX_CHUNK_RAW);
    let crc = crc32fast::hash(body);
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(block::get_maximum_output_size(body.len()), 0);
        let n = block::compress_into(body, scratch).expect("buffer sized by lz4");
        let (stored_body, stored) = if n < body.len() {
            (&scratch[..n], n as u32 | flags)
        } else {
            (body, body.len() as u32 | STORED_RAW | flags)
        };
        let mut bytes = Vec::with_capacity(CHUNK_HEAD_LEN + stored_body.len());
        bytes.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&stored.to_be_bytes());
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(stored_body);
        EncodedChunk {
            bytes,
            raw_len: raw.len(),
            crc,
            crc_len: body.len(),
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

    /// Like `chunk`, zero-eliding first when that pays (`encode_sparse_chunk`).
    pub fn sparse_chunk(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.push(&encode_sparse_chunk(raw), out);
    }

    /// Append an already encoded chunk.
    pub fn push(&mut self, c: &EncodedChunk, out: &mut Vec<u8>) {
        // The trailer CRC is the chunk CRCs combined: no second pass over the bytes.
        self.crc.combine(&crc32fast::Hasher::new_with_initial_len(
            c.crc,
            c.crc_len as u64,
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
    /// CRC32 of the body before compression, and that body's length.
    pub crc: u32,
    pub crc_len: usize,
    pub encoded_len: usize,
}

impl Chunk {
    /// This chunk's CRC, for combining into the trailer's.
    pub fn crc_hasher(&self) -> crc32fast::Hasher {
        crc32fast::Hasher::new_with_initial_len(self.crc, self.crc_len as u64)
    }
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
    let elided = stored & ZERO_ELIDED != 0;
    let stored_len = (stored & LEN_MASK) as usize;
    let want_crc = be32(b, 8);
    let body = b
        .get(CHUNK_HEAD_LEN..CHUNK_HEAD_LEN + stored_len)
        .ok_or_else(|| "truncated chunk body".to_string())?;
    if raw_stored && !elided && stored_len != raw_len {
        return Err("raw chunk length mismatch".into());
    }
    let plain = if raw_stored {
        body.to_vec()
    } else {
        // An elided body is shorter than the raw bytes, so raw_len bounds both.
        let mut out = vec![0u8; raw_len];
        let n = block::decompress_into(body, &mut out).map_err(|e| format!("lz4: {e}"))?;
        if !elided && n != raw_len {
            return Err(format!(
                "chunk decompressed to {n} bytes, expected {raw_len}"
            ));
        }
        out.truncate(n);
        out
    };
    if crc32fast::hash(&plain) != want_crc {
        return Err("chunk CRC32 mismatch".into());
    }
    let crc_len = plain.len();
    let raw = if elided {
        expand(&plain, raw_len)?
    } else {
        plain
    };
    Ok(Some(Chunk {
        raw,
        crc: want_crc,
        crc_len,
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
    // The trailer's total is not trusted for memory: reserve at most the object's own
    // size; chunks that really decode grow it (each bounded by MAX_CHUNK_RAW).
    let mut payload = Vec::with_capacity(trailer.total_raw.min(b.len() as u64) as usize);
    let mut crc = crc32fast::Hasher::new();
    let mut at = header.len;
    let mut chunks = 0usize;
    while let Some(c) = decode_chunk(&b[at..trailer_offset as usize])? {
        if trailer.offsets.get(chunks) != Some(&(at as u64)) {
            return Err("chunk index does not match chunk layout".into());
        }
        payload.extend_from_slice(&c.raw);
        crc.combine(&c.crc_hasher());
        at += c.encoded_len;
        chunks += 1;
    }
    if at + 4 != trailer_offset as usize || chunks != trailer.offsets.len() {
        return Err("chunk count does not match trailer".into());
    }
    if payload.len() as u64 != trailer.total_raw || crc.finalize() != trailer.crc {
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

    /// Shaped like a delta-encoded WAL chunk: per 4120-byte frame a 24-byte header and a
    /// few dozen changed bytes, zeros elsewhere.
    fn sparse(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut x = seed;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        for frame in (0..len).step_by(4120) {
            let at = frame + 24 + next() % 4000;
            for i in (frame..frame + 24).chain(at..at + 40) {
                if i < len {
                    v[i] = next() as u8 | 1;
                }
            }
        }
        v
    }

    fn build_sparse(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(b"TEST", &[], &mut out);
        for c in chunks {
            w.sparse_chunk(c, &mut out);
        }
        w.finish(&mut out);
        out
    }

    #[test]
    fn sparse_chunks_round_trip_at_every_length_shape() {
        // Lengths not a multiple of 8, leading/trailing literals, all zeros, no zeros.
        let noise: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
            .collect();
        let mut edges = sparse(10_001, 7);
        edges[0] = 1;
        *edges.last_mut().unwrap() = 2;
        let cases: Vec<Vec<u8>> = vec![
            sparse(1 << 20, 1),
            sparse(4123, 2),
            vec![0; 8195],
            noise,
            edges,
            vec![5],
        ];
        for c in &cases {
            let enc = encode_sparse_chunk(c);
            let dec = decode_chunk(&enc.bytes).unwrap().unwrap();
            assert_eq!(&dec.raw, c);
            assert_eq!(dec.encoded_len, enc.bytes.len());
        }
        let refs: Vec<&[u8]> = cases.iter().map(|c| c.as_slice()).collect();
        let (_, payload) = decode_all(&build_sparse(&refs), b"TEST").unwrap();
        assert_eq!(payload, cases.concat());
        // Elision pays on the sparse chunk: far smaller than lz4 alone on the same bytes.
        let big = &cases[0];
        assert!(encode_sparse_chunk(big).bytes.len() < encode_chunk(big).bytes.len());
    }

    #[test]
    fn no_byte_flip_in_a_sparse_chunk_decodes_to_wrong_bytes() {
        // lz4 can map a flipped match offset onto identical bytes (zeros copied from other
        // zeros); what must hold is that decode yields the original or an error.
        let data = sparse(9000, 3);
        let obj = build_sparse(&[&data, b"hello world"]);
        let want = [&data[..], b"hello world"].concat();
        for i in 0..obj.len() {
            let mut bad = obj.clone();
            bad[i] ^= 0x40;
            if let Ok((_, payload)) = decode_all(&bad, b"TEST") {
                assert_eq!(payload, want, "flip at {i} decoded to wrong bytes");
            }
        }
    }

    #[test]
    fn expand_rejects_overruns() {
        // 2 zero words + 1 literal word for a 16-byte chunk: one word too many.
        let mut body = vec![2u8, 1];
        body.extend_from_slice(&[7u8; 8]);
        assert!(expand(&body, 16).is_err());
        assert!(expand(&[0, 1, 1, 2, 3], 8).is_err());
        assert_eq!(expand(&[1, 0], 8).unwrap(), vec![0u8; 8]);
    }
}
