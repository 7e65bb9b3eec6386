//! The generation manifest (`generations/<id>/manifest.json`) <-> bytes, and the checks a
//! reader applies before trusting a generation: JSON of a format this walship knows, a
//! SQLite engine, a valid page size. Pure: no storage, no clock.

use serde::{Deserialize, Serialize};

/// The manifest format this walship writes and the newest it reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub engine: String,
    pub page_size: u32,
    pub created: String,
    pub created_ms: u64,
    pub host: String,
    pub database: String,
    pub parent: Option<String>,
    /// Why this generation began (first start, WAL replaced, ...).
    pub reason: String,
    /// Set when this generation continues its parent exactly: its first snapshot holds
    /// the parent's state after this txid plus the one transaction too large for a
    /// segment, with nothing committed in between (docs/CAPTURE.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues_parent_at: Option<u64>,
    /// Set when the parent's last state is known to have lasted: walship watched the
    /// parent's WAL until `until_ms` and nothing followed its transaction `txid`, so a
    /// restore to a time up to then is that state exactly (docs/CAPTURE.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_unchanged: Option<Unchanged>,
    /// The database's history id (`replicate::history`): generations with different ids
    /// are different databases. Absent in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unchanged {
    pub txid: u64,
    pub until_ms: u64,
}

/// Only the format number, read first so that a newer manifest is refused by its format,
/// not by whichever field it renamed.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// Decode and check a SQLite generation's manifest; the error says what is wrong.
pub fn check(b: &[u8]) -> Result<Manifest, String> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Err("manifest is empty".into());
    }
    let f: FormatOnly =
        serde_json::from_slice(b).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if f.format > FORMAT {
        return Err(format!(
            "manifest format {} is newer than this walship reads (format {FORMAT}); \
             restore it with a newer walship",
            f.format
        ));
    }
    if f.format == 0 {
        return Err("manifest format 0 is not a walship format".into());
    }
    let m: Manifest =
        serde_json::from_slice(b).map_err(|e| format!("manifest is incomplete: {e}"))?;
    if m.engine != "sqlite" {
        return Err(format!(
            "manifest names engine {:?}, not a SQLite generation",
            m.engine
        ));
    }
    if !(512..=65536).contains(&m.page_size) || !m.page_size.is_power_of_two() {
        return Err(format!("manifest has an invalid page size {}", m.page_size));
    }
    if let Some(h) = &m.history
        && !(h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(format!(
            "manifest has an invalid history id {h:?} (32 lowercase hex digits)"
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: 1,
            engine: "sqlite".into(),
            page_size: 4096,
            created: "2026-11-22T01:02:03.456Z".into(),
            created_ms: 1,
            host: "h".into(),
            database: "/d.db".into(),
            parent: None,
            reason: "first start".into(),
            continues_parent_at: Some(7),
            parent_unchanged: None,
            history: None,
        }
    }

    #[test]
    fn round_trip_and_refusals_name_the_problem() {
        let ok = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(check(&ok).unwrap().continues_parent_at, Some(7));
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"  \n", "empty"),
            (b"{\"format\": 1, \"engi", "not valid JSON"),
            (b"\xff\xfe", "not valid JSON"),
            (b"{\"format\": 2, \"whatever\": true}", "format 2 is newer"),
            (b"{\"format\": 1}", "incomplete"),
            (b"{\"format\": 0}", "format 0"),
        ];
        for (b, want) in cases {
            let e = check(b).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut m = sample();
        m.history = Some("not-an-id".into());
        assert!(
            check(&serde_json::to_vec(&m).unwrap())
                .unwrap_err()
                .contains("invalid history id")
        );
        m.history = Some("0123456789abcdef0123456789abcdef".into());
        assert!(check(&serde_json::to_vec(&m).unwrap()).is_ok());
        let mut m = sample();
        m.engine = "postgres".into();
        assert!(
            check(&serde_json::to_vec(&m).unwrap())
                .unwrap_err()
                .contains("engine")
        );
        m = sample();
        m.page_size = 1000;
        assert!(
            check(&serde_json::to_vec(&m).unwrap())
                .unwrap_err()
                .contains("page size")
        );
    }
}
