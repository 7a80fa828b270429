//! Roles, role assignments and tenant-defined modules.

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
    sea_query::{Expr, OnConflict, Query},
};
use uuid::Uuid;

use super::{
    db::{Tx, map_unique},
    entity::{modules, roles, user_roles, users},
};
use crate::domain::{
    Error, Reason, Result,
    access::{Module, Permission, Template, builtin_modules},
    now,
    role::Role,
    user::UserState,
};

pub use roles::Model as Row;

/// Namespace of the deterministic ids of built-in roles.
const BUILTIN_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_93b4_4e0b_8d51_7c3e_0a9f_2d64);

/// The id of a built-in role: the same on every replica and every start, so creating the
/// built-in roles is naturally idempotent.
pub fn builtin_role_id(tenant_id: &str, template: Template) -> Uuid {
    Uuid::new_v5(&BUILTIN_NAMESPACE, format!("{tenant_id}/{}", template.name()).as_bytes())
}

pub fn not_found(id: impl std::fmt::Display) -> Error {
    Error::not_found(Reason::RoleNotFound, format!("role {id} does not exist in this tenant"))
}

fn stored_permissions(row: &Row) -> Result<Vec<Permission>> {
    serde_json::from_str(&row.permissions).map_err(Error::internal)
}

/// A role's rights: the template's for built-in roles, the stored list otherwise.
pub fn permissions(row: &Row, catalog: &[Module]) -> Result<Vec<Permission>> {
    match row.builtin.as_deref().and_then(Template::parse) {
        Some(t) => Ok(t.permissions(catalog)),
        None => stored_permissions(row),
    }
}

pub fn to_domain(row: Row, catalog: &[Module], user_count: u64) -> Result<Role> {
    let permissions = permissions(&row, catalog)?;
    Ok(Role {
        builtin: row.builtin.as_deref().and_then(Template::parse),
        role_id: row.role_id,
        tenant_id: row.tenant_id,
        name: row.name,
        description: row.description,
        permissions,
        user_count,
        create_time: row.create_time,
        update_time: row.update_time,
        version: row.version,
    })
}

/// Creates the built-in roles of a tenant that are missing.
pub async fn ensure_builtin(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<()> {
    let t = now();
    let mut insert = Query::insert();
    insert
        .into_table(roles::Entity)
        .columns([
            roles::Column::RoleId,
            roles::Column::TenantId,
            roles::Column::Name,
            roles::Column::NameKey,
            roles::Column::Description,
            roles::Column::Builtin,
            roles::Column::Permissions,
            roles::Column::Version,
            roles::Column::CreateTime,
            roles::Column::UpdateTime,
        ])
        .on_conflict(OnConflict::column(roles::Column::RoleId).do_nothing().to_owned());
    for template in Template::ALL {
        insert.values_panic([
            builtin_role_id(tenant_id, template).into(),
            tenant_id.into(),
            template.name().into(),
            template.name().into(),
            template.description().into(),
            template.name().into(),
            "[]".into(),
            1i64.into(),
            t.into(),
            t.into(),
        ]);
    }
    conn.execute(&insert).await?;
    Ok(())
}

pub async fn find(conn: &impl ConnectionTrait, tenant_id: &str, role_id: Uuid) -> Result<Option<Row>> {
    Ok(roles::Entity::find_by_id(role_id).one(conn).await?.filter(|m| m.tenant_id == tenant_id))
}

pub async fn get(conn: &impl ConnectionTrait, tenant_id: &str, role_id: Uuid) -> Result<Row> {
    find(conn, tenant_id, role_id).await?.ok_or_else(|| not_found(role_id))
}

/// Every role of the tenant.
pub async fn all(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Row>> {
    Ok(roles::Entity::find().filter(roles::Column::TenantId.eq(tenant_id)).all(conn).await?)
}

pub async fn list(conn: &impl ConnectionTrait, tenant_id: &str, after: Option<Uuid>, limit: u64) -> Result<Vec<Row>> {
    let mut q = roles::Entity::find()
        .filter(roles::Column::TenantId.eq(tenant_id))
        .order_by_asc(roles::Column::RoleId)
        .limit(limit);
    if let Some(after) = after {
        q = q.filter(roles::Column::RoleId.gt(after));
    }
    Ok(q.all(conn).await?)
}

fn unique_error(e: sea_orm::DbErr) -> Error {
    map_unique(e, &["name_key", "ux_roles_tenant_name"], || {
        Error::already_exists(Reason::RoleNameTaken, "another role of this tenant has this name")
    })
}

pub async fn insert(tx: &Tx, row: Row) -> Result<Row> {
    row.into_active_model().reset_all().insert(&**tx).await.map_err(unique_error)
}

pub async fn update(tx: &Tx, mut row: Row, expected_version: i64) -> Result<Row> {
    row.version = expected_version + 1;
    row.update_time = now();
    let done = roles::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(roles::Column::RoleId.eq(row.role_id))
        .filter(roles::Column::Version.eq(expected_version))
        .exec(&**tx)
        .await
        .map_err(unique_error)?;
    if done.rows_affected != 1 {
        return Err(Error::etag_mismatch("role"));
    }
    Ok(row)
}

/// Sets the SCIM `externalId` of a role.
pub async fn set_external_id(tx: &Tx, role_id: Uuid, external_id: Option<String>) -> Result<()> {
    roles::Entity::update_many()
        .col_expr(roles::Column::ExternalId, Expr::value(external_id))
        .filter(roles::Column::RoleId.eq(role_id))
        .exec(&**tx)
        .await?;
    Ok(())
}

pub async fn delete(tx: &Tx, role_id: Uuid) -> Result<()> {
    roles::Entity::delete_by_id(role_id).exec(&**tx).await?;
    Ok(())
}

/// How many users hold each role of the tenant.
pub async fn user_counts(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<HashMap<Uuid, u64>> {
    let rows: Vec<(Uuid, i64)> = user_roles::Entity::find()
        .select_only()
        .column(user_roles::Column::RoleId)
        .column_as(user_roles::Column::UserId.count(), "n")
        .filter(user_roles::Column::TenantId.eq(tenant_id))
        .group_by(user_roles::Column::RoleId)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|(r, n)| (r, n as u64)).collect())
}

pub async fn user_count(conn: &impl ConnectionTrait, role_id: Uuid) -> Result<u64> {
    Ok(user_roles::Entity::find().filter(user_roles::Column::RoleId.eq(role_id)).count(conn).await?)
}

/// The users holding a role.
pub async fn holders(conn: &impl ConnectionTrait, role_id: Uuid) -> Result<Vec<Uuid>> {
    Ok(user_roles::Entity::find()
        .select_only()
        .column(user_roles::Column::UserId)
        .filter(user_roles::Column::RoleId.eq(role_id))
        .into_tuple()
        .all(conn)
        .await?)
}

/// The roles of one user.
pub async fn of_user(conn: &impl ConnectionTrait, user_id: Uuid) -> Result<Vec<Uuid>> {
    let mut ids: Vec<Uuid> = user_roles::Entity::find()
        .select_only()
        .column(user_roles::Column::RoleId)
        .filter(user_roles::Column::UserId.eq(user_id))
        .into_tuple()
        .all(conn)
        .await?;
    ids.sort();
    Ok(ids)
}

/// The roles of several users.
pub async fn of_users(conn: &impl ConnectionTrait, user_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<Uuid>>> {
    let mut out: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    if user_ids.is_empty() {
        return Ok(out);
    }
    let rows: Vec<(Uuid, Uuid)> = user_roles::Entity::find()
        .select_only()
        .column(user_roles::Column::UserId)
        .column(user_roles::Column::RoleId)
        .filter(user_roles::Column::UserId.is_in(user_ids.iter().copied()))
        .into_tuple()
        .all(conn)
        .await?;
    for (u, r) in rows {
        out.entry(u).or_default().push(r);
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// The roles of every user of a tenant.
pub async fn of_tenant_users(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<HashMap<Uuid, Vec<Uuid>>> {
    let rows: Vec<(Uuid, Uuid)> = user_roles::Entity::find()
        .select_only()
        .column(user_roles::Column::UserId)
        .column(user_roles::Column::RoleId)
        .filter(user_roles::Column::TenantId.eq(tenant_id))
        .into_tuple()
        .all(conn)
        .await?;
    let mut out: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (u, r) in rows {
        out.entry(u).or_default().push(r);
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// Gives a user a role; false when the user already had it.
pub async fn assign(tx: &Tx, tenant_id: &str, user_id: Uuid, role_id: Uuid) -> Result<bool> {
    tx.profile_changed(tenant_id, user_id);
    let insert = Query::insert()
        .into_table(user_roles::Entity)
        .columns([
            user_roles::Column::UserId,
            user_roles::Column::RoleId,
            user_roles::Column::TenantId,
            user_roles::Column::CreateTime,
        ])
        .values_panic([user_id.into(), role_id.into(), tenant_id.into(), now().into()])
        .on_conflict(
            OnConflict::columns([user_roles::Column::UserId, user_roles::Column::RoleId]).do_nothing().to_owned(),
        )
        .to_owned();
    Ok(tx.execute(&insert).await?.rows_affected() == 1)
}

/// Takes a role from a user; false when the user did not have it.
pub async fn unassign(tx: &Tx, tenant_id: &str, user_id: Uuid, role_id: Uuid) -> Result<bool> {
    tx.profile_changed(tenant_id, user_id);
    let done = user_roles::Entity::delete_many()
        .filter(user_roles::Column::UserId.eq(user_id))
        .filter(user_roles::Column::RoleId.eq(role_id))
        .exec(&**tx)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Removes every role of a user (purge).
pub async fn unassign_all(tx: &Tx, tenant_id: &str, user_id: Uuid) -> Result<()> {
    tx.profile_changed(tenant_id, user_id);
    user_roles::Entity::delete_many().filter(user_roles::Column::UserId.eq(user_id)).exec(&**tx).await?;
    Ok(())
}

/// ACTIVE users of the tenant holding the administrator role, other than `except`.
pub async fn other_active_admins(conn: &impl ConnectionTrait, tenant_id: &str, except: Uuid) -> Result<u64> {
    let admin = builtin_role_id(tenant_id, Template::Administrator);
    let active = Query::select()
        .column(users::Column::UserId)
        .from(users::Entity)
        .and_where(users::Column::TenantId.eq(tenant_id))
        .and_where(users::Column::State.eq(UserState::Active.as_str()))
        .to_owned();
    Ok(user_roles::Entity::find()
        .filter(user_roles::Column::RoleId.eq(admin))
        .filter(user_roles::Column::UserId.ne(except))
        .filter(user_roles::Column::UserId.in_subquery(active))
        .count(conn)
        .await?)
}

// ---- modules ----

pub fn module_not_found(name: &str) -> Error {
    Error::not_found(Reason::ModuleNotFound, format!("module {name:?} does not exist in this tenant"))
}

fn module_to_domain(m: modules::Model) -> Result<Module> {
    Ok(Module {
        actions: serde_json::from_str(&m.actions).map_err(Error::internal)?,
        name: m.name,
        display_name: m.display_name,
        builtin: false,
        version: m.version,
    })
}

/// The tenant's catalog: built-in modules, then its own in name order.
pub async fn catalog(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Module>> {
    let mut out = builtin_modules();
    let custom = modules::Entity::find()
        .filter(modules::Column::TenantId.eq(tenant_id))
        .order_by_asc(modules::Column::Name)
        .all(conn)
        .await?;
    for m in custom {
        out.push(module_to_domain(m)?);
    }
    Ok(out)
}

pub async fn find_module(conn: &impl ConnectionTrait, tenant_id: &str, name: &str) -> Result<Option<Module>> {
    match modules::Entity::find_by_id((tenant_id.to_owned(), name.to_owned())).one(conn).await? {
        Some(m) => Ok(Some(module_to_domain(m)?)),
        None => Ok(None),
    }
}

pub async fn insert_module(tx: &Tx, tenant_id: &str, m: &Module) -> Result<Module> {
    let t = now();
    let row = modules::ActiveModel {
        tenant_id: Set(tenant_id.to_owned()),
        name: Set(m.name.clone()),
        display_name: Set(m.display_name.clone()),
        actions: Set(serde_json::to_string(&m.actions).map_err(Error::internal)?),
        version: Set(1),
        create_time: Set(t),
        update_time: Set(t),
    };
    let row = row.insert(&**tx).await.map_err(|e| {
        map_unique(e, &["modules", "PRIMARY", "pkey"], || {
            Error::already_exists(Reason::ModuleAlreadyExists, format!("module {:?} already exists", m.name))
        })
    })?;
    module_to_domain(row)
}

pub async fn update_module(tx: &Tx, tenant_id: &str, m: &Module) -> Result<Module> {
    let row = modules::ActiveModel {
        display_name: Set(m.display_name.clone()),
        actions: Set(serde_json::to_string(&m.actions).map_err(Error::internal)?),
        version: Set(m.version + 1),
        update_time: Set(now()),
        ..Default::default()
    };
    let done = modules::Entity::update_many()
        .set(row)
        .filter(modules::Column::TenantId.eq(tenant_id))
        .filter(modules::Column::Name.eq(m.name.as_str()))
        .filter(modules::Column::Version.eq(m.version))
        .exec(&**tx)
        .await?;
    if done.rows_affected != 1 {
        return Err(Error::etag_mismatch("module"));
    }
    find_module(&**tx, tenant_id, &m.name).await?.ok_or_else(|| module_not_found(&m.name))
}

pub async fn delete_module(tx: &Tx, tenant_id: &str, name: &str) -> Result<()> {
    modules::Entity::delete_by_id((tenant_id.to_owned(), name.to_owned())).exec(&**tx).await?;
    Ok(())
}

/// Tenants that lack the built-in roles (created by older versions).
pub async fn tenants_without_builtin_roles(conn: &impl ConnectionTrait) -> Result<Vec<String>> {
    use super::entity::tenants;
    use sea_orm::{QuerySelect, sea_query::Query};

    let with_roles = Query::select()
        .column(roles::Column::TenantId)
        .from(roles::Entity)
        .and_where(roles::Column::Builtin.eq(Template::Administrator.name()))
        .to_owned();
    Ok(tenants::Entity::find()
        .select_only()
        .column(tenants::Column::TenantId)
        .filter(tenants::Column::TenantId.not_in_subquery(with_roles))
        .into_tuple()
        .all(conn)
        .await?)
}
