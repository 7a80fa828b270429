//! The HTTP listener (`http_listen`): SCIM under `/scim/v2`, the JWKS and discovery documents,
//! and single sign-on (`/sso`: callback, back-channel logout). HTTP/1.1, served connection by connection: request headers must arrive
//! within 10 s, an idle keep-alive connection closes after 2 minutes, at most 256 connections
//! are open at once and 64 from one client address (IPv6: /64; more are closed on accept),
//! bodies are at most 1 MiB. TLS with the gRPC
//! listener's certificate and key when they are configured (no client certificates: identity
//! providers authenticate with their SCIM token).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, scim, service::Iam};

/// Connections open at once.
const MAX_CONNECTIONS: usize = 256;

/// Connections one client address (IPv6: its /64) may hold at once, so a single client cannot
/// take every connection (an identity provider's sync uses a handful).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Open connections per client address; a guard gives its slot back when the connection ends.
#[derive(Clone, Default)]
struct PerAddress(Arc<dashmap::DashMap<std::net::IpAddr, usize>>);

struct AddressSlot(PerAddress, std::net::IpAddr);

impl PerAddress {
    fn key(ip: std::net::IpAddr) -> std::net::IpAddr {
        match ip {
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    fn take(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let key = Self::key(ip);
        let mut n = self.0.entry(key).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), key))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let gone = {
            let mut n = self.0.0.entry(self.1).or_insert(1);
            *n = n.saturating_sub(1);
            *n == 0
        };
        if gone {
            self.0.0.remove_if(&self.1, |_, n| *n == 0);
        }
    }
}

/// The server's TLS acceptor from the configured PEM files (None: plaintext).
fn tls(config: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the TLS certificate {} is not PEM", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// A bound HTTP listener and how it serves.
pub struct HttpListener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    public_url: Option<String>,
}

impl HttpListener {
    pub async fn bind(config: &Config) -> anyhow::Result<Option<HttpListener>> {
        let Some(addr) = config.http_listen else { return Ok(None) };
        let listener =
            TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
        Ok(Some(HttpListener { listener, tls: tls(config)?, public_url: config.http_public_url.clone() }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop`.
    pub async fn serve(self, iam: Iam, stop: CancellationToken) -> anyhow::Result<()> {
        let HttpListener { listener, tls, public_url } = self;
        let scheme = scim::Scheme(if tls.is_some() { "https" } else { "http" });
        tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "HTTP listener: /scim/v2, /.well-known, /sso");
        let app = crate::well_known::router(iam.clone(), public_url)
            .merge(crate::sso_http::router(iam.clone()))
            .merge(scim::router(iam))
            .layer(axum::Extension(scheme));
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_address = PerAddress::default();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = per_address.take(peer.ip()) else { continue };
            let Ok(permit) = open.clone().try_acquire_owned() else { continue };
            let _ = stream.set_nodelay(true);
            let app = app.clone().layer(axum::Extension(scim::Peer(peer)));
            let (tls, stop) = (tls.clone(), stop.clone());
            tokio::spawn(async move {
                let (_permit, _slot) = (permit, slot);
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
                    b
                };
                let served = async {
                    match tls {
                        Some(tls) => {
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                            else {
                                return;
                            };
                            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                            bounded(conn, &stop).await;
                        }
                        None => {
                            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                            bounded(conn, &stop).await;
                        }
                    }
                };
                served.await;
            });
        }
    }
}

/// Runs a connection until it ends; when the server stops, or the connection is two minutes old
/// (an idle keep-alive, or a slow client), it finishes its in-flight request and closes.
async fn bounded<I, S, B>(conn: hyper::server::conn::http1::Connection<I, S>, stop: &CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(120)) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
}
