//! PostgreSQL archiving against a real PostgreSQL 15 (Debian's package) and the real S3
//! server: `wal-push`'s never-overwrite rule, `wal-fetch`'s quiet miss, and a running
//! cluster archiving through `archive_command`. Clusters are created with `initdb` in temp
//! directories and run as the `postgres` user when the suite runs as root.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `cmd` as the unprivileged `postgres` user when running as root (initdb and postgres
/// refuse root), with `env` set explicitly since runuser does not pass everything on.
fn as_postgres(cmd: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(cmd);
        c
    } else {
        let mut c = Command::new(cmd);
        c.envs(env.iter().cloned());
        c
    };
    c.args(args);
    c
}

fn chown_to_postgres(p: &Path) {
    if is_root() {
        let o = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// A throwaway cluster: its own temp directory (owned by `postgres`), a copy of the walship
/// binary that user can execute, a port of its own on 127.0.0.1.
pub struct Pg {
    /// The owner of `root` (a restored cluster lives inside its source's directory).
    _dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub pgdata: PathBuf,
    pub walship: PathBuf,
    pub port: u16,
    running: bool,
}

impl Pg {
    /// `None` (noted) when PostgreSQL 15 is not installed outside CI; in CI it must be.
    pub fn init(test: &str) -> Option<Pg> {
        let initdb = Path::new(PG_BIN).join("initdb");
        if !initdb.exists() {
            assert!(!in_ci(), "CI=true but {} is missing", initdb.display());
            eprintln!("SKIP {test}: PostgreSQL 15 is not installed (tests/run.sh installs it)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("walship-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let walship = root.join("walship");
        std::fs::copy(walship_bin(), &walship).unwrap();
        std::fs::set_permissions(&walship, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_postgres(&root);
        let pgdata = root.join("data");
        let o = as_postgres(
            &initdb,
            &[
                "-D",
                pgdata.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            &[],
        )
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Some(Pg {
            _dir: Some(dir),
            root,
            pgdata,
            walship,
            port: free_port(),
            running: false,
        })
    }

    /// A cluster to be restored into `<root>/<name>` (not created yet).
    pub fn sibling(&self, name: &str) -> Pg {
        Pg {
            _dir: None,
            root: self.root.clone(),
            pgdata: self.root.join(name),
            walship: self.walship.clone(),
            port: free_port(),
            running: false,
        }
    }

    /// Start with extra `postgresql.conf` settings and environment.
    pub fn start(&mut self, conf: &[(&str, String)], env: &[(String, String)]) {
        let mut text = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            self.port,
            self.root.display()
        );
        for (k, v) in conf {
            text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let conf_path = self.pgdata.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path).unwrap();
        all.push_str(&text);
        std::fs::write(&conf_path, all).unwrap();
        let log = self.pgdata.with_extension("log");
        let o = as_postgres(
            &Path::new(PG_BIN).join("pg_ctl"),
            &[
                "-D",
                self.pgdata.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
            env,
        )
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    pub fn psql(&self, sql: &str) -> String {
        let o = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atq",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// `None` while the server does not answer (starting, or gone: see `log`).
    pub fn try_psql(&self, sql: &str) -> Option<String> {
        let o = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atq",
            ])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.pgdata.with_extension("log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_postgres(
                &Path::new(PG_BIN).join("pg_ctl"),
                &[
                    "-D",
                    self.pgdata.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "stop",
                ],
                &[],
            )
            .output();
            self.running = false;
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run the copied walship in the data directory, as Postgres would.
fn walship_in(pg: &Pg, args: &[&str], backend: &Backend) -> Output {
    as_postgres(&pg.walship, args, &backend.env)
        .args(&backend.flags)
        .current_dir(&pg.pgdata)
        .output()
        .unwrap()
}

/// A replica the `postgres` user may write: file:// inside the cluster's directory.
/// A PostgreSQL scenario run on each backend as two tests, `$file` and `$s3`, each with a
/// throwaway cluster of its own: on file:// the replica is a directory the cluster's user
/// owns; on S3 a prefix of its own (`$prefix`) of the shared server.
macro_rules! on_each_backend_pg {
    ($file:ident, $s3:ident, $prefix:literal, $scenario:expr) => {
        #[test]
        fn $file() {
            let Some(pg) = Pg::init(stringify!($file)) else {
                return;
            };
            let b = file_backend(&pg);
            ($scenario)(pg, &b);
        }

        #[test]
        fn $s3() {
            let Some(b) = Backend::s3($prefix) else {
                return;
            };
            let Some(pg) = Pg::init(stringify!($s3)) else {
                return;
            };
            ($scenario)(pg, &b);
        }
    };
}

fn file_backend(pg: &Pg) -> Backend {
    let dir = pg.root.join("replica");
    std::fs::create_dir_all(&dir).unwrap();
    chown_to_postgres(&dir);
    Backend::file(&dir)
}

/// A walship process run as the `postgres` user (through runuser when the suite runs as
/// root); killed when the test ends, however it ends.
struct AsPostgres {
    child: std::process::Child,
    cmdline_tag: String,
}

impl AsPostgres {
    /// SIGTERM to walship itself (runuser would re-raise it on itself and hide walship's
    /// exit code, which it otherwise passes on).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let me = self.child.id().to_string();
        let o = Command::new("pgrep").args(["-P", &me]).output().unwrap();
        let pid = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .map_or(me, str::to_string);
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl AsPostgres {
    /// SIGKILL walship (and runuser around it).
    fn kill(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.cmdline_tag])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < within,
                "walship did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AsPostgres {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &self.cmdline_tag])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Postgres sidecar (`replicate --config` with a `type: postgres` database, running as
/// the cluster's user, sharing its data directory): a base backup at start since the
/// replica has none; a burst of segments that the archiver cannot ship (its command fails,
/// as when the store is slow) is uploaded by the sidecar ahead of it, so once the archiver
/// runs `wal-push` every file is answered from the sidecar's notes without a request;
/// notes go once Postgres is done with them; SIGTERM exits 0; a restore from the
/// sidecar's backup equals the source.
/// A sidecar config for `pg` beside it (`<name>.yml`): metrics on `addr`, a base backup
/// an hour, a day's retention checked every second.
fn sidecar_config(pg: &Pg, b: &Backend, name: &str, addr: &str) -> PathBuf {
    let cfg = pg.root.join(format!("{name}.yml"));
    let endpoint = endpoint_yaml(b);
    std::fs::write(
        &cfg,
        format!(
            "addr: {addr}\ndbs:\n  - path: {}\n    type: postgres\n    connection: postgres://postgres@127.0.0.1:{}/postgres\n    replica:\n      url: {}{endpoint}\n      snapshot-interval: 1h\n      retention: 24h\n      retention-check-interval: 1s\n",
            pg.pgdata.display(),
            pg.port,
            b.url
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    cfg
}

/// `walship replicate --config cfg` (and `extra`) as the `postgres` user, its log in
/// `log_path`.
fn start_sidecar(pg: &Pg, b: &Backend, cfg: &Path, log_path: &Path, extra: &[&str]) -> AsPostgres {
    let log = std::fs::File::create(log_path).unwrap();
    let mut args = vec!["replicate", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = as_postgres(&pg.walship, &args, &b.env)
        .env("RUST_LOG", "walship=debug")
        .stderr(log)
        .spawn()
        .unwrap();
    AsPostgres {
        child,
        cmdline_tag: cfg.display().to_string(),
    }
}

mod archive;
mod backup;
mod cleanup;
mod clusters;
mod damage;
mod sidecar;
mod stream;
#[allow(unused_imports)]
pub(crate) use archive::*;
#[allow(unused_imports)]
pub(crate) use backup::*;
#[allow(unused_imports)]
pub(crate) use cleanup::*;
#[allow(unused_imports)]
pub(crate) use clusters::*;
#[allow(unused_imports)]
pub(crate) use damage::*;
#[allow(unused_imports)]
pub(crate) use sidecar::*;
#[allow(unused_imports)]
pub(crate) use stream::*;
