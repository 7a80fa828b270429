//! Every RPC × every kind of caller, with the status code each must get. The table must name
//! every method the server has (checked against the descriptor set), so a new method cannot
//! ship without a decision here.

use std::{future::Future, pin::Pin};

use tonic::{Code, Status, transport::Channel};

use crate::{
    both_backends,
    common::{ADMIN_TOKEN, Backend, Bearer, TestServer, pb},
};

const PASSWORD: &str = "velvet staircase under morning rain";
const SERVICE_ALL: &str = "service-with-every-method-0123";
const SERVICE_NONE: &str = "service-without-the-methods-0123";

/// The callers, in table column order.
const CALLERS: [&str; 9] = [
    "no token",
    "platform",
    "service with",
    "service without",
    "administrator",
    "manager",
    "operator",
    "guest",
    "other tenant",
];

const U: Code = Code::Unauthenticated;
const P: Code = Code::PermissionDenied;
const OK: Code = Code::Ok;
const NF: Code = Code::NotFound;
const IA: Code = Code::InvalidArgument;
const FP: Code = Code::FailedPrecondition;

/// Platform-level: the platform and services only.
fn platform(c: Code) -> [Code; 9] {
    [U, c, c, P, P, P, P, P, P]
}
/// Tenant administration: administrators of the tenant, the platform and services.
fn admin(c: Code) -> [Code; 9] {
    [U, c, c, P, c, P, P, P, P]
}
/// What acts as a tenant administrator (SCIM tokens): the platform and the tenant's
/// administrators, never a service credential (it holds no rights a ceiling could check).
fn admin_not_service(c: Code) -> [Code; 9] {
    [U, c, P, P, c, P, P, P, P]
}

/// Seeing users of a department tree: administrators and the manager of that tree.
fn dept_view(c: Code) -> [Code; 9] {
    [U, c, c, P, c, c, P, P, P]
}
/// Acting for one's own session: any user (the other tenant's too: it is their own).
fn own(c: Code) -> [Code; 9] {
    [U, P, P, P, c, c, c, c, c]
}
/// No token needed.
fn public(c: Code) -> [Code; 9] {
    [c; 9]
}

type Fut = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// The people and things the requests name.
#[derive(Clone)]
struct Ids {
    employee: String,
    sales: String,
    admin: String,
}

struct Row {
    method: &'static str,
    expect: [Code; 9],
    call: Box<dyn Fn(Channel, Bearer, usize, Ids) -> Fut>,
}

fn row<F>(method: &'static str, expect: [Code; 9], f: impl Fn(Channel, Bearer, usize, Ids) -> F + 'static) -> Row
where
    F: Future<Output = Result<(), Status>> + Send + 'static,
{
    Row { method, expect, call: Box::new(move |c, b, i, ids| Box::pin(f(c, b, i, ids))) }
}

fn random() -> String {
    uuid::Uuid::new_v4().to_string()
}

macro_rules! client {
    (tenants, $c:expr, $b:expr) => {
        pb::tenant_admin_client::TenantAdminClient::with_interceptor($c, $b)
    };
    (users, $c:expr, $b:expr) => {
        pb::user_admin_client::UserAdminClient::with_interceptor($c, $b)
    };
    (roles, $c:expr, $b:expr) => {
        pb::role_admin_client::RoleAdminClient::with_interceptor($c, $b)
    };
    (access, $c:expr, $b:expr) => {
        pb::access_client::AccessClient::with_interceptor($c, $b)
    };
    (ownership, $c:expr, $b:expr) => {
        pb::ownership_transfer_client::OwnershipTransferClient::with_interceptor($c, $b)
    };
    (audit, $c:expr, $b:expr) => {
        pb::audit_events_client::AuditEventsClient::with_interceptor($c, $b)
    };
    (auth, $c:expr, $b:expr) => {
        pb::auth_client::AuthClient::with_interceptor($c, $b)
    };
    (notifications, $c:expr, $b:expr) => {
        pb::notification_admin_client::NotificationAdminClient::with_interceptor($c, $b)
    };
}

/// One row: `r!(METHOD, expect, client, method, |i, ids| request)`.
macro_rules! r {
    ($name:literal, $expect:expr, $client:ident, $method:ident, |$i:ident, $ids:ident| $req:expr) => {
        row($name, $expect, |c, b, $i, $ids: Ids| async move {
            let _ = (&$i, &$ids);
            client!($client, c, b).$method($req).await.map(drop)
        })
    };
}

fn t() -> String {
    "acme".into()
}

fn table() -> Vec<Row> {
    vec![
        r!("TenantAdmin/CreateTenant", platform(OK), tenants, create_tenant, |i, ids| pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: format!("new-{i}"),
                display_name: "New".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }),
        r!("TenantAdmin/GetTenant", admin(OK), tenants, get_tenant, |i, ids| pb::GetTenantRequest { tenant_id: t() }),
        r!("TenantAdmin/ListTenants", platform(OK), tenants, list_tenants, |i, ids| pb::ListTenantsRequest::default()),
        r!("TenantAdmin/UpdateTenant", admin(OK), tenants, update_tenant, |i, ids| pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant { tenant_id: t(), display_name: format!("Acme {i}"), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            ..Default::default()
        }),
        // A tenant nobody has (suspending the test's tenant would shut the rows after this one).
        r!("TenantAdmin/SuspendTenant", platform(NF), tenants, suspend_tenant, |i, ids| pb::SuspendTenantRequest {
            tenant_id: "no-such-tenant".into(),
            reason: "authz".into(),
            ..Default::default()
        }),
        r!("TenantAdmin/ResumeTenant", platform(OK), tenants, resume_tenant, |i, ids| pb::ResumeTenantRequest {
            tenant_id: t(),
            reason: "authz".into(),
            ..Default::default()
        }),
        r!("TenantAdmin/CreateScimToken", admin_not_service(OK), tenants, create_scim_token, |i, ids| {
            pb::CreateScimTokenRequest { tenant_id: t(), name: format!("idp-{i}"), ttl: None }
        }),
        r!("TenantAdmin/ListScimTokens", admin_not_service(OK), tenants, list_scim_tokens, |i, ids| {
            pb::ListScimTokensRequest { tenant_id: t() }
        }),
        r!("TenantAdmin/RevokeScimToken", admin_not_service(NF), tenants, revoke_scim_token, |i, ids| {
            pb::RevokeScimTokenRequest { tenant_id: t(), name: "no-such-token".into() }
        }),
        // Past the authorization, the discovery of an issuer nothing answers at: FAILED_PRECONDITION.
        r!("TenantAdmin/CreateIdentityProvider", admin_not_service(FP), tenants, create_identity_provider, |i, ids| {
            pb::CreateIdentityProviderRequest {
                tenant_id: t(),
                identity_provider: Some(pb::IdentityProvider {
                    name: format!("idp-{i}"),
                    // A name that never resolves (RFC 6761): past the rights check, the fetch fails.
                    issuer: "https://idp.invalid".into(),
                    client_id: "crm".into(),
                    client_secret: "a-client-secret".into(),
                    allowed_email_domains: vec!["example.com".into()],
                    redirect_uris: vec!["https://app.example.com/sso".into()],
                    ..Default::default()
                }),
            }
        }),
        r!("TenantAdmin/ListIdentityProviders", admin_not_service(OK), tenants, list_identity_providers, |i, ids| {
            pb::ListIdentityProvidersRequest { tenant_id: t() }
        }),
        r!("TenantAdmin/DeleteIdentityProvider", admin_not_service(NF), tenants, delete_identity_provider, |i, ids| {
            pb::DeleteIdentityProviderRequest { tenant_id: t(), name: "no-such-idp".into() }
        }),
        r!("UserAdmin/CreateUser", admin(OK), users, create_user, |i, ids| {
            let mut r = crate::common::invite("acme", &format!("new-{i}@example.com"));
            r.user.as_mut().unwrap().department_id = ids.sales.clone();
            r
        }),
        r!("UserAdmin/GetUser", dept_view(OK), users, get_user, |i, ids| pb::GetUserRequest {
            tenant_id: t(),
            user_id: ids.employee.clone()
        }),
        r!("UserAdmin/ListUsers", dept_view(OK), users, list_users, |i, ids| pb::ListUsersRequest {
            tenant_id: t(),
            ..Default::default()
        }),
        r!("UserAdmin/UpdateUser", admin(NF), users, update_user, |i, ids| pb::UpdateUserRequest {
            tenant_id: t(),
            user: Some(pb::User { user_id: random(), display_name: "X".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            ..Default::default()
        }),
        r!("UserAdmin/DeactivateUser", admin(NF), users, deactivate_user, |i, ids| pb::DeactivateUserRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/ReactivateUser", admin(NF), users, reactivate_user, |i, ids| pb::ReactivateUserRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/DeleteUser", admin(NF), users, delete_user, |i, ids| pb::DeleteUserRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/UndeleteUser", admin(NF), users, undelete_user, |i, ids| pb::UndeleteUserRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/PurgeUser", admin(NF), users, purge_user, |i, ids| pb::PurgeUserRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/ResetPassword", admin(NF), users, reset_password, |i, ids| pb::ResetPasswordRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/ResendInvitation", admin(NF), users, resend_invitation, |i, ids| pb::ResendInvitationRequest {
            tenant_id: t(),
            user_id: random(),
            ..Default::default()
        }),
        r!("UserAdmin/CreateDepartment", admin(OK), users, create_department, |i, ids| pb::CreateDepartmentRequest {
            tenant_id: t(),
            department: Some(pb::Department { name: format!("Dept {i}"), ..Default::default() }),
            request_id: String::new(),
        }),
        r!("UserAdmin/GetDepartment", dept_view(OK), users, get_department, |i, ids| pb::GetDepartmentRequest {
            tenant_id: t(),
            department_id: ids.sales.clone(),
        }),
        r!("UserAdmin/ListDepartments", dept_view(OK), users, list_departments, |i, ids| {
            pb::ListDepartmentsRequest { tenant_id: t(), ..Default::default() }
        }),
        r!("UserAdmin/UpdateDepartment", admin(NF), users, update_department, |i, ids| {
            pb::UpdateDepartmentRequest {
                tenant_id: t(),
                department: Some(pb::Department {
                    department_id: random(),
                    name: "Renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                ..Default::default()
            }
        }),
        r!("UserAdmin/DeleteDepartment", admin(NF), users, delete_department, |i, ids| {
            pb::DeleteDepartmentRequest { tenant_id: t(), department_id: random(), ..Default::default() }
        }),
        r!("RoleAdmin/GetPermissionCatalog", admin(OK), roles, get_permission_catalog, |i, ids| {
            pb::GetPermissionCatalogRequest { tenant_id: t() }
        }),
        r!("RoleAdmin/CreateModule", admin(OK), roles, create_module, |i, ids| pb::CreateModuleRequest {
            tenant_id: t(),
            module: Some(pb::Module {
                name: format!("invoices{i}"),
                display_name: "Invoices".into(),
                actions: vec!["view".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        }),
        r!("RoleAdmin/UpdateModule", admin(NF), roles, update_module, |i, ids| pb::UpdateModuleRequest {
            tenant_id: t(),
            module: Some(pb::Module { name: "nosuchmodule".into(), display_name: "X".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            ..Default::default()
        }),
        r!("RoleAdmin/DeleteModule", admin(NF), roles, delete_module, |i, ids| pb::DeleteModuleRequest {
            tenant_id: t(),
            name: "nosuchmodule".into(),
            ..Default::default()
        }),
        r!("RoleAdmin/CreateRole", admin(OK), roles, create_role, |i, ids| pb::CreateRoleRequest {
            tenant_id: t(),
            role: Some(pb::Role {
                name: format!("Role {i}"),
                permissions: vec![pb::Permission {
                    module: "deals".into(),
                    action: "view".into(),
                    scope: pb::Scope::Own as i32,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        r!("RoleAdmin/GetRole", admin(NF), roles, get_role, |i, ids| pb::GetRoleRequest {
            tenant_id: t(),
            role_id: random()
        }),
        r!("RoleAdmin/ListRoles", admin(OK), roles, list_roles, |i, ids| pb::ListRolesRequest {
            tenant_id: t(),
            ..Default::default()
        }),
        r!("RoleAdmin/UpdateRole", admin(NF), roles, update_role, |i, ids| pb::UpdateRoleRequest {
            tenant_id: t(),
            role: Some(pb::Role { role_id: random(), description: "x".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["description".into()] }),
            ..Default::default()
        }),
        r!("RoleAdmin/DeleteRole", admin(NF), roles, delete_role, |i, ids| pb::DeleteRoleRequest {
            tenant_id: t(),
            role_id: random(),
            ..Default::default()
        }),
        r!("RoleAdmin/AssignRole", admin(NF), roles, assign_role, |i, ids| pb::AssignRoleRequest {
            tenant_id: t(),
            user_id: random(),
            role_id: random(),
            ..Default::default()
        }),
        r!("RoleAdmin/UnassignRole", admin(NF), roles, unassign_role, |i, ids| pb::UnassignRoleRequest {
            tenant_id: t(),
            user_id: random(),
            role_id: random(),
            ..Default::default()
        }),
        r!("RoleAdmin/GetEffectivePermissions", admin(OK), roles, get_effective_permissions, |i, ids| {
            pb::GetEffectivePermissionsRequest { tenant_id: t(), user_id: ids.employee.clone() }
        }),
        r!("Access/Check", admin(OK), access, check, |i, ids| pb::CheckRequest {
            tenant_id: t(),
            user_id: ids.employee.clone(),
            module: "deals".into(),
            action: "view".into(),
            resource: None,
        }),
        r!("Access/BatchCheck", admin(OK), access, batch_check, |i, ids| pb::BatchCheckRequest {
            tenant_id: t(),
            checks: vec![pb::BatchCheckItem {
                user_id: ids.employee.clone(),
                module: "deals".into(),
                action: "view".into(),
                resource: None,
            }],
        }),
        r!("OwnershipTransfer/RecordOwnership", admin(OK), ownership, record_ownership, |i, ids| {
            pb::RecordOwnershipRequest {
                tenant_id: t(),
                ownerships: vec![pb::Ownership {
                    module: "deals".into(),
                    resource_id: format!("deal-{i}"),
                    owner_user_id: ids.employee.clone(),
                }],
                request_id: String::new(),
            }
        }),
        r!("OwnershipTransfer/ForgetOwnership", admin(OK), ownership, forget_ownership, |i, ids| {
            pb::ForgetOwnershipRequest {
                tenant_id: t(),
                resources: vec![pb::ResourceRef { module: "deals".into(), resource_id: "no-such-deal".into() }],
                request_id: String::new(),
            }
        }),
        r!("OwnershipTransfer/ListOwnedResources", dept_view(OK), ownership, list_owned_resources, |i, ids| {
            pb::ListOwnedResourcesRequest { tenant_id: t(), user_id: ids.employee.clone(), ..Default::default() }
        }),
        r!("OwnershipTransfer/CountOwnedResources", dept_view(OK), ownership, count_owned_resources, |i, ids| {
            pb::CountOwnedResourcesRequest { tenant_id: t(), user_id: ids.employee.clone() }
        }),
        r!("OwnershipTransfer/ListOrphanedOwners", admin(OK), ownership, list_orphaned_owners, |i, ids| {
            pb::ListOrphanedOwnersRequest { tenant_id: t(), ..Default::default() }
        }),
        r!("OwnershipTransfer/PlanTransfer", admin(OK), ownership, plan_transfer, |i, ids| pb::PlanTransferRequest {
            tenant_id: t(),
            from_user_id: ids.employee.clone(),
            rules: vec![pb::TransferRule {
                module: String::new(),
                target: Some(pb::transfer_rule::Target::ToUserId(ids.admin.clone())),
            }],
        }),
        r!("OwnershipTransfer/StartTransfer", admin(FP), ownership, start_transfer, |i, ids| {
            pb::StartTransferRequest {
                tenant_id: t(),
                from_user_id: random(),
                rules: vec![pb::TransferRule {
                    module: String::new(),
                    target: Some(pb::transfer_rule::Target::ToUserId(ids.admin.clone())),
                }],
                request_id: String::new(),
            }
        }),
        r!("OwnershipTransfer/GetTransfer", admin(NF), ownership, get_transfer, |i, ids| pb::GetTransferRequest {
            tenant_id: t(),
            transfer_id: random()
        }),
        r!("OwnershipTransfer/ListTransfers", admin(OK), ownership, list_transfers, |i, ids| {
            pb::ListTransfersRequest { tenant_id: t(), ..Default::default() }
        }),
        r!("OwnershipTransfer/CancelTransfer", admin(NF), ownership, cancel_transfer, |i, ids| {
            pb::CancelTransferRequest { tenant_id: t(), transfer_id: random(), ..Default::default() }
        }),
        r!("OwnershipTransfer/WatchTransfer", admin(NF), ownership, watch_transfer, |i, ids| {
            pb::WatchTransferRequest { tenant_id: t(), transfer_id: random() }
        }),
        r!("AuditEvents/ListEvents", admin(OK), audit, list_events, |i, ids| pb::ListEventsRequest {
            tenant_id: t(),
            ..Default::default()
        }),
        r!("AuditEvents/StreamEvents", admin(OK), audit, stream_events, |i, ids| pb::StreamEventsRequest {
            tenant_id: t(),
            ..Default::default()
        }),
        r!("Auth/Authenticate", public(U), auth, authenticate, |i, ids| pb::AuthenticateRequest {
            tenant_id: t(),
            email: "nobody@example.com".into(),
            password: "not a real password".into(),
            totp_code: String::new(),
            ..Default::default()
        }),
        r!("Auth/Refresh", public(U), auth, refresh, |i, ids| pb::RefreshRequest { refresh_token: "bogus".into() }),
        r!("Auth/ListSessions", dept_view(OK), auth, list_sessions, |i, ids| pb::ListSessionsRequest {
            tenant_id: t(),
            user_id: ids.employee.clone(),
            ..Default::default()
        }),
        r!("Auth/RevokeSessions", admin(OK), auth, revoke_sessions, |i, ids| pb::RevokeSessionsRequest {
            tenant_id: t(),
            user_id: ids.employee.clone(),
            ..Default::default()
        }),
        r!("Auth/ChangePassword", own(IA), auth, change_password, |i, ids| pb::ChangePasswordRequest {
            old_password: "not the current password".into(),
            new_password: "copper lantern beside a quiet harbor".into(),
        }),
        r!("Auth/AcceptInvitation", public(U), auth, accept_invitation, |i, ids| pb::AcceptInvitationRequest {
            invitation_token: "bogus".into(),
            new_password: "copper lantern beside a quiet harbor".into(),
        }),
        r!("Auth/CompletePasswordReset", public(U), auth, complete_password_reset, |i, ids| {
            pb::CompletePasswordResetRequest {
                reset_token: "bogus".into(),
                new_password: "copper lantern beside a quiet harbor".into(),
            }
        }),
        r!("Auth/RequestPasswordReset", public(OK), auth, request_password_reset, |i, ids| {
            pb::RequestPasswordResetRequest { tenant_id: t(), email: format!("nobody-{i}@example.com") }
        }),
        r!("NotificationAdmin/ListNotifications", admin(OK), notifications, list_notifications, |i, ids| {
            pb::ListNotificationsRequest { tenant_id: t(), ..Default::default() }
        }),
        r!("NotificationAdmin/RetryNotification", admin(NF), notifications, retry_notification, |i, ids| {
            pb::RetryNotificationRequest { tenant_id: t(), notification_id: random() }
        }),
        r!("NotificationAdmin/ListTemplates", admin(OK), notifications, list_templates, |i, ids| {
            pb::ListTemplatesRequest { tenant_id: t() }
        }),
        r!("NotificationAdmin/SetTemplate", admin(OK), notifications, set_template, |i, ids| {
            pb::SetTemplateRequest {
                tenant_id: t(),
                template: Some(pb::NotificationTemplate {
                    kind: "password_changed".into(),
                    locale: "en".into(),
                    subject: format!("Password changed ({i})"),
                    body: "Hello {{ name }}, your password was changed.".into(),
                    ..Default::default()
                }),
            }
        }),
        r!("NotificationAdmin/DeleteTemplate", admin(NF), notifications, delete_template, |i, ids| {
            pb::DeleteTemplateRequest { tenant_id: t(), kind: "account_locked".into(), locale: "ru".into() }
        }),
        r!("NotificationAdmin/PreviewTemplate", admin(OK), notifications, preview_template, |i, ids| {
            pb::PreviewTemplateRequest {
                tenant_id: t(),
                kind: "invitation".into(),
                locale: "zh-CN".into(),
                ..Default::default()
            }
        }),
        r!("Auth/EnrollTotp", own(OK), auth, enroll_totp, |i, ids| pb::EnrollTotpRequest {
            current_password: PASSWORD.into()
        }),
        r!("Auth/ConfirmTotp", own(IA), auth, confirm_totp, |i, ids| pb::ConfirmTotpRequest { code: "000000".into() }),
        r!("Auth/DisableTotp", admin(FP), auth, disable_totp, |i, ids| pb::DisableTotpRequest {
            tenant_id: t(),
            user_id: ids.employee.clone(),
            ..Default::default()
        }),
        r!("Auth/GetJwks", public(OK), auth, get_jwks, |i, ids| pb::GetJwksRequest {}),
        r!("Auth/BeginSso", public(NF), auth, begin_sso, |i, ids| pb::BeginSsoRequest {
            tenant_id: t(),
            connection: "no-such-idp".into(),
            redirect_uri: "https://app.example.com/sso".into(),
        }),
        r!("Auth/CompleteSso", public(U), auth, complete_sso, |i, ids| pb::CompleteSsoRequest {
            state: format!("forged-{i}"),
            code: "code".into(),
            iss: String::new(),
            browser_binding: "binding".into(),
        }),
        r!("Auth/IntrospectToken", [U, OK, OK, P, OK, OK, OK, OK, OK], auth, introspect_token, |i, ids| {
            pb::IntrospectTokenRequest { token: "not.a.token".into() }
        }),
        r!("Auth/RotateSigningKey", platform(OK), auth, rotate_signing_key, |i, ids| {
            pb::RotateSigningKeyRequest::default()
        }),
        // Last: it ends the calling sessions.
        r!("Auth/Logout", own(OK), auth, logout, |i, ids| pb::LogoutRequest {}),
    ]
}

both_backends!(every_rpc_for_every_caller);

async fn every_rpc_for_every_caller(backend: Backend) {
    use sha2::Digest;
    let digest = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let every: Vec<String> = crm_iam::api::authn::all_methods();
    let server = TestServer::start_with(backend, |c| {
        c.service_credentials = vec![
            crm_iam::api::authn::ServiceCredential {
                name: "all".into(),
                token_sha256: digest(SERVICE_ALL),
                methods: every.iter().map(|m| m.trim_start_matches('/').to_owned()).collect(),
                client_subject: None,
                tenants: None,
            },
            crm_iam::api::authn::ServiceCredential {
                name: "none".into(),
                token_sha256: digest(SERVICE_NONE),
                methods: vec!["Auth.GetJwks".into()],
                client_subject: None,
                tenants: None,
            },
        ];
    })
    .await;

    // acme: Sales (with a Support sub-department) and Marketing; beta: another tenant.
    server.tenant("acme", 0).await;
    server.tenant("beta", 0).await;
    let sales = server.department("acme", "Sales", "").await;
    server.department("acme", "Support", &sales).await;
    let marketing = server.department("acme", "Marketing", "").await;
    let role = |name: &'static str| {
        let server = &server;
        async move { server.builtin_role("acme", name).await }
    };
    let mut people = Vec::new();
    for (email, role_name, department) in [
        ("admin@acme.test", "administrator", ""),
        ("manager@acme.test", "manager", sales.as_str()),
        ("operator@acme.test", "operator", sales.as_str()),
        ("guest@acme.test", "guest", sales.as_str()),
        ("employee@acme.test", "operator", sales.as_str()),
        ("outsider@acme.test", "operator", marketing.as_str()),
    ] {
        let mut req = crate::common::invite("acme", email);
        req.send_invitation = false;
        req.initial_password = PASSWORD.into();
        req.password_is_permanent = true;
        req.role_ids = vec![role(role_name).await];
        req.user.as_mut().unwrap().department_id = department.into();
        let id = server.users().await.create_user(req).await.unwrap().into_inner().user.unwrap().user_id;
        people.push(id);
    }
    let beta_admin_role = server.builtin_role("beta", "administrator").await;
    server.password_user("beta", "admin@beta.test", PASSWORD, &[beta_admin_role]).await;
    let ids = Ids { admin: people[0].clone(), employee: people[4].clone(), sales };

    let mut tokens: Vec<Option<String>> =
        vec![None, Some(ADMIN_TOKEN.into()), Some(SERVICE_ALL.into()), Some(SERVICE_NONE.into())];
    for (tenant, email) in [
        ("acme", "admin@acme.test"),
        ("acme", "manager@acme.test"),
        ("acme", "operator@acme.test"),
        ("acme", "guest@acme.test"),
        ("beta", "admin@beta.test"),
    ] {
        tokens.push(Some(server.login(tenant, email, PASSWORD).await.access_token));
    }

    let table = table();
    // The table covers exactly the methods the server serves.
    let mut named: Vec<String> = table.iter().map(|r| format!("/crm.iam.v1.{}", r.method)).collect();
    let mut served = every.clone();
    named.sort();
    served.sort();
    assert_eq!(named, served, "the table must list every RPC exactly once");

    let channel = server.channel().await;
    let mut mismatches = Vec::new();
    for row in &table {
        for (i, token) in tokens.iter().enumerate() {
            let bearer = match token {
                Some(t) => Bearer::token(t),
                None => Bearer::none(),
            };
            let got = match (row.call)(channel.clone(), bearer, i, ids.clone()).await {
                Ok(()) => Code::Ok,
                Err(s) => s.code(),
            };
            if got != row.expect[i] {
                mismatches
                    .push(format!("{} as {}: expected {:?}, got {:?}", row.method, CALLERS[i], row.expect[i], got));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));

    // Beyond the table: everyone may view themselves; a manager sees the own department tree only.
    let manager_login = server.login("acme", "manager@acme.test", PASSWORD).await.access_token;
    let operator_login = server.login("acme", "operator@acme.test", PASSWORD).await.access_token;
    server
        .users_as(&operator_login)
        .await
        .get_user(pb::GetUserRequest { tenant_id: "acme".into(), user_id: people[2].clone() })
        .await
        .expect("anyone may view themselves");
    let visible: Vec<String> = server
        .users_as(&manager_login)
        .await
        .list_users(pb::ListUsersRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .users
        .into_iter()
        .map(|u| u.email)
        .collect();
    assert!(visible.contains(&"employee@acme.test".to_owned()), "{visible:?}");
    assert!(
        !visible.contains(&"outsider@acme.test".to_owned()),
        "Marketing is outside the manager's tree: {visible:?}"
    );
    assert!(!visible.contains(&"admin@acme.test".to_owned()), "{visible:?}");
    let s = server
        .users_as(&manager_login)
        .await
        .get_user(pb::GetUserRequest { tenant_id: "acme".into(), user_id: people[5].clone() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    server.stop().await;
}
