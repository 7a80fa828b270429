//! Transfer job rows.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use super::{db::Tx, entity::transfers};
use crate::domain::{
    Error, Reason, Result, now,
    ownership::{ModuleProgress, Transfer, TransferRule, TransferState},
};

pub use transfers::Model as Row;

pub fn not_found(id: Uuid) -> Error {
    Error::not_found(Reason::TransferNotFound, format!("transfer {id} does not exist in this tenant"))
}

pub fn to_domain(m: Row) -> Result<Transfer> {
    Ok(Transfer {
        transfer_id: m.transfer_id,
        tenant_id: m.tenant_id,
        from_user_id: m.from_user_id,
        rules: serde_json::from_str(&m.rules).map_err(Error::internal)?,
        state: TransferState::parse(&m.state)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("bad transfer state {:?}", m.state)))?,
        total: m.total,
        moved: m.moved,
        progress: serde_json::from_str(&m.progress).map_err(Error::internal)?,
        error: m.error,
        create_time: m.create_time,
        update_time: m.update_time,
        start_time: m.start_time,
        end_time: m.end_time,
        version: m.version,
    })
}

pub async fn insert(
    tx: &Tx,
    tenant_id: &str,
    from: Uuid,
    rules: &[TransferRule],
    total: i64,
    request_id: Option<String>,
) -> Result<Transfer> {
    let t = now();
    let row = transfers::ActiveModel {
        transfer_id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id.to_owned()),
        from_user_id: Set(from),
        rules: Set(serde_json::to_string(rules).map_err(Error::internal)?),
        progress: Set("[]".into()),
        state: Set(TransferState::Pending.as_str().into()),
        total: Set(total),
        moved: Set(0),
        error: Set(String::new()),
        cancel_requested: Set(false),
        lease_owner: Set(None),
        lease_expire_time: Set(None),
        request_id: Set(request_id),
        version: Set(1),
        create_time: Set(t),
        update_time: Set(t),
        start_time: Set(None),
        end_time: Set(None),
    };
    to_domain(row.insert(&**tx).await?)
}

pub async fn find(conn: &impl ConnectionTrait, tenant_id: &str, id: Uuid) -> Result<Option<Transfer>> {
    match transfers::Entity::find_by_id(id).one(conn).await?.filter(|m| m.tenant_id == tenant_id) {
        Some(m) => Ok(Some(to_domain(m)?)),
        None => Ok(None),
    }
}

pub async fn row(conn: &impl ConnectionTrait, id: Uuid) -> Result<Option<Row>> {
    Ok(transfers::Entity::find_by_id(id).one(conn).await?)
}

/// The job row, locked until the transaction ends (PostgreSQL; SQLite has one writer anyway).
pub async fn row_for_update(tx: &Tx, id: Uuid) -> Result<Option<Row>> {
    Ok(transfers::Entity::find_by_id(id).lock_exclusive().one(&**tx).await?)
}

/// Gives up `owner`'s claim so that any replica may take the job at once (graceful shutdown).
pub async fn release(tx: &Tx, id: Uuid, owner: &str) -> Result<()> {
    transfers::Entity::update_many()
        .col_expr(transfers::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(transfers::Column::LeaseExpireTime, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(transfers::Column::TransferId.eq(id))
        .filter(transfers::Column::LeaseOwner.eq(owner))
        .exec(&**tx)
        .await?;
    Ok(())
}

/// Newest first, before `before`.
pub async fn list(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    from: Option<Uuid>,
    states: &[TransferState],
    before: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Transfer>> {
    let mut q = transfers::Entity::find()
        .filter(transfers::Column::TenantId.eq(tenant_id))
        .order_by_desc(transfers::Column::TransferId)
        .limit(limit);
    if let Some(f) = from {
        q = q.filter(transfers::Column::FromUserId.eq(f));
    }
    if !states.is_empty() {
        q = q.filter(transfers::Column::State.is_in(states.iter().map(|s| s.as_str())));
    }
    if let Some(b) = before {
        q = q.filter(transfers::Column::TransferId.lt(b));
    }
    q.all(conn).await?.into_iter().map(to_domain).collect()
}

/// Jobs that need a worker: not ended and not claimed (or their claim expired), oldest first.
pub async fn runnable(conn: &impl ConnectionTrait, at: DateTime<Utc>, limit: u64) -> Result<Vec<Uuid>> {
    Ok(transfers::Entity::find()
        .select_only()
        .column(transfers::Column::TransferId)
        .filter(transfers::Column::State.is_in([TransferState::Pending.as_str(), TransferState::Running.as_str()]))
        .filter(
            Condition::any()
                .add(transfers::Column::LeaseExpireTime.is_null())
                .add(transfers::Column::LeaseExpireTime.lt(at)),
        )
        .order_by_asc(transfers::Column::CreateTime)
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await?)
}

/// Claims a job for `owner` until `until` if nobody else holds it; true when claimed. Atomic: the
/// conditional UPDATE is re-checked under the row lock, so two replicas never both win.
pub async fn claim(tx: &Tx, id: Uuid, owner: &str, at: DateTime<Utc>, until: DateTime<Utc>) -> Result<bool> {
    let done = transfers::Entity::update_many()
        .col_expr(transfers::Column::LeaseOwner, Expr::value(owner))
        .col_expr(transfers::Column::LeaseExpireTime, Expr::value(until))
        .filter(transfers::Column::TransferId.eq(id))
        .filter(transfers::Column::State.is_in([TransferState::Pending.as_str(), TransferState::Running.as_str()]))
        .filter(
            Condition::any()
                .add(transfers::Column::LeaseExpireTime.is_null())
                .add(transfers::Column::LeaseExpireTime.lt(at))
                .add(transfers::Column::LeaseOwner.eq(owner)),
        )
        .exec(&**tx)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Saves a job's new state if `owner` still holds its claim (extending it); false otherwise.
pub async fn save_claimed(tx: &Tx, t: &Transfer, cancel_seen: bool, owner: &str, until: DateTime<Utc>) -> Result<bool> {
    let mut q = transfers::Entity::update_many()
        .col_expr(transfers::Column::State, Expr::value(t.state.as_str()))
        .col_expr(transfers::Column::Total, Expr::value(t.total))
        .col_expr(transfers::Column::Moved, Expr::value(t.moved))
        .col_expr(
            transfers::Column::Progress,
            Expr::value(serde_json::to_string(&t.progress).map_err(Error::internal)?),
        )
        .col_expr(transfers::Column::Error, Expr::value(t.error.clone()))
        .col_expr(transfers::Column::StartTime, Expr::value(t.start_time))
        .col_expr(transfers::Column::EndTime, Expr::value(t.end_time))
        .col_expr(transfers::Column::UpdateTime, Expr::value(now()))
        .col_expr(transfers::Column::Version, Expr::col(transfers::Column::Version).add(1))
        .col_expr(transfers::Column::LeaseExpireTime, Expr::value(until))
        .filter(transfers::Column::TransferId.eq(t.transfer_id))
        .filter(transfers::Column::LeaseOwner.eq(owner))
        .filter(transfers::Column::State.is_in([TransferState::Pending.as_str(), TransferState::Running.as_str()]));
    if !cancel_seen {
        // A cancellation that arrived meanwhile wins: the caller sees false and re-reads.
        q = q.filter(transfers::Column::CancelRequested.eq(false));
    }
    Ok(q.exec(&**tx).await?.rows_affected == 1)
}

/// Marks a job for cancellation; a pending one is cancelled at once. Returns the job.
pub async fn request_cancel(tx: &Tx, tenant_id: &str, id: Uuid) -> Result<Transfer> {
    let row = transfers::Entity::find_by_id(id)
        .filter(transfers::Column::TenantId.eq(tenant_id))
        .lock_exclusive()
        .one(&**tx)
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut t = to_domain(row.clone())?;
    if t.state.is_terminal() {
        return Err(Error::precondition(
            Reason::TransferEnded,
            "TRANSFER_STATE",
            format!("transfers/{id}"),
            format!("the transfer has already ended ({})", t.state.as_str()),
        ));
    }
    let mut am = row.into_active_model();
    am.cancel_requested = Set(true);
    am.version = Set(t.version + 1);
    am.update_time = Set(now());
    if t.state == TransferState::Pending {
        t.state = TransferState::Cancelled;
        t.end_time = Some(now());
        am.state = Set(t.state.as_str().into());
        am.end_time = Set(t.end_time);
    }
    to_domain(am.update(&**tx).await?)
}

/// The module's progress entry, created on first use.
pub fn progress_of<'a>(t: &'a mut Transfer, module: &str) -> &'a mut ModuleProgress {
    if let Some(i) = t.progress.iter().position(|p| p.module == module) {
        return &mut t.progress[i];
    }
    t.progress.push(ModuleProgress {
        module: module.to_owned(),
        targets: Vec::new(),
        next: 0,
        moved: 0,
        after: None,
        done: false,
    });
    t.progress.last_mut().expect("just pushed")
}

/// Jobs per state (for metrics).
pub async fn count_by_state(conn: &impl ConnectionTrait) -> Result<Vec<(String, i64)>> {
    Ok(transfers::Entity::find()
        .select_only()
        .column(transfers::Column::State)
        .column_as(Expr::col(transfers::Column::TransferId).count(), "n")
        .group_by(transfers::Column::State)
        .into_tuple()
        .all(conn)
        .await?)
}
