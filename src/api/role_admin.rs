//! `crm.iam.v1.RoleAdmin`: catalog, custom modules, roles, assignments, effective rights.

use crate::domain::access::Right;
use tonic::{Request, Response, Status};

use super::{
    caller, convert, decode_uuid_page_token, mask_paths, mutation, next_page_token, page_size, tenant_field as tenant,
    uuid_field as id,
};
use crate::{
    domain::{
        Violations,
        role::{NewModule, NewRole, RolePatch},
        validate,
    },
    proto::v1::{self as pb, role_admin_server::RoleAdmin},
    service::{
        Iam, Target,
        roles::{check_module, check_permission_shape},
    },
};

pub struct RoleAdminApi {
    iam: Iam,
}

impl RoleAdminApi {
    pub fn new(iam: Iam) -> Self {
        RoleAdminApi { iam }
    }
}

const ROLE_NAME_MAX: usize = 100;
const DESCRIPTION_MAX: usize = 1000;

#[tonic::async_trait]
impl RoleAdmin for RoleAdminApi {
    async fn get_permission_catalog(
        &self,
        req: Request<pb::GetPermissionCatalogRequest>,
    ) -> Result<Response<pb::GetPermissionCatalogResponse>, Status> {
        let caller = caller(&req)?;
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &req.get_ref().tenant_id);
        v.finish()?;
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        let modules = self.iam.permission_catalog(&tenant_id).await?;
        Ok(Response::new(pb::GetPermissionCatalogResponse {
            modules: modules.into_iter().map(convert::module_to_proto).collect(),
            scopes: [pb::Scope::None, pb::Scope::Own, pb::Scope::Department, pb::Scope::Tenant]
                .into_iter()
                .map(|s| s as i32)
                .collect(),
        }))
    }

    async fn create_module(
        &self,
        req: Request<pb::CreateModuleRequest>,
    ) -> Result<Response<pb::CreateModuleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let ctx =
            mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/CreateModule", msg, &msg.request_id, |m| {
                m.request_id.clear()
            })?;
        let m = msg.module.clone().unwrap_or_default();
        check_module(&mut v, Some(&m.name), Some(&m.actions));
        let display_name = v.check("module.display_name", validate::required_text(&m.display_name, 100));
        v.finish()?;
        let new = NewModule { name: m.name, display_name: display_name.expect("checked"), actions: m.actions };
        self.iam.authorize(&caller, &tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        let module = self.iam.create_module(&ctx, &tenant_id, new).await?;
        Ok(Response::new(pb::CreateModuleResponse { module: Some(convert::module_to_proto(module)) }))
    }

    async fn update_module(
        &self,
        req: Request<pb::UpdateModuleRequest>,
    ) -> Result<Response<pb::UpdateModuleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let paths = mask_paths(msg.update_mask.as_ref(), &["display_name", "actions"])?;
        let ctx =
            mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/UpdateModule", msg, &msg.request_id, |m| {
                m.request_id.clear()
            })?;
        let m = msg.module.clone().unwrap_or_default();
        let has = |p: &str| paths.iter().any(|x| x == p);
        let display_name = if has("display_name") {
            v.check("module.display_name", validate::required_text(&m.display_name, 100))
        } else {
            None
        };
        let actions = has("actions").then(|| m.actions.clone());
        check_module(&mut v, Some(&m.name), actions.as_deref());
        v.finish()?;
        let etag = if msg.etag.is_empty() { &m.etag } else { &msg.etag };
        self.iam.authorize(&caller, &tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        let module = self.iam.update_module(&ctx, &tenant_id, &m.name, display_name, actions, etag).await?;
        Ok(Response::new(pb::UpdateModuleResponse { module: Some(convert::module_to_proto(module)) }))
    }

    async fn delete_module(
        &self,
        req: Request<pb::DeleteModuleRequest>,
    ) -> Result<Response<pb::DeleteModuleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        if msg.name.is_empty() {
            v.add("name", "is required");
        }
        v.finish()?;
        let ctx =
            mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/DeleteModule", msg, &msg.request_id, |m| {
                m.request_id.clear()
            })?;
        self.iam.authorize(&caller, &tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        self.iam.delete_module(&ctx, &tenant_id, &msg.name, &msg.etag).await?;
        Ok(Response::new(pb::DeleteModuleResponse {}))
    }

    async fn create_role(
        &self,
        req: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let ctx = mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/CreateRole", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        let r = msg.role.clone().unwrap_or_default();
        let name = v.check("role.name", validate::required_text(&r.name, ROLE_NAME_MAX));
        let description = v.check("role.description", validate::text(&r.description, DESCRIPTION_MAX));
        let source = v.check("source_role_id", validate::optional_uuid(&msg.source_role_id)).flatten();
        let permissions = convert::permissions_from_proto(&mut v, "role.permissions", &r.permissions);
        check_permission_shape(&mut v, "role.permissions", &permissions);
        if source.is_some() && !r.permissions.is_empty() {
            v.add("role.permissions", "must be empty when source_role_id is given (the source's rights are copied)");
        }
        v.finish()?;
        let new = NewRole {
            name: name.expect("checked"),
            description: description.expect("checked"),
            permissions,
            source_role_id: source,
        };
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_CREATE, Target::Tenant).await?;
        match new.source_role_id {
            Some(source) => self.iam.roles_within_own_rights(&caller, &tenant_id, &[source], "create a role").await?,
            None => self.iam.within_own_rights(&caller, &tenant_id, &new.permissions, "create a role").await?,
        }
        let role = self.iam.create_role(&ctx, &tenant_id, new).await?;
        Ok(Response::new(pb::CreateRoleResponse { role: Some(convert::role_to_proto(role)) }))
    }

    async fn get_role(&self, req: Request<pb::GetRoleRequest>) -> Result<Response<pb::GetRoleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let role_id = id(&mut v, "role_id", &msg.role_id);
        v.finish()?;
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        let role = self.iam.get_role(&tenant_id, role_id).await?;
        Ok(Response::new(pb::GetRoleResponse { role: Some(convert::role_to_proto(role)) }))
    }

    async fn list_roles(&self, req: Request<pb::ListRolesRequest>) -> Result<Response<pb::ListRolesResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let filters = format!("roles|{tenant_id}");
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        let page = self.iam.list_roles(&tenant_id, after, limit).await?;
        let next_page_token = next_page_token(&page, &filters, |last| last.role_id.to_string());
        Ok(Response::new(pb::ListRolesResponse {
            roles: page.items.into_iter().map(convert::role_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_role(
        &self,
        req: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::UpdateRoleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let r = msg.role.clone().unwrap_or_default();
        let role_id = id(&mut v, "role.role_id", &r.role_id);
        let paths = mask_paths(msg.update_mask.as_ref(), &["name", "description", "permissions"])?;
        let ctx = mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/UpdateRole", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        let has = |p: &str| paths.iter().any(|x| x == p);
        let mut patch = RolePatch::default();
        if has("name") {
            patch.name = v.check("role.name", validate::required_text(&r.name, ROLE_NAME_MAX));
        }
        if has("description") {
            patch.description = v.check("role.description", validate::text(&r.description, DESCRIPTION_MAX));
        }
        if has("permissions") {
            let p = convert::permissions_from_proto(&mut v, "role.permissions", &r.permissions);
            check_permission_shape(&mut v, "role.permissions", &p);
            patch.permissions = Some(p);
        }
        v.finish()?;
        let etag = if msg.etag.is_empty() { &r.etag } else { &msg.etag };
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_EDIT, Target::Tenant).await?;
        // Only a role within one's own rights, and only into one.
        self.iam.roles_within_own_rights(&caller, &tenant_id, &[role_id], "edit a role").await?;
        if let Some(p) = &patch.permissions {
            self.iam.within_own_rights(&caller, &tenant_id, p, "give a role rights").await?;
        }
        let role = self.iam.update_role(&ctx, &tenant_id, role_id, patch, etag).await?;
        Ok(Response::new(pb::UpdateRoleResponse { role: Some(convert::role_to_proto(role)) }))
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let role_id = id(&mut v, "role_id", &msg.role_id);
        let replacement = v.check("replacement_role_id", validate::optional_uuid(&msg.replacement_role_id)).flatten();
        v.finish()?;
        let ctx = mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/DeleteRole", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_DELETE, Target::Tenant).await?;
        let handed: Vec<_> = std::iter::once(role_id).chain(replacement).collect();
        self.iam.roles_within_own_rights(&caller, &tenant_id, &handed, "delete or hand out a role").await?;
        self.iam.delete_role(&ctx, &tenant_id, role_id, &msg.etag, replacement).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn assign_role(
        &self,
        req: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        let role_id = id(&mut v, "role_id", &msg.role_id);
        v.finish()?;
        let ctx = mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/AssignRole", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        // Delegated: roles.assign over the user (their department, or oneself with OWN scope), a
        // user whose rights are within one's own, and a role within one's own.
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_ASSIGN, Target::User(user_id)).await?;
        self.iam.roles_within_own_rights(&caller, &tenant_id, &[role_id], "assign a role").await?;
        let user = self.iam.assign_role(&ctx, &tenant_id, user_id, role_id).await?;
        Ok(Response::new(pb::AssignRoleResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn unassign_role(
        &self,
        req: Request<pb::UnassignRoleRequest>,
    ) -> Result<Response<pb::UnassignRoleResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        let role_id = id(&mut v, "role_id", &msg.role_id);
        v.finish()?;
        let ctx =
            mutation(&req, &caller, &tenant_id, "/crm.iam.v1.RoleAdmin/UnassignRole", msg, &msg.request_id, |m| {
                m.request_id.clear()
            })?;
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_ASSIGN, Target::User(user_id)).await?;
        self.iam.roles_within_own_rights(&caller, &tenant_id, &[role_id], "take a role away").await?;
        let user = self.iam.unassign_role(&ctx, &tenant_id, user_id, role_id).await?;
        Ok(Response::new(pb::UnassignRoleResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn get_effective_permissions(
        &self,
        req: Request<pb::GetEffectivePermissionsRequest>,
    ) -> Result<Response<pb::GetEffectivePermissionsResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        v.finish()?;
        self.iam.authorize(&caller, &tenant_id, Right::ROLES_VIEW, Target::User(user_id)).await?;
        let e = self.iam.effective_permissions(&tenant_id, user_id).await?;
        Ok(Response::new(pb::GetEffectivePermissionsResponse {
            user_id: e.user_id.to_string(),
            active: e.active,
            permissions: e
                .permissions
                .into_iter()
                .map(|(module, action, scope, roles)| pb::EffectivePermission {
                    module,
                    action,
                    scope: convert::scope_to_proto(scope) as i32,
                    role_ids: roles.iter().map(|r| r.to_string()).collect(),
                })
                .collect(),
            department_ids: e.department_ids.iter().map(|d| d.to_string()).collect(),
        }))
    }
}
