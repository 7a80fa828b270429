//! What the operations on users and departments are asked to do: requests already converted and
//! validated field by field at the edge (`api::user_admin`).

use secrecy::SecretString;
use uuid::Uuid;

use crate::domain::{
    Violations,
    department::{DepartmentPatch, NewDepartment},
    user::{Credential, Profile, UserPatch, UserState},
};

/// A new user. `invalid` holds the bad fields the conversion found: the operation adds the
/// initial password's breaches of the tenant's policy (which only it can read), so the caller
/// learns about every bad field at once; `profile` and `credential` are set when it is empty.
pub struct CreateUser {
    pub tenant_id: String,
    pub profile: Option<Profile>,
    pub credential: Option<Credential>,
    pub role_ids: Vec<Uuid>,
    pub invalid: Violations,
}

/// One user, by id.
pub struct UserRef {
    pub tenant_id: String,
    pub user_id: Uuid,
}

/// A page of a tenant's users.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    pub last_login_before: Option<chrono::DateTime<chrono::Utc>>,
    pub last_login_after: Option<chrono::DateTime<chrono::Utc>>,
    pub never_logged_in: bool,
    pub mfa_enrolled: Option<bool>,
    pub role_id: Option<Uuid>,
}

pub struct ListUsers {
    pub tenant_id: String,
    pub states: Vec<UserState>,
    /// A department, and whether its sub-departments count.
    pub department: Option<(Uuid, bool)>,
    pub query: Option<String>,
    /// Last-login, second-factor and role filters (`UserFilter`'s fields of the same names).
    pub activity: ActivityFilter,
    pub after: Option<Uuid>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// Changes to a user's profile, guarded by its etag.
pub struct UpdateUser {
    pub tenant_id: String,
    pub user_id: Uuid,
    pub patch: UserPatch,
    pub etag: String,
}

/// A lifecycle step (deactivate, reactivate, delete, undelete, purge), guarded by the etag;
/// `reason` and `transfer_to` where the step takes them.
pub struct ChangeUserState {
    pub tenant_id: String,
    pub user_id: Uuid,
    pub etag: String,
    pub reason: String,
    pub transfer_to: Option<Uuid>,
}

/// A password reset: a temporary password, or a reset token when None.
pub struct ResetPassword {
    pub tenant_id: String,
    pub user_id: Uuid,
    pub temporary: Option<SecretString>,
}

/// A new department.
pub struct CreateDepartment {
    pub tenant_id: String,
    pub department: NewDepartment,
}

/// One department, by id (`etag` guards a deletion; empty for reads).
pub struct DepartmentRef {
    pub tenant_id: String,
    pub department_id: Uuid,
    pub etag: String,
}

/// A page of a tenant's departments (children of `parent`, or the roots).
pub struct ListDepartments {
    pub tenant_id: String,
    pub parent: Option<Uuid>,
    pub after: Option<Uuid>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// Changes to a department, guarded by its etag.
pub struct UpdateDepartment {
    pub tenant_id: String,
    pub department_id: Uuid,
    pub patch: DepartmentPatch,
    pub etag: String,
}
