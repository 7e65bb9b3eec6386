//! Helpers shared by the integration tests: the walship binary as a child process, the
//! Python writer (the "application"), replica backends (file:// and the real S3 server the
//! test script started), a private SeaweedFS for outage tests, and database comparison.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(walship_bin())
            .arg("replicate")
            .arg(db)
            .arg(&backend.url)
            .args(&backend.flags)
            .args(extra)
            .envs(backend.env.iter().cloned())
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

/// The writer's content hash of a database (`writer.py --hash`): the same value it records
/// after each commit with `--record`.
pub fn content_hash(db: &Path) -> String {
    let o = Command::new("python3")
        .arg(writer_script())
        .arg("--hash")
        .arg(db)
        .output()
        .expect("python3 tests/writer.py --hash");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Create a WAL-mode database with the writer's schema (as the app would on first start).
pub fn create_db(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB, n INTEGER);
         CREATE INDEX IF NOT EXISTS items_k ON items(k);
         CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .unwrap();
}

pub type Rows = Vec<Vec<rusqlite::types::Value>>;

/// Every table's rows, in rowid order (read-only, does not disturb a live WAL).
pub fn dump(path: &Path) -> BTreeMap<String, Rows> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let rows: Rows = st
            .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        out.insert(t, rows);
    }
    out
}

/// Assert two databases hold the same tables with the same rows, and the copy is sound.
#[track_caller]
pub fn assert_same_content(source: &Path, restored: &Path) {
    let (a, b) = (dump(source), dump(restored));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tables differ"
    );
    for (t, rows) in &a {
        let other = &b[t];
        if rows != other {
            let first_diff = rows.iter().zip(other).position(|(x, y)| x != y);
            panic!(
                "table {t}: source has {} rows, restored {}; first differing row index {:?}",
                rows.len(),
                other.len(),
                first_diff
            );
        }
    }
    let c = rusqlite::Connection::open(restored).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "integrity_check of the restored database");
}

/// Sum of file sizes directly in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
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

/// A SeaweedFS of the test's own, so that it can be stopped and started without
/// disturbing other tests. Needs WALSHIP_TEST_WEED (set by tests/run.sh).
pub struct PrivateS3 {
    weed: PathBuf,
    dir: tempfile::TempDir,
    ports: [u16; 4],
    child: Option<Child>,
    pub endpoint: String,
}

pub const PRIVATE_BUCKET: &str = "private";

impl PrivateS3 {
    pub fn start(test: &str) -> Option<Self> {
        let Ok(weed) = std::env::var("WALSHIP_TEST_WEED") else {
            assert!(
                !in_ci(),
                "CI=true but WALSHIP_TEST_WEED is not set: run tests/run.sh"
            );
            eprintln!("SKIP {test}: WALSHIP_TEST_WEED not set (use tests/run.sh)");
            return None;
        };
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let mut s = PrivateS3 {
            weed: weed.into(),
            dir: tempfile::tempdir().unwrap(),
            endpoint: format!("http://127.0.0.1:{}", ports[0]),
            ports,
            child: None,
        };
        std::fs::write(
            s.dir.path().join("s3.json"),
            r#"{"identities":[{"name":"admin","credentials":[{"accessKey":"walship","secretKey":"walship-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}"#,
        )
        .unwrap();
        s.resume();
        Some(s)
    }

    /// Start (again) on the same data directory and wait until it serves the bucket.
    pub fn resume(&mut self) {
        let [s3, master, volume, filer] = self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let child = Command::new(&self.weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!(
                "-s3.config={}",
                self.dir.path().join("s3.json").display()
            ))
            .arg(format!("-bucket={PRIVATE_BUCKET}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        let probe = Backend::s3_at(&self.endpoint, PRIVATE_BUCKET, "ready");
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if walship(&["generations", &probe.url], Some(&probe))
                .status
                .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("private SeaweedFS did not become ready");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP the server: requests hang mid-way, as with a store that stalls.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    pub fn resume_paused(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    pub fn backend(&self, prefix: &str) -> Backend {
        Backend::s3_at(&self.endpoint, PRIVATE_BUCKET, prefix)
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
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

/// A client of the backend's store, independent of walship's, and the replica's prefix.
pub fn object_store_for(
    b: &Backend,
) -> (Box<dyn object_store::ObjectStore>, object_store::path::Path) {
    if let Some(dir) = b.url.strip_prefix("file://") {
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
        return (Box::new(fs), object_store::path::Path::from(""));
    }
    let rest = b.url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    let endpoint = &b.flags[1];
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(&b.env[0].1)
        .with_secret_access_key(&b.env[1].1)
        .build()
        .unwrap();
    (Box::new(s3), object_store::path::Path::from(prefix))
}

/// Every object of the backend's replica (names relative to its root) and its size, read
/// with the test's own client.
pub fn list_objects(b: &Backend) -> BTreeMap<String, u64> {
    let (store, prefix) = object_store_for(b);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::TryStreamExt;
        let all: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let root = prefix.as_ref().to_string();
        all.into_iter()
            .map(|m| {
                let name = m.location.as_ref();
                let rel = if root.is_empty() {
                    name
                } else {
                    name.strip_prefix(&root).unwrap().trim_start_matches('/')
                };
                (rel.to_string(), m.size)
            })
            .collect()
    })
}

/// Write an object into the backend's replica with the test's own client.
/// The store and the full path of `rel` under the backend's prefix.
fn store_and_path(
    b: &Backend,
    rel: &str,
) -> (Box<dyn object_store::ObjectStore>, object_store::path::Path) {
    let (store, prefix) = object_store_for(b);
    let path = if prefix.as_ref().is_empty() {
        object_store::path::Path::from(rel)
    } else {
        object_store::path::Path::from(format!("{}/{rel}", prefix.as_ref()))
    };
    (store, path)
}

pub fn put_object(b: &Backend, rel: &str, bytes: &[u8]) {
    let (store, path) = store_and_path(b, rel);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use object_store::ObjectStoreExt;
        store.put(&path, bytes.to_vec().into()).await.unwrap();
    });
}

pub fn get_object(b: &Backend, rel: &str) -> Vec<u8> {
    let (store, path) = store_and_path(b, rel);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use object_store::ObjectStoreExt;
        let r = store.get(&path).await.unwrap();
        r.bytes().await.unwrap().to_vec()
    })
}

pub fn delete_object(b: &Backend, rel: &str) {
    let (store, path) = store_and_path(b, rel);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use object_store::ObjectStoreExt;
        store.delete(&path).await.unwrap();
    });
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
