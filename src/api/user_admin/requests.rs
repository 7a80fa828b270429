//! UserAdmin's requests converted into the commands of `service::users`, every field validated
//! (all bad fields reported at once, under their request paths).

use super::fields::{USER_MASK, profile, user_patch};
use crate::{
    api::{decode_uuid_page_token, mask_paths, page_size, tenant_field as tenant, uuid_field as id},
    domain::{
        Error, Violations,
        department::{DepartmentPatch, NewDepartment},
        user::{Credential, UserState},
        validate,
    },
    proto::v1 as pb,
    service::users::{
        ActivityFilter, ChangeUserState, CreateDepartment, CreateUser, DepartmentRef, ListDepartments, ListUsers,
        ResetPassword, UpdateDepartment, UpdateUser, UserRef,
    },
};
use secrecy::SecretString;

pub(super) const NAME_MAX: usize = 100;
const REASON_MAX: usize = 500;

impl TryFrom<pb::CreateUserRequest> for CreateUser {
    type Error = Error;

    fn try_from(msg: pb::CreateUserRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let profile = profile(&mut v, &msg.user.unwrap_or_default());
        let has_password = !msg.initial_password.is_empty();
        match (has_password, msg.send_invitation) {
            (true, true) => v.add("send_invitation", "give either initial_password or send_invitation, not both"),
            (false, false) => v.add("initial_password", "is required unless send_invitation is true"),
            _ => {}
        }
        if msg.password_is_permanent && !has_password {
            v.add("password_is_permanent", "applies only together with initial_password");
        }
        let role_ids = msg.role_ids.iter().enumerate().map(|(i, r)| id(&mut v, &format!("role_ids[{i}]"), r)).collect();
        let credential = if has_password {
            let password = SecretString::from(msg.initial_password);
            Credential::Password { password, permanent: msg.password_is_permanent }
        } else {
            Credential::Invitation
        };
        Ok(CreateUser { tenant_id, profile, credential: Some(credential), role_ids, invalid: v })
    }
}

/// A request naming one user of a tenant.
fn user_ref(tenant_id: &str, user_id: &str) -> Result<UserRef, Error> {
    let mut v = Violations::default();
    let tenant_id = tenant(&mut v, tenant_id);
    let user_id = id(&mut v, "user_id", user_id);
    v.finish()?;
    Ok(UserRef { tenant_id, user_id })
}

impl TryFrom<pb::GetUserRequest> for UserRef {
    type Error = Error;

    fn try_from(msg: pb::GetUserRequest) -> Result<Self, Error> {
        user_ref(&msg.tenant_id, &msg.user_id)
    }
}

impl TryFrom<pb::ResendInvitationRequest> for UserRef {
    type Error = Error;

    fn try_from(msg: pb::ResendInvitationRequest) -> Result<Self, Error> {
        user_ref(&msg.tenant_id, &msg.user_id)
    }
}

impl TryFrom<pb::ListUsersRequest> for ListUsers {
    type Error = Error;

    fn try_from(msg: pb::ListUsersRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        let mut states = Vec::new();
        for (i, s) in msg.states.iter().enumerate() {
            match pb::UserState::try_from(*s).ok().and_then(crate::api::convert::state_from_proto) {
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
        let activity = activity_filter(&mut v, &msg);
        v.finish()?;
        let filters = format!(
            "users|{tenant_id}|{}|{department:?}|{}|{query:?}|{activity:?}",
            states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
            msg.include_subdepartments
        );
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        let department = department.map(|d| (d, msg.include_subdepartments));
        Ok(ListUsers { tenant_id, states, department, query, activity, after, limit, filters })
    }
}

impl TryFrom<pb::UpdateUserRequest> for UpdateUser {
    type Error = Error;

    fn try_from(msg: pb::UpdateUserRequest) -> Result<Self, Error> {
        let paths = mask_paths(msg.update_mask.as_ref(), USER_MASK)?;
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let u = msg.user.unwrap_or_default();
        let user_id = id(&mut v, "user.user_id", &u.user_id);
        let patch = user_patch(&mut v, &u, &paths);
        v.finish()?;
        let etag = if msg.etag.is_empty() { u.etag } else { msg.etag };
        Ok(UpdateUser { tenant_id, user_id, patch, etag })
    }
}

/// A lifecycle request: ids, etag, and the reason and transfer target where it has them.
fn state_change(
    tenant_id: &str,
    user_id: &str,
    etag: String,
    reason: &str,
    transfer_to: &str,
) -> Result<ChangeUserState, Error> {
    let mut v = Violations::default();
    let tenant_id = tenant(&mut v, tenant_id);
    let user_id = id(&mut v, "user_id", user_id);
    let reason = v.check("reason", validate::text(reason, REASON_MAX)).unwrap_or_default();
    let transfer_to = v.check("transfer_to_user_id", validate::optional_uuid(transfer_to)).flatten();
    v.finish()?;
    Ok(ChangeUserState { tenant_id, user_id, etag, reason, transfer_to })
}

converts! {
    pb::DeactivateUserRequest => ChangeUserState, |m|
        state_change(&m.tenant_id, &m.user_id, m.etag, &m.reason, &m.transfer_to_user_id);
    pb::ReactivateUserRequest => ChangeUserState, |m| state_change(&m.tenant_id, &m.user_id, m.etag, &m.reason, "");
    pb::DeleteUserRequest => ChangeUserState, |m|
        state_change(&m.tenant_id, &m.user_id, m.etag, &m.reason, &m.transfer_to_user_id);
    pb::UndeleteUserRequest => ChangeUserState, |m| state_change(&m.tenant_id, &m.user_id, m.etag, "", "");
}

impl TryFrom<pb::PurgeUserRequest> for ChangeUserState {
    type Error = Error;

    fn try_from(m: pb::PurgeUserRequest) -> Result<Self, Error> {
        state_change(&m.tenant_id, &m.user_id, m.etag, "", "")
    }
}

impl TryFrom<pb::ResetPasswordRequest> for ResetPassword {
    type Error = Error;

    fn try_from(msg: pb::ResetPasswordRequest) -> Result<Self, Error> {
        let UserRef { tenant_id, user_id } = user_ref(&msg.tenant_id, &msg.user_id)?;
        let temporary = (!msg.temporary_password.is_empty()).then(|| SecretString::from(msg.temporary_password));
        Ok(ResetPassword { tenant_id, user_id, temporary })
    }
}

impl TryFrom<pb::CreateDepartmentRequest> for CreateDepartment {
    type Error = Error;

    fn try_from(msg: pb::CreateDepartmentRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let d = msg.department.unwrap_or_default();
        let name = v.check("department.name", validate::required_text(&d.name, NAME_MAX));
        let parent = v.check("department.parent_department_id", validate::optional_uuid(&d.parent_department_id));
        let head = v.check("department.head_user_id", validate::optional_uuid(&d.head_user_id));
        v.finish()?;
        let department = NewDepartment {
            name: name.expect("checked"),
            parent_department_id: parent.expect("checked"),
            head_user_id: head.expect("checked"),
        };
        Ok(CreateDepartment { tenant_id, department })
    }
}

/// A request naming one department of a tenant.
fn department_ref(tenant_id: &str, department_id: &str, etag: String) -> Result<DepartmentRef, Error> {
    let mut v = Violations::default();
    let tenant_id = tenant(&mut v, tenant_id);
    let department_id = id(&mut v, "department_id", department_id);
    v.finish()?;
    Ok(DepartmentRef { tenant_id, department_id, etag })
}

impl TryFrom<pb::GetDepartmentRequest> for DepartmentRef {
    type Error = Error;

    fn try_from(msg: pb::GetDepartmentRequest) -> Result<Self, Error> {
        department_ref(&msg.tenant_id, &msg.department_id, String::new())
    }
}

impl TryFrom<pb::DeleteDepartmentRequest> for DepartmentRef {
    type Error = Error;

    fn try_from(msg: pb::DeleteDepartmentRequest) -> Result<Self, Error> {
        department_ref(&msg.tenant_id, &msg.department_id, msg.etag)
    }
}

impl TryFrom<pb::ListDepartmentsRequest> for ListDepartments {
    type Error = Error;

    fn try_from(msg: pb::ListDepartmentsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        let parent = v.check("parent_department_id", validate::optional_uuid(&msg.parent_department_id)).flatten();
        v.finish()?;
        let filters = format!("departments|{tenant_id}|{parent:?}");
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        Ok(ListDepartments { tenant_id, parent, after, limit, filters })
    }
}

impl TryFrom<pb::UpdateDepartmentRequest> for UpdateDepartment {
    type Error = Error;

    fn try_from(msg: pb::UpdateDepartmentRequest) -> Result<Self, Error> {
        let paths = mask_paths(msg.update_mask.as_ref(), &["name", "parent_department_id", "head_user_id"])?;
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let d = msg.department.unwrap_or_default();
        let department_id = id(&mut v, "department.department_id", &d.department_id);
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
        let etag = if msg.etag.is_empty() { d.etag } else { msg.etag };
        Ok(UpdateDepartment { tenant_id, department_id, patch, etag })
    }
}

/// ListUsers' last-login, second-factor and role filters.
fn activity_filter(v: &mut Violations, msg: &pb::ListUsersRequest) -> ActivityFilter {
    let mut time = |field: &str, t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref()?;
        let parsed = crate::api::convert::from_ts(t);
        if parsed.is_none() {
            v.add(field, "must be a valid timestamp");
        }
        parsed
    };
    let last_login_before = time("last_login_before", &msg.last_login_before);
    let last_login_after = time("last_login_after", &msg.last_login_after);
    if let (Some(b), Some(a)) = (last_login_before, last_login_after)
        && a >= b
    {
        v.add("last_login_after", "must be before last_login_before");
    }
    if msg.never_logged_in && last_login_after.is_some() {
        v.add("never_logged_in", "excludes last_login_after: users who never logged in have no last login");
    }
    let mfa_enrolled = match pb::MfaFilter::try_from(msg.mfa) {
        Ok(pb::MfaFilter::Unspecified) => None,
        Ok(pb::MfaFilter::Enrolled) => Some(true),
        Ok(pb::MfaFilter::NotEnrolled) => Some(false),
        Err(_) => {
            v.add("mfa", "must be a MfaFilter");
            None
        }
    };
    let role_id = v.check("role_id", validate::optional_uuid(&msg.role_id)).flatten();
    ActivityFilter { last_login_before, last_login_after, never_logged_in: msg.never_logged_in, mfa_enrolled, role_id }
}
