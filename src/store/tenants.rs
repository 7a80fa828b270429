//! Tenant rows.

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use super::{
    db::{Tx, map_unique},
    entity::{tenants, users},
};
use crate::domain::{
    Error, Reason, Result,
    tenant::{NewTenant, Suspension, Tenant, TenantSettings},
    user::UserState,
};

fn to_domain(m: tenants::Model, seats_used: i32) -> Result<Tenant> {
    let settings: TenantSettings = serde_json::from_str(&m.settings).map_err(Error::internal)?;
    Ok(Tenant {
        tenant_id: m.tenant_id,
        display_name: m.display_name,
        seat_limit: m.seat_limit,
        seats_used,
        settings,
        create_time: m.create_time,
        update_time: m.update_time,
        version: m.version,
        suspension: match (m.suspend_time, m.suspend_reason) {
            (Some(since), reason) => Some(Suspension { reason: reason.unwrap_or_default(), since }),
            (None, _) => None,
        },
    })
}

pub fn not_found(tenant_id: &str) -> Error {
    Error::not_found(Reason::TenantNotFound, format!("tenant {tenant_id:?} does not exist"))
}

/// Users of the tenant that take a seat (ACTIVE + INVITED).
pub async fn seats_used(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<i32> {
    let n = users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::State.is_in([UserState::Active.as_str(), UserState::Invited.as_str()]))
        .count(conn)
        .await?;
    Ok(n as i32)
}

use sea_orm::PaginatorTrait;

/// The tenant without its seat count (`seats_used` -1): for reads that need its settings or just
/// its existence. Counting seats is a scan of the tenant's users; [`get`] does it.
pub async fn get_settings(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Tenant> {
    let m = tenants::Entity::find_by_id(tenant_id).one(conn).await?.ok_or_else(|| not_found(tenant_id))?;
    to_domain(m, -1)
}

pub async fn get(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Tenant> {
    let m = tenants::Entity::find_by_id(tenant_id).one(conn).await?.ok_or_else(|| not_found(tenant_id))?;
    let seats = seats_used(conn, tenant_id).await?;
    to_domain(m, seats)
}

/// Loads the tenant and, on PostgreSQL, locks its row until the transaction ends. Every write
/// that checks a tenant-wide rule (seats, unique names, the department tree, ...) takes this lock
/// first, so such checks never race. On SQLite the writer lock already serializes them.
///
/// Seats are counted only when the tenant has a seat limit (the only case a check needs them;
/// counting is a scan of the tenant's users, which every transfer batch and import row would pay
/// otherwise): unlimited tenants get `seats_used` -1. [`lock_with_seats`] always counts.
pub async fn lock(tx: &Tx, tenant_id: &str) -> Result<Tenant> {
    lock_counting(tx, tenant_id, false).await
}

/// [`lock`], with `seats_used` always counted.
pub async fn lock_with_seats(tx: &Tx, tenant_id: &str) -> Result<Tenant> {
    lock_counting(tx, tenant_id, true).await
}

async fn lock_counting(tx: &Tx, tenant_id: &str, always: bool) -> Result<Tenant> {
    let m = tenants::Entity::find_by_id(tenant_id)
        .lock_exclusive()
        .one(&**tx)
        .await?
        .ok_or_else(|| not_found(tenant_id))?;
    let seats = if always || m.seat_limit > 0 { seats_used(&**tx, tenant_id).await? } else { -1 };
    to_domain(m, seats)
}

pub async fn insert(tx: &Tx, new: NewTenant) -> Result<Tenant> {
    let t = crate::domain::now();
    let settings = serde_json::to_string(&new.settings).map_err(Error::internal)?;
    let row = tenants::ActiveModel {
        tenant_id: Set(new.tenant_id.clone()),
        display_name: Set(new.display_name),
        seat_limit: Set(new.seat_limit),
        settings: Set(settings),
        version: Set(1),
        policy_version: Set(0),
        create_time: Set(t),
        update_time: Set(t),
        suspend_time: Set(None),
        suspend_reason: Set(None),
    };
    let m = row.insert(&**tx).await.map_err(|e| {
        map_unique(e, &["tenants", "tenant_id"], || {
            Error::already_exists(Reason::TenantAlreadyExists, format!("tenant {:?} already exists", new.tenant_id))
        })
    })?;
    to_domain(m, 0)
}

/// Writes the new values of a tenant read at `expected_version`; bumps the version.
pub async fn update(tx: &Tx, t: &Tenant, expected_version: i64) -> Result<Tenant> {
    let row = tenants::ActiveModel {
        display_name: Set(t.display_name.clone()),
        seat_limit: Set(t.seat_limit),
        settings: Set(serde_json::to_string(&t.settings).map_err(Error::internal)?),
        version: Set(expected_version + 1),
        update_time: Set(crate::domain::now()),
        suspend_time: Set(t.suspension.as_ref().map(|s| s.since)),
        suspend_reason: Set(t.suspension.as_ref().map(|s| s.reason.clone())),
        ..Default::default()
    };
    let done = tenants::Entity::update_many()
        .set(row)
        .filter(tenants::Column::TenantId.eq(t.tenant_id.as_str()))
        .filter(tenants::Column::Version.eq(expected_version))
        .exec(&**tx)
        .await?;
    if done.rows_affected != 1 {
        return Err(Error::etag_mismatch("tenant"));
    }
    get(&**tx, &t.tenant_id).await
}

/// Tenants after `after` in id order; one more than `limit` tells that another page exists.
pub async fn list(conn: &impl ConnectionTrait, after: Option<&str>, limit: u64) -> Result<Vec<Tenant>> {
    let mut q = tenants::Entity::find().order_by_asc(tenants::Column::TenantId).limit(limit);
    if let Some(after) = after {
        q = q.filter(tenants::Column::TenantId.gt(after));
    }
    let rows = q.all(conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        let seats = seats_used(conn, &m.tenant_id).await?;
        out.push(to_domain(m, seats)?);
    }
    Ok(out)
}

/// Every tenant's policy version (the replicas' safety-net poll).
pub async fn policy_versions(conn: &impl ConnectionTrait) -> Result<Vec<(String, i64)>> {
    Ok(tenants::Entity::find()
        .select_only()
        .column(tenants::Column::TenantId)
        .column(tenants::Column::PolicyVersion)
        .into_tuple()
        .all(conn)
        .await?)
}
