//! Base backups: `pg_backup_start` / `pg_backup_stop` (non-exclusive, on one session held
//! open) around a copy of the data directory read from disk, packed into parts (container
//! objects of at most `PART_RAW` bytes) with a manifest naming every file's part, offset,
//! length, mode and CRC32. The manifest is written last: a backup without one is not a
//! backup.

use super::control::{generation_of, system_identifier};
use crate::error::{Error, Result};
use crate::format::container::Writer;
use crate::storage::layout::{self, BackupName};
use crate::storage::{PutOutcome, Replica};
use bytes::Bytes;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PART_MAGIC: &[u8; 4] = b"WPGB";
/// How long `pg_backup_stop` may wait for the archiver by default.
pub const DEFAULT_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// Raw bytes per part. Files are streamed through parts (a 1 GB relation file spans many),
/// so memory stays at a few parts whatever the file sizes.
const PART_RAW: usize = 16 << 20;
const CHUNK_RAW: usize = 1 << 20;
/// Parts compressed and uploaded at once while the next is read.
const PARTS_IN_FLIGHT: usize = 3;
pub use crate::format::pgbackup::{BackupManifest, FileEntry, MANIFEST_FORMAT};

use crate::pgformat::lsn::parse_lsn;

/// Connection settings: a URL, or the standard PG* variables (libpq's defaults otherwise).
pub fn connection(url: Option<&str>) -> Result<tokio_postgres::Config> {
    if let Some(u) = url {
        return u
            .parse()
            .map_err(|e| Error::Config(format!("connection {u:?}: {e}")));
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut c = tokio_postgres::Config::new();
    c.host(var("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into()));
    if let Some(p) = var("PGPORT") {
        c.port(
            p.parse()
                .map_err(|_| Error::Config(format!("PGPORT {p:?} is not a port")))?,
        );
    }
    c.user(var("PGUSER").unwrap_or_else(|| "postgres".into()));
    if let Some(p) = var("PGPASSWORD") {
        c.password(p);
    }
    c.dbname(var("PGDATABASE").unwrap_or_else(|| "postgres".into()));
    c.application_name("walship");
    Ok(c)
}

/// Directories whose contents a base backup leaves out (the server recreates or does not
/// need them), as PostgreSQL's own base backup does; the directories themselves are kept.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
];

fn skipped(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("pgsql_tmp")
        || name == "pg_internal.init"
        || (rel.parent() == Some(Path::new("")) && SKIP_FILES.contains(&name))
}

/// Every directory and regular file to copy, relative to `pgdata`.
fn walk(pgdata: &Path) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = pgdata.join(&rel);
        let rd = match std::fs::read_dir(&abs) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&abs, e)),
        };
        let keep_contents = !EMPTY_DIRS.iter().any(|d| rel == Path::new(d));
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&abs, e))?;
            let r = rel.join(entry.file_name());
            if skipped(&r) {
                continue;
            }
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                // A slot's directory without its state file stops recovery (PANIC); the
                // restored cluster has no slots, as with pg_basebackup.
                if keep_contents || rel != Path::new("pg_replslot") {
                    dirs.push(r.to_string_lossy().into_owned());
                }
                if keep_contents {
                    stack.push(r);
                }
            } else if ft.is_file() && keep_contents {
                files.push(r);
            } else if ft.is_symlink() && rel == Path::new("pg_tblspc") {
                return Err(Error::Database {
                    path: pgdata.into(),
                    reason: "has tablespaces (pg_tblspc); this version backs up the data \
                             directory only"
                        .into(),
                });
            }
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// Fills parts of `PART_RAW` bytes and hands each full one to a task that compresses and
/// uploads it, at most `PARTS_IN_FLIGHT` at once, so reading overlaps with both.
struct Packer {
    replica: Arc<Replica>,
    prefix: String,
    raw: Vec<u8>,
    part: u32,
    stored: u64,
    in_flight: tokio::task::JoinSet<Result<u64>>,
}

impl Packer {
    fn room(&self) -> usize {
        PART_RAW - self.raw.len()
    }

    /// Send the current part off (if it holds anything) and start the next.
    async fn seal(&mut self) -> Result<()> {
        if self.raw.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let raw = std::mem::replace(&mut self.raw, Vec::with_capacity(PART_RAW));
        let key = format!("{}/{}", self.prefix, layout::format_backup_part(self.part));
        let replica = self.replica.clone();
        self.in_flight.spawn(async move {
            let obj = tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(raw.len() / 2);
                let mut w = Writer::new(PART_MAGIC, &[], &mut out);
                for c in raw.chunks(CHUNK_RAW) {
                    w.sparse_chunk(c, &mut out);
                }
                w.finish(&mut out);
                out
            })
            .await
            .expect("encode task");
            let n = obj.len() as u64;
            replica.put_new(&key, Bytes::from(obj)).await?;
            Ok(n)
        });
        self.part += 1;
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(r) = self.in_flight.join_next().await {
            self.stored += r.expect("upload task")?;
        }
        Ok(())
    }

    /// Seal the last part and wait for every upload; the number of parts.
    async fn finish(&mut self) -> Result<u32> {
        self.seal().await?;
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(self.part)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub replica: String,
    pub generation: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub files: usize,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub seconds: f64,
}

/// Take a base backup of the cluster at `pgdata` (this process must be able to read its
/// files: the sidecar shares the volume) through the server at `conn`. `pg_backup_stop`
/// waits until the backup's WAL is archived; past `stop_wait` that is an error naming the
/// likely cause (a failing `archive_command`), not a backup that hangs unseen.
pub async fn backup(
    replica: &Arc<Replica>,
    pgdata: &Path,
    conn: &tokio_postgres::Config,
    stop_wait: std::time::Duration,
) -> Result<BackupReport> {
    let started = std::time::Instant::now();
    let sysid = system_identifier(pgdata)?;
    let db_err = |reason: String| Error::Database {
        path: pgdata.into(),
        reason,
    };
    let (client, connection) = conn.connect(tokio_postgres::NoTls).await.map_err(|e| {
        db_err(format!(
            "cannot connect to PostgreSQL ({e}); set `connection` or PGHOST, PGPORT, \
                 PGUSER, PGPASSWORD"
        ))
    })?;
    let conn_task = tokio::spawn(connection);
    let q = |e: tokio_postgres::Error| db_err(format!("PostgreSQL: {e}"));
    let server_id: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    if server_id != sysid.to_string() {
        return Err(db_err(format!(
            "the server's system identifier {server_id} is not this data directory's \
             ({sysid}): connected to another cluster?"
        )));
    }
    let start_ms = crate::clock::now_ms();
    let label = format!("walship {}", crate::clock::rfc3339(start_ms));
    let start_lsn: String = client
        .query_one("SELECT pg_backup_start($1, true)::text", &[&label])
        .await
        .map_err(q)?
        .get(0);
    let timeline: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .map_err(q)?
        .get(0);
    let lsn = parse_lsn(&start_lsn).ok_or_else(|| db_err(format!("bad LSN {start_lsn}")))?;
    let generation = generation_of(sysid);
    let name = BackupName {
        start_lsn: lsn,
        start_ms,
    };
    let prefix = layout::format_backup_dir(&generation, &name);
    let copied = copy_files(replica, pgdata, prefix.clone()).await;
    // Always end the backup, even when the copy failed, so the server is not left in
    // backup mode (the session ending would also end it).
    let stop = tokio::time::timeout(
        stop_wait,
        client.query_one(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)",
            &[],
        ),
    )
    .await
    .map_err(|_| {
        db_err(format!(
            "pg_backup_stop did not return within {}: PostgreSQL waits until the backup's \
             WAL is archived; is archive_command failing? (pg_stat_archiver.last_failed_wal)",
            humantime::format_duration(stop_wait)
        ))
    })
    .and_then(|r| r.map_err(q));
    let (dirs, files, parts, stored, raw) = copied?;
    let stop = stop?;
    let manifest = BackupManifest {
        format: MANIFEST_FORMAT,
        system_identifier: sysid.to_string(),
        timeline: timeline as u32,
        start_lsn: start_lsn.clone(),
        stop_lsn: stop.get(0),
        start_ms,
        stop_ms: crate::clock::now_ms(),
        backup_label: stop.get(1),
        tablespace_map: stop.get::<_, Option<String>>(2).filter(|s| !s.is_empty()),
        dirs,
        files,
        parts,
        bytes: stored,
    };
    drop(client);
    let _ = conn_task.await;
    let key = format!("{prefix}/manifest.json");
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    match replica.put_new(&key, Bytes::from(body)).await? {
        PutOutcome::Created | PutOutcome::AlreadyPresent => {}
    }
    Ok(BackupReport {
        replica: replica.url().to_string(),
        generation: generation.to_string(),
        timeline: manifest.timeline,
        start_lsn,
        stop_lsn: manifest.stop_lsn,
        files: manifest.files.len(),
        raw_bytes: raw,
        stored_bytes: stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Copied = (Vec<String>, Vec<FileEntry>, u32, u64, u64);

/// Read every file (tolerating ones that vanish: the server drops and creates files
/// during a backup, and WAL replay from the start LSN makes the copy consistent) through
/// the parts, a part's worth at a time.
async fn copy_files(replica: &Arc<Replica>, pgdata: &Path, prefix: String) -> Result<Copied> {
    let (dirs, paths) = walk(pgdata)?;
    let mut packer = Packer {
        replica: replica.clone(),
        prefix,
        raw: Vec::with_capacity(PART_RAW),
        part: 0,
        stored: 0,
        in_flight: tokio::task::JoinSet::new(),
    };
    let mut files = Vec::with_capacity(paths.len());
    let mut raw_total = 0u64;
    for rel in paths {
        let abs = pgdata.join(&rel);
        let opened = std::fs::File::open(&abs).and_then(|f| {
            let mode = f.metadata()?.permissions().mode() & 0o7777;
            Ok((f, mode))
        });
        let (file, mode) = match opened {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&abs, e)),
        };
        if packer.room() == 0 {
            packer.seal().await?;
        }
        let mut entry = FileEntry {
            path: rel.to_string_lossy().into_owned(),
            size: 0,
            mode,
            part: packer.part,
            offset: packer.raw.len() as u64,
            crc: 0,
        };
        let mut crc = crc32fast::Hasher::new();
        // Read into the part until the file ends (a file the server truncates meanwhile
        // is taken as it is; replay rewrites it).
        let mut file = Some(file);
        loop {
            let room = packer.room();
            let buf = std::mem::take(&mut packer.raw);
            let f = file.take().expect("file");
            let (f, buf, n) = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let start = buf.len();
                let mut buf = buf;
                buf.resize(start + room, 0);
                let mut f = f;
                let mut got = 0;
                let r = loop {
                    match f.read(&mut buf[start + got..]) {
                        Ok(0) => break Ok(()),
                        Ok(k) => {
                            got += k;
                            if got == room {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(start + got);
                (f, buf, r.map(|()| got))
            })
            .await
            .expect("read task");
            let start = buf.len() - n.as_ref().copied().unwrap_or(0);
            packer.raw = buf;
            let n = n.map_err(|e| Error::io(&abs, e))?;
            crc.update(&packer.raw[start..]);
            entry.size += n as u64;
            file = Some(f);
            if packer.room() > 0 {
                break; // the file ended inside this part
            }
            packer.seal().await?;
        }
        entry.crc = crc.finalize();
        raw_total += entry.size;
        files.push(entry);
    }
    let parts = packer.finish().await?;
    Ok((dirs, files, parts, packer.stored, raw_total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x3000028));
        assert_eq!(parse_lsn("1A/FF"), Some((0x1a << 32) | 0xff));
        assert_eq!(parse_lsn("x"), None);
    }

    #[test]
    fn skip_rules() {
        assert!(skipped(Path::new("postmaster.pid")));
        assert!(!skipped(Path::new("base/1/postmaster.pid")));
        assert!(skipped(Path::new("base/pgsql_tmp/pgsql_tmp123.0")));
        assert!(skipped(Path::new("global/pg_internal.init")));
        assert!(!skipped(Path::new("global/pg_control")));
    }
}
