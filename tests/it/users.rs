use std::collections::BTreeMap;

use prost_types::FieldMask;
use sea_orm::{ConnectionTrait, Statement};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, bad_fields, count, expect_code, invite, pb, reason},
};

both_backends!(
    create_user_with_password,
    create_user_with_invitation,
    create_user_validation_writes_nothing,
    unique_email_and_employee_number,
    look_alike_emails_collide,
    seat_limit_counts_active_and_invited,
    update_user_with_mask_and_etag,
    lifecycle_transitions,
    purge_erases_personal_data,
    purge_sweeper_purges_after_restore_window,
    reset_password_and_resend_invitation,
    idempotent_retries,
    list_users_filters,
    get_user_is_cached_and_current_after_every_change,
);

async fn stored_string(db: &sea_orm::DatabaseConnection, sql: &str) -> Option<String> {
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index::<Option<String>>(0).unwrap()
}

fn uid_literal(backend: Backend, id: &str) -> String {
    match backend {
        // SQLite stores UUIDs as 16-byte blobs.
        Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
        Backend::Postgres => format!("'{id}'"),
    }
}

async fn create_user_with_password(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let resp = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                email: "Ann.Lee@Example.com".into(),
                given_name: "Ann".into(),
                family_name: "Lee".into(),
                phone: "+1 415 555 2671".into(),
                position: "Account executive".into(),
                employee_number: "E-001".into(),
                hire_date: "2024-03-01".into(),
                attributes: BTreeMap::from([("cost_center".into(), "42".into())]),
                ..Default::default()
            }),
            initial_password: "correct horse battery staple".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.invitation_token.is_empty());
    let u = resp.user.unwrap();
    assert_eq!(u.state, pb::UserState::Active as i32);
    assert!(u.must_change_password, "initial passwords are temporary unless permanent");
    assert_eq!(u.display_name, "Ann Lee", "derived display name");
    assert_eq!(u.phone, "+14155552671", "normalised to E.164");
    assert_eq!(u.hire_date, "2024-03-01");
    assert_eq!(u.email, "Ann.Lee@Example.com");
    assert!(uuid::Uuid::parse_str(&u.user_id).is_ok());

    let got = c.get_user(pb::GetUserRequest { tenant_id: t.clone(), user_id: u.user_id.clone() }).await.unwrap();
    assert_eq!(got.into_inner().user.unwrap(), u);

    let permanent = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { email: "bo@example.com".into(), ..Default::default() }),
            initial_password: "another long passphrase".into(),
            password_is_permanent: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(!permanent.must_change_password);

    // Stored: an argon2id PHC string with the OWASP parameters, never the password.
    let db = s.db.connect().await;
    let hash = stored_string(
        &db,
        &format!("SELECT password_hash FROM users WHERE user_id = {}", uid_literal(backend, &u.user_id)),
    )
    .await
    .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    // The audit row of the creation names the actor and fields, never the password or hash.
    let changes =
        stored_string(&db, "SELECT changes FROM audit_events WHERE action = 'user.created' ORDER BY seq LIMIT 1")
            .await
            .unwrap();
    assert!(changes.contains("Ann.Lee@Example.com"), "{changes}");
    assert!(!changes.contains("correct horse") && !changes.contains("argon2"), "{changes}");
    let actor =
        stored_string(&db, "SELECT actor_id FROM audit_events WHERE action = 'user.created' ORDER BY seq LIMIT 1")
            .await;
    assert_eq!(actor.as_deref(), Some("platform-admin"));

    // The password is checked against the tenant's policy.
    let short = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { email: "cy@example.com".into(), ..Default::default() }),
            initial_password: "short".into(),
            ..Default::default()
        })
        .await;
    let st = expect_code(short, Code::InvalidArgument);
    assert_eq!(bad_fields(&st), ["initial_password"]);
    assert!(!st.message().contains("short"), "the password is never echoed");
    let is_email = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { email: "cyrus.long@example.com".into(), ..Default::default() }),
            initial_password: "cyrus.long@example.com".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(is_email, Code::InvalidArgument)), ["initial_password"]);
    s.stop().await;
}

async fn create_user_with_invitation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let resp = c.create_user(invite(&t, "new@example.com")).await.unwrap().into_inner();
    let u = resp.user.unwrap();
    assert_eq!(u.state, pb::UserState::Invited as i32);
    assert!(resp.invitation_token.len() >= 43, "256-bit token");
    let expire = resp.invitation_expire_time.unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((expire.seconds - now - 7 * 86400).abs() < 60, "tenant default ttl of 7 days");

    // Only the token's SHA-256 is stored.
    let db = s.db.connect().await;
    let digest = hex::encode(Sha256::digest(resp.invitation_token.as_bytes()));
    assert_eq!(
        count(&db, &format!("SELECT COUNT(*) FROM user_tokens WHERE token_hash = '{digest}' AND kind = 'invitation'"))
            .await,
        1
    );
    assert_eq!(
        count(&db, &format!("SELECT COUNT(*) FROM user_tokens WHERE token_hash = '{}'", resp.invitation_token)).await,
        0
    );
    let hash = stored_string(&db, "SELECT password_hash FROM users").await;
    assert_eq!(hash, None, "invited users have no password");
    s.stop().await;
}

async fn create_user_validation_writes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let bad = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                email: "not-an-email".into(),
                given_name: "x".repeat(101),
                phone: "12345".into(),
                employee_number: "E 1".into(),
                department_id: "not-a-uuid".into(),
                hire_date: "2024-02-30".into(),
                attributes: BTreeMap::from([("Bad Key".into(), "v".into())]),
                ..Default::default()
            }),
            initial_password: "short".into(),
            send_invitation: true,
            role_ids: vec!["nope".into()],
            ..Default::default()
        })
        .await;
    let st = expect_code(bad, Code::InvalidArgument);
    assert_eq!(
        bad_fields(&st),
        [
            "initial_password",
            "role_ids[0]",
            "send_invitation",
            "user.attributes",
            "user.department_id",
            "user.email",
            "user.employee_number",
            "user.given_name",
            "user.hire_date",
            "user.phone",
        ]
    );
    assert_eq!(reason(&st), "INVALID_ARGUMENT");
    let neither = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { email: "a@example.com".into(), ..Default::default() }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(neither, Code::InvalidArgument)), ["initial_password"]);
    // A department of another tenant is as unknown as a missing one.
    s.tenant("other", 0).await;
    let other_dept = c
        .create_department(pb::CreateDepartmentRequest {
            tenant_id: "other".into(),
            department: Some(pb::Department { name: "Theirs".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .department
        .unwrap();
    let mut req = invite(&t, "b@example.com");
    req.user.as_mut().unwrap().department_id = other_dept.department_id;
    assert_eq!(bad_fields(&expect_code(c.create_user(req).await, Code::InvalidArgument)), ["user.department_id"]);
    let missing_tenant = c.create_user(invite("ghost", "c@example.com")).await;
    assert_eq!(reason(&expect_code(missing_tenant, Code::NotFound)), "TENANT_NOT_FOUND");

    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, 0, "nothing written");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action LIKE 'user.%'").await, 0);
    s.stop().await;
}

/// `аnn@acme.example` (Cyrillic а) is not a second Ann: look-alike addresses collide on create and
/// on update, in every spelling (full-width, Cyrillic in the domain); ASCII stays exact. Rows
/// stored before the look-alike key existed get it at start.
async fn look_alike_emails_collide(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    c.create_user(invite(&t, "ann@acme.example")).await.unwrap();
    for look_alike in ["\u{430}nn@acme.example", "\u{ff41}nn@acme.example", "ANN@\u{430}cme.example"] {
        let refused = expect_code(c.create_user(invite(&t, look_alike)).await, Code::AlreadyExists);
        assert_eq!(reason(&refused), "EMAIL_TAKEN", "{look_alike}");
        assert!(refused.message().contains("looks the same"), "{}", refused.message());
    }
    // One character away in ASCII is another person.
    c.create_user(invite(&t, "anm@acme.example")).await.unwrap();
    let bo = c.create_user(invite(&t, "bo@acme.example")).await.unwrap().into_inner().user.unwrap();
    let taken = c
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                user_id: bo.user_id.clone(),
                email: "\u{430}nn@acme.example".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["email".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(taken, Code::AlreadyExists)), "EMAIL_TAKEN");
    // Another tenant has its own people.
    let other = s.tenant("other", 0).await;
    c.create_user(invite(&other, "\u{430}nn@acme.example")).await.unwrap();

    // A database from before the look-alike key: after a restart the key is filled in and holds.
    let db = s.db.connect().await;
    db.execute_unprepared("UPDATE users SET email_skeleton = NULL").await.unwrap();
    // With the keys gone, the look-alike gets in (as it did before this change).
    c.create_user(invite(&t, "\u{430}nn@acme.example")).await.unwrap();
    let config = crate::common::test_config(&s.db);
    let s = TestServer::start_on(s.stop().await, config).await;
    let db = s.db.connect().await;
    let missing = count(&db, "SELECT COUNT(*) FROM users WHERE email_key IS NOT NULL AND email_skeleton IS NULL").await;
    let twins =
        count(&db, "SELECT COUNT(*) FROM users WHERE tenant_id = 'acme' AND email_key LIKE '%nn@acme.example'").await;
    assert_eq!(missing, twins - 1, "every address has its key except one of the two look-alikes stored meanwhile");
    let mut c = s.users().await;
    let refused = c.create_user(invite(&t, "\u{ff41}nn@acme.example")).await;
    assert_eq!(reason(&expect_code(refused, Code::AlreadyExists)), "EMAIL_TAKEN");
    s.stop().await;
}

async fn unique_email_and_employee_number(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let mut first = invite(&t, "Ann@Example.com");
    first.user.as_mut().unwrap().employee_number = "E-7".into();
    let ann = c.create_user(first).await.unwrap().into_inner().user.unwrap();

    let same_email = c.create_user(invite(&t, "ann@example.COM")).await;
    assert_eq!(reason(&expect_code(same_email, Code::AlreadyExists)), "EMAIL_TAKEN");
    let mut same_number = invite(&t, "bo@example.com");
    same_number.user.as_mut().unwrap().employee_number = "E-7".into();
    assert_eq!(reason(&expect_code(c.create_user(same_number).await, Code::AlreadyExists)), "EMPLOYEE_NUMBER_TAKEN");

    // The same email in another tenant is fine.
    let other = s.tenant("other", 0).await;
    c.create_user(invite(&other, "ann@example.com")).await.unwrap();

    // Changing another user's email to a taken one is refused too.
    let bo = c.create_user(invite(&t, "bo@example.com")).await.unwrap().into_inner().user.unwrap();
    let taken = c
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { user_id: bo.user_id.clone(), email: "ANN@example.com".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["email".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(taken, Code::AlreadyExists)), "EMAIL_TAKEN");

    // Deleted users keep their address (they can be restored); purged ones free it.
    c.delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: ann.user_id.clone(), ..Default::default() })
        .await
        .unwrap();
    expect_code(c.create_user(invite(&t, "ann@example.com")).await, Code::AlreadyExists);
    c.purge_user(pb::PurgeUserRequest { tenant_id: t.clone(), user_id: ann.user_id.clone(), ..Default::default() })
        .await
        .unwrap();
    c.create_user(invite(&t, "ann@example.com")).await.unwrap();
    s.stop().await;
}

async fn seat_limit_counts_active_and_invited(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 2).await;
    let mut c = s.users().await;
    let a = c.create_user(invite(&t, "a@example.com")).await.unwrap().into_inner().user.unwrap();
    c.create_user(invite(&t, "b@example.com")).await.unwrap();
    let full = expect_code(c.create_user(invite(&t, "c@example.com")).await, Code::ResourceExhausted);
    assert_eq!(reason(&full), "SEAT_LIMIT_REACHED");
    let quota = tonic_types::StatusExt::get_error_details(&full).quota_failure().cloned().unwrap();
    assert_eq!(quota.violations[0].subject, "tenants/acme/seats");

    let mut tenants = s.tenants().await;
    let seats = |t: pb::Tenant| t.seats_used;
    let tenant = tenants.get_tenant(pb::GetTenantRequest { tenant_id: t.clone() }).await.unwrap().into_inner();
    assert_eq!(seats(tenant.tenant.unwrap()), 2);

    // Deactivating frees a seat; reactivating needs one.
    c.deactivate_user(pb::DeactivateUserRequest {
        tenant_id: t.clone(),
        user_id: a.user_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.create_user(invite(&t, "c@example.com")).await.unwrap();
    let no_seat = c
        .reactivate_user(pb::ReactivateUserRequest {
            tenant_id: t.clone(),
            user_id: a.user_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(no_seat, Code::ResourceExhausted)), "SEAT_LIMIT_REACHED");
    s.stop().await;
}

async fn update_user_with_mask_and_etag(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let mut req = invite(&t, "ann@example.com");
    req.user.as_mut().unwrap().position = "Intern".into();
    let u = c.create_user(req).await.unwrap().into_inner().user.unwrap();

    let updated = c
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                user_id: u.user_id.clone(),
                given_name: "Anna".into(),
                position: "ignored: not in mask".into(),
                phone: "+44 20 7946 0018".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["given_name".into(), "phone".into()] }),
            etag: u.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.given_name, "Anna");
    assert_eq!(updated.phone, "+442079460018");
    assert_eq!(updated.position, "Intern", "fields outside the mask are kept");
    assert_ne!(updated.etag, u.etag);

    let stale = c
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                user_id: u.user_id.clone(),
                position: "CEO".into(),
                etag: u.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["position".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");

    let bad_path = c
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { user_id: u.user_id.clone(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["state".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(bad_path, Code::InvalidArgument)), ["update_mask.paths[0]"]);
    let bad_value = c
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { user_id: u.user_id.clone(), email: "nope".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["email".into()] }),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(bad_value, Code::InvalidArgument)), ["user.email"]);

    // Concurrent updates from the same read: exactly one wins, the other is ABORTED (no lost update).
    let mut handles = Vec::new();
    for i in 0..4 {
        let mut c = s.users().await;
        let (t, id, etag) = (t.clone(), updated.user_id.clone(), updated.etag.clone());
        handles.push(tokio::spawn(async move {
            c.update_user(pb::UpdateUserRequest {
                tenant_id: t,
                user: Some(pb::User { user_id: id, position: format!("Writer {i}"), ..Default::default() }),
                update_mask: Some(FieldMask { paths: vec!["position".into()] }),
                etag,
                request_id: String::new(),
            })
            .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{e:?}"),
        }
    }
    assert_eq!(ok, 1);
    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'user.updated'").await, 2);
    s.stop().await;
}

async fn lifecycle_transitions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let u = c.create_user(invite(&t, "ann@example.com")).await.unwrap().into_inner().user.unwrap();
    let id = u.user_id.clone();
    let state = |u: &pb::User| pb::UserState::try_from(u.state).unwrap();

    // Reactivating someone who is not deactivated is refused with the state named.
    let st = expect_code(
        c.reactivate_user(pb::ReactivateUserRequest {
            tenant_id: t.clone(),
            user_id: id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "INVALID_USER_STATE");
    assert!(st.message().contains("INVITED"), "{}", st.message());

    let d = c
        .deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: id.clone(),
            etag: u.etag.clone(),
            reason: "parental leave".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(state(&d), pb::UserState::Deactivated);
    assert!(d.deactivate_time.is_some());
    // Deactivation revoked the pending invitation.
    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM user_tokens").await, 0);

    let stale = c
        .reactivate_user(pb::ReactivateUserRequest {
            tenant_id: t.clone(),
            user_id: id.clone(),
            etag: u.etag.clone(),
            ..Default::default()
        })
        .await;
    expect_code(stale, Code::Aborted);
    let r = c
        .reactivate_user(pb::ReactivateUserRequest {
            tenant_id: t.clone(),
            user_id: id.clone(),
            etag: d.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(state(&r), pb::UserState::Active);
    assert!(r.deactivate_time.is_none());

    let del = c
        .delete_user(pb::DeleteUserRequest {
            tenant_id: t.clone(),
            user_id: id.clone(),
            reason: "left".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(state(&del), pb::UserState::Deleted);
    let (deleted_at, purge_after) = (del.delete_time.unwrap().seconds, del.purge_after.unwrap().seconds);
    assert_eq!(purge_after - deleted_at, 30 * 86400, "tenant default restore window");
    // Deleted users are hidden from the default listing, shown when asked for.
    let list =
        c.list_users(pb::ListUsersRequest { tenant_id: t.clone(), ..Default::default() }).await.unwrap().into_inner();
    assert!(list.users.is_empty());
    let list = c
        .list_users(pb::ListUsersRequest {
            tenant_id: t.clone(),
            states: vec![pb::UserState::Deleted as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.users.len(), 1);
    // Deleted users can not be edited or deactivated.
    let st = expect_code(
        c.deactivate_user(pb::DeactivateUserRequest {
            tenant_id: t.clone(),
            user_id: id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "INVALID_USER_STATE");
    expect_code(
        c.update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { user_id: id.clone(), position: "x".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["position".into()] }),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );

    let un = c
        .undelete_user(pb::UndeleteUserRequest { tenant_id: t.clone(), user_id: id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(state(&un), pb::UserState::Deactivated, "restored users come back deactivated");
    assert!(un.delete_time.is_none() && un.purge_after.is_none());
    let st = expect_code(
        c.purge_user(pb::PurgeUserRequest { tenant_id: t.clone(), user_id: id.clone(), ..Default::default() }).await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("DELETED"), "{}", st.message());

    // Past the restore window (simulated by moving purge_after back), undelete is refused.
    c.delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: id.clone(), ..Default::default() })
        .await
        .unwrap();
    let past = match backend {
        Backend::Sqlite => "'2000-01-01T00:00:00+00:00'",
        Backend::Postgres => "'2000-01-01T00:00:00Z'",
    };
    db.execute_unprepared(&format!("UPDATE users SET purge_after = {past}")).await.unwrap();
    let st = expect_code(
        c.undelete_user(pb::UndeleteUserRequest { tenant_id: t.clone(), user_id: id.clone(), ..Default::default() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "RESTORE_WINDOW_PASSED");

    let missing =
        c.get_user(pb::GetUserRequest { tenant_id: t.clone(), user_id: uuid::Uuid::now_v7().to_string() }).await;
    assert_eq!(reason(&expect_code(missing, Code::NotFound)), "USER_NOT_FOUND");
    // A user id of another tenant does not exist here.
    let other = s.tenant("other", 0).await;
    let theirs = c.create_user(invite(&other, "x@example.com")).await.unwrap().into_inner().user.unwrap();
    expect_code(c.get_user(pb::GetUserRequest { tenant_id: t.clone(), user_id: theirs.user_id }).await, Code::NotFound);

    let actions: Vec<String> = {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT action FROM audit_events WHERE target_kind = 'user' ORDER BY seq",
            ))
            .await
            .unwrap();
        rows.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect()
    };
    assert_eq!(
        actions,
        [
            "user.created",
            "user.deactivated",
            "user.reactivated",
            "user.deleted",
            "user.undeleted",
            "user.deleted",
            "user.created"
        ]
    );
    let reason_detail =
        stored_string(&db, "SELECT details FROM audit_events WHERE action = 'user.deactivated'").await.unwrap();
    assert!(reason_detail.contains("parental leave"), "{reason_detail}");
    s.stop().await;
}

async fn purge_erases_personal_data(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let dept = c
        .create_department(pb::CreateDepartmentRequest {
            tenant_id: t.clone(),
            department: Some(pb::Department { name: "Sales".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .department
        .unwrap();
    let u = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User {
                email: "ann@example.com".into(),
                given_name: "Ann".into(),
                family_name: "Lee".into(),
                phone: "+14155552671".into(),
                position: "Rep".into(),
                employee_number: "E-1".into(),
                department_id: dept.department_id.clone(),
                hire_date: "2020-01-01".into(),
                attributes: BTreeMap::from([("k".into(), "v".into())]),
                ..Default::default()
            }),
            initial_password: "a long enough password".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    c.delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: u.user_id.clone(), ..Default::default() })
        .await
        .unwrap();
    let p = c
        .purge_user(pb::PurgeUserRequest { tenant_id: t.clone(), user_id: u.user_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(p.state, pb::UserState::Purged as i32);
    assert_eq!(p.user_id, u.user_id, "the id remains");
    assert!(p.email.is_empty() && p.given_name.is_empty() && p.phone.is_empty() && p.attributes.is_empty());
    assert!(p.purge_time.is_some());

    // The stored row: personal data and credentials gone, id and timestamps kept.
    let db = s.db.connect().await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT email, email_key, given_name, family_name, display_name, phone, position, employee_number, \
             hire_date, attributes, password_hash, state FROM users",
        ))
        .await
        .unwrap()
        .unwrap();
    for col in ["email", "email_key", "phone", "employee_number", "hire_date", "password_hash"] {
        assert_eq!(row.try_get::<Option<String>>("", col).unwrap(), None, "{col}");
    }
    for col in ["given_name", "family_name", "display_name", "position"] {
        assert_eq!(row.try_get::<String>("", col).unwrap(), "", "{col}");
    }
    assert_eq!(row.try_get::<String>("", "attributes").unwrap(), "{}");
    assert_eq!(row.try_get::<String>("", "state").unwrap(), "PURGED");
    // The audit trail stays and the purge event names erased fields without their values.
    let details = stored_string(&db, "SELECT details FROM audit_events WHERE action = 'user.purged'").await.unwrap();
    assert!(details.contains("email") && !details.contains("ann@example.com"), "{details}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'user.created'").await, 1);
    // The department is no longer referenced and can be deleted.
    c.delete_department(pb::DeleteDepartmentRequest {
        tenant_id: t.clone(),
        department_id: dept.department_id,
        ..Default::default()
    })
    .await
    .unwrap();
    s.stop().await;
}

async fn purge_sweeper_purges_after_restore_window(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.purge_interval = std::time::Duration::from_millis(100)).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let gone = c.create_user(invite(&t, "gone@example.com")).await.unwrap().into_inner().user.unwrap();
    let kept = c.create_user(invite(&t, "kept@example.com")).await.unwrap().into_inner().user.unwrap();
    for u in [&gone, &kept] {
        c.delete_user(pb::DeleteUserRequest { tenant_id: t.clone(), user_id: u.user_id.clone(), ..Default::default() })
            .await
            .unwrap();
    }
    // Move one user's purge_after into the past: the sweeper purges exactly that one.
    let db = s.db.connect().await;
    let past = match backend {
        Backend::Sqlite => "'2000-01-01T00:00:00+00:00'",
        Backend::Postgres => "'2000-01-01T00:00:00Z'",
    };
    db.execute_unprepared(&format!(
        "UPDATE users SET purge_after = {past} WHERE user_id = {}",
        uid_literal(backend, &gone.user_id)
    ))
    .await
    .unwrap();
    let (tt, id) = (t.clone(), gone.user_id.clone());
    crate::common::eventually("the sweeper purges the expired user", || {
        let mut c = c.clone();
        let (tt, id) = (tt.clone(), id.clone());
        async move {
            let u =
                c.get_user(pb::GetUserRequest { tenant_id: tt, user_id: id }).await.unwrap().into_inner().user.unwrap();
            u.state == pb::UserState::Purged as i32
        }
    })
    .await;
    let k = c.get_user(pb::GetUserRequest { tenant_id: t.clone(), user_id: kept.user_id.clone() }).await.unwrap();
    assert_eq!(k.into_inner().user.unwrap().state, pb::UserState::Deleted as i32, "inside its window");
    let actor = stored_string(&db, "SELECT actor_kind FROM audit_events WHERE action = 'user.purged'").await;
    assert_eq!(actor.as_deref(), Some("SYSTEM"));
    s.stop().await;
}

async fn reset_password_and_resend_invitation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let created = c.create_user(invite(&t, "ann@example.com")).await.unwrap().into_inner();
    let u = created.user.unwrap();
    let again = c
        .resend_invitation(pb::ResendInvitationRequest {
            tenant_id: t.clone(),
            user_id: u.user_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.invitation_token.is_empty());
    assert_ne!(again.invitation_token, created.invitation_token);
    let db = s.db.connect().await;
    let old = hex::encode(Sha256::digest(created.invitation_token.as_bytes()));
    assert_eq!(
        count(&db, &format!("SELECT COUNT(*) FROM user_tokens WHERE token_hash = '{old}'")).await,
        0,
        "old token revoked"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM user_tokens").await, 1);

    // Resetting needs an ACTIVE user.
    let st = expect_code(
        c.reset_password(pb::ResetPasswordRequest {
            tenant_id: t.clone(),
            user_id: u.user_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "INVALID_USER_STATE");

    let active = c
        .create_user(pb::CreateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { email: "bo@example.com".into(), ..Default::default() }),
            initial_password: "first password is long".into(),
            password_is_permanent: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let st = expect_code(
        c.resend_invitation(pb::ResendInvitationRequest {
            tenant_id: t.clone(),
            user_id: active.user_id.clone(),
            request_id: String::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&st), "NOT_INVITED");

    let bo = uid_literal(backend, &active.user_id);
    let hash_before =
        stored_string(&db, &format!("SELECT password_hash FROM users WHERE user_id = {bo}")).await.unwrap();
    let temp = c
        .reset_password(pb::ResetPasswordRequest {
            tenant_id: t.clone(),
            user_id: active.user_id.clone(),
            temporary_password: "temporary but long".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(temp.reset_token.is_empty());
    assert!(temp.user.unwrap().must_change_password);
    let hash_after =
        stored_string(&db, &format!("SELECT password_hash FROM users WHERE user_id = {bo}")).await.unwrap();
    assert_ne!(hash_before, hash_after);

    let token = c
        .reset_password(pb::ResetPasswordRequest {
            tenant_id: t.clone(),
            user_id: active.user_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(token.reset_token.len() >= 43);
    assert!(token.reset_token_expire_time.is_some());
    assert_eq!(
        stored_string(&db, &format!("SELECT password_hash FROM users WHERE user_id = {bo}")).await,
        None,
        "old password stops working"
    );
    let digest = hex::encode(Sha256::digest(token.reset_token.as_bytes()));
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM user_tokens WHERE token_hash = '{digest}' AND kind = 'password_reset'")
        )
        .await,
        1
    );
    let short = c
        .reset_password(pb::ResetPasswordRequest {
            tenant_id: t.clone(),
            user_id: active.user_id.clone(),
            temporary_password: "short".into(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(bad_fields(&expect_code(short, Code::InvalidArgument)), ["temporary_password"]);
    s.stop().await;
}

async fn idempotent_retries(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let mut req = invite(&t, "ann@example.com");
    req.request_id = "create-ann-1".into();
    let first = c.create_user(req.clone()).await.unwrap().into_inner();
    let retry = c.create_user(req.clone()).await.unwrap().into_inner();
    assert_eq!(retry.user, first.user, "the first result is returned");
    assert!(!first.invitation_token.is_empty());
    assert!(retry.invitation_token.is_empty(), "the invitation token is returned only once");
    assert_eq!(retry.invitation_expire_time, first.invitation_expire_time);

    let mut other_body = req.clone();
    other_body.user.as_mut().unwrap().email = "bo@example.com".into();
    let st = expect_code(c.create_user(other_body).await, Code::InvalidArgument);
    assert_eq!(reason(&st), "IDEMPOTENCY_KEY_REUSED");
    // The same key on another method is another request too.
    let st = expect_code(
        c.create_department(pb::CreateDepartmentRequest {
            tenant_id: t.clone(),
            department: Some(pb::Department { name: "Sales".into(), ..Default::default() }),
            request_id: "create-ann-1".into(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&st), "IDEMPOTENCY_KEY_REUSED");

    // Concurrent retries with one key create one user.
    let mut handles = Vec::new();
    for _ in 0..6 {
        let mut c = s.users().await;
        let mut r = invite(&t, "cy@example.com");
        r.request_id = "create-cy".into();
        handles.push(tokio::spawn(async move { c.create_user(r).await.map(|r| r.into_inner().user.unwrap().user_id) }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap().expect("every retry succeeds"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // State changes too: a retried deactivation does not fail on the changed state.
    let id = first.user.unwrap().user_id;
    let deact = pb::DeactivateUserRequest {
        tenant_id: t.clone(),
        user_id: id,
        request_id: "deact-1".into(),
        ..Default::default()
    };
    let a = c.deactivate_user(deact.clone()).await.unwrap().into_inner();
    let b = c.deactivate_user(deact).await.unwrap().into_inner();
    assert_eq!(a, b);

    let db = s.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'user.created'").await, 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE action = 'user.deactivated'").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_events WHERE request_id = 'create-ann-1'").await, 1);
    let bad_key =
        c.create_user(pb::CreateUserRequest { request_id: "has space".into(), ..invite(&t, "d@example.com") }).await;
    assert_eq!(bad_fields(&expect_code(bad_key, Code::InvalidArgument)), ["request_id"]);
    s.stop().await;
}

async fn list_users_filters(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let mut c = s.users().await;
    let dept = |name: &str, parent: &str| pb::CreateDepartmentRequest {
        tenant_id: t.clone(),
        department: Some(pb::Department {
            name: name.into(),
            parent_department_id: parent.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let sales = c.create_department(dept("Sales", "")).await.unwrap().into_inner().department.unwrap();
    let east =
        c.create_department(dept("Sales East", &sales.department_id)).await.unwrap().into_inner().department.unwrap();
    let in_dept = |email: &str, d: &str, given: &str| {
        let mut r = invite(&t, email);
        let u = r.user.as_mut().unwrap();
        u.department_id = d.into();
        u.given_name = given.into();
        r
    };
    c.create_user(in_dept("a@example.com", &sales.department_id, "Alice")).await.unwrap();
    c.create_user(in_dept("b@example.com", &east.department_id, "Bob")).await.unwrap();
    let carl = c.create_user(in_dept("c@example.com", "", "Carl")).await.unwrap().into_inner().user.unwrap();
    c.deactivate_user(pb::DeactivateUserRequest {
        tenant_id: t.clone(),
        user_id: carl.user_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    let emails = |r: pb::ListUsersResponse| r.users.into_iter().map(|u| u.email).collect::<Vec<_>>();
    let list = |req: pb::ListUsersRequest| {
        let mut c = c.clone();
        async move { c.list_users(req).await.unwrap().into_inner() }
    };
    let base = pb::ListUsersRequest { tenant_id: t.clone(), ..Default::default() };
    assert_eq!(emails(list(base.clone()).await), ["a@example.com", "b@example.com", "c@example.com"]);
    assert_eq!(
        emails(list(pb::ListUsersRequest { department_id: sales.department_id.clone(), ..base.clone() }).await),
        ["a@example.com"]
    );
    assert_eq!(
        emails(
            list(pb::ListUsersRequest {
                department_id: sales.department_id.clone(),
                include_subdepartments: true,
                ..base.clone()
            })
            .await
        ),
        ["a@example.com", "b@example.com"]
    );
    assert_eq!(
        emails(list(pb::ListUsersRequest { states: vec![pb::UserState::Deactivated as i32], ..base.clone() }).await),
        ["c@example.com"]
    );
    assert_eq!(emails(list(pb::ListUsersRequest { query: "BOB".into(), ..base.clone() }).await), ["b@example.com"]);
    assert_eq!(
        emails(list(pb::ListUsersRequest { query: "%".into(), ..base.clone() }).await),
        Vec::<String>::new(),
        "wildcards are literal"
    );

    // A page token only works with the filters it was made for.
    let first = list(pb::ListUsersRequest { page_size: 1, ..base.clone() }).await;
    assert!(!first.next_page_token.is_empty());
    let misuse = c
        .list_users(pb::ListUsersRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            query: "b".into(),
            ..base.clone()
        })
        .await;
    assert_eq!(reason(&expect_code(misuse, Code::InvalidArgument)), "INVALID_PAGE_TOKEN");
    let bad_state = c.list_users(pb::ListUsersRequest { states: vec![0], ..base.clone() }).await;
    assert_eq!(bad_fields(&expect_code(bad_state, Code::InvalidArgument)), ["states[0]"]);
    s.stop().await;
}

/// GetUser answers from the profile cache, and each kind of write (a login's time, role
/// assignment, profile update, unassignment, deactivation) shows in the very next GetUser on the
/// same server (TOTP enrolment: `totp_enrollment_login_and_recovery_codes`).
async fn get_user_is_cached_and_current_after_every_change(backend: Backend) {
    const PASSWORD: &str = "velvet staircase under morning rain";
    let s = TestServer::start(backend).await;
    let t = s.tenant("acme", 0).await;
    let id = s.password_user(&t, "ann@example.com", PASSWORD, &[]).await;
    let get = || async {
        let req = pb::GetUserRequest { tenant_id: t.clone(), user_id: id.clone() };
        s.users().await.get_user(req).await.expect("get user").into_inner().user.unwrap()
    };
    let first = get().await;
    assert!(first.last_login_time.is_none() && first.role_ids.is_empty(), "{first:?}");
    // Written behind the server's back (no transaction of its own, so no invalidation): the next
    // read still comes from memory… (On PostgreSQL the server also hears its own notifications of
    // the set-up, which may arrive after the first read and drop it: then the read after the
    // write shows the write, and the next round, with the profile cached again, tells.)
    let db = s.db.connect().await;
    let mut marker = String::new();
    for round in 0.. {
        assert!(round < 50, "GetUser never answered from its cache");
        marker = format!("behind the back {round}");
        let sql = format!("UPDATE users SET position = '{marker}' WHERE user_id = {}", uid_literal(backend, &id));
        db.execute_unprepared(&sql).await.unwrap();
        let read = get().await;
        assert!(read.last_login_time.is_none() && read.display_name == first.display_name);
        if read.position != marker {
            break; // served from the cache
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // …until the server commits a change to the user: a login is one (its time shows).
    s.login(&t, "ann@example.com", PASSWORD).await;
    let after_login = get().await;
    assert!(after_login.last_login_time.is_some(), "login time shows: {after_login:?}");
    assert_eq!(after_login.position, marker, "reloaded from the database");
    assert_eq!(after_login.etag, first.etag, "a login is not a profile edit");

    let manager = s.builtin_role(&t, "manager").await;
    let role = |role_id: &str| pb::AssignRoleRequest {
        tenant_id: t.clone(),
        user_id: id.clone(),
        role_id: role_id.into(),
        request_id: String::new(),
    };
    s.roles().await.assign_role(role(&manager)).await.unwrap();
    assert_eq!(get().await.role_ids, std::slice::from_ref(&manager));

    let before = get().await;
    s.users()
        .await
        .update_user(pb::UpdateUserRequest {
            tenant_id: t.clone(),
            user: Some(pb::User { user_id: id.clone(), display_name: "Ann B.".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
            etag: before.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let updated = get().await;
    assert_eq!(updated.display_name, "Ann B.");
    assert_ne!(updated.etag, before.etag);

    let r = role(&manager);
    let unassign = pb::UnassignRoleRequest {
        tenant_id: r.tenant_id,
        user_id: r.user_id,
        role_id: r.role_id,
        request_id: r.request_id,
    };
    s.roles().await.unassign_role(unassign).await.unwrap();
    assert!(get().await.role_ids.is_empty());

    s.users()
        .await
        .deactivate_user(pb::DeactivateUserRequest { tenant_id: t.clone(), user_id: id.clone(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(get().await.state, pb::UserState::Deactivated as i32);
    s.stop().await;
}
