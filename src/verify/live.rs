//! `verify` beside the live database: compare a restored copy with the live database at
//! exactly the same WAL position, table by table, row by row. The live side is read in one
//! read transaction whose position is pinned (the `-shm` index header, read before and
//! after the transaction's first read, must be unchanged) and compared only when it equals
//! the restored state's end; anything else is "not compared", never a guess. Never
//! writes the live database, and its connection does not checkpoint on close.

use crate::error::{Error, Result};
use crate::sqlite::db::{check_database, sidecar_path};
use crate::sqlite::shm::Shm;
use crate::sqlite::wal::WalPosition;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum LiveComparison {
    /// Same position, same schema, every table's rows equal.
    Equal { tables: usize, rows: u64 },
    /// The live database is not at the restored position (it moved on, or its WAL was
    /// reset meanwhile); nothing can be concluded.
    NotCompared { reason: String },
}

/// Compare `restored` (a finished restore ending at `end`) with the live database.
/// `Err` names the first table that differs.
pub fn compare(live: &Path, restored: &Path, end: &WalPosition) -> Result<LiveComparison> {
    check_database(live)?;
    let shm_path = sidecar_path(live, "-shm");
    let Ok(shm) = Shm::open(&shm_path) else {
        return Ok(LiveComparison::NotCompared {
            reason: format!(
                "{} does not exist: no process has the database open, so its WAL position is unknown",
                shm_path.display()
            ),
        });
    };
    let sq = |e| Error::sqlite(live, e);
    let c = Connection::open_with_flags(
        live,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sq)?;
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sq)?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sq)?;
    c.execute(
        "ATTACH ?1 AS restored",
        [format!("file:{}?mode=ro", restored.display())],
    )
    .map_err(sq)?;
    let io = |e| Error::io(&shm_path, e);
    for _ in 0..20 {
        let before = shm.header().map_err(io)?;
        c.execute_batch("BEGIN").map_err(sq)?;
        c.query_row("SELECT count(*) FROM main.sqlite_schema", [], |_| Ok(()))
            .map_err(sq)?;
        let after = shm.header().map_err(io)?;
        let outcome = match (before, after) {
            (Some(b), Some(a)) if b == a => {
                if (a.salt1, a.salt2, a.mx_frame) == (end.salt1, end.salt2, end.frame) {
                    Some(compare_tables(&c, live))
                } else {
                    Some(Ok(LiveComparison::NotCompared {
                        reason: format!(
                            "the live database is at frame {} of the WAL with salts {:08x}/{:08x}, \
                             the replica's newest state at frame {} of {:08x}/{:08x}",
                            a.mx_frame, a.salt1, a.salt2, end.frame, end.salt1, end.salt2
                        ),
                    }))
                }
            }
            _ => None, // a commit landed between the two reads: pin again
        };
        c.execute_batch("COMMIT").map_err(sq)?;
        if let Some(o) = outcome {
            return o;
        }
    }
    Ok(LiveComparison::NotCompared {
        reason: "the live database changed at every attempt to pin its position".into(),
    })
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn compare_tables(c: &Connection, live: &Path) -> Result<LiveComparison> {
    let sq = |e| Error::sqlite(live, e);
    let differs = |what: String| Error::Database {
        path: live.into(),
        reason: format!("differs from the replica's newest state at the same WAL position: {what}"),
    };
    let schema = "SELECT type, name, tbl_name, coalesce(sql, '') FROM %.sqlite_schema";
    let one_way = |a: &str, b: &str| -> Result<i64> {
        c.query_row(
            &format!(
                "SELECT count(*) FROM ({} EXCEPT {})",
                schema.replace('%', a),
                schema.replace('%', b)
            ),
            [],
            |r| r.get(0),
        )
        .map_err(sq)
    };
    if one_way("main", "restored")? + one_way("restored", "main")? != 0 {
        return Err(differs("the schema".into()));
    }
    let tables: Vec<String> = c
        .prepare(
            "SELECT name FROM main.sqlite_schema WHERE type = 'table' \
             AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
        )
        .map_err(sq)?
        .query_map([], |r| r.get(0))
        .map_err(sq)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sq)?;
    let mut rows = 0u64;
    for t in &tables {
        let q = quote(t);
        let count = |db: &str| -> Result<i64> {
            c.query_row(&format!("SELECT count(*) FROM {db}.{q}"), [], |r| r.get(0))
                .map_err(sq)
        };
        let (live_n, restored_n) = (count("main")?, count("restored")?);
        if live_n != restored_n {
            return Err(differs(format!(
                "table {t} has {live_n} rows here, {restored_n} in the replica"
            )));
        }
        let extra: i64 = c
            .query_row(
                &format!(
                    "SELECT count(*) FROM (SELECT * FROM main.{q} EXCEPT SELECT * FROM restored.{q})"
                ),
                [],
                |r| r.get(0),
            )
            .map_err(sq)?;
        if extra != 0 {
            return Err(differs(format!(
                "table {t}: {extra} row(s) differ from the replica's"
            )));
        }
        rows += live_n as u64;
    }
    Ok(LiveComparison::Equal {
        tables: tables.len(),
        rows,
    })
}
