//! What a caller reaches beyond its own: a service credential outside the tenants it serves, a
//! tenant administrator erasing the trail of their own actions, one caller's idempotency key
//! used by another.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::{
    both_backends,
    common::{self, Backend, Bearer, TestServer, bad_fields, expect_code, invite, pb, reason},
};

const PASSWORD: &str = "velvet staircase under morning rain";
const DEALS_TOKEN: &str = "deals-service-token-0123456789";
const DAY: i64 = 86_400;

both_backends!(
    a_service_credential_reaches_only_its_tenants,
    nobody_shortens_the_trail_below_the_platform_floor,
    idempotency_keys_belong_to_their_caller
);

/// `deals` serves acme only: it checks and records there, and every tenant-scoped call to beta,
/// every platform-wide call (tenants, the all-tenant audit stream) is refused as for another
/// tenant's user.
async fn a_service_credential_reaches_only_its_tenants(backend: Backend) {
    use sha2::Digest;
    let server = TestServer::start_with(backend, |c| {
        c.service_credentials = vec![crm_iam::api::authn::ServiceCredential {
            name: "deals".into(),
            token_sha256: hex::encode(sha2::Sha256::digest(DEALS_TOKEN.as_bytes())),
            methods: crm_iam::api::authn::all_methods().iter().map(|m| m.trim_start_matches('/').to_owned()).collect(),
            client_subject: None,
            tenants: Some(vec!["acme".into()]),
        }];
    })
    .await;
    server.tenant("acme", 0).await;
    server.tenant("beta", 0).await;
    let ann = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let bob = server.password_user("beta", "bob@example.com", PASSWORD, &[]).await;
    let channel = server.channel().await;
    let bearer = Bearer::token(DEALS_TOKEN);
    let mut access = pb::access_client::AccessClient::with_interceptor(channel.clone(), bearer.clone());
    let check = |tenant: &str, user: &str| pb::CheckRequest {
        tenant_id: tenant.into(),
        user_id: user.into(),
        module: "deals".into(),
        action: "view".into(),
        resource: None,
    };
    access.check(check("acme", &ann)).await.expect("its own tenant");
    let refused = expect_code(access.check(check("beta", &bob)).await, Code::PermissionDenied);
    assert!(!refused.message().contains("beta"), "{refused:?}");
    let mut users = pb::user_admin_client::UserAdminClient::with_interceptor(channel.clone(), bearer.clone());
    users.create_user(invite("acme", "cy@example.com")).await.expect("its own tenant");
    expect_code(users.create_user(invite("beta", "cy@example.com")).await, Code::PermissionDenied);
    let mut tenants = pb::tenant_admin_client::TenantAdminClient::with_interceptor(channel.clone(), bearer.clone());
    expect_code(tenants.list_tenants(pb::ListTenantsRequest::default()).await, Code::PermissionDenied);
    let mut audit = pb::audit_events_client::AuditEventsClient::with_interceptor(channel.clone(), bearer);
    let all = audit.stream_events(pb::StreamEventsRequest::default()).await;
    expect_code(all, Code::PermissionDenied);
    audit
        .list_events(pb::ListEventsRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .expect("its own tenant's trail");
    // Nothing was written in beta.
    let mut platform = server.users().await;
    let listed = platform
        .list_users(pb::ListUsersRequest { tenant_id: "beta".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 1, "only bob: {listed:?}");
    server.stop().await;
}

fn retention_patch(days: i64) -> pb::UpdateTenantRequest {
    pb::UpdateTenantRequest {
        tenant: Some(pb::Tenant {
            tenant_id: "acme".into(),
            settings: Some(pb::TenantSettings {
                audit_retention: Some(prost_types::Duration { seconds: days * DAY, nanos: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["settings.audit_retention".into()] }),
        ..Default::default()
    }
}

/// A tenant administrator sets the trail's retention to a day (to erase their own actions):
/// refused below the platform's floor, by whoever asks; above it, accepted. A retention stored
/// below the floor (from before it was raised) is kept to the floor by the retention job.
async fn nobody_shortens_the_trail_below_the_platform_floor(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.audit_retention_interval = Duration::from_millis(100);
        c.min_audit_retention = Duration::from_secs(90 * DAY as u64);
    })
    .await;
    server.tenant("acme", 0).await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    server.password_user("acme", "admin@example.com", PASSWORD, &[admin_role]).await;
    let token = server.login("acme", "admin@example.com", PASSWORD).await.access_token;
    let mut as_admin =
        pb::tenant_admin_client::TenantAdminClient::with_interceptor(server.channel().await, Bearer::token(&token));
    let mut as_platform = server.tenants().await;
    for days in [1, 89] {
        let refused = expect_code(as_admin.update_tenant(retention_patch(days)).await, Code::InvalidArgument);
        assert_eq!(bad_fields(&refused), ["tenant.settings.audit_retention"], "{refused:?}");
        assert!(format!("{refused:?}").contains("at least 90d"), "{refused:?}");
        expect_code(as_platform.update_tenant(retention_patch(days)).await, Code::InvalidArgument);
    }
    let created = as_platform
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "short".into(),
                display_name: "Short".into(),
                settings: retention_patch(2).tenant.unwrap().settings,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(created, Code::InvalidArgument)), ["tenant.settings.audit_retention"]);
    let kept = as_admin.update_tenant(retention_patch(120)).await.unwrap().into_inner();
    assert_eq!(kept.tenant.unwrap().settings.unwrap().audit_retention.unwrap().seconds, 120 * DAY);

    // A day stored from before the floor: events 30 days old stay, 200 days old go.
    let db = server.db.connect().await;
    let settings: String = {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT settings FROM tenants WHERE tenant_id = 'acme'",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index(0).unwrap()
    };
    let mut json: serde_json::Value = serde_json::from_str(&settings).unwrap();
    json["audit_retention_secs"] = DAY.into();
    let update = format!("UPDATE tenants SET settings = '{json}' WHERE tenant_id = 'acme'");
    db.execute_unprepared(&update).await.unwrap();
    let mut audit = server.audit().await;
    let events = |audit: &mut pb::audit_events_client::AuditEventsClient<_>| {
        let mut audit = audit.clone();
        async move {
            audit
                .list_events(pb::ListEventsRequest { tenant_id: "acme".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .events
        }
    };
    let all = events(&mut audit).await;
    assert!(all.len() >= 4, "{all:?}");
    let aged = |days: i64| {
        let t = chrono::Utc::now() - chrono::Duration::days(days);
        match backend {
            Backend::Sqlite => format!("'{}'", t.format("%Y-%m-%dT%H:%M:%S+00:00")),
            Backend::Postgres => format!("'{}'", t.format("%Y-%m-%dT%H:%M:%SZ")),
        }
    };
    let literal = |id: &str| match backend {
        Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
        Backend::Postgres => format!("'{id}'"),
    };
    let (month_old, ancient) = (&all[0].event_id, &all[1].event_id);
    for (id, days) in [(month_old, 30), (ancient, 200)] {
        let sql = format!("UPDATE audit_events SET occur_time = {} WHERE event_id = {}", aged(days), literal(id));
        db.execute_unprepared(&sql).await.unwrap();
    }
    common::eventually("retention deletes the 200-day-old event", || {
        let mut audit = audit.clone();
        let ancient = ancient.clone();
        async move { !events(&mut audit).await.iter().any(|e| e.event_id == ancient) }
    })
    .await;
    // That pass saw the month-old event too, and kept it: the floor, not the stored day, applied.
    let left = events(&mut audit).await;
    assert!(left.iter().any(|e| &e.event_id == month_old), "{left:?}");
    assert_eq!(left.len(), all.len() - 1);
    server.stop().await;
}

/// Two administrators of one tenant pick the same request_id: each key is their own. The second
/// neither receives the first one's stored answer nor is refused as a reuse, and the first one's
/// retry still replays its own answer.
async fn idempotency_keys_belong_to_their_caller(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    server.password_user("acme", "one@example.com", PASSWORD, std::slice::from_ref(&admin_role)).await;
    server.password_user("acme", "two@example.com", PASSWORD, &[admin_role]).await;
    let one = server.users_as(&server.login("acme", "one@example.com", PASSWORD).await.access_token).await;
    let two = server.users_as(&server.login("acme", "two@example.com", PASSWORD).await.access_token).await;
    let with_key = |email: &str| {
        let mut r = invite("acme", email);
        r.request_id = "onboarding-2026-12-01".into();
        r
    };
    let first = one.clone().create_user(with_key("cy@example.com")).await.unwrap().into_inner().user.unwrap();
    // The same body under the same key from another caller: a request of its own (here, a duplicate).
    let same = two.clone().create_user(with_key("cy@example.com")).await;
    assert_eq!(reason(&expect_code(same, Code::AlreadyExists)), "EMAIL_TAKEN", "not the first caller's answer");
    // Another body under that key from another caller: done, not refused as a reuse.
    let second = two.clone().create_user(with_key("di@example.com")).await.unwrap().into_inner().user.unwrap();
    assert_ne!(first.user_id, second.user_id);
    // The first caller's retry still replays its own answer.
    let retry = one.clone().create_user(with_key("cy@example.com")).await.unwrap().into_inner().user.unwrap();
    assert_eq!(retry.user_id, first.user_id);
    let reuse = one.clone().create_user(with_key("ed@example.com")).await;
    assert_eq!(reason(&expect_code(reuse, Code::InvalidArgument)), "IDEMPOTENCY_KEY_REUSED");
    server.stop().await;
}
