//! The only code that knows object names. Every name is relative to a database's replica
//! root and is built by a `format_*` function and read back by `parse_object`; numbers are
//! fixed-width lowercase hex so that lexical order (what LIST returns) is numeric order.
//!
//! ```text
//! generations/<generation>/manifest.json
//! generations/<generation>/snapshots/<txid:16>-<commit ms:12>.snap
//! generations/<generation>/wal/<first txid:16>-<last txid:16>-<first commit ms:12>-<last commit ms:12>.seg
//! generations/<generation>/pgwal/<PostgreSQL WAL file name>
//! generations/<generation>/basebackups/<start lsn:16>-<start ms:12>/{manifest.json,part-<n:5>.pack}
//! ```
//! A generation id is `<created ms:12><random:8>`, so ids sort by creation time.

use std::fmt;

pub const GENERATIONS: &str = "generations";
/// Scratch objects (start-up write probe) live here, outside any generation.
pub const PROBE_DIR: &str = ".walship";

/// A generation id: 20 lowercase hex digits, creation time first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct GenerationId(String);

impl GenerationId {
    pub fn new(created_ms: u64, random: u32) -> Self {
        GenerationId(format!(
            "{:012x}{:08x}",
            created_ms & 0xffff_ffff_ffff,
            random
        ))
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 20 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| GenerationId(s.to_string()))
    }

    pub fn created_ms(&self) -> u64 {
        u64::from_str_radix(&self.0[..12], 16).unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a segment's name says about it: enough to plan a restore without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct SegmentName {
    pub first_txid: u64,
    pub last_txid: u64,
    pub first_commit_ms: u64,
    pub last_commit_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct SnapshotName {
    /// The snapshot holds the database as of this transaction (0 = generation start).
    pub txid: u64,
    pub commit_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    Manifest(GenerationId),
    Snapshot(GenerationId, SnapshotName),
    Segment(GenerationId, SegmentName),
    /// A PostgreSQL WAL file (segment, history, partial, backup label) of a cluster.
    PgWal(GenerationId, crate::pgformat::walname::WalFile),
    /// A file of a PostgreSQL base backup.
    PgBackup(GenerationId, BackupName, BackupFile),
    /// A piece of a PostgreSQL WAL segment, streamed before the segment was complete.
    PgChunk(GenerationId, ChunkName),
}

/// A streamed piece of WAL segment `segment` (a `WalFile::Segment`): its bytes from
/// `start` to `end` (offsets in the segment; LSN = the segment's start + offset), named
/// `pgwal/chunks/<segment>/<start>-<end>.chunk`: one LIST of the directory finds the
/// segment's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkName {
    pub segment: crate::pgformat::walname::WalFile,
    pub start: u32,
    pub end: u32,
}

pub fn format_pg_chunk(g: &GenerationId, c: &ChunkName) -> String {
    format!(
        "{}/{:08X}-{:08X}.chunk",
        format_pg_chunks_dir(g, &c.segment),
        c.start,
        c.end
    )
}

/// The directory of segment `segment`'s chunks.
pub fn format_pg_chunks_dir(
    g: &GenerationId,
    segment: &crate::pgformat::walname::WalFile,
) -> String {
    format!("{GENERATIONS}/{g}/pgwal/chunks/{segment}")
}

fn parse_chunk(file: &str) -> Option<ChunkName> {
    let (seg, range) = file.strip_suffix(".chunk")?.split_once('/')?;
    let segment = crate::pgformat::walname::WalFile::parse(seg)?;
    let (a, b) = range.split_once('-')?;
    let hex8 = |s: &str| {
        (s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    let c = ChunkName {
        segment,
        start: hex8(a)?,
        end: hex8(b)?,
    };
    // No segment is larger than 1 GiB: a name past that is not walship's (and would make a
    // reader reserve gigabytes).
    (matches!(segment, crate::pgformat::walname::WalFile::Segment { .. })
        && c.start < c.end
        && c.end <= 1 << 30)
        .then_some(c)
}

/// A base backup, by where its WAL starts and when it was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct BackupName {
    pub start_lsn: u64,
    pub start_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackupFile {
    Manifest,
    Part(u32),
}

pub fn format_backup_dir(g: &GenerationId, b: &BackupName) -> String {
    format!(
        "{GENERATIONS}/{g}/basebackups/{:016x}-{:012x}",
        b.start_lsn, b.start_ms
    )
}

/// A part's name within its backup's directory.
pub fn format_backup_part(n: u32) -> String {
    format!("part-{n:05}.pack")
}

pub fn format_generation_dir(g: &GenerationId) -> String {
    format!("{GENERATIONS}/{g}")
}

pub fn format_manifest(g: &GenerationId) -> String {
    format!("{GENERATIONS}/{g}/manifest.json")
}

pub fn format_snapshot(g: &GenerationId, s: &SnapshotName) -> String {
    format!(
        "{GENERATIONS}/{g}/snapshots/{:016x}-{:012x}.snap",
        s.txid, s.commit_ms
    )
}

pub fn format_segment(g: &GenerationId, s: &SegmentName) -> String {
    format!("{GENERATIONS}/{g}/wal/{}.seg", format_segment_stem(s))
}

/// The directory of a cluster's base backups (listed to find the newest).
pub fn format_pg_backups_dir(g: &GenerationId) -> String {
    format!("{GENERATIONS}/{g}/basebackups")
}

pub fn format_pg_wal(g: &GenerationId, f: &crate::pgformat::walname::WalFile) -> String {
    format!("{GENERATIONS}/{g}/pgwal/{f}")
}

/// The part of a segment name after the directory (also used for spool file names).
pub fn format_segment_stem(s: &SegmentName) -> String {
    format!(
        "{:016x}-{:016x}-{:012x}-{:012x}",
        s.first_txid, s.last_txid, s.first_commit_ms, s.last_commit_ms
    )
}

fn hex(s: &str, width: usize) -> Option<u64> {
    (s.len() == width && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

pub fn parse_segment_stem(stem: &str) -> Option<SegmentName> {
    let mut it = stem.split('-');
    let s = SegmentName {
        first_txid: hex(it.next()?, 16)?,
        last_txid: hex(it.next()?, 16)?,
        first_commit_ms: hex(it.next()?, 12)?,
        last_commit_ms: hex(it.next()?, 12)?,
    };
    (it.next().is_none() && s.first_txid <= s.last_txid).then_some(s)
}

/// Parse a name relative to the replica root; `None` for anything walship did not write.
pub fn parse_object(rel: &str) -> Option<ObjectName> {
    let rest = rel.strip_prefix(GENERATIONS)?.strip_prefix('/')?;
    let (gen_str, rest) = rest.split_once('/')?;
    let g = GenerationId::parse(gen_str)?;
    if rest == "manifest.json" {
        return Some(ObjectName::Manifest(g));
    }
    if let Some(file) = rest.strip_prefix("snapshots/") {
        let (txid, ms) = file.strip_suffix(".snap")?.split_once('-')?;
        return Some(ObjectName::Snapshot(
            g,
            SnapshotName {
                txid: hex(txid, 16)?,
                commit_ms: hex(ms, 12)?,
            },
        ));
    }
    if let Some(r) = rest.strip_prefix("basebackups/") {
        let (dir, file) = r.split_once('/')?;
        let (lsn, ms) = dir.split_once('-')?;
        let name = BackupName {
            start_lsn: hex(lsn, 16)?,
            start_ms: hex(ms, 12)?,
        };
        let f = if file == "manifest.json" {
            BackupFile::Manifest
        } else {
            let n = file.strip_prefix("part-")?.strip_suffix(".pack")?;
            (n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
                .map(BackupFile::Part)?
        };
        return Some(ObjectName::PgBackup(g, name, f));
    }
    if let Some(file) = rest.strip_prefix("pgwal/") {
        if let Some(c) = file.strip_prefix("chunks/") {
            return parse_chunk(c).map(|c| ObjectName::PgChunk(g, c));
        }
        return Some(ObjectName::PgWal(
            g,
            crate::pgformat::walname::WalFile::parse(file)?,
        ));
    }
    if let Some(file) = rest.strip_prefix("wal/") {
        return Some(ObjectName::Segment(
            g,
            parse_segment_stem(file.strip_suffix(".seg")?)?,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_id_round_trip_and_sorts_by_time() {
        let a = GenerationId::new(1_700_000_000_000, 0xffff_ffff);
        let b = GenerationId::new(1_700_000_000_001, 0);
        assert!(a < b);
        assert_eq!(GenerationId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.created_ms(), 1_700_000_000_000);
        assert_eq!(GenerationId::parse("XYZ"), None);
        assert_eq!(GenerationId::parse("0123456789abcdef012G"), None);
    }

    #[test]
    fn chunk_names_round_trip_beside_their_segment() {
        let g = GenerationId::new(5, 6);
        let segment = crate::pgformat::walname::WalFile::parse("000000020000000100000003").unwrap();
        let c = ChunkName {
            segment,
            start: 0x2000,
            end: 0xA3_F000,
        };
        let key = format_pg_chunk(&g, &c);
        assert!(key.ends_with("pgwal/chunks/000000020000000100000003/00002000-00A3F000.chunk"));
        assert!(key.starts_with(&format_pg_chunks_dir(&g, &segment)));
        assert_eq!(parse_object(&key), Some(ObjectName::PgChunk(g.clone(), c)));
        for bad in [
            "000000020000000100000003/00002000-00002000.chunk",
            "000000020000000100000003/00003000-00002000.chunk",
            "000000020000000100000003/2000-00A3F000.chunk",
            "000000020000000100000003/00002000-00a3f000.chunk",
            "00000002.history/00000000-00000010.chunk",
            "000000020000000100000003/x/00000000-00000010.chunk",
            "000000020000000100000003/00000000-40000001.chunk",
        ] {
            let key = format!("{}/pgwal/chunks/{bad}", format_generation_dir(&g));
            assert_eq!(parse_object(&key), None, "{bad}");
        }
    }

    #[test]
    fn manifest_round_trip() {
        let g = GenerationId::new(5, 6);
        assert_eq!(
            parse_object(&format_manifest(&g)),
            Some(ObjectName::Manifest(g))
        );
    }

    #[test]
    fn snapshot_round_trip_and_order() {
        let g = GenerationId::new(5, 6);
        let s = SnapshotName {
            txid: 0x1_0000_0000,
            commit_ms: 1_763_700_000_123,
        };
        let name = format_snapshot(&g, &s);
        assert_eq!(
            parse_object(&name),
            Some(ObjectName::Snapshot(g.clone(), s))
        );
        let t = SnapshotName { txid: 9, ..s };
        assert!(
            format_snapshot(&g, &t) < name,
            "lexical order must be numeric order"
        );
    }

    #[test]
    fn segment_round_trip_and_order() {
        let g = GenerationId::new(5, 6);
        let s = SegmentName {
            first_txid: 10,
            last_txid: 0xabc,
            first_commit_ms: 1,
            last_commit_ms: 2,
        };
        let name = format_segment(&g, &s);
        assert_eq!(parse_object(&name), Some(ObjectName::Segment(g.clone(), s)));
        let later = SegmentName {
            first_txid: 0xabd,
            last_txid: 0x1000,
            ..s
        };
        assert!(name < format_segment(&g, &later));
        assert_eq!(parse_segment_stem(&format_segment_stem(&s)), Some(s));
    }

    #[test]
    fn pg_wal_round_trip() {
        let g = GenerationId::new(5, 6);
        let f = crate::pgformat::walname::WalFile::parse("00000002.history").unwrap();
        assert_eq!(
            parse_object(&format_pg_wal(&g, &f)),
            Some(ObjectName::PgWal(g, f))
        );
    }

    #[test]
    fn backup_names_round_trip() {
        let g = GenerationId::new(5, 6);
        let b = BackupName {
            start_lsn: 0x3000028,
            start_ms: 1_763_700_000_123,
        };
        let dir = format_backup_dir(&g, &b);
        assert_eq!(
            parse_object(&format!("{dir}/manifest.json")),
            Some(ObjectName::PgBackup(g.clone(), b, BackupFile::Manifest))
        );
        assert_eq!(
            parse_object(&format!("{dir}/{}", format_backup_part(12))),
            Some(ObjectName::PgBackup(g.clone(), b, BackupFile::Part(12)))
        );
        assert_eq!(parse_object(&format!("{dir}/part-1.pack")), None);
    }

    #[test]
    fn foreign_names_are_ignored() {
        for n in [
            "generations/zzz/manifest.json",
            "generations/0000000000050000000/manifest.json",
            "generations/000000000005000000006/wal/1-2.seg",
            "generations/000000000005000000006/other",
            ".walship/probe",
            "litestream/generations/x",
        ] {
            assert_eq!(parse_object(n), None, "{n}");
        }
        // last < first is not a segment walship writes
        assert_eq!(
            parse_segment_stem("0000000000000002-0000000000000001-000000000000-000000000000"),
            None
        );
    }
}
