//! The cluster's system identifier, read from `global/pg_control` (parsed by
//! `pgformat::control`), and the generation it names.

use crate::error::{Error, Result};
use crate::pgformat::control::parse_system_identifier;
use crate::storage::layout::GenerationId;
use std::path::Path;

/// The system identifier: `initdb`'s time in seconds in the high 32 bits, microseconds
/// and pid bits in the low 32.
pub fn system_identifier(pgdata: &Path) -> Result<u64> {
    let path = pgdata.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| Error::Database {
        path: pgdata.into(),
        reason: format!(
            "cannot read {} ({e}): is this a PostgreSQL data directory?",
            path.display()
        ),
    })?;
    parse_system_identifier(&bytes).map_err(|reason| Error::Database {
        path: path.clone(),
        reason,
    })
}

/// The generation of a cluster: its system identifier rewritten as a generation id,
/// `initdb` time first so that ids sort by creation like SQLite generations do. Every
/// `wal-push` computes it alone, without state or LIST.
pub fn generation_of(system_identifier: u64) -> GenerationId {
    GenerationId::new((system_identifier >> 32) * 1000, system_identifier as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_prefix_and_generation() {
        let id: u64 = 0x6541_2f3a_1234_5678;
        let mut b = id.to_le_bytes().to_vec();
        b.extend_from_slice(&1300u32.to_le_bytes());
        assert_eq!(parse_system_identifier(&b), Ok(id));
        let g = generation_of(id);
        assert_eq!(g.created_ms(), 0x6541_2f3a * 1000);
        assert!(g.as_str().ends_with("12345678"));
        assert!(
            generation_of(id + (1 << 32)) > g,
            "later initdb sorts later"
        );
        b[11] = 0xff;
        assert!(
            parse_system_identifier(&b)
                .unwrap_err()
                .contains("pg_control_version")
        );
        assert!(parse_system_identifier(&[0; 4]).is_err());
    }
}
