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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            // Test-only modules (`mod tests;`, fixtures) are not layers.
            let file = p.file_name().unwrap().to_string_lossy();
            if p.extension().is_none_or(|x| x != "rs")
                || file == "tests.rs"
                || file == "fixtures.rs"
            {
                continue;
            }
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
            if matches!(top, "lib" | "main" | "layering" | "fuzzing") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
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
