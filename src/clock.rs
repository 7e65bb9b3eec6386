//! Wall-clock time in Unix milliseconds, the one source for every time walship writes into
//! object names and compares against retention windows. `WALSHIP_CLOCK_OFFSET` (a signed
//! duration such as `-72h`) shifts it, so tests can simulate days of history in seconds;
//! it is not meant for production use.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub const OFFSET_VAR: &str = "WALSHIP_CLOCK_OFFSET";

fn offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var(OFFSET_VAR)
            .ok()
            .and_then(|v| parse_offset(&v))
            .unwrap_or(0)
    })
}

/// `-72h`, `+90m`, `3d`: a signed humantime duration in milliseconds.
pub fn parse_offset(s: &str) -> Option<i64> {
    let s = s.trim();
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = humantime::parse_duration(rest.trim()).ok()?;
    Some(sign * d.as_millis() as i64)
}

pub fn now_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (real + offset_ms()).max(0) as u64
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: u64) -> String {
    // humantime panics past year 9999 (and SystemTime may overflow): a name or header
    // from a store can carry any number, so say what it is instead.
    if ms > MAX_RFC3339_MS {
        return format!("(unix ms {ms}: past year 9999)");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
pub const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// When the process started (its first call, which `main` makes before anything else):
/// the origin of the exec-to-read-lock figure.
pub fn process_start() -> std::time::Instant {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_with_sign() {
        assert_eq!(parse_offset("-72h"), Some(-72 * 3_600_000));
        assert_eq!(parse_offset("+90m"), Some(90 * 60_000));
        assert_eq!(parse_offset("1s"), Some(1000));
        assert_eq!(parse_offset("soon"), None);
    }
}
