//! Wakes the capture thread when the WAL file is written. inotify is read by the capture
//! thread itself, between scans: while it is not reading, the kernel merges the WAL's
//! identical modify events into one, so wake-ups follow walship's scan rate, not the
//! application's write rate (the `notify` crate's event thread woke on every write and
//! cost about 0.7 s of CPU per minute at 500 transactions/s). Without inotify (other
//! systems, some network filesystems) it degrades to sleeping; the periodic scan remains.

use inotify::{Inotify, WatchMask};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct WalWatch {
    inotify: Option<Inotify>,
    wal: PathBuf,
    watching: bool,
    buf: Vec<u8>,
}

impl WalWatch {
    pub fn new(wal: &Path) -> Self {
        let inotify = Inotify::init()
            .map_err(|e| tracing::warn!("inotify unavailable ({e}); polling the WAL instead"))
            .ok();
        let mut w = WalWatch {
            inotify,
            wal: wal.to_path_buf(),
            watching: false,
            buf: vec![0u8; 4096],
        };
        w.rewatch();
        w
    }

    /// (Re)attach to the WAL file, e.g. after it was replaced.
    pub fn rewatch(&mut self) {
        if let Some(ino) = &mut self.inotify {
            let mask = WatchMask::MODIFY | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF;
            self.watching = ino.watches().add(&self.wal, mask).is_ok();
        }
    }

    /// Wait at most `timeout` for the WAL to change. True when it did (events drained).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let Some(ino) = self.inotify.as_mut().filter(|_| self.watching) else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut pfd = libc::pollfd {
            fd: ino.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if n <= 0 {
            return false;
        }
        let mut changed = false;
        let mut gone = false;
        while let Ok(events) = ino.read_events(&mut self.buf) {
            let mut any = false;
            for ev in events {
                any = true;
                changed = true;
                gone |= ev.mask.intersects(
                    inotify::EventMask::DELETE_SELF
                        | inotify::EventMask::MOVE_SELF
                        | inotify::EventMask::IGNORED,
                );
            }
            if !any {
                break;
            }
        }
        if gone {
            self.watching = false;
            self.rewatch();
        }
        changed
    }
}
