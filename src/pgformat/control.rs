//! `global/pg_control`'s fixed prefix: the system identifier and the control file
//! version. Pure; never reads a file itself.

/// `system_identifier` (u64) then `pg_control_version` (u32), in the server's byte order.
pub fn parse_system_identifier(b: &[u8]) -> Result<u64, String> {
    if b.len() < 12 {
        return Err("too short to be pg_control".into());
    }
    let id = u64::from_le_bytes(b[..8].try_into().unwrap());
    let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
    // 1300 is PostgreSQL 13-16's control file version; accept the plausible range only,
    // so that a file from elsewhere (or big-endian) is not taken for a cluster.
    if !(900..=2000).contains(&version) {
        return Err(format!(
            "pg_control_version {version} is not one walship knows: not a pg_control file?"
        ));
    }
    Ok(id)
}
