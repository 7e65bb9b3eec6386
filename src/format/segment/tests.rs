//! Unit tests of `format/segment.rs`.

use super::*;

const PS: u32 = 512;

/// Three frames of a real chain (tx of 2 frames, tx of 1) after `start`.
fn sample() -> (SegmentMeta, SegmentBuilder) {
    let hdr = WalHeader::parse(&WalHeader::encode(true, PS, 9, 11, 12)).unwrap();
    let start = WalPosition::start_of(&hdr, 2);
    let mut b = SegmentBuilder::new(PS);
    let mut c = hdr.cksum;
    for (pgno, commit, fill, ms) in [
        (3, 0, 1u8, None),
        (1, 5, 2, Some(1000)),
        (4, 6, 3, Some(1500)),
    ] {
        let page = vec![fill; PS as usize];
        let (fh, next) = FrameHeader::encode(&hdr, c, pgno, commit, &page);
        c = next;
        b.push(&fh, &page, ms);
    }
    let meta = SegmentMeta {
        page_size: PS,
        first_txid: 41,
        last_txid: 42,
        first_commit_ms: 1000,
        last_commit_ms: 1500,
        frame_count: 3,
        db_pages: 6,
        start,
        end: WalPosition {
            frame: 3,
            cksum: c,
            ..start
        },
    };
    (meta, b)
}

/// A segment whose frames end in one WAL and whose end position is the start of the
/// next, restarted WAL (capture saw the new header before any of its frames).
#[test]
fn end_at_the_start_of_the_next_wal_is_accepted() {
    let (mut meta, mut b) = sample();
    let next = WalHeader::parse(&WalHeader::encode(true, PS, 10, 12, 99)).unwrap();
    meta.end = WalPosition::start_of(&next, 3);
    let seg = Segment::decode(&b.encode(&meta)).unwrap();
    assert_eq!(seg.meta.end, meta.end);
    // Frame 0 of the same WAL, or a later frame of another, is still refused.
    let (mut meta, mut b) = sample();
    meta.end.frame = 0;
    meta.end.cksum = [1, 2];
    assert!(Segment::decode(&b.encode(&meta)).is_err());
    let (mut meta, mut b) = sample();
    meta.end = WalPosition {
        frame: 1,
        ..WalPosition::start_of(&next, 3)
    };
    assert!(Segment::decode(&b.encode(&meta)).is_err());
}

#[test]
fn round_trip() {
    let (meta, mut b) = sample();
    let bytes = b.encode(&meta);
    let seg = Segment::decode(&bytes).unwrap();
    assert_eq!(seg.meta, meta);
    assert_eq!(SegmentMeta::parse_header(&bytes).unwrap(), meta);
    let frames: Vec<_> = seg.frames().collect();
    assert_eq!(frames.len(), 3);
    assert_eq!((frames[0].pgno, frames[0].commit), (3, None));
    assert_eq!((frames[1].pgno, frames[1].commit), (1, Some((5, 1000))));
    assert_eq!((frames[2].pgno, frames[2].commit), (4, Some((6, 1500))));
    assert_eq!(frames[1].page, &[2u8; 512][..]);
}

#[test]
fn header_that_disagrees_with_frames_is_rejected() {
    let (meta, mut b) = sample();
    for bad in [
        SegmentMeta {
            last_txid: 43,
            ..meta
        },
        SegmentMeta {
            last_commit_ms: 1400,
            ..meta
        },
        SegmentMeta {
            end: WalPosition {
                cksum: [1, 2],
                ..meta.end
            },
            ..meta
        },
        SegmentMeta {
            start: WalPosition {
                cksum: [1, 2],
                ..meta.start
            },
            ..meta
        },
    ] {
        assert!(Segment::decode(&b.encode(&bad)).is_err(), "{bad:?}");
    }
}

/// Regression (fuzzing): a segment of no frames whose one commit entry points at
/// frame u32::MAX passed decode (`index + 1` wrapped to the frame count, 0).
#[test]
fn forged_commit_table_without_frames_is_rejected() {
    let (meta, _) = sample();
    let mut b = SegmentBuilder::new(PS);
    b.mark_commit(u32::MAX, 1000);
    let forged = SegmentMeta {
        first_txid: 7,
        last_txid: 7,
        first_commit_ms: 1000,
        last_commit_ms: 1000,
        frame_count: 0,
        end: meta.start,
        ..meta
    };
    let e = Segment::decode(&b.encode(&forged))
        .err()
        .expect("accepted a forged segment");
    assert!(e.contains("commit table"), "{e}");
    // A txid range that wraps u64 is an error too, not an overflow.
    let (meta, mut b) = sample();
    let wrap = SegmentMeta {
        first_txid: 0,
        last_txid: u64::MAX,
        ..meta
    };
    assert!(Segment::decode(&b.encode(&wrap)).is_err());
}

#[test]
fn segment_ending_mid_transaction_is_rejected() {
    let (meta, mut b) = sample();
    let fh = FrameHeader([0u8; 24]);
    b.push(&fh, &[0u8; 512], None);
    assert!(Segment::decode(&b.encode(&meta)).is_err());
}

#[test]
fn sealing_in_chunks_gives_the_same_segment() {
    let hdr = WalHeader::parse(&WalHeader::encode(false, 4096, 1, 2, 3)).unwrap();
    let start = WalPosition::start_of(&hdr, 0);
    let (mut whole, mut sealed) = (SegmentBuilder::new(4096), SegmentBuilder::new(4096));
    let mut c = hdr.cksum;
    for i in 0..700u32 {
        // Pages repeat (every 7th frame rewrites the same page a little differently),
        // some within the delta window and some beyond it.
        let pgno = match i {
            5 | 400 => 5000, // the same page, further apart than the window
            _ if i % 3 == 0 => i % 7 + 1,
            _ => i + 10,
        };
        let mut page = vec![(i % 251) as u8; 4096];
        page[..4].copy_from_slice(&i.to_be_bytes());
        let (fh, next) = FrameHeader::encode(&hdr, c, pgno, i + 1, &page);
        c = next;
        whole.push(&fh, &page, Some(i as u64));
        sealed.push(&fh, &page, Some(i as u64));
        sealed.seal(sealed.frames());
        if i % 97 == 0 {
            // An encode whose segment was not queued (spool full) changes nothing.
            let _ = sealed.encode(&SegmentMeta {
                frame_count: 0,
                ..SegmentMeta::default_for_tests(start)
            });
        }
    }
    assert!(!sealed.sealed.is_empty(), "some chunks were sealed");
    let meta = SegmentMeta {
        page_size: 4096,
        first_txid: 1,
        last_txid: 700,
        first_commit_ms: 0,
        last_commit_ms: 699,
        frame_count: 700,
        db_pages: 700,
        start,
        end: WalPosition {
            frame: 700,
            cksum: c,
            ..start
        },
    };
    let bytes = sealed.encode(&meta);
    assert_eq!(whole.encode(&meta), bytes);
    let seg = Segment::decode(&bytes).unwrap();
    for (i, f) in seg.frames().enumerate() {
        assert_eq!(
            &f.page[..4],
            &(i as u32).to_be_bytes(),
            "frame {i} restored exactly"
        );
    }
}

#[test]
fn truncate_drops_the_unfinished_transaction() {
    let (meta, mut b) = sample();
    let before = b.encode(&meta);
    let tail = b.frames_tail(2);
    tail.fill(7);
    b.truncate(3);
    assert_eq!(b.encode(&meta), before);
}
