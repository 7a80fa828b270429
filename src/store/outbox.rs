//! The notifications outbox: rows written in the transaction of the change that needs the
//! message, claimed by lease by the delivery worker of any replica.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use super::{db::Tx, entity::notifications};
use crate::domain::{
    Error, Reason, Result,
    notification::{Notification, NotificationFilter, NotificationKind, NotificationState},
    now,
};

pub use notifications::Model as Row;

pub fn not_found(id: Uuid) -> Error {
    Error::not_found(Reason::NotificationNotFound, format!("notification {id} does not exist in this tenant"))
}

pub fn to_domain(r: Row) -> Result<Notification> {
    let bad = |what: &str, v: &str| Error::internal(anyhow::anyhow!("bad stored notification {what} {v:?}"));
    Ok(Notification {
        notification_id: r.notification_id,
        kind: r.kind.parse().map_err(|_| bad("kind", &r.kind))?,
        state: r.state.parse().map_err(|_| bad("state", &r.state))?,
        tenant_id: r.tenant_id,
        user_id: r.user_id,
        channel: r.channel,
        recipient: r.recipient,
        locale: r.locale,
        attempts: r.attempts,
        last_error: r.last_error,
        next_attempt_time: r.next_attempt_time,
        create_time: r.create_time,
        update_time: r.update_time,
        sent_time: r.sent_time,
    })
}

/// A message to queue.
pub struct NewNotification {
    pub tenant_id: String,
    pub user_id: Option<Uuid>,
    pub kind: NotificationKind,
    pub channel: &'static str,
    pub recipient: String,
    pub locale: String,
    pub variables: serde_json::Value,
    /// The id is chosen by the caller, so a sealed secret can be bound to it.
    pub notification_id: Uuid,
    pub secret: Option<String>,
    pub give_up_time: DateTime<Utc>,
}

/// Queues a message in the caller's transaction (it is sent only if that commits).
pub async fn insert(tx: &Tx, n: NewNotification) -> Result<Uuid> {
    let t = now();
    notifications::ActiveModel {
        notification_id: Set(n.notification_id),
        tenant_id: Set(n.tenant_id),
        user_id: Set(n.user_id),
        kind: Set(n.kind.as_str().to_owned()),
        channel: Set(n.channel.to_owned()),
        recipient: Set(n.recipient),
        locale: Set(n.locale),
        variables: Set(n.variables.to_string()),
        secret: Set(n.secret),
        state: Set(NotificationState::Pending.as_str().to_owned()),
        attempts: Set(0),
        last_error: Set(None),
        next_attempt_time: Set(t),
        give_up_time: Set(n.give_up_time),
        lease_owner: Set(None),
        lease_expire_time: Set(None),
        create_time: Set(t),
        update_time: Set(t),
        sent_time: Set(None),
    }
    .insert(&**tx)
    .await?;
    tx.outbox_queued.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(n.notification_id)
}

/// Erases the undelivered tokens of a user's earlier messages of these kinds (a new invitation
/// or reset makes the old token useless) and marks those messages FAILED ("superseded").
pub async fn supersede(tx: &Tx, user_id: Uuid, kinds: &[NotificationKind]) -> Result<u64> {
    let r = notifications::Entity::update_many()
        .col_expr(notifications::Column::State, Expr::value(NotificationState::Failed.as_str()))
        .col_expr(notifications::Column::Secret, Expr::value(Option::<String>::None))
        .col_expr(notifications::Column::LastError, Expr::value("superseded by a newer message"))
        .col_expr(notifications::Column::UpdateTime, Expr::value(now()))
        .filter(notifications::Column::UserId.eq(user_id))
        .filter(notifications::Column::Kind.is_in(kinds.iter().map(|k| k.as_str())))
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected)
}

/// A purge: the user's messages lose the address, the name and any token; pending ones fail.
pub async fn erase_user(tx: &Tx, user_id: Uuid) -> Result<()> {
    let t = now();
    notifications::Entity::update_many()
        .col_expr(notifications::Column::State, Expr::value(NotificationState::Failed.as_str()))
        .col_expr(notifications::Column::LastError, Expr::value("the user was purged"))
        .filter(notifications::Column::UserId.eq(user_id))
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .exec(&**tx)
        .await?;
    notifications::Entity::update_many()
        .col_expr(notifications::Column::Recipient, Expr::value("[redacted]"))
        .col_expr(notifications::Column::Variables, Expr::value("{}"))
        .col_expr(notifications::Column::Secret, Expr::value(Option::<String>::None))
        .col_expr(notifications::Column::UpdateTime, Expr::value(t))
        .filter(notifications::Column::UserId.eq(user_id))
        .exec(&**tx)
        .await?;
    Ok(())
}

/// Nobody holds it at `at` (never claimed, or its holder's lease ran out).
fn unclaimed(at: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(notifications::Column::LeaseExpireTime.is_null())
        .add(notifications::Column::LeaseExpireTime.lt(at))
}

/// Due messages nobody holds (or whose holder's lease ran out), oldest first.
pub async fn due(conn: &impl ConnectionTrait, at: DateTime<Utc>, limit: u64) -> Result<Vec<Uuid>> {
    Ok(notifications::Entity::find()
        .select_only()
        .column(notifications::Column::NotificationId)
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notifications::Column::NextAttemptTime.lte(at))
        .filter(unclaimed(at))
        .order_by_asc(notifications::Column::NextAttemptTime)
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await?)
}

/// When the earliest pending message falls due (the worker sleeps until then at most).
pub async fn next_due(conn: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>> {
    Ok(notifications::Entity::find()
        .select_only()
        .column(notifications::Column::NextAttemptTime)
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .order_by_asc(notifications::Column::NextAttemptTime)
        .limit(1)
        .into_tuple()
        .one(conn)
        .await?)
}

/// Claims those of `ids` still due and free for `owner` until `until`, and returns them, oldest
/// first (one UPDATE: each row goes to exactly one claimant, whoever else tries at the same time).
pub async fn claim(tx: &Tx, ids: &[Uuid], owner: &str, at: DateTime<Utc>, until: DateTime<Utc>) -> Result<Vec<Row>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = notifications::Entity::update_many()
        .col_expr(notifications::Column::LeaseOwner, Expr::value(owner))
        .col_expr(notifications::Column::LeaseExpireTime, Expr::value(until))
        .filter(notifications::Column::NotificationId.is_in(ids.iter().copied()))
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notifications::Column::NextAttemptTime.lte(at))
        .filter(unclaimed(at))
        .exec_with_returning(&**tx)
        .await?;
    rows.sort_by_key(|r| (r.next_attempt_time, r.notification_id));
    Ok(rows)
}

/// What became of a claimed delivery attempt.
#[derive(Clone)]
pub enum Attempt {
    Sent,
    /// Try again at this time.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// No more tries.
    Failed {
        error: String,
    },
}

/// Records messages `owner` holds as sent, in one statement (their tokens erased); returns the
/// ids it still held.
pub async fn finish_sent(tx: &Tx, ids: &[Uuid], owner: &str) -> Result<Vec<Uuid>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let t = now();
    let rows = notifications::Entity::update_many()
        .col_expr(notifications::Column::Attempts, Expr::col(notifications::Column::Attempts).add(1))
        .col_expr(notifications::Column::UpdateTime, Expr::value(t))
        .col_expr(notifications::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(notifications::Column::LeaseExpireTime, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(notifications::Column::State, Expr::value(NotificationState::Sent.as_str()))
        .col_expr(notifications::Column::SentTime, Expr::value(t))
        .col_expr(notifications::Column::LastError, Expr::value(Option::<String>::None))
        .col_expr(notifications::Column::Secret, Expr::value(Option::<String>::None))
        .filter(notifications::Column::NotificationId.is_in(ids.iter().copied()))
        .filter(notifications::Column::LeaseOwner.eq(owner))
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .exec_with_returning(&**tx)
        .await?;
    Ok(rows.into_iter().map(|r| r.notification_id).collect())
}

/// Records an attempt of a message `owner` holds; the token is erased unless it retries. False
/// when the claim was lost meanwhile (another replica holds it now).
pub async fn finish(tx: &Tx, id: Uuid, owner: &str, attempt: Attempt) -> Result<bool> {
    let t = now();
    let mut q = notifications::Entity::update_many()
        .col_expr(notifications::Column::Attempts, Expr::col(notifications::Column::Attempts).add(1))
        .col_expr(notifications::Column::UpdateTime, Expr::value(t))
        .col_expr(notifications::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(notifications::Column::LeaseExpireTime, Expr::value(Option::<DateTime<Utc>>::None));
    let erase = Expr::value(Option::<String>::None);
    q = match attempt {
        Attempt::Sent => q
            .col_expr(notifications::Column::State, Expr::value(NotificationState::Sent.as_str()))
            .col_expr(notifications::Column::SentTime, Expr::value(t))
            .col_expr(notifications::Column::LastError, Expr::value(Option::<String>::None))
            .col_expr(notifications::Column::Secret, erase),
        Attempt::Retry { error, at } => q
            .col_expr(notifications::Column::LastError, Expr::value(error))
            .col_expr(notifications::Column::NextAttemptTime, Expr::value(at)),
        Attempt::Failed { error } => q
            .col_expr(notifications::Column::State, Expr::value(NotificationState::Failed.as_str()))
            .col_expr(notifications::Column::LastError, Expr::value(error))
            .col_expr(notifications::Column::Secret, erase),
    };
    let r = q
        .filter(notifications::Column::NotificationId.eq(id))
        .filter(notifications::Column::LeaseOwner.eq(owner))
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected == 1)
}

pub async fn find(conn: &impl ConnectionTrait, tenant_id: &str, id: Uuid) -> Result<Option<Row>> {
    Ok(notifications::Entity::find_by_id(id).filter(notifications::Column::TenantId.eq(tenant_id)).one(conn).await?)
}

/// Queues a FAILED message again (RetryNotification): a fresh set of attempts from now. Its token
/// is gone, so a message that carried one cannot be retried (a new invitation or reset can).
pub async fn requeue(tx: &Tx, id: Uuid, give_up_time: DateTime<Utc>) -> Result<()> {
    let t = now();
    notifications::Entity::update_many()
        .col_expr(notifications::Column::State, Expr::value(NotificationState::Pending.as_str()))
        .col_expr(notifications::Column::Attempts, Expr::value(0))
        .col_expr(notifications::Column::NextAttemptTime, Expr::value(t))
        .col_expr(notifications::Column::GiveUpTime, Expr::value(give_up_time))
        .col_expr(notifications::Column::UpdateTime, Expr::value(t))
        .filter(notifications::Column::NotificationId.eq(id))
        .exec(&**tx)
        .await?;
    tx.outbox_queued.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// A tenant's messages, newest first, before `before` (a keyset position).
pub async fn list(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    f: &NotificationFilter,
    before: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Notification>> {
    let mut q = notifications::Entity::find()
        .filter(notifications::Column::TenantId.eq(tenant_id))
        .order_by_desc(notifications::Column::NotificationId)
        .limit(limit);
    if let Some(u) = f.user_id {
        q = q.filter(notifications::Column::UserId.eq(u));
    }
    if let Some(k) = f.kind {
        q = q.filter(notifications::Column::Kind.eq(k.as_str()));
    }
    if let Some(s) = f.state {
        q = q.filter(notifications::Column::State.eq(s.as_str()));
    }
    if let Some(b) = before {
        q = q.filter(notifications::Column::NotificationId.lt(b));
    }
    q.all(conn).await?.into_iter().map(to_domain).collect()
}

/// The state of the user's latest invitation message (for GetUser).
pub async fn invitation_state(conn: &impl ConnectionTrait, user_id: Uuid) -> Result<Option<NotificationState>> {
    let row = notifications::Entity::find()
        .filter(notifications::Column::UserId.eq(user_id))
        .filter(
            notifications::Column::Kind
                .is_in([NotificationKind::Invitation.as_str(), NotificationKind::InvitationReminder.as_str()]),
        )
        .order_by_desc(notifications::Column::NotificationId)
        .one(conn)
        .await?;
    Ok(row.and_then(|r| r.state.parse().ok()))
}

/// Messages of `kind` queued for the user since `since` (whatever became of them).
pub async fn count_since(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    kind: NotificationKind,
    since: DateTime<Utc>,
) -> Result<u64> {
    Ok(notifications::Entity::find()
        .filter(notifications::Column::UserId.eq(user_id))
        .filter(notifications::Column::Kind.eq(kind.as_str()))
        .filter(notifications::Column::CreateTime.gte(since))
        .count(conn)
        .await?)
}

/// Messages waiting to be sent (the queue-depth gauge).
pub async fn pending_count(conn: &impl ConnectionTrait) -> Result<u64> {
    Ok(notifications::Entity::find()
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .count(conn)
        .await?)
}

/// Erases the tokens of messages whose token has expired (they can no longer be useful), and
/// fails those still pending: run by the worker.
/// Whether any message is due to expire (a read, so an idle worker writes nothing).
pub async fn any_expired(conn: &impl ConnectionTrait, at: DateTime<Utc>) -> Result<bool> {
    let n = notifications::Entity::find()
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notifications::Column::GiveUpTime.lt(at))
        .count(conn)
        .await?;
    Ok(n > 0)
}

pub async fn expire(tx: &Tx, at: DateTime<Utc>) -> Result<Vec<Row>> {
    let rows = notifications::Entity::find()
        .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
        .filter(notifications::Column::GiveUpTime.lt(at))
        .filter(unclaimed(at))
        .limit(100)
        .all(&**tx)
        .await?;
    for r in &rows {
        notifications::Entity::update_many()
            .col_expr(notifications::Column::State, Expr::value(NotificationState::Failed.as_str()))
            .col_expr(notifications::Column::Secret, Expr::value(Option::<String>::None))
            .col_expr(
                notifications::Column::LastError,
                Expr::value(r.last_error.clone().unwrap_or_else(|| "expired before it could be sent".into())),
            )
            .col_expr(notifications::Column::UpdateTime, Expr::value(at))
            .filter(notifications::Column::NotificationId.eq(r.notification_id))
            .filter(notifications::Column::State.eq(NotificationState::Pending.as_str()))
            .exec(&**tx)
            .await?;
    }
    Ok(rows)
}
