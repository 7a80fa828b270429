//! Attacks on delegated administration (SECURITY.md, "Delegated administration"): users with some
//! administrative rights trying to get more. Each succeeded against an earlier build.

use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    both_backends,
    common::{Backend, TestServer, code_at, expect_code, pb, totp_for, unix_now},
};

const PASSWORD: &str = "velvet staircase under morning rain";

fn perm(module: &str, action: &str, scope: pb::Scope) -> pb::Permission {
    pb::Permission { module: module.into(), action: action.into(), scope: scope.into() }
}

async fn custom_role(server: &TestServer, name: &str, permissions: Vec<pb::Permission>) -> String {
    server
        .roles()
        .await
        .create_role(pb::CreateRoleRequest {
            tenant_id: "acme".into(),
            role: Some(pb::Role { name: name.into(), permissions, ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("create role")
        .into_inner()
        .role
        .unwrap()
        .role_id
}

/// A password user in a department with roles; returns (user id, access token).
async fn member(server: &TestServer, email: &str, department: &str, roles: &[String]) -> (String, String) {
    let id = server.password_user("acme", email, PASSWORD, roles).await;
    server
        .users()
        .await
        .update_user(pb::UpdateUserRequest {
            tenant_id: "acme".into(),
            user: Some(pb::User { user_id: id.clone(), department_id: department.into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["department_id".into()] }),
            ..Default::default()
        })
        .await
        .expect("place in department");
    let token = server.login("acme", email, PASSWORD).await.access_token;
    (id, token)
}

fn move_to(user_id: &str, department: &str) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        tenant_id: "acme".into(),
        user: Some(pb::User { user_id: user_id.into(), department_id: department.into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["department_id".into()] }),
        ..Default::default()
    }
}

/// The refusal names the right that is missing (a precondition violation), and is PERMISSION_DENIED.
fn refused_for_a_missing_right(s: &tonic::Status) {
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let details = s.get_error_details();
    let violations = details.precondition_failure().map(|p| p.violations.clone()).unwrap_or_default();
    assert!(!violations.is_empty(), "a precondition violation names what is missing: {s:?}");
}

both_backends!(
    a_team_lead_cannot_climb_to_administrator,
    roles_assign_cannot_hand_out_administrator,
    roles_edit_cannot_add_rights_one_lacks,
    own_scope_cannot_move_oneself_to_the_root,
);

/// The chain from the issue: a team lead (users.edit at DEPARTMENT scope) moves to the root
/// department, disables an administrator's second factor, resets the administrator's password
/// and assigns themselves the administrator role. Every step is refused.
async fn a_team_lead_cannot_climb_to_administrator(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let root = server.department("acme", "HQ", "").await;
    let sales = server.department("acme", "Sales", &root).await;
    let lead_role = custom_role(
        &server,
        "team lead",
        vec![
            perm("users", "view", pb::Scope::Department),
            perm("users", "edit", pb::Scope::Department),
            perm("roles", "view", pb::Scope::Tenant),
            perm("roles", "assign", pb::Scope::Department),
        ],
    )
    .await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    let (admin, admin_token) = member(&server, "admin@example.com", &sales, std::slice::from_ref(&admin_role)).await;
    let mut admin_auth = server.auth_as(&admin_token).await;
    let enrolled =
        admin_auth.enroll_totp(pb::EnrollTotpRequest { current_password: PASSWORD.into() }).await.unwrap().into_inner();
    let totp = totp_for(&enrolled.otpauth_uri);
    admin_auth.confirm_totp(pb::ConfirmTotpRequest { code: code_at(&totp, unix_now(), 0) }).await.unwrap();
    let (lead, token) = member(&server, "lead@example.com", &sales, &[lead_role]).await;
    let mut users = server.users_as(&token).await;

    let s = expect_code(users.update_user(move_to(&lead, &root)).await, Code::PermissionDenied);
    refused_for_a_missing_right(&s);
    let s = expect_code(
        server
            .auth_as(&token)
            .await
            .disable_totp(pb::DisableTotpRequest {
                tenant_id: "acme".into(),
                user_id: admin.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    let s = expect_code(
        users
            .reset_password(pb::ResetPasswordRequest {
                tenant_id: "acme".into(),
                user_id: admin.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    let s = expect_code(
        server
            .roles_as(&token)
            .await
            .assign_role(pb::AssignRoleRequest {
                tenant_id: "acme".into(),
                user_id: lead.clone(),
                role_id: admin_role.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    // What the lead may do stays allowed: edit a colleague of the department with fewer rights.
    let (colleague, _) = member(&server, "colleague@example.com", &sales, &[]).await;
    let mut edit = move_to(&colleague, &sales);
    edit.user.as_mut().unwrap().position = "Account executive".into();
    edit.update_mask = Some(prost_types::FieldMask { paths: vec!["position".into()] });
    users.update_user(edit).await.expect("a team lead edits their team");
    server.stop().await;
}

/// A custom role with tenant-wide roles.assign cannot assign administrator (not even to its holder).
async fn roles_assign_cannot_hand_out_administrator(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let assigner = custom_role(
        &server,
        "assigner",
        vec![perm("roles", "view", pb::Scope::Tenant), perm("roles", "assign", pb::Scope::Tenant)],
    )
    .await;
    let admin_role = server.builtin_role("acme", "administrator").await;
    let guest = server.builtin_role("acme", "guest").await;
    let (me, token) = member(&server, "assigner@example.com", "", &[assigner]).await;
    let (other, _) = member(&server, "other@example.com", "", &[]).await;
    let mut roles = server.roles_as(&token).await;
    for target in [&me, &other] {
        let s = expect_code(
            roles
                .assign_role(pb::AssignRoleRequest {
                    tenant_id: "acme".into(),
                    user_id: target.clone(),
                    role_id: admin_role.clone(),
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
        );
        refused_for_a_missing_right(&s);
    }
    // A role within the assigner's own rights is fine... guest's view rights are not theirs.
    let s = expect_code(
        roles
            .assign_role(pb::AssignRoleRequest {
                tenant_id: "acme".into(),
                user_id: other.clone(),
                role_id: guest,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    let viewer = custom_role(&server, "role viewer", vec![perm("roles", "view", pb::Scope::Tenant)]).await;
    roles
        .assign_role(pb::AssignRoleRequest {
            tenant_id: "acme".into(),
            user_id: other.clone(),
            role_id: viewer,
            ..Default::default()
        })
        .await
        .expect("a role within one's own rights");
    server.stop().await;
}

/// A custom role with roles.edit cannot give a role (its own or a new one) a right it lacks.
async fn roles_edit_cannot_add_rights_one_lacks(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let editor_perms = vec![
        perm("roles", "view", pb::Scope::Tenant),
        perm("roles", "edit", pb::Scope::Tenant),
        perm("roles", "create", pb::Scope::Tenant),
    ];
    let editor = custom_role(&server, "role editor", editor_perms.clone()).await;
    let (_, token) = member(&server, "editor@example.com", "", std::slice::from_ref(&editor)).await;
    let mut roles = server.roles_as(&token).await;
    let mut widened = editor_perms.clone();
    widened.push(perm("settings", "edit", pb::Scope::Tenant));
    let s = expect_code(
        roles
            .update_role(pb::UpdateRoleRequest {
                tenant_id: "acme".into(),
                role: Some(pb::Role { role_id: editor.clone(), permissions: widened.clone(), ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["permissions".into()] }),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    let s = expect_code(
        roles
            .create_role(pb::CreateRoleRequest {
                tenant_id: "acme".into(),
                role: Some(pb::Role { name: "wider".into(), permissions: widened, ..Default::default() }),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    let admin_role = server.builtin_role("acme", "administrator").await;
    let s = expect_code(
        roles
            .create_role(pb::CreateRoleRequest {
                tenant_id: "acme".into(),
                role: Some(pb::Role { name: "admin copy".into(), ..Default::default() }),
                source_role_id: admin_role,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    refused_for_a_missing_right(&s);
    roles
        .create_role(pb::CreateRoleRequest {
            tenant_id: "acme".into(),
            role: Some(pb::Role {
                name: "narrower".into(),
                permissions: vec![perm("roles", "view", pb::Scope::Tenant)],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("a role within one's own rights");
    server.stop().await;
}

/// users.edit at OWN scope lets one edit oneself, not move oneself to the root department (which
/// would widen every DEPARTMENT-scope right one holds to the whole tenant).
async fn own_scope_cannot_move_oneself_to_the_root(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let root = server.department("acme", "HQ", "").await;
    let sales = server.department("acme", "Sales", &root).await;
    let self_editor = custom_role(
        &server,
        "self editor",
        vec![perm("users", "edit", pb::Scope::Own), perm("deals", "view", pb::Scope::Department)],
    )
    .await;
    let (me, token) = member(&server, "me@example.com", &sales, &[self_editor]).await;
    let mut users = server.users_as(&token).await;
    let s = expect_code(users.update_user(move_to(&me, &root)).await, Code::PermissionDenied);
    refused_for_a_missing_right(&s);
    let mut edit = move_to(&me, &sales);
    edit.user.as_mut().unwrap().position = "Seller".into();
    edit.update_mask = Some(prost_types::FieldMask { paths: vec!["position".into()] });
    users.update_user(edit).await.expect("one's own profile stays editable");
    server.stop().await;
}
