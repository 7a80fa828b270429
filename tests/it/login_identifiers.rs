//! Password logins by username or phone number (issue 19, point 4): the tenant's login policy
//! decides which identifiers a login may name; every refusal looks the same whatever the kind;
//! the lockout counts per account, so three identifiers do not give three times the guesses.

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, audit_events, bad_fields, detail, expect_code, invite, pb, reason},
};

const PASSWORD: &str = "velvet staircase under morning rain";
const WRONG: &str = "a wrong guess at the password";

both_backends!(logins_by_username_and_phone_follow_the_tenant_policy, three_identifiers_do_not_triple_the_guesses);

#[derive(Clone, Copy)]
enum By<'a> {
    Email(&'a str),
    Username(&'a str),
    Phone(&'a str),
}

async fn try_login(server: &TestServer, tenant: &str, by: By<'_>, password: &str) -> Result<String, tonic::Status> {
    let mut req = pb::AuthenticateRequest { tenant_id: tenant.into(), password: password.into(), ..Default::default() };
    match by {
        By::Email(v) => req.email = v.into(),
        By::Username(v) => req.username = v.into(),
        By::Phone(v) => req.phone = v.into(),
    }
    Ok(server.auth().await.authenticate(req).await?.into_inner().access_token)
}

async fn set_identifiers(server: &TestServer, tenant: &str, identifiers: &[pb::LoginIdentifier]) {
    server
        .tenants()
        .await
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: tenant.into(),
                settings: Some(pb::TenantSettings {
                    login_policy: Some(pb::LoginPolicy {
                        identifiers: identifiers.iter().map(|i| *i as i32).collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["settings.login_policy".into()] }),
            ..Default::default()
        })
        .await
        .expect("update the login policy");
}

async fn user(server: &TestServer, tenant: &str, email: &str, username: &str, phone: &str) -> String {
    let mut req = invite(tenant, email);
    let u = req.user.as_mut().unwrap();
    u.username = username.into();
    u.phone = phone.into();
    req.send_invitation = false;
    req.initial_password = PASSWORD.into();
    req.password_is_permanent = true;
    server.users().await.create_user(req).await.expect("create user").into_inner().user.unwrap().user_id
}

async fn failures(server: &TestServer, tenant: &str) -> Vec<pb::AuditEvent> {
    audit_events(server, tenant, &["auth.login_failed", "auth.locked"]).await
}

fn reason_of(e: &pb::AuditEvent) -> String {
    detail(e, "reason")
}

async fn logins_by_username_and_phone_follow_the_tenant_policy(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let ann = user(&server, "acme", "ann@example.com", "Ann.Lee", "+14155550123").await;
    let wrong =
        expect_code(try_login(&server, "acme", By::Email("ann@example.com"), WRONG).await, Code::Unauthenticated);

    // The default policy: e-mail only. A username or phone login is refused like a wrong password.
    for by in [By::Username("ann.lee"), By::Phone("+14155550123")] {
        let s = expect_code(try_login(&server, "acme", by, PASSWORD).await, Code::Unauthenticated);
        assert_eq!((s.message(), reason(&s)), (wrong.message(), reason(&wrong)));
    }
    let refused = failures(&server, "acme").await;
    assert_eq!(refused.iter().filter(|e| reason_of(e) == "identifier_not_allowed").count(), 2, "{refused:?}");

    set_identifiers(
        &server,
        "acme",
        &[pb::LoginIdentifier::Email, pb::LoginIdentifier::Username, pb::LoginIdentifier::Phone],
    )
    .await;
    // Usernames compare normalized (case, NFKC); phone numbers as E.164, whatever the spacing.
    for by in
        [By::Username("ANN.LEE"), By::Username("ann.lee"), By::Phone("+1 415 555 0123"), By::Email("Ann@Example.com")]
    {
        let token = try_login(&server, "acme", by, PASSWORD).await.expect("login");
        assert!(server.token_active(&token).await);
        let introspected = server
            .auth_as(&token)
            .await
            .introspect_token(pb::IntrospectTokenRequest { token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(introspected.claims.unwrap().subject, ann);
    }

    // Unknown identifiers of every kind, and a wrong password by each kind: one answer.
    for by in [
        By::Username("nobody"),
        By::Phone("+14155550199"),
        By::Email("nobody@example.com"),
        By::Username("ann.lee"),
        By::Phone("+14155550123"),
    ] {
        let password = if matches!(by, By::Username("ann.lee") | By::Phone("+14155550123")) { WRONG } else { PASSWORD };
        let s = expect_code(try_login(&server, "acme", by, password).await, Code::Unauthenticated);
        assert_eq!((s.message(), reason(&s)), (wrong.message(), reason(&wrong)));
    }
    let trail = format!("{:?}", failures(&server, "acme").await);
    assert!(
        !trail.contains("nobody") && !trail.contains("+14155550199"),
        "unknown identifiers are pseudonymized: {trail}"
    );

    // A phone number two users share names neither: refused, the same way.
    let bob = user(&server, "acme", "bob@example.com", "", "+14155550124").await;
    user(&server, "acme", "carol@example.com", "", "+14155550124").await;
    let s = expect_code(try_login(&server, "acme", By::Phone("+14155550124"), PASSWORD).await, Code::Unauthenticated);
    assert_eq!(s.message(), wrong.message());
    assert!(failures(&server, "acme").await.iter().any(|e| reason_of(e) == "ambiguous_identifier"));
    assert!(try_login(&server, "acme", By::Email("bob@example.com"), PASSWORD).await.is_ok(), "{bob}");

    // A policy without e-mail refuses e-mail logins.
    set_identifiers(&server, "acme", &[pb::LoginIdentifier::Username]).await;
    let s =
        expect_code(try_login(&server, "acme", By::Email("ann@example.com"), PASSWORD).await, Code::Unauthenticated);
    assert_eq!(s.message(), wrong.message());
    assert!(try_login(&server, "acme", By::Username("ann.lee"), PASSWORD).await.is_ok());

    // Bad input: precise field errors, nothing tried.
    let both = pb::AuthenticateRequest {
        tenant_id: "acme".into(),
        email: "ann@example.com".into(),
        username: "ann.lee".into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let s = expect_code(server.auth().await.authenticate(both).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["username"], "{s:?}");
    let none = pb::AuthenticateRequest { tenant_id: "acme".into(), password: PASSWORD.into(), ..Default::default() };
    let s = expect_code(server.auth().await.authenticate(none).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["email"], "{s:?}");
    let s = expect_code(try_login(&server, "acme", By::Phone("0123"), PASSWORD).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["phone"], "{s:?}");
    let s = server
        .tenants()
        .await
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "acme".into(),
                settings: Some(pb::TenantSettings {
                    login_policy: Some(pb::LoginPolicy { identifiers: vec![pb::LoginIdentifier::Username as i32, 42] }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["settings.login_policy".into()] }),
            ..Default::default()
        })
        .await;
    let s = expect_code(s, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["tenant.settings.login_policy.identifiers"], "{s:?}");
    server.stop().await;
}

async fn three_identifiers_do_not_triple_the_guesses(backend: Backend) {
    let server = TestServer::start(backend).await;
    server
        .tenants()
        .await
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "acme".into(),
                display_name: "Acme".into(),
                settings: Some(pb::TenantSettings {
                    lockout_policy: Some(pb::LockoutPolicy {
                        max_failed_attempts: 3,
                        lockout_duration: Some(prost_types::Duration { seconds: 300, nanos: 0 }),
                    }),
                    login_policy: Some(pb::LoginPolicy {
                        identifiers: vec![
                            pb::LoginIdentifier::Email as i32,
                            pb::LoginIdentifier::Username as i32,
                            pb::LoginIdentifier::Phone as i32,
                        ],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create tenant");
    let ann = user(&server, "acme", "ann@example.com", "ann", "+14155550123").await;
    // One guess through each identifier: the account's three failures.
    for by in [By::Email("ann@example.com"), By::Username("ann"), By::Phone("+14155550123")] {
        expect_code(try_login(&server, "acme", by, WRONG).await, Code::Unauthenticated);
    }
    // Locked for every identifier, even with the right password.
    for by in [By::Username("ann"), By::Phone("+14155550123"), By::Email("ann@example.com")] {
        let s = expect_code(try_login(&server, "acme", by, PASSWORD).await, Code::Unauthenticated);
        assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    }
    let events = failures(&server, "acme").await;
    let locked: Vec<_> = events.iter().filter(|e| e.action == "auth.locked").collect();
    assert_eq!(locked.len(), 1, "{events:?}");
    assert_eq!(locked[0].target.as_ref().unwrap().id, ann);
    server.stop().await;
}
