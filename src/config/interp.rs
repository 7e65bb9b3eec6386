//! `$VAR`, `${VAR}` and `${VAR:-default}` expansion over a parsed YAML tree (so comments and keys
//! are never expanded). Pure: the variables come in as a lookup function, and every
//! undefined variable is reported at once.

use serde_yaml_ng::Value;
use std::collections::BTreeSet;

/// Expand every string scalar of `v` in place. Returns the undefined variable names.
pub fn interpolate(v: &mut Value, lookup: &dyn Fn(&str) -> Option<String>) -> BTreeSet<String> {
    let mut missing = BTreeSet::new();
    walk(v, lookup, &mut missing);
    missing
}

fn walk(v: &mut Value, lookup: &dyn Fn(&str) -> Option<String>, missing: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, lookup, missing);
        }
        Value::Sequence(items) => items.iter_mut().for_each(|i| walk(i, lookup, missing)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, i)| walk(i, lookup, missing)),
        Value::Tagged(t) => walk(&mut t.value, lookup, missing),
        _ => {}
    }
}

/// Expand one string. `$$` is a literal `$`; `$NAME` (a letter or `_`, then letters, digits
/// and `_`) is a reference as in Litestream; any other `$` stays as it is (`$5`).
pub fn expand(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut BTreeSet<String>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push_str(&rest[i..]);
                return out;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (
                lookup(name).filter(|v| default.is_none() || !v.is_empty()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    missing.insert(name.to_string());
                }
            }
            rest = &body[end + 1..];
        } else if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    missing.insert(name.to_string());
                }
            }
            rest = &after[end..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// True for a value that is exactly one variable reference, `${NAME}` or `$NAME`: what a
/// credential key should hold, so that the config names a location and not a secret.
pub fn is_single_reference(s: &str) -> bool {
    s.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .or_else(|| s.strip_prefix('$'))
        .is_some_and(|n| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn ex(s: &str) -> (String, BTreeSet<String>) {
        let mut m = BTreeSet::new();
        (expand(s, &env, &mut m), m)
    }

    #[test]
    fn expands_references_and_defaults() {
        assert_eq!(ex("x-${A}-y").0, "x-alpha-y");
        assert_eq!(ex("${B:-fallback}").0, "fallback");
        assert_eq!(
            ex("${EMPTY:-d}").0,
            "d",
            "empty takes the default, as in sh"
        );
        assert_eq!(ex("${EMPTY}").0, "");
        assert_eq!(ex("cost $5 and $$ and ${A}").0, "cost $5 and $ and alpha");
        assert_eq!(ex("${unterminated").0, "${unterminated");
        assert_eq!(ex("$A/db and $A_x-$A.").0, "alpha/db and -alpha.");
        assert_eq!(ex("$A_x").1.into_iter().collect::<Vec<_>>(), ["A_x"]);
    }

    #[test]
    fn reports_every_missing_variable_once() {
        let mut v: Value =
            serde_yaml_ng::from_str("a: ${X}\nb: [\"${Y}\", \"${X}\"]\nc: {d: \"${A}\"}\n# ${Z}\n")
                .unwrap();
        let missing = interpolate(&mut v, &env);
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), vec!["X", "Y"]);
        assert_eq!(v["c"]["d"], Value::String("alpha".into()));
    }

    #[test]
    fn single_reference_detection() {
        assert!(is_single_reference("${AWS_SECRET_ACCESS_KEY}"));
        assert!(is_single_reference("$S3_ACCESS_ID"));
        assert!(!is_single_reference("$"));
        assert!(!is_single_reference("hunter2"));
        assert!(!is_single_reference("${A}${B}"));
        assert!(!is_single_reference("${A:-x}"));
        assert!(!is_single_reference("${}"));
    }
}
