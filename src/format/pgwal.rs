//! The object one PostgreSQL WAL file is stored as: a container (lz4 chunks with CRC32,
//! zero runs elided: a switched segment's unused tail costs nothing) whose header names
//! the file, so a misplaced object is caught on fetch. Pure: bytes in, bytes out.

use super::container::{self, Writer};
use crate::pgformat::walname::WalFile;
use crate::storage::layout::ChunkName;

pub const MAGIC: &[u8; 4] = b"WPGW";
/// A streamed piece of a segment (`layout::ChunkName`): the same container, its header
/// naming the segment and the byte range.
pub const CHUNK_MAGIC: &[u8; 4] = b"WPGC";
const CHUNK_RAW: usize = 1 << 20;

/// The object for WAL file `name` holding `raw`; the header carries the name so a
/// misplaced object is caught on fetch.
pub fn encode(name: &WalFile, raw: &[u8]) -> Vec<u8> {
    encode_named(MAGIC, &name.to_string(), raw)
}

fn chunk_label(c: &ChunkName) -> String {
    format!("{}.{:08X}-{:08X}", c.segment, c.start, c.end)
}

/// The object for chunk `c`, whose bytes are `raw` (`c.end - c.start` of them).
pub fn encode_chunk(c: &ChunkName, raw: &[u8]) -> Vec<u8> {
    debug_assert_eq!(raw.len() as u64, u64::from(c.end - c.start));
    encode_named(CHUNK_MAGIC, &chunk_label(c), raw)
}

/// Chunk `c`'s bytes, checksums, name and length checked.
pub fn decode_chunk(c: &ChunkName, obj: &[u8]) -> Result<Vec<u8>, String> {
    let raw = decode_named(CHUNK_MAGIC, &chunk_label(c), obj)?;
    if raw.len() as u64 != u64::from(c.end - c.start) {
        return Err(format!(
            "holds {} bytes where its name says {}",
            raw.len(),
            c.end - c.start
        ));
    }
    Ok(raw)
}

fn encode_named(magic: &[u8; 4], n: &str, raw: &[u8]) -> Vec<u8> {
    let mut fields = Vec::with_capacity(2 + n.len());
    fields.extend_from_slice(&(n.len() as u16).to_be_bytes());
    fields.extend_from_slice(n.as_bytes());
    let mut out = Vec::with_capacity(raw.len() / 4 + 64);
    let mut w = Writer::new(magic, &fields, &mut out);
    for c in raw.chunks(CHUNK_RAW) {
        w.sparse_chunk(c, &mut out);
    }
    w.finish(&mut out);
    out
}

/// The WAL file's bytes, every checksum verified and the name checked.
pub fn decode(name: &WalFile, obj: &[u8]) -> Result<Vec<u8>, String> {
    decode_named(MAGIC, &name.to_string(), obj)
}

fn decode_named(magic: &[u8; 4], name: &str, obj: &[u8]) -> Result<Vec<u8>, String> {
    let (header, raw) = container::decode_all(obj, magic)?;
    let f = &header.fields;
    let len = f
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
    let stored = len.and_then(|l| f.get(2..2 + l));
    if stored != Some(name.as_bytes()) {
        return Err(format!(
            "holds {:?}, not {name}",
            String::from_utf8_lossy(stored.unwrap_or(b"?"))
        ));
    }
    Ok(raw)
}
