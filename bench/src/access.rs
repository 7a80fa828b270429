//! Access.Check and BatchCheck on a tenant with 50 roles, 5,000 users and a department tree of
//! depth 5, against the echo floor on the same stack.

use std::sync::Arc;

use crm_iam::proto::v1::{
    self as pb, access_client::AccessClient, role_admin_client::RoleAdminClient, user_admin_client::UserAdminClient,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use tonic::service::interceptor::InterceptedService;

use crate::{
    Database,
    harness::{self, Bearer, Load, Row, Server, Stats, bounded, fmt_stats},
    proto::{EchoRequest, echo_client::EchoClient},
};

pub const TENANT: &str = "bench";
const USERS: usize = 5_000;
const CUSTOM_ROLES: usize = 46;
const CRM: [&str; 5] = ["leads", "contacts", "companies", "deals", "tasks"];
const ACTIONS: [&str; 6] = ["view", "create", "edit", "delete", "export", "assign"];

/// The seeded tenant: user ids and department ids.
pub struct Seed {
    pub users: Vec<String>,
    pub departments: Vec<String>,
}

/// Creates the benchmark tenant through the public API.
pub async fn seed(server: &Server) -> anyhow::Result<Seed> {
    let ch = server.channel().await?;
    let mut tenants = pb::tenant_admin_client::TenantAdminClient::new(ch.clone());
    let created = tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: TENANT.into(),
                display_name: "Benchmark".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    match created {
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        other => {
            other?;
        }
    }
    let users = UserAdminClient::new(ch.clone());
    let roles = RoleAdminClient::new(ch.clone());
    let mut rng = StdRng::seed_from_u64(7);

    // A department tree of depth 5 (branching 3: 121 departments).
    let mut departments: Vec<String> = Vec::new();
    let mut level: Vec<String> = vec![String::new()];
    for depth in 0..5 {
        let mut next = Vec::new();
        let creates = level.iter().enumerate().flat_map(|(p, parent)| {
            let fan = if depth == 0 { 1 } else { 3 };
            (0..fan).map(move |k| (format!("d{depth}-{p}-{k}"), parent.clone()))
        });
        let results = bounded(
            16,
            creates.map(|(name, parent)| {
                let mut users = users.clone();
                async move {
                    users
                        .create_department(pb::CreateDepartmentRequest {
                            tenant_id: TENANT.into(),
                            department: Some(pb::Department {
                                name,
                                parent_department_id: parent,
                                ..Default::default()
                            }),
                            request_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().department.unwrap().department_id)
                }
            }),
        )
        .await;
        for r in results {
            next.push(r?);
        }
        departments.extend(next.iter().cloned());
        level = next;
    }

    // 4 built-in and 46 custom roles.
    let listed =
        roles.clone().list_roles(pb::ListRolesRequest { tenant_id: TENANT.into(), ..Default::default() }).await?;
    let builtin: Vec<(String, String)> = listed.into_inner().roles.into_iter().map(|r| (r.name, r.role_id)).collect();
    let mut custom = Vec::new();
    for i in 0..CUSTOM_ROLES {
        let mut permissions = Vec::new();
        for m in CRM {
            for a in ACTIONS {
                if rng.random_bool(0.5) {
                    let scope = [pb::Scope::Own, pb::Scope::Department, pb::Scope::Tenant][rng.random_range(0..3)];
                    permissions.push(pb::Permission { module: m.into(), action: a.into(), scope: scope as i32 });
                }
            }
        }
        let role = roles
            .clone()
            .create_role(pb::CreateRoleRequest {
                tenant_id: TENANT.into(),
                role: Some(pb::Role { name: format!("custom-{i:02}"), permissions, ..Default::default() }),
                ..Default::default()
            })
            .await?;
        custom.push(role.into_inner().role.unwrap().role_id);
    }
    let pick_builtin = |rng: &mut StdRng| {
        let name = ["operator", "operator", "operator", "manager", "guest"].choose(rng).copied().unwrap();
        builtin.iter().find(|(n, _)| n == name).unwrap().1.clone()
    };

    // 5,000 ACTIVE users, each with one built-in role and up to two custom ones.
    let plans: Vec<(usize, String, Vec<String>)> = (0..USERS)
        .map(|i| {
            let mut r = vec![pick_builtin(&mut rng)];
            for _ in 0..rng.random_range(0..=2) {
                r.push(custom.choose(&mut rng).unwrap().clone());
            }
            r.sort();
            r.dedup();
            (i, departments.choose(&mut rng).unwrap().clone(), r)
        })
        .collect();
    let results = bounded(
        32,
        plans.into_iter().map(|(i, dept, role_ids)| {
            let mut users = users.clone();
            async move {
                let user = pb::User {
                    email: format!("user{i}@bench.example"),
                    given_name: format!("User{i}"),
                    department_id: dept,
                    ..Default::default()
                };
                let id = harness::active_user(&mut users, TENANT, user, role_ids).await?;
                Ok::<_, tonic::Status>(id)
            }
        }),
    )
    .await;
    let mut ids = Vec::with_capacity(USERS);
    for r in results {
        ids.push(r?);
    }
    Ok(Seed { users: ids, departments })
}

/// A realistic mix: a third without a resource, a third with an owner, a third with a department.
pub fn checks(seed: &Seed, n: usize) -> Vec<pb::CheckRequest> {
    let mut rng = StdRng::seed_from_u64(11);
    (0..n)
        .map(|i| {
            let resource = match i % 3 {
                0 => None,
                1 => Some(pb::Resource {
                    resource_id: format!("rec-{i}"),
                    owner_user_id: seed.users.choose(&mut rng).unwrap().clone(),
                    department_id: String::new(),
                }),
                _ => Some(pb::Resource {
                    resource_id: format!("rec-{i}"),
                    owner_user_id: String::new(),
                    department_id: seed.departments.choose(&mut rng).unwrap().clone(),
                }),
            };
            pb::CheckRequest {
                tenant_id: TENANT.into(),
                user_id: seed.users.choose(&mut rng).unwrap().clone(),
                module: CRM.choose(&mut rng).unwrap().to_string(),
                action: ACTIONS.choose(&mut rng).unwrap().to_string(),
                resource,
            }
        })
        .collect()
}

fn echo_of(c: &pb::CheckRequest) -> EchoRequest {
    let r = c.resource.clone().unwrap_or_default();
    EchoRequest {
        tenant_id: c.tenant_id.clone(),
        user_id: c.user_id.clone(),
        module: c.module.clone(),
        action: c.action.clone(),
        resource_id: r.resource_id,
        owner_user_id: r.owner_user_id,
        department_id: r.department_id,
    }
}

pub async fn echo(server: &Server, load: Load, pool: Arc<Vec<EchoRequest>>) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    Ok(harness::run(&channels, load, move |ch, i| {
        let pool = pool.clone();
        async move {
            let mut c = EchoClient::new(InterceptedService::new(ch, Bearer));
            c.echo(pool[i as usize % pool.len()].clone()).await.map(|_| ())
        }
    })
    .await)
}

pub async fn check(server: &Server, load: Load, pool: Arc<Vec<pb::CheckRequest>>) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    Ok(harness::run(&channels, load, move |ch, i| {
        let pool = pool.clone();
        async move {
            let mut c = AccessClient::new(InterceptedService::new(ch, Bearer));
            c.check(pool[i as usize % pool.len()].clone()).await.map(|_| ())
        }
    })
    .await)
}

async fn batch(server: &Server, load: Load, pool: Arc<Vec<pb::CheckRequest>>, size: usize) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    let batches: Arc<Vec<pb::BatchCheckRequest>> = Arc::new(
        pool.chunks(size)
            .map(|chunk| pb::BatchCheckRequest {
                tenant_id: TENANT.into(),
                checks: chunk
                    .iter()
                    .map(|c| pb::BatchCheckItem {
                        user_id: c.user_id.clone(),
                        module: c.module.clone(),
                        action: c.action.clone(),
                        resource: c.resource.clone(),
                    })
                    .collect(),
            })
            .collect(),
    );
    Ok(harness::run(&channels, load, move |ch, i| {
        let batches = batches.clone();
        async move {
            let mut c = AccessClient::new(InterceptedService::new(ch, Bearer));
            c.batch_check(batches[i as usize % batches.len()].clone()).await.map(|_| ())
        }
    })
    .await)
}

/// GetUser of random users of the seeded tenant.
async fn get_user(server: &Server, load: Load, users: Arc<Vec<String>>) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    Ok(harness::run(&channels, load, move |ch, i| {
        let users = users.clone();
        async move {
            let mut c = UserAdminClient::new(InterceptedService::new(ch, Bearer));
            let user_id = users[(i as usize).wrapping_mul(2_654_435_761) % users.len()].clone();
            c.get_user(pb::GetUserRequest { tenant_id: TENANT.into(), user_id }).await.map(|_| ())
        }
    })
    .await)
}

/// The page tokens of every page of 50 of the seeded tenant's user list ("" for the first).
async fn page_tokens(server: &Server) -> anyhow::Result<Vec<String>> {
    let mut users = UserAdminClient::new(server.channel().await?);
    let mut tokens = vec![String::new()];
    loop {
        let page = users
            .list_users(pb::ListUsersRequest {
                tenant_id: TENANT.into(),
                page_size: 50,
                page_token: tokens.last().cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(page.users.len() == 50 || page.next_page_token.is_empty(), "short page");
        if page.next_page_token.is_empty() {
            return Ok(tokens);
        }
        tokens.push(page.next_page_token);
    }
}

/// ListUsers, a page of 50 from anywhere in the list (each request a different page).
async fn list_users(server: &Server, load: Load, tokens: Arc<Vec<String>>) -> anyhow::Result<Stats> {
    let channels = server.channels(load.connections).await?;
    Ok(harness::run(&channels, load, move |ch, i| {
        let tokens = tokens.clone();
        async move {
            let mut c = UserAdminClient::new(InterceptedService::new(ch, Bearer));
            let page_token = tokens[i as usize % tokens.len()].clone();
            let page = c
                .list_users(pb::ListUsersRequest {
                    tenant_id: TENANT.into(),
                    page_size: 50,
                    page_token,
                    ..Default::default()
                })
                .await?;
            if page.into_inner().users.len() == 50 { Ok(()) } else { Err(tonic::Status::internal("short page")) }
        }
    })
    .await)
}

/// The mean of several runs of the same load (errors summed).
pub fn mean(runs: &[Stats]) -> Stats {
    let n = runs.len() as f64;
    Stats {
        rate: runs.iter().map(|s| s.rate).sum::<f64>() / n,
        p50_ms: runs.iter().map(|s| s.p50_ms).sum::<f64>() / n,
        p99_ms: runs.iter().map(|s| s.p99_ms).sum::<f64>() / n,
        errors: runs.iter().map(|s| s.errors).sum(),
    }
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(&db.url, &[])?;
    let t = std::time::Instant::now();
    let seed = seed(&server).await?;
    eprintln!("[{}] seeded 5,000 users, 50 roles, 121 departments in {:.1} s", db.label, t.elapsed().as_secs_f64());
    let pool = Arc::new(checks(&seed, 20_000));
    let echo_pool: Arc<Vec<EchoRequest>> = Arc::new(pool.iter().map(echo_of).collect());

    let user_ids = Arc::new(seed.users.clone());
    let tokens = Arc::new(page_tokens(&server).await?);
    let rss_idle = server.rss_mib();

    // Alternate floor and subjects, twice, so drift on a shared machine hits all alike. The
    // server's RSS is sampled throughout.
    let sampler = harness::RssSampler::start(&server);
    let (mut echoes, mut checks_, mut gets, mut lists) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        echoes.push(echo(&server, load, echo_pool.clone()).await?);
        checks_.push(check(&server, load, pool.clone()).await?);
        gets.push(get_user(&server, load, user_ids.clone()).await?);
        lists.push(list_users(&server, load, tokens.clone()).await?);
    }
    let (e, c, g, l) = (mean(&echoes), mean(&checks_), mean(&gets), mean(&lists));
    let b = batch(&server, load, pool.clone(), 100).await?;
    let rss_load = sampler.stop().await;
    server.stop();

    let mut rows = Vec::new();
    let mut r = Row::new("Access.Check throughput", db.label);
    r.value = fmt_stats(&c);
    r.baseline = format!("echo {}", fmt_stats(&e));
    let ratio = c.rate / e.rate;
    r.ratio = format!("{:.0}% of echo", ratio * 100.0);
    r.target = "≥ 70% of echo".into();
    r.met = Some(ratio >= 0.70 && c.errors == 0);
    rows.push(r);
    let mut r = Row::new("Access.Check p99", db.label);
    r.value = format!("{:.2} ms", c.p99_ms);
    r.baseline = format!("echo p99 {:.2} ms", e.p99_ms);
    let ratio = c.p99_ms / e.p99_ms;
    r.ratio = format!("{ratio:.2}× echo");
    r.target = "≤ 1.5× echo p99".into();
    r.met = Some(ratio <= 1.5);
    rows.push(r);
    let mut r = Row::new("BatchCheck (100 checks) decisions", db.label);
    let decisions = b.rate * 100.0;
    r.value = format!("{decisions:.0} decisions/s ({})", fmt_stats(&b));
    r.baseline = format!("single Check {:.0}/s", c.rate);
    let ratio = decisions / c.rate;
    r.ratio = format!("{ratio:.1}× single");
    r.target = "≥ 20× single-check rate".into();
    r.met = Some(ratio >= 20.0 && b.errors == 0);
    rows.push(r);
    let mut r = Row::new("GetUser throughput", db.label);
    r.value = fmt_stats(&g);
    r.baseline = format!("echo {:.0}/s", e.rate);
    let ratio = g.rate / e.rate;
    r.ratio = format!("{:.0}% of echo", ratio * 100.0);
    r.target = "≥ 50% of echo".into();
    r.met = Some(ratio >= 0.50 && g.errors == 0);
    rows.push(r);
    let mut r = Row::new("ListUsers (pages of 50) throughput", db.label);
    r.value = format!("{} ({:.0} users/s)", fmt_stats(&l), l.rate * 50.0);
    r.baseline = format!("echo {:.0}/s", e.rate);
    r.ratio = format!("{:.0}% of echo", l.rate / e.rate * 100.0);
    r.target = "none set (reported)".into();
    r.met = (l.errors > 0).then_some(false);
    rows.push(r);
    let mut r = Row::new("Server RSS under load (Check, GetUser, ListUsers, BatchCheck)", db.label);
    r.value = format!("max {rss_load:.1} MiB");
    r.baseline = format!("{rss_idle:.1} MiB before (5,000 users seeded)");
    r.ratio = format!("+{:.1} MiB", rss_load - rss_idle);
    r.target = "none set (reported)".into();
    rows.push(r);
    Ok(rows)
}
