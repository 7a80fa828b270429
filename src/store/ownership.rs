//! Ownership rows.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{InsertStatement, OnConflict, Query},
};
use uuid::Uuid;

use super::{
    db::Tx,
    entity::{ownerships, users},
};
use crate::domain::{Result, now, ownership::Ownership, user::UserState};

/// Rows per statement in key lists (well under both databases' parameter limits).
const ROWS_PER_STATEMENT: usize = 1000;

/// Rows per upsert (5 parameters each): one statement for a whole 10,000-record call on
/// PostgreSQL (limit 65,535 parameters), 6,000 on SQLite (limit 32,766).
fn upsert_rows(backend: super::Backend) -> usize {
    match backend {
        super::Backend::Postgres => 10_000,
        super::Backend::Sqlite => 6_000,
    }
}

/// The statements that insert or re-own `rows` (built before the transaction, so the tenant lock
/// is held only while the database works).
pub fn upsert_statements(backend: super::Backend, tenant_id: &str, rows: &[Ownership]) -> Vec<InsertStatement> {
    let t = now();
    rows.chunks(upsert_rows(backend))
        .map(|chunk| {
            let mut insert = Query::insert();
            insert
                .into_table(ownerships::Entity)
                .columns([
                    ownerships::Column::TenantId,
                    ownerships::Column::Module,
                    ownerships::Column::ResourceId,
                    ownerships::Column::OwnerUserId,
                    ownerships::Column::UpdateTime,
                ])
                .on_conflict(
                    OnConflict::columns([
                        ownerships::Column::TenantId,
                        ownerships::Column::Module,
                        ownerships::Column::ResourceId,
                    ])
                    .update_columns([ownerships::Column::OwnerUserId, ownerships::Column::UpdateTime])
                    .to_owned(),
                );
            for r in chunk {
                insert.values_panic([
                    tenant_id.into(),
                    r.module.clone().into(),
                    r.resource_id.clone().into(),
                    r.owner_user_id.into(),
                    t.into(),
                ]);
            }
            insert
        })
        .collect()
}

/// Inserts or re-owns records ([`upsert_statements`]); returns how many rows were written. Every
/// writer of ownership rows holds the tenant lock ([`super::tenants::lock`]), so transfer batches
/// see no concurrent change.
pub async fn upsert(tx: &Tx, statements: &[InsertStatement]) -> Result<u64> {
    let mut written = 0;
    for insert in statements {
        written += tx.execute(insert).await?.rows_affected();
    }
    Ok(written)
}

/// Removes records; returns how many existed.
pub async fn forget(tx: &Tx, tenant_id: &str, refs: &[(String, String)]) -> Result<u64> {
    let mut by_module: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (m, r) in refs {
        by_module.entry(m.as_str()).or_default().push(r.as_str());
    }
    let mut removed = 0;
    for (module, ids) in by_module {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            removed += ownerships::Entity::delete_many()
                .filter(ownerships::Column::TenantId.eq(tenant_id))
                .filter(ownerships::Column::Module.eq(module))
                .filter(ownerships::Column::ResourceId.is_in(chunk.iter().copied()))
                .exec(&**tx)
                .await?
                .rows_affected;
        }
    }
    Ok(removed)
}

/// The owner of a record, if it is registered.
pub async fn owner_of(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    module: &str,
    resource_id: &str,
) -> Result<Option<Uuid>> {
    Ok(ownerships::Entity::find_by_id((tenant_id.to_owned(), module.to_owned(), resource_id.to_owned()))
        .select_only()
        .column(ownerships::Column::OwnerUserId)
        .into_tuple()
        .one(conn)
        .await?)
}

/// A user's records after `(module, resource_id)`, in that order.
pub async fn list(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    user_id: Uuid,
    module: Option<&str>,
    after: Option<(String, String)>,
    limit: u64,
) -> Result<Vec<Ownership>> {
    let mut q = ownerships::Entity::find()
        .filter(ownerships::Column::TenantId.eq(tenant_id))
        .filter(ownerships::Column::OwnerUserId.eq(user_id))
        .order_by_asc(ownerships::Column::Module)
        .order_by_asc(ownerships::Column::ResourceId)
        .limit(limit);
    if let Some(m) = module {
        q = q.filter(ownerships::Column::Module.eq(m));
    }
    if let Some((m, r)) = after {
        q = q.filter(
            Condition::any()
                .add(ownerships::Column::Module.gt(m.clone()))
                .add(Condition::all().add(ownerships::Column::Module.eq(m)).add(ownerships::Column::ResourceId.gt(r))),
        );
    }
    Ok(q.all(conn)
        .await?
        .into_iter()
        .map(|m| Ownership { module: m.module, resource_id: m.resource_id, owner_user_id: m.owner_user_id })
        .collect())
}

/// Records per module of one user (modules with records only, in module order).
pub async fn counts(conn: &impl ConnectionTrait, tenant_id: &str, user_id: Uuid) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = ownerships::Entity::find()
        .select_only()
        .column(ownerships::Column::Module)
        .column_as(ownerships::Column::ResourceId.count(), "n")
        .filter(ownerships::Column::TenantId.eq(tenant_id))
        .filter(ownerships::Column::OwnerUserId.eq(user_id))
        .group_by(ownerships::Column::Module)
        .order_by_asc(ownerships::Column::Module)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows)
}

/// Users after `after` who are neither ACTIVE nor INVITED but own records, with their counts.
pub async fn orphaned(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<(Uuid, Vec<(String, i64)>)>> {
    let inactive = Query::select()
        .column(users::Column::UserId)
        .from(users::Entity)
        .and_where(users::Column::TenantId.eq(tenant_id))
        .and_where(users::Column::State.is_not_in([UserState::Active.as_str(), UserState::Invited.as_str()]))
        .to_owned();
    let mut q = ownerships::Entity::find()
        .select_only()
        .column(ownerships::Column::OwnerUserId)
        .distinct()
        .filter(ownerships::Column::TenantId.eq(tenant_id))
        .filter(ownerships::Column::OwnerUserId.in_subquery(inactive))
        .order_by_asc(ownerships::Column::OwnerUserId)
        .limit(limit);
    if let Some(a) = after {
        q = q.filter(ownerships::Column::OwnerUserId.gt(a));
    }
    let owners: Vec<Uuid> = q.into_tuple().all(conn).await?;
    let mut out = Vec::with_capacity(owners.len());
    for o in owners {
        out.push((o, counts(conn, tenant_id, o).await?));
    }
    Ok(out)
}

/// The first module (in name order, among `modules` when given) in which `user` owns records.
pub async fn first_owned_module(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    user_id: Uuid,
    modules: Option<&[String]>,
) -> Result<Option<String>> {
    let mut q = ownerships::Entity::find()
        .select_only()
        .column(ownerships::Column::Module)
        .filter(ownerships::Column::TenantId.eq(tenant_id))
        .filter(ownerships::Column::OwnerUserId.eq(user_id))
        .order_by_asc(ownerships::Column::Module)
        .limit(1);
    if let Some(m) = modules {
        q = q.filter(ownerships::Column::Module.is_in(m.iter().map(String::as_str)));
    }
    Ok(q.into_tuple().one(conn).await?)
}

/// Up to `limit` record ids of a module owned by `user`, after `after`, in id order.
pub async fn owned_ids(
    tx: &Tx,
    tenant_id: &str,
    module: &str,
    user_id: Uuid,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<String>> {
    let mut q = ownerships::Entity::find()
        .select_only()
        .column(ownerships::Column::ResourceId)
        .filter(ownerships::Column::TenantId.eq(tenant_id))
        .filter(ownerships::Column::OwnerUserId.eq(user_id))
        .filter(ownerships::Column::Module.eq(module))
        .order_by_asc(ownerships::Column::ResourceId)
        .limit(limit);
    if let Some(a) = after {
        q = q.filter(ownerships::Column::ResourceId.gt(a));
    }
    Ok(q.into_tuple().all(&**tx).await?)
}

/// PostgreSQL: refreshes the planner's statistics of the registry. A table that was just bulk
/// loaded has none until autovacuum gets to it, and without them PostgreSQL plans the transfer's
/// primary-key updates as scans of the whole module (seconds per batch instead of milliseconds).
pub async fn refresh_statistics(db: &super::Db) -> Result<()> {
    if db.backend() == super::Backend::Postgres {
        db.conn().execute_unprepared("ANALYZE ownerships").await?;
    }
    Ok(())
}

/// Gives records of a module to `to` by primary key and returns the ids that moved
/// (`UPDATE … RETURNING`). The caller holds the tenant lock and picked `ids` in this transaction
/// ([`owned_ids`]), so they cannot have changed in between: every writer of a tenant's ownerships
/// holds that lock. (No `owner = from` condition: with it PostgreSQL walks the owner's whole index
/// range per statement instead of looking up the keys.)
pub async fn reassign(tx: &Tx, tenant_id: &str, module: &str, to: Uuid, ids: &[String]) -> Result<Vec<String>> {
    let t = now();
    let mut moved = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let update = Query::update()
            .table(ownerships::Entity)
            .value(ownerships::Column::OwnerUserId, to)
            .value(ownerships::Column::UpdateTime, t)
            .and_where(ownerships::Column::TenantId.eq(tenant_id))
            .and_where(ownerships::Column::Module.eq(module))
            .and_where(ownerships::Column::ResourceId.is_in(chunk.iter().map(String::as_str)))
            .returning_col(ownerships::Column::ResourceId)
            .to_owned();
        for r in tx.query_all(&update).await? {
            moved.push(r.try_get_by_index::<String>(0)?);
        }
    }
    moved.sort_unstable();
    Ok(moved)
}

/// The states of the given users of a tenant (users not found are absent).
pub async fn user_states(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, UserState>> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<(Uuid, String)> = users::Entity::find()
            .select_only()
            .column(users::Column::UserId)
            .column(users::Column::State)
            .filter(users::Column::TenantId.eq(tenant_id))
            .filter(users::Column::UserId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(conn)
            .await?;
        for (u, s) in rows {
            if let Some(state) = UserState::parse(&s) {
                out.insert(u, state);
            }
        }
    }
    Ok(out)
}

/// ACTIVE direct members of a department, in user id order.
pub async fn active_members(conn: &impl ConnectionTrait, tenant_id: &str, department_id: Uuid) -> Result<Vec<Uuid>> {
    Ok(users::Entity::find()
        .select_only()
        .column(users::Column::UserId)
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::DepartmentId.eq(department_id))
        .filter(users::Column::State.eq(UserState::Active.as_str()))
        .order_by_asc(users::Column::UserId)
        .into_tuple()
        .all(conn)
        .await?)
}
