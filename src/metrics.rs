//! Prometheus metrics (`--metrics-listen`): per-method request counts by status code and latency
//! histograms, requests in flight, database pool use, the password-hashing queue, audit stream
//! subscribers, transfer jobs and records moved, and the access cache's hit counters.
//!
//! Recording goes through the `metrics` facade into one process-wide Prometheus recorder
//! (`metrics-exporter-prometheus`); `/metrics` is served by a small HTTP/1.1 endpoint here, so no
//! second HTTP stack is pulled in. Gauges of things that live elsewhere (pool, queue, cache) are
//! sampled every few seconds.

use std::{
    sync::{OnceLock, atomic::Ordering},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, iam: Iam, stop: CancellationToken) -> anyhow::Result<()> {
    let handle = install();
    tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics");
    tokio::spawn(sample(iam.clone(), stop.clone()));
    loop {
        let (mut socket, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let iam = iam.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                // Gauges of other components, current as of this scrape.
                record_gauges(&iam).await;
                let body = handle.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
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
