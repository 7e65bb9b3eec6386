//! The Kubernetes examples stay true to the binary: every manifest parses, the ConfigMap's
//! walship.yml is a valid walship config, every walship container's command line is
//! accepted by walship's own argument parser, and the Litestream user's manifest runs: its
//! init container and sidecar arguments, as written, with its /etc/litestream.yml.

use clap::Parser;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::Path;
use std::time::Duration;

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

/// A container's walship command line: `command:` starting with walship, or `args:` given
/// to the walship image (whose entrypoint is walship, as Litestream's image's is litestream).
fn walship_argv(c: &Value) -> Vec<String> {
    let words = |k: &str| -> Vec<String> {
        c[k].as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let cmd = words("command");
    if cmd.first().is_some_and(|w| w == "walship") {
        return cmd;
    }
    let image = c["image"].as_str().unwrap_or("");
    if cmd.is_empty() && image.starts_with("walship") {
        return std::iter::once("walship".to_string())
            .chain(words("args"))
            .collect();
    }
    Vec::new()
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
            let argv = walship_argv(c);
            if !argv.is_empty() {
                walship::cli::Cli::try_parse_from(walship::cli::gostyle::rewrite(
                    argv.iter().map(std::ffi::OsString::from),
                ))
                .unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
                commands += 1;
            }
        }
    }
    assert!(commands > 0, "no walship container found");
}

/// A manifest's resource of `kind` in `file` (one of sidecar-examples/).
fn resource<'a>(docs: &'a [(String, Value)], file: &str, kind: &str) -> &'a Value {
    docs.iter()
        .find(|(f, d)| f.ends_with(file) && d["kind"] == kind)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("{file}: no {kind}"))
}

/// The Litestream user's StatefulSet with only the image changed: the init container's
/// `restore -if-db-not-exists -if-replica-exists /data/db.sqlite3` and the sidecar's
/// `replicate`, run as written with the ConfigMap's litestream.yml at the default path
/// (moved by WALSHIP_ETC) and the Secret's LITESTREAM_* credentials. Only the replica
/// location, the secrets, the volume's mount point and the metrics port are rewritten.
/// Empty replica: nothing restored, exit 0. After the sidecar shipped on SIGTERM, a fresh
/// volume gets the database back equal; a volume with data is left alone.
#[test]
fn litestream_users_manifest_runs_with_only_the_image_changed() {
    use crate::support::*;
    const FILE: &str = "litestream-statefulset.yaml";
    let docs = manifests();
    let config = resource(&docs, FILE, "ConfigMap")["data"]["litestream.yml"]
        .as_str()
        .expect("litestream.yml in the ConfigMap")
        .to_string();
    let secret = resource(&docs, FILE, "Secret")["stringData"].clone();
    let pod = &resource(&docs, FILE, "StatefulSet")["spec"]["template"]["spec"];
    let walship_containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod[*k].as_sequence())
        .flatten()
        .filter(|c| !walship_argv(c).is_empty())
        .collect();
    assert_eq!(walship_containers.len(), 2, "init container and sidecar");
    for c in &walship_containers {
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == "/etc/litestream.yml"),
            "{}: litestream.yml is not at the default path",
            c["name"].as_str().unwrap()
        );
    }
    let (init, sidecar) = (
        walship_argv(walship_containers[0]),
        walship_argv(walship_containers[1]),
    );
    assert_eq!(init[1], "restore");
    assert_eq!(sidecar[1], "replicate");

    let dir = scratch();
    let data = dir.path().join("data");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let s3 = Backend::s3("litestream-manifest");
    let (url, creds) = match &s3 {
        Some(b) => (
            format!("{}?endpoint={}", b.url, b.flags[1]),
            b.env.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        ),
        None => (
            Backend::file(&dir.path().join("replica")).url,
            vec!["unused".into(), "unused".into()],
        ),
    };
    let port = free_port();
    let config = config
        .replace("s3://my-bucket/db.sqlite3", &url)
        .replace("\":9090\"", &format!("\"127.0.0.1:{port}\""))
        .replace("/data/", &format!("{}/", data.display()));
    std::fs::write(etc.join("litestream.yml"), &config).unwrap();
    let keys: Vec<String> = secret
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"]
    );
    let container = |argv: &[String]| {
        let mut cmd = std::process::Command::new(walship_bin());
        cmd.args(
            argv[1..]
                .iter()
                .map(|a| a.replace("/data/", &format!("{}/", data.display()))),
        )
        .env("WALSHIP_ETC", &etc)
        .env("RUST_LOG", "info,object_store=warn")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("LITESTREAM_CONFIG");
        for (k, v) in keys.iter().zip(&creds) {
            cmd.env(k, v);
        }
        cmd
    };
    let db = data.join("db.sqlite3");

    // First deploy: nothing replicated yet, so the app starts empty.
    let o = container(&init).output().unwrap();
    assert_success(&o, "init container on an empty replica");
    assert!(!db.exists(), "nothing to restore: nothing created");

    // The app writes; the sidecar ships; the pod is deleted (SIGTERM).
    create_db(&db);
    let log = dir.path().join("sidecar.log");
    let mut side = container(&sidecar)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    run_writer(&db, dir.path(), &["--tx", "200", "--rate", "400"]);
    let addr = format!("127.0.0.1:{port}");
    assert!(
        wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            std::net::TcpStream::connect(&addr).is_ok()
        }),
        "the sidecar never listened on the config's addr: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(http_get(&addr, "/healthz").contains("200"));
    let source = dump(&db);
    unsafe { libc::kill(side.id() as i32, libc::SIGTERM) };
    let st = side.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "sidecar exit {st}: {text}");
    assert!(
        text.contains("litestream.yml"),
        "the log names the file read: {text}"
    );
    assert!(text.contains("everything committed was shipped"), "{text}");

    // The pod is rescheduled on a fresh volume: the init container brings the data back.
    for f in ["db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let o = container(&init).output().unwrap();
    assert_success(&o, "init container on a fresh volume");
    assert!(
        dump(&db) == source,
        "the restored database differs from the source"
    );

    // A restart on the same volume: left alone.
    let before = std::fs::metadata(&db).unwrap().modified().unwrap();
    assert_success(
        &container(&init).output().unwrap(),
        "init container on a volume with data",
    );
    assert_eq!(std::fs::metadata(&db).unwrap().modified().unwrap(), before);
}
