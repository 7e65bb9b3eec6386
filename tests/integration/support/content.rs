//! What a user compares after a restore: a database's content, table by table and row by
//! row, and the sizes of what is on disk.

use super::*;

/// The writer's content hash of a database (`writer.py --hash`): the same value it records
/// after each commit with `--record`.
pub fn content_hash(db: &Path) -> String {
    let o = Command::new("python3")
        .arg(writer_script())
        .arg("--hash")
        .arg(db)
        .output()
        .expect("python3 tests/writer.py --hash");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Create a WAL-mode database with the writer's schema (as the app would on first start).
pub fn create_db(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB, n INTEGER);
         CREATE INDEX IF NOT EXISTS items_k ON items(k);
         CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .unwrap();
}

pub type Rows = Vec<Vec<rusqlite::types::Value>>;

/// Every table's rows, in rowid order (read-only, does not disturb a live WAL).
pub fn dump(path: &Path) -> BTreeMap<String, Rows> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let rows: Rows = st
            .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        out.insert(t, rows);
    }
    out
}

/// Assert two databases hold the same tables with the same rows, and the copy is sound.
#[track_caller]
pub fn assert_same_content(source: &Path, restored: &Path) {
    let (a, b) = (dump(source), dump(restored));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tables differ"
    );
    for (t, rows) in &a {
        let other = &b[t];
        if rows != other {
            let first_diff = rows.iter().zip(other).position(|(x, y)| x != y);
            panic!(
                "table {t}: source has {} rows, restored {}; first differing row index {:?}",
                rows.len(),
                other.len(),
                first_diff
            );
        }
    }
    let c = rusqlite::Connection::open(restored).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "integrity_check of the restored database");
}

/// Sum of file sizes directly in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
