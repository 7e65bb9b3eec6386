//! walship: continuous replication of SQLite databases to object storage, and restore.
//! Data flows one way: `cli -> {replicate, restore} -> {sqlite, format, storage} -> error`.

pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod postgres;
pub mod replicate;
pub mod restore;
pub mod retention;
pub mod sqlite;
pub mod storage;

pub use error::{Error, Result};
