//! The local spool: encoded segments waiting for upload, one file each, beside the
//! database. It decouples capture from the object store (outages, slow PUTs) and survives
//! a killed process. It is bounded by a byte limit and each file is deleted once the
//! store acknowledged it (invariant 5).

use crate::error::{Error, Result};
use crate::format::segment::{Segment, SegmentMeta};
use crate::storage::layout::{self, GenerationId, SegmentName};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct SpoolEntry {
    pub generation: GenerationId,
    pub name: SegmentName,
    pub path: PathBuf,
    pub size: u64,
    /// When walship read each of its commits (empty for files an earlier run left): the
    /// read-to-acknowledged histogram's starting points.
    pub commits: std::sync::Arc<[u64]>,
}

pub struct Spool {
    dir: PathBuf,
    /// fsync each segment (and the directory) before it counts as spooled
    /// (`journal-fsync`).
    fsync: bool,
}

fn file_name(generation: &GenerationId, name: &SegmentName) -> String {
    format!("{generation}-{}.seg", layout::format_segment_stem(name))
}

fn parse_file_name(f: &str) -> Option<(GenerationId, SegmentName)> {
    let stem = f.strip_suffix(".seg")?;
    let (generation, rest) = stem.split_once('-')?;
    Some((
        GenerationId::parse(generation)?,
        layout::parse_segment_stem(rest)?,
    ))
}

impl Spool {
    /// Open (creating) the spool directory and return what an earlier run left in it, in
    /// upload order. Unfinished and unreadable files are removed: their transactions were
    /// never acknowledged, and the continuity check at start-up notices the gap.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<SpoolEntry>)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut found = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let ent = ent.map_err(|e| Error::io(dir, e))?;
            let path = ent.path();
            let fname = ent.file_name().to_string_lossy().to_string();
            let parsed = parse_file_name(&fname);
            let valid = parsed.is_some()
                && std::fs::read(&path)
                    .ok()
                    .is_some_and(|b| Segment::decode(&b).is_ok());
            match parsed {
                Some((generation, name)) if valid => {
                    let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                    found.push(SpoolEntry {
                        generation,
                        name,
                        path,
                        size,
                        commits: Default::default(),
                    });
                }
                // The capture journal and the validation scratch directory live here too.
                _ if !fname.ends_with(".seg") && !fname.ends_with(".tmp") => {}
                _ => {
                    if fname.ends_with(".seg") {
                        tracing::warn!(file = %path.display(), "removing unreadable spool file");
                    }
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by(|a, b| (&a.generation, a.name).cmp(&(&b.generation, b.name)));
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                fsync: false,
            },
            found,
        ))
    }

    /// Make every spooled segment durable across a node crash, not only a process crash.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write one encoded segment (write to a temporary name, then rename, so a reader never
    /// sees half a file).
    pub fn write(
        &self,
        generation: &GenerationId,
        meta: &SegmentMeta,
        bytes: &[u8],
    ) -> Result<SpoolEntry> {
        let name = SegmentName {
            first_txid: meta.first_txid,
            last_txid: meta.last_txid,
            first_commit_ms: meta.first_commit_ms,
            last_commit_ms: meta.last_commit_ms,
        };
        let path = self.dir.join(file_name(generation, &name));
        let tmp = path.with_extension("tmp");
        if self.fsync {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
            f.sync_data().map_err(|e| Error::io(&tmp, e))?;
        } else {
            std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        if self.fsync
            && let Ok(d) = std::fs::File::open(&self.dir)
        {
            let _ = d.sync_all();
        }
        Ok(SpoolEntry {
            generation: generation.clone(),
            name,
            path,
            size: bytes.len() as u64,
            commits: Default::default(),
        })
    }

    pub fn remove(&self, e: &SpoolEntry) {
        if let Err(err) = std::fs::remove_file(&e.path) {
            tracing::warn!(file = %e.path.display(), "cannot remove spool file: {err}");
        }
    }
}

/// Bytes used by files in `dir` (for tests and the disk-cap check).
pub fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::segment::SegmentBuilder;
    use crate::sqlite::wal::{FrameHeader, WalHeader, WalPosition};

    fn seg(first: u64) -> (SegmentMeta, Vec<u8>) {
        let hdr = WalHeader::parse(&WalHeader::encode(false, 512, 0, 1, 2)).unwrap();
        let page = [0u8; 512];
        let (fh, c) = FrameHeader::encode(&hdr, hdr.cksum, 1, 1, &page);
        let mut b = SegmentBuilder::new(512);
        b.push(&fh, &page, Some(first * 10));
        let start = WalPosition::start_of(&hdr, 0);
        let meta = SegmentMeta {
            page_size: 512,
            first_txid: first,
            last_txid: first,
            first_commit_ms: first * 10,
            last_commit_ms: first * 10,
            frame_count: 1,
            db_pages: 1,
            start,
            end: WalPosition {
                frame: 1,
                cksum: c,
                ..start
            },
        };
        let bytes = b.encode(&meta);
        (meta, bytes)
    }

    #[test]
    fn reopen_returns_entries_in_order_and_drops_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let g = GenerationId::new(1, 2);
        let (spool, found) = Spool::open(dir.path()).unwrap();
        assert!(found.is_empty());
        for first in [3, 1, 2] {
            let (m, b) = seg(first);
            spool.write(&g, &m, &b).unwrap();
        }
        std::fs::write(dir.path().join("junk.tmp"), b"x").unwrap();
        let (m, mut b) = seg(4);
        b.truncate(b.len() - 3);
        spool.write(&g, &m, &b).unwrap();
        let (_, found) = Spool::open(dir.path()).unwrap();
        let firsts: Vec<u64> = found.iter().map(|e| e.name.first_txid).collect();
        assert_eq!(firsts, vec![1, 2, 3]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
