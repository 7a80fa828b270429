//! Test harness: a real crm-iam server on an ephemeral port over a fresh database (a SQLite file
//! in a temporary directory, or a new PostgreSQL database), called over real gRPC.

use std::{net::SocketAddr, sync::Once, time::Duration};

use crm_iam::{
    app::{Application, ShutdownHandle},
    config::Config,
    proto::v1::{
        access_client::AccessClient, audit_events_client::AuditEventsClient, role_admin_client::RoleAdminClient,
        tenant_admin_client::TenantAdminClient, user_admin_client::UserAdminClient,
    },
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;

pub use crm_iam::proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod $name { sqlite(), postgres() }` running the async test fn `$name(Backend)`
/// once per database.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// The master key of test servers (base64 of 32 bytes; every replica of a test shares it).
pub const MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODlhYmNkZWY=";

static TELEMETRY: Once = Once::new();

fn init_telemetry() {
    TELEMETRY.call_once(|| {
        // Logs only with RUST_LOG set; the tracer is needed for trace ids either way.
        std::mem::forget(crm_iam::telemetry::init_with(crm_iam::config::LogFormat::Text, "off").expect("telemetry"));
    });
}

/// PostgreSQL server URL for tests (a database of the cluster used for administration).
/// The test command (scripts/test.sh) always sets it; without it PostgreSQL tests fail loudly
/// rather than being skipped.
pub fn postgres_admin_url() -> String {
    std::env::var("CRM_IAM_TEST_POSTGRES_URL")
        .expect("CRM_IAM_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which provides PostgreSQL")
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((url, None));
    let slash = base.rfind('/').expect("URL has a path");
    let mut out = format!("{}/{db}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A fresh, empty database of the backend; removed when dropped (unless it is an attachment).
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("crm-iam.db").display()),
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!("crm_iam_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(postgres_admin_url()).await.expect("connect to PostgreSQL");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                admin.close().await.ok();
                TestDb { url: with_database(&postgres_admin_url(), &name), pg_name: Some(name), _dir: dir }
            }
        }
    }

    /// The same database again, for a second server (it does not drop the database).
    pub fn attach(other: &TestDb) -> TestDb {
        TestDb { url: other.url.clone(), pg_name: None, _dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A direct connection, for checking what is stored.
    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url).await.expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside any runtime guarantee: use a private one on a plain thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(admin) = Database::connect(postgres_admin_url()).await {
                        let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where /metrics is served, when the config asked for it.
    pub metrics_addr: Option<SocketAddr>,
    /// The plaintext health listener, when the config asked for it.
    pub health_addr: Option<SocketAddr>,
    /// The HTTP listener (SCIM), when the config asked for it.
    pub http_addr: Option<SocketAddr>,
    pub db: TestDb,
    handle: ShutdownHandle,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn test_config(db: &TestDb) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        admin_token: Some(ADMIN_TOKEN.to_owned().into()),
        master_key: Some(MASTER_KEY.to_owned().into()),
        db_max_connections: 5,
        password_hash_threads: 2,
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let db = TestDb::new(backend).await;
        let mut config = test_config(&db);
        adjust(&mut config);
        Self::start_on(db, config).await
    }

    /// Starts a server on an existing database.
    pub async fn start_on(db: TestDb, config: Config) -> TestServer {
        init_telemetry();
        let app = Application::build(config).await.expect("build application");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let health_addr = app.health_addr();
        let http_addr = app.http_addr();
        let handle = app.shutdown_handle();
        let join = tokio::spawn(app.run());
        TestServer { addr, metrics_addr, health_addr, http_addr, db, handle, join }
    }

    /// Stops the server (graceful drain) and returns its database.
    pub async fn stop(self) -> TestDb {
        self.handle.shutdown();
        self.join.await.expect("server task").expect("server ran cleanly");
        self.db
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.expect("connect")
    }

    pub async fn tenants(&self) -> TenantAdminClient<InterceptedService<Channel, Bearer>> {
        TenantAdminClient::with_interceptor(self.channel().await, Bearer::admin())
    }

    pub async fn users(&self) -> UserAdminClient<InterceptedService<Channel, Bearer>> {
        UserAdminClient::with_interceptor(self.channel().await, Bearer::admin())
    }

    pub async fn roles(&self) -> RoleAdminClient<InterceptedService<Channel, Bearer>> {
        RoleAdminClient::with_interceptor(self.channel().await, Bearer::admin())
    }

    pub async fn audit(&self) -> AuditEventsClient<InterceptedService<Channel, Bearer>> {
        AuditEventsClient::with_interceptor(self.channel().await, Bearer::admin())
    }

    pub async fn ownership(
        &self,
    ) -> pb::ownership_transfer_client::OwnershipTransferClient<InterceptedService<Channel, Bearer>> {
        pb::ownership_transfer_client::OwnershipTransferClient::with_interceptor(self.channel().await, Bearer::admin())
    }

    pub async fn access(&self) -> AccessClient<InterceptedService<Channel, Bearer>> {
        AccessClient::with_interceptor(self.channel().await, Bearer::admin())
    }

    /// An Auth client without a token.
    pub async fn auth(&self) -> pb::auth_client::AuthClient<InterceptedService<Channel, Bearer>> {
        pb::auth_client::AuthClient::with_interceptor(self.channel().await, Bearer::none())
    }

    /// An Auth client calling with `token`.
    pub async fn auth_as(&self, token: &str) -> pb::auth_client::AuthClient<InterceptedService<Channel, Bearer>> {
        pb::auth_client::AuthClient::with_interceptor(self.channel().await, Bearer::token(token))
    }

    /// A UserAdmin client calling with `token`.
    pub async fn users_as(&self, token: &str) -> UserAdminClient<InterceptedService<Channel, Bearer>> {
        UserAdminClient::with_interceptor(self.channel().await, Bearer::token(token))
    }

    /// A RoleAdmin client calling with `token`.
    pub async fn roles_as(&self, token: &str) -> RoleAdminClient<InterceptedService<Channel, Bearer>> {
        RoleAdminClient::with_interceptor(self.channel().await, Bearer::token(token))
    }

    /// Creates an ACTIVE user with a permanent password and returns its id.
    pub async fn password_user(&self, tenant: &str, email: &str, password: &str, role_ids: &[String]) -> String {
        let mut req = invite(tenant, email);
        req.send_invitation = false;
        req.initial_password = password.into();
        req.password_is_permanent = true;
        req.role_ids = role_ids.to_vec();
        self.users().await.create_user(req).await.expect("create user").into_inner().user.unwrap().user_id
    }

    /// Logs in and returns the tokens.
    pub async fn login(&self, tenant: &str, email: &str, password: &str) -> pb::AuthenticateResponse {
        self.try_login(tenant, email, password, "").await.expect("login")
    }

    pub async fn try_login(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
        totp_code: &str,
    ) -> Result<pb::AuthenticateResponse, Status> {
        self.auth()
            .await
            .authenticate(pb::AuthenticateRequest {
                tenant_id: tenant.into(),
                email: email.into(),
                password: password.into(),
                totp_code: totp_code.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Whether `IntrospectToken` (asked with the admin token) calls the token active.
    pub async fn token_active(&self, token: &str) -> bool {
        pb::auth_client::AuthClient::with_interceptor(self.channel().await, Bearer::admin())
            .introspect_token(pb::IntrospectTokenRequest { token: token.into() })
            .await
            .expect("introspect")
            .into_inner()
            .active
    }

    /// The id of a built-in role of the tenant.
    pub async fn builtin_role(&self, tenant: &str, name: &str) -> String {
        let roles = self
            .roles()
            .await
            .list_roles(pb::ListRolesRequest { tenant_id: tenant.into(), page_size: 1000, page_token: String::new() })
            .await
            .expect("list roles")
            .into_inner()
            .roles;
        roles.into_iter().find(|r| r.builtin && r.name == name).expect("built-in role").role_id
    }

    /// Creates an ACTIVE user (without hashing a password: invited, then reactivated through the
    /// database-free path of deactivate/reactivate) in a department, with roles.
    pub async fn active_user(&self, tenant: &str, email: &str, department: &str, role_ids: &[String]) -> String {
        let mut users = self.users().await;
        let mut req = invite(tenant, email);
        req.user.as_mut().unwrap().department_id = department.into();
        req.role_ids = role_ids.to_vec();
        let id = users.create_user(req).await.expect("create user").into_inner().user.unwrap().user_id;
        users
            .deactivate_user(pb::DeactivateUserRequest {
                tenant_id: tenant.into(),
                user_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("deactivate");
        users
            .reactivate_user(pb::ReactivateUserRequest {
                tenant_id: tenant.into(),
                user_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("reactivate");
        id
    }

    /// Creates a department and returns its id.
    pub async fn department(&self, tenant: &str, name: &str, parent: &str) -> String {
        self.users()
            .await
            .create_department(pb::CreateDepartmentRequest {
                tenant_id: tenant.into(),
                department: Some(pb::Department {
                    name: name.into(),
                    parent_department_id: parent.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create department")
            .into_inner()
            .department
            .unwrap()
            .department_id
    }

    /// Creates a tenant with the given seat limit and returns its id.
    pub async fn tenant(&self, id: &str, seat_limit: i32) -> String {
        self.tenants()
            .await
            .create_tenant(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    tenant_id: id.into(),
                    display_name: format!("Tenant {id}"),
                    seat_limit,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create tenant");
        id.to_owned()
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<String>);

impl Bearer {
    pub fn admin() -> Bearer {
        Bearer(Some(ADMIN_TOKEN.into()))
    }
    pub fn token(t: &str) -> Bearer {
        Bearer(Some(t.into()))
    }
    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {t}")).unwrap());
        }
        Ok(req)
    }
}

/// Asserts the status code and returns the error reason (ErrorInfo.reason).
pub fn expect_code(result: Result<impl std::fmt::Debug, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            s
        }
    }
}

pub fn reason(s: &Status) -> String {
    s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// The field paths of a BadRequest detail.
pub fn bad_fields(s: &Status) -> Vec<String> {
    let details = s.get_error_details();
    let mut fields: Vec<String> =
        details.bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default();
    fields.sort();
    fields
}

/// Runs a scalar query (first column of the first row, as i64).
pub async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let backend = db.get_database_backend();
    let row = db.query_one_raw(Statement::from_string(backend, sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// A valid new-user request (invited, so no password hashing is needed).
pub fn invite(tenant: &str, email: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        tenant_id: tenant.into(),
        user: Some(pb::User {
            email: email.into(),
            given_name: "Test".into(),
            family_name: "User".into(),
            ..Default::default()
        }),
        send_invitation: true,
        ..Default::default()
    }
}

/// Polls `check` until it returns true (at most ~10 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, Duration::from_secs(10), || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `check` (every 20 ms) until it gives a value, for at most `limit`; the one poll loop of
/// the tests. `what` names the event in the failure.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The authenticator of an `otpauth://` URI (from EnrollTotp).
pub fn totp_for(uri: &str) -> totp_rs::Totp {
    totp_rs::Totp::from_url(uri).expect("otpauth URI")
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The code of the step `offset_secs` after `base`. Tests fix `base` once, so a step boundary
/// crossed while they run cannot turn an expected replay into a fresh code.
pub fn code_at(t: &totp_rs::Totp, base: i64, offset_secs: i64) -> String {
    t.generate((base + offset_secs) as u64).to_string()
}

/// The text of `/metrics` at `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of an unlabelled gauge or counter in a scrape.
pub fn gauge_of(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
}

/// The tenant's audit events whose action starts with one of `prefixes`, oldest first.
pub async fn audit_events(server: &TestServer, tenant: &str, prefixes: &[&str]) -> Vec<pb::AuditEvent> {
    server
        .audit()
        .await
        .list_events(pb::ListEventsRequest {
            tenant_id: tenant.into(),
            action_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list events")
        .into_inner()
        .events
}

/// A detail of an audit event as text ("" when it has none).
pub fn detail(e: &pb::AuditEvent, key: &str) -> String {
    match e.details.as_ref().and_then(|d| d.fields.get(key)).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        Some(prost_types::value::Kind::BoolValue(b)) => b.to_string(),
        Some(prost_types::value::Kind::NumberValue(n)) => n.to_string(),
        _ => String::new(),
    }
}
