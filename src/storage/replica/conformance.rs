//! The `Replica` contract, run over every kind of store walship meets: file://, an
//! in-memory object_store, and the test S3 server (under CI=true it must be there). Each
//! store must keep what the layers above rely on: never-overwrite puts, compare-and-swap,
//! ranged reads, sorted listings relative to the root, deletes, and multipart uploads that
//! show nothing until finished.

use super::*;
use object_store::memory::InMemory;

fn in_memory() -> Replica {
    Replica {
        store: Arc::new(InMemory::new()),
        root: String::new(),
        url: "memory://".into(),
        conditional_put: AtomicBool::new(true),
        local_dir: None,
        counts: Arc::default(),
    }
}

fn s3() -> Option<Replica> {
    let Ok(endpoint) = std::env::var("WALSHIP_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but WALSHIP_TEST_S3_ENDPOINT is not set: run the suite with tests/run.sh"
        );
        eprintln!("SKIP the S3 conformance run: WALSHIP_TEST_S3_ENDPOINT not set");
        return None;
    };
    let bucket = std::env::var("WALSHIP_TEST_S3_BUCKET").unwrap_or("walship-test".into());
    let mut cfg = ReplicaConfig::from_location(crate::config::Location::S3 {
        bucket,
        prefix: format!(
            "conformance-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ),
    });
    cfg.endpoint = Some(endpoint);
    Some(Replica::open(&cfg, true).unwrap())
}

async fn contract(r: &Replica) {
    let name = r.url().to_string();
    // Never overwrite: the same bytes again are "already present"; others are refused and
    // the first stays.
    let a = Bytes::from_static(b"first object");
    assert_eq!(
        r.put_new("d/a.bin", a.clone()).await.unwrap(),
        PutOutcome::Created,
        "{name}"
    );
    assert_eq!(
        r.put_new("d/a.bin", a.clone()).await.unwrap(),
        PutOutcome::AlreadyPresent,
        "{name}"
    );
    let e = r
        .put_new("d/a.bin", Bytes::from_static(b"other"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Store {
                kind: StoreErrorKind::AlreadyExists,
                ..
            }
        ),
        "{name}: {e}"
    );
    assert_eq!(r.get("d/a.bin").await.unwrap(), a, "{name}");
    assert_eq!(
        &r.get_range("d/a.bin", 6..12).await.unwrap()[..],
        b"object",
        "{name}"
    );
    let missing = r.get("d/none.bin").await.unwrap_err();
    assert!(missing.is_not_found(), "{name}: {missing}");

    // Listings: relative to the root, in name order, with sizes; directories by name.
    r.put_new("d/c.bin", Bytes::from_static(b"ccc"))
        .await
        .unwrap();
    r.put_new("d/b/x.bin", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let l = r.list("d").await.unwrap();
    let names: Vec<(&str, u64)> = l.iter().map(|o| (o.name.as_str(), o.size)).collect();
    assert_eq!(
        names,
        vec![("d/a.bin", 12), ("d/b/x.bin", 1), ("d/c.bin", 3)],
        "{name}"
    );
    assert!(
        l.iter().all(|o| o.modified_ms > 0),
        "{name}: every object says when it was written"
    );
    assert_eq!(
        r.list_dirs("d").await.unwrap(),
        vec!["b".to_string()],
        "{name}"
    );

    // Compare-and-swap: create only if absent, replace only from the version read.
    let s = Duration::from_millis(10);
    let Swap::Done(v1) = r
        .put_versioned("l.json", "1".into(), None, s)
        .await
        .unwrap()
    else {
        panic!("{name}: the first create must succeed");
    };
    assert_eq!(
        r.put_versioned("l.json", "x".into(), None, s)
            .await
            .unwrap(),
        Swap::Conflict
    );
    let (b, v) = r.get_versioned("l.json").await.unwrap().unwrap();
    assert_eq!((&b[..], v.as_str()), (&b"1"[..], v1.as_str()), "{name}");
    assert!(matches!(
        r.put_versioned("l.json", "2".into(), Some(&v1), s)
            .await
            .unwrap(),
        Swap::Done(_)
    ));
    assert_eq!(
        r.put_versioned("l.json", "3".into(), Some(&v1), s)
            .await
            .unwrap(),
        Swap::Conflict,
        "{name}: a stale version must not win"
    );
    assert_eq!(
        &r.get_versioned("l.json").await.unwrap().unwrap().0[..],
        b"2",
        "{name}"
    );
    assert!(
        r.get_versioned("none.json").await.unwrap().is_none(),
        "{name}"
    );

    // A multipart upload shows nothing until finished, and nothing if aborted.
    let mut u = r.upload("big/aborted.bin").await.unwrap();
    u.write(&[7u8; 1000]).await.unwrap();
    u.abort().await;
    let mut u = r.upload("big/done.bin").await.unwrap();
    u.write(&[1u8; 1000]).await.unwrap();
    assert!(
        r.get("big/done.bin").await.unwrap_err().is_not_found(),
        "{name}"
    );
    u.write(&[2u8; 24]).await.unwrap();
    u.finish().await.unwrap();
    let names: Vec<String> = r
        .list("big")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, vec!["big/done.bin".to_string()], "{name}");
    assert_eq!(r.get("big/done.bin").await.unwrap().len(), 1024, "{name}");

    // Deletes, one and many; the listing shows them gone.
    r.delete("d/a.bin").await.unwrap();
    r.delete_many(&["d/c.bin".into(), "d/b/x.bin".into(), "big/done.bin".into()])
        .await
        .unwrap();
    assert!(r.list("d").await.unwrap().is_empty(), "{name}");
    assert!(r.list("big").await.unwrap().is_empty(), "{name}");
    r.delete("l.json").await.unwrap();
}

#[tokio::test]
async fn every_store_keeps_the_replica_contract() {
    let dir = tempfile::tempdir().unwrap();
    let file = Replica::open(
        &ReplicaConfig::from_location(crate::config::Location::File {
            dir: dir.path().join("r"),
        }),
        true,
    )
    .unwrap();
    contract(&file).await;
    contract(&in_memory()).await;
    if let Some(r) = s3() {
        r.check_writable("conformance").await.unwrap();
        assert!(
            r.conditional_writes(),
            "the test server honours conditional writes"
        );
        contract(&r).await;
    }
}
