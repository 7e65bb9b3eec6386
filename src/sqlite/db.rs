//! walship's connections to a live database: two readers (one holds the long-lived read
//! transaction that stops SQLite from resetting the WAL behind walship; the other lets
//! that transaction be renewed without a gap), a locker for the brief write-lock barrier,
//! and raw descriptors on the database, -wal and -shm files. Never touches storage and
//! never writes a page: the only write-side call is a PASSIVE checkpoint.

use super::shm::Shm;
use crate::error::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Raw descriptors for reading pages. They stay open until the connections are closed:
/// closing any descriptor of a file releases all of this process's POSIX locks on it.
pub struct DbFiles {
    pub db: File,
    pub wal: File,
}

/// Outcome of `PRAGMA wal_checkpoint(PASSIVE)`.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointResult {
    pub busy: bool,
    pub log_frames: i64,
    pub checkpointed: i64,
}

pub struct LiveDb {
    // Field order is drop order: connections close before the raw descriptors.
    readers: [Connection; 2],
    locker: Connection,
    active: usize,
    reading: bool,
    writing: bool,
    files: Option<Arc<DbFiles>>,
    shm: Option<Shm>,
    path: PathBuf,
}

fn open_conn(path: &Path, busy: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(path, e))?;
    c.busy_timeout(busy).map_err(|e| Error::sqlite(path, e))?;
    // walship's own close must not checkpoint the application's database.
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| Error::sqlite(path, e))?;
    // It reads one schema page; keep the page cache tiny.
    c.execute_batch("PRAGMA cache_size = -64;")
        .map_err(|e| Error::sqlite(path, e))?;
    Ok(c)
}

/// Check that `path` is an existing SQLite database in WAL mode, without creating or
/// changing anything. The error names what is wrong and how to fix it.
pub fn check_database(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Database {
        path: path.into(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".into()
        } else {
            e.to_string()
        },
    })?;
    if !meta.is_file() {
        return Err(Error::Database {
            path: path.into(),
            reason: "is not a regular file".into(),
        });
    }
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite(path, e))?;
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => Error::Database {
                path: path.into(),
                reason: "is not a SQLite database".into(),
            },
            _ => Error::sqlite(path, e),
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Database {
            path: path.into(),
            reason: format!(
                "is not in WAL mode (journal_mode={mode}); walship replicates WAL-mode \
                 databases only: have the application run `PRAGMA journal_mode=WAL` once"
            ),
        });
    }
    Ok(())
}

impl LiveDb {
    pub fn open(path: &Path) -> Result<Self> {
        check_database(path)?;
        Ok(LiveDb {
            readers: [
                open_conn(path, Duration::from_secs(5))?,
                open_conn(path, Duration::from_secs(5))?,
            ],
            locker: open_conn(path, Duration::from_millis(100))?,
            active: 0,
            reading: false,
            writing: false,
            files: None,
            shm: None,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn wal_path(&self) -> PathBuf {
        sidecar_path(&self.path, "-wal")
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }

    fn start_read(&self, i: usize) -> Result<()> {
        let c = &self.readers[i];
        c.execute_batch("BEGIN").map_err(|e| self.err(e))?;
        // The first read takes the WAL read lock and pins this snapshot.
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| {
                let _ = c.execute_batch("ROLLBACK");
                self.err(e)
            })
    }

    /// Take the long-lived read transaction.
    pub fn begin_read(&mut self) -> Result<()> {
        debug_assert!(!self.reading);
        self.start_read(self.active)?;
        self.reading = true;
        self.open_files()
    }

    pub fn end_read(&mut self) -> Result<()> {
        if self.reading {
            self.readers[self.active]
                .execute_batch("COMMIT")
                .map_err(|e| self.err(e))?;
            self.reading = false;
        }
        Ok(())
    }

    pub fn is_reading(&self) -> bool {
        self.reading
    }

    /// Move the read transaction to the current end of the WAL with no instant in
    /// between where walship holds no read lock. The caller must have read the WAL to its
    /// end under the transaction being replaced (see capture's `try_anchor`).
    pub fn refresh_read(&mut self) -> Result<()> {
        let other = 1 - self.active;
        self.start_read(other)?;
        let old = self.active;
        self.active = other;
        self.readers[old]
            .execute_batch("COMMIT")
            .map_err(|e| self.err(e))
    }

    /// Try to take SQLite's write lock (`BEGIN IMMEDIATE`), waiting at most `wait`.
    pub fn try_lock_write(&mut self, wait: Duration) -> Result<bool> {
        debug_assert!(!self.writing);
        self.locker.busy_timeout(wait).map_err(|e| self.err(e))?;
        match self.locker.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                self.writing = true;
                Ok(true)
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    pub fn unlock_write(&mut self) -> Result<()> {
        if self.writing {
            self.writing = false;
            self.locker
                .execute_batch("ROLLBACK")
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Run a PASSIVE checkpoint on a connection with no open transaction.
    pub fn checkpoint_passive(&mut self) -> Result<CheckpointResult> {
        let idle = if self.reading {
            1 - self.active
        } else {
            self.active
        };
        self.readers[idle]
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok(CheckpointResult {
                    busy: r.get::<_, i64>(0)? != 0,
                    log_frames: r.get(1)?,
                    checkpointed: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))
    }

    fn open_files(&mut self) -> Result<()> {
        if self.files.is_none() {
            let wal_path = self.wal_path();
            let db = open_noatime(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let wal = open_noatime(&wal_path).map_err(|e| Error::io(&wal_path, e))?;
            self.files = Some(Arc::new(DbFiles { db, wal }));
        }
        if self.shm.is_none() {
            let shm_path = sidecar_path(&self.path, "-shm");
            self.shm = Some(Shm::open(&shm_path).map_err(|e| Error::io(&shm_path, e))?);
        }
        Ok(())
    }

    /// The raw descriptors (available once a read transaction has been taken).
    pub fn files(&self) -> Arc<DbFiles> {
        self.files.clone().expect("files are opened by begin_read")
    }

    pub fn shm(&self) -> &Shm {
        self.shm.as_ref().expect("shm is opened by begin_read")
    }

    /// True when the database or WAL path no longer names the files walship has open
    /// (replaced by a restore, deleted, moved).
    pub fn replaced(&self) -> bool {
        let Some(f) = &self.files else { return false };
        let same = |path: &Path, file: &File| match (std::fs::metadata(path), file.metadata()) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        !same(&self.path, &f.db) || !same(&self.wal_path(), &f.wal)
    }
}

/// Open for reading without updating the access time (walship reads the WAL constantly);
/// O_NOATIME is only allowed to the file's owner, so fall back to a plain open.
fn open_noatime(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .or_else(|_| File::open(path))
}

/// `<db>-wal`, `<db>-shm`: SQLite's names for the files beside a database.
pub fn sidecar_path(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
