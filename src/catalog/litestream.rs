//! Litestream's backups in a listing of a database's path, grouped as its restores see
//! them: each 0.3 generation, and 0.5's LTX files as one backup (it has no generations).
//! Names and listing metadata only: never reads, writes or deletes an object.

use crate::format::ltx;
use crate::storage::Listed;
use serde::Serialize;

/// Which Litestream wrote a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Format {
    #[serde(rename = "litestream-0.3")]
    V03,
    #[serde(rename = "litestream-0.5")]
    V05,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::V03 => "litestream-0.3",
            Format::V05 => "litestream-0.5",
        }
    }
}

/// The name listings give 0.5's LTX files, which have no generation.
pub const LTX_NAME: &str = "ltx";

/// One of Litestream's backups: a 0.3 generation, or 0.5's LTX files.
#[derive(Debug, Clone)]
pub struct Backup {
    pub format: Format,
    /// The 0.3 generation's id, or `ltx`.
    pub name: String,
    /// Its objects (names relative to the path), in name order.
    pub objects: Vec<Listed>,
    /// 0.3's snapshots, or 0.5's level-9 (full snapshot) files.
    pub snapshots: Vec<Snapshot>,
    /// WAL segments (0.3) or LTX files below level 9 (0.5).
    pub segments: usize,
    /// The newest transaction (0.5 only: 0.3's names carry none).
    pub last_txid: Option<u64>,
}

/// A full copy of the database within a backup.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub key: String,
    pub size: u64,
    pub modified_ms: u64,
    /// The transaction it holds (0.5), or none (0.3 names a WAL index, not a transaction).
    pub txid: Option<u64>,
}

impl Backup {
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    /// When the store wrote its oldest object.
    pub fn first_ms(&self) -> u64 {
        self.objects
            .iter()
            .map(|o| o.modified_ms)
            .min()
            .unwrap_or(0)
    }

    /// When the store wrote its newest object: Litestream still writes a backup whose
    /// newest object is recent.
    pub fn last_ms(&self) -> u64 {
        self.objects
            .iter()
            .map(|o| o.modified_ms)
            .max()
            .unwrap_or(0)
    }
}

/// Litestream's backups in `listing` (a LIST of the path's root), oldest 0.3 generation
/// first, then 0.5's files. Every other name is not Litestream's and is skipped.
pub fn backups(listing: &[Listed]) -> Vec<Backup> {
    let mut v03: std::collections::BTreeMap<String, Backup> = Default::default();
    let mut v05 = Backup {
        format: Format::V05,
        name: LTX_NAME.into(),
        objects: Vec::new(),
        snapshots: Vec::new(),
        segments: 0,
        last_txid: None,
    };
    for o in listing {
        if let Some((level, _, max)) = ltx::parse_name(&o.name) {
            v05.objects.push(o.clone());
            v05.last_txid = v05.last_txid.max(Some(max));
            if level == 9 {
                v05.snapshots.push(snapshot(o, Some(max)));
            } else {
                v05.segments += 1;
            }
        } else if let Some((generation, _, offset)) = parse_v03_name(&o.name) {
            let b = v03.entry(generation.clone()).or_insert_with(|| Backup {
                format: Format::V03,
                name: generation,
                objects: Vec::new(),
                snapshots: Vec::new(),
                segments: 0,
                last_txid: None,
            });
            b.objects.push(o.clone());
            match offset {
                None => b.snapshots.push(snapshot(o, None)),
                Some(_) => b.segments += 1,
            }
        }
    }
    let mut out: Vec<Backup> = v03.into_values().collect();
    out.sort_by_key(|b| (b.first_ms(), b.name.clone()));
    if !v05.objects.is_empty() {
        out.push(v05);
    }
    for b in &mut out {
        b.objects.sort_by(|x, y| x.name.cmp(&y.name));
        b.snapshots.sort_by_key(|s| (s.modified_ms, s.txid));
    }
    out
}

fn hex8(s: &str) -> Option<u64> {
    (s.len() == 8 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// A name below the replica path, if it is one of Litestream 0.3's.
pub fn parse_v03_name(rel: &str) -> Option<(String, u32, Option<u64>)> {
    let p: Vec<&str> = rel.split('/').collect();
    let gen_ok = |g: &str| g.len() == 16 && g.bytes().all(|c| c.is_ascii_hexdigit());
    match p[..] {
        ["generations", g, "snapshots", name] if gen_ok(g) => {
            let i = hex8(name.strip_suffix(".snapshot.lz4")?)?;
            Some((g.to_string(), u32::try_from(i).ok()?, None))
        }
        ["generations", g, "wal", name] if gen_ok(g) => {
            let (i, o) = name.strip_suffix(".wal.lz4")?.split_once('_')?;
            Some((g.to_string(), u32::try_from(hex8(i)?).ok()?, Some(hex8(o)?)))
        }
        ["generations", g, "wal", i, name] if gen_ok(g) => {
            let o = hex8(name.strip_suffix(".wal.lz4")?)?;
            Some((g.to_string(), u32::try_from(hex8(i)?).ok()?, Some(o)))
        }
        _ => None,
    }
}

fn snapshot(o: &Listed, txid: Option<u64>) -> Snapshot {
    Snapshot {
        key: o.name.clone(),
        size: o.size,
        modified_ms: o.modified_ms,
        txid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, size: u64, ms: u64) -> Listed {
        Listed {
            name: name.into(),
            size,
            modified_ms: ms,
        }
    }

    #[test]
    fn each_format_is_grouped_as_its_restore_reads_it() {
        let g1 = "00000000000000aa";
        let g2 = "00000000000000bb";
        let listing = vec![
            l(
                &format!("generations/{g2}/snapshots/00000000.snapshot.lz4"),
                10,
                500,
            ),
            l(
                &format!("generations/{g2}/wal/00000000_00000000.wal.lz4"),
                3,
                510,
            ),
            l(
                &format!("generations/{g1}/snapshots/00000000.snapshot.lz4"),
                10,
                100,
            ),
            l(
                &format!("generations/{g1}/wal/00000000/00000000.wal.lz4"),
                4,
                110,
            ),
            l(
                &format!("generations/{g1}/wal/00000001_00000000.wal.lz4"),
                5,
                120,
            ),
            l("ltx/9/0000000000000001-0000000000000007.ltx", 20, 700),
            l("0000/0000000000000008-0000000000000008.ltx", 2, 800),
            l("generations/0193a1b2c3d4e5f60001/manifest.json", 1, 1),
            l("lease.json", 1, 1),
        ];
        let b = backups(&listing);
        let names: Vec<(&str, &str)> = b.iter().map(|b| (b.format.as_str(), &*b.name)).collect();
        assert_eq!(
            names,
            [
                ("litestream-0.3", g1),
                ("litestream-0.3", g2),
                ("litestream-0.5", LTX_NAME)
            ]
        );
        assert_eq!(
            (b[0].snapshots.len(), b[0].segments, b[0].bytes()),
            (1, 2, 19)
        );
        assert_eq!((b[0].first_ms(), b[0].last_ms()), (100, 120));
        assert_eq!(b[2].last_txid, Some(8));
        assert_eq!(b[2].snapshots[0].txid, Some(7));
        assert_eq!((b[2].snapshots.len(), b[2].segments), (1, 1));
        assert!(backups(&listing[7..]).is_empty());
    }
}
