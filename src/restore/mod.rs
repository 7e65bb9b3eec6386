//! `walship restore`: plan from one LIST (plan.rs), newest state or a point in time;
//! download the snapshot and segments in parallel ahead of an in-order apply, verify every
//! CRC and the position chain, build the database in a temporary file beside the target,
//! check it with `PRAGMA integrity_check`, fsync, and only then rename it into place
//! (invariant 7), so a crash at any moment leaves no partial file at the target path.

pub mod litestream;
pub mod litestream03;
pub mod plan;
pub mod when;

use crate::error::{Error, Result};
use crate::format::container;
use crate::format::segment::Segment;
use crate::format::snapshot::{SnapshotMeta, SnapshotVerifier, decode_chunk_at};
use crate::sqlite::db::sidecar_path;
use crate::sqlite::wal::WalPosition;
use crate::storage::Replica;
use crate::storage::get_retrying;
use crate::storage::layout;
use futures::StreamExt;
use plan::{Plan, Stop};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_PARALLELISM: usize = 8;
/// Snapshots up to this size are fetched with one GET; larger ones by chunk ranges.
const WHOLE_SNAPSHOT_MAX: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub output: PathBuf,
    pub parallelism: usize,
    pub integrity_check: bool,
    /// Print a progress line (on a terminal).
    pub progress: bool,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub plan: Plan,
    pub pages: u32,
    /// The last transaction restored, and when walship saw it commit.
    pub txid: u64,
    pub commit_ms: u64,
    /// The WAL position the restored state ends at (newest-state restores only): what
    /// `verify` compares a live database's position with.
    pub end: Option<crate::sqlite::wal::WalPosition>,
    pub downloaded: u64,
    pub elapsed: Duration,
}

/// `plan::plan`, reading each manifest it asks for (a plan uses only generations whose
/// manifest was checked; usually one GET). Refusals name the replica.
pub async fn plan_checked(
    replica: &Replica,
    gens: &mut std::collections::BTreeMap<layout::GenerationId, plan::Generation>,
    only: Option<&layout::GenerationId>,
    target: plan::Target,
    allow_older: bool,
) -> Result<Plan> {
    // The planner asks for each listed generation's manifest at most once.
    for _ in 0..=gens.len() {
        match plan::plan(gens, only, target, allow_older) {
            Ok(p) => return Ok(p),
            Err(plan::PlanError::NeedManifest(id)) => {
                let state = crate::catalog::manifest_state(replica, &id).await?;
                if let Some(g) = gens.get_mut(&id) {
                    g.manifest = state;
                }
            }
            Err(plan::PlanError::Refused(reason)) => {
                return Err(Error::Replica {
                    replica: replica.url().to_string(),
                    reason,
                });
            }
        }
    }
    Err(Error::Replica {
        replica: replica.url().to_string(),
        reason: "the restore plan did not settle after reading every manifest".into(),
    })
}

/// A one-line progress display on stderr, redrawn at most twice a second.
pub(crate) struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub(crate) fn new(enabled: bool, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            total,
            done: 0,
            started: now,
            last: now,
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\rrestoring: {:.1} / {:.1} MB ({:.0}%), {:.0} MB/s   ",
                self.done as f64 / 1e6,
                self.total as f64 / 1e6,
                100.0 * self.done as f64 / self.total.max(1) as f64,
                self.done as f64 / 1e6 / secs
            );
        }
    }

    fn finish(&self) {
        if self.enabled && self.started.elapsed() >= Duration::from_millis(500) {
            eprintln!();
        }
    }
}

/// Carry out `plan` (from `plan::plan` over one LIST) into `opts.output`, replacing it.
pub async fn restore_plan(
    replica: &Replica,
    plan: Plan,
    opts: &RestoreOptions,
    started: Instant,
) -> Result<RestoreReport> {
    let tmp = TempFile::create(&opts.output)?;
    let mut progress = Progress::new(opts.progress, plan.bytes());
    let snap = apply_snapshot(
        replica,
        &plan.snapshot,
        tmp.file(),
        opts.parallelism,
        &mut progress,
    )
    .await?;
    let mut pages = snap.page_count;
    let mut pos = snap.position;
    let mut next_txid = snap.txid + 1;
    let (mut txid, mut commit_ms) = (snap.txid, snap.commit_ms);
    let ps = snap.page_size;
    let segments = plan.segments.clone();
    let last = segments.len().saturating_sub(1);
    let mut segs = futures::stream::iter(segments.iter().enumerate())
        .map(|(i, s)| async move { (i, s, get_retrying(replica, &s.key, None).await) })
        .buffered(opts.parallelism.max(1));
    while let Some((i, obj, bytes)) = segs.next().await {
        let bytes = bytes?;
        progress.add(bytes.len() as u64);
        let seg = Segment::decode(&bytes).map_err(|r| Error::corrupt(&obj.key, r))?;
        let m = &seg.meta;
        if m.first_txid != next_txid
            || m.first_txid != obj.name.first_txid
            || m.last_txid != obj.name.last_txid
            || m.first_commit_ms != obj.name.first_commit_ms
            || m.last_commit_ms != obj.name.last_commit_ms
            || m.page_size != ps
        {
            return Err(Error::corrupt(
                &obj.key,
                "header does not match its name or the chain",
            ));
        }
        if m.start != pos {
            return Err(Error::corrupt(
                &obj.key,
                "does not start where the previous object ended (WAL position mismatch)",
            ));
        }
        let stop = if i == last { plan.stop } else { None };
        let applied = tokio::task::block_in_place(|| apply_segment(tmp.file(), &seg, stop))
            .map_err(|e| Error::io(tmp.path(), e))?
            .ok_or_else(|| Error::corrupt(&obj.key, "no transaction at or before the target"))?;
        (pages, txid, commit_ms) = applied;
        pos = m.end;
        next_txid = m.last_txid + 1;
    }
    drop(segs);
    progress.finish();
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "applied");
    tmp.finish(pages as u64 * ps as u64, opts.integrity_check, &opts.output)?;
    let end = plan.stop.is_none().then_some(pos);
    Ok(RestoreReport {
        plan,
        pages,
        txid,
        commit_ms,
        end,
        downloaded: progress.done,
        elapsed: started.elapsed(),
    })
}

pub(crate) struct SnapshotApplied {
    page_size: u32,
    page_count: u32,
    txid: u64,
    commit_ms: u64,
    position: WalPosition,
}

pub(crate) async fn apply_snapshot(
    replica: &Replica,
    snapshot: &plan::Obj<layout::SnapshotName>,
    out: &File,
    parallelism: usize,
    progress: &mut Progress,
) -> Result<SnapshotApplied> {
    let key = &snapshot.key;
    let corrupt = |r: String| Error::corrupt(key, r);
    let write = |first_page: u32, ps: u32, raw: &[u8]| {
        tokio::task::block_in_place(|| out.write_all_at(raw, (first_page as u64 - 1) * ps as u64))
            .map_err(|e| Error::io(key.to_string(), e))
    };
    let meta = if snapshot.size <= WHOLE_SNAPSHOT_MAX {
        let bytes = get_retrying(replica, key, None).await?;
        progress.add(bytes.len() as u64);
        let meta = SnapshotMeta::parse_header(&bytes).map_err(corrupt)?;
        let (_, payload) =
            container::decode_all(&bytes, crate::format::snapshot::MAGIC).map_err(corrupt)?;
        if payload.len() as u64 != meta.page_count as u64 * meta.page_size as u64 {
            return Err(corrupt("payload size does not match the page count".into()));
        }
        if !payload.is_empty() {
            write(1, meta.page_size, &payload)?;
        }
        meta
    } else {
        let size = snapshot.size;
        let head = get_retrying(replica, key, Some(0..SnapshotMeta::HEADER_LEN as u64)).await?;
        let meta = SnapshotMeta::parse_header(&head).map_err(corrupt)?;
        let foot = get_retrying(
            replica,
            key,
            Some(size - container::FOOTER_LEN as u64..size),
        )
        .await?;
        let t_off = container::parse_footer(&foot).map_err(corrupt)?;
        if t_off >= size {
            return Err(corrupt("trailer offset out of range".into()));
        }
        let tbytes = get_retrying(replica, key, Some(t_off..size)).await?;
        let trailer = container::parse_trailer(&tbytes, t_off).map_err(corrupt)?;
        let mut verifier = SnapshotVerifier::new(meta, trailer).map_err(corrupt)?;
        let ranges: Vec<_> = (0..meta.chunk_count())
            .map(|i| verifier.chunk_range(i))
            .collect();
        // Fetch ahead; decode (lz4, CRC) and write each chunk on a blocking thread, several
        // at once; fold the CRCs in order. Writeback of each chunk starts at once, so the
        // final fsync finds little left to write.
        let mut chunks = futures::stream::iter(ranges.into_iter().enumerate())
            .map(|(i, r)| {
                let file = out.try_clone();
                let key_s = key.to_string();
                async move {
                    let bytes = get_retrying(replica, key, Some(r)).await?;
                    let n = bytes.len() as u64;
                    let file = file.map_err(|e| Error::io(key.to_string(), e))?;
                    let i = i as u32;
                    tokio::task::spawn_blocking(move || {
                        let c = decode_chunk_at(&meta, i, &bytes)
                            .map_err(|r| Error::corrupt(key_s, r))?;
                        let off = (meta.chunk_pages(i).start as u64 - 1) * meta.page_size as u64;
                        file.write_all_at(&c.raw, off)
                            .map_err(|e| Error::io("the restored database", e))?;
                        start_writeback(&file, off, c.raw.len() as u64);
                        Ok::<_, Error>((c, n))
                    })
                    .await
                    .map_err(|e| Error::io("the restored database", std::io::Error::other(e)))?
                }
            })
            .buffered(parallelism.max(1));
        while let Some(r) = chunks.next().await {
            let (c, n) = r?;
            progress.add(n);
            verifier.accept_decoded(&c);
        }
        verifier.finish().map_err(corrupt)?;
        meta
    };
    if meta.txid != snapshot.name.txid || meta.commit_ms != snapshot.name.commit_ms {
        return Err(corrupt("header does not match its name".into()));
    }
    Ok(SnapshotApplied {
        page_size: meta.page_size,
        page_count: meta.page_count,
        txid: meta.txid,
        commit_ms: meta.commit_ms,
        position: meta.position,
    })
}

/// Ask the kernel to start writing `len` bytes at `off` to disk now (without waiting), so
/// writeback overlaps the download instead of piling up for the final fsync.
fn start_writeback(file: &File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; failure only loses the overlap.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Write a segment's transactions, all of them or those `stop` includes; only the last
/// version of each page matters. Returns the database size in pages, the txid and the
/// commit time after the last transaction applied (`None` when `stop` includes none).
fn apply_segment(
    out: &File,
    seg: &Segment,
    stop: Option<Stop>,
) -> std::io::Result<Option<(u32, u64, u64)>> {
    let ps = seg.meta.page_size as u64;
    let mut txid = seg.meta.first_txid;
    let mut end = None;
    let mut cut = 0;
    for (i, f) in seg.frames().enumerate() {
        if let Some((db_pages, ms)) = f.commit {
            if stop.is_some_and(|s| !s.includes(txid, ms)) {
                break;
            }
            end = Some((db_pages, txid, ms));
            cut = i + 1;
            txid += 1;
        }
    }
    let mut latest: HashMap<u32, &[u8]> = HashMap::new();
    for f in seg.frames().take(cut) {
        latest.insert(f.pgno, f.page);
    }
    let mut pages: Vec<_> = latest.into_iter().collect();
    pages.sort_unstable_by_key(|(p, _)| *p);
    for (pgno, data) in pages {
        out.write_all_at(data, (pgno as u64 - 1) * ps)?;
    }
    Ok(end)
}

/// The database under construction, beside the target; removed unless `finish`ed.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::Refused(format!(
                "directory {} does not exist",
                dir.display()
            )));
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{} is not a file path", target.display())))?;
        let path = dir.join(format!(".{}.walship-restore.tmp", name.to_string_lossy()));
        for p in [sidecar_path(&path, "-wal"), sidecar_path(&path, "-shm")] {
            let _ = std::fs::remove_file(p);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("open until finish")
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Size, fsync, check, and atomically move into place.
    fn finish(mut self, len: u64, check: bool, target: &Path) -> Result<()> {
        let file = self.file.take().expect("open");
        file.set_len(len).map_err(|e| Error::io(&self.path, e))?;
        let t = Instant::now();
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "fsync");
        drop(file);
        let t = Instant::now();
        if check && len > 0 {
            integrity_check(&self.path)?;
        }
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "integrity_check");
        // A stale WAL beside the target would be replayed over the restored database.
        for p in [sidecar_path(target, "-wal"), sidecar_path(target, "-shm")] {
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::info!("removed stale {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(p, e)),
            }
        }
        std::fs::rename(&self.path, target).map_err(|e| Error::io(target, e))?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `PRAGMA integrity_check` on a restored file; its -wal/-shm are removed afterwards.
pub fn integrity_check(path: &Path) -> Result<()> {
    let result = (|| -> rusqlite::Result<Vec<String>> {
        let c = rusqlite::Connection::open(path)?;
        let mut st = c.prepare("PRAGMA integrity_check")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    for p in [sidecar_path(path, "-wal"), sidecar_path(path, "-shm")] {
        let _ = std::fs::remove_file(p);
    }
    let rows = result.map_err(|e| Error::sqlite(path, e))?;
    if rows != ["ok"] {
        return Err(Error::Database {
            path: path.into(),
            reason: format!(
                "restored database fails integrity_check: {}",
                rows.into_iter().take(5).collect::<Vec<_>>().join("; ")
            ),
        });
    }
    Ok(())
}
