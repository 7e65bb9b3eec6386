//! `wal-push` and `wal-fetch`: one WAL file to or from the replica, as a container object
//! (lz4 chunks with CRC32, zero runs elided: a switched segment's unused tail costs
//! nothing) named by timeline and segment. Never overwrites: the same content already
//! archived is success, different content is an error.

use super::control::{generation_of, system_identifier};
use crate::error::{Error, Result, StoreErrorKind};
use crate::format::pgwal::{decode, encode};
use crate::pgformat::walname::WalFile;
use crate::storage::layout::{self, GenerationId};
use crate::storage::{PutOutcome, Replica};
use bytes::Bytes;
use std::path::{Path, PathBuf};

fn wal_name(s: &str) -> Result<WalFile> {
    WalFile::parse(s).ok_or_else(|| {
        Error::Usage(format!(
            "{s:?} is not a PostgreSQL WAL file name (segment, .history, .partial or .backup)"
        ))
    })
}

/// Paths Postgres passes are relative to the data directory.
fn in_pgdata(pgdata: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        pgdata.join(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Uploaded,
    /// The same content was archived before (Postgres retries after a lost answer).
    AlreadyArchived,
    /// The sidecar uploaded exactly these bytes already (its note says so): no request.
    NotedBySidecar,
}

/// Where the sidecar notes the WAL files the replica has acknowledged, so that `wal-push`
/// can answer without a request: `archived/` in the database's spool directory.
pub fn marker_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("archived")
}

/// A note's content: the file's size and CRC32, so a note can only vouch for exactly the
/// bytes that were uploaded.
fn marker_text(raw: &[u8]) -> String {
    marker_line(raw.len() as u64, crc32fast::hash(raw))
}

fn marker_line(size: u64, crc: u32) -> String {
    format!("{size} {crc:08x}\n")
}

/// Where a claim's owner holds no lock the filesystem can report (no `flock` there), a
/// claim this old was left by a process that died and is taken over.
const CLAIM_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// An upload of one WAL file in progress (`archived/<name>.uploading`), so that the sidecar
/// and `wal-push` do not upload the same file at once: under a burst the archiver asks for
/// the very file the sidecar is sending, and two uploads cost the loser a GET to compare.
/// Only an economy: never-overwrite puts keep two uploads correct. Its owner holds an
/// exclusive `flock` on it for as long as it uploads, so a claim whose owner died (killed
/// mid-upload) is known at once, in any container sharing the volume, and taken over.
/// Removed on drop.
pub struct Claim(Option<(PathBuf, std::fs::File)>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((p, _)) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn flock_nb(f: &std::fs::File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor.
    match unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Claim WAL file `name` for upload: `None` while a live process holds the claim. A
/// directory where claims cannot be made gives an empty claim (upload without one).
pub fn claim(dir: &Path, name: &str) -> Option<Claim> {
    let p = dir.join(format!("{name}.uploading"));
    let _ = std::fs::create_dir_all(dir);
    // Locked before it appears under the claim's name (a hard link), so no one ever sees
    // a claim without its owner's lock.
    // The sidecar and wal-push run in different containers, where pids can coincide.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.uploading.{}.{nanos}", std::process::id()));
    let Ok(f) = std::fs::File::create(&tmp) else {
        return Some(Claim(None));
    };
    if flock_nb(&f, libc::LOCK_EX).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return Some(Claim(None));
    }
    let got = (|| {
        for _ in 0..2 {
            match std::fs::hard_link(&tmp, &p) {
                Ok(()) => return Some(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if claimed_path(&p) {
                        return Some(false);
                    }
                    let _ = std::fs::remove_file(&p);
                }
                Err(_) => return None,
            }
        }
        Some(false)
    })();
    let _ = std::fs::remove_file(&tmp);
    match got {
        Some(true) => Some(Claim(Some((p, f)))),
        Some(false) => None,
        None => Some(Claim(None)),
    }
}

/// Whether a live process holds the claim at `p`: its owner's lock, or (where locks
/// cannot be tested) a recent claim.
fn claimed_path(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    match flock_nb(&f, libc::LOCK_SH) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => true,
        Err(_) => f
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < CLAIM_FRESH),
    }
}

/// Whether a live process holds the claim on `name`.
fn claimed(dir: &Path, name: &str) -> bool {
    claimed_path(&dir.join(format!("{name}.uploading")))
}

/// Note that WAL file `name`, with exactly these bytes, is in the replica.
pub fn write_marker(dir: &Path, name: &str, raw: &[u8]) -> Result<()> {
    write_atomically(&dir.join(name), marker_text(raw).as_bytes(), true)
}

/// Whether the note for `name` vouches for the file at `path` as it is now: its size, then
/// its CRC32 read through a small buffer (reading all 16 MB into fresh memory costs more in
/// page faults than the check itself; this runs once per WAL file).
fn marker_matches(dir: &Path, name: &str, path: &Path) -> bool {
    use std::io::Read;
    let Ok(note) = std::fs::read_to_string(dir.join(name)) else {
        return false;
    };
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if !note.starts_with(&format!("{size} ")) {
        return false;
    }
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(_) => return false,
        }
    }
    n == size && note == marker_line(size, h.finalize())
}

/// Archive the WAL file at `wal_path` (as `%p`: relative to `pgdata`). With `markers`
/// (in the spool), the path's cluster and lease are checked (`identity`, `pushlease`), and
/// a file the sidecar has already archived is answered from its note, without a request;
/// `open` (the replica) is only called when a request is needed: building a store client
/// (TLS roots read from disk) costs more CPU than checking a note.
pub async fn push(
    open: impl FnOnce() -> Result<Replica>,
    pgdata: &Path,
    wal_path: &Path,
    markers: Option<&Path>,
    lease_ttl: std::time::Duration,
) -> Result<Pushed> {
    let file_name = wal_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{} names no file", wal_path.display())))?;
    let name = wal_name(file_name)?;
    let path = in_pgdata(pgdata, wal_path);
    let _claim = match markers {
        Some(d) => loop {
            if marker_matches(d, file_name, &path) {
                return Ok(Pushed::NotedBySidecar);
            }
            if let Some(c) = claim(d, file_name) {
                break Some(c);
            }
            // The sidecar is uploading it: wait for its note rather than upload it twice.
            while claimed(d, file_name) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        },
        None => None,
    };
    let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let sysid = system_identifier(pgdata)?;
    let generation = generation_of(sysid);
    let replica = open()?;
    // One cluster per path: checked against `cluster.json`, at most every few minutes
    // per spool (the spool keeps the answer).
    let spool = markers.and_then(Path::parent);
    if !spool.is_some_and(|s| super::identity::recently_checked(s, replica.url(), &generation)) {
        super::identity::check(&replica, pgdata, sysid, false).await?;
        if let Some(s) = spool {
            super::identity::note_checked(s, &replica, &generation);
        }
    }
    // One writer per path: the lease, held by this spool's sidecar or taken here.
    if let Some(s) = spool {
        super::pushlease::cover(&replica, pgdata, s, &generation, lease_ttl).await?;
    }
    push_bytes(&replica, &generation, &name, &raw).await
}

/// Upload WAL file `name` of cluster `generation`, never overwriting.
pub async fn push_bytes(
    replica: &Replica,
    generation: &GenerationId,
    name: &WalFile,
    raw: &[u8],
) -> Result<Pushed> {
    let key = layout::format_pg_wal(generation, name);
    match replica.put_new(&key, Bytes::from(encode(name, raw))).await {
        Ok(PutOutcome::Created) => Ok(Pushed::Uploaded),
        Ok(PutOutcome::AlreadyPresent) => Ok(Pushed::AlreadyArchived),
        Err(Error::Store {
            kind: StoreErrorKind::AlreadyExists,
            ..
        }) => {
            // Different bytes: the same content from another walship version still counts
            // as archived; anything else is a real conflict.
            let existing = replica.get(&key).await?;
            match decode(name, &existing) {
                Ok(old) if old == raw => Ok(Pushed::AlreadyArchived),
                _ => Err(Error::Replica {
                    replica: replica.url().to_string(),
                    reason: format!(
                        "{key} is already archived with different content; refusing to \
                         overwrite it (two clusters with one system identifier, or a \
                         timeline that diverged without a new .history?)"
                    ),
                }),
            }
        }
        Err(e) => Err(e),
    }
}

/// Segments each `wal-fetch` of a segment also fetches: recovery asks for WAL one file at a
/// time and waits for each; fetching the next ones meanwhile turns serial GETs into
/// parallel ones (wal-g#892).
const PREFETCH: u32 = 4;

/// Where fetched-ahead files wait, verified and decoded, until recovery asks for them;
/// inside `pg_wal`, so handing one over is a rename. The sidecar removes it once the
/// cluster is out of recovery.
pub fn prefetch_dir(pgdata: &Path) -> PathBuf {
    pgdata.join("pg_wal").join(".walship-prefetch")
}

/// Fetch WAL file `name` into `dest` (as `%p`: relative to `pgdata`). `Ok(false)` when
/// the replica does not have it: Postgres asks for files that do not exist (the next
/// timeline's history, the segment after the last) and expects a quiet non-zero exit.
/// A segment already fetched ahead is handed over without a request; fetching a segment
/// also fetches the next `PREFETCH` of its timeline.
pub async fn fetch(replica: &Replica, pgdata: &Path, name: &str, dest: &Path) -> Result<bool> {
    let wal = wal_name(name)?;
    let dest = in_pgdata(pgdata, dest);
    let dir = prefetch_dir(pgdata);
    drop_passed(&dir, name);
    let ready = dir.join(name);
    if ready.exists() && std::fs::rename(&ready, &dest).is_ok() {
        tracing::info!(file = name, "fetched from the prefetch");
        return Ok(true);
    }
    let generation = generation_of(system_identifier(pgdata)?);
    let ahead: Vec<WalFile> = match wal {
        WalFile::Segment { timeline, log, seg } => (1..=PREFETCH)
            .filter_map(|i| seg.checked_add(i))
            .map(|seg| WalFile::Segment { timeline, log, seg })
            .filter(|f| !dir.join(f.to_string()).exists())
            .collect(),
        _ => Vec::new(),
    };
    let get = |f: WalFile| {
        let key = layout::format_pg_wal(&generation, &f);
        async move {
            // Retried: a store that blips must not read as "not archived".
            let obj = match crate::storage::get_retrying(replica, &key, None).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            };
            decode(&f, &obj)
                .map(Some)
                .map_err(|r| Error::corrupt(&key, r))
        }
    };
    let (this, others) = futures::join!(
        get(wal),
        futures::future::join_all(ahead.iter().map(|f| get(*f)))
    );
    for (f, r) in ahead.iter().zip(others) {
        // Best effort: a file that cannot be fetched ahead is fetched when asked for.
        if let Ok(Some(raw)) = r {
            let _ = write_atomically(&dir.join(f.to_string()), &raw, true);
        }
    }
    let raw = match this? {
        Some(raw) => raw,
        None => match joined_from_chunks(replica, &generation, wal).await? {
            Some(raw) => raw,
            None => {
                beyond_the_end(replica, &generation, &wal).await?;
                return Ok(false);
            }
        },
    };
    write_atomically(&dest, &raw, false)?;
    Ok(true)
}

/// Segment `wal` joined from the chunks a streaming sidecar stored for it, when its whole
/// object is not there (the segment was not complete yet): one LIST of its chunks. Said
/// in the log, since recovery then ends inside it.
async fn joined_from_chunks(
    replica: &Replica,
    generation: &GenerationId,
    wal: WalFile,
) -> Result<Option<Vec<u8>>> {
    if !matches!(wal, WalFile::Segment { .. }) {
        return Ok(None);
    }
    let listing = replica
        .list(&layout::format_pg_chunks_dir(generation, &wal))
        .await?;
    let catalog = crate::catalog::Catalog::of(&listing);
    let Some(g) = catalog.generations.get(generation) else {
        return Ok(None);
    };
    let whole = g.wal.iter().any(|(f, _)| *f == wal);
    let chunks = super::chunks::of_segment(g, &wal);
    let Some(seg) = super::chunks::read(replica, generation, wal, whole, &chunks).await? else {
        return Ok(None);
    };
    if let Some((n, upto)) = seg.joined {
        tracing::info!(file = %wal, chunks = n, bytes = upto,
            "joined from {n} streamed chunk(s): WAL to byte {upto} of the segment, the rest \
             zeros (recovery ends at the last streamed chunk unless later WAL is stored)");
    }
    Ok(Some(seg.raw))
}

/// What a listing proves about an absent WAL file: `None` when nothing after it is
/// archived (it is beyond the archive's end: PostgreSQL probes for such files), or the
/// later file that shows it is missing from the middle: a segment of the same timeline
/// further on, or a later timeline's history.
pub fn later_than(listing: &[crate::storage::Listed], missing: &WalFile) -> Option<WalFile> {
    let catalog = crate::catalog::Catalog::of(listing);
    let later = catalog
        .generations
        .values()
        .flat_map(|g| {
            g.wal
                .iter()
                .map(|(f, _)| *f)
                .chain(g.chunks.iter().map(|c| c.0.segment))
        })
        .filter(|f| match (*missing, *f) {
            (
                WalFile::Segment { timeline, log, seg },
                WalFile::Segment {
                    timeline: t,
                    log: l,
                    seg: s,
                },
            ) => t == timeline && (l, s) > (log, seg),
            (WalFile::History { timeline }, WalFile::History { timeline: t }) => t > timeline,
            _ => false,
        });
    later.max()
}

/// `Ok` when `name`'s absence is the archive's end; an error (fatal to recovery) when
/// later WAL of its line is archived, so the file is missing from the middle.
async fn beyond_the_end(
    replica: &Replica,
    generation: &GenerationId,
    name: &WalFile,
) -> Result<()> {
    let prefix = format!("{}/pgwal", layout::format_generation_dir(generation));
    let mut attempt = 1;
    let listing = loop {
        match replica.list(&prefix).await {
            Err(e) if attempt < 4 && !e.is_not_found() => {
                tracing::warn!("{e}; listing again");
                tokio::time::sleep(std::time::Duration::from_secs(attempt)).await;
                attempt += 1;
            }
            r => break r?,
        }
    };
    match later_than(&listing, name) {
        None => Ok(()),
        Some(later) => Err(Error::Replica {
            replica: replica.url().to_string(),
            reason: format!(
                "WAL file {name} is missing from the archive ({}), but later WAL of its \
                 timeline is archived (up to {later}): the archive is damaged. Recovery must \
                 stop here rather than promote without the transactions after it",
                layout::format_pg_wal(generation, name)
            ),
        }),
    }
}

fn write_atomically(path: &Path, raw: &[u8], create_dir: bool) -> Result<()> {
    if create_dir && let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let tmp = path.with_extension("walship-tmp");
    std::fs::write(&tmp, raw).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Fetched-ahead segments of `name`'s timeline named before it will not be asked for any
/// more (recovery went past them): remove them, so the directory stays a few files. Other
/// timelines' are kept: with a history Postgres asks for one segment on each timeline in
/// turn.
fn drop_passed(dir: &Path, name: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let timeline = &name[..name.len().min(8)];
    for e in rd.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.len() == name.len() && n.starts_with(timeline) && n < name)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_prefetches_of_the_same_timeline_go() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "000000010000000000000003",
            "000000010000000000000005",
            "000000020000000000000003",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        drop_passed(dir.path(), "000000010000000000000004");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [names[1], names[2]]);
    }

    #[test]
    fn one_upload_claim_at_a_time_and_a_dead_owners_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let n = "000000010000000000000003";
        let c = claim(dir.path(), n).expect("first claim");
        assert!(claim(dir.path(), n).is_none() && claimed(dir.path(), n));
        assert!(claim(dir.path(), "000000010000000000000004").is_some());
        drop(c);
        assert!(!claimed(dir.path(), n));
        // Left a moment ago by a process killed mid-upload: the file is there, its owner's
        // lock went with the process. Taken over at once.
        let p = dir.path().join(format!("{n}.uploading"));
        std::fs::write(&p, b"4242").unwrap();
        assert!(!claimed(dir.path(), n));
        let c = claim(dir.path(), n).expect("a dead owner's claim is taken over");
        assert!(claimed(dir.path(), n));
        drop(c);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn round_trip_checks_name_and_bytes() {
        let name = WalFile::parse("000000010000000000000003").unwrap();
        let mut raw = vec![0u8; 16 << 20];
        raw[..4096].fill(7);
        raw[9 << 20] = 1;
        let obj = encode(&name, &raw);
        assert!(
            obj.len() < 64 << 10,
            "zero tail elided: {} bytes",
            obj.len()
        );
        assert_eq!(decode(&name, &obj).unwrap(), raw);
        let other = WalFile::parse("000000010000000000000004").unwrap();
        assert!(
            decode(&other, &obj)
                .unwrap_err()
                .contains("not 000000010000000000000004")
        );
        let mut bad = obj.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        assert!(decode(&name, &bad).is_err());
    }
}
