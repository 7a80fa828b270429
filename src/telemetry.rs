//! Logs and traces.
//!
//! Logs: `tracing` to stderr, text or one JSON object per line, filtered by `RUST_LOG`.
//! Traces: an OpenTelemetry tracer provider is always installed, so every request has a trace id
//! (continuing the caller's W3C `traceparent` when one is sent) that audit events record; spans
//! are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use opentelemetry::{
    global,
    propagation::Extractor,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Span, subscriber::Interest};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Flushes and stops the trace exporter when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

fn provider() -> anyhow::Result<SdkTracerProvider> {
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "crm-iam".into());
    let resource = Resource::builder().with_service_name(service_name).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint =
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    if endpoint.is_ok_and(|e| !e.is_empty()) {
        // The exporter reads the endpoint, headers and timeout from the standard OTEL_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber (once per process; later calls only return a guard).
/// `RUST_LOG` filters; without it, `info`.
pub fn init(format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    init_with(format, "info")
}

/// Like [`init`], with another filter for when `RUST_LOG` is unset.
pub fn init_with(format: LogFormat, default_filter: &str) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = provider()?;
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("crm-iam");
    // RUST_LOG filters the logs only: spans reach OpenTelemetry at INFO whatever the log level,
    // so every request keeps its trace id (which audit events record). Database statement spans
    // (SeaORM's, with the parameterized SQL and never its values) are kept only inside a request
    // or job span, so periodic health pings do not become traces of their own.
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let otel_filter = filter::dynamic_filter_fn(|meta, cx| {
        if meta.target().starts_with("sea_orm") {
            cx.lookup_current().is_some()
        } else {
            *meta.level() <= tracing::Level::INFO
        }
    })
    // Decide once per callsite whatever can be decided statically (debug/trace callsites of
    // tonic, h2 and hyper are hit per frame on busy streams), so that only SeaORM's spans are
    // looked at per occurrence.
    .with_callsite_filter(|meta| {
        if *meta.level() > tracing::Level::INFO || (meta.target().starts_with("sea_orm") && !meta.is_span()) {
            Interest::never()
        } else if meta.target().starts_with("sea_orm") {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Busy/idle time per span costs two clock reads per poll; spans have their durations anyway.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(otel_filter);
    let registry = tracing_subscriber::registry().with(otel);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(true)
                    .with_filter(log_filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_filter(log_filter),
            )
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("telemetry already initialised");
    }
    Ok(TelemetryGuard { provider })
}

/// Hex trace id of the current span, if it belongs to a valid trace.
pub fn current_trace_id() -> Option<String> {
    let cx = Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one RPC: `rpc` with OpenTelemetry semantic-convention fields, continuing the
/// caller's trace from `traceparent`. The handler records `tenant_id`; the trace layer records
/// the status code. Health checks and reflection get no span.
pub fn rpc_span<B>(req: &http::Request<B>) -> Span {
    let path = req.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    if service.starts_with("grpc.") {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
    );
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the gRPC status code on an RPC span.
pub fn record_status(span: &Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    // Server-side, only codes that mean the server failed mark the span as an error.
    let server_error = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    span.record("otel.status_code", if server_error { "ERROR" } else { "OK" });
}
