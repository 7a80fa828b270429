//! Department rows and the tree.

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::{
    db::{Tx, map_unique},
    entity::departments,
};
use crate::domain::{Error, Reason, Result, department::Department};

pub use departments::Model as Row;

pub fn not_found(id: impl std::fmt::Display) -> Error {
    Error::not_found(Reason::DepartmentNotFound, format!("department {id} does not exist in this tenant"))
}

pub fn to_domain(m: Row) -> Department {
    Department {
        department_id: m.department_id,
        tenant_id: m.tenant_id,
        name: m.name,
        parent_department_id: m.parent_department_id,
        head_user_id: m.head_user_id,
        create_time: m.create_time,
        update_time: m.update_time,
        version: m.version,
    }
}

pub async fn find(conn: &impl ConnectionTrait, tenant_id: &str, id: Uuid) -> Result<Option<Row>> {
    Ok(departments::Entity::find_by_id(id).one(conn).await?.filter(|m| m.tenant_id == tenant_id))
}

pub async fn get(conn: &impl ConnectionTrait, tenant_id: &str, id: Uuid) -> Result<Row> {
    find(conn, tenant_id, id).await?.ok_or_else(|| not_found(id))
}

fn unique_error(e: sea_orm::DbErr) -> Error {
    map_unique(e, &["name_key", "ux_departments_tenant_name"], || {
        Error::already_exists(Reason::DepartmentNameTaken, "another department of this tenant has this name")
    })
}

pub async fn insert(tx: &Tx, row: Row) -> Result<Row> {
    row.into_active_model().reset_all().insert(&**tx).await.map_err(unique_error)
}

pub async fn update(tx: &Tx, mut row: Row, expected_version: i64) -> Result<Row> {
    row.version = expected_version + 1;
    row.update_time = crate::domain::now();
    let done = departments::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(departments::Column::DepartmentId.eq(row.department_id))
        .filter(departments::Column::Version.eq(expected_version))
        .exec(&**tx)
        .await
        .map_err(unique_error)?;
    if done.rows_affected != 1 {
        return Err(Error::etag_mismatch("department"));
    }
    Ok(row)
}

pub async fn delete(tx: &Tx, id: Uuid, expected_version: i64) -> Result<()> {
    let done = departments::Entity::delete_many()
        .filter(departments::Column::DepartmentId.eq(id))
        .filter(departments::Column::Version.eq(expected_version))
        .exec(&**tx)
        .await?;
    if done.rows_affected != 1 {
        return Err(Error::etag_mismatch("department"));
    }
    Ok(())
}

pub async fn count_children(conn: &impl ConnectionTrait, tenant_id: &str, id: Uuid) -> Result<u64> {
    Ok(departments::Entity::find()
        .filter(departments::Column::TenantId.eq(tenant_id))
        .filter(departments::Column::ParentDepartmentId.eq(id))
        .count(conn)
        .await?)
}

/// Departments after `after` in creation (id) order.
pub async fn list(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    parent: Option<Uuid>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Row>> {
    let mut q = departments::Entity::find()
        .filter(departments::Column::TenantId.eq(tenant_id))
        .order_by_asc(departments::Column::DepartmentId)
        .limit(limit);
    if let Some(parent) = parent {
        q = q.filter(departments::Column::ParentDepartmentId.eq(parent));
    }
    if let Some(after) = after {
        q = q.filter(departments::Column::DepartmentId.gt(after));
    }
    Ok(q.all(conn).await?)
}

/// Every department of the tenant.
pub async fn all(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Row>> {
    Ok(departments::Entity::find().filter(departments::Column::TenantId.eq(tenant_id)).all(conn).await?)
}

/// The tenant's tree as child → parent.
pub async fn parents(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<HashMap<Uuid, Option<Uuid>>> {
    let rows: Vec<(Uuid, Option<Uuid>)> = departments::Entity::find()
        .select_only()
        .column(departments::Column::DepartmentId)
        .column(departments::Column::ParentDepartmentId)
        .filter(departments::Column::TenantId.eq(tenant_id))
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// `root` and every department below it.
pub fn subtree(parents: &HashMap<Uuid, Option<Uuid>>, root: Uuid) -> Vec<Uuid> {
    let mut children: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (&child, parent) in parents {
        if let Some(p) = parent {
            children.entry(*p).or_default().push(child);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied());
        }
        i += 1;
    }
    out
}

/// Depth of `id` (a top-level department is 1), following parents.
pub fn depth(parents: &HashMap<Uuid, Option<Uuid>>, id: Uuid) -> usize {
    let mut depth = 1;
    let mut cur = id;
    while let Some(Some(p)) = parents.get(&cur) {
        depth += 1;
        cur = *p;
        if depth > parents.len() + 1 {
            break; // defensive: a stored cycle cannot loop forever
        }
    }
    depth
}

/// Height of the subtree under `id` (1 for a leaf).
pub fn height(parents: &HashMap<Uuid, Option<Uuid>>, id: Uuid) -> usize {
    subtree(parents, id)
        .iter()
        .map(|d| {
            let mut h = 1;
            let mut cur = *d;
            while cur != id {
                match parents.get(&cur) {
                    Some(Some(p)) => {
                        h += 1;
                        cur = *p;
                    }
                    _ => break,
                }
            }
            h
        })
        .max()
        .unwrap_or(1)
}
