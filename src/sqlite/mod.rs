//! SQLite specifics: the WAL format (pure), the -shm index and its locks, and walship's
//! connections to a live database. Never touches object storage.

pub mod db;
pub mod shm;
pub mod wal;
