//! Logins and CreateUser against the argon2 ceilings (raw verifications and hashes), Access.Check
//! latency while logins and user creations flood the server, and token introspection against the
//! echo floor.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crm_iam::{
    proto::v1::{self as pb, auth_client::AuthClient, user_admin_client::UserAdminClient},
    service::auth::hashing::{self as password, Passwords},
};
use secrecy::SecretString;

use crate::proto::EchoRequest;
use tonic::service::interceptor::InterceptedService;

use crate::{
    Database, access,
    harness::{self, Bearer, Load, Row, Server, Stats, fmt_stats},
};

/// Users who log in: enough that no two callers log in as one user at once (a login flood is many
/// users once each; one account's concurrent verifications are capped by its lockout).
const LOGIN_USERS: usize = 512;
const PASSWORD: &str = "velvet staircase under morning rain";

/// Raw argon2 operations per second on `threads` OS threads: the server's own hashing or
/// verification function (same parameters, same reused working memory), nothing else, on as many
/// threads as the server's hashing pool, measured for `duration`.
fn argon2_ceiling(threads: usize, duration: Duration, op: Argon2Op) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let hash = rt.block_on(Passwords::new(1, 0).hash(SecretString::from(PASSWORD))).expect("hash");
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (hash, done) = (hash.clone(), done.clone());
            std::thread::spawn(move || {
                while start.elapsed() < duration {
                    match op {
                        Argon2Op::Verify => assert!(password::verify_now(PASSWORD.as_bytes(), &hash)),
                        Argon2Op::Hash => assert!(password::hash_now(PASSWORD.as_bytes()).is_ok()),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("argon2 thread");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[derive(Clone, Copy)]
enum Argon2Op {
    Hash,
    Verify,
}

/// A tenant with users who log in with a password.
async fn seed_logins(server: &Server) -> anyhow::Result<()> {
    let ch = server.channel().await?;
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: access::TENANT.into(),
                display_name: "Benchmark".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?;
    // Each user logs in hundreds of times here; the default limit of 10 sessions would make most
    // logins also evict one (a real login flood is many users once each, not this).
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: access::TENANT.into(),
                settings: Some(pb::TenantSettings {
                    session_policy: Some(pb::SessionPolicy { max_sessions_per_user: 100, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["settings.session_policy".into()] }),
            ..Default::default()
        })
        .await?;
    let users = UserAdminClient::new(ch);
    let requests = (0..LOGIN_USERS).map(|i| pb::CreateUserRequest {
        tenant_id: access::TENANT.into(),
        user: Some(pb::User {
            email: format!("login{i}@bench.example"),
            given_name: format!("Login{i}"),
            ..Default::default()
        }),
        initial_password: PASSWORD.into(),
        password_is_permanent: true,
        ..Default::default()
    });
    use futures::StreamExt;
    let created: Vec<_> = futures::stream::iter(requests)
        .map(|r| {
            let mut users = users.clone();
            async move { users.create_user(r).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

fn login_request(i: u64) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        tenant_id: access::TENANT.into(),
        email: format!("login{}@bench.example", i as usize % LOGIN_USERS),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

async fn logins(channels: Vec<tonic::transport::Channel>, load: Load, stop: Arc<AtomicBool>) -> Stats {
    harness::run_until(&channels, load, stop, |ch, i| async move {
        AuthClient::new(ch).authenticate(login_request(i)).await.map(|_| ())
    })
    .await
}

/// CreateUser with a password (a new user each call, e-mail `{prefix}-{seq}@bench.example`).
async fn create_users(server: &Server, load: Load, prefix: &str) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    let prefix = Arc::new(prefix.to_owned());
    Ok(harness::run(&channels, load, move |ch, i| {
        let prefix = prefix.clone();
        async move { create_user(ch, &prefix, i).await }
    })
    .await)
}

async fn create_user(ch: tonic::transport::Channel, prefix: &str, i: u64) -> Result<(), tonic::Status> {
    UserAdminClient::new(InterceptedService::new(ch, Bearer))
        .create_user(pb::CreateUserRequest {
            tenant_id: access::TENANT.into(),
            user: Some(pb::User {
                email: format!("{prefix}-{i}@bench.example"),
                given_name: format!("New{i}"),
                ..Default::default()
            }),
            initial_password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// The flood: callers alternate between a login and a CreateUser with a password.
async fn flood(channels: Vec<tonic::transport::Channel>, load: Load, stop: Arc<AtomicBool>) -> Stats {
    harness::run_until(&channels, load, stop, |ch, i| async move {
        if i % 2 == 0 {
            AuthClient::new(ch).authenticate(login_request(i)).await.map(|_| ())
        } else {
            create_user(ch, "flood", i).await
        }
    })
    .await
}

async fn introspect(server: &Server, load: Load, token: String) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    let token = Arc::new(token);
    Ok(harness::run(&channels, load, move |ch, _| {
        let token = token.clone();
        async move {
            let mut c = AuthClient::new(InterceptedService::new(ch, Bearer));
            let r = c.introspect_token(pb::IntrospectTokenRequest { token: token.to_string() }).await?;
            if r.into_inner().active { Ok(()) } else { Err(tonic::Status::internal("token reported inactive")) }
        }
    })
    .await)
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let server = Server::start(&db.url, &[("CRM_IAM_LOGIN_FAILURES_PER_ADDRESS", "0")])?;
    seed_logins(&server).await?;
    eprintln!("[{}] seeded {LOGIN_USERS} login users", db.label);

    let avg = access::mean;
    // Ceiling and subject alternate (twice), so drift on a shared machine hits both alike.
    let (mut ceilings, mut auths) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let op = Argon2Op::Verify;
        ceilings.push(tokio::task::spawn_blocking(move || argon2_ceiling(threads, load.duration, op)).await?);
        auths.push(logins(server.channels(load.connections).await?, load, Arc::new(AtomicBool::new(false))).await);
    }
    let ceiling = ceilings.iter().sum::<f64>() / ceilings.len() as f64;
    let auth = avg(&auths);
    let (mut hash_ceilings, mut creates) = (Vec::new(), Vec::new());
    for round in 0..2 {
        let op = Argon2Op::Hash;
        hash_ceilings.push(tokio::task::spawn_blocking(move || argon2_ceiling(threads, load.duration, op)).await?);
        creates.push(create_users(&server, load, &format!("new{round}")).await?);
    }
    let hash_ceiling = hash_ceilings.iter().sum::<f64>() / hash_ceilings.len() as f64;
    let create = avg(&creates);

    let t = Instant::now();
    let seed = access::seed(&server).await?;
    eprintln!("[{}] seeded the access tenant in {:.1} s", db.label, t.elapsed().as_secs_f64());
    let pool = Arc::new(access::checks(&seed, 20_000));

    // Access.Check idle, then while 16 callers log in as fast as they can.
    let idle = access::check(&server, load, pool.clone()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let flood_load =
        Load { concurrency: 16, connections: 2, warmup: Duration::ZERO, duration: load.warmup + load.duration * 2 };
    let flood = tokio::spawn(flood(server.channels(2).await?, flood_load, stop.clone()));
    let busy = access::check(&server, load, pool.clone()).await?;
    stop.store(true, Ordering::Relaxed);
    let flood = flood.await?;

    // IntrospectToken against the echo floor.
    let token = AuthClient::new(server.channels(1).await?.remove(0)).authenticate(login_request(0)).await?.into_inner();
    let echo_pool = Arc::new(vec![EchoRequest { tenant_id: access::TENANT.into(), ..Default::default() }]);
    let (mut echoes, mut intros) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        echoes.push(access::echo(&server, load, echo_pool.clone()).await?);
        intros.push(introspect(&server, load, token.access_token.clone()).await?);
    }
    server.stop();
    let (echo, intro) = (avg(&echoes), avg(&intros));

    let mut rows = Vec::new();
    let mut r = Row::new("Authenticate throughput", db.label);
    r.value = fmt_stats(&auth);
    r.baseline = format!("raw argon2id verify {ceiling:.1}/s on {threads} threads");
    let ratio = auth.rate / ceiling;
    r.ratio = format!("{:.0}% of argon2", ratio * 100.0);
    r.target = "≥ 85% of argon2".into();
    r.met = Some(ratio >= 0.85 && auth.errors == 0);
    rows.push(r);
    let mut r = Row::new("CreateUser (with a password) throughput", db.label);
    r.value = fmt_stats(&create);
    r.baseline = format!("raw argon2id hash {hash_ceiling:.1}/s on {threads} threads");
    let ratio = create.rate / hash_ceiling;
    r.ratio = format!("{:.0}% of argon2", ratio * 100.0);
    r.target = "≥ 85% of argon2".into();
    r.met = Some(ratio >= 0.85 && create.errors == 0);
    rows.push(r);
    let mut r = Row::new("Access.Check p99 during a login + CreateUser flood", db.label);
    r.value = format!(
        "{:.2} ms ({:.0}/s; logins and creates {:.1}/s{})",
        busy.p99_ms,
        busy.rate,
        flood.rate,
        if flood.errors > 0 { format!(", {} failed", flood.errors) } else { String::new() }
    );
    r.baseline = format!("idle p99 {:.2} ms ({:.0}/s)", idle.p99_ms, idle.rate);
    let ratio = busy.p99_ms / idle.p99_ms;
    r.ratio = format!("{ratio:.2}× idle");
    r.target = "≤ 1.5× idle p99".into();
    r.met = Some(ratio <= 1.5 && busy.errors == 0);
    rows.push(r);
    let mut r = Row::new("IntrospectToken throughput", db.label);
    r.value = fmt_stats(&intro);
    r.baseline = format!("echo {}", fmt_stats(&echo));
    let ratio = intro.rate / echo.rate;
    r.ratio = format!("{:.0}% of echo", ratio * 100.0);
    r.target = "≥ 70% of echo".into();
    r.met = Some(ratio >= 0.70 && intro.errors == 0);
    rows.push(r);
    Ok(rows)
}
