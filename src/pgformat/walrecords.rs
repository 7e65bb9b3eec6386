//! Reads just enough of a PostgreSQL WAL segment to find the time of its last transaction
//! end (commit or abort records, whose timestamps `recovery_target_time` is compared
//! with). Pure: bytes in, a time out. Layout: PostgreSQL's `xlog_internal.h`,
//! `xlogrecord.h` and `xact.h` (stable since 9.5). Pages are checked against the
//! segment's own address and records against the `xl_prev` chain, so the stale tail of a
//! recycled segment is never taken for records.

const XLOG_PAGE_MAGIC_MIN: u16 = 0xD101; // PostgreSQL 10 and later use 0xD1xx
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const RM_XACT_ID: u8 = 1;
const XLOG_XACT_OPMASK: u8 = 0x70;
/// Commit, abort, commit prepared, abort prepared: the records recovery stops at.
const XACT_ENDS: [u8; 4] = [0x00, 0x20, 0x30, 0x40];
/// PostgreSQL's epoch, 2000-01-01 UTC, in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// What a segment says about its last transaction end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastXact {
    /// Read to the end of its WAL; the last commit or abort was at this Unix ms.
    At(u64),
    /// Read to the end of its WAL; it holds no commit or abort.
    NoneHere,
    /// Not read to its end (not a segment, a broken chain, a record not understood): the
    /// caller must not conclude anything.
    Unknown,
}

/// The last commit or abort record that starts in `seg` (a whole segment as archived,
/// little-endian as on every platform walship runs on).
/// `log`/`seg_no` are the segment's name's: a file whose pages carry another address (a
/// recycled file not yet overwritten) is not that segment.
pub fn last_xact_end(seg: &[u8], log: u32, seg_no: u32) -> LastXact {
    let expected = u32_at(seg, 32).and_then(|size| {
        (seg_no as u64)
            .checked_mul(size as u64)
            .and_then(|o| ((log as u64) << 32).checked_add(o))
    });
    if expected.is_none() || u64_at(seg, 8) != expected {
        return LastXact::Unknown;
    }
    match walk(seg) {
        Some(Some(ms)) => LastXact::At(ms),
        Some(None) => LastXact::NoneHere,
        None => LastXact::Unknown,
    }
}

/// `None` when the walk could not reach the end of the WAL in `seg`.
fn walk(seg: &[u8]) -> Option<Option<u64>> {
    if u16_at(seg, 0)? < XLOG_PAGE_MAGIC_MIN || u16_at(seg, 2)? & XLP_LONG_HEADER == 0 {
        return None;
    }
    let base = u64_at(seg, 8)?;
    let seg_size = u32_at(seg, 32)? as usize;
    let page = u32_at(seg, 36)? as usize;
    if page < 1024 || !page.is_power_of_two() || seg_size != seg.len() {
        return None;
    }
    // Each page's header: its data start, or None where the WAL ends (zeros, stale pages).
    let page_data = |p: usize| -> Option<(usize, u16, u32)> {
        let at = p * page;
        let magic = u16_at(seg, at)?;
        let info = u16_at(seg, at + 2)?;
        let addr = u64_at(seg, at + 8)?;
        if magic != u16_at(seg, 0)? || Some(addr) != base.checked_add(at as u64) {
            return None;
        }
        let hdr = if info & XLP_LONG_HEADER != 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        Some((at + hdr, info, u32_at(seg, at + 16)?))
    };
    // Skip the tail of a record begun in the previous segment.
    let (mut pos, info, rem) = page_data(0)?;
    if info & XLP_FIRST_IS_CONTRECORD != 0 {
        let mut left = rem as usize;
        let mut p = 0;
        loop {
            let room = (p + 1) * page - pos;
            if left <= room {
                pos = maxalign(pos + left);
                break;
            }
            left -= room;
            p += 1;
            pos = page_data(p)?.0;
        }
    }
    let mut last = None;
    let mut prev: Option<u64> = None;
    loop {
        pos = maxalign(pos);
        if pos >= seg.len() {
            break;
        }
        if pos.is_multiple_of(page) {
            let Some((data, _, _)) = page_data(pos / page) else {
                break; // the WAL ended on the page before (this one is zeros or stale)
            };
            pos = data;
        }
        // Only the length is sure to be on the record's first page (xlogreader.c): the
        // rest of the header may continue on the next one.
        let Some(tot) = u32_at(seg, pos).map(|t| t as usize) else {
            break;
        };
        if tot < RECORD_HEADER {
            break; // zeros: the end of the WAL
        }
        // Gather the record, leaving out the page headers it spans.
        // The length is the record's claim: reserve no more than the segment holds.
        let mut rec = Vec::with_capacity(tot.min(seg.len()));
        let mut at = pos;
        while rec.len() < tot {
            let page_end = (at / page + 1) * page;
            let take = (tot - rec.len()).min(page_end - at);
            rec.extend_from_slice(seg.get(at..at + take)?);
            at += take;
            if rec.len() < tot {
                if at >= seg.len() {
                    return Some(last); // continues in the next segment
                }
                let (data, info, _) = page_data(at / page)?;
                if info & XLP_FIRST_IS_CONTRECORD == 0 {
                    return None;
                }
                at = data;
            }
        }
        let xl_prev = u64_at(&rec, 8)?;
        if prev.is_some_and(|p| p != xl_prev) {
            return None; // not the record that follows: something is not understood
        }
        if let Some(ms) = xact_end_ms(&rec)? {
            last = Some(ms);
        }
        prev = Some(base.checked_add(pos as u64)?);
        pos = at;
    }
    Some(last)
}

/// `Some(None)`: not a commit/abort record; `Some(Some(ms))`: one, at `ms`; `None`: one
/// whose layout is not understood (`rec` whole, header included).
fn xact_end_ms(rec: &[u8]) -> Option<Option<u64>> {
    let (info, rmid) = (rec[16], rec[17]);
    if rmid != RM_XACT_ID || !XACT_ENDS.contains(&(info & XLOG_XACT_OPMASK)) {
        return Some(None);
    }
    // Block headers precede the main data; transaction ends carry none, only the
    // origin and top-level-xid headers may come before the main data's length.
    let mut at = RECORD_HEADER;
    loop {
        match *rec.get(at)? {
            255 => {
                at += 2; // XLR_BLOCK_ID_DATA_SHORT: u8 length
                break;
            }
            254 => {
                at += 5; // XLR_BLOCK_ID_DATA_LONG: u32 length
                break;
            }
            253 => at += 3, // XLR_BLOCK_ID_ORIGIN: u16
            252 => at += 5, // XLR_BLOCK_ID_TOPLEVEL_XID: u32
            _ => return None,
        }
    }
    let us = i64::from_le_bytes(rec.get(at..at + 8)?.try_into().ok()?);
    u64::try_from(us.checked_add(PG_EPOCH_US)? / 1000)
        .ok()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzzing): a commit record's timestamp near i64::MAX overflowed the
    /// epoch shift (a panic with overflow checks); it is now a record not understood.
    #[test]
    fn a_timestamp_past_the_range_is_not_understood_not_a_panic() {
        let mut rec = vec![0u8; RECORD_HEADER];
        rec[17] = RM_XACT_ID;
        rec.extend_from_slice(&[255, 8]);
        rec.extend_from_slice(&i64::MAX.to_le_bytes());
        assert_eq!(xact_end_ms(&rec), None);
        let n = rec.len();
        rec[n - 8..].copy_from_slice(&1_000_000i64.to_le_bytes());
        assert_eq!(xact_end_ms(&rec), Some(Some(946_684_801_000)));
    }

    const PAGE: usize = 8192;
    const SEG: usize = 16 * PAGE;

    fn page_header(seg: &mut [u8], p: usize, base: u64, info: u16, rem: u32) {
        let at = p * PAGE;
        seg[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
        seg[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
        seg[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
        seg[at + 8..at + 16].copy_from_slice(&(base + at as u64).to_le_bytes());
        seg[at + 16..at + 20].copy_from_slice(&rem.to_le_bytes());
        if info & XLP_LONG_HEADER != 0 {
            seg[at + 32..at + 36].copy_from_slice(&(SEG as u32).to_le_bytes());
            seg[at + 36..at + 40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
    }

    /// A record of `len` bytes at `at` with `prev`; a commit at `time_us` if given.
    fn record(len: usize, prev: u64, rmid: u8, time_us: Option<i64>) -> Vec<u8> {
        let mut r = vec![0u8; len];
        r[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        r[8..16].copy_from_slice(&prev.to_le_bytes());
        r[17] = rmid;
        if let Some(t) = time_us {
            r[24] = 255;
            r[25] = 8;
            r[26..34].copy_from_slice(&t.to_le_bytes());
        }
        r
    }

    /// `last_xact_end` for a test segment built at `base` (segments of `SEG` bytes).
    fn at_base(seg: &[u8], base: u64) -> LastXact {
        last_xact_end(
            seg,
            (base >> 32) as u32,
            ((base & 0xffff_ffff) / SEG as u64) as u32,
        )
    }

    /// Lay records out as PostgreSQL does (8-aligned, page headers in between).
    fn segment(records: &[Vec<u8>], base: u64) -> Vec<u8> {
        let mut seg = vec![0u8; SEG];
        page_header(&mut seg, 0, base, XLP_LONG_HEADER, 0);
        let mut pos = LONG_HEADER;
        let mut prev = 0u64;
        for r in records {
            pos = maxalign(pos);
            if pos.is_multiple_of(PAGE) {
                page_header(&mut seg, pos / PAGE, base, 0, 0);
                pos += SHORT_HEADER;
            }
            let mut r = r.clone();
            r[8..16].copy_from_slice(&prev.to_le_bytes());
            prev = base + pos as u64;
            let mut left = &r[..];
            while !left.is_empty() {
                let room = (pos / PAGE + 1) * PAGE - pos;
                let take = left.len().min(room);
                seg[pos..pos + take].copy_from_slice(&left[..take]);
                left = &left[take..];
                pos += take;
                if !left.is_empty() {
                    page_header(
                        &mut seg,
                        pos / PAGE,
                        base,
                        XLP_FIRST_IS_CONTRECORD,
                        left.len() as u32,
                    );
                    pos += SHORT_HEADER;
                }
            }
        }
        seg
    }

    #[test]
    fn finds_the_last_commit_across_pages() {
        let t = |s: i64| Some(s * 1_000_000);
        let recs = vec![
            record(34, 0, RM_XACT_ID, t(100)),
            record(9000, 0, 10, None), // a big heap record spanning a page boundary
            record(34, 0, RM_XACT_ID, t(200)),
            record(50, 0, 10, None),
        ];
        let seg = segment(&recs, 0x0300_0000);
        let want = ((200 * 1_000_000 + PG_EPOCH_US) / 1000) as u64;
        assert_eq!(at_base(&seg, 0x0300_0000), LastXact::At(want));
        let quiet = segment(&[record(50, 0, 10, None)], 0x0300_0000);
        assert_eq!(at_base(&quiet, 0x0300_0000), LastXact::NoneHere);
        // Named as another segment: not read.
        assert_eq!(last_xact_end(&seg, 0, 1), LastXact::Unknown);
    }

    #[test]
    fn stale_pages_and_non_segments() {
        let recs = vec![record(34, 0, RM_XACT_ID, Some(5_000_000))];
        let mut seg = segment(&recs, 0x0300_0000);
        // Page 1 left from the file's previous use (another address): past the WAL's end.
        page_header(&mut seg, 1, 0x0100_0000, 0, 0);
        let stale = record(34, 7, RM_XACT_ID, Some(9_000_000));
        seg[PAGE + SHORT_HEADER..PAGE + SHORT_HEADER + 34].copy_from_slice(&stale);
        // And the first page's own tail points at it.
        let end = maxalign(LONG_HEADER + 34);
        for b in &mut seg[end..PAGE] {
            *b = 0;
        }
        assert_eq!(
            at_base(&seg, 0x0300_0000),
            LastXact::At(((5_000_000 + PG_EPOCH_US) / 1000) as u64)
        );
        assert_eq!(last_xact_end(&[0u8; 100], 0, 0), LastXact::Unknown);
        assert_eq!(at_base(&seg[..SEG / 2], 0x0300_0000), LastXact::Unknown);
    }

    #[test]
    fn a_broken_chain_or_an_unreadable_commit_is_unknown() {
        let t = Some(1_000_000);
        let mut seg = segment(&[record(34, 0, RM_XACT_ID, t), record(34, 0, 10, None)], 0);
        // The second record's xl_prev no longer names the first.
        seg[LONG_HEADER + 40 + 8] ^= 1;
        assert_eq!(at_base(&seg, 0), LastXact::Unknown);
        let mut odd = record(34, 0, RM_XACT_ID, t);
        odd[24] = 3; // a block reference in a commit: not a layout this reader knows
        assert_eq!(at_base(&segment(&[odd], 0), 0), LastXact::Unknown);
    }
}
