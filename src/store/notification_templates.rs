//! Tenants' own wording of messages, by kind and language.

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

use super::{db::Tx, entity::notification_templates};
use crate::domain::{
    Error, Reason, Result,
    notification::{Locale, NotificationKind},
    now,
};

pub use notification_templates::Model as Row;

pub fn not_found(kind: NotificationKind, locale: Locale) -> Error {
    Error::not_found(
        Reason::NotificationTemplateNotFound,
        format!("the tenant has no template of its own for {} in {}", kind.as_str(), locale.tag()),
    )
}

pub async fn get(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    kind: NotificationKind,
    locale: Locale,
) -> Result<Option<Row>> {
    Ok(notification_templates::Entity::find_by_id((
        tenant_id.to_owned(),
        kind.as_str().to_owned(),
        locale.tag().to_owned(),
    ))
    .one(conn)
    .await?)
}

/// All of a tenant's own templates.
pub async fn list(conn: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Row>> {
    Ok(notification_templates::Entity::find()
        .filter(notification_templates::Column::TenantId.eq(tenant_id))
        .all(conn)
        .await?)
}

/// The own templates of several tenants (the notification worker reads those of a batch at once).
pub async fn of_tenants(conn: &impl ConnectionTrait, tenant_ids: &[&str]) -> Result<Vec<Row>> {
    if tenant_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(notification_templates::Entity::find()
        .filter(notification_templates::Column::TenantId.is_in(tenant_ids.iter().copied()))
        .all(conn)
        .await?)
}

/// Inserts or replaces (the caller holds the tenant's lock and checked the version).
pub async fn put(
    tx: &Tx,
    tenant_id: &str,
    kind: NotificationKind,
    locale: Locale,
    subject: String,
    body: String,
    before: Option<&Row>,
) -> Result<Row> {
    let row = notification_templates::ActiveModel {
        tenant_id: Set(tenant_id.to_owned()),
        kind: Set(kind.as_str().to_owned()),
        locale: Set(locale.tag().to_owned()),
        subject: Set(subject),
        body: Set(body),
        version: Set(before.map_or(1, |b| b.version + 1)),
        update_time: Set(now()),
    };
    Ok(if before.is_some() { row.update(&**tx).await? } else { row.insert(&**tx).await? })
}

/// Removes one; false if there was none.
pub async fn delete(tx: &Tx, tenant_id: &str, kind: NotificationKind, locale: Locale) -> Result<bool> {
    let r = notification_templates::Entity::delete_by_id((
        tenant_id.to_owned(),
        kind.as_str().to_owned(),
        locale.tag().to_owned(),
    ))
    .exec(&**tx)
    .await?;
    Ok(r.rows_affected > 0)
}
