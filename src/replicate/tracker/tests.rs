//! Unit tests of `replicate/tracker.rs`.

use super::*;
use crate::format::segment::Segment;
use std::io::Write;

const PS: u32 = 512;

/// A WAL file written frame by frame the way SQLite lays it out.
struct FakeWal {
    file: tempfile::NamedTempFile,
    hdr: WalHeader,
    running: [u32; 2],
    frames: u32,
}

impl FakeWal {
    fn new(ckpt: u32, salt1: u32, salt2: u32) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let raw = WalHeader::encode(false, PS, ckpt, salt1, salt2);
        file.write_all(&raw).unwrap();
        let hdr = WalHeader::parse(&raw).unwrap();
        FakeWal {
            file,
            running: hdr.cksum,
            hdr,
            frames: 0,
        }
    }
    fn frame(&mut self, pgno: u32, commit: u32, fill: u8) {
        let page = vec![fill; PS as usize];
        let (fh, c) = FrameHeader::encode(&self.hdr, self.running, pgno, commit, &page);
        self.file.write_all(&fh.0).unwrap();
        self.file.write_all(&page).unwrap();
        self.running = c;
        self.frames += 1;
    }
    /// Overwrite the file as SQLite does on a reset: new header, frames from the start.
    fn reset(&mut self) {
        let raw = WalHeader::encode(
            false,
            PS,
            self.hdr.ckpt_seq + 1,
            self.hdr.salt1 + 1,
            self.hdr.salt2 ^ 0x5555,
        );
        self.file.as_file().write_all_at(&raw, 0).unwrap();
        self.hdr = WalHeader::parse(&raw).unwrap();
        self.running = self.hdr.cksum;
        self.frames = 0;
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(32)).unwrap();
    }
}

fn tracker_at_start(w: &FakeWal) -> Tracker {
    Tracker::new(WalPosition::start_of(&w.hdr, 0), 0, PS, 1, 0)
}

#[test]
fn consumes_only_whole_transactions() {
    let mut w = FakeWal::new(0, 10, 20);
    let mut t = tracker_at_start(&w);
    w.frame(2, 0, 1);
    w.frame(3, 3, 2); // commit: tx 1
    w.frame(4, 0, 3); // tx 2 not committed yet
    let s = t.scan(w.file.as_file(), 1000, usize::MAX).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 1,
            more: false
        }
    );
    assert_eq!((t.txid, t.pos.frame, t.db_pages), (1, 2, 3));
    w.frame(5, 5, 4); // tx 2 commits
    let s = t.scan(w.file.as_file(), 1100, usize::MAX).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 1,
            more: false
        }
    );
    let (meta, bytes) = t.take_segment().unwrap();
    assert_eq!(
        (meta.first_txid, meta.last_txid, meta.frame_count),
        (1, 2, 4)
    );
    assert_eq!((meta.first_commit_ms, meta.last_commit_ms), (1000, 1100));
    let seg = Segment::decode(&bytes).unwrap();
    let pgnos: Vec<u32> = seg.frames().map(|f| f.pgno).collect();
    assert_eq!(pgnos, vec![2, 3, 4, 5]);
    assert_eq!(t.frame_of(4), Some(3));
    assert!(t.take_segment().is_none());
}

#[test]
fn stops_at_a_frame_that_breaks_the_chain() {
    let mut w = FakeWal::new(0, 10, 20);
    let mut t = tracker_at_start(&w);
    w.frame(2, 2, 1);
    // A stale frame from an older WAL (wrong salts) after the valid one.
    let stale_hdr = WalHeader::parse(&WalHeader::encode(false, PS, 0, 9, 9)).unwrap();
    let page = vec![7u8; PS as usize];
    let (fh, _) = FrameHeader::encode(&stale_hdr, stale_hdr.cksum, 3, 3, &page);
    w.file.write_all(&fh.0).unwrap();
    w.file.write_all(&page).unwrap();
    let s = t.scan(w.file.as_file(), 5, usize::MAX).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 1,
            more: false
        }
    );
    assert_eq!(t.pos.frame, 1);
}

#[test]
fn reset_is_accepted_only_when_policy_allows() {
    for (policy, lost) in [
        (ResetPolicy::Forbidden, true),
        (ResetPolicy::Once, false),
        (ResetPolicy::Any, false),
    ] {
        let mut w = FakeWal::new(3, 100, 7);
        let mut t = tracker_at_start(&w);
        w.frame(2, 2, 1);
        t.scan(w.file.as_file(), 1, usize::MAX).unwrap();
        t.reset_policy = policy;
        w.reset();
        w.frame(2, 2, 9);
        let s = t.scan(w.file.as_file(), 2, usize::MAX).unwrap();
        assert_eq!(matches!(s, Scan::Lost(_)), lost, "{policy:?}");
        if !lost {
            assert_eq!((t.pos.epoch, t.pos.frame, t.txid), (1, 1, 2));
            let (meta, _) = t.take_segment().unwrap();
            assert_eq!(meta.start.epoch, 0);
            assert_eq!(meta.end.epoch, 1);
        }
    }
}

#[test]
fn two_resets_need_policy_any() {
    let mut w = FakeWal::new(3, 100, 7);
    let mut t = tracker_at_start(&w);
    t.reset_policy = ResetPolicy::Once;
    w.reset();
    w.reset();
    w.frame(2, 2, 9);
    assert!(matches!(
        t.scan(w.file.as_file(), 2, usize::MAX).unwrap(),
        Scan::Lost(_)
    ));
}

#[test]
fn budget_splits_at_commit_boundaries() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    for i in 0..10 {
        w.frame(2 + i, 2 + i, i as u8);
    }
    let s = t.scan(w.file.as_file(), 1, 3 * PS as usize).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 3,
            more: true
        }
    );
    assert_eq!(t.take_segment().unwrap().0.last_txid, 3);
    let s = t.scan(w.file.as_file(), 1, usize::MAX).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 7,
            more: false
        }
    );
    assert_eq!(t.take_segment().unwrap().0.first_txid, 4);
}

/// A reset while walship was down resumes the generation only when the old WAL's
/// frame after the position is on disk and does not continue it.
#[test]
fn a_reset_right_after_the_position_is_proven_only_by_the_frame_after_it() {
    let frame_len = (24 + PS) as usize;
    // (downtime commit after the position?, new WAL frames, truncate the file?)
    for (appended, new_frames, truncate, proven) in [
        (false, 1, false, true),
        (true, 1, false, false),
        (false, 1, true, false),
        (false, 6, false, false),
    ] {
        let mut w = FakeWal::new(0, 1, 2);
        let mut t = tracker_at_start(&w);
        for i in 1..=4 {
            w.frame(i, if i == 4 { 4 } else { 0 }, i as u8);
        }
        t.scan(w.file.as_file(), 1, usize::MAX).unwrap();
        let pos = t.pos;
        assert_eq!(pos.frame, 4);
        if appended {
            w.frame(2, 4, 9); // committed while walship was down
        } else {
            w.file.write_all(&vec![0xa5; frame_len]).unwrap(); // an older cycle's
        }
        w.frame(3, 4, 7); // more stale bytes beyond
        w.reset();
        for i in 0..new_frames {
            w.frame(1, if i + 1 == new_frames { 4 } else { 0 }, 0x33);
        }
        if truncate {
            w.file
                .as_file()
                .set_len(32 + new_frames as u64 * frame_len as u64)
                .unwrap();
        }
        let got = reset_right_after(w.file.as_file(), &w.hdr, &pos, PS).unwrap();
        assert_eq!(
            got, proven,
            "appended={appended} new={new_frames} truncate={truncate}"
        );
        if proven {
            // Resumed at the old position, the tracker steps over the one reset.
            let mut r = Tracker::new(pos, t.txid, PS, 4, 1);
            r.reset_policy = ResetPolicy::Once;
            let scan = r.scan(w.file.as_file(), 2, usize::MAX).unwrap();
            assert!(
                matches!(scan, Scan::Progress { commits: 1, .. }),
                "{scan:?}"
            );
            assert_eq!(r.txid, t.txid + 1);
            assert!(r.pos.same_wal(&w.hdr));
        }
    }
}

#[test]
fn verify_position_accepts_only_the_same_history() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    w.frame(2, 0, 1);
    w.frame(3, 3, 2);
    w.frame(4, 4, 3);
    t.scan(w.file.as_file(), 1, usize::MAX).unwrap();
    let pos = t.pos;
    let index = verify_position(w.file.as_file(), &w.hdr, &pos)
        .unwrap()
        .unwrap();
    assert_eq!(index.get(&3), Some(&2));
    let off_by_one = WalPosition { frame: 2, ..pos };
    assert!(
        verify_position(w.file.as_file(), &w.hdr, &off_by_one)
            .unwrap()
            .is_none()
    );
    let mid_tx = WalPosition { frame: 1, ..pos };
    assert!(
        verify_position(w.file.as_file(), &w.hdr, &mid_tx)
            .unwrap()
            .is_none()
    );
    w.reset();
    w.frame(2, 2, 5);
    assert!(
        verify_position(w.file.as_file(), &w.hdr, &pos)
            .unwrap()
            .is_none()
    );
}

#[test]
fn first_header_after_an_empty_wal_needs_the_read_mark() {
    let mut w = FakeWal::new(0, 1, 2);
    w.frame(2, 2, 1);
    for (policy, lost) in [(ResetPolicy::Forbidden, true), (ResetPolicy::Any, false)] {
        let mut t = Tracker::new(WalPosition::empty_wal(0), 0, PS, 1, 0);
        t.reset_policy = policy;
        let s = t.scan(w.file.as_file(), 1, usize::MAX).unwrap();
        assert_eq!(matches!(s, Scan::Lost(_)), lost);
    }
}

#[test]
fn read_hint_bounds_the_scan_to_committed_frames() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    for i in 0..5 {
        w.frame(2 + i, 2 + i, i as u8);
    }
    t.read_hint = Some((1, 2, 3));
    assert_eq!(
        t.scan(w.file.as_file(), 1, usize::MAX).unwrap(),
        Scan::Progress {
            commits: 3,
            more: false
        }
    );
    // A hint for another WAL is ignored; without a hint the scan reads to the end.
    t.read_hint = Some((9, 9, 1));
    assert_eq!(
        t.scan(w.file.as_file(), 1, usize::MAX).unwrap(),
        Scan::Progress {
            commits: 2,
            more: false
        }
    );
}

#[test]
fn commit_times_never_go_backwards() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    w.frame(2, 2, 1);
    t.scan(w.file.as_file(), 5000, usize::MAX).unwrap();
    w.frame(2, 2, 2);
    t.scan(w.file.as_file(), 4000, usize::MAX).unwrap(); // clock stepped back
    let (meta, bytes) = t.take_segment().unwrap();
    assert_eq!(meta.last_commit_ms, 5000);
    Segment::decode(&bytes).unwrap();
}

/// A commit that a WAL-index sample showed before the scan keeps the sample's time; one
/// no sample covered, or covered only by a sample of another WAL, gets the scan's.
#[test]
fn commits_take_the_time_of_the_sample_that_first_showed_them() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    for i in 0..4 {
        w.frame(2 + i, 2 + i, i as u8);
    }
    t.seen = vec![
        (1, 2, 1, 100),
        (9, 9, 3, 50),
        (1, 2, 2, 120),
        (1, 2, 3, 140),
    ];
    t.scan(w.file.as_file(), 500, usize::MAX).unwrap();
    assert_eq!(t.pending_commit_times(), vec![100, 120, 140, 500]);
    assert!(t.seen.is_empty(), "samples behind the position are dropped");
    // A sample ahead of the position stays for the next scan.
    w.frame(6, 6, 9);
    w.frame(7, 7, 9);
    t.seen = vec![(1, 2, 6, 600)];
    t.read_hint = Some((1, 2, 5));
    t.scan(w.file.as_file(), 700, usize::MAX).unwrap();
    assert_eq!(t.seen, vec![(1, 2, 6, 600)]);
    t.scan(w.file.as_file(), 800, usize::MAX).unwrap();
    assert_eq!(t.pending_commit_times()[4..], [600, 600]);
    assert!(t.seen.is_empty());
}

#[test]
fn journal_receives_each_scans_transactions_as_read() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    w.frame(2, 0, 1);
    w.frame(3, 3, 2); // tx 1
    w.frame(4, 4, 3); // tx 2
    w.frame(5, 0, 4); // unfinished
    let mut got = Vec::new();
    t.scan_with(w.file.as_file(), 70, usize::MAX, &mut |r| {
        got.push((
            r.first_txid,
            r.last_txid,
            r.commits.to_vec(),
            r.frames.to_vec(),
            r.end,
        ));
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 1);
    let (first, last, commits, frames, end) = &got[0];
    assert_eq!((*first, *last), (1, 2));
    assert_eq!(commits, &vec![(1, 70), (2, 70)]);
    assert_eq!(*end, t.pos);
    // The frames exactly as in the WAL file, before any delta encoding.
    let fl = 24 + PS as usize;
    let mut raw = vec![0u8; 3 * fl];
    w.file.as_file().read_exact_at(&mut raw, 32).unwrap();
    assert_eq!(frames, &raw);
    // A scan with nothing new appends nothing.
    got.clear();
    t.scan_with(w.file.as_file(), 80, usize::MAX, &mut |r| {
        got.push((r.first_txid, r.last_txid, vec![], vec![], r.end));
        Ok(())
    })
    .unwrap();
    assert!(got.is_empty());
}

#[test]
fn a_transaction_over_the_limit_is_consumed_without_its_frames() {
    let mut w = FakeWal::new(0, 1, 2);
    let mut t = tracker_at_start(&w);
    let fl = 24 + PS as usize;
    t.tx_limit = 3 * fl;
    w.frame(2, 2, 1); // tx 1: small
    for p in 3..8 {
        w.frame(p, if p == 7 { 7 } else { 0 }, p as u8); // 5 frames: too large
    }
    w.frame(8, 8, 9); // after it
    // The small one first, stopping before the large one so it can be cut alone.
    let s = t.scan(w.file.as_file(), 10, usize::MAX).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 1,
            more: true
        }
    );
    assert!(t.large_ahead);
    let (meta, _) = t.take_segment().unwrap();
    assert_eq!((meta.last_txid, meta.end.frame), (1, 1));
    // Then the large one, consumed but not kept: position and page index follow it.
    let mut journaled = 0;
    let s = t
        .scan_with(w.file.as_file(), 20, usize::MAX, &mut |_| {
            journaled += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        s,
        Scan::Large {
            bytes: 5 * fl as u64
        }
    );
    assert_eq!(journaled, 0);
    assert_eq!((t.pos.frame, t.txid, t.db_pages), (6, 1, 7));
    assert!(!t.has_pending());
    assert_eq!(t.frame_of(5), Some(4));
    // What follows is captured as usual.
    t.start_collecting(0);
    let s = t.scan(w.file.as_file(), 30, usize::MAX).unwrap();
    assert_eq!(
        s,
        Scan::Progress {
            commits: 1,
            more: false
        }
    );
    assert_eq!(t.take_segment().unwrap().0.first_txid, 1);
}
