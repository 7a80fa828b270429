//! Operations: Prometheus metrics, load shedding under overload, deadlines.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, invite, pb, reason},
};

const PASSWORD: &str = "velvet staircase under morning rain";

async fn scrape(server: &TestServer) -> String {
    let addr = server.metrics_addr.expect("metrics enabled");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

/// The value of one series (labels as the exporter renders them), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// What `promtool check metrics` (Debian's `prometheus` package; scripts/test.sh installs it) says
/// of an exposition: empty when it has nothing to object to.
fn promtool_check_metrics(body: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian package prometheus) is needed: run the tests with scripts/test.sh, which installs it",
        );
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { said.trim().to_owned() } else { format!("exit {}: {said}", out.status) }
}

both_backends!(metrics_count_calls_by_method_and_code, overload_is_refused_at_once_and_passes);

async fn metrics_count_calls_by_method_and_code(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    server.tenant("acme", 0).await;
    let get = r#"crm_iam_grpc_requests_total{method="crm.iam.v1.TenantAdmin/GetTenant",code="NotFound"}"#;
    let before = value(&scrape(&server).await, get);
    for _ in 0..3 {
        let r = server.tenants().await.get_tenant(pb::GetTenantRequest { tenant_id: "nope".into() }).await;
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
    }
    let text = scrape(&server).await;
    assert!(value(&text, get) >= before + 3.0, "{get} did not grow by 3:\n{text}");
    let created = r#"crm_iam_grpc_requests_total{method="crm.iam.v1.TenantAdmin/CreateTenant",code="Ok"}"#;
    assert!(value(&text, created) >= 1.0, "{text}");
    for needle in [
        "crm_iam_grpc_request_duration_seconds_bucket{method=\"crm.iam.v1.TenantAdmin/GetTenant\"",
        "crm_iam_grpc_requests_in_flight",
        "crm_iam_db_pool_connections{state=\"open\"}",
        "crm_iam_password_hash_queue_depth",
        "crm_iam_audit_stream_subscribers",
        "crm_iam_access_cache_lookups_total",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    // Every family is described (help text), and Prometheus' own linter accepts the exposition.
    let body = text.split_once("\r\n\r\n").map_or(text.as_str(), |(_, b)| b);
    for family in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(body.contains(&format!("# HELP {name} ")), "{name} has no help text");
    }
    let lint = promtool_check_metrics(body);
    assert!(lint.is_empty(), "promtool check metrics: {lint}");
    // Anything but /metrics is not found.
    let mut socket = tokio::net::TcpStream::connect(server.metrics_addr.unwrap()).await.unwrap();
    socket.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    server.stop().await;
}

async fn overload_is_refused_at_once_and_passes(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.max_concurrent_requests = 2).await;
    server.tenant("acme", 0).await;
    // 30 users with a password at once: each call holds its slot for an argon2 hash. (Logins
    // are bounded by the hashing queue instead: login_attacks::a_login_flood_does_not_starve_access_checks.)
    let calls = (0..30).map(|i| {
        let server = &server;
        async move {
            let mut req = invite("acme", &format!("u{i}@example.com"));
            req.send_invitation = false;
            req.initial_password = PASSWORD.into();
            server.users().await.create_user(req).await
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(ok >= 1, "some calls are served");
    assert!(!shed.is_empty(), "calls beyond the limit are refused");
    for s in &shed {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason(s), "OVERLOADED");
    }
    // Probes are never shed, and normal service resumes right after.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let h = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(h.into_inner().status, 1, "SERVING");
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    server.login("acme", "ann@example.com", PASSWORD).await;
    server.stop().await;
}

/// A caller's deadline (grpc-timeout) ends a call that cannot finish in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_honored() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.tenant("acme", 0).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let mut req = tonic::Request::new(pb::AuthenticateRequest {
        tenant_id: "acme".into(),
        email: "ann@example.com".into(),
        password: PASSWORD.into(),
        totp_code: String::new(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(1));
    let s = server.auth().await.authenticate(req).await.unwrap_err();
    assert!(matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled), "{s:?}");
    server.login("acme", "ann@example.com", PASSWORD).await;
    server.stop().await;
}

/// Connections to /metrics that never finish a request are closed by the server (header timeout),
/// so idle or trickling clients cannot pile up; scrapes go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_metrics_connections_are_closed() {
    let server =
        TestServer::start_with(Backend::Sqlite, |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = server.metrics_addr.unwrap();
    let mut silent = Vec::new();
    for i in 0..50 {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            // Half of them start a request and never end its headers.
            socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: te").await.unwrap();
        }
        silent.push(socket);
    }
    assert!(scrape(&server).await.contains("crm_iam_db_pool_connections"), "scrapes are served meanwhile");
    for mut socket in silent {
        let mut rest = Vec::new();
        // The server ends the connection (EOF, or a reset): the bound only guards a hang.
        let ended = tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "a silent connection stayed open");
    }
    server.stop().await;
}
