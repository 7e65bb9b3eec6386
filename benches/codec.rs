//! Throughput of the capture hot path on a real SQLite WAL: frame parsing with the
//! checksum chain plus segment encoding (lz4 + CRC32), and the reverse (segment decode).
//! Target: >= 1 GB/s of WAL per core for parse + encode.
//!
//!     cargo bench --bench codec

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use walship::format::segment::Segment;
use walship::replicate::tracker::Tracker;
use walship::sqlite::wal::{WalHeader, WalPosition, checksum};

/// A WAL written by SQLite itself: `tx` transactions of `rows` rows each, never
/// checkpointed. Returns the WAL file (kept open) and its header.
fn real_wal(dir: &std::path::Path, tx: usize, rows: usize) -> (std::fs::File, WalHeader) {
    let db = dir.join("bench.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB, n INTEGER);
         CREATE INDEX t_name ON t(name);",
    )
    .unwrap();
    let mut seed = 1u64;
    for i in 0..tx {
        c.execute_batch("BEGIN").unwrap();
        for j in 0..rows {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let body: Vec<u8> = (0..40).map(|k| ((seed >> (k % 56)) as u8) & 0x3f).collect();
            c.execute(
                "INSERT INTO t(name, body, n) VALUES (?1, ?2, ?3)",
                rusqlite::params![format!("user-{}-{}", i, j), body, (i * rows + j) as i64],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
    }
    // Keep the connection open (no checkpoint on close) by leaking it for the bench run.
    std::mem::forget(c);
    let wal = std::fs::File::open(dir.join("bench.db-wal")).unwrap();
    let mut h = [0u8; 32];
    use std::os::unix::fs::FileExt;
    wal.read_exact_at(&mut h, 0).unwrap();
    (wal, WalHeader::parse(&h).unwrap())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // Shaped like the sidecar workload's WAL: one small row per transaction, hot pages.
    let (wal, hdr) = real_wal(dir.path(), 12000, 1);
    let len = wal.metadata().unwrap().len();
    eprintln!(
        "WAL under test: {} MB, {} byte pages",
        len >> 20,
        hdr.page_size
    );

    let mut g = c.benchmark_group("capture");
    g.throughput(Throughput::Bytes(len));
    g.sample_size(20);
    g.bench_function("wal_parse_and_segment_encode", |b| {
        b.iter(|| {
            let mut t = Tracker::new(WalPosition::start_of(&hdr, 0), 0, hdr.page_size, 1, 0);
            let mut out = 0usize;
            loop {
                let s = t.scan(&wal, 1, 4 << 20).unwrap();
                if let Some((_, bytes)) = t.take_segment() {
                    out += bytes.len();
                }
                if s == (walship::replicate::tracker::Scan::Progress {
                    commits: 0,
                    more: false,
                }) {
                    break;
                }
            }
            black_box(out)
        })
    });
    g.bench_function("wal_checksum_only_per_page", |b| {
        let mut buf = vec![0u8; len as usize];
        use std::os::unix::fs::FileExt;
        wal.read_exact_at(&mut buf, 0).unwrap();
        let ps = hdr.page_size as usize;
        b.iter(|| {
            let mut c = [0u32, 0];
            for page in buf[32..].chunks_exact(ps + 24) {
                c = checksum(hdr.big_endian, c, &page[24..]);
            }
            black_box(c)
        })
    });

    // One segment of everything, for the decode direction.
    let mut t = Tracker::new(WalPosition::start_of(&hdr, 0), 0, hdr.page_size, 1, 0);
    t.scan(&wal, 1, usize::MAX).unwrap();
    let (_, seg) = t.take_segment().unwrap();
    eprintln!(
        "one segment of the whole WAL: {} MB raw -> {} MB encoded",
        len >> 20,
        seg.len() >> 20
    );
    g.bench_function("segment_decode_verify", |b| {
        b.iter(|| black_box(Segment::decode(&seg).unwrap().meta.frame_count))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
