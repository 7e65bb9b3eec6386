//! Streaming mode (`mode: stream`): the sidecar as a replication client of the server, on
//! a physical slot. Received WAL is cut into chunks (immutable objects named by timeline,
//! segment and byte range, never crossing a segment's end) and the server is told `flush`
//! = the end of the last chunk the store acknowledged, so the slot never releases WAL the
//! store does not hold, and a crash of walship loses nothing: it resumes where the store
//! ends. A completed segment is also stored whole, as archive mode names it. Never reads
//! PGDATA; base backups and retention stay with the sidecar loop (`sidecar::run`).

mod conn;
mod upload;

pub use conn::{Conn, PgError};

use super::sidecar::PgState;
use crate::config::DbConfig;
use crate::error::{Error, Result};
use crate::metrics::{DbLabel, Metrics};
use crate::pgformat::walname::WalFile;
use crate::shutdown::Shutdown;
use crate::storage::Replica;
use crate::storage::layout::{self, GenerationId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use upload::{Shared, Uploader};

/// WAL received but not stored that walship holds in memory before it stops reading (the
/// server's slot keeps the rest: its disk is the spool).
const MAX_PENDING: usize = 64 << 20;
/// A standby status update at least this often (PostgreSQL's own default interval).
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// After a failed session, wait this long first, doubling to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a session that ended waits for its received WAL to be stored before the next
/// one (which starts again where the store ends).
const DRAIN: Duration = Duration::from_secs(30);

/// The connection's settings (the `connection` URL or the PG* variables), with
/// `application_name` defaulting to `walship`: the name `synchronous_standby_names` uses.
pub fn config(db: &DbConfig) -> Result<tokio_postgres::Config> {
    let mut c = super::backup::connection(db.connection.as_deref())?;
    if c.get_application_name().is_none() {
        c.application_name("walship");
    }
    Ok(c)
}

fn where_(cfg: &tokio_postgres::Config) -> String {
    let host = cfg.get_hosts().first().map_or("?".into(), |h| match h {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    });
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

fn pg_err(cfg: &tokio_postgres::Config, what: &str, e: PgError) -> Error {
    Error::Database {
        path: where_(cfg).into(),
        reason: format!("{what}: {e}"),
    }
}

/// What IDENTIFY_SYSTEM says of the server.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub system_identifier: u64,
    pub timeline: u32,
    pub xlogpos: u64,
}

async fn identify(c: &mut Conn) -> std::result::Result<Identity, PgError> {
    let rows = c.query("IDENTIFY_SYSTEM").await?;
    let col = |i: usize| rows.first().and_then(|r| r.get(i).cloned().flatten());
    let bad = || PgError {
        code: None,
        message: "IDENTIFY_SYSTEM answered an unexpected row".into(),
    };
    Ok(Identity {
        system_identifier: col(0).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        timeline: col(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        xlogpos: col(2)
            .and_then(|s| crate::pgformat::lsn::parse_lsn(&s))
            .ok_or_else(bad)?,
    })
}

/// Before anything starts: the server answers a replication connection as the configured
/// user; its identity (the path's generation), and a warning when nothing caps the WAL
/// its slots may hold.
pub async fn preflight(db: &DbConfig) -> Result<Identity> {
    let cfg = config(db)?;
    let mut c = Conn::connect(&cfg)
        .await
        .map_err(|e| pg_err(&cfg, "replication connection", e))?;
    let id = identify(&mut c)
        .await
        .map_err(|e| pg_err(&cfg, "IDENTIFY_SYSTEM", e))?;
    if let Ok(rows) = c.query("SHOW max_slot_wal_keep_size").await
        && rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .as_deref()
            == Some("-1")
    {
        tracing::warn!(target: "walship::postgres::stream", server = %where_(&cfg),
            "max_slot_wal_keep_size is unset (-1): while the store is unreachable the slot keeps \
             WAL without limit and pg_wal can fill the server's disk; set it (docs/POSTGRES.md)");
    }
    Ok(id)
}

/// `SHOW wal_segment_size`'s text (`16MB`) in bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let mult = match unit {
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    let size = n.parse::<u64>().ok()? * mult;
    (size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)).then_some(size)
}

/// The segment holding position `lsn`, and `lsn`'s offset in it.
pub fn segment_of(timeline: u32, lsn: u64, size: u64) -> (WalFile, u32) {
    let n = lsn / size;
    let per_log = (1u64 << 32) / size;
    let f = WalFile::Segment {
        timeline,
        log: (n / per_log) as u32,
        seg: (n % per_log) as u32,
    };
    (f, (lsn % size) as u32)
}

/// Where segment `f` starts.
pub fn segment_start(f: &WalFile, size: u64) -> u64 {
    match *f {
        WalFile::Segment { log, seg, .. } => (u64::from(log) << 32) + u64::from(seg) * size,
        _ => 0,
    }
}

/// The end of the WAL of `timeline` the store holds (whole segments and chunks): where
/// streaming resumes. `None` when it holds none of that timeline.
fn stored_end(g: Option<&crate::catalog::Generation>, timeline: u32, size: u64) -> Option<u64> {
    let g = g?;
    let whole = g.wal.iter().filter_map(|(f, _)| match f {
        WalFile::Segment { timeline: t, .. } if *t == timeline => {
            Some(segment_start(f, size) + size)
        }
        _ => None,
    });
    let chunks = g
        .chunks
        .iter()
        .filter(|(c, _)| c.segment.timeline() == timeline)
        .map(|(c, _)| segment_start(&c.segment, size) + u64::from(c.end));
    whole.chain(chunks).max()
}

/// The streaming unit of one cluster.
pub struct Stream {
    pub db: DbConfig,
    pub replica: Arc<Replica>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<PgState>,
    pub generation: GenerationId,
    pub system_identifier: u64,
}

/// How a session ended.
enum End {
    Stopped,
    /// The server ended the stream (its timeline ended): connect again at once.
    TimelineEnded,
}

impl Stream {
    fn label(&self) -> DbLabel {
        DbLabel {
            db: self.state.label.clone(),
        }
    }

    fn failed(&self, e: &Error) {
        tracing::error!(target: "walship::postgres::stream", db = %self.state.label, "stream: {e}");
        self.metrics.error(&self.state.label, "stream");
        self.state.stream_failed();
    }

    /// Stream until shutdown: a session, and after a failure another, backing off.
    pub async fn run(self, mut stop: Shutdown) {
        let mut wait = RETRY_MIN;
        loop {
            if self.state.lease_lost.lock().unwrap().is_some() {
                return;
            }
            match self.session(&mut stop).await {
                Ok(End::Stopped) => return,
                Ok(End::TimelineEnded) => {
                    wait = RETRY_MIN;
                    continue;
                }
                Err(e) => self.failed(&e),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.begun() => return,
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    async fn session(&self, stop: &mut Shutdown) -> Result<End> {
        let cfg = config(&self.db)?;
        let e = |what: &str| {
            let cfg = cfg.clone();
            let what = what.to_string();
            move |err: PgError| pg_err(&cfg, &what, err)
        };
        let mut c = Conn::connect(&cfg).await.map_err(e("connect"))?;
        let id = identify(&mut c).await.map_err(e("IDENTIFY_SYSTEM"))?;
        if id.system_identifier != self.system_identifier {
            return Err(Error::Refused(format!(
                "the server at {} is now cluster {} but this sidecar streams cluster {} to {}: \
                 one cluster per replica path (restart walship to check the path again)",
                where_(&cfg),
                id.system_identifier,
                self.system_identifier,
                self.replica.url()
            )));
        }
        let size = c
            .query("SHOW wal_segment_size")
            .await
            .map_err(e("SHOW wal_segment_size"))?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| parse_size(&s))
            .ok_or_else(|| {
                pg_err(
                    &cfg,
                    "SHOW wal_segment_size",
                    PgError {
                        code: None,
                        message: "not a WAL segment size".into(),
                    },
                )
            })?;
        let restart_lsn = self.slot(&mut c).await.map_err(e("replication slot"))?;
        if id.timeline > 1 {
            self.history(&mut c, id.timeline).await?;
        }
        let listing = self
            .replica
            .list(&format!(
                "{}/pgwal",
                layout::format_generation_dir(&self.generation)
            ))
            .await?;
        let catalog = crate::catalog::Catalog::of(&listing);
        let g = catalog.generations.get(&self.generation);
        let stored = stored_end(g, id.timeline, size);
        let start = match (stored, restart_lsn) {
            (Some(s), r) if r.is_none_or(|r| r <= s) => s,
            (s, r) => {
                let r = r.unwrap_or(id.xlogpos);
                if let Some(s) = s {
                    self.metrics.error(&self.state.label, "stream_gap");
                    tracing::error!(target: "walship::postgres::stream", db = %self.state.label,
                        stored_to = %fmt_lsn(s), slot_from = %fmt_lsn(r),
                        "WAL between the store's end and the slot's start is gone: restores \
                         cannot cross it until a base backup after it");
                }
                segment_start(&segment_of(id.timeline, r, size).0, size)
            }
        };
        if start > id.xlogpos {
            return Err(Error::Refused(format!(
                "the store holds WAL of timeline {} to {} but the server is only at {}: it is \
                 not the history this path holds",
                id.timeline,
                fmt_lsn(start),
                fmt_lsn(id.xlogpos)
            )));
        }
        let (seg, off) = segment_of(id.timeline, start, size);
        let so_far = if off == 0 {
            Some(Vec::new())
        } else {
            let chunks = g
                .map(|g| super::chunks::of_segment(g, &seg))
                .unwrap_or_default();
            super::chunks::read(&self.replica, &self.generation, seg, false, &chunks)
                .await?
                .and_then(|s| s.joined.filter(|j| j.1 == off).map(|_| s.raw))
                .map(|mut raw| {
                    raw.truncate(off as usize);
                    raw
                })
        };
        let sql = format!(
            "START_REPLICATION SLOT {} PHYSICAL {} TIMELINE {}",
            self.slot_name(),
            fmt_lsn(start),
            id.timeline
        );
        let (mut reader, mut writer) = c
            .start_streaming(&sql)
            .await
            .map_err(e("START_REPLICATION"))?;
        tracing::info!(target: "walship::postgres::stream", db = %self.state.label,
            server = %where_(&cfg), slot = %self.slot_name(), timeline = id.timeline,
            from = %fmt_lsn(start), "streaming WAL");
        self.state.streaming.store(true, Ordering::Relaxed);
        // Connected and streaming; the uploader reports the store's side.
        self.state
            .stream_failing_since_ms
            .store(0, Ordering::Relaxed);
        let shared = Arc::new(Shared::new(start));
        let up = Uploader {
            replica: self.replica.clone(),
            generation: self.generation.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            timeline: id.timeline,
            seg_size: size,
            sync_interval: self.db.sync_interval,
            segment_so_far: so_far,
        };
        let mut task = tokio::spawn(up.run(shared.clone()));
        let result = self.receive(&mut reader, &mut writer, &shared, stop).await;
        // Whatever was received is valid WAL: store it before the next session.
        shared.close();
        let until = match (&result, stop.deadline()) {
            (Ok(End::Stopped), Some(d)) => d.into(),
            _ => tokio::time::Instant::now() + DRAIN,
        };
        if tokio::time::timeout_at(until, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(target: "walship::postgres::stream", db = %self.state.label,
                "WAL received but not stored when the session ended: the slot keeps it and the \
                 next session streams it again");
        }
        let _ = writer.status(shared.received(), shared.stored()).await;
        result
    }

    fn slot_name(&self) -> &str {
        self.db.stream_slot.as_deref().unwrap_or("walship")
    }

    /// Make sure the slot exists (created with RESERVE_WAL); its restart position.
    async fn slot(&self, c: &mut Conn) -> std::result::Result<Option<u64>, PgError> {
        let read = format!("READ_REPLICATION_SLOT {}", self.slot_name());
        let restart = |rows: conn::Rows| {
            rows.first()
                .and_then(|r| r.get(1).cloned().flatten())
                .and_then(|s| crate::pgformat::lsn::parse_lsn(&s))
        };
        let rows = c.query(&read).await?;
        if rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some()
        {
            return Ok(restart(rows));
        }
        let create = format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
            self.slot_name()
        );
        match c.query(&create).await {
            Ok(_) => tracing::info!(target: "walship::postgres::stream", db = %self.state.label,
                slot = %self.slot_name(), "created the physical replication slot"),
            // Created by another session meanwhile.
            Err(e) if e.code.as_deref() == Some("42710") => {}
            Err(e) => return Err(e),
        }
        Ok(restart(c.query(&read).await?))
    }

    /// Store timeline `tli`'s history file before any of its WAL.
    async fn history(&self, c: &mut Conn, tli: u32) -> Result<()> {
        let rows = c
            .query(&format!("TIMELINE_HISTORY {tli}"))
            .await
            .map_err(|e| Error::Database {
                path: self.state.label.clone().into(),
                reason: format!("TIMELINE_HISTORY {tli}: {e}"),
            })?;
        let Some(content) = rows.first().and_then(|r| r.get(1).cloned().flatten()) else {
            return Ok(());
        };
        let f = WalFile::History { timeline: tli };
        super::archive::push_bytes(&self.replica, &self.generation, &f, content.as_bytes())
            .await
            .map(|_| ())
    }

    /// The receive loop: WAL appended for the uploader, keepalives answered at once, a
    /// status update whenever the store acknowledged a chunk (a synchronous commit waits
    /// for it) and every `STATUS_EVERY`. Never waits on the store, except that past
    /// `MAX_PENDING` it stops reading (status updates go on).
    async fn receive(
        &self,
        reader: &mut conn::Reader,
        writer: &mut conn::Writer,
        shared: &Shared,
        stop: &mut Shutdown,
    ) -> Result<End> {
        let wire = |e: PgError| Error::Database {
            path: self.state.label.clone().into(),
            reason: format!("replication stream: {e}"),
        };
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        loop {
            let full = shared.pending_len() >= MAX_PENDING;
            tokio::select! {
                r = reader.next(), if !full => match r.map_err(wire)? {
                    conn::Copied::Data(d) => match conn::parse(d).map_err(wire)? {
                        conn::Streamed::Wal { start, data } => {
                            let at = shared.received();
                            if start != at {
                                return Err(wire(PgError { code: None, message: format!(
                                    "the server sent WAL from {} where {} was expected",
                                    fmt_lsn(start), fmt_lsn(at)) }));
                            }
                            shared.push(&data);
                        }
                        conn::Streamed::Keepalive { reply, .. } => if reply {
                            writer.status(shared.received(), shared.stored()).await.map_err(wire)?;
                        }
                    },
                    conn::Copied::Done => return Ok(End::TimelineEnded),
                },
                _ = shared.acked() => {
                    writer.status(shared.received(), shared.stored()).await.map_err(wire)?;
                }
                _ = status.tick() => {
                    writer.status(shared.received(), shared.stored()).await.map_err(wire)?;
                }
                _ = gauges.tick() => self.gauges(shared),
                _ = stop.begun() => return Ok(End::Stopped),
            }
        }
    }

    fn gauges(&self, shared: &Shared) {
        let l = self.label();
        let (received, stored) = (shared.received(), shared.stored());
        self.metrics
            .pg_received_lsn
            .get_or_create(&l)
            .set(received as i64);
        self.metrics
            .pg_stored_lsn
            .get_or_create(&l)
            .set(stored as i64);
        self.metrics
            .pg_lag_bytes
            .get_or_create(&l)
            .set(received.saturating_sub(stored) as i64);
        self.metrics
            .lag_seconds
            .get_or_create(&l)
            .set(shared.lag().map_or(0.0, |d| d.as_secs_f64()));
    }
}

/// `X/Y`, as PostgreSQL writes positions.
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_segments_and_positions() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("3MB"), None);
        assert_eq!(parse_size("16"), None);
        let size = 16 << 20;
        let (f, off) = segment_of(1, 0x1_0300_0028, size);
        assert_eq!(f.to_string(), "000000010000000100000003");
        assert_eq!(off, 0x28);
        assert_eq!(segment_start(&f, size), 0x1_0300_0000);
        assert_eq!(fmt_lsn(0x1_0300_0028), "1/3000028");
    }
}
