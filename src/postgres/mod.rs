//! PostgreSQL: archiving WAL files to the replica (`wal-push`, the `archive_command`) and
//! fetching them back during recovery (`wal-fetch`, the `restore_command`). A generation
//! is one cluster (system identifier, read from `global/pg_control`); timelines live
//! inside it, in the WAL file names.

pub mod archive;
pub mod backup;
pub mod chunks;
pub mod control;
pub mod identity;
pub mod pushlease;
pub mod restore;
pub mod sidecar;
pub mod stream;
