//! The compare-and-swap of a `file://` replica (object_store's local store has none):
//! versions are checksums of the bytes, and a swap is a rename under `flock`.

use super::*;

pub(super) fn local_version(b: &[u8]) -> String {
    format!("{:08x}-{}", crc32fast::hash(b), b.len())
}

/// file:// compare-and-swap: under an exclusive lock on `<rel>.lock`, compare the file's
/// version, then write a temporary file and rename it over (readers never see a part).
pub(super) fn local_swap(
    dir: &std::path::Path,
    rel: &str,
    bytes: &[u8],
    expect: Option<String>,
) -> Result<Swap> {
    use std::os::fd::AsRawFd;
    let path = dir.join(rel);
    let lock_path = dir.join(format!("{rel}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    // SAFETY: a valid open descriptor; the lock ends when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(&lock_path, std::io::Error::last_os_error()));
    }
    let now = match std::fs::read(&path) {
        Ok(b) => Some(local_version(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&path, e)),
    };
    if now != expect {
        return Ok(Swap::Conflict);
    }
    let tmp = dir.join(format!("{rel}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(Swap::Done(local_version(bytes)))
}
