//! The restore rule (docs/RESTORE.md) on a replica with two generations, file:// and S3:
//! exactly the state asked for, or a non-zero exit naming what is missing; `--allow-older`
//! restores the nearest older state and says so. Cases from the "never silently wrong"
//! issue: the newest generation's snapshot missing (2), every snapshot missing (3, the init
//! container too), a target between generations (4), and bad manifests (6).

use crate::support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Generation A (the first start), then, while walship was down, more commits and a
/// TRUNCATE checkpoint (continuity lost), a pause, and generation B.
struct TwoGenerations {
    db: PathBuf,
    /// The database content when A ended, and at the end.
    at_a_end: BTreeMap<String, Rows>,
    at_end: BTreeMap<String, Rows>,
    a: String,
    b: String,
    /// A's last commit and B's first snapshot (Unix ms, from the object names).
    a_end_ms: u64,
    b_start_ms: u64,
}

fn keys(backend: &Backend) -> Vec<String> {
    list_objects(backend).into_keys().collect()
}

fn hex_ms(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

fn two_generations(backend: &Backend, dir: &Path) -> TwoGenerations {
    let db = dir.join("app.db");
    create_db(&db);
    let write = |seed: u32| {
        let d = dir.join(format!("w{seed}"));
        std::fs::create_dir_all(&d).unwrap();
        run_writer(
            &db,
            &d,
            &["--tx", "40", "--seed", &seed.to_string(), "--rate", "300"],
        );
    };
    let log = dir.join("walship.log");
    let rep = Replicator::start(&db, backend, &["--sync-interval", "200ms"], &log);
    std::thread::sleep(Duration::from_millis(600));
    write(1);
    std::thread::sleep(Duration::from_millis(400));
    write(2);
    assert!(rep.terminate(Duration::from_secs(30)).success());
    let at_a_end = dump(&db);
    // walship is down: commits it never sees, and the WAL reset under it.
    write(3);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(1500));
    let rep = Replicator::start(&db, backend, &["--sync-interval", "200ms"], &log);
    std::thread::sleep(Duration::from_millis(600));
    write(4);
    assert!(rep.terminate(Duration::from_secs(30)).success());
    let at_end = dump(&db);
    let all = keys(backend);
    let gens: std::collections::BTreeSet<String> = all
        .iter()
        .filter_map(|k| k.strip_prefix("generations/"))
        .filter_map(|k| k.split('/').next())
        .map(String::from)
        .collect();
    let gens: Vec<String> = gens.into_iter().collect();
    assert_eq!(gens.len(), 2, "expected two generations: {all:?}");
    let (a, b) = (gens[0].clone(), gens[1].clone());
    let a_end_ms = all
        .iter()
        .filter(|k| k.starts_with(&format!("generations/{a}/wal/")))
        .map(|k| {
            let stem = k.rsplit('/').next().unwrap().trim_end_matches(".seg");
            hex_ms(stem.rsplit('-').next().unwrap())
        })
        .max()
        .expect("A has segments");
    let b_start_ms = all
        .iter()
        .filter(|k| k.starts_with(&format!("generations/{b}/snapshots/")))
        .map(|k| {
            let stem = k.rsplit('/').next().unwrap().trim_end_matches(".snap");
            hex_ms(stem.rsplit('-').next().unwrap())
        })
        .min()
        .expect("B has a snapshot");
    assert!(b_start_ms > a_end_ms + 1000, "{a_end_ms} {b_start_ms}");
    TwoGenerations {
        db,
        at_a_end,
        at_end,
        a,
        b,
        a_end_ms,
        b_start_ms,
    }
}

fn rfc3339(ms: u64) -> String {
    walship::clock::rfc3339(ms)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_refused(o: &Output, out: &Path, wants: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {e}");
    for w in wants {
        assert!(e.contains(w), "stderr lacks {w:?}: {e}");
    }
    assert!(!out.exists(), "a refused restore wrote {}", out.display());
}

fn restore_older(backend: &Backend, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["restore", "--allow-older", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&backend.url);
    walship(&args, Some(backend))
}

fn scenario(backend: &Backend, dir: &Path) {
    let f = two_generations(backend, dir);
    let out = dir.join("restored.db");
    // Untouched: the newest state is B's end, equal to the source.
    assert_success(&restore(backend, &out), "restore");
    assert_eq!(dump(&out), f.at_end);
    assert_eq!(dump(&out), dump(&f.db));
    std::fs::remove_file(&out).unwrap();

    // Case 5: a dead end (a longer segment nothing continues, as a second writer on the
    // path leaves) must not hide the complete chain through shorter ones.
    let segs: Vec<(u64, u64, u64, u64, String)> = keys(backend)
        .into_iter()
        .filter(|k| k.starts_with(&format!("generations/{}/wal/", f.b)))
        .map(|k| {
            let stem = k.rsplit('/').next().unwrap().trim_end_matches(".seg");
            let p: Vec<u64> = stem.split('-').map(hex_ms).collect();
            (p[0], p[1], p[2], p[3], k)
        })
        .collect();
    let k = segs
        .windows(2)
        .position(|w| w[1].1 > w[1].0)
        .expect("a segment followed by one of several transactions");
    let (a0, _, t0, _, ref key) = segs[k];
    let (b0, _, tb, _, _) = segs[k + 1];
    let dead = format!(
        "generations/{}/wal/{a0:016x}-{b0:016x}-{t0:012x}-{tb:012x}.seg",
        f.b
    );
    put_object(backend, &dead, &get_object(backend, key));
    assert_success(&restore(backend, &out), "restore past a dead end");
    assert_eq!(dump(&out), f.at_end);
    std::fs::remove_file(&out).unwrap();
    delete_object(backend, &dead);

    // Case 4: a time between A's end and B's first snapshot. Commits were made then that
    // no object holds: an error with both nearest instants; the earlier with the opt-in.
    let t = rfc3339((f.a_end_ms + f.b_start_ms) / 2);
    let o = restore_at(backend, &t, &out);
    assert_refused(
        &o,
        &out,
        &[
            "cannot be restored exactly",
            &rfc3339(f.a_end_ms),
            &rfc3339(f.b_start_ms),
            "--allow-older",
        ],
    );
    let o = restore_older(backend, &out, &["--timestamp", &t]);
    assert_success(&o, "restore --timestamp --allow-older");
    assert!(stderr(&o).contains("older state"), "{}", stderr(&o));
    assert_eq!(
        dump(&out),
        f.at_a_end,
        "the nearest earlier point is A's end"
    );
    std::fs::remove_file(&out).unwrap();
    // At A's last commit exactly, and at B's snapshot: exact, no opt-in needed.
    assert_success(
        &restore_at(backend, &rfc3339(f.a_end_ms), &out),
        "at A's end",
    );
    assert_eq!(dump(&out), f.at_a_end);
    std::fs::remove_file(&out).unwrap();

    // Case 6: B's manifest damaged in each way, then missing: refused by name.
    let manifest = format!("generations/{}/manifest.json", f.b);
    let newer = br#"{"format": 9, "engine": "sqlite", "page_size": 4096}"#;
    for (bytes, want) in [
        (&b"{\"format\": 1, \"eng"[..], "not valid JSON"),
        (&b""[..], "manifest is empty"),
        (&newer[..], "format 9 is newer than this walship reads"),
    ] {
        put_object(backend, &manifest, bytes);
        let o = restore(backend, &out);
        assert_refused(&o, &out, &[&manifest, want, "cannot be assembled"]);
        let v = walship(&["verify", &backend.url], Some(backend));
        assert!(!v.status.success(), "verify passed a bad manifest");
    }
    delete_object(backend, &manifest);
    let o = restore(backend, &out);
    assert_refused(&o, &out, &[&manifest, "is missing"]);
    let o = restore_older(backend, &out, &[]);
    assert_success(&o, "restore --allow-older (manifest missing)");
    assert_eq!(dump(&out), f.at_a_end);
    std::fs::remove_file(&out).unwrap();

    // Case 2: B's manifest back, its snapshots gone; its segments remain. It used to
    // restore A's state with exit 0, and verify said ok.
    put_object(
        backend,
        &manifest,
        format!(
            r#"{{"format":1,"engine":"sqlite","page_size":4096,"created":"x","created_ms":1,
            "host":"h","database":"d","parent":"{}","reason":"test"}}"#,
            f.a
        )
        .as_bytes(),
    );
    assert_success(&restore(backend, &out), "manifest restored");
    assert_eq!(dump(&out), f.at_end);
    std::fs::remove_file(&out).unwrap();
    let snaps: Vec<String> = keys(backend)
        .into_iter()
        .filter(|k| k.ends_with(".snap"))
        .collect();
    for k in snaps.iter().filter(|k| k.contains(&f.b)) {
        delete_object(backend, k);
    }
    let o = restore(backend, &out);
    let gen_b = format!("generation {}", f.b);
    assert_refused(
        &o,
        &out,
        &[
            &gen_b,
            "no snapshot",
            "snapshots are missing",
            "--allow-older",
        ],
    );
    let v = walship(&["verify", &backend.url], Some(backend));
    assert_eq!(v.status.code(), Some(1), "verify: {}", stderr(&v));
    assert!(
        stderr(&v).contains("snapshots are missing"),
        "{}",
        stderr(&v)
    );
    // The init container fails the pod rather than start on A's old state.
    let o = init_restore(backend, &out);
    assert_refused(&o, &out, &["snapshots are missing"]);
    let o = restore_older(backend, &out, &[]);
    assert_success(&o, "restore --allow-older (snapshot missing)");
    assert!(stderr(&o).contains("behind"), "{}", stderr(&o));
    assert_eq!(dump(&out), f.at_a_end);
    std::fs::remove_file(&out).unwrap();

    // Case 3: every snapshot gone, segments remain. The init container used to say "no
    // snapshot yet" and start the app on an empty database.
    for k in snaps.iter().filter(|k| k.contains(&f.a)) {
        delete_object(backend, k);
    }
    let o = init_restore(backend, &out);
    assert_refused(&o, &out, &["snapshots are missing", "cannot be assembled"]);
    let o = restore_older(backend, &out, &[]);
    assert_refused(&o, &out, &["no older generation can be restored"]);
}

on_each_backend!(
    restore_rule_file,
    restore_rule_s3,
    "restorerule",
    |b: Backend, dir: &Path| scenario(&b, dir)
);

/// The init container skips a replica whose only generation has a manifest and no
/// snapshot yet (a replicator that died uploading its first snapshot left nothing
/// committed to restore; waiting for it would keep the pod from ever starting).
#[test]
fn init_skips_a_generation_still_being_started() {
    let dir = scratch();
    let b = Backend::file(&dir.path().join("replica"));
    std::fs::create_dir_all(dir.path().join("replica")).unwrap();
    put_object(
        &b,
        "generations/01a2340000000000abcd/manifest.json",
        br#"{"format":1,"engine":"sqlite","page_size":4096,"created":"x","created_ms":1,
            "host":"h","database":"d","parent":null,"reason":"first start"}"#,
    );
    let out = dir.path().join("app.db");
    let o = init_restore(&b, &out);
    assert_success(&o, "init restore");
    assert!(!out.exists());
    // A plain restore says why there is nothing.
    let o = restore(&b, &out);
    assert_refused(
        &o,
        &out,
        &["being started", "first snapshot has not landed"],
    );
}
