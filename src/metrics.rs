//! Prometheus metrics (via the official prometheus-client) and the `/metrics` + `/healthz`
//! HTTP endpoint. Owns metric names and help texts; values are pushed by the replicate
//! pipeline, and the lag gauges are refreshed from its state at every scrape.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabel {
    pub db: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub db: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabel {
    pub db: String,
    pub generation: String,
}

/// One replica of a database (its `name`, else its type), for databases with several.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub db: String,
    pub replica: String,
}

type FGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub lag_seconds: Family<DbLabel, FGauge>,
    pub last_sync_seconds: Family<DbLabel, FGauge>,
    pub uploaded_bytes: Family<DbLabel, Counter>,
    pub uploaded_objects: Family<DbLabel, Counter>,
    pub put_requests: Family<DbLabel, Counter>,
    pub transactions: Family<DbLabel, Counter>,
    pub generation: Family<GenerationLabel, Gauge>,
    pub errors: Family<KindLabel, Counter>,
    pub spool_bytes: Family<DbLabel, Gauge>,
    pub replica_up: Family<DbLabel, Gauge>,
    pub checkpoints: Family<KindLabel, Counter>,
    pub validation_ok: Family<DbLabel, Gauge>,
    pub validation_time: Family<DbLabel, FGauge>,
    pub validations: Family<KindLabel, Counter>,
    pub retention_runs: Family<KindLabel, Counter>,
    pub retention_deleted_objects: Family<DbLabel, Counter>,
    pub retention_deleted_bytes: Family<DbLabel, Counter>,
    /// Seconds from walship reading a commit to the replica acknowledging it.
    pub commit_to_ack: Family<DbLabel, Histogram, fn() -> Histogram>,
    /// Seconds from process start to holding the read lock (the window in which an
    /// application checkpoint can reset WAL walship has not read).
    pub read_lock_after_start: Family<DbLabel, FGauge>,
    /// 1 while this walship holds its replica path's lease, 0 once lost.
    pub lease_held: Family<DbLabel, Gauge>,
    pub lease_renewals: Family<KindLabel, Counter>,
    pub lease_takeovers: Family<DbLabel, Counter>,
    /// Per replica, for every SQLite database: lag, reachability, last acknowledgement.
    pub by_replica_lag: Family<ReplicaLabel, FGauge>,
    pub by_replica_up: Family<ReplicaLabel, Gauge>,
    pub by_replica_last_sync: Family<ReplicaLabel, FGauge>,
    /// PostgreSQL streaming: the WAL position received, and the one the store holds.
    pub pg_received_lsn: Family<DbLabel, Gauge>,
    pub pg_stored_lsn: Family<DbLabel, Gauge>,
    pub pg_lag_bytes: Family<DbLabel, Gauge>,
}

/// Buckets of `walship_commit_to_ack_seconds`: the sync interval's range, then outages.
const ACK_BUCKETS: [f64; 12] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 15.0, 60.0, 300.0,
];

fn ack_histogram() -> Histogram {
    Histogram::new(ACK_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("walship");
        let m = Metrics {
            lag_seconds: Family::default(),
            last_sync_seconds: Family::default(),
            uploaded_bytes: Family::default(),
            uploaded_objects: Family::default(),
            put_requests: Family::default(),
            transactions: Family::default(),
            generation: Family::default(),
            errors: Family::default(),
            spool_bytes: Family::default(),
            replica_up: Family::default(),
            lease_held: Family::default(),
            lease_renewals: Family::default(),
            lease_takeovers: Family::default(),
            checkpoints: Family::default(),
            validation_ok: Family::default(),
            validation_time: Family::default(),
            validations: Family::default(),
            retention_runs: Family::default(),
            retention_deleted_objects: Family::default(),
            retention_deleted_bytes: Family::default(),
            commit_to_ack: Family::new_with_constructor(ack_histogram),
            read_lock_after_start: Family::default(),
            by_replica_lag: Family::default(),
            by_replica_up: Family::default(),
            by_replica_last_sync: Family::default(),
            pg_received_lsn: Family::default(),
            pg_stored_lsn: Family::default(),
            pg_lag_bytes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "replication_lag_seconds",
            "Age of the oldest committed transaction not yet acknowledged by the replica (0 when caught up)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last object the replica acknowledged",
            m.last_sync_seconds.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Bytes uploaded to the replica",
            m.uploaded_bytes.clone(),
        );
        registry.register(
            "uploaded_objects",
            "Objects uploaded to the replica",
            m.uploaded_objects.clone(),
        );
        registry.register(
            "put_requests",
            "PUT requests sent to the replica, successful or not",
            m.put_requests.clone(),
        );
        registry.register(
            "transactions_shipped",
            "Transactions acknowledged by the replica",
            m.transactions.clone(),
        );
        registry.register(
            "generation",
            "The generation being written (value is always 1)",
            m.generation.clone(),
        );
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register(
            "pg_received_lsn",
            "PostgreSQL streaming: the WAL position received from the server (as a number)",
            m.pg_received_lsn.clone(),
        );
        registry.register(
            "pg_stored_lsn",
            "PostgreSQL streaming: the WAL position the store holds, reported to the server as flushed",
            m.pg_stored_lsn.clone(),
        );
        registry.register(
            "pg_lag_bytes",
            "PostgreSQL streaming: WAL received but not yet stored",
            m.pg_lag_bytes.clone(),
        );
        registry.register(
            "commit_to_ack_seconds",
            "Seconds from walship reading a committed transaction to the replica acknowledging it",
            m.commit_to_ack.clone(),
        );
        registry.register(
            "read_lock_after_start_seconds",
            "Seconds from process start until walship held its read lock on the database",
            m.read_lock_after_start.clone(),
        );
        registry.register(
            "validation_ok",
            "1 if the last validation (restore to a scratch file and check) passed, else 0",
            m.validation_ok.clone(),
        );
        registry.register(
            "validation_timestamp_seconds",
            "Unix time of the last validation",
            m.validation_time.clone(),
        );
        registry.register(
            "validations",
            "Validations run, by result (ok, failed)",
            m.validations.clone(),
        );
        registry.register(
            "retention_runs",
            "Retention runs, by result (ok, failed)",
            m.retention_runs.clone(),
        );
        registry.register(
            "retention_deleted_objects",
            "Objects deleted by retention",
            m.retention_deleted_objects.clone(),
        );
        registry.register(
            "retention_deleted_bytes",
            "Bytes deleted by retention",
            m.retention_deleted_bytes.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of segments in the local spool waiting for upload",
            m.spool_bytes.clone(),
        );
        registry.register(
            "replica_up",
            "1 when the last request to the replica succeeded",
            m.replica_up.clone(),
        );
        registry.register(
            "lease_held",
            "1 while this walship holds the lease of the database's replica path, 0 once lost",
            m.lease_held.clone(),
        );
        registry.register(
            "lease_renewals",
            "Lease renewals by result (kind=ok, failed: the store did not answer)",
            m.lease_renewals.clone(),
        );
        registry.register(
            "lease_takeovers",
            "Leases taken over from another walship whose lease had expired",
            m.lease_takeovers.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints by walship (kind=walship) and app checkpoints it stepped aside for (kind=app_stepout)",
            m.checkpoints.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Per replica: age of the oldest committed transaction it has not acknowledged",
            m.by_replica_lag.clone(),
        );
        registry.register(
            "replica_reachable",
            "Per replica: 1 when its last request succeeded",
            m.by_replica_up.clone(),
        );
        registry.register(
            "replica_last_sync_timestamp_seconds",
            "Per replica: Unix time of the last object it acknowledged",
            m.by_replica_last_sync.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }

    pub fn error(&self, db: &str, kind: &str) {
        self.errors
            .get_or_create(&KindLabel {
                db: db.into(),
                kind: kind.into(),
            })
            .inc();
    }
}

/// What the HTTP endpoint needs from the running replicator.
pub trait Health: Send + Sync + 'static {
    /// Refresh gauges computed from live state (lag) just before a scrape.
    fn refresh(&self);
    /// `Err(reason)` when the process should be reported unhealthy.
    fn healthy(&self) -> Result<(), String>;
}

/// Several engines' health as one: unhealthy when any part is, naming each reason.
pub struct AllOf(pub Vec<Arc<dyn Health>>);

impl Health for AllOf {
    fn refresh(&self) {
        self.0.iter().for_each(|h| h.refresh());
    }

    fn healthy(&self) -> Result<(), String> {
        let why: Vec<String> = self.0.iter().filter_map(|h| h.healthy().err()).collect();
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

/// The `/healthz` rule: unhealthy when any database (label, Unix ms since which it has
/// been failing, 0 when it is not) has been failing for longer than `limit`; the reason
/// names each, as "<label>: <what> for <n>s".
pub fn failing_too_long<'a>(
    dbs: impl Iterator<Item = (&'a str, u64)>,
    limit: std::time::Duration,
    what: &str,
) -> Result<(), String> {
    let now = crate::clock::now_ms();
    let limit = limit.as_millis() as u64;
    let failing: Vec<String> = dbs
        .filter(|(_, since)| *since != 0 && now.saturating_sub(*since) > limit)
        .map(|(label, since)| format!("{label}: {what} for {}s", now.saturating_sub(since) / 1000))
        .collect();
    if failing.is_empty() {
        Ok(())
    } else {
        Err(failing.join("; "))
    }
}

/// Bind the `/metrics` and `/healthz` address now, so that an address that cannot be
/// bound stops start-up with its name instead of being logged and ignored.
pub async fn bind(addr: SocketAddr) -> crate::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::Refused(format!(
            "cannot serve /metrics and /healthz on {addr} (`addr` / --addr): {e}"
        ))
    })
}

/// `serve` in the background; a failure is logged.
pub fn spawn_endpoint(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
    shutdown: crate::shutdown::Shutdown,
) {
    tokio::spawn(async move {
        let addr = listener.local_addr().ok();
        if let Err(e) = serve(listener, metrics, health, shutdown).await {
            tracing::error!("metrics endpoint {addr:?}: {e}");
        }
    });
}

/// Serve `/metrics` and `/healthz` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
    mut shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and health endpoint listening");
    }
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.begun() => return Ok(()),
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, health) = (metrics.clone(), health.clone());
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics, &*health)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics, health: &dyn Health) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    match req.uri().path() {
        "/metrics" => {
            health.refresh();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            )
        }
        "/healthz" => match health.healthy() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("unhealthy: {why}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
