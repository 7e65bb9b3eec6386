//! Litestream 0.5's LTX files (github.com/superfly/ltx, format version 3), read-only: the
//! header, the LZ4-compressed page block, the trailer's CRC-64 checks. walship reads them
//! to restore a replica Litestream wrote; it never writes one. Touches no store or file.

use crc_fast::{CrcAlgorithm, Digest};

pub const MAGIC: &[u8; 4] = b"LTX1";
pub const HEADER_SIZE: usize = 100;
const PAGE_HEADER_SIZE: usize = 6;
const TRAILER_SIZE: usize = 16;
/// Header flag: the file carries no database checksums (what Litestream 0.5.17 writes).
pub const FLAG_NO_CHECKSUM: u32 = 1 << 1;
/// Page flag: a 4-byte size and an LZ4 block follow (else one LZ4 frame, ltx < 0.5.1).
const PAGE_FLAG_SIZE: u16 = 1;
/// Every LTX checksum has its top bit set, so that a set checksum is never zero.
const CHECKSUM_FLAG: u64 = 1 << 63;
/// The byte SQLite's locks live at; its page is never stored.
const PENDING_BYTE: u64 = 0x4000_0000;

/// An LTX file's header (the fields a restore needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// The database's size in pages after the file's last transaction.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    /// When the last transaction was replicated, Unix milliseconds.
    pub timestamp_ms: u64,
    pub pre_apply: u64,
}

impl Header {
    /// A snapshot holds the whole database (its range starts at the first transaction).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    pub fn has_checksums(&self) -> bool {
        self.flags & FLAG_NO_CHECKSUM == 0
    }
}

/// A whole LTX file, checked: header, pages (number and content, in file order) and the
/// database checksum after applying it (0 when the file carries none).
#[derive(Debug)]
pub struct Ltx {
    pub header: Header,
    pub pages: Vec<(u32, Vec<u8>)>,
    pub post_apply: u64,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The page number SQLite never writes for this page size (the one holding PENDING_BYTE).
pub fn lock_pgno(page_size: u32) -> u32 {
    (PENDING_BYTE / page_size as u64) as u32 + 1
}

/// Parse and check a header (the first 100 bytes of a file).
pub fn parse_header(b: &[u8]) -> Result<Header, String> {
    if b.len() < HEADER_SIZE {
        return Err(format!("{} bytes, shorter than an LTX header", b.len()));
    }
    if &b[..4] != MAGIC {
        return Err("not an LTX file (no LTX1 magic)".into());
    }
    let h = Header {
        flags: be32(b, 4),
        page_size: be32(b, 8),
        commit: be32(b, 12),
        min_txid: be64(b, 16),
        max_txid: be64(b, 24),
        timestamp_ms: be64(b, 32),
        pre_apply: be64(b, 40),
    };
    if h.flags & !FLAG_NO_CHECKSUM != 0 {
        return Err(format!("unknown header flags {:#x}", h.flags));
    }
    if !h.page_size.is_power_of_two() || !(512..=65536).contains(&h.page_size) {
        return Err(format!("invalid page size {}", h.page_size));
    }
    if h.min_txid == 0 || h.min_txid > h.max_txid {
        return Err(format!(
            "invalid transaction range {}..{}",
            h.min_txid, h.max_txid
        ));
    }
    if h.commit == 0 {
        return Err("database size of 0 pages".into());
    }
    Ok(h)
}

/// The CRC-64 (Go's ISO table) LTX uses for file and page checksums.
fn crc64(parts: &[&[u8]]) -> u64 {
    let mut d = Digest::new(CrcAlgorithm::Crc64GoIso);
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

/// One page's share of a database checksum.
pub fn page_checksum(pgno: u32, data: &[u8]) -> u64 {
    CHECKSUM_FLAG | crc64(&[&pgno.to_be_bytes(), data])
}

/// Parse a whole file, checking its file checksum, every page's size and, for a snapshot,
/// that it holds each page of the database once, in order, and (when it carries them) its
/// database checksum.
pub fn parse(b: &[u8]) -> Result<Ltx, String> {
    let header = parse_header(b)?;
    if b.len() < HEADER_SIZE + PAGE_HEADER_SIZE + TRAILER_SIZE {
        return Err(format!("{} bytes, too short for an LTX file", b.len()));
    }
    // The file checksum covers the bytes as written except that pages count uncompressed.
    let mut file_sum = Digest::new(CrcAlgorithm::Crc64GoIso);
    file_sum.update(&b[..HEADER_SIZE]);
    let post_apply = be64(b, b.len() - TRAILER_SIZE);
    let ps = header.page_size as usize;
    let lock = lock_pgno(header.page_size);
    let end = b.len() - TRAILER_SIZE;
    let mut at = HEADER_SIZE;
    let mut pages = Vec::new();
    let mut sum = CHECKSUM_FLAG;
    loop {
        let h = b
            .get(at..at + PAGE_HEADER_SIZE)
            .filter(|_| at + PAGE_HEADER_SIZE <= end)
            .ok_or("the page block has no end marker")?;
        at += PAGE_HEADER_SIZE;
        file_sum.update(h);
        let (pgno, flags) = (be32(h, 0), u16::from_be_bytes([h[4], h[5]]));
        if pgno == 0 && flags == 0 {
            break;
        }
        if pgno == 0 || flags & !PAGE_FLAG_SIZE != 0 {
            return Err(format!(
                "invalid page header at byte {} (page {pgno}, flags {flags:#x})",
                at - PAGE_HEADER_SIZE
            ));
        }
        let mut page = vec![0u8; ps];
        at = if flags & PAGE_FLAG_SIZE != 0 {
            let n = b
                .get(at..at + 4)
                .map(|s| be32(s, 0) as usize)
                .ok_or("a page's size runs past the end")?;
            file_sum.update(&b[at..at + 4]);
            let block = b
                .get(at + 4..at + 4 + n)
                .filter(|_| at + 4 + n <= end)
                .ok_or_else(|| format!("page {pgno}'s data runs past the end"))?;
            match lz4_flex::block::decompress_into(block, &mut page) {
                Ok(got) if got == ps => {}
                Ok(got) => return Err(format!("page {pgno} holds {got} bytes, not {ps}")),
                Err(e) => return Err(format!("page {pgno}: {e}")),
            }
            at + 4 + n
        } else {
            at + read_frame(&b[at..end], &mut page).map_err(|e| format!("page {pgno}: {e}"))?
        };
        file_sum.update(&page);
        if header.is_snapshot() {
            let want = match pages.last() {
                Some((p, _)) if p + 1 == lock => lock + 1,
                Some((p, _)) => p + 1,
                None => 1,
            };
            if pgno != want {
                return Err(format!("snapshot holds page {pgno} where {want} belongs"));
            }
            sum = CHECKSUM_FLAG | (sum ^ page_checksum(pgno, &page));
        }
        pages.push((pgno, page));
    }
    file_sum.update(&b[at..b.len() - 8]);
    let stored = be64(b, b.len() - 8);
    let actual = CHECKSUM_FLAG | file_sum.finalize();
    if stored != actual {
        return Err(format!(
            "file checksum mismatch (stored {stored:016x}, computed {actual:016x})"
        ));
    }
    if header.is_snapshot() {
        let last = pages.last().map_or(0, |(p, _)| *p);
        let full = last == header.commit || (last + 1 == lock && header.commit == lock);
        if !full {
            return Err(format!(
                "snapshot ends at page {last} of a {}-page database",
                header.commit
            ));
        }
        if header.has_checksums() && sum != post_apply {
            return Err(format!(
                "snapshot's pages sum to checksum {sum:016x}, the trailer says {post_apply:016x}"
            ));
        }
    }
    Ok(Ltx {
        header,
        pages,
        post_apply,
    })
}

/// One LZ4 frame holding exactly one page; returns the bytes it took.
fn read_frame(b: &[u8], page: &mut [u8]) -> Result<usize, String> {
    use std::io::Read;
    let mut cur = std::io::Cursor::new(b);
    let mut dec = lz4_flex::frame::FrameDecoder::new(&mut cur);
    dec.read_exact(page).map_err(|e| e.to_string())?;
    // One more read consumes the frame's end mark (and checksum) and must find no more
    // data; it stops there, before the next page header.
    let mut more = [0u8; 1];
    match dec.read(&mut more) {
        Ok(0) => {}
        Ok(_) => return Err("an LZ4 frame holds more than one page".into()),
        Err(e) => return Err(e.to_string()),
    }
    drop(dec);
    Ok(cur.position() as usize)
}

/// The database checksum of a whole file's pages (the lock page skipped), for comparing
/// a restored database with the checksum an LTX file carries.
pub fn database_checksum(db: &[u8], page_size: u32) -> u64 {
    let lock = lock_pgno(page_size);
    db.chunks(page_size as usize)
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, p))
        .filter(|(n, _)| *n != lock)
        .fold(CHECKSUM_FLAG, |s, (n, p)| {
            CHECKSUM_FLAG | (s ^ page_checksum(n, p))
        })
}

/// An LTX file's name below a replica path: (level, min, max). Litestream's file, GCS and
/// Azure clients write `ltx/<level>/<min>-<max>.ltx`; its S3 and OSS clients
/// `<level as 4 hex digits>/<min>-<max>.ltx` (min and max as 16 hex digits).
pub fn parse_name(rel: &str) -> Option<(u8, u64, u64)> {
    let parts: Vec<&str> = rel.split('/').collect();
    let (level, name) = match parts[..] {
        ["ltx", level, name] if level.bytes().all(|c| c.is_ascii_digit()) => {
            (level.parse::<u8>().ok()?, name)
        }
        [level, name] if level.len() == 4 => (u8::from_str_radix(level, 16).ok()?, name),
        _ => return None,
    };
    let name = name.strip_suffix(".ltx")?;
    if level > 9 {
        return None;
    }
    let (a, b) = name.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let (min, max) = (hex(a)?, hex(b)?);
    (min >= 1 && min <= max).then_some((level, min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An LTX file as ltx's encoder lays it out (block-compressed pages).
    pub(crate) fn build(h: &Header, pages: &[(u32, Vec<u8>)], post: u64) -> Vec<u8> {
        let mut b = Vec::new();
        let mut sum = Digest::new(CrcAlgorithm::Crc64GoIso);
        b.extend_from_slice(MAGIC);
        for v in [h.flags, h.page_size, h.commit] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [h.min_txid, h.max_txid, h.timestamp_ms, h.pre_apply] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.resize(HEADER_SIZE, 0);
        sum.update(&b);
        for (n, p) in pages {
            let c = lz4_flex::block::compress(p);
            let at = b.len();
            b.extend_from_slice(&n.to_be_bytes());
            b.extend_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
            b.extend_from_slice(&(c.len() as u32).to_be_bytes());
            sum.update(&b[at..]);
            sum.update(p);
            b.extend_from_slice(&c);
        }
        let at = b.len();
        b.extend_from_slice(&[0; PAGE_HEADER_SIZE]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // an empty index and its size
        b.extend_from_slice(&post.to_be_bytes());
        sum.update(&b[at..]);
        let sum = CHECKSUM_FLAG | sum.finalize();
        b.extend_from_slice(&sum.to_be_bytes());
        b
    }

    fn header(min: u64, max: u64, commit: u32, flags: u32) -> Header {
        Header {
            flags,
            page_size: 512,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp_ms: 1_700_000_000_000,
            pre_apply: 0,
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_its_checksum_is_checked() {
        let pages: Vec<(u32, Vec<u8>)> = (1..=3).map(|n| (n, vec![n as u8; 512])).collect();
        let db: Vec<u8> = pages.iter().flat_map(|(_, p)| p.clone()).collect();
        let sum = database_checksum(&db, 512);
        let f = build(&header(1, 1, 3, 0), &pages, sum);
        let l = parse(&f).unwrap();
        assert_eq!(l.pages, pages);
        assert_eq!(l.post_apply, sum);
        let bad = build(&header(1, 1, 3, 0), &pages, sum ^ 1);
        assert!(parse(&bad).unwrap_err().contains("checksum"));
        // Without checksums (Litestream 0.5.17's files) the trailer's database checksum is 0.
        assert!(parse(&build(&header(1, 1, 3, FLAG_NO_CHECKSUM), &pages, 0)).is_ok());
    }

    #[test]
    fn damage_is_named() {
        let pages = vec![(1, vec![7u8; 512]), (2, vec![8u8; 512])];
        let f = build(&header(1, 1, 2, FLAG_NO_CHECKSUM), &pages, 0);
        let mut flipped = f.clone();
        flipped[120] ^= 0xff;
        assert!(parse(&flipped).unwrap_err().contains("file checksum"));
        assert!(parse(&f[..f.len() - 1]).is_err());
        let gap = build(&header(1, 1, 3, FLAG_NO_CHECKSUM), &pages, 0);
        assert!(parse(&gap).unwrap_err().contains("ends at page 2"));
        let skip = build(
            &header(1, 1, 3, FLAG_NO_CHECKSUM),
            &[(1, vec![0; 512]), (3, vec![0; 512])],
            0,
        );
        assert!(parse(&skip).unwrap_err().contains("page 3 where 2"));
        let mut magic = f.clone();
        magic[0] = b'X';
        assert!(parse(&magic).unwrap_err().contains("magic"));
        // An incremental file may hold any pages.
        let inc = build(
            &header(2, 5, 9, FLAG_NO_CHECKSUM),
            &[(9, vec![1; 512]), (4, vec![2; 512])],
            0,
        );
        assert_eq!(parse(&inc).unwrap().pages.len(), 2);
    }

    #[test]
    fn frame_compressed_pages_of_older_files_are_read() {
        use std::io::Write;
        let page = vec![5u8; 512];
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        enc.write_all(&page).unwrap();
        let frame = enc.finish().unwrap();
        let mut b = build(&header(2, 2, 1, FLAG_NO_CHECKSUM), &[], 0);
        b.truncate(HEADER_SIZE);
        let mut sum = Digest::new(CrcAlgorithm::Crc64GoIso);
        sum.update(&b);
        for _ in 0..2 {
            let at = b.len();
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            sum.update(&b[at..]);
            sum.update(&page);
            b.extend_from_slice(&frame);
        }
        let at = b.len();
        b.extend_from_slice(&[0; PAGE_HEADER_SIZE]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&0u64.to_be_bytes());
        sum.update(&b[at..]);
        let sum = CHECKSUM_FLAG | sum.finalize();
        b.extend_from_slice(&sum.to_be_bytes());
        let l = parse(&b).unwrap();
        assert_eq!(l.pages, vec![(1, page.clone()), (1, page)]);
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_name("ltx/0/0000000000000002-000000000000000a.ltx"),
            Some((0, 2, 10))
        );
        assert_eq!(
            parse_name("0009/0000000000000001-0000000000000005.ltx"),
            Some((9, 1, 5))
        );
        for bad in [
            "ltx/0/0000000000000002-0000000000000001.ltx",
            "ltx/x/0000000000000001-0000000000000001.ltx",
            "ltx/10/0000000000000001-0000000000000001.ltx",
            "ltx/0/000000000000000A-000000000000000B.ltx",
            "ltx/0/1-2.ltx",
            "000a/0000000000000001-0000000000000001.ltx",
            "x/0000/0000000000000001-0000000000000001.ltx",
            "generations/0/0000000000000001-0000000000000001.ltx",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
