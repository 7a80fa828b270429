//! Login sessions, refresh tokens, login state (lockout, TOTP) and recovery codes.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::OnConflict,
};
use uuid::Uuid;

use super::{
    db::Tx,
    entity::{login_states, recovery_codes, refresh_tokens, sessions, users},
};
use crate::domain::{Result, now, user::UserState};

pub type Session = sessions::Model;
pub type LoginState = login_states::Model;

/// A session's state as access checks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionFacts {
    pub user_id: Uuid,
    pub ended: bool,
    pub expire_time: DateTime<Utc>,
    pub idle_end: DateTime<Utc>,
}

impl SessionFacts {
    pub fn of(s: &Session) -> SessionFacts {
        SessionFacts {
            user_id: s.user_id,
            ended: s.end_time.is_some(),
            expire_time: s.expire_time,
            idle_end: s.last_refresh_time + chrono::Duration::seconds(s.idle_timeout_secs),
        }
    }

    pub fn active_at(&self, at: DateTime<Utc>) -> bool {
        !self.ended && at < self.expire_time && at < self.idle_end
    }
}

pub async fn find(conn: &impl ConnectionTrait, session_id: Uuid) -> Result<Option<Session>> {
    Ok(sessions::Entity::find_by_id(session_id).one(conn).await?)
}

pub async fn insert(tx: &Tx, s: Session) -> Result<Session> {
    Ok(sessions::ActiveModel::from(s).insert(&**tx).await?)
}

/// Ends the given sessions (those still open) and returns how many it ended.
pub async fn end(tx: &Tx, ids: &[Uuid], reason: &str) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let r = sessions::Entity::update_many()
        .col_expr(sessions::Column::EndTime, Some(now()).into())
        .col_expr(sessions::Column::EndReason, Some(reason.to_owned()).into())
        .filter(sessions::Column::SessionId.is_in(ids.iter().copied()))
        .filter(sessions::Column::EndTime.is_null())
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected)
}

/// Ends every open session of a user; returns the ids ended.
pub async fn end_all_of_user(tx: &Tx, user_id: Uuid, reason: &str) -> Result<Vec<Uuid>> {
    let ids = open_of_user(&**tx, user_id).await?.into_iter().map(|s| s.session_id).collect::<Vec<_>>();
    end(tx, &ids, reason).await?;
    Ok(ids)
}

/// Open (not ended, not expired) sessions of a user, oldest first.
pub async fn open_of_user(conn: &impl ConnectionTrait, user_id: Uuid) -> Result<Vec<Session>> {
    let at = now();
    let rows = sessions::Entity::find()
        .filter(sessions::Column::UserId.eq(user_id))
        .filter(sessions::Column::EndTime.is_null())
        .filter(sessions::Column::ExpireTime.gt(at))
        .order_by(sessions::Column::CreateTime, Order::Asc)
        .order_by(sessions::Column::SessionId, Order::Asc)
        .all(conn)
        .await?;
    Ok(rows.into_iter().filter(|s| SessionFacts::of(s).active_at(at)).collect())
}

/// A page of a user's sessions, newest first (session ids are time-ordered UUIDv7).
pub async fn list(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    include_ended: bool,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Session>> {
    let mut q = sessions::Entity::find().filter(sessions::Column::UserId.eq(user_id));
    if !include_ended {
        q = q.filter(sessions::Column::EndTime.is_null()).filter(sessions::Column::ExpireTime.gt(now()));
    }
    if let Some(after) = after {
        q = q.filter(sessions::Column::SessionId.lt(after));
    }
    Ok(q.order_by(sessions::Column::SessionId, Order::Desc).limit(limit + 1).all(conn).await?)
}

pub async fn touch(tx: &Tx, session_id: Uuid, at: DateTime<Utc>) -> Result<()> {
    sessions::Entity::update_many()
        .col_expr(sessions::Column::LastRefreshTime, at.into())
        .filter(sessions::Column::SessionId.eq(session_id))
        .exec(&**tx)
        .await?;
    Ok(())
}

pub async fn insert_refresh(tx: &Tx, token_hash: String, session_id: Uuid) -> Result<()> {
    refresh_tokens::ActiveModel {
        token_hash: Set(token_hash),
        session_id: Set(session_id),
        create_time: Set(now()),
        rotate_time: Set(None),
    }
    .insert(&**tx)
    .await?;
    Ok(())
}

pub async fn find_refresh(conn: &impl ConnectionTrait, token_hash: &str) -> Result<Option<refresh_tokens::Model>> {
    Ok(refresh_tokens::Entity::find_by_id(token_hash.to_owned()).one(conn).await?)
}

/// Marks a refresh token used; false when it already was (a second use).
pub async fn rotate_refresh(tx: &Tx, token_hash: &str) -> Result<bool> {
    let r = refresh_tokens::Entity::update_many()
        .col_expr(refresh_tokens::Column::RotateTime, Some(now()).into())
        .filter(refresh_tokens::Column::TokenHash.eq(token_hash))
        .filter(refresh_tokens::Column::RotateTime.is_null())
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected == 1)
}

fn fresh_state(user_id: Uuid) -> LoginState {
    LoginState {
        user_id,
        failed_logins: 0,
        lockouts: 0,
        locked_until: None,
        totp_secret: None,
        totp_pending_secret: None,
        totp_last_step: None,
    }
}

pub async fn login_state(conn: &impl ConnectionTrait, user_id: Uuid) -> Result<LoginState> {
    Ok(login_states::Entity::find_by_id(user_id).one(conn).await?.unwrap_or_else(|| fresh_state(user_id)))
}

/// The user with this email in the tenant (the login path).
pub async fn user_for_login(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    email_key: &str,
) -> Result<Option<users::Model>> {
    Ok(users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::EmailKey.eq(email_key))
        .one(conn)
        .await?)
}

/// The user whose username key is `key` (unique per tenant).
pub async fn user_for_username_login(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    key: &str,
) -> Result<Option<users::Model>> {
    Ok(users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::UsernameKey.eq(key))
        .one(conn)
        .await?)
}

/// Users (at most two: more than one is ambiguous) with the E.164 phone number `e164`.
pub async fn users_for_phone_login(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    e164: &str,
) -> Result<Vec<users::Model>> {
    Ok(users::Entity::find()
        .filter(users::Column::TenantId.eq(tenant_id))
        .filter(users::Column::Phone.eq(e164))
        // A deleted user's number (kept for the restore window) names nobody.
        .filter(users::Column::State.is_not_in([UserState::Deleted.as_str(), UserState::Purged.as_str()]))
        .limit(2)
        .all(conn)
        .await?)
}

/// A user's login state, read with its row locked until `tx` ends (created when missing), so a
/// read-modify-write of the counters or the TOTP step in `tx` is atomic: on PostgreSQL the upsert
/// takes the row lock, on SQLite writers are serialized anyway. One statement either way.
pub async fn lock_login_state(tx: &Tx, user_id: Uuid) -> Result<LoginState> {
    Ok(login_states::Entity::insert(login_states::ActiveModel::from(fresh_state(user_id)))
        .on_conflict(
            OnConflict::column(login_states::Column::UserId).update_column(login_states::Column::UserId).to_owned(),
        )
        .exec_with_returning(&**tx)
        .await?)
}

/// A verified secret of the account: the lockout counters start again (the row exists: the
/// verification's admission made it). One statement, for logins that touch nothing else of it.
pub async fn clear_failures(tx: &Tx, user_id: Uuid) -> Result<()> {
    login_states::Entity::update_many()
        .col_expr(login_states::Column::FailedLogins, 0.into())
        .col_expr(login_states::Column::Lockouts, 0.into())
        .col_expr(login_states::Column::LockedUntil, Option::<chrono::DateTime<chrono::Utc>>::None.into())
        .filter(login_states::Column::UserId.eq(user_id))
        .exec(&**tx)
        .await?;
    Ok(())
}

/// Writes a user's login state (insert or replace).
pub async fn save_login_state(tx: &Tx, s: LoginState) -> Result<()> {
    login_states::Entity::insert(login_states::ActiveModel::from(s))
        .on_conflict(
            OnConflict::column(login_states::Column::UserId)
                .update_columns([
                    login_states::Column::FailedLogins,
                    login_states::Column::Lockouts,
                    login_states::Column::LockedUntil,
                    login_states::Column::TotpSecret,
                    login_states::Column::TotpPendingSecret,
                    login_states::Column::TotpLastStep,
                ])
                .to_owned(),
        )
        .exec_without_returning(&**tx)
        .await?;
    Ok(())
}

/// Replaces a user's recovery codes with these hashes.
pub async fn replace_recovery_codes(tx: &Tx, user_id: Uuid, hashes: Vec<String>) -> Result<()> {
    recovery_codes::Entity::delete_many().filter(recovery_codes::Column::UserId.eq(user_id)).exec(&**tx).await?;
    if hashes.is_empty() {
        return Ok(());
    }
    let at = now();
    recovery_codes::Entity::insert_many(hashes.into_iter().map(|code_hash| recovery_codes::ActiveModel {
        user_id: Set(user_id),
        code_hash: Set(code_hash),
        create_time: Set(at),
        used_time: Set(None),
    }))
    .exec_without_returning(&**tx)
    .await?;
    Ok(())
}

/// Uses a recovery code; false when it is unknown or was used.
pub async fn use_recovery_code(tx: &Tx, user_id: Uuid, code_hash: &str) -> Result<bool> {
    let r = recovery_codes::Entity::update_many()
        .col_expr(recovery_codes::Column::UsedTime, Some(now()).into())
        .filter(recovery_codes::Column::UserId.eq(user_id))
        .filter(recovery_codes::Column::CodeHash.eq(code_hash))
        .filter(recovery_codes::Column::UsedTime.is_null())
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected == 1)
}

/// Deletes what a purged user leaves behind here: sessions, login state and recovery codes.
pub async fn forget_user(tx: &Tx, user_id: Uuid) -> Result<()> {
    recovery_codes::Entity::delete_many().filter(recovery_codes::Column::UserId.eq(user_id)).exec(&**tx).await?;
    login_states::Entity::delete_many().filter(login_states::Column::UserId.eq(user_id)).exec(&**tx).await?;
    Ok(())
}

/// Deletes sessions that expired before `before` (with their refresh tokens), and refresh tokens
/// rotated before it.
pub async fn sweep(conn: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<()> {
    refresh_tokens::Entity::delete_many().filter(refresh_tokens::Column::RotateTime.lt(before)).exec(conn).await?;
    sessions::Entity::delete_many().filter(sessions::Column::ExpireTime.lt(before)).exec(conn).await?;
    Ok(())
}
