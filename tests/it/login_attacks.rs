//! Attacks on logins, second factors and sessions (SECURITY.md, "Logins"): each test is an attack
//! that succeeded against an earlier build and must fail now.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestDb, TestServer, code_at, expect_code, pb, reason, test_config, totp_for, unix_now},
};

const PASSWORD: &str = "velvet staircase under morning rain";
const NEW_PASSWORD: &str = "copper lantern beside a quiet harbor";

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

/// A tenant whose accounts lock after `max_failed` failures for five minutes.
async fn tenant_with_lockout(server: &TestServer, id: &str, max_failed: i32, require_mfa: bool) {
    server
        .tenants()
        .await
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: id.into(),
                display_name: id.into(),
                settings: Some(pb::TenantSettings {
                    lockout_policy: Some(pb::LockoutPolicy {
                        max_failed_attempts: max_failed,
                        lockout_duration: secs(300),
                    }),
                    require_mfa_for_admins: require_mfa,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create tenant");
}

/// Audit events of the tenant whose action starts with `prefix`.
async fn events(server: &TestServer, tenant: &str, prefix: &str) -> Vec<pb::AuditEvent> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .audit()
            .await
            .list_events(pb::ListEventsRequest {
                tenant_id: tenant.into(),
                action_prefixes: vec![prefix.into()],
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list events")
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

fn detail(e: &pb::AuditEvent, key: &str) -> String {
    match e.details.as_ref().and_then(|d| d.fields.get(key)).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        Some(prost_types::value::Kind::NumberValue(n)) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Failed verifications of a wrong password (or code) recorded for the tenant.
async fn wrong_secret_verifications(server: &TestServer, tenant: &str) -> usize {
    let failed = events(server, tenant, "auth.").await;
    failed
        .iter()
        .filter(|e| e.action == "auth.login_failed" || e.action == "auth.verification_failed")
        .filter(|e| matches!(detail(e, "reason").as_str(), "wrong_password" | "wrong_code"))
        .count()
}

/// Sends `n` logins at once (over a few connections, as an attacker's botnet would) and returns
/// their results.
async fn wave(
    servers: &[&TestServer],
    n: usize,
    tenant: &str,
    email: &str,
    password: &str,
    code: &str,
) -> Vec<Result<pb::AuthenticateResponse, tonic::Status>> {
    let mut clients = Vec::new();
    for s in servers {
        for _ in 0..4 {
            clients.push(s.auth().await);
        }
    }
    let calls = (0..n).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let req = pb::AuthenticateRequest {
            tenant_id: tenant.into(),
            email: email.into(),
            password: password.into(),
            totp_code: code.into(),
            ..Default::default()
        };
        async move { client.authenticate(req).await.map(|r| r.into_inner()) }
    });
    futures::future::join_all(calls).await
}

both_backends!(
    parallel_guesses_are_bounded_by_the_lockout,
    a_totp_code_opens_one_session_however_many_race,
    an_address_flood_is_refused_before_hashing,
    a_login_flood_does_not_starve_access_checks,
    guessing_behind_a_session_locks_and_is_audited,
    custom_admin_roles_need_a_second_factor,
    the_totp_flow_is_no_password_oracle,
    a_session_thief_cannot_reset_the_count_with_codes_of_their_own,
    no_session_of_the_old_password_survives_a_password_change,
    forwarded_addresses_count_only_through_trusted_proxies,
);

/// 200 wrong passwords at once for one account: at most `max_failed_attempts` are verified, the
/// account locks, and the right password is refused while it is locked.
async fn parallel_guesses_are_bounded_by_the_lockout(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 0).await;
    tenant_with_lockout(&server, "acme", 5, false).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let results = wave(&[&server], 200, "acme", "ann@example.com", "a wrong guess of hers", "").await;
    for r in &results {
        let s = r.as_ref().expect_err("every guess is wrong");
        assert!(
            matches!(s.code(), Code::Unauthenticated | Code::ResourceExhausted),
            "a refused guess is UNAUTHENTICATED (or RESOURCE_EXHAUSTED when the hash queue is full): {s:?}"
        );
    }
    let verified = wrong_secret_verifications(&server, "acme").await;
    assert!(verified <= 5, "{verified} wrong passwords were verified; the lockout allows 5");
    assert!(!events(&server, "acme", "auth.locked").await.is_empty(), "the account locked");
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS", "the right password is refused while locked");
    server.stop().await;
}

/// The same wave split over two replicas of one PostgreSQL database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_on_two_replicas_are_bounded_by_the_lockout() {
    let a = TestServer::start_with(Backend::Postgres, |c| c.login_failures_per_address = 0).await;
    let mut config = test_config(&a.db);
    config.login_failures_per_address = 0;
    let b = TestServer::start_on(TestDb::attach(&a.db), config).await;
    tenant_with_lockout(&a, "acme", 5, false).await;
    a.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let results = wave(&[&a, &b], 200, "acme", "ann@example.com", "a wrong guess of hers", "").await;
    assert!(results.iter().all(|r| r.is_err()));
    let verified = wrong_secret_verifications(&a, "acme").await;
    assert!(verified <= 5, "{verified} wrong passwords were verified across two replicas; the lockout allows 5");
    for server in [&a, &b] {
        let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
        assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    }
    b.stop().await;
    a.stop().await;
}

/// Enrolls TOTP for a logged-in user; returns the authenticator and the time base its confirming
/// code was taken at (that step is used; the next one is fresh).
async fn enroll(server: &TestServer, access_token: &str) -> (totp_rs::Totp, i64) {
    let mut auth = server.auth_as(access_token).await;
    let enrolled = auth
        .enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() })
        .await
        .expect("enroll")
        .into_inner();
    let totp = totp_for(&enrolled.otpauth_uri);
    let t0 = unix_now();
    auth.confirm_totp(pb::ConfirmTotpRequest { code: code_at(&totp, t0, 0) }).await.expect("confirm");
    (totp, t0)
}

async fn open_sessions(server: &TestServer, tenant: &str, user_id: &str) -> usize {
    server
        .auth_as(crate::common::ADMIN_TOKEN)
        .await
        .list_sessions(pb::ListSessionsRequest {
            tenant_id: tenant.into(),
            user_id: user_id.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list sessions")
        .into_inner()
        .sessions
        .len()
}

/// 20 logins racing with the same valid code: one session, however they interleave.
async fn a_totp_code_opens_one_session_however_many_race(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 0).await;
    // A generous lockout, so that every racing login is verified: the code itself must hold.
    tenant_with_lockout(&server, "acme", 100, false).await;
    let id = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let first = server.login("acme", "ann@example.com", PASSWORD).await;
    let (totp, t0) = enroll(&server, &first.access_token).await;
    let before = open_sessions(&server, "acme", &id).await;
    let code = code_at(&totp, t0, 30);
    let results = wave(&[&server], 20, "acme", "ann@example.com", PASSWORD, &code).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let codes: Vec<_> = results.iter().map(|r| r.as_ref().map(|_| ()).map_err(|s| s.code())).collect();
    assert_eq!(ok, 1, "one code, one login: {codes:?}");
    assert_eq!(open_sessions(&server, "acme", &id).await, before + 1);
    // And the used code stays used: a later login with it fails.
    expect_code(server.try_login("acme", "ann@example.com", PASSWORD, &code).await, Code::Unauthenticated);
    server.stop().await;
}

/// One address sends 40 failing logins (40 different accounts, so no lockout is involved) at
/// once: only the per-address limit gets hashed; the rest are refused before any hashing.
async fn an_address_flood_is_refused_before_hashing(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 5).await;
    server.tenant("acme", 0).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.auth().await);
    }
    let calls = (0..40).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let req = pb::AuthenticateRequest {
            tenant_id: "acme".into(),
            email: format!("sprayed-{i}@example.com"),
            password: "Summer2026!".into(),
            totp_code: String::new(),
            ..Default::default()
        };
        async move { client.authenticate(req).await }
    });
    let results = futures::future::join_all(calls).await;
    let hashed = results.iter().filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated)).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted && reason(s) == "TOO_MANY_ATTEMPTS"))
        .count();
    let codes: Vec<_> = results.iter().map(|r| r.as_ref().map(|_| ()).map_err(|s| s.code())).collect();
    assert_eq!((hashed, refused), (5, 35), "{codes:?}");
    // Only the hashed ones are login attempts on record.
    let failed = events(&server, "acme", "auth.login_failed").await;
    assert_eq!(failed.len(), 5);
    server.stop().await;
}

/// While a flood of logins fills the password-hashing queue, Access.Check keeps answering: logins
/// do not hold the permits of cheap calls while they wait for argon2.
async fn a_login_flood_does_not_starve_access_checks(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.login_failures_per_address = 0;
        c.max_concurrent_requests = 8;
        c.password_hash_threads = 1;
    })
    .await;
    server.tenant("acme", 0).await;
    let guest = server.builtin_role("acme", "guest").await;
    let user = server.active_user("acme", "ann@example.com", "", &[guest]).await;

    let in_flight = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = Vec::new();
    for w in 0..32 {
        let mut client = server.auth().await;
        let (in_flight, answered, stop) = (in_flight.clone(), answered.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                in_flight.fetch_add(1, Ordering::SeqCst);
                let _ = client
                    .authenticate(pb::AuthenticateRequest {
                        tenant_id: "acme".into(),
                        email: format!("flood-{w}-{i}@example.com"),
                        password: "a flood of guesses".into(),
                        totp_code: String::new(),
                        ..Default::default()
                    })
                    .await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // The flood is being served: logins come back (each one hashed on the single hashing thread).
    crate::common::eventually("the login flood is served", || async { answered.load(Ordering::SeqCst) >= 2 }).await;

    let mut access = server.access().await;
    let mut overlapped = 0;
    for _ in 0..40 {
        let busy = in_flight.load(Ordering::SeqCst);
        let decision = access
            .check(pb::CheckRequest {
                tenant_id: "acme".into(),
                user_id: user.clone(),
                module: "deals".into(),
                action: "view".into(),
                resource: None,
            })
            .await
            .expect("Access.Check answers during a login flood");
        assert!(decision.into_inner().allowed);
        if busy >= 8 && in_flight.load(Ordering::SeqCst) >= 8 {
            overlapped += 1;
        }
    }
    stop.cancel();
    for f in flood {
        f.await.unwrap();
    }
    assert!(overlapped >= 20, "only {overlapped} checks ran while at least 8 logins were waiting");
    server.stop().await;
}

/// A stolen access token does not turn into a takeover: old-password guesses through
/// ChangePassword and code guesses through DisableTotp count in the lockout, are audited, and
/// the lock ends the guessing session.
async fn guessing_behind_a_session_locks_and_is_audited(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 0).await;
    tenant_with_lockout(&server, "acme", 3, false).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let stolen = server.login("acme", "ann@example.com", PASSWORD).await;
    let mut auth = server.auth_as(&stolen.access_token).await;
    let change = |old: &str| pb::ChangePasswordRequest { old_password: old.into(), new_password: NEW_PASSWORD.into() };
    for guess in ["guess number one!", "guess number two!", "guess number three!"] {
        expect_code(auth.change_password(change(guess)).await, Code::InvalidArgument);
    }
    // Locked: the thief's session is over, and even the right old password no longer helps.
    let s = expect_code(auth.change_password(change(PASSWORD)).await, Code::Unauthenticated);
    assert_ne!(reason(&s), "", "{s:?}");
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS", "the account is locked");
    assert_eq!(wrong_secret_verifications(&server, "acme").await, 3, "each guess is audited");
    assert_eq!(events(&server, "acme", "auth.locked").await.len(), 1);

    // The same for second-factor codes guessed through DisableTotp.
    server.password_user("acme", "bob@example.com", PASSWORD, &[]).await;
    let bob = server.login("acme", "bob@example.com", PASSWORD).await;
    let (totp, t0) = enroll(&server, &bob.access_token).await;
    let bob = server.try_login("acme", "bob@example.com", PASSWORD, &code_at(&totp, t0, 30)).await.unwrap();
    let mut auth = server.auth_as(&bob.access_token).await;
    let disable =
        |code: &str| pb::DisableTotpRequest { tenant_id: "acme".into(), code: code.into(), ..Default::default() };
    for guess in ["000000", "111111", "222222"] {
        expect_code(auth.disable_totp(disable(guess)).await, Code::InvalidArgument);
    }
    expect_code(auth.disable_totp(disable(&code_at(&totp, t0, 60))).await, Code::Unauthenticated);
    assert_eq!(wrong_secret_verifications(&server, "acme").await, 6);
    assert_eq!(events(&server, "acme", "auth.locked").await.len(), 2);
    server.stop().await;
}

/// With `require_mfa_for_admins`, a custom role with tenant-wide `users.edit` is administrative:
/// its holder is refused until they log in with a second factor.
async fn custom_admin_roles_need_a_second_factor(backend: Backend) {
    let server = TestServer::start(backend).await;
    tenant_with_lockout(&server, "acme", 5, true).await;
    let role = server
        .roles()
        .await
        .create_role(pb::CreateRoleRequest {
            tenant_id: "acme".into(),
            role: Some(pb::Role {
                name: "people-admin".into(),
                permissions: ["view", "edit"]
                    .into_iter()
                    .map(|a| pb::Permission {
                        module: "users".into(),
                        action: a.into(),
                        scope: pb::Scope::Tenant.into(),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create role")
        .into_inner()
        .role
        .unwrap()
        .role_id;
    server.password_user("acme", "hr@example.com", PASSWORD, &[role]).await;
    let t = server.login("acme", "hr@example.com", PASSWORD).await;
    let list = || pb::ListUsersRequest { tenant_id: "acme".into(), ..Default::default() };
    let s = expect_code(server.users_as(&t.access_token).await.list_users(list()).await, Code::PermissionDenied);
    assert_eq!(reason(&s), "MFA_REQUIRED");
    // Enrolling is not enough: the session must have been opened with the second factor.
    let (totp, t0) = enroll(&server, &t.access_token).await;
    let s = expect_code(server.users_as(&t.access_token).await.list_users(list()).await, Code::PermissionDenied);
    assert_eq!(reason(&s), "MFA_REQUIRED");
    let t = server.try_login("acme", "hr@example.com", PASSWORD, &code_at(&totp, t0, 30)).await.unwrap();
    server.users_as(&t.access_token).await.list_users(list()).await.expect("allowed after a login with a code");
    server.stop().await;
}

/// For a TOTP user, a right password without a code gets the same answer as a wrong one, and
/// guessing passwords that way is bounded by the lockout like any login.
async fn the_totp_flow_is_no_password_oracle(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 0).await;
    tenant_with_lockout(&server, "acme", 3, false).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    let (totp, t0) = enroll(&server, &t.access_token).await;
    let right = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    let wrong =
        expect_code(server.try_login("acme", "ann@example.com", "not her password", "").await, Code::Unauthenticated);
    assert_eq!((reason(&right), right.message()), (reason(&wrong), wrong.message()), "no password oracle");
    // That was two failures; one more locks. Then password and code together are refused too.
    expect_code(server.try_login("acme", "ann@example.com", "another wrong one", "").await, Code::Unauthenticated);
    let s = expect_code(
        server.try_login("acme", "ann@example.com", PASSWORD, &code_at(&totp, t0, 30)).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    assert_eq!(events(&server, "acme", "auth.locked").await.len(), 1);
    server.stop().await;
}

both_backends!(secrets_at_rest_are_not_in_clear);

/// The database holds no usable signing key seed or TOTP secret: whoever reads the rows (a
/// backup, a replica's disk) cannot sign tokens or generate codes.
async fn secrets_at_rest_are_not_in_clear(backend: Backend) {
    use base64::Engine;
    use sea_orm::{ConnectionTrait, Statement};
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let t = server.login("acme", "ann@example.com", PASSWORD).await;
    let enrolled = server
        .auth_as(&t.access_token)
        .await
        .enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() })
        .await
        .unwrap();
    let secret = enrolled.into_inner().secret;
    let raw = totp_rs::Secret::try_from_base32(&secret).unwrap();
    let db = server.db.connect().await;
    let backend_kind = db.get_database_backend();

    // Every text column of the login state: not the secret, in base32, hex or base64.
    let encodings = [
        secret.clone(),
        hex::encode(&raw),
        base64::engine::general_purpose::STANDARD.encode(&raw),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw),
    ];
    let rows = db
        .query_all_raw(Statement::from_string(
            backend_kind,
            "SELECT COALESCE(totp_secret, ''), COALESCE(totp_pending_secret, '') FROM login_states",
        ))
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        for i in 0..2 {
            let v: String = row.try_get_by_index(i).unwrap();
            for e in &encodings {
                assert!(!v.to_lowercase().contains(&e.to_lowercase()), "the TOTP secret is stored in clear: {v}");
            }
        }
    }
    // Signing keys: no stored private key decodes to a seed of the stored public key.
    let rows = db
        .query_all_raw(Statement::from_string(backend_kind, "SELECT private_key, public_key FROM signing_keys"))
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let (private, public): (String, String) = (row.try_get_by_index(0).unwrap(), row.try_get_by_index(1).unwrap());
        for engine in [base64::engine::general_purpose::URL_SAFE_NO_PAD, base64::engine::general_purpose::STANDARD] {
            if let Ok(seed) = engine.decode(private.trim_end_matches('=')).or_else(|_| engine.decode(&private))
                && let Ok(seed) = <[u8; 32]>::try_from(seed.as_slice())
            {
                let derived = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
                let stored = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&public).unwrap();
                assert_ne!(derived.as_slice(), stored.as_slice(), "a signing key seed is stored in clear");
            }
        }
    }
    server.stop().await;
}

/// A session thief cannot bind an authenticator of their own (EnrollTotp needs the password,
/// counted like a login), and right codes of an authenticator enrolled in a session take back
/// only their own admission: guesses mixed with such successes still lock the account.
async fn a_session_thief_cannot_reset_the_count_with_codes_of_their_own(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 0).await;
    tenant_with_lockout(&server, "acme", 3, false).await;
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let stolen = server.login("acme", "ann@example.com", PASSWORD).await;
    let mut auth = server.auth_as(&stolen.access_token).await;
    let s = expect_code(
        auth.enroll_totp(pb::EnrollTotpRequest { current_password: "a guess of hers".into() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(crate::common::bad_fields(&s), ["current_password"]);
    assert_eq!(wrong_secret_verifications(&server, "acme").await, 1, "the wrong password counted");

    // The owner (or whoever knows the password) enrolls; then two wrong old passwords...
    let enrolled = auth
        .enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() })
        .await
        .expect("enroll with the password")
        .into_inner();
    let change = |old: &str| pb::ChangePasswordRequest { old_password: old.into(), new_password: NEW_PASSWORD.into() };
    for guess in ["guess number one!", "guess number two!"] {
        expect_code(auth.change_password(change(guess)).await, Code::InvalidArgument);
    }
    // ...and a right code of the authenticator enrolled in this session does not wipe them.
    let totp = totp_for(&enrolled.otpauth_uri);
    auth.confirm_totp(pb::ConfirmTotpRequest { code: code_at(&totp, unix_now(), 0) }).await.expect("confirm");
    assert_eq!(events(&server, "acme", "auth.locked").await.len(), 1, "the third verification in a row locked");
    let s = expect_code(auth.change_password(change(PASSWORD)).await, Code::ResourceExhausted);
    assert_eq!(reason(&s), "TOO_MANY_ATTEMPTS");
    // Guessing while locked ends the session.
    expect_code(auth.change_password(change(PASSWORD)).await, Code::Unauthenticated);
    server.stop().await;
}

/// Logins with the old password race a password change: whatever their interleaving, no session
/// opened with the old password is active once the change is done (a login whose password was
/// verified before the change but committed after it must fail).
async fn no_session_of_the_old_password_survives_a_password_change(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.login_failures_per_address = 0;
        c.password_hash_threads = 1;
    })
    .await;
    tenant_with_lockout(&server, "acme", 100, false).await;
    server
        .tenants()
        .await
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "acme".into(),
                settings: Some(pb::TenantSettings {
                    session_policy: Some(pb::SessionPolicy { max_sessions_per_user: 100, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["settings.session_policy".into()] }),
            ..Default::default()
        })
        .await
        .expect("session limit");
    server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    let own = server.login("acme", "ann@example.com", PASSWORD).await;
    // Logins with the old password keep arriving before, during and after the change, so some
    // read the old password before the change commits and verify it after.
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut logins = Vec::new();
    for _ in 0..8 {
        let mut client = server.auth().await;
        let (answered, stop) = (answered.clone(), stop.clone());
        logins.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while !stop.is_cancelled() {
                let r = client
                    .authenticate(pb::AuthenticateRequest {
                        tenant_id: "acme".into(),
                        email: "ann@example.com".into(),
                        password: PASSWORD.into(),
                        totp_code: String::new(),
                        ..Default::default()
                    })
                    .await;
                answered.fetch_add(1, Ordering::SeqCst);
                if let Ok(r) = r {
                    tokens.push(r.into_inner().access_token);
                }
            }
            tokens
        }));
    }
    crate::common::eventually("logins are answered", || async { answered.load(Ordering::SeqCst) >= 2 }).await;
    server
        .auth_as(&own.access_token)
        .await
        .change_password(pb::ChangePasswordRequest { old_password: PASSWORD.into(), new_password: NEW_PASSWORD.into() })
        .await
        .expect("change password");
    let after = answered.load(Ordering::SeqCst);
    crate::common::eventually("logins that started before the change are answered", || async {
        answered.load(Ordering::SeqCst) >= after + 16
    })
    .await;
    stop.cancel();
    let logins: Vec<String> = futures::future::join_all(logins).await.into_iter().flat_map(Result::unwrap).collect();
    let mut survived = 0;
    for token in &logins {
        if server.token_active(token).await {
            survived += 1;
        }
    }
    assert_eq!(survived, 0, "sessions opened with the old password outlived the change");
    server.stop().await;
}

/// Behind a trusted proxy, each client's address has its own budget (x-forwarded-for); from
/// anyone else the header is ignored, so an attacker cannot pick a fresh address per guess.
async fn forwarded_addresses_count_only_through_trusted_proxies(backend: Backend) {
    async fn login(
        server: &TestServer,
        forwarded: &'static str,
        i: usize,
    ) -> Result<tonic::Response<pb::AuthenticateResponse>, tonic::Status> {
        let channel = server.channel();
        {
            let mut req = tonic::Request::new(pb::AuthenticateRequest {
                tenant_id: "acme".into(),
                email: format!("nobody-{i}@example.com"),
                password: "Summer2026!".into(),
                totp_code: String::new(),
                ..Default::default()
            });
            req.metadata_mut().insert("x-forwarded-for", forwarded.parse().unwrap());
            pb::auth_client::AuthClient::new(channel.await).authenticate(req).await
        }
    }
    // Not trusted: the header does not help; the budget of the real peer runs out.
    let server = TestServer::start_with(backend, |c| c.login_failures_per_address = 2).await;
    server.tenant("acme", 0).await;
    for (i, forwarded) in ["198.51.100.1", "198.51.100.2"].into_iter().enumerate() {
        expect_code(login(&server, forwarded, i).await, Code::Unauthenticated);
    }
    expect_code(login(&server, "198.51.100.3", 3).await, Code::ResourceExhausted);
    server.stop().await;

    // Trusted (the proxy is on loopback): each client counts apart; the proxy itself never runs out.
    let server = TestServer::start_with(backend, |c| {
        c.login_failures_per_address = 2;
        c.trusted_proxies = vec!["127.0.0.0/8".into(), "::1/128".into()];
    })
    .await;
    server.tenant("acme", 0).await;
    for i in 0..2 {
        expect_code(login(&server, "203.0.113.9", i).await, Code::Unauthenticated);
    }
    let s = expect_code(login(&server, "203.0.113.9", 2).await, Code::ResourceExhausted);
    assert_eq!(reason(&s), "TOO_MANY_ATTEMPTS");
    expect_code(login(&server, "10.9.8.7, 203.0.113.10", 3).await, Code::Unauthenticated);
    let failed = events(&server, "acme", "auth.login_failed").await;
    assert!(failed.iter().any(|e| e.peer.starts_with("203.0.113.10 via 127.0.0.1")), "the audit shows the client");
    server.stop().await;
}
