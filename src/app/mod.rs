//! Binds, assembles the server, serves, and drains on shutdown.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::RoutesBuilder, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::{classify::GrpcFailureClass, trace::TraceLayer};

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use crate::{
    api::auth::AuthApi,
    api::authn::{AuthLayer, Authenticator},
    api::{
        access::AccessApi, audit_events::AuditEventsApi, envoy::EnvoyAuthzApi,
        notification_admin::NotificationAdminApi, ownership_transfer::OwnershipTransferApi, role_admin::RoleAdminApi,
        tenant_admin::TenantAdminApi, user_admin::UserAdminApi,
    },
    config::{Config, redact_url},
    jobs,
    middleware::Layer,
    proto::{
        self,
        v1::{
            access_server::AccessServer, audit_events_server::AuditEventsServer, auth_server::AuthServer,
            notification_admin_server::NotificationAdminServer, ownership_transfer_server::OwnershipTransferServer,
            role_admin_server::RoleAdminServer, tenant_admin_server::TenantAdminServer,
            user_admin_server::UserAdminServer,
        },
    },
    service::{
        Iam, audit,
        auth::{
            AuthSettings, AuthState,
            hashing::Passwords,
            keys::{KeyPolicy, KeyRing},
        },
        replicas,
        transfers::{self, TransferSettings},
    },
    store::{Db, DbConfig},
    telemetry,
};

mod files;
mod http_listener;
mod outbox;

pub use files::master_keys;
use files::{admin_token, tls_config};

/// The health-check service name of liveness (the process alone, not the database).
pub const LIVENESS: &str = "liveness";

/// Names of the gRPC services whose health is reported (besides "").
pub fn service_names() -> Vec<&'static str> {
    vec![
        <TenantAdminServer<TenantAdminApi> as NamedService>::NAME,
        <UserAdminServer<UserAdminApi> as NamedService>::NAME,
        <RoleAdminServer<RoleAdminApi> as NamedService>::NAME,
        <AccessServer<AccessApi> as NamedService>::NAME,
        <AuditEventsServer<AuditEventsApi> as NamedService>::NAME,
        <OwnershipTransferServer<OwnershipTransferApi> as NamedService>::NAME,
        <AuthServer<AuthApi> as NamedService>::NAME,
        <NotificationAdminServer<NotificationAdminApi> as NamedService>::NAME,
    ]
}

/// Connects to the database (and migrates, if asked).
pub async fn connect(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&DbConfig {
        url: config.database_url.clone(),
        max_connections: config.db_max_connections,
        connect_timeout: config.db_connect_timeout,
        commit_delay_max: config.debug_commit_delay,
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", redact_url(&config.database_url)))?;
    Ok(db)
}

/// Adds services to the server, behind the same layers and authentication: for embedding crm-iam
/// beside other gRPC services in one process (the benchmark crate serves its echo floor this way).
pub type ExtraServices = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// A built, bound, not yet serving application.
pub struct Application {
    extra: Option<ExtraServices>,
    config: Config,
    listener: TcpListener,
    iam: Iam,
    authenticator: AuthLayer,
    metrics_listener: Option<TcpListener>,
    health_listener: Option<TcpListener>,
    http_listener: Option<http_listener::HttpListener>,
    admin_token_file: Option<PathBuf>,
    shutdown: CancellationToken,
}

/// Stops a running application: health turns NOT_SERVING, in-flight calls finish within the
/// grace period, streams end, `run` returns.
#[derive(Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Application {
    /// Opens the database, applies migrations (unless disabled), resolves the admin token and
    /// binds the listener (port 0 picks a free port; see [`Application::local_addr`]).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let db = connect(&config).await?;
        if config.migrate {
            db.migrate().await?;
        }
        let (token, admin_token_file) = admin_token(&config)?;
        let secrets = Arc::new(master_keys(&config)?);
        crate::service::auth::keys::check_master_keys(&db, &secrets).await?;
        let sealed = crate::store::sealed::reseal(&db, &secrets, crate::store::sealed::Reseal::Plaintext).await?;
        if sealed != Default::default() {
            tracing::info!(?sealed, "secrets stored in clear (from before sealing) are now sealed");
        }
        let (filled, clashes) = crate::store::users::backfill_email_skeletons(&db).await?;
        if filled + clashes > 0 {
            tracing::info!(filled, clashes, "look-alike keys of stored e-mail addresses filled in");
        }
        let threads = match config.password_hash_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let key_policy = KeyPolicy {
            issuer: config.token_issuer.clone(),
            audience: config.token_audience.clone(),
            algorithm: config.signing_algorithm,
            publish_ahead: config.signing_key_publish_ahead,
        };
        let keys = KeyRing::load(db.clone(), secrets.clone(), key_policy).await?;
        let auth = AuthState::new(
            keys,
            secrets,
            AuthSettings {
                issuer: config.token_issuer.clone(),
                audience: config.token_audience.clone(),
                login_failures_per_address: config.login_failures_per_address,
                password_resets_per_address: config.password_reset_requests_per_address,
                trusted_proxies: config
                    .trusted_proxies
                    .iter()
                    .map(|c| c.parse().map_err(|e| anyhow::anyhow!("trusted_proxies: {c:?} is not a CIDR range: {e}")))
                    .collect::<anyhow::Result<_>>()?,
            },
        );
        let mut iam = Iam::new(
            db,
            Passwords::new(threads, config.password_hash_queue),
            auth,
            config.access_cache_budget.as_u64(),
        );
        iam.outbox = Arc::new(outbox::build(&config)?);
        iam.sso = Arc::new(crate::service::sso::Sso::new(config.sso_allow_http_issuers));
        if !iam.outbox.enabled() {
            tracing::info!(
                "no notification channel (neither smtp_url nor notification_webhook_url): invitation and reset tokens go to the caller only"
            );
        }
        anyhow::ensure!(
            config.min_audit_retention <= Duration::from_secs(3650 * 24 * 3600),
            "min_audit_retention must be at most 3650 days (the longest retention a tenant may set)"
        );
        iam.audit.set_min_retention(config.min_audit_retention);
        iam.audit.set_caps(crate::service::audit::StreamCaps {
            per_caller: config.max_streams_per_caller.max(1),
            per_tenant: config.max_streams_per_tenant.max(1),
        });
        iam.ensure_builtin_roles().await?;
        let authenticator = Authenticator::new(iam.clone(), token.expose_secret(), &config.service_credentials)?;
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?,
            ),
            None => None,
        };
        let health_listener = match config.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen for health checks on {addr}: {e}"))?,
            ),
            None => None,
        };
        let http_listener = http_listener::HttpListener::bind(&config).await?;
        Ok(Application {
            metrics_listener,
            health_listener,
            http_listener,
            extra: None,
            authenticator: AuthLayer::new(authenticator),
            config,
            listener,
            iam,
            admin_token_file,
            shutdown: CancellationToken::new(),
        })
    }

    /// Serves more services on the same stack.
    pub fn with_extra_services(mut self, extra: ExtraServices) -> Application {
        self.extra = Some(extra);
        self
    }

    /// The application service layer (for tools that need to seed or inspect data in-process).
    pub fn iam(&self) -> &Iam {
        &self.iam
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Where `/metrics` is served (None unless `metrics_listen` is set).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the plaintext health listener is (None unless `health_listen` is set).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the HTTP listener (SCIM) is (None unless `http_listen` is set).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener.as_ref().and_then(|l| l.local_addr())
    }

    /// Where the generated admin token was stored (None when it came from the environment).
    pub fn admin_token_file(&self) -> Option<&PathBuf> {
        self.admin_token_file.as_ref()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until SIGTERM or SIGINT, then drains.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let handle = self.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            handle.shutdown();
        });
        self.run().await
    }

    /// Serves until the shutdown handle fires, then drains (bounded by `shutdown_grace`).
    pub async fn run(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let Application {
            config,
            listener,
            iam,
            authenticator,
            shutdown,
            extra,
            metrics_listener,
            health_listener,
            http_listener,
            ..
        } = self;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        set_health(&reporter, ServingStatus::Serving).await;
        // Liveness: the process answers. It does not follow the database (a database outage must
        // not make Kubernetes restart every replica at once); only shutdown turns it NOT_SERVING.
        reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        // Probes cannot speak TLS: with `health_listen`, a plaintext listener serves the health
        // service alone (no other method, no data) beside a TLS main listener.
        let health_task = health_listener.map(|listener| {
            let service = tonic_health::pb::health_server::HealthServer::new(
                tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
            );
            let stop = iam.stop.clone();
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
            )
        });

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        // Stops serving: tonic stops accepting, finishes in-flight calls; background jobs and
        // streams watch the same token.
        let stop = iam.stop.clone();
        let background = vec![
            tokio::spawn(health_watch(iam.clone(), reporter.clone(), config.health_check_interval, stop.clone())),
            tokio::spawn(jobs::purge_sweeper(iam.clone(), config.purge_interval, stop.clone())),
            tokio::spawn(jobs::signing_keys(iam.clone(), config.signing_key_rotation, stop.clone())),
            tokio::spawn(jobs::idempotency_sweeper(iam.clone(), config.idempotency_retention, stop.clone())),
            tokio::spawn(replicas::follow(iam.clone(), config.policy_poll_interval, stop.clone())),
            tokio::spawn(audit::run_hub(iam.clone(), stop.clone())),
            tokio::spawn(crate::service::notify::run_worker(iam.clone(), stop.clone())),
            tokio::spawn(transfers::run_worker(
                iam.clone(),
                TransferSettings {
                    batch_size: config.transfer_batch_size,
                    lease: config.transfer_lease,
                    poll_interval: config.transfer_poll_interval,
                    yield_ratio: config.transfer_yield_ratio,
                },
                stop.clone(),
            )),
            tokio::spawn(jobs::audit_retention(
                iam.clone(),
                config.platform_audit_retention,
                config.audit_retention_interval,
                stop.clone(),
            )),
        ];

        let trace_layer = TraceLayer::new_for_grpc()
            .make_span_with(|req: &http::Request<_>| telemetry::rpc_span(req))
            .on_request(())
            .on_response(|res: &http::Response<_>, latency: Duration, span: &tracing::Span| {
                if let Some(code) = res.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()) {
                    telemetry::record_status(span, code);
                }
                tracing::debug!(parent: span, latency_ms = latency.as_secs_f64() * 1e3, "response headers sent");
            })
            .on_eos(|trailers: Option<&http::HeaderMap>, _: Duration, span: &tracing::Span| {
                let code = trailers.and_then(|t| t.get("grpc-status")?.to_str().ok()?.parse().ok()).unwrap_or(0);
                telemetry::record_status(span, code);
            })
            .on_failure(|failure: GrpcFailureClass, latency: Duration, span: &tracing::Span| {
                tracing::debug!(parent: span, ?failure, latency_ms = latency.as_secs_f64() * 1e3, "rpc failed");
            });

        let max_message = 8 * 1024 * 1024;
        let routes_table = config.ext_authz.compile().map_err(|e| anyhow::anyhow!("ext_authz: {e}"))?;
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(AuthServer::new(AuthApi::new(iam.clone())).max_decoding_message_size(max_message))
            .add_service(
                TenantAdminServer::new(TenantAdminApi::new(iam.clone())).max_decoding_message_size(max_message),
            )
            .add_service(UserAdminServer::new(UserAdminApi::new(iam.clone())).max_decoding_message_size(max_message))
            .add_service(RoleAdminServer::new(RoleAdminApi::new(iam.clone())).max_decoding_message_size(max_message))
            .add_service(AccessServer::new(AccessApi::new(iam.clone())).max_decoding_message_size(max_message))
            .add_service(
                AuditEventsServer::new(AuditEventsApi::new(iam.clone())).max_decoding_message_size(max_message),
            )
            .add_service(
                OwnershipTransferServer::new(OwnershipTransferApi::new(iam.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                NotificationAdminServer::new(NotificationAdminApi::new(iam.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(AuthorizationServer::new(EnvoyAuthzApi::new(iam.clone(), routes_table)));
        if let Some(extra) = extra {
            extra(&mut routes);
        }
        let mut builder = Server::builder();
        if let Some(tls) = tls_config(&config)? {
            builder = builder.tls_config(tls)?;
        }
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let http_task = http_listener.map(|l| tokio::spawn(l.serve(iam.clone(), stop.clone())));
        let metrics_task = metrics_listener.map(|listener| {
            crate::metrics::install();
            tokio::spawn(crate::metrics::serve(listener, iam.clone(), stop.clone()))
        });
        let router = builder
            // The default deadline of every call; a caller's shorter grpc-timeout wins.
            .timeout(config.request_timeout)
            // Detect dead peers (and keep idle NATs open) on long-lived connections and streams.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            // One span per RPC, continuing the caller's trace, with method, tenant and status.
            .layer(trace_layer)
            // Counts and times every call (when metrics are served).
            .layer(tower::util::option_layer(metrics_task.as_ref().map(|_| Layer(crate::metrics::MetricsLayer))))
            // Refuses calls beyond the concurrency limit at once, before any work.
            .layer(Layer(crate::overload::ShedLayer::new(config.max_concurrent_requests)))
            // Every call's bearer token becomes a Caller before routing (health, reflection and
            // the login methods excepted).
            .layer(Layer(authenticator))
            .add_routes(routes.routes());

        // Our own listener (bound in `build`, so tests can use port 0): the server builder's TCP
        // options do not reach it, so set them here. Without TCP_NODELAY, small responses wait
        // for delayed ACKs (up to 40 ms on Linux).
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let stop_serving = stop.clone();
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            stop_serving.cancelled().await;
        }));
        tracing::info!(
            %addr,
            metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            database = %redact_url(&config.database_url),
            "crm-iam serving"
        );

        shutdown.cancelled().await;
        // Turn NOT_SERVING first, so load balancers stop sending new calls.
        set_health(&reporter, ServingStatus::NotServing).await;
        reporter.set_service_status(LIVENESS, ServingStatus::NotServing).await;
        stop.cancel();
        match tokio::time::timeout(config.shutdown_grace, server).await {
            Ok(joined) => joined??,
            Err(_) => {
                tracing::warn!(grace = ?config.shutdown_grace, "grace period over; remaining calls dropped")
            }
        }
        for task in background {
            let _ = task.await;
        }
        if let Some(task) = health_task
            && let Ok(Err(e)) = task.await
        {
            tracing::warn!(error = %e, "the health listener failed");
        }
        for (task, what) in [(metrics_task, "the metrics endpoint"), (http_task, "the HTTP listener")] {
            if let Some(task) = task
                && let Ok(Err(e)) = task.await
            {
                tracing::warn!(error = %e, "{what} failed");
            }
        }
        tracing::info!("crm-iam stopped");
        Ok(())
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in service_names() {
        reporter.set_service_status(name, status).await;
    }
}

/// Readiness follows the database: NOT_SERVING while it cannot be reached.
async fn health_watch(iam: Iam, reporter: HealthReporter, interval: Duration, stop: CancellationToken) {
    let mut serving = true;
    let mut ticks = crate::periodic::Ticks::after(interval, &stop);
    while ticks.next().await {
        let ok = tokio::time::timeout(Duration::from_secs(3), iam.db.ping()).await.unwrap_or(false);
        if ok != serving && !stop.is_cancelled() {
            serving = ok;
            if ok {
                tracing::info!("database reachable again: SERVING");
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
            }
            set_health(&reporter, if ok { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
