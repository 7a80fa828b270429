//! SCIM provisioning against the equivalent gRPC calls, in the same run on the same server:
//! `GET /Users?filter=userName eq "…"` (what an IdP sends before every create) against
//! `ListUsers` with the address as its query, and `PATCH active` (deactivate, then reactivate)
//! against `DeactivateUser` / `ReactivateUser`; then an IdP's first push of 10,000 users through
//! `POST /Users` against `crm-iam users import` of the same people (a CSV, the same concurrency).

use std::time::Instant;

use crm_iam::proto::v1::{self as pb, user_admin_client::UserAdminClient};
use tonic::{Status, service::interceptor::InterceptedService};

use crate::{
    Database,
    harness::{self, Bearer, Load, Row, Server},
};

/// Users the lookups and state changes pick from.
const SEEDED: usize = 2_000;

/// Users of the bulk sync.
const BULK: usize = 10_000;

/// Requests in flight during the bulk sync (the import's default).
const BULK_CONCURRENCY: usize = 8;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Scim {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Scim {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Result<String, Status> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(b);
        }
        let resp = req.send().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if !status.is_success() {
            return Err(Status::internal(format!("{status}: {text}")));
        }
        Ok(text)
    }
}

/// The caller and request number [`harness::run`] gives (callers start 7,919,000 apart).
fn caller_and_step(seq: u64) -> (usize, u64) {
    ((seq / 7_919_000) as usize, seq % 7_919_000)
}

async fn tenant(server: &Server, tenant: &str) -> anyhow::Result<String> {
    let ch = server.channel().await?;
    pb::tenant_admin_client::TenantAdminClient::new(ch.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: tenant.into(), display_name: tenant.into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await?;
    let token = pb::tenant_admin_client::TenantAdminClient::new(ch)
        .create_scim_token(pb::CreateScimTokenRequest { tenant_id: tenant.into(), name: "bench".into(), ttl: None })
        .await?
        .into_inner()
        .token;
    Ok(token)
}

pub async fn run(db: &Database, load: Load) -> anyhow::Result<Vec<Row>> {
    let label = db.label;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&db.url, &[("CRM_IAM_HTTP_LISTEN", listen.as_str())])?;
    let token = tenant(&server, "scim").await?;
    let scim = std::sync::Arc::new(Scim {
        http: reqwest::Client::builder().pool_max_idle_per_host(load.concurrency).build()?,
        base: format!("http://{listen}/scim/v2"),
        token,
    });
    // Seed: invited users, created over gRPC.
    let ch = server.channel().await?;
    let seeded = harness::bounded(
        8,
        (0..SEEDED).map(|i| {
            let mut users = UserAdminClient::new(ch.clone());
            async move {
                users
                    .create_user(pb::CreateUserRequest {
                        tenant_id: "scim".into(),
                        user: Some(pb::User {
                            email: format!("u{i}@scim.example"),
                            given_name: "Bench".into(),
                            ..Default::default()
                        }),
                        send_invitation: true,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().user.unwrap().user_id)
            }
        }),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let ids = std::sync::Arc::new(seeded);
    let channels = server.channels(load.connections).await?;
    let mut rows = Vec::new();

    // Lookups by address.
    let grpc = harness::run(&channels, Load { ..load }, move |c, seq| async move {
        let email = format!("u{}@scim.example", seq as usize % SEEDED);
        let page = UserAdminClient::new(InterceptedService::new(c, Bearer))
            .list_users(pb::ListUsersRequest {
                tenant_id: "scim".into(),
                query: email,
                page_size: 1,
                ..Default::default()
            })
            .await?;
        if page.into_inner().users.is_empty() { Err(Status::not_found("no user")) } else { Ok(()) }
    })
    .await;
    let s = scim.clone();
    let http = harness::run(&channels, Load { ..load }, move |_, seq| {
        let s = s.clone();
        async move {
            let path = format!("/Users?filter=userName%20eq%20%22u{}%40scim.example%22", seq as usize % SEEDED);
            let body = s.send(reqwest::Method::GET, &path, None).await?;
            if body.contains("\"totalResults\":1") { Ok(()) } else { Err(Status::not_found(body)) }
        }
    })
    .await;
    rows.push(ratio_row(
        "SCIM GET /Users?filter=userName eq",
        label,
        &http,
        "ListUsers with the address as query",
        &grpc,
    ));

    // State changes: each caller flips its own users (deactivate, then reactivate).
    let per = SEEDED / load.concurrency.max(1);
    let pick = move |ids: &[String], seq: u64| {
        let (caller, step) = caller_and_step(seq);
        // Steps 1, 2 act on the first user (deactivate, reactivate), 3, 4 on the second, …
        (ids[caller * per + ((step as usize).saturating_sub(1) / 2) % per.max(1)].clone(), step % 2 == 1)
    };
    let ids2 = ids.clone();
    let grpc = harness::run(&channels, Load { ..load }, move |c, seq| {
        let (user_id, deactivate) = pick(&ids2, seq);
        async move {
            let mut users = UserAdminClient::new(InterceptedService::new(c, Bearer));
            let req =
                pb::DeactivateUserRequest { tenant_id: "scim".into(), user_id: user_id.clone(), ..Default::default() };
            if deactivate {
                users.deactivate_user(req).await?;
            } else {
                users
                    .reactivate_user(pb::ReactivateUserRequest {
                        tenant_id: "scim".into(),
                        user_id,
                        ..Default::default()
                    })
                    .await?;
            }
            Ok(())
        }
    })
    .await;
    // The gRPC run left every user ACTIVE or DEACTIVATED: a PATCH sets what it says either way,
    // so the SCIM run starts by deactivating.
    let s = scim.clone();
    let ids3 = ids.clone();
    let http = harness::run(&channels, Load { ..load }, move |_, seq| {
        let (user_id, deactivate) = pick(&ids3, seq);
        let s = s.clone();
        async move {
            let body = format!(
                r#"{{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{{"op":"replace","path":"active","value":{}}}]}}"#,
                !deactivate
            );
            s.send(reqwest::Method::PATCH, &format!("/Users/{user_id}"), Some(body)).await.map(|_| ())
        }
    })
    .await;
    rows.push(ratio_row(
        "SCIM PATCH active (deactivate / reactivate)",
        label,
        &http,
        "DeactivateUser / ReactivateUser",
        &grpc,
    ));

    // The first push: 10,000 users by SCIM POST, against `users import` of the same people.
    let started = Instant::now();
    let s = scim.clone();
    let created = harness::bounded(
        BULK_CONCURRENCY,
        (0..BULK).map(|i| {
            let s = s.clone();
            async move {
                let body = serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("push{i}@scim.example"),
                    "name": {"givenName": "Pushed", "familyName": format!("User {i}")},
                    "title": "Sales", "externalId": format!("idp-{i}"),
                });
                s.send(reqwest::Method::POST, "/Users", Some(body.to_string())).await
            }
        }),
    )
    .await;
    let scim_time = started.elapsed();
    let failed = created.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} SCIM creates failed: {:?}", created.iter().find(|r| r.is_err()));
    let ch = server.channel().await?;
    pb::tenant_admin_client::TenantAdminClient::new(ch)
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "imported".into(),
                display_name: "imported".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("people.csv");
    let mut csv = String::from("email,given_name,family_name,position\n");
    for i in 0..BULK {
        csv.push_str(&format!("push{i}@scim.example,Pushed,User {i},Sales\n"));
    }
    std::fs::write(&file, csv)?;
    let (users, roles) = crm_iam::cli::users::clients(&format!("http://{}", server.addr), harness::TOKEN).await?;
    let started = Instant::now();
    let report = crm_iam::cli::users::import(
        users,
        roles,
        crm_iam::cli::users::ImportOptions {
            tenant: "imported".into(),
            file,
            dry_run: false,
            create_departments: false,
            concurrency: BULK_CONCURRENCY,
            invitations: None,
            progress: false,
        },
    )
    .await?;
    let import_time = started.elapsed();
    anyhow::ensure!(
        report.created == BULK,
        "the import created {} of {BULK}: {:?}",
        report.created,
        report.errors.first()
    );
    let mut r = Row::new(&format!("Initial sync of {BULK} users by SCIM POST ({BULK_CONCURRENCY} in flight)"), label);
    r.value = format!("{:.1} s ({:.0} users/s)", scim_time.as_secs_f64(), BULK as f64 / scim_time.as_secs_f64());
    r.baseline = format!(
        "users import of the same CSV: {:.1} s ({:.0} users/s)",
        import_time.as_secs_f64(),
        BULK as f64 / import_time.as_secs_f64()
    );
    r.ratio = format!("{:.0}%", 100.0 * import_time.as_secs_f64() / scim_time.as_secs_f64());
    r.target = "reported".into();
    rows.push(r);
    server.stop();
    Ok(rows)
}

fn ratio_row(name: &str, label: &str, http: &harness::Stats, floor: &str, grpc: &harness::Stats) -> Row {
    let mut r = Row::new(name, label);
    r.value = harness::fmt_stats(http);
    r.baseline = format!("{floor}: {}", harness::fmt_stats(grpc));
    let ratio = http.rate / grpc.rate.max(1e-9);
    r.ratio = format!("{:.0}%", ratio * 100.0);
    r.target = "≥ 70% of the gRPC rate".into();
    r.met = Some(ratio >= 0.70 && http.errors == 0);
    r
}
