//! Attacks on single sign-on found by review (issue 19), each first run against the code before
//! its fix: a tenant administrator making crm-iam call the platform's private network (SSRF), a
//! sign-in started by an attacker completed in the victim's browser (login CSRF), and an account
//! prepared with the victim's address and a password the attacker knows, taken over once the
//! victim signs in with the company account (pre-account-hijacking).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, expect_code, pb, reason},
    oidc::Browser,
    sso::{
        APP, PASSWORD, SECRET_A, begin, complete, connect, connection, http_start, provider, refused, sso_failures,
        start,
    },
};

both_backends!(
    providers_on_private_addresses_are_never_called,
    a_sign_in_completes_only_in_the_browser_that_began_it,
    an_account_prepared_with_the_victims_address_is_not_taken_over
);

/// A TCP listener on loopback that counts the connections made to it.
async fn counting_listener() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, seen)
}

async fn providers_on_private_addresses_are_never_called(backend: Backend) {
    // The production default: no `sso_allow_http_issuers`.
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let (addr, seen) = counting_listener().await;
    let connect_to = |issuer: String| {
        let server = &server;
        async move {
            let p = pb::IdentityProvider {
                name: "company".into(),
                issuer,
                client_id: "crm".into(),
                client_secret: "a-client-secret-0123456789".into(),
                redirect_uris: vec![APP.into()],
                allowed_email_domains: vec!["example.com".into()],
                ..Default::default()
            };
            let req = pb::CreateIdentityProviderRequest { tenant_id: "acme".into(), identity_provider: Some(p) };
            server.tenants().await.create_identity_provider(req).await
        }
    };
    // An address literal on loopback (a pod's admin port, the metadata service, the database):
    // refused as a field, before any connection.
    for issuer in [
        format!("https://127.0.0.1:{}/", addr.port()),
        format!("https://[::ffff:127.0.0.1]:{}/", addr.port()),
        "https://169.254.169.254/latest".to_owned(),
    ] {
        let s = expect_code(connect_to(issuer.clone()).await, Code::InvalidArgument);
        assert_eq!(crate::common::bad_fields(&s), vec!["identity_provider.issuer"], "{issuer}");
    }
    // A name that resolves to loopback: the resolver answers no address, nothing is connected.
    let s = expect_code(connect_to(format!("https://localhost:{}/", addr.port())).await, Code::FailedPrecondition);
    assert_eq!(reason(&s), "IDENTITY_PROVIDER_UNAVAILABLE");
    assert!(s.message().contains("public internet"), "{}", s.message());
    assert_eq!(seen.load(Ordering::SeqCst), 0, "crm-iam connected to a private address");
    server.stop().await;
}

async fn a_sign_in_completes_only_in_the_browser_that_began_it(backend: Backend) {
    let server = start(backend).await;
    server.tenant("acme", 0).await;
    let idp = provider(&server);
    connect(&server, "acme", connection(&idp, &server, "crm-acme", SECRET_A)).await.expect("connect");

    // The attacker begins a sign-in and completes the provider's login as himself (Bob), then
    // stops before CompleteSso and makes the victim's browser carry his code and state to the
    // front end (a link, an image): without the binding secret of the browser that began it,
    // the sign-in is refused, so the victim is not signed in to the attacker's account.
    let attacker = begin(&server, "acme", APP).await.unwrap();
    let back = Browser::default().sign_in(&attacker.authorization_url, "bob", APP).await;
    let s = expect_code(complete(&server, &back.state, &back.code, &back.iss, "").await, Code::InvalidArgument);
    assert_eq!(crate::common::bad_fields(&s), vec!["browser_binding"]);
    refused(complete(&server, &back.state, &back.code, &back.iss, "a-guessed-binding").await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "browser_mismatch");
    // The victim's own browser holds the binding of its own sign-in, not the attacker's.
    let victims = begin(&server, "acme", APP).await.unwrap();
    refused(complete(&server, &back.state, &back.code, &back.iss, &victims.browser_binding).await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "browser_mismatch");
    // A refused binding does not use the state up: the browser that began it still completes.
    let t = complete(&server, &back.state, &back.code, &back.iss, &attacker.browser_binding).await;
    assert!(server.token_active(&t.expect("the beginning browser signs in").access_token).await);

    // The HTTP callback binds by a cookie that /sso/start sets (HttpOnly, on the callback path).
    let (start_url, callback) = http_start(&server, "acme");
    let mut victim = Browser::default();
    let (status, _, _) = victim.send(reqwest::Method::GET, start_url.as_str(), None).await;
    assert_eq!(status, 302);
    let cookie = victim.last_set_cookies.iter().find(|c| c.starts_with("crm_iam_sso=")).expect("a binding cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("Path=/sso/callback"), "{cookie}");
    // The attacker's callback URL (his own /sso/start in his own browser), opened by the victim.
    let mut attacker = Browser::default();
    let (_, to_provider, _) = attacker.send(reqwest::Method::GET, start_url.as_str(), None).await;
    let landing = attacker.sign_in_until(&to_provider, "bob", &callback).await;
    let (status, _, body) = victim.send(reqwest::Method::GET, landing.as_str(), None).await;
    assert_eq!(status, 401, "the victim's browser completed the attacker's sign-in: {body}");
    // In the attacker's own browser (which holds its cookie) the same URL signs in, and the
    // cookie is cleared.
    let (status, _, body) = attacker.send(reqwest::Method::GET, landing.as_str(), None).await;
    assert_eq!(status, 200, "{body}");
    let tokens: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(server.token_active(tokens["access_token"].as_str().unwrap()).await);
    assert!(attacker.cookie("crm_iam_sso").is_none(), "{:?}", attacker.last_set_cookies);
    server.stop().await;
}

async fn an_account_prepared_with_the_victims_address_is_not_taken_over(backend: Backend) {
    let server = start(backend).await;
    server.tenant("acme", 0).await;
    let idp = provider(&server);
    idp.set_accounts(json!({
        "boss": { "email": "boss@example.com", "email_verified": true, "groups": ["admins"] },
    }));
    let admin_role = server.builtin_role("acme", "administrator").await;
    let root = server.password_user("acme", "root@example.com", PASSWORD, std::slice::from_ref(&admin_role)).await;
    // The attacker holds an account with the boss's address (set by whoever could edit users,
    // before the boss ever used the CRM) and its password, and keeps a session open.
    let prepared = server.password_user("acme", "boss@example.com", PASSWORD, &[]).await;
    let kept = server.login("acme", "boss@example.com", PASSWORD).await;

    let mut conn = connection(&idp, &server, "crm-acme", SECRET_A);
    conn.group_role_mappings = vec![pb::GroupRoleMapping { group: "admins".into(), role_id: admin_role.clone() }];
    conn.break_glass_user_ids = vec![root.clone()];
    connect(&server, "acme", conn).await.expect("connect");

    // The boss signs in with the company account: linked by the verified address, given the
    // administrator role by the group.
    let t = crate::sso::sso(&server, "acme", "boss").await.expect("the boss signs in");
    assert_eq!(t.user_id, prepared);
    // What the attacker held before the link is gone: the password and the sessions it opened.
    assert!(!server.token_active(&kept.access_token).await, "the attacker's session outlived the link");
    let s = expect_code(server.try_login("acme", "boss@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    let linked = crate::common::audit_events(&server, "acme", &["auth.sso_login_succeeded"]).await;
    assert_eq!(crate::common::detail(linked.last().unwrap(), "password_removed"), "true");
    // The session the provider opened stays; a break-glass administrator keeps the password.
    assert!(server.token_active(&t.access_token).await);
    server.login("acme", "root@example.com", PASSWORD).await;
    server.stop().await;
}
