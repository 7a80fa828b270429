//! Notifications: invitations, resets and security notices delivered to a real SMTP server
//! (aiosmtpd, `tests/smtp_sink.py`) and to a real webhook receiver that checks signatures with
//! the Standard Webhooks reference library (`tests/webhook_sink.py`), from the transactional
//! outbox, on both databases; tenants' own templates.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use prost_types::FieldMask;
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

use crate::{
    both_backends,
    common::{self, ADMIN_TOKEN, Backend, TestServer, expect_code, invite, pb, reason, wait_for},
};

both_backends!(
    an_invitation_arrives_in_the_users_language_and_its_token_works,
    a_forgotten_password_is_reset_by_email_and_unknown_addresses_look_the_same,
    reset_requests_are_limited_per_account_and_per_address,
    messages_wait_while_the_smtp_server_is_down,
    undeliverable_messages_fail_with_an_audit_event_and_can_be_retried,
    a_failed_or_retried_create_sends_one_invitation_or_none,
    a_message_committed_before_a_crash_is_delivered_after_restart,
    a_purge_erases_the_outbox_copies_of_the_address,
    webhooks_are_signed_per_the_standard_and_retried_until_accepted,
    each_tenant_chooses_its_channel,
    a_tenants_own_templates_are_checked_previewed_and_used,
    the_other_administrators_hear_of_a_new_one,
    a_user_provisioned_by_scim_gets_the_invitation,
);

const PASSWORD: &str = "correct horse battery staple 42";

/// A real SMTP server on 127.0.0.1: each message it receives, as JSON.
struct Sink {
    child: Child,
    port: u16,
    rx: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Sink {
    /// On a free port (`0`) or a given one.
    fn start(port: u16) -> Sink {
        Sink::script("smtp_sink.py", &[&port.to_string()], "aiosmtpd")
    }

    /// One of the tests' Python receivers: it prints `READY <port>`, then a JSON line per message.
    fn script(script: &str, args: &[&str], needs: &str) -> Sink {
        let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(&script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 with {needs} is needed (scripts/test.sh installs it): {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().expect("the receiver says READY").expect("read");
        let port: u16 = ready.strip_prefix("READY ").expect("READY <port>").parse().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("a JSON line"));
            }
        });
        Sink { child, port, rx }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The next message received (waits for it, at most 30 s).
    async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("a message within 30 s")
            .expect("the sink is running")
    }

    /// Messages received so far and not yet taken.
    fn drain(&mut self) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (bound and released; an SMTP server may start there later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn quick_retries(c: &mut crm_iam::config::Config, smtp: String) {
    c.smtp_url = Some(smtp.into());
    c.smtp_from = "CRM <no-reply@crm.example>".into();
    c.notification_retry_first = Duration::from_millis(100);
    c.notification_retry_max = Duration::from_millis(400);
    c.notification_poll_interval = Duration::from_millis(100);
    c.notification_link_base = "https://{tenant}.crm.example".into();
}

/// The token in a message's link.
fn token_in(body: &str) -> String {
    let start = body.find("token=").expect("a link with a token") + "token=".len();
    body[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

async fn notifications(s: &TestServer, t: &str) -> Vec<pb::Notification> {
    let mut c = pb::notification_admin_client::NotificationAdminClient::with_interceptor(
        s.channel().await,
        common::Bearer::admin(),
    );
    c.list_notifications(pb::ListNotificationsRequest { tenant_id: t.into(), page_size: 1000, ..Default::default() })
        .await
        .expect("list notifications")
        .into_inner()
        .notifications
}

async fn retry(s: &TestServer, t: &str, id: &str) -> Result<pb::Notification, tonic::Status> {
    let mut c = pb::notification_admin_client::NotificationAdminClient::with_interceptor(
        s.channel().await,
        common::Bearer::admin(),
    );
    c.retry_notification(pb::RetryNotificationRequest { tenant_id: t.into(), notification_id: id.into() })
        .await
        .map(|r| r.into_inner().notification.unwrap())
}

fn state(n: &pb::Notification) -> pb::NotificationState {
    pb::NotificationState::try_from(n.state).unwrap()
}

/// Waits until every notification of the tenant is in `wanted` and there are `n` of them.
async fn all_in(s: &TestServer, t: &str, n: usize, wanted: pb::NotificationState) -> Vec<pb::Notification> {
    wait_for(&format!("{n} notifications {wanted:?}"), Duration::from_secs(30), || async {
        let all = notifications(s, t).await;
        (all.len() == n && all.iter().all(|x| state(x) == wanted)).then_some(all)
    })
    .await
}

/// Every text value of every row of `table`, as one string (to search for secrets).
async fn dump(s: &TestServer, table: &str) -> String {
    let db = s.db.connect().await;
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), format!("SELECT * FROM {table}")))
        .await
        .unwrap();
    let mut out = String::new();
    for row in rows {
        for col in row.column_names() {
            if let Ok(Some(v)) = row.try_get::<Option<String>>("", &col) {
                out.push_str(&v);
                out.push('\n');
            }
        }
    }
    out
}

async fn set_policy(s: &TestServer, t: &str, default_locale: &str) {
    s.tenants()
        .await
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: t.into(),
                settings: Some(pb::TenantSettings {
                    notification_policy: Some(pb::NotificationPolicy {
                        default_locale: default_locale.into(),
                        link_base_url: "https://crm.acme.example/app/".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["settings.notification_policy".into()] }),
            ..Default::default()
        })
        .await
        .expect("set the notification policy");
}

async fn an_invitation_arrives_in_the_users_language_and_its_token_works(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| quick_retries(c, url)).await;
    let t = s.tenant("acme", 0).await;
    let mut users = s.users().await;

    let mut req = invite(&t, "olga@acme.example");
    req.user.as_mut().unwrap().given_name = "Ольга".into();
    req.user.as_mut().unwrap().locale = "ru-RU".into();
    let created = users.create_user(req).await.unwrap().into_inner();
    let user = created.user.unwrap();
    assert_eq!(user.locale, "ru", "stored in canonical form");
    assert!(created.invitation_token.is_empty(), "with a channel the token goes only to the user");

    let mail = sink.next().await;
    assert_eq!(mail["to"], serde_json::json!(["olga@acme.example"]));
    assert_eq!(mail["from"], "no-reply@crm.example");
    assert!(mail["subject"].as_str().unwrap().starts_with("Приглашение"), "{mail}");
    let body = mail["body"].as_str().unwrap();
    assert!(
        body.contains("Здравствуйте") && body.contains("https://acme.crm.example/accept-invitation?token="),
        "{body}"
    );
    let token = token_in(body);
    assert_eq!(
        mail["message_id"].as_str().unwrap(),
        format!("<{}@crm-iam>", notifications(&s, &t).await[0].notification_id)
    );

    // Delivered: the outbox says so, and GetUser shows it.
    let sent = all_in(&s, &t, 1, pb::NotificationState::Sent).await;
    assert_eq!((sent[0].kind.as_str(), sent[0].attempts, sent[0].locale.as_str()), ("invitation", 1, "ru"));
    let got = users
        .get_user(pb::GetUserRequest { tenant_id: t.clone(), user_id: user.user_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got.invitation_delivery, pb::NotificationState::Sent as i32);

    // No stored row, audit event or log holds the token once it is delivered.
    for table in ["notifications", "audit_events", "user_tokens"] {
        assert!(!dump(&s, table).await.contains(&token), "{table} holds the token");
    }

    // The token from the e-mail is the invitation.
    let accepted = s
        .auth()
        .await
        .accept_invitation(pb::AcceptInvitationRequest {
            invitation_token: token.clone(),
            new_password: PASSWORD.into(),
        })
        .await
        .expect("the e-mailed token works")
        .into_inner();
    assert_eq!(accepted.user.unwrap().state, pb::UserState::Active as i32);
    s.login(&t, "olga@acme.example", PASSWORD).await;

    // A user without a locale gets the tenant's default language.
    set_policy(&s, &t, "zh-CN").await;
    users.create_user(invite(&t, "li@acme.example")).await.unwrap();
    let mail = sink.next().await;
    assert!(mail["subject"].as_str().unwrap().starts_with("邀请您加入"), "{mail}");
    assert!(
        mail["body"].as_str().unwrap().contains("https://crm.acme.example/app/accept-invitation?token="),
        "the tenant's link base: {mail}"
    );

    // Bad input is refused field by field, and changes nothing.
    let mut bad = invite(&t, "x@acme.example");
    bad.user.as_mut().unwrap().locale = "de".into();
    let e = expect_code(users.create_user(bad).await, Code::InvalidArgument);
    assert_eq!(common::bad_fields(&e), ["user.locale"]);
    let e = expect_code(
        s.tenants()
            .await
            .update_tenant(pb::UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    tenant_id: t.clone(),
                    settings: Some(pb::TenantSettings {
                        notification_policy: Some(pb::NotificationPolicy {
                            default_locale: "xx".into(),
                            link_base_url: "http://evil.example/?a=b".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask { paths: vec!["settings.notification_policy".into()] }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        common::bad_fields(&e),
        ["tenant.settings.notification_policy.default_locale", "tenant.settings.notification_policy.link_base_url"]
    );
    // A channel this server has not (no webhook) cannot be chosen.
    let e = expect_code(set_channel(&s, &t, pb::NotificationChannel::Webhook).await, Code::InvalidArgument);
    assert_eq!(common::bad_fields(&e), ["tenant.settings.notification_policy.channel"]);
    drop(sink);
    s.stop().await;
}

async fn request_reset(
    s: &TestServer,
    t: &str,
    email: &str,
) -> Result<pb::RequestPasswordResetResponse, tonic::Status> {
    s.auth()
        .await
        .request_password_reset(pb::RequestPasswordResetRequest { tenant_id: t.into(), email: email.into() })
        .await
        .map(|r| r.into_inner())
}

/// The outcomes recorded for RequestPasswordReset, in order.
async fn reset_outcomes(s: &TestServer, n: usize) -> Vec<String> {
    let db = s.db.connect().await;
    wait_for(&format!("{n} reset requests audited"), Duration::from_secs(30), || async {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT details FROM audit_events WHERE action = 'auth.password_reset_requested' ORDER BY seq",
            ))
            .await
            .unwrap();
        let outcomes: Vec<String> = rows
            .iter()
            .map(|r| {
                let d: String = r.try_get("", "details").unwrap();
                serde_json::from_str::<serde_json::Value>(&d).unwrap()["outcome"].as_str().unwrap().to_owned()
            })
            .collect();
        (outcomes.len() >= n).then_some(outcomes)
    })
    .await
}

async fn a_forgotten_password_is_reset_by_email_and_unknown_addresses_look_the_same(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| quick_retries(c, url)).await;
    let t = s.tenant("acme", 0).await;
    set_policy(&s, &t, "zh-CN").await;
    s.password_user(&t, "wang@acme.example", PASSWORD, &[]).await;
    let old_session = s.login(&t, "wang@acme.example", PASSWORD).await;

    // Known and unknown addresses (and an unknown tenant) get the same empty answer.
    let unknown = request_reset(&s, &t, "nobody@acme.example").await.unwrap();
    let no_tenant = request_reset(&s, "no-such-tenant", "wang@acme.example").await.unwrap();
    let known = request_reset(&s, &t, "WANG@acme.example").await.unwrap();
    assert_eq!((unknown, no_tenant), (known, known));
    let mut outcomes = reset_outcomes(&s, 2).await;
    outcomes.sort();
    assert_eq!(outcomes, ["sent", "unknown_email"]);

    let mail = sink.next().await;
    assert_eq!(mail["to"], serde_json::json!(["wang@acme.example"]));
    assert!(mail["subject"].as_str().unwrap().starts_with("重置您的"), "{mail}");
    let body = mail["body"].as_str().unwrap();
    assert!(body.contains("https://crm.acme.example/app/reset-password?token="), "{body}");
    let token = token_in(body);

    let new_password = "a brand new passphrase 77";
    s.auth()
        .await
        .complete_password_reset(pb::CompletePasswordResetRequest {
            reset_token: token.clone(),
            new_password: new_password.into(),
        })
        .await
        .expect("the e-mailed reset token works");
    assert!(!s.token_active(&old_session.access_token).await, "the reset ended every session");
    s.login(&t, "wang@acme.example", new_password).await;
    let again = s
        .auth()
        .await
        .complete_password_reset(pb::CompletePasswordResetRequest {
            reset_token: token.clone(),
            new_password: "x".repeat(20),
        })
        .await;
    assert_eq!(reason(&expect_code(again, Code::Unauthenticated)), "TOKEN_INVALID", "single use");

    // The "password changed" notice follows, in the same language.
    let notice = sink.next().await;
    assert!(notice["subject"].as_str().unwrap().contains("密码已更改"), "{notice}");
    let all = all_in(&s, &t, 2, pb::NotificationState::Sent).await;
    let mut kinds: Vec<&str> = all.iter().map(|n| n.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["password_changed", "password_reset"]);
    assert!(sink.drain().is_empty(), "nothing went to the unknown address");
    for table in ["notifications", "audit_events", "user_tokens"] {
        assert!(!dump(&s, table).await.contains(&token), "{table} holds the token");
    }
    drop(sink);
    s.stop().await;
}

async fn reset_requests_are_limited_per_account_and_per_address(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| {
        quick_retries(c, url);
        c.password_reset_messages_per_account = 2;
        c.password_reset_requests_per_address = 6;
    })
    .await;
    let t = s.tenant("acme", 0).await;
    s.password_user(&t, "ann@acme.example", PASSWORD, &[]).await;
    for _ in 0..5 {
        request_reset(&s, &t, "ann@acme.example").await.unwrap();
    }
    // The address's budget: one more, then refused whatever the e-mail.
    request_reset(&s, &t, "someone@acme.example").await.unwrap();
    let refused = request_reset(&s, &t, "ann@acme.example").await;
    assert_eq!(reason(&expect_code(refused, Code::ResourceExhausted)), "TOO_MANY_ATTEMPTS");

    let outcomes = reset_outcomes(&s, 6).await;
    let sent = outcomes.iter().filter(|o| *o == "sent").count();
    let throttled = outcomes.iter().filter(|o| *o == "throttled").count();
    assert_eq!((sent, throttled), (2, 3), "{outcomes:?}");
    // Two messages were queued; the first was superseded by the second (its token was revoked)
    // unless it had been delivered already; the account received at most two.
    let first = sink.next().await;
    assert!(first["body"].as_str().unwrap().contains("reset-password?token="));
    let all = wait_for("both reset messages settled", Duration::from_secs(30), || async {
        let all = notifications(&s, &t).await;
        (all.len() == 2 && all.iter().all(|n| state(n) != pb::NotificationState::Pending)).then_some(all)
    })
    .await;
    let delivered = all.iter().filter(|n| state(n) == pb::NotificationState::Sent).count();
    assert!(delivered >= 1, "{all:?}");
    for _ in 1..delivered {
        sink.next().await;
    }
    // (A message superseded while it was being sent may still arrive: its token no longer works.)
    assert!(delivered + sink.drain().len() <= 2, "the account received at most two messages");
    drop(sink);
    s.stop().await;
}

async fn messages_wait_while_the_smtp_server_is_down(backend: Backend) {
    let port = free_port();
    let s = TestServer::start_with(backend, |c| quick_retries(c, format!("smtp://127.0.0.1:{port}"))).await;
    let t = s.tenant("acme", 0).await;
    let mut users = s.users().await;
    for i in 0..3 {
        users.create_user(invite(&t, &format!("u{i}@acme.example"))).await.unwrap();
    }
    // Every message tried at least twice, and waiting.
    wait_for("failed attempts recorded", Duration::from_secs(30), || async {
        let all = notifications(&s, &t).await;
        all.iter()
            .all(|n| state(n) == pb::NotificationState::Pending && n.attempts >= 2 && n.last_error.contains("SMTP"))
            .then_some(())
    })
    .await;

    // The server comes back: each message arrives, once.
    let mut sink = Sink::start(port);
    let mut ids = std::collections::BTreeSet::new();
    let mut to = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let m = sink.next().await;
        assert!(ids.insert(m["message_id"].as_str().unwrap().to_owned()), "a message came twice: {m}");
        to.insert(m["to"][0].as_str().unwrap().to_owned());
    }
    assert_eq!(to.len(), 3);
    all_in(&s, &t, 3, pb::NotificationState::Sent).await;
    assert!(sink.drain().is_empty(), "no repeats");
    drop(sink);
    s.stop().await;
}

async fn undeliverable_messages_fail_with_an_audit_event_and_can_be_retried(backend: Backend) {
    let port = free_port();
    let s = TestServer::start_with(backend, |c| {
        quick_retries(c, format!("smtp://127.0.0.1:{port}"));
        c.notification_retry_period = Duration::from_secs(1);
    })
    .await;
    let t = s.tenant("acme", 0).await;
    s.users().await.create_user(invite(&t, "inv@acme.example")).await.unwrap();
    s.password_user(&t, "pat@acme.example", PASSWORD, &[]).await;
    let session = s.login(&t, "pat@acme.example", PASSWORD).await;
    s.auth_as(&session.access_token)
        .await
        .change_password(pb::ChangePasswordRequest {
            old_password: PASSWORD.into(),
            new_password: "another good passphrase 9".into(),
        })
        .await
        .unwrap();
    let failed = all_in(&s, &t, 2, pb::NotificationState::Failed).await;
    assert!(failed.iter().all(|n| n.attempts >= 1 && !n.last_error.is_empty()), "{failed:?}");
    let db = s.db.connect().await;
    let audited = common::count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'notification.failed'").await;
    assert_eq!(audited, 2);
    let secrets = common::count(&db, "SELECT COUNT(*) FROM notifications WHERE secret IS NOT NULL").await;
    assert_eq!(secrets, 0, "a failed message keeps no token");

    // The invitation cannot be retried (its token is gone); the notice can.
    let invitation = failed.iter().find(|n| n.kind == "invitation").unwrap();
    let e = expect_code(retry(&s, &t, &invitation.notification_id).await, Code::FailedPrecondition);
    assert_eq!(reason(&e), "NOTIFICATION_NOT_RETRYABLE");
    let e = expect_code(retry(&s, &t, &uuid::Uuid::now_v7().to_string()).await, Code::NotFound);
    assert_eq!(reason(&e), "NOTIFICATION_NOT_FOUND");
    let mut sink = Sink::start(port);
    let notice = failed.iter().find(|n| n.kind == "password_changed").unwrap();
    let queued = retry(&s, &t, &notice.notification_id).await.unwrap();
    assert_eq!(state(&queued), pb::NotificationState::Pending);
    let mail = sink.next().await;
    assert_eq!(mail["to"][0], "pat@acme.example");
    assert!(mail["subject"].as_str().unwrap().contains("password was changed"));
    wait_for("the retried notice SENT", Duration::from_secs(30), || async {
        let all = notifications(&s, &t).await;
        all.iter()
            .any(|n| n.notification_id == notice.notification_id && state(n) == pb::NotificationState::Sent)
            .then_some(())
    })
    .await;
    // Another tenant's administrator sees none of it.
    let other = s.tenant("other", 0).await;
    assert!(notifications(&s, &other).await.is_empty());
    drop(sink);
    s.stop().await;
}

async fn a_failed_or_retried_create_sends_one_invitation_or_none(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| quick_retries(c, url)).await;
    let t = s.tenant("acme", 1).await;
    let mut users = s.users().await;
    // Refused (a role of no tenant): rolled back, nothing queued.
    let mut bad = invite(&t, "ghost@acme.example");
    bad.role_ids = vec![uuid::Uuid::now_v7().to_string()];
    expect_code(users.create_user(bad).await, Code::InvalidArgument);
    // Retried with the same request_id: one user, one invitation.
    let mut req = invite(&t, "once@acme.example");
    req.request_id = "create-once-1".into();
    let a = users.create_user(req.clone()).await.unwrap().into_inner();
    let b = users.create_user(req).await.unwrap().into_inner();
    assert_eq!(a.user.unwrap().user_id, b.user.unwrap().user_id);
    // Refused (the seat limit of 1 is used): nothing queued.
    expect_code(users.create_user(invite(&t, "over@acme.example")).await, Code::ResourceExhausted);

    let mail = sink.next().await;
    assert_eq!(mail["to"][0], "once@acme.example");
    all_in(&s, &t, 1, pb::NotificationState::Sent).await;
    assert!(sink.drain().is_empty(), "{:?}", sink.drain());
    drop(sink);
    s.stop().await;
}

async fn a_message_committed_before_a_crash_is_delivered_after_restart(backend: Backend) {
    let setup = TestServer::start(backend).await;
    let t = setup.tenant("acme", 0).await;
    let db = setup.stop().await;
    let port = free_port();
    let smtp = format!("smtp://127.0.0.1:{port}");
    let env = [
        ("CRM_IAM_ADMIN_TOKEN", ADMIN_TOKEN),
        ("CRM_IAM_SMTP_URL", smtp.as_str()),
        ("CRM_IAM_TRANSFER_LEASE", "1s"),
        ("CRM_IAM_NOTIFICATION_RETRY_FIRST", "100ms"),
        ("CRM_IAM_NOTIFICATION_RETRY_MAX", "300ms"),
        ("CRM_IAM_NOTIFICATION_POLL_INTERVAL", "100ms"),
        // Everything the server logs, to look for the token in it.
        ("RUST_LOG", "debug"),
    ];
    let args = ["--listen", "127.0.0.1:0", "--database-url", db.url.as_str()];
    let (mut first, addr) = crate::server::spawn_server(&args, &env);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut users = pb::user_admin_client::UserAdminClient::with_interceptor(channel, common::Bearer::admin());
    users.create_user(invite(&t, "crash@acme.example")).await.expect("committed");
    first.child.kill().unwrap(); // SIGKILL: the message was committed, never delivered
    first.child.wait().unwrap();

    let mut sink = Sink::start(port);
    let (second, _addr) = crate::server::spawn_server(&args, &env);
    let mail = sink.next().await;
    assert_eq!(mail["to"][0], "crash@acme.example");
    let token = token_in(mail["body"].as_str().unwrap());
    // No log line of either server, at debug level, holds the token.
    for (name, log) in [("first", &first.stderr), ("second", &second.stderr)] {
        let log = log.lock().unwrap();
        assert!(log.contains("DEBUG"), "the {name} server logged at debug level");
        assert!(!log.contains(&token), "the {name} server logged the token");
    }
    drop(sink);
}

/// Two replicas on one PostgreSQL database, both delivering: every message is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_message_once() {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let a = TestServer::start_with(Backend::Postgres, |c| quick_retries(c, url.clone())).await;
    let mut config = common::test_config(&a.db);
    quick_retries(&mut config, url);
    let b = TestServer::start_on(common::TestDb::attach(&a.db), config).await;
    let t = a.tenant("acme", 0).await;
    const N: usize = 12;
    let (mut ua, mut ub) = (a.users().await, b.users().await);
    for i in 0..N {
        let users = if i % 2 == 0 { &mut ua } else { &mut ub };
        users.create_user(invite(&t, &format!("r{i}@acme.example"))).await.unwrap();
    }
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..N {
        let m = sink.next().await;
        assert!(ids.insert(m["message_id"].as_str().unwrap().to_owned()), "sent twice: {m}");
    }
    all_in(&a, &t, N, pb::NotificationState::Sent).await;
    assert!(sink.drain().is_empty(), "no message was sent twice");
    drop(sink);
    b.stop().await;
    a.stop().await;
}

async fn a_purge_erases_the_outbox_copies_of_the_address(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| quick_retries(c, url)).await;
    let t = s.tenant("acme", 0).await;
    let mut users = s.users().await;
    let mut req = invite(&t, "leaver@acme.example");
    req.user.as_mut().unwrap().given_name = "Zebulon".into();
    let id = users.create_user(req).await.unwrap().into_inner().user.unwrap().user_id;
    sink.next().await;
    all_in(&s, &t, 1, pb::NotificationState::Sent).await;
    assert!(dump(&s, "notifications").await.contains("leaver@acme.example"));
    users
        .delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: id.clone(), ..Default::default() })
        .await
        .unwrap();
    users.purge_user(pb::PurgeUserRequest { tenant_id: t.clone(), user_id: id, ..Default::default() }).await.unwrap();
    let stored = dump(&s, "notifications").await;
    assert!(!stored.contains("leaver@acme.example") && !stored.contains("Zebulon"), "{stored}");
    drop(sink);
    s.stop().await;
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver on 127.0.0.1 that verifies each request with the Standard Webhooks
/// reference library (`tests/webhook_sink.py`): each request, as JSON (`verified`, `id`, `payload`).
struct Hooks(Sink);

impl Hooks {
    /// Verifying with `secret`; the first `fail_first` requests are answered 503.
    fn start(secret: &str, fail_first: u32) -> Hooks {
        Hooks(Sink::script("webhook_sink.py", &[secret, "0", &fail_first.to_string()], "standardwebhooks"))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/crm-iam/notifications", self.0.port)
    }

    async fn next(&mut self) -> serde_json::Value {
        self.0.next().await
    }

    fn drain(&mut self) -> Vec<serde_json::Value> {
        self.0.drain()
    }
}

fn webhook(c: &mut crm_iam::config::Config, url: String, secret: &str) {
    c.notification_webhook_url = Some(url.into());
    c.notification_webhook_secret = Some(secret.to_owned().into());
    c.notification_retry_first = Duration::from_millis(100);
    c.notification_retry_max = Duration::from_millis(400);
    c.notification_poll_interval = Duration::from_millis(100);
}

async fn set_channel(s: &TestServer, t: &str, channel: pb::NotificationChannel) -> Result<(), tonic::Status> {
    s.tenants()
        .await
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: t.into(),
                settings: Some(pb::TenantSettings {
                    notification_policy: Some(pb::NotificationPolicy { channel: channel as i32, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["settings.notification_policy".into()] }),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn webhooks_are_signed_per_the_standard_and_retried_until_accepted(backend: Backend) {
    let mut hooks = Hooks::start(WEBHOOK_SECRET, 2);
    let url = hooks.url();
    let s = TestServer::start_with(backend, |c| webhook(c, url, WEBHOOK_SECRET)).await;
    let t = s.tenant("acme", 0).await;
    let mut req = invite(&t, "dmitry@acme.example");
    let u = req.user.as_mut().unwrap();
    (u.given_name, u.locale, u.phone) = ("Дмитрий".into(), "ru".into(), "+7 495 123-45-67".into());
    let created = s.users().await.create_user(req).await.unwrap().into_inner();
    assert!(created.invitation_token.is_empty(), "the token goes by the channel only");

    // Two 503s, then accepted: the receiver's library verified the signature of what it took.
    let hook = hooks.next().await;
    assert_eq!(hook["verified"], true, "{hook}");
    let sent = all_in(&s, &t, 1, pb::NotificationState::Sent).await;
    assert_eq!((sent[0].channel.as_str(), sent[0].attempts), ("webhook", 3), "{sent:?}");
    assert_eq!(hook["id"], sent[0].notification_id.as_str(), "webhook-id is the notification id");
    assert_eq!(hook["content_type"], "application/json");
    let p = &hook["payload"];
    assert_eq!(p["type"], "notification.invitation");
    let d = &p["data"];
    assert_eq!(
        (d["tenant_id"].as_str(), d["kind"].as_str(), d["locale"].as_str()),
        (Some("acme"), Some("invitation"), Some("ru"))
    );
    assert_eq!(d["user_id"], created.user.unwrap().user_id.as_str());
    assert_eq!(d["recipient"]["email"], "dmitry@acme.example");
    assert_eq!(d["recipient"]["phone"], "+74951234567", "for an SMS");
    assert!(d["subject"].as_str().unwrap().starts_with("Приглашение"), "{d}");
    let link = d["link"].as_str().unwrap();
    assert!(d["body"].as_str().unwrap().contains(link), "the rendered body carries the link");
    let token = token_in(link);
    for table in ["notifications", "audit_events"] {
        assert!(!dump(&s, table).await.contains(&token), "{table} holds the token");
    }
    s.auth()
        .await
        .accept_invitation(pb::AcceptInvitationRequest { invitation_token: token, new_password: PASSWORD.into() })
        .await
        .expect("the token from the webhook works");
    // Accepting the invitation and signing in queue no further message (nothing else has come).
    assert_eq!(notifications(&s, &t).await.len(), 1, "one message in the outbox");
    s.login(&t, "dmitry@acme.example", PASSWORD).await;
    assert!(hooks.drain().is_empty());
    drop(hooks);
    s.stop().await;

    // Signed with another secret: the receiver refuses it (401), so it is never SENT.
    let mut strict = Hooks::start("whsec_c2VjcmV0LW9mLWFub3RoZXItcmVjZWl2ZXItMTIzNA==", 0);
    let url = strict.url();
    let s = TestServer::start_with(backend, |c| webhook(c, url, WEBHOOK_SECRET)).await;
    let t = s.tenant("acme", 0).await;
    s.users().await.create_user(invite(&t, "eve@acme.example")).await.unwrap();
    let refused = strict.next().await;
    assert_eq!(refused["verified"], false, "{refused}");
    let pending = wait_for("the refusal recorded", Duration::from_secs(30), || async {
        let all = notifications(&s, &t).await;
        (all[0].attempts >= 1).then_some(all)
    })
    .await;
    assert_eq!(state(&pending[0]), pb::NotificationState::Pending, "retried, not SENT");
    assert_eq!(pending[0].last_error, "webhook: the receiver answered HTTP 401");
    drop(strict);
    s.stop().await;
}

async fn each_tenant_chooses_its_channel(backend: Backend) {
    let mut sink = Sink::start(0);
    let mut hooks = Hooks::start(WEBHOOK_SECRET, 0);
    let (smtp, url) = (sink.url(), hooks.url());
    let s = TestServer::start_with(backend, |c| {
        quick_retries(c, smtp);
        webhook(c, url, WEBHOOK_SECRET);
    })
    .await;
    let (acme, beta) = (s.tenant("acme", 0).await, s.tenant("beta", 0).await);
    set_channel(&s, &beta, pb::NotificationChannel::Webhook).await.unwrap();
    s.users().await.create_user(invite(&acme, "a@acme.example")).await.unwrap();
    s.users().await.create_user(invite(&beta, "b@beta.example")).await.unwrap();
    assert_eq!(sink.next().await["to"][0], "a@acme.example", "the default is e-mail");
    let hook = hooks.next().await;
    assert_eq!(
        (hook["verified"].as_bool(), hook["payload"]["data"]["recipient"]["email"].as_str()),
        (Some(true), Some("b@beta.example"))
    );
    all_in(&s, &acme, 1, pb::NotificationState::Sent).await;
    all_in(&s, &beta, 1, pb::NotificationState::Sent).await;
    assert!(sink.drain().is_empty() && hooks.drain().is_empty(), "each message went one way only");
    let got =
        s.tenants().await.get_tenant(pb::GetTenantRequest { tenant_id: beta.clone() }).await.unwrap().into_inner();
    let policy = got.tenant.unwrap().settings.unwrap().notification_policy.unwrap();
    assert_eq!(policy.channel, pb::NotificationChannel::Webhook as i32);
    drop((sink, hooks));
    s.stop().await;
}

fn template(kind: &str, locale: &str, subject: &str, body: &str) -> pb::NotificationTemplate {
    pb::NotificationTemplate {
        kind: kind.into(),
        locale: locale.into(),
        subject: subject.into(),
        body: body.into(),
        ..Default::default()
    }
}

async fn a_tenants_own_templates_are_checked_previewed_and_used(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| quick_retries(c, url)).await;
    let t = s.tenant("acme", 0).await;
    let mut admin = pb::notification_admin_client::NotificationAdminClient::with_interceptor(
        s.channel().await,
        common::Bearer::admin(),
    );
    let set = |tpl: pb::NotificationTemplate| pb::SetTemplateRequest { tenant_id: t.clone(), template: Some(tpl) };

    // Refused, field by field, and nothing saved: a syntax error, an unknown variable, no link.
    let e = expect_code(
        admin.set_template(set(template("invitation", "ru", "Добро пожаловать {{ tenant", "{{ password }}"))).await,
        Code::InvalidArgument,
    );
    assert_eq!(common::bad_fields(&e), ["template.body", "template.subject"]);
    let e = expect_code(
        admin.set_template(set(template("invitation", "ru", "Привет", "Без ссылки"))).await,
        Code::InvalidArgument,
    );
    assert_eq!(common::bad_fields(&e), ["template.body"]);
    let e = expect_code(admin.set_template(set(template("welcome", "de", "x", "y"))).await, Code::InvalidArgument);
    assert_eq!(common::bad_fields(&e), ["template.kind", "template.locale"]);
    let listed = admin.list_templates(pb::ListTemplatesRequest { tenant_id: t.clone() }).await.unwrap().into_inner();
    assert_eq!(listed.templates.len(), 8 * 3, "every kind in every language");
    assert!(listed.templates.iter().all(|x| !x.custom));

    // A draft is previewed with sample data before it is saved.
    let body = "{{ name }}, добро пожаловать в {{ tenant }}!\nВход: {{ link }}\nДо {{ expires }}.";
    let preview = admin
        .preview_template(pb::PreviewTemplateRequest {
            tenant_id: t.clone(),
            kind: "invitation".into(),
            locale: "ru".into(),
            subject: "Ждём вас в {{ tenant }}".into(),
            body: body.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.subject, "Ждём вас в Tenant acme", "the tenant's display name");
    assert!(preview.body.contains("https://acme.crm.example/accept-invitation?token=SAMPLE-TOKEN"), "{}", preview.body);
    let saved = admin
        .set_template(set(template("invitation", "ru", "Ждём вас в {{ tenant }}", body)))
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();
    assert!(saved.custom && !saved.etag.is_empty());

    // Used for the next invitation in that language; others keep the built-in wording.
    let mut req = invite(&t, "ivan@acme.example");
    req.user.as_mut().unwrap().locale = "ru".into();
    s.users().await.create_user(req).await.unwrap();
    let mail = sink.next().await;
    assert_eq!(mail["subject"], "Ждём вас в Tenant acme");
    let token = token_in(mail["body"].as_str().unwrap());
    assert!(mail["body"].as_str().unwrap().contains(&format!("accept-invitation?token={token}")));
    s.users().await.create_user(invite(&t, "john@acme.example")).await.unwrap();
    assert!(sink.next().await["subject"].as_str().unwrap().starts_with("You are invited"));

    // A stale etag loses; delete goes back to the built-in wording, once.
    let mut stale = template("invitation", "ru", "Другое {{ tenant }}", body);
    stale.etag = "\"v-stale\"".into();
    let e = expect_code(admin.set_template(set(stale)).await, Code::Aborted);
    assert_eq!(reason(&e), "ETAG_MISMATCH");
    let del = || pb::DeleteTemplateRequest { tenant_id: t.clone(), kind: "invitation".into(), locale: "ru".into() };
    let back = admin.delete_template(del()).await.unwrap().into_inner().template.unwrap();
    assert!(!back.custom && back.subject.starts_with("Приглашение"));
    let e = expect_code(admin.delete_template(del()).await, Code::NotFound);
    assert_eq!(reason(&e), "NOTIFICATION_TEMPLATE_NOT_FOUND");
    let db = s.db.connect().await;
    let audited = common::count(
        &db,
        "SELECT COUNT(*) FROM audit_events WHERE action IN ('notification.template_set', 'notification.template_deleted')",
    )
    .await;
    assert_eq!(audited, 2);

    // Another tenant's administrator can do none of it here.
    let other = s.tenant("other", 0).await;
    let outsider = s.builtin_role(&other, "administrator").await;
    s.password_user(&other, "boss@other.example", PASSWORD, &[outsider]).await;
    let session = s.login(&other, "boss@other.example", PASSWORD).await;
    let mut theirs = pb::notification_admin_client::NotificationAdminClient::with_interceptor(
        s.channel().await,
        common::Bearer::token(&session.access_token),
    );
    expect_code(
        theirs.set_template(set(template("invitation", "en", "Hi", "{{ link }}"))).await,
        Code::PermissionDenied,
    );
    expect_code(theirs.list_templates(pb::ListTemplatesRequest { tenant_id: t.clone() }).await, Code::PermissionDenied);
    drop(sink);
    s.stop().await;
}

async fn the_other_administrators_hear_of_a_new_one(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| quick_retries(c, url)).await;
    let t = s.tenant("acme", 0).await;
    let admin_role = s.builtin_role(&t, "administrator").await;
    s.password_user(&t, "first@acme.example", PASSWORD, std::slice::from_ref(&admin_role)).await;
    let second = s.password_user(&t, "second@acme.example", PASSWORD, &[]).await;
    s.roles()
        .await
        .assign_role(pb::AssignRoleRequest {
            tenant_id: t.clone(),
            user_id: second,
            role_id: admin_role,
            ..Default::default()
        })
        .await
        .unwrap();
    let mail = sink.next().await;
    assert_eq!(mail["to"][0], "first@acme.example", "{mail}");
    assert!(mail["subject"].as_str().unwrap().contains("is now an administrator"), "{mail}");
    all_in(&s, &t, 1, pb::NotificationState::Sent).await;
    assert!(sink.drain().is_empty(), "the new administrator is not told of themselves");
    drop(sink);
    s.stop().await;
}

/// SCIM goes through the same write path: a user an IdP provisions is invited by e-mail, the
/// invitation works, and SCIM then shows the user active.
async fn a_user_provisioned_by_scim_gets_the_invitation(backend: Backend) {
    let mut sink = Sink::start(0);
    let url = sink.url();
    let s = TestServer::start_with(backend, |c| {
        quick_retries(c, url);
        c.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let t = s.tenant("acme", 0).await;
    let scim = crate::scim::Scim::new(&s, &crate::scim::token(&s, &t, "okta").await);
    let r =
        scim.post("/Users", serde_json::json!({"userName": "pia@acme.example", "name": {"givenName": "Pia"}})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let mail = sink.next().await;
    assert_eq!(mail["to"], serde_json::json!(["pia@acme.example"]));
    let token = token_in(mail["body"].as_str().unwrap());
    s.auth()
        .await
        .accept_invitation(pb::AcceptInvitationRequest { invitation_token: token, new_password: PASSWORD.into() })
        .await
        .unwrap();
    let user = scim.get(&format!("/Users/{id}")).await;
    assert_eq!(user.body["active"], true);
    s.login(&t, "pia@acme.example", PASSWORD).await;
    s.stop().await;
}
