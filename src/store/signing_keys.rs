//! The token signing keys (seeds sealed under the master key, public keys in clear).

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{Tx, entity::signing_keys};
use crate::domain::{Result, now};

pub use signing_keys::Model as Row;

/// Every stored key, the newest first.
pub async fn all(conn: &impl ConnectionTrait) -> Result<Vec<Row>> {
    Ok(signing_keys::Entity::find()
        .order_by_desc(signing_keys::Column::CreateTime)
        .order_by_desc(signing_keys::Column::Kid)
        .all(conn)
        .await?)
}

/// Stores a new key.
pub async fn insert(conn: &impl ConnectionTrait, row: Row) -> Result<()> {
    signing_keys::ActiveModel::from(row).insert(conn).await?;
    Ok(())
}

/// Retires every signing key as of the new key's activation and stores the new one.
pub async fn rotate(tx: &Tx, row: Row) -> Result<()> {
    signing_keys::Entity::update_many()
        .col_expr(signing_keys::Column::RetireTime, Some(row.activate_time.unwrap_or(row.create_time)).into())
        .filter(signing_keys::Column::RetireTime.is_null())
        .exec(&**tx)
        .await?;
    insert(&**tx, row).await
}

/// How old the newest key is (the one signing, or the one published to sign next).
pub async fn signing_key_age(conn: &impl ConnectionTrait) -> Result<Option<chrono::Duration>> {
    let row = signing_keys::Entity::find()
        .filter(signing_keys::Column::RetireTime.is_null())
        .order_by_desc(signing_keys::Column::CreateTime)
        .one(conn)
        .await?;
    Ok(row.map(|r| now() - r.create_time))
}
