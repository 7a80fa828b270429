//! TLS and mutual TLS on the gRPC listener, with certificates generated for the test.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{self, Bearer, TestDb, TestServer, pb};

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files in `dir`.
struct Pki {
    ca: String,
    client_cert: String,
    client_key: String,
    /// A second client of the same CA (another sibling service).
    other_cert: String,
    other_key: String,
}

fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let mut client_params = CertificateParams::new(vec!["deals-service".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let mut other_params = CertificateParams::new(vec!["reports-service".to_owned()]).unwrap();
    other_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let other_key = KeyPair::generate().unwrap();
    let other = other_params.signed_by(&other_key, &issuer).unwrap();

    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        ca: ca.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        other_cert: other.pem(),
        other_key: other_key.serialize_pem(),
    }
}

async fn list_tenants(channel: Channel) -> Result<(), tonic::Status> {
    pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel, Bearer::admin())
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .map(|_| ())
}

async fn connect(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// TLS: a client that trusts the CA is served; a plaintext client is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca() {
    let db = TestDb::new(common::Backend::Sqlite).await;
    let p = pki(db.dir());
    let mut config = common::test_config(&db);
    config.tls_cert = Some(db.dir().join("server.pem"));
    config.tls_key = Some(db.dir().join("server.key"));
    let s = TestServer::start_on(db, config).await;

    let trusting = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&p.ca)).domain_name("localhost");
    let channel = connect(s.addr, Some(trusting)).await.expect("TLS connection");
    list_tenants(channel).await.expect("served over TLS");

    let plain = connect(s.addr, None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => list_tenants(ch).await.is_err(),
    };
    assert!(refused, "a plaintext client gets nothing from a TLS listener");

    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let distrusting =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other_ca.cert.pem())).domain_name("localhost");
    let refused = match connect(s.addr, Some(distrusting)).await {
        Err(_) => true,
        Ok(ch) => list_tenants(ch).await.is_err(),
    };
    assert!(refused, "a client that does not trust the server's CA does not connect");
    s.stop().await;
}

/// Mutual TLS: only clients with a certificate from the configured CA are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let db = TestDb::new(common::Backend::Sqlite).await;
    let p = pki(db.dir());
    let mut config = common::test_config(&db);
    config.tls_cert = Some(db.dir().join("server.pem"));
    config.tls_key = Some(db.dir().join("server.key"));
    config.client_ca = Some(db.dir().join("ca.pem"));
    let s = TestServer::start_on(db, config).await;

    let base = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&p.ca)).domain_name("localhost");
    let with_cert = base.clone().identity(Identity::from_pem(&p.client_cert, &p.client_key));
    let channel = connect(s.addr, Some(with_cert)).await.expect("mTLS connection");
    list_tenants(channel).await.expect("a client with a certificate is served");

    let refused = match connect(s.addr, Some(base)).await {
        Err(_) => true,
        Ok(ch) => list_tenants(ch).await.is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    s.stop().await;
}

/// A service credential bound to a client certificate: its token works only over a connection
/// with that certificate. Another service of the same CA that stole the token gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_service_token_needs_its_client_certificate() {
    use sha2::Digest;
    let token = "deals-service-token-0123456789";
    let db = TestDb::new(common::Backend::Sqlite).await;
    let p = pki(db.dir());
    let mut config = common::test_config(&db);
    config.tls_cert = Some(db.dir().join("server.pem"));
    config.tls_key = Some(db.dir().join("server.key"));
    config.client_ca = Some(db.dir().join("ca.pem"));
    config.service_credentials = vec![crm_iam::api::authn::ServiceCredential {
        name: "deals".into(),
        token_sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
        methods: vec!["TenantAdmin.ListTenants".into()],
        client_subject: Some("deals-service".into()),
        tenants: None,
    }];
    let s = TestServer::start_on(db, config).await;
    let base = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&p.ca)).domain_name("localhost");
    let list = |channel: Channel| async move {
        pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel, Bearer::token(token))
            .list_tenants(pb::ListTenantsRequest::default())
            .await
    };
    let own = base.clone().identity(Identity::from_pem(&p.client_cert, &p.client_key));
    list(connect(s.addr, Some(own)).await.unwrap()).await.expect("the bound certificate is served");
    let other = base.identity(Identity::from_pem(&p.other_cert, &p.other_key));
    let refused = list(connect(s.addr, Some(other)).await.unwrap()).await.expect_err("another certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    s.stop().await;
}

/// With TLS on the main listener, Kubernetes gRPC probes (which cannot speak TLS) use the
/// plaintext health listener: it answers health checks, including liveness, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_use_the_plaintext_health_listener() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let db = TestDb::new(common::Backend::Sqlite).await;
    pki(db.dir());
    let mut config = common::test_config(&db);
    config.tls_cert = Some(db.dir().join("server.pem"));
    config.tls_key = Some(db.dir().join("server.key"));
    config.health_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start_on(db, config).await;
    let channel = connect(s.health_addr.expect("health listener"), None).await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "liveness", "crm.iam.v1.Access"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, 1, "{service:?} SERVING");
    }
    let other = list_tenants(channel).await.expect_err("only health is served there");
    assert_eq!(other.code(), tonic::Code::Unimplemented);
    s.stop().await;
}

/// The HTTP listener (SCIM) speaks TLS with the gRPC listener's certificate: a client that trusts
/// the CA gets SCIM answers; a plaintext request gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_uses_the_same_certificate() {
    let db = TestDb::new(common::Backend::Sqlite).await;
    let p = pki(db.dir());
    let mut config = common::test_config(&db);
    config.tls_cert = Some(db.dir().join("server.pem"));
    config.tls_key = Some(db.dir().join("server.key"));
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start_on(db, config).await;
    let addr = s.http_addr.unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(p.ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let r = client.get(format!("https://localhost:{}/scim/v2/Users", addr.port())).send().await.expect("TLS");
    assert_eq!(r.status().as_u16(), 401, "a SCIM answer over TLS");
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error");
    let plain = reqwest::get(format!("http://{addr}/scim/v2/Users")).await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 401, "no SCIM answer in plaintext");
    s.stop().await;
}
