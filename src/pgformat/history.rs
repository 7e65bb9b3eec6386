//! Timeline history files (`<timeline>.history`): each ancestor timeline and the position
//! where the history switched away from it. Pure.

/// A timeline history file's lines (`<parent tli>\t<switch lsn>\t<reason>`); comments and
/// blank lines skipped.
pub fn parse_history(text: &str) -> Result<Vec<(u32, u64)>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let tli = f.next().and_then(|t| t.parse().ok());
        let lsn = f.next().and_then(super::lsn::parse_lsn);
        match (tli, lsn) {
            (Some(t), Some(l)) => out.push((t, l)),
            _ => {
                return Err(format!(
                    "history line {line:?} is not `<timeline> <lsn> ...`"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_parse() {
        let h = "1\t0/3000000\tno recovery target specified\n\n# c\n2\t1/A0\tbefore 2026-11-21\n";
        assert_eq!(
            parse_history(h).unwrap(),
            vec![(1, 0x300_0000), (2, (1 << 32) | 0xA0)]
        );
        assert!(parse_history("x y").unwrap_err().contains("x y"));
    }
}
