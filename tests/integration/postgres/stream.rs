//! Streaming mode against a real PostgreSQL 15 with `archive_mode = off`: the sidecar as a
//! replication client (SCRAM on the replication connection), WAL stored as chunks, and
//! PostgreSQL and the sidecar both killed mid-write; a restore of the newest state holds
//! every transaction committed more than `sync-interval` + 1 s before each kill, equal to
//! the source.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const SYNC: Duration = Duration::from_millis(200);

/// Only the replication connection needs the password (psql, the writer and the
/// sidecar's backup session keep trust): SCRAM is what the streaming client must speak.
fn require_scram_for_replication(pg: &Pg) {
    let hba = pg.pgdata.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host replication all 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
}

fn stream_config(pg: &Pg, b: &Backend) -> PathBuf {
    let cfg = pg.root.join("stream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    type: postgres\n    mode: stream\n    connection: postgres://postgres:s3cret@127.0.0.1:{}/postgres\n    replica:\n      url: {}{}\n      sync-interval: {}ms\n      snapshot-interval: 1h\n      retention: 24h\n",
            pg.pgdata.display(),
            pg.port,
            b.url,
            endpoint_yaml(b),
            SYNC.as_millis()
        ),
    )
    .unwrap();
    chown_to_postgres(&cfg);
    cfg
}

/// Inserts rows `from..` one transaction each until told to stop or the server goes;
/// returns each committed id with when its commit returned.
fn writer(
    port: u16,
    from: i64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(i64, Instant)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
            let (client, c) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(c);
            let mut done = Vec::new();
            let mut id = from;
            while !stop.load(Ordering::Relaxed) {
                let v = format!("row {id} {}", "x".repeat((id % 300) as usize));
                match client
                    .execute("INSERT INTO t VALUES ($1, $2)", &[&id, &v])
                    .await
                {
                    Ok(_) => done.push((id, Instant::now())),
                    Err(_) => break,
                }
                id += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            done
        })
    })
}

const UPTO_HASH: &str = "md5(coalesce(string_agg(id || ':' || v, ',' ORDER BY id), ''))";

fn wait_streaming(log: &Path) {
    let ok = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("streaming WAL")
    });
    assert!(
        ok,
        "the sidecar did not start streaming:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `pg-restore` of the newest state into `<root>/<name>`, started until recovery ends:
/// (max id, count, hash of the rows) and what pg-restore printed.
fn restore_newest(pg: &Pg, b: &Backend, name: &str) -> (String, String) {
    let mut r = pg.sibling(name);
    let o = walship_in(pg, &["pg-restore", r.pgdata.to_str().unwrap(), &b.url], b);
    assert_success(&o, &format!("pg-restore {name}"));
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    r.start(&[("archive_mode", "off".into())], &b.env);
    let done = wait_for(Duration::from_secs(90), Duration::from_millis(250), || {
        r.try_psql("SELECT pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert!(done, "{name}: recovery did not finish:\n{}", r.log());
    let got = r.psql(&format!(
        "SELECT coalesce(max(id), 0) || ' ' || count(*) || ' ' || {UPTO_HASH} FROM t"
    ));
    assert!(
        r.log().contains("joined from"),
        "{name}: wal-fetch joined no chunks:\n{}",
        r.log()
    );
    r.stop();
    (got, said)
}

pub(crate) fn stream_survives_kills(mut pg: Pg, b: &Backend) {
    require_scram_for_replication(&pg);
    pg.start(
        &[
            ("wal_level", "replica".into()),
            ("archive_mode", "off".into()),
            ("max_wal_senders", "4".into()),
            ("password_encryption", "scram-sha-256".into()),
        ],
        &b.env,
    );
    pg.psql("ALTER USER postgres PASSWORD 's3cret'");
    pg.psql("CREATE TABLE t(id bigint PRIMARY KEY, v text)");
    let cfg = stream_config(&pg, b);
    let mut next = 1i64;
    let mut rpos = Vec::new();
    for round in 0..2 {
        let log = pg.root.join(format!("stream{round}.log"));
        let mut sidecar = start_sidecar(&pg, b, &cfg, &log, &[]);
        wait_streaming(&log);
        if round == 0 {
            // The base backup, taken once the slot holds its WAL.
            let ok = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("base backup")
            });
            assert!(
                ok,
                "no base backup:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(pg.port, next, stop.clone());
        // A different moment each run.
        let ms = 2500 + (now_ms() % 2500);
        std::thread::sleep(Duration::from_millis(ms));
        let killed = Instant::now();
        pg.stop(); // pg_ctl -m immediate
        sidecar.kill();
        stop.store(true, Ordering::Relaxed);
        let done = w.join().unwrap();
        assert!(
            done.len() > 50,
            "only {} commits before the kill",
            done.len()
        );
        let must = done
            .iter()
            .filter(|(_, t)| *t + SYNC + Duration::from_secs(1) < killed)
            .map(|(id, _)| *id)
            .max()
            .unwrap();
        let name = format!("r{round}");
        let (got, said) = restore_newest(&pg, b, &name);
        // The kill came inside a segment: its WAL is in chunks only, and the restore says so.
        assert!(
            said.contains("joined from streamed chunks"),
            "round {round}: pg-restore did not say it joined chunks: {said}"
        );
        let parts: Vec<&str> = got.split(' ').collect();
        let (max, count): (i64, i64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
        assert!(
            max >= must,
            "round {round}: restored to id {max}, but id {must} was committed more than \
             sync-interval + 1 s before the kill"
        );
        assert_eq!(count, max, "round {round}: restored ids are not 1..={max}");
        // The source, back up after its crash, holds every commit; the restore equals its
        // first `max` rows.
        pg.start(&[], &b.env);
        let source = pg.psql(&format!("SELECT {UPTO_HASH} FROM t WHERE id <= {max}"));
        assert_eq!(
            parts[2], source,
            "round {round}: restored rows differ from the source's"
        );
        // Commits acknowledged to the writer but not restored: how long before the last
        // acknowledged one the restore ends.
        let restored_at = done.iter().find(|(id, _)| *id == max).map(|(_, t)| *t);
        let last_ack = done.last().unwrap().1;
        let rpo = restored_at.map_or(Duration::MAX, |t| last_ack.saturating_duration_since(t));

        eprintln!(
            "stream round {round}: {} commits, killed after {ms} ms, restored to id {max} \
             (needed {must}), RPO {:?}",
            done.len(),
            rpo
        );
        rpos.push(rpo);
        next = pg
            .psql("SELECT coalesce(max(id), 0) + 1 FROM t")
            .parse()
            .unwrap();
    }
    eprintln!("stream: RPO per kill {rpos:?}");
}

on_each_backend_pg!(
    stream_survives_kills_file,
    stream_survives_kills_s3,
    "pg-stream",
    stream_survives_kills
);
