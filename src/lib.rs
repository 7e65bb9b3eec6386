//! walship: continuous replication of SQLite databases and PostgreSQL clusters to object
//! storage, and restore. Layers, top to bottom (checked by `layering`):
//! `cli -> supervisor -> {replicate, postgres} -> {sidecar, verify} -> {retention,
//! restore} -> catalog -> {format, storage} -> {sqlite, pgformat} -> error`; data flows
//! database -> capture or archiver -> spool -> store, and back through the catalog to a
//! restore.

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod pgformat;
pub mod policy;
pub mod postgres;
pub mod replicate;
pub mod restore;
pub mod retention;
pub mod shutdown;
pub mod sidecar;
pub mod sqlite;
pub mod storage;
pub mod supervisor;
pub mod verify;

pub use error::{Error, Result};
