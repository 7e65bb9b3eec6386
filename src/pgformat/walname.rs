//! PostgreSQL WAL file names: segments (`TTTTTTTTXXXXXXXXYYYYYYYY`, timeline then segment
//! in uppercase hex, so lexical order is timeline-then-position order), timeline history
//! files (`TTTTTTTT.history`), backup history files and `.partial` segments.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFile {
    Segment {
        timeline: u32,
        log: u32,
        seg: u32,
    },
    Partial {
        timeline: u32,
        log: u32,
        seg: u32,
    },
    History {
        timeline: u32,
    },
    BackupLabel {
        timeline: u32,
        log: u32,
        seg: u32,
        offset: u32,
    },
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u32::from_str_radix(s, 16).ok())
    .flatten()
}

fn seg24(s: &str) -> Option<(u32, u32, u32)> {
    // ASCII first: slicing a name with a multibyte character at 8 or 16 would panic.
    (s.len() == 24 && s.is_ascii()).then_some(())?;
    Some((hex8(&s[..8])?, hex8(&s[8..16])?, hex8(&s[16..])?))
}

impl WalFile {
    /// A file name as Postgres passes it (`%f`), or `None` for anything else (a path, a
    /// temporary file), so that walship never archives under a name it invented.
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some(t) = name.strip_suffix(".history") {
            return Some(WalFile::History { timeline: hex8(t)? });
        }
        if let Some(s) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = seg24(s)?;
            return Some(WalFile::Partial { timeline, log, seg });
        }
        if let Some(s) = name.strip_suffix(".backup") {
            let (s, off) = s.split_once('.')?;
            let (timeline, log, seg) = seg24(s)?;
            return Some(WalFile::BackupLabel {
                timeline,
                log,
                seg,
                offset: hex8(off)?,
            });
        }
        let (timeline, log, seg) = seg24(name)?;
        Some(WalFile::Segment { timeline, log, seg })
    }

    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::History { timeline }
            | WalFile::BackupLabel { timeline, .. } => timeline,
        }
    }
}

impl std::fmt::Display for WalFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WalFile::Segment { timeline, log, seg } => {
                write!(f, "{timeline:08X}{log:08X}{seg:08X}")
            }
            WalFile::Partial { timeline, log, seg } => {
                write!(f, "{timeline:08X}{log:08X}{seg:08X}.partial")
            }
            WalFile::History { timeline } => write!(f, "{timeline:08X}.history"),
            WalFile::BackupLabel {
                timeline,
                log,
                seg,
                offset,
            } => write!(f, "{timeline:08X}{log:08X}{seg:08X}.{offset:08X}.backup"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzzing): a multibyte character where a name is sliced panicked.
    #[test]
    fn names_with_multibyte_characters_are_refused() {
        for n in [
            "0000000日00000000000003",
            "000000010000000日000003",
            "0000000日00000000000003.partial",
            "0000000日.history",
            "000000010000000000000002.000000日.backup",
        ] {
            assert_eq!(WalFile::parse(n), None, "{n}");
        }
    }

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for n in [
            "000000010000000000000003",
            "0000000A00000001000000FF",
            "00000002.history",
            "000000010000000000000004.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            let w = WalFile::parse(n).unwrap_or_else(|| panic!("{n}"));
            assert_eq!(w.to_string(), n);
        }
        assert_eq!(
            WalFile::parse("0000000A00000001000000FF")
                .unwrap()
                .timeline(),
            10
        );
        for n in [
            "pg_wal/000000010000000000000003",
            "00000001000000000000000g",
            "0000000100000000000000030",
            "xlogtemp.123",
            "00000002.History",
            "",
        ] {
            assert_eq!(WalFile::parse(n), None, "{n}");
        }
    }
}
