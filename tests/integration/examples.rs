//! The Kubernetes examples stay true to the binary: every manifest parses, the ConfigMap's
//! walship.yml is a valid walship config, and every walship container's command line is
//! accepted by walship's own argument parser.

use clap::Parser;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::Path;

fn manifests() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sidecar-examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let v =
                    Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path.display().to_string(), v));
            }
        }
    }
    assert!(!out.is_empty(), "no manifests found in {}", dir.display());
    out
}

fn containers(doc: &Value) -> Vec<&Value> {
    let spec = &doc["spec"]["template"]["spec"];
    let spec = if spec.is_null() {
        &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        spec
    };
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .collect()
}

#[test]
fn sidecar_examples_match_the_binary() {
    let docs = manifests();
    let mut configs = 0;
    for (file, doc) in &docs {
        if doc["kind"] == "ConfigMap"
            && let Some(text) = doc["data"]["walship.yml"].as_str()
        {
            let env = |k: &str| match k {
                "WALSHIP_BUCKET" => Some("bucket".to_string()),
                _ => None,
            };
            let cfg = walship::config::parse(text, &env)
                .unwrap_or_else(|e| panic!("{file}: walship.yml: {e}"));
            assert!(!cfg.dbs.is_empty(), "{file}: no databases");
            configs += 1;
        }
    }
    assert!(configs > 0, "no walship.yml ConfigMap");
    let mut commands = 0;
    for (file, doc) in &docs {
        for c in containers(doc) {
            let Some(cmd) = c["command"].as_sequence() else {
                continue;
            };
            let argv: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
            if argv.first() == Some(&"walship") {
                walship::cli::Cli::try_parse_from(&argv)
                    .unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
                commands += 1;
            }
        }
    }
    assert!(commands > 0, "no walship container found");
}
