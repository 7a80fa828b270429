//! What the operations on roles, custom modules and assignments are asked to do: requests
//! already converted and validated field by field at the edge (`api::role_admin`).

use uuid::Uuid;

use crate::domain::role::{NewModule, NewRole, RolePatch};

/// A tenant's permission catalog.
pub struct GetCatalog {
    pub tenant_id: String,
}

/// A new custom module.
pub struct CreateModule {
    pub tenant_id: String,
    pub module: NewModule,
}

/// Changes to a custom module (None leaves a field), guarded by its etag.
pub struct UpdateModule {
    pub tenant_id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub actions: Option<Vec<String>>,
    pub etag: String,
}

/// A custom module to delete, guarded by its etag.
pub struct DeleteModule {
    pub tenant_id: String,
    pub name: String,
    pub etag: String,
}

/// A new custom role (its own rights, or a copy of `source_role_id`'s).
pub struct CreateRole {
    pub tenant_id: String,
    pub role: NewRole,
}

/// One role, by id.
pub struct RoleRef {
    pub tenant_id: String,
    pub role_id: Uuid,
}

/// A page of a tenant's roles.
pub struct ListRoles {
    pub tenant_id: String,
    pub after: Option<Uuid>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// Changes to a custom role, guarded by its etag.
pub struct UpdateRole {
    pub tenant_id: String,
    pub role_id: Uuid,
    pub patch: RolePatch,
    pub etag: String,
}

/// A custom role to delete; its holders get `replacement` when given.
pub struct DeleteRole {
    pub tenant_id: String,
    pub role_id: Uuid,
    pub etag: String,
    pub replacement: Option<Uuid>,
}

/// A role given to or taken from a user.
pub struct Assignment {
    pub tenant_id: String,
    pub user_id: Uuid,
    pub role_id: Uuid,
}
