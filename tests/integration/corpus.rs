//! The corpus of real Litestream deployments (tests/corpus/litestream.yml): each public
//! repository's litestream.yml and command lines, run against the S3 server the way that
//! deployment runs them, with only paths, the replica's location, secrets and the
//! application rewritten. Every case must work: init restore on an empty replica, ship,
//! init restore on a fresh volume equal to the source.

use crate::support::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    source: String,
    config: String,
    #[serde(default)]
    rewrite: serde_yaml_ng::Mapping,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// The init restore, in Litestream's words (default: the runbook's form).
    restore: Option<String>,
    /// The sidecar or entrypoint (default: `litestream replicate`).
    replicate: Option<String>,
    /// The application's database, relative to the scratch directory (default: app.db).
    db: Option<String>,
}

fn cases() -> Vec<Case> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/litestream.yml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).expect("corpus parses")
}

/// `$NAME`, `${NAME}` and `"$@"` expanded from `vars`, as the deployment's shell would.
fn shell_expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    let mut keys: Vec<&String> = vars.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for k in keys {
        out = out
            .replace(&format!("${{{k}}}"), &vars[k])
            .replace(&format!("${k}"), &vars[k]);
    }
    out
}

struct Run {
    dir: tempfile::TempDir,
    etc: PathBuf,
    vars: BTreeMap<String, String>,
    env: Vec<(String, String)>,
}

impl Run {
    fn command(&self, line: &str) -> Command {
        let words = shlex::split(&shell_expand(line, &self.vars)).expect("a command line");
        assert_eq!(words[0], "litestream", "{line}: a Litestream command line");
        let mut cmd = Command::new(walship_bin());
        cmd.args(&words[1..])
            .current_dir(self.dir.path())
            .env("WALSHIP_ETC", &self.etc)
            .env("RUST_LOG", "info,object_store=warn")
            .env_remove("LITESTREAM_CONFIG")
            .envs(self.env.iter().cloned());
        cmd
    }

    fn output(&self, line: &str) -> Output {
        self.command(line).output().unwrap()
    }
}

fn run_case(case: &Case, s3: &Backend) {
    let dir = scratch();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let (bucket, _) = s3.url["s3://".len()..].split_once('/').unwrap();
    let db_rel = case.db.clone().unwrap_or("app.db".into());
    let db = dir.path().join(&db_rel);
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "#!/usr/bin/env python3\n# The application -exec starts: one commit, then exit 0.\n\
         import os, sqlite3\nc = sqlite3.connect(os.environ['CORPUS_DB'])\n\
         c.execute('PRAGMA busy_timeout=5000')\n\
         c.execute(\"INSERT INTO counters VALUES ('from-the-app', 1)\")\nc.commit()\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let creds: BTreeMap<&str, &str> = s3
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let ph: Vec<(&str, String)> = vec![
        ("$ENDPOINT", s3.flags[1].clone()),
        ("$PREFIX", format!("corpus-{}-{}", case.name, unique())),
        ("$BUCKET", bucket.to_string()),
        ("$SECRET", creds["AWS_SECRET_ACCESS_KEY"].to_string()),
        ("$KEY", creds["AWS_ACCESS_KEY_ID"].to_string()),
        ("$APP", app.display().to_string()),
        ("$PORT", free_port().to_string()),
        ("$DIR", dir.path().display().to_string()),
        ("$DB", db.display().to_string()),
    ];
    let fill = |s: &str| {
        ph.iter()
            .fold(s.to_string(), |acc, (k, v)| acc.replace(k, v))
    };
    let mut config = case.config.clone();
    let mut lines: Vec<String> = [&case.restore, &case.replicate]
        .iter()
        .filter_map(|l| l.as_ref().cloned())
        .collect();
    for (from, to) in &case.rewrite {
        let (from, to) = (from.as_str().unwrap(), fill(to.as_str().unwrap()));
        let hit = config.contains(from) || lines.iter().any(|l| l.contains(from));
        assert!(hit, "{}: rewrite {from:?} matches nothing", case.name);
        config = config.replace(from, &to);
        lines.iter_mut().for_each(|l| *l = l.replace(from, &to));
    }
    std::fs::write(etc.join("litestream.yml"), &config).unwrap();
    let mut vars: BTreeMap<String, String> =
        case.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
    vars.insert("@".into(), app.display().to_string());
    let mut env: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| k.as_str() != "@")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A config that names no endpoint means AWS; the deployment's AWS is the test server.
    env.push(("AWS_ENDPOINT_URL".into(), s3.flags[1].clone()));
    env.push(("CORPUS_DB".into(), db.display().to_string()));
    let run = Run {
        dir,
        etc,
        vars,
        env,
    };
    let restore_line = case
        .restore
        .as_ref()
        .map(|_| lines[0].clone())
        .unwrap_or(format!(
            "litestream restore -if-db-not-exists -if-replica-exists {}",
            db.display()
        ));
    let replicate_line = case
        .replicate
        .as_ref()
        .map(|_| lines.last().unwrap().clone())
        .unwrap_or("litestream replicate".into());
    let what = |step: &str| format!("{} ({}): {step}", case.name, case.source);

    // First deploy: nothing replicated yet.
    let o = run.output(&restore_line);
    assert_success(&o, &what("init restore on an empty replica"));
    assert!(
        !db.exists(),
        "{}",
        what("nothing to restore, nothing created")
    );

    // The application's databases (all the config lists), then the sidecar.
    let dbs = config_dbs(&shell_expand(&config, &run.vars), run.dir.path());
    assert!(dbs.contains(&db), "{}: {db:?} not in {dbs:?}", case.name);
    for d in &dbs {
        create_db(d);
        run_writer(d, run.dir.path(), &["--tx", "30"]);
    }
    let execs = replicate_line.contains("-exec") || config.contains("exec:");
    let log = run.dir.path().join("replicate.log");
    let mut side = run
        .command(&replicate_line)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    if !execs {
        // A pod deleted: SIGTERM once the first sync is done.
        assert!(
            wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
                log_text().matches("new generation").count() >= dbs.len()
            }),
            "{}: {}",
            what("replicate never started"),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(side.id() as i32, libc::SIGTERM) };
    }
    let until = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = side.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < until,
            "{}: {}",
            what("replicate hangs"),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{}: {st}: {}", what("replicate"), log_text());
    assert!(
        log_text().contains("everything committed was shipped"),
        "{}: {}",
        what("replicate"),
        log_text()
    );
    if execs {
        let c = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM counters WHERE name = 'from-the-app'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{}", what("the -exec application ran once"));
    }

    // A fresh volume: the init container brings every database back equal.
    let sources: Vec<_> = dbs.iter().map(|d| dump(d)).collect();
    for d in &dbs {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", d.display()));
        }
    }
    for (d, want) in dbs.iter().zip(&sources) {
        let line = if *d == db {
            restore_line.clone()
        } else {
            format!(
                "litestream restore -if-db-not-exists -if-replica-exists {}",
                d.display()
            )
        };
        let o = run.output(&line);
        assert_success(&o, &what("init restore on a fresh volume"));
        assert!(
            d.exists() && dump(d) == *want,
            "{}",
            what(&format!("{} restored differs from the source", d.display()))
        );
    }
}

/// The database paths a config lists (its `- path:` lines, variables expanded; relative
/// paths from the scratch directory).
fn config_dbs(config: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in config.lines() {
        if let Some(p) = line.trim().strip_prefix("- path:") {
            let p = p.trim().trim_matches('"');
            out.push(p.to_string());
        }
    }
    out.into_iter()
        .map(|p| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { dir.join(p) }
        })
        .collect()
}

#[test]
fn every_real_litestream_deployment_in_the_corpus_runs() {
    let cases = cases();
    assert!(cases.len() >= 15, "the corpus holds {} cases", cases.len());
    let Some(s3) = Backend::s3("corpus") else {
        return;
    };
    for case in &cases {
        run_case(case, &s3);
        eprintln!("corpus {}: ok ({})", case.name, case.source);
    }
}
