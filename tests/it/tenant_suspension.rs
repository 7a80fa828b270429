//! A tenant suspended by the platform (TenantAdmin.SuspendTenant / ResumeTenant): its users cannot
//! log in, refresh or use tokens they hold, its SCIM token is refused, Access.Check denies; another
//! tenant notices nothing; resuming restores all of it, sessions included.

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, audit_events, bad_fields, detail, expect_code, pb, reason},
    scim::{Scim, token as scim_token},
};

both_backends!(a_suspended_tenant_is_shut_and_resuming_restores_it, only_the_platform_suspends);

const PASSWORD: &str = "correct horse battery staple";

struct Member {
    user_id: String,
    tokens: pb::AuthenticateResponse,
}

async fn member(s: &TestServer, tenant: &str) -> Member {
    s.tenant(tenant, 0).await;
    let admin = s.builtin_role(tenant, "administrator").await;
    let email = format!("boss@{tenant}.example");
    let user_id = s.password_user(tenant, &email, PASSWORD, &[admin]).await;
    Member { user_id, tokens: s.login(tenant, &email, PASSWORD).await }
}

async fn suspend(s: &TestServer, tenant: &str, reason: &str) -> pb::Tenant {
    let req = pb::SuspendTenantRequest { tenant_id: tenant.into(), reason: reason.into(), ..Default::default() };
    s.tenants().await.suspend_tenant(req).await.unwrap().into_inner().tenant.unwrap()
}

async fn resume(s: &TestServer, tenant: &str, reason: &str) -> pb::Tenant {
    let req = pb::ResumeTenantRequest { tenant_id: tenant.into(), reason: reason.into(), ..Default::default() };
    s.tenants().await.resume_tenant(req).await.unwrap().into_inner().tenant.unwrap()
}

fn deals_edit(tenant: &str, user: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        user_id: user.into(),
        module: "deals".into(),
        action: "edit".into(),
        ..Default::default()
    }
}

/// Whether each door of the tenant is open: the held access token on an RPC, a new login,
/// Access.Check for the user, and the SCIM token.
async fn doors(s: &TestServer, tenant: &str, m: &Member, scim: &Scim) -> [Result<(), Code>; 4] {
    let rpc = s
        .users_as(&m.tokens.access_token)
        .await
        .get_user(pb::GetUserRequest { tenant_id: tenant.into(), user_id: m.user_id.clone() })
        .await
        .map(|_| ())
        .map_err(|e| e.code());
    let login =
        s.try_login(tenant, &format!("boss@{tenant}.example"), PASSWORD, "").await.map(|_| ()).map_err(|e| e.code());
    let allowed = s.access().await.check(deals_edit(tenant, &m.user_id)).await.unwrap().into_inner().allowed;
    let scim = match scim.send("GET", "/Users", None, None).await.status {
        200 => Ok(()),
        403 => Err(Code::PermissionDenied),
        other => panic!("SCIM answered {other}"),
    };
    [rpc, login, if allowed { Ok(()) } else { Err(Code::PermissionDenied) }, scim]
}

async fn a_suspended_tenant_is_shut_and_resuming_restores_it(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.http_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let (a, b) = (member(&s, "sus-a").await, member(&s, "sus-b").await);
    let (scim_a, scim_b) =
        (Scim::new(&s, &scim_token(&s, "sus-a", "idp").await), Scim::new(&s, &scim_token(&s, "sus-b", "idp").await));
    assert_eq!(doors(&s, "sus-a", &a, &scim_a).await, [Ok(()); 4], "all open before");

    let suspended = suspend(&s, "sus-a", "invoice 42 unpaid").await;
    assert_eq!(suspended.state(), pb::TenantState::Suspended);
    assert_eq!(suspended.suspend_reason, "invoice 42 unpaid");
    assert!(suspended.suspend_time.is_some());

    let denied = Err(Code::PermissionDenied);
    assert_eq!(doors(&s, "sus-a", &a, &scim_a).await, [denied; 4], "every door shut");
    let e = expect_code(
        s.users_as(&a.tokens.access_token)
            .await
            .get_user(pb::GetUserRequest { tenant_id: "sus-a".into(), user_id: a.user_id.clone() })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&e), "TENANT_SUSPENDED");
    let e = expect_code(
        s.auth().await.refresh(pb::RefreshRequest { refresh_token: a.tokens.refresh_token.clone() }).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&e), "TENANT_SUSPENDED");
    assert!(!s.token_active(&a.tokens.access_token).await, "introspection calls the token inactive");
    assert_eq!(doors(&s, "sus-b", &b, &scim_b).await, [Ok(()); 4], "the other tenant notices nothing");

    // Suspending again changes nothing: the first reason stays, one event.
    let again = suspend(&s, "sus-a", "again").await;
    assert_eq!(again.suspend_reason, "invoice 42 unpaid");

    let resumed = resume(&s, "sus-a", "paid").await;
    assert_eq!(resumed.state(), pb::TenantState::Active);
    assert!(resumed.suspend_reason.is_empty() && resumed.suspend_time.is_none());
    assert_eq!(doors(&s, "sus-a", &a, &scim_a).await, [Ok(()); 4], "resuming restores, the held token included");
    assert!(s.token_active(&a.tokens.access_token).await);

    let events = audit_events(&s, "sus-a", &["tenant.suspended", "tenant.resumed"]).await;
    let seen: Vec<(&str, String)> = events.iter().map(|e| (e.action.as_str(), detail(e, "reason"))).collect();
    assert_eq!(
        seen,
        [("tenant.suspended", "invoice 42 unpaid".to_owned()), ("tenant.resumed", "paid".to_owned())],
        "one event per change, with its reason"
    );
}

async fn only_the_platform_suspends(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = member(&s, "sus-c").await;
    let as_admin = pb::tenant_admin_client::TenantAdminClient::with_interceptor(
        s.channel().await,
        crate::common::Bearer::token(&a.tokens.access_token),
    );
    let e = expect_code(
        as_admin
            .clone()
            .suspend_tenant(pb::SuspendTenantRequest {
                tenant_id: "sus-c".into(),
                reason: "x".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&e), "PERMISSION_DENIED", "even the tenant's own administrator may not");
    let e = expect_code(
        s.tenants()
            .await
            .suspend_tenant(pb::SuspendTenantRequest { tenant_id: "sus-c".into(), ..Default::default() })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&e), ["reason"]);
    let e = expect_code(
        s.tenants()
            .await
            .suspend_tenant(pb::SuspendTenantRequest {
                tenant_id: "nobody".into(),
                reason: "x".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&e), "TENANT_NOT_FOUND");
    // Nothing changed: the user still works.
    s.login("sus-c", "boss@sus-c.example", PASSWORD).await;
}
