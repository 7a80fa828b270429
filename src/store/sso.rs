//! Single sign-on: tenants' identity providers, users' links to a provider's subjects, used
//! sign-in states, and the sessions a provider opened.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use super::{
    db::{Tx, map_unique},
    entity::{identity_providers, sessions, sso_links, sso_used_states},
};
use crate::domain::{Error, Reason, Result};

pub use identity_providers::Model as Provider;
pub use sso_links::Model as Link;

pub fn not_found(name: &str) -> Error {
    Error::not_found(Reason::IdentityProviderNotFound, format!("the tenant has no identity provider named {name:?}"))
}

pub async fn insert(tx: &Tx, row: Provider) -> Result<Provider> {
    let name = row.name.clone();
    row.into_active_model().reset_all().insert(&**tx).await.map_err(|e| {
        map_unique(e, &["ux_identity_providers_tenant_name", "identity_providers.tenant_id"], || {
            Error::already_exists(
                Reason::IdentityProviderExists,
                format!("the tenant already has an identity provider named {name:?}"),
            )
        })
    })
}

/// A tenant's providers by name.
pub async fn list(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Provider>> {
    Ok(identity_providers::Entity::find()
        .filter(identity_providers::Column::TenantId.eq(tenant_id))
        .order_by_asc(identity_providers::Column::Name)
        .all(conn)
        .await?)
}

pub async fn count(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<u64> {
    Ok(identity_providers::Entity::find()
        .filter(identity_providers::Column::TenantId.eq(tenant_id))
        .count(conn)
        .await?)
}

pub async fn find_by_name(conn: &impl ConnectionTrait, tenant_id: &str, name: &str) -> Result<Option<Provider>> {
    Ok(identity_providers::Entity::find()
        .filter(identity_providers::Column::TenantId.eq(tenant_id))
        .filter(identity_providers::Column::Name.eq(name))
        .one(conn)
        .await?)
}

pub async fn find(conn: &impl ConnectionTrait, idp_id: Uuid) -> Result<Option<Provider>> {
    Ok(identity_providers::Entity::find_by_id(idp_id).one(conn).await?)
}

/// The tenant's providers that require single sign-on.
pub async fn requiring_sso(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Provider>> {
    Ok(identity_providers::Entity::find()
        .filter(identity_providers::Column::TenantId.eq(tenant_id))
        .filter(identity_providers::Column::SsoRequired.eq(true))
        .all(conn)
        .await?)
}

/// Removes a provider and its links; returns the sessions it had opened that are still open.
pub async fn delete(tx: &Tx, idp_id: Uuid) -> Result<Vec<(Uuid, Uuid)>> {
    let open = sessions::Entity::find()
        .filter(sessions::Column::IdpId.eq(idp_id))
        .filter(sessions::Column::EndTime.is_null())
        .all(&**tx)
        .await?
        .into_iter()
        .map(|s| (s.session_id, s.user_id))
        .collect();
    sso_links::Entity::delete_many().filter(sso_links::Column::IdpId.eq(idp_id)).exec(&**tx).await?;
    identity_providers::Entity::delete_by_id(idp_id).exec(&**tx).await?;
    Ok(open)
}

/// Open sessions of a tenant that no identity provider opened (password logins).
pub async fn password_sessions(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<(Uuid, Uuid)>> {
    Ok(sessions::Entity::find()
        .filter(sessions::Column::TenantId.eq(tenant_id))
        .filter(sessions::Column::IdpId.is_null())
        .filter(sessions::Column::EndTime.is_null())
        .all(conn)
        .await?
        .into_iter()
        .map(|s| (s.session_id, s.user_id))
        .collect())
}

/// The user linked to a provider's subject.
pub async fn link(conn: &impl ConnectionTrait, idp_id: Uuid, subject: &str) -> Result<Option<Link>> {
    Ok(sso_links::Entity::find_by_id((idp_id, subject.to_owned())).one(conn).await?)
}

/// Links a subject to a user (a subject already linked keeps its first user: the caller
/// checked under the same transaction that none was).
pub async fn insert_link(tx: &Tx, link: Link) -> Result<()> {
    link.into_active_model().reset_all().insert(&**tx).await.map_err(|e| {
        map_unique(e, &["sso_links"], || {
            Error::new(crate::domain::Kind::Aborted, Reason::Conflict, "the user was linked meanwhile: retry")
        })
    })?;
    Ok(())
}

/// Forgets a user's links (the user is purged).
pub async fn forget_links_of_user(tx: &Tx, user_id: Uuid) -> Result<()> {
    sso_links::Entity::delete_many().filter(sso_links::Column::UserId.eq(user_id)).exec(&**tx).await?;
    Ok(())
}

/// Marks a state used; false when it already was (one sign-in per state, one winner of a race).
pub async fn use_state(tx: &Tx, state_sha256: &str, expire_time: DateTime<Utc>) -> Result<bool> {
    let row = sso_used_states::Model { state_sha256: state_sha256.to_owned(), expire_time };
    match row.into_active_model().reset_all().insert(&**tx).await {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Forgets used states that have expired (they would be refused as expired anyway).
pub async fn sweep_used_states(conn: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<u64> {
    let r = sso_used_states::Entity::delete_many()
        .filter(sso_used_states::Column::ExpireTime.lt(before))
        .exec(conn)
        .await?;
    Ok(r.rows_affected)
}

/// Open sessions a provider opened: those of its session `sid`, or (no sid) all of the user's.
pub async fn sessions_to_end(
    conn: &impl ConnectionTrait,
    idp_id: Uuid,
    sid: Option<&str>,
    user_id: Option<Uuid>,
) -> Result<Vec<(Uuid, Uuid)>> {
    let mut q =
        sessions::Entity::find().filter(sessions::Column::IdpId.eq(idp_id)).filter(sessions::Column::EndTime.is_null());
    if let Some(sid) = sid {
        q = q.filter(sessions::Column::IdpSid.eq(sid));
    }
    if let Some(user_id) = user_id {
        q = q.filter(sessions::Column::UserId.eq(user_id));
    }
    Ok(q.all(conn).await?.into_iter().map(|s| (s.session_id, s.user_id)).collect())
}
