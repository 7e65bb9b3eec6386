//! Helpers shared by the integration tests: the walship binary as a child process, the
//! Python writer (the "application"), replica backends (file:// and the real S3 server the
//! test script started), a private SeaweedFS for outage tests, and database comparison.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

mod content;
mod http;
mod store;
pub use content::*;
pub use http::*;
pub use store::*;

pub fn walship_bin() -> &'static str {
    env!("CARGO_BIN_EXE_walship")
}

pub fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/writer.py")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub struct Commit {
    pub ms: u64,
    pub hash: String,
}

/// The writer's `--record` file; a torn last line (writer killed) is skipped.
pub fn read_record(path: &Path) -> Vec<Commit> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some(Commit {
                ms: f.first()?.parse().ok()?,
                hash: f.get(2).filter(|h| h.len() == 32)?.to_string(),
            })
        })
        .collect()
}

/// A replica location plus what a walship command needs to reach it.
#[derive(Clone, Debug)]
pub struct Backend {
    pub url: String,
    pub flags: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Backend {
    pub fn file(dir: &Path) -> Self {
        Backend {
            url: format!("file://{}", dir.display()),
            flags: vec![],
            env: vec![],
        }
    }

    /// The shared S3 server started by tests/run.sh, under a fresh prefix. `None` (with a
    /// note) when it is not configured and this is not CI; in CI a missing server fails.
    pub fn s3(test: &str) -> Option<Self> {
        let Ok(endpoint) = std::env::var("WALSHIP_TEST_S3_ENDPOINT") else {
            assert!(
                !in_ci(),
                "CI=true but WALSHIP_TEST_S3_ENDPOINT is not set: run the suite with tests/run.sh"
            );
            eprintln!("SKIP {test} on S3: WALSHIP_TEST_S3_ENDPOINT not set (use tests/run.sh)");
            return None;
        };
        let bucket = std::env::var("WALSHIP_TEST_S3_BUCKET").unwrap_or("walship-test".into());
        Some(Self::s3_at(
            &endpoint,
            &bucket,
            &format!("{test}-{}", unique()),
        ))
    }

    pub fn s3_at(endpoint: &str, bucket: &str, prefix: &str) -> Self {
        Backend {
            url: format!("s3://{bucket}/{prefix}"),
            flags: vec!["--endpoint".into(), endpoint.into()],
            env: s3_credentials(),
        }
    }
}

fn s3_credentials() -> Vec<(String, String)> {
    ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                std::env::var(k).unwrap_or_else(|_| match *k {
                    "AWS_ACCESS_KEY_ID" => "walship".into(),
                    _ => "walship-secret".into(),
                }),
            )
        })
        .collect()
}

/// The `endpoint:` line of a config's `replica:` block (six spaces in), after a newline;
/// empty for file://.
pub fn endpoint_yaml(b: &Backend) -> String {
    b.flags
        .get(1)
        .map_or(String::new(), |e| format!("\n      endpoint: {e}"))
}

pub fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", t & 0xffff_ffff_ffff, std::process::id())
}

/// Run walship to completion.
pub fn walship(args: &[&str], backend: Option<&Backend>) -> Output {
    let mut cmd = Command::new(walship_bin());
    cmd.args(args).env("RUST_LOG", "info,object_store=warn");
    if let Some(b) = backend {
        cmd.args(&b.flags).envs(b.env.iter().cloned());
    }
    cmd.output().expect("run walship")
}

pub fn restore(backend: &Backend, out: &Path) -> Output {
    walship(
        &["restore", "-o", out.to_str().unwrap(), &backend.url],
        Some(backend),
    )
}

/// `walship restore --timestamp TS -o OUT URL`.
pub fn restore_at(backend: &Backend, ts: &str, out: &Path) -> Output {
    restore_ts(backend, ts, out, &[])
}

/// `walship restore --allow-older --timestamp TS -o OUT URL`.
pub fn restore_older_at(backend: &Backend, ts: &str, out: &Path) -> Output {
    restore_ts(backend, ts, out, &["--allow-older"])
}

fn restore_ts(backend: &Backend, ts: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["restore", "--timestamp", ts, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&backend.url);
    walship(&args, Some(backend))
}

/// The init container's restore: `--if-db-not-exists --if-replica-exists -o OUT URL`.
pub fn init_restore(backend: &Backend, out: &Path) -> Output {
    walship(
        &[
            "restore",
            "--if-db-not-exists",
            "--if-replica-exists",
            "-o",
            out.to_str().unwrap(),
            &backend.url,
        ],
        Some(backend),
    )
}

pub fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A running `walship replicate`, logging to a file.
pub struct Replicator {
    child: Child,
    pub log: PathBuf,
    started: Instant,
}

impl Replicator {
    pub fn start(db: &Path, backend: &Backend, extra: &[&str], log: &Path) -> Self {
        let mut args = vec![
            "replicate".to_string(),
            db.to_str().unwrap().to_string(),
            backend.url.clone(),
        ];
        args.extend(backend.flags.iter().cloned());
        args.extend(strs(extra));
        Self::start_with(&args, &backend.env, log)
    }

    /// `walship ARGS` with `env`, logging to `log`.
    pub fn start_with(args: &[String], env: &[(String, String)], log: &Path) -> Self {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(walship_bin())
            .args(args)
            .envs(env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("WALSHIP_TEST_LOG").unwrap_or("info,object_store=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start walship");
        Replicator {
            child,
            log: log.to_path_buf(),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for exit.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        // A signal that lands between spawn and walship's handler registration (the first
        // milliseconds of main) takes the default action, as for any process; the tests
        // check shutdown behaviour, not that window.
        let alive_for = Duration::from_millis(1000);
        if let Some(wait) = alive_for.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!(
                    "walship did not exit within {within:?} of SIGTERM; log: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "walship did not exit within {within:?}; log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var("WALSHIP_TEST_SHOW_LOG").is_ok() {
            eprintln!(
                "--- walship log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The application: tests/writer.py with the given arguments.
pub fn start_writer(db: &Path, args: &[String]) -> Child {
    Command::new("python3")
        .arg(writer_script())
        .arg("--db")
        .arg(db)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 tests/writer.py")
}

/// Run the writer to completion with `args` (its report written into `dir`) and return
/// its JSON report.
pub fn run_writer(db: &Path, dir: &Path, args: &[&str]) -> serde_json::Value {
    let report = dir.join("report.json");
    let mut all = strs(args);
    all.extend(["--report".to_string(), report.to_str().unwrap().to_string()]);
    finish_writer(start_writer(db, &all), &report)
}

/// Wait for the writer and return its JSON report.
pub fn finish_writer(mut w: Child, report: &Path) -> serde_json::Value {
    let status = w.wait().unwrap();
    let mut err = String::new();
    w.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "writer failed: {err}");
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        // weed also binds port+10000 for gRPC.
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// Seconds since `t`, for progress lines.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Poll `f` every `step` until it is true or `limit` passes.
pub fn wait_for(limit: Duration, step: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(step);
    }
    f()
}

/// A scratch directory; with WALSHIP_TEST_KEEP set it is kept (and named) for inspection.
pub fn scratch() -> tempfile::TempDir {
    let mut d = tempfile::tempdir().unwrap();
    if std::env::var("WALSHIP_TEST_KEEP").is_ok() {
        d.disable_cleanup(true);
        eprintln!("keeping {}", d.path().display());
    }
    d
}

/// Small deterministic PRNG (the seed is printed, so a failure can be replayed).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

pub fn seed() -> u64 {
    std::env::var("WALSHIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A scenario run on each backend as two tests, `$file` and `$s3`: the scenario gets the
/// backend and a fresh scratch directory. On file:// the replica is `<scratch>/replica`; on
/// S3 it is a prefix of its own (`$prefix` plus a unique tail) of the shared server, which
/// under CI=true must be there.
macro_rules! on_each_backend {
    ($file:ident, $s3:ident, $prefix:literal, $scenario:expr) => {
        #[test]
        fn $file() {
            let dir = $crate::support::scratch();
            let b = $crate::support::Backend::file(&dir.path().join("replica"));
            ($scenario)(b, dir.path());
        }

        #[test]
        fn $s3() {
            let Some(b) = $crate::support::Backend::s3($prefix) else {
                return;
            };
            let dir = $crate::support::scratch();
            ($scenario)(b, dir.path());
        }
    };
}
pub(crate) use on_each_backend;
