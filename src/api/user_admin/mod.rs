//! `crm.iam.v1.UserAdmin`: users and departments of a tenant.

use crate::domain::access::Right;
use secrecy::SecretString;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    caller, convert, decode_uuid_page_token, mask_paths, mutation, next_page_token, page_size, tenant_field as tenant,
    uuid_field as id,
};
use crate::{
    domain::{
        Error, Result, Violations,
        department::{DepartmentPatch, NewDepartment},
        user::{Credential, Profile, UserFilter, UserPatch, UserState, UserWithToken, derived_display_name},
        validate,
    },
    proto::v1::{self as pb, user_admin_server::UserAdmin},
    service::{Iam, Target},
};

mod fields;

use fields::{USER_MASK, profile, token_text, user_patch, user_response};

pub struct UserAdminApi {
    iam: Iam,
}

impl UserAdminApi {
    pub fn new(iam: Iam) -> Self {
        UserAdminApi { iam }
    }
}

const NAME_MAX: usize = 100;
const REASON_MAX: usize = 500;

/// The full path of a method of this service (stored with idempotency records).
fn method(name: &str) -> &'static str {
    match name {
        "CreateUser" => "/crm.iam.v1.UserAdmin/CreateUser",
        "UpdateUser" => "/crm.iam.v1.UserAdmin/UpdateUser",
        "DeactivateUser" => "/crm.iam.v1.UserAdmin/DeactivateUser",
        "ReactivateUser" => "/crm.iam.v1.UserAdmin/ReactivateUser",
        "DeleteUser" => "/crm.iam.v1.UserAdmin/DeleteUser",
        "UndeleteUser" => "/crm.iam.v1.UserAdmin/UndeleteUser",
        "PurgeUser" => "/crm.iam.v1.UserAdmin/PurgeUser",
        "ResetPassword" => "/crm.iam.v1.UserAdmin/ResetPassword",
        "ResendInvitation" => "/crm.iam.v1.UserAdmin/ResendInvitation",
        "CreateDepartment" => "/crm.iam.v1.UserAdmin/CreateDepartment",
        "UpdateDepartment" => "/crm.iam.v1.UserAdmin/UpdateDepartment",
        "DeleteDepartment" => "/crm.iam.v1.UserAdmin/DeleteDepartment",
        _ => unreachable!("unknown method {name}"),
    }
}

impl UserAdminApi {
    /// Shared shape of the lifecycle methods: validate ids and reason, then run `op`.
    fn lifecycle_args(tenant_id: &str, user_id: &str, reason: &str) -> Result<(String, Uuid, String)> {
        let mut v = Violations::default();
        let t = tenant(&mut v, tenant_id);
        let u = id(&mut v, "user_id", user_id);
        let r = v.check("reason", validate::text(reason, REASON_MAX)).unwrap_or_default();
        v.finish()?;
        Ok((t, u, r))
    }
}

#[tonic::async_trait]
impl UserAdmin for UserAdminApi {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let ctx =
            mutation(&req, &caller, &tenant_id, method("CreateUser"), msg, &msg.request_id, |m| m.request_id.clear())?;
        let u = msg.user.clone().unwrap_or_default();
        let profile = profile(&mut v, &u);
        let has_password = !msg.initial_password.is_empty();
        match (has_password, msg.send_invitation) {
            (true, true) => v.add("send_invitation", "give either initial_password or send_invitation, not both"),
            (false, false) => v.add("initial_password", "is required unless send_invitation is true"),
            _ => {}
        }
        if msg.password_is_permanent && !has_password {
            v.add("password_is_permanent", "applies only together with initial_password");
        }
        let mut role_ids = Vec::new();
        for (i, r) in msg.role_ids.iter().enumerate() {
            role_ids.push(id(&mut v, &format!("role_ids[{i}]"), r));
        }
        // Report a password that breaks the tenant's policy together with the other bad fields.
        if has_password && !v.is_empty() && !tenant_id.is_empty() {
            let password = SecretString::from(msg.initial_password.clone());
            let email_key = profile.as_ref().map(|p| p.email_key.as_str());
            if let Err(e) = self.iam.check_password_policy(&tenant_id, "initial_password", &password, email_key).await {
                for f in e.field_violations {
                    v.add(f.field, f.description);
                }
            }
        }
        v.finish()?;
        let credential = if has_password {
            Credential::Password {
                password: SecretString::from(msg.initial_password.clone()),
                permanent: msg.password_is_permanent,
            }
        } else {
            Credential::Invitation
        };
        self.iam
            .authorize(
                &caller,
                &tenant_id,
                Right::USERS_CREATE,
                Target::Department(profile.as_ref().and_then(|p| p.department_id)),
            )
            .await?;
        if !role_ids.is_empty() {
            let department = profile.as_ref().and_then(|p| p.department_id);
            self.iam.authorize(&caller, &tenant_id, Right::ROLES_ASSIGN, Target::Department(department)).await?;
            self.iam.roles_within_own_rights(&caller, &tenant_id, &role_ids, "assign a role").await?;
        }
        let created = self.iam.create_user(&ctx, &tenant_id, profile.expect("checked"), credential, role_ids).await?;
        Ok(Response::new(pb::CreateUserResponse {
            invitation_token: token_text(&created),
            invitation_expire_time: convert::opt_ts(created.token_expire_time),
            user: user_response(created.user),
        }))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        v.finish()?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_VIEW, Target::User(user_id)).await?;
        let user = self.iam.get_user(&tenant_id, user_id).await?;
        Ok(Response::new(pb::GetUserResponse { user: user_response(user) }))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        let mut states = Vec::new();
        for (i, s) in msg.states.iter().enumerate() {
            match pb::UserState::try_from(*s).ok().and_then(convert::state_from_proto) {
                Some(s) => states.push(s),
                None => v.add(format!("states[{i}]"), "must be a UserState other than USER_STATE_UNSPECIFIED"),
            }
        }
        if states.is_empty() {
            states = vec![UserState::Invited, UserState::Active, UserState::Deactivated];
        }
        states.sort_by_key(|s| s.as_str());
        states.dedup();
        let department = v.check("department_id", validate::optional_uuid(&msg.department_id)).flatten();
        if msg.include_subdepartments && department.is_none() {
            v.add("include_subdepartments", "applies only together with department_id");
        }
        let query = v.check("query", validate::text(&msg.query, 200)).filter(|q| !q.is_empty());
        v.finish()?;
        let filters = format!(
            "users|{tenant_id}|{}|{department:?}|{}|{query:?}",
            states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
            msg.include_subdepartments
        );
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        let visible = self.iam.visible_departments(&caller, &tenant_id).await?;
        let filter = UserFilter { states, department_ids: None, query, visible_department_ids: visible };
        let page = self
            .iam
            .list_users(&tenant_id, filter, department.map(|d| (d, msg.include_subdepartments)), after, limit)
            .await?;
        let next_page_token = next_page_token(&page, &filters, |last| last.user_id.to_string());
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.into_iter().map(convert::user_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let u = msg.user.clone().unwrap_or_default();
        let user_id = id(&mut v, "user.user_id", &u.user_id);
        let paths = mask_paths(msg.update_mask.as_ref(), USER_MASK)?;
        let ctx =
            mutation(&req, &caller, &tenant_id, method("UpdateUser"), msg, &msg.request_id, |m| m.request_id.clear())?;
        let patch = user_patch(&mut v, &u, &paths);
        v.finish()?;
        let etag = if msg.etag.is_empty() { &u.etag } else { &msg.etag };
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        if let Some(department) = patch.department_id {
            self.iam.may_move(&caller, &tenant_id, user_id, department).await?;
        }
        let user = self.iam.update_user(&ctx, &tenant_id, user_id, patch, etag).await?;
        Ok(Response::new(pb::UpdateUserResponse { user: user_response(user) }))
    }

    async fn deactivate_user(
        &self,
        req: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::DeactivateUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, reason) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, &msg.reason)?;
        let transfer_to = validate::optional_uuid(&msg.transfer_to_user_id)
            .map_err(|d| Error::invalid_field("transfer_to_user_id", d))?;
        let ctx = mutation(&req, &caller, &tenant_id, method("DeactivateUser"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        let (user, transfer) =
            self.iam.deactivate_user(&ctx, &tenant_id, user_id, &msg.etag, reason, transfer_to).await?;
        Ok(Response::new(pb::DeactivateUserResponse {
            user: user_response(user),
            transfer: transfer.map(convert::transfer_to_proto),
        }))
    }

    async fn reactivate_user(
        &self,
        req: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, reason) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, &msg.reason)?;
        let ctx = mutation(&req, &caller, &tenant_id, method("ReactivateUser"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        let user = self.iam.reactivate_user(&ctx, &tenant_id, user_id, &msg.etag, reason).await?;
        Ok(Response::new(pb::ReactivateUserResponse { user: user_response(user) }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, reason) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, &msg.reason)?;
        let transfer_to = validate::optional_uuid(&msg.transfer_to_user_id)
            .map_err(|d| Error::invalid_field("transfer_to_user_id", d))?;
        let ctx =
            mutation(&req, &caller, &tenant_id, method("DeleteUser"), msg, &msg.request_id, |m| m.request_id.clear())?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_DELETE, Target::User(user_id)).await?;
        let (user, transfer) = self.iam.delete_user(&ctx, &tenant_id, user_id, &msg.etag, reason, transfer_to).await?;
        Ok(Response::new(pb::DeleteUserResponse {
            user: user_response(user),
            transfer: transfer.map(convert::transfer_to_proto),
        }))
    }

    async fn undelete_user(
        &self,
        req: Request<pb::UndeleteUserRequest>,
    ) -> Result<Response<pb::UndeleteUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, _) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, "")?;
        let ctx = mutation(&req, &caller, &tenant_id, method("UndeleteUser"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_DELETE, Target::User(user_id)).await?;
        let user = self.iam.undelete_user(&ctx, &tenant_id, user_id, &msg.etag).await?;
        Ok(Response::new(pb::UndeleteUserResponse { user: user_response(user) }))
    }

    async fn purge_user(&self, req: Request<pb::PurgeUserRequest>) -> Result<Response<pb::PurgeUserResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, _) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, "")?;
        let ctx =
            mutation(&req, &caller, &tenant_id, method("PurgeUser"), msg, &msg.request_id, |m| m.request_id.clear())?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_DELETE, Target::User(user_id)).await?;
        let user = self.iam.purge_user(&ctx, &tenant_id, user_id, &msg.etag).await?;
        Ok(Response::new(pb::PurgeUserResponse { user: user_response(user) }))
    }

    async fn reset_password(
        &self,
        req: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, _) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, "")?;
        let ctx = mutation(&req, &caller, &tenant_id, method("ResetPassword"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        let temporary =
            (!msg.temporary_password.is_empty()).then(|| SecretString::from(msg.temporary_password.clone()));
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        let out = self.iam.reset_password(&ctx, &tenant_id, user_id, temporary).await?;
        Ok(Response::new(pb::ResetPasswordResponse {
            reset_token: token_text(&out),
            reset_token_expire_time: convert::opt_ts(out.token_expire_time),
            user: user_response(out.user),
        }))
    }

    async fn resend_invitation(
        &self,
        req: Request<pb::ResendInvitationRequest>,
    ) -> Result<Response<pb::ResendInvitationResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let (tenant_id, user_id, _) = Self::lifecycle_args(&msg.tenant_id, &msg.user_id, "")?;
        let ctx = mutation(&req, &caller, &tenant_id, method("ResendInvitation"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        let out = self.iam.resend_invitation(&ctx, &tenant_id, user_id).await?;
        Ok(Response::new(pb::ResendInvitationResponse {
            invitation_token: token_text(&out),
            invitation_expire_time: convert::opt_ts(out.token_expire_time),
            user: user_response(out.user),
        }))
    }

    async fn create_department(
        &self,
        req: Request<pb::CreateDepartmentRequest>,
    ) -> Result<Response<pb::CreateDepartmentResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let d = msg.department.clone().unwrap_or_default();
        let name = v.check("department.name", validate::required_text(&d.name, NAME_MAX));
        let parent = v.check("department.parent_department_id", validate::optional_uuid(&d.parent_department_id));
        let head = v.check("department.head_user_id", validate::optional_uuid(&d.head_user_id));
        let ctx = mutation(&req, &caller, &tenant_id, method("CreateDepartment"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        v.finish()?;
        let new = NewDepartment {
            name: name.expect("checked"),
            parent_department_id: parent.expect("checked"),
            head_user_id: head.expect("checked"),
        };
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        let d = self.iam.create_department(&ctx, &tenant_id, new).await?;
        Ok(Response::new(pb::CreateDepartmentResponse { department: Some(convert::department_to_proto(d)) }))
    }

    async fn get_department(
        &self,
        req: Request<pb::GetDepartmentRequest>,
    ) -> Result<Response<pb::GetDepartmentResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let department_id = id(&mut v, "department_id", &msg.department_id);
        v.finish()?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_VIEW, Target::Any).await?;
        let d = self.iam.get_department(&tenant_id, department_id).await?;
        Ok(Response::new(pb::GetDepartmentResponse { department: Some(convert::department_to_proto(d)) }))
    }

    async fn list_departments(
        &self,
        req: Request<pb::ListDepartmentsRequest>,
    ) -> Result<Response<pb::ListDepartmentsResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        let parent = v.check("parent_department_id", validate::optional_uuid(&msg.parent_department_id)).flatten();
        v.finish()?;
        let filters = format!("departments|{tenant_id}|{parent:?}");
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_VIEW, Target::Any).await?;
        let page = self.iam.list_departments(&tenant_id, parent, after, limit).await?;
        let next_page_token = next_page_token(&page, &filters, |last| last.department_id.to_string());
        Ok(Response::new(pb::ListDepartmentsResponse {
            departments: page.items.into_iter().map(convert::department_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_department(
        &self,
        req: Request<pb::UpdateDepartmentRequest>,
    ) -> Result<Response<pb::UpdateDepartmentResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let d = msg.department.clone().unwrap_or_default();
        let department_id = id(&mut v, "department.department_id", &d.department_id);
        let paths = mask_paths(msg.update_mask.as_ref(), &["name", "parent_department_id", "head_user_id"])?;
        let ctx = mutation(&req, &caller, &tenant_id, method("UpdateDepartment"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        let has = |p: &str| paths.iter().any(|x| x == p);
        let mut patch = DepartmentPatch::default();
        if has("name") {
            patch.name = v.check("department.name", validate::required_text(&d.name, NAME_MAX));
        }
        if has("parent_department_id") {
            patch.parent_department_id =
                v.check("department.parent_department_id", validate::optional_uuid(&d.parent_department_id));
        }
        if has("head_user_id") {
            patch.head_user_id = v.check("department.head_user_id", validate::optional_uuid(&d.head_user_id));
        }
        v.finish()?;
        let etag = if msg.etag.is_empty() { &d.etag } else { &msg.etag };
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        let d = self.iam.update_department(&ctx, &tenant_id, department_id, patch, etag).await?;
        Ok(Response::new(pb::UpdateDepartmentResponse { department: Some(convert::department_to_proto(d)) }))
    }

    async fn delete_department(
        &self,
        req: Request<pb::DeleteDepartmentRequest>,
    ) -> Result<Response<pb::DeleteDepartmentResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let department_id = id(&mut v, "department_id", &msg.department_id);
        v.finish()?;
        let ctx = mutation(&req, &caller, &tenant_id, method("DeleteDepartment"), msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.iam.delete_department(&ctx, &tenant_id, department_id, &msg.etag).await?;
        Ok(Response::new(pb::DeleteDepartmentResponse {}))
    }
}
