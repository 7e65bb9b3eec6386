//! The object one PostgreSQL WAL file is stored as: a container (lz4 chunks with CRC32,
//! zero runs elided: a switched segment's unused tail costs nothing) whose header names
//! the file, so a misplaced object is caught on fetch. Pure: bytes in, bytes out.

use super::container::{self, Writer};
use crate::pgformat::walname::WalFile;

pub const MAGIC: &[u8; 4] = b"WPGW";
/// A streamed piece of a segment (bytes `start..end` of it): the same container, its
/// header naming the segment and the byte range.
pub const CHUNK_MAGIC: &[u8; 4] = b"WPGC";
const CHUNK_RAW: usize = 1 << 20;

/// The object for WAL file `name` holding `raw`; the header carries the name so a
/// misplaced object is caught on fetch.
pub fn encode(name: &WalFile, raw: &[u8]) -> Vec<u8> {
    encode_named(MAGIC, &name.to_string(), raw)
}

fn chunk_label(segment: &WalFile, start: u32, end: u32) -> String {
    format!("{segment}.{start:08X}-{end:08X}")
}

/// The object for bytes `start..end` of `segment`, which are `raw`.
pub fn encode_chunk(segment: &WalFile, start: u32, end: u32, raw: &[u8]) -> Vec<u8> {
    debug_assert_eq!(raw.len() as u64, u64::from(end - start));
    encode_named(CHUNK_MAGIC, &chunk_label(segment, start, end), raw)
}

/// The bytes `start..end` of `segment` a chunk object holds: checksums, name and length
/// checked.
pub fn decode_chunk(
    segment: &WalFile,
    start: u32,
    end: u32,
    obj: &[u8],
) -> Result<Vec<u8>, String> {
    let raw = decode_named(CHUNK_MAGIC, &chunk_label(segment, start, end), obj)?;
    if raw.len() as u64 != u64::from(end.saturating_sub(start)) {
        return Err(format!(
            "holds {} bytes where its name says {}",
            raw.len(),
            end.saturating_sub(start)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_decodes_only_under_its_own_name_and_length() {
        let seg = WalFile::parse("000000010000000000000003").unwrap();
        let raw: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let obj = encode_chunk(&seg, 0x2000, 0x2000 + 5000, &raw);
        assert_eq!(
            decode_chunk(&seg, 0x2000, 0x2000 + 5000, &obj).unwrap(),
            raw
        );
        // Misplaced under another range or segment: refused, naming what it holds.
        let e = decode_chunk(&seg, 0x3000, 0x3000 + 5000, &obj).unwrap_err();
        assert!(e.contains("00002000"), "{e}");
        let other = WalFile::parse("000000010000000000000004").unwrap();
        assert!(decode_chunk(&other, 0x2000, 0x2000 + 5000, &obj).is_err());
        // A whole segment's object is not a chunk, and a damaged byte fails its CRC.
        assert!(decode_chunk(&seg, 0, 5000, &encode(&seg, &raw)).is_err());
        let mut bad = obj.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        assert!(decode_chunk(&seg, 0x2000, 0x2000 + 5000, &bad).is_err());
        assert!(decode_chunk(&seg, 0x2000, 0x2000 + 5000, &obj[..n - 3]).is_err());
    }
}
