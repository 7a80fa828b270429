//! Single sign-on (issue 19) against a real OpenID Provider (node-oidc-provider): the whole
//! flow (BeginSso, the provider's login, the redirect with the code, CompleteSso, a crm-iam token
//! used on an RPC), linking, just-in-time provisioning, group → role mappings, and the refusals an
//! attacker tries: replayed state, a swapped nonce, another client's code, a response from another
//! issuer (mix-up), an unverified or foreign e-mail address, a deactivated user, a redirect URI
//! outside the allow-list; then "SSO required" with a break-glass administrator, back-channel
//! logout ending sessions, and the provider rotating its keys.

use serde_json::{Value, json};
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, audit_events, detail, expect_code, pb, reason},
    oidc::{Browser, Provider},
};

both_backends!(sign_in_links_provisions_maps_groups_and_refuses_attacks, sso_required_logout_and_key_rotation);

pub(crate) const SECRET_A: &str = "client-secret-of-tenant-acme-0123456789";
pub(crate) const SECRET_B: &str = "client-secret-of-tenant-beta-0123456789";
pub(crate) const PASSWORD: &str = "velvet staircase under morning rain";
/// The web front end's redirect URI (never visited: the test reads the code from the redirect).
pub(crate) const APP: &str = "https://app.crm.example/sso/return";

pub(crate) async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.http_listen = Some("127.0.0.1:0".parse().unwrap());
        c.sso_allow_http_issuers = true;
    })
    .await
}

pub(crate) fn accounts(ann_groups: &[&str]) -> Value {
    json!({
        "ann": { "email": "ann@example.com", "email_verified": true, "given_name": "Ann", "family_name": "Lee", "groups": ann_groups },
        "bob": { "email": "Bob@Example.com", "email_verified": true, "given_name": "Bob", "family_name": "Stone", "groups": ["sales"], "department": "Sales" },
        "eve": { "email": "carol@example.com", "email_verified": false, "groups": ["admins"] },
        "mallory": { "email": "mallory@evil.test", "email_verified": true },
        "root": { "email": "root@example.com", "email_verified": true },
        "ivy": { "email": "ivy@example.com", "email_verified": true },
    })
}

/// The provider with a client per tenant; crm-iam's HTTP listener is the back-channel target.
pub(crate) fn provider(server: &TestServer) -> Provider {
    let http = server.http_addr.expect("an HTTP listener");
    let client = |id: &str, secret: &str, tenant: &str| {
        json!({
            "client_id": id,
            "client_secret": secret,
            "redirect_uris": [APP, format!("http://{http}/sso/callback")],
            "backchannel_logout_uri": format!("http://{http}/sso/backchannel-logout/{tenant}/company"),
            "backchannel_logout_session_required": true,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        })
    };
    Provider::start(
        json!([client("crm-acme", SECRET_A, "acme"), client("crm-beta", SECRET_B, "beta")]),
        accounts(&["sales"]),
    )
}

pub(crate) fn connection(idp: &Provider, server: &TestServer, client_id: &str, secret: &str) -> pb::IdentityProvider {
    pb::IdentityProvider {
        name: "company".into(),
        issuer: idp.issuer.clone(),
        client_id: client_id.into(),
        client_secret: secret.into(),
        scopes: vec!["email".into(), "profile".into(), "groups".into(), "work".into()],
        allowed_email_domains: vec!["example.com".into()],
        redirect_uris: vec![APP.into(), format!("http://{}/sso/callback", server.http_addr.unwrap())],
        jit_provisioning: true,
        claim_mapping: Some(pb::ClaimMapping { department: "department".into(), ..Default::default() }),
        ..Default::default()
    }
}

pub(crate) async fn connect(
    server: &TestServer,
    tenant: &str,
    p: pb::IdentityProvider,
) -> Result<pb::IdentityProvider, tonic::Status> {
    let req = pb::CreateIdentityProviderRequest { tenant_id: tenant.into(), identity_provider: Some(p) };
    Ok(server.tenants().await.create_identity_provider(req).await?.into_inner().identity_provider.unwrap())
}

pub(crate) async fn begin(
    server: &TestServer,
    tenant: &str,
    redirect_uri: &str,
) -> Result<pb::BeginSsoResponse, tonic::Status> {
    let req = pb::BeginSsoRequest {
        tenant_id: tenant.into(),
        connection: "company".into(),
        redirect_uri: redirect_uri.into(),
    };
    Ok(server.auth().await.begin_sso(req).await?.into_inner())
}

pub(crate) async fn complete(
    server: &TestServer,
    state: &str,
    code: &str,
    iss: &str,
    browser_binding: &str,
) -> Result<pb::CompleteSsoResponse, tonic::Status> {
    let req = pb::CompleteSsoRequest {
        state: state.into(),
        code: code.into(),
        iss: iss.into(),
        browser_binding: browser_binding.into(),
    };
    Ok(server.auth().await.complete_sso(req).await?.into_inner())
}

/// The HTTP listener's `/sso/start` URL of a tenant's "company" connection, with crm-iam's
/// `/sso/callback` as the redirect URI; and that callback URL.
pub(crate) fn http_start(server: &TestServer, tenant: &str) -> (url::Url, String) {
    let http = server.http_addr.expect("an HTTP listener");
    let callback = format!("http://{http}/sso/callback");
    let start = url::Url::parse_with_params(
        &format!("http://{http}/sso/start"),
        &[("tenant_id", tenant), ("connection", "company"), ("redirect_uri", callback.as_str())],
    )
    .expect("a URL");
    (start, callback)
}

/// A whole sign-in as `account` in a fresh browser.
pub(crate) async fn sso(
    server: &TestServer,
    tenant: &str,
    account: &str,
) -> Result<pb::CompleteSsoResponse, tonic::Status> {
    let start = begin(server, tenant, APP).await.expect("begin");
    let back = Browser::default().sign_in(&start.authorization_url, account, APP).await;
    assert_eq!(back.state, start.state, "the provider returns the state");
    complete(server, &back.state, &back.code, &back.iss, &start.browser_binding).await
}

/// The reasons of the tenant's failed single sign-ons, oldest first.
pub(crate) async fn sso_failures(server: &TestServer, tenant: &str) -> Vec<String> {
    audit_events(server, tenant, &["auth.sso_login_failed"]).await.iter().map(|e| detail(e, "reason")).collect()
}

pub(crate) async fn roles_of(server: &TestServer, tenant: &str, user_id: &str) -> Vec<String> {
    let req = pb::GetUserRequest { tenant_id: tenant.into(), user_id: user_id.into() };
    server.users().await.get_user(req).await.unwrap().into_inner().user.unwrap().role_ids
}

pub(crate) fn refused(r: Result<pb::CompleteSsoResponse, tonic::Status>) {
    let s = expect_code(r, Code::Unauthenticated);
    assert_eq!(reason(&s), "SSO_FAILED");
}

async fn sign_in_links_provisions_maps_groups_and_refuses_attacks(backend: Backend) {
    let server = start(backend).await;
    server.tenant("acme", 0).await;
    server.tenant("beta", 0).await;
    let idp = provider(&server);
    let manager = server.builtin_role("acme", "manager").await;
    server.department("acme", "Sales", "").await;
    let ann = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    server.password_user("acme", "carol@example.com", PASSWORD, &[]).await;

    // Who may connect a provider: not a manager (a provider signs in as anyone of its domains).
    server.password_user("acme", "max@example.com", PASSWORD, std::slice::from_ref(&manager)).await;
    let mgr_token = server.login("acme", "max@example.com", PASSWORD).await.access_token;
    let mut as_manager = pb::tenant_admin_client::TenantAdminClient::with_interceptor(
        server.channel().await,
        crate::common::Bearer::token(&mgr_token),
    );
    let req = pb::CreateIdentityProviderRequest {
        tenant_id: "acme".into(),
        identity_provider: Some(connection(&idp, &server, "crm-acme", SECRET_A)),
    };
    expect_code(as_manager.create_identity_provider(req).await, Code::PermissionDenied);

    let mut conn = connection(&idp, &server, "crm-acme", SECRET_A);
    conn.group_role_mappings = vec![pb::GroupRoleMapping { group: "sales".into(), role_id: manager.clone() }];
    let stored = connect(&server, "acme", conn).await.expect("connect the provider");
    assert!(stored.client_secret.is_empty(), "the secret is never returned");
    connect(&server, "beta", connection(&idp, &server, "crm-beta", SECRET_B)).await.expect("connect beta");
    // The secret is sealed at rest.
    let db = server.db.connect().await;
    let rows = crate::common::count(
        &db,
        &format!("SELECT COUNT(*) FROM identity_providers WHERE client_secret_sealed LIKE '%{SECRET_A}%'"),
    )
    .await;
    assert_eq!(rows, 0, "the client secret is not stored in clear");

    // Open redirect: a redirect URI outside the connection's list is refused before anything.
    let s = expect_code(begin(&server, "acme", "https://evil.example/steal").await, Code::InvalidArgument);
    assert_eq!(crate::common::bad_fields(&s), vec!["redirect_uri"]);

    // Ann signs in: linked by her verified address, her token works, `amr` says sso, her group
    // gives her the manager role.
    let t = sso(&server, "acme", "ann").await.expect("ann signs in");
    assert_eq!(t.user_id, ann);
    let me = server
        .users_as(&t.access_token)
        .await
        .get_user(pb::GetUserRequest { tenant_id: "acme".into(), user_id: ann.clone() })
        .await;
    assert_eq!(me.expect("the token works on an RPC").into_inner().user.unwrap().email, "ann@example.com");
    let claims = pb::auth_client::AuthClient::with_interceptor(server.channel().await, crate::common::Bearer::admin())
        .introspect_token(pb::IntrospectTokenRequest { token: t.access_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    assert!(claims.authentication_methods.contains(&"sso".to_owned()), "{:?}", claims.authentication_methods);
    assert_eq!(roles_of(&server, "acme", &ann).await, vec![manager.clone()]);
    let ok = audit_events(&server, "acme", &["auth.sso_login_succeeded"]).await;
    assert_eq!(detail(ok.last().unwrap(), "linked_by"), "email");

    // Group change at the provider → role change at the next sign-in (now by the stored link).
    idp.set_accounts(accounts(&[]));
    assert_eq!(sso(&server, "acme", "ann").await.expect("again").user_id, ann);
    assert!(roles_of(&server, "acme", &ann).await.is_empty(), "the manager role went with the group");
    let ok = audit_events(&server, "acme", &["auth.sso_login_succeeded"]).await;
    assert_eq!(detail(ok.last().unwrap(), "linked_by"), "subject");

    // Just-in-time: Bob is created, in the department his claim names, with his group's role.
    let bob = sso(&server, "acme", "bob").await.expect("bob is provisioned").user_id;
    let u = server
        .users()
        .await
        .get_user(pb::GetUserRequest { tenant_id: "acme".into(), user_id: bob.clone() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!((u.email.as_str(), u.given_name.as_str(), u.state()), ("Bob@Example.com", "Bob", pb::UserState::Active));
    assert!(!u.department_id.is_empty(), "placed in the department the claim names");
    assert_eq!(u.role_ids, vec![manager.clone()]);
    let created = audit_events(&server, "acme", &["user.created"]).await;
    assert_eq!(detail(created.last().unwrap(), "credential"), "sso");

    // Replay: the same state (and code) a second time.
    let start = begin(&server, "acme", APP).await.unwrap();
    let back = Browser::default().sign_in(&start.authorization_url, "ann", APP).await;
    complete(&server, &back.state, &back.code, &back.iss, &start.browser_binding).await.expect("first use");
    refused(complete(&server, &back.state, &back.code, &back.iss, &start.browser_binding).await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "state_replayed");
    // The same state spelled with `:` for `.` is the same state.
    refused(complete(&server, &back.state.replace('.', ":"), &back.code, &back.iss, &start.browser_binding).await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "state_replayed");

    // A nonce swapped on the way to the provider: its ID token does not carry this sign-in's.
    let start = begin(&server, "acme", APP).await.unwrap();
    let mut url = url::Url::parse(&start.authorization_url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" { "attacker-chosen-nonce".into() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let back = Browser::default().sign_in(url.as_str(), "ann", APP).await;
    refused(complete(&server, &back.state, &back.code, &back.iss, &start.browser_binding).await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "wrong_nonce");

    // Another client's code (tenant beta's sign-in) presented with acme's state.
    let mine = begin(&server, "acme", APP).await.unwrap();
    let theirs = begin(&server, "beta", APP).await.unwrap();
    let back = Browser::default().sign_in(&theirs.authorization_url, "ann", APP).await;
    refused(complete(&server, &mine.state, &back.code, &back.iss, &mine.browser_binding).await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "idp_error");

    // Mix-up: a response the browser brings from another issuer.
    let start = begin(&server, "acme", APP).await.unwrap();
    let back = Browser::default().sign_in(&start.authorization_url, "ann", APP).await;
    refused(complete(&server, &back.state, &back.code, "https://other-idp.example", &start.browser_binding).await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "issuer_mismatch");

    // A forged state.
    refused(complete(&server, "enc:v1:0000000000000000:AAAA", "code", "", "binding").await);

    // Takeover by an unverified address: Eve's account claims Carol's address without proof.
    refused(sso(&server, "acme", "eve").await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "unverified_email");

    // An address outside the allowed domains.
    refused(sso(&server, "acme", "mallory").await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "domain_not_allowed");

    // An invited user signing in through the provider, which verified the address the invitation
    // went to: the invitation is accepted and the user is active.
    let invited = server.users().await.create_user(crate::common::invite("acme", "ivy@example.com")).await;
    let ivy = invited.unwrap().into_inner().user.unwrap().user_id;
    assert_eq!(sso(&server, "acme", "ivy").await.expect("ivy accepts by signing in").user_id, ivy);
    let req = pb::GetUserRequest { tenant_id: "acme".into(), user_id: ivy.clone() };
    let u = server.users().await.get_user(req).await.unwrap().into_inner().user.unwrap();
    assert_eq!(u.state(), pb::UserState::Active);
    let accepted = audit_events(&server, "acme", &["user.invitation_accepted"]).await;
    assert_eq!(detail(accepted.last().unwrap(), "via"), "sso");

    // A deactivated user is refused whatever the provider says.
    let req = pb::DeactivateUserRequest { tenant_id: "acme".into(), user_id: ann.clone(), ..Default::default() };
    server.users().await.deactivate_user(req).await.expect("deactivate");
    refused(sso(&server, "acme", "ann").await);
    assert_eq!(sso_failures(&server, "acme").await.last().unwrap(), "user_not_active");

    // The HTTP callback path: the provider sends the browser to crm-iam, which answers tokens.
    // /sso/start begins it and keeps the browser binding in a cookie for the callback.
    let (start_url, callback) = http_start(&server, "acme");
    let mut browser = Browser::default();
    let (status, to_provider, _) = browser.send(reqwest::Method::GET, start_url.as_str(), None).await;
    assert_eq!(status, 302);
    let back = browser.sign_in_until(&to_provider, "bob", &callback).await;
    let (status, _, body) = browser.send(reqwest::Method::GET, back.as_str(), None).await;
    assert_eq!(status, 200, "{body}");
    let tokens: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tokens["user_id"], bob.as_str());
    assert!(server.token_active(tokens["access_token"].as_str().unwrap()).await);
    server.stop().await;
}

async fn sso_required_logout_and_key_rotation(backend: Backend) {
    let server = start(backend).await;
    server.tenant("acme", 0).await;
    server.tenant("beta", 0).await;
    let idp = provider(&server);
    let admin_role = server.builtin_role("acme", "administrator").await;
    let root = server.password_user("acme", "root@example.com", PASSWORD, &[admin_role]).await;
    let ann = server.password_user("acme", "ann@example.com", PASSWORD, &[]).await;
    server.password_user("acme", "dan@example.com", PASSWORD, &[]).await;
    let before = server.login("acme", "ann@example.com", PASSWORD).await.access_token;
    let root_before = server.login("acme", "root@example.com", PASSWORD).await.access_token;

    let mut conn = connection(&idp, &server, "crm-acme", SECRET_A);
    conn.sso_required = true;
    conn.break_glass_user_ids = vec![root.clone()];
    connect(&server, "acme", conn).await.expect("connect");
    // A password session from before would keep refreshing past the requirement: it ended
    // (the break-glass administrator's stays).
    assert!(!server.token_active(&before).await, "Ann's password session ended");
    assert!(server.token_active(&root_before).await, "the break-glass session stays");

    // SSO required: Ann's right password is refused like a wrong one; the break-glass admin logs in.
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    let failed = audit_events(&server, "acme", &["auth.login_failed"]).await;
    assert_eq!(detail(failed.last().unwrap(), "reason"), "sso_required");
    server.login("acme", "root@example.com", PASSWORD).await;

    // Back-channel logout: logging out at the provider ends the crm-iam session it opened.
    let start = begin(&server, "acme", APP).await.unwrap();
    let mut browser = Browser::default();
    let back = browser.sign_in(&start.authorization_url, "ann", APP).await;
    let t = complete(&server, &back.state, &back.code, &back.iss, &start.browser_binding).await.expect("ann signs in");
    assert_eq!(t.user_id, ann);
    assert!(server.token_active(&t.access_token).await);
    browser.log_out_at(&idp.issuer).await;
    crate::common::eventually("the provider's logout ends the session", || async {
        !server.token_active(&t.access_token).await
    })
    .await;
    let revoked = audit_events(&server, "acme", &["auth.sessions_revoked"]).await;
    assert_eq!(detail(revoked.last().unwrap(), "reason"), "idp_logout");
    // A forged logout token is refused (400), and ends nothing.
    let t2 = sso(&server, "acme", "ann").await.expect("ann again");
    let url = format!("http://{}/sso/backchannel-logout/acme/company", server.http_addr.unwrap());
    let forged = reqwest::Client::new()
        .post(&url)
        .form(&[("logout_token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4ifQ.")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert!(server.token_active(&t2.access_token).await);

    // No password to change while the tenant requires SSO (the session would escape the provider).
    let req = pb::ChangePasswordRequest {
        old_password: PASSWORD.into(),
        new_password: "another long passphrase here".into(),
    };
    expect_code(server.auth_as(&t2.access_token).await.change_password(req).await, Code::FailedPrecondition);

    // The break-glass administrator signs in through the provider too and changes the password
    // from that session: the new session is still the provider's, its logout ends it.
    let start = begin(&server, "acme", APP).await.unwrap();
    let mut root_browser = Browser::default();
    let back = root_browser.sign_in(&start.authorization_url, "root", APP).await;
    let r = complete(&server, &back.state, &back.code, &back.iss, &start.browser_binding).await.expect("root");
    let req = pb::ChangePasswordRequest {
        old_password: PASSWORD.into(),
        new_password: "another long passphrase here".into(),
    };
    let changed = server.auth_as(&r.access_token).await.change_password(req).await.expect("change").into_inner();
    assert!(server.token_active(&changed.access_token).await);
    root_browser.log_out_at(&idp.issuer).await;
    crate::common::eventually("the provider's logout ends the session ChangePassword opened", || async {
        !server.token_active(&changed.access_token).await
    })
    .await;

    // The provider rotates its keys: the next ID token is signed by a key crm-iam has not seen.
    let before = idp.key_ids().await;
    idp.rotate_keys().await;
    assert_ne!(idp.key_ids().await, before);
    assert_eq!(sso(&server, "acme", "ann").await.expect("signs in after the rotation").user_id, ann);

    // Deleting the connection ends the sessions it opened.
    let req = pb::DeleteIdentityProviderRequest { tenant_id: "acme".into(), name: "company".into() };
    server.tenants().await.delete_identity_provider(req).await.expect("delete");
    assert!(!server.token_active(&t2.access_token).await);
    let s = expect_code(begin(&server, "acme", APP).await, Code::NotFound);
    assert_eq!(reason(&s), "IDENTITY_PROVIDER_NOT_FOUND");
    // And password logins work again (Dan never linked; Ann's password went when her account was
    // linked by its address).
    server.login("acme", "dan@example.com", PASSWORD).await;
    let s = expect_code(server.try_login("acme", "ann@example.com", PASSWORD, "").await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_CREDENTIALS");
    server.stop().await;
}
