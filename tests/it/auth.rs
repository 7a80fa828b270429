//! Auth: logins, refresh rotation and theft detection, lockout, the per-address limiter, session
//! limits, invitations and resets, TOTP, revocation, and tokens verified by an independent
//! library (PyJWT) against the JWK Set.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    both_backends,
    common::{Backend, TestServer, bad_fields, code_at, count, expect_code, invite, pb, reason, totp_for, unix_now},
};

const PASSWORD: &str = "velvet staircase under morning rain";
const NEW_PASSWORD: &str = "copper lantern beside a quiet harbor";

async fn tenant_with(server: &TestServer, id: &str, settings: pb::TenantSettings) {
    server
        .tenants()
        .await
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: id.into(),
                display_name: id.into(),
                settings: Some(settings),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create tenant");
}

fn get_user(tenant: &str, user_id: &str) -> pb::GetUserRequest {
    pb::GetUserRequest { tenant_id: tenant.into(), user_id: user_id.into() }
}

async fn audit_actions(server: &TestServer, tenant: &str, prefix: &str) -> Vec<pb::AuditEvent> {
    server
        .audit()
        .await
        .list_events(pb::ListEventsRequest {
            tenant_id: tenant.into(),
            action_prefixes: vec![prefix.into()],
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list events")
        .into_inner()
        .events
}

both_backends!(
    login_refresh_and_logout,
    refresh_reuse_ends_the_session,
    unknown_email_and_wrong_password_look_the_same,
    lockout_grows_and_is_audited,
    address_limiter_slows_spraying,
    session_limit_evicts_the_oldest,
    must_change_password_token_is_restricted,
    invitation_is_single_use_and_expires,
    password_reset_ends_sessions_and_sets_a_new_password,
    totp_enrollment_login_and_recovery_codes,
    deactivation_revokes_at_once,
    mfa_required_for_administrators,
    service_credentials_limit_methods,
);

async fn login_refresh_and_logout(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ANN@example.com", PASSWORD).await;
    assert_eq!(t.user_id, id);
    assert_eq!(t.token_type, "Bearer");
    assert!(!t.refresh_token.is_empty() && !t.password_change_required);
    assert_eq!(t.expires_in.as_ref().unwrap().seconds, 900, "15 minutes by default");

    // The token works for the user's own data, and introspection shows its claims.
    let me = server.users_as(&t.access_token).await.get_user(get_user("acme", &id)).await.unwrap().into_inner();
    assert!(me.user.unwrap().last_login_time.is_some(), "login time recorded");
    let claims = server
        .auth_as(&t.access_token)
        .await
        .introspect_token(pb::IntrospectTokenRequest { token: t.access_token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(claims.active);
    let c = claims.claims.unwrap();
    assert_eq!(
        (c.subject.as_str(), c.tenant_id.as_str(), c.session_id.as_str()),
        (id.as_str(), "acme", t.session_id.as_str())
    );
    assert_eq!((c.issuer.as_str(), c.audience.as_str()), ("crm-iam", "crm"));
    assert_eq!(c.authentication_methods, ["pwd"]);

    // Refresh: new tokens of the same session.
    let r = server
        .auth()
        .await
        .refresh(pb::RefreshRequest { refresh_token: t.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.session_id, t.session_id);
    assert_ne!(r.refresh_token, t.refresh_token);
    assert!(server.token_active(&r.access_token).await);

    // Sessions list the current one.
    let sessions = server
        .auth_as(&r.access_token)
        .await
        .list_sessions(pb::ListSessionsRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current && sessions[0].active);
    assert!(sessions[0].peer.starts_with("127.0.0.1:"), "{}", sessions[0].peer);

    // Logout ends the session: both access tokens become inactive, the refresh token stops working.
    server.auth_as(&r.access_token).await.logout(pb::LogoutRequest {}).await.unwrap();
    assert!(!server.token_active(&t.access_token).await);
    assert!(!server.token_active(&r.access_token).await);
    let s = expect_code(
        server.users_as(&r.access_token).await.get_user(get_user("acme", &id)).await,
        Code::Unauthenticated,
    );
    assert!(s.message().contains("session"), "{s:?}");
    let s = expect_code(
        server.auth().await.refresh(pb::RefreshRequest { refresh_token: r.refresh_token.clone() }).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "TOKEN_INVALID");

    let actions: Vec<String> = audit_actions(&server, "acme", "auth.").await.into_iter().map(|e| e.action).collect();
    assert_eq!(actions.iter().filter(|a| *a == "auth.login_succeeded").count(), 1, "{actions:?}");
    assert!(actions.contains(&"auth.logout".to_owned()), "{actions:?}");
    server.stop().await;
}

async fn refresh_reuse_ends_the_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    let mut auth = server.auth().await;
    let r = auth.refresh(pb::RefreshRequest { refresh_token: t.refresh_token.clone() }).await.unwrap().into_inner();
    // The old refresh token comes back (stolen copy): the whole session ends.
    let s = expect_code(
        auth.refresh(pb::RefreshRequest { refresh_token: t.refresh_token.clone() }).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "TOKEN_INVALID");
    assert!(s.message().contains("already used"), "{s:?}");
    assert!(!server.token_active(&r.access_token).await, "the thief's and the owner's tokens both die");
    expect_code(auth.refresh(pb::RefreshRequest { refresh_token: r.refresh_token }).await, Code::Unauthenticated);
    assert_eq!(audit_actions(&server, "acme", "auth.refresh_reused").await.len(), 1);
    // Garbage is refused without a trace.
    let s = expect_code(auth.refresh(pb::RefreshRequest { refresh_token: String::new() }).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["refresh_token"]);
    server.stop().await;
}

async fn unknown_email_and_wrong_password_look_the_same(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let unknown =
        expect_code(server.try_login("acme", "nobody@example.com", PASSWORD, "").await, Code::Unauthenticated);
    let wrong = expect_code(
        server.try_login("acme", "ann@example.com", "not the password at all", "").await,
        Code::Unauthenticated,
    );
    let no_tenant = expect_code(server.try_login("nope", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(unknown.message(), wrong.message());
    assert_eq!(no_tenant.message(), wrong.message());
    assert_eq!((reason(&unknown), reason(&wrong)), ("INVALID_CREDENTIALS".into(), "INVALID_CREDENTIALS".into()));
    assert!(!wrong.message().contains("not the password"), "never echo a password");
    let failed = audit_actions(&server, "acme", "auth.login_failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|e| !e.peer.is_empty()), "{failed:?}");
    let stored = failed.iter().map(|e| format!("{:?}", e.details)).collect::<String>();
    assert!(!stored.contains("not the password"), "no password in the audit trail");
    server.stop().await;
}

async fn lockout_grows_and_is_audited(backend: Backend) {
    let server = TestServer::start(backend).await;
    let settings = pb::TenantSettings {
        lockout_policy: Some(pb::LockoutPolicy {
            max_failed_attempts: 3,
            lockout_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        }),
        ..Default::default()
    };
    tenant_with(&server, "acme", settings).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    for _ in 0..3 {
        expect_code(server.try_login("acme", "ann@example.com", "a wrong guess here", "").await, Code::Unauthenticated);
    }
    // Locked: even the right password fails, with the same answer.
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    let locked = audit_actions(&server, "acme", "auth.locked").await;
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0].target.as_ref().unwrap().id, id);

    // The lock ends (simulated by moving it into the past); the next lockout lasts twice as long.
    let db = server.db.connect().await;
    // A minute ago: the lock is over, but not a quiet day ago (which would restart the doubling).
    let ended = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let past = match backend {
        Backend::Sqlite => format!("UPDATE login_states SET locked_until = '{ended}'"),
        Backend::Postgres => format!("UPDATE login_states SET locked_until = '{ended}'::timestamptz"),
    };
    db.execute_unprepared(&past).await.unwrap();
    for _ in 0..3 {
        expect_code(server.try_login("acme", "ann@example.com", "a wrong guess here", "").await, Code::Unauthenticated);
    }
    let locked = audit_actions(&server, "acme", "auth.locked").await;
    assert_eq!(locked.len(), 2);
    let durations: Vec<f64> = locked
        .iter()
        .map(|e| e.details.as_ref().unwrap().fields["duration_secs"].kind.clone())
        .map(|k| match k {
            Some(prost_types::value::Kind::NumberValue(n)) => n,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(durations, [60.0, 120.0]);
    db.execute_unprepared(&past).await.unwrap();
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    assert!(server.token_active(&t.access_token).await);
    server.stop().await;
}

async fn address_limiter_slows_spraying(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 3).await;
    server.tenant("acme", 0).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    // A success gives its slot back: logins that work never use up an address's budget.
    for _ in 0..5 {
        server.login("acme", "ann@example.com", PASSWORD).await;
    }
    for i in 0..3 {
        expect_code(
            server.try_login("acme", &format!("u{i}@example.com"), "spray spray spray", "").await,
            Code::Unauthenticated,
        );
    }
    // Password spraying across accounts from one address: refused before any hashing.
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::ResourceExhausted);
    assert_eq!(reason(&s), "TOO_MANY_ATTEMPTS");
    let delay = s.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(delay > Duration::ZERO && delay <= Duration::from_secs(60), "{delay:?}");
    server.stop().await;
}

async fn set_max_sessions(server: &TestServer, tenant_id: &str, max: i32) {
    server
        .tenants()
        .await
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: tenant_id.into(),
                settings: Some(pb::TenantSettings {
                    session_policy: Some(pb::SessionPolicy { max_sessions_per_user: max, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["settings.session_policy".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn session_limit_evicts_the_oldest(backend: Backend) {
    let server = TestServer::start(backend).await;
    let settings = pb::TenantSettings {
        session_policy: Some(pb::SessionPolicy { max_sessions_per_user: 2, ..Default::default() }),
        ..Default::default()
    };
    tenant_with(&server, "acme", settings).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let first = server.login("acme", "ann@example.com", PASSWORD).await;
    let second = server.login("acme", "ann@example.com", PASSWORD).await;
    let third = server.login("acme", "ann@example.com", PASSWORD).await;
    assert!(!server.token_active(&first.access_token).await, "the oldest session was evicted");
    assert!(server.token_active(&second.access_token).await && server.token_active(&third.access_token).await);
    let mut auth = server.auth_as(&third.access_token).await;
    let list =
        |include_ended| pb::ListSessionsRequest { tenant_id: "acme".into(), include_ended, ..Default::default() };
    let open = auth.list_sessions(list(false)).await.unwrap().into_inner().sessions;
    assert_eq!(open.iter().map(|s| s.session_id.as_str()).collect::<Vec<_>>(), [&third.session_id, &second.session_id]);
    let all = auth.list_sessions(list(true)).await.unwrap().into_inner().sessions;
    let evicted = all.iter().find(|s| s.session_id == first.session_id).unwrap();
    assert!(!evicted.active && evicted.end_reason == "evicted", "{evicted:?}");

    // RevokeSessions on oneself: ends the named one.
    let n = auth
        .revoke_sessions(pb::RevokeSessionsRequest {
            tenant_id: "acme".into(),
            session_ids: vec![second.session_id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(n, 1);
    assert!(!server.token_active(&second.access_token).await);
    assert!(server.token_active(&third.access_token).await);

    // A changed limit applies to the next login (the tenant's settings are cached between logins).
    set_max_sessions(&server, "acme", 1).await;
    let fourth = server.login("acme", "ann@example.com", PASSWORD).await;
    assert!(!server.token_active(&third.access_token).await, "the limit of one ended the other session");
    assert!(server.token_active(&fourth.access_token).await);
    server.stop().await;
}

async fn must_change_password_token_is_restricted(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let mut req = invite("acme", "ann@example.com");
    req.send_invitation = false;
    req.initial_password = PASSWORD.into();
    let id = server.users().await.create_user(req).await.unwrap().into_inner().user.unwrap().user_id;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    assert!(t.password_change_required && t.refresh_token.is_empty());
    let s = expect_code(
        server.users_as(&t.access_token).await.get_user(get_user("acme", &id)).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&s), "PASSWORD_CHANGE_REQUIRED");

    let mut auth = server.auth_as(&t.access_token).await;
    let change =
        |old: &str, new: &str| pb::ChangePasswordRequest { old_password: old.into(), new_password: new.into() };
    let s = expect_code(auth.change_password(change("wrong old password!", NEW_PASSWORD)).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["old_password"]);
    // Common or guessable passwords are refused, naming the field.
    for weak in ["password1234", "qwertyuiop123", "ann@example.com-1"] {
        let s = expect_code(auth.change_password(change(PASSWORD, weak)).await, Code::InvalidArgument);
        assert_eq!(bad_fields(&s), ["new_password"], "{weak}: {s:?}");
    }
    let fresh = auth.change_password(change(PASSWORD, NEW_PASSWORD)).await.unwrap().into_inner();
    assert!(!fresh.refresh_token.is_empty());
    assert!(!server.token_active(&t.access_token).await, "the restricted session ended");
    server.users_as(&fresh.access_token).await.get_user(get_user("acme", &id)).await.expect("full rights now");
    let user = server.users().await.get_user(get_user("acme", &id)).await.unwrap().into_inner().user.unwrap();
    assert!(!user.must_change_password);
    expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    server.login("acme", "ann@example.com", NEW_PASSWORD).await;
    server.stop().await;
}

async fn invitation_is_single_use_and_expires(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let mut users = server.users().await;
    let created = users.create_user(invite("acme", "ann@example.com")).await.unwrap().into_inner();
    let token = created.invitation_token.clone();
    let mut auth = server.auth().await;
    let accept = |token: &str, password: &str| pb::AcceptInvitationRequest {
        invitation_token: token.into(),
        new_password: password.into(),
    };
    let s = expect_code(auth.accept_invitation(accept(&token, "short")).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["new_password"]);
    let user = auth.accept_invitation(accept(&token, PASSWORD)).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.state, pb::UserState::Active as i32);
    let s = expect_code(auth.accept_invitation(accept(&token, PASSWORD)).await, Code::Unauthenticated);
    assert_eq!(reason(&s), "TOKEN_INVALID");
    server.login("acme", "ann@example.com", PASSWORD).await;

    // An expired invitation is refused.
    let other = users.create_user(invite("acme", "bob@example.com")).await.unwrap().into_inner();
    let db = server.db.connect().await;
    let sql = match backend {
        Backend::Sqlite => "UPDATE user_tokens SET expire_time = '2000-01-01T00:00:00+00:00' WHERE used_time IS NULL",
        Backend::Postgres => {
            "UPDATE user_tokens SET expire_time = '2000-01-01T00:00:00+00:00'::timestamptz WHERE used_time IS NULL"
        }
    };
    db.execute_unprepared(sql).await.unwrap();
    let s = expect_code(auth.accept_invitation(accept(&other.invitation_token, PASSWORD)).await, Code::Unauthenticated);
    assert_eq!(reason(&s), "TOKEN_INVALID");
    let bob = users.get_user(get_user("acme", &other.user.unwrap().user_id)).await.unwrap().into_inner().user.unwrap();
    assert_eq!(bob.state, pb::UserState::Invited as i32, "nothing changed");
    assert_eq!(audit_actions(&server, "acme", "user.invitation_accepted").await.len(), 1);
    server.stop().await;
}

async fn password_reset_ends_sessions_and_sets_a_new_password(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    let reset = server
        .users()
        .await
        .reset_password(pb::ResetPasswordRequest {
            tenant_id: "acme".into(),
            user_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!server.token_active(&t.access_token).await, "a reset ends the sessions");
    expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    let mut auth = server.auth().await;
    let complete = |password: &str| pb::CompletePasswordResetRequest {
        reset_token: reset.reset_token.clone(),
        new_password: password.into(),
    };
    auth.complete_password_reset(complete(NEW_PASSWORD)).await.unwrap();
    let s = expect_code(auth.complete_password_reset(complete(NEW_PASSWORD)).await, Code::Unauthenticated);
    assert_eq!(reason(&s), "TOKEN_INVALID");
    server.login("acme", "ann@example.com", NEW_PASSWORD).await;
    server.stop().await;
}

async fn totp_enrollment_login_and_recovery_codes(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    let user = server.users().await.get_user(get_user("acme", &id)).await.unwrap().into_inner().user.unwrap();
    assert!(!user.mfa_enrolled, "not yet (and now the profile is cached)");
    let mut auth = server.auth_as(&t.access_token).await;
    let enrolled =
        auth.enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() }).await.unwrap().into_inner();
    assert!(enrolled.otpauth_uri.starts_with("otpauth://totp/"), "{}", enrolled.otpauth_uri);
    assert!(enrolled.otpauth_uri.contains(&enrolled.secret));
    let totp = totp_for(&enrolled.otpauth_uri);
    let s =
        expect_code(auth.confirm_totp(pb::ConfirmTotpRequest { code: "000000".into() }).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["code"]);
    let t0 = unix_now();
    let codes = auth
        .confirm_totp(pb::ConfirmTotpRequest { code: code_at(&totp, t0, 0) })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(codes.len(), 10);
    let user = server.users().await.get_user(get_user("acme", &id)).await.unwrap().into_inner().user.unwrap();
    assert!(user.mfa_enrolled);

    // Login now needs a code; without one it fails like a wrong password (no password oracle).
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    // The code used to confirm was consumed; the next step's code is inside the ±1 step window.
    let s = expect_code(
        server.try_login("acme", "ann@example.com", PASSWORD, &code_at(&totp, t0, 0)).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    let s = expect_code(
        server.try_login("acme", "ann@example.com", PASSWORD, &code_at(&totp, t0, 90)).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "INVALID_CREDENTIALS", "two steps ahead is outside the window");
    let with_code = server
        .try_login("acme", "ann@example.com", PASSWORD, &code_at(&totp, t0, 30))
        .await
        .expect("code of the next step");
    let c = server
        .auth_as(&with_code.access_token)
        .await
        .introspect_token(pb::IntrospectTokenRequest { token: with_code.access_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    assert_eq!(c.authentication_methods, ["pwd", "otp"]);

    // A recovery code works once, in any spelling.
    let code = codes[0].to_uppercase();
    server.try_login("acme", "ann@example.com", PASSWORD, &code).await.expect("recovery code");
    expect_code(server.try_login("acme", "ann@example.com", PASSWORD, &code).await, Code::Unauthenticated);

    // Turning it off needs a code for oneself.
    let mut auth = server.auth_as(&with_code.access_token).await;
    let disable =
        |code: &str| pb::DisableTotpRequest { tenant_id: "acme".into(), code: code.into(), ..Default::default() };
    let s = expect_code(auth.disable_totp(disable("")).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["code"]);
    let s = expect_code(auth.disable_totp(disable(&codes[0])).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&s), ["code"], "a used recovery code does not count");
    let user = auth.disable_totp(disable(&codes[1])).await.unwrap().into_inner().user.unwrap();
    assert!(!user.mfa_enrolled);
    server.login("acme", "ann@example.com", PASSWORD).await;
    let db = server.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM recovery_codes").await, 0);
    let events: Vec<String> = audit_actions(&server, "acme", "auth.totp").await.into_iter().map(|e| e.action).collect();
    assert!(events.contains(&"auth.totp_enrolled".to_owned()) && events.contains(&"auth.totp_disabled".to_owned()));
    server.stop().await;
}

async fn deactivation_revokes_at_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    let mut me = server.users_as(&t.access_token).await;
    me.get_user(get_user("acme", &id)).await.expect("works while active");
    let check = || pb::CheckRequest {
        tenant_id: "acme".into(),
        user_id: id.clone(),
        module: "deals".into(),
        action: "view".into(),
        resource: None,
    };
    server
        .users()
        .await
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: "acme".into(),
            user_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!server.token_active(&t.access_token).await, "introspection says inactive at once");
    expect_code(me.get_user(get_user("acme", &id)).await, Code::Unauthenticated);
    let decision = server.access().await.check(check()).await.unwrap().into_inner();
    assert!(!decision.allowed && decision.reason.contains("DEACTIVATED"), "{decision:?}");
    expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    let sessions = server
        .auth_as(common_admin())
        .await
        .list_sessions(pb::ListSessionsRequest {
            tenant_id: "acme".into(),
            user_id: id.clone(),
            include_ended: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].end_reason, "user_deactivated");
    server.stop().await;
}

fn common_admin() -> &'static str {
    crate::common::ADMIN_TOKEN
}

async fn mfa_required_for_administrators(backend: Backend) {
    let server = TestServer::start(backend).await;
    tenant_with(&server, "acme", pb::TenantSettings { require_mfa_for_admins: true, ..Default::default() }).await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    server.password_user("acme", "root@example.com", PASSWORD, &[admin_role]).await;
    let t = server.login("acme", "root@example.com", PASSWORD).await;
    let list = || pb::ListUsersRequest { tenant_id: "acme".into(), ..Default::default() };
    let s = expect_code(server.users_as(&t.access_token).await.list_users(list()).await, Code::PermissionDenied);
    assert_eq!(reason(&s), "MFA_REQUIRED");
    let mut auth = server.auth_as(&t.access_token).await;
    let enrolled =
        auth.enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() }).await.unwrap().into_inner();
    let totp = totp_for(&enrolled.otpauth_uri);
    let t0 = unix_now();
    auth.confirm_totp(pb::ConfirmTotpRequest { code: code_at(&totp, t0, 0) }).await.unwrap();
    let t = server.try_login("acme", "root@example.com", PASSWORD, &code_at(&totp, t0, 30)).await.unwrap();
    let users = server.users_as(&t.access_token).await.list_users(list()).await.expect("allowed with TOTP");
    assert_eq!(users.into_inner().users.len(), 1);
    server.stop().await;
}

async fn service_credentials_limit_methods(backend: Backend) {
    use sha2::Digest;
    let token = "deals-service-token-0123456789";
    let server = TestServer::start_with(backend, |c| {
        c.service_credentials = vec![crm_iam::api::authn::ServiceCredential {
            name: "deals".into(),
            token_sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
            methods: vec!["Access.Check".into(), "OwnershipTransfer.RecordOwnership".into()],
            client_subject: None,
            tenants: None,
        }];
    })
    .await;
    server.tenant("acme", 0).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let channel = server.channel().await;
    let bearer = crate::common::Bearer::token(token);
    let mut access = pb::access_client::AccessClient::with_interceptor(channel.clone(), bearer.clone());
    let d = access
        .check(pb::CheckRequest {
            tenant_id: "acme".into(),
            user_id: id.clone(),
            module: "deals".into(),
            action: "view".into(),
            resource: None,
        })
        .await
        .expect("allowed method")
        .into_inner();
    assert!(!d.allowed, "no role grants it");
    let mut ownership =
        pb::ownership_transfer_client::OwnershipTransferClient::with_interceptor(channel.clone(), bearer.clone());
    ownership
        .record_ownership(pb::RecordOwnershipRequest {
            tenant_id: "acme".into(),
            ownerships: vec![pb::Ownership {
                module: "deals".into(),
                resource_id: "d-1".into(),
                owner_user_id: id.clone(),
            }],
            request_id: String::new(),
        })
        .await
        .expect("allowed method");
    let mut users = pb::user_admin_client::UserAdminClient::with_interceptor(channel.clone(), bearer);
    let s = expect_code(users.get_user(get_user("acme", &id)).await, Code::PermissionDenied);
    assert!(s.message().contains("deals"), "{s:?}");
    // The audit trail names the service.
    let events = audit_actions(&server, "acme", "ownership.").await;
    assert!(events.iter().any(|e| e.actor.as_ref().unwrap().id == "service:deals"), "{events:?}");
    server.stop().await;
}

/// The JWT verified by PyJWT against our JWK Set, before and after a key rotation; `alg: none`
/// and tokens signed by another key are refused by crm-iam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_verified_by_pyjwt_across_key_rotation() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.tenant("acme", 0).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let before = server.login("acme", "ann@example.com", PASSWORD).await;
    let mut admin = server.auth_as(common_admin()).await;
    let rotated = admin
        .rotate_signing_key(pb::RotateSigningKeyRequest { immediate: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let after = server.login("acme", "ann@example.com", PASSWORD).await;
    let jwks = server.auth().await.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    assert_eq!(jwks.keys.len(), 2, "the old key verifies until its tokens expire");
    assert_eq!(jwks.keys[0].kid, rotated.key.unwrap().kid, "the new key signs");
    let jwks_json = serde_json::json!({
        "keys": jwks.keys.iter().map(|k| serde_json::json!({
            "kty": k.kty, "kid": k.kid, "use": k.r#use, "alg": k.alg, "crv": k.crv, "x": k.x,
        })).collect::<Vec<_>>()
    });
    let script = r#"
import json, sys, jwt
jwks = jwt.PyJWKSet.from_dict(json.loads(sys.argv[1]))
for token in sys.argv[2:]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"], audience="crm", issuer="crm-iam")
    print(kid, claims["sub"], claims["tenant"], claims["sid"])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &jwks_json.to_string(), &before.access_token, &after.access_token])
        .output()
        .expect("python3 (scripts/test.sh installs PyJWT)");
    assert!(out.status.success(), "PyJWT refused: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2);
    assert_ne!(lines[0].split(' ').next(), lines[1].split(' ').next(), "different keys signed them");
    assert!(lines[0].ends_with(&format!("{id} acme {}", before.session_id)), "{lines:?}");
    assert!(server.token_active(&before.access_token).await, "old-key tokens stay valid");

    // alg: none, and a token signed by a key crm-iam never issued: both refused.
    let payload = before.access_token.split('.').nth(1).unwrap();
    let none_header =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{payload}.");
    assert!(!server.token_active(&unsigned).await);
    expect_code(server.users_as(&unsigned).await.get_user(get_user("acme", &id)).await, Code::Unauthenticated);
    let forged = forge(&before.access_token);
    assert!(!server.token_active(&forged).await);
    expect_code(server.users_as(&forged).await.get_user(get_user("acme", &id)).await, Code::Unauthenticated);
    server.stop().await;
}

/// The same claims and kid, signed with a fresh Ed25519 key.
fn forge(token: &str) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let header = jsonwebtoken::decode_header(token).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let der = key.to_pkcs8_der().unwrap();
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes())).unwrap()
}

/// Two replicas on one PostgreSQL: a token from one works on the other, a logout on one is seen
/// by the other, and a key rotated on one verifies on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_and_keys() {
    let a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::start_on(crate::common::TestDb::attach(&a.db), crate::common::test_config(&a.db)).await;
    a.tenant("acme", 0).await;
    let id = a.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = a.login("acme", "ann@example.com", PASSWORD).await;
    b.users_as(&t.access_token).await.get_user(get_user("acme", &id)).await.expect("B accepts A's token");
    assert!(b.token_active(&t.access_token).await);

    a.auth_as(&t.access_token).await.logout(pb::LogoutRequest {}).await.unwrap();
    crate::common::eventually("B sees the logout", || async { !b.token_active(&t.access_token).await }).await;
    expect_code(b.users_as(&t.access_token).await.get_user(get_user("acme", &id)).await, Code::Unauthenticated);

    a.auth_as(common_admin())
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest { immediate: true, ..Default::default() })
        .await
        .unwrap();
    let fresh = a.login("acme", "ann@example.com", PASSWORD).await;
    b.users_as(&fresh.access_token).await.get_user(get_user("acme", &id)).await.expect("B learns the new key");

    // B has the tenant's settings cached (it served a login); a change made on A reaches it: with
    // one session allowed, each login on B ends the one before.
    let on_b = b.login("acme", "ann@example.com", PASSWORD).await;
    set_max_sessions(&a, "acme", 1).await;
    crate::common::eventually("B applies A's session limit", || async {
        let newer = b.login("acme", "ann@example.com", PASSWORD).await;
        !b.token_active(&on_b.access_token).await && b.token_active(&newer.access_token).await
    })
    .await;
    b.stop().await;
    a.stop().await;
}
