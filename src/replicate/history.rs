//! A database's history id: the random name walship gives a database the first time it
//! replicates it, kept on the database file itself (extended attribute
//! `user.walship.history`), in its spool directory (`<spool>/history`) and in every
//! generation's manifest, so that a different database sent to the same replica path is
//! refused (docs/LEASE.md). Owns those two local copies and the start-up decision; never
//! touches the store or the database's content.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const FILE: &str = "history";

/// 128 random bits, written as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryId(String);

impl HistoryId {
    pub fn random() -> Self {
        // Two RandomState keys (randomly seeded per process, then stepped): 128 bits no
        // other database's walship will draw.
        Self(format!(
            "{:016x}{:016x}",
            super::journal::random_u64(),
            super::journal::random_u64()
        ))
    }

    /// The id as a manifest or the history file holds it; anything else is refused.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HistoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE)
}

/// The id kept in `spool_dir`, if any; a file that is not one is an error naming it.
pub fn read(spool_dir: &Path) -> Result<Option<HistoryId>> {
    let p = path(spool_dir);
    match std::fs::read(&p) {
        Ok(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(HistoryId::parse)
            .map(Some)
            .ok_or_else(|| {
                Error::corrupt(
                    p.display().to_string(),
                    "not a walship history id (32 hex digits); remove it only if this \
                     database should start a new history",
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Keep `id` in `spool_dir` (created if missing), durably: a generation naming it is
/// uploaded only after this returns.
pub fn write(spool_dir: &Path, id: &HistoryId) -> Result<()> {
    std::fs::create_dir_all(spool_dir).map_err(|e| Error::io(spool_dir, e))?;
    let p = path(spool_dir);
    let tmp = spool_dir.join(format!("{FILE}.tmp"));
    let io = |e| Error::io(&p, e);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{id}").map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &p).map_err(io)?;
    if let Ok(d) = std::fs::File::open(spool_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The extended attribute on the database file: it lives exactly as long as the file (a
/// successor walship with another spool still finds it; a different database never has
/// it), where the filesystem keeps user attributes.
const XATTR: &std::ffi::CStr = c"user.walship.history";

fn c_path(p: &Path) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
}

/// The id on the database file; absent, unreadable or not an id is `None` (a filesystem
/// without user attributes falls back to the spool's copy).
pub fn read_db(db: &Path) -> Option<HistoryId> {
    let p = c_path(db)?;
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(HistoryId::parse)
}

/// Put the id on the database file, where the filesystem allows it.
fn write_db(db: &Path, id: &HistoryId) {
    let Some(p) = c_path(db) else { return };
    let v = id.as_str().as_bytes();
    // SAFETY: valid C strings and a value of the length given.
    let r = unsafe { libc::setxattr(p.as_ptr(), XATTR.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r != 0 {
        tracing::debug!(db = %db.display(), "history id kept in the spool only: {}", std::io::Error::last_os_error());
    }
}

/// The database's id: on the file, else in the spool.
pub fn read_local(db: &Path, spool_dir: &Path) -> Result<Option<HistoryId>> {
    match read_db(db) {
        Some(id) => Ok(Some(id)),
        None => read(spool_dir),
    }
}

/// Keep `id` for the database: in the spool (durably) and on the file.
pub fn keep(db: &Path, spool_dir: &Path, id: &HistoryId) -> Result<()> {
    if read(spool_dir).ok().flatten().as_ref() != Some(id) {
        write(spool_dir, id)?;
    }
    if read_db(db).as_ref() != Some(id) {
        write_db(db, id);
    }
    Ok(())
}

/// What the replica path's newest generation says of the history it continues.
#[derive(Debug, Clone)]
pub struct OnPath {
    pub generation: String,
    /// `None`: written by a walship before history ids (nothing to compare).
    pub history: Option<HistoryId>,
    pub database: String,
    pub host: String,
    pub created: String,
}

/// The start-up decision for one database.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on (resume or begin a generation) under this id; `write` when it is not yet in
    /// the spool.
    Continue { id: HistoryId, write: bool },
    /// `--force-new-history`: begin a new history, unrelated to what the path holds.
    NewHistory(HistoryId),
    /// A different database: refused with this message.
    Refuse(String),
}

/// `local`: the spool's id; `on_path`: the path's newest generation; `continues`: this
/// database's WAL continues that generation (the proof that it is the same database when
/// the spool has no id, as after a spool lost with its volume).
pub fn decide(
    db: &str,
    spool_dir: &Path,
    local: Option<HistoryId>,
    on_path: Option<&OnPath>,
    continues: bool,
    force: bool,
) -> Decision {
    let Some(theirs) = on_path.and_then(|p| p.history.clone().map(|h| (p, h))) else {
        return match local {
            Some(id) => Decision::Continue { id, write: false },
            None => Decision::Continue {
                id: HistoryId::random(),
                write: true,
            },
        };
    };
    let (p, h) = theirs;
    let mine = match &local {
        Some(l) if *l == h => {
            return Decision::Continue {
                id: h,
                write: false,
            };
        }
        None if continues => return Decision::Continue { id: h, write: true },
        Some(l) => format!("history {l}"),
        None => format!(
            "no walship history (none on the file, no {}) and its WAL does not continue \
             generation {}",
            path(spool_dir).display(),
            p.generation
        ),
    };
    if force {
        return Decision::NewHistory(HistoryId::random());
    }
    Decision::Refuse(format!(
        "the replica path holds another database's history: {} on host {} (history {h}, \
         generation {} created {}); this database {db} has {mine}. Two databases on one path \
         would mix their histories: give this one its own replica path, restore it from this \
         one (walship restore keeps the history), or pass --force-new-history to start a new \
         history here deliberately",
        p.database, p.host, p.generation, p.created
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_path(h: Option<&HistoryId>) -> OnPath {
        OnPath {
            generation: "g1".into(),
            history: h.cloned(),
            database: "/a/app.db".into(),
            host: "pod-a".into(),
            created: "2026-12-02T00:00:00Z".into(),
        }
    }

    #[test]
    fn the_same_history_goes_on_and_another_is_refused_naming_both() {
        let dir = Path::new("/s");
        let a = HistoryId::random();
        let b = HistoryId::random();
        assert_ne!(a, b);
        let p = on_path(Some(&a));
        let go = |local: Option<&HistoryId>, on: Option<&OnPath>, cont, force| {
            decide("/b/app.db", dir, local.cloned(), on, cont, force)
        };
        assert_eq!(
            go(Some(&a), Some(&p), false, false),
            Decision::Continue {
                id: a.clone(),
                write: false
            }
        );
        // A spool lost with its volume: the WAL proves the database is the same.
        assert_eq!(
            go(None, Some(&p), true, false),
            Decision::Continue {
                id: a.clone(),
                write: true
            }
        );
        for local in [Some(&b), None] {
            let Decision::Refuse(m) = go(local, Some(&p), false, false) else {
                panic!("accepted another history")
            };
            for want in [
                "/a/app.db",
                "pod-a",
                a.as_str(),
                "/b/app.db",
                "--force-new-history",
            ] {
                assert!(m.contains(want), "{want} in {m}");
            }
            assert!(matches!(go(local, Some(&p), false, true), Decision::NewHistory(n) if n != a));
        }
        // The flag changes nothing when there is nothing to refuse.
        assert!(matches!(
            go(Some(&a), Some(&p), false, true),
            Decision::Continue { .. }
        ));
        // An empty path, or one written before history ids: nothing to compare.
        for on in [None, Some(&on_path(None))] {
            assert!(matches!(
                go(None, on, false, false),
                Decision::Continue { write: true, .. }
            ));
            assert_eq!(
                go(Some(&b), on, false, false),
                Decision::Continue {
                    id: b.clone(),
                    write: false
                }
            );
        }
    }

    #[test]
    fn the_attribute_on_the_database_file_comes_first() {
        let dir = std::env::temp_dir().join(format!("walship-xattr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("app.db");
        std::fs::write(&db, b"x").unwrap();
        let spool = dir.join("spool");
        assert_eq!(read_local(&db, &spool).unwrap(), None);
        let id = HistoryId::random();
        keep(&db, &spool, &id).unwrap();
        assert_eq!(read_local(&db, &spool).unwrap(), Some(id.clone()));
        // Another spool (a successor pod): the file still says which database it is, on
        // a filesystem with user attributes.
        let other = dir.join("spool-2");
        if read_db(&db).is_some() {
            assert_eq!(read_local(&db, &other).unwrap(), Some(id));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_round_trips_and_junk_is_named() {
        let dir = std::env::temp_dir().join(format!("walship-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read(&dir).unwrap(), None);
        let id = HistoryId::random();
        write(&dir, &id).unwrap();
        assert_eq!(read(&dir).unwrap(), Some(id));
        for junk in [
            &b"zz"[..],
            b"",
            b"\xff\xfe",
            b"0123456789abcdef0123456789ABCDEF",
        ] {
            std::fs::write(path(&dir), junk).unwrap();
            let e = read(&dir).unwrap_err().to_string();
            assert!(e.contains("history"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
