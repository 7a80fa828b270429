//! The process around the API: health, reflection, tracing, restarts, shutdown, the CLI.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sea_orm::{ConnectionTrait, TransactionTrait};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tonic::{Code, Request, metadata::MetadataValue};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    both_backends,
    common::{self, ADMIN_TOKEN, Backend, Bearer, TestDb, TestServer, count, invite, pb},
};

both_backends!(
    health_and_reflection,
    traceparent_continues_the_callers_trace,
    restart_keeps_data,
    binary_serves_and_drains_on_sigterm
);

async fn health_and_reflection(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut health = HealthClient::new(s.channel().await);
    for service in ["", "crm.iam.v1.TenantAdmin", "crm.iam.v1.UserAdmin"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    // Reflection v1alpha (grpcurl 1.8) and v1 list the services and describe error details.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(s.channel().await);
    let reqs = vec![
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
        },
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "google.rpc.BadRequest".into(),
            )),
        },
    ];
    let mut stream = alpha.server_reflection_info(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap().message_response.unwrap();
    let v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) = first else {
        panic!("expected a service list, got {first:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["crm.iam.v1.TenantAdmin", "crm.iam.v1.UserAdmin", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let second = stream.next().await.unwrap().unwrap().message_response.unwrap();
    assert!(
        matches!(second, v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)),
        "error detail types are described: {second:?}"
    );

    let mut v1c = v1::server_reflection_client::ServerReflectionClient::new(s.channel().await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "crm.iam.v1.UserAdmin".into(),
        )),
    };
    let mut stream = v1c.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.next().await.unwrap().unwrap().message_response.unwrap();
    assert!(matches!(resp, v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_)), "{resp:?}");
    s.stop().await;
}

async fn traceparent_continues_the_callers_trace(backend: Backend) {
    let s = TestServer::start(backend).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = Request::new(pb::CreateTenantRequest {
        tenant: Some(pb::Tenant { tenant_id: "traced".into(), display_name: "Traced".into(), ..Default::default() }),
        request_id: String::new(),
    });
    req.metadata_mut()
        .insert("traceparent", MetadataValue::try_from(format!("00-{trace_id}-00f067aa0ba902b7-01")).unwrap());
    s.tenants().await.create_tenant(req).await.unwrap();
    let db = s.db.connect().await;
    assert_eq!(count(&db, &format!("SELECT COUNT(*) FROM audit_events WHERE trace_id = '{trace_id}'")).await, 1);
    // Without a traceparent the server starts its own trace: a fresh, valid id.
    s.tenant("untraced", 0).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE trace_id IS NOT NULL").await, 2);
    s.stop().await;
}

async fn restart_keeps_data(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let user = s.users().await.create_user(invite(&t, "ann@example.com")).await.unwrap().into_inner().user.unwrap();
    let db = s.stop().await;
    let config = common::test_config(&db);
    let s = TestServer::start_on(db, config).await;
    let got = s
        .users()
        .await
        .get_user(pb::GetUserRequest { tenant_id: t, user_id: user.user_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got, user);
    s.stop().await;
}

/// A spawned `crm-iam` process; killed if the test fails.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crm-iam"))
}

/// Spawns `crm-iam serve` and waits for its "serving" log line; returns the bound address.
pub fn spawn_server(args: &[&str], envs: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut cmd = bin();
    cmd.arg("serve")
        .args(args)
        .env_remove("CRM_IAM_ADMIN_TOKEN")
        .env("CRM_IAM_MASTER_KEY", crate::common::MASTER_KEY)
        .env("RUST_LOG", "info");
    for (k, v) in envs {
        // An empty value removes a variable (a test of what happens without it).
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn crm-iam");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Into the log first: whoever hears the address may read the line.
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
            if let Some(rest) = line.split("addr=").nth(1).filter(|_| line.contains("crm-iam serving")) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let proc = Proc { child, stderr: log };
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("server did not start: {}", proc.stderr.lock().unwrap()));
    (proc, addr.parse().expect("address in log line"))
}

async fn binary_serves_and_drains_on_sigterm(backend: Backend) {
    let db = TestDb::new(backend).await;
    // `crm-iam migrate` prepares the schema and exits.
    let out = bin().args(["migrate", "--database-url", &db.url]).env_remove("CRM_IAM_ADMIN_TOKEN").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conn = db.connect().await;
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM tenants").await, 0, "schema exists");

    let token_file = db.dir().join("admin.token");
    let token_file_s = token_file.to_str().unwrap().to_owned();
    let (mut proc, addr) = spawn_server(
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--database-url", &db.url, "--no-migrate"],
        &[("CRM_IAM_ADMIN_TOKEN_FILE", &token_file_s), ("CRM_IAM_PASSWORD_HASH_THREADS", "1")],
    );
    let metrics_addr: SocketAddr = {
        let log = proc.stderr.lock().unwrap().clone();
        let line = log.lines().find(|l| l.contains("crm-iam serving")).expect("the serving line");
        line.split("metrics=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    // A generated admin token: a private file whose path, never contents, is logged.
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let log = proc.stderr.lock().unwrap().clone();
    assert!(log.contains("admin.token") && !log.contains(&token), "{log}");

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut tenants =
        pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel.clone(), Bearer::token(&token));
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), display_name: "Acme".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    // In-flight calls when SIGTERM arrives. The server hashes one password at a time (one hashing
    // thread), and on PostgreSQL the test also holds the tenant's row, so CreateUser calls queue
    // inside the server. SIGTERM goes out once every call sent has reached the server (in flight or
    // answered, from /metrics) and at least one is still in flight; a batch that finished before
    // it was seen is followed by another.
    let blocker = if backend == Backend::Postgres {
        let b = conn.begin().await.unwrap();
        b.execute_unprepared("SELECT 1 FROM tenants WHERE tenant_id = 'acme' FOR UPDATE").await.unwrap();
        Some(b)
    } else {
        None
    };
    let progress = || async move {
        let text = crate::common::scrape(metrics_addr).await;
        let answered = text
            .lines()
            .filter(|l| l.starts_with(r#"crm_iam_grpc_requests_total{method="crm.iam.v1.UserAdmin/CreateUser""#))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>();
        (crate::common::gauge_of(&text, "crm_iam_grpc_requests_in_flight"), answered)
    };
    let mut calls = Vec::new();
    let mut caught = false;
    'batches: for batch in 0..10 {
        for i in 0..4 {
            let mut users =
                pb::user_admin_client::UserAdminClient::with_interceptor(channel.clone(), Bearer::token(&token));
            calls.push(tokio::spawn(async move {
                users
                    .create_user(pb::CreateUserRequest {
                        tenant_id: "acme".into(),
                        user: Some(pb::User { email: format!("u{batch}-{i}@example.com"), ..Default::default() }),
                        initial_password: "a long enough password".into(),
                        ..Default::default()
                    })
                    .await
            }));
        }
        let sent = calls.len() as f64;
        loop {
            let (in_flight, answered) = progress().await;
            if in_flight >= 1.0 && in_flight + answered >= sent {
                caught = true;
                break 'batches;
            }
            if answered >= sent {
                continue 'batches; // all answered before we looked: another batch
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(caught, "no batch of calls was seen in flight");
    let pid = proc.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    // Health turns NOT_SERVING at once, then the stream ends cleanly.
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    if let Some(b) = blocker {
        b.rollback().await.unwrap();
    }
    for c in calls {
        c.await.unwrap().expect("in-flight calls finish");
    }
    let status = tokio::task::spawn_blocking(move || proc.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM users").await, 4, "every acknowledged create is stored");
}

/// A TCP proxy in front of PostgreSQL that can cut every connection.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if c.load(Ordering::SeqCst) {
                    continue; // refuse while cut (dropping closes it)
                }
                let upstream = upstream.clone();
                let mut killed = e.subscribe();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, epoch }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Readiness follows the database (PostgreSQL: the database can go away under a running server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_postgres_reachability() {
    let db = TestDb::new(Backend::Postgres).await;
    let url = db.url.clone();
    let hostport = url.split('@').nth(1).and_then(|r| r.split('/').next()).unwrap_or("127.0.0.1:5432").to_owned();
    let hostport = if hostport.contains(':') { hostport } else { format!("{hostport}:5432") };
    let proxy = Proxy::start(hostport.clone()).await;
    let proxied = url.replacen(&hostport, &proxy.addr.to_string(), 1);
    assert_ne!(proxied, url, "the URL goes through the proxy");
    let mut config = common::test_config(&db);
    config.database_url = proxied;
    config.health_check_interval = Duration::from_millis(100);
    config.db_connect_timeout = Duration::from_secs(1);
    let s = TestServer::start_on(db, config).await;
    let status = |s: &TestServer| {
        let addr = s.addr;
        async move {
            let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
            HealthClient::new(ch)
                .check(HealthCheckRequest { service: "crm.iam.v1.UserAdmin".into() })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(status(&s).await, ServingStatus::Serving);
    proxy.cut();
    common::eventually("NOT_SERVING while the database is unreachable", || async {
        status(&s).await == ServingStatus::NotServing
    })
    .await;
    // Calls fail with UNAVAILABLE meanwhile (never a raw database error).
    let r = s
        .users()
        .await
        .get_user(pb::GetUserRequest { tenant_id: "acme".into(), user_id: uuid::Uuid::now_v7().to_string() })
        .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(!e.message().to_lowercase().contains("sql"), "{e:?}");
    proxy.restore();
    common::eventually("SERVING again once it is back", || async { status(&s).await == ServingStatus::Serving }).await;
    s.users()
        .await
        .create_user(invite("acme", "x@example.com"))
        .await
        .expect_err("tenant does not exist, but the call reaches the database");
    s.stop().await;
    let _ = ADMIN_TOKEN;
}
