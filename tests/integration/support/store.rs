//! The object store as a test reads it behind walship's back: listing, reading, damaging
//! and deleting objects, and a private S3 server a test may stop, pause and restart.

use super::*;

/// A SeaweedFS of the test's own, so that it can be stopped and started without
/// disturbing other tests. Needs WALSHIP_TEST_WEED (set by tests/run.sh).
pub struct PrivateS3 {
    weed: PathBuf,
    dir: tempfile::TempDir,
    ports: [u16; 4],
    child: Option<Child>,
    pub endpoint: String,
    _slot: Slot,
}

/// At most this many private servers run at once: each is four processes, and on a
/// two-core CI machine more of them starting together miss their readiness deadline.
const MAX_PRIVATE: usize = 2;
static RUNNING: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

struct Slot;

impl Slot {
    fn take() -> Slot {
        let (n, freed) = &RUNNING;
        let mut n = freed
            .wait_while(n.lock().unwrap(), |n| *n >= MAX_PRIVATE)
            .unwrap();
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (n, freed) = &RUNNING;
        *n.lock().unwrap() -= 1;
        freed.notify_one();
    }
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
        let slot = Slot::take();
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let mut s = PrivateS3 {
            weed: weed.into(),
            dir: tempfile::tempdir().unwrap(),
            endpoint: format!("http://127.0.0.1:{}", ports[0]),
            ports,
            child: None,
            _slot: slot,
        };
        std::fs::write(
            s.dir.path().join("s3.json"),
            r#"{"identities":[{"name":"admin","credentials":[{"accessKey":"walship","secretKey":"walship-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}"#,
        )
        .unwrap();
        // A port free when chosen can be taken by another test before weed binds it:
        // once, start again on fresh ports.
        if !s.try_resume(Duration::from_secs(45)) {
            s.stop();
            s.ports = [free_port(), free_port(), free_port(), free_port()];
            s.endpoint = format!("http://127.0.0.1:{}", s.ports[0]);
            s.resume();
        }
        Some(s)
    }

    /// Start (again) on the same data directory and wait until it serves the bucket.
    pub fn resume(&mut self) {
        if !self.try_resume(Duration::from_secs(60)) {
            let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "private SeaweedFS did not become ready; weed.log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    fn try_resume(&mut self, within: Duration) -> bool {
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
        let until = Instant::now() + within;
        while Instant::now() < until {
            if walship(&["generations", &probe.url], Some(&probe))
                .status
                .success()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
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
