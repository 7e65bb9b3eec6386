//! Parsing a restore target time: RFC 3339 (`2026-11-21T14:02:00Z`, an offset such as
//! `+02:00`, or no zone meaning UTC), a time of day (`14:02`, `14:02:30`: the last such
//! moment in UTC, today or yesterday), or a duration ago (`15m`, `2h30m ago`). Pure: the
//! current time is an argument.

use std::time::{SystemTime, UNIX_EPOCH};

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Split a trailing `±HH:MM` offset off an RFC 3339 time, as seconds east of UTC.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    // Byte-safe: only ASCII text can carry a numeric offset.
    if !s.is_ascii() {
        return None;
    }
    let date_end = s.find(['T', 't', ' '])?;
    let at = s.rfind(['+', '-'])?;
    if at <= date_end {
        return None; // the '-' of the date, not an offset
    }
    let (head, tail) = s.split_at(at);
    let sign = if tail.starts_with('+') { 1 } else { -1 };
    let d = &tail[1..];
    // +HH (PostgreSQL's timestamptz text), +HHMM, +HH:MM.
    let (h, m) = match d.len() {
        2 => (d, "00"),
        4 => (&d[..2], &d[2..]),
        5 if d.as_bytes()[2] == b':' => (&d[..2], &d[3..]),
        _ => return None,
    };
    if !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((head, sign * (h * 3600 + m * 60)))
}

/// Unix milliseconds for `s`, relative forms counted back from `now_ms`.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "cannot read {s:?} as a time: give RFC 3339 (2026-11-21T14:02:00Z), PostgreSQL's \
             text (2026-11-21 14:02:00.123456+00), a UTC time of day (14:02), or a duration \
             ago (15m)"
        )
    };
    if let Some(d) = s.strip_suffix("ago").map(str::trim).or(Some(s))
        && let Ok(d) = humantime::parse_duration(d)
    {
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    let parts: Vec<&str> = s.split(':').collect();
    if (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
    {
        let (h, m): (u64, u64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
        let sec: u64 = parts.get(2).map_or(0, |p| p.parse().unwrap());
        if h > 23 || m > 59 || sec > 59 {
            return Err(bad());
        }
        let day_ms = 86_400_000;
        let today = now_ms - now_ms % day_ms;
        let t = today + (h * 3600 + m * 60 + sec) * 1000;
        return Ok(if t > now_ms { t - day_ms } else { t });
    }
    let (head, offset) = split_offset(s).unwrap_or((s, 0));
    let head = head
        .strip_suffix('Z')
        .or(head.strip_suffix('z'))
        .unwrap_or(head);
    let t = humantime::parse_rfc3339_weak(head).map_err(|_| bad())?;
    let ms = ms_of(t) as i64 - offset * 1000;
    u64::try_from(ms).map_err(|_| bad())
}

pub use crate::clock::rfc3339 as format_ms;

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-22T05:00:00Z
    const NOW: u64 = 1_795_323_600_000;

    #[test]
    fn rfc3339_forms() {
        let want = 1_795_269_720_000; // 2026-11-21T14:02:00Z
        assert_eq!(parse_time("2026-11-21T14:02:00Z", NOW), Ok(want));
        assert_eq!(parse_time("2026-11-21T14:02:00", NOW), Ok(want));
        assert_eq!(parse_time("2026-11-21 14:02:00", NOW), Ok(want));
        assert_eq!(parse_time("2026-11-21T16:02:00+02:00", NOW), Ok(want));
        assert_eq!(parse_time("2026-11-21T09:02:00-05:00", NOW), Ok(want));
        assert_eq!(parse_time("2026-11-21T14:02:00.250Z", NOW), Ok(want + 250));
        assert_eq!(format_ms(want + 250), "2026-11-21T14:02:00.250Z");
    }

    #[test]
    fn time_of_day_is_the_last_such_moment() {
        assert_eq!(parse_time("04:30", NOW), Ok(NOW - 30 * 60_000));
        assert_eq!(parse_time("04:30:15", NOW), Ok(NOW - 30 * 60_000 + 15_000));
        // Later than now today: yesterday.
        assert_eq!(parse_time("14:02", NOW), Ok(1_795_269_720_000));
        assert!(parse_time("25:00", NOW).is_err());
    }

    #[test]
    fn durations_ago() {
        assert_eq!(parse_time("15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("2h 30m ago", NOW), Ok(NOW - 9_000_000));
        assert_eq!(parse_time("1s ago", NOW), Ok(NOW - 1000));
    }

    #[test]
    fn postgres_timestamptz_text() {
        let want = 1_795_269_720_000; // 2026-11-21T14:02:00Z
        assert_eq!(
            parse_time("2026-11-21 14:02:00.123456+00", NOW),
            Ok(want + 123)
        );
        assert_eq!(parse_time("2026-11-21 16:02:00+02", NOW), Ok(want));
        assert_eq!(parse_time("2026-11-21 09:02:00-0500", NOW), Ok(want));
    }

    /// Regression (fuzzing): a multibyte character where the offset would be panicked.
    #[test]
    fn hostile_text_is_an_error_not_a_panic() {
        for s in [
            "ab日12345",
            "日日日日日日日",
            "2026-11-21T14:02:00+日:0",
            "+",
            "T-",
            "T+99:99",
        ] {
            assert!(parse_time(s, NOW).is_err(), "{s:?}");
        }
    }

    /// Regression (fuzzing): a time past year 9999, from an object name, panicked.
    #[test]
    fn times_past_year_9999_are_printed_not_panicked_on() {
        assert!(format_ms(u64::MAX).contains("past year 9999"));
        assert_eq!(
            format_ms(crate::clock::MAX_RFC3339_MS),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn nonsense_is_an_error_that_shows_the_forms() {
        let e = parse_time("yesterday-ish", NOW).unwrap_err();
        assert!(e.contains("yesterday-ish") && e.contains("RFC 3339"), "{e}");
        assert!(parse_time("2026-13-01T00:00:00Z", NOW).is_err());
    }
}
