//! A damaged or missing WAL segment in the middle of the archive: restore names it.

use super::*;

/// Start a restored cluster and wait for the outcome of its recovery: `Ok(hash)` once it
/// promoted, `Err(log)` when the server stopped during recovery (a fatal restore_command).
pub(crate) fn recover(r: &mut Pg, b: &Backend) -> Result<String, String> {
    let mut text = format!(
        "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\narchive_mode = off\n",
        r.port,
        r.root.display()
    );
    text.push('\n');
    let conf_path = r.pgdata.join("postgresql.conf");
    let mut all = std::fs::read_to_string(&conf_path).unwrap();
    if !all.contains(&format!("port = {}", r.port)) {
        all.push_str(&text);
        std::fs::write(&conf_path, all).unwrap();
    }
    let log = r.pgdata.with_extension("log");
    // Without -w: the server may stop before it ever accepts connections.
    let o = as_postgres(
        &Path::new(PG_BIN).join("pg_ctl"),
        &[
            "-D",
            r.pgdata.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-W",
            "start",
        ],
        &b.env,
    )
    .output()
    .unwrap();
    assert!(
        o.status.success(),
        "pg_ctl start: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        r.log()
    );
    r.running = true;
    let pid_file = r.pgdata.join("postmaster.pid");
    let started = Instant::now();
    let mut seen = false;
    while started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(250));
        if r.try_psql("SELECT pg_is_in_recovery()").as_deref() == Some("f") {
            return Ok(r.psql(TABLE_HASH));
        }
        seen |= pid_file.exists();
        let gone = !pid_file.exists() && (seen || started.elapsed() > Duration::from_secs(10));
        if gone && r.try_psql("SELECT 1").is_none() {
            r.running = false;
            return Err(r.log());
        }
    }
    panic!("recovery neither ended nor stopped:\n{}", r.log());
}

/// Archived WAL segments (24 hex digits) by key, in name order.
pub(crate) fn archived_segments(b: &Backend) -> Vec<String> {
    list_objects(b)
        .into_keys()
        .filter(|k| {
            k.contains("/pgwal/")
                && k.rsplit('/')
                    .next()
                    .is_some_and(|n| n.len() == 24 && n.bytes().all(|c| c.is_ascii_hexdigit()))
        })
        .collect()
}

/// Issue "never silently wrong", case 7: a damaged WAL segment in the middle of the
/// archive (a byte flipped, truncated, replaced by the previous segment's object, deleted).
/// `pg-restore` refuses naming the object; a cluster restored before the damage refuses
/// to promote (wal-fetch exits fatally, recovery stops) instead of promoting a truncated
/// history; with the object back, the newest state comes back whole.
pub(crate) fn damaged_middle_segment(mut pg: Pg, b: &Backend, outage: Option<&mut PrivateS3>) {
    start_archiving(&mut pg, b);
    pg.psql("CREATE TABLE t(id serial PRIMARY KEY, v text)");
    insert_batch(&pg, 1);
    pg_backup(&pg, b);
    for i in 2..=6 {
        insert_batch(&pg, i);
        pg.psql("SELECT pg_switch_wal()");
    }
    insert_batch(&pg, 7);
    let final_hash = table_hash(&pg);
    wait_archived(&pg);
    let segs = archived_segments(b);
    assert!(segs.len() >= 6, "{segs:?}");
    let victim = segs[segs.len() - 3].clone();
    let previous = segs[segs.len() - 4].clone();
    let original = get_object(b, &victim);
    let seg_name = victim.rsplit('/').next().unwrap().to_string();

    // A cluster restored while the archive was whole, started only after the damage.
    let restore_into = |name: &str| -> (Pg, Output) {
        let r = pg.sibling(name);
        let o = walship_in(&pg, &["pg-restore", r.pgdata.to_str().unwrap(), &b.url], b);
        (r, o)
    };
    let (mut before_damage, o) = restore_into("before-damage");
    assert_success(&o, "pg-restore (archive whole)");
    let (mut before_outage, o) = restore_into("before-outage");
    assert_success(&o, "pg-restore (archive whole)");

    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    let damages: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("flipped", Some(flipped), "corrupt"),
        (
            "truncated",
            Some(original[..original.len() / 2].to_vec()),
            "corrupt",
        ),
        ("replaced", Some(get_object(b, &previous)), "not 0000"),
        ("deleted", None, "missing from the archive"),
    ];
    for (what, bytes, want) in &damages {
        match bytes {
            Some(bytes) => put_object(b, &victim, bytes),
            None => delete_object(b, &victim),
        }
        let (r, o) = restore_into(&format!("after-{what}"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "pg-restore with a {what} segment: {err}"
        );
        assert!(
            err.contains(&seg_name) && err.contains(want),
            "{what}: {err}"
        );
        assert!(
            !r.pgdata.exists(),
            "{what}: pg-restore left a data directory"
        );
    }
    // The object still deleted: the cluster restored before cannot promote past it.
    let log = recover(&mut before_damage, b).expect_err("promoted without a segment");
    assert!(
        log.contains("could not restore file") && log.contains("exit code 255"),
        "{log}"
    );
    assert!(log.contains("missing from the archive"), "{log}");
    assert!(!log.contains("selected new timeline ID"), "{log}");
    assert!(!log.contains("archive recovery complete"), "{log}");
    // Flipped byte: the same.
    put_object(b, &victim, &damages[0].1.clone().unwrap());
    let log = recover(&mut before_damage, b).expect_err("promoted past a corrupt segment");
    assert!(!log.contains("selected new timeline ID"), "{log}");
    // Whole again: that same cluster recovers to the newest state.
    put_object(b, &victim, &original);
    assert_eq!(recover(&mut before_damage, b).unwrap(), final_hash);
    before_damage.stop();

    // The store unreachable during recovery: wal-fetch retries, then fails fatally; once
    // the store is back, recovery goes on to the newest state.
    if let Some(s3) = outage {
        s3.stop();
        let t = Instant::now();
        let log = recover(&mut before_outage, b).expect_err("promoted while S3 was down");
        assert!(!log.contains("selected new timeline ID"), "{log}");
        assert!(
            t.elapsed() >= Duration::from_secs(5),
            "gave up without retrying"
        );
        s3.resume();
        assert_eq!(recover(&mut before_outage, b).unwrap(), final_hash);
    }
    assert_eq!(restore_and_hash(&pg, b, "whole", None), final_hash);
}

#[test]
fn damaged_middle_segment_file() {
    let Some(pg) = Pg::init("damaged_middle_segment_file") else {
        return;
    };
    let b = file_backend(&pg);
    damaged_middle_segment(pg, &b, None);
}

#[test]
fn damaged_middle_segment_s3() {
    let Some(mut s3) = PrivateS3::start("damaged_middle_segment_s3") else {
        return;
    };
    let Some(pg) = Pg::init("damaged_middle_segment_s3") else {
        return;
    };
    let b = s3.backend("pgdamage");
    damaged_middle_segment(pg, &b, Some(&mut s3));
}
