//! Fuzz entry points: one function per decoder or parser that reads bytes or text from a
//! store, a file or a flag. Each must return on any input, never panic, loop or allocate
//! beyond what the input implies. cargo-fuzz targets (`fuzz/`) call them, and the normal
//! suite replays the seed corpus and every finding through them on stable. Touches no
//! file, network or clock.

use crate::format::{container, journal, segment, snapshot};
use crate::restore::plan;
use crate::storage::Listed;
use crate::storage::layout::{self, GenerationId, SegmentName, SnapshotName};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every entry point by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("container", container_bytes),
    ("segment", segment_bytes),
    ("snapshot", snapshot_bytes),
    ("journal", journal_bytes),
    ("wal", wal_bytes),
    ("shm", shm_bytes),
    ("names", names),
    ("time", time),
    ("settings", settings),
    ("config", config),
    ("pg_records", pg_records),
    ("pg_objects", pg_objects),
    ("manifest", manifest),
    ("planner", planner),
    ("ltx", ltx_bytes),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, x) in b.iter().skip(at).take(8).enumerate() {
        w[i] = *x;
    }
    u64::from_le_bytes(w)
}

/// The shared container: header, chunks, footer, trailer, whole-object decode.
pub fn container_bytes(data: &[u8]) {
    let magic = data.get(..4).map_or(*b"WSEG", |m| [m[0], m[1], m[2], m[3]]);
    let _ = container::parse_header(data, &magic);
    let _ = container::decode_chunk(data);
    if let Ok(off) = container::parse_footer(data)
        && let Some(t) = data.get(off.min(data.len() as u64) as usize..)
    {
        let _ = container::parse_trailer(t, off);
    }
    let _ = container::parse_trailer(data, u64_at(data, 0));
    let _ = container::decode_all(data, &magic);
}

/// A segment object: decode, then read every frame the decoder accepted.
pub fn segment_bytes(data: &[u8]) {
    let _ = segment::SegmentMeta::parse_header(data);
    if let Ok(s) = segment::Segment::decode(data) {
        let mut commits = 0u64;
        for f in s.frames() {
            assert!(f.pgno >= 1, "decoded frame with page 0");
            assert_eq!(f.page.len(), s.meta.page_size as usize);
            commits += u64::from(f.commit.is_some());
        }
        let span = s.meta.last_txid - s.meta.first_txid + 1;
        assert_eq!(commits, span, "commit count must match the txid range");
    }
}

/// A snapshot object: header, whole decode, and the ranged path (footer, trailer,
/// verifier, chunk by chunk) restore takes for large ones.
pub fn snapshot_bytes(data: &[u8]) {
    let Ok(meta) = snapshot::SnapshotMeta::parse_header(data) else {
        return;
    };
    let _ = container::decode_all(data, snapshot::MAGIC);
    let Some(foot) = data.len().checked_sub(container::FOOTER_LEN) else {
        return;
    };
    let Ok(t_off) = container::parse_footer(&data[foot..]) else {
        return;
    };
    if t_off >= data.len() as u64 {
        return;
    }
    let Ok(trailer) = container::parse_trailer(&data[t_off as usize..], t_off) else {
        return;
    };
    let Ok(mut v) = snapshot::SnapshotVerifier::new(meta, trailer) else {
        return;
    };
    for i in 0..meta.chunk_count() {
        let r = v.chunk_range(i);
        let (Ok(a), Ok(b)) = (usize::try_from(r.start), usize::try_from(r.end)) else {
            return;
        };
        let Some(bytes) = data.get(a..b) else {
            return;
        };
        match snapshot::decode_chunk_at(&meta, i, bytes) {
            Ok(c) => v.accept_decoded(&c),
            Err(_) => return,
        }
    }
    let _ = v.finish();
}

/// The local capture journal, as recovery reads it after a crash.
pub fn journal_bytes(data: &[u8]) {
    let _ = journal::decode(data);
    let (records, _) = journal::decode_all(data);
    for r in records {
        assert!(r.first_txid <= r.last_txid);
    }
}

/// A WAL header and the frame headers after it, checksum chain included.
pub fn wal_bytes(data: &[u8]) {
    use crate::sqlite::wal::{FRAME_HEADER_LEN, FrameHeader, WAL_HEADER_LEN, WalHeader};
    let Ok(h) = WalHeader::parse(data) else {
        return;
    };
    let mut prev = h.cksum;
    let frame = FRAME_HEADER_LEN + h.page_size as usize;
    let mut at = WAL_HEADER_LEN;
    while let Some(f) = data.get(at..at + frame) {
        let fh = FrameHeader::from_slice(f);
        let _ = (fh.pgno(), fh.commit_size(), fh.is_commit(), fh.salts());
        match fh.verify(&h, prev, &f[FRAME_HEADER_LEN..]) {
            Some(c) => prev = c,
            None => break,
        }
        at += frame;
    }
}

/// The `-shm` WAL-index header.
pub fn shm_bytes(data: &[u8]) {
    let _ = crate::sqlite::shm::ShmHeader::parse(data);
}

/// Object names under a replica (SQLite and PostgreSQL) and generation ids.
pub fn names(data: &[u8]) {
    let Some(s) = text(data) else { return };
    for line in s.lines() {
        if let Some(o) = layout::parse_object(line) {
            let _ = format!("{o:?}");
        }
        let _ = layout::parse_segment_stem(line);
        if let Some(g) = GenerationId::parse(line) {
            let _ = crate::clock::rfc3339(g.created_ms());
        }
        if let Some(w) = crate::pgformat::walname::WalFile::parse(line) {
            let _ = w.timeline();
        }
    }
}

/// `--timestamp` text, offsets, and formatting any instant.
pub fn time(data: &[u8]) {
    let now = u64_at(data, 0);
    let _ = crate::clock::rfc3339(now);
    let Some(s) = text(data) else { return };
    if let Ok(ms) = crate::restore::when::parse_time(s, 1_800_000_000_000) {
        let _ = crate::clock::rfc3339(ms);
        let _ = crate::restore::when::format_ms(ms);
    }
    let _ = crate::clock::parse_offset(s);
}

/// Sizes, durations, listen addresses and replica URLs from flags and config values.
pub fn settings(data: &[u8]) {
    use crate::config;
    let Some(s) = text(data) else { return };
    let _ = config::parse_size("k", s);
    let _ = config::parse_spool_limit("k", s);
    let _ = config::parse_duration("k", s);
    let _ = config::parse_positive_duration("k", s);
    let _ = config::parse_listen_addr(s);
    let _ = config::parse_location(s);
    let _ = crate::retention::plan::Tiers::parse(s);
}

/// A whole config file, with `${VAR}` references resolved to fixed text.
pub fn config(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let env = |k: &str| (k.len() < 8).then(|| "/tmp/x".to_string());
    let _ = crate::config::parse(s, &env);
}

/// PostgreSQL WAL record walking (the last commit time of an archived segment): as given,
/// and with the first page header made to agree with the input's length and address, so
/// the walk itself is reached.
pub fn pg_records(data: &[u8]) {
    use crate::pgformat::walrecords::last_xact_end;
    let log = u64_at(data, 8);
    let _ = last_xact_end(data, (log >> 32) as u32, log as u32);
    if data.len() >= 40 {
        let mut seg = data.to_vec();
        let n = seg.len() as u32;
        seg[8..16].copy_from_slice(&u64::from(n).to_le_bytes());
        seg[32..36].copy_from_slice(&n.to_le_bytes());
        let _ = last_xact_end(&seg, 0, 1);
    }
}

/// Archived PostgreSQL objects: a WAL segment's container and a base backup's manifest.
pub fn pg_objects(data: &[u8]) {
    use crate::pgformat::walname::WalFile;
    for name in ["000000010000000000000001", "00000002.history"] {
        if let Some(w) = WalFile::parse(name) {
            let _ = crate::format::pgwal::decode(&w, data);
        }
    }
    let _ = serde_json::from_slice::<crate::postgres::backup::BackupManifest>(data);
}

/// A generation manifest, as restore validates it.
pub fn manifest(data: &[u8]) {
    let _ = crate::format::manifest::check(data);
}

/// A replica listing: restore planning for every kind of target, the gap description, and
/// retention planning. Each 33-byte record is one object (kind, four numbers).
pub fn planner(data: &[u8]) {
    let mut listing = Vec::new();
    for r in data.chunks(33) {
        let (kind, n) = (r[0], |i: usize| u64_at(r, 1 + 8 * i));
        let gen_id = GenerationId::new(u64::from(kind >> 4) * 1000, 0);
        let name = match kind & 3 {
            0 => layout::format_snapshot(
                &gen_id,
                &SnapshotName {
                    txid: n(0) % 64,
                    commit_ms: n(1) % 10_000,
                },
            ),
            1 | 2 => layout::format_segment(
                &gen_id,
                &SegmentName {
                    first_txid: if kind & 8 == 0 { n(0) % 64 } else { n(0) },
                    last_txid: if kind & 8 == 0 { n(1) % 64 } else { n(1) },
                    first_commit_ms: n(2) % 10_000,
                    last_commit_ms: n(3) % 10_000,
                },
            ),
            _ => layout::format_manifest(&gen_id),
        };
        listing.push(Listed {
            name,
            size: n(2) % 1000,
            modified_ms: n(4) % 10_000,
        });
    }
    let mut gens = plan::group(&listing);
    let t = u64_at(data, 0) % 12_000;
    for target in [
        plan::Target::Latest,
        plan::Target::Time(t),
        plan::Target::Txid(t % 70),
    ] {
        for allow_older in [false, true] {
            // Manifests as the store would answer: read on demand, valid or not by the
            // generation's id, continuing its parent at a txid from the input.
            for _ in 0..=gens.len() {
                match plan::plan(&gens, None, target, allow_older) {
                    Ok(p) => {
                        assert!(allow_older || p.older.is_none());
                        let _ = p.bytes();
                        break;
                    }
                    Err(plan::PlanError::NeedManifest(id)) => {
                        let n = id.created_ms() / 1000;
                        let g = gens.get_mut(&id).expect("listed");
                        assert_eq!(g.manifest, plan::ManifestState::Unread, "asked twice");
                        g.manifest = if n % 5 == 4 {
                            plan::ManifestState::Bad("bad".into())
                        } else {
                            plan::ManifestState::Valid {
                                continues_parent_at: (n % 3 == 2).then_some(t % 70),
                                parent_unchanged: (n % 4 == 1).then_some(
                                    crate::format::manifest::Unchanged {
                                        txid: t % 70,
                                        until_ms: u64_at(data, 4),
                                    },
                                ),
                            }
                        };
                    }
                    Err(plan::PlanError::Refused(_)) => break,
                }
            }
        }
    }
    for g in gens.values() {
        let (_, _) = plan::chain_after(&g.segments, u64_at(data, 3) % 70);
    }
    let policy = crate::retention::plan::Policy::new(std::time::Duration::from_millis(t));
    let _ = crate::retention::plan::plan(&listing, &policy, 11_000, None);
}

/// A Litestream LTX file, and (as text, one name per line) a listing planned for restore.
pub fn ltx_bytes(data: &[u8]) {
    let _ = crate::format::ltx::parse_header(data);
    if let Ok(l) = crate::format::ltx::parse(data) {
        let ps = l.header.page_size;
        let db: Vec<u8> = l.pages.iter().flat_map(|(_, p)| p.clone()).collect();
        let _ = crate::format::ltx::database_checksum(&db, ps);
    }
    if let Some(t) = text(data) {
        use crate::restore::litestream as ls;
        let listing: Vec<Listed> = t
            .lines()
            .enumerate()
            .map(|(i, l)| Listed {
                name: l.to_string(),
                size: i as u64,
                modified_ms: 0,
            })
            .collect();
        let mut files = ls::files(&listing);
        for (i, f) in files.iter_mut().enumerate() {
            f.ts_ms = Some(i as u64 * 1000);
        }
        for target in [
            plan::Target::Latest,
            plan::Target::Txid(3),
            plan::Target::Time(2500),
        ] {
            let _ = ls::plan(&files, target, true);
            let _ = ls::plan(&files, target, false);
        }
    }
}
