//! SQLite WAL file format: header and frame-header newtypes, the cumulative checksum
//! chain, and `WalPosition`, the exact point in a WAL that walship has consumed.
//! Pure: no I/O. See sqlite.org/fileformat2.html#walformat.

pub const WAL_HEADER_LEN: usize = 32;
pub const FRAME_HEADER_LEN: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const WAL_VERSION: u32 = 3_007_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("WAL header is shorter than 32 bytes")]
    Short,
    #[error("bad WAL magic {0:#x}")]
    Magic(u32),
    #[error("unsupported WAL version {0}")]
    Version(u32),
    #[error("invalid page size {0}")]
    PageSize(u32),
    #[error("WAL header checksum mismatch")]
    Checksum,
}

/// The 32-byte WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian: bool,
    pub page_size: u32,
    pub ckpt_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Checksum of the first 24 header bytes: the seed of the frame checksum chain.
    pub cksum: [u32; 2],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl WalHeader {
    pub fn parse(b: &[u8]) -> Result<Self, WalError> {
        if b.len() < WAL_HEADER_LEN {
            return Err(WalError::Short);
        }
        let magic = be32(b, 0);
        let big_endian = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            m => return Err(WalError::Magic(m)),
        };
        let version = be32(b, 4);
        if version != WAL_VERSION {
            return Err(WalError::Version(version));
        }
        let raw_size = be32(b, 8);
        // SQLite stores 65536 as 1 in the database header, but as 65536 here; accept both.
        let page_size = if raw_size == 1 { 65536 } else { raw_size };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::PageSize(raw_size));
        }
        let cksum = [be32(b, 24), be32(b, 28)];
        if checksum(big_endian, [0, 0], &b[..24]) != cksum {
            return Err(WalError::Checksum);
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            ckpt_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            cksum,
        })
    }

    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.page_size as u64
    }

    /// Byte offset of frame `n` (1-based) in the WAL file.
    pub fn frame_offset(&self, n: u32) -> u64 {
        WAL_HEADER_LEN as u64 + (n as u64 - 1) * self.frame_len()
    }

    /// Encode a header (used by tests and fixtures to fabricate WAL files).
    pub fn encode(
        big_endian: bool,
        page_size: u32,
        ckpt_seq: u32,
        salt1: u32,
        salt2: u32,
    ) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&(if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
        b[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&page_size.to_be_bytes());
        b[12..16].copy_from_slice(&ckpt_seq.to_be_bytes());
        b[16..20].copy_from_slice(&salt1.to_be_bytes());
        b[20..24].copy_from_slice(&salt2.to_be_bytes());
        let c = checksum(big_endian, [0, 0], &b[..24]);
        b[24..28].copy_from_slice(&c[0].to_be_bytes());
        b[28..32].copy_from_slice(&c[1].to_be_bytes());
        b
    }
}

/// The 24-byte header in front of every WAL frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader(pub [u8; FRAME_HEADER_LEN]);

impl FrameHeader {
    pub fn from_slice(b: &[u8]) -> Self {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&b[..FRAME_HEADER_LEN]);
        FrameHeader(h)
    }
    pub fn pgno(&self) -> u32 {
        be32(&self.0, 0)
    }
    /// Database size in pages after this commit, or 0 when this is not a commit frame.
    pub fn commit_size(&self) -> u32 {
        be32(&self.0, 4)
    }
    pub fn is_commit(&self) -> bool {
        self.commit_size() != 0
    }
    pub fn salts(&self) -> (u32, u32) {
        (be32(&self.0, 8), be32(&self.0, 12))
    }
    pub fn cksum(&self) -> [u32; 2] {
        [be32(&self.0, 16), be32(&self.0, 20)]
    }

    /// Check this frame against the WAL header and the running checksum before it;
    /// returns the running checksum after it when the frame is valid.
    pub fn verify(&self, hdr: &WalHeader, prev: [u32; 2], page: &[u8]) -> Option<[u32; 2]> {
        if self.salts() != (hdr.salt1, hdr.salt2) || self.pgno() == 0 {
            return None;
        }
        let c = checksum(hdr.big_endian, prev, &self.0[..8]);
        let c = checksum(hdr.big_endian, c, page);
        (c == self.cksum()).then_some(c)
    }

    /// Build a valid frame header (tests and fixtures).
    pub fn encode(
        hdr: &WalHeader,
        prev: [u32; 2],
        pgno: u32,
        commit_size: u32,
        page: &[u8],
    ) -> (Self, [u32; 2]) {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&pgno.to_be_bytes());
        b[4..8].copy_from_slice(&commit_size.to_be_bytes());
        b[8..12].copy_from_slice(&hdr.salt1.to_be_bytes());
        b[12..16].copy_from_slice(&hdr.salt2.to_be_bytes());
        let c = checksum(hdr.big_endian, prev, &b[..8]);
        let c = checksum(hdr.big_endian, c, page);
        b[16..20].copy_from_slice(&c[0].to_be_bytes());
        b[20..24].copy_from_slice(&c[1].to_be_bytes());
        (FrameHeader(b), c)
    }
}

/// SQLite's WAL checksum (walChecksumBytes): pairs of 32-bit words, in the byte order
/// the WAL magic names, folded into two running sums. `data.len()` must be a multiple of 8.
pub fn checksum(big_endian: bool, init: [u32; 2], data: &[u8]) -> [u32; 2] {
    debug_assert!(data.len().is_multiple_of(8));
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 1024 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected on this CPU.
        return unsafe { linear::checksum_avx2(big_endian, init, data) };
    }
    if big_endian {
        fold::<true>(init, data)
    } else {
        fold::<false>(init, data)
    }
}

/// The checksum step is linear over the integers mod 2^32: with words (a, b),
/// `(s1, s2) <- (s1 + s2 + a, s1 + 2*s2 + a + b)`, i.e. `s <- M s + (a, a + b)` with
/// `M = [[1, 1], [1, 2]]`. So after n pairs, `s = M^n s0 + sum_k M^(n-k) (a_k, a_k + b_k)`:
/// four dot products of the words with fixed coefficient vectors, which vectorise, instead
/// of a serial chain of 2n dependent additions. Same result, bit for bit (tested).
#[cfg(target_arch = "x86_64")]
mod linear {
    use std::sync::OnceLock;

    /// Coefficients for one length: per word, its weight in s1 and in s2 (interleaved as the
    /// words are), and M^n for the initial state.
    struct Coeffs {
        c1: Vec<u32>,
        c2: Vec<u32>,
        m: [[u32; 2]; 2],
    }

    fn mul(a: [[u32; 2]; 2], b: [[u32; 2]; 2]) -> [[u32; 2]; 2] {
        let f = |i: usize, j: usize| {
            a[i][0]
                .wrapping_mul(b[0][j])
                .wrapping_add(a[i][1].wrapping_mul(b[1][j]))
        };
        [[f(0, 0), f(0, 1)], [f(1, 0), f(1, 1)]]
    }

    fn build(pairs: usize) -> Coeffs {
        const M: [[u32; 2]; 2] = [[1, 1], [1, 2]];
        let (mut c1, mut c2) = (vec![0u32; 2 * pairs], vec![0u32; 2 * pairs]);
        // p = M^(n-k) for k = n, n-1, ..., 1 (identity for the last pair).
        let mut p: [[u32; 2]; 2] = [[1, 0], [0, 1]];
        for k in (0..pairs).rev() {
            // Contribution p * (a, a + b): a weighs p00 + p01 in s1, b weighs p01.
            c1[2 * k] = p[0][0].wrapping_add(p[0][1]);
            c1[2 * k + 1] = p[0][1];
            c2[2 * k] = p[1][0].wrapping_add(p[1][1]);
            c2[2 * k + 1] = p[1][1];
            p = mul(p, M);
        }
        Coeffs { c1, c2, m: p }
    }

    /// Coefficients for 2^i pairs (page sizes are powers of two).
    fn coeffs(pairs: usize) -> Option<&'static Coeffs> {
        static TABLE: [OnceLock<Coeffs>; 14] = [const { OnceLock::new() }; 14];
        let i = pairs.trailing_zeros() as usize;
        (pairs.is_power_of_two() && i < TABLE.len()).then(|| TABLE[i].get_or_init(|| build(pairs)))
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn checksum_avx2(big_endian: bool, init: [u32; 2], data: &[u8]) -> [u32; 2] {
        let pairs = data.len() / 8;
        let Some(c) = coeffs(pairs) else {
            return if big_endian {
                super::fold::<true>(init, data)
            } else {
                super::fold::<false>(init, data)
            };
        };
        let (mut s1, mut s2) = (0u32, 0u32);
        // Written as plain loops over whole arrays so LLVM emits vpmulld/vpaddd.
        if big_endian {
            for ((w, a), b) in data.chunks_exact(4).zip(&c.c1).zip(&c.c2) {
                let x = u32::from_be_bytes(w.try_into().unwrap());
                s1 = s1.wrapping_add(x.wrapping_mul(*a));
                s2 = s2.wrapping_add(x.wrapping_mul(*b));
            }
        } else {
            for ((w, a), b) in data.chunks_exact(4).zip(&c.c1).zip(&c.c2) {
                let x = u32::from_le_bytes(w.try_into().unwrap());
                s1 = s1.wrapping_add(x.wrapping_mul(*a));
                s2 = s2.wrapping_add(x.wrapping_mul(*b));
            }
        }
        let m = c.m;
        [
            m[0][0]
                .wrapping_mul(init[0])
                .wrapping_add(m[0][1].wrapping_mul(init[1]))
                .wrapping_add(s1),
            m[1][0]
                .wrapping_mul(init[0])
                .wrapping_add(m[1][1].wrapping_mul(init[1]))
                .wrapping_add(s2),
        ]
    }
}

/// The hot loop, monomorphised per byte order; a whole 64-byte block per iteration so the
/// loads are bounds-checked once (the sums themselves are an inherently serial chain).
#[inline(always)]
fn fold<const BE: bool>(init: [u32; 2], data: &[u8]) -> [u32; 2] {
    let (mut s1, mut s2) = (init[0], init[1]);
    let word = |b: &[u8], i: usize| {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if BE {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let mut blocks = data.chunks_exact(64);
    for blk in &mut blocks {
        let blk: &[u8; 64] = blk.try_into().unwrap();
        for i in (0..64).step_by(8) {
            s1 = s1.wrapping_add(word(blk, i)).wrapping_add(s2);
            s2 = s2.wrapping_add(word(blk, i + 4)).wrapping_add(s1);
        }
    }
    for w in blocks.remainder().chunks_exact(8) {
        s1 = s1.wrapping_add(word(w, 0)).wrapping_add(s2);
        s2 = s2.wrapping_add(word(w, 4)).wrapping_add(s1);
    }
    [s1, s2]
}

/// An exact point in a generation's WAL history: which WAL (salts, checkpoint sequence,
/// `epoch` = resets seen since the generation began) and how far into it (`frame`, the
/// last consumed frame, with the running checksum after it). Two positions are equal
/// only if every field is, so a resumed replicator can prove it is looking at the same
/// bytes it shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalPosition {
    pub epoch: u32,
    pub ckpt_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub big_endian: bool,
    pub frame: u32,
    pub cksum: [u32; 2],
}

impl WalPosition {
    /// The position just after the header of a WAL (no frames consumed).
    pub fn start_of(hdr: &WalHeader, epoch: u32) -> Self {
        WalPosition {
            epoch,
            ckpt_seq: hdr.ckpt_seq,
            salt1: hdr.salt1,
            salt2: hdr.salt2,
            big_endian: hdr.big_endian,
            frame: 0,
            cksum: hdr.cksum,
        }
    }

    /// The position of a database whose WAL file is empty (no header yet): the next
    /// header written starts the history. A real header never has a zero checksum.
    pub fn empty_wal(epoch: u32) -> Self {
        WalPosition {
            epoch,
            ..Default::default()
        }
    }

    pub fn is_empty_wal(&self) -> bool {
        self.frame == 0 && self.cksum == [0, 0] && self.salt1 == 0 && self.salt2 == 0
    }

    pub fn same_wal(&self, hdr: &WalHeader) -> bool {
        self.salt1 == hdr.salt1 && self.salt2 == hdr.salt2 && self.ckpt_seq == hdr.ckpt_seq
    }

    /// How many WAL resets separate this position's WAL from `hdr`, if `hdr` can be a
    /// descendant of it by resets alone (SQLite adds 1 to salt-1 and to the checkpoint
    /// sequence on every reset, see walRestartHdr).
    pub fn resets_to(&self, hdr: &WalHeader) -> Option<u32> {
        let d_ckpt = hdr.ckpt_seq.wrapping_sub(self.ckpt_seq);
        let d_salt = hdr.salt1.wrapping_sub(self.salt1);
        (d_ckpt == d_salt && d_ckpt > 0 && d_ckpt < 1 << 16).then_some(d_ckpt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checksum_both_orders() {
        for be in [false, true] {
            let raw = WalHeader::encode(be, 4096, 7, 0xdead_beef, 0x1234_5678);
            let h = WalHeader::parse(&raw).unwrap();
            assert_eq!(h.big_endian, be);
            assert_eq!(
                (h.page_size, h.ckpt_seq, h.salt1, h.salt2),
                (4096, 7, 0xdead_beef, 0x1234_5678)
            );
            let mut bad = raw;
            bad[20] ^= 1;
            assert_eq!(WalHeader::parse(&bad), Err(WalError::Checksum));
        }
    }

    #[test]
    fn rejects_bad_magic_version_and_page_size() {
        let mut raw = WalHeader::encode(false, 4096, 0, 1, 2);
        raw[3] = 0x99;
        assert!(matches!(WalHeader::parse(&raw), Err(WalError::Magic(_))));
        let raw = WalHeader::encode(false, 3000, 0, 1, 2);
        assert_eq!(WalHeader::parse(&raw), Err(WalError::PageSize(3000)));
        assert_eq!(WalHeader::parse(&raw[..10]), Err(WalError::Short));
    }

    #[test]
    fn frame_chain_verifies_and_breaks_on_salt_or_data_change() {
        let h = WalHeader::parse(&WalHeader::encode(false, 512, 0, 5, 6)).unwrap();
        let page = vec![7u8; 512];
        let (f1, c1) = FrameHeader::encode(&h, h.cksum, 1, 0, &page);
        let (f2, c2) = FrameHeader::encode(&h, c1, 2, 2, &page);
        assert_eq!(f1.verify(&h, h.cksum, &page), Some(c1));
        assert_eq!(f2.verify(&h, c1, &page), Some(c2));
        assert!(f2.is_commit() && !f1.is_commit());
        // Out of order: the chain must not hold.
        assert_eq!(f2.verify(&h, h.cksum, &page), None);
        let mut other = page.clone();
        other[100] = 0;
        assert_eq!(f1.verify(&h, h.cksum, &other), None);
        let h2 = WalHeader {
            salt1: h.salt1 + 1,
            ..h
        };
        assert_eq!(f1.verify(&h2, h.cksum, &page), None);
    }

    #[test]
    fn vectorised_checksum_equals_the_serial_chain() {
        let mut x = 0x9e37_79b9u32;
        for &len in &[1024usize, 4096, 8192, 65536, 4104, 1032] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for be in [false, true] {
                let init = [x, x.rotate_left(7)];
                let serial = if be {
                    fold::<true>(init, &data)
                } else {
                    fold::<false>(init, &data)
                };
                assert_eq!(checksum(be, init, &data), serial, "len {len} be {be}");
            }
        }
    }

    #[test]
    fn resets_to_counts_only_consistent_increments() {
        let h = WalHeader::parse(&WalHeader::encode(false, 4096, 3, 100, 9)).unwrap();
        let p = WalPosition::start_of(&h, 0);
        let next = WalHeader {
            ckpt_seq: 4,
            salt1: 101,
            salt2: 77,
            ..h
        };
        assert_eq!(p.resets_to(&next), Some(1));
        let twice = WalHeader {
            ckpt_seq: 5,
            salt1: 102,
            ..h
        };
        assert_eq!(p.resets_to(&twice), Some(2));
        let unrelated = WalHeader {
            ckpt_seq: 4,
            salt1: 555,
            ..h
        };
        assert_eq!(p.resets_to(&unrelated), None);
        assert_eq!(p.resets_to(&h), None);
    }
}
