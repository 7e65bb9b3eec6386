//! A PostgreSQL base backup's manifest (`basebackups/<name>/manifest.json`): every file's
//! part, offset, length, mode and CRC32, and the backup's positions. The JSON shape only;
//! taking and unpacking backups is `postgres::backup` and `postgres::restore`.

use serde::{Deserialize, Serialize};

/// The manifest format this version writes; 2: a file may continue into the next parts.
pub const MANIFEST_FORMAT: u32 = 2;

/// One file of a backup: its bytes start in `part` at `offset` and, when the part ends
/// first, continue from the start of the next parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub part: u32,
    pub offset: u64,
    pub crc: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    /// As a string: JSON numbers lose precision past 2^53.
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_ms: u64,
    pub stop_ms: u64,
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub dirs: Vec<String>,
    pub files: Vec<FileEntry>,
    pub parts: u32,
    pub bytes: u64,
}
