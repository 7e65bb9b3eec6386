//! Litestream's command lines as written: Go's flag package takes `-name` for a long flag
//! (`-config`, `-if-db-not-exists`, `-timestamp`), where clap reads `-c onfig`. Before
//! parsing, a single-dash word that names one of walship's long flags becomes `--name`;
//! anything else is left for clap. Never changes a value or what follows `--`.

use clap::CommandFactory;
use std::collections::BTreeSet;
use std::ffi::OsString;

/// Every long flag name any subcommand takes.
fn long_names() -> BTreeSet<String> {
    fn walk(c: &clap::Command, out: &mut BTreeSet<String>) {
        for a in c.get_arguments() {
            if let Some(l) = a.get_long() {
                out.insert(l.to_string());
            }
            for l in a.get_all_aliases().into_iter().flatten() {
                out.insert(l.to_string());
            }
        }
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&super::Cli::command(), &mut out);
    out.insert("help".into());
    out.insert("version".into());
    out
}

/// `args` (program name first) with Go-style `-name` and `-name=value` long flags written
/// as clap's `--name`.
pub fn rewrite(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let known = long_names();
    let mut out = Vec::new();
    let mut rest = false;
    for a in args {
        if rest {
            out.push(a);
            continue;
        }
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(a);
            continue;
        }
        let go_long = s
            .strip_prefix('-')
            .filter(|r| !r.starts_with('-') && r.len() > 1)
            .filter(|r| known.contains(r.split('=').next().unwrap_or("")));
        match go_long {
            Some(r) => out.push(format!("--{r}").into()),
            None => out.push(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(v: &[&str]) -> Vec<String> {
        rewrite(v.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn litestreams_flags_become_long_flags() {
        assert_eq!(
            rw(&[
                "walship",
                "restore",
                "-if-db-not-exists",
                "-if-replica-exists",
                "/data/db"
            ]),
            [
                "walship",
                "restore",
                "--if-db-not-exists",
                "--if-replica-exists",
                "/data/db"
            ]
        );
        assert_eq!(
            rw(&["walship", "replicate", "-config", "/etc/l.yml"]),
            ["walship", "replicate", "--config", "/etc/l.yml"]
        );
        assert_eq!(
            rw(&[
                "walship",
                "restore",
                "-timestamp=2026-01-01T00:00:00Z",
                "-o",
                "/x"
            ]),
            [
                "walship",
                "restore",
                "--timestamp=2026-01-01T00:00:00Z",
                "-o",
                "/x"
            ]
        );
    }

    #[test]
    fn short_flags_values_and_after_double_dash_are_left_alone() {
        assert_eq!(
            rw(&[
                "walship", "restore", "-o/tmp/x", "-c", "f.yml", "--", "-config"
            ]),
            [
                "walship", "restore", "-o/tmp/x", "-c", "f.yml", "--", "-config"
            ]
        );
        // Not one of walship's long flags: clap reports it as it always did.
        assert_eq!(rw(&["walship", "-nosuchflag"]), ["walship", "-nosuchflag"]);
    }
}
