//! Capture-journal records <-> bytes: the whole transactions one WAL scan consumed (raw
//! frames as SQLite wrote them, each commit's time), appended locally before capture moves
//! on, so that a killed walship loses nothing it had read. Pure: no file I/O, no storage.
//! Every length is checked against the bytes present before anything is allocated.

use super::{POSITION_LEN, get_position, put_position};
use crate::sqlite::wal::{FRAME_HEADER_LEN, WalPosition};

pub const MAGIC: &[u8; 4] = b"WJNL";
const VERSION: u16 = 1;
/// magic, version, reserved, epoch, body length (covered by the CRC, like the body).
const PREFIX_LEN: usize = 4 + 2 + 2 + 8 + 4;
/// generation, page size, first/last txid, db pages, last commit ms, end, frames, commits.
const FIXED_LEN: usize = 20 + 4 + 8 + 8 + 4 + 8 + POSITION_LEN + 4 + 4;
const COMMIT_ENTRY: usize = 12;

/// One scan's consumed transactions, borrowed from the capture's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub generation: &'a str,
    pub page_size: u32,
    pub first_txid: u64,
    pub last_txid: u64,
    /// Database size in pages after the last transaction.
    pub db_pages: u32,
    pub last_commit_ms: u64,
    /// The WAL position after the last commit frame.
    pub end: WalPosition,
    /// `(frame index within this record, commit ms)`, one per transaction.
    pub commits: &'a [(u32, u64)],
    /// `frame count × (24 + page size)` bytes.
    pub frames: &'a [u8],
}

impl RecordRef<'_> {
    pub fn frame_count(&self) -> usize {
        self.frames.len() / (FRAME_HEADER_LEN + self.page_size as usize)
    }

    /// Bytes `encode` produces.
    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + FIXED_LEN + self.commits.len() * COMMIT_ENTRY + self.frames.len() + 4
    }

    /// The record in one buffer (`epoch` names the journal's current run of records).
    pub fn encode(&self, epoch: u64) -> Vec<u8> {
        let (mut head, crc) = self.encode_parts(epoch);
        head.extend_from_slice(self.frames);
        head.extend_from_slice(&crc.to_be_bytes());
        head
    }

    /// The record as three parts to write one after the other, without copying the
    /// frames: everything before them, (the frames), and the CRC after them.
    pub fn encode_parts(&self, epoch: u64) -> (Vec<u8>, u32) {
        let body_len = FIXED_LEN + self.commits.len() * COMMIT_ENTRY + self.frames.len();
        let mut out = Vec::with_capacity(PREFIX_LEN + FIXED_LEN + self.commits.len() * 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        let mut gen_bytes = [b'0'; 20];
        let g = self.generation.as_bytes();
        gen_bytes[..g.len().min(20)].copy_from_slice(&g[..g.len().min(20)]);
        out.extend_from_slice(&gen_bytes);
        out.extend_from_slice(&self.page_size.to_be_bytes());
        out.extend_from_slice(&self.first_txid.to_be_bytes());
        out.extend_from_slice(&self.last_txid.to_be_bytes());
        out.extend_from_slice(&self.db_pages.to_be_bytes());
        out.extend_from_slice(&self.last_commit_ms.to_be_bytes());
        put_position(&mut out, &self.end);
        out.extend_from_slice(&(self.frame_count() as u32).to_be_bytes());
        out.extend_from_slice(&(self.commits.len() as u32).to_be_bytes());
        for &(i, ms) in self.commits {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(&ms.to_be_bytes());
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&out);
        h.update(self.frames);
        (out, h.finalize())
    }
}

/// A record read back from the journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub epoch: u64,
    pub generation: String,
    pub page_size: u32,
    pub first_txid: u64,
    pub last_txid: u64,
    pub db_pages: u32,
    pub last_commit_ms: u64,
    pub end: WalPosition,
    pub commits: Vec<(u32, u64)>,
    pub frames: Vec<u8>,
}

/// Decode the record at the start of `b`: the record and its encoded length. An error
/// for anything but a whole, intact record (a torn tail after a crash is one).
pub fn decode(b: &[u8]) -> Result<(Record, usize), String> {
    if b.len() < PREFIX_LEN {
        return Err("truncated record header".into());
    }
    if &b[..4] != MAGIC {
        return Err("not a journal record".into());
    }
    let version = u16::from_be_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(format!("journal record version {version} is not supported"));
    }
    let epoch = u64::from_be_bytes(b[8..16].try_into().unwrap());
    let body_len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
    let total = PREFIX_LEN
        .checked_add(body_len)
        .and_then(|n| n.checked_add(4))
        .ok_or("record length overflows")?;
    if body_len < FIXED_LEN || b.len() < total {
        return Err("truncated record".into());
    }
    let body = &b[PREFIX_LEN..PREFIX_LEN + body_len];
    let crc = u32::from_be_bytes(b[PREFIX_LEN + body_len..total].try_into().unwrap());
    if crc32fast::hash(&b[..PREFIX_LEN + body_len]) != crc {
        return Err("record CRC mismatch".into());
    }
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap());
    let generation = std::str::from_utf8(&body[..20])
        .map_err(|_| "generation id is not text")?
        .to_string();
    let page_size = u32_at(20);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("bad page size {page_size}"));
    }
    let first_txid = u64_at(24);
    let last_txid = u64_at(32);
    let db_pages = u32_at(40);
    let last_commit_ms = u64_at(44);
    let end = get_position(&body[52..52 + POSITION_LEN]);
    let at = 52 + POSITION_LEN;
    let frame_count = u32_at(at) as usize;
    let commit_count = u32_at(at + 4) as usize;
    let frame_len = FRAME_HEADER_LEN + page_size as usize;
    let expect = commit_count
        .checked_mul(COMMIT_ENTRY)
        .and_then(|c| frame_count.checked_mul(frame_len).map(|f| (c, f)))
        .and_then(|(c, f)| c.checked_add(f))
        .and_then(|n| n.checked_add(FIXED_LEN));
    if expect != Some(body_len) {
        return Err("record lengths disagree".into());
    }
    let txs = last_txid
        .checked_sub(first_txid)
        .and_then(|d| d.checked_add(1))
        .ok_or("last txid before first")?;
    if commit_count == 0 || txs != commit_count as u64 {
        return Err("commit count does not match the txid range".into());
    }
    let table = &body[FIXED_LEN..FIXED_LEN + commit_count * COMMIT_ENTRY];
    let commits: Vec<(u32, u64)> = table
        .chunks_exact(COMMIT_ENTRY)
        .map(|e| {
            (
                u32::from_be_bytes(e[..4].try_into().unwrap()),
                u64::from_be_bytes(e[4..].try_into().unwrap()),
            )
        })
        .collect();
    if commits.iter().any(|&(i, _)| i as usize >= frame_count)
        || commits.last().map(|c| c.0 as usize + 1) != Some(frame_count)
    {
        return Err("commit table does not fit the frames".into());
    }
    Ok((
        Record {
            epoch,
            generation,
            page_size,
            first_txid,
            last_txid,
            db_pages,
            last_commit_ms,
            end,
            commits,
            frames: body[FIXED_LEN + commit_count * COMMIT_ENTRY..].to_vec(),
        },
        total,
    ))
}

/// Every whole record of the current run at the start of `b`, in order. The journal is
/// overwritten in place from its start (no truncation, which made every append allocate
/// file blocks anew): reading stops at the first record that is not whole and intact (the
/// tail a crash left half written, reported as the second value) or that belongs to an
/// earlier run (another epoch: what lies beyond the current tail).
pub fn decode_all(b: &[u8]) -> (Vec<Record>, Option<String>) {
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0;
    while at < b.len() {
        match decode(&b[at..]) {
            Ok((r, _)) if out.first().is_some_and(|f| f.epoch != r.epoch) => break,
            Ok((r, n)) => {
                out.push(r);
                at += n;
            }
            // Zeros where the journal was emptied (or never written): nothing more.
            Err(_) if b[at..].iter().take(4).all(|&x| x == 0) => break,
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(frames: &[u8], commits: &[(u32, u64)]) -> Vec<u8> {
        RecordRef {
            generation: "0123456789abcdef0123",
            page_size: 512,
            first_txid: 5,
            last_txid: 4 + commits.len() as u64,
            db_pages: 3,
            last_commit_ms: 99,
            end: WalPosition::empty_wal(2),
            commits,
            frames,
        }
        .encode(9)
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let frames = vec![7u8; 2 * 536];
        let a = rec(&frames, &[(0, 10), (1, 20)]);
        let (r, n) = decode(&a).unwrap();
        assert_eq!(n, a.len());
        assert_eq!((r.first_txid, r.last_txid, r.commits.len()), (5, 6, 2));
        assert_eq!(r.frames, frames);
        let mut two = a.clone();
        two.extend_from_slice(&a[..a.len() - 5]);
        let (all, err) = decode_all(&two);
        assert_eq!(all.len(), 1);
        assert!(err.unwrap().contains("truncated"));
        // A whole record of an earlier run after the current one ends the journal.
        let mut stale = a.clone();
        let mut old = a.clone();
        old[15] ^= 1; // another epoch (its CRC fixed up below)
        let n = old.len();
        let crc = crc32fast::hash(&old[..n - 4]);
        old[n - 4..].copy_from_slice(&crc.to_be_bytes());
        stale.extend_from_slice(&old);
        let (all, err) = decode_all(&stale);
        assert_eq!((all.len(), err), (1, None));
        // Zeros (an emptied journal) are no error.
        assert_eq!(decode_all(&[0u8; 64]), (vec![], None));
    }

    #[test]
    fn hostile_bytes_are_errors() {
        let frames = vec![1u8; 536];
        let good = rec(&frames, &[(0, 1)]);
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x41;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
        }
        // A huge declared length does not allocate: it is bounded by the bytes present.
        let mut b = good.clone();
        b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&b).is_err());
        assert!(decode(&[]).is_err());
    }
}
