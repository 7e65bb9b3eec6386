//! The `-shm` wal-index as seen from outside SQLite: its header (mxFrame, salts,
//! nBackfill) and the byte-range locks other processes hold on it. walship reads these to
//! notice an application checkpoint that is waiting for walship's read lock, so it can
//! step out of the way (docs/CAPTURE.md). Layout: sqlite.org/walformat.html.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const HEADER_LEN: usize = 136;
/// First lock byte (UNIX_SHM_BASE); WAL_WRITE_LOCK is +0, WAL_CKPT_LOCK +1, READ(i) +3+i.
const LOCK_BASE: i64 = 120;
pub const WRITE_LOCK: i64 = LOCK_BASE;
pub const CKPT_LOCK: i64 = LOCK_BASE + 1;

/// The live wal-index header (one consistent copy of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmHeader {
    pub change: u32,
    pub page_size: u32,
    pub mx_frame: u32,
    pub n_page: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub n_backfill: u32,
}

impl ShmHeader {
    /// Parse the first 136 bytes; `None` while the two header copies disagree (a writer is
    /// mid-update) or the index is not initialised.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < HEADER_LEN || b[..48] != b[48..96] || b[12] == 0 {
            return None;
        }
        let ne = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let be = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let sz = u16::from_ne_bytes([b[14], b[15]]) as u32;
        Some(ShmHeader {
            change: ne(8),
            page_size: if sz == 1 { 65536 } else { sz },
            mx_frame: ne(16),
            n_page: ne(20),
            // The salts are copied byte for byte from the WAL header: big-endian.
            salt1: be(32),
            salt2: be(36),
            n_backfill: ne(96),
        })
    }
}

/// An open handle on the -shm file. It is kept open for as long as walship's SQLite
/// connections live: closing any descriptor of a file drops every POSIX lock this process
/// holds on it, SQLite's included.
pub struct Shm {
    file: File,
}

impl Shm {
    pub fn open(path: &Path) -> io::Result<Self> {
        // Read-only: F_GETLK needs no write access on Linux, and walship never writes here.
        let file = File::open(path)?;
        Ok(Shm { file })
    }

    /// A consistent header, retrying briefly while a writer updates it.
    pub fn header(&self) -> io::Result<Option<ShmHeader>> {
        let mut b = [0u8; HEADER_LEN];
        for _ in 0..100 {
            match self.file.read_at(&mut b, 0) {
                Ok(n) if n < HEADER_LEN => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Some(h) = ShmHeader::parse(&b) {
                return Ok(Some(h));
            }
            std::hint::spin_loop();
        }
        Ok(None)
    }

    /// The pid of another process holding an exclusive lock on lock byte `at`.
    pub fn exclusive_holder(&self, at: i64) -> io::Result<Option<i32>> {
        // SAFETY: flock is plain data; F_GETLK only reads and writes it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = at as _;
        fl.l_len = 1;
        // SAFETY: valid fd and a valid pointer to an initialised flock.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLK, &mut fl) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((fl.l_type as i32 == libc::F_WRLCK).then_some(fl.l_pid))
    }

    /// If one other process holds both the checkpoint and the writer lock, it is running a
    /// blocking (FULL/RESTART/TRUNCATE) checkpoint, and the WAL cannot grow until it ends.
    pub fn blocking_checkpointer(&self) -> io::Result<Option<i32>> {
        let Some(ckpt) = self.exclusive_holder(CKPT_LOCK)? else {
            return Ok(None);
        };
        Ok((self.exclusive_holder(WRITE_LOCK)? == Some(ckpt)).then_some(ckpt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(mx: u32, salt1: u32) -> Vec<u8> {
        let mut h = vec![0u8; 48];
        h[0..4].copy_from_slice(&3_007_000u32.to_ne_bytes());
        h[8..12].copy_from_slice(&5u32.to_ne_bytes());
        h[12] = 1;
        h[14..16].copy_from_slice(&4096u16.to_ne_bytes());
        h[16..20].copy_from_slice(&mx.to_ne_bytes());
        h[32..36].copy_from_slice(&salt1.to_be_bytes());
        let mut b = h.clone();
        b.extend_from_slice(&h);
        b.extend_from_slice(&[0u8; 40]);
        b[96..100].copy_from_slice(&3u32.to_ne_bytes());
        b
    }

    #[test]
    fn parses_consistent_header() {
        let h = ShmHeader::parse(&raw(42, 0xabcd)).unwrap();
        assert_eq!(
            (h.mx_frame, h.salt1, h.page_size, h.n_backfill),
            (42, 0xabcd, 4096, 3)
        );
    }

    #[test]
    fn torn_or_uninitialised_header_is_none() {
        let mut b = raw(42, 1);
        b[16] ^= 1; // first copy differs from the second
        assert_eq!(ShmHeader::parse(&b), None);
        let mut b = raw(42, 1);
        b[12] = 0;
        b[60] = 0;
        assert_eq!(ShmHeader::parse(&b), None);
    }
}
