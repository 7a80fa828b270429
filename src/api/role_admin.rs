//! `crm.iam.v1.RoleAdmin`: catalog, custom modules, roles, assignments, effective rights.
//! Requests become the commands of `service::roles` below the handlers; the operations authorize
//! and run them.

use tonic::{Request, Response, Status};

use super::{
    accept, convert, decode_uuid_page_token, mask_paths, next_page_token, page_size, tenant_field as tenant,
    uuid_field as id,
};
use crate::{
    domain::{
        Error, Violations,
        role::{NewModule, NewRole, RolePatch},
        validate,
    },
    proto::v1::{self as pb, role_admin_server::RoleAdmin},
    service::{
        Iam,
        access::Effective,
        roles::{
            Assignment, CreateModule, CreateRole, DeleteModule, DeleteRole, GetCatalog, ListRoles, RoleRef,
            UpdateModule, UpdateRole, check_module, check_permission_shape,
        },
        users::UserRef,
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

fn roles_page(page: crate::service::Page<crate::domain::role::Role>, filters: &str) -> pb::ListRolesResponse {
    let next_page_token = next_page_token(&page, filters, |last| last.role_id.to_string());
    pb::ListRolesResponse { roles: page.items.into_iter().map(convert::role_to_proto).collect(), next_page_token }
}

#[tonic::async_trait]
impl RoleAdmin for RoleAdminApi {
    async fn get_permission_catalog(
        &self,
        req: Request<pb::GetPermissionCatalogRequest>,
    ) -> Result<Response<pb::GetPermissionCatalogResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let modules = self.iam.get_permission_catalog(&call, cmd).await?.into_iter().map(convert::module_to_proto);
        let scopes = [pb::Scope::None, pb::Scope::Own, pb::Scope::Department, pb::Scope::Tenant].map(|s| s as i32);
        Ok(Response::new(pb::GetPermissionCatalogResponse { modules: modules.collect(), scopes: scopes.to_vec() }))
    }

    async fn create_module(
        &self,
        req: Request<pb::CreateModuleRequest>,
    ) -> Result<Response<pb::CreateModuleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let module = self.iam.create_module(&call, cmd).await?;
        Ok(Response::new(pb::CreateModuleResponse { module: Some(convert::module_to_proto(module)) }))
    }

    async fn update_module(
        &self,
        req: Request<pb::UpdateModuleRequest>,
    ) -> Result<Response<pb::UpdateModuleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let module = self.iam.update_module(&call, cmd).await?;
        Ok(Response::new(pb::UpdateModuleResponse { module: Some(convert::module_to_proto(module)) }))
    }

    async fn delete_module(
        &self,
        req: Request<pb::DeleteModuleRequest>,
    ) -> Result<Response<pb::DeleteModuleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        self.iam.delete_module(&call, cmd).await?;
        Ok(Response::new(pb::DeleteModuleResponse {}))
    }

    async fn create_role(
        &self,
        req: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let role = self.iam.create_role(&call, cmd).await?;
        Ok(Response::new(pb::CreateRoleResponse { role: Some(convert::role_to_proto(role)) }))
    }

    async fn get_role(&self, req: Request<pb::GetRoleRequest>) -> Result<Response<pb::GetRoleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let role = self.iam.get_role(&call, cmd).await?;
        Ok(Response::new(pb::GetRoleResponse { role: Some(convert::role_to_proto(role)) }))
    }

    async fn list_roles(&self, req: Request<pb::ListRolesRequest>) -> Result<Response<pb::ListRolesResponse>, Status> {
        let (call, cmd): (_, ListRoles) = accept(req)?;
        let filters = cmd.filters.clone();
        let page = self.iam.list_roles(&call, cmd).await?;
        Ok(Response::new(roles_page(page, &filters)))
    }

    async fn update_role(
        &self,
        req: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::UpdateRoleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let role = self.iam.update_role(&call, cmd).await?;
        Ok(Response::new(pb::UpdateRoleResponse { role: Some(convert::role_to_proto(role)) }))
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        self.iam.delete_role(&call, cmd).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn assign_role(
        &self,
        req: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.assign_role(&call, cmd).await?;
        Ok(Response::new(pb::AssignRoleResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn unassign_role(
        &self,
        req: Request<pb::UnassignRoleRequest>,
    ) -> Result<Response<pb::UnassignRoleResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.unassign_role(&call, cmd).await?;
        Ok(Response::new(pb::UnassignRoleResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn get_effective_permissions(
        &self,
        req: Request<pb::GetEffectivePermissionsRequest>,
    ) -> Result<Response<pb::GetEffectivePermissionsResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let effective = self.iam.get_effective_permissions(&call, cmd).await?;
        Ok(Response::new(effective_to_proto(effective)))
    }
}

fn effective_to_proto(e: Effective) -> pb::GetEffectivePermissionsResponse {
    pb::GetEffectivePermissionsResponse {
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
    }
}

impl TryFrom<pb::GetPermissionCatalogRequest> for GetCatalog {
    type Error = Error;

    fn try_from(msg: pb::GetPermissionCatalogRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        v.finish()?;
        Ok(GetCatalog { tenant_id })
    }
}

impl TryFrom<pb::CreateModuleRequest> for CreateModule {
    type Error = Error;

    fn try_from(msg: pb::CreateModuleRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let m = msg.module.unwrap_or_default();
        check_module(&mut v, Some(&m.name), Some(&m.actions));
        let display_name = v.check("module.display_name", validate::required_text(&m.display_name, 100));
        v.finish()?;
        let module = NewModule { name: m.name, display_name: display_name.expect("checked"), actions: m.actions };
        Ok(CreateModule { tenant_id, module })
    }
}

impl TryFrom<pb::UpdateModuleRequest> for UpdateModule {
    type Error = Error;

    fn try_from(msg: pb::UpdateModuleRequest) -> Result<Self, Error> {
        let paths = mask_paths(msg.update_mask.as_ref(), &["display_name", "actions"])?;
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let m = msg.module.unwrap_or_default();
        let has = |p: &str| paths.iter().any(|x| x == p);
        let display_name = if has("display_name") {
            v.check("module.display_name", validate::required_text(&m.display_name, 100))
        } else {
            None
        };
        let actions = has("actions").then(|| m.actions.clone());
        check_module(&mut v, Some(&m.name), actions.as_deref());
        v.finish()?;
        let etag = if msg.etag.is_empty() { m.etag } else { msg.etag };
        Ok(UpdateModule { tenant_id, name: m.name, display_name, actions, etag })
    }
}

impl TryFrom<pb::DeleteModuleRequest> for DeleteModule {
    type Error = Error;

    fn try_from(msg: pb::DeleteModuleRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        if msg.name.is_empty() {
            v.add("name", "is required");
        }
        v.finish()?;
        Ok(DeleteModule { tenant_id, name: msg.name, etag: msg.etag })
    }
}

impl TryFrom<pb::CreateRoleRequest> for CreateRole {
    type Error = Error;

    fn try_from(msg: pb::CreateRoleRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let r = msg.role.unwrap_or_default();
        let name = v.check("role.name", validate::required_text(&r.name, ROLE_NAME_MAX));
        let description = v.check("role.description", validate::text(&r.description, DESCRIPTION_MAX));
        let source = v.check("source_role_id", validate::optional_uuid(&msg.source_role_id)).flatten();
        let permissions = convert::permissions_from_proto(&mut v, "role.permissions", &r.permissions);
        check_permission_shape(&mut v, "role.permissions", &permissions);
        if source.is_some() && !r.permissions.is_empty() {
            v.add("role.permissions", "must be empty when source_role_id is given (the source's rights are copied)");
        }
        v.finish()?;
        let role = NewRole {
            name: name.expect("checked"),
            description: description.expect("checked"),
            permissions,
            source_role_id: source,
        };
        Ok(CreateRole { tenant_id, role })
    }
}

impl TryFrom<pb::GetRoleRequest> for RoleRef {
    type Error = Error;

    fn try_from(msg: pb::GetRoleRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let role_id = id(&mut v, "role_id", &msg.role_id);
        v.finish()?;
        Ok(RoleRef { tenant_id, role_id })
    }
}

impl TryFrom<pb::ListRolesRequest> for ListRoles {
    type Error = Error;

    fn try_from(msg: pb::ListRolesRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let filters = format!("roles|{tenant_id}");
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        Ok(ListRoles { tenant_id, after, limit, filters })
    }
}

impl TryFrom<pb::UpdateRoleRequest> for UpdateRole {
    type Error = Error;

    fn try_from(msg: pb::UpdateRoleRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let r = msg.role.unwrap_or_default();
        let role_id = id(&mut v, "role.role_id", &r.role_id);
        let paths = mask_paths(msg.update_mask.as_ref(), &["name", "description", "permissions"])?;
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
        let etag = if msg.etag.is_empty() { r.etag } else { msg.etag };
        Ok(UpdateRole { tenant_id, role_id, patch, etag })
    }
}

impl TryFrom<pb::DeleteRoleRequest> for DeleteRole {
    type Error = Error;

    fn try_from(msg: pb::DeleteRoleRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let role_id = id(&mut v, "role_id", &msg.role_id);
        let replacement = v.check("replacement_role_id", validate::optional_uuid(&msg.replacement_role_id)).flatten();
        v.finish()?;
        Ok(DeleteRole { tenant_id, role_id, etag: msg.etag, replacement })
    }
}

/// A request naming a user and a role of a tenant.
fn assignment(tenant_id: &str, user_id: &str, role_id: &str) -> Result<Assignment, Error> {
    let mut v = Violations::default();
    let tenant_id = tenant(&mut v, tenant_id);
    let user_id = id(&mut v, "user_id", user_id);
    let role_id = id(&mut v, "role_id", role_id);
    v.finish()?;
    Ok(Assignment { tenant_id, user_id, role_id })
}

impl TryFrom<pb::AssignRoleRequest> for Assignment {
    type Error = Error;

    fn try_from(msg: pb::AssignRoleRequest) -> Result<Self, Error> {
        assignment(&msg.tenant_id, &msg.user_id, &msg.role_id)
    }
}

impl TryFrom<pb::UnassignRoleRequest> for Assignment {
    type Error = Error;

    fn try_from(msg: pb::UnassignRoleRequest) -> Result<Self, Error> {
        assignment(&msg.tenant_id, &msg.user_id, &msg.role_id)
    }
}

impl TryFrom<pb::GetEffectivePermissionsRequest> for UserRef {
    type Error = Error;

    fn try_from(msg: pb::GetEffectivePermissionsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = id(&mut v, "user_id", &msg.user_id);
        v.finish()?;
        Ok(UserRef { tenant_id, user_id })
    }
}
