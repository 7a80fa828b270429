//! Tenants' SCIM bearer tokens, by SHA-256 digest.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    sea_query::Expr,
};
use uuid::Uuid;

use super::{
    db::{Tx, map_unique},
    entity::scim_tokens,
};
use crate::domain::{Error, Reason, Result};

pub use scim_tokens::Model as Row;

pub fn not_found(name: &str) -> Error {
    Error::not_found(Reason::ScimTokenNotFound, format!("the tenant has no SCIM token named {name:?}"))
}

pub async fn insert(tx: &Tx, row: Row) -> Result<Row> {
    let name = row.name.clone();
    row.into_active_model().reset_all().insert(&**tx).await.map_err(|e| {
        map_unique(e, &["ux_scim_tokens_tenant_name", "scim_tokens.tenant_id"], || {
            Error::already_exists(
                Reason::ScimTokenExists,
                format!("the tenant already has a SCIM token named {name:?}"),
            )
        })
    })
}

/// A tenant's tokens by name (revoked ones included: they are the record of what was issued).
pub async fn list(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Row>> {
    Ok(scim_tokens::Entity::find()
        .filter(scim_tokens::Column::TenantId.eq(tenant_id))
        .order_by_asc(scim_tokens::Column::Name)
        .all(conn)
        .await?)
}

pub async fn find_by_name(conn: &impl ConnectionTrait, tenant_id: &str, name: &str) -> Result<Option<Row>> {
    Ok(scim_tokens::Entity::find()
        .filter(scim_tokens::Column::TenantId.eq(tenant_id))
        .filter(scim_tokens::Column::Name.eq(name))
        .one(conn)
        .await?)
}

/// The token with this digest, if any (revoked and expired ones too: the caller decides).
pub async fn find_by_digest(conn: &impl ConnectionTrait, sha256_hex: &str) -> Result<Option<Row>> {
    Ok(scim_tokens::Entity::find().filter(scim_tokens::Column::TokenSha256.eq(sha256_hex)).one(conn).await?)
}

/// Revokes a live token; false when it was already revoked.
pub async fn revoke(tx: &Tx, token_id: Uuid, at: DateTime<Utc>) -> Result<bool> {
    let r = scim_tokens::Entity::update_many()
        .col_expr(scim_tokens::Column::RevokeTime, Expr::value(at))
        .filter(scim_tokens::Column::TokenId.eq(token_id))
        .filter(scim_tokens::Column::RevokeTime.is_null())
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected == 1)
}

/// Records a use (at most about once a minute per token: the caller throttles).
pub async fn touch(conn: &impl ConnectionTrait, token_id: Uuid, at: DateTime<Utc>) -> Result<()> {
    scim_tokens::Entity::update_many()
        .col_expr(scim_tokens::Column::LastUsedTime, Expr::value(at))
        .filter(scim_tokens::Column::TokenId.eq(token_id))
        .exec(conn)
        .await?;
    Ok(())
}
