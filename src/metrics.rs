//! Prometheus metrics (`--metrics-listen`): per-method request counts by status code and latency
//! histograms, requests in flight, database pool use, the password-hashing queue, audit stream
//! subscribers, transfer jobs and records moved, and the access cache's hit counters.
//!
//! Recording goes through the `metrics` facade into one process-wide Prometheus recorder
//! (`metrics-exporter-prometheus`); `/metrics` is served by axum (already in the tree through
//! tonic). Gauges of things that live elsewhere (pool, queue, cache) are
//! sampled every few seconds.

use std::{
    sync::{OnceLock, atomic::Ordering},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::service::Iam;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets of gRPC calls, seconds (Access.Check lives in the first few).
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS).expect("valid buckets").build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embed several servers): keep it.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Help text and unit of every metric, so each appears in the scrape with `# HELP` (what
/// `promtool check metrics` asks of an exporter). Call after [`install`]; a metric added elsewhere
/// needs its line here (the operations test scrapes and checks that every family has help).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    for &(kind, name, unit, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, unit, help),
            Kind::Gauge => describe_gauge!(name, unit, help),
            Kind::Histogram => describe_histogram!(name, unit, help),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of the service: kind, name, unit, help.
const METRICS: &[(Kind, &str, metrics::Unit, &str)] = {
    use Kind::*;
    use metrics::Unit::{Bytes, Count, Seconds};
    &[
        (Counter, "crm_iam_grpc_requests_total", Count, "gRPC calls answered, by method and status code"),
        (
            Histogram,
            "crm_iam_grpc_request_duration_seconds",
            Seconds,
            "Time to the response head of gRPC calls, by method",
        ),
        (Gauge, "crm_iam_grpc_requests_in_flight", Count, "gRPC calls being served now"),
        (
            Histogram,
            "crm_iam_idp_request_duration_seconds",
            Seconds,
            "Time of crm-iam's HTTP requests to identity providers (single sign-on), by request: token (code exchange) or discovery (document and keys)",
        ),
        (
            Counter,
            "crm_iam_grpc_requests_shed_total",
            Count,
            "gRPC calls refused at once because max_concurrent_requests were in flight",
        ),
        (
            Counter,
            "crm_iam_notifications_sent_total",
            Count,
            "Delivery attempts of notifications, by channel and result (sent, retry, failed)",
        ),
        (
            Histogram,
            "crm_iam_notification_delivery_seconds",
            Seconds,
            "Time from queueing a notification to its delivery, by channel",
        ),
        (Gauge, "crm_iam_notifications_pending", Count, "Notifications queued and not yet delivered"),
        (Gauge, "crm_iam_db_pool_connections", Count, "Database pool connections, by state (open, idle, in_use)"),
        (Gauge, "crm_iam_password_hash_queue_depth", Count, "Password hashing jobs admitted and not yet finished"),
        (
            Counter,
            "crm_iam_password_hash_refused_total",
            Count,
            "Password hashing refused because the hashing queue was full",
        ),
        (
            Histogram,
            "crm_iam_password_hash_wait_seconds",
            Seconds,
            "Time a password hashing job waited for a hashing thread",
        ),
        (Gauge, "crm_iam_audit_stream_subscribers", Count, "Open audit event streams on this replica"),
        (Gauge, "crm_iam_audit_head_seq", Count, "Highest audit event position this replica's stream hub has read"),
        (Gauge, "crm_iam_access_cache_bounded_bytes", Bytes, "Bytes held by the byte-bounded access caches"),
        (Gauge, "crm_iam_access_cache_tenants", Count, "Tenants with an entry in the access cache"),
        (
            Counter,
            "crm_iam_access_cache_lookups_total",
            Count,
            "Access cache lookups, by result (user, owner or profile; hit or miss)",
        ),
        (Counter, "crm_iam_access_policy_loads_total", Count, "Tenant policies compiled from the database"),
        (
            Counter,
            "crm_iam_access_cache_invalidations_total",
            Count,
            "Access cache invalidations applied (local commits and other replicas' notifications)",
        ),
        (Gauge, "crm_iam_transfer_jobs", Count, "Ownership transfer jobs, by state"),
        (
            Counter,
            "crm_iam_transfer_records_moved_total",
            Count,
            "Records moved to new owners by transfer jobs on this replica",
        ),
    ]
};

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, iam: Iam, stop: CancellationToken) -> anyhow::Result<()> {
    use axum::{Router, http::header, response::IntoResponse, routing::get};
    install();
    describe();
    tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics");
    tokio::spawn(sample(iam.clone(), stop.clone()));
    let scrape = async move |axum::extract::State(iam): axum::extract::State<Iam>| {
        // Gauges of other components, current as of this scrape.
        record_gauges(&iam).await;
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], install().render()).into_response()
    };
    let app = Router::new().route("/metrics", get(scrape)).with_state(iam);
    // Connection by connection rather than `axum::serve`, which sets no header timeout: a client
    // that opens connections and never finishes a request would hold each one forever. Here
    // headers must arrive within 5 s, a connection lasts at most 60 s (scrapers reconnect), and
    // at most 64 are open at once (a further one is closed on accept).
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: pause instead of spinning on the error.
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
        });
    }
}

/// Samples gauges whose state lives in other components.
async fn sample(iam: Iam, stop: CancellationToken) {
    let mut ticks = crate::periodic::Ticks::now(Duration::from_secs(5), &stop);
    while ticks.next().await {
        record_gauges(&iam).await;
    }
}

/// Records the sampled gauges now (also used by tests through a scrape).
pub async fn record_gauges(iam: &Iam) {
    let (size, idle) = iam.db.pool_stats();
    metrics::gauge!("crm_iam_db_pool_connections", "state" => "open").set(size as f64);
    metrics::gauge!("crm_iam_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("crm_iam_db_pool_connections", "state" => "in_use").set(size.saturating_sub(idle as u32) as f64);
    metrics::gauge!("crm_iam_password_hash_queue_depth").set(iam.passwords.queue_depth() as f64);
    metrics::gauge!("crm_iam_audit_stream_subscribers").set(iam.audit.subscribers() as f64);
    metrics::gauge!("crm_iam_audit_head_seq").set(iam.audit.head() as f64);
    metrics::gauge!("crm_iam_access_cache_bounded_bytes").set(iam.access.bounded_bytes() as f64);
    metrics::gauge!("crm_iam_access_cache_tenants").set(iam.access.tenant_count() as f64);
    let s = &iam.access.stats;
    for (name, kind, value) in [
        ("crm_iam_access_cache_lookups_total", "user_hit", &s.user_hits),
        ("crm_iam_access_cache_lookups_total", "user_miss", &s.user_misses),
        ("crm_iam_access_cache_lookups_total", "owner_hit", &s.owner_hits),
        ("crm_iam_access_cache_lookups_total", "owner_miss", &s.owner_misses),
        ("crm_iam_access_cache_lookups_total", "profile_hit", &s.profile_hits),
        ("crm_iam_access_cache_lookups_total", "profile_miss", &s.profile_misses),
    ] {
        metrics::counter!(name, "result" => kind).absolute(value.load(Ordering::Relaxed));
    }
    metrics::counter!("crm_iam_access_policy_loads_total").absolute(s.policy_loads.load(Ordering::Relaxed));
    metrics::counter!("crm_iam_access_cache_invalidations_total").absolute(s.invalidations.load(Ordering::Relaxed));
    match iam.pending_notifications().await {
        Ok(n) => metrics::gauge!("crm_iam_notifications_pending").set(n as f64),
        Err(e) => tracing::debug!(error = %e, "notification queue depth unavailable"),
    }
    match iam.transfer_counts().await {
        Ok(counts) => {
            for (state, n) in counts {
                metrics::gauge!("crm_iam_transfer_jobs", "state" => state).set(n as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "transfer job counts unavailable"),
    }
}

/// The middleware that counts calls by method and status and times them.
#[derive(Clone, Default)]
pub struct MetricsLayer;

impl crate::middleware::Around for MetricsLayer {
    fn around<S, B>(
        &self,
        mut inner: S,
        req: http::Request<B>,
    ) -> crate::middleware::BoxFuture<Result<crate::middleware::Response, S::Error>>
    where
        S: tower::Service<http::Request<B>, Response = crate::middleware::Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        let method = req.uri().path().trim_start_matches('/').to_owned();
        Box::pin(async move {
            let started = Instant::now();
            let in_flight = metrics::gauge!("crm_iam_grpc_requests_in_flight");
            in_flight.increment(1.0);
            let result = inner.call(req).await;
            in_flight.decrement(1.0);
            // A failed call answers with grpc-status in the headers (trailers-only); a call that
            // succeeded (or a stream that started) carries it in the trailers: OK as far as the
            // response head shows.
            let code = match &result {
                Ok(res) => res
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from(c)))
                    .unwrap_or_else(|| "Ok".to_owned()),
                Err(_) => "Unavailable".to_owned(),
            };
            metrics::counter!("crm_iam_grpc_requests_total", "method" => method.clone(), "code" => code).increment(1);
            metrics::histogram!("crm_iam_grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}
