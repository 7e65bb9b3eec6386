//! Object formats: the checked, compressed container and what is stored in it: SQLite WAL
//! segments and snapshots, PostgreSQL WAL files and base backup manifests. Pure byte transformations; docs/FORMAT.md is the spec.

pub mod container;
pub mod journal;
pub mod ltx;
pub mod manifest;
pub mod pgbackup;
pub mod pgwal;
pub mod segment;
pub mod snapshot;

use crate::sqlite::wal::WalPosition;

pub(crate) const POSITION_LEN: usize = 32;

pub(crate) fn put_position(out: &mut Vec<u8>, p: &WalPosition) {
    for v in [
        p.big_endian as u32,
        p.epoch,
        p.ckpt_seq,
        p.salt1,
        p.salt2,
        p.frame,
        p.cksum[0],
        p.cksum[1],
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(crate) fn get_position(b: &[u8]) -> WalPosition {
    let w = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    WalPosition {
        big_endian: w(0) & 1 == 1,
        epoch: w(1),
        ckpt_seq: w(2),
        salt1: w(3),
        salt2: w(4),
        frame: w(5),
        cksum: [w(6), w(7)],
    }
}
