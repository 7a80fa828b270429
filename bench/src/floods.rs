//! Memory under id floods (the resource attacks of the tenant-walls issue, at full scale): one
//! guest checks 1,000,000 distinct record ids of its tenant, and 100,000 distinct tenant ids that do
//! not exist are asked about. The access cache must stay within its configured budget (the
//! server's gauge) and the server's RSS must grow by less than the budget plus a fixed allowance.

use crm_iam::proto::v1 as pb;

use crate::{
    Database,
    harness::{Row, Server, bounded},
};

const BUDGET_MIB: u64 = 16;
const RECORD_IDS: usize = 1_000_000;
const UNKNOWN_TENANTS: usize = 100_000;

async fn gauge(metrics: std::net::SocketAddr, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(metrics).await?;
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    socket.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("no {name} in the scrape"))
}

pub async fn run(db: &Database) -> anyhow::Result<Vec<Row>> {
    let metrics: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let budget = format!("{BUDGET_MIB}MiB");
    let server = Server::start(
        &db.url,
        &[("CRM_IAM_ACCESS_CACHE_BUDGET", &budget), ("CRM_IAM_METRICS_LISTEN", &metrics.to_string())],
    )?;
    let ch = server.channel().await?;
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "flood".into(), display_name: "Flood".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await?;
    let guest = pb::role_admin_client::RoleAdminClient::new(ch.clone())
        .list_roles(pb::ListRolesRequest { tenant_id: "flood".into(), ..Default::default() })
        .await?
        .into_inner()
        .roles
        .into_iter()
        .find(|r| r.name == "guest")
        .ok_or_else(|| anyhow::anyhow!("no guest role"))?
        .role_id;
    let mut users = pb::user_admin_client::UserAdminClient::new(ch.clone());
    let user = crate::harness::active_user(
        &mut users,
        "flood",
        pb::User { email: "guest@flood.example".into(), given_name: "G".into(), ..Default::default() },
        vec![guest],
    )
    .await?;
    let access = pb::access_client::AccessClient::new(ch.clone());
    let batch = |round: usize| pb::BatchCheckRequest {
        tenant_id: "flood".into(),
        checks: (0..1000)
            .map(|i| pb::BatchCheckItem {
                user_id: user.clone(),
                module: "deals".into(),
                action: "view".into(),
                resource: Some(pb::Resource {
                    resource_id: format!("deal-{round:0>6}-{i:0>30}"),
                    ..Default::default()
                }),
            })
            .collect(),
    };
    // Warm-up: allocator arenas, pools, one of each call.
    for round in 0..5 {
        access.clone().batch_check(batch(round)).await?;
    }
    let before = server.rss_mib();
    let started = std::time::Instant::now();
    let rounds = RECORD_IDS / 1000;
    for r in bounded(
        4,
        (5..5 + rounds).map(|round| {
            let mut a = access.clone();
            let req = batch(round);
            async move { a.batch_check(req).await.map(|_| ()) }
        }),
    )
    .await
    {
        r?;
    }
    let unknown = bounded(
        32,
        (0..UNKNOWN_TENANTS).map(|i| {
            let mut a = access.clone();
            let user = user.clone();
            async move {
                a.check(pb::CheckRequest {
                    tenant_id: format!("no-such-tenant-{i:0>8}"),
                    user_id: user,
                    module: "deals".into(),
                    action: "view".into(),
                    resource: None,
                })
                .await
                .map(|_| ())
                .map_err(|s| s.code())
            }
        }),
    )
    .await;
    anyhow::ensure!(unknown.iter().all(|r| *r == Err(tonic::Code::NotFound)), "every unknown tenant is NOT_FOUND");
    let took = started.elapsed();
    let after = server.rss_mib();
    let cached = gauge(metrics, "crm_iam_access_cache_bounded_bytes").await? / 1_048_576.0;
    let tenants = gauge(metrics, "crm_iam_access_cache_tenants").await?;
    server.stop();

    let mut rows = Vec::new();
    let mut r = Row::new(
        &format!(
            "Id floods: {RECORD_IDS} record ids + {UNKNOWN_TENANTS} unknown tenants, cache budget {BUDGET_MIB} MiB"
        ),
        db.label,
    );
    r.value = format!(
        "cache {cached:.1} MiB, {tenants} tenant entr{}; RSS {before:.0} → {after:.0} MiB (+{:.0}) in {:.0} s",
        if tenants == 1.0 { "y" } else { "ies" },
        after - before,
        took.as_secs_f64()
    );
    r.target = "cache ≤ budget, 1 tenant entry, RSS growth ≤ budget + 32 MiB".into();
    r.met = Some(cached <= BUDGET_MIB as f64 && tenants == 1.0 && after - before <= (BUDGET_MIB + 32) as f64);
    rows.push(r);
    Ok(rows)
}
