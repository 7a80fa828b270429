use prost_types::{Duration, FieldMask};
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, Bearer, TestServer, bad_fields, count, expect_code, pb, reason},
};

both_backends!(create_get_list_update_tenants, tenant_validation_and_conflicts, tenant_admin_needs_platform_token);

async fn create_get_list_update_tenants(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut c = s.tenants().await;
    let created = c
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "acme".into(),
                display_name: "Acme".into(),
                seat_limit: 10,
                settings: Some(pb::TenantSettings {
                    restore_window: Some(Duration { seconds: 7 * 86400, nanos: 0 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(created.seat_limit, 10);
    let settings = created.settings.clone().unwrap();
    assert_eq!(settings.restore_window.unwrap().seconds, 7 * 86400, "given value kept");
    assert_eq!(settings.invitation_ttl.unwrap().seconds, 7 * 86400, "default invitation ttl");
    assert_eq!(settings.password_policy.unwrap().min_length, 12, "default policy");
    assert_eq!(settings.audit_retention.unwrap().seconds, 400 * 86400);

    let got =
        c.get_tenant(pb::GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner().tenant.unwrap();
    assert_eq!(got, created);

    // Pagination over tenants walks every one exactly once.
    for i in 0..6 {
        s.tenant(&format!("t-{i:02}"), 0).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_tenants(pb::ListTenantsRequest { page_size: 4, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.tenants.into_iter().map(|t| t.tenant_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["acme", "t-00", "t-01", "t-02", "t-03", "t-04", "t-05"]);

    // Update with a field mask: only the named fields change.
    let updated = c
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "acme".into(),
                display_name: "Acme Corporation".into(),
                seat_limit: 999,
                settings: Some(pb::TenantSettings {
                    invitation_ttl: Some(Duration { seconds: 2 * 86400, nanos: 0 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["display_name".into(), "settings.invitation_ttl".into()] }),
            etag: created.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(updated.display_name, "Acme Corporation");
    assert_eq!(updated.seat_limit, 10, "seat_limit not in the mask");
    let us = updated.settings.unwrap();
    assert_eq!(us.invitation_ttl.unwrap().seconds, 2 * 86400);
    assert_eq!(us.restore_window.unwrap().seconds, 7 * 86400, "other settings kept");
    assert_ne!(updated.etag, created.etag);

    // The old etag is stale now.
    let stale = c
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), seat_limit: 1, ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["seat_limit".into()] }),
            etag: created.etag.clone(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");

    // Audit: one row per change, in the same database.
    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'tenant.created'").await, 7);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'tenant.updated'").await, 1);
    s.stop().await;
}

async fn tenant_validation_and_conflicts(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut c = s.tenants().await;
    let bad = c
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "A_B".into(),
                display_name: "".into(),
                seat_limit: -1,
                settings: Some(pb::TenantSettings {
                    invitation_ttl: Some(Duration { seconds: 60, nanos: 0 }),
                    password_policy: Some(pb::PasswordPolicy { min_length: 4 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    let status = expect_code(bad, Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        [
            "tenant.display_name",
            "tenant.seat_limit",
            "tenant.settings.invitation_ttl",
            "tenant.settings.password_policy.min_length",
            "tenant.tenant_id"
        ]
    );
    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tenants").await, 0, "nothing written");

    s.tenant("acme", 0).await;
    let dup = c
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), display_name: "Again".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(dup, Code::AlreadyExists)), "TENANT_ALREADY_EXISTS");

    let missing = c.get_tenant(pb::GetTenantRequest { tenant_id: "nope".into() }).await;
    assert_eq!(reason(&expect_code(missing, Code::NotFound)), "TENANT_NOT_FOUND");

    let no_mask = c
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), ..Default::default() }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(no_mask, Code::InvalidArgument)), ["update_mask"]);
    let unknown = c
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: "acme".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["display_name".into(), "create_time".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(unknown, Code::InvalidArgument)), ["update_mask.paths[1]"]);
    let out_of_range = c
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "acme".into(),
                settings: Some(pb::TenantSettings {
                    restore_window: Some(Duration { seconds: 10, nanos: 0 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["settings.restore_window".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(out_of_range, Code::InvalidArgument)), ["tenant.settings.restore_window"]);
    let bad_token = c.list_tenants(pb::ListTenantsRequest { page_size: 1, page_token: "garbage".into() }).await;
    assert_eq!(reason(&expect_code(bad_token, Code::InvalidArgument)), "INVALID_PAGE_TOKEN");
    let too_big = c.list_tenants(pb::ListTenantsRequest { page_size: 1001, page_token: String::new() }).await;
    assert_eq!(bad_fields(&expect_code(too_big, Code::InvalidArgument)), ["page_size"]);
    s.stop().await;
}

async fn tenant_admin_needs_platform_token(backend: Backend) {
    let s = TestServer::start(backend).await;
    for bearer in [Bearer::none(), Bearer::token("not-the-token")] {
        let mut c = pb::tenant_admin_client::TenantAdminClient::with_interceptor(s.channel().await, bearer);
        let r = c.list_tenants(pb::ListTenantsRequest::default()).await;
        let st = expect_code(r, Code::Unauthenticated);
        assert_eq!(reason(&st), "UNAUTHENTICATED");
        assert!(!st.message().contains("not-the-token"), "never echo a token: {}", st.message());
        let mut u = pb::user_admin_client::UserAdminClient::with_interceptor(s.channel().await, Bearer::none());
        expect_code(u.get_user(pb::GetUserRequest::default()).await, Code::Unauthenticated);
    }
    s.stop().await;
}
