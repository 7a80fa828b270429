//! User rows.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Func, LikeExpr},
};
use uuid::Uuid;

use super::{
    db::{Tx, map_unique},
    entity::{user_roles, users},
};
use crate::domain::{
    Error, Reason, Result,
    user::{User, UserState},
};

pub use users::Model as Row;

pub fn not_found(user_id: impl std::fmt::Display) -> Error {
    Error::not_found(Reason::UserNotFound, format!("user {user_id} does not exist in this tenant"))
}

pub fn state(row: &Row) -> Result<UserState> {
    UserState::parse(&row.state)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("bad stored user state {:?}", row.state)))
}

pub fn to_domain(m: Row, role_ids: Vec<Uuid>) -> Result<User> {
    let state = state(&m)?;
    let attributes: BTreeMap<String, String> = serde_json::from_str(&m.attributes).map_err(Error::internal)?;
    let hire_date = match m.hire_date.as_deref() {
        Some(d) => Some(NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(Error::internal)?),
        None => None,
    };
    Ok(User {
        user_id: m.user_id,
        tenant_id: m.tenant_id,
        email: m.email,
        given_name: m.given_name,
        family_name: m.family_name,
        display_name: m.display_name,
        phone: m.phone,
        position: m.position,
        employee_number: m.employee_number,
        department_id: m.department_id,
        hire_date,
        username: m.username,
        external_id: m.external_id,
        state,
        role_ids,
        mfa_enrolled: m.mfa_enrolled,
        must_change_password: m.must_change_password,
        attributes,
        locale: m.locale,
        last_login_time: m.last_login_time,
        create_time: m.create_time,
        update_time: m.update_time,
        deactivate_time: m.deactivate_time,
        delete_time: m.delete_time,
        purge_after: m.purge_after,
        purge_time: m.purge_time,
        version: m.version,
        invitation_delivery: None,
    })
}

pub fn attributes_json(a: &BTreeMap<String, String>) -> String {
    serde_json::to_string(a).expect("string map serializes")
}

pub fn date_text(d: Option<NaiveDate>) -> Option<String> {
    d.map(|d| d.format("%Y-%m-%d").to_string())
}

/// The user's row, if it belongs to the tenant.
pub async fn find(conn: &impl ConnectionTrait, tenant_id: &str, user_id: Uuid) -> Result<Option<Row>> {
    Ok(users::Entity::find_by_id(user_id).one(conn).await?.filter(|m| m.tenant_id == tenant_id))
}

pub async fn get(conn: &impl ConnectionTrait, tenant_id: &str, user_id: Uuid) -> Result<Row> {
    find(conn, tenant_id, user_id).await?.ok_or_else(|| not_found(user_id))
}

/// The user's row, locked until `tx` ends (PostgreSQL; SQLite has one writer anyway), so that a
/// decision on it (a login on the password it verified) cannot interleave with a change to it.
/// Lock order: the user's row before their login state. `FOR NO KEY UPDATE`, like any update of
/// the row: it does not block the `KEY SHARE` lock that the foreign keys of rows referring to the
/// user take (a login state being created elsewhere), which `FOR UPDATE` would, in a deadlock.
pub async fn get_for_update(tx: &super::Tx, tenant_id: &str, user_id: Uuid) -> Result<Row> {
    users::Entity::find_by_id(user_id)
        .lock(sea_orm::sea_query::LockType::NoKeyUpdate)
        .one(&**tx)
        .await?
        .filter(|m| m.tenant_id == tenant_id)
        .ok_or_else(|| not_found(user_id))
}

fn unique_error(e: sea_orm::DbErr) -> Error {
    let e = match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(msg)) if msg.contains("email_skeleton") => {
            return Error::already_exists(
                Reason::EmailTaken,
                "another user of this tenant has an email address that looks the same (look-alike characters)",
            );
        }
        Some(sea_orm::SqlErr::UniqueConstraintViolation(msg)) if msg.contains("username") => {
            return Error::already_exists(Reason::UsernameTaken, "another user of this tenant has this username");
        }
        Some(sea_orm::SqlErr::UniqueConstraintViolation(msg)) if msg.contains("employee_number") => {
            return Error::already_exists(
                Reason::EmployeeNumberTaken,
                "another user of this tenant has this employee number",
            );
        }
        _ => e,
    };
    map_unique(e, &["email_key", "ux_users_tenant_email"], || {
        Error::already_exists(Reason::EmailTaken, "another user of this tenant has this email address")
    })
}

/// Keeps the look-alike key in step with the address.
fn with_skeleton(mut row: Row) -> Row {
    row.email_skeleton = row.email_key.as_deref().map(crate::domain::validate::email_skeleton);
    row
}

pub async fn insert(tx: &Tx, row: Row) -> Result<Row> {
    let row = with_skeleton(row);
    tx.profile_changed(&row.tenant_id, row.user_id);
    row.into_active_model().reset_all().insert(&**tx).await.map_err(unique_error)
}

/// Writes `row` (whose `version` is already the new one) if the stored version is still
/// `expected_version`; otherwise ABORTED.
pub async fn update(tx: &Tx, row: Row, expected_version: i64) -> Result<Row> {
    let mut row = with_skeleton(row);
    tx.profile_changed(&row.tenant_id, row.user_id);
    row.version = expected_version + 1;
    row.update_time = crate::domain::now();
    let done = users::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(users::Column::UserId.eq(row.user_id))
        .filter(users::Column::Version.eq(expected_version))
        .exec(&**tx)
        .await
        .map_err(unique_error)?;
    if done.rows_affected != 1 {
        return Err(Error::etag_mismatch("user"));
    }
    Ok(row)
}

pub use crate::domain::user::UserFilter;

/// Users after `after` in creation (id) order, at most `limit`.
pub async fn list(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    filter: &UserFilter,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Row>> {
    let mut q = users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::State.is_in(filter.states.iter().map(|s| s.as_str())))
        .order_by_asc(users::Column::UserId)
        .limit(limit);
    if let Some(ids) = &filter.department_ids {
        q = q.filter(users::Column::DepartmentId.is_in(ids.iter().copied()));
    }
    if let Some(text) = &filter.query {
        let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let pattern = format!("%{escaped}%");
        let mut any = Condition::any();
        for col in
            [users::Column::Email, users::Column::GivenName, users::Column::FamilyName, users::Column::DisplayName]
        {
            any = any.add(Expr::expr(Func::lower(Expr::col(col))).like(LikeExpr::new(pattern.clone()).escape('\\')));
        }
        q = q.filter(any);
    }
    if let Some(before) = filter.last_login_before {
        q = q.filter(
            Condition::any().add(users::Column::LastLoginTime.is_null()).add(users::Column::LastLoginTime.lt(before)),
        );
    }
    if let Some(since) = filter.last_login_after {
        q = q.filter(users::Column::LastLoginTime.gte(since));
    }
    if filter.never_logged_in {
        q = q.filter(users::Column::LastLoginTime.is_null());
    }
    if let Some(enrolled) = filter.mfa_enrolled {
        q = q.filter(users::Column::MfaEnrolled.eq(enrolled));
    }
    if let Some(role_id) = filter.role_id {
        let holders = sea_orm::sea_query::Query::select()
            .column(user_roles::Column::UserId)
            .from(user_roles::Entity)
            .and_where(Expr::col(user_roles::Column::TenantId).eq(tenant_id))
            .and_where(Expr::col(user_roles::Column::RoleId).eq(role_id))
            .to_owned();
        q = q.filter(users::Column::UserId.in_subquery(holders));
    }
    if let Some(after) = after {
        q = q.filter(users::Column::UserId.gt(after));
    }
    Ok(q.all(conn).await?)
}

/// The user a SCIM `userName` names: by username, or by e-mail address for users without one.
pub async fn find_by_username(conn: &impl ConnectionTrait, tenant_id: &str, value: &str) -> Result<Option<Row>> {
    let Ok(Some((_, key))) = crate::domain::validate::username(value) else { return Ok(None) };
    let rows = users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::State.is_not_in([UserState::Deleted.as_str(), UserState::Purged.as_str()]))
        .filter(
            Condition::any().add(users::Column::UsernameKey.eq(key.as_str())).add(
                Condition::all()
                    .add(users::Column::UsernameKey.is_null())
                    .add(users::Column::EmailKey.eq(value.trim().to_lowercase())),
            ),
        )
        .limit(2)
        .all(conn)
        .await?;
    // A username names its user before another user's address does.
    Ok(rows.iter().find(|r| r.username_key.as_deref() == Some(key.as_str())).or(rows.first()).cloned())
}

/// The user with this identity-provider id (case-exact).
pub async fn find_by_external_id(conn: &impl ConnectionTrait, tenant_id: &str, value: &str) -> Result<Option<Row>> {
    Ok(users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::ExternalId.eq(value))
        .filter(users::Column::State.is_not_in([UserState::Deleted.as_str(), UserState::Purged.as_str()]))
        .one(conn)
        .await?)
}

/// The display names of users, in id order (unknown ids are left out).
pub async fn display_names(conn: &impl ConnectionTrait, tenant_id: &str, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let rows: Vec<(Uuid, String)> = users::Entity::find()
            .select_only()
            .columns([users::Column::UserId, users::Column::DisplayName])
            .filter(users::Column::TenantId.eq(tenant_id))
            .filter(users::Column::UserId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(conn)
            .await?;
        out.extend(rows);
    }
    out.sort();
    Ok(out)
}

/// Users of a tenant.
pub async fn count_in_tenant(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<u64> {
    Ok(users::Entity::find().filter(users::Column::TenantId.eq(tenant_id)).count(conn).await?)
}

/// (user, state, department) of every user of a tenant.
pub async fn facts_of_tenant(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
) -> Result<Vec<(Uuid, UserState, Option<Uuid>)>> {
    let rows: Vec<(Uuid, String, Option<Uuid>)> = users::Entity::find()
        .select_only()
        .column(users::Column::UserId)
        .column(users::Column::State)
        .column(users::Column::DepartmentId)
        .filter(users::Column::TenantId.eq(tenant_id))
        .into_tuple()
        .all(conn)
        .await?;
    rows.into_iter()
        .map(|(u, s, d)| {
            let state =
                UserState::parse(&s).ok_or_else(|| Error::internal(anyhow::anyhow!("bad stored user state {s:?}")))?;
            Ok((u, state, d))
        })
        .collect()
}

/// Users (in any state but PURGED) in a department.
pub async fn count_in_department(conn: &impl ConnectionTrait, tenant_id: &str, department_id: Uuid) -> Result<u64> {
    Ok(users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::DepartmentId.eq(department_id))
        .filter(users::Column::State.ne(UserState::Purged.as_str()))
        .count(conn)
        .await?)
}

/// Records the login of a user whose password `verified_hash` was just verified, if the user is
/// still ACTIVE with that password and without a second factor, and returns the row (locked until
/// `tx` ends, like [`get_for_update`]); None when anything of that changed, or the user has a second
/// factor (the caller then decides on the locked row). One statement for the common login.
pub async fn record_plain_login(
    tx: &Tx,
    tenant_id: &str,
    user_id: Uuid,
    verified_hash: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Row>> {
    let rows = users::Entity::update_many()
        .col_expr(users::Column::LastLoginTime, Some(at).into())
        .filter(users::Column::UserId.eq(user_id))
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::PasswordHash.eq(verified_hash))
        .filter(users::Column::State.eq(UserState::Active.as_str()))
        .filter(users::Column::MfaEnrolled.eq(false))
        .exec_with_returning(&**tx)
        .await?;
    let row = rows.into_iter().next();
    if row.is_some() {
        tx.profile_changed(tenant_id, user_id);
    }
    Ok(row)
}

/// Records a login. Not a profile edit: the version (etag) stays, so a login never makes an
/// administrator's concurrent update fail; the cached profile (which shows the time) is dropped.
pub async fn set_last_login(tx: &Tx, tenant_id: &str, user_id: Uuid, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
    tx.profile_changed(tenant_id, user_id);
    users::Entity::update_many()
        .col_expr(users::Column::LastLoginTime, Some(at).into())
        .filter(users::Column::UserId.eq(user_id))
        .exec(&**tx)
        .await?;
    Ok(())
}

/// Fills in the look-alike key of users stored before it existed (at start; cheap when there is
/// nothing to do). Addresses that already look alike keep none (both stay, as they were) and are
/// counted, so an operator can look at them; returns (filled, look-alikes left).
pub async fn backfill_email_skeletons(db: &crate::store::db::Db) -> Result<(u64, u64)> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
    let (mut filled, mut clashes) = (0, 0);
    let mut after: Option<Uuid> = None;
    loop {
        let mut q = users::Entity::find()
            .select_only()
            .columns([users::Column::UserId, users::Column::EmailKey])
            .filter(users::Column::EmailKey.is_not_null())
            .filter(users::Column::EmailSkeleton.is_null());
        if let Some(a) = after {
            q = q.filter(users::Column::UserId.gt(a));
        }
        let batch: Vec<(Uuid, Option<String>)> =
            q.order_by_asc(users::Column::UserId).limit(500).into_tuple().all(db.conn()).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.0);
        for (id, key) in batch {
            let Some(key) = key else { continue };
            let done = users::Entity::update_many()
                .col_expr(users::Column::EmailSkeleton, crate::domain::validate::email_skeleton(&key).into())
                .filter(users::Column::UserId.eq(id))
                .filter(users::Column::EmailKey.eq(key.as_str()))
                .exec(db.conn())
                .await;
            match done {
                Ok(_) => filled += 1,
                Err(e) if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => {
                    tracing::warn!(user_id = %id, "a stored address looks like another user's of the same tenant; left as it is");
                    clashes += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok((filled, clashes))
}

/// DELETED users whose restore window has passed by `at` and who own no records (those wait
/// until a transfer has taken them), the longest overdue first: (user id, tenant id).
pub async fn purge_due(
    conn: &impl ConnectionTrait,
    at: chrono::DateTime<chrono::Utc>,
    limit: u64,
) -> Result<Vec<(Uuid, String)>> {
    use sea_orm::{QueryOrder, QuerySelect, sea_query::ExprTrait};

    use super::entity::ownerships;

    Ok(users::Entity::find()
        .select_only()
        .column(users::Column::UserId)
        .column(users::Column::TenantId)
        .filter(users::Column::State.eq(crate::domain::user::UserState::Deleted.as_str()))
        .filter(users::Column::PurgeAfter.lte(at))
        // Users who still own records wait until a transfer has taken them.
        .filter(
            sea_orm::sea_query::Expr::exists(
                sea_orm::sea_query::Query::select()
                    .expr(sea_orm::sea_query::Expr::val(1))
                    .from(ownerships::Entity)
                    .and_where(
                        sea_orm::sea_query::Expr::col((ownerships::Entity, ownerships::Column::OwnerUserId))
                            .equals((users::Entity, users::Column::UserId)),
                    )
                    .to_owned(),
            )
            .not(),
        )
        .order_by_asc(users::Column::PurgeAfter)
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await?)
}
