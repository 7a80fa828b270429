//! Attacks on memory: oversized fields, and floods of ids nobody has (records, tenants) that
//! used to leave an entry each in the access cache.

use crate::common::{gauge_of as gauge, scrape};
use tonic::Code;

use crate::{
    both_backends,
    common::{ADMIN_TOKEN, Backend, Bearer, TestDb, TestServer, bad_fields, expect_code, pb},
};

const PASSWORD: &str = "velvet staircase under morning rain";

both_backends!(a_huge_resource_id_is_refused_before_any_work, id_floods_stay_within_the_cache_budget);

/// A guest asks about itself with a 1 MiB record id: refused at once, nothing looked up or kept.
async fn a_huge_resource_id_is_refused_before_any_work(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let guest = server.builtin_role("acme", "guest").await;
    let me = server.password_user("acme", "guest@example.com", PASSWORD, &[guest]).await;
    let token = server.login("acme", "guest@example.com", PASSWORD).await.access_token;
    let channel = server.channel().await;
    let mut access = pb::access_client::AccessClient::with_interceptor(channel, Bearer::token(&token))
        .max_encoding_message_size(4 << 20);
    let s = expect_code(
        access
            .check(pb::CheckRequest {
                tenant_id: "acme".into(),
                user_id: me.clone(),
                module: "deals".into(),
                action: "view".into(),
                resource: Some(pb::Resource { resource_id: "r".repeat(1 << 20), ..Default::default() }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&s), ["resource.resource_id"]);
    let s = expect_code(
        access
            .batch_check(pb::BatchCheckRequest {
                tenant_id: "acme".into(),
                checks: (0..1001)
                    .map(|_| pb::BatchCheckItem {
                        user_id: me.clone(),
                        module: "deals".into(),
                        action: "view".into(),
                        resource: None,
                    })
                    .collect(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&s), ["checks"]);
    server.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

/// With a 1 MiB budget, 30,000 distinct record ids and 3,000 tenant ids that do not exist leave
/// the access cache within the budget (owners are evicted, unknown tenants get no entry), and the
/// server's memory grows by little.
async fn id_floods_stay_within_the_cache_budget(backend: Backend) {
    let db = TestDb::new(backend).await;
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (proc, addr) = crate::server::spawn_server(
        &["--listen", "127.0.0.1:0", "--database-url", &db.url, "--metrics-listen", &metrics],
        &[("CRM_IAM_ADMIN_TOKEN", ADMIN_TOKEN), ("CRM_IAM_ACCESS_CACHE_BUDGET", "1MiB")],
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel.clone(), Bearer::admin())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), display_name: "Acme".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let guest = pb::role_admin_client::RoleAdminClient::with_interceptor(channel.clone(), Bearer::admin())
        .list_roles(pb::ListRolesRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .roles
        .into_iter()
        .find(|r| r.name == "guest")
        .unwrap()
        .role_id;
    let mut users = pb::user_admin_client::UserAdminClient::with_interceptor(channel.clone(), Bearer::admin());
    let mut ann = crate::common::invite("acme", "ann@example.com");
    ann.send_invitation = false;
    ann.initial_password = PASSWORD.into();
    ann.role_ids = vec![guest];
    let user = users.create_user(ann).await.unwrap().into_inner().user.unwrap().user_id;
    let metrics: std::net::SocketAddr = metrics.parse().unwrap();
    let mut access = pb::access_client::AccessClient::with_interceptor(channel, Bearer::admin());
    // Warm up (allocator arenas, connection pool) before the baseline.
    let batch = |round: usize| pb::BatchCheckRequest {
        tenant_id: "acme".into(),
        checks: (0..1000)
            .map(|i| pb::BatchCheckItem {
                user_id: user.clone(),
                module: "deals".into(),
                action: "view".into(),
                resource: Some(pb::Resource { resource_id: format!("deal-{round}-{i:0>40}"), ..Default::default() }),
            })
            .collect(),
    };
    for round in 0..5 {
        access.batch_check(batch(round)).await.unwrap();
    }
    let before = rss_kib(proc.child.id());
    for round in 5..35 {
        access.batch_check(batch(round)).await.unwrap();
    }
    for i in 0..3_000 {
        let s = access
            .check(pb::CheckRequest {
                tenant_id: format!("no-such-tenant-{i}"),
                user_id: user.clone(),
                module: "deals".into(),
                action: "view".into(),
                resource: None,
            })
            .await
            .expect_err("no such tenant");
        assert_eq!(s.code(), Code::NotFound);
    }
    let text = scrape(metrics).await;
    let cached = gauge(&text, "crm_iam_access_cache_bounded_bytes");
    assert!(cached <= 1_048_576.0, "the bounded cache holds {cached} bytes, over its 1 MiB budget");
    assert!(cached > 100_000.0, "owners are cached at all ({cached} bytes)");
    assert_eq!(gauge(&text, "crm_iam_access_cache_tenants"), 1.0, "only the tenant that exists has an entry");
    let grown = rss_kib(proc.child.id()).saturating_sub(before);
    assert!(grown < 32 * 1024, "the server grew by {grown} KiB for 30,000 record ids and 3,000 tenant ids");
    drop(proc);
}
