//! ListUsers' hygiene filters: last login before / after, never logged in, second factor, role.
//! Each filter with a seeded user that must appear and ones that must not.

use std::collections::BTreeSet;

use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, bad_fields, code_at, expect_code, pb, totp_for, unix_now},
};

both_backends!(list_users_filters_by_activity_mfa_and_role);

const PASSWORD: &str = "correct horse battery staple";

async fn names(s: &TestServer, req: pb::ListUsersRequest) -> BTreeSet<String> {
    let page = s.users().await.list_users(req).await.unwrap().into_inner();
    page.users.into_iter().map(|u| u.email.split('@').next().unwrap().to_owned()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

async fn last_login(s: &TestServer, id: &str) -> prost_types::Timestamp {
    let u = s.users().await.get_user(pb::GetUserRequest { tenant_id: "flt".into(), user_id: id.into() }).await;
    u.unwrap().into_inner().user.unwrap().last_login_time.expect("logged in")
}

async fn list_users_filters_by_activity_mfa_and_role(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.tenant("flt", 0).await;
    let manager = s.builtin_role("flt", "manager").await;
    s.password_user("flt", "never@flt.example", PASSWORD, &[]).await;
    let early = s.password_user("flt", "early@flt.example", PASSWORD, std::slice::from_ref(&manager)).await;
    s.login("flt", "early@flt.example", PASSWORD).await;
    let early_login = last_login(&s, &early).await;
    let late = s.password_user("flt", "late@flt.example", PASSWORD, &[]).await;
    let t = s.login("flt", "late@flt.example", PASSWORD).await;
    let late_login = last_login(&s, &late).await;
    assert!((late_login.seconds, late_login.nanos) > (early_login.seconds, early_login.nanos));

    // The late user enrolls a second factor.
    let mut auth = s.auth_as(&t.access_token).await;
    let enrolled = auth.enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() }).await.unwrap();
    let code = code_at(&totp_for(&enrolled.into_inner().otpauth_uri), unix_now(), 0);
    auth.confirm_totp(pb::ConfirmTotpRequest { code }).await.unwrap();

    let base = || pb::ListUsersRequest { tenant_id: "flt".into(), ..Default::default() };
    assert_eq!(names(&s, base()).await, set(&["early", "late", "never"]));
    let before = pb::ListUsersRequest { last_login_before: Some(late_login), ..base() };
    assert_eq!(names(&s, before).await, set(&["early", "never"]), "no login since: never-logged-in included");
    let after = pb::ListUsersRequest { last_login_after: Some(late_login), ..base() };
    assert_eq!(names(&s, after).await, set(&["late"]));
    let window =
        pb::ListUsersRequest { last_login_after: Some(early_login), last_login_before: Some(late_login), ..base() };
    assert_eq!(names(&s, window).await, set(&["early"]));
    let never = pb::ListUsersRequest { never_logged_in: true, ..base() };
    assert_eq!(names(&s, never).await, set(&["never"]));
    let with_mfa = pb::ListUsersRequest { mfa: pb::MfaFilter::Enrolled.into(), ..base() };
    assert_eq!(names(&s, with_mfa).await, set(&["late"]));
    let without = pb::ListUsersRequest { mfa: pb::MfaFilter::NotEnrolled.into(), ..base() };
    assert_eq!(names(&s, without).await, set(&["early", "never"]));
    let managers = pb::ListUsersRequest { role_id: manager.clone(), ..base() };
    assert_eq!(names(&s, managers).await, set(&["early"]));
    let both = pb::ListUsersRequest { role_id: manager, mfa: pb::MfaFilter::Enrolled.into(), ..base() };
    assert!(names(&s, both).await.is_empty(), "filters combine");

    // Pages walk the filtered list, and a token is bound to its filters.
    let first = s
        .users()
        .await
        .list_users(pb::ListUsersRequest { page_size: 1, mfa: pb::MfaFilter::NotEnrolled.into(), ..base() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.users.len(), 1);
    let other = pb::ListUsersRequest { page_token: first.next_page_token.clone(), ..base() };
    expect_code(s.users().await.list_users(other).await, Code::InvalidArgument);

    // Bad filters: precise fields, nothing listed.
    let bad = pb::ListUsersRequest {
        last_login_after: Some(late_login),
        last_login_before: Some(early_login),
        mfa: 7,
        role_id: "not-a-uuid".into(),
        ..base()
    };
    let e = expect_code(s.users().await.list_users(bad).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&e), ["last_login_after", "mfa", "role_id"]);
    let e = expect_code(
        s.users()
            .await
            .list_users(pb::ListUsersRequest { never_logged_in: true, last_login_after: Some(late_login), ..base() })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&e), ["never_logged_in"]);
    let unknown = pb::ListUsersRequest { role_id: uuid::Uuid::new_v4().to_string(), ..base() };
    expect_code(s.users().await.list_users(unknown).await, Code::NotFound);
}
