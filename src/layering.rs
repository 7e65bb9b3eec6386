//! The layering rules of `src/`, checked: which top-level modules may name which
//! (`crate::<module>` outside test code), and no cycle among them. docs/ARCHITECTURE.md
//! draws the same picture. Reads the sources only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it may never name.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("error", &["*"]),
    ("pgformat", &["*"]),
    ("sqlite", &["*"]),
    ("clock", &["*"]),
    ("policy", &["*"]),
    ("shutdown", &["*"]),
    (
        "format",
        &[
            "storage",
            "catalog",
            "cli",
            "config",
            "postgres",
            "replicate",
            "restore",
            "retention",
            "metrics",
        ],
    ),
    (
        "storage",
        &[
            "catalog",
            "cli",
            "format",
            "metrics",
            "postgres",
            "replicate",
            "restore",
            "retention",
            "sqlite",
        ],
    ),
    (
        "catalog",
        &[
            "cli",
            "postgres",
            "replicate",
            "restore",
            "retention",
            "sqlite",
        ],
    ),
    (
        "restore",
        &["cli", "postgres", "replicate", "retention", "verify"],
    ),
    // The `verify` command sits on restore's steps; restore never needs it.
    (
        "verify",
        &["cli", "postgres", "replicate", "retention", "supervisor"],
    ),
    // Retention plans over the catalog, never over restore's planner: the rule both
    // share (where a restore starts) lives in the catalog.
    (
        "retention",
        &["cli", "postgres", "replicate", "restore", "config"],
    ),
    ("replicate", &["cli", "postgres", "supervisor"]),
    // The engines stand side by side: what both sidecars share is in `sidecar`, below
    // them; PostgreSQL never reaches into SQLite's replicate or restore.
    ("postgres", &["cli", "replicate", "restore", "supervisor"]),
    (
        "sidecar",
        &["cli", "postgres", "replicate", "restore", "supervisor"],
    ),
    ("supervisor", &["cli"]),
    (
        "metrics",
        &["cli", "postgres", "replicate", "restore", "retention"],
    ),
];
/// Floors may name only these.
const FLOOR_MAY: &[&str] = &["error"];

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in sources() {
        // Test-only modules (`mod tests;`, fixtures) are not layers.
        let file = rel.rsplit('/').next().unwrap();
        if file == "tests.rs" || file == "fixtures.rs" {
            continue;
        }
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        if matches!(top, "lib" | "main" | "layering" | "fuzzing") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                out.entry(top.to_string()).or_default().insert(name);
            }
        }
        out.entry(top.to_string()).or_default();
    }
    out
}

#[test]
fn no_forbidden_edge() {
    let g = edges();
    let mut bad = Vec::new();
    for (from, never) in FORBIDDEN {
        for to in g.get(*from).into_iter().flatten() {
            let floor = never == &["*"];
            if (floor && !FLOOR_MAY.contains(&to.as_str())) || never.contains(&to.as_str()) {
                bad.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(bad.is_empty(), "forbidden imports: {bad:?}");
}

#[test]
fn no_cycle_between_modules() {
    let g = edges();
    // Depth-first search for a back edge; the path names the cycle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, &g, &mut Vec::new(), &mut done) {
            panic!("a cycle between modules: {}", c.join(" -> "));
        }
    }
}

/// The `//!` headers' "never touches / imports / names" claims, checked against the code
/// (outside `#[cfg(test)]`): each phrase such a claim uses maps to tokens the file may not
/// hold. A claim in none of these words fails the test, so every such claim is checked.
const NEVER: &[(&str, &[&str])] = &[
    ("object storage", STORE),
    ("storage", STORE),
    ("a store", STORE),
    ("the store", STORE),
    ("the store itself", STORE),
    ("the database's content", &["rusqlite"]),
    ("a server", &["tokio_postgres"]),
    ("a database", &["rusqlite", "crate::sqlite"]),
    ("the spool", &["spool::", "Spool"]),
    ("sqlite units", &["crate::replicate"]),
    ("sqlite", &["crate::sqlite"]),
    ("an engine", &["crate::replicate", "crate::postgres"]),
];
/// Naming the store client (not `Error::Replica`, an error about one).
const STORE: &[&str] = &[
    "Replica::",
    "&Replica",
    "<Replica>",
    "Replica,",
    "Replica}",
    "Replica;",
    "object_store",
];
/// What "never writes" a replica means: none of its write calls.
const REPLICA_WRITES: &[&str] = &[
    ".put_new(",
    ".put_versioned(",
    ".upload(",
    ".delete(",
    ".delete_many(",
];

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out
}

/// Each "never …" clause of a header: the words after "never" up to the clause's end.
fn never_clauses(text: &str) -> Vec<String> {
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    header
        .match_indices("never ")
        .map(|(i, _)| {
            let rest = &header[i + 6..];
            let end = rest.find(['.', ';', ':', '(']).unwrap_or(rest.len());
            let clause = &rest[..end];
            // "never touches storage and never writes a page": two clauses.
            clause
                .split(" and never ")
                .next()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn never_claims_in_headers_hold() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for (file, text) in sources() {
        if file == "layering.rs" || file.ends_with("tests.rs") {
            continue;
        }
        let code = text
            .lines()
            .skip_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let code = code.split("#[cfg(test)]").next().unwrap();
        for clause in never_clauses(&text) {
            let verb = clause.split_whitespace().next().unwrap_or("");
            let object = clause[verb.len()..].trim();
            let tokens: Vec<&str> = match verb {
                "touches" | "imports" | "names" => {
                    // The object may list several things: "a store or a server".
                    let mut t = Vec::new();
                    for part in object.split([',', '`']).flat_map(|p| p.split(" or ")) {
                        let part = part.trim().trim_start_matches("and ").trim();
                        if part.is_empty() {
                            continue;
                        }
                        match NEVER.iter().find(|(w, _)| part == *w || part.ends_with(w)) {
                            Some((_, toks)) => t.extend_from_slice(toks),
                            None if matches!(part, "replicate" | "postgres") => {}
                            None => bad.push(format!("{file}: unchecked claim \"never {clause}\"")),
                        }
                    }
                    t
                }
                "writes" | "reads" if object.contains("replica") || object.contains("store") => {
                    REPLICA_WRITES.to_vec()
                }
                "writes" if object.is_empty() || object.starts_with("or deletes") => {
                    REPLICA_WRITES.to_vec()
                }
                _ => continue,
            };
            checked += 1;
            for t in tokens {
                if code.contains(t) {
                    bad.push(format!("{file}: says \"never {clause}\" but names `{t}`"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(
        checked >= 10,
        "only {checked} claims found: the header parse broke"
    );
}

#[test]
fn a_false_never_claim_is_caught() {
    let text = "//! A module. Never touches object storage.\nuse crate::storage::Replica;\n";
    assert_eq!(never_clauses(text), vec!["touches object storage"]);
    let code = text.lines().skip(1).collect::<String>();
    assert!(NEVER[0].1.iter().any(|t| code.contains(t)));
}
